//! The HTTP/1.1 server: binding, the accept loop, and the per-request steps every route shares
//! (request id, health check, assertion, workspace check, body limit, JSON rendering).

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::Listen;
use crate::assertion::{ASSERTION_HEADER, AssertionVerifier};
use crate::error::{ApiError, BackendError};
use crate::handlers::{Ctx, Query, Reply, Verb};
use crate::idempotency::{self, Answer};
use crate::routes;
use crate::store::Store;

/// The largest request body accepted (8 MiB: above the gateway's 6 MB limit, so the gateway
/// decides); larger is 413 `validation/payload_too_large`.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const REQUEST_ID_HEADER: &str = "x-request-id";
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's shared state: the store and the assertion verifier.
pub struct App {
    store: Arc<dyn Store>,
    verifier: AssertionVerifier,
    idempotency_ttl: Duration,
}

impl App {
    /// The service over `store`, trusting assertions signed with `assertion_key`.
    pub fn new(store: Arc<dyn Store>, assertion_key: &[u8]) -> App {
        App {
            store,
            verifier: AssertionVerifier::new(assertion_key),
            idempotency_ttl: crate::idempotency::DEFAULT_TTL,
        }
    }

    /// Keep answers to writes with `X-Idempotency-Key` for `ttl` (default 5 minutes).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> App {
        self.idempotency_ttl = ttl;
        self
    }
}

/// A bound listener, TCP or unix.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A unix socket listener.
    Unix(tokio::net::UnixListener),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(l: tokio::net::TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<tokio::net::UnixListener> for Listener {
    fn from(l: tokio::net::UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

/// A listener bound before any runtime exists.
pub(crate) enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    /// Hand the listener to the current tokio runtime.
    pub(crate) fn into_tokio(self) -> std::io::Result<Listener> {
        match self {
            StdListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l).map(Listener::Tcp)
            }
            StdListener::Unix(l) => {
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l).map(Listener::Unix)
            }
        }
    }
}

/// Bind `listen` synchronously; the listener and the address actually bound.
pub(crate) fn bind(listen: &Listen) -> Result<(StdListener, Listen), BackendError> {
    match listen {
        Listen::Tcp(addr) => {
            let err = |source| BackendError::Bind {
                what: addr.to_string(),
                source,
            };
            let l = std::net::TcpListener::bind(addr).map_err(err)?;
            let bound = l.local_addr().map_err(err)?;
            Ok((StdListener::Tcp(l), Listen::Tcp(bound)))
        }
        Listen::Unix(path) => {
            remove_stale_socket(path)?;
            let err = |source| BackendError::Bind {
                what: path.display().to_string(),
                source,
            };
            let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
            // The window between bind and chmod is closed by the data dir being private.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            Ok((StdListener::Unix(l), listen.clone()))
        }
    }
}

/// Why a unix socket path is refused while another server listens on it.
const SOCKET_IN_USE: &str = "another server is listening on it";

/// [`bind`], waiting while another server listens on the unix socket path (a graceful
/// upgrade's old process, until its backend stops).
pub(crate) fn bind_when_free(listen: &Listen) -> Result<(StdListener, Listen), BackendError> {
    loop {
        match bind(listen) {
            Err(BackendError::SocketPath(_, why)) if why == SOCKET_IN_USE => {
                std::thread::sleep(Duration::from_millis(20));
            }
            bound => return bound,
        }
    }
}

/// Remove a socket left by an earlier run; refuse a live socket or a file that is no socket.
fn remove_stale_socket(path: &Path) -> Result<(), BackendError> {
    let shown = || path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackendError::Bind {
            what: shown(),
            source,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(BackendError::SocketPath(
            shown(),
            "exists and is not a socket",
        )),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(BackendError::SocketPath(shown(), SOCKET_IN_USE))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|source| BackendError::Bind {
            what: shown(),
            source,
        }),
    }
}

/// Serve HTTP/1.1 on `listener` until the runtime stops; accept errors are logged and retried.
pub async fn serve(listener: impl Into<Listener>, app: Arc<App>) {
    serve_until(listener, app, Drain::new(None)).await;
}

/// What a stop of the backend is told through, and how many connections are still open.
#[derive(Debug, Clone)]
pub(crate) struct Drain(Arc<DrainState>);

#[derive(Debug)]
struct DrainState {
    stop: tokio::sync::watch::Sender<bool>,
    open: AtomicUsize,
    /// Told when the last open connection closes.
    closed: tokio::sync::Notify,
    /// A unix socket's path, removed once the listener is closed.
    path: Option<PathBuf>,
}

impl Drain {
    pub(crate) fn new(path: Option<PathBuf>) -> Drain {
        Drain(Arc::new(DrainState {
            stop: tokio::sync::watch::Sender::new(false),
            open: AtomicUsize::new(0),
            closed: tokio::sync::Notify::new(),
            path,
        }))
    }

    pub(crate) fn stop(&self) {
        self.0.stop.send_replace(true);
    }

