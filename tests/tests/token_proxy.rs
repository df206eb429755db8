//! The auth domain's token cache, end to end: the real binary in upstream IdP mode
//! (`config/examples/upstream-idp.toml`) in front of a fake IdP that this file starts (RS256
//! tokens with a short lifetime, call counters, an echo for pass-through), the embedded
//! issuer with a real OAuth2 client library, and the DynamoDB store across a restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::gateway::{
    DYNAMODB_ENV, Gateway, binary, default_config, free_ports, relocatable_config_text,
    relocatable_text_of, run_cli, workspace_root,
};
use e2e_tests::http::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use e2e_tests::{Answer, bearer, client, jwt, send};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

const PARTNER: &str = "partner";
const PARTNER_SECRET: &str = "partner-secret";
/// The fake IdP's token lifetime: the example config caches for 0.75 of it (3 s).
const LIFETIME: u64 = 4;

// ---- the fake IdP ----------------------------------------------------------------------

struct IdpState {
    base: String,
    pem: Vec<u8>,
    jwk: Value,
    token_calls: AtomicUsize,
    discovery_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    /// Milliseconds each token answer is delayed.
    delay_ms: AtomicU64,
    /// When non-zero, token requests fail with this status.
    fail_status: AtomicU16,
    /// The status of an `invalid_client` answer (Cognito answers 400).
    invalid_client_status: AtomicU16,
}

/// An OAuth2 IdP on a loopback port, on a thread and runtime of its own (so a test that
/// blocks its own runtime cannot stall it); stopped on drop.
struct FakeIdp {
    state: Arc<IdpState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RSA key made by `cedargate` itself (the tests have no key generator of their own).
fn rsa_key_pem() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let config = default_config();
    let out = run_cli(
        &[
            "keys",
            "list",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            &data,
        ],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "keys list: {out:?}");
    jwt::find_private_key_pem(&dir.path().join("keys")).expect("a key file")
}

impl FakeIdp {
    fn start() -> FakeIdp {
        let pem = rsa_key_pem();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
                .unwrap();
        jwk.common.key_id = Some("fake-idp-1".into());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            base,
            pem,
            jwk: serde_json::to_value(jwk).unwrap(),
            token_calls: AtomicUsize::new(0),
            discovery_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            fail_status: AtomicU16::new(0),
            invalid_client_status: AtomicU16::new(401),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeIdp {
            state,
            stop: Some(stop),
        }
    }

    fn url(&self) -> &str {
        &self.state.base
    }

    fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn reply(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(*k, v.as_str());
    }
    resp.body(Full::new(body.into())).unwrap()
}

fn json_reply(status: u16, n: usize, body: &Value) -> Response<Full<Bytes>> {
    reply(
        status,
        &[
            ("content-type", "application/json".into()),
            ("x-fake-idp", format!("call-{n}")),
        ],
        serde_json::to_vec(body).unwrap(),
    )
}

async fn handle(state: &IdpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    let base = &state.base;
    match path {
        "/oauth2/token" => token(state, &parts.headers, &body).await,
        "/.well-known/openid-configuration" => {
            let n = state.discovery_calls.fetch_add(1, Ordering::SeqCst) + 1;
            json_reply(
                200,
                n,
                &json!({
                    "issuer": base,
                    "token_endpoint": format!("{base}/oauth2/token"),
                    "jwks_uri": format!("{base}/.well-known/jwks.json"),
                    "authorization_endpoint": format!("{base}/oauth2/authorize"),
                    "userinfo_endpoint": format!("{base}/oauth2/userInfo"),
                    "response_types_supported": ["code", "token"],
                    "grant_types_supported": ["client_credentials", "authorization_code"],
                }),
            )
        }
        "/.well-known/jwks.json" => {
            let n = state.jwks_calls.fetch_add(1, Ordering::SeqCst) + 1;
            json_reply(200, n, &json!({"keys": [state.jwk]}))
        }
        "/missing" => reply(
            404,
            &[("content-type", "text/plain".into())],
            "no such thing",
        ),
        _ => {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            reply(
                207,
                &[
                    ("content-type", "application/octet-stream".into()),
                    ("x-echo-method", parts.method.to_string()),
                    (
                        "x-echo-target",
                        parts
                            .uri
                            .path_and_query()
                            .map_or(String::new(), |p| p.to_string()),
                    ),
                    ("x-echo-host", header("host")),
                    ("x-echo-custom", header("x-custom")),
                    ("x-echo-authorization", header("authorization")),
                ],
                body,
            )
        }
    }
}

