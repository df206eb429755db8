//! Memory the gateway hands back: a client-secret check (argon2id, 19 MiB by design) must not
//! leave the process 19 MiB larger once answered (the allocator would keep it until its next
//! purge; the idle RSS goal is ≤ 64 MB).

use e2e_tests::gateway::Gateway;
use e2e_tests::http::{DEMO_CLIENT_SECRET, client, demo_client_token};

/// The process's resident set, in KiB.
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test]
async fn a_secret_check_leaves_no_resident_memory_behind() {
    let gw = Gateway::start();
    // A first request (no secret check) settles the listener's threads and buffers.
    let jwks = client()
        .get(gw.auth_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let before = rss_kib(&gw);
    demo_client_token(&gw, DEMO_CLIENT_SECRET, None)
        .await
        .assert_status(200);
    let grown = rss_kib(&gw).saturating_sub(before);
    assert!(
        grown < 10 * 1024,
        "RSS grew by {grown} KiB after a token request (argon2 uses 19 MiB)"
    );
    // A wrong secret misses the token cache: a full argon2id check each time.
    for _ in 0..3 {
        demo_client_token(&gw, "not-the-secret", None)
            .await
            .assert_status(401);
        let grown = rss_kib(&gw).saturating_sub(before);
        assert!(
            grown < 10 * 1024,
            "RSS grew by {grown} KiB after a failed secret check (argon2 uses 19 MiB)"
        );
    }
}
