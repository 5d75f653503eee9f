//! `check-config` as a black box: the effective settings, each with its source (flag, env,
//! file or default), printed as TOML that parses; a bad setting exits 2 naming its key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_scaivault-audit");

/// `check-config` with a clean environment plus `env`.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BINARY)
        .env_clear()
        .envs(env.iter().copied())
        .arg("check-config")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_value_is_printed_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scaivault-audit.toml");
    std::fs::write(
        &config,
        "[storage]\ncommit_interval_ms = 250\n[operator]\nlease_name = \"from-file\"\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let output = check_config(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
            "--operator-lease-name",
            "from-flag",
        ],
        &[
            ("LOG_FORMAT", "json"),
            ("SCAIVAULT_AUDIT_MAX_BATCH_EVENTS", "500"),
            // A flag beats the environment.
            ("BIND_ADDRESS", "127.0.0.1:1"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "listen = \"127.0.0.1:9999\"  # flag --listen",
        "max_batch_events = 500  # env SCAIVAULT_AUDIT_MAX_BATCH_EVENTS",
        "format = \"json\"  # env LOG_FORMAT",
        "commit_interval_ms = 250  # file",
        "lease_name = \"from-flag\"  # flag --operator-lease-name",
        "max_body_bytes = 16777216  # default",
        "# tls_cert_file is not set (default)",
    ] {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line}\n{stdout}"
        );
    }
    assert!(stdout.contains(&format!("# Config file: {}", config.display())));
    // Still the file's shape: it parses as TOML with the effective values.
    let effective: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(
        effective["storage"]["commit_interval_ms"].as_integer(),
        Some(250)
    );
    assert_eq!(
        effective["server"]["listen"].as_str(),
        Some("127.0.0.1:9999")
    );
    // The lease name by environment variable, as the other operator settings.
    let by_env = check_config(
        &["--data-dir", data_dir.to_str().unwrap()],
        &[("SCAIVAULT_AUDIT_OPERATOR_LEASE_NAME", "from-env")],
    );
    assert!(by_env.status.success());
    assert!(
        String::from_utf8_lossy(&by_env.stdout)
            .contains("lease_name = \"from-env\"  # env SCAIVAULT_AUDIT_OPERATOR_LEASE_NAME")
    );
}

#[test]
fn passwords_in_urls_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "svt_x").unwrap();
    let output = check_config(
        &[
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--scaivault-url",
            "https://audit:hunter2@scaivault.example",
            "--scaivault-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("https://audit:REDACTED@scaivault.example"),
        "{stdout}"
    );
}

#[test]
fn an_invalid_setting_exits_2_naming_its_key() {
    let output = check_config(&["--operator-lease-name", "Not_A_Name"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid setting operator.lease_name"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
