//! Pingora's own answers to requests it refuses, in the gateway's error envelope.
//!
//! pingora-proxy answers a request head it cannot parse (a raw `<` in the request target, a
//! duplicated `Content-Length`, a garbage request line, ...) with a canned `400`, and a
//! `CONNECT` with a canned `405` — empty body, `Server: Pingora` — in `handle_new_request`,
//! before any `ProxyHttp` hook runs. Which requests it refuses is pingora's decision (it
//! escapes some illegal bytes itself), so the gateway does not second-guess it: [`Enveloped`]
//! wraps each accepted connection in [`Restyled`], which passes every byte through unchanged
//! except such a canned answer, replaced on its way out by the gateway's JSON envelope for its
//! status (`validation/invalid_request`, `validation/method_not_allowed`, ...; a request id,
//! the security headers, `Connection: close`), counted in the metrics and written to the log.
//!
//! The same wrapper bounds how long a request head may take to arrive: pingora's read timeout
//! applies to each read, so a client sending a byte now and then (slowloris) would hold its
//! connection for good. Once the first bytes of a head have arrived, the rest must follow
//! within `[server] request_head_timeout_seconds`, or the connection is closed. It also
//! measures the head (its request line, lines and bytes), so that pingora's `400` for a head
//! beyond its own limits (a URI over 64 KiB, more than 256 headers, a head over 1 MiB) is
//! answered as the WAF's size limits answer smaller ones: 414 or 431.

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

/// A listener's application with pingora's canned answers restyled (see the module doc).
pub struct Enveloped<A> {
    app: Arc<A>,
    /// Whether the listener's requests count in the API metrics (the api listener).
    counted: bool,
    rules: HeadRules,
    /// The listener's connection series (open now, accepted since start).
    open: prometheus::IntGauge,
    accepted: prometheus::IntCounter,
}

/// What a request head must keep to.
#[derive(Debug, Clone, Copy)]
pub struct HeadRules {
    /// How long a request head may take from its first byte to its blank line (zero: no limit).
    pub timeout: Duration,
    /// The WAF's size limits (`max_url_bytes`, `max_header_count`, `max_header_bytes`).
    pub max_url_bytes: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
}

impl<A> Enveloped<A> {
    /// Wrap `app`, the app of the listener `name` (`api`, `auth`, `admin`: its connection
    /// series); `counted`: its refusals count in `cedargate_requests_total`.
    pub fn new(app: A, name: &str, counted: bool, rules: HeadRules) -> Enveloped<A> {
        crate::drain::listener_opened();
        Enveloped {
            app: Arc::new(app),
            counted,
            rules,
            open: crate::metrics::OPEN_CONNECTIONS.with_label_values(&[name]),
            accepted: crate::metrics::ACCEPTED_CONNECTIONS.with_label_values(&[name]),
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
        self.accepted.inc();
        let restyled: Stream = Box::new(Restyled {
            _open: OpenConnection::new(&self.open),
            inner: stream,
            pending: Vec::new(),
            counted: self.counted,
            target: [0; TARGET_KEPT],
            target_len: 0,
            head: HeadWatch::new(self.rules),
        });
        self.app.process_new(restyled, shutdown).await
    }

    /// At a graceful shutdown, once the listener has stopped accepting: pingora closes the
    /// keep-alive connections waiting for their next request here. They stay open for
    /// [`crate::drain::KEEPALIVE_LINGER`] first, so a client already sending on one gets its
    /// answer (with `Connection: close`) instead of a connection closed under it.
    async fn cleanup(&self) {
        tokio::time::sleep(crate::drain::KEEPALIVE_LINGER).await;
        self.app.cleanup().await;
        crate::drain::listener_closed();
    }
}

/// A connection whose canned answers from pingora are replaced by the gateway's envelope.
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
    head: HeadWatch,
    _open: OpenConnection,
}

/// A connection counted in its listener's `cedargate_open_connections` until it is dropped.
#[derive(Debug)]
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: &prometheus::IntGauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where the connection stands in receiving a request head, and the deadline of a head that is
/// on its way.
#[derive(Debug)]
struct HeadWatch {
    /// A head is expected (at the start and after each final answer).
    awaiting: bool,
    /// The last bytes read while awaiting, to find a blank line split across reads.
    tail: [u8; 3],
    tail_len: usize,
    /// Armed when a head's first bytes arrived without its end.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    rules: HeadRules,
    /// The current head's size so far: bytes, line ends, and its request line's length (final
    /// once `line_done`).
    bytes: usize,
    lines: usize,
    line_len: usize,
    line_done: bool,
    /// Held from a head's first bytes until its final answer is written: a request counts as
    /// in progress (for a graceful shutdown) before its context exists.
    busy: Option<crate::drain::Busy>,
}

