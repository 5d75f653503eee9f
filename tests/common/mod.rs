//! Black-box harness: runs the real `scaivault-audit` binary and talks to it over HTTP.
//!
//! Every wait is bounded. A failing test prints the logs of every server it started (see
//! [`TestDir`]) and keeps its temporary directory for inspection.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod export;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const BINARY: &str = env!("CARGO_BIN_EXE_scaivault-audit");

/// Tenant used by the event builders.
pub const TENANT: &str = "tnt_acme";
pub const OTHER_TENANT: &str = "tnt_other";

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// SPEC §3.6: events are visible to queries within 1 second of the acknowledgement.
pub const VISIBILITY_DEADLINE: Duration = Duration::from_secs(1);
/// After a restart, replayed events must become visible; the bound is looser than the
/// per-ack visibility contract because the property under test is durability.
pub const RESTART_VISIBILITY_DEADLINE: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const MAX_PAGES: usize = 100_000;
const LOG_TAIL_LINES: usize = 80;

/// Index commits every 200 ms: restarts find most events already committed.
pub const FAST_COMMITS: &[&str] = &["--commit-interval-ms", "200"];
/// Index commits (practically) never: restarts must rebuild everything from the WAL.
pub const NO_COMMITS: &[&str] = &[
    "--commit-interval-ms",
    "3600000",
    "--commit-max-docs",
    "100000000",
];

/// The SPEC §2 fields in §2 order (the tests' own copy of the contract).
pub const API_FIELDS: [&str; 12] = [
    "id",
    "timestamp",
    "action",
    "secret_path",
    "identity_type",
    "identity_id",
    "source_ip",
    "user_agent",
    "success",
    "duration_ms",
    "request_id",
    "extra_data",
];

pub const ACTIONS: &[&str] = &[
    "read",
    "write",
    "delete",
    "list",
    "rotate",
    "policy_create",
    "policy_update",
    "policy_delete",
    "policy_bind",
    "policy_unbind",
    "pki_issue",
    "pki_sign",
    "pki_revoke",
    "pki_ca_create",
    "dynamic_generate",
    "dynamic_renew",
    "dynamic_revoke",
    "webhook_delivery",
    "subscription_event",
    "federation_sync",
    "identity_sync",
    "export_created",
];

/// Status, headers and JSON body of a response (a non-JSON body becomes a JSON string).
pub type Reply = (StatusCode, HeaderMap, Value);

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

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_DEADLINE)
        .build()
        .expect("build HTTP client")
}

/// Sends a request; transport errors and timeouts become `Err`.
pub async fn try_send(request: RequestBuilder) -> Result<Reply, String> {
    let response = tokio::time::timeout(REQUEST_DEADLINE, request.send())
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|error| format!("request failed: {}", error_chain(&error)))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(REQUEST_DEADLINE, response.bytes())
        .await
        .map_err(|_| "reading response body timed out".to_owned())?
        .map_err(|error| format!("reading response body failed: {}", error_chain(&error)))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, headers, body))
}

/// An error and all its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Sends a request that must get a response.
pub async fn send(request: RequestBuilder) -> Reply {
    try_send(request)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

pub fn events_url(base: &str) -> String {
    format!("{base}/v1/audit/events")
}

pub async fn post_events(client: &Client, base: &str, token: &str, body: Value) -> Reply {
    send(client.post(events_url(base)).bearer_auth(token).json(&body)).await
}

pub async fn try_post_events(
    client: &Client,
    base: &str,
    token: &str,
    body: &Value,
) -> Result<Reply, String> {
    try_send(client.post(events_url(base)).bearer_auth(token).json(body)).await
}

/// POSTs raw bytes to the ingest endpoint with the given content type.
pub async fn post_raw(
    client: &Client,
    base: &str,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let request = client
        .post(events_url(base))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body);
    send(request).await
}

