use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use serde_json::{Value, json};

use super::*;

struct FakeClock(AtomicU64);

impl FakeClock {
    fn new() -> Arc<FakeClock> {
        Arc::new(FakeClock(AtomicU64::new(1_700_000_000_000)))
    }
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Counted {
    lookups: Mutex<Vec<Lookup>>,
    upstream: AtomicUsize,
    store_errors: Mutex<Vec<&'static str>>,
}

impl CacheEvents for Counted {
    fn lookup(&self, outcome: Lookup) {
        self.lookups.lock().unwrap().push(outcome);
    }
    fn upstream(&self, _status: u16, _elapsed: Duration) {
        self.upstream.fetch_add(1, Ordering::SeqCst);
    }
    fn store_error(&self, op: &'static str) {
        self.store_errors.lock().unwrap().push(op);
    }
}

/// A fake IdP: numbered tokens, a call counter, an optional status.
#[derive(Default)]
struct FakeIdp {
    calls: AtomicUsize,
    lifetime: u64,
    delay_ms: u64,
}

impl FakeIdp {
    fn new(lifetime: u64) -> Arc<FakeIdp> {
        Arc::new(FakeIdp {
            lifetime,
            ..Default::default()
        })
    }

    async fn token(&self, status: u16) -> HttpAnswer {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        if status != 200 {
            return HttpAnswer::token_json(status, &json!({"error": "invalid_client"}));
        }
        HttpAnswer::token_json(
            200,
            &json!({"access_token": format!("token-{n}"), "token_type": "Bearer",
                    "expires_in": self.lifetime, "scope": "a"}),
        )
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn key(secret: &str, scope: &[&str]) -> CacheKey {
    let scope: std::collections::BTreeSet<String> = scope.iter().map(|s| s.to_string()).collect();
    CacheKey::new(
        b"test",
        Presented::Posted {
            client_id: "client",
            client_secret: secret,
        },
        "client_credentials",
        Some(&scope).filter(|s| !s.is_empty()),
    )
}

struct Rig {
    cache: Arc<TokenCache>,
    store: Arc<MemoryStore>,
    clock: Arc<FakeClock>,
    events: Arc<Counted>,
}

fn rig_with(store: Arc<dyn TokenStore>, memory: Arc<MemoryStore>) -> Rig {
    let clock = FakeClock::new();
    let events = Arc::new(Counted::default());
    let cache = Arc::new(TokenCache::new(
        CacheSettings::default(),
        store,
        clock.clone(),
        events.clone(),
    ));
    Rig {
        cache,
        store: memory,
        clock,
        events,
    }
}

fn rig() -> Rig {
    let store = Arc::new(MemoryStore::new(1000));
    rig_with(store.clone(), store)
}

fn body(a: &HttpAnswer) -> Value {
    serde_json::from_slice(&a.body).unwrap()
}

#[tokio::test]
async fn a_hit_makes_no_upstream_call_and_counts_down_expires_in() {
    let r = rig();
    let idp = FakeIdp::new(100);
    let k = key("s", &["a"]);
    let (first, how) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    assert_eq!((first.status, how), (200, Lookup::Miss));
    assert_eq!(body(&first)["expires_in"], json!(100));
    r.clock.advance(30_500);
    let (second, how) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    assert_eq!(how, Lookup::L1Hit);
    assert_eq!(idp.calls(), 1);
    assert_eq!(body(&second)["access_token"], body(&first)["access_token"]);
    assert_eq!(body(&second)["expires_in"], json!(69), "remaining lifetime");
    assert_eq!(second.header("cache-control"), Some("no-store"));
    assert_eq!(second.header("pragma"), Some("no-cache"));
}

#[tokio::test]
async fn an_entry_is_served_only_for_ttl_ratio_of_the_lifetime() {
    let r = rig();
    let idp = FakeIdp::new(100);
    let k = key("s", &[]);
    r.cache.get_or_fetch(&k, || idp.token(200)).await;
    r.clock.advance(74_999);
    assert_eq!(
        r.cache.get_or_fetch(&k, || idp.token(200)).await.1,
        Lookup::L1Hit
    );
    r.clock.advance(1);
    let (answer, how) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    assert_eq!(how, Lookup::Miss, "at 75% of 100 s the entry is gone");
    assert_eq!(idp.calls(), 2);
    assert_eq!(body(&answer)["access_token"], json!("token-2"));
}

#[tokio::test]
async fn scopes_and_secrets_are_separate_entries() {
    let r = rig();
    let idp = FakeIdp::new(100);
    r.cache
        .get_or_fetch(&key("s", &["a"]), || idp.token(200))
        .await;
    r.cache
        .get_or_fetch(&key("s", &["a", "b"]), || idp.token(200))
        .await;
    r.cache
        .get_or_fetch(&key("s", &[]), || idp.token(200))
        .await;
    assert_eq!(idp.calls(), 3);
    // A wrong secret while the right one is cached goes upstream and gets the upstream's no.
    let (wrong, how) = r
        .cache
        .get_or_fetch(&key("wrong", &["a"]), || idp.token(401))
        .await;
    assert_eq!((wrong.status, how), (401, Lookup::Miss));
    assert_eq!(idp.calls(), 4);
}

#[tokio::test]
async fn errors_are_relayed_and_never_cached() {
    let r = rig();
    let idp = FakeIdp::new(100);
    let k = key("s", &["a"]);
    for _ in 0..3 {
        let (a, how) = r.cache.get_or_fetch(&k, || idp.token(400)).await;
        assert_eq!((a.status, how), (400, Lookup::Miss));
    }
    assert_eq!(idp.calls(), 3);
    assert!(r.store.dump().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_of_one_key_make_one_upstream_call() {
    let r = rig();
    let idp = Arc::new(FakeIdp {
        lifetime: 100,
        delay_ms: 100,
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, idp) = (r.cache.clone(), idp.clone());
        tasks.push(tokio::spawn(async move {
            let k = key("s", &["a"]);
            cache.get_or_fetch(&k, || idp.token(200)).await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (a, _) = t.await.unwrap();
        assert_eq!(a.status, 200);
        tokens.insert(body(&a)["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(idp.calls(), 1);
    assert_eq!(tokens.len(), 1);
    let lookups = r.events.lookups.lock().unwrap().clone();
    assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
    assert_eq!(r.events.upstream.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_failing_misses_share_the_error() {
    let r = rig();
    let idp = Arc::new(FakeIdp {
        lifetime: 100,
        delay_ms: 100,
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, idp) = (r.cache.clone(), idp.clone());
        tasks.push(tokio::spawn(async move {
            cache.get_or_fetch(&key("s", &[]), || idp.token(503)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0.status, 503);
    }
    assert_eq!(idp.calls(), 1, "waiters share the leader's answer");
    assert_eq!(
        r.cache
            .get_or_fetch(&key("s", &[]), || idp.token(503))
            .await
            .1,
        Lookup::Miss
    );
    assert_eq!(idp.calls(), 2, "and it was not cached");
}

#[tokio::test]
async fn l2_serves_another_instance_until_expires_at() {
    let r = rig();
    let idp = FakeIdp::new(100);
    let k = key("s", &["a"]);
    let (first, _) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    // A second gateway instance sharing the store, same clock.
    let other = TokenCache::new(
        CacheSettings::default(),
        r.store.clone(),
        r.clock.clone(),
        Arc::new(NoEvents),
    );
    r.clock.advance(10_000);
    let (a, how) = other.get_or_fetch(&k, || idp.token(200)).await;
    assert_eq!(how, Lookup::L2Hit);
    assert_eq!(body(&a)["access_token"], body(&first)["access_token"]);
    assert_eq!(body(&a)["expires_in"], json!(90));
    assert_eq!(idp.calls(), 1);
    assert_eq!(
        other.get_or_fetch(&k, || idp.token(200)).await.1,
        Lookup::L1Hit
    );

    // Past expiresAt the stored item is ignored even though the store still holds it.
    let third = TokenCache::new(
        CacheSettings::default(),
        r.store.clone(),
        r.clock.clone(),
        Arc::new(NoEvents),
    );
    r.clock.advance(65_000);
    assert_eq!(
        third.get_or_fetch(&k, || idp.token(200)).await.1,
        Lookup::Miss
    );
    assert_eq!(idp.calls(), 2);
}

#[tokio::test]
async fn stored_items_hold_no_secret_and_no_token() {
    let r = rig();
    let idp = FakeIdp::new(3600);
    let k = key("very-secret-value", &["a"]);
    let (a, _) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    let token = body(&a)["access_token"].as_str().unwrap().to_string();
    let items = r.store.dump();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.key, k.hex());
    assert_eq!(item.expires_at, (r.clock.now_ms() + 2_700_000) / 1000);
    assert_eq!(item.ttl, (r.clock.now_ms() + 3_600_000).div_ceil(1000));
    for needle in [token.as_bytes(), b"very-secret-value", b"client"] {
        assert!(!item.blob.windows(needle.len()).any(|w| w == needle));
        assert!(
            !item
                .key
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle)
        );
    }
    // A blob put under another key does not open there.
    let other = key("other", &["a"]);
    r.store
        .put(StoredToken {
            key: other.hex(),
            ..item.clone()
        })
        .await
        .unwrap();
    let fresh = TokenCache::new(
        CacheSettings::default(),
        r.store.clone(),
        r.clock.clone(),
        r.events.clone(),
    );
    assert_eq!(
        fresh.get_or_fetch(&other, || idp.token(200)).await.1,
        Lookup::Miss
    );
    assert!(r.events.store_errors.lock().unwrap().contains(&"open"));
}

/// A store that fails every call while `down` is set.
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenStore for Flaky {
    async fn get(&self, key: &str) -> Result<Option<StoredToken>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("get", "connection refused"));
        }
        self.inner.get(key).await
    }
    async fn put(&self, item: StoredToken) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("put", "connection refused"));
        }
        self.inner.put(item).await
    }
    fn name(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test]
async fn a_store_outage_falls_back_to_l1_and_the_upstream() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(10),
        down: true.into(),
        calls: AtomicUsize::new(0),
    });
    let r = rig_with(flaky.clone(), Arc::new(MemoryStore::new(1)));
    let idp = FakeIdp::new(100);
    let k = key("s", &["a"]);
    let (a, how) = r.cache.get_or_fetch(&k, || idp.token(200)).await;
    assert_eq!((a.status, how), (200, Lookup::Miss));
    assert_eq!(
        r.cache.get_or_fetch(&k, || idp.token(200)).await.1,
        Lookup::L1Hit
    );
    assert_eq!(r.events.store_errors.lock().unwrap().as_slice(), ["get"]);
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        1,
        "the put skipped the failed store"
    );

    // Other keys during the retry pause do not touch the store at all.
    r.cache
        .get_or_fetch(&key("t", &[]), || idp.token(200))
        .await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);

    // After the pause the store is used again.
    flaky.down.store(false, Ordering::SeqCst);
    r.clock.advance(5_001);
    r.cache
        .get_or_fetch(&key("u", &[]), || idp.token(200))
        .await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "get + put");
    assert_eq!(flaky.inner.dump().len(), 1);
}