async fn token(state: &IdpState, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
    let n = state.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = state.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return json_reply(
            fail,
            n,
            &json!({"error": "server_error", "error_description": format!("fake failure {n}")}),
        );
    }
    let form: Vec<(String, String)> = form_urlencoded_pairs(body);
    let param = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == basic(PARTNER, PARTNER_SECRET))
        || (param("client_id").as_deref() == Some(PARTNER)
            && param("client_secret").as_deref() == Some(PARTNER_SECRET));
    if !authorized {
        let status = state.invalid_client_status.load(Ordering::SeqCst);
        return json_reply(status, n, &json!({"error": "invalid_client"}));
    }
    let scope = param("scope").unwrap_or_else(|| "app/read".into());
    let iat = now_secs();
    let claims = json!({
        "iss": state.base, "sub": PARTNER, "client_id": PARTNER, "scope": scope,
        "token_use": "access", "workspaceId": "ws-demo", "platform": "m2m",
        "iat": iat, "exp": iat + LIFETIME, "jti": format!("fake-{n}"),
    });
    let access_token = jwt::sign_rs256(&state.pem, Some("fake-idp-1"), &claims).unwrap();
    json_reply(
        200,
        n,
        &json!({"access_token": access_token, "token_type": "Bearer",
                "expires_in": LIFETIME, "scope": scope}),
    )
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space; `%XX` escapes).
fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let Some(hex) = bytes.get(i + 1..i + 3)
                && let Ok(hex) = std::str::from_utf8(hex)
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// ---- a gateway with an environment and a data dir of the test's choosing ---------------

/// `cedargate serve` started with extra environment variables, killed on drop.
struct Serve {
    child: Child,
    data_dir: PathBuf,
    auth: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
}

impl Serve {
    async fn start(config: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Serve {
        let [api, auth, admin] = free_ports();
        let log = |name: &str| std::fs::File::create(data_dir.join(name)).unwrap();
        std::fs::create_dir_all(data_dir).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-addr", &api.to_string()])
            .args(["--auth-addr", &auth.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .stdin(Stdio::null())
            .stdout(log("serve.stdout.log"))
            .stderr(log("serve.stderr.log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut serve = Serve {
            child: cmd.spawn().unwrap(),
            data_dir: data_dir.to_path_buf(),
            auth,
            api,
            admin,
        };
        let c = client();
        let started = Instant::now();
        loop {
            if let Ok(r) = c.get(format!("http://{admin}/readyz")).send().await
                && r.status() == 200
            {
                return serve;
            }
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("serve exited with {status}\n{}", serve.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve not ready\n{}",
                serve.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.data_dir.join(n)).unwrap_or_default();
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            read("serve.stdout.log"),
            read("serve.stderr.log")
        )
    }

    fn auth_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.auth)
    }

    async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream_example() -> PathBuf {
    workspace_root()
        .join("config")
        .join("examples")
        .join("upstream-idp.toml")
}

async fn upstream_gateway(idp: &FakeIdp) -> (Serve, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_upstream(idp, &upstream_example(), dir.path()).await;
    (serve, dir)
}

/// `config` (an upstream-IdP config such as the example) run in front of `idp`.
async fn serve_upstream(idp: &FakeIdp, config: &Path, data_dir: &Path) -> Serve {
    Serve::start(
        config,
        data_dir,
        &[
            ("UPSTREAM_IDP_URL", idp.url()),
            ("UPSTREAM_IDP_ISSUER", idp.url()),
        ],
    )
    .await
}

async fn token_request(url: &str, authorization: Option<&str>, form: &str) -> Answer {
    let mut headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    if let Some(a) = authorization {
        headers.push(("authorization".into(), a.into()));
    }
    let c = client();
    let mut req = c.post(url).body(form.to_string());
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    e2e_tests::http::answer_of(format!("POST {url}"), resp).await
}

fn access_token(a: &Answer) -> String {
    a.json().unwrap_or_else(|| panic!("JSON: {a}"))["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("access_token: {a}"))
        .to_string()
}

#[track_caller]
fn assert_no_store(a: &Answer) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a}");
    assert_eq!(a.header("pragma"), Some("no-cache"), "{a}");
}

// ---- upstream IdP mode -----------------------------------------------------------------

#[tokio::test]
async fn repeated_requests_make_one_upstream_call_per_cache_lifetime() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let url = gw.auth_url("/oauth2/token");
    let auth = basic(PARTNER, PARTNER_SECRET);
    let form = "grant_type=client_credentials&scope=app%2Fread";

    let first = token_request(&url, Some(&auth), form).await;
    first.assert_status(200);
    assert_no_store(&first);
    assert_eq!(
        first.header("x-fake-idp"),
        Some("call-1"),
        "a miss relays the IdP's answer"
    );
    let token = access_token(&first);
    for _ in 0..5 {
        let again = token_request(&url, Some(&auth), form).await;
        again.assert_status(200);
        assert_no_store(&again);
        assert_eq!(access_token(&again), token);
        let expires_in = again.json().unwrap()["expires_in"].as_u64().unwrap();
        assert!(expires_in <= LIFETIME, "the remaining lifetime: {again}");
    }
    assert_eq!(
        idp.token_calls(),
        1,
        "one upstream call for repeated requests"
    );

    // Past 0.75 of the 4 s lifetime the entry is gone: a new upstream call.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let later = token_request(&url, Some(&auth), form).await;
    later.assert_status(200);
    assert_ne!(access_token(&later), token);
    assert_eq!(idp.token_calls(), 2);

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("cedargate_token_requests_total{result=\"l1_hit\",status=\"2xx\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cedargate_token_upstream_duration_seconds_count{status=\"2xx\"} 2"),
        "{metrics}"
    );
    // No secret and no token in any log line.
    let logs = gw.logs();
    assert!(
        !logs.contains(PARTNER_SECRET) && !logs.contains(&token),
        "{logs}"
    );
}

