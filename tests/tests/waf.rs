//! The WAF through the running gateway: attacks refused before authentication, ordinary
//! traffic untouched, size limits, bodies up to the limit reaching the backend intact, count
//! mode, per-route exclusions, IP lists (and their reload) and trusted proxies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e_tests::claims::human;
use e2e_tests::echo::{echo_backend, external_backend_config_text, hex};
use e2e_tests::gateway::{Gateway, unlimited_config_text, write_config};
use e2e_tests::http::{Answer, answer_of, bearer, client, send};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

const MISSIONS: &str = "/app/v1/workspaces/ws-demo/missions";

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

#[track_caller]
fn assert_blocked(a: &Answer, rule: &str, payload: &str) {
    a.assert_error(403, "waf/blocked");
    assert_eq!(
        a.json().unwrap()["rule"].as_str(),
        Some(rule),
        "rule of {a}"
    );
    assert!(
        !a.text().contains(payload),
        "the answer must not echo the payload: {a}"
    );
}

#[tokio::test]
async fn attacks_are_refused_before_authentication_naming_the_rule() {
    let gw = Gateway::shared(&GW);
    let c = client();
    let url = |q: &str| gw.api_url(&format!("{MISSIONS}?{q}"));
    // No token at all: the WAF answers before authentication would (401).
    let cases = [
        ("limit=1%27%20OR%20%271%27%3D%271", "sqli", "OR '1'='1"),
        (
            "nextToken=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E",
            "xss",
            "<script>",
        ),
        // Percent-encoded three times over.
        (
            "nextToken=%25253Cscript%25253Ealert(1)%25253C%25252Fscript%25253E",
            "xss",
            "alert(1)",
        ),
        (
            "limit=..%2F..%2F..%2Fetc%2Fpasswd",
            "path-traversal",
            "etc/passwd",
        ),
        (
            "limit=1%3Bwhoami%20%7C%7C%20uname%20-a",
            "command-injection",
            "whoami",
        ),
    ];
    for (query, rule, payload) in cases {
        let a = send(&c, "GET", &url(query), &[], None).await;
        assert_blocked(&a, rule, payload);
    }
    // In a header, a cookie and a JSON body (nested), with or without a token.
    let a = send(
        &c,
        "GET",
        &gw.api_url(MISSIONS),
        &[header("user-agent", "<img src=x onerror=alert(1)>")],
        None,
    )
    .await;
    assert_blocked(&a, "xss", "onerror");
    let a = send(
        &c,
        "GET",
        &gw.api_url(MISSIONS),
        &[header(
            "cookie",
            "theme=dark; pref=' UNION SELECT password FROM users--",
        )],
        None,
    )
    .await;
    assert_blocked(&a, "sqli", "UNION SELECT");
    let manager = gw.mint(&human("Manager", "dashboard"), None);
    let body = json!({"name": "Weekly", "rules": {"filters": [{"q": "1' OR '1'='1' --"}]}});
    let a = send(
        &c,
        "POST",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"),
        &[bearer(&manager)],
        Some(&body),
    )
    .await;
    assert_blocked(&a, "sqli", "OR '1'='1'");
    let a = send(
        &c,
        "POST",
        &gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"),
        &[bearer(&manager)],
        Some(&json!({"name": "{{7*7}}${T(java.lang.Runtime).getRuntime().exec('id')}"})),
    )
    .await;
    assert_blocked(&a, "template-injection", "getRuntime");
}

#[tokio::test]
async fn ordinary_traffic_passes() {
    let gw = Gateway::shared(&GW);
    let c = client();
    let member = gw.mint(&human("Member", "app"), None);
    let manager = gw.mint(&human("Manager", "dashboard"), None);
    let jwt_cookie = format!("session={member}; theme=dark");
    let a = send(
        &c,
        "GET",
        &gw.api_url(&format!("{MISSIONS}?limit=5")),
        &[
            bearer(&member),
            header("cookie", &jwt_cookie),
            header("referer", "https://app.example.com/missions?tab=active&sort=-points"),
            header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
            ),
        ],
        None,
    )
    .await;
    a.assert_status(200);
    for body in [
        json!({"name": "O'Brien's onboarding", "description": "Select a union rep, then drop by -- it's fun!"}),
        json!({"name": "Markdown", "description": "# Week 1\n\n**Bold** _and_ [a link](https://example.com/a?b=c&d=e)\n\n```\nlet x = 1;\n```"}),
        json!({"name": "D'Angelo & Sons", "description": "Use 1 or 2 more steps; 50% off (or more) -- see the FAQ."}),
        json!({"name": "avatar", "description": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}),
    ] {
        let a = send(
            &c,
            "POST",
            &gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"),
            &[bearer(&manager)],
            Some(&body),
        )
        .await;
        assert_ne!(a.code().as_deref(), Some("waf/blocked"), "{a}");
        assert!(a.forwarded(), "benign body should reach the backend: {a}");
    }
}

