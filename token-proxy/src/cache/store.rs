//! The second cache tier: a `TokenStore` shared by gateway instances. Items hold sealed
//! blobs only (see `seal`); `expires_at` is checked on every read because no store deletes
//! expired items on time (DynamoDB's TTL clean-up runs up to days late).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

/// One stored entry.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The hex key hash (the partition key).
    pub key: String,
    /// The sealed cached answer.
    pub blob: Vec<u8>,
    /// Until when the entry may be served, Unix seconds (rounded down).
    pub expires_at: u64,
    /// When the store may delete it, Unix seconds (the token's own expiry, rounded up).
    pub ttl: u64,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("key", &self.key.get(..8).unwrap_or_default())
            .field("blob_len", &self.blob.len())
            .field("expires_at", &self.expires_at)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A store failure. The message names the operation and the cause, never an item.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store {op}: {reason}")]
pub struct StoreError {
    pub op: &'static str,
    pub reason: String,
}

impl StoreError {
    pub fn new(op: &'static str, reason: impl Into<String>) -> Self {
        StoreError {
            op,
            reason: reason.into(),
        }
    }
}

/// The L2 tier of the token cache.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The entry under `key`, if there is one (expired or not: the caller checks).
    async fn get(&self, key: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Store (or replace) an entry.
    async fn put(&self, item: StoredToken) -> Result<(), StoreError>;
    /// A short name for logs and metrics (`memory`, `dynamodb`).
    fn name(&self) -> &'static str;
}

/// The embedded default: a bounded in-process map. Entries are dropped at `expires_at`.
pub struct MemoryStore {
    items: moka::future::Cache<String, StoredToken>,
}

struct UntilExpiresAt;

impl moka::Expiry<String, StoredToken> for UntilExpiresAt {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &StoredToken,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let now = super::unix_ms() / 1000;
        Some(Duration::from_secs(
            value.expires_at.saturating_sub(now) + 1,
        ))
    }
}

impl MemoryStore {
    /// A store holding at most `capacity` entries.
    pub fn new(capacity: u64) -> MemoryStore {
        MemoryStore {
            items: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpiresAt)
                .build(),
        }
    }

    /// Every entry held (for tests and dumps).
    pub fn dump(&self) -> Vec<StoredToken> {
        self.items.iter().map(|(_, v)| v).collect()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.items.get(key).await)
    }

    async fn put(&self, item: StoredToken) -> Result<(), StoreError> {
        self.items.insert(item.key.clone(), item).await;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
