//! Metrics move as requests flow: scrape, send, scrape.

use e2e_tests::claims::human;
use e2e_tests::gateway::Gateway;
use e2e_tests::http::{bearer, client, send};

use e2e_tests::gateway::metric_value as value;

#[tokio::test]
async fn request_decision_stage_and_cache_metrics_move() {
    let gw = Gateway::start();
    let c = client();
    let before = gw.metrics().await;
    let member = gw.mint(&human("Member", "app"), None);
    let missions = gw.api_url("/app/v1/workspaces/ws-demo/missions");
    for _ in 0..3 {
        send(&c, "GET", &missions, &[bearer(&member)], None)
            .await
            .assert_status(200);
    }
    send(
        &c,
        "GET",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/users"),
        &[bearer(&member)],
        None,
    )
    .await
    .assert_error(403, "auth/insufficient_permissions");
    let after = gw.metrics().await;

    let allowed = "cedargate_requests_total{decision=\"allow\",method=\"GET\",route=\"get /app/v1/workspaces/{workspaceId}/missions\",status=\"200\"}";
    assert_eq!(
        value(&after, allowed) - value(&before, allowed),
        3.0,
        "{after}"
    );
    let denied = "cedargate_requests_total{decision=\"deny\",method=\"GET\",route=\"get /dashboard/v1/workspaces/{workspaceId}/users\",status=\"403\"}";
    assert_eq!(value(&after, denied) - value(&before, denied), 1.0);
    for stage in ["waf", "ratelimit", "authn", "authz", "upstream"] {
        let series = format!("cedargate_stage_duration_seconds_count{{stage=\"{stage}\"}}");
        assert!(
            value(&after, &series) > value(&before, &series),
            "stage {stage} not recorded"
        );
    }
    let token_hits = "cedargate_cache_lookups_total{cache=\"token\",result=\"hit\"}";
    assert!(value(&after, token_hits) - value(&before, token_hits) >= 3.0);
    let decision_hits = "cedargate_cache_lookups_total{cache=\"decision\",result=\"hit\"}";
    assert!(value(&after, decision_hits) - value(&before, decision_hits) >= 2.0);
    // The ready-made ratios agree with the counters (one miss, then hits: strictly between).
    for cache in ["token", "decision"] {
        let count = |result: &str| {
            let series =
                format!("cedargate_cache_lookups_total{{cache=\"{cache}\",result=\"{result}\"}}");
            value(&after, &series)
        };
        let expected = count("hit") / (count("hit") + count("miss"));
        let ratio = value(
            &after,
            &format!("cedargate_cache_hit_ratio{{cache=\"{cache}\"}}"),
        );
        assert!(ratio > 0.0 && ratio < 1.0, "{cache} ratio {ratio}");
        assert!(
            (ratio - expected).abs() < 1e-9,
            "{cache}: {ratio} vs {expected}"
        );
    }
    // Raw paths and ids never become label values.
    assert!(!after.contains("ws-demo"), "raw path in a label");
    // Process metrics, conventional names.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&after, name) > 0.0, "{name} missing or zero");
    }
    assert!(
        after.contains("# TYPE process_cpu_seconds_total counter"),
        "process_cpu_seconds_total is not a counter"
    );
}