#[tokio::test]
async fn scopes_are_separate_and_a_wrong_secret_goes_upstream() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let url = gw.auth_url("/oauth2/token");
    let auth = basic(PARTNER, PARTNER_SECRET);
    let read = token_request(
        &url,
        Some(&auth),
        "grant_type=client_credentials&scope=app%2Fread",
    )
    .await;
    read.assert_status(200);
    let both = token_request(
        &url,
        Some(&auth),
        "grant_type=client_credentials&scope=app%2Fwrite+app%2Fread",
    )
    .await;
    both.assert_status(200);
    assert_ne!(access_token(&read), access_token(&both));
    // The same scopes in another order and repeated are the same entry.
    let same = token_request(
        &url,
        Some(&auth),
        "grant_type=client_credentials&scope=app%2Fread+app%2Fwrite+app%2Fread",
    )
    .await;
    assert_eq!(access_token(&same), access_token(&both));
    assert_eq!(idp.token_calls(), 2);

    // A wrong secret while the right one is cached: the IdP's own 401, every time.
    for i in 1..=2 {
        let wrong = token_request(
            &url,
            Some(&basic(PARTNER, "wrong-secret")),
            "grant_type=client_credentials&scope=app%2Fread",
        )
        .await;
        wrong.assert_status(401);
        assert_no_store(&wrong);
        assert_eq!(
            wrong.json().unwrap()["error"],
            json!("invalid_client"),
            "{wrong}"
        );
        assert!(!wrong.text().contains("access_token"), "{wrong}");
        assert_eq!(idp.token_calls(), 2 + i);
    }
    // client_secret_post credentials are keys of their own.
    let posted = token_request(
        &url,
        None,
        &format!("grant_type=client_credentials&scope=app%2Fread&client_id={PARTNER}&client_secret={PARTNER_SECRET}"),
    )
    .await;
    posted.assert_status(200);
    assert_eq!(idp.token_calls(), 5);
}

