//! The embedded store: every document in memory, made durable by an append-only JSON-lines log
//! (`store.jsonl`, mode 0600) in its directory.
//!
//! Lifecycle of the log:
//! - open, no log: a new store. The seed is written as the first snapshot (temp file, fsync,
//!   rename, fsync of the directory), so a crash mid-seed leaves no half-seeded store and the
//!   seed is never applied again, even after the workspace is deleted.
//! - open, a log: replay it. A torn last line (a crash mid-append) is dropped; any other bad
//!   line refuses to open. Then compact: rewrite the live documents as a fresh snapshot.
//! - write: under one mutex, the record is appended and fsynced *before* memory changes, so the
//!   log order is the memory order and an acknowledged write survives a crash. A failed append
//!   is truncated away and memory is left as it was.
//! - a `transact` batch is one record (`batch`): every condition is checked under the mutex, the
//!   whole batch is appended and fsynced as one line, then applied. A torn batch line is dropped
//!   whole, so a batch is never half-applied, even across a crash.
//! - when the log holds four times more records than live documents, it is compacted again.
//!   Compaction (and opening) also drops expired documents: they were already absent to readers.
//!
//! An exclusive lock on `store.lock` keeps a second process (or a second open) out.
//! Writes run on tokio's blocking pool: fsync never stalls a runtime worker.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Document, Page, Store, StoreError, WriteOp, check_batch, is_expired, now_secs};

const LOG: &str = "store.jsonl";
const LOG_TMP: &str = "store.jsonl.tmp";
const LOCK: &str = "store.lock";

/// workspace -> collection -> id -> document.
type Docs = BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>;

/// One line of the log.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Record<'a> {
    Put {
        ws: Cow<'a, str>,
        c: Cow<'a, str>,
        id: Cow<'a, str>,
        doc: Cow<'a, Value>,
    },
    Delete {
        ws: Cow<'a, str>,
        c: Cow<'a, str>,
        id: Cow<'a, str>,
    },
    DropWorkspace {
        ws: Cow<'a, str>,
    },
    /// The writes of one `transact`, applied together or (torn) not at all.
    Batch {
        ws: Cow<'a, str>,
        writes: Cow<'a, [Change]>,
    },
}

/// One resolved write: what a [`WriteOp`] amounts to once its condition held.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Change {
    Put { c: String, id: String, doc: Value },
    Delete { c: String, id: String },
}

/// The in-memory, log-backed store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    docs: Docs,
    dir: PathBuf,
    log: File,
    log_len: u64,
    records: usize,
    _lock: File,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Open the store in `dir` (created 0700 if missing); a new store starts with `seed()`.
    /// A store another process holds is refused ([`StoreError::Locked`]).
    pub fn open(
        dir: &Path,
        seed: impl FnOnce() -> Vec<Document>,
    ) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, seed, false)
    }

    /// [`EmbeddedStore::open`], but a store another process holds is waited for (a graceful
    /// upgrade's new process takes the store over when the old one exits).
    pub fn open_when_free(
        dir: &Path,
        seed: impl FnOnce() -> Vec<Document>,
    ) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, seed, true)
    }

    fn open_with(
        dir: &Path,
        seed: impl FnOnce() -> Vec<Document>,
        wait: bool,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK))?;
        if wait {
            lock.lock()?;
        } else {
            lock.try_lock()
                .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
        }
        let docs = match std::fs::read(dir.join(LOG)) {
            Ok(bytes) => replay(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut docs = Docs::new();
                for d in seed() {
                    slot(&mut docs, &d.workspace_id, &d.collection).insert(d.id, d.body);
                }
                docs
            }
            Err(e) => return Err(e.into()),
        };
        let (log, log_len, records) = write_snapshot(dir, &docs)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Mutex::new(Inner {
                docs,
                dir: dir.to_owned(),
                log,
                log_len,
                records,
                _lock: lock,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics while holding the lock in a way that leaves it half-updated
        // (memory changes only after a successful append), so a poisoned lock is still sound.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run a write on the blocking pool; it completes even if the caller goes away.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut guard);
            guard.maybe_compact();
            out
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

fn slot<'a>(docs: &'a mut Docs, ws: &str, c: &str) -> &'a mut BTreeMap<String, Value> {
    docs.entry(ws.to_owned())
        .or_default()
        .entry(c.to_owned())
        .or_default()
}

fn lookup<'a>(docs: &'a Docs, ws: &str, c: &str, id: &str) -> Option<&'a Value> {
    docs.get(ws)?.get(c)?.get(id)
}

/// The document at the key unless it is missing or expired.
fn live<'a>(docs: &'a Docs, ws: &str, c: &str, id: &str, now: f64) -> Option<&'a Value> {
    lookup(docs, ws, c, id).filter(|d| !is_expired(d, now))
}