/// The access line of request `rid` (waiting up to 5 s for the log writer).
fn access_line(gw: &Gateway, rid: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let logs = gw.logs();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains(rid) && l.contains("\"target\":\"access\""))
        {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line for {rid}:\n{logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A member's allowed request, with the request id `rid`.
async fn list_missions(gw: &Gateway, token: &str, rid: &str) {
    send(
        &client(),
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/missions"),
        &[bearer(token), ("x-request-id".into(), rid.into())],
        None,
    )
    .await
    .assert_status(200);
}

/// One JSON access line per request: request id, route template, status, decision, timings;
/// no token, and email principals masked.
#[tokio::test]
async fn access_lines_carry_the_request_and_mask_secrets() {
    let gw = Gateway::start();
    let claims = e2e_tests::claims::with(
        &human("Member", "app"),
        "identityId",
        serde_json::json!("jane.doe@example.com"),
    );
    let token = gw.mint(&claims, None);
    let rid = "access-line-test-1";
    list_missions(&gw, &token, rid).await;
    let line = access_line(&gw, rid);
    let v: serde_json::Value = serde_json::from_str(&line).expect("the access line is JSON");
    assert_eq!(v["target"], "access", "{line}");
    let f = &v["fields"];
    assert_eq!(f["request_id"], rid, "{line}");
    assert_eq!(
        f["route"], "get /app/v1/workspaces/{workspaceId}/missions",
        "{line}"
    );
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["decision"], "allow", "{line}");
    for timing in ["waf_us", "authn_us", "authz_us", "upstream_us", "total_us"] {
        assert!(f[timing].is_u64(), "{timing} in {line}");
    }
    assert_eq!(f["principal"], "j***@example.com", "{line}");
    assert!(!line.contains(&token), "the token leaked into {line}");
    // A path no route matches is `unmatched`, as in the metrics' route label.
    send(
        &client(),
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/no-such-thing"),
        &[
            bearer(&token),
            ("x-request-id".into(), "access-line-test-2".into()),
        ],
        None,
    )
    .await
    .assert_status(404);
    let line = access_line(&gw, "access-line-test-2");
    let v: serde_json::Value = serde_json::from_str(&line).expect("the access line is JSON");
    assert_eq!(v["fields"]["route"], "unmatched", "{line}");
    assert_eq!(v["fields"]["status"], 404, "{line}");
    assert!(
        !gw.logs().contains(&token),
        "the token leaked into the logs"
    );
}

/// The log level governs the access line too: at `warn` a served request writes none; set to
/// `info` at run time (`POST /admin/log-level`), the next request writes one.
#[tokio::test]
async fn access_lines_follow_the_log_level() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let text = e2e_tests::gateway::unlimited_config_text();
    assert!(
        text.contains("[log]\nlevel = \"info\""),
        "the default config changed shape"
    );
    let text = text.replace("[log]\nlevel = \"info\"", "[log]\nlevel = \"warn\"");
    let config = e2e_tests::gateway::write_config(dir.path(), "warn.toml", &text);
    let gw = Gateway::start_with(&config, &[]);
    let token = gw.mint(&human("Member", "app"), None);
    let rid = "access-line-at-warn";
    list_missions(&gw, &token, rid).await;
    // Lines are written within a few milliseconds; give them far longer.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let logs = gw.logs();
    assert!(
        logs.contains(rid),
        "the audit line is written at any level:\n{logs}"
    );
    assert!(
        !logs.contains("\"target\":\"access\""),
        "an access line at level warn:\n{logs}"
    );

    // Changed at run time on the admin listener: the next request has its access line.
    let c = client();
    let level = gw.admin_url("/admin/log-level");
    let a = send(&c, "GET", &level, &[], None).await;
    assert_eq!(a.json().unwrap()["level"], "warn", "{a}");
    let a = send(&c, "POST", &format!("{level}?level=info"), &[], None).await;
    a.assert_status(200);
    assert_eq!(a.json().unwrap()["level"], "info", "{a}");
    list_missions(&gw, &token, "access-line-at-info").await;
    let line = access_line(&gw, "access-line-at-info");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(
        gw.logs().contains("log level changing"),
        "the change is logged:\n{}",
        gw.logs()
    );
    // A filter that does not parse is refused, and the one in force stays.
    let a = send(&c, "POST", &format!("{level}?level=loud%3D%5B"), &[], None).await;
    a.assert_status(422);
    assert_eq!(a.code().as_deref(), Some("validation/invalid_input"), "{a}");
    let a = send(&c, "GET", &level, &[], None).await;
    assert_eq!(a.json().unwrap()["level"], "info", "{a}");
    let a = send(&c, "POST", &level, &[], None).await;
    a.assert_status(422);
    let a = send(&c, "DELETE", &level, &[], None).await;
    a.assert_status(405);
    assert_eq!(a.header("allow"), Some("GET, POST"), "{a}");
}

