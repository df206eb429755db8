//! The command line and the admin listener: `config check`, a bad config stopping `serve`,
//! `token mint`, health and readiness.

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use e2e_tests::{Gateway, client, default_config, free_ports, human, jwt, run_cli, send, with};
use serde_json::json;

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

/// The default config with `bogus_key = 1` as its first (top-level) line.
fn config_with_unknown_key(dir: &tempfile::TempDir) -> PathBuf {
    let default = std::fs::read_to_string(default_config())
        .unwrap_or_else(|e| panic!("read {}: {e}", default_config().display()));
    let path = dir.path().join("bogus.toml");
    // Before any table header, so the key is at the top level.
    std::fs::write(&path, format!("bogus_key = 1\n{default}")).expect("write the bad config");
    path
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(args: &[&str]) -> Output {
    run_cli(args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn config_check_accepts_the_default() {
    let config = default_config();
    let out = run(&["config", "check", config.to_str().expect("UTF-8 path")]);
    assert!(
        out.status.success(),
        "`config check` of the default failed with {}:\n{}",
        out.status,
        printed(&out)
    );
}

#[test]
fn config_check_names_an_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = config_with_unknown_key(&dir);
    let out = run(&["config", "check", bad.to_str().expect("UTF-8 path")]);
    assert!(
        !out.status.success(),
        "`config check` accepted an unknown key:\n{}",
        printed(&out)
    );
    assert!(
        printed(&out).contains("bogus_key"),
        "the message should name bogus_key:\n{}",
        printed(&out)
    );
}

#[test]
fn config_check_fails_on_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let out = run(&["config", "check", missing.to_str().expect("UTF-8 path")]);
    assert!(
        !out.status.success(),
        "`config check` of a missing file succeeded:\n{}",
        printed(&out)
    );
    // The file and the reason, said once.
    let text = printed(&out);
    assert!(text.contains("nope.toml"), "{text}");
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
}

/// `serve --config config` on free ports, which must stop by itself: its output.
fn serve_expecting_a_stop(config: &std::path::Path, dir: &tempfile::TempDir) -> Output {
    let data = dir.path().join("data");
    let [api, auth, admin] = free_ports().map(|a| a.to_string());
    let args = [
        "serve",
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--data-dir",
        data.to_str().expect("UTF-8 path"),
        "--api-addr",
        &api,
        "--auth-addr",
        &auth,
        "--admin-addr",
        &admin,
    ];
    // A hang guard, not a timing assertion: a serve that starts anyway never exits.
    let out = run_cli(&args, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("serve did not stop with {}: {e}", config.display()));
    assert!(
        !out.status.success(),
        "serve exited successfully with {}:\n{}",
        config.display(),
        printed(&out)
    );
    out
}

#[test]
fn serve_refuses_a_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = config_with_unknown_key(&dir);
    let out = serve_expecting_a_stop(&bad, &dir);
    assert!(
        printed(&out).contains("bogus_key"),
        "the message should name bogus_key:\n{}",
        printed(&out)
    );
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let gw = gw();
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let answer = send(&c, "GET", &gw.admin_url(path), &[], None).await;
        answer.assert_status(200);
    }
}

#[tokio::test]
async fn token_mint_fills_the_registered_claims() {
    let gw = gw();
    let claims = human("Member", "app");
    let token = gw.mint(&claims, Some(120));
    let payload = jwt::payload(&token);
    for key in ["sub", "workspaceId", "role", "context", "platform"] {
        assert_eq!(payload[key], claims[key], "{key} kept: {payload}");
    }
    assert_eq!(payload["token_use"], json!("access"), "{payload}");
    assert!(
        payload["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "jti: {payload}"
    );
    assert!(
        payload["iss"].as_str().is_some_and(|i| !i.is_empty()),
        "iss: {payload}"
    );
    let iat = payload["iat"]
        .as_i64()
        .unwrap_or_else(|| panic!("iat: {payload}"));
    let exp = payload["exp"]
        .as_i64()
        .unwrap_or_else(|| panic!("exp: {payload}"));
    assert!(
        (exp - iat - 120).abs() <= 1,
        "--ttl 120 gives exp = iat + 120: {payload}"
    );
    assert!(
        jwt::header(&token)["kid"].as_str().is_some(),
        "a kid in the header"
    );

    // Given claims win over the filled ones.
    let given = gw.mint(&with(&claims, "token_use", json!("id")), None);
    assert_eq!(jwt::payload(&given)["token_use"], json!("id"));
    let other = gw.mint(&with(&claims, "jti", json!("fixed-jti")), None);
    assert_eq!(jwt::payload(&other)["jti"], json!("fixed-jti"));
}

/// `serve` without `--config` where there is no `config/cedargate.toml` (an installed binary,
/// another working directory) runs with the embedded defaults: the policy pack written into the
/// data dir, tokens from the embedded issuer accepted and decided by it.
#[tokio::test]
async fn serve_runs_anywhere_with_the_embedded_defaults() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_without_config(cwd.path());
    let c = client();
    let member = gw.mint(&human("Member", "app"), None);
    let missions = gw.api_url("/app/v1/workspaces/ws-demo/missions");
    send(&c, "GET", &missions, &[e2e_tests::bearer(&member)], None)
        .await
        .assert_status(200);
    // Decided by the pack: a Member may not list the dashboard's users.
    let users = gw.api_url("/dashboard/v1/workspaces/ws-demo/users");
    send(&c, "GET", &users, &[e2e_tests::bearer(&member)], None)
        .await
        .assert_error(403, "auth/insufficient_permissions");
    let pack = gw.data_dir().join("policies");
    for file in ["schema.cedarschema", "routes.toml", "roles.cedar"] {
        assert!(
            pack.join(file).is_file(),
            "{file} not in {}",
            pack.display()
        );
    }
    assert!(
        gw.logs().contains("embedded default config"),
        "{}",
        gw.logs()
    );
    // Nothing was written where it ran.
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

/// A `--config` given is that file or nothing: missing, `serve` stops naming it (the embedded
/// default stands in only when no `--config` is given).
#[test]
fn serve_refuses_a_missing_config_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default's own relative name, absent from the test's working directory (the tests
    // package): given explicitly, it is not replaced by the embedded copy.
    let missing = std::path::Path::new("config/cedargate.toml");
    assert!(
        !missing.exists(),
        "run from the tests package, not the root"
    );
    let out = serve_expecting_a_stop(missing, &dir);
    assert!(
        printed(&out).contains("cedargate.toml"),
        "{}",
        printed(&out)
    );
}

/// `token mint` and `keys list` against a config whose embedded issuer is off both refuse, with
/// one message naming that config.
#[test]
fn commands_of_the_embedded_issuer_name_the_config_that_disables_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = e2e_tests::gateway::set_in_section(
        &e2e_tests::gateway::relocatable_config_text(),
        "issuer",
        "enabled",
        "false",
    ) + "\n[[authn.trusted_issuers]]\nissuer = \"https://idp.example\"\njwks_uri = \"https://idp.example/jwks.json\"\n";
    let config = e2e_tests::gateway::write_config(dir.path(), "no-issuer.toml", &text);
    let config = config.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let expected = format!("the embedded issuer is disabled in {config}");
    for args in [
        vec!["token", "mint", "--claims", "{\"sub\":\"u\"}"],
        vec!["keys", "list"],
    ] {
        let mut args = args.clone();
        args.extend(["--config", config, "--data-dir", data]);
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            printed(&out).contains(&expected),
            "{args:?}: {}",
            printed(&out)
        );
    }
}
