//! CORS answered at the gateway from config.

use e2e_tests::claims::human;
use e2e_tests::gateway::{Gateway, unlimited_config_text, write_config};
use e2e_tests::http::{bearer, client, send};

const APP: &str = "https://app.example.com";

fn h(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test]
async fn preflights_and_responses_follow_the_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[cors]\nallowed_origins = [\"{APP}\"]\n",
        unlimited_config_text()
    );
    let config = write_config(dir.path(), "cors.toml", &text);
    let gw = Gateway::start_with(&config, &[]);
    let c = client();
    let url = gw.api_url("/app/v1/workspaces/ws-demo/missions");

    let pre = send(
        &c,
        "OPTIONS",
        &url,
        &[
            h("origin", APP),
            h("access-control-request-method", "GET"),
            h("access-control-request-headers", "authorization"),
        ],
        None,
    )
    .await;
    assert_eq!(pre.status, 204, "{}", pre.text());
    assert_eq!(pre.header("access-control-allow-origin"), Some(APP));
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert!(pre.header("x-request-id").is_some());

    let evil = send(
        &c,
        "OPTIONS",
        &url,
        &[
            h("origin", "https://evil.example"),
            h("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(evil.status, 403);
    assert!(evil.header("access-control-allow-origin").is_none());
    let bad_header = send(
        &c,
        "OPTIONS",
        &url,
        &[
            h("origin", APP),
            h("access-control-request-method", "GET"),
            h("access-control-request-headers", "x-cedargate-assertion"),
        ],
        None,
    )
    .await;
    assert_eq!(bad_header.status, 403);

    let member = gw.mint(&human("Member", "app"), None);
    let ok = send(&c, "GET", &url, &[bearer(&member), h("origin", APP)], None).await;
    ok.assert_status(200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    // What a browser client reads of an answer: its id, its timings and the rate limit's state.
    let exposed = ok.header("access-control-expose-headers").unwrap();
    for name in [
        "x-request-id",
        "server-timing",
        "ratelimit",
        "ratelimit-policy",
    ] {
        assert!(
            exposed.split(',').any(|n| n.trim() == name),
            "{name} not exposed: {exposed}"
        );
    }
    let denied = send(&c, "GET", &url, &[h("origin", APP)], None).await;
    denied.assert_error(401, "auth/invalid_token");
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some(APP),
        "browsers must be able to read errors"
    );
    let other = send(
        &c,
        "GET",
        &url,
        &[bearer(&member), h("origin", "https://evil.example")],
        None,
    )
    .await;
    assert!(other.header("access-control-allow-origin").is_none());
}
