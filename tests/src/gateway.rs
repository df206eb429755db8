//! One `cedargate serve` process on three free loopback ports, with its own data dir.
//!
//! Lifecycle: the binary runs under a tiny `sh` supervisor whose stdin is a pipe held by this
//! process. Dropping the [`Gateway`] closes the pipe, and so does the test process dying (a
//! panic, an abort, or the end of a test binary whose shared gateway lives in a `static` that is
//! never dropped); on end-of-file the supervisor kills the gateway. No gateway outlives its tests.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long `serve` may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `"$@"` in the background, kills it when stdin reaches end-of-file, exits with its status.
/// `exec 3<&0` keeps the pipe reachable from the watcher, whose stdin sh replaces by /dev/null.
const SUPERVISOR: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
gw=$!
( read -r _ <&3; kill -9 "$gw" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$gw"
rc=$?
kill "$watcher" 2>/dev/null
exit "$rc"
"#;

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The config the tests run: `CEDARGATE_CONFIG`, else the embedded default
/// `config/cedargate.toml`.
pub fn default_config() -> PathBuf {
    match std::env::var_os("CEDARGATE_CONFIG") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("config").join("cedargate.toml"),
    }
}

/// The default config's text with its policy directory made absolute, so an edited copy can
/// live anywhere (e.g. in a tempdir).
pub fn relocatable_config_text() -> String {
    relocatable_text_of(&default_config())
}

/// The text of the config file at `path` with its relative policy directory (`dir = "..."`,
/// relative to the file) made absolute. Panics when it has none: the config changed shape.
pub fn relocatable_text_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read a config");
    let base = path.parent().expect("a config file's directory");
    let mut relocated = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let relative = line
                .strip_prefix("dir = \"")
                .and_then(|rest| rest.split_once('"'))
                .filter(|(dir, _)| !dir.starts_with('/'));
            match relative {
                Some((dir, rest)) => {
                    relocated = true;
                    let absolute = base.join(dir).canonicalize().expect("the policy directory");
                    format!("dir = {:?}{rest}", absolute.display().to_string())
                }
                None => line.to_string(),
            }
        })
        .collect();
    assert!(
        relocated,
        "{} has no relative `dir = \"...\"`",
        path.display()
    );
    lines.join("\n") + "\n"
}

/// The default config's text with the per-IP rate limits (100 requests, and 100 failed token
/// requests, per 5 minutes) raised out of the way: every e2e request comes from 127.0.0.1.
/// Rate-limit tests set their own limits.
pub fn unlimited_config_text() -> String {
    set_in_section(
        &raise_ip_limit(&relocatable_config_text()),
        "rate_limit.token_failures",
        "limit",
        "1000000000",
    )
}

/// Where scripts/test.sh's DynamoDB-compatible server (moto) listens, for the tests that need it.
pub const DYNAMODB_ENV: &str = "CEDARGATE_TEST_DYNAMODB_ENDPOINT";

/// [`unlimited_config_text`] with `[backend] store = "dynamodb"` on `table` (created at start)
/// of the server at [`DYNAMODB_ENV`]; `None` (the test is skipped, with a notice) when no such
/// server is configured outside CI. Under CI=true, a missing server fails the test.
pub fn dynamodb_backend_config_text(table: &str) -> Option<String> {
    if std::env::var(DYNAMODB_ENV).map_or(true, |v| v.is_empty()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{DYNAMODB_ENV} is not set under CI=true: scripts/test.sh starts moto");
        }
        eprintln!("NOTICE: DynamoDB backend test skipped: {DYNAMODB_ENV} is not set");
        return None;
    }
    let replaced = unlimited_config_text()
        .replace("store = \"embedded\"", "store = \"dynamodb\"")
        .replace(
            "create_tables_on_start = false",
            "create_tables_on_start = true",
        )
        .replace(
            "backend_table = \"cedargate-backend\"",
            &format!("backend_table = \"{table}\""),
        )
        .replace(
            "# endpoint = \"http://127.0.0.1:8000\"",
            &format!("endpoint = \"${{{DYNAMODB_ENV}}}\""),
        )
        // Single-threaded moto queues racing tests' requests well past the default 1 s.
        .replace("timeout_ms = 1000 ", "timeout_ms = 15000 ");
    assert!(
        replaced.contains("store = \"dynamodb\"")
            && replaced.contains(table)
            && replaced.contains("timeout_ms = 15000"),
        "the default config changed shape"
    );
    Some(replaced)
}

