//! Storage behind one trait. Every key is `(workspaceId, collection, id)`, workspace first, so a
//! tenant's data is one key range (one partition in DynamoDB) and can be dropped as a whole.
//!
//! The operations are the ones a DynamoDB table answers in one request each: `insert` is a put
//! with `attribute_not_exists`, `merge` an UpdateItem with `attribute_exists`, `add_to_field` an
//! UpdateItem `ADD` with a condition. Handlers needing atomicity use those, never read-then-write.
//!
//! Expiry: a document whose top-level [`EXPIRES_AT`] is a number of Unix seconds in the past is
//! absent for every read and every condition, in both stores, whether or not it has been
//! physically removed yet (DynamoDB's TTL clean-up runs late; the embedded store drops such
//! documents when it compacts its log).
//!
//! Two implementations pass one shared suite (`conformance.rs`): [`EmbeddedStore`] (the default,
//! under the data dir) and [`DynamoDbStore`] (one table, for gateways side by side).

mod dynamodb;
mod embedded;

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use dynamodb::{DynamoDbStore, create_table};
pub use embedded::EmbeddedStore;

/// The top-level field holding a document's expiry (Unix seconds); see the module doc.
pub const EXPIRES_AT: &str = "expiresAt";

/// The most writes one [`Store::transact`] batch may hold (DynamoDB's TransactWriteItems limit).
pub const MAX_BATCH: usize = 25;

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

/// A user's progress on a mission, keyed by [`completion_id`] (`progress`, `status`).
pub const PARTICIPATIONS: &str = "participations";
/// The activity log, keyed by [`log_key`] so ids ascend from the newest entry.
pub const ACTIVITIES: &str = "activities";
/// Badges a user earned, keyed by [`completion_id`] of user and badge (awarded once).
pub const USER_BADGES: &str = "user-badges";
/// Levels a user reached at least once, keyed by [`completion_id`] of user and level.
pub const LEVELS_REACHED: &str = "levels-reached";
/// Catalog categories.
pub const CATEGORIES: &str = "categories";
/// Learning paths (ordered catalog items).
pub const LEARNING_PATHS: &str = "learning-paths";

