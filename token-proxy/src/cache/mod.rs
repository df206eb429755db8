//! The client-credentials token cache: L1 in process (moka), L2 a shared [`TokenStore`].
//!
//! Lifecycle of an entry (one per [`CacheKey`]):
//!
//! ```text
//!   absent ──miss (one caller leads, concurrent callers wait)──▶ L2 read
//!     L2 fresh entry that opens ─▶ L1 ─▶ served to leader and waiters
//!     else upstream call ─▶ 200 with access_token + expires_in ─▶ L1 + L2 (sealed) ─▶ served
//!                        └▶ anything else ─▶ relayed to leader and waiters, nothing stored
//!   L1 entry ─read: cacheUntil > now?─ yes ─▶ served, expires_in = remaining lifetime
//!                                     └ no ─▶ dropped, treated as absent
//! ```
//!
//! `cacheUntil` = request time + `ttl_ratio` × the token's lifetime, so a served token always
//! has `(1 - ttl_ratio)` of its life left. Only the leader's request reaches the upstream.
//! A failing store is bypassed for `store_retry_after` (logged and counted once per
//! failure): token requests then go to L1 and the upstream only.

pub mod dynamodb;
mod entry;
mod key;
mod seal;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use key::{CacheKey, Presented};
pub use seal::SealError;
pub use store::{MemoryStore, StoreError, StoredToken, TokenStore};

use crate::answer::HttpAnswer;
use entry::CachedToken;

/// The current Unix time in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Where the cache reads the time (tests move it by hand).
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms()
    }
}

/// How one token request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From L1.
    L1Hit,
    /// From L2 (and now in L1).
    L2Hit,
    /// Waited for a concurrent caller's miss of the same key and shares its answer.
    Coalesced,
    /// Went upstream.
    Miss,
}

impl Lookup {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::L1Hit => "l1_hit",
            Lookup::L2Hit => "l2_hit",
            Lookup::Coalesced => "coalesced",
            Lookup::Miss => "miss",
        }
    }

    /// Answered without an upstream call of its own.
    pub fn is_hit(self) -> bool {
        !matches!(self, Lookup::Miss)
    }
}

/// What the cache reports, for metrics. Every method has a no-op default.
pub trait CacheEvents: Send + Sync + 'static {
    /// One token request answered through the cache.
    fn lookup(&self, _outcome: Lookup) {}
    /// One upstream call finished with `status` after `elapsed`.
    fn upstream(&self, _status: u16, _elapsed: Duration) {}
    /// One store operation failed (`get`, `put`, `open`).
    fn store_error(&self, _op: &'static str) {}
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoEvents;

impl CacheEvents for NoEvents {}

/// Cache tuning.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Cache lifetime as a fraction of the token lifetime, in (0, 1).
    pub ttl_ratio: f64,
    /// Entries held in L1.
    pub l1_capacity: u64,
    /// After a store failure, how long the store is left alone.
    pub store_retry_after: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl_ratio: 0.75,
            l1_capacity: 100_000,
            store_retry_after: Duration::from_secs(5),
        }
    }
}

/// An answer that is relayed but not cached (an error, or a 200 without a usable lifetime).
#[derive(Debug)]
struct Uncached(HttpAnswer);

/// L1 expiry follows each entry's own `cacheUntil` (checked again on every read).
struct UntilCacheEnd(Arc<dyn Clock>);

impl moka::Expiry<[u8; 32], Arc<CachedToken>> for UntilCacheEnd {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CachedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.cache_until_ms.saturating_sub(self.0.now_ms());
        Some(Duration::from_millis(left))
    }
}

/// The two-tier token cache with single-flight misses.
pub struct TokenCache {
    l1: moka::future::Cache<[u8; 32], Arc<CachedToken>>,
    store: Arc<dyn TokenStore>,
    settings: CacheSettings,
    clock: Arc<dyn Clock>,
    events: Arc<dyn CacheEvents>,
    /// Unix ms until which the store is bypassed after a failure.
    store_down_until: AtomicU64,
}

impl TokenCache {
    /// A cache over `store`.
    pub fn new(
        settings: CacheSettings,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
        events: Arc<dyn CacheEvents>,
    ) -> TokenCache {
        TokenCache {
            l1: moka::future::Cache::builder()
                .max_capacity(settings.l1_capacity)
                .expire_after(UntilCacheEnd(clock.clone()))
                .build(),
            store,
            settings,
            clock,
            events,
            store_down_until: AtomicU64::new(0),
        }
    }

