//! Rate limits through the running gateway: the default per-IP rule, exactness under
//! concurrent load, the 429 answer and its headers, principal rules (client, tenant plan,
//! route), and count-only mode.

use std::sync::Arc;

use e2e_tests::claims::{human, m2m, with};
use e2e_tests::gateway::{
    Gateway, metric_value, raise_ip_limit, relocatable_config_text, write_config,
};
use e2e_tests::http::{Answer, bearer, client, send};
use serde_json::json;

const MISSIONS: &str = "/app/v1/workspaces/ws-demo/missions";

/// The default config with `[rate_limit.ip]` replaced by `ip_rule` and `extra` appended.
fn config_with(dir: &std::path::Path, ip_rule: &str, extra: &str) -> std::path::PathBuf {
    let text = relocatable_config_text();
    let start = text
        .find("[rate_limit.ip]")
        .expect("[rate_limit.ip] in the default config");
    let end = start
        + text[start..].find("window_seconds = 300").expect("window")
        + "window_seconds = 300".len();
    let text = format!(
        "{}[rate_limit.ip]\n{ip_rule}{}\n{extra}\n",
        &text[..start],
        &text[end..]
    );
    write_config(dir, "cedargate.toml", &text)
}

#[track_caller]
fn assert_limited(a: &Answer, rule: &str) {
    a.assert_error(429, "rate_limit/exceeded");
    let retry: u64 = a
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {a}"));
    assert!(retry >= 1, "{a}");
    let policy = a
        .header("ratelimit-policy")
        .unwrap_or_else(|| panic!("no RateLimit-Policy: {a}"));
    assert!(policy.starts_with(&format!("\"{rule}\";q=")), "{a}");
    let state = a
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit: {a}"));
    assert!(state.starts_with(&format!("\"{rule}\";r=0;t=")), "{a}");
    assert_eq!(a.json().unwrap()["rule"], rule, "{a}");
}

/// The embedded default: 100 requests per 300 s per client IP, counted before authentication.
#[tokio::test]
async fn the_default_ip_rule_admits_100_requests_per_five_minutes() {
    let gw = Gateway::start_with(&e2e_tests::gateway::default_config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..100 {
        // Half without a token: refused by authentication, but counted by the IP rule first.
        let headers = if i % 2 == 0 {
            vec![bearer(&member)]
        } else {
            vec![]
        };
        let a = send(&c, "GET", &gw.api_url(MISSIONS), &headers, None).await;
        statuses.push(a.status);
        if i == 0 {
            assert_eq!(
                a.header("ratelimit-policy"),
                Some("\"ip\";q=100;w=300"),
                "{a}"
            );
            assert_eq!(
                a.header("ratelimit")
                    .map(|v| v.starts_with("\"ip\";r=99;t=")),
                Some(true),
                "{a}"
            );
        }
    }
    assert!(!statuses.contains(&429), "{statuses:?}");
    let a = send(&c, "GET", &gw.api_url(MISSIONS), &[bearer(&member)], None).await;
    assert_limited(&a, "ip");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    // At most the window plus one bucket (300 s / 20 buckets): the oldest request's bucket
    // counts until all of it has left the window.
    assert!(retry <= 315, "{a}");
}

/// Within one instance, admitted requests never exceed the limit, also when they race.
#[tokio::test]
async fn the_limit_is_exact_under_concurrent_load() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        &config_with(dir.path(), "limit = 50\nwindow_seconds = 120\n", ""),
        &[],
    );
    // The configured rule's refusal series is there, at 0, before any refusal.
    let before = gw.metrics().await;
    assert!(
        before
            .lines()
            .any(|l| l == "cedargate_ratelimit_rejections_total{action=\"block\",rule=\"ip\"} 0"),
        "no zero series for the ip rule:\n{before}"
    );
    let member = gw.mint(&human("Member", "app"), None);
    let c = client();
    let url = Arc::new(gw.api_url(MISSIONS));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url, token) = (c.clone(), url.clone(), member.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..15 {
                statuses.push(send(&c, "GET", &url, &[bearer(&token)], None).await.status);
            }
            statuses
        }));
    }
    let mut admitted = 0;
    let mut limited = 0;
    for t in tasks {
        for s in t.await.unwrap() {
            match s {
                429 => limited += 1,
                200 => admitted += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(admitted, 50, "admitted {admitted}, limited {limited}");
    assert_eq!(limited, 16 * 15 - 50);
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cedargate_ratelimit_rejections_total")
                && l.contains("rule=\"ip\"")
                && l.contains("action=\"block\"")
                && l.ends_with(&format!(" {limited}"))),
        "rejections not counted:\n{metrics}"
    );
}

