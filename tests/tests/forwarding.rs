//! What crosses the gateway: identity headers cannot be spoofed, every answer has a request id
//! and (when it is an error) the one envelope, forwarded answers carry Server-Timing.

use std::sync::OnceLock;

use e2e_tests::http::send_expecting_continue;
use e2e_tests::{Answer, Gateway, bearer, client, human, raw_request, send};
use serde_json::Value;

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

const APP: &str = "/app/v1/workspaces/ws-demo";

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// `userId` at the top of the body or under `data`.
fn user_id(body: &Value) -> Option<&str> {
    body.get("userId")
        .or_else(|| body.get("data").and_then(|d| d.get("userId")))
        .and_then(Value::as_str)
}

#[tokio::test]
async fn inbound_identity_headers_do_not_reach_the_backend() {
    let gw = gw();
    let c = client();
    let token = gw.mint(&human("Member", "app"), None);
    let url = gw.api_url(&format!("{APP}/points"));
    let spoofed = vec![
        bearer(&token),
        header("x-cedargate-assertion", "junk"),
        header("x-cedargate-principal-id", "u-owner"),
        header("x-cedargate-user-id", "u-owner"),
        header("x-cedargate-workspace-id", "ws-other"),
        header("x-cedargate-role", "Owner"),
    ];
    let answer = send(&c, "GET", &url, &spoofed, None).await;
    answer.assert_status(200);
    let body = answer
        .json()
        .unwrap_or_else(|| panic!("JSON body: {answer}"));
    assert_eq!(
        user_id(&body),
        Some("u-member"),
        "the backend must see the token's user: {answer}"
    );

    // The control: the same request without spoofing says the same.
    let plain = send(&c, "GET", &url, &[bearer(&token)], None).await;
    plain.assert_status(200);
    assert_eq!(
        user_id(&plain.json().expect("JSON body")),
        Some("u-member"),
        "{plain}"
    );
}

#[tokio::test]
async fn inbound_identity_headers_do_not_sway_the_gateway() {
    let gw = gw();
    let member = gw.mint(&human("Member", "dashboard"), None);
    let answer = send(
        &client(),
        "GET",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/users"),
        &[
            bearer(&member),
            header("x-cedargate-role", "Owner"),
            header("x-cedargate-principal-id", "u-owner"),
            header("x-cedargate-assertion", "junk"),
        ],
        None,
    )
    .await;
    answer.assert_error(403, "auth/insufficient_permissions");
}

#[tokio::test]
async fn forwarded_answers_carry_server_timing() {
    let gw = gw();
    let token = gw.mint(&human("Member", "app"), None);
    for suffix in ["/missions", "/missions/mission-welcome", "/points"] {
        let answer = send(
            &client(),
            "GET",
            &gw.api_url(&format!("{APP}{suffix}")),
            &[bearer(&token)],
            None,
        )
        .await;
        answer.assert_status(200);
        let timing = answer.header("server-timing").unwrap_or_default();
        assert!(
            timing.contains("authz;dur=") && timing.contains("upstream;dur="),
            "Server-Timing should have authz;dur= and upstream;dur=: {answer}"
        );
    }
}

/// One answer of each kind the api listener gives: (what, answer), sent with `extra` headers.
async fn one_of_each(extra: &[(String, String)]) -> Vec<(&'static str, Answer)> {
    let gw = gw();
    let c = client();
    let member = gw.mint(&human("Member", "app"), None);
    let with_token = |token: &str| {
        let mut h = vec![bearer(token)];
        h.extend(extra.iter().cloned());
        h
    };
    vec![
        (
            "200",
            send(
                &c,
                "GET",
                &gw.api_url(&format!("{APP}/missions")),
                &with_token(&member),
                None,
            )
            .await,
        ),
        (
            "400 invalid path",
            raw_request(
                gw.api,
                "GET",
                &format!("{APP}/%2e%2e/ws-other/missions"),
                &with_token(&member),
            )
            .await,
        ),
        (
            "401 no token",
            send(
                &c,
                "GET",
                &gw.api_url(&format!("{APP}/missions")),
                extra,
                None,
            )
            .await,
        ),
        (
            "401 invalid token",
            send(
                &c,
                "GET",
                &gw.api_url(&format!("{APP}/missions")),
                &with_token("a.b.c"),
                None,
            )
            .await,
        ),
        (
            "403 forbidden",
            send(
                &c,
                "GET",
                &gw.api_url("/dashboard/v1/workspaces/ws-demo/users"),
                &with_token(&member),
                None,
            )
            .await,
        ),
        (
            "404 unknown route",
            send(
                &c,
                "GET",
                &gw.api_url(&format!("{APP}/nope")),
                &with_token(&member),
                None,
            )
            .await,
        ),
    ]
}

