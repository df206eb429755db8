//! The distributed store: one DynamoDB table shared by every gateway instance.
//!
//! Key design (single table): partition key `pk` = the workspace id, sort key `sk` =
//! `<len(collection)>:<collection>#<id>`. The workspace is the whole partition key, so two
//! workspaces never share a partition whatever characters their ids hold (`#` included); the
//! length prefix keeps collections apart in the sort key, and ids sort within a collection by
//! their UTF-8 bytes, the order the embedded store uses. A collection is one `Query` with
//! `begins_with(sk, prefix)`; a workspace is one `Query` on `pk`, which is what makes
//! `delete_workspace` exact without a registry of collections.
//!
//! Trade-off: one tenant is one partition key. A DynamoDB partition serves about 3,000 reads
//! and 1,000 writes per second; adaptive capacity may split a hot one by sort-key range, but
//! until it does one very busy tenant can be throttled while the table has capacity to spare
//! (the table has no local secondary index, so there is no 10 GB limit per tenant). Keying `pk`
//! by workspace *and* collection would spread a tenant wider but needs a per-workspace
//! collection list kept in step with every write (or a table scan) to delete a workspace.
//! DynamoDB refuses an empty workspace id and keys beyond 2,048 (`pk`) or 1,024 (`sk`) bytes:
//! such requests fail with [`StoreError::Invalid`].
//!
//! Item layout and expressions: see [`item`]. Every conditional operation is one request and
//! the condition runs on the server: `insert` a PutItem with `attribute_not_exists`, `merge` an
//! UpdateItem `SET` with `attribute_exists`, `add_to_field` an UpdateItem `ADD` whose condition
//! carries the floor, `transact` one TransactWriteItems. Reads are strongly consistent.
//!
//! Expiry: a numeric `expiresAt` is mirrored into `ttl` for DynamoDB's TTL clean-up, which runs
//! late (moto never runs it), so reads drop expired items and conditions treat them as missing.
//! The one write a condition cannot express is `ADD` over an expired item (the embedded store
//! starts such a document afresh): its condition fails, the expired item is deleted (only while
//! still expired) and the write runs again.
//!
//! Transaction conflicts (a write racing a transaction on the same item) are retried with
//! jittered backoff a few times, then reported as [`StoreError::Busy`] (as are throttling and
//! cancelled transactions: nothing was applied). Retries after
//! transport errors are the SDK client's (its retry and timeout config is the caller's):
//! TransactWriteItems carries an idempotency token the SDK fills in, so a retried transaction
//! applies once; a retried `ADD` whose first attempt landed unseen applies twice, so amounts
//! that must not double belong in a `transact` with a conditional ledger `Insert`.

mod item;
mod request;
mod table;
mod transact;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, ReturnValue, WriteRequest};
use serde_json::{Map, Value};

use self::item::{Expr, Item, PK, SK};
use self::request::{
    ATTEMPTS, Failure, backoff, build_error, cancellation_codes, classify, plain, send, unavailable,
};
pub use self::table::create_table;
use super::{EXPIRES_AT, Page, Store, StoreError, WriteOp, check_batch, is_expired, now_secs};

/// The DynamoDB store over one table (see the module doc for its layout).
#[derive(Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
}

impl std::fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl DynamoDbStore {
    /// The store over `table`, through a client built (with its timeouts) by the caller.
    pub fn new(client: Client, table: String) -> DynamoDbStore {
        DynamoDbStore { client, table }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Delete the item at the key if it holds an expired document; whether it did.
    async fn purge_expired(&self, ws: &str, c: &str, id: &str) -> Result<bool, StoreError> {
        let mut expr = Expr::default();
        let condition = expr.expired(now_secs());
        let key = item::key(ws, c, id);
        let out = send("delete", || {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .condition_expression(&condition)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .send()
        })
        .await;
        match out {
            Ok(_) => Ok(true),
            Err(Failure::Condition) => Ok(false),
            Err(f) => plain(Err(f)),
        }
    }

    /// Live documents of a collection with ids after `after`, up to `limit` of them, and
    /// whether more remain.
    async fn query(
        &self,
        ws: &str,
        c: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page, StoreError> {
        let prefix = item::collection_prefix(c);
        let mut expr = Expr::default();
        let (pk, sk) = (expr.name(PK), expr.name(SK));
        let ws_v = expr.value(AttributeValue::S(ws.to_owned()));
        let prefix_v = expr.value(AttributeValue::S(prefix.clone()));
        let condition = format!("{pk} = {ws_v} AND begins_with({sk}, {prefix_v})");
        // A start key needs no item of its own: the query resumes strictly after it.
        let mut start = after.map(|a| item::key(ws, c, a));
        // One extra item tells whether more remain; expired items may cost further pages.
        let page_size = limit.map(|l| l.saturating_add(1).min(1000) as i32);
        let now = now_secs();
        let mut items = Vec::new();
        loop {
            let out = plain(
                send("query", || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression(&condition)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .consistent_read(true)
                        .set_limit(page_size)
                        .set_exclusive_start_key(start.clone())
                        .send()
                })
                .await,
            )?;
            for raw in out.items() {
                let Some(id) = raw
                    .get(SK)
                    .and_then(|s| s.as_s().ok())
                    .and_then(|s| s.strip_prefix(&prefix))
                else {
                    return Err(StoreError::Corrupt("an item without its sort key".into()));
                };
                let doc = item::decode(raw)?;
                if is_expired(&doc, now) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() == l) {
                    return Ok(Page { items, more: true });
                }
                items.push((id.to_owned(), doc));
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(Page { items, more: false }),
            }
        }
    }