    /// The store's name.
    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    /// Answer from the cache, or make one `fetch` for this key (concurrent callers of the
    /// same key wait for it) and cache what it returns when that is a successful token
    /// answer. The leader of a miss gets the upstream answer as it came.
    pub async fn get_or_fetch<F, Fut>(&self, key: &CacheKey, fetch: F) -> (HttpAnswer, Lookup)
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = HttpAnswer> + Send,
    {
        let now = self.clock.now_ms();
        if let Some(hit) = self.l1.get(key.hash()).await {
            if hit.fresh(now) {
                self.events.lookup(Lookup::L1Hit);
                return (hit.answer(now), Lookup::L1Hit);
            }
            self.l1.invalidate(key.hash()).await;
        }
        let mut led: Option<Lookup> = None;
        let mut relayed: Option<HttpAnswer> = None;
        let result = self
            .l1
            .try_get_with(*key.hash(), async {
                if let Some(found) = self.l2_get(key).await {
                    led = Some(Lookup::L2Hit);
                    return Ok(Arc::new(found));
                }
                led = Some(Lookup::Miss);
                let sent_at = self.clock.now_ms();
                let started = Instant::now();
                let answer = fetch().await;
                self.events.upstream(answer.status, started.elapsed());
                match CachedToken::from_answer(&answer, sent_at, self.settings.ttl_ratio) {
                    Some(token) => {
                        self.l2_put(key, &token).await;
                        relayed = Some(answer);
                        Ok(Arc::new(token))
                    }
                    None => Err(Uncached(answer)),
                }
            })
            .await;
        let outcome = led.unwrap_or(Lookup::Coalesced);
        self.events.lookup(outcome);
        let now = self.clock.now_ms();
        let answer = match (result, relayed) {
            (Ok(_), Some(upstream)) => upstream,
            (Ok(token), None) => token.answer(now),
            (Err(uncached), _) => uncached.0.clone(),
        };
        (answer, outcome)
    }

    fn store_usable(&self, now: u64) -> bool {
        self.store_down_until.load(Ordering::Relaxed) <= now
    }

    fn store_failed(&self, e: &StoreError) {
        self.events.store_error(e.op);
        let now = self.clock.now_ms();
        let until = now.saturating_add(self.settings.store_retry_after.as_millis() as u64);
        let before = self.store_down_until.swap(until, Ordering::Relaxed);
        if before <= now {
            tracing::warn!(
                store = self.store.name(),
                error = %e,
                retry_after_ms = self.settings.store_retry_after.as_millis() as u64,
                "token store failed; serving from L1 and the upstream meanwhile"
            );
        }
    }

    async fn l2_get(&self, key: &CacheKey) -> Option<CachedToken> {
        let now = self.clock.now_ms();
        if !self.store_usable(now) {
            return None;
        }
        let item = match self.store.get(&key.hex()).await {
            Ok(Some(item)) => item,
            Ok(None) => return None,
            Err(e) => {
                self.store_failed(&e);
                return None;
            }
        };
        // The coarse check first (no decryption for an expired item), then the exact one.
        if item.expires_at.saturating_mul(1000) <= now {
            return None;
        }
        let token = seal::open(key, &item.blob)
            .ok()
            .and_then(|plain| CachedToken::from_bytes(&plain));
        match token {
            Some(t) if t.fresh(now) => Some(t),
            Some(_) => None,
            None => {
                // A key hash collision is out of reach; this is a corrupt or foreign item.
                self.events.store_error("open");
                tracing::warn!(key = %key.short_id(), "a stored token entry does not open; ignoring it");
                None
            }
        }
    }

    async fn l2_put(&self, key: &CacheKey, token: &CachedToken) {
        if !self.store_usable(self.clock.now_ms()) {
            return;
        }
        let blob = match seal::seal(key, token.to_bytes()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "sealing a token entry failed; not storing it");
                return;
            }
        };
        let item = StoredToken {
            key: key.hex(),
            blob,
            expires_at: token.cache_until_ms / 1000,
            ttl: token.token_expires_at_ms.div_ceil(1000),
        };
        if let Err(e) = self.store.put(item).await {
            self.store_failed(&e);
        }
    }
}

#[cfg(test)]
mod tests;
