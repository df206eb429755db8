//! The auth listener: discovery, JWKS, and the `client_credentials` token endpoint of the
//! embedded issuer, and what its tokens may do on the api listener.

use std::sync::OnceLock;

use e2e_tests::http::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, post_form};
use e2e_tests::{Answer, Gateway, bearer, client, client_credentials, human, jwt, send};
use serde_json::{Value, json};

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn token_endpoint(authorization: Option<&str>, form: &str) -> Answer {
    post_form(
        &client(),
        &gw().auth_url("/oauth2/token"),
        authorization,
        form,
    )
    .await
}

/// The RFC 6749 §5.2 `error` of an answer.
fn oauth_error(answer: &Answer) -> Option<String> {
    answer.json()?.get("error")?.as_str().map(str::to_owned)
}

async fn discovery() -> Value {
    let answer = send(
        &client(),
        "GET",
        &gw().auth_url("/.well-known/openid-configuration"),
        &[],
        None,
    )
    .await;
    answer.assert_status(200);
    answer
        .json()
        .unwrap_or_else(|| panic!("discovery is JSON: {answer}"))
}

#[tokio::test]
async fn jwks_publishes_public_rsa_keys_with_kids() {
    let answer = send(
        &client(),
        "GET",
        &gw().auth_url("/.well-known/jwks.json"),
        &[],
        None,
    )
    .await;
    answer.assert_status(200);
    let jwks = answer
        .json()
        .unwrap_or_else(|| panic!("JWKS is JSON: {answer}"));
    let keys = jwks["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("JWKS has keys: {answer}"));
    assert!(!keys.is_empty(), "at least one key: {answer}");
    for key in keys {
        assert!(
            key["kid"].as_str().is_some_and(|k| !k.is_empty()),
            "every key has a kid: {key}"
        );
        assert_eq!(key["kty"], json!("RSA"), "RS256 keys: {key}");
        assert!(
            key["n"].is_string() && key["e"].is_string(),
            "n and e: {key}"
        );
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} published: {key}"
            );
        }
    }
    let minted = gw().mint(&human("Member", "app"), None);
    let kid = jwt::header(&minted)["kid"].clone();
    assert!(
        keys.iter().any(|k| k["kid"] == kid),
        "the minted token's kid {kid} is in the JWKS: {answer}"
    );
}

