//! Exports to the real object-store APIs: S3 (moto), GCS (fake-gcs-server) and Azure Blob
//! (Azurite), with credentials from a local server that speaks ScaiVault's secrets API. Every
//! object is read back and compared byte for byte. Faults: the destination goes away and comes
//! back, the process is killed mid-export, wrong credentials, ScaiVault errors; no secret ever
//! appears in the logs.
//!
//! Needs `scripts/emulators.sh start` and `.tools/emulators.env` sourced (scripts/test.sh does);
//! without them every test here fails with a message saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::export::*;
use common::*;
use serde_json::{Value, json};

const VAULT_TOKEN: &str = "svt_vault_token_for_tests_7f3a";
const S3_SECRET: &str = "s3-secret-key-never-logged-91c2";
const PART_RECORDS: u64 = 10_000;

struct Setup {
    dir: TestDir,
    vault: FakeScaiVault,
    server: Server,
}

impl Setup {
    async fn start() -> Setup {
        let dir = TestDir::new();
        let vault = FakeScaiVault::start(VAULT_TOKEN).await;
        let server = start_server(&dir, &vault).await;
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
    let token_file = dir.root().join("scaivault-token");
    if !token_file.try_exists().unwrap() {
        std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap();
    }
    Server::start(
        &dir.data_dir(),
        &[
            "--commit-interval-ms",
            "200",
            "--scaivault-url",
            &vault.url,
            "--scaivault-token-file",
            token_file.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    )
    .await
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
    assert_eq!(written, expected_jsonl(&logs));
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
    assert_eq!(written, expected_jsonl(&logs));
    assert!(
        gcs_get(&endpoint, &bucket, &format!("{prefix}manifest.json"))
            .await
            .is_some()
    );
    setup.assert_logs_hold_no_secrets(&[&private_key, VAULT_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    assert_eq!(written, expected_jsonl(&logs));

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
        written,
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
