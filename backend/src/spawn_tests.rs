//! `spawn`: the listener, the socket file, the serving thread.

#[test]
fn spawn_serves_on_a_private_unix_socket_replacing_a_stale_one() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("backend.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // a stale socket file
    let cfg = |listen| crate::BackendConfig {
        data_dir: dir.path().to_owned(),
        listen,
        assertion_key: crate::testing::KEY.to_vec(),
        store: crate::StoreChoice::Embedded,
        idempotency_ttl: std::time::Duration::from_secs(300),
    };
    let weak = crate::BackendConfig {
        assertion_key: b"short".to_vec(),
        ..cfg(crate::Listen::Unix(sock.clone()))
    };
    assert!(matches!(
        crate::spawn(weak),
        Err(crate::BackendError::WeakKey(_))
    ));

    let handle = crate::spawn(cfg(crate::Listen::Unix(sock.clone()))).unwrap();
    assert_eq!(handle.listen(), &crate::Listen::Unix(sock.clone()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for _ in 0..200 {
        if handle.is_serving() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(handle.is_serving());
    health_ok(&sock);

    // A second backend on the same data dir or a live socket is refused, not raced.
    let other = dir.path().join("other.sock");
    assert!(matches!(
        crate::spawn(cfg(crate::Listen::Unix(other))),
        Err(crate::BackendError::Store(_))
    ));
}

#[test]
fn spawn_reports_the_bound_tcp_port() {
    let dir = tempfile::tempdir().unwrap();
    let handle = crate::spawn(crate::BackendConfig {
        data_dir: dir.path().to_owned(),
        listen: crate::Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        assertion_key: crate::testing::KEY.to_vec(),
        store: crate::StoreChoice::Embedded,
        idempotency_ttl: std::time::Duration::from_secs(300),
    })
    .unwrap();
    let crate::Listen::Tcp(addr) = handle.listen() else {
        panic!("tcp")
    };
    assert_ne!(addr.port(), 0);
}

#[test]
fn a_live_socket_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("live.sock");
    let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let got = crate::server::bind(&crate::Listen::Unix(sock.clone()));
    assert!(matches!(got, Err(crate::BackendError::SocketPath(..))));
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let got = crate::server::bind(&crate::Listen::Unix(dir.path().join("file")));
    assert!(matches!(got, Err(crate::BackendError::SocketPath(..))));
}

/// `stop`: an idle keep-alive connection is closed and the count of open connections falls to
/// zero; `take_over` waits for the store the backend held (released once it has drained), then
/// serves on the same socket path. (Requests in progress at a stop: the gateway's upgrade test.)
#[test]
fn a_stopped_backend_drains_and_another_takes_its_store_over() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("backend.sock");
    let cfg = || crate::BackendConfig {
        data_dir: dir.path().to_owned(),
        listen: crate::Listen::Unix(sock.clone()),
        assertion_key: crate::testing::KEY.to_vec(),
        store: crate::StoreChoice::Embedded,
        idempotency_ttl: Duration::from_secs(300),
    };
    let old = crate::spawn(cfg()).unwrap();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let began = Instant::now();
        while !done() {
            assert!(began.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("the old backend serves", &|| old.is_serving());
    let health = b"GET /healthz HTTP/1.1\r\nhost: b\r\n\r\n";
    let mut idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    idle.write_all(health).unwrap();
    let mut first = [0u8; 512];
    assert!(idle.read(&mut first).unwrap() > 0);
    assert_eq!(old.connections(), 1);

    let (tx, rx) = std::sync::mpsc::channel();
    let taking = cfg();
    std::thread::spawn(move || tx.send(crate::take_over(taking)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "took over a store still held");

    old.stop();
    let mut closed = [0u8; 16];
    assert_eq!(
        idle.read(&mut closed).unwrap(),
        0,
        "the idle connection is closed"
    );
    until("the old backend drains", &|| old.connections() == 0);
    let new = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("take_over returns once the store is free")
        .unwrap();
    until("the new backend serves", &|| new.is_serving());
    health_ok(&sock);
}

/// `GET /healthz` on the unix socket `sock` answers 200 `{"status":"ok"}`.
fn health_ok(sock: &std::path::Path) {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(sock).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
}
