//! TLS on the api listener: 1.2 and 1.3 accepted, 1.0/1.1 refused, HSTS on answers. The
//! certificate is generated per test with the openssl CLI (scripts/test.sh installs it).

use std::path::Path;
use std::process::{Command, Stdio};

use e2e_tests::gateway::{Gateway, unlimited_config_text, write_config};

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI is needed for the TLS tests (scripts/test.sh installs it)")
}

#[track_caller]
fn run_openssl(args: &[&str], dir: &Path) {
    let out = openssl(args, dir);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new key (`key`) and a certificate for it (`cert`, with `subject`) signed by the test CA.
fn sign_leaf(dir: &Path, key: &str, cert: &str, subject: &str) {
    run_openssl(
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", "leaf.csr", "-subj",
            subject,
        ],
        dir,
    );
    run_openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
        dir,
    );
}

fn tls_config(dir: &Path) -> std::path::PathBuf {
    // A CA and a leaf it signs (webpki refuses a self-signed CA as the server certificate).
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cedargate-test-ca",
        ],
        dir,
    );
    sign_leaf(dir, "key.pem", "cert.pem", "/CN=localhost");
    let text = format!(
        "{}\n[tls.api]\ncert_file = {:?}\nkey_file = {:?}\n",
        unlimited_config_text(),
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    );
    write_config(dir, "tls.toml", &text)
}

/// Whether `openssl s_client` completes a handshake with `version` (e.g. "-tls1_2").
fn handshake(addr: &str, version: &str, dir: &Path) -> bool {
    let out = openssl(
        &["s_client", "-connect", addr, version, "-CAfile", "ca.pem"],
        dir,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("Verify return code: 0") && !text.contains("Cipher is (NONE)")
}

#[tokio::test]
async fn api_listener_speaks_tls_1_2_and_1_3_only_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(dir.path());
    let gw = Gateway::start_with(&config, &[]);
    let addr = gw.api.to_string();
    assert!(handshake(&addr, "-tls1_2", dir.path()), "TLS 1.2 must work");
    assert!(handshake(&addr, "-tls1_3", dir.path()), "TLS 1.3 must work");
    assert!(
        !handshake(&addr, "-tls1_1", dir.path()),
        "TLS 1.1 must be refused"
    );

    // An HTTP request over TLS 1.3: answered, with HSTS.
    let mut child = Command::new("openssl")
        .args([
            "s_client", "-quiet", "-connect", &addr, "-tls1_3", "-CAfile", "ca.pem",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /app/v1/workspaces/ws-demo/missions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(
        text.contains("strict-transport-security: max-age="),
        "{text}"
    );
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() >= 400);
}

/// The subject of the certificate the listener presents.
fn served_subject(addr: &str, dir: &Path) -> String {
    let out = openssl(
        &[
            "s_client",
            "-connect",
            addr,
            "-CAfile",
            "ca.pem",
            "-servername",
            "localhost",
        ],
        dir,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in s_client output:\n{text}"))
        .to_string()
}

#[tokio::test]
async fn certificates_are_renewed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = tls_config(dir.path());
    let gw = Gateway::start_with(&config, &[]);
    let addr = gw.api.to_string();
    assert!(served_subject(&addr, dir.path()).contains("localhost"));
    // A renewed leaf from the same CA, with another subject, written over the old files.
    sign_leaf(
        dir.path(),
        "key2.pem",
        "cert2.pem",
        "/CN=localhost/O=renewed",
    );
    // A mismatched pair is refused and the certificate in force stays.
    std::fs::copy(dir.path().join("cert2.pem"), dir.path().join("cert.pem")).unwrap();
    let c = reqwest::Client::new();
    let r = c
        .post(gw.admin_url("/admin/tls/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(!served_subject(&addr, dir.path()).contains("renewed"));
    assert!(handshake(&addr, "-tls1_3", dir.path()));
    // The matching key too: the next handshakes get the new certificate.
    std::fs::copy(dir.path().join("key2.pem"), dir.path().join("key.pem")).unwrap();
    let r = c
        .post(gw.admin_url("/admin/tls/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(served_subject(&addr, dir.path()).contains("renewed"));
    assert!(handshake(&addr, "-tls1_2", dir.path())); // Renewed files are picked up by themselves (checked every 5 s): a key written after its
    // certificate makes a mismatched pair for a moment, refused, then the matching one is taken.
    sign_leaf(dir.path(), "key3.pem", "cert3.pem", "/CN=localhost/O=third");
    std::fs::copy(dir.path().join("cert3.pem"), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(dir.path().join("key3.pem"), dir.path().join("key.pem")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !served_subject(&addr, dir.path()).contains("third") {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed files were not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(handshake(&addr, "-tls1_3", dir.path()));
}
