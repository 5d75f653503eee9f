//! `scaivault-audit verify LOCATION` as a user runs it: the real server writes a signed export
//! to a `file` destination, the real binary verifies it (exit status and messages), and an
//! independent Python script (tests/fixtures/verify_export.py, `cryptography`'s Ed25519)
//! agrees with it. The object-store variants run against the emulators (scripts/emulators.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::export::*;
use crate::harness::*;
use serde_json::{Value, json};

/// Events with floats and escapes in `extra_data`: the canonical JSON must agree across
/// languages.
fn chained_event(i: u64) -> Value {
    let mut event = event(i);
    event["extra_data"] =
        json!({"ratio": 0.1, "tiny": 2.5e-7, "big": 1e21, "note": "é \"q\"\n", "n": i});
    event
}

/// A server, `count` ingested events, and a completed export to `prefix` of bucket `out`.
struct Exported {
    dir: TestDir,
    _server: Server,
    out: PathBuf,
    status: Value,
}

async fn export(count: u64, prefix: &str, extra: Value) -> Exported {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let events: Vec<Value> = (0..count).map(chained_event).collect();
    ingest_ok(&client, base, token, &events).await;
    let mut body = json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
        "max_records_per_file": 40,
        "destination": {"type": "file", "bucket": "out", "prefix": prefix},
    });
    for (name, value) in extra.as_object().unwrap() {
        body[name] = value.clone();
    }
    let id = start_export(&client, base, token, &body).await;
    let status = wait_finished(&client, base, token, &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    Exported {
        dir,
        _server: server,
        out,
        status,
    }
}

impl Exported {
    fn jwks(&self) -> PathBuf {
        jwks_file(&self.dir)
    }
}

/// The service's public keys as a JWKS file (from its key ring in the data directory).
fn jwks_file(dir: &TestDir) -> PathBuf {
    let ring: Value = serde_json::from_slice(
        &std::fs::read(dir.data_dir().join("integrity/keys/keyring.json")).unwrap(),
    )
    .unwrap();
    let keys: Vec<Value> = ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| json!({"kty": "OKP", "crv": "Ed25519", "x": key["x"], "kid": key["kid"]}))
        .collect();
    let path = dir.root().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&json!({"keys": keys})).unwrap()).unwrap();
    path
}

fn verify(location: &Path, keys: &Path, json: bool) -> Output {
    let mut command = Command::new(BINARY);
    command
        .arg("verify")
        .arg(location)
        .arg("--public-key")
        .arg(keys);
    if json {
        command.arg("--json");
    }
    command.output().expect("run scaivault-audit verify")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_verifies_an_export_and_reports_a_changed_record_with_exit_status_1() {
    let exported = export(100, "acme/2026-01/", json!({})).await;
    let keys = exported.jwks();
    let location = exported.out.join("acme/2026-01");
    let good = verify(&location, &keys, false);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}{}",
        stdout(&good),
        String::from_utf8_lossy(&good.stderr)
    );
    let text = stdout(&good);
    assert!(text.contains("OK: the export is intact"), "{text}");
    assert!(text.contains("chain: complete: 1..="), "{text}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(location.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"], exported.status["files"]);
    assert_eq!(manifest["signature"]["alg"], "EdDSA");
    assert_eq!(
        manifest["checkpoint"]["event_count"],
        manifest["chain"]["chain_seq"]
    );
    assert!(exported.status["files"][0]["first_event"]["id"].is_string());

    let part = location.join("part-0002.jsonl");
    let text = std::fs::read_to_string(&part).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let altered = lines[6].replacen("\"success\":true", "\"success\":false", 1);
    assert_ne!(altered, lines[6]);
    lines[6] = &altered;
    std::fs::write(&part, format!("{}\n", lines.join("\n"))).unwrap();
    let bad = verify(&location, &keys, false);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    let text = stdout(&bad);
    assert!(
        text.contains("part-0002.jsonl: SHA-256 differs from the manifest (file altered)"),
        "{text}"
    );
    assert!(
        text.contains(
            "record 7 of part-0002.jsonl: chain_hash does not follow from the previous record"
        ),
        "{text}"
    );
    let json_report = verify(&location, &keys, true);
    assert_eq!(json_report.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json_report.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|problem| problem["file"] == "part-0002.jsonl" && problem["record"] == 7),
        "{report}"
    );
    assert_eq!(
        report["checked"]["files"],
        json!(exported.status["files"].as_array().unwrap().len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_a_missing_location_fail_plainly() {
    let exported = export(10, "k/", json!({})).await;
    let other = exported.dir.root().join("other.json");
    std::fs::write(
        &other,
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"other"}"#,
    )
    .unwrap();
    let output = verify(&exported.out.join("k"), &other, false);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("which is not among the trusted public keys"));
    let output = verify(&exported.out.join("nothing-here"), &exported.jwks(), false);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("the manifest is missing"),
        "{}",
        stdout(&output)
    );
}