    pub(crate) fn connections(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// Resolves once a stop has been asked for (at once if it already has).
    async fn stopped(&self) {
        let mut rx = self.0.stop.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// One open connection, counted for as long as it lives.
struct Open(Drain);

impl Open {
    fn new(drain: &Drain) -> Open {
        drain.0.open.fetch_add(1, Ordering::AcqRel);
        Open(drain.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A permit, so a waiter that has not started waiting yet still sees it.
            self.0.0.closed.notify_one();
        }
    }
}

/// [`serve`] until `drain` is stopped: then the listener is closed (a unix socket's path
/// removed), each connection closes once its request in progress is answered, and this
/// returns when the last one has.
pub(crate) async fn serve_until(listener: impl Into<Listener>, app: Arc<App>, drain: Drain) {
    let listener = listener.into();
    let stopped = drain.stopped();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            accepted = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                }
            } => accepted,
        };
        match accepted {
            Ok(Conn::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(s, app.clone(), Open::new(&drain)));
            }
            Ok(Conn::Unix(s)) => {
                tokio::spawn(connection(s, app.clone(), Open::new(&drain)));
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "backend accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if let Some(path) = &drain.0.path {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("backend stopped accepting connections");
    // The connections run on this runtime, which ends when this returns: each must first
    // answer the request it has (a write cut off after its store call would be lost, or done
    // twice when the gateway sends it again).
    while drain.connections() > 0 {
        drain.0.closed.notified().await;
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn connection<S>(stream: S, app: Arc<App>, open: Open)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(&app, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopped = open.0.stopped();
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = stopped => {
            // Answer the request in progress, if any, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "backend connection ended with an error");
    }
}

/// Answer one request; every outcome is JSON.
pub(crate) async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = request_id(req.headers());
    let path = req.uri().path().to_owned();
    let render = |err: ApiError| -> Answer {
        match &err {
            ApiError::Internal(detail) => {
                tracing::error!(request_id = %request_id, path = %path, %detail, "backend error");
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(request_id = %request_id, path = %path, %detail, "store busy");
            }
            _ => {}
        }
        (err.status(), Some(err.envelope(&request_id, &path)))
    };
    let mut idempotency_key = None;
    let mut replayed = false;
    let (status, body) = match prepare(app, req).await {
        Err(err) => render(err),
        Ok(Prepared::Health) => (StatusCode::OK, Some(json!({"status": "ok"}))),
        Ok(Prepared::Call { cx, key: None, .. }) => {
            run(app.store.as_ref(), &cx).await.unwrap_or_else(render)
        }
        Ok(Prepared::Call {
            cx,
            key: Some(key),
            method,
            path_and_query,
        }) => {
            let outcome = idempotency::run(
                &app.store,
                &cx,
                &method,
                &path_and_query,
                &key,
                app.idempotency_ttl,
                |store| {
                    let cx = &cx;
                    async move { run(store.as_ref(), cx).await.unwrap_or_else(render) }
                },
            )
            .await;
            idempotency_key = Some(key);
            match outcome {
                Ok(o) => {
                    replayed = o.replayed;
                    o.answer
                }
                Err(err) => render(err),
            }
        }
    };
    let bytes = body.map_or_else(Bytes::new, |b| {
        Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
    });
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    if let Some(v) = idempotency_key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        headers.insert(idempotency::HEADER, v);
        if replayed {
            headers.insert(
                idempotency::REPLAYED_HEADER,
                HeaderValue::from_static("true"),
            );
        }
    }
    resp
}

async fn run(store: &dyn Store, cx: &Ctx) -> Result<Answer, ApiError> {
    routes::dispatch(store, cx)
        .await
        .map(|Reply { status, body }| (status, body))
}

/// A request checked and read, ready to run.
enum Prepared {
    /// `GET /healthz`.
    Health,
    /// A route call; `key` when it is a write with `X-Idempotency-Key`.
    Call {
        cx: Box<Ctx>,
        key: Option<String>,
        method: String,
        path_and_query: String,
    },
}

async fn prepare(app: &App, req: Request<Incoming>) -> Result<Prepared, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if parts.method == Method::GET && path == "/healthz" {
        return Ok(Prepared::Health);
    }
    let mut tokens = parts.headers.get_all(ASSERTION_HEADER).iter();
    let token = match (tokens.next(), tokens.next()) {
        (Some(t), None) => t
            .to_str()
            .map_err(|_| ApiError::InvalidAssertion("the gateway assertion is invalid"))?,
        (None, _) => {
            return Err(ApiError::InvalidAssertion(
                "the gateway assertion is missing",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidAssertion(
                "more than one gateway assertion",
            ));
        }
    };
    let caller = app.verifier.verify(token, parts.method.as_str(), path)?;
    let target = routes::target(path)?;
    if target.ws != caller.workspace_id {
        return Err(ApiError::Forbidden(
            "the assertion is for another workspace",
        ));
    }
    let query = Query::parse(parts.uri.query())?;
    let key = if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        let mut given = parts.headers.get_all(idempotency::HEADER).iter();
        match (given.next(), given.next()) {
            (None, _) => None,
            (Some(v), None) => Some(idempotency::key_of(v)?),
            (Some(_), Some(_)) => {
                return Err(ApiError::field(
                    "X-Idempotency-Key",
                    "must be given at most once",
                ));
            }
        }
    } else {
        None
    };
    let body = read_body(&parts.headers, body).await?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.to_owned(), |p| p.as_str().to_owned());
    Ok(Prepared::Call {
        cx: Box::new(Ctx {
            verb: Verb::from(&parts.method),
            area: target.area,
            ws: target.ws,
            rest: target.rest,
            query,
            caller,
            body,
        }),
        key,
        method: parts.method.as_str().to_owned(),
        path_and_query,
    })
}

async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::invalid("the request body could not be read")),
    }
}

/// The inbound `X-Request-Id` when well formed (1–128 of `A-Za-z0-9._:-`), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
    match given {
        Some(id) => id.to_owned(),
        None => nanoid::nanoid!(),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