/// What `op` writes if its condition holds against `docs` (every key of a batch is distinct, so
/// each op of a batch sees the state before the batch).
fn resolve(docs: &Docs, ws: &str, op: WriteOp, now: f64) -> Option<Change> {
    match op {
        WriteOp::Insert {
            collection: c,
            id,
            doc,
        } => live(docs, ws, &c, &id, now)
            .is_none()
            .then_some(Change::Put { c, id, doc }),
        WriteOp::Put {
            collection: c,
            id,
            doc,
        } => Some(Change::Put { c, id, doc }),
        WriteOp::Merge {
            collection: c,
            id,
            patch,
        } => {
            let Some(Value::Object(doc)) = live(docs, ws, &c, &id, now) else {
                return None;
            };
            let mut doc = doc.clone();
            doc.extend(patch);
            Some(Change::Put {
                c,
                id,
                doc: Value::Object(doc),
            })
        }
        WriteOp::Add {
            collection: c,
            id,
            field,
            delta,
            floor,
        } => {
            let mut doc = match live(docs, ws, &c, &id, now) {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            let current = doc.get(&field).and_then(Value::as_i64).unwrap_or(0);
            let next = current.checked_add(delta).filter(|n| *n >= floor)?;
            doc.insert(field, Value::from(next));
            Some(Change::Put {
                c,
                id,
                doc: Value::Object(doc),
            })
        }
        WriteOp::Delete { collection: c, id } => live(docs, ws, &c, &id, now)
            .is_some()
            .then_some(Change::Delete { c, id }),
    }
}

fn apply(docs: &mut Docs, ws: &str, write: Change) {
    match write {
        Change::Put { c, id, doc } => {
            slot(docs, ws, &c).insert(id, doc);
        }
        Change::Delete { c, id } => {
            remove(docs, ws, &c, &id);
        }
    }
}

/// Forget expired documents (they are absent to every reader already).
fn drop_expired(docs: &mut Docs, now: f64) {
    for colls in docs.values_mut() {
        for coll in colls.values_mut() {
            coll.retain(|_, doc| !is_expired(doc, now));
        }
        colls.retain(|_, coll| !coll.is_empty());
    }
    docs.retain(|_, colls| !colls.is_empty());
}

fn remove(docs: &mut Docs, ws: &str, c: &str, id: &str) -> Option<Value> {
    let colls = docs.get_mut(ws)?;
    let coll = colls.get_mut(c)?;
    let old = coll.remove(id);
    if coll.is_empty() {
        colls.remove(c);
    }
    if colls.is_empty() {
        docs.remove(ws);
    }
    old
}

fn count(docs: &Docs) -> usize {
    docs.values()
        .flat_map(|c| c.values())
        .map(BTreeMap::len)
        .sum()
}

fn replay(bytes: &[u8]) -> Result<Docs, StoreError> {
    let mut docs = Docs::new();
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (n, line) in lines.into_iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let record: Record<'_> = match serde_json::from_slice(line) {
            Ok(r) => r,
            // The final line without its newline is a torn append: never acknowledged.
            Err(_) if n == last => break,
            Err(e) => return Err(StoreError::Corrupt(format!("line {}: {e}", n + 1))),
        };
        match record {
            Record::Put { ws, c, id, doc } => {
                slot(&mut docs, &ws, &c).insert(id.into_owned(), doc.into_owned());
            }
            Record::Delete { ws, c, id } => {
                remove(&mut docs, &ws, &c, &id);
            }
            Record::DropWorkspace { ws } => {
                docs.remove(ws.as_ref());
            }
            Record::Batch { ws, writes } => {
                for write in writes.into_owned() {
                    apply(&mut docs, &ws, write);
                }
            }
        }
    }
    drop_expired(&mut docs, now_secs());
    Ok(docs)
}