/// `[rate_limit.token_failures]` in upstream mode: the IdP's `invalid_client` answers count
/// whatever their status (Cognito's 400 here); past the limit the IdP is not asked at all.
#[tokio::test]
async fn the_idps_invalid_client_answers_count_as_failed_authentications() {
    let idp = FakeIdp::start();
    idp.state.invalid_client_status.store(400, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let text = relocatable_text_of(&upstream_example())
        + "\n[rate_limit.token_failures]\nlimit = 2\nwindow_seconds = 60\n";
    let config = dir.path().join("upstream-limited.toml");
    std::fs::write(&config, text).unwrap();
    let gw = serve_upstream(&idp, &config, &dir.path().join("data")).await;
    let url = gw.auth_url("/oauth2/token");
    let form = "grant_type=client_credentials&scope=app%2Fread";
    let wrong = basic(PARTNER, "wrong-secret");
    for _ in 0..2 {
        let a = token_request(&url, Some(&wrong), form).await;
        a.assert_status(400);
        assert_eq!(a.json().unwrap()["error"], "invalid_client", "{a}");
    }
    assert_eq!(idp.token_calls(), 2);
    for auth in [wrong, basic(PARTNER, PARTNER_SECRET)] {
        let a = token_request(&url, Some(&auth), form).await;
        a.assert_status(429);
        assert_eq!(a.json().unwrap()["rule"], "token_failures", "{a}");
        assert_no_store(&a);
    }
    assert_eq!(idp.token_calls(), 2, "refused before the IdP is asked");
}

#[tokio::test]
async fn upstream_errors_are_relayed_as_is_and_not_cached() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let url = gw.auth_url("/oauth2/token");
    let auth = basic(PARTNER, PARTNER_SECRET);
    idp.state.fail_status.store(500, Ordering::SeqCst);
    for n in 1..=2 {
        let failed = token_request(&url, Some(&auth), "grant_type=client_credentials").await;
        failed.assert_status(500);
        assert_no_store(&failed);
        assert_eq!(
            failed.header("x-fake-idp"),
            Some(format!("call-{n}").as_str())
        );
        assert_eq!(
            failed.json().unwrap(),
            json!({"error": "server_error", "error_description": format!("fake failure {n}")})
        );
    }
    idp.state.fail_status.store(0, Ordering::SeqCst);
    let ok = token_request(&url, Some(&auth), "grant_type=client_credentials").await;
    ok.assert_status(200);
    assert_eq!(idp.token_calls(), 3, "no error was cached");

    // A malformed client_credentials request never reaches the IdP.
    let both = token_request(
        &url,
        Some(&auth),
        &format!(
            "grant_type=client_credentials&client_id={PARTNER}&client_secret={PARTNER_SECRET}"
        ),
    )
    .await;
    both.assert_status(400);
    assert_eq!(both.json().unwrap()["error"], json!("invalid_request"));
    // Other grants are the IdP's business: relayed, never cached.
    for _ in 0..2 {
        token_request(
            &url,
            Some(&auth),
            "grant_type=authorization_code&code=c&redirect_uri=x",
        )
        .await
        .assert_status(200);
    }
    assert_eq!(idp.token_calls(), 5);
}

#[tokio::test]
async fn fifty_parallel_identical_requests_make_one_upstream_call() {
    let idp = FakeIdp::start();
    idp.state.delay_ms.store(300, Ordering::SeqCst);
    let (gw, _dir) = upstream_gateway(&idp).await;
    let url = gw.auth_url("/oauth2/token");
    let auth = basic(PARTNER, PARTNER_SECRET);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (url, auth) = (url.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            token_request(
                &url,
                Some(&auth),
                "grant_type=client_credentials&scope=app%2Fread",
            )
            .await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        a.assert_status(200);
        tokens.insert(access_token(&a));
    }
    assert_eq!(idp.token_calls(), 1, "single flight");
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn discovery_is_rewritten_and_cached_and_jwks_cached() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let c = client();
    let public = format!("http://{}", gw.auth);
    let before_jwks = idp.state.jwks_calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let d = send(
            &c,
            "GET",
            &gw.auth_url("/.well-known/openid-configuration"),
            &[],
            None,
        )
        .await;
        d.assert_status(200);
        let doc = d.json().unwrap();
        assert_eq!(doc["issuer"], json!(idp.url()), "the tokens' iss stays");
        assert_eq!(
            doc["token_endpoint"],
            json!(format!("{public}/oauth2/token"))
        );
        assert_eq!(
            doc["jwks_uri"],
            json!(format!("{public}/.well-known/jwks.json"))
        );
        assert_eq!(
            doc["authorization_endpoint"],
            json!(format!("{public}/oauth2/authorize"))
        );
        assert_eq!(doc["grant_types_supported"][1], json!("authorization_code"));
    }
    assert_eq!(
        idp.state.discovery_calls.load(Ordering::SeqCst),
        1,
        "cached"
    );
    for _ in 0..3 {
        let j = send(&c, "GET", &gw.auth_url("/.well-known/jwks.json"), &[], None).await;
        j.assert_status(200);
        assert_eq!(j.json().unwrap()["keys"][0], idp.state.jwk);
    }
    // The api listener's trusted-issuer refresh may fetch the JWKS itself; the auth domain
    // fetched it once at most.
    assert!(idp.state.jwks_calls.load(Ordering::SeqCst) - before_jwks <= 2);
}

