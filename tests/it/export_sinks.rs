//! Exports to the real object-store APIs: S3 (moto), GCS (fake-gcs-server) and Azure Blob
//! (Azurite), with credentials from a local server that speaks ScaiVault's secrets API. Every
//! object is read back and compared byte for byte. Faults: the destination goes away and comes
//! back, the process is killed mid-export, wrong credentials, ScaiVault errors; no secret ever
//! appears in the logs. Hostile destinations: a 100 MB object at the prefix (refused, memory
//! flat), two exports racing for one prefix, a foreign multipart upload, private endpoints.
//!
//! The emulators listen on loopback, so these servers run with `--export-allow-private-endpoints`
//! except where the endpoint policy itself is under test.
//!
//! Needs `scripts/emulators.sh start` and `.tools/emulators.env` sourced: ignored by plain
//! `cargo test`, run with `--include-ignored` (scripts/test.sh does); without the emulators they
//! fail with a message saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::export::*;
use crate::harness::*;
use serde_json::{Value, json};

const VAULT_TOKEN: &str = "svt_vault_token_for_tests_7f3a";
const S3_SECRET: &str = "s3-secret-key-never-logged-91c2";
const PART_RECORDS: u64 = 10_000;
/// The emulators are on loopback.
const ALLOW_PRIVATE: &str = "--export-allow-private-endpoints";

struct Setup {
    dir: TestDir,
    vault: FakeScaiVault,
    server: Server,
}

impl Setup {
    async fn start() -> Setup {
        Setup::start_with(&[ALLOW_PRIVATE]).await
    }

    /// A server with `extra` flags instead of `--export-allow-private-endpoints`.
    async fn start_with(extra: &[&str]) -> Setup {
        let dir = TestDir::new();
        let vault = FakeScaiVault::start(VAULT_TOKEN).await;
        let server = start_server_with(&dir, &vault, extra).await;
        Setup { dir, vault, server }
    }

    fn base(&self) -> &str {
        self.server.base_url()
    }

    fn token(&self) -> &str {
        self.server.token()
    }

    /// Every log line the service wrote so far must be free of secret values.
    fn assert_logs_hold_no_secrets(&self, secrets: &[&str]) {
        for entry in std::fs::read_dir(self.dir.root()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let text = std::fs::read_to_string(&path).unwrap();
                for secret in secrets {
                    assert!(
                        !text.contains(secret),
                        "{} contains a secret value",
                        path.display()
                    );
                }
            }
        }
    }
}

async fn start_server(dir: &TestDir, vault: &FakeScaiVault) -> Server {
    start_server_with(dir, vault, &[ALLOW_PRIVATE]).await
}

async fn start_server_with(dir: &TestDir, vault: &FakeScaiVault, extra: &[&str]) -> Server {
    let mut args = vec![
        "--commit-interval-ms".to_string(),
        "200".to_string(),
        "--scaivault-url".to_string(),
        vault.url.clone(),
        "--scaivault-token-file".to_string(),
        dir.root().join("scaivault-token").display().to_string(),
        "--log-level".to_string(),
        "debug".to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    // The audit of the audit is off: the tests compare what an export wrote with the events
    // ingested, and the reads that wait for them would add `audit_read` events.
    args.extend(AUDIT_OF_AUDIT_OFF.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let token_file = dir.root().join("scaivault-token");
    if !token_file.try_exists().unwrap() {
        std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap();
    }
    Server::start(&dir.data_dir(), &args).await
}

/// Ingests `count` events and returns them as the API shows them, oldest first.
async fn ingest_events(setup: &Setup, count: u64) -> Vec<Value> {
    let client = client();
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let events: Vec<Value> = chunk.iter().map(|&i| event(i)).collect();
        ids.extend(ingest_ok(&client, setup.base(), setup.token(), &events).await);
    }
    let logs = wait_until_visible(
        &client,
        setup.base(),
        setup.token(),
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    ascending(logs)
}

fn export_request(kind: &str, bucket: &str, prefix: &str, credentials_path: &str) -> Value {
    json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
        "max_records_per_file": PART_RECORDS,
        // The export_created events of the exports themselves are not part of the expectation.
        "filters": {"identity_type": "service_account"},
        "destination": {"type": kind, "bucket": bucket, "prefix": prefix,
                        "credentials_path": credentials_path},
    })
}

