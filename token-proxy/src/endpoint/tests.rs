use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::cache::{CacheSettings, MemoryStore, NoEvents, SystemClock};
use crate::config::{ClientConfig, IssuerConfig};
use crate::secret::hash_secret;

fn cache() -> Arc<TokenCache> {
    Arc::new(TokenCache::new(
        CacheSettings::default(),
        Arc::new(MemoryStore::new(100)),
        Arc::new(SystemClock),
        Arc::new(NoEvents),
    ))
}

fn call(authorization: Option<&str>, body: &str) -> TokenCall {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    if let Some(a) = authorization {
        headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
    }
    TokenCall {
        method: Method::POST,
        headers,
        query: None,
        body: Bytes::from(body.to_string()),
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn json_of(a: &HttpAnswer) -> Value {
    serde_json::from_slice(&a.body).unwrap_or(Value::Null)
}

fn assert_no_store(a: &HttpAnswer) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{a:?}");
    assert_eq!(a.header("pragma"), Some("no-cache"), "{a:?}");
    let n = a
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
        .count();
    assert_eq!(n, 1, "one Cache-Control: {a:?}");
}

struct Embedded {
    endpoint: TokenEndpoint,
    _dir: tempfile::TempDir,
}

fn embedded() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IssuerConfig {
        issuer: "http://issuer.test".into(),
        public_base_url: String::new(),
        token_ttl_seconds: 3600,
        clients: vec![ClientConfig {
            client_id: "c1".into(),
            secret_hash: hash_secret("right").unwrap(),
            scopes: vec!["a".into(), "b".into()],
            ..Default::default()
        }],
    };
    let issuer = Arc::new(Issuer::open(cfg, dir.path()).unwrap());
    Embedded {
        endpoint: TokenEndpoint::new(TokenSource::Embedded(issuer), Some(cache())),
        _dir: dir,
    }
}

const GRANT: &str = "grant_type=client_credentials";

#[tokio::test]
async fn embedded_hits_after_one_issue_and_a_wrong_secret_never_hits() {
    let e = embedded();
    let right = basic("c1", "right");
    let first = e
        .endpoint
        .token(call(
            Some(&right),
            "grant_type=client_credentials&scope=b+a",
        ))
        .await;
    assert_eq!(
        (first.answer.status, first.lookup),
        (200, Some(Lookup::Miss))
    );
    assert_no_store(&first.answer);
    let again = e
        .endpoint
        .token(call(
            Some(&right),
            "grant_type=client_credentials&scope=a+b+a",
        ))
        .await;
    assert_eq!(again.lookup, Some(Lookup::L1Hit), "same normalised scope");
    assert_eq!(
        json_of(&again.answer)["access_token"],
        json_of(&first.answer)["access_token"]
    );
    assert_no_store(&again.answer);

    let wrong = e
        .endpoint
        .token(call(
            Some(&basic("c1", "wrong")),
            "grant_type=client_credentials&scope=a+b",
        ))
        .await;
    assert_eq!(wrong.answer.status, 401);
    assert_eq!(json_of(&wrong.answer)["error"], json!("invalid_client"));
    assert!(wrong.answer.header("www-authenticate").is_some());
    assert_no_store(&wrong.answer);
    // ... and the wrong secret's failure was not cached either.
    let wrong_again = e
        .endpoint
        .token(call(
            Some(&basic("c1", "wrong")),
            "grant_type=client_credentials&scope=a+b",
        ))
        .await;
    assert_eq!(
        (wrong_again.answer.status, wrong_again.lookup),
        (401, Some(Lookup::Miss))
    );

    // Posted credentials are their own entry.
    let posted = e
        .endpoint
        .token(call(
            None,
            "grant_type=client_credentials&scope=a+b&client_id=c1&client_secret=right",
        ))
        .await;
    assert_eq!(
        (posted.answer.status, posted.lookup),
        (200, Some(Lookup::Miss))
    );
}

#[tokio::test]
async fn a_key_rotation_starts_new_entries() {
    let e = embedded();
    let right = basic("c1", "right");
    let first = e.endpoint.token(call(Some(&right), GRANT)).await;
    assert_eq!(first.lookup, Some(Lookup::Miss));
    let TokenSource::Embedded(issuer) = e.endpoint.source() else {
        unreachable!()
    };
    issuer.rotate_key().unwrap();
    let after = e.endpoint.token(call(Some(&right), GRANT)).await;
    assert_eq!(after.lookup, Some(Lookup::Miss), "signed by the new key");
    assert_ne!(
        json_of(&after.answer)["access_token"],
        json_of(&first.answer)["access_token"]
    );
}