#[tokio::test]
async fn size_limits_answer_413_414_and_431() {
    let gw = Gateway::shared(&GW);
    let c = client();
    let long = "a".repeat(9000);
    send(
        &c,
        "GET",
        &gw.api_url(&format!("{MISSIONS}?nextToken={long}")),
        &[],
        None,
    )
    .await
    .assert_error(414, "waf/uri_too_long");
    let many: Vec<(String, String)> = (0..101).map(|i| header(&format!("x-h{i}"), "1")).collect();
    send(&c, "GET", &gw.api_url(MISSIONS), &many, None)
        .await
        .assert_error(431, "waf/headers_too_large");
    let big = header("x-big", &"b".repeat(33 * 1024));
    send(&c, "GET", &gw.api_url(MISSIONS), &[big], None)
        .await
        .assert_error(431, "waf/headers_too_large");
    // Beyond pingora's own limits (a URI over 64 KiB, more than 256 headers, a head over
    // 1 MiB), which it refuses before the WAF sees the head: the same statuses.
    let huge_url = format!(
        "GET {MISSIONS}?nextToken={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let headers_300: String = (0..300).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let too_many = format!("GET {MISSIONS} HTTP/1.1\r\nHost: x\r\n{headers_300}\r\n");
    let huge_header = format!(
        "GET {MISSIONS} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1_100_000)
    );
    for (head, status, code) in [
        (huge_url, 414, "waf/uri_too_long"),
        (too_many, 431, "waf/headers_too_large"),
        (huge_header, 431, "waf/headers_too_large"),
    ] {
        // pingora may answer before it read everything: send_raw takes a cut-short write.
        // The admin listener's heads are measured the same way.
        for addr in [gw.api, gw.admin] {
            let (_, answer) = e2e_tests::http::send_raw(addr, head.as_bytes(), &head[..40]).await;
            answer.assert_error(status, code);
            assert_eq!(answer.header("server"), None, "{answer}");
        }
    }
    // Over 6 MB, refused from Content-Length alone.
    let manager = gw.mint(&human("Manager", "dashboard"), None);
    let resp = c
        .post(gw.api_url("/dashboard/v1/workspaces/ws-demo/missions"))
        .header("authorization", format!("Bearer {manager}"))
        .header("content-type", "application/json")
        .body(vec![b' '; 6 * 1024 * 1024 + 1])
        .send()
        .await;
    match resp {
        Ok(resp) => answer_of("POST 6 MB + 1".into(), resp)
            .await
            .assert_error(413, "waf/payload_too_large"),
        // The gateway may answer and close before the client finished sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error {e}"),
    }
}

/// The default config pointed at an external backend, with `waf_extra` added to `[waf]`.
fn external_backend_config(dir: &Path, backend: SocketAddr, waf_extra: &str) -> std::path::PathBuf {
    let text =
        external_backend_config_text(backend).replace("[waf]\n", &format!("[waf]\n{waf_extra}\n"));
    write_config(dir, "cedargate.toml", &text)
}

#[tokio::test]
async fn bodies_up_to_the_limit_reach_the_backend_intact() {
    let (backend, seen) = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&external_backend_config(dir.path(), backend, ""), &[]);
    let manager = gw.mint(&human("Manager", "dashboard"), None);
    let c = client();
    let url = gw.api_url("/dashboard/v1/workspaces/ws-demo/missions");
    // 5 MB of benign JSON, sent with a Content-Length, and 300 KB sent chunked.
    let five_mb = format!(
        "{{\"name\":\"big\",\"description\":\"{}\"}}",
        "lorem ipsum ".repeat(5 * 1024 * 1024 / 12)
    );
    for (what, body) in [
        ("5 MB", five_mb.into_bytes()),
        ("small", b"{\"name\":\"small\"}".to_vec()),
    ] {
        let resp = c
            .post(&url)
            .header("authorization", format!("Bearer {manager}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let a = answer_of(format!("POST {what}"), resp).await;
        a.assert_status(200);
        let v: Value = a.json().unwrap();
        assert_eq!(v["len"], body.len(), "{what}: {a}");
        assert_eq!(v["sha256"], hex(&Sha256::digest(&body)), "{what}: {a}");
    }
    // 300 KB sent chunked (no Content-Length): inspected as it streams, forwarded whole.
    let chunks: Vec<String> = (0..300)
        .map(|i| format!("{:<1024}", format!("line {i} of a long lesson")))
        .collect();
    let whole: String = chunks.concat();
    let (status, reply) = post_chunked(
        gw.api,
        "/dashboard/v1/workspaces/ws-demo/missions",
        &manager,
        &chunks,
    )
    .await;
    assert_eq!(status, 200, "chunked: {reply}");
    let v: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(v["len"], whole.len());
    assert_eq!(v["sha256"], hex(&Sha256::digest(whole.as_bytes())));
    // An attack in a chunked body is refused too.
    let (status, reply) = post_chunked(
        gw.api,
        "/dashboard/v1/workspaces/ws-demo/missions",
        &manager,
        &[
            "{\"name\": \"x\", \"description\": \"".to_string(),
            "<script>alert(1)</script>\"}".to_string(),
        ],
    )
    .await;
    assert_eq!(status, 403, "chunked attack: {reply}");
    assert!(reply.contains("waf/blocked"), "{reply}");
    // An attack in the head of a body too large to read ahead: refused, and the backend never
    // receives the whole body.
    let before = seen.complete.load(Ordering::SeqCst);
    let attack = format!(
        "{{\"name\":\"<script>alert(1)</script>\",\"description\":\"{}\"}}",
        "x".repeat(200 * 1024)
    );
    let a = send_raw_body(&c, &url, &manager, attack).await;
    a.assert_error(403, "waf/blocked");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.complete.load(Ordering::SeqCst),
        before,
        "the blocked body reached the backend"
    );
    drop(gw);
}

async fn send_raw_body(c: &reqwest::Client, url: &str, token: &str, body: String) -> Answer {
    let resp = c
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    answer_of(format!("POST {url}"), resp).await
}

/// `POST path` with `Transfer-Encoding: chunked`, one chunk per item; (status, body text).
async fn post_chunked(
    addr: SocketAddr,
    path: &str,
    token: &str,
    chunks: &[String],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in chunks {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    // The gateway may answer and close before everything is written.
    let _ = stream.write_all(req.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => text[a..=b].to_string(),
        _ => text,
    };
    (status, body)
}

#[tokio::test]
async fn count_mode_and_route_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let text = unlimited_config_text().replace("[waf]\n", "[waf]\nrules = { xss = \"count\" }\n")
        + "\n[[waf.exclusions]]\nroute = \"POST /dashboard/v1/workspaces/{workspaceId}/missions\"\nrules = [\"sqli\"]\nfields = [\"body:description\"]\n";
    let gw = Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[]);
    let c = client();
    let manager = gw.mint(&human("Manager", "dashboard"), None);
    let url = gw.api_url("/dashboard/v1/workspaces/ws-demo/missions");
    // SQL in the excluded field passes; the same SQL elsewhere is blocked.
    let sql = "SELECT name FROM users WHERE id = 1 OR 1=1; --";
    let a = send(
        &c,
        "POST",
        &url,
        &[bearer(&manager)],
        Some(&json!({"name": "SQL lesson", "description": sql})),
    )
    .await;
    assert_ne!(a.code().as_deref(), Some("waf/blocked"), "{a}");
    let a = send(
        &c,
        "POST",
        &url,
        &[bearer(&manager)],
        Some(&json!({"name": sql})),
    )
    .await;
    assert_blocked(&a, "sqli", "OR 1=1");
    // xss counts only: the request goes on, and the metric moves.
    let a = send(
        &c,
        "GET",
        &gw.api_url(&format!(
            "{MISSIONS}?nextToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        )),
        &[bearer(&gw.mint(&human("Member", "app"), None))],
        None,
    )
    .await;
    assert_ne!(a.code().as_deref(), Some("waf/blocked"), "{a}");
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cedargate_waf_matches_total")
                && l.contains("rule=\"xss\"")
                && l.contains("action=\"count\"")),
        "no xss count in metrics:\n{metrics}"
    );
}

