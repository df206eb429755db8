//! The embedded gamification and catalog backend of cedargate: a hyper HTTP/1.1 service behind
//! the gateway that trusts identity only from the gateway's signed assertion header.
//!
//! `spawn` is what the gateway calls; `serve` and `App` are the same service for tests and for
//! callers that bring their own runtime and listener.

pub mod api_schema;
pub mod assertion;
mod clock;
pub mod error;
mod handlers;
pub mod idempotency;
mod routes;
mod seed;
mod server;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use assertion::{
    ASSERTION_AUDIENCE, ASSERTION_HEADER, ASSERTION_ISSUER, Assertion, AssertionVerifier,
};
pub use error::{ApiError, BackendError};
pub use server::{App, Listener, MAX_BODY_BYTES, serve};
pub use store::{
    Document, DynamoDbStore, EmbeddedStore, Page, Store, StoreError, WriteOp, create_table,
};

/// The shortest assertion secret accepted (HS256 keys shorter than the hash are weak).
pub const MIN_ASSERTION_KEY_BYTES: usize = 32;

/// What the embedded backend needs to start.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The data dir; the store lives in `data_dir/backend/`.
    pub data_dir: PathBuf,
    /// Where to listen.
    pub listen: Listen,
    /// The HS256 secret shared with the gateway (at least 32 bytes).
    pub assertion_key: Vec<u8>,
    /// Where the documents live.
    pub store: StoreChoice,
    /// How long the answer to a write with `X-Idempotency-Key` is kept for replay.
    pub idempotency_ttl: std::time::Duration,
}

/// Which store the backend keeps its documents in.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// The embedded store in `data_dir/backend/`, seeded when it is created.
    Embedded,
    /// A DynamoDB table shared by every instance (made by [`create_table`]); the demo workspace
    /// is seeded at start when it holds no documents.
    DynamoDb {
        /// The SDK client, with the caller's region, credentials and timeouts.
        client: aws_sdk_dynamodb::Client,
        /// The table name.
        table: String,
        /// Create the table at start when it does not exist ([`create_table`]).
        create_table: bool,
    },
}

/// A listening address: a unix socket path (created with mode 0600) or a TCP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP address (port 0 picks a free port; `BackendHandle::listen` tells which).
    Tcp(std::net::SocketAddr),
}

/// The running embedded backend; it serves until [`BackendHandle::stop`] or the end of the
/// process.
#[derive(Debug, Clone)]
pub struct BackendHandle {
    listen: Listen,
    serving: Arc<AtomicBool>,
    drain: server::Drain,
}

impl BackendHandle {
    /// Where the backend listens (for TCP, the address actually bound).
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// Whether the serving thread is up and accepting connections.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Stop accepting connections (a unix socket's path is removed) and close each open one
    /// once its request in progress, if any, is answered.
    pub fn stop(&self) {
        self.drain.stop();
    }

    /// Connections still open (after [`BackendHandle::stop`]: those finishing a request).
    pub fn connections(&self) -> usize {
        self.drain.connections()
    }
}

/// Open (and on first start seed) the store, bind the listener, and serve on a thread of its own
/// with a two-worker tokio runtime. Errors are returned before anything is served.
pub fn spawn(cfg: BackendConfig) -> Result<BackendHandle, BackendError> {
    spawn_with(cfg, false)
}

/// [`spawn`] for a graceful upgrade's new process: an embedded store still held by the old
/// process (released once its backend has stopped and drained, [`BackendHandle::stop`], or when
/// that process exits) and a unix socket it still listens on are waited for, so this blocks
/// until then.
pub fn take_over(cfg: BackendConfig) -> Result<BackendHandle, BackendError> {
    spawn_with(cfg, true)
}

fn spawn_with(cfg: BackendConfig, wait_for_store: bool) -> Result<BackendHandle, BackendError> {
    if cfg.assertion_key.len() < MIN_ASSERTION_KEY_BYTES {
        return Err(BackendError::WeakKey(MIN_ASSERTION_KEY_BYTES));
    }
    let mut create = None;
    let (store, seed_at_start): (Arc<dyn Store>, bool) = match cfg.store {
        StoreChoice::Embedded => {
            let dir = cfg.data_dir.join("backend");
            let store = if wait_for_store {
                EmbeddedStore::open_when_free(&dir, seed::demo)?
            } else {
                EmbeddedStore::open(&dir, seed::demo)?
            };
            (Arc::new(store), false)
        }
        StoreChoice::DynamoDb {
            client,
            table,
            create_table,
        } => {
            if create_table {
                create = Some((client.clone(), table.clone()));
            }
            (Arc::new(DynamoDbStore::new(client, table)), true)
        }
    };
    let app = Arc::new(
        App::new(store.clone(), &cfg.assertion_key).with_idempotency_ttl(cfg.idempotency_ttl),
    );
    let (listener, listen) = if wait_for_store {
        server::bind_when_free(&cfg.listen)?
    } else {
        server::bind(&cfg.listen)?
    };
    // The seeding of a remote store runs on the backend's runtime; its outcome comes back here.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StoreError>>();

    let serving = Arc::new(AtomicBool::new(false));
    let flag = serving.clone();
    let drain = server::Drain::new(match &listen {
        Listen::Unix(path) => Some(path.clone()),
        Listen::Tcp(_) => None,
    });
    let stop = drain.clone();
    std::thread::Builder::new()
        .name("cedargate-backend".into())
        .spawn(move || {
            // Cleared however the thread ends, so `is_serving` never lies.
            let _guard = ServingGuard(flag.clone());
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("cedargate-backend-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "backend runtime failed to start");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Some((client, table)) = create
                    && let Err(e) = crate::store::create_table(&client, &table).await
                {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                if seed_at_start
                    && let Err(e) = crate::store::seed_if_empty(&*store, seed::demo()).await
                {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                drop(store);
                let _ = ready_tx.send(Ok(()));
                match listener.into_tokio() {
                    Ok(listener) => {
                        flag.store(true, Ordering::Release);
                        server::serve_until(listener, app, stop).await;
                    }
                    Err(e) => tracing::error!(error = %e, "backend listener failed"),
                }
            });
        })
        .map_err(BackendError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(BackendError::Thread(std::io::Error::other(
                "the backend thread ended before serving",
            )));
        }
    }
    Ok(BackendHandle {
        listen,
        serving,
        drain,
    })
}

struct ServingGuard(Arc<AtomicBool>);

impl Drop for ServingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod spawn_tests;
#[cfg(test)]
pub(crate) mod testing;
