//! HTTP for the tests: a captured [`Answer`], a reqwest client, and a raw HTTP/1.1 client for
//! request targets that `url` would normalise (`..`, `.`, `%2e`, backslashes).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Gateway;

/// The demo client of the default config.
pub const DEMO_CLIENT_ID: &str = "demo-partner";
/// Its secret (a demo secret, published in the default config's comments).
pub const DEMO_CLIENT_SECRET: &str = "demo-partner-secret";

/// The keys of the error envelope, exactly.
pub const ENVELOPE_KEYS: [&str; 6] = [
    "code",
    "message",
    "status",
    "requestId",
    "timestamp",
    "path",
];

/// Keys some errors add to the envelope: the refusing WAF or rate-limit `rule`, `retryAfter`.
pub const OPTIONAL_ENVELOPE_KEYS: [&str; 2] = ["rule", "retryAfter"];

/// A response, fully read.
#[derive(Clone)]
pub struct Answer {
    /// What was asked, for messages: `METHOD target`.
    pub request: String,
    pub status: u16,
    /// Header names lower-cased, in order of arrival.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The envelope's `code`, if the body is an error envelope.
    pub fn code(&self) -> Option<String> {
        self.json()?.get("code")?.as_str().map(str::to_owned)
    }

    /// Whether the answer came from the backend (Server-Timing has an `upstream` entry).
    pub fn forwarded(&self) -> bool {
        self.header("server-timing")
            .is_some_and(|v| v.contains("upstream;dur="))
    }

    /// Problems with this answer as an error envelope of `status` (empty when it is one).
    ///
    /// The body is JSON with exactly the envelope keys, `status` equals the HTTP status and
    /// `requestId` equals the `X-Request-Id` header.
    pub fn envelope_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(Value::Object(body)) = self.json() else {
            problems.push("body is not a JSON object".to_owned());
            return problems;
        };
        let mut keys: Vec<&str> = body
            .keys()
            .map(String::as_str)
            .filter(|k| !OPTIONAL_ENVELOPE_KEYS.contains(k))
            .collect();
        keys.sort_unstable();
        let mut want = ENVELOPE_KEYS.to_vec();
        want.sort_unstable();
        if keys != want {
            problems.push(format!(
                "envelope keys are {keys:?}, want exactly {want:?} (plus optional {OPTIONAL_ENVELOPE_KEYS:?})"
            ));
        }
        if body.get("status").and_then(Value::as_u64) != Some(u64::from(self.status)) {
            problems.push(format!(
                "envelope status {:?} != HTTP status {}",
                body.get("status"),
                self.status
            ));
        }
        for key in ["code", "message", "timestamp", "path", "requestId"] {
            if body
                .get(key)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                problems.push(format!("envelope `{key}` is not a non-empty string"));
            }
        }
        match (
            body.get("requestId").and_then(Value::as_str),
            self.header("x-request-id"),
        ) {
            (Some(id), Some(header)) if id == header => {}
            (id, header) => problems.push(format!(
                "envelope requestId {id:?} != X-Request-Id header {header:?}"
            )),
        }
        problems
    }

    /// Panics unless this is `status` with an error envelope whose code is `code`, answered by
    /// the gateway itself (not forwarded).
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {self}");
        assert_eq!(self.code().as_deref(), Some(code), "code of {self}");
        assert!(
            !self.forwarded(),
            "the gateway itself should answer, not the backend: {self}"
        );
        let problems = self.envelope_problems();
        assert!(
            problems.is_empty(),
            "bad error envelope {problems:?} in {self}"
        );
    }

    /// Panics unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) {
        assert_eq!(self.status, status, "status of {self}");
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = self.text();
        if body.len() > 600 {
            let mut cut = 600;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        write!(
            f,
            "`{}` -> {} {:?} body {body}",
            self.request, self.status, self.headers
        )
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A client for one test: no proxies, no redirects, a timeout against hangs.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
}

/// `("authorization", "Bearer <token>")`.
pub fn bearer(token: &str) -> (String, String) {
    ("authorization".to_owned(), format!("Bearer {token}"))
}

/// Sends `method url` with `headers` and an optional JSON body, and reads the whole answer.
pub async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&Value>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut req = client.request(method.clone(), url);
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    answer_of(format!("{method} {url}"), resp).await
}

/// Reads a reqwest response into an [`Answer`].
pub async fn answer_of(request: String, resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{request}: reading the body: {e}"))
        .to_vec();
    Answer {
        request,
        status,
        headers,
        body,
    }
}

