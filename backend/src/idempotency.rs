//! `X-Idempotency-Key` on POST, PUT and PATCH: a write runs at most once per key.
//!
//! The key is scoped to the caller (the token subject and the user it acts for) and the
//! workspace, and stored in the workspace's own keys, in the same store as the data (so a
//! DynamoDB deployment shares it between instances and its TTL attribute clears it).
//!
//! 1. The first request claims the key with a conditional insert of a *pending* record holding
//!    the request's fingerprint (SHA-256 of method, path, query and body). Only one of any number
//!    of racing requests wins the claim; only that one runs the handler.
//! 2. The winner replaces the record with its answer (status and body), kept for the TTL. A
//!    5xx answer is kept only when the handler changed something before it failed (a write
//!    the store accepted, or one whose outcome is unknown — a remote store that timed out may
//!    have applied it): a retry then replays the 5xx instead of writing twice (an award whose
//!    ledger transaction committed before reading the new balance failed must not be credited
//!    again). A 5xx before any write (or after writes the store refused or turned down as
//!    busy) releases the claim, so a retry runs again. [`Watched`] tells the two apart.
//! 3. Any other request with the key reads the record: another fingerprint is 422
//!    `business/idempotency_key_reused`; a stored answer is replayed (with
//!    `Idempotent-Replayed: true`); a pending one is waited for up to [`WAIT`], then 409
//!    `resource/conflict`.
//!
//! A pending claim expires after [`PENDING_LEASE`], so a process that died mid-request blocks
//! its key only that long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, clip};
use crate::handlers::Ctx;
use crate::store::{EXPIRES_AT, Page, Store, StoreError, WriteOp, now_secs};

/// The request header.
pub const HEADER: &str = "x-idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long an answer is kept when the config says nothing.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// How long a claim may stay pending before another request may take the key over.
pub const PENDING_LEASE: Duration = Duration::from_secs(30);
/// How long a retry waits for a running first request before answering 409.
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// The collection holding the records.
pub const COLLECTION: &str = "idempotency-keys";
const MAX_KEY_LEN: usize = 255;

/// An answer: status and JSON body (`None` for 204).
pub type Answer = (StatusCode, Option<Value>);

/// The answer to a write with a key, and whether it is a replay.
pub struct Outcome {
    /// The status and body.
    pub answer: Answer,
    /// Whether it was stored by an earlier request.
    pub replayed: bool,
}

