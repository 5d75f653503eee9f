//! Tenant confinement of exports against the real binary (issue 10): `file` destinations only
//! under `[export] file_root` (no absolute path, `..`, symbolic link or data directory), the
//! credentials path only under the tenant's prefixes (403 before ScaiVault is asked), messages
//! without server internals, and a job directory no stray or broken file can crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::harness::export::*;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const FROM: &str = "2020-01-01T00:00:00Z";
const TO: &str = "2100-01-01T00:00:00Z";

fn file_export(bucket: &str, prefix: &str) -> Value {
    json!({"from": FROM, "to": TO, "format": "jsonl",
           "destination": {"type": "file", "bucket": bucket, "prefix": prefix}})
}

/// Every file below `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

async fn listed_exports(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let (status, _, body) = send(
        client
            .get(format!("{base}/v1/audit/exports"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["exports"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_destinations_stay_under_the_root_and_nothing_is_written_elsewhere() {
    let dir = TestDir::new();
    let root = file_root(&dir);
    std::fs::create_dir_all(&root).unwrap();
    let outside = dir.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // Links inside the root that point out of it: as the bucket, and inside a good bucket.
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let bucket = file_bucket(&dir, "audit");
    std::os::unix::fs::symlink(&outside, bucket.join("link")).unwrap();
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    ingest_ok(
        &client,
        base,
        token,
        &(0..20).map(event).collect::<Vec<_>>(),
    )
    .await;

    let jobs = dir.data_dir().join("exports/jobs");
    let attacks = [
        // The original report: the runner's own job directory.
        (
            file_export(jobs.to_str().unwrap(), ""),
            "destination.bucket",
        ),
        (
            file_export(dir.data_dir().to_str().unwrap(), "x/"),
            "destination.bucket",
        ),
        (
            file_export(outside.to_str().unwrap(), ""),
            "destination.bucket",
        ),
        (file_export("audit/../../data", ""), "destination.bucket"),
        (file_export("escape", ""), "destination.bucket"),
        (file_export("escape/deeper", ""), "destination.bucket"),
        (file_export("audit", "link/"), "destination.bucket"),
        (file_export("audit", "../../data/"), "destination.prefix"),
    ];
    for (body, field) in &attacks {
        let reply = post_export(&client, base, token, body).await;
        assert_validation_error(&reply, field);
        let message = reply.2["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains(dir.root().to_str().unwrap()),
            "the message shows a server path: {message}"
        );
    }

    // A bucket (with sub-directories created on demand) under the root works.
    let id = start_export(&client, base, token, &file_export("audit/2026", "acme/")).await;
    let done = wait_finished(&client, base, token, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(root.join("audit/2026/acme/manifest.json").is_file());

    let listed = listed_exports(&client, base, token).await;
    assert_eq!(listed.len(), 1, "only the good export exists: {listed:?}");
    assert_eq!(
        files_under(&outside),
        Vec::<String>::new(),
        "nothing outside"
    );
    let job_files = files_under(&jobs);
    assert_eq!(job_files, [format!("{id}.json")], "the job directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_root_file_destinations_are_refused_naming_the_setting() {
    let dir = TestDir::new();
    let server = Server::start(&dir.data_dir(), &["--export-file-root", ""]).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let reply = post_export(&client, base, token, &file_export("audit", "")).await;
    assert_validation_error(&reply, "destination.type");
    let message = reply.2["error"]["message"].as_str().unwrap();
    assert!(message.contains("file_root"), "{message}");
    assert!(
        message.contains("SCAIVAULT_AUDIT_EXPORT_FILE_ROOT"),
        "{message}"
    );
    assert!(listed_exports(&client, base, token).await.is_empty());
    assert!(!file_root(&dir).try_exists().unwrap(), "no root was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_credentials_paths_are_refused_before_scaivault_is_asked() {
    let dir = TestDir::new();
    let vault = FakeScaiVault::start("vault-token").await;
    let token_file = dir.root().join("vault-token");
    std::fs::write(&token_file, "vault-token\n").unwrap();
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--scaivault-url",
            &vault.url,
            "--scaivault-token-file",
            token_file.to_str().unwrap(),
            "--export-credentials-path-prefixes",
            "tenants/{tenant_id}/",
        ],
    )
    .await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let s3 = |path: &str| {
        json!({"from": FROM, "to": TO, "format": "jsonl",
               "destination": {"type": "s3", "bucket": "acme-audit", "prefix": "x/",
                               "credentials_path": path}})
    };
    for foreign in [
        "tenants/tnt_other/aws/writer",
        "tenants/tnt_acme2/aws/writer",
        "infra/aws/audit-export-writer",
        "tenants",
    ] {
        let reply = post_export(&client, base, token, &s3(foreign)).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
    }
    // A file destination naming a credentials path is held to the same rule.
    let mut file = file_export("audit", "");
    file["destination"]["credentials_path"] = json!("tenants/tnt_other/x");
    let reply = post_export(&client, base, token, &file).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
    assert_eq!(
        vault.requests.load(Ordering::SeqCst),
        0,
        "ScaiVault was asked for a refused path"
    );
    assert!(listed_exports(&client, base, token).await.is_empty());

    // The tenant's own path is fetched; its failure names the problem, not the server's setup.
    let id = start_export(&client, base, token, &s3("tenants/tnt_acme/aws/writer")).await;
    let failed = wait_finished(&client, base, token, &id).await;
    assert_eq!(failed["error"]["code"], "credentials_not_found", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("tenants/tnt_acme/aws/writer"), "{message}");
    for internal in [vault.url.as_str(), token_file.to_str().unwrap()] {
        assert!(!message.contains(internal), "{message} names {internal}");
    }
    assert!(vault.requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_job_file_is_moved_aside_and_stray_files_are_ignored() {
    let dir = TestDir::new();
    let jobs = dir.data_dir().join("exports/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("exp_bad.json"), b"{\"export_id\": ").unwrap();
    let stray = br#"{"export_id": "exp_x", "status": "completed", "files": []}"#;
    std::fs::write(jobs.join("manifest.json"), stray).unwrap();
    let server = Server::start(&dir.data_dir(), &[]).await;
    let (client, base, token) = (client(), server.base_url(), server.token());

    assert!(!jobs.join("exp_bad.json").try_exists().unwrap());
    assert!(jobs.join("exp_bad.json.corrupt").is_file());
    assert_eq!(std::fs::read(jobs.join("manifest.json")).unwrap(), stray);
    let (status, _, _) = send(client.get(format!("{base}/v1/health/ready"))).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "scaivault_audit_export_job_files_corrupt_total 1"),
        "{metrics}"
    );
    assert!(listed_exports(&client, base, token).await.is_empty());
    let log = std::fs::read_to_string(server.stderr_log()).unwrap();
    assert!(log.contains("moved aside"), "{log}");
}
