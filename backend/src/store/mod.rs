//! Storage behind one trait. Every key is `(workspaceId, collection, id)`, workspace first, so a
//! tenant's data is one key range (one partition in DynamoDB) and can be dropped as a whole.
//!
//! The operations are the ones a DynamoDB table answers in one request each: `insert` is a put
//! with `attribute_not_exists`, `merge` an UpdateItem with `attribute_exists`, `add_to_field` an
//! UpdateItem `ADD` with a condition. Handlers needing atomicity use those, never read-then-write.

mod embedded;

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use embedded::EmbeddedStore;

/// Mission definitions.
pub const MISSIONS: &str = "missions";
/// Badge definitions.
pub const BADGES: &str = "badges";
/// Level definitions (`threshold` points).
pub const LEVELS: &str = "levels";
/// Leaderboard definitions (standings are computed).
pub const LEADERBOARDS: &str = "leaderboards";
/// Catalog items (`tier` free or premium).
pub const CATALOG: &str = "catalog";
/// Premium-only content.
pub const PREMIUM: &str = "premium-content";
/// Groups of users.
pub const GROUPS: &str = "groups";
/// Workspace users.
pub const USERS: &str = "users";
/// Departments (reports aggregate their users).
pub const DEPARTMENTS: &str = "departments";
/// Points balances, keyed by user id, field `balance`.
pub const BALANCES: &str = "balances";
/// Points ledger entries.
pub const LEDGER: &str = "ledger";
/// Mission completions, keyed by [`completion_id`].
pub const COMPLETIONS: &str = "completions";

/// The completion key of `user` on `mission`; length-prefixed so no two pairs collide.
pub fn completion_id(user: &str, mission: &str) -> String {
    format!("{}:{user}:{mission}", user.len())
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the persistent state failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The persistent state cannot be understood.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Another process holds the store.
    #[error("{0} is in use by another process")]
    Locked(String),
}

/// One document with its full key, for seeding and snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The tenant.
    pub workspace_id: String,
    /// The collection, e.g. [`MISSIONS`].
    pub collection: String,
    /// The id within the collection.
    pub id: String,
    /// The document.
    pub body: Value,
}

/// Tenant-scoped document storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The document at the key, if any.
    async fn get(&self, ws: &str, collection: &str, id: &str) -> Result<Option<Value>, StoreError>;

    /// Create or replace the document at the key.
    async fn put(&self, ws: &str, collection: &str, id: &str, doc: Value)
    -> Result<(), StoreError>;

    /// Create the document only if the key is free; `false` when it already exists.
    async fn insert(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        doc: Value,
    ) -> Result<bool, StoreError>;

    /// Shallow-merge `patch` into an existing object document; `None` when there is none.
    async fn merge(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<Option<Value>, StoreError>;

    /// Add `delta` to the integer `field` (missing = 0, creating the document if needed) unless
    /// the result would fall below `floor`; the new value, or `None` when refused.
    async fn add_to_field(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
        floor: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Delete the document; `false` when there was none.
    async fn delete(&self, ws: &str, collection: &str, id: &str) -> Result<bool, StoreError>;

    /// Every `(id, document)` of the collection, ordered by id.
    async fn list(&self, ws: &str, collection: &str) -> Result<Vec<(String, Value)>, StoreError>;

    /// Delete every key of the workspace; how many documents went.
    async fn delete_workspace(&self, ws: &str) -> Result<usize, StoreError>;
}