/// `text` (a copy of the default config) with `[rate_limit.ip] limit = 100` raised to 10^9.
pub fn raise_ip_limit(text: &str) -> String {
    set_in_section(text, "rate_limit.ip", "limit", "1000000000")
}

/// `text` (a TOML config) with the line `key = ...` of `[section]` replaced by `key = value`.
/// Panics when the section has no such line: the default config changed shape.
pub fn set_in_section(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("\n[{section}]");
    let start = text
        .find(&header)
        .unwrap_or_else(|| panic!("no [{section}] in the config"))
        + header.len();
    let end = text[start..].find("\n[").map_or(text.len(), |i| start + i);
    let prefix = format!("\n{key} = ");
    let line = start
        + text[start..end]
            .find(&prefix)
            .unwrap_or_else(|| panic!("[{section}] has no `{key} = ` line"));
    let line_end = text[line + 1..]
        .find('\n')
        .map_or(text.len(), |i| line + 1 + i);
    format!("{}\n{key} = {value}{}", &text[..line], &text[line_end..])
}

/// Data dirs are `<temp dir>/cedargate-e2e-<pid of the test process>-<random>`.
const DATA_DIR_PREFIX: &str = "cedargate-e2e-";

/// A scratch dir that outlives this test process (for a gateway kept in a `static`), named so
/// that a later run removes it: `<temp dir>/cedargate-e2e-<pid>-<name>`.
pub fn process_dir(name: &str) -> std::io::Result<PathBuf> {
    sweep_stale_data_dirs();
    let dir = std::env::temp_dir().join(format!("{DATA_DIR_PREFIX}{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Remove the data dirs of test processes that are gone, once per process. A shared gateway
/// lives in a `static`, which is never dropped, so its temp dir (with test keys in it) outlives
/// the test process; the next run removes it.
fn sweep_stale_data_dirs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DATA_DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The config `Gateway::start` and `Gateway::shared` run: `CEDARGATE_CONFIG`, else
/// [`unlimited_config_text`] written once per test process.
pub fn test_config() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = std::env::var_os("CEDARGATE_CONFIG") {
        return PathBuf::from(path);
    }
    PATH.get_or_init(|| {
        let dir = workspace_root().join("target").join("e2e-config");
        std::fs::create_dir_all(&dir).expect("create target/e2e-config");
        let path = dir.join("cedargate-test.toml");
        // Written aside then renamed: test processes running at once never read half a file.
        let tmp = dir.join(format!("cedargate-test.toml.{}", std::process::id()));
        std::fs::write(&tmp, unlimited_config_text()).expect("write the test config");
        std::fs::rename(&tmp, &path).expect("rename the test config");
        path
    })
    .clone()
}

/// Write `text` as `name` in `dir` and return its path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test config");
    path
}

/// The `cedargate` binary under test: `CEDARGATE_BIN`, else `<target dir>/debug/cedargate`.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CEDARGATE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "CEDARGATE_BIN={} is not a file",
            bin.display()
        );
        return bin;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let bin = target.join("debug").join("cedargate");
    assert!(
        bin.is_file(),
        "the cedargate binary is missing at {}: run `cargo build -p gateway` first \
         (or set CEDARGATE_BIN to a built binary)",
        bin.display()
    );
    bin
}

