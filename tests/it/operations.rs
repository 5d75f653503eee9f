//! Running the binary as an operator does (issue 15): exit statuses, the `healthcheck`
//! subcommand, the access log and its request span, JSON-only output with `LOG_FORMAT=json`,
//! no colour codes off a terminal, and the README's quick start naming only commands that exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &str = "environments/production/very-secret-db";

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).stdin(Stdio::null());
    for name in [
        "LOG_FORMAT",
        "LOG_LEVEL",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "BIND_ADDRESS",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("run scaivault-audit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

fn port_of(server: &Server) -> String {
    server
        .base_url()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned()
}

#[test]
fn usage_errors_exit_2_and_runtime_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Usage: the command line does not parse, a setting is invalid, options do not go together.
    for args in [
        vec!["serve", "--no-such-flag"],
        vec!["no-such-command"],
        vec![
            "check-config",
            "--data-dir",
            data,
            "--listen",
            "not-an-address",
        ],
        vec![
            "token",
            "new",
            "--name",
            "x",
            "--identity-id",
            "sa:x",
            "--scopes",
            "audit:read",
        ],
    ] {
        let output = run_binary(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
    }
    // Runtime: the port is taken; the data directory has no bootstrap token; nobody listens.
    let empty = dir.path().join("never-served").display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    for args in [
        vec!["serve", "--data-dir", data, "--listen", address.as_str()],
        vec!["token", "bootstrap", "--data-dir", empty.as_str()],
        vec!["healthcheck", "--listen", closed.as_str(), "--timeout", "2"],
    ] {
        let output = run_binary(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(
            text(&output.stderr).contains("error: "),
            "{}",
            describe(&output)
        );
    }
    // With LOG_FORMAT=json even the final error is a JSON line.
    let output = run_binary(
        &["serve", "--data-dir", data, "--listen", address.as_str()],
        &[("LOG_FORMAT", "json")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    for line in text(&output.stderr).lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    assert!(text(&output.stderr).contains("failed to listen"));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_asks_the_running_server_and_fails_once_it_is_gone() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir.data_dir(), &[]).await;
    let listen = format!("127.0.0.1:{}", port_of(&server));
    for extra in [&[][..], &["--ready"][..]] {
        let mut args = vec!["healthcheck", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let output = run_binary(&args, &[]);
        assert!(output.status.success(), "{extra:?}: {}", describe(&output));
        assert!(
            text(&output.stdout).contains(": ok"),
            "{}",
            describe(&output)
        );
    }
    // The unspecified address of a `--listen 0.0.0.0:PORT` is probed on loopback.
    let any = format!("0.0.0.0:{}", port_of(&server));
    let output = run_binary(&["healthcheck", "--listen", any.as_str()], &[]);
    assert!(output.status.success(), "{}", describe(&output));
    // Once the server is gone the probe fails.
    server.terminate().await;
    let output = run_binary(
        &["healthcheck", "--listen", listen.as_str(), "--timeout", "2"],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
}

/// The access lines of a server's log (target `access`), parsed, but for the harness's
/// readiness polls.
fn access_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "access" && line["route"] != "/v1/health/ready")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_all_json_with_one_access_line_per_request_in_its_span() {
    let dir = TestDir::new();
    let reader = StaticToken::new("logreader", &["audit:read", "audit:write"], Some(TENANT));
    let tokens = dir.root().join("tokens.toml");
    write_tokens_file(&tokens, &[&reader]);
    let tokens_arg = tokens.to_str().unwrap().to_owned();
    let mut server = Server::start_with_env(
        &dir.data_dir(),
        &["--tokens-file", tokens_arg.as_str()],
        &[("LOG_FORMAT", OsStr::new("json"))],
    )
    .await;
    let client = client();
    let base = server.base_url().to_owned();
    let trail = format!("{base}/v1/audit/secrets/{SECRET}");
    let reply = send(
        client
            .get(&trail)
            .bearer_auth(&reader.secret)
            .header("X-Request-ID", "req_access_log_test"),
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    let refused = send(
        client
            .get(&trail)
            .header("X-Request-ID", "req_refused_test"),
    )
    .await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    let health = send(client.get(format!("{base}/v1/health"))).await;
    assert_eq!(health.0, StatusCode::OK);
    assert!(server.terminate().await.success());

    let stdout = std::fs::read_to_string(server.stdout_log()).unwrap();
    let stderr = std::fs::read_to_string(server.stderr_log()).unwrap();
    let mut listening = 0;
    for line in stdout.lines().chain(stderr.lines()) {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("a line that is not JSON ({error}): {line}"));
        assert!(
            parsed["timestamp"].is_string() && parsed["level"].is_string(),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "colour codes in {line}");
        if parsed["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("listening on http://"))
        {
            listening += 1;
        }
    }
    assert_eq!(listening, 1, "the announcement is one JSON line:\n{stdout}");

    // One access line per request, with the route template, never the secret path.
    let access = access_lines(&stderr);
    assert_eq!(access.len(), 3, "{access:#?}");
    let by_id = |id: &str| {
        access
            .iter()
            .find(|line| line["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line of {id}: {access:#?}"))
    };
    let ok = by_id("req_access_log_test");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["route"], "/v1/audit/secrets/{path}");
    assert_eq!(ok["status"], 200);
    assert!(
        ok["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{ok}"
    );
    assert_eq!(ok["identity"], "sa:logreader");
    assert_eq!(ok["tenant"], TENANT);
    // The line sits in the request's span, which carries the id and the caller.
    assert_eq!(ok["span"]["request_id"], "req_access_log_test", "{ok}");
    assert_eq!(ok["span"]["identity"], "sa:logreader", "{ok}");
    let refused = by_id("req_refused_test");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["identity"], "-");
    let health = access
        .iter()
        .find(|line| line["route"] == "/v1/health")
        .expect("the health request's line");
    assert!(health["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(
        !stderr.contains(SECRET),
        "a secret path in the log:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = TestDir::new();
    let mut server = Server::start(&dir.data_dir(), &[]).await;
    let reply = send(client().get(format!("{}/v1/health", server.base_url()))).await;
    assert_eq!(reply.0, StatusCode::OK);
    assert!(server.terminate().await.success());
    let stderr = std::fs::read_to_string(server.stderr_log()).unwrap();
    assert!(
        stderr.contains("route=\"/v1/health\""),
        "no access line:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{stderr}"
    );
}

/// The README's quick start: after `cargo run --release -- serve`, the commands it runs by
/// name are found (it puts the binary cargo built on the PATH first) and exist.
#[test]
fn the_readme_quick_start_runs_commands_that_exist() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let try_it = readme
        .split("## Try it")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Try it section");
    let path_line = try_it
        .lines()
        .position(|line| line.contains("export PATH=\"$PWD/target/release:$PATH\""))
        .expect("the quick start puts target/release on the PATH");
    let mut invocations = 0;
    for (number, line) in try_it.lines().enumerate() {
        let Some(start) = line.find("scaivault-audit ") else {
            continue;
        };
        if line.trim_start().starts_with('#') || line[..start].ends_with('/') {
            continue;
        }
        assert!(number > path_line, "used before the PATH line: {line}");
        // The subcommand (and its sub-subcommand) must exist: `--help` of it succeeds.
        let words: Vec<&str> = line[start + "scaivault-audit ".len()..]
            .split_whitespace()
            .take_while(|word| !word.starts_with('-') && !word.contains(['>', '|', ')', '$']))
            .collect();
        let mut args = words.clone();
        args.push("--help");
        let output = run_binary(&args, &[]);
        assert!(output.status.success(), "{line}: {}", describe(&output));
        invocations += 1;
    }
    assert!(invocations >= 2, "the quick start runs the binary by name");
}
