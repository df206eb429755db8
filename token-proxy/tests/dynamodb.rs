//! The DynamoDB tier against a real DynamoDB-compatible server (moto).
//!
//! `scripts/test.sh` starts `moto_server` and exports its URL as
//! `CEDARGATE_TEST_DYNAMODB_ENDPOINT`. Without it these tests fail under `CI=true` and are
//! skipped (with a notice) elsewhere. The outage test starts a private `moto_server` of its own
//! (so it can stop it) and needs the `moto_server` command.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_proxy::HttpAnswer;
use token_proxy::cache::dynamodb::{DynamoSettings, DynamoStore, TableCreation};
use token_proxy::cache::{
    CacheEvents, CacheKey, CacheSettings, Clock, Lookup, Presented, StoredToken, TokenCache,
    TokenStore,
};

const ENV: &str = "CEDARGATE_TEST_DYNAMODB_ENDPOINT";

/// The shared test server, or `None` (skip) outside CI.
fn endpoint(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{ENV} is not set under CI=true: scripts/test.sh starts moto_server and sets it")
        }
        _ => {
            eprintln!(
                "NOTICE: {test} skipped: {ENV} is not set (run scripts/test.sh, or start moto_server and export it)"
            );
            None
        }
    }
}

fn settings(endpoint: &str) -> DynamoSettings {
    DynamoSettings {
        table: format!("cedargate-test-{}", uuid_like()),
        region: "eu-west-1".into(),
        endpoint: Some(endpoint.to_string()),
        timeout: Duration::from_secs(2),
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{t:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct FakeClock(AtomicU64);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn real_now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Default)]
struct StoreErrors(std::sync::Mutex<Vec<&'static str>>);

impl CacheEvents for StoreErrors {
    fn store_error(&self, op: &'static str) {
        self.0.lock().unwrap().push(op);
    }
}

/// A fake IdP: numbered tokens with a recognisable prefix, a call counter.
#[derive(Default)]
struct Idp(AtomicUsize);

impl Idp {
    async fn token(&self) -> HttpAnswer {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        HttpAnswer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&json!({
                "access_token": format!("plaintext-access-token-{n}"),
                "token_type": "Bearer", "expires_in": 1000, "scope": "app/read"
            }))
            .unwrap(),
        }
    }
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

const SECRET: &str = "the-client-secret-value";

fn key() -> CacheKey {
    let scope = ["app/read".to_string()].into_iter().collect();
    CacheKey::new(
        b"upstream\0http://idp.test/oauth2/token",
        Presented::Posted {
            client_id: "partner-client",
            client_secret: SECRET,
        },
        "client_credentials",
        Some(&scope),
    )
}

fn cache(
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn CacheEvents>,
) -> TokenCache {
    TokenCache::new(
        CacheSettings {
            store_retry_after: Duration::from_millis(200),
            ..CacheSettings::default()
        },
        store,
        clock,
        events,
    )
}

fn token_of(a: &HttpAnswer) -> String {
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn hit_miss_expiry_ttl_and_a_scan_without_secrets() {
    let Some(url) = endpoint("hit_miss_expiry_ttl_and_a_scan_without_secrets") else {
        return;
    };
    let store = Arc::new(DynamoStore::connect(&settings(&url)).unwrap());
    assert_eq!(store.create_table().await.unwrap(), TableCreation::Created);
    assert_eq!(
        store.create_table().await.unwrap(),
        TableCreation::AlreadyExisted,
        "running it again is harmless"
    );
    assert_eq!(
        store.ttl_attribute().await.unwrap().as_deref(),
        Some("ttl"),
        "DynamoDB TTL clean-up is on"
    );

    let start = real_now_ms();
    let clock = Arc::new(FakeClock(AtomicU64::new(start)));
    let idp = Idp::default();
    let k = key();
    assert_eq!(store.get(&k.hex()).await.unwrap(), None, "absent before");

    let first = cache(
        store.clone(),
        clock.clone(),
        Arc::new(StoreErrors::default()),
    );
    let (a, how) = first.get_or_fetch(&k, || idp.token()).await;
    assert_eq!((a.status, how), (200, Lookup::Miss));
    let token = token_of(&a);

    // Another instance (empty L1) finds it in DynamoDB: no upstream call.
    clock.0.fetch_add(100_000, Ordering::SeqCst);
    let second = cache(
        store.clone(),
        clock.clone(),
        Arc::new(StoreErrors::default()),
    );
    let (b, how) = second.get_or_fetch(&k, || idp.token()).await;
    assert_eq!(how, Lookup::L2Hit);
    assert_eq!(token_of(&b), token);
    let body: Value = serde_json::from_slice(&b.body).unwrap();
    assert_eq!(body["expires_in"], json!(900), "remaining lifetime");
    assert_eq!(idp.calls(), 1);

    // The item: key hash, sealed blob, expiresAt and the TTL attribute.
    let items = store.scan_all().await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["keyHash"].as_s().unwrap(), &k.hex());
    let expires_at: u64 = item["expiresAt"].as_n().unwrap().parse().unwrap();
    let ttl: u64 = item["ttl"].as_n().unwrap().parse().unwrap();
    assert_eq!(expires_at, (start + 750_000) / 1000, "0.75 of 1000 s");
    assert_eq!(
        ttl,
        (start + 1_000_000).div_ceil(1000),
        "the token's own expiry"
    );
    // No secret and no plaintext token anywhere in the table.
    let dump = format!("{items:?}");
    let blob = item["token"].as_b().unwrap().as_ref().to_vec();
    for needle in [
        SECRET,
        token.as_str(),
        "plaintext-access-token",
        "partner-client",
        "app/read",
    ] {
        assert!(!dump.contains(needle), "{needle} in the table dump");
        assert!(
            !blob.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in the blob"
        );
    }
    assert_eq!(
        item.len(),
        4,
        "keyHash, token, expiresAt, ttl only: {:?}",
        item.keys()
    );

    // expiresAt is checked on every read: moto never deletes the item, the cache ignores it.
    clock.0.store(expires_at * 1000, Ordering::SeqCst);
    let third = cache(
        store.clone(),
        clock.clone(),
        Arc::new(StoreErrors::default()),
    );
    let (c, how) = third.get_or_fetch(&k, || idp.token()).await;
    assert_eq!(how, Lookup::Miss, "expired by expiresAt");
    assert_ne!(token_of(&c), token);
    assert_eq!(idp.calls(), 2);

    // An item whose expiresAt has passed is absent, whatever its blob says.
    let stale = StoredToken {
        key: "ab".repeat(32),
        blob: vec![1; 40],
        expires_at: real_now_ms() / 1000 - 10,
        ttl: real_now_ms() / 1000 - 5,
    };
    store.put(stale.clone()).await.unwrap();
    assert_eq!(store.get(&stale.key).await.unwrap(), Some(stale));
}

/// A private moto_server, killed on drop.
struct Moto(Child, String);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("CEDARGATE_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (scripts/test.sh installs moto[server])")
        });
    let moto = Moto(child, format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    moto
}