#[tokio::test]
async fn other_paths_pass_through_byte_for_byte() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let resp = client()
        .put(gw.auth_url("/oauth2/some/thing?x=1&y=%2F"))
        .header("x-custom", "kept")
        .header("authorization", "Bearer opaque-value")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let a = e2e_tests::http::answer_of("PUT pass-through".into(), resp).await;
    assert_eq!(a.status, 207, "{a}");
    assert_eq!(a.body, body, "the body came back unchanged");
    assert_eq!(a.header("x-echo-method"), Some("PUT"));
    assert_eq!(
        a.header("x-echo-target"),
        Some("/oauth2/some/thing?x=1&y=%2F")
    );
    assert_eq!(a.header("x-echo-custom"), Some("kept"));
    assert_eq!(
        a.header("x-echo-authorization"),
        Some("Bearer opaque-value")
    );
    let idp_authority = idp.url().trim_start_matches("http://");
    assert_eq!(
        a.header("x-echo-host"),
        Some(idp_authority),
        "the IdP's own Host"
    );
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));

    let missing = send(&client(), "GET", &gw.auth_url("/missing"), &[], None).await;
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "no such thing")
    );
    // GET on the token path is the endpoint's (405), not a pass-through.
    let get = send(&client(), "GET", &gw.auth_url("/oauth2/token"), &[], None).await;
    assert_eq!(get.status, 405, "{get}");
    assert_eq!(idp.token_calls(), 0);
}

#[tokio::test]
async fn the_api_listener_accepts_the_upstreams_tokens() {
    let idp = FakeIdp::start();
    let (gw, _dir) = upstream_gateway(&idp).await;
    let issued = token_request(
        &gw.auth_url("/oauth2/token"),
        Some(&basic(PARTNER, PARTNER_SECRET)),
        "grant_type=client_credentials&scope=app%2Fread",
    )
    .await;
    issued.assert_status(200);
    let token = access_token(&issued);
    let api = format!("http://{}/app/v1/workspaces/ws-demo/missions", gw.api);
    send(&client(), "GET", &api, &[bearer(&token)], None)
        .await
        .assert_status(200);
}

// ---- embedded issuer -------------------------------------------------------------------

#[tokio::test]
async fn a_real_oauth2_client_gets_a_cached_token_the_gateway_accepts() {
    use oauth2::basic::BasicClient;
    use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

    let gw = Gateway::start();
    let http = client();
    // oauth2's HTTP interface over the tests' reqwest client.
    let send_request = |req: oauth2::HttpRequest| {
        let http = http.clone();
        async move {
            let (parts, body) = req.into_parts();
            let mut r = http.request(parts.method, parts.uri.to_string()).body(body);
            for (k, v) in &parts.headers {
                r = r.header(k, v);
            }
            let resp = r.send().await?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let body = resp.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>(out.body(body).expect("a response"))
        }
    };
    let oauth = BasicClient::new(ClientId::new(DEMO_CLIENT_ID.into()))
        .set_client_secret(ClientSecret::new(DEMO_CLIENT_SECRET.into()))
        .set_token_uri(TokenUrl::new(gw.auth_url("/oauth2/token")).unwrap());
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let token = oauth
            .exchange_client_credentials()
            .add_scope(Scope::new("app/read".into()))
            .request_async(&send_request)
            .await
            .unwrap_or_else(|e| panic!("token request failed: {e:?}\n{}", gw.logs()));
        assert!(token.expires_in().is_some_and(|d| d.as_secs() > 0));
        tokens.push(token.access_token().secret().clone());
    }
    assert_eq!(
        tokens[0], tokens[1],
        "the second answer came from the cache"
    );
    send(
        &client(),
        "GET",
        &gw.api_url("/app/v1/workspaces/ws-demo/missions"),
        &[bearer(&tokens[0])],
        None,
    )
    .await
    .assert_status(200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("cedargate_token_requests_total{result=\"l1_hit\",status=\"2xx\"} 1"),
        "{metrics}"
    );
}