/// Posts `events` and asserts a 200 whose ids match the batch; returns the ids.
pub async fn ingest_ok(client: &Client, base: &str, token: &str, events: &[Value]) -> Vec<String> {
    let reply = post_events(client, base, token, json!({ "events": events })).await;
    assert_eq!(reply.0, StatusCode::OK, "ingest failed: {}", reply.2);
    assert_eq!(
        reply.2["accepted"],
        json!(events.len()),
        "accepted count: {}",
        reply.2
    );
    let ids = reply_ids(&reply.2);
    assert_eq!(ids.len(), events.len(), "one id per event: {}", reply.2);
    for (event, id) in events.iter().zip(&ids) {
        if let Some(sent) = event["id"].as_str() {
            assert_eq!(id, sent, "producer id returned as sent");
        }
    }
    ids
}

/// The `ids` array of an ingest response.
pub fn reply_ids(body: &Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("response without `ids` array: {body}"))
        .iter()
        .map(|id| {
            id.as_str()
                .unwrap_or_else(|| panic!("non-string id in {body}"))
                .to_owned()
        })
        .collect()
}

/// `GET /v1/audit/logs?QUERY` with an optional `X-Tenant-ID`.
pub async fn get_logs(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
    query: &str,
) -> Reply {
    let mut request = client
        .get(format!("{base}/v1/audit/logs?{query}"))
        .bearer_auth(token);
    if let Some(tenant) = tenant {
        request = request.header("X-Tenant-ID", tenant);
    }
    send(request).await
}

/// Every log of `tenant`, walking all pages (for partner-admin tokens such as the bootstrap one).
pub async fn fetch_all_logs(client: &Client, base: &str, token: &str, tenant: &str) -> Vec<Value> {
    fetch_all_logs_as(client, base, token, Some(tenant)).await
}

