//! Client connections that hold the gateway's sockets: idle keep-alive connections are closed
//! after `[server] keepalive_timeout_seconds` on the api and auth listeners (pingora alone keeps
//! an HTTP/1.1 connection until the client leaves) and reused freely before that; a request
//! head trickled in (slowloris) must arrive whole within `request_head_timeout_seconds` of its
//! first byte on every listener, while slow bodies and idle time between requests do not count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e_tests::gateway::{set_in_section, unlimited_config_text, write_config};
use e2e_tests::{Gateway, read_answer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request answered on `stream` (kept alive), its status.
async fn ask(stream: &mut TcpStream, head: &str) -> u16 {
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = read_answer(stream, head).await.expect("an answer");
    assert_ne!(answer.header("connection"), Some("close"), "{answer}");
    answer.status
}

/// Seconds until the server closes `stream` (reads return 0), or `None` within `limit`.
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => None,
    }
}

async fn idle_connection_is_closed(addr: SocketAddr, head: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // Reused while it is not idle for long.
    for _ in 0..2 {
        ask(&mut stream, head).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ask(&mut stream, head).await;
    let closed = closed_after(&mut stream, Duration::from_secs(10)).await;
    let closed = closed.unwrap_or_else(|| panic!("{addr}: an idle connection was kept 10 s"));
    assert!(
        closed >= Duration::from_millis(900),
        "{addr}: closed after {closed:?}"
    );
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let text = set_in_section(
        &unlimited_config_text(),
        "server",
        "keepalive_timeout_seconds",
        "2",
    );
    let gw = Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[]);
    // A request refused by policy keeps its connection (no body, well-formed).
    let api = "GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\n\r\n";
    let auth = "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n";
    tokio::join!(
        idle_connection_is_closed(gw.api, api),
        idle_connection_is_closed(gw.auth, auth)
    );
}

/// A gateway with a 1 s head deadline and a 2 s idle timeout.
fn strict_gateway(dir: &tempfile::TempDir) -> Gateway {
    let text = set_in_section(
        &unlimited_config_text(),
        "server",
        "request_head_timeout_seconds",
        "1",
    );
    let text = set_in_section(&text, "server", "keepalive_timeout_seconds", "2");
    Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[])
}

/// Sends `head` a few bytes at a time, `pause` apart; `false` when the server closed the
/// connection before all of it was sent.
async fn trickle(stream: &mut TcpStream, head: &[u8], pause: Duration) -> bool {
    let pieces: Vec<&[u8]> = head.chunks(4).collect();
    for (i, piece) in pieces.iter().enumerate() {
        if stream.write_all(piece).await.is_err() {
            return false;
        }
        if i + 1 == pieces.len() {
            break;
        }
        tokio::time::sleep(pause).await;
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => panic!(
                "an answer before the head was sent: {:?}",
                String::from_utf8_lossy(&probe[..n])
            ),
            Err(_) => {}
        }
    }
    true
}

async fn slow_heads_are_cut_off(addr: SocketAddr, head: &str) {
    // The control: the same head in pieces, all within the deadline, is answered.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let pieces = head.as_bytes();
    let (most, last) = pieces.split_at(pieces.len() - 1);
    assert!(trickle(&mut stream, most, Duration::from_millis(10)).await);
    stream.write_all(last).await.expect("the last byte");
    let answer = read_answer(&mut stream, head).await.expect("an answer");
    assert_ne!(answer.status, 0);
    // Idle time before the next head does not count against it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(ask(&mut stream, head).await, 0);

    // A byte every 200 ms: cut off about 1 s after the head began.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let open = head
        .strip_suffix("\r\n")
        .expect("a head ends with a blank line");
    let slow = format!("{open}{}\r\n", "X-Pad: slowloris\r\n".repeat(20));
    let finished = trickle(&mut stream, slow.as_bytes(), Duration::from_millis(200)).await;
    assert!(
        !finished,
        "{addr}: a head trickled over {:?} was still read",
        started.elapsed()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{addr}: cut off after {took:?}"
    );
}

#[tokio::test]
async fn request_heads_must_arrive_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let gw = strict_gateway(&dir);
    let api = "GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\n\r\n";
    let auth = "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n";
    let admin = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    tokio::join!(
        slow_heads_are_cut_off(gw.api, api),
        slow_heads_are_cut_off(gw.auth, auth),
        slow_heads_are_cut_off(gw.admin, admin)
    );
}

/// A body that takes longer than the head deadline to arrive is not cut off (the deadline is
/// the head's): a token request whose form comes in pieces over ~1.5 s gets its token.
#[tokio::test]
async fn slow_bodies_are_not_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let gw = strict_gateway(&dir);
    let form = "grant_type=client_credentials&scope=app%2Fread";
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        e2e_tests::http::DEMO_CLIENT_ID,
        e2e_tests::http::DEMO_CLIENT_SECRET
    ));
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        form.len()
    );
    let mut stream = TcpStream::connect(gw.auth).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    for piece in form.as_bytes().chunks(form.len().div_ceil(3)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.write_all(piece).await.expect("a piece of the body");
    }
    let answer = read_answer(&mut stream, "slow body")
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer}");
}