// ---- DynamoDB store --------------------------------------------------------------------

#[tokio::test]
async fn the_dynamodb_store_serves_a_restarted_gateway() {
    if std::env::var(DYNAMODB_ENV).map_or(true, |v| v.is_empty()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{DYNAMODB_ENV} is not set under CI=true: scripts/test.sh starts moto_server");
        }
        eprintln!(
            "NOTICE: the_dynamodb_store_serves_a_restarted_gateway skipped: {DYNAMODB_ENV} is not set"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = format!("cedargate-e2e-{}-{}", std::process::id(), now_secs());
    let text = relocatable_config_text()
        .replace("store = \"memory\"", "store = \"dynamodb\"")
        .replace("store_capacity = 100000", "")
        .replace(
            "create_tables_on_start = false",
            "create_tables_on_start = true",
        )
        .replace(
            "token_table = \"cedargate-token-cache\"",
            &format!("token_table = \"{table}\""),
        )
        .replace(
            "# endpoint = \"http://127.0.0.1:8000\"",
            &format!("endpoint = \"${{{DYNAMODB_ENV}}}\""),
        );
    assert!(
        text.contains("store = \"dynamodb\"") && text.contains(&table),
        "the default config changed shape"
    );
    let config = dir.path().join("dynamodb.toml");
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let form = "grant_type=client_credentials&scope=app%2Fread";
    let auth = basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);

    let first = Serve::start(&config, &data, &[]).await;
    let issued = token_request(&first.auth_url("/oauth2/token"), Some(&auth), form).await;
    issued.assert_status(200);
    let token = access_token(&issued);
    drop(first);

    // A new process: empty L1, same data dir (same signing keys), same table.
    let second = Serve::start(&config, &data, &[]).await;
    let again = token_request(&second.auth_url("/oauth2/token"), Some(&auth), form).await;
    again.assert_status(200);
    assert_eq!(access_token(&again), token, "served from DynamoDB");
    let metrics = second.metrics().await;
    assert!(
        metrics.contains("cedargate_token_requests_total{result=\"l2_hit\",status=\"2xx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn keys_rotate_takes_effect_in_a_running_gateway() {
    let gw = Gateway::start();
    let c = client();
    let jwks_kids = || async {
        let j = send(
            &client(),
            "GET",
            &gw.auth_url("/.well-known/jwks.json"),
            &[],
            None,
        )
        .await;
        j.json().unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = jwks_kids().await;
    assert_eq!(before.len(), 1);
    let auth = basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    let form = "grant_type=client_credentials&scope=app%2Fread";
    let old_token =
        access_token(&token_request(&gw.auth_url("/oauth2/token"), Some(&auth), form).await);

    let out = run_cli(
        &[
            "keys",
            "rotate",
            "--config",
            gw.config().to_str().unwrap(),
            "--data-dir",
            gw.data_dir().to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    let after = loop {
        let kids = jwks_kids().await;
        if kids.len() == 2 {
            break kids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the rotation was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after[1], before[0], "the old key stays published");
    // The cache does not hand out the old key's token any more: the new key signs.
    let new_token =
        access_token(&token_request(&gw.auth_url("/oauth2/token"), Some(&auth), form).await);
    assert_eq!(jwt::header(&new_token)["kid"], json!(after[0]));
    let api = gw.api_url("/app/v1/workspaces/ws-demo/missions");
    for token in [&old_token, &new_token] {
        send(&c, "GET", &api, &[bearer(token)], None)
            .await
            .assert_status(200);
    }
}
