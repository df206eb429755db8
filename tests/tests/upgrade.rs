//! pingora's graceful upgrade: a new `serve --upgrade` takes the running instance's listening
//! sockets when the old one gets SIGQUIT, and no request fails during the hand-over.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::claims::human;
use e2e_tests::echo::{echo_backend, external_backend_config_text};
use e2e_tests::gateway::{Gateway, binary, write_config};
use e2e_tests::http::{bearer, client, send};

#[tokio::test]
async fn a_new_process_takes_over_without_dropping_requests() {
    let (backend, _seen) = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "cedargate.toml",
        &external_backend_config_text(backend),
    );
    let old = Gateway::start_with(&config, &[]);
    let token = old.mint(&human("Member", "app"), None);
    let c = client();
    let url = old.api_url("/app/v1/workspaces/ws-demo/missions");
    send(&c, "GET", &url, &[bearer(&token)], None)
        .await
        .assert_status(200);
    let old_pid: i32 = std::fs::read_to_string(old.data_dir().join("cedargate.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // The new process waits for the sockets on the data dir's upgrade socket.
    let log = std::fs::File::create(dir.path().join("new.log")).unwrap();
    let mut new = Command::new(binary())
        .args(["serve", "--upgrade", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(old.data_dir())
        .args(["--api-addr", &old.api.to_string()])
        .args(["--auth-addr", &old.auth.to_string()])
        .args(["--admin-addr", &old.admin.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process exited early"
    );
    let status = Command::new("kill")
        .args(["-QUIT", &old_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Traffic throughout the hand-over and the old process's drain: every request answered.
    let started = Instant::now();
    let mut sent = 0;
    let mut old_gone = false;
    let proc_path = format!("/proc/{old_pid}");
    while started.elapsed() < Duration::from_secs(30) {
        let a = send(&c, "GET", &url, &[bearer(&token)], None).await;
        assert_eq!(a.status, 200, "request {sent} during the upgrade: {a}");
        sent += 1;
        if !std::path::Path::new(&proc_path).exists()
            || std::fs::read_to_string(format!("{proc_path}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            old_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(old_gone, "the old process did not exit after SIGQUIT");
    // Only the new process is left, and it serves.
    for _ in 0..5 {
        send(&c, "GET", &url, &[bearer(&token)], None)
            .await
            .assert_status(200);
    }
    assert!(new.try_wait().unwrap().is_none(), "the new process stopped");
    let _ = new.kill();
    let _ = new.wait();
    drop(old);
    eprintln!("{sent} requests answered during the upgrade");
}
