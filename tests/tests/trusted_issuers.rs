//! Trusted external issuers: one cedargate plays the external IdP (its auth listener serves
//! the JWKS), a second one trusts it by `iss` -> `jwks_uri` with its own issuer disabled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::claims::human;
use e2e_tests::gateway::{Gateway, binary, free_ports, unlimited_config_text, write_config};
use e2e_tests::http::{bearer, client, send};
use serde_json::json;

/// The `iss` the default config's embedded issuer signs with.
const IDP_ISSUER: &str = "http://127.0.0.1:8081";

/// A config that disables the embedded issuer and trusts `jwks_uri` for `IDP_ISSUER`.
fn trusting_config(dir: &Path, jwks_uri: &str) -> PathBuf {
    let text = unlimited_config_text()
        .replace("[issuer]\nenabled = true", "[issuer]\nenabled = false")
        .replace(
            "[issuer]\n",
            &format!("[[authn.trusted_issuers]]\nissuer = \"{IDP_ISSUER}\"\njwks_uri = \"{jwks_uri}\"\n\n[issuer]\n"),
        );
    assert!(
        text.contains("enabled = false"),
        "the default config changed shape"
    );
    write_config(dir, "trusting.toml", &text)
}

#[tokio::test]
async fn tokens_of_a_trusted_issuer_are_accepted_and_its_keys_outlive_it() {
    let idp = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let config = trusting_config(dir.path(), &idp.auth_url("/.well-known/jwks.json"));
    let gw = Gateway::start_with(&config, &[]);
    let c = client();
    let url = gw.api_url("/app/v1/workspaces/ws-demo/missions");

    let token = idp.mint(&human("Member", "app"), None);
    send(&c, "GET", &url, &[bearer(&token)], None)
        .await
        .assert_status(200);

    // The issuer must match exactly, even with a key the gateway trusts.
    let mut wrong_iss = human("Member", "app");
    wrong_iss["iss"] = json!("http://127.0.0.1:8081/evil");
    let forged = idp.mint(&wrong_iss, None);
    send(&c, "GET", &url, &[bearer(&forged)], None)
        .await
        .assert_error(401, "auth/invalid_token");

    // The IdP goes away: the last good keys stay in use.
    let other = idp.mint(&human("Viewer", "app"), None);
    drop(idp);
    send(&c, "GET", &url, &[bearer(&other)], None)
        .await
        .assert_status(200);
}

/// A `serve` that is never ready (no keys), killed on drop; it owns its data dir.
struct Unready(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Unready {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn no_keys_at_all_is_503_not_401() {
    let dir = tempfile::tempdir().unwrap();
    let [dead, _, _] = free_ports();
    let config = trusting_config(dir.path(), &format!("http://{dead}/.well-known/jwks.json"));
    let [api, auth, admin] = free_ports();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--api-addr",
            &api.to_string(),
            "--auth-addr",
            &auth.to_string(),
        ])
        .args(["--admin-addr", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Unready(child, data);
    let c = client();
    let started = Instant::now();
    // Wait for the listener; readiness must stay 503 (no keys).
    let ready = loop {
        if let Ok(r) = c.get(format!("http://{admin}/readyz")).send().await {
            break r.status().as_u16();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready, 503, "a gateway without keys must not be ready");

    let idp_like = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUiLCJ0eXAiOiJKV1QifQ.e30.c2ln";
    let answer = send(
        &c,
        "GET",
        &format!("http://{api}/app/v1/workspaces/ws-demo/missions"),
        &[bearer(idp_like)],
        None,
    )
    .await;
    answer.assert_error(503, "auth/issuer_unavailable");
}