/// The auth listener: attacks in the request head are refused before the token endpoint or
/// the discovery documents run; token request bodies (client secrets) are not inspected.
#[tokio::test]
async fn the_auth_listener_refuses_attacks_in_the_request_head() {
    let gw = Gateway::shared(&GW);
    let c = client();
    let form = |query: &str| {
        c.post(gw.auth_url(&format!("/oauth2/token{query}")))
            .header("authorization", e2e_tests::http::demo_basic())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=app/read")
    };
    let a = answer_of(
        "token request with a traversal in its query".into(),
        form("?x=..%2F..%2F..%2Fetc%2Fpasswd").send().await.unwrap(),
    )
    .await;
    assert_blocked(&a, "path-traversal", "etc/passwd");
    let xss_agent = [header("user-agent", "<img src=x onerror=alert(1)>")];
    for (path, headers, rule, payload) in [
        ("/.well-known/jwks.json", &xss_agent[..], "xss", "onerror"),
        (
            "/.well-known/openid-configuration?q=1%27%20OR%20%271%27%3D%271",
            &[],
            "sqli",
            "OR '1'='1",
        ),
    ] {
        let a = send(&c, "GET", &gw.auth_url(path), headers, None).await;
        assert_blocked(&a, rule, payload);
    }
    // The same requests without the attack are answered.
    let a = answer_of("token request".into(), form("").send().await.unwrap()).await;
    a.assert_status(200);
    send(&c, "GET", &gw.auth_url("/.well-known/jwks.json"), &[], None)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn ip_lists_block_reload_and_trusted_proxies_name_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let deny = dir.path().join("deny.txt");
    std::fs::write(&deny, "# test list\n127.0.0.1\n").unwrap();
    let allow = dir.path().join("allow.txt");
    std::fs::write(&allow, "").unwrap();
    let text = unlimited_config_text().replace(
        "trusted_proxies = []",
        &format!(
            "trusted_proxies = [\"127.0.0.1/32\"]\nip_deny_file = {:?}\nip_allow_file = {:?}\nip_lists_watch_interval_ms = 100",
            deny.display().to_string(),
            allow.display().to_string()
        ),
    );
    let gw = Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[]);
    let c = client();
    let member = gw.mint(&human("Member", "app"), None);
    let get = |xff: Option<&str>| {
        let mut h = vec![bearer(&member)];
        if let Some(x) = xff {
            h.push(header("x-forwarded-for", x));
        }
        let c = c.clone();
        let url = gw.api_url(MISSIONS);
        async move { send(&c, "GET", &url, &h, None).await }
    };
    // The token endpoint, as a client with the right credentials.
    let token = |xff: Option<&str>| {
        let mut req = c
            .post(gw.auth_url("/oauth2/token"))
            .header("authorization", e2e_tests::http::demo_basic())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials");
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let what = format!("POST /oauth2/token (X-Forwarded-For: {xff:?})");
        async move { answer_of(what, req.send().await.expect("the auth listener answers")).await }
    };
    // The peer (a trusted proxy) is denied when it speaks for itself, on both listeners.
    let a = get(None).await;
    assert_blocked(&a, "ip-deny-list", "127.0.0.1");
    assert_blocked(&token(None).await, "ip-deny-list", "127.0.0.1");
    token(Some("198.51.100.20")).await.assert_status(200);
    // Behind the trusted proxy, the client named by X-Forwarded-For counts.
    get(Some("198.51.100.20")).await.assert_status(200);
    // Reload by file change: deny that client instead.
    std::fs::write(&deny, "198.51.100.0/24\n2001:db8::/32\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(Some("198.51.100.20")).await;
        if a.status == 403 {
            assert_blocked(&a, "ip-deny-list", "198.51.100");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deny list was not reloaded: {a}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(None).await.assert_status(200);
    assert_blocked(
        &token(Some("198.51.100.20")).await,
        "ip-deny-list",
        "198.51.100",
    );
    token(None).await.assert_status(200);
    // A client cannot pick its address by prepending entries to the header.
    let a = get(Some("203.0.113.1, 198.51.100.20")).await;
    assert_eq!(a.status, 403, "{a}");
    // The allow list wins over the deny list; reload through the admin API.
    std::fs::write(&allow, "198.51.100.20\n").unwrap();
    let r = c
        .post(gw.admin_url("/admin/waf/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    get(Some("198.51.100.20")).await.assert_status(200);
    // A broken list is refused and the lists in force stay.
    std::fs::write(&allow, "not-an-address\n").unwrap();
    let r = c
        .post(gw.admin_url("/admin/waf/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    get(Some("198.51.100.20")).await.assert_status(200);
    get(Some("198.51.100.21")).await.assert_status(403);
}