fn s3_secret(endpoint: &str) -> Value {
    json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": S3_SECRET,
           "region": "us-east-1", "endpoint_url": endpoint})
}

async fn run_to_completion(setup: &Setup, body: &Value) -> Value {
    let client = client();
    let id = start_export(&client, setup.base(), setup.token(), body).await;
    let status = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn s3_exports_use_multipart_uploads_and_match_byte_for_byte() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let setup = Setup::start().await;
    setup
        .vault
        .put("infra/aws/audit-export-writer", s3_secret(&endpoint));
    // 30k events: a 10k-record part is ~3.5 MB; one part of 30k (~10 MB) needs multipart.
    let logs = ingest_events(&setup, 30_000).await;
    let prefix = format!("s3-{}/", ulid::Ulid::generate().to_string().to_lowercase());
    let mut body = export_request("s3", &bucket, &prefix, "infra/aws/audit-export-writer");
    body["max_records_per_file"] = json!(30_000);
    let status = run_to_completion(&setup, &body).await;
    assert!(
        status["files"][0]["size_bytes"].as_u64().unwrap() > 8 << 20,
        "multipart size"
    );
    let written = read_parts(&status, |key| {
        let (endpoint, bucket) = (endpoint.clone(), bucket.clone());
        async move { s3_get(&endpoint, &bucket, &key).await }
    })
    .await;
    assert_eq!(without_chain(&written), expected_jsonl(&logs));
    let manifest: Value = serde_json::from_slice(
        &s3_get(&endpoint, &bucket, &format!("{prefix}manifest.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["files"], status["files"]);
    assert_eq!(s3_open_uploads(&endpoint, &bucket, &prefix).await, 0);
    setup.assert_logs_hold_no_secrets(&[S3_SECRET, VAULT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn gcs_exports_match_byte_for_byte_including_resumable_uploads() {
    let endpoint = emulator_env("SCAIVAULT_TEST_GCS_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let resumable = emulator_env("SCAIVAULT_TEST_GCS_RESUMABLE") == "1";
    let setup = Setup::start().await;
    let key = gcs_service_account();
    let private_key = key["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(5)
        .unwrap()
        .to_string();
    setup.vault.put(
        "infra/gcp/writer",
        json!({"service_account_json": key, "endpoint_url": endpoint}),
    );
    // Parts above 8 MiB go up as resumable uploads (needs the emulator on port 80).
    let count = if resumable { 60_000 } else { 20_000 };
    let logs = ingest_events(&setup, count).await;
    let prefix = format!("gcs-{}/", ulid::Ulid::generate().to_string().to_lowercase());
    let mut body = export_request("gcs", &bucket, &prefix, "infra/gcp/writer");
    body["max_records_per_file"] = json!(50_000);
    let status = run_to_completion(&setup, &body).await;
    if resumable {
        assert!(status["files"][0]["size_bytes"].as_u64().unwrap() > 16 << 20);
    }
    let written = read_parts(&status, |object| {
        let (endpoint, bucket) = (endpoint.clone(), bucket.clone());
        async move { gcs_get(&endpoint, &bucket, &object).await }
    })
    .await;
    assert_eq!(without_chain(&written), expected_jsonl(&logs));
    assert!(
        gcs_get(&endpoint, &bucket, &format!("{prefix}manifest.json"))
            .await
            .is_some()
    );
    setup.assert_logs_hold_no_secrets(&[&private_key, VAULT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn azure_exports_with_an_account_key_match_and_a_wrong_key_fails_clearly() {
    let endpoint = emulator_env("SCAIVAULT_TEST_AZURE_ENDPOINT");
    let account = emulator_env("SCAIVAULT_TEST_AZURE_ACCOUNT");
    let key = emulator_env("SCAIVAULT_TEST_AZURE_KEY");
    let container = emulator_env("SCAIVAULT_TEST_BUCKET");
    let setup = Setup::start().await;
    setup.vault.put(
        "infra/azure/writer",
        json!({"connection_string": format!(
            "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};")}),
    );
    let wrong_key = "d3JvbmctYWNjb3VudC1rZXktZm9yLXRlc3RzLW9ubHktMTIzNDU2Nzg5MA==";
    setup.vault.put(
        "infra/azure/wrong",
        json!({"account_name": account, "account_key": wrong_key, "endpoint_url": endpoint}),
    );
    let logs = ingest_events(&setup, 30_000).await;
    let prefix = format!("az-{}/", ulid::Ulid::generate().to_string().to_lowercase());
    let mut body = export_request("azure_blob", &container, &prefix, "infra/azure/writer");
    body["max_records_per_file"] = json!(25_000); // part 1 > 8 MiB: staged blocks
    let status = run_to_completion(&setup, &body).await;
    assert!(status["files"][0]["size_bytes"].as_u64().unwrap() > 8 << 20);
    let written = read_parts(&status, |object| {
        let (endpoint, account, key, container) = (
            endpoint.clone(),
            account.clone(),
            key.clone(),
            container.clone(),
        );
        async move { azure_get(&endpoint, &account, &key, &format!("{container}/{object}")).await }
    })
    .await;
    assert_eq!(without_chain(&written), expected_jsonl(&logs));

    let client = client();
    let body = export_request(
        "azure_blob",
        &container,
        &format!("{prefix}wrong/"),
        "infra/azure/wrong",
    );
    let id = start_export(&client, setup.base(), setup.token(), &body).await;
    let failed = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let code = failed["error"]["code"].as_str().unwrap();
    assert!(
        matches!(
            code,
            "destination_credentials_invalid" | "destination_access_denied"
        ),
        "{failed}"
    );
    setup.assert_logs_hold_no_secrets(&[&key, wrong_key, VAULT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn scaivault_and_bucket_errors_become_clear_export_failures() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let setup = Setup::start().await;
    let client = client();
    ingest_events(&setup, 10).await;
    setup.vault.put("infra/aws/writer", s3_secret(&endpoint));
    setup.vault.fail("infra/aws/denied", 403, "access_denied");
    let cases = [
        (
            "infra/aws/absent",
            "credentials_not_found",
            "infra/aws/absent",
        ),
        ("infra/aws/denied", "credentials_access_denied", "grant"),
    ];
    for (path, code, hint) in cases {
        let body = export_request("s3", &bucket, "errors/", path);
        let id = start_export(&client, setup.base(), setup.token(), &body).await;
        let failed = wait_finished(&client, setup.base(), setup.token(), &id).await;
        assert_eq!(failed["error"]["code"], code, "{failed}");
        assert!(
            failed["error"]["message"].as_str().unwrap().contains(hint),
            "{failed}"
        );
    }
    let body = export_request("s3", "no-such-bucket-here", "x/", "infra/aws/writer");
    let id = start_export(&client, setup.base(), setup.token(), &body).await;
    let failed = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(failed["error"]["code"], "destination_not_found", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-bucket-here")
    );

    // A transient ScaiVault error is retried until it clears.
    setup
        .vault
        .fail("infra/aws/writer", 503, "service_unavailable");
    let prefix = format!(
        "retry-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let id = start_export(
        &client,
        setup.base(),
        setup.token(),
        &export_request("s3", &bucket, &prefix, "infra/aws/writer"),
    )
    .await;
    let before = setup
        .vault
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    while setup
        .vault
        .requests
        .load(std::sync::atomic::Ordering::SeqCst)
        < before + 2
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_export(&client, setup.base(), setup.token(), &id)
            .await
            .2["status"],
        "running"
    );
    setup.vault.clear_failure("infra/aws/writer");
    let done = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(done["status"], "completed", "{done}");

    // The service's token is re-read when its file changes.
    *setup.vault.token.lock().unwrap() = "svt_rotated_token_0042".into();
    let id = start_export(
        &client,
        setup.base(),
        setup.token(),
        &export_request("s3", &bucket, &format!("{prefix}b/"), "infra/aws/writer"),
    )
    .await;
    let failed = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(
        failed["error"]["code"], "scaivault_authentication_failed",
        "{failed}"
    );
    std::fs::write(
        setup.dir.root().join("scaivault-token"),
        "svt_rotated_token_0042\n",
    )
    .unwrap();
    let id = start_export(
        &client,
        setup.base(),
        setup.token(),
        &export_request("s3", &bucket, &format!("{prefix}c/"), "infra/aws/writer"),
    )
    .await;
    assert_eq!(
        wait_finished(&client, setup.base(), setup.token(), &id).await["status"],
        "completed"
    );
    setup.assert_logs_hold_no_secrets(&[S3_SECRET, VAULT_TOKEN, "svt_rotated_token_0042"]);
}

/// The S3 emulator behind a proxy that cuts the connection after `budget` bytes.
async fn s3_behind_proxy(setup: &Setup, budget: u64) -> (Proxy, String, String) {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let proxy = Proxy::start(endpoint_addr(&endpoint)).await;
    setup
        .vault
        .put("infra/aws/proxied", s3_secret(&proxy.url()));
    proxy.cut_after(budget);
    (proxy, endpoint, bucket)
}

async fn assert_exact_s3_export(
    status: &Value,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    logs: &[Value],
) {
    let written = read_parts(status, |key| {
        let (endpoint, bucket) = (endpoint.to_string(), bucket.to_string());
        async move { s3_get(&endpoint, &bucket, &key).await }
    })
    .await;
    assert_eq!(
        without_chain(&written),
        expected_jsonl(logs),
        "exactly the snapshot: no duplicate, none missing"
    );
    let keys = s3_keys(endpoint, bucket, prefix).await;
    let parts = keys.iter().filter(|key| key.contains("part-")).count();
    assert_eq!(
        parts,
        status["files"].as_array().unwrap().len(),
        "no stray parts: {keys:?}"
    );
    assert_eq!(
        s3_open_uploads(endpoint, bucket, prefix).await,
        0,
        "no incomplete uploads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn an_export_survives_its_destination_going_away_and_coming_back() {
    let setup = Setup::start().await;
    let logs = ingest_events(&setup, 40_000).await;
    let (proxy, endpoint, bucket) = s3_behind_proxy(&setup, 8 << 20).await;
    let client = client();
    let prefix = format!(
        "flaky-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let id = start_export(
        &client,
        setup.base(),
        setup.token(),
        &export_request("s3", &bucket, &prefix, "infra/aws/proxied"),
    )
    .await;
    let stalled = wait_export(&client, setup.base(), setup.token(), &id, "cut off", |_| {
        proxy.is_down()
    })
    .await;
    assert_ne!(stalled["status"], "completed");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, _, during) = get_export(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(
        during["status"], "running",
        "transient failures are retried: {during}"
    );
    proxy.restore();
    let status = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_exact_s3_export(&status, &endpoint, &bucket, &prefix, &logs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn a_killed_export_resumes_after_the_last_uploaded_part() {
    let mut setup = Setup::start().await;
    let logs = ingest_events(&setup, 40_000).await;
    let (proxy, endpoint, bucket) = s3_behind_proxy(&setup, 9 << 20).await;
    let client = client();
    let prefix = format!(
        "killed-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let id = start_export(
        &client,
        setup.base(),
        setup.token(),
        &export_request("s3", &bucket, &prefix, "infra/aws/proxied"),
    )
    .await;
    let stalled = wait_export(
        &client,
        setup.base(),
        setup.token(),
        &id,
        "part-way",
        |body| proxy.is_down() && body["record_count"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    let uploaded_before = stalled["files"].as_array().unwrap().len();
    assert!((1..4).contains(&uploaded_before), "{stalled}");
    // More events arrive; they are after the snapshot and must not be exported.
    let client2 = client.clone();
    ingest_ok(&client2, setup.base(), setup.token(), &[event(99_999)]).await;
    setup.server.kill9();
    proxy.restore();
    setup.server = start_server(&setup.dir, &setup.vault).await;
    let status = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    let files = status["files"].as_array().unwrap();
    assert_eq!(
        &files[..uploaded_before],
        &stalled["files"].as_array().unwrap()[..],
        "kept parts"
    );
    assert_exact_s3_export(&status, &endpoint, &bucket, &prefix, &logs).await;
    let log_text = std::fs::read_to_string(setup.server.stderr_log()).unwrap();
    assert!(
        log_text.contains("resuming export"),
        "the restarted server resumed the job"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile destinations
// ---------------------------------------------------------------------------------------------

/// A kilobyte figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the process's peak resident size (`VmHWM`) to its current size (`clear_refs` value 5,
/// Linux 4.0+).
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|error| panic!("cannot reset the peak RSS of pid {pid}: {error}"));
}

fn unique_prefix(label: &str) -> String {
    format!(
        "{label}-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// Starts an export of `body` and expects it to fail with `code`.
async fn expect_failure(setup: &Setup, body: &Value, code: &str) -> Value {
    let client = client();
    let id = start_export(&client, setup.base(), setup.token(), body).await;
    let failed = wait_finished(&client, setup.base(), setup.token(), &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], code, "{failed}");
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn a_100_mb_object_at_the_prefix_is_refused_without_being_downloaded() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let setup = Setup::start().await;
    setup.vault.put("infra/aws/writer", s3_secret(&endpoint));
    ingest_events(&setup, 10).await;
    let s3 = s3_client(&endpoint);
    // Warm-up: a small foreign claim, refused the same way (the S3 client is built and used).
    let small = unique_prefix("small");
    s3.put_object()
        .bucket(&bucket)
        .key(format!("{small}.scaivault-export"))
        .body(b"{\"export_id\": \"exp_someone_else\"}".to_vec().into())
        .send()
        .await
        .unwrap();
    let failed = expect_failure(
        &setup,
        &export_request("s3", &bucket, &small, "infra/aws/writer"),
        "destination_conflict",
    )
    .await;
    assert!(
        !failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exp_someone_else"),
        "another export's id is never shown: {failed}"
    );

    // 100 MB at the claim key (the claim is the one object whose body is read) and, copied,
    // as a foreign first part (only checked for existence).
    let huge_claim = unique_prefix("huge-claim");
    let huge_part = unique_prefix("huge-part");
    let claim_key = format!("{huge_claim}.scaivault-export");
    s3.put_object()
        .bucket(&bucket)
        .key(&claim_key)
        .body(vec![b'x'; 100 << 20].into())
        .send()
        .await
        .unwrap();
    s3.copy_object()
        .bucket(&bucket)
        .key(format!("{huge_part}part-0001.jsonl"))
        .copy_source(format!("{bucket}/{claim_key}"))
        .send()
        .await
        .unwrap();
    let pid = setup.server.pid();
    // The peak is reset to the current resident size first, so the bound below is about what
    // these two exports touch and not about how far an earlier peak happened to be above today's
    // level (resident memory below an old peak rises and falls by tens of MiB on its own).
    reset_peak_rss(pid);
    let rss_before = proc_status_kib(pid, "VmRSS");
    let peak_before = proc_status_kib(pid, "VmHWM");
    for prefix in [&huge_claim, &huge_part] {
        expect_failure(
            &setup,
            &export_request("s3", &bucket, prefix, "infra/aws/writer"),
            "destination_conflict",
        )
        .await;
    }
    let rss_after = proc_status_kib(pid, "VmRSS");
    let peak_after = proc_status_kib(pid, "VmHWM");
    eprintln!("VmRSS {rss_before} -> {rss_after} KiB, VmHWM {peak_before} -> {peak_after} KiB");
    // Downloading either object whole would add at least 100 MiB; the capped 1 MiB read and
    // the HEAD add a few, and the server's own activity up to about 30 MiB.
    assert!(
        peak_after < peak_before + 64 * 1024,
        "peak memory grew by {} KiB refusing two 100 MB objects",
        peak_after - peak_before
    );
    // Nothing was written next to the foreign objects.
    assert_eq!(
        s3_keys(&endpoint, &bucket, &huge_part).await,
        vec![format!("{huge_part}part-0001.jsonl")]
    );
}

/// Reads an object of `kind` from its emulator.
async fn read_object(kind: &str, key: &str) -> Option<Vec<u8>> {
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    match kind {
        "s3" => s3_get(&emulator_env("SCAIVAULT_TEST_S3_ENDPOINT"), &bucket, key).await,
        "gcs" => gcs_get(&emulator_env("SCAIVAULT_TEST_GCS_ENDPOINT"), &bucket, key).await,
        _ => {
            azure_get(
                &emulator_env("SCAIVAULT_TEST_AZURE_ENDPOINT"),
                &emulator_env("SCAIVAULT_TEST_AZURE_ACCOUNT"),
                &emulator_env("SCAIVAULT_TEST_AZURE_KEY"),
                &format!("{bucket}/{key}"),
            )
            .await
        }
    }
}

/// Two exports started together for one prefix: exactly one completes, the other fails with
/// `destination_conflict`, and the winner's objects are intact.
async fn race_for_one_prefix(setup: &Setup, kind: &str, bucket: &str, credentials_path: &str) {
    let client = client();
    let prefix = unique_prefix(&format!("race-{kind}"));
    let mut body = export_request(kind, bucket, &prefix, credentials_path);
    body["max_records_per_file"] = json!(100);
    let (first, second) = tokio::join!(
        start_export(&client, setup.base(), setup.token(), &body),
        start_export(&client, setup.base(), setup.token(), &body),
    );
    let (first, second) = tokio::join!(
        wait_finished(&client, setup.base(), setup.token(), &first),
        wait_finished(&client, setup.base(), setup.token(), &second),
    );
    let (winner, loser) = if first["status"] == "completed" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(winner["status"], "completed", "{kind}: {winner}");
    assert_eq!(loser["status"], "failed", "{kind}: {loser}");
    assert_eq!(
        loser["error"]["code"], "destination_conflict",
        "{kind}: {loser}"
    );
    read_parts(&winner, |key| {
        let kind = kind.to_string();
        async move { read_object(&kind, &key).await }
    })
    .await;
    let manifest: Value = serde_json::from_slice(
        &read_object(kind, &format!("{prefix}manifest.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["export_id"], winner["export_id"], "{kind}");
    assert_eq!(manifest["files"], winner["files"], "{kind}");
    let claim: Value = serde_json::from_slice(
        &read_object(kind, &format!("{prefix}.scaivault-export"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claim["export_id"], winner["export_id"], "{kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn two_exports_racing_for_one_prefix_on_object_stores_leave_one_winner() {
    let s3_endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let account = emulator_env("SCAIVAULT_TEST_AZURE_ACCOUNT");
    let setup = Setup::start().await;
    setup.vault.put("infra/aws/writer", s3_secret(&s3_endpoint));
    setup.vault.put(
        "infra/gcp/writer",
        json!({"service_account_json": gcs_service_account(),
               "endpoint_url": emulator_env("SCAIVAULT_TEST_GCS_ENDPOINT")}),
    );
    setup.vault.put(
        "infra/azure/writer",
        json!({"account_name": account, "account_key": emulator_env("SCAIVAULT_TEST_AZURE_KEY"),
               "endpoint_url": emulator_env("SCAIVAULT_TEST_AZURE_ENDPOINT")}),
    );
    ingest_events(&setup, 250).await;
    for (kind, path) in [
        ("s3", "infra/aws/writer"),
        ("gcs", "infra/gcp/writer"),
        ("azure_blob", "infra/azure/writer"),
    ] {
        race_for_one_prefix(&setup, kind, &bucket, path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_racing_for_one_file_prefix_leave_one_winner() {
    let setup = Setup::start().await;
    ingest_events(&setup, 250).await;
    let out = file_bucket(&setup.dir, "race-out");
    let client = client();
    let mut body = export_request("file", "race-out", "race/", "unused");
    body["destination"]
        .as_object_mut()
        .unwrap()
        .remove("credentials_path");
    body["max_records_per_file"] = json!(100);
    let (first, second) = tokio::join!(
        start_export(&client, setup.base(), setup.token(), &body),
        start_export(&client, setup.base(), setup.token(), &body),
    );
    let (first, second) = tokio::join!(
        wait_finished(&client, setup.base(), setup.token(), &first),
        wait_finished(&client, setup.base(), setup.token(), &second),
    );
    let statuses = [first["status"].clone(), second["status"].clone()];
    assert!(
        statuses.contains(&json!("completed")) && statuses.contains(&json!("failed")),
        "{first}\n{second}"
    );
    let (winner, loser) = if first["status"] == "completed" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(loser["error"]["code"], "destination_conflict", "{loser}");
    read_parts(&winner, |key| {
        let path = out.join(&key);
        async move { std::fs::read(path).ok() }
    })
    .await;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("race/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["export_id"], winner["export_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn cleanup_aborts_only_this_exports_multipart_uploads() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let setup = Setup::start().await;
    setup.vault.put("infra/aws/writer", s3_secret(&endpoint));
    ingest_events(&setup, 20).await;
    // Another client's upload in progress, at the very key of our first part.
    let prefix = unique_prefix("foreign-upload");
    let s3 = s3_client(&endpoint);
    let foreign = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key(format!("{prefix}part-0001.jsonl"))
        .send()
        .await
        .unwrap();
    let foreign_id = foreign.upload_id().unwrap().to_string();
    let open_ids = || async {
        s3_client(&endpoint)
            .list_multipart_uploads()
            .bucket(&bucket)
            .prefix(&prefix)
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .filter_map(|upload| upload.upload_id().map(str::to_string))
            .collect::<Vec<_>>()
    };
    // Our export discards incomplete uploads before it starts, and completes.
    let body = export_request("s3", &bucket, &prefix, "infra/aws/writer");
    run_to_completion(&setup, &body).await;
    assert_eq!(open_ids().await, vec![foreign_id.clone()]);
    // A second export loses the claim, fails, and its cleanup runs: still untouched.
    expect_failure(&setup, &body, "destination_conflict").await;
    assert_eq!(open_ids().await, vec![foreign_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn private_endpoints_are_refused_before_any_connection_unless_allowlisted() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    // A loopback listener that counts connections (and forwards them to the S3 emulator).
    let proxy = Proxy::start(endpoint_addr(&endpoint)).await;
    let connections = || proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    let strict = Setup::start_with(&[]).await;
    strict
        .vault
        .put("infra/aws/internal", s3_secret(&proxy.url()));
    ingest_events(&strict, 10).await;
    let prefix = unique_prefix("ssrf");
    let body = export_request("s3", &bucket, &prefix, "infra/aws/internal");
    let failed = expect_failure(&strict, &body, "destination_endpoint_refused").await;
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("loopback") && message.contains("endpoint_allowlist"),
        "{failed}"
    );
    assert_eq!(connections(), 0, "no connection to a refused endpoint");

    let allowed =
        Setup::start_with(&["--export-endpoint-allowlist", "example.invalid,127.0.0.1"]).await;
    allowed
        .vault
        .put("infra/aws/internal", s3_secret(&proxy.url()));
    ingest_events(&allowed, 10).await;
    run_to_completion(&allowed, &body).await;
    assert!(connections() > 0, "the allowlisted endpoint was reached");
}

/// A continuous export to S3 whose bucket does not exist yet: runs fail (`destination_not_found`,
/// the watermark stays), then the bucket is created and the retried run and the ones after it
/// deliver every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn an_s3_schedule_waits_for_its_bucket_then_delivers_every_event_once() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    // Runs every 2 s: below the default minimum interval (60 s).
    let setup =
        Setup::start_with(&[ALLOW_PRIVATE, "--export-schedule-min-interval-seconds", "1"]).await;
    let path = "infra/aws/audit-export-writer";
    setup.vault.put(path, s3_secret(&endpoint));
    let bucket = format!(
        "sched-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let client = client();
    let schedule = |method: reqwest::Method, suffix: &str, body: Option<&Value>| {
        let mut request = client
            .request(
                method,
                format!("{}/v1/audit/export-schedules{suffix}", setup.base()),
            )
            .bearer_auth(setup.token())
            .header("X-Tenant-ID", TENANT);
        if let Some(body) = body {
            request = request.json(body);
        }
        send(request)
    };
    let start = recent_timestamp(60, 0);
    let mut ids = Vec::new();
    let ingest = |n: u64, ago: u64| {
        let mut event = event(n);
        event["timestamp"] = json!(recent_timestamp(ago, n));
        event
    };
    let first: Vec<Value> = (0..10).map(|n| ingest(n, 20 + n)).collect();
    ids.extend(ingest_ok(&client, setup.base(), setup.token(), &first).await);
    let body = json!({"schedule": "*/2 * * * * *", "delay_seconds": 1, "start": start,
        "format": "jsonl", "compression": "gzip",
        "destination": {"type": "s3", "bucket": bucket, "prefix": "acme/",
                        "credentials_path": path}});
    let created = schedule(reqwest::Method::POST, "", Some(&body)).await;
    assert_eq!(created.0, reqwest::StatusCode::CREATED, "{}", created.2);
    let suffix = format!("/{}", created.2["schedule_id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + EXPORT_DEADLINE;
    let failing = loop {
        let status = schedule(reqwest::Method::GET, &suffix, None).await.2;
        if status["status"]["conditions"][0]["reason"] == "destination_not_found" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(failing["status"]["runs_completed"], 0, "{failing}");
    // Late and current events while the destination is missing.
    let more: Vec<Value> = (10..20).map(|n| ingest(n, n % 3 * 15)).collect();
    ids.extend(ingest_ok(&client, setup.base(), setup.token(), &more).await);
    s3_client(&endpoint)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let last_ingest = recent_timestamp(0, 0);
    let done = loop {
        let status = schedule(reqwest::Method::GET, &suffix, None).await.2;
        let caught_up = status["status"]["last_runs"]
            .as_array()
            .unwrap()
            .last()
            .is_some_and(|run| run["to"].as_str().unwrap() > last_ingest.as_str());
        if caught_up {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"]["conditions"][0]["status"], "True", "{done}");
    let deleted = schedule(reqwest::Method::DELETE, &suffix, None).await;
    assert_eq!(deleted.0, reqwest::StatusCode::OK);
    let mut delivered = Vec::new();
    for key in s3_keys(&endpoint, &bucket, "acme/").await {
        if !key.ends_with("manifest.json") {
            continue;
        }
        let manifest: Value =
            serde_json::from_slice(&s3_get(&endpoint, &bucket, &key).await.unwrap()).unwrap();
        for file in manifest["files"].as_array().unwrap() {
            let gz = s3_get(&endpoint, &bucket, file["key"].as_str().unwrap())
                .await
                .unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
                .unwrap();
            for line in text.lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                delivered.push(record["id"].as_str().unwrap().to_string());
            }
        }
    }
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids, "every event once, none missing");
    setup.assert_logs_hold_no_secrets(&[S3_SECRET, VAULT_TOKEN]);
}