/// The key from the header: 1–255 visible ASCII characters.
pub fn key_of(value: &http::HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::field(
            "X-Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
    };
    let s = value.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(s.to_owned())
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Run `execute` at most once for `key` (see the module doc). `execute` gets `store` watched:
/// it must do every write through that one.
pub async fn run<F, Fut>(
    store: &Arc<dyn Store>,
    cx: &Ctx,
    method: &str,
    path_and_query: &str,
    key: &str,
    ttl: Duration,
    execute: F,
) -> Result<Outcome, ApiError>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let id = sha256_hex(&[
        cx.caller.sub.as_bytes(),
        cx.caller.user_id().as_bytes(),
        key.as_bytes(),
    ]);
    let fingerprint = sha256_hex(&[method.as_bytes(), path_and_query.as_bytes(), &cx.body]);
    let started = tokio::time::Instant::now();
    loop {
        let claim = json!({
            "state": "pending",
            "fingerprint": fingerprint,
            EXPIRES_AT: now_secs() + PENDING_LEASE.as_secs_f64(),
        });
        if store.insert(&cx.ws, COLLECTION, &id, claim).await? {
            break;
        }
        match store.get(&cx.ws, COLLECTION, &id).await? {
            // Expired or released between the two calls: claim again.
            None => continue,
            Some(record) => {
                if record.get("fingerprint").and_then(Value::as_str) != Some(&fingerprint) {
                    return Err(ApiError::Business {
                        code: "business/idempotency_key_reused",
                        message: format!(
                            "the idempotency key '{}' was used for a different request",
                            clip(key, 64)
                        ),
                    });
                }
                if let Some(answer) = stored_answer(&record) {
                    return Ok(Outcome {
                        answer,
                        replayed: true,
                    });
                }
                if started.elapsed() >= WAIT {
                    return Err(ApiError::Conflict(
                        "a request with this idempotency key is still in progress".into(),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    let watched = Arc::new(Watched::new(Arc::clone(store)));
    let (status, body) = execute(Arc::clone(&watched) as Arc<dyn Store>).await;
    if status.is_server_error() && !watched.wrote() {
        // Nothing durable happened: let a retry run again.
        if let Err(e) = store.delete(&cx.ws, COLLECTION, &id).await {
            tracing::warn!(error = %e, "releasing an idempotency key failed");
        }
    } else {
        let record = json!({
            "state": "done",
            "fingerprint": fingerprint,
            "status": status.as_u16(),
            // As text: a replay is byte for byte the first answer (a store may reorder keys).
            "body": body.as_ref().map(Value::to_string),
            EXPIRES_AT: now_secs() + ttl.as_secs_f64(),
        });
        if let Err(e) = store.put(&cx.ws, COLLECTION, &id, record).await {
            // The write itself happened; the key stays pending until its lease ends, so a
            // retry in that window gets 409 rather than a second execution.
            tracing::warn!(error = %e, "storing an idempotent answer failed");
        }
    }
    Ok(Outcome {
        answer: (status, body),
        replayed: false,
    })
}

/// A store that remembers whether a write may have changed anything: one the store reports
/// as applied, or one that failed in a way that leaves it unknown. Writes refused by their
/// condition (an insert on a taken key, an update of a missing document, a transaction whose
/// condition failed), requests the store rejects as invalid and requests it turns down as busy
/// changed nothing.
pub struct Watched {
    inner: Arc<dyn Store>,
    wrote: AtomicBool,
}

impl Watched {
    /// Watch the writes made through `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Watched {
        Watched {
            inner,
            wrote: AtomicBool::new(false),
        }
    }

    /// Whether a write through this store may have changed anything.
    pub fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Pass a write's result on, noting whether it may have changed anything.
    fn note<T>(
        &self,
        result: Result<T, StoreError>,
        applied: impl FnOnce(&T) -> bool,
    ) -> Result<T, StoreError> {
        let changed = match &result {
            Ok(v) => applied(v),
            Err(StoreError::Invalid(_) | StoreError::Busy(_)) => false,
            Err(_) => true,
        };
        if changed {
            self.wrote.store(true, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait]
impl Store for Watched {
    async fn get(&self, ws: &str, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        self.inner.get(ws, collection, id).await
    }

    async fn put(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        doc: Value,
    ) -> Result<(), StoreError> {
        let result = self.inner.put(ws, collection, id, doc).await;
        self.note(result, |()| true)
    }

    async fn insert(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        doc: Value,
    ) -> Result<bool, StoreError> {
        let result = self.inner.insert(ws, collection, id, doc).await;
        self.note(result, |inserted| *inserted)
    }

    async fn merge(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<Option<Value>, StoreError> {
        let result = self.inner.merge(ws, collection, id, patch).await;
        self.note(result, Option::is_some)
    }

    async fn add_to_field(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
        floor: i64,
    ) -> Result<Option<i64>, StoreError> {
        let result = self
            .inner
            .add_to_field(ws, collection, id, field, delta, floor)
            .await;
        self.note(result, Option::is_some)
    }

    async fn delete(&self, ws: &str, collection: &str, id: &str) -> Result<bool, StoreError> {
        let result = self.inner.delete(ws, collection, id).await;
        self.note(result, |deleted| *deleted)
    }

    async fn list(&self, ws: &str, collection: &str) -> Result<Vec<(String, Value)>, StoreError> {
        self.inner.list(ws, collection).await
    }

    async fn delete_workspace(&self, ws: &str) -> Result<usize, StoreError> {
        let result = self.inner.delete_workspace(ws).await;
        self.note(result, |n| *n > 0)
    }

    async fn list_page(
        &self,
        ws: &str,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.inner.list_page(ws, collection, after, limit).await
    }

    async fn transact(&self, ws: &str, ops: Vec<WriteOp>) -> Result<bool, StoreError> {
        let result = self.inner.transact(ws, ops).await;
        self.note(result, |applied| *applied)
    }
}

fn stored_answer(record: &Value) -> Option<Answer> {
    if record.get("state").and_then(Value::as_str) != Some("done") {
        return None;
    }
    let status = record
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())?;
    let body = match record.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(serde_json::from_str(text).ok()?),
        Some(_) => return None,
    };
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        let ok = |s: &str| key_of(&http::HeaderValue::from_str(s).unwrap()).is_ok();
        assert!(ok("a"));
        assert!(ok("order-123_ABC:x"));
        assert!(ok(&"k".repeat(255)));
        assert!(!ok(&"k".repeat(256)));
        assert!(!ok(""));
        assert!(!ok("has space"));
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(sha256_hex(&[b"ab", b"c"]), sha256_hex(&[b"a", b"bc"]));
        assert_eq!(sha256_hex(&[b"ab", b"c"]), sha256_hex(&[b"ab", b"c"]));
    }

    #[test]
    fn only_finished_records_replay() {
        assert!(stored_answer(&json!({"state": "pending"})).is_none());
        let (s, b) =
            stored_answer(&json!({"state": "done", "status": 201, "body": "{\"a\":1}"})).unwrap();
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(b, Some(json!({"a": 1})));
        let (s, b) = stored_answer(&json!({"state": "done", "status": 204, "body": null})).unwrap();
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(b.is_none());
    }
}
