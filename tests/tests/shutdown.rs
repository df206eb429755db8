//! Graceful shutdown: SIGTERM lets a request already in flight finish, then the process exits.

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
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let pid = std::fs::read_to_string(gw.data_dir().join("cedargate.pid")).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(ok.success());
    std::thread::sleep(Duration::from_millis(500));
    // The request was accepted before the signal: it must complete.
    s.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    let started = Instant::now();
    while gw.exited().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