/// A burst window beside the main one.
#[tokio::test]
async fn a_burst_window_refuses_fast_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        &config_with(
            dir.path(),
            "limit = 1000\nwindow_seconds = 300\nburst_limit = 5\nburst_window_seconds = 60\n",
            "",
        ),
        &[],
    );
    let member = gw.mint(&human("Member", "app"), None);
    let c = client();
    for _ in 0..5 {
        send(&c, "GET", &gw.api_url(MISSIONS), &[bearer(&member)], None)
            .await
            .assert_status(200);
    }
    let a = send(&c, "GET", &gw.api_url(MISSIONS), &[bearer(&member)], None).await;
    assert_limited(&a, "ip");
    assert!(
        a.header("ratelimit-policy").unwrap().ends_with(";q=5;w=60"),
        "{a}"
    );
}

/// Principal rules: per M2M client and per tenant plan.
#[tokio::test]
async fn principal_rules_count_per_client_tenant_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[rate_limit.client]
limit = 3
window_seconds = 60

[rate_limit.tenant]
default_plan = "standard"
workspaces = { "ws-big" = "premium" }

[rate_limit.plans.standard]
limit = 6
window_seconds = 60

[rate_limit.plans.premium]
limit = 1000
window_seconds = 60

"#;
    let text = raise_ip_limit(
        &std::fs::read_to_string(config_with(
            dir.path(),
            "limit = 100\nwindow_seconds = 300\n",
            extra,
        ))
        .unwrap(),
    );
    let gw = Gateway::start_with(&write_config(dir.path(), "limits.toml", &text), &[]);
    let c = client();
    let get = |token: String, path: &'static str| {
        let c = c.clone();
        let url = gw.api_url(&format!("/app/v1/workspaces/ws-demo/{path}"));
        async move { send(&c, "GET", &url, &[bearer(&token)], None).await }
    };
    // The M2M client: 3 per minute, whatever the route.
    let svc = gw.mint(&m2m("app/read"), None);
    for _ in 0..3 {
        get(svc.clone(), "missions").await.assert_status(200);
    }
    assert_limited(&get(svc.clone(), "missions").await, "client");
    // Another client of the same workspace has its own 3 (the refused request above was not
    // counted by the tenant rule, which comes after the client rule: tenant 4 of 6 now).
    let other = gw.mint(
        &with(&m2m("app/read"), "client_id", json!("svc-other")),
        None,
    );
    get(other.clone(), "missions").await.assert_status(200);
    // Humans of ws-demo share the tenant's standard plan (5 of 6 after this one).
    let alice = gw.mint(&human("Member", "app"), None);
    get(alice.clone(), "missions").await.assert_status(200);
    // The 6th request of the workspace passes, the 7th is refused by the tenant plan.
    let bob = gw.mint(&with(&human("Member", "app"), "sub", json!("u-bob")), None);
    get(bob.clone(), "badges").await.assert_status(200);
    let a = get(bob.clone(), "badges").await;
    assert_limited(&a, "tenant:standard");
    let metrics = gw.metrics().await;
    for rule in ["client", "tenant:standard"] {
        let series =
            format!("cedargate_ratelimit_rejections_total{{action=\"block\",rule=\"{rule}\"}}");
        assert_eq!(metric_value(&metrics, &series), 1.0, "{series}:\n{metrics}");
    }
}

/// Route rules on their own, and count-only mode.
#[tokio::test]
async fn route_rules_and_count_only_mode() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[rate_limit.routes]]
route = "GET /app/v1/workspaces/{workspaceId}/badges"
key = "principal"
limit = 2
window_seconds = 60

[[rate_limit.routes]]
route = "GET /app/v1/workspaces/{workspaceId}/levels"
key = "workspace"
limit = 1
window_seconds = 60
action = "count"
"#;
    let gw = Gateway::start_with(
        &config_with(dir.path(), "limit = 1000\nwindow_seconds = 300\n", extra),
        &[],
    );
    let c = client();
    let alice = gw.mint(&human("Member", "app"), None);
    let bob = gw.mint(&with(&human("Member", "app"), "sub", json!("u-bob")), None);
    let get = |token: &str, path: &str| {
        let c = c.clone();
        let url = gw.api_url(&format!("/app/v1/workspaces/ws-demo/{path}"));
        let h = vec![bearer(token)];
        async move { send(&c, "GET", &url, &h, None).await }
    };
    for _ in 0..2 {
        get(&alice, "badges").await.assert_status(200);
    }
    let a = get(&alice, "badges").await;
    assert_limited(&a, "route:get /app/v1/workspaces/{workspaceId}/badges");
    // Per principal: bob has his own two.
    get(&bob, "badges").await.assert_status(200);
    // Other routes are not limited by it.
    get(&alice, "missions").await.assert_status(200);
    // Count-only: over the limit, still answered.
    for _ in 0..3 {
        get(&alice, "levels").await.assert_status(200);
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cedargate_ratelimit_rejections_total")
                && l.contains("levels")
                && l.contains("action=\"count\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
}

/// A config with a broken limit is refused at start-up, naming the key.
#[test]
fn a_bad_limit_is_refused_by_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with(dir.path(), "limit = 0\nwindow_seconds = 300\n", "");
    let out = e2e_tests::gateway::run_cli(
        &["config", "check", path.to_str().unwrap()],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rate_limit.ip.limit"), "{err}");
}