#[tokio::test]
async fn embedded_rejections_happen_before_the_cache() {
    let e = embedded();
    let right = basic("c1", "right");
    // Unknown client and unallowed scope: the issuer answers, uncached.
    let unknown = e
        .endpoint
        .token(call(Some(&basic("nobody", "right")), GRANT))
        .await;
    assert_eq!((unknown.answer.status, unknown.lookup), (401, None));
    let scope = e
        .endpoint
        .token(call(Some(&right), "grant_type=client_credentials&scope=c"))
        .await;
    assert_eq!((scope.answer.status, scope.lookup), (400, None));
    assert_eq!(json_of(&scope.answer)["error"], json!("invalid_scope"));
    // Malformed requests never reach the issuer or the cache.
    for (auth, body, error) in [
        (
            Some(right.as_str()),
            "grant_type=client_credentials&client_id=c1&client_secret=right",
            "invalid_request",
        ),
        (
            Some(right.as_str()),
            "grant_type=client_credentials&scope=a&scope=b",
            "invalid_request",
        ),
        (
            Some(right.as_str()),
            "grant_type=password&username=u&password=p",
            "unsupported_grant_type",
        ),
        (None, GRANT, "invalid_client"),
    ] {
        let out = e.endpoint.token(call(auth, body)).await;
        assert_eq!(out.lookup, None, "{body}");
        assert_eq!(json_of(&out.answer)["error"], json!(error), "{body}");
        assert_no_store(&out.answer);
    }
}

/// A fake upstream IdP: counts calls, answers with its own headers.
struct FakeUpstream {
    calls: AtomicUsize,
    status: u16,
}

#[async_trait]
impl TokenUpstream for FakeUpstream {
    async fn token(&self, call: &TokenCall) -> HttpAnswer {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let body = if self.status == 200 {
            json!({"access_token": format!("up-{n}"), "token_type": "Bearer", "expires_in": 300,
                   "echo": String::from_utf8_lossy(&call.body)})
        } else {
            json!({"error": "invalid_client"})
        };
        HttpAnswer {
            status: self.status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Cache-Control".into(), "max-age=60".into()),
                ("X-Upstream".into(), format!("call-{n}")),
            ],
            body: serde_json::to_vec(&body).unwrap(),
        }
    }
    fn cache_context(&self) -> String {
        "http://idp.test/oauth2/token".into()
    }
}

fn upstream(status: u16) -> (TokenEndpoint, Arc<FakeUpstream>) {
    let up = Arc::new(FakeUpstream {
        calls: AtomicUsize::new(0),
        status,
    });
    (
        TokenEndpoint::new(TokenSource::Upstream(up.clone()), Some(cache())),
        up,
    )
}

#[tokio::test]
async fn upstream_misses_relay_the_answer_as_is_and_hits_do_not_call() {
    let (endpoint, up) = upstream(200);
    let auth = basic("partner", "s3cret");
    let body = "grant_type=client_credentials&scope=x";
    let first = endpoint.token(call(Some(&auth), body)).await;
    assert_eq!(first.lookup, Some(Lookup::Miss));
    assert_eq!(
        first.answer.header("x-upstream"),
        Some("call-1"),
        "relayed as is"
    );
    assert_eq!(
        json_of(&first.answer)["echo"],
        json!(body),
        "the body went unchanged"
    );
    assert_no_store(&first.answer);
    let second = endpoint.token(call(Some(&auth), body)).await;
    assert_eq!(second.lookup, Some(Lookup::L1Hit));
    assert_eq!(json_of(&second.answer)["access_token"], json!("up-1"));
    assert_no_store(&second.answer);
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    // Another secret is another key: the upstream decides.
    endpoint
        .token(call(Some(&basic("partner", "other")), body))
        .await;
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_errors_and_other_grants_are_relayed_uncached() {
    let (endpoint, up) = upstream(401);
    let auth = basic("partner", "bad");
    for _ in 0..2 {
        let out = endpoint.token(call(Some(&auth), GRANT)).await;
        assert_eq!((out.answer.status, out.lookup), (401, Some(Lookup::Miss)));
        assert_no_store(&out.answer);
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
    let (endpoint, up) = upstream(200);
    let code = endpoint
        .token(call(
            Some(&auth),
            "grant_type=authorization_code&code=abc&redirect_uri=x",
        ))
        .await;
    assert_eq!((code.answer.status, code.lookup), (200, None));
    assert_no_store(&code.answer);
    endpoint
        .token(call(
            Some(&auth),
            "grant_type=authorization_code&code=abc&redirect_uri=x",
        ))
        .await;
    assert_eq!(up.calls.load(Ordering::SeqCst), 2, "never cached");
    // A malformed client_credentials request is answered here, without an upstream call.
    let bad = endpoint
        .token(call(
            Some(&auth),
            "grant_type=client_credentials&client_secret=x",
        ))
        .await;
    assert_eq!(bad.answer.status, 400);
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
}
