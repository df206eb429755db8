//! pingora's graceful upgrade: a new `serve --upgrade` takes the running instance's listening
//! sockets when the old one gets SIGQUIT, and no request fails during the hand-over — with an
//! external backend, and with the embedded one, whose store the new process takes over when the
//! old one has drained and exited (writes during the hand-over are neither lost nor doubled).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::claims::{human, m2m};
use e2e_tests::echo::{echo_backend, external_backend_config_text};
use e2e_tests::gateway::{
    Gateway, binary, dynamodb_backend_config_text, test_config, write_config,
};
use e2e_tests::http::{bearer, client, send};
use serde_json::json;

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

    let upgrade = Upgrade::start(&old, &config, dir.path());
    let mut sent = 0;
    while !upgrade.old_gone() {
        let a = send(&c, "GET", &url, &[bearer(&token)], None).await;
        upgrade.expect(&a, 200, &old);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the new process is left, and it serves.
    for _ in 0..5 {
        send(&c, "GET", &url, &[bearer(&token)], None)
            .await
            .assert_status(200);
    }
    upgrade.finish();
    drop(old);
    eprintln!("{sent} requests answered during the upgrade");
}

#[tokio::test]
async fn the_embedded_backend_is_handed_over_with_its_store() {
    awards_through_a_hand_over(&test_config()).await;
}

#[tokio::test]
async fn the_embedded_backend_on_dynamodb_is_handed_over() {
    let table = format!("cedargate-e2e-upgrade-{}", std::process::id());
    let Some(text) = dynamodb_backend_config_text(&table) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    awards_through_a_hand_over(&write_config(dir.path(), "cedargate.toml", &text)).await;
}

/// Point awards and reads, one after the other, through a graceful upgrade of a gateway on
/// `config` (the embedded backend): every request answered, every award counted once, and the
/// new process's backend serving at the end.
async fn awards_through_a_hand_over(config: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let old = Gateway::start_with(config, &[]);
    let member = old.mint(&human("Member", "app"), None);
    let machine = old.mint(&m2m("app/read app/write"), None);
    let c = client();
    let me = old.api_url("/app/v1/workspaces/ws-demo/me");
    let points = old.api_url("/app/v1/workspaces/ws-demo/points");
    let missions = old.api_url("/app/v1/workspaces/ws-demo/missions");
    let balance = |answer: &e2e_tests::http::Answer| {
        answer.assert_status(200);
        answer.json().unwrap()["balance"].as_i64().unwrap()
    };
    let before = balance(&send(&c, "GET", &me, &[bearer(&member)], None).await);

    let upgrade = Upgrade::start(&old, config, dir.path());
    let mut awarded = 0;
    let mut sent = 0;
    while !upgrade.old_gone() {
        // A user the directory has not seen: each one is looked up in the backend.
        let ghost = ("x-user-id".to_owned(), format!("u-ghost-{sent}"));
        let a = send(&c, "GET", &missions, &[bearer(&machine), ghost], None).await;
        upgrade.expect(&a, 403, &old);
        let award = json!({"userId": "u-member", "points": 1, "reason": format!("upgrade {sent}")});
        let a = send(&c, "POST", &points, &[bearer(&machine)], Some(&award)).await;
        upgrade.expect(&a, 201, &old);
        awarded += 1;
        let a = send(&c, "GET", &me, &[bearer(&member)], None).await;
        upgrade.expect(&a, 200, &old);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new process serves from the store the old one wrote: every award counted once.
    let after = balance(&send(&c, "GET", &me, &[bearer(&member)], None).await);
    assert_eq!(
        after,
        before + awarded,
        "{awarded} awards during the upgrade"
    );
    let a = send(
        &c,
        "POST",
        &points,
        &[bearer(&machine)],
        Some(&json!({"userId": "u-member", "points": 1, "reason": "after"})),
    )
    .await;
    a.assert_status(201);
    let new_log = || std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default();
    let waited = Instant::now();
    while !new_log().contains("embedded backend taken over from the previous instance") {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the new process did not take the backend over:\n{}",
            new_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upgrade.finish();
    drop(old);
    eprintln!("{sent} awards and reads answered during the upgrade");
}

/// A new `serve --upgrade` started beside `old` (same data dir and addresses), and the old
/// process told to hand over (SIGQUIT).
struct Upgrade {
    new: Child,
    /// Where the new process's log is.
    dir: std::path::PathBuf,
    old_pid: u32,
    started: Instant,
}

impl Upgrade {
    fn start(old: &Gateway, config: &Path, dir: &Path) -> Upgrade {
        let old_pid = old.pid();
        // The new process waits for the sockets on the data dir's upgrade socket.
        let log = std::fs::File::create(dir.join("new.log")).unwrap();
        let mut new = Command::new(binary())
            .args(["serve", "--upgrade", "--config"])
            .arg(config)
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
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            new.try_wait().unwrap().is_none(),
            "the new process exited early: {}",
            std::fs::read_to_string(dir.join("new.log")).unwrap_or_default()
        );
        // By the pid read before the new process started: it writes the same pid file.
        e2e_tests::gateway::send_signal(old_pid, "QUIT");
        Upgrade {
            new,
            dir: dir.to_owned(),
            old_pid,
            started: Instant::now(),
        }
    }

    /// `answer`, during the upgrade, has `status`; if not, the failure shows both processes'
    /// warnings and errors.
    fn expect(&self, answer: &e2e_tests::http::Answer, status: u16, old: &Gateway) {
        if answer.status == status {
            return;
        }
        let new = std::fs::read_to_string(self.dir.join("new.log")).unwrap_or_default();
        let logs = format!("{}\n--- new process\n{new}", old.logs());
        let notable: Vec<&str> = logs
            .lines()
            .filter(|l| l.starts_with("---") || l.contains("\"WARN\"") || l.contains("\"ERROR\""))
            .collect();
        panic!(
            "during the upgrade, {} s after SIGQUIT: {answer}\n{}",
            self.started.elapsed().as_secs_f32(),
            notable.join("\n")
        );
    }

    /// Whether the old process has exited (it must within 30 s of SIGQUIT).
    fn old_gone(&self) -> bool {
        assert!(
            self.started.elapsed() < Duration::from_secs(30),
            "the old process did not exit after SIGQUIT"
        );
        let proc_path = format!("/proc/{}", self.old_pid);
        !Path::new(&proc_path).exists()
            || std::fs::read_to_string(format!("{proc_path}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }

    /// The new process still serves (it is stopped on drop).
    fn finish(mut self) {
        assert!(
            self.new.try_wait().unwrap().is_none(),
            "the new process stopped"
        );
    }
}

impl Drop for Upgrade {
    /// Also when a test fails: no new process is left running.
    fn drop(&mut self) {
        let _ = self.new.kill();
        let _ = self.new.wait();
    }
}