/// A key that sorts newer entries first (inverted milliseconds, then a random suffix), for
/// logs listed newest first by plain key order.
pub fn log_key() -> String {
    format!("{}-{}", log_key_prefix(now_ms()), nanoid::nanoid!(10))
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How many documents [`scan`] reads per store request.
pub const SCAN_CHUNK: usize = 200;

/// Visit the live documents of `collection` with keys after `after` (all when `None`), in key
/// order, until `visit` says stop: read from the store [`SCAN_CHUNK`] at a time (one query
/// each in DynamoDB), so a reader that stops early never loads the whole collection.
pub async fn scan(
    store: &dyn Store,
    ws: &str,
    collection: &str,
    after: Option<String>,
    mut visit: impl FnMut(&str, &Value) -> std::ops::ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut after = after;
    loop {
        let page = store
            .list_page(ws, collection, after.as_deref(), SCAN_CHUNK)
            .await?;
        for (id, doc) in &page.items {
            if visit(id, doc).is_break() {
                return Ok(());
            }
        }
        match page.items.last() {
            Some((last, _)) if page.more => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}

/// The key prefix of [`log_key`]s made at Unix millisecond `ms`: log keys at or after `ms` sort
/// at or before it (a key is made after its entry's `createdAt`, so no entry created before `ms`
/// has such a key).
pub fn log_key_prefix(ms: u64) -> String {
    format!("{:013}", 9_999_999_999_999u64.saturating_sub(ms))
}

/// The completion key of `user` on `mission`; length-prefixed so no two pairs collide.
pub fn completion_id(user: &str, mission: &str) -> String {
    format!("{}{mission}", user_prefix(user))
}

/// What every [`completion_id`] of `user` starts with, and no other user's does.
pub fn user_prefix(user: &str) -> String {
    format!("{}:{user}:", user.len())
}

/// The documents of `collection` keyed by [`completion_id`] of `user` (completions, badges,
/// levels reached, participations), read by key range instead of the whole collection.
pub async fn of_user(
    store: &dyn Store,
    ws: &str,
    collection: &str,
    user: &str,
) -> Result<Vec<Value>, StoreError> {
    let prefix = user_prefix(user);
    let mut out = Vec::new();
    // Every key with the prefix sorts after the prefix itself, and they are contiguous.
    scan(store, ws, collection, Some(prefix.clone()), |id, doc| {
        if !id.starts_with(&prefix) {
            return std::ops::ControlFlow::Break(());
        }
        out.push(doc.clone());
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    Ok(out)
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
    /// The remote store did not answer or failed (no credentials or secrets in the message).
    /// A write that fails so may or may not have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store turned the request down for now (throttled, or transaction conflicts that
    /// outlasted the retries): nothing was applied, and a retry later may succeed.
    #[error("store busy: {0}")]
    Busy(String),
    /// The request cannot be stored as asked (a batch too large or touching one key twice, a
    /// key or document the remote store refuses).
    #[error("invalid store request: {0}")]
    Invalid(String),
}

/// The current time in Unix seconds, for expiry checks.
pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether `doc` has a numeric top-level [`EXPIRES_AT`] before `now`.
pub(crate) fn is_expired(doc: &Value, now: f64) -> bool {
    doc.get(EXPIRES_AT)
        .and_then(Value::as_f64)
        .is_some_and(|t| t < now)
}

impl WriteOp {
    /// The key `(collection, id)` the write touches.
    pub fn key(&self) -> (&str, &str) {
        match self {
            WriteOp::Insert { collection, id, .. }
            | WriteOp::Put { collection, id, .. }
            | WriteOp::Merge { collection, id, .. }
            | WriteOp::Add { collection, id, .. }
            | WriteOp::Delete { collection, id } => (collection, id),
        }
    }
}

/// Write `docs` with [`Store::insert`] unless one of their `(workspace, collection)` pairs
/// already holds a document; how many were written. For a shared store (DynamoDB) that is seeded
/// at start rather than at creation: gateways starting side by side may both seed, and `insert`
/// keeps the first copy of every document. A workspace deleted in full is seeded again.
pub async fn seed_if_empty(store: &dyn Store, docs: Vec<Document>) -> Result<usize, StoreError> {
    let mut checked = std::collections::HashSet::new();
    for d in &docs {
        if checked.insert((d.workspace_id.as_str(), d.collection.as_str()))
            && !store
                .list_page(&d.workspace_id, &d.collection, None, 1)
                .await?
                .items
                .is_empty()
        {
            return Ok(0);
        }
    }
    let mut written = 0;
    for d in docs {
        if store
            .insert(&d.workspace_id, &d.collection, &d.id, d.body)
            .await?
        {
            written += 1;
        }
    }
    Ok(written)
}

/// Refuse a batch no DynamoDB transaction could run: more than [`MAX_BATCH`] writes, or two
/// writes on one key. Both stores apply the same rule so they behave alike.
pub(crate) fn check_batch(ops: &[WriteOp]) -> Result<(), StoreError> {
    if ops.len() > MAX_BATCH {
        return Err(StoreError::Invalid(format!(
            "a transaction holds at most {MAX_BATCH} writes, not {}",
            ops.len()
        )));
    }
    let mut keys = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        if !keys.insert(op.key()) {
            let (c, id) = op.key();
            return Err(StoreError::Invalid(format!(
                "a transaction writes {c}/{id} more than once"
            )));
        }
    }
    Ok(())
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

/// One write of a [`Store::transact`] batch; each carries its own condition.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Create the document; the batch fails if the key exists.
    Insert {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
        /// The document.
        doc: Value,
    },
    /// Create or replace the document (no condition).
    Put {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
        /// The document.
        doc: Value,
    },
    /// Shallow-merge into an existing object document; the batch fails if there is none.
    Merge {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
        /// The fields to set.
        patch: Map<String, Value>,
    },
    /// Add to an integer field (missing = 0, creating the document); the batch fails if the
    /// result would fall below `floor`.
    Add {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
        /// The integer field.
        field: String,
        /// The amount (may be negative).
        delta: i64,
        /// The lowest allowed result.
        floor: i64,
    },
    /// Delete the document; the batch fails if there is none.
    Delete {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
}

/// One page of a collection, ordered by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The documents of this page.
    pub items: Vec<(String, Value)>,
    /// Whether documents with larger ids remain (the last item's id continues the listing).
    pub more: bool,
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

    /// Up to `limit` documents with an id strictly after `after` (all when `None`), ordered by id.
    async fn list_page(
        &self,
        ws: &str,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut items: Vec<(String, Value)> = self
            .list(ws, collection)
            .await?
            .into_iter()
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, more })
    }

    /// Apply every write of `ops` in the workspace, all or none (a DynamoDB TransactWriteItems:
    /// at most 25 writes, one per key, else [`StoreError::Invalid`]). `false` when a condition
    /// failed and nothing was written.
    ///
    /// The default applies the writes one by one and is NOT atomic; every store overrides it.
    async fn transact(&self, ws: &str, ops: Vec<WriteOp>) -> Result<bool, StoreError> {
        for op in ops {
            let ok = match op {
                WriteOp::Insert {
                    collection,
                    id,
                    doc,
                } => self.insert(ws, &collection, &id, doc).await?,
                WriteOp::Put {
                    collection,
                    id,
                    doc,
                } => {
                    self.put(ws, &collection, &id, doc).await?;
                    true
                }
                WriteOp::Merge {
                    collection,
                    id,
                    patch,
                } => self.merge(ws, &collection, &id, patch).await?.is_some(),
                WriteOp::Add {
                    collection,
                    id,
                    field,
                    delta,
                    floor,
                } => self
                    .add_to_field(ws, &collection, &id, &field, delta, floor)
                    .await?
                    .is_some(),
                WriteOp::Delete { collection, id } => self.delete(ws, &collection, &id).await?,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod conformance;
