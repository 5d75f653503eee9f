//! Index snapshots in object storage (docs/snapshots.md), against the emulators: a snapshot of
//! a stopped store (`snapshot create`) restores an empty data directory at start, and the
//! restored service answers the same cursor walks and summaries, continues every chain
//! (`verify --data-dir` passes after new events) and counts the restore; a damaged snapshot is
//! refused with nothing placed, a snapshot without a manifest is ignored; the running service
//! snapshots periodically and keeps the newest N.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::harness::export::*;
use crate::harness::*;

const TEST_DEADLINE: Duration = Duration::from_secs(240);
const SECRET_PATH: &str = "infra/aws/snapshots";

/// The server and CLI arguments of an S3 snapshot destination under `prefix`, credentials from
/// a development directory in `dir`.
pub(crate) fn s3_args(dir: &TestDir, endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let credentials = dir.root().join("credentials");
    write_dev_secret(
        &credentials,
        SECRET_PATH,
        json!({"access_key_id": "AKIASNAPSHOTS", "secret_access_key": "snapshot-secret-5c2e",
               "region": "us-east-1", "endpoint_url": endpoint}),
    );
    [
        "--credentials-dir",
        &credentials.display().to_string(),
        "--export-allow-private-endpoints",
        "--snapshots-type",
        "s3",
        "--snapshots-bucket",
        bucket,
        "--snapshots-prefix",
        prefix,
        "--snapshots-credentials-path",
        SECRET_PATH,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

pub(crate) fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A prefix of this run only (the emulator's bucket outlives the test).
pub(crate) fn run_prefix(what: &str) -> String {
    format!("{what}/{}/", producer_id().to_lowercase())
}

/// `scaivault-audit snapshot SUBCOMMAND ARGS`; its output.
fn snapshot_cli(subcommand: &str, args: &[&str]) -> std::process::Output {
    let all: Vec<&str> = ["snapshot", subcommand]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run_to_exit(&all)
}

pub(crate) fn text(output: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every page of a cursor walk of `tenant`'s logs, `limit` per page, as returned.
pub(crate) async fn cursor_walk(
    client: &Client,
    server: &Server,
    tenant: &str,
    limit: u32,
) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let query = match &cursor {
            Some(cursor) => format!("limit={limit}&cursor={}", percent_encode(cursor)),
            None => format!("limit={limit}"),
        };
        let (status, _, page) = get_logs(
            client,
            server.base_url(),
            server.token(),
            Some(tenant),
            &query,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        pages.push(page["logs"].clone());
        match page["cursor"].as_str() {
            Some(next) if page["has_more"] == json!(true) => cursor = Some(next.to_owned()),
            _ => return pages,
        }
    }
    panic!("the walk did not end");
}

pub(crate) async fn summary(client: &Client, server: &Server, tenant: &str) -> Value {
    let (status, _, body) = get_as(
        client,
        server.base_url(),
        "/v1/audit/summary?top=5",
        Some(server.token()),
        Some(tenant),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub(crate) async fn metric(client: &Client, server: &Server, series: &str) -> f64 {
    let (status, _, body) = send(client.get(format!("{}/metrics", server.base_url()))).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text").to_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .map_or(0.0, |value| value.trim().parse().expect("a metric value"))
}

/// Events of both tenants in two batches; returns their ids.
async fn ingest_two_tenants(client: &Client, server: &Server, first: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for tenant in [TENANT, OTHER_TENANT] {
        let events: Vec<Value> = (first..first + 25)
            .map(|i| event_for_tenant(i, Some(tenant)))
            .collect();
        ids.extend(ingest_ok(client, server.base_url(), server.token(), &events).await);
    }
    ids
}

/// The manifests under `prefix`'s snapshot folder.
pub(crate) async fn manifests(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    s3_keys(endpoint, bucket, &format!("{prefix}snapshots/"))
        .await
        .into_iter()
        .filter(|key| key.ends_with(".manifest.json"))
        .collect()
}

fn assert_holds_no_store(dir: &Path) {
    assert!(
        !dir.join("index").try_exists().unwrap(),
        "an index was placed in {}",
        dir.display()
    );
    assert!(!dir.join("RESTORING").try_exists().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn a_replica_restored_from_s3_answers_the_same_and_continues_every_chain() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    let prefix = run_prefix("snap");
    within(TEST_DEADLINE, "snapshot and restore", async {
        let client = client();
        let args = s3_args(&dir, &endpoint, &bucket, &prefix);
        // The service itself takes none here: the stopped store is snapshotted by the CLI.
        let serve_args: Vec<&str> = [
            &strs(&args)[..],
            FAST_COMMITS,
            AUDIT_OF_AUDIT_OFF,
            &["--snapshots-interval-seconds", "0"],
        ]
        .concat();
        let source = dir.data_dir();
        let mut first = Server::start(&source, &serve_args).await;
        assert_eq!(
            metric(
                &client,
                &first,
                "scaivault_audit_snapshot_restores_total{outcome=\"success\"}"
            )
            .await,
            0.0,
            "nothing to restore on an empty destination"
        );
        let ids = ingest_two_tenants(&client, &first, 0).await;
        wait_until_visible(
            &client,
            first.base_url(),
            first.token(),
            Some(TENANT),
            &ids[..25],
            RESTART_VISIBILITY_DEADLINE,
        )
        .await;
        let mut walks = Vec::new();
        for tenant in [TENANT, OTHER_TENANT] {
            walks.push(Value::Array(cursor_walk(&client, &first, tenant, 7).await));
            walks.push(summary(&client, &first, tenant).await);
        }
        assert!(first.terminate().await.success());

        let mut create_args = vec!["--data-dir", source.to_str().unwrap()];
        create_args.extend(strs(&args));
        let created = snapshot_cli("create", &create_args);
        assert!(created.status.success(), "{}", text(&created));
        assert!(
            String::from_utf8_lossy(&created.stdout).contains("uploaded"),
            "{}",
            text(&created)
        );
        assert_eq!(manifests(&endpoint, &bucket, &prefix).await.len(), 1);

        // An empty data directory is restored at start.
        let replica = dir.root().join("replica");
        let mut second = Server::start(&replica, &serve_args).await;
        assert_eq!(
            metric(
                &client,
                &second,
                "scaivault_audit_snapshot_restores_total{outcome=\"success\"}"
            )
            .await,
            1.0
        );
        let age = metric(
            &client,
            &second,
            "scaivault_audit_snapshot_newest_age_seconds",
        )
        .await;
        assert!((0.0..120.0).contains(&age), "{age}");
        let mut again = Vec::new();
        for tenant in [TENANT, OTHER_TENANT] {
            again.push(Value::Array(cursor_walk(&client, &second, tenant, 7).await));
            again.push(summary(&client, &second, tenant).await);
        }
        assert_eq!(again, walks, "the restored service answers differently");

        // New events continue the restored chains: verify --data-dir recomputes every chain
        // across the restore and checks it against the checkpoints of both keys.
        let more = ingest_two_tenants(&client, &second, 100).await;
        wait_until_visible(
            &client,
            second.base_url(),
            second.token(),
            Some(OTHER_TENANT),
            &more[25..],
            RESTART_VISIBILITY_DEADLINE,
        )
        .await;
        let all = fetch_all_logs(&client, second.base_url(), second.token(), TENANT).await;
        assert_eq!(all.len(), 50);
        assert!(second.terminate().await.success());
        let verified = run_to_exit(&["verify", "--data-dir", replica.to_str().unwrap(), "--json"]);
        assert!(verified.status.success(), "{}", text(&verified));
        let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
        assert_eq!(report["ok"], json!(true), "{report}");
        assert_eq!(report["checked"]["events"], json!(100), "{report}");
        assert!(
            report["checked"]["checkpoints"].as_u64().unwrap() >= 4,
            "{report}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn a_damaged_snapshot_is_refused_and_one_without_a_manifest_is_ignored() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    let prefix = run_prefix("snap-damaged");
    within(TEST_DEADLINE, "damaged snapshots", async {
        let client = client();
        let args = s3_args(&dir, &endpoint, &bucket, &prefix);
        let source = dir.data_dir();
        let mut server = Server::start(&source, &[FAST_COMMITS, AUDIT_OF_AUDIT_OFF].concat()).await;
        ingest_two_tenants(&client, &server, 0).await;
        assert!(server.terminate().await.success());
        let mut create_args = vec!["--data-dir", source.to_str().unwrap()];
        create_args.extend(strs(&args));
        for _ in 0..2 {
            let created = snapshot_cli("create", &create_args);
            assert!(created.status.success(), "{}", text(&created));
        }
        let mut found = manifests(&endpoint, &bucket, &prefix).await;
        assert_eq!(found.len(), 2, "{found:?}");
        found.sort();
        let (older, newer) = (found[0].clone(), found[1].clone());
        let newer_id = newer
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".manifest.json")
            .to_owned();

        // A file of the newest snapshot is damaged: the restore is refused, nothing placed.
        let s3 = s3_client(&endpoint);
        let files = s3_keys(
            &endpoint,
            &bucket,
            &format!("{prefix}snapshots/{newer_id}/index/"),
        )
        .await;
        let victim = files
            .iter()
            .find(|key| key.ends_with(".store"))
            .unwrap_or(&files[0])
            .clone();
        let mut bytes = s3_get(&endpoint, &bucket, &victim).await.unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        s3.put_object()
            .bucket(&bucket)
            .key(&victim)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
        let target = dir.root().join("restored");
        let mut restore_args = vec!["--to", target.to_str().unwrap()];
        restore_args.extend(strs(&args));
        let refused = snapshot_cli("restore", &restore_args);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("is damaged, nothing was restored"),
            "{}",
            text(&refused)
        );
        assert!(stderr.contains("SHA-256"), "{}", text(&refused));
        assert_holds_no_store(&target);
        assert!(!target.join(".snapshot-restore").try_exists().unwrap());

        // Without its manifest the newest does not exist, nor does a folder that never got
        // one: the older complete snapshot is restored.
        s3.delete_object()
            .bucket(&bucket)
            .key(&newer)
            .send()
            .await
            .unwrap();
        let stray = format!("{prefix}snapshots/ZZZZZZZZZZZZZZZZZZZZZZZZZZ/index/meta.json");
        s3.put_object()
            .bucket(&bucket)
            .key(&stray)
            .body(b"{}".to_vec().into())
            .send()
            .await
            .unwrap();
        let restored = snapshot_cli("restore", &restore_args);
        assert!(restored.status.success(), "{}", text(&restored));
        let older_id = older
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".manifest.json");
        assert!(
            String::from_utf8_lossy(&restored.stdout).contains(older_id),
            "{}",
            text(&restored)
        );
        let mut server = Server::start(&target, &[FAST_COMMITS, AUDIT_OF_AUDIT_OFF].concat()).await;
        let logs = fetch_all_logs(&client, server.base_url(), server.token(), OTHER_TENANT).await;
        assert_eq!(logs.len(), 25);
        assert!(server.terminate().await.success());

        // Restoring into a directory that holds a store is refused.
        let refused = snapshot_cli("restore", &restore_args);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("already holds a store"),
            "{}",
            text(&refused)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn the_service_snapshots_periodically_and_keeps_the_newest() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    let prefix = run_prefix("snap-periodic");
    within(TEST_DEADLINE, "periodic snapshots", async {
        let client = client();
        let args = s3_args(&dir, &endpoint, &bucket, &prefix);
        let serve_args: Vec<&str> = [
            &strs(&args)[..],
            FAST_COMMITS,
            AUDIT_OF_AUDIT_OFF,
            &["--snapshots-interval-seconds", "1", "--snapshots-keep", "2"],
        ]
        .concat();
        let mut server = Server::start(&dir.data_dir(), &serve_args).await;
        ingest_two_tenants(&client, &server, 0).await;
        let success = "scaivault_audit_snapshot_runs_total{outcome=\"success\"}";
        let started = Instant::now();
        let mut first_seen: Option<String> = None;
        while metric(&client, &server, success).await < 4.0 {
            if first_seen.is_none() {
                first_seen = manifests(&endpoint, &bucket, &prefix)
                    .await
                    .into_iter()
                    .next();
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "fewer than 4 snapshots"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            metric(
                &client,
                &server,
                "scaivault_audit_snapshot_runs_total{outcome=\"failure\"}"
            )
            .await,
            0.0
        );
        assert!(
            metric(
                &client,
                &server,
                "scaivault_audit_snapshot_uploaded_bytes_total"
            )
            .await
                > 0.0
        );
        assert!(server.terminate().await.success());
        // A run the shutdown interrupted may have written its manifest before pruning.
        let left = manifests(&endpoint, &bucket, &prefix).await;
        assert!((2..=3).contains(&left.len()), "{left:?}");
        let first = first_seen.expect("a snapshot was listed");
        assert!(
            !left.contains(&first),
            "the oldest snapshot was kept: {left:?}"
        );
        let first_id = first
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".manifest.json");
        let first_files = s3_keys(
            &endpoint,
            &bucket,
            &format!("{prefix}snapshots/{first_id}/"),
        )
        .await;
        assert!(first_files.is_empty(), "{first_files:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn gcs_and_azure_hold_snapshots_too_and_keep_the_newest() {
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let gcs = emulator_env("SCAIVAULT_TEST_GCS_ENDPOINT");
    let (azure, account, key) = (
        emulator_env("SCAIVAULT_TEST_AZURE_ENDPOINT"),
        emulator_env("SCAIVAULT_TEST_AZURE_ACCOUNT"),
        emulator_env("SCAIVAULT_TEST_AZURE_KEY"),
    );
    let gcs_secret = json!({"service_account_json": gcs_service_account(), "endpoint_url": &gcs});
    let azure_secret =
        json!({"account_name": &account, "account_key": &key, "endpoint_url": &azure});
    for (kind, secret) in [("gcs", gcs_secret), ("azure_blob", azure_secret)] {
        let dir = TestDir::new();
        let prefix = run_prefix(&format!("snap-{kind}"));
        within(TEST_DEADLINE, kind, async {
            let (pruned, kept) = cli_round_trip(&dir, kind, secret, &bucket, &prefix).await;
            let get = async |object: &str| match kind {
                "gcs" => gcs_get(&gcs, &bucket, object).await,
                _ => azure_get(&azure, &account, &key, &format!("{bucket}/{object}")).await,
            };
            assert!(
                get(&kept).await.is_some(),
                "{kind}: the kept snapshot is not readable"
            );
            assert_eq!(get(&pruned).await, None, "{kind}: a pruned file remains");
        })
        .await;
    }
}

/// `snapshot create` twice with `keep = 1`, `list` and `restore` on a `kind` destination;
/// returns the key of `index/meta.json` of the pruned first snapshot and of the kept one.
async fn cli_round_trip(
    dir: &TestDir,
    kind: &str,
    secret: Value,
    bucket: &str,
    prefix: &str,
) -> (String, String) {
    let client = client();
    let credentials = dir.root().join("credentials");
    write_dev_secret(&credentials, "infra/snapshots", secret);
    let credentials = credentials.display().to_string();
    let args = [
        "--credentials-dir",
        credentials.as_str(),
        "--export-allow-private-endpoints",
        "--snapshots-type",
        kind,
        "--snapshots-bucket",
        bucket,
        "--snapshots-prefix",
        prefix,
        "--snapshots-credentials-path",
        "infra/snapshots",
        "--snapshots-keep",
        "1",
    ];
    let source = dir.data_dir();
    let mut server = Server::start(&source, &[FAST_COMMITS, AUDIT_OF_AUDIT_OFF].concat()).await;
    ingest_two_tenants(&client, &server, 0).await;
    assert!(server.terminate().await.success());
    let mut create_args = vec!["--data-dir", source.to_str().unwrap()];
    create_args.extend(args);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = snapshot_cli("create", &create_args);
        assert!(created.status.success(), "{kind}: {}", text(&created));
        let stdout = String::from_utf8_lossy(&created.stdout).into_owned();
        ids.push(stdout.split_whitespace().nth(1).unwrap().to_owned());
    }
    let listed = snapshot_cli("list", &args);
    assert!(listed.status.success(), "{kind}: {}", text(&listed));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.lines().count(), 1, "{kind}: {listed}");
    assert!(listed.starts_with(&ids[1]), "{kind}: {listed}");

    let target = dir.root().join("restored");
    let mut restore_args = vec!["--to", target.to_str().unwrap()];
    restore_args.extend(args);
    let restored = snapshot_cli("restore", &restore_args);
    assert!(restored.status.success(), "{kind}: {}", text(&restored));
    let mut server = Server::start(&target, &[FAST_COMMITS, AUDIT_OF_AUDIT_OFF].concat()).await;
    let logs = fetch_all_logs(&client, server.base_url(), server.token(), TENANT).await;
    assert_eq!(logs.len(), 25, "{kind}");
    assert!(server.terminate().await.success());
    let meta = |id: &str| format!("{prefix}snapshots/{id}/index/meta.json");
    (meta(&ids[0]), meta(&ids[1]))
}