/// Write `docs` as a fresh log atomically; the log opened for appending, its length and lines.
fn write_snapshot(dir: &Path, docs: &Docs) -> Result<(File, u64, usize), StoreError> {
    let tmp = dir.join(LOG_TMP);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut out = BufWriter::new(file);
    let mut records = 0;
    for (ws, colls) in docs {
        for (c, coll) in colls {
            for (id, doc) in coll {
                let record = Record::Put {
                    ws: Cow::Borrowed(ws),
                    c: Cow::Borrowed(c),
                    id: Cow::Borrowed(id),
                    doc: Cow::Borrowed(doc),
                };
                serde_json::to_writer(&mut out, &record)
                    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
                out.write_all(b"\n")?;
                records += 1;
            }
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let path = dir.join(LOG);
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    let log = OpenOptions::new().append(true).open(&path)?;
    let len = log.metadata()?.len();
    Ok((log, len, records))
}

impl Inner {
    fn append(&mut self, record: &Record<'_>) -> Result<(), StoreError> {
        let mut line =
            serde_json::to_vec(record).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        line.push(b'\n');
        let written = self
            .log
            .write_all(&line)
            .and_then(|()| self.log.sync_data());
        if let Err(e) = written {
            // Cut the partial line off so the next append starts on a clean line.
            let _ = self.log.set_len(self.log_len);
            return Err(e.into());
        }
        self.log_len += line.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Log one resolved write, then apply it.
    fn commit(&mut self, ws: &str, write: Change) -> Result<(), StoreError> {
        let record = match &write {
            Change::Put { c, id, doc } => Record::Put {
                ws: ws.into(),
                c: c.into(),
                id: id.into(),
                doc: Cow::Borrowed(doc),
            },
            Change::Delete { c, id } => Record::Delete {
                ws: ws.into(),
                c: c.into(),
                id: id.into(),
            },
        };
        self.append(&record)?;
        apply(&mut self.docs, ws, write);
        Ok(())
    }

    /// Resolve `op` and commit it; the write, or `None` when its condition failed.
    fn write_one(&mut self, ws: &str, op: WriteOp) -> Result<Option<Change>, StoreError> {
        let Some(write) = resolve(&self.docs, ws, op, now_secs()) else {
            return Ok(None);
        };
        self.commit(ws, write.clone())?;
        Ok(Some(write))
    }

    fn maybe_compact(&mut self) {
        if self.records <= 4 * count(&self.docs) + 1024 {
            return;
        }
        drop_expired(&mut self.docs, now_secs());
        match write_snapshot(&self.dir, &self.docs) {
            Ok((log, len, records)) => {
                self.log = log;
                self.log_len = len;
                self.records = records;
            }
            Err(e) => tracing::warn!(error = %e, "backend store compaction failed"),
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, ws: &str, c: &str, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(live(&self.lock().docs, ws, c, id, now_secs()).cloned())
    }

    async fn put(&self, ws: &str, c: &str, id: &str, doc: Value) -> Result<(), StoreError> {
        let (ws, c, id) = (ws.to_owned(), c.to_owned(), id.to_owned());
        self.write(move |s| s.commit(&ws, Change::Put { c, id, doc }))
            .await
    }

    async fn insert(&self, ws: &str, c: &str, id: &str, doc: Value) -> Result<bool, StoreError> {
        let op = WriteOp::Insert {
            collection: c.to_owned(),
            id: id.to_owned(),
            doc,
        };
        let ws = ws.to_owned();
        self.write(move |s| Ok(s.write_one(&ws, op)?.is_some()))
            .await
    }

    async fn merge(
        &self,
        ws: &str,
        c: &str,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<Option<Value>, StoreError> {
        let op = WriteOp::Merge {
            collection: c.to_owned(),
            id: id.to_owned(),
            patch,
        };
        let ws = ws.to_owned();
        self.write(move |s| {
            Ok(match s.write_one(&ws, op)? {
                Some(Change::Put { doc, .. }) => Some(doc),
                _ => None,
            })
        })
        .await
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
        let op = WriteOp::Add {
            collection: c.to_owned(),
            id: id.to_owned(),
            field: field.to_owned(),
            delta,
            floor,
        };
        let (ws, field) = (ws.to_owned(), field.to_owned());
        self.write(move |s| {
            Ok(match s.write_one(&ws, op)? {
                Some(Change::Put { doc, .. }) => doc.get(&field).and_then(Value::as_i64),
                _ => None,
            })
        })
        .await
    }

    async fn delete(&self, ws: &str, c: &str, id: &str) -> Result<bool, StoreError> {
        let op = WriteOp::Delete {
            collection: c.to_owned(),
            id: id.to_owned(),
        };
        let ws = ws.to_owned();
        self.write(move |s| Ok(s.write_one(&ws, op)?.is_some()))
            .await
    }

    async fn list(&self, ws: &str, c: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let now = now_secs();
        let guard = self.lock();
        Ok(guard
            .docs
            .get(ws)
            .and_then(|colls| colls.get(c))
            .map(|coll| {
                coll.iter()
                    .filter(|(_, v)| !is_expired(v, now))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_workspace(&self, ws: &str) -> Result<usize, StoreError> {
        let ws = ws.to_owned();
        self.write(move |s| {
            let Some(colls) = s.docs.get(&ws) else {
                return Ok(0);
            };
            let now = now_secs();
            let n = colls
                .values()
                .flat_map(BTreeMap::values)
                .filter(|d| !is_expired(d, now))
                .count();
            s.append(&Record::DropWorkspace { ws: (&*ws).into() })?;
            s.docs.remove(&ws);
            Ok(n)
        })
        .await
    }

    async fn list_page(
        &self,
        ws: &str,
        c: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        use std::ops::Bound;
        let now = now_secs();
        let guard = self.lock();
        let Some(coll) = guard.docs.get(ws).and_then(|colls| colls.get(c)) else {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut live = coll
            .range::<str, _>((from, Bound::Unbounded))
            .filter(|(_, v)| !is_expired(v, now));
        let items = live
            .by_ref()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = live.next().is_some();
        Ok(Page { items, more })
    }

    async fn transact(&self, ws: &str, ops: Vec<WriteOp>) -> Result<bool, StoreError> {
        check_batch(&ops)?;
        if ops.is_empty() {
            return Ok(true);
        }
        let ws = ws.to_owned();
        self.write(move |s| {
            let now = now_secs();
            let Some(writes) = ops
                .into_iter()
                .map(|op| resolve(&s.docs, &ws, op, now))
                .collect::<Option<Vec<Change>>>()
            else {
                return Ok(false);
            };
            s.append(&Record::Batch {
                ws: (&*ws).into(),
                writes: Cow::Borrowed(&writes),
            })?;
            for write in writes {
                apply(&mut s.docs, &ws, write);
            }
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
