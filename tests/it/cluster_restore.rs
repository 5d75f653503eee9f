//! New and rebuilt replicas of the clustered mode (docs/cluster.md): a stream with a short
//! window (`max_age`), real `nats-server` nodes of the test's own, real service replicas and
//! the S3 emulator as the snapshot destination. A replica that joins with an empty data
//! directory after the window moved on restores a snapshot, consumes the stream after it and
//! answers like the others; a replica inside the window does not restore; a replica out of the
//! window without a usable snapshot refuses to start and changes nothing, and with one it
//! restores over its stale store. Needs `$SCAIVAULT_TEST_NATS_SERVER` and the emulators.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;

use crate::harness::export::*;
use crate::harness::nats::NatsCluster;
use crate::harness::*;
use crate::snapshots::{cursor_walk, metric, run_prefix, s3_args, summary, text};

const STREAM: &str = "SCAIVAULT_AUDIT";
/// The stream's window: records expire this long after they were published.
const WINDOW_SECONDS: u64 = 30;
const TEST_DEADLINE: Duration = Duration::from_secs(300);
const RESTORED: &str = "scaivault_audit_snapshot_restores_total{outcome=\"success\"}";
const UPLOADED: &str = "scaivault_audit_snapshot_runs_total{outcome=\"success\"}";

/// Serve arguments of replica `id`: the stream with the short window, then `extra`.
fn replica_args(nats: &NatsCluster, id: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--nats-url",
        &nats.urls(),
        "--replica-id",
        id,
        "--nats-max-age-seconds",
        &WINDOW_SECONDS.to_string(),
        "--nats-duplicate-window-seconds",
        "5",
        // The default (16 GiB) is more file storage than a test machine's JetStream offers.
        "--nats-max-bytes",
        &(256u64 << 20).to_string(),
        "--cursor-key-file",
        &nats.cursor_key_file().display().to_string(),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(FAST_COMMITS.iter().map(|arg| arg.to_string()));
    args.extend(AUDIT_OF_AUDIT_OFF.iter().map(|arg| arg.to_string()));
    args.extend(extra.iter().cloned());
    args
}

fn with(args: &[String], more: &[&str]) -> Vec<String> {
    args.iter()
        .cloned()
        .chain(more.iter().map(|arg| arg.to_string()))
        .collect()
}

async fn start(data_dir: &Path, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(data_dir, &args).await
}

/// Ten events of each tenant, through `server`; their ids.
async fn ingest_both(client: &Client, server: &Server, first: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for tenant in [TENANT, OTHER_TENANT] {
        let events: Vec<Value> = (first..first + 10)
            .map(|i| event_for_tenant(i, Some(tenant)))
            .collect();
        ids.extend(ingest_ok(client, server.base_url(), server.token(), &events).await);
    }
    ids
}

