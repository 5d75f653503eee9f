//! HTTPS: `--tls-cert-file` / `--tls-key-file` (SPEC §6 `TLS_CERT_FILE` / `TLS_KEY_FILE`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};

const BINARY: &str = env!("CARGO_BIN_EXE_scaivault-audit");

/// A test CA and a server certificate for 127.0.0.1 signed by it (rustls refuses a
/// self-signed CA certificate as the server's own).
fn write_certificates(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    ca.pem()
}

fn start(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("TLS_CERT_FILE")
        .env_remove("TLS_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a listening line").unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let address = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    (child, address)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certificates(dir.path());
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let (mut child, address) = start(
        dir.path(),
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    assert!(address.starts_with("https://127.0.0.1:"), "{address}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        match client.get(format!("{address}/v1/health")).send().await {
            Ok(response) => break response,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no HTTPS answer: {error}"),
        }
    };
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = address.replace("https://", "http://");
    let refused = reqwest::Client::new()
        .get(format!("{plain}/v1/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "plain HTTP must not be served on the TLS port"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn tls_settings_are_validated_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let only_cert = Command::new(BINARY)
        .args(["check-config", "--tls-cert-file", "/nonexistent.pem"])
        .env_remove("TLS_KEY_FILE")
        .output()
        .unwrap();
    assert!(!only_cert.status.success());
    assert!(String::from_utf8_lossy(&only_cert.stderr).contains("set both or neither"));
    let missing = Command::new(BINARY)
        .args([
            "check-config",
            "--tls-cert-file",
            "/nonexistent.pem",
            "--tls-key-file",
            "/nonexistent.key",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.pem"));
    write_certificates(dir.path());
    let valid = Command::new(BINARY)
        .args(["check-config", "--tls-cert-file"])
        .arg(dir.path().join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.path().join("server.key"))
        .output()
        .unwrap();
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    assert!(String::from_utf8_lossy(&valid.stdout).contains("tls_cert_file"));
}
