//! The server process: [`TestDir`] (reports server logs on failure) and [`Server`] (the real
//! binary on `127.0.0.1:0`), the WAL files of its data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::*;

pub const BINARY: &str = env!("CARGO_BIN_EXE_scaivault-audit");

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 80;

/// Index commits every 200 ms: restarts find most events already committed.
pub const FAST_COMMITS: &[&str] = &["--commit-interval-ms", "200"];
/// The audit of the audit off: reads add no `audit_read` events to the tenant they read (for
/// tests that compare a tenant's log or counts with exactly what they ingested).
pub const AUDIT_OF_AUDIT_OFF: &[&str] = &["--audit-of-audit-enabled", "false"];
/// Index commits (practically) never: restarts must rebuild everything from the WAL.
pub const NO_COMMITS: &[&str] = &[
    "--commit-interval-ms",
    "3600000",
    "--commit-max-docs",
    "100000000",
];

// ---------------------------------------------------------------------------------------------
// Temporary directory that reports server logs on failure
// ---------------------------------------------------------------------------------------------

/// A temporary directory holding `data/` (the server's data dir) and the server logs.
///
/// Declare it before any [`Server`]: when the test panics, it is dropped last, prints the tail
/// of every server log and keeps the directory on disk.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("scaivault-audit-it-")
            .tempdir()
            .expect("create temporary directory");
        fs::create_dir(dir.path().join("data")).expect("create data directory");
        TestDir { dir: Some(dir) }
    }

    pub fn root(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("directory present until drop")
            .path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(dir) = self.dir.take() {
            print_server_logs(dir.path());
            let kept = dir.keep();
            eprintln!("test directory kept at {}", kept.display());
        }
    }
}

fn print_server_logs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = fs::read(&log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let text = text.unwrap_or_else(|error| format!("<unreadable: {error}>"));
        let lines: Vec<&str> = text.lines().collect();
        let skipped = lines.len().saturating_sub(LOG_TAIL_LINES);
        eprintln!(
            "===== {} ({} lines, last {} shown) =====",
            log.display(),
            lines.len(),
            lines.len() - skipped
        );
        for line in &lines[skipped..] {
            eprintln!("{line}");
        }
    }
}