    /// Delete `keys` (at most 25) with BatchWriteItem, sending unprocessed ones again.
    async fn delete_batch(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        let mut requests = keys
            .into_iter()
            .map(|key| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .map_err(build_error)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        for n in 0..ATTEMPTS {
            if requests.is_empty() {
                return Ok(());
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| unavailable("batch delete", e))?;
            requests = out
                .unprocessed_items()
                .and_then(|u| u.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if !requests.is_empty() {
                backoff(n).await;
            }
        }
        if requests.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "dynamodb batch delete: items left unprocessed".into(),
            ))
        }
    }
}

#[async_trait]
impl Store for DynamoDbStore {
    async fn get(&self, ws: &str, c: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let key = item::key(ws, c, id);
        let out = plain(
            send("get", || {
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .consistent_read(true)
                    .send()
            })
            .await,
        )?;
        let Some(raw) = out.item().filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let doc = item::decode(raw)?;
        Ok((!is_expired(&doc, now_secs())).then_some(doc))
    }

    async fn put(&self, ws: &str, c: &str, id: &str, doc: Value) -> Result<(), StoreError> {
        let raw = item::encode(item::key(ws, c, id), &doc);
        plain(
            send("put", || {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(raw.clone()))
                    .send()
            })
            .await,
        )?;
        Ok(())
    }

    async fn insert(&self, ws: &str, c: &str, id: &str, doc: Value) -> Result<bool, StoreError> {
        let raw = item::encode(item::key(ws, c, id), &doc);
        let mut expr = Expr::default();
        let condition = expr.absent(now_secs());
        let out = send("insert", || {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(raw.clone()))
                .condition_expression(&condition)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .send()
        })
        .await;
        match out {
            Ok(_) => Ok(true),
            Err(Failure::Condition) => Ok(false),
            Err(f) => plain(Err(f)),
        }
    }

    async fn merge(
        &self,
        ws: &str,
        c: &str,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<Option<Value>, StoreError> {
        let (update, condition, expr) = item::merge(&patch, now_secs());
        let Some(update) = update else {
            return Ok(self.get(ws, c, id).await?.filter(Value::is_object));
        };
        let key = item::key(ws, c, id);
        let out = send("merge", || {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .update_expression(&update)
                .condition_expression(&condition)
                .set_expression_attribute_names(expr.names())
                .set_expression_attribute_values(expr.values())
                .return_values(ReturnValue::AllNew)
                .send()
        })
        .await;
        match out {
            Ok(out) => match out.attributes() {
                Some(raw) => item::decode(raw).map(Some),
                None => Err(StoreError::Corrupt("merge returned no document".into())),
            },
            Err(Failure::Condition) => Ok(None),
            Err(f) => plain(Err(f)),
        }
    }

    async fn add_to_field(
        &self,
        ws: &str,
        c: &str,
        id: &str,
        field: &str,
        delta: i64,
        floor: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = item::key(ws, c, id);
        for _ in 0..ATTEMPTS {
            let Some(add) = item::add(field, delta, floor, now_secs()) else {
                return Ok(None);
            };
            let out = send("add", || {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .update_expression(&add.update)
                    .condition_expression(&add.condition)
                    .set_expression_attribute_names(add.expr.names())
                    .set_expression_attribute_values(add.expr.values())
                    // Not UPDATED_NEW: moto leaves out an attribute that `ADD 0` did not change.
                    .return_values(ReturnValue::AllNew)
                    .send()
            })
            .await;
            match out {
                Ok(out) => return item::added(out.attributes(), field).map(Some),
                // Refused, unless what stood in the way was an expired document.
                Err(Failure::Condition) if self.purge_expired(ws, c, id).await? => continue,
                Err(Failure::Condition) => return Ok(None),
                Err(f) => return plain(Err(f)),
            }
        }
        Err(StoreError::Unavailable(
            "dynamodb add: expired documents kept reappearing".into(),
        ))
    }

    async fn delete(&self, ws: &str, c: &str, id: &str) -> Result<bool, StoreError> {
        let key = item::key(ws, c, id);
        let now = now_secs();
        let out = plain(
            send("delete", || {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key.clone()))
                    .return_values(ReturnValue::AllOld)
                    .send()
            })
            .await,
        )?;
        // Deleting an expired document is harmless; it only does not count as a deletion.
        match out.attributes().filter(|a| !a.is_empty()) {
            Some(raw) => Ok(!is_expired(&item::decode(raw)?, now)),
            None => Ok(false),
        }
    }

    async fn list(&self, ws: &str, c: &str) -> Result<Vec<(String, Value)>, StoreError> {
        Ok(self.query(ws, c, None, None).await?.items)
    }

    async fn delete_workspace(&self, ws: &str) -> Result<usize, StoreError> {
        let mut expr = Expr::default();
        let (pk, sk) = (expr.name(PK), expr.name(SK));
        let expires_attr = item::field(EXPIRES_AT);
        let expires = expr.name(&expires_attr);
        let projection = format!("{pk}, {sk}, {expires}");
        let ws_v = expr.value(AttributeValue::S(ws.to_owned()));
        let condition = format!("{pk} = {ws_v}");
        let now = now_secs();
        let mut deleted = 0;
        let mut start = None;
        // Writes racing the deletion may survive it; the pages are positional, so deleting
        // behind the cursor never skips an item that was there when it passed.
        loop {
            let out = plain(
                send("query", || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression(&condition)
                        .projection_expression(&projection)
                        .set_expression_attribute_names(expr.names())
                        .set_expression_attribute_values(expr.values())
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                })
                .await,
            )?;
            let mut keys = Vec::with_capacity(out.items().len());
            for raw in out.items() {
                let expired = raw
                    .get(&expires_attr)
                    .and_then(|e| e.as_n().ok())
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|t| t < now);
                if !expired {
                    deleted += 1;
                }
                let key: Item = raw
                    .iter()
                    .filter(|(k, _)| *k == PK || *k == SK)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                keys.push(key);
            }
            while !keys.is_empty() {
                let rest = keys.split_off(keys.len().min(25));
                self.delete_batch(keys).await?;
                keys = rest;
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(deleted),
            }
        }
    }

    async fn list_page(
        &self,
        ws: &str,
        c: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.query(ws, c, after, Some(limit)).await
    }

    async fn transact(&self, ws: &str, ops: Vec<WriteOp>) -> Result<bool, StoreError> {
        check_batch(&ops)?;
        if ops.is_empty() {
            return Ok(true);
        }
        for n in 0..ATTEMPTS {
            let Some(items) = transact::transact_items(&self.table, ws, &ops, now_secs())? else {
                return Ok(false);
            };
            let e = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            let codes = cancellation_codes(&e);
            if codes.iter().any(|c| c == "ConditionalCheckFailed") {
                // An `Add` over an expired document fails its condition though the document
                // counts as missing: purge such documents and try again.
                let mut purged = false;
                for op in &ops {
                    if let WriteOp::Add { collection, id, .. } = op {
                        purged |= self.purge_expired(ws, collection, id).await?;
                    }
                }
                if purged {
                    continue;
                }
                return Ok(false);
            }
            let conflict = codes.iter().any(|c| c == "TransactionConflict")
                || e.code() == Some("TransactionInProgressException");
            if codes.iter().any(|c| c == "ValidationError") {
                return Err(StoreError::Invalid(format!(
                    "dynamodb transact: refused ({})",
                    codes.join(", ")
                )));
            }
            if !conflict {
                // A cancelled transaction applied none of its writes.
                let cancelled = e.code() == Some("TransactionCanceledException");
                return Err(match classify("transact", e) {
                    Failure::Store(e) if !cancelled => e,
                    _ => StoreError::Busy(format!(
                        "dynamodb transact: cancelled ({})",
                        codes.join(", ")
                    )),
                });
            }
            backoff(n).await;
        }
        Err(StoreError::Busy(
            "dynamodb transact: transaction conflicts persisted".into(),
        ))
    }
}

#[cfg(test)]
#[path = "dynamodb_tests.rs"]
mod tests;
