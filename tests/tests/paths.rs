//! Path smuggling and route matching, sent byte for byte over raw TCP (reqwest's `url` would
//! resolve `..`, `.`, `%2e` and backslashes before the gateway ever saw them).

use std::sync::OnceLock;

use e2e_tests::http::{client, send, send_raw};
use e2e_tests::{Gateway, bearer, human, raw_request, read_answer};
use tokio::io::AsyncWriteExt;

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

/// Requests pingora itself cannot parse get the gateway's envelope (400
/// `validation/invalid_request`, request id, security headers, `Connection: close`), not
/// pingora's bare 400 with `Server: Pingora`, on the api, auth and admin listeners; the same
/// connection handling serves well-formed requests unchanged, kept alive.
#[tokio::test]
async fn requests_pingora_cannot_parse_get_the_envelope() {
    let gw = gw();
    let heads: &[&[u8]] = &[
        b"GET /app/v1/workspaces/ws-demo/missions?q=<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ];
    for addr in [gw.api, gw.auth, gw.admin] {
        for head in heads {
            let what = format!("{addr}: {}", String::from_utf8_lossy(head).escape_debug());
            let (_, answer) = send_raw(addr, head, &what).await;
            answer.assert_error(400, "validation/invalid_request");
            assert_eq!(answer.header("server"), None, "{what}: {answer}");
            assert_eq!(
                answer.header("x-content-type-options"),
                Some("nosniff"),
                "{answer}"
            );
            assert_eq!(answer.header("connection"), Some("close"), "{answer}");
        }
    }
    let path = answer_path(gw).await;
    assert_eq!(path, "/app/v1/workspaces/ws-demo/missions");

    // Two well-formed requests on one connection: both answered, the first kept alive.
    let mut stream = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    for n in 0..2 {
        let head = "GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, head).await.expect("an answer");
        answer.assert_error(401, "auth/invalid_token");
        assert_ne!(
            answer.header("connection"),
            Some("close"),
            "request {n}: {answer}"
        );
    }
}

/// `CONNECT`, which pingora refuses before any hook, gets the envelope (405
/// `validation/method_not_allowed`, no `Server`) and a closed connection.
#[tokio::test]
async fn connect_is_refused_with_the_envelope() {
    let gw = gw();
    let head = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n";
    let (_, answer) = send_raw(gw.api, head, "CONNECT").await;
    answer.assert_error(405, "validation/method_not_allowed");
    assert_eq!(answer.header("server"), None, "{answer}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer}");
}

/// Both `Transfer-Encoding` and `Content-Length` (the request-smuggling shape): the body is
/// read as chunked (RFC 9112 §6.3, pingora drops the length) and the connection is not kept,
/// so nothing the client sent after it is read as another request.
#[tokio::test]
async fn double_framing_closes_the_connection() {
    let gw = gw();
    let head = b"POST /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let (mut stream, answer) = send_raw(gw.api, head, "TE + CL").await;
    answer.assert_error(401, "auth/invalid_token");
    assert_eq!(answer.header("connection"), Some("close"), "{answer}");
    // Nothing more: the smuggled request got no answer of its own.
    assert!(read_answer(&mut stream, "after TE + CL").await.is_none());
}

/// The envelope's `path` for a raw `<` in the query: the request's path.
async fn answer_path(gw: &Gateway) -> String {
    let head = b"GET /app/v1/workspaces/ws-demo/missions?q=<b> HTTP/1.1\r\nHost: x\r\n\r\n";
    let (_, answer) = send_raw(gw.api, head, "raw <").await;
    answer.json().unwrap()["path"].as_str().unwrap().to_owned()
}

/// The admin listener's own refusals are the envelope too, with the request id in the body and
/// in `X-Request-Id` (a well-formed inbound id kept); a reload endpoint asked with GET is a 405
/// naming POST, not a 404.
#[tokio::test]
async fn admin_errors_are_the_envelope() {
    let gw = gw();
    let c = client();
    let missing = send(&c, "GET", &gw.admin_url("/nope"), &[], None).await;
    missing.assert_error(404, "resource/not_found");
    let body = missing.json().unwrap();
    assert_eq!(
        missing.header("x-request-id"),
        body["requestId"].as_str(),
        "{missing}"
    );
    assert_eq!(body["path"], "/nope");
    for path in [
        "/admin/policies/reload",
        "/admin/waf/reload",
        "/admin/tls/reload",
    ] {
        let rid = [("x-request-id".to_owned(), "admin-check-1".to_owned())];
        let answer = send(&c, "GET", &gw.admin_url(path), &rid, None).await;
        answer.assert_error(405, "validation/method_not_allowed");
        assert_eq!(answer.header("allow"), Some("POST"), "{answer}");
        assert_eq!(answer.json().unwrap()["requestId"], "admin-check-1");
        assert_eq!(answer.header("x-request-id"), Some("admin-check-1"));
    }
    let healthy = send(&c, "GET", &gw.admin_url("/healthz"), &[], None).await;
    healthy.assert_status(200);
    assert!(healthy.header("x-request-id").is_some(), "{healthy}");
    // The security headers of every listener, on success and error alike.
    for answer in [&healthy, &missing] {
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{answer}");
        assert_eq!(answer.header("server"), None, "{answer}");
    }
}