fn next_log_paths(root: &Path) -> (PathBuf, PathBuf) {
    for n in 1..10_000 {
        let stderr_log = root.join(format!("server-{n:03}.stderr.log"));
        if !stderr_log.try_exists().expect("stat log file") {
            return (root.join(format!("server-{n:03}.stdout.log")), stderr_log);
        }
    }
    panic!("too many server logs in {}", root.display());
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

pub struct Server {
    child: Child,
    base_url: String,
    token: Option<String>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Server {
    /// `scaivault-audit serve --data-dir DIR --listen 127.0.0.1:0 EXTRA_ARGS` (query rate limit
    /// off), waited on until `GET /v1/health/ready` answers 200.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_wrapped(&[], data_dir, extra_args).await
    }

    /// Like [`Server::start`], with the binary run through `wrapper` (e.g. `prlimit --fsize=N`).
    pub async fn start_wrapped(wrapper: &[&str], data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut server = Server::spawn(wrapper, data_dir, extra_args).await;
        server.wait_until_ready(Instant::now()).await;
        server
    }

    /// Like [`Server::start`], but returns as soon as the server listens (it may still be
    /// replaying its WAL).
    pub async fn start_listening(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::spawn(&[], data_dir, extra_args).await
    }

    /// Waits until `GET /v1/health/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        self.wait_until_ready(Instant::now()).await;
    }

    async fn spawn(wrapper: &[&str], data_dir: &Path, extra_args: &[&str]) -> Server {
        // Tests poll and page through logs far faster than the default 50 queries/min.
        Server::spawn_with_limit(wrapper, data_dir, 0, extra_args, &[]).await
    }

    /// Like [`Server::start`], with extra environment variables (e.g. `KUBECONFIG`, `HOSTNAME`
    /// for the operator mode).
    pub async fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        let mut server = Server::spawn_with_limit(&[], data_dir, 0, extra_args, env).await;
        server.wait_until_ready(Instant::now()).await;
        server
    }

    async fn spawn_with_limit(
        wrapper: &[&str],
        data_dir: &Path,
        queries_per_minute: u32,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        let root = data_dir.parent().expect("data dir has a parent directory");
        let (stdout_log, stderr_log) = next_log_paths(root);
        let stderr_file = File::create(&stderr_log).expect("create stderr log");

        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--rate-limit-queries-per-minute")
            .arg(queries_per_minute.to_string())
            .args(extra_args)
            .args(default_export_limit(extra_args))
            .args(default_export_confinement(data_dir, extra_args))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        for (name, _) in std::env::vars_os() {
            if is_server_setting(&name.to_string_lossy()) {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn scaivault-audit");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_lines = spawn_stdout_reader(stdout, stdout_log.clone());

        let mut server = Server {
            child,
            base_url: String::new(),
            token: None,
            stdout_log,
            stderr_log,
        };
        let started = Instant::now();
        let addr = server.wait_for_listening_line(&stdout_lines, started).await;
        server.base_url = format!("http://{addr}");
        // The bootstrap token (if any) is written before the server prints where it listens.
        server.token = read_bootstrap_token(data_dir);
        server
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bootstrap token (only when the server runs without configured auth).
    pub fn token(&self) -> &str {
        self.token.as_deref().expect("server has a bootstrap token")
    }

    pub fn bootstrap_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    /// Panics unless the process is still running (it must not die on its own).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll server process") {
            panic!("server exited on its own with {status}");
        }
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll server process")
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("reap killed server");
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        let deadline = Instant::now() + SHUTDOWN_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll server process") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {SHUTDOWN_DEADLINE:?} of SIGTERM"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_for_listening_line(
        &mut self,
        stdout_lines: &Receiver<String>,
        started: Instant,
    ) -> SocketAddr {
        loop {
            match stdout_lines.try_recv() {
                Ok(line) => {
                    if let Some(addr) = parse_listening_line(&line) {
                        return addr;
                    }
                }
                Err(TryRecvError::Empty) => {
                    self.assert_still_starting(started, "printing `listening on http://...`");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(TryRecvError::Disconnected) => {
                    let status = self.child.wait().expect("reap server");
                    panic!("server closed stdout without a `listening on` line; exit {status}");
                }
            }
        }
    }

    async fn wait_until_ready(&mut self, started: Instant) {
        let client = client();
        let url = format!("{}/v1/health/ready", self.base_url);
        loop {
            let attempt = client
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if attempt.is_ok_and(|response| response.status() == StatusCode::OK) {
                return;
            }
            self.assert_still_starting(started, "becoming ready");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn assert_still_starting(&mut self, started: Instant, waiting_for: &str) {
        if let Some(status) = self.child.try_wait().expect("poll server process") {
            panic!("server exited with {status} while {waiting_for}");
        }
        assert!(
            started.elapsed() < STARTUP_DEADLINE,
            "server not done {waiting_for} within {STARTUP_DEADLINE:?}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Environment variables the server reads as settings: tests must not inherit them.
fn is_server_setting(name: &str) -> bool {
    name.starts_with("SCAIVAULT_")
        || name.starts_with("SCAIKEY_")
        || matches!(
            name,
            "BIND_ADDRESS" | "LOG_LEVEL" | "LOG_FORMAT" | "TLS_CERT_FILE" | "TLS_KEY_FILE"
        )
}

/// Copies the server's stdout to `log_path` and forwards each line; keeps draining after the
/// receiver is gone so the server never blocks on (or fails writing to) a full pipe.
fn spawn_stdout_reader(stdout: ChildStdout, log_path: PathBuf) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = File::create(log_path).ok();
        let mut reader = BufReader::new(stdout);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(log) = log.as_mut() {
                let _ = log.write_all(&buffer);
            }
            let line = String::from_utf8_lossy(&buffer).trim_end().to_owned();
            let _ = sender.send(line);
        }
    });
    receiver
}

/// Finds `listening on http://IP:PORT` anywhere in a line (plain or structured logs).
/// Tests create exports far faster than the default 5/min, unless they set the limit.
fn default_export_limit(extra_args: &[&str]) -> &'static [&'static str] {
    if extra_args.contains(&"--rate-limit-exports-per-minute") {
        &[]
    } else {
        &["--rate-limit-exports-per-minute", "0"]
    }
}

/// Directory name of the `file` export root beside the data directory (what the harness passes
/// as `--export-file-root`; buckets are sub-directories of it, see `export::file_bucket`).
pub const FILE_ROOT_NAME: &str = "exports";

/// Credentials paths the harness allows (`--export-credentials-path-prefixes`): each tenant's own
/// subtree and the `infra/...` paths the export tests keep their fake secrets under.
pub const TEST_CREDENTIALS_PREFIXES: &str = "tenants/{tenant_id}/,infra/";

/// `--export-file-root DATA_DIR/../exports` (also in operator mode, where it has no default) and
/// the test credentials prefixes, unless the test sets them itself.
fn default_export_confinement(data_dir: &Path, extra_args: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    if !extra_args.contains(&"--export-file-root") {
        let root = data_dir
            .parent()
            .expect("data dir has a parent directory")
            .join(FILE_ROOT_NAME);
        args.push("--export-file-root".into());
        args.push(root.into_os_string());
    }
    if !extra_args.contains(&"--export-credentials-path-prefixes") {
        args.push("--export-credentials-path-prefixes".into());
        args.push(TEST_CREDENTIALS_PREFIXES.into());
    }
    args
}

pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    const MARKER: &str = "listening on http://";
    let start = line.find(MARKER)? + MARKER.len();
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// The bootstrap token of `data_dir` as `scaivault-audit token bootstrap --data-dir` prints
/// it (the server never prints it); `None` when the directory has none.
pub fn read_bootstrap_token(data_dir: &Path) -> Option<String> {
    let output = Command::new(BINARY)
        .args(["token", "bootstrap", "--data-dir"])
        .arg(data_dir)
        .env_remove("SCAIVAULT_AUDIT_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run scaivault-audit token bootstrap");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        assert!(
            stdout.starts_with("skt_") && !stdout.contains(char::is_whitespace),
            "token bootstrap printed {stdout:?}"
        );
        return Some(stdout);
    }
    assert!(
        stderr.contains("no bootstrap token"),
        "token bootstrap failed: {} {stderr}",
        output.status
    );
    None
}

/// Starts a server whose auth is `tokens` (written to `<root>/<file_name>`), plus `extra_args`;
/// queries limited to `queries_per_minute` per identity, or unlimited with `None`.
pub async fn start_with_tokens(
    dir: &TestDir,
    file_name: &str,
    tokens: &[&StaticToken],
    queries_per_minute: Option<u32>,
    extra_args: &[&str],
) -> Server {
    let tokens_file = dir.root().join(file_name);
    write_tokens_file(&tokens_file, tokens);
    let tokens_arg = tokens_file.to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["--tokens-file", tokens_arg.as_str()];
    args.extend_from_slice(extra_args);
    match queries_per_minute {
        Some(limit) => Server::start_rate_limited(&dir.data_dir(), limit, &args).await,
        None => Server::start(&dir.data_dir(), &args).await,
    }
}

impl Server {
    /// Like [`Server::start`], but with the query rate limit at `queries_per_minute` (the
    /// other starters switch it off) instead of off.
    pub async fn start_rate_limited(
        data_dir: &Path,
        queries_per_minute: u32,
        extra_args: &[&str],
    ) -> Server {
        let mut server =
            Server::spawn_with_limit(&[], data_dir, queries_per_minute, extra_args, &[]).await;
        server.wait_ready().await;
        server
    }
}

// ---------------------------------------------------------------------------------------------
// WAL files
// ---------------------------------------------------------------------------------------------

/// The newest WAL segment: the `*.wal` file in `<data_dir>/wal/` with the largest number in
/// its name (ties and unnumbered names by modification time, then name).
pub fn newest_wal_segment(data_dir: &Path) -> PathBuf {
    let wal_dir = data_dir.join("wal");
    let entries = fs::read_dir(&wal_dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", wal_dir.display()));
    let mut segments: Vec<(u128, std::time::SystemTime, PathBuf)> = entries
        .map(|entry| entry.expect("read WAL dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .map(|path| {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let digits: String = stem
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            let number = digits.parse::<u128>().unwrap_or(0);
            let modified = fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .expect("stat WAL");
            (number, modified, path)
        })
        .collect();
    segments.sort();
    let (_, _, newest) = segments
        .pop()
        .unwrap_or_else(|| panic!("no *.wal files in {}", wal_dir.display()));
    newest
}

pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|error| panic!("stat {}: {error}", path.display()))
        .len()
}

/// Cuts the last `bytes` bytes off `path`, as a write torn by a crash would leave it.
pub fn cut_tail(path: &Path, bytes: u64) {
    let len = file_len(path);
    assert!(len > bytes, "{} has only {len} bytes", path.display());
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open WAL segment");
    file.set_len(len - bytes).expect("truncate WAL segment");
    file.sync_all().expect("sync WAL segment");
}

/// Appends `garbage` to `path`.
pub fn append_bytes(path: &Path, garbage: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open WAL segment");
    file.write_all(garbage).expect("append to WAL segment");
    file.sync_all().expect("sync WAL segment");
}

/// Runs the binary with `args` (no inherited `SCAIVAULT_*`/`SCAIKEY_*` settings) and waits,
/// bounded by [`STARTUP_DEADLINE`], for its exit.
pub fn run_to_exit(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(BINARY);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("SCAIVAULT_") || name.starts_with("SCAIKEY_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within {STARTUP_DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