#[tokio::test]
async fn a_store_outage_mid_test_does_not_fail_token_requests() {
    if endpoint("a_store_outage_mid_test_does_not_fail_token_requests").is_none() {
        return;
    }
    let moto = start_moto();
    let mut s = settings(&moto.1);
    s.timeout = Duration::from_millis(500);
    let store = Arc::new(DynamoStore::connect(&s).unwrap());
    store.create_table().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(token_proxy::cache::SystemClock);
    let idp = Idp::default();
    let k = key();
    let errors = Arc::new(StoreErrors::default());
    let running = cache(store.clone(), clock.clone(), errors.clone());
    let (a, how) = running.get_or_fetch(&k, || idp.token()).await;
    assert_eq!((a.status, how), (200, Lookup::Miss));
    assert_eq!(store.scan_all().await.unwrap().len(), 1, "stored while up");

    drop(moto); // the store goes away

    // The instance that has it in L1 keeps serving it.
    let (b, how) = running.get_or_fetch(&k, || idp.token()).await;
    assert_eq!((b.status, how), (200, Lookup::L1Hit));
    // A fresh instance cannot read the store: it asks the upstream and still answers.
    let fresh_errors = Arc::new(StoreErrors::default());
    let fresh = cache(store.clone(), clock.clone(), fresh_errors.clone());
    let started = Instant::now();
    let (c, how) = fresh.get_or_fetch(&k, || idp.token()).await;
    assert_eq!((c.status, how), (200, Lookup::Miss));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the store timeout"
    );
    assert_eq!(idp.calls(), 2);
    assert_eq!(
        fresh_errors.0.lock().unwrap().as_slice(),
        ["get"],
        "counted once; the put skipped the failed store"
    );
    // And then serves it from L1.
    assert_eq!(
        fresh.get_or_fetch(&k, || idp.token()).await.1,
        Lookup::L1Hit
    );
}