#[tokio::test]
async fn discovery_names_the_issuer_and_endpoints() {
    let doc = discovery().await;
    let issuer = doc["issuer"]
        .as_str()
        .unwrap_or_else(|| panic!("issuer: {doc}"));
    let token_endpoint = doc["token_endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("token_endpoint: {doc}"));
    assert!(token_endpoint.ends_with("/oauth2/token"), "{doc}");
    assert!(
        doc["jwks_uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("/.well-known/jwks.json")),
        "jwks_uri: {doc}"
    );
    let minted = gw().mint(&human("Member", "app"), None);
    assert_eq!(
        jwt::payload(&minted)["iss"],
        json!(issuer),
        "minted tokens carry the discovery issuer"
    );
}

#[tokio::test]
async fn client_credentials_with_basic_auth() {
    let answer = client_credentials(gw(), &client(), Some("app/read app/write")).await;
    answer.assert_status(200);
    let body = answer.json().unwrap_or_else(|| panic!("JSON: {answer}"));
    let token = body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("access_token: {answer}"));
    assert!(
        body["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{answer}"
    );
    assert!(
        body["expires_in"].as_u64().is_some_and(|s| s > 0),
        "expires_in: {answer}"
    );
    assert!(
        answer
            .header("cache-control")
            .is_some_and(|v| v.contains("no-store")),
        "Cache-Control: no-store: {answer}"
    );
    let claims = jwt::payload(token);
    assert_eq!(claims["token_use"], json!("access"), "{claims}");
    assert_eq!(claims["client_id"], json!(DEMO_CLIENT_ID), "{claims}");
    assert_eq!(claims["workspaceId"], json!("ws-demo"), "{claims}");
    assert_eq!(claims["platform"], json!("m2m"), "{claims}");
    let scopes: Vec<&str> = claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert!(
        scopes.contains(&"app/read") && scopes.contains(&"app/write"),
        "{claims}"
    );
    assert!(
        !scopes.contains(&"dashboard/read"),
        "only the requested scopes: {claims}"
    );
    assert_eq!(claims["iss"], discovery().await["issuer"], "{claims}");
    for claim in ["sub", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} missing: {claims}");
    }
}

#[tokio::test]
async fn client_credentials_with_client_secret_post() {
    let form = format!(
        "grant_type=client_credentials&scope=app%2Fread&client_id={DEMO_CLIENT_ID}&client_secret={DEMO_CLIENT_SECRET}"
    );
    let answer = token_endpoint(None, &form).await;
    answer.assert_status(200);
    let body = answer.json().unwrap_or_else(|| panic!("JSON: {answer}"));
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{answer}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_invalid_client() {
    let form = "grant_type=client_credentials&scope=app%2Fread";
    for auth in [
        basic(DEMO_CLIENT_ID, "wrong-secret"),
        basic("no-such-client", DEMO_CLIENT_SECRET),
    ] {
        let answer = token_endpoint(Some(&auth), form).await;
        answer.assert_status(401);
        assert_eq!(
            oauth_error(&answer).as_deref(),
            Some("invalid_client"),
            "{answer}"
        );
        assert!(
            answer
                .header("www-authenticate")
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("basic")),
            "WWW-Authenticate: Basic when Basic was used: {answer}"
        );
        assert!(!answer.text().contains("access_token"), "{answer}");
    }
    // Credentials in the body: 400 or 401, always invalid_client.
    let posted = format!("{form}&client_id={DEMO_CLIENT_ID}&client_secret=wrong-secret");
    let answer = token_endpoint(None, &posted).await;
    assert!(matches!(answer.status, 400 | 401), "{answer}");
    assert_eq!(
        oauth_error(&answer).as_deref(),
        Some("invalid_client"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_unknown_grant_is_unsupported_grant_type() {
    let auth = basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    let answer = token_endpoint(Some(&auth), "grant_type=password&username=a&password=b").await;
    answer.assert_status(400);
    assert_eq!(
        oauth_error(&answer).as_deref(),
        Some("unsupported_grant_type"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_scope_the_client_lacks_is_invalid_scope() {
    for scope in [
        "admin/everything",
        "dashboard/write",
        "app/read dashboard/write",
    ] {
        let answer = client_credentials(gw(), &client(), Some(scope)).await;
        answer.assert_status(400);
        assert_eq!(
            oauth_error(&answer).as_deref(),
            Some("invalid_scope"),
            "scope {scope:?}: {answer}"
        );
    }
}

#[tokio::test]
async fn an_issued_m2m_token_is_judged_by_its_scopes() {
    let gw = gw();
    let c = client();
    let issued = client_credentials(gw, &c, Some("app/read app/write dashboard/read")).await;
    issued.assert_status(200);
    let token = issued.json().expect("JSON")["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let read = send(
        &c,
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/missions"),
        &[bearer(&token)],
        None,
    )
    .await;
    read.assert_status(200);
    let dash = send(
        &c,
        "GET",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"),
        &[bearer(&token)],
        None,
    )
    .await;
    dash.assert_status(200);
    let mission = json!({"name": "t", "description": "d", "points": 10});
    let write = send(
        &c,
        "POST",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"),
        &[bearer(&token)],
        Some(&mission),
    )
    .await;
    write.assert_error(403, "auth/insufficient_permissions");

    let narrow = client_credentials(gw, &c, Some("app/read")).await;
    narrow.assert_status(200);
    let narrow = narrow.json().expect("JSON")["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let points = json!({"userId": "u-member", "points": 5, "reason": "r"});
    let denied = send(
        &c,
        "POST",
        &gw.api_url("/app/v1/workspaces/ws-demo/points"),
        &[bearer(&narrow)],
        Some(&points),
    )
    .await;
    denied.assert_error(403, "auth/insufficient_permissions");
}

/// `[rate_limit.token_failures]`: an address that failed client authentication `limit` times
/// in the window gets 429 for every token request (right credentials too) until it has room;
/// successes and malformed requests are not counted, the api listener is not affected.
#[tokio::test]
async fn failed_client_authentications_are_limited_per_address() {
    use e2e_tests::gateway::{set_in_section, unlimited_config_text, write_config};
    let dir = tempfile::tempdir().unwrap();
    let text = unlimited_config_text();
    let text = set_in_section(&text, "rate_limit.token_failures", "limit", "3");
    let text = set_in_section(&text, "rate_limit.token_failures", "window_seconds", "60");
    let gw = Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[]);
    let c = client();
    let url = gw.auth_url("/oauth2/token");
    let form = "grant_type=client_credentials&scope=app%2Fread";
    let right = basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    let wrong = basic(DEMO_CLIENT_ID, "wrong-secret");

    // Neither successes nor malformed requests count.
    for _ in 0..5 {
        post_form(&c, &url, Some(&right), form)
            .await
            .assert_status(200);
        let a = post_form(&c, &url, Some(&right), "grant_type=password").await;
        assert_eq!(
            oauth_error(&a).as_deref(),
            Some("unsupported_grant_type"),
            "{a}"
        );
    }
    // Three failures are answered as such, the fourth request is refused unchecked.
    for _ in 0..3 {
        let a = post_form(&c, &url, Some(&wrong), form).await;
        a.assert_status(401);
        assert_eq!(oauth_error(&a).as_deref(), Some("invalid_client"), "{a}");
    }
    for auth in [&wrong, &right] {
        let a = post_form(&c, &url, Some(auth), form).await;
        // The gateway's envelope, plus RFC 6749's fields for OAuth clients.
        a.assert_status(429);
        let body = a.json().unwrap_or_else(|| panic!("JSON: {a}"));
        assert_eq!(body["code"], "rate_limit/exceeded", "{a}");
        assert_eq!(body["status"], 429, "{a}");
        assert_eq!(body["path"], "/oauth2/token", "{a}");
        assert_eq!(body["rule"], "token_failures", "{a}");
        for key in ["requestId", "timestamp", "message"] {
            assert!(
                body[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key}: {a}"
            );
        }
        assert_eq!(body["error"], "temporarily_unavailable", "{a}");
        let retry: u64 = a
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("numeric Retry-After: {a}"));
        assert!((1..=63).contains(&retry), "{a}");
        assert_eq!(
            a.header("ratelimit-policy"),
            Some("\"token_failures\";q=3;w=60"),
            "{a}"
        );
        assert_eq!(a.header("cache-control"), Some("no-store"), "{a}");
        assert!(!a.text().contains("access_token"), "{a}");
    }
    // The api listener counts apart.
    let member = gw.mint(&human("Member", "app"), None);
    send(
        &c,
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/missions"),
        &[bearer(&member)],
        None,
    )
    .await
    .assert_status(200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "cedargate_ratelimit_rejections_total{action=\"block\",rule=\"token_failures\"} 2"
        ),
        "{metrics}"
    );
}

/// A client that sends `Expect: 100-continue` to the token endpoint gets `100 Continue` before
/// it sends its form (curl otherwise waits a second for it), then its token.
#[tokio::test]
async fn token_requests_expecting_100_continue_get_it() {
    let form = "grant_type=client_credentials&scope=app%2Fread";
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
        form.len()
    );
    let answer = e2e_tests::http::send_expecting_continue(gw().auth, &head, form.as_bytes()).await;
    let final_answer = &answer[answer.find("HTTP/1.1 200 ").unwrap_or(0)..];
    assert!(final_answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(final_answer.contains("\"access_token\""), "{answer}");
}
