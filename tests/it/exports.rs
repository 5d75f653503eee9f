//! Exports through the standalone server with the `file` destination: the REST contract
//! (SPEC §3.5), part files and manifest checked byte for byte, CSV through Python's `csv`,
//! gzip through `gzip -d`, restarts, cancellation, conflicts and tenant isolation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use crate::harness::export::*;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const FROM: &str = "2020-01-01T00:00:00Z";
const TO: &str = "2100-01-01T00:00:00Z";

/// Events with values that break naive encoders.
fn awkward_event(i: u64) -> Value {
    let mut event = event(i);
    // Ingest refuses control characters in user_agent; newlines and tabs ride in extra_data.
    event["user_agent"] = json!(match i % 5 {
        0 => "=HYPERLINK(\"http://evil\")",
        1 => "agent, with \"quotes\", and commas",
        2 => "+1-555 ünïcødé ✓ 日本",
        3 => "@SUM(A1)",
        _ => "-plain",
    });
    event["extra_data"] =
        json!({"note": "a,b\n\"c\"\ttab\rcr", "n": i, "nested": {"list": [1, "x"]}});
    event
}

fn export_body(dir: &Path, prefix: &str) -> Value {
    json!({
        "from": FROM, "to": TO, "format": "jsonl",
        "destination": {"type": "file", "bucket": bucket_name(dir), "prefix": prefix},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_export_writes_numbered_parts_and_a_manifest_byte_for_byte() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let events: Vec<Value> = (0..2_500).map(awkward_event).collect();
    let ids = ingest_ok(&client, base, token, &events).await;
    // Filters apply: only reads and writes under environments/production/app-1..
    let mut body = export_body(&out, "acme/2026-01/");
    body["max_records_per_file"] = json!(60);
    body["filters"] = json!({"action": "read,write", "path_prefix": "environments/production/"});
    let export_id = start_export(&client, base, token, &body).await;
    let status = wait_finished(&client, base, token, &export_id).await;
    assert_eq!(status["status"], "completed", "{status}");

    let logs = wait_until_visible(
        &client,
        base,
        token,
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    let expected: Vec<Value> = ascending(logs)
        .into_iter()
        .filter(|log| matches!(log["action"].as_str(), Some("read" | "write")))
        .collect();
    assert!(expected.len() > 3 * 60, "the test needs several parts");
    assert_eq!(status["record_count"], json!(expected.len()));
    let files = status["files"].as_array().unwrap();
    assert_eq!(files.len(), expected.len().div_ceil(60));
    for (n, file) in files.iter().enumerate() {
        assert_eq!(
            file["key"],
            json!(format!("acme/2026-01/part-{:04}.jsonl", n + 1))
        );
        let records = file["records"].as_u64().unwrap();
        assert!(records == 60 || n + 1 == files.len(), "{file}");
    }
    let written = read_parts(&status, |key| {
        let path = out.join(&key);
        async move { std::fs::read(path).ok() }
    })
    .await;
    assert_eq!(
        without_chain(&written),
        expected_jsonl(&expected),
        "the parts hold exactly the expected events"
    );

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("acme/2026-01/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["export_id"], json!(export_id));
    assert_eq!(manifest["files"], status["files"]);
    assert_eq!(manifest["record_count"], status["record_count"]);
    assert_eq!(manifest["format"], "jsonl");
    assert_eq!(manifest["from"], "2020-01-01T00:00:00.000000Z");
    assert_eq!(
        manifest["filters"]["path_prefix"],
        "environments/production/"
    );
    // No spool or temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The export was audited: an export_created event by the bootstrap identity.
    let (status, _, reply) =
        get_logs(&client, base, token, Some(TENANT), "action=export_created").await;
    assert_eq!(status, StatusCode::OK);
    let created = &reply["logs"][0];
    assert_eq!(
        created["extra_data"]["export_id"],
        json!(export_id),
        "{reply}"
    );
    assert_eq!(created["success"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_gzip_parts_decompress_with_gzip_and_round_trip_through_python_csv() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let events: Vec<Value> = (0..200).map(awkward_event).collect();
    let ids = ingest_ok(&client, base, token, &events).await;
    let mut body = export_body(&out, "csv/");
    body["format"] = json!("csv");
    body["compression"] = json!("gzip");
    body["max_records_per_file"] = json!(150);
    let export_id = start_export(&client, base, token, &body).await;
    let status = wait_finished(&client, base, token, &export_id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["files"][0]["key"], "csv/part-0001.csv.gz");
    read_parts(&status, |key| {
        let path = out.join(&key);
        async move { std::fs::read(path).ok() }
    })
    .await;

    let logs = ascending(
        wait_until_visible(
            &client,
            base,
            token,
            Some(TENANT),
            &ids,
            RESTART_VISIBILITY_DEADLINE,
        )
        .await,
    );
    let mut rows = Vec::new();
    for file in status["files"].as_array().unwrap() {
        let path = out.join(file["key"].as_str().unwrap());
        let gunzip = Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .expect("run gzip");
        assert!(
            gunzip.status.success(),
            "gzip -d failed on {}",
            path.display()
        );
        let parsed = python_csv(&gunzip.stdout);
        assert_eq!(parsed[0], CSV_HEADER, "every part starts with the header");
        rows.extend(parsed.into_iter().skip(1));
    }
    assert_eq!(rows.len(), logs.len());
    for (row, log) in rows.iter().zip(&logs) {
        assert_eq!(row[0], log["id"].as_str().unwrap());
        assert_eq!(row[1], log["timestamp"].as_str().unwrap());
        // The export_created event of this very export is in the snapshot: it has no agent.
        let agent = log["user_agent"].as_str().unwrap_or("");
        let neutralised = agent.starts_with(['=', '+', '-', '@', '\t', '\r']);
        if neutralised {
            assert_eq!(row[7], format!("'{agent}"), "formula cells are neutralised");
        } else {
            assert_eq!(row[7], agent);
        }
        let extra: Value = serde_json::from_str(&row[11]).unwrap();
        assert_eq!(extra, log["extra_data"], "extra_data is JSON text");
        assert_eq!(row[2], log["action"].as_str().unwrap());
    }
}

const CSV_HEADER: [&str; 14] = [
    "id",
    "timestamp",
    "action",
    "identity_type",
    "identity_id",
    "secret_path",
    "source_ip",
    "user_agent",
    "success",
    "duration_ms",
    "request_id",
    "extra_data",
    "chain_seq",
    "chain_hash",
];

/// Parses CSV with Python's standard `csv` module.
fn python_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import csv,io,json,sys; print(json.dumps(list(csv.reader(io.StringIO(sys.stdin.buffer.read().decode('utf-8'), newline='')))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_matching_nothing_completes_with_zero_records_and_a_manifest() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    ingest_ok(&client, base, token, &[event(1)]).await;
    let mut body = export_body(&out, "empty/");
    body["filters"] = json!({"identity_id": "user:nobody@acme.example"});
    let (status, _, reply) = post_export(&client, base, token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply["estimated_records"], 0);
    let id = reply["export_id"].as_str().unwrap();
    let done = wait_finished(&client, base, token, id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["record_count"], 0);
    assert_eq!(done["files"], json!([]));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("empty/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["record_count"], 0);
    assert_eq!(manifest["export_id"], json!(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_export_requests_get_field_errors_and_nothing_starts() {
    let dir = TestDir::new();
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let out = "out".to_string();
    let valid = json!({"from": FROM, "to": TO, "format": "jsonl",
        "destination": {"type": "file", "bucket": out, "prefix": "x/"}});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"from": TO, "to": FROM}), "to"),
        (json!({"from": "yesterday"}), "from"),
        (json!({"format": "xml"}), "format"),
        (json!({"compression": "zstd"}), "compression"),
        (json!({"max_records_per_file": 0}), "max_records_per_file"),
        (json!({"filters": {"action": "teleport"}}), "filters.action"),
        (json!({"filters": {"limit": "5"}}), "filters.limit"),
        (
            json!({"destination": {"type": "ftp", "bucket": "b"}}),
            "destination.type",
        ),
        (
            json!({"destination": {"type": "s3", "bucket": "acme-audit"}}),
            "destination.credentials_path",
        ),
        (
            json!({"destination": {"type": "s3", "bucket": "Bad_Bucket!", "credentials_path": "a/b"}}),
            "destination.bucket",
        ),
        (
            json!({"destination": {"type": "s3", "bucket": "acme-audit", "credentials_path": "a/b",
            "access_key_id": "AKIA"}}),
            "destination.access_key_id",
        ),
        (
            json!({"destination": {"type": "file", "bucket": out, "prefix": "../escape/"}}),
            "destination.prefix",
        ),
        (
            json!({"destination": {"type": "file", "bucket": "/absolute/dir"}}),
            "destination.bucket",
        ),
        (json!({"surprise": true}), "surprise"),
    ];
    for (change, field) in cases {
        let mut body = valid.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let reply = post_export(&client, base, token, &body).await;
        assert_validation_error(&reply, field);
    }
    let reply = send(
        client
            .post(format!("{base}/v1/audit/export"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT)
            .body("{not json"),
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    // JSON, but not an object: a malformed shape (SPEC: 400), not a field problem (422).
    for not_an_object in ["[]", "42", "\"export\"", "null", "[{\"from\": 1}]"] {
        let reply = send(
            client
                .post(format!("{base}/v1/audit/export"))
                .bearer_auth(token)
                .header("X-Tenant-ID", TENANT)
                .header("Content-Type", "application/json")
                .body(not_an_object),
        )
        .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        let message = reply.2["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("JSON object"),
            "{not_an_object}: {message}"
        );
    }
    let (status, _, listing) = send(
        client
            .get(format!("{base}/v1/audit/exports"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["exports"], json!([]), "no export was created");
    let reply = get_export(&client, base, token, "exp_01jz0000000000000000000000").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "export_not_found");

    // A date alone is midnight UTC, a time without offset is UTC; both are shown as RFC 3339.
    file_bucket(&dir, &out);
    let mut dated = valid.clone();
    dated["from"] = json!("2020-01-01");
    dated["to"] = json!("2100-01-01T12:30:00");
    let id = start_export(&client, base, token, &dated).await;
    let (status, _, shown) = get_export(&client, base, token, &id).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["from"], "2020-01-01T00:00:00.000000Z", "{shown}");
    assert_eq!(shown["to"], "2100-01-01T12:30:00.000000Z", "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_listed_newest_first_paged_and_isolated_by_tenant() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(start_export(&client, base, token, &export_body(&out, &format!("p{n}/"))).await);
    }
    let list = |query: &'static str| {
        let client = client.clone();
        let (base, token) = (base.to_string(), token.to_string());
        async move {
            send(
                client
                    .get(format!("{base}/v1/audit/exports?{query}"))
                    .bearer_auth(token)
                    .header("X-Tenant-ID", TENANT),
            )
            .await
        }
    };
    let (status, _, first) = list("limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = first["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![ids[2].as_str(), ids[1].as_str()],
        "newest first"
    );
    assert_eq!(first["has_more"], json!(true));
    let cursor = first["cursor"].as_str().unwrap();
    let (_, _, second) = send(
        client
            .get(format!("{base}/v1/audit/exports?limit=2&cursor={cursor}"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(second["exports"][0]["export_id"], json!(ids[0]));
    assert_eq!(second["has_more"], json!(false));
    assert_eq!(second["cursor"], Value::Null);
    let reply = list("limit=0").await;
    assert_validation_error(&reply, "limit");

    // Another tenant sees none of them.
    let (status, _, other) = send(
        client
            .get(format!("{base}/v1/audit/exports"))
            .bearer_auth(token)
            .header("X-Tenant-ID", OTHER_TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(other["exports"], json!([]));
    let reply = send(
        client
            .get(format!("{base}/v1/audit/exports/{}", ids[0]))
            .bearer_auth(token)
            .header("X-Tenant-ID", OTHER_TENANT),
    )
    .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "export_not_found");
    let reply = send(
        client
            .delete(format!("{base}/v1/audit/exports/{}", ids[0]))
            .bearer_auth(token)
            .header("X-Tenant-ID", OTHER_TENANT),
    )
    .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "export_not_found");
    // Without a token: 401 in the envelope.
    let reply = send(client.get(format!("{base}/v1/audit/exports"))).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authentication_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_export_to_the_same_prefix_fails_with_a_conflict_and_overwrites_nothing() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    ingest_ok(
        &client,
        base,
        token,
        &(0..50).map(event).collect::<Vec<_>>(),
    )
    .await;
    let first = start_export(&client, base, token, &export_body(&out, "same/")).await;
    let done = wait_finished(&client, base, token, &first).await;
    assert_eq!(done["status"], "completed");
    let before = std::fs::read(out.join("same/part-0001.jsonl")).unwrap();
    ingest_ok(
        &client,
        base,
        token,
        &(50..60).map(event).collect::<Vec<_>>(),
    )
    .await;
    let second = start_export(&client, base, token, &export_body(&out, "same/")).await;
    let failed = wait_finished(&client, base, token, &second).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "destination_conflict");
    // The owner may be another tenant's export: its id is logged, never shown.
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("another export"), "{failed}");
    assert!(!message.contains(&first), "{failed}");
    assert_eq!(
        std::fs::read(out.join("same/part-0001.jsonl")).unwrap(),
        before
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("same/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["export_id"], json!(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_fail_the_export_with_an_actionable_error() {
    let dir = TestDir::new();
    let secrets = dir.root().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secrets_arg = secrets.to_str().unwrap().to_string();
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--credentials-dir",
            &secrets_arg,
            "--commit-interval-ms",
            "200",
        ],
    )
    .await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let body = json!({"from": FROM, "to": TO, "format": "jsonl",
        "destination": {"type": "s3", "bucket": "acme-audit", "credentials_path": "infra/aws/missing"}});
    let id = start_export(&client, base, token, &body).await;
    let failed = wait_finished(&client, base, token, &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "credentials_not_found");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("infra/aws/missing")
    );

    write_dev_secret(
        &secrets,
        "infra/aws/partial",
        json!({"access_key_id": "AKIAVISIBLE"}),
    );
    let mut body = body;
    body["destination"]["credentials_path"] = json!("infra/aws/partial");
    let id = start_export(&client, base, token, &body).await;
    let failed = wait_finished(&client, base, token, &id).await;
    assert_eq!(failed["error"]["code"], "credentials_invalid", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret_access_key")
    );
    assert!(
        !failed.to_string().contains("AKIAVISIBLE"),
        "no secret value in the status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_running_exports_can_be_cancelled_and_finished_ones_cannot() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let vault = FakeScaiVault::start("vault-token").await;
    vault.fail("infra/slow", 503, "service_unavailable");
    let token_file = dir.root().join("vault-token");
    std::fs::write(&token_file, "vault-token\n").unwrap();
    // One job at a time: the first retries ScaiVault's 503 (running), the second waits.
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--export-max-concurrent-jobs",
            "1",
            "--commit-interval-ms",
            "200",
            "--scaivault-url",
            &vault.url,
            "--scaivault-token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let delete = |id: String| {
        let client = client.clone();
        let (base, token) = (base.to_string(), token.to_string());
        async move {
            send(
                client
                    .delete(format!("{base}/v1/audit/exports/{id}"))
                    .bearer_auth(token)
                    .header("X-Tenant-ID", TENANT),
            )
            .await
        }
    };
    let slow = json!({"from": FROM, "to": TO, "format": "jsonl",
        "destination": {"type": "s3", "bucket": "acme-audit", "credentials_path": "infra/slow"}});
    let running = start_export(&client, base, token, &slow).await;
    wait_export(&client, base, token, &running, "running", |body| {
        body["status"] == "running"
    })
    .await;
    let pending = start_export(&client, base, token, &export_body(&out, "cancel/")).await;
    assert_eq!(
        get_export(&client, base, token, &pending).await.2["status"],
        "pending"
    );

    let (status, _, cancelled) = delete(pending.clone()).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let (status, _, cancelled) = delete(running.clone()).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"], Value::Null);
    assert!(
        !out.join("cancel/manifest.json").try_exists().unwrap(),
        "a cancelled export writes nothing"
    );
    let reply = delete(running).await;
    assert_error(&reply, StatusCode::CONFLICT, "export_finished");
    // The slot is free again: a new export runs to completion.
    let done = start_export(&client, base, token, &export_body(&out, "after/")).await;
    assert_eq!(
        wait_finished(&client, base, token, &done).await["status"],
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_requests_have_their_own_rate_limit() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--rate-limit-exports-per-minute",
            "2",
            "--commit-interval-ms",
            "200",
        ],
    )
    .await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    for n in 0..2 {
        start_export(&client, base, token, &export_body(&out, &format!("r{n}/"))).await;
    }
    let reply = post_export(&client, base, token, &export_body(&out, "r2/")).await;
    assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(reply.1.contains_key("retry-after"), "{:?}", reply.1);
    assert_eq!(reply.1["x-ratelimit-limit"], "2");
    // Queries are budgeted separately: listing still works.
    let (status, _, _) = send(
        client
            .get(format!("{base}/v1/audit/exports"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
