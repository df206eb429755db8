//! Graceful shutdown: SIGTERM lets a request already in flight finish, then the process exits
//! — as soon as nothing is left in flight, not at the end of the grace period (5 s here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e_tests::claims::m2m;
use e2e_tests::gateway::Gateway;

#[test]
fn sigterm_drains_an_in_flight_request() {
    let mut gw = Gateway::start();
    let token = gw.mint(&m2m("app/write"), None);
    let body = br#"{"userId":"u-member","points":5,"reason":"drain test"}"#;
    let mut s = TcpStream::connect(gw.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /app/v1/workspaces/ws-demo/points HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         X-Request-Id: drain-in-flight-1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    terminate(&gw);
    // Longer than the drain's minimum: the request in flight is what keeps the process up.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        gw.exited().is_none(),
        "the gateway exited with a request in flight"
    );
    // The request was accepted before the signal: it must complete.
    s.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    let logs = exits_promptly(&mut gw, "after its last request");
    // Its access line was written out before the exit.
    assert!(
        logs.lines()
            .any(|l| l.contains("drain-in-flight-1") && l.contains("\"status\":201")),
        "{logs}"
    );
}

#[test]
fn a_head_still_arriving_at_sigterm_is_not_waited_for() {
    let mut gw = Gateway::start();
    let mut s = TcpStream::connect(gw.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Only the first bytes of a head: pingora drops a connection still waiting for its
    // request when the service stops (the client has had no answer, so it may retry).
    s.write_all(b"GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    terminate(&gw);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    exits_promptly(&mut gw, "with a head arriving");
}

#[test]
fn an_idle_gateway_exits_at_once_on_sigterm() {
    let mut gw = Gateway::start();
    let token = gw.mint(&m2m("app/read"), None);
    // An idle keep-alive connection does not hold the shutdown back.
    let mut idle = TcpStream::connect(gw.api).unwrap();
    idle.write_all(
        format!("GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );

    terminate(&gw);
    let log = exits_promptly(&mut gw, "idle");
    assert!(
        log.contains("graceful shutdown: no request in progress, exiting"),
        "{log}"
    );
}

fn terminate(gw: &Gateway) {
    e2e_tests::gateway::send_signal(gw.pid(), "TERM");
}

/// Wait for the gateway to exit, well before the end of its grace period (5 s); its logs.
fn exits_promptly(gw: &mut Gateway, what: &str) -> String {
    let started = Instant::now();
    while gw.exited().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway did not exit after SIGTERM ({what})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the gateway ({what}) took {waited:?} to exit (grace period 5 s)"
    );
    gw.logs()
}