impl HeadWatch {
    fn new(rules: HeadRules) -> HeadWatch {
        HeadWatch {
            awaiting: true,
            tail: [0; 3],
            tail_len: 0,
            deadline: None,
            rules,
            bytes: 0,
            lines: 0,
            line_len: 0,
            line_done: false,
            busy: None,
        }
    }

    /// The status for pingora's canned `status`: its `400` for a head over the size limits is
    /// the `414` or `431` those limits answer.
    fn status_for(&self, status: u16) -> u16 {
        if status != 400 {
            return status;
        }
        if self.line_len > self.rules.max_url_bytes {
            414
        } else if self.lines.saturating_sub(2) > self.rules.max_header_count
            || self.bytes > self.rules.max_header_bytes + self.line_len
        {
            431
        } else {
            400
        }
    }

    /// Whether the head's deadline has passed (registers the waker while it has not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    /// Bytes just read from the client.
    fn read(&mut self, bytes: &[u8], cx: &mut Context<'_>) {
        if !self.awaiting || bytes.is_empty() {
            return;
        }
        if self.busy.is_none() {
            self.busy = Some(crate::drain::Busy::new());
        }
        self.bytes += bytes.len();
        self.lines += memchr::memchr_iter(b'\n', bytes).count();
        if !self.line_done {
            match memchr::memchr(b'\n', bytes) {
                Some(end) => {
                    self.line_len += end;
                    self.line_done = true;
                }
                None => self.line_len += bytes.len(),
            }
        }
        if self.rules.timeout.is_zero() {
            return;
        }
        if head_ends(&self.tail[..self.tail_len], bytes) {
            self.awaiting = false;
            self.deadline = None;
            self.tail_len = 0;
            return;
        }
        let keep = bytes.len().min(3);
        let mut tail = [0u8; 6];
        tail[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        tail[self.tail_len..self.tail_len + keep].copy_from_slice(&bytes[bytes.len() - keep..]);
        let total = self.tail_len + keep;
        let start = total.saturating_sub(3);
        self.tail_len = total - start;
        self.tail[..self.tail_len].copy_from_slice(&tail[start..total]);
        if self.deadline.is_none() {
            let mut deadline = Box::pin(tokio::time::sleep(self.rules.timeout));
            // Polled once so that its expiry wakes the connection's task.
            let _ = deadline.as_mut().poll(cx);
            self.deadline = Some(deadline);
        }
    }

    /// Bytes about to be written to the client: a final answer's head means the next bytes
    /// read begin a new request (an interim `1xx`, e.g. `100 Continue`, does not), and ends
    /// any deadline still armed: a request answered has arrived whole, so the deadline was
    /// armed by bytes that were not a head (the body of a pipelined request whose head came
    /// with the one before), and must not outlive its answer.
    fn written(&mut self, bytes: &[u8]) {
        let answer = bytes.starts_with(b"HTTP/1.1 ") || bytes.starts_with(b"HTTP/1.0 ");
        if answer && bytes.get(9) != Some(&b'1') {
            self.awaiting = true;
            self.deadline = None;
            self.tail_len = 0;
            self.bytes = 0;
            self.lines = 0;
            self.line_len = 0;
            self.line_done = false;
            self.busy = None;
        }
    }
}

/// Whether `bytes`, read after `tail`, complete a request head (its blank line).
fn head_ends(tail: &[u8], bytes: &[u8]) -> bool {
    const END: &[u8] = b"\r\n\r\n";
    let joint = tail.len().min(3);
    let mut seam = [0u8; 6];
    seam[..joint].copy_from_slice(&tail[tail.len() - joint..]);
    let head = bytes.len().min(3);
    seam[joint..joint + head].copy_from_slice(&bytes[..head]);
    bytes.ends_with(END)
        || seam[..joint + head].windows(4).any(|w| w == END)
        || memchr::memmem::find(bytes, END).is_some()
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

/// The status of pingora's canned answer when `buf` starts one: an error status line (4xx or
/// 5xx: pingora has no other canned answer), then `Server: Pingora` among its headers (no answer
/// of the gateway or of the backend carries that header). Every answer's head passes here, so
/// the common one, a success, is let go after its status line.
fn pingora_canned_status(buf: &[u8]) -> Option<u16> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if rest.get(3) != Some(&b' ')
        || !digits.iter().all(u8::is_ascii_digit)
        || !matches!(digits[0], b'4' | b'5')
    {
        return None;
    }
    let head = &buf[..buf.len().min(512)];
    let head = &head[..memchr::memmem::find(head, b"\r\n\r\n").unwrap_or(head.len())];
    // The value's case as pingora writes it; the name's in any case.
    let from_pingora = memchr::memmem::find_iter(head, b": Pingora")
        .any(|at| at >= 8 && head[at - 8..at].eq_ignore_ascii_case(b"\r\nserver"));
    from_pingora.then(|| digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// The envelope answer to a request pingora refused with `status`, as HTTP/1.1 bytes (the
/// headers of every gateway answer, from [`respond::json_response`], and `Connection: close`);
/// `target` is its request target as read (the path part, visible ASCII kept; `/` when
/// unknown). `None` if the gateway has no envelope for the status or the answer cannot be
/// built: pingora's own then goes out.
fn envelope_response(status: u16, counted: bool, target: &[u8]) -> Option<Vec<u8>> {
    let err = GatewayError::of_http_status(status)?;
    let request_id = crate::request_id::accept_or_generate(None);
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
    let mut head = respond::json_response(err.status(), body.len(), &request_id).ok()?;
    head.insert_header("connection", "close").ok()?;
    tracing::info!(target: "access", request_id = %request_id, status = err.status(),
        code = err.code(), "request pingora refused");
    if counted {
        crate::metrics::observe("", "", err.status(), "reject", 0.0);
    }
    let mut out = Vec::with_capacity(body.len() + 320);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\n");
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
        let this = &mut *self;
        if this.head.expired(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        this.head.read(read, cx);
        if let Some(target) = request_target(read) {
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
            let restyled = pingora_canned_status(buf).and_then(|status| {
                let status = this.head.status_for(status);
                envelope_response(status, this.counted, &this.target[..this.target_len])
            });
            // After the canned answer was judged by the head it answers.
            this.head.written(buf);
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
    use super::{
        HeadRules, HeadWatch, TARGET_KEPT, envelope_response, head_ends, pingora_canned_status,
        request_target,
    };

    /// The default config's rules.
    fn rules() -> HeadRules {
        HeadRules {
            timeout: std::time::Duration::from_secs(30),
            max_url_bytes: 8192,
            max_header_count: 100,
            max_header_bytes: 32768,
        }
    }

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
    fn only_pingora_s_canned_answers_are_restyled() {
        let canned =
            b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(pingora_canned_status(canned), Some(400));
        assert_eq!(
            pingora_canned_status(
                b"HTTP/1.1 405 Method Not Allowed\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n"
            ),
            Some(405)
        );
        assert_eq!(
            pingora_canned_status(b"HTTP/1.1 502 Bad Gateway\r\nserver: Pingora\r\n\r\n"),
            Some(502)
        );
        assert_eq!(
            pingora_canned_status(b"HTTP/1.1 200 OK\r\nServer: Pingora\r\n\r\n"),
            None
        );
        // The gateway's own answers, the backend's answers and bodies pass as they are.
        assert_eq!(
            pingora_canned_status(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n{}"
            ),
            None
        );
        assert_eq!(
            pingora_canned_status(b"{\"text\": \"HTTP/1.1 400 \\r\\nServer: Pingora\"}"),
            None
        );
        assert_eq!(
            pingora_canned_status(
                b"HTTP/1.1 400 Bad Request\r\nx: y\r\n\r\n\r\nServer: Pingora\r\n"
            ),
            None
        );
        assert_eq!(
            pingora_canned_status(b"HTTP/1.1 4x0 Bad\r\nServer: Pingora\r\n\r\n"),
            None
        );
    }

    /// Statuses the gateway has an envelope for are restyled with it; others (a `200` can
    /// only be the backend's, whatever its `Server` says) go out as they are.
    #[test]
    fn envelopes_keep_pingora_s_status() {
        for (status, code) in [
            (400, "validation/invalid_request"),
            (405, "validation/method_not_allowed"),
            (413, "waf/payload_too_large"),
            (431, "waf/headers_too_large"),
        ] {
            let out = envelope_response(status, false, b"/a/b?c=d").expect("an envelope");
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
            assert!(text.contains("\"path\":\"/a/b\""), "{text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "{text}"
            );
            assert!(!text.to_ascii_lowercase().contains("server:"), "{text}");
        }
        assert!(envelope_response(200, false, b"/").is_none());
        assert!(envelope_response(418, false, b"/").is_none());
    }

    #[test]
    fn a_head_ends_at_its_blank_line_even_split_across_reads() {
        assert!(head_ends(b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_ends(
            b"",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!head_ends(b"", b"GET / HTTP/1.1\r\nHost: x\r\n"));
        for split in 1..4 {
            let end = b"\r\n\r\n";
            assert!(head_ends(&end[..split], &end[split..]), "split at {split}");
        }
        assert!(!head_ends(b"\r\n", b"X"));
    }

    #[tokio::test]
    async fn the_watch_arms_on_a_partial_head_and_rearms_after_a_final_answer() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut watch = HeadWatch::new(rules());
        // A whole head in one read: nothing armed.
        watch.read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut cx);
        assert!(!watch.awaiting && watch.deadline.is_none());
        // Body bytes are not watched; an interim answer does not start a new head.
        watch.read(b"partial body", &mut cx);
        watch.written(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(!watch.awaiting && watch.deadline.is_none());
        // A final answer: the next bytes begin a head; a partial one arms the deadline ...
        watch.written(b"HTTP/1.1 200 OK\r\n");
        watch.read(b"GET / HTTP/1.1\r\nHo", &mut cx);
        assert!(watch.awaiting && watch.deadline.is_some());
        // ... until its blank line arrives, split across reads.
        watch.read(b"st: x\r\n\r", &mut cx);
        assert!(watch.deadline.is_some());
        watch.read(b"\n", &mut cx);
        assert!(!watch.awaiting && watch.deadline.is_none());
        assert!(!watch.expired(&mut cx));
    }

    /// Two pipelined requests read at once, the second's body after the first's answer: its
    /// bytes arm the deadline (they look like a head), but its answer ends it, so the idle
    /// keep-alive connection afterwards is not cut by a stale deadline.
    #[tokio::test]
    async fn a_final_answer_ends_a_deadline_armed_by_a_pipelined_body() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut watch = HeadWatch::new(rules());
        watch.read(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n",
            &mut cx,
        );
        watch.written(b"HTTP/1.1 200 OK\r\n");
        watch.read(b"{\"a\":1}\n", &mut cx);
        assert!(watch.deadline.is_some());
        watch.written(b"HTTP/1.1 201 Created\r\n");
        assert!(watch.awaiting && watch.deadline.is_none());
        assert_eq!((watch.bytes, watch.lines, watch.line_len), (0, 0, 0));
    }

    /// pingora's `400` for a head beyond its own limits is the `414`/`431` of the WAF's; any
    /// other canned status, and a `400` for a head within the limits, stays as it is.
    #[tokio::test]
    async fn oversized_heads_get_the_size_limit_statuses() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut measured = |reads: &[Vec<u8>]| {
            let mut watch = HeadWatch::new(rules());
            for r in reads {
                watch.read(r, &mut cx);
            }
            watch
        };
        let long_line = measured(&[
            format!("GET /?q={} HTTP/1.1\r\n", "a".repeat(70_000)).into_bytes(),
            b"Host: x\r\n\r\n".to_vec(),
        ]);
        assert_eq!(long_line.status_for(400), 414);
        assert_eq!(long_line.status_for(405), 405);
        let many = (0..300)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>();
        let many_headers = measured(&[format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes()]);
        assert_eq!(many_headers.status_for(400), 431);
        let big = measured(&[
            b"GET / HTTP/1.1\r\nX-Big: ".to_vec(),
            vec![b'a'; 1_100_000],
            b"\r\n\r\n".to_vec(),
        ]);
        assert_eq!(big.status_for(400), 431);
        let malformed = measured(&[b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
        assert_eq!(malformed.status_for(400), 400);
    }
}