/// The demo client's HTTP Basic `Authorization` value.
pub fn demo_basic() -> String {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}"));
    format!("Basic {basic}")
}

/// `POST /oauth2/token` on the auth listener for the demo client (HTTP Basic), `scope` if any.
pub async fn client_credentials(
    gw: &Gateway,
    client: &reqwest::Client,
    scope: Option<&str>,
) -> Answer {
    let mut form = String::from("grant_type=client_credentials");
    if let Some(scope) = scope {
        form.push_str("&scope=");
        form.push_str(&form_encode(scope));
    }
    post_form(
        client,
        &gw.auth_url("/oauth2/token"),
        Some(&demo_basic()),
        &form,
    )
    .await
}

/// `POST /oauth2/token` for the demo client authenticating with `secret` (the right one or
/// not), scope `app/read`, with `request_id` as its `X-Request-Id` if given.
pub async fn demo_client_token(gw: &Gateway, secret: &str, request_id: Option<&str>) -> Answer {
    let url = gw.auth_url("/oauth2/token");
    let mut req = client()
        .post(&url)
        .basic_auth(DEMO_CLIENT_ID, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=app%2Fread");
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    answer_of(format!("POST {url} (demo client)"), resp).await
}

/// `POST url` with an `application/x-www-form-urlencoded` body and an optional Authorization.
pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
    form: &str,
) -> Answer {
    let mut headers = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(auth) = authorization {
        headers.push(("authorization".to_owned(), auth.to_owned()));
    }
    let mut req = client.post(url).body(form.to_owned());
    for (name, value) in &headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    answer_of(format!("POST {url} ({form})"), resp).await
}

/// Percent-encodes a form value (everything but unreserved characters).
pub fn form_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Sends `METHOD target HTTP/1.1` byte for byte (no normalisation) and reads the answer.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> Answer {
    let request = format!("{method} {target}");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    send_raw(addr, head.as_bytes(), &request).await.1
}

/// Sends `bytes` as they are on a new connection to `addr` and reads one answer (`what` names
/// the request in messages); the connection is returned for what follows. A write the server
/// cut short is no failure when an answer came (it may refuse before reading everything).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8], what: &str) -> (TcpStream, Answer) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{what}: connect {addr}: {e}"));
    let _ = stream.write_all(bytes).await;
    let answer = read_answer(&mut stream, what)
        .await
        .unwrap_or_else(|| panic!("{what}: the connection closed without an answer"));
    (stream, answer)
}

/// Reads one answer from `stream`, which may carry more after it (keep-alive): up to the end of
/// its `Content-Length` body, or to the end of the stream. `None` when the server closed the
/// connection before sending a byte; panics when nothing arrives within 15 s (a server that
/// keeps an idle connection open without answering).
pub async fn read_answer(stream: &mut TcpStream, request: &str) -> Option<Answer> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                raw.extend_from_slice(&buf[..n]);
                if complete(&raw) {
                    break;
                }
            }
            Ok(Err(e)) if raw.is_empty() => panic!("{request}: read: {e}"),
            Ok(Err(_)) => break,
            Err(_) if raw.is_empty() => panic!("{request}: no answer within 15 s"),
            Err(_) => break,
        }
    }
    (!raw.is_empty()).then(|| parse_answer(request.to_string(), &raw))
}

/// Whether `raw` holds a whole response with a `Content-Length` body.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| raw.len() >= end + 4 + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_answer(request: String, raw: &[u8]) -> Answer {
    let end = find(raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "{request}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(raw)
        )
    });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{request}: bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body);
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Answer {
        request,
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let stop = (start + size).min(data.len());
        out.extend_from_slice(&data[start..stop]);
        data = data.get(stop + 2..).unwrap_or_default();
    }
    out
}

/// Sends `head` (a request head with `Expect: 100-continue` and `Connection: close`, ending in
/// its blank line) to `addr`, waits for `100 Continue` before sending `body`, as such clients
/// do, and returns everything the server said (interim answer included). Panics if no
/// `100 Continue` comes within 5 s.
pub async fn send_expecting_continue(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
    let mut interim = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut interim))
        .await
        .unwrap_or_else(|_| panic!("no interim answer within 5 s to {head:?}"))
        .expect("read");
    let interim = String::from_utf8_lossy(&interim[..n]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    stream.write_all(body).await.expect("write the body");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest))
        .await
        .expect("the final answer within 15 s")
        .expect("read");
    format!("{interim}{}", String::from_utf8_lossy(&rest))
}