/// Runs the binary with `args` and waits at most `deadline` for it to exit.
///
/// `Err` carries what it printed so far when it is still running at the deadline (it is killed).
pub fn run_cli(args: &[&str], deadline: Duration) -> Result<Output, String> {
    let out_dir = tempfile::tempdir().expect("tempdir for CLI output");
    let stdout_path = out_dir.path().join("stdout.log");
    let stderr_path = out_dir.path().join("stderr.log");
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn cedargate");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read(&stderr_path).unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "`cedargate {}` still running after {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// A running `cedargate serve`.
pub struct Gateway {
    child: Child,
    stdin: Option<ChildStdin>,
    data_dir: TempDir,
    config: PathBuf,
    /// The api listener (the policy-enforcing proxy).
    pub api: SocketAddr,
    /// The auth listener (token endpoint, discovery, JWKS).
    pub auth: SocketAddr,
    /// The admin listener (health, readiness, metrics).
    pub admin: SocketAddr,
    minted: Mutex<HashMap<String, String>>,
}

impl Gateway {
    /// Starts `serve` with [`test_config`]; panics (printing the logs) when it is not ready.
    pub fn start() -> Gateway {
        Gateway::start_with(&test_config(), &[])
    }

    /// Starts `serve` with `config` and `extra_args` appended to the command line.
    pub fn start_with(config: &Path, extra_args: &[&str]) -> Gateway {
        Gateway::try_start_with(config, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Gateway::start_with`], with the failure (and the logs) as `Err`.
    pub fn try_start_with(config: &Path, extra_args: &[&str]) -> Result<Gateway, String> {
        Gateway::launch(Some(config), None, extra_args)
    }

    /// Starts `serve` without `--config`, in the working directory `cwd` (its data dir
    /// elsewhere), as an installed binary runs; `token mint` is then given the repository's
    /// default config, the same text the binary embeds.
    pub fn start_without_config(cwd: &Path) -> Gateway {
        Gateway::launch(None, Some(cwd), &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(
        config: Option<&Path>,
        cwd: Option<&Path>,
        extra_args: &[&str],
    ) -> Result<Gateway, String> {
        let bin = binary();
        sweep_stale_data_dirs();
        let data_dir = tempfile::Builder::new()
            .prefix(&format!("{DATA_DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let [api, auth, admin] = free_ports();
        let stdout = File::create(data_dir.path().join("serve.stdout.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let stderr = File::create(data_dir.path().join("serve.stderr.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("cedargate-e2e-supervisor")
            .arg(&bin)
            .arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--api-addr")
            .arg(api.to_string())
            .arg("--auth-addr")
            .arg(auth.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let stdin = child.stdin.take();
        let mut gw = Gateway {
            child,
            stdin,
            data_dir,
            config: config.map_or_else(default_config, Path::to_path_buf),
            api,
            auth,
            admin,
            minted: Mutex::new(HashMap::new()),
        };
        gw.wait_ready()?;
        Ok(gw)
    }

    /// The shared gateway of a test file: started once, its failure remembered for every test.
    pub fn shared(cell: &'static OnceLock<Result<Gateway, String>>) -> &'static Gateway {
        match cell.get_or_init(|| Gateway::try_start_with(&test_config(), &[])) {
            Ok(gw) => gw,
            Err(e) => panic!("the shared gateway did not start: {e}"),
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| format!("try_wait: {e}"))?
            {
                return Err(self.failure(&format!(
                    "`cedargate serve` exited with {status} before it was ready"
                )));
            }
            let last = match http_get_status(self.admin, "/readyz") {
                Ok(200) => return Ok(()),
                Ok(status) => format!("/readyz answered {status}"),
                Err(e) => e,
            };
            if started.elapsed() > READY_TIMEOUT {
                return Err(self.failure(&format!(
                    "`cedargate serve` not ready after {READY_TIMEOUT:?} ({last})"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\ncommand: {} serve --config {} --data-dir {} --api-addr {} --auth-addr {} --admin-addr {}\n{}",
            binary().display(),
            self.config.display(),
            self.data_dir.path().display(),
            self.api,
            self.auth,
            self.admin,
            self.logs()
        )
    }

    /// Everything `serve` printed so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read(self.data_dir.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<{e}>"))
        };
        format!(
            "--- serve stdout\n{}\n--- serve stderr\n{}",
            read("serve.stdout.log"),
            read("serve.stderr.log")
        )
    }

    /// The exit status, when `serve` has stopped.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The data dir given to `serve` (and to `token mint`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The gateway process's id, from the pid file `serve` writes in its data dir (the child
    /// this handle holds is the supervising shell).
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.data_dir().join("cedargate.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", self.data_dir().display()))
    }

    /// The config file given to `serve` (and to `token mint`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// `http://<api listener><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `http://<auth listener><path>`.
    pub fn auth_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.auth)
    }

    /// `http://<admin listener><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The admin listener's `/metrics` text (see [`metric_value`]).
    pub async fn metrics(&self) -> String {
        let url = self.admin_url("/metrics");
        crate::http::send(&crate::http::client(), "GET", &url, &[], None)
            .await
            .text()
    }

    /// An access token from `cedargate token mint` for `claims` (cached per claims and ttl).
    ///
    /// `mint` fills `iss/iat/exp/jti/token_use` unless `claims` has them, so passing them makes
    /// expired, wrongly issued or id tokens.
    pub fn mint(&self, claims: &Value, ttl: Option<u64>) -> String {
        let claims_json = claims.to_string();
        let key = format!("{claims_json}|{ttl:?}");
        if let Some(token) = self.minted.lock().expect("mint cache").get(&key) {
            return token.clone();
        }
        let mut cmd = Command::new(binary());
        cmd.arg("token")
            .arg("mint")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--claims")
            .arg(&claims_json);
        if let Some(ttl) = ttl {
            cmd.arg("--ttl").arg(ttl.to_string());
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run `cedargate token mint`");
        assert!(
            out.status.success(),
            "`cedargate token mint --claims {claims_json}` failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(
            token.split('.').count(),
            3,
            "`token mint` printed something that is not a JWS compact token: {token:?}"
        );
        self.minted
            .lock()
            .expect("mint cache")
            .insert(key, token.clone());
        token
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // End-of-file on the supervisor's stdin kills the gateway; the supervisor then exits.
        drop(self.stdin.take());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("CEDARGATE_E2E_KEEP").is_some() {
            self.data_dir.disable_cleanup(true);
            eprintln!("kept gateway data dir {}", self.data_dir.path().display());
        }
    }
}

/// Three distinct free loopback ports (bound together, then released), never handed out
/// before in this process: once released, the kernel may give a port to the next caller. Two
/// gateways started side by side by parallel tests with one port in common both pass their
/// start-up check (neither has bound yet); the later one's listener then retries its bind
/// (pingora does so for 30 s) while its other listeners, and `/readyz`, are up, and the test's
/// requests reach the other gateway.
/// Send `signal` (`TERM`, `HUP`, `QUIT`, ...) to process `pid` with `kill`.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    assert!(sent.success(), "kill -{signal} {pid}: {sent}");
}

/// The sum of the values of every series in a `/metrics` text whose line starts with `series`
/// (a name, or a name and the start of its labels); 0 when there is none.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn free_ports() -> [SocketAddr; 3] {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
            .collect();
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local_addr"))
            .collect();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if addrs.iter().any(|a| handed_out.contains(&a.port())) {
            continue;
        }
        handed_out.extend(addrs.iter().map(SocketAddr::port));
        return [addrs[0], addrs[1], addrs[2]];
    }
}

/// The status of a plain `GET path` (blocking, used before any runtime exists).
fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}