/// The Python interpreter of scripts/emulators.sh (with `cryptography`).
fn python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/emulators.sh install",
        path.display()
    );
    path
}

fn python_verify(location: &Path, keys: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verify_export.py");
    Command::new(python())
        .arg(script)
        .arg(location)
        .arg(keys)
        .output()
        .expect("run the Python verifier")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh (the Python venv with cryptography)"]
async fn an_independent_python_verifier_agrees_with_the_service() {
    let exported = export(100, "py/", json!({"compression": "gzip"})).await;
    let keys = exported.jwks();
    let location = exported.out.join("py");
    let python_good = python_verify(&location, &keys);
    assert_eq!(
        python_good.status.code(),
        Some(0),
        "{}{}",
        stdout(&python_good),
        String::from_utf8_lossy(&python_good.stderr)
    );
    assert_eq!(verify(&location, &keys, false).status.code(), Some(0));

    let manifest_path = location.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["to"] = json!("2099-01-01T00:00:00.000000Z");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let python_bad = python_verify(&location, &keys);
    assert_eq!(python_bad.status.code(), Some(1), "{}", stdout(&python_bad));
    assert!(
        stdout(&python_bad).contains("signature"),
        "{}",
        stdout(&python_bad)
    );
    assert_eq!(verify(&location, &keys, false).status.code(), Some(1));
}

fn verify_remote(location: &str, credentials: &Path, keys: &Path) -> Output {
    Command::new(BINARY)
        .args(["verify", location, "--credentials-file"])
        .arg(credentials)
        .arg("--public-key")
        .arg(keys)
        .output()
        .expect("run scaivault-audit verify")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn exports_verify_in_s3_gcs_and_azure_and_an_altered_s3_part_fails() {
    const VAULT_TOKEN: &str = "svt_vault_token_for_verify_tests";
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let s3 = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let gcs = emulator_env("SCAIVAULT_TEST_GCS_ENDPOINT");
    let azure = emulator_env("SCAIVAULT_TEST_AZURE_ENDPOINT");
    let account = emulator_env("SCAIVAULT_TEST_AZURE_ACCOUNT");
    let azure_key = emulator_env("SCAIVAULT_TEST_AZURE_KEY");
    let dir = TestDir::new();
    let vault = FakeScaiVault::start(VAULT_TOKEN).await;
    let token_file = dir.root().join("scaivault-token");
    std::fs::write(&token_file, VAULT_TOKEN).unwrap();
    let token_path = token_file.display().to_string();
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--commit-interval-ms",
            "200",
            "--scaivault-url",
            &vault.url,
            "--scaivault-token-file",
            &token_path,
            "--export-allow-private-endpoints",
        ],
    )
    .await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let events: Vec<Value> = (0..120).map(chained_event).collect();
    ingest_ok(&client, base, token, &events).await;
    let run = ulid::Ulid::generate().to_string().to_lowercase();
    let secrets = [
        (
            "s3",
            json!({"access_key_id": "AKIAVERIFY", "secret_access_key": "secret",
                   "region": "us-east-1", "endpoint_url": s3}),
            format!("s3://{bucket}/verify-{run}/s3/"),
        ),
        (
            "gcs",
            json!({"service_account_json": gcs_service_account(), "endpoint_url": gcs}),
            format!("gs://{bucket}/verify-{run}/gcs/"),
        ),
        (
            "azure_blob",
            json!({"account_name": account, "account_key": azure_key, "endpoint_url": azure}),
            format!("azure://{account}/{bucket}/verify-{run}/azure/"),
        ),
    ];
    let keys = jwks_file(&dir);
    for (kind, secret, location) in &secrets {
        let path = format!("infra/{kind}/verify");
        vault.put(&path, secret.clone());
        let body = json!({
            "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
            "max_records_per_file": 50,
            "destination": {"type": kind, "bucket": bucket,
                            "prefix": format!("verify-{run}/{}/", kind.trim_end_matches("_blob")),
                            "credentials_path": path},
        });
        let id = start_export(&client, base, token, &body).await;
        let status = wait_finished(&client, base, token, &id).await;
        assert_eq!(status["status"], "completed", "{kind}: {status}");
        let credentials = dir.root().join(format!("{kind}.json"));
        std::fs::write(&credentials, serde_json::to_vec(secret).unwrap()).unwrap();
        let output = verify_remote(location, &credentials, &keys);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{kind}: {}{}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout(&output).contains("chain: complete"),
            "{kind}: {}",
            stdout(&output)
        );
    }
    let key = format!("verify-{run}/s3/part-0002.jsonl");
    let mut part = s3_get(&s3, &bucket, &key).await.unwrap();
    part.truncate(part.len() / 2);
    s3_client(&s3)
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(part.into())
        .send()
        .await
        .unwrap();
    let credentials = dir.root().join("s3.json");
    let output = verify_remote(&secrets[0].2, &credentials, &keys);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("part-0002.jsonl: SHA-256 differs from the manifest"),
        "{}",
        stdout(&output)
    );
}
