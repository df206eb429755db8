//! Pingora's own answer to a request it cannot parse, in the gateway's error envelope.
//!
//! pingora-proxy answers a request head it cannot parse (a raw `<` in the request target, a
//! duplicated `Content-Length`, a garbage request line, ...) with a canned `400` — empty body,
//! `Server: Pingora` — in `handle_new_request`, before any `ProxyHttp` hook runs. Which heads
//! it refuses is pingora's decision (it escapes some illegal bytes itself), so the gateway does
//! not second-guess it: [`Enveloped`] wraps each accepted connection in [`Restyled`], which
//! passes every byte through unchanged except that canned answer, replaced on its way out by
//! the gateway's JSON envelope (`validation/invalid_request`, a request id, the security
//! headers, `Connection: close`), counted in the metrics and written to the log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{GatewayError, envelope};
use crate::respond;

/// A listener's application with pingora's canned `400` restyled (see the module doc).
pub struct Enveloped<A> {
    app: Arc<A>,
    /// Whether the listener's requests count in the API metrics (the api listener).
    counted: bool,
}

impl<A> Enveloped<A> {
    /// Wrap `app`; `counted`: its refusals count in `cedargate_requests_total`.
    pub fn new(app: A, counted: bool) -> Enveloped<A> {
        Enveloped {
            app: Arc::new(app),
            counted,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Enveloped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let restyled: Stream = Box::new(Restyled {
            inner: stream,
            pending: Vec::new(),
            counted: self.counted,
            target: [0; TARGET_KEPT],
            target_len: 0,
        });
        self.app.process_new(restyled, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A connection whose canned `400` from pingora is replaced by the gateway's envelope.
#[derive(Debug)]
pub struct Restyled {
    inner: Stream,
    /// The envelope response still to be written in place of pingora's answer.
    pending: Vec<u8>,
    counted: bool,
    /// The request target of the last read that began with a request line (`METHOD /...`), for
    /// the envelope's `path`: a fixed buffer, so reading costs no allocation.
    target: [u8; TARGET_KEPT],
    target_len: usize,
}

/// How much of a request target the envelope's `path` keeps.
const TARGET_KEPT: usize = 128;

/// The request target when `bytes` begin with a request line's method and a space.
fn request_target(bytes: &[u8]) -> Option<&[u8]> {
    let space = bytes.iter().take(16).position(|b| *b == b' ')?;
    if space == 0 || !bytes[..space].iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let rest = &bytes[space + 1..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    Some(&rest[..end.min(TARGET_KEPT)])
}

/// Whether `buf` starts pingora's canned `400` response (status line, then `Server: Pingora`
/// among its headers; no answer of the gateway or of the backend carries that header).
fn is_pingora_400(buf: &[u8]) -> bool {
    if !(buf.starts_with(b"HTTP/1.1 400 ") || buf.starts_with(b"HTTP/1.0 400 ")) {
        return false;
    }
    let head = &buf[..buf.len().min(512)];
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    head[..end]
        .windows(17)
        .any(|w| w.eq_ignore_ascii_case(b"\r\nserver: pingora"))
}

/// The envelope answer to a request pingora could not parse, as HTTP/1.1 bytes (the headers of
/// every gateway answer, from [`respond::json_response`], and `Connection: close`); `target`
/// is its request target as read (the path part, visible ASCII kept; `/` when unknown).
/// `None` if the answer cannot be built: pingora's own then goes out.
fn envelope_response(counted: bool, target: &[u8]) -> Option<Vec<u8>> {
    let request_id = crate::request_id::accept_or_generate(None);
    let err = GatewayError::InvalidRequest("the request is not valid HTTP/1.1");
    let path: String = target
        .iter()
        .take_while(|b| **b != b'?')
        .map(|b| {
            if b.is_ascii_graphic() {
                char::from(*b)
            } else {
                '?'
            }
        })
        .collect();
    let path = if path.starts_with('/') {
        path
    } else {
        "/".to_owned()
    };
    let body = envelope(&err, &request_id, &path);
    let mut head = respond::json_response(400, body.len(), &request_id).ok()?;
    head.insert_header("connection", "close").ok()?;
    tracing::info!(target: "access", request_id = %request_id, status = 400,
        code = "validation/invalid_request", "request pingora could not parse");
    if counted {
        crate::metrics::observe("", "", 400, "reject", 0.0);
    }
    let mut out = Vec::with_capacity(body.len() + 320);
    out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n");
    head.header_to_h1_wire(&mut out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

impl Restyled {
    /// Write what is left of the envelope.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Restyled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some(target) = request_target(&buf.filled()[before..]) {
            let this = &mut *self;
            this.target[..target.len()].copy_from_slice(target);
            this.target_len = target.len();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Restyled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            let restyled = is_pingora_400(buf)
                .then(|| envelope_response(this.counted, &this.target[..this.target_len]))
                .flatten();
            match restyled {
                Some(answer) => this.pending = answer,
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // pingora's bytes are taken (and dropped) once the envelope has gone out.
        ready!(this.poll_pending(cx))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Restyled {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_pending(cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for Restyled {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Restyled {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Restyled {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Restyled {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Restyled {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for Restyled {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::{TARGET_KEPT, is_pingora_400, request_target};

    #[test]
    fn request_targets_are_read_from_request_lines_only() {
        assert_eq!(
            request_target(b"GET /a/b?q=<x> HTTP/1.1\r\n"),
            Some(&b"/a/b?q=<x>"[..])
        );
        assert_eq!(request_target(b"GARBAGE\r\n\r\n"), None);
        assert_eq!(request_target(b"{\"json\": 1}"), None);
        let long = format!("POST /{} HTTP/1.1", "a".repeat(500));
        assert_eq!(request_target(long.as_bytes()).unwrap().len(), TARGET_KEPT);
    }

    #[test]
    fn only_pingora_s_canned_400_is_restyled() {
        let canned =
            b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: x\r\nContent-Length: 0\r\n\r\n";
        assert!(is_pingora_400(canned));
        // The gateway's own 400s, the backend's answers and bodies pass as they are.
        assert!(!is_pingora_400(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n{}"
        ));
        assert!(!is_pingora_400(
            b"HTTP/1.1 200 OK\r\nServer: Pingora\r\n\r\n"
        ));
        assert!(!is_pingora_400(
            b"{\"text\": \"HTTP/1.1 400 \\r\\nServer: Pingora\"}"
        ));
        assert!(!is_pingora_400(
            b"HTTP/1.1 400 Bad Request\r\nx: y\r\n\r\n\r\nServer: Pingora\r\n"
        ));
    }
}
