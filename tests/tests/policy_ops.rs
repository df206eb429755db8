//! Policy operations in the running gateway: hot reload (admin API, SIGHUP, file change),
//! refused reloads, the shadow set, the decision cache and the audit log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_tests::claims::{human, without};
use e2e_tests::gateway::{Gateway, default_config, metric_value, workspace_root};
use e2e_tests::http::{bearer, client, send};
use serde_json::Value;

/// A private copy of the policy pack and a config that uses it and writes the audit log to
/// a file; `watch` turns file-change reloads on or off.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(watch: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        for e in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, policies.join(p.file_name().unwrap())).unwrap();
            }
        }
        // Line edits of the default config: our policy copy, watch on or off, audit to a file.
        let audit = dir.path().join("audit.jsonl");
        let mut lines: Vec<String> = Vec::new();
        for line in std::fs::read_to_string(default_config()).unwrap().lines() {
            let key = line.split('=').next().unwrap_or_default().trim();
            match key {
                "watch" | "watch_interval_ms" => continue,
                "dir" if line.contains("../policies") => {
                    lines.push(format!("dir = {:?}", policies.display().to_string()));
                    lines.push(format!("watch = {watch}"));
                    lines.push("watch_interval_ms = 200".into());
                }
                "output" => lines.push(format!("output = {:?}", audit.display().to_string())),
                _ => lines.push(line.to_string()),
            }
        }
        let text = e2e_tests::gateway::raise_ip_limit(&lines.join("\n"));
        assert!(
            text.contains("watch_interval_ms") && text.contains("audit.jsonl"),
            "the default config changed shape"
        );
        std::fs::write(dir.path().join("cedargate.toml"), text).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cedargate.toml")
    }

    fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }
}

const FORBID_BADGES: &str = "@id(\"no-badges\")\nforbid (principal, action == Action::\"get /app/v1/workspaces/{workspaceId}/badges\", resource);\n";

async fn status(gw: &Gateway, token: &str, path: &str) -> u16 {
    send(&client(), "GET", &gw.api_url(path), &[bearer(token)], None)
        .await
        .status
}

async fn admin_json(gw: &Gateway, method: &str, path: &str) -> (u16, Value) {
    let a = send(&client(), method, &gw.admin_url(path), &[], None).await;
    (a.status, a.json().unwrap_or(Value::Null))
}