/// Every log visible to `token`, sending `X-Tenant-ID` only when `tenant` is given.
pub async fn fetch_all_logs_as(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
) -> Vec<Value> {
    let mut logs = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let query = match &cursor {
            Some(cursor) => format!("limit=1000&cursor={}", percent_encode(cursor)),
            None => "limit=1000".to_owned(),
        };
        let (status, _, page) = get_logs(client, base, token, tenant, &query).await;
        assert_eq!(status, StatusCode::OK, "GET /v1/audit/logs?{query}: {page}");
        let page_logs = page["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("no logs: {page}"));
        logs.extend(page_logs.iter().cloned());
        if page["has_more"] != json!(true) {
            return logs;
        }
        let next = page["cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("has_more without cursor"));
        cursor = Some(next.to_owned());
    }
    panic!("more than {MAX_PAGES} pages of logs");
}

/// Polls until every id in `ids` is visible to `tenant`, failing after `deadline`.
pub async fn wait_until_visible(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
    ids: &[String],
    deadline: Duration,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let logs = fetch_all_logs_as(client, base, token, tenant).await;
        let visible: HashSet<&str> = logs.iter().filter_map(|log| log["id"].as_str()).collect();
        let missing = ids
            .iter()
            .filter(|id| !visible.contains(id.as_str()))
            .count();
        if missing == 0 {
            return logs;
        }
        assert!(
            started.elapsed() < deadline,
            "{missing} of {} acknowledged events not visible after {deadline:?}",
            ids.len()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How often each id occurs in `logs`.
pub fn id_counts(logs: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for log in logs {
        let id = log["id"]
            .as_str()
            .unwrap_or_else(|| panic!("log without id: {log}"));
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Asserts no id occurs twice and every id in `expected` occurs.
pub fn assert_each_present_once<'a>(
    logs: &[Value],
    expected: impl IntoIterator<Item = &'a String>,
) {
    let counts = id_counts(logs);
    let duplicated: Vec<_> = counts
        .iter()
        .filter(|(_, count)| **count > 1)
        .take(10)
        .collect();
    assert!(
        duplicated.is_empty(),
        "ids stored more than once (first 10): {duplicated:?}"
    );
    let missing: Vec<&String> = expected
        .into_iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids missing, first 10: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

pub fn assert_none_present(logs: &[Value], absent: &[String]) {
    let counts = id_counts(logs);
    let present: Vec<&String> = absent
        .iter()
        .filter(|id| counts.contains_key(*id))
        .collect();
    assert!(
        present.is_empty(),
        "ids that must not be stored are present: {present:?}"
    );
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub fn request_id_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
}

/// Asserts the status, `error.code`, a message, and `error.request_id` == `X-Request-ID`.
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    let (actual_status, headers, body) = reply;
    assert_eq!(*actual_status, status, "status; body: {body}");
    assert_eq!(
        body["error"]["code"],
        json!(code),
        "error code; body: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "error.message missing: {body}"
    );
    let header = request_id_header(headers).unwrap_or_else(|| panic!("no X-Request-ID header"));
    assert!(!header.is_empty(), "empty X-Request-ID header");
    assert_eq!(
        body["error"]["request_id"],
        json!(header),
        "error.request_id vs header: {body}"
    );
}

/// Asserts a 422 `validation_error` naming `field` in `details.fields`, and no field of an
/// event other than the one `field` belongs to.
pub fn assert_validation_error(reply: &Reply, field: &str) {
    assert_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    let fields = reply.2["error"]["details"]["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("422 without details.fields: {}", reply.2));
    assert!(
        fields.contains_key(field),
        "details.fields lacks `{field}`: {}",
        reply.2
    );
    let event_prefix = field.find("].").map(|end| &field[..end + 2]);
    if let Some(prefix) = event_prefix {
        for key in fields.keys() {
            assert!(
                key.starts_with(prefix),
                "unexpected field `{key}` besides `{field}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// A valid event of [`TENANT`], distinct per `i`.
pub fn event(i: u64) -> Value {
    event_for_tenant(i, Some(TENANT))
}

/// A valid event; `tenant: None` leaves `tenant_id` out (for tenant-bound tokens).
pub fn event_for_tenant(i: u64, tenant: Option<&str>) -> Value {
    let index = usize::try_from(i).expect("index fits usize");
    let mut event = json!({
        "timestamp": timestamp_for(i),
        "action": ACTIONS[index % ACTIONS.len()],
        "secret_path": format!("environments/production/app-{}/db-credentials", i % 7),
        "identity_type": "service_account",
        "identity_id": format!("sa:service-{}", i % 5),
        "source_ip": format!("10.0.{}.{}", (i / 250) % 250, i % 250 + 1),
        "user_agent": "scaivault-it/1.0",
        "success": !i.is_multiple_of(3),
        "duration_ms": i % 100,
        "request_id": format!("req_{i}"),
        "extra_data": { "sequence": i },
    });
    if let Some(tenant) = tenant {
        event["tenant_id"] = json!(tenant);
    }
    event
}

/// `event` carrying the producer id `id`.
pub fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

/// A fresh producer id shaped like the service's own: `log_` + a 26-character ULID.
pub fn producer_id() -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut id = String::from("log_0");
    for _ in 0..25 {
        id.push(char::from(CROCKFORD[fastrand::usize(..CROCKFORD.len())]));
    }
    id
}

/// `count` valid events of [`TENANT`] with fresh producer ids, numbered from `first`.
pub fn events_with_producer_ids(first: u64, count: u64) -> Vec<Value> {
    (first..first + count)
        .map(|i| with_id(event(i), &producer_id()))
        .collect()
}

pub fn ids_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            event["id"]
                .as_str()
                .expect("event has a producer id")
                .to_owned()
        })
        .collect()
}

/// `2026-03-01T00:00:00Z` plus `i` seconds and `i % 1_000_000` microseconds, in the
/// normalised output form (UTC, `Z`, 6 fractional digits).
pub fn timestamp_for(i: u64) -> String {
    let base = jiff::Timestamp::from_second(1_772_323_200).expect("valid base timestamp");
    let seconds = i64::try_from(i).expect("index fits i64");
    let at = base
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .expect("in range");
    format!("{}.{:06}Z", at.strftime("%Y-%m-%dT%H:%M:%S"), i % 1_000_000)
}

// ---------------------------------------------------------------------------------------------
// Static tokens and WAL files
// ---------------------------------------------------------------------------------------------

pub struct StaticToken {
    pub name: &'static str,
    pub secret: String,
    pub identity_id: &'static str,
    pub scopes: &'static [&'static str],
    /// `None`: `all_tenants = true`.
    pub tenant_id: Option<&'static str>,
}

impl StaticToken {
    pub fn new(
        name: &'static str,
        scopes: &'static [&'static str],
        tenant_id: Option<&'static str>,
    ) -> StaticToken {
        StaticToken {
            name,
            secret: random_token(),
            identity_id: name,
            scopes,
            tenant_id,
        }
    }
}

pub fn random_token() -> String {
    let bytes: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
    format!("skt_{}", hex::encode(bytes))
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes the `--tokens-file` TOML for `tokens`.
pub fn write_tokens_file(path: &Path, tokens: &[&StaticToken]) {
    let mut toml = String::new();
    for token in tokens {
        let scopes: Vec<String> = token
            .scopes
            .iter()
            .map(|scope| format!("\"{scope}\""))
            .collect();
        toml.push_str("[[tokens]]\n");
        toml.push_str(&format!("name = \"{}\"\n", token.name));
        toml.push_str(&format!("sha256 = \"{}\"\n", sha256_hex(&token.secret)));
        toml.push_str(&format!("identity_id = \"sa:{}\"\n", token.identity_id));
        toml.push_str(&format!("scopes = [{}]\n", scopes.join(", ")));
        match token.tenant_id {
            Some(tenant) => toml.push_str(&format!("tenant_id = \"{tenant}\"\n\n")),
            None => toml.push_str("all_tenants = true\n\n"),
        }
    }
    fs::write(path, toml).expect("write tokens file");
}

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

// ---------------------------------------------------------------------------------------------
// Query helpers (tests/query_api.rs, tests/openapi.rs)
// ---------------------------------------------------------------------------------------------

/// Runs `future`, panicking when it takes longer than `deadline` (the servers it started are
/// dropped, hence killed; declare the [`TestDir`] outside so that it reports their logs).
pub async fn within<F: std::future::Future>(
    deadline: Duration,
    what: &str,
    future: F,
) -> F::Output {
    match tokio::time::timeout(deadline, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {deadline:?}"),
    }
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

/// `GET {base}{path_and_query}` with an optional bearer token and `X-Tenant-ID`.
pub async fn get_as(
    client: &Client,
    base: &str,
    path_and_query: &str,
    token: Option<&str>,
    tenant: Option<&str>,
) -> Reply {
    let mut request = client.get(format!("{base}{path_and_query}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        request = request.header("X-Tenant-ID", tenant);
    }
    send(request).await
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The RFC 3339 output form (UTC, 6 fractional digits) of now minus `seconds_ago` seconds and
/// `micros` microseconds: recent enough for the 30-day trail summaries.
pub fn recent_timestamp(seconds_ago: u64, micros: u64) -> String {
    let now = jiff::Timestamp::now().as_second();
    let seconds = now - i64::try_from(seconds_ago).expect("fits i64") - 1;
    let at = jiff::Timestamp::from_second(seconds).expect("valid timestamp");
    format!(
        "{}.{:06}Z",
        at.strftime("%Y-%m-%dT%H:%M:%S"),
        micros % 1_000_000
    )
}

/// A header as an unsigned integer (`None` when absent or not a number).
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Ingests bulky batches into a server started under `prlimit --fsize=N` until it refuses
/// one; returns that refusal (the server must refuse within `max_batches`).
pub async fn ingest_until_refused(
    client: &Client,
    server: &Server,
    token: &str,
    max_batches: u64,
) -> Reply {
    let padding = "p".repeat(1024);
    for batch in 0..max_batches {
        let events: Vec<Value> = events_with_producer_ids(batch * 1000, 200)
            .into_iter()
            .map(|mut event| {
                event["extra_data"] = json!({ "padding": padding });
                event
            })
            .collect();
        let reply = post_events(
            client,
            server.base_url(),
            token,
            json!({ "events": events }),
        )
        .await;
        if reply.0 != StatusCode::OK {
            return reply;
        }
    }
    panic!("no refusal after {max_batches} bulky batches");
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