#[tokio::test]
async fn every_answer_has_a_request_id_and_errors_the_envelope() {
    let answers = one_of_each(&[]).await;
    let mut failures = Vec::new();
    let mut ids = Vec::new();
    for (what, answer) in &answers {
        if !what.starts_with(&answer.status.to_string()) {
            failures.push(format!("{what}: unexpected status: {answer}"));
            continue;
        }
        match answer.header("x-request-id") {
            Some(id) if !id.is_empty() => ids.push(id.to_owned()),
            _ => failures.push(format!("{what}: no X-Request-Id: {answer}")),
        }
        if answer.status >= 400 {
            let problems = answer.envelope_problems();
            if !problems.is_empty() {
                failures.push(format!("{what}: {problems:?}: {answer}"));
            }
            if !answer
                .header("content-type")
                .is_some_and(|t| t.contains("application/json"))
            {
                failures.push(format!("{what}: error Content-Type is not JSON: {answer}"));
            }
            let body = answer.json().unwrap_or_default();
            let stamp = body
                .get("timestamp")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !(stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T')) {
                failures.push(format!("{what}: timestamp {stamp:?} is not RFC 3339"));
            }
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != ids.len() {
        failures.push(format!("generated request ids repeat: {ids:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn the_error_path_is_the_request_path() {
    let gw = gw();
    let c = client();
    let member = gw.mint(&human("Member", "app"), None);
    let cases = [
        (format!("{APP}/missions"), None),
        (
            "/dashboard/v1/workspaces/ws-demo/users".to_owned(),
            Some(&member),
        ),
        (format!("{APP}/nope"), Some(&member)),
    ];
    for (path, token) in cases {
        let headers: Vec<(String, String)> = token.map(|t| vec![bearer(t)]).unwrap_or_default();
        let answer = send(&c, "GET", &gw.api_url(&path), &headers, None).await;
        assert!(answer.status >= 400, "an error: {answer}");
        let body = answer.json().unwrap_or_default();
        assert_eq!(
            body.get("path").and_then(Value::as_str),
            Some(path.as_str()),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_well_formed_request_id_is_echoed() {
    let answers = one_of_each(&[header("x-request-id", "abc-123")]).await;
    let mut failures = Vec::new();
    for (what, answer) in &answers {
        if answer.header("x-request-id") != Some("abc-123") {
            failures.push(format!("{what}: X-Request-Id not echoed: {answer}"));
        }
        if answer.status >= 400 {
            let body = answer.json().unwrap_or_default();
            if body.get("requestId").and_then(Value::as_str) != Some("abc-123") {
                failures.push(format!(
                    "{what}: envelope requestId is not abc-123: {answer}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_malformed_request_id_is_replaced() {
    let gw = gw();
    let token = gw.mint(&human("Member", "app"), None);
    let long = "a".repeat(300);
    for bad in [long.as_str(), "abc 123", "abc\"<script>"] {
        for headers in [
            vec![header("x-request-id", bad)],
            vec![bearer(&token), header("x-request-id", bad)],
        ] {
            let answer = send(
                &client(),
                "GET",
                &gw.api_url(&format!("{APP}/missions")),
                &headers,
                None,
            )
            .await;
            let id = answer.header("x-request-id").unwrap_or_default();
            assert!(
                !id.is_empty() && id != bad,
                "X-Request-Id {bad:?} should be replaced: {answer}"
            );
            if answer.status >= 400 {
                let body = answer.json().unwrap_or_default();
                assert_eq!(
                    body.get("requestId").and_then(Value::as_str),
                    Some(id),
                    "{answer}"
                );
            }
        }
    }
}

/// A client that sends `Expect: 100-continue` and waits for `100 Continue` before its body
/// (curl does for large bodies, many HTTP libraries always) gets it from the gateway, which
/// reads small bodies ahead for the WAF; the body then reaches the backend intact, and the
/// client hears `100 Continue` once, not again from the backend.
#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let gw = gw();
    let token = gw.mint(&human("Owner", "dashboard"), None);
    let body = serde_json::json!({
        "name": "Sent after 100 Continue",
        "description": "x".repeat(3000),
        "points": 10,
        "targetCount": 1,
    })
    .to_string();
    let head = format!(
        "POST /dashboard/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let rest = send_expecting_continue(gw.api, &head, body.as_bytes()).await;
    assert_eq!(rest.matches("HTTP/1.1 100").count(), 1, "{rest}");
    let final_answer = &rest[rest.find("HTTP/1.1 2").unwrap_or(0)..];
    assert!(final_answer.starts_with("HTTP/1.1 201 "), "{rest}");
    assert!(final_answer.contains("Sent after 100 Continue"), "{rest}");
}
