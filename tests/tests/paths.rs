//! Path smuggling and route matching, sent byte for byte over raw TCP (reqwest's `url` would
//! resolve `..`, `.`, `%2e` and backslashes before the gateway ever saw them).

use std::sync::OnceLock;

use e2e_tests::{Gateway, bearer, human, raw_request};

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

/// Every path-smuggling form the route stage must reject with 400 `validation/invalid_path`.
const SMUGGLED: &[&str] = &[
    // dot segments
    "/app/v1/workspaces/ws-demo/../ws-other/missions",
    "/app/v1/workspaces/ws-demo/./missions",
    "/app/v1/workspaces/ws-demo/missions/..",
    "/app/v1/workspaces/ws-demo/missions/.",
    "/app/v1/workspaces/ws-other/../ws-demo/missions",
    // encoded dots
    "/app/v1/workspaces/ws-demo/%2e%2e/ws-other/missions",
    "/app/v1/workspaces/ws-demo/%2E%2E/ws-other/missions",
    "/app/v1/workspaces/ws-demo/.%2e/ws-other/missions",
    "/app/v1/workspaces/ws-demo/%2e./ws-other/missions",
    "/app/v1/workspaces/ws-demo/%2e/missions",
    "/app/v1/workspaces/ws-demo/%2E/missions",
    // encoded slashes inside a segment
    "/app/v1/workspaces/ws-demo/missions%2fmission-welcome",
    "/app/v1/workspaces/ws-demo/missions%2Fmission-welcome",
    "/app/v1/workspaces/ws-demo%2f..%2fws-other/missions",
    "/app/v1/workspaces/ws-demo/missions/..%2f..%2fws-other",
    // double encoding
    "/app/v1/workspaces/ws-demo/%252e%252e/ws-other/missions",
    "/app/v1/workspaces/ws-demo/%252E%252E/ws-other/missions",
    "/app/v1/workspaces/ws-demo/missions%252fmission-welcome",
    "/app/v1/workspaces/ws-demo/missions%252Fmission-welcome",
    // empty segments
    "/app/v1//workspaces/ws-demo/missions",
    "//app/v1/workspaces/ws-demo/missions",
    "/app/v1/workspaces/ws-demo//missions",
    "/app/v1/workspaces//missions",
    // backslashes, encoded and raw
    "/app/v1/workspaces/ws-demo%5c..%5cws-other/missions",
    "/app/v1/workspaces/ws-demo/missions%5Cmission-welcome",
    "/app/v1/workspaces/ws-demo\\missions",
    "/app/v1/workspaces/ws-demo/..\\ws-other/missions",
    // NUL and control characters
    "/app/v1/workspaces/ws-demo/missions%00",
    "/app/v1/workspaces/ws-demo/missions/mission-welcome%00.json",
    "/app/v1/workspaces/ws-demo/missions%0a",
    "/app/v1/workspaces/ws-demo/missions%0d%0aX-Injected:%20yes",
    "/app/v1/workspaces/ws-demo/missions%09",
    "/app/v1/workspaces/ws-demo/missions%01",
    "/app/v1/workspaces/ws-demo/missions%1b",
    "/app/v1/workspaces/ws-demo/missions%7f",
    // the same on /dashboard
    "/dashboard/v1/workspaces/ws-demo/../../app/v1/workspaces/ws-demo/missions",
    "/dashboard/v1/workspaces/ws-demo/users%2fu-owner",
];

async fn check_smuggled(token: Option<&str>) {
    let gw = gw();
    let headers: Vec<(String, String)> = token.map(|t| vec![bearer(t)]).unwrap_or_default();
    let mut failures = Vec::new();
    for path in SMUGGLED {
        let answer = raw_request(gw.api, "GET", path, &headers).await;
        let ok = answer.status == 400
            && answer.code().as_deref() == Some("validation/invalid_path")
            && answer.envelope_problems().is_empty()
            && !answer.forwarded();
        if !ok {
            failures.push(format!(
                "{path:?}: want 400 validation/invalid_path (envelope, not forwarded); got {answer}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} smuggled paths mishandled ({}):\n{}",
        failures.len(),
        SMUGGLED.len(),
        if token.is_some() {
            "with a Member token"
        } else {
            "without a token"
        },
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_raw_client_reaches_the_backend() {
    // The control for everything below: a clean path over the same raw client succeeds.
    let token = gw().mint(&human("Member", "app"), None);
    let answer = raw_request(
        gw().api,
        "GET",
        "/app/v1/workspaces/ws-demo/missions",
        &[bearer(&token)],
    )
    .await;
    answer.assert_status(200);
    assert!(answer.json().is_some(), "JSON from the backend: {answer}");
}

#[tokio::test]
async fn smuggled_paths_are_400_with_a_token() {
    let token = gw().mint(&human("Member", "app"), None);
    check_smuggled(Some(&token)).await;
}

#[tokio::test]
async fn smuggled_paths_are_400_without_a_token() {
    check_smuggled(None).await;
}

#[tokio::test]
async fn unknown_routes_are_404_not_found() {
    let gw = gw();
    let app = gw.mint(&human("Owner", "app"), None);
    let dashboard = gw.mint(&human("Owner", "dashboard"), None);
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/app/v1/workspaces/ws-demo/unknown-things", &app),
        (
            "GET",
            "/app/v1/workspaces/ws-demo/missions/mission-welcome/extra",
            &app,
        ),
        ("GET", "/app/v1/workspaces/ws-demo", &app),
        ("GET", "/app/v2/workspaces/ws-demo/missions", &app),
        ("GET", "/app/v1/workspace/ws-demo/missions", &app),
        ("GET", "/", &app),
        ("DELETE", "/app/v1/workspaces/ws-demo/missions", &app),
        ("POST", "/app/v1/workspaces/ws-demo/badges", &app),
        (
            "GET",
            "/dashboard/v1/workspaces/ws-demo/unknown-things",
            &dashboard,
        ),
        (
            "PATCH",
            "/dashboard/v1/workspaces/ws-demo/missions/mission-welcome",
            &dashboard,
        ),
        // matching is case-sensitive
        ("GET", "/APP/v1/workspaces/ws-demo/missions", &app),
        ("GET", "/app/V1/workspaces/ws-demo/missions", &app),
        ("GET", "/app/v1/Workspaces/ws-demo/missions", &app),
        ("GET", "/app/v1/workspaces/ws-demo/Missions", &app),
        (
            "GET",
            "/Dashboard/v1/workspaces/ws-demo/missions",
            &dashboard,
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, token) in cases {
        let answer = raw_request(gw.api, method, path, &[bearer(token)]).await;
        let ok = answer.status == 404
            && answer.code().as_deref() == Some("resource/not_found")
            && answer.envelope_problems().is_empty()
            && !answer.forwarded();
        if !ok {
            failures.push(format!(
                "{method} {path}: want 404 resource/not_found from the gateway; got {answer}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} unknown routes mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
