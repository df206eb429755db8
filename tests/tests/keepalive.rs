//! Idle keep-alive connections: closed after `[server] keepalive_timeout_seconds` on the api
//! and auth listeners (pingora alone keeps an HTTP/1.1 connection until the client leaves, so
//! idle clients would hold sockets for good), and reused freely before that.

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