/// Waits until every id of `ids` is visible on `server` (for each tenant).
async fn visible(client: &Client, server: &Server, ids: &[String]) {
    let started = Instant::now();
    loop {
        let mut seen = 0;
        for tenant in [TENANT, OTHER_TENANT] {
            let logs = fetch_all_logs(client, server.base_url(), server.token(), tenant).await;
            seen += ids
                .iter()
                .filter(|id| {
                    logs.iter()
                        .any(|log| log["id"].as_str() == Some(id.as_str()))
                })
                .count();
        }
        if seen == ids.len() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{seen} of {} events visible on {}",
            ids.len(),
            server.base_url()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a replica answers: both tenants' full cursor walks and summaries.
async fn answers(client: &Client, server: &Server) -> Vec<Value> {
    let mut answers = Vec::new();
    for tenant in [TENANT, OTHER_TENANT] {
        answers.push(Value::Array(cursor_walk(client, server, tenant, 7).await));
        answers.push(summary(client, server, tenant).await);
    }
    answers
}

/// Every file under `dir` (but the lock) with its content.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() != "LOCK" {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn new_dir(dir: &TestDir, name: &str) -> PathBuf {
    let path = dir.root().join(name);
    std::fs::create_dir(&path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster.sh and scripts/emulators.sh"]
async fn a_replica_joining_after_the_window_moved_on_restores_a_snapshot_and_converges() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    let nats = NatsCluster::start(dir.root()).await;
    let prefix = run_prefix("cluster-restore");
    let snapshots = s3_args(&dir, &endpoint, &bucket, &prefix);
    let uploads = with(
        &snapshots,
        &["--snapshots-interval-seconds", "1", "--snapshots-keep", "2"],
    );
    let restores_only = with(&snapshots, &["--snapshots-interval-seconds", "0"]);
    within(TEST_DEADLINE, "restore after the window moved on", async {
        let client = client();
        let (data_a, data_b, data_l) = (
            new_dir(&dir, "a"),
            new_dir(&dir, "b"),
            new_dir(&dir, "lagger"),
        );
        let args_a = replica_args(&nats, "replica-a", &uploads);
        let args_b = replica_args(&nats, "replica-b", &restores_only);
        let mut a = start(&data_a, &args_a).await;
        let mut b = start(&data_b, &args_b).await;
        // A replica without snapshots that indexes the first records only, then stops.
        let mut lagger = start(&data_l, &replica_args(&nats, "replica-l", &[])).await;
        let mut ids = ingest_both(&client, &a, 0).await;
        visible(&client, &lagger, &ids).await;
        assert!(lagger.terminate().await.success());
        ids.extend(ingest_both(&client, &b, 100).await);
        for replica in [&a, &b] {
            visible(&client, replica, &ids).await;
        }
        let (_, end_of_first) = nats.stream_window(STREAM).await;
        // A snapshot run that starts now holds every record so far; then a stops uploading.
        let runs = metric(&client, &a, UPLOADED).await;
        let started = Instant::now();
        while metric(&client, &a, UPLOADED).await < runs + 2.0 {
            assert!(started.elapsed() < Duration::from_secs(30), "no snapshot");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(a.terminate().await.success());

        // The first records expire; then more come. (Records written before the expiry could
        // expire with the first ones: JetStream checks ages on a timer of its own, which has
        // been seen to remove records half a window apart in one sweep.)
        let started = Instant::now();
        let first = loop {
            let (first, _) = nats.stream_window(STREAM).await;
            if first > end_of_first {
                break first;
            }
            assert!(
                started.elapsed() < Duration::from_secs(WINDOW_SECONDS + 30),
                "the stream's window did not move past {end_of_first} (first record {first})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!("the window moved on: the first records end at {end_of_first}, the stream starts at {first}");
        ids.extend(ingest_both(&client, &b, 200).await);

        // A new replica with an empty data directory restores a's snapshot and consumes the
        // records after it.
        let data_c = new_dir(&dir, "c");
        let c = start(&data_c, &replica_args(&nats, "replica-c", &restores_only)).await;
        assert_eq!(metric(&client, &c, RESTORED).await, 1.0);
        visible(&client, &c, &ids).await;
        // b's position is inside the window: it restarts without a restore.
        assert!(b.terminate().await.success());
        let b = start(&data_b, &args_b).await;
        assert_eq!(metric(&client, &b, RESTORED).await, 0.0);
        let a = start(&data_a, &args_a).await;
        ids.extend(ingest_both(&client, &c, 300).await);
        for replica in [&a, &b, &c] {
            visible(&client, replica, &ids).await;
        }

        // The lagger's records 1.. expired before it indexed them. Without a usable snapshot
        // (an empty destination) it refuses to start and changes nothing.
        let before = contents(&data_l);
        let empty_prefix = run_prefix("cluster-restore-empty");
        let nowhere = s3_args(&dir, &endpoint, &bucket, &empty_prefix);
        let refused_args = with(
            &["serve", "--data-dir", data_l.to_str().unwrap(), "--listen", "127.0.0.1:0"]
                .map(str::to_string),
            &replica_args(&nats, "replica-l", &nowhere)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let refused = run_to_exit(&refused_args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        for part in [
            "replica replica-l cannot join JetStream stream SCAIVAULT_AUDIT",
            "expired before this replica indexed them",
            &format!("s3://{bucket}/{empty_prefix}"),
            "holds no snapshot of a cluster replica",
            "was changed",
        ] {
            assert!(stderr.contains(part), "{part}: {}", text(&refused));
        }
        assert_eq!(contents(&data_l), before, "a refused start changed the data directory");
        // With the shared destination it restores over its stale store.
        let lagger = start(&data_l, &replica_args(&nats, "replica-l", &restores_only)).await;
        assert_eq!(metric(&client, &lagger, RESTORED).await, 1.0);
        visible(&client, &lagger, &ids).await;

        // Every replica answers the same: full cursor walks and summaries of both tenants.
        let expected = answers(&client, &a).await;
        for replica in [&b, &c, &lagger] {
            assert_eq!(
                answers(&client, replica).await,
                expected,
                "{} answers differently",
                replica.base_url()
            );
        }
        for tenant in [TENANT, OTHER_TENANT] {
            let logs = fetch_all_logs(&client, c.base_url(), c.token(), tenant).await;
            assert_eq!(logs.len(), ids.len() / 2, "{tenant}");
        }
        eprintln!(
            "{} events; the stream starts at {first}; a, b, c and the rebuilt lagger agree",
            ids.len()
        );
    })
    .await;
}

const HELD: &str = "scaivault_audit_cluster_role_held{role=\"snapshotter\"}";
const TAKEN: &str = "scaivault_audit_cluster_lease_acquisitions_total{lease=\"snapshotter\"}";
const LOST: &str = "scaivault_audit_cluster_lease_losses_total{lease=\"snapshotter\"}";
const FAILED: &str = "scaivault_audit_snapshot_runs_total{outcome=\"failure\"}";
/// The coordination leases' TTL in the single-uploader test.
const LEASE_TTL_SECONDS: u64 = 3;

/// The complete snapshots at `prefix` of the emulator's `bucket`: ids, newest first.
async fn complete_snapshots(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let folder = format!("{prefix}snapshots/");
    let mut ids: Vec<String> = s3_keys(endpoint, bucket, &folder)
        .await
        .iter()
        .filter_map(|key| key.strip_prefix(folder.as_str()))
        .filter_map(|rest| rest.strip_suffix(".manifest.json"))
        .map(str::to_string)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// Waits until `series` on `server` reaches at least `value`.
async fn metric_reaches(
    client: &Client,
    server: &Server,
    series: &str,
    value: f64,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let now = metric(client, server, series).await;
        if now >= value {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{series} on {} stayed at {now} (waited for {value})",
            server.base_url()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster.sh and scripts/emulators.sh"]
async fn one_replica_uploads_snapshots_and_the_next_holder_prunes_what_the_dead_one_left() {
    use scaivault_audit::snapshot::manifest::owner_tag;
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    let nats = NatsCluster::start(dir.root()).await;
    let prefix = run_prefix("cluster-uploader");
    let uploads = with(
        &s3_args(&dir, &endpoint, &bucket, &prefix),
        &[
            "--snapshots-interval-seconds",
            "1",
            "--snapshots-keep",
            "2",
            "--cluster-lease-ttl-seconds",
            &LEASE_TTL_SECONDS.to_string(),
        ],
    );
    within(TEST_DEADLINE, "one snapshot uploader per cluster", async {
        let client = client();
        let ids_of = ["replica-a", "replica-b"];
        let mut replicas = Vec::new();
        for id in ids_of {
            let data = new_dir(&dir, id);
            replicas.push(Some(start(&data, &replica_args(&nats, id, &uploads)).await));
        }
        let mut ids = ingest_both(&client, replicas[0].as_ref().unwrap(), 0).await;
        for replica in replicas.iter().flatten() {
            visible(&client, replica, &ids).await;
        }
        // One of them takes the role; it uploads, the other never does.
        let started = Instant::now();
        let holder = loop {
            let mut held = Vec::new();
            for replica in replicas.iter().flatten() {
                held.push(metric(&client, replica, HELD).await == 1.0);
            }
            match held[..] {
                [true, false] => break 0,
                [false, true] => break 1,
                [true, true] => panic!("both replicas hold the snapshotter role"),
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nobody holds the role"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let other = 1 - holder;
        let (holder_server, other_server) = (
            replicas[holder].as_ref().unwrap(),
            replicas[other].as_ref().unwrap(),
        );
        metric_reaches(
            &client,
            holder_server,
            UPLOADED,
            3.0,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(metric(&client, holder_server, TAKEN).await, 1.0);
        for series in [UPLOADED, FAILED, TAKEN, HELD] {
            assert_eq!(metric(&client, other_server, series).await, 0.0, "{series}");
        }
        let holder_tag = owner_tag(ids_of[holder]);
        let old = complete_snapshots(&endpoint, &bucket, &prefix).await;
        assert!(old.len() >= 2, "{old:?}");
        assert!(
            old.iter().all(|id| id.ends_with(&holder_tag)),
            "a snapshot of another replica than the holder {}: {old:?}",
            ids_of[holder]
        );

        // The holder dies: after its lease lapsed the other takes the role, uploads (further
        // along the log) and prunes the dead holder's snapshots beyond the newest 2.
        replicas[holder].as_mut().unwrap().kill9();
        let killed_at = Instant::now();
        let survivor = replicas[other].as_ref().unwrap();
        ids.extend(ingest_both(&client, survivor, 100).await);
        visible(&client, survivor, &ids).await;
        let ttl = Duration::from_secs(LEASE_TTL_SECONDS);
        metric_reaches(&client, survivor, HELD, 1.0, ttl * 5).await;
        let took_over = killed_at.elapsed();
        assert!(
            took_over >= ttl / 2,
            "the role moved before the dead holder's lease could lapse: {took_over:?}"
        );
        assert_eq!(metric(&client, survivor, TAKEN).await, 1.0);
        assert_eq!(metric(&client, survivor, LOST).await, 0.0);
        metric_reaches(&client, survivor, UPLOADED, 2.0, Duration::from_secs(60)).await;
        let survivor_tag = owner_tag(ids_of[other]);
        let started = Instant::now();
        let left = loop {
            let left = complete_snapshots(&endpoint, &bucket, &prefix).await;
            if left.len() == 2 && left.iter().all(|id| id.ends_with(&survivor_tag)) {
                break left;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the dead holder's snapshots were not pruned: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let keys = s3_keys(&endpoint, &bucket, &format!("{prefix}snapshots/")).await;
        for id in &old {
            assert!(
                !keys.iter().any(|key| key.contains(id.as_str())),
                "a file of the pruned snapshot {id} is left"
            );
        }
        eprintln!(
            "{} held the role, {} took it over {took_over:?} after the kill; left: {left:?}",
            ids_of[holder], ids_of[other]
        );
    })
    .await;
}