/// A backend that takes connections and closes them unanswered: requests get the 502 envelope
/// and count as upstream errors, by pingora's error type.
#[tokio::test]
async fn upstream_errors_are_counted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = e2e_tests::gateway::unlimited_config_text();
    assert!(text.contains("mode = \"embedded\"") && text.contains("socket = \"backend.sock\""));
    let text = text
        .replace(
            "mode = \"embedded\"",
            &format!("mode = \"external\"\naddress = \"{addr}\""),
        )
        .replace("socket = \"backend.sock\"", "");
    let config = e2e_tests::gateway::write_config(dir.path(), "cedargate.toml", &text);
    let gw = Gateway::start_with(&config, &[]);
    let before = gw.metrics().await;
    assert_eq!(value(&before, "cedargate_upstream_errors_total"), 0.0);
    let member = gw.mint(&human("Member", "app"), None);
    send(
        &client(),
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/missions"),
        &[bearer(&member)],
        None,
    )
    .await
    .assert_error(502, "server/upstream_unavailable");
    let after = gw.metrics().await;
    assert!(
        value(&after, "cedargate_upstream_errors_total{kind=") >= 1.0,
        "{after}"
    );
    // Ratios are defined before the first lookup: every cache's hit and miss series exist.
    for cache in ["token", "decision", "delegation", "client_credentials"] {
        for result in ["hit", "miss"] {
            let series =
                format!("cedargate_cache_lookups_total{{cache=\"{cache}\",result=\"{result}\"}}");
            assert!(before.contains(&series), "{series} missing:\n{before}");
        }
    }
}

/// The auth listener writes access lines too: the token endpoint's (the client id as the
/// principal, the cache's lookup, the OAuth error as the code; never the secret) and the
/// discovery documents'.
#[tokio::test]
async fn the_auth_listener_writes_access_lines() {
    use e2e_tests::http::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
    let gw = Gateway::start();
    let wrong_secret = "not-the-secret-8f3a1c";
    for (rid, secret, status) in [
        ("auth-line-1", DEMO_CLIENT_SECRET, 200),
        ("auth-line-2", DEMO_CLIENT_SECRET, 200),
        ("auth-line-3", wrong_secret, 401),
    ] {
        let answer = e2e_tests::http::demo_client_token(&gw, secret, Some(rid)).await;
        assert_eq!(answer.status, status, "{rid}: {answer}");
    }
    let field = |rid: &str, key: &str| -> serde_json::Value {
        let line = access_line(&gw, rid);
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["fields"]["listener"], "auth", "{line}");
        assert!(v["fields"]["total_us"].is_u64(), "{line}");
        v["fields"][key].clone()
    };
    for rid in ["auth-line-1", "auth-line-2", "auth-line-3"] {
        assert_eq!(field(rid, "route"), "post /oauth2/token");
    }
    assert_eq!(field("auth-line-1", "principal"), DEMO_CLIENT_ID);
    assert_eq!(field("auth-line-1", "status"), 200);
    assert_eq!(field("auth-line-2", "cache"), "l1_hit");
    assert_eq!(field("auth-line-3", "status"), 401);
    assert_eq!(field("auth-line-3", "code"), "invalid_client");
    assert_eq!(field("auth-line-3", "decision"), "reject");
    assert_eq!(field("auth-line-1", "decision"), "none");
    let logs = gw.logs();
    for secret in [DEMO_CLIENT_SECRET, wrong_secret] {
        assert!(
            !logs.contains(secret),
            "a client secret in the logs:\n{logs}"
        );
    }
    let jwks = send(
        &client(),
        "GET",
        &gw.auth_url("/.well-known/jwks.json"),
        &[("x-request-id".into(), "auth-line-4".into())],
        None,
    )
    .await;
    jwks.assert_status(200);
    assert_eq!(field("auth-line-4", "route"), "get /.well-known/jwks.json");
}

/// Client connections are counted by listener: open now (up while a keep-alive connection
/// stays, down once it closes) and accepted since start.
#[tokio::test]
async fn connections_are_counted_by_listener() {
    let gw = Gateway::start();
    let open = "cedargate_open_connections{listener=\"api\"}";
    let accepted = "cedargate_connections_accepted_total{listener=\"api\"}";
    let before = gw.metrics().await;
    for listener in ["api", "auth", "admin"] {
        let series = format!("cedargate_open_connections{{listener=\"{listener}\"}}");
        assert!(before.contains(&series), "{series} missing:\n{before}");
    }
    assert_eq!(value(&before, open), 0.0, "{before}");
    let head = b"GET /healthz-nowhere HTTP/1.1\r\nHost: x\r\n\r\n";
    let (stream, answer) = e2e_tests::http::send_raw(gw.api, head, "kept open").await;
    assert_eq!(answer.status, 401, "{answer}");
    let during = gw.metrics().await;
    assert_eq!(value(&during, open), 1.0, "{during}");
    assert_eq!(value(&during, accepted) - value(&before, accepted), 1.0);
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let after = gw.metrics().await;
        if value(&after, open) == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection is still counted:\n{after}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