async fn metric(gw: &Gateway, prefix: &str) -> f64 {
    metric_value(&gw.metrics().await, prefix)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

const BADGES: &str = "/app/v1/workspaces/ws-demo/badges";

#[tokio::test]
async fn admin_reload_applies_good_sets_and_refuses_bad_ones() {
    let setup = Setup::new(false);
    let gw = Gateway::start_with(&setup.config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    assert_eq!(status(&gw, &member, BADGES).await, 200);
    let (_, before) = admin_json(&gw, "GET", "/admin/policies").await;
    let version_series = |v: &Value| {
        format!(
            "cedargate_policy_version_info{{set=\"active\",version=\"{}\"}}",
            v.as_str().unwrap()
        )
    };
    // The version in force is a metric from the start; reload counters start at 0.
    assert_eq!(metric(&gw, &version_series(&before["version"])).await, 1.0);
    assert_eq!(
        metric(&gw, "cedargate_policy_reloads_total{result=\"refused\"}").await,
        0.0
    );

    // A broken set is refused, decisions stay, the refusal is visible.
    write(
        &setup.policies().join("zz.cedar"),
        "@id(\"x\")\npermit (principal, action, resource\n",
    );
    let (code, body) = admin_json(&gw, "POST", "/admin/policies/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("zz.cedar:"),
        "{body}"
    );
    assert_eq!(status(&gw, &member, BADGES).await, 200);
    let (_, after) = admin_json(&gw, "GET", "/admin/policies").await;
    assert_eq!(after["version"], before["version"]);
    assert!(
        after["lastRefused"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("zz.cedar")
    );

    // A schema violation is refused too.
    write(
        &setup.policies().join("zz.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { principal.nope };\n",
    );
    assert_eq!(
        admin_json(&gw, "POST", "/admin/policies/reload").await.0,
        422
    );
    assert_eq!(status(&gw, &member, BADGES).await, 200);

    // A good set is applied at once, and the decision cache does not serve the old answer.
    write(&setup.policies().join("zz.cedar"), FORBID_BADGES);
    let (code, body) = admin_json(&gw, "POST", "/admin/policies/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_ne!(body["version"], before["version"]);
    assert_eq!(status(&gw, &member, BADGES).await, 403);
    assert_eq!(
        metric(&gw, "cedargate_policy_reloads_total{result=\"refused\"}").await,
        2.0
    );
    assert_eq!(
        metric(&gw, "cedargate_policy_reloads_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(metric(&gw, &version_series(&body["version"])).await, 1.0);
    assert_eq!(
        metric(&gw, &version_series(&before["version"])).await,
        0.0,
        "the replaced version is still shown"
    );
    assert_eq!(
        status(&gw, &member, "/app/v1/workspaces/ws-demo/missions").await,
        200
    );
}

#[tokio::test]
async fn sighup_and_file_changes_reload() {
    let setup = Setup::new(true);
    let gw = Gateway::start_with(&setup.config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    assert_eq!(status(&gw, &member, BADGES).await, 200);

    write(&setup.policies().join("zz.cedar"), FORBID_BADGES);
    let started = Instant::now();
    while status(&gw, &member, BADGES).await != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGHUP reloads too (and does not kill the process).
    let setup2 = Setup::new(false);
    let mut gw2 = Gateway::start_with(&setup2.config(), &[]);
    let member2 = gw2.mint(&human("Member", "app"), None);
    write(&setup2.policies().join("zz.cedar"), FORBID_BADGES);
    // `pid` reads <data-dir>/cedargate.pid, which serve writes (and panics without it).
    e2e_tests::gateway::send_signal(gw2.pid(), "HUP");
    let started = Instant::now();
    while status(&gw2, &member2, BADGES).await != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw2.exited().is_none(), "SIGHUP must not stop the gateway");
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let setup = Setup::new(false);
    let gw = Gateway::start_with(&setup.config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    let url = gw.api_url("/app/v1/workspaces/ws-demo/missions");
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, token) = (url.clone(), member.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            for _ in 0..150 {
                let a = send(&c, "GET", &url, &[bearer(&token)], None).await;
                if a.status != 200 {
                    failures.push(a.status);
                }
            }
            failures
        }));
    }
    // Alternate two valid sets (both allow the request) while the load runs.
    for i in 0..10 {
        let text = if i % 2 == 0 {
            FORBID_BADGES
        } else {
            "@id(\"nothing\")\nforbid (principal, action, resource) when { false };\n"
        };
        write(&setup.policies().join("zz.cedar"), text);
        let (code, body) = admin_json(&gw, "POST", "/admin/policies/reload").await;
        assert_eq!(code, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        let failures = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during reloads: {failures:?}"
        );
    }
}

#[tokio::test]
async fn shadow_set_never_decides_but_differences_are_counted_and_audited() {
    let setup = Setup::new(false);
    let shadow = setup.policies().join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    for e in std::fs::read_dir(setup.policies()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cedar") {
            std::fs::copy(&p, shadow.join(p.file_name().unwrap())).unwrap();
        }
    }
    write(&shadow.join("zz.cedar"), FORBID_BADGES);
    let gw = Gateway::start_with(&setup.config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    assert_eq!(
        status(&gw, &member, BADGES).await,
        200,
        "the shadow set must not decide"
    );
    assert_eq!(
        status(&gw, &member, "/app/v1/workspaces/ws-demo/missions").await,
        200
    );
    assert_eq!(metric(&gw, "cedargate_shadow_differences_total").await, 1.0);
    let (_, st) = admin_json(&gw, "GET", "/admin/policies").await;
    assert!(st["shadow"]["version"].is_string(), "{st}");

    let started = Instant::now();
    let lines = loop {
        let lines = setup.audit_lines();
        if lines.len() >= 2 || started.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let badges: Vec<&Value> = lines.iter().filter(|l| l["path"] == BADGES).collect();
    assert_eq!(badges.len(), 1);
    assert_eq!(badges[0]["decision"], "allow");
    assert_eq!(badges[0]["shadow"]["decision"], "deny");
    assert_eq!(badges[0]["shadow"]["reasons"][0], "no-badges");
    let missions: Vec<&Value> = lines.iter().filter(|l| l["path"] != BADGES).collect();
    assert!(
        missions[0].get("shadow").is_none(),
        "no shadow entry when both agree"
    );
}

#[tokio::test]
async fn decision_cache_keys_on_the_whole_request_and_audit_lines_carry_no_token() {
    let setup = Setup::new(false);
    let gw = Gateway::start_with(&setup.config(), &[]);
    // A Member without premium: the free listing is allowed, the premium one denied, even
    // though principal, action and resource are identical (only the context differs).
    let member = gw.mint(&without(&human("Member", "app"), "premium"), None);
    let catalog = "/app/v1/workspaces/ws-demo/catalog";
    for _ in 0..2 {
        assert_eq!(
            status(&gw, &member, &format!("{catalog}?tier=free")).await,
            200
        );
        assert_eq!(
            status(&gw, &member, &format!("{catalog}?tier=premium")).await,
            403
        );
    }
    // Undeclared query parameters do not split the cache but do not change decisions either
    // (one named like a credential is kept out of the audit line below).
    assert_eq!(
        status(
            &gw,
            &member,
            &format!("{catalog}?tier=free&x=1&password=hunter2")
        )
        .await,
        200
    );
    assert!(
        metric(
            &gw,
            "cedargate_cache_lookups_total{cache=\"decision\",result=\"hit\"}"
        )
        .await
            >= 2.0
    );

    let started = Instant::now();
    let lines = loop {
        let lines = setup.audit_lines();
        if lines.len() >= 5 || started.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().any(|l| l["cacheHit"] == true));
    let raw = std::fs::read_to_string(setup.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains(&member),
        "the token must never reach the audit log"
    );
    let sig = member.rsplit('.').next().unwrap();
    assert!(!raw.contains(sig));
    assert!(!raw.contains("hunter2"), "a password reached the audit log");
    assert!(
        lines
            .iter()
            .any(|l| l["query"] == "tier=free&x=1&password=***"),
        "the redacted query is kept: {lines:?}"
    );
    for l in &lines {
        for field in [
            "requestId",
            "timestamp",
            "principal",
            "action",
            "resource",
            "decision",
            "reasons",
            "errors",
            "decisionUs",
            "cacheHit",
            "claims",
        ] {
            assert!(l.get(field).is_some(), "audit line lacks {field}: {l}");
        }
    }
    let denied = lines.iter().find(|l| l["decision"] == "deny").unwrap();
    assert_eq!(denied["reasons"][0], "premium-listing-requires-premium");
}

#[tokio::test]
async fn replay_of_the_gateways_own_audit_log_lists_exactly_the_changed_decisions() {
    let setup = Setup::new(false);
    let gw = Gateway::start_with(&setup.config(), &[]);
    let member = gw.mint(&human("Member", "app"), None);
    let badges = send(
        &client(),
        "GET",
        &gw.api_url(BADGES),
        &[bearer(&member)],
        None,
    )
    .await;
    badges.assert_status(200);
    let badges_id = badges.header("x-request-id").unwrap().to_string();
    assert_eq!(
        status(&gw, &member, "/app/v1/workspaces/ws-demo/missions").await,
        200
    );
    assert_eq!(
        status(&gw, &member, "/dashboard/v1/workspaces/ws-demo/users").await,
        403
    );
    let started = Instant::now();
    while setup.audit_lines().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "audit lines missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The candidate set forbids badges: exactly that one decision changes.
    let candidate = setup.dir.path().join("candidate");
    std::fs::create_dir(&candidate).unwrap();
    for e in std::fs::read_dir(setup.policies()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, candidate.join(p.file_name().unwrap())).unwrap();
        }
    }
    write(&candidate.join("zz.cedar"), FORBID_BADGES);
    let log = setup.dir.path().join("audit.jsonl");
    let out = e2e_tests::gateway::run_cli(
        &[
            "policy",
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--policies",
            candidate.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let changed: Vec<&str> = text.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(changed.len(), 1, "{text}");
    assert!(
        changed[0].starts_with(&badges_id) && changed[0].contains("allow -> deny"),
        "{text}"
    );

    // Against the active set nothing changes.
    let same = e2e_tests::gateway::run_cli(
        &[
            "policy",
            "replay",
            "--log",
            log.to_str().unwrap(),
            "--policies",
            setup.policies().to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}
