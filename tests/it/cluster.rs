//! The clustered mode (docs/cluster.md): real `nats-server` nodes of the test's own
//! ([`NatsCluster`]) and real service replicas. Needs `$SCAIVAULT_TEST_NATS_SERVER`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::nats::NatsCluster;
use crate::harness::*;

const STREAM: &str = "SCAIVAULT_AUDIT";

/// Serve arguments of replica `id` on `cluster`.
fn replica_args(cluster: &NatsCluster, id: &str, publish_timeout_ms: u64) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        cluster.urls(),
        "--replica-id".into(),
        id.into(),
        "--nats-publish-timeout-ms".into(),
        publish_timeout_ms.to_string(),
        // The default (16 GiB) is more file storage than a test machine's JetStream offers.
        "--nats-max-bytes".into(),
        (256u64 << 20).to_string(),
        "--cursor-key-file".into(),
        cluster.cursor_key_file().display().to_string(),
    ];
    args.extend(FAST_COMMITS.iter().map(|arg| arg.to_string()));
    args.extend(AUDIT_OF_AUDIT_OFF.iter().map(|arg| arg.to_string()));
    args
}

async fn start_replica(data_dir: &std::path::Path, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(data_dir, &args).await
}

/// Where a writer sends: every live replica's base URL and token.
type Targets = Arc<RwLock<Vec<Option<(String, String)>>>>;

/// What one writer saw: batches acknowledged, and batches never acknowledged.
#[derive(Default)]
struct Written {
    acknowledged: Vec<String>,
    refused: Vec<Vec<String>>,
}

/// Posts batches of fresh producer ids round-robin over the replicas until `stop`; a batch not
/// acknowledged is retried with the same ids (on the next replica) for up to 30 s.
async fn writer(targets: Targets, stop: Arc<AtomicBool>, first: u64) -> Written {
    let client = client();
    let mut written = Written::default();
    let mut turn = 0usize;
    let mut i = first;
    while !stop.load(Ordering::SeqCst) {
        let events = events_with_producer_ids(i, 10);
        i += 10;
        let ids = ids_of(&events);
        let body = json!({ "events": events });
        let started = Instant::now();
        let mut acknowledged = false;
        while started.elapsed() < Duration::from_secs(30) {
            turn += 1;
            let target = {
                let targets = targets.read();
                let live: Vec<_> = targets.iter().flatten().cloned().collect();
                live.get(turn % live.len().max(1)).cloned()
            };
            if let Some((base, token)) = target
                && let Ok((status, _, _)) = try_post_events(&client, &base, &token, &body).await
                && status == StatusCode::OK
            {
                acknowledged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if acknowledged {
            written.acknowledged.extend(ids);
        } else {
            written.refused.push(ids);
        }
    }
    written
}

/// Every id of `logs` in cursor order.
fn ids_in_order(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|log| log["id"].as_str().expect("log id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster.sh"]
async fn replicas_keep_every_acknowledged_event_once_through_leader_and_replica_kills() {
    let dir = TestDir::new();
    let mut nats = NatsCluster::start(dir.root()).await;
    let data_a = dir.data_dir();
    let data_b = dir.root().join("data-b");
    std::fs::create_dir(&data_b).unwrap();
    let args_a = replica_args(&nats, "replica-a", 2000);
    let args_b = replica_args(&nats, "replica-b", 2000);
    let a = start_replica(&data_a, &args_a).await;
    let mut b = start_replica(&data_b, &args_b).await;
    let targets: Targets = Arc::new(RwLock::new(vec![
        Some((a.base_url().to_string(), a.token().to_string())),
        Some((b.base_url().to_string(), b.token().to_string())),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|n| tokio::spawn(writer(targets.clone(), stop.clone(), n * 1_000_000)))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = nats.stream_leader(STREAM).await;
    nats.kill9(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    targets.write()[1] = None;
    b.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart(leader).await;
    let b = start_replica(&data_b, &args_b).await;
    targets.write()[1] = Some((b.base_url().to_string(), b.token().to_string()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);

    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for writer in writers {
        let written = writer.await.unwrap();
        acknowledged.extend(written.acknowledged);
        refused.extend(written.refused);
    }
    assert!(
        acknowledged.len() >= 100,
        "too few events acknowledged to mean anything: {}",
        acknowledged.len()
    );
    let client = client();
    let mut walks = Vec::new();
    for replica in [&a, &b] {
        let logs = wait_until_visible(
            &client,
            replica.base_url(),
            replica.token(),
            Some(TENANT),
            &acknowledged,
            Duration::from_secs(60),
        )
        .await;
        assert_each_present_once(&logs, &acknowledged);
        // No replica took a late delivery for a gap in the log (it would skip the late records).
        let ready = send(client.get(format!("{}/v1/health/ready", replica.base_url()))).await;
        assert_eq!(ready.2["checks"]["log"], json!("ok"), "{}", ready.2);
        // A request that was never acknowledged is stored whole (its publish was committed
        // after the timeout) or not at all.
        let counts = id_counts(&logs);
        for ids in &refused {
            let present = ids.iter().filter(|id| counts.contains_key(*id)).count();
            assert!(
                present == 0 || present == ids.len(),
                "a refused request is half-present: {present} of {}",
                ids.len()
            );
        }
        walks.push(ids_in_order(&logs));
    }
    assert_eq!(
        walks[0], walks[1],
        "both replicas hold the same events in the same order"
    );
    eprintln!(
        "cluster: {} events acknowledged, {} requests never acknowledged, {} stored",
        acknowledged.len(),
        refused.len(),
        walks[0].len()
    );
}

/// A replica that starts while JetStream has no meta leader (two of three nodes down, as when
/// one restarts right after another was killed) waits for its key-value buckets instead of
/// failing its start, and opens them once the nodes are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh"]
async fn key_value_buckets_are_waited_for_while_jetstream_has_no_leader() {
    let dir = TestDir::new();
    let mut nats = NatsCluster::start(dir.root()).await;
    nats.kill9(1);
    nats.kill9(2);
    let urls = nats.urls();
    let first = urls.split(',').next().unwrap().to_string();
    // Requests time out after a second, so that an opening that gives up shows within the wait.
    let context = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(async_nats::connect(first).await.unwrap());
    let config = async_nats::jetstream::kv::Config {
        bucket: "WAITED_FOR".into(),
        history: 1,
        num_replicas: 3,
        ..Default::default()
    };
    let opening = tokio::spawn(async move {
        scaivault_audit::cluster::kv::open_or_create(&context, config)
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !opening.is_finished(),
        "gave up while two nodes were down: {:?}",
        opening.await
    );
    nats.restart(1).await;
    nats.restart(2).await;
    opening
        .await
        .unwrap()
        .expect("the bucket opens once the nodes are back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh"]
async fn without_quorum_ingest_answers_503_in_time_and_retries_store_once() {
    let dir = TestDir::new();
    let mut nats = NatsCluster::start(dir.root()).await;
    let deadline_ms = 1000;
    let server = start_replica(&dir.data_dir(), &replica_args(&nats, "solo", deadline_ms)).await;
    let client = client();
    let (base, token) = (server.base_url(), server.token());
    let before = events_with_producer_ids(0, 20);
    let mut expected = ingest_ok(&client, base, token, &before).await;

    let leader = nats.stream_leader(STREAM).await;
    let down: Vec<usize> = (0..3).filter(|n| *n != leader).collect();
    for node in &down {
        nats.kill9(*node);
    }
    let during = events_with_producer_ids(100, 20);
    let body = json!({ "events": during });
    for _ in 0..3 {
        let started = Instant::now();
        let reply = post_events(&client, base, token, body.clone()).await;
        let elapsed = started.elapsed();
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        );
        assert_eq!(
            header_u64(&reply.1, "retry-after"),
            Some(1),
            "{:?}",
            reply.1
        );
        assert!(
            elapsed < Duration::from_millis(deadline_ms + 1500),
            "503 after {elapsed:?}, the deadline is {deadline_ms} ms"
        );
    }
    // Queries keep working without quorum.
    let (status, _, _) = get_logs(&client, base, token, Some(TENANT), "limit=1").await;
    assert_eq!(status, StatusCode::OK);

    for node in &down {
        nats.restart(*node).await;
    }
    // The client retries the refused request with the same ids until it is acknowledged.
    let started = Instant::now();
    let reply = loop {
        let reply = post_events(&client, base, token, body.clone()).await;
        if reply.0 == StatusCode::OK {
            break reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no acknowledgement 60 s after the quorum returned: {}",
            reply.2
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "retry acknowledged after {:?}: {}",
        started.elapsed(),
        reply.2
    );
    expected.extend(reply_ids(&reply.2));
    // The same request again, and the same events regrouped (another message id, so only the
    // replicas' own deduplication can drop them): nothing is stored twice.
    let again = post_events(&client, base, token, body.clone()).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.2);
    assert_eq!(again.2["duplicates"], json!(20), "{}", again.2);
    let regrouped: Vec<Value> = during.iter().rev().take(5).cloned().collect();
    ingest_ok(&client, base, token, &regrouped).await;

    let logs = wait_until_visible(
        &client,
        base,
        token,
        Some(TENANT),
        &expected,
        Duration::from_secs(30),
    )
    .await;
    assert_each_present_once(&logs, &expected);
    assert_eq!(logs.len(), 40, "exactly the 40 distinct events");
    let ready = send(client.get(format!("{base}/v1/health/ready"))).await;
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.2);
    assert_eq!(ready.2["checks"]["log"], json!("ok"), "{}", ready.2);
    let counts: HashMap<String, usize> = id_counts(&logs);
    assert!(counts.values().all(|count| *count == 1));
}

/// One page of `GET /v1/audit/logs` on `server`: its ids and the cursor to the next page.
async fn logs_page(
    client: &reqwest::Client,
    server: &Server,
    query: &str,
) -> (Vec<String>, Option<String>) {
    let (status, _, page) = get_logs(
        client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        query,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "GET /v1/audit/logs?{query}: {page}");
    let logs = page["logs"].as_array().expect("logs").clone();
    let cursor = page["cursor"].as_str().map(str::to_string);
    (ids_in_order(&logs), cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh"]
async fn a_cursor_from_one_replica_continues_on_another() {
    let dir = TestDir::new();
    let nats = NatsCluster::start(dir.root()).await;
    let data_b = dir.root().join("data-b");
    std::fs::create_dir(&data_b).unwrap();
    let a = start_replica(&dir.data_dir(), &replica_args(&nats, "replica-a", 2000)).await;
    let b = start_replica(&data_b, &replica_args(&nats, "replica-b", 2000)).await;
    let client = client();
    let events = events_with_producer_ids(0, 30);
    let ids = ingest_ok(&client, a.base_url(), a.token(), &events).await;
    for replica in [&a, &b] {
        let logs = wait_until_visible(
            &client,
            replica.base_url(),
            replica.token(),
            Some(TENANT),
            &ids,
            Duration::from_secs(30),
        )
        .await;
        assert_each_present_once(&logs, &ids);
    }

    // Page 1 on A, page 2 on B with A's cursor, page 3 on A with B's: the same walk as on A.
    let (first, cursor) = logs_page(&client, &a, "limit=10").await;
    let cursor = cursor.expect("a cursor after the first page");
    let (second, cursor) = logs_page(
        &client,
        &b,
        &format!("limit=10&cursor={}", percent_encode(&cursor)),
    )
    .await;
    let cursor = cursor.expect("a cursor after the second page");
    let (third, _) = logs_page(
        &client,
        &a,
        &format!("limit=10&cursor={}", percent_encode(&cursor)),
    )
    .await;
    let (whole, _) = logs_page(&client, &a, "limit=30").await;
    let walked: Vec<String> = [first, second, third].concat();
    assert_eq!(
        walked, whole,
        "pages across replicas walk the same result set"
    );
    let distinct: std::collections::HashSet<&String> = walked.iter().collect();
    assert_eq!(distinct.len(), 30, "every event once");

    // A cursor sealed with another key is still refused.
    let other = TestDir::new();
    let embedded = Server::start(&other.data_dir(), &[]).await;
    let foreign = ingest_ok(&client, embedded.base_url(), embedded.token(), &events[..3]).await;
    wait_until_visible(
        &client,
        embedded.base_url(),
        embedded.token(),
        Some(TENANT),
        &foreign,
        Duration::from_secs(30),
    )
    .await;
    let (_, cursor) = logs_page(&client, &embedded, "limit=1").await;
    let reply = get_logs(
        &client,
        b.base_url(),
        b.token(),
        Some(TENANT),
        &format!(
            "limit=1&cursor={}",
            percent_encode(&cursor.expect("cursor"))
        ),
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
}

#[test]
fn the_clustered_mode_does_not_start_without_a_shared_cursor_key() {
    let dir = TestDir::new();
    let data = dir.data_dir();
    // Refused before any connection: the URL need not answer.
    let output = run_to_exit(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--replica-id",
        "r1",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cursor_key_file"), "{stderr}");
    let bad = dir.root().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let output = run_to_exit(&[
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--replica-id",
        "r1",
        "--cursor-key-file",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("64 hex digits"), "{stderr}");
}

/// Writes `events` as an NDJSON file under `dir`.
fn ndjson_file(dir: &std::path::Path, name: &str, events: &[Value]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: String = events.iter().map(|event| format!("{event}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `import` with the cluster arguments of `nats`, the `data_dir` and `extra`.
fn import_to_cluster(
    nats: &NatsCluster,
    file: &std::path::Path,
    data_dir: &std::path::Path,
) -> std::process::Output {
    let urls = nats.urls();
    run_to_exit(&[
        "import",
        file.to_str().unwrap(),
        "--no-progress",
        "--nats-url",
        &urls,
        "--replica-id",
        "importer",
        "--nats-max-bytes",
        &(256u64 << 20).to_string(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh"]
async fn import_publishes_to_the_stream_once_and_refuses_an_embedded_store() {
    let dir = TestDir::new();
    let nats = NatsCluster::start(dir.root()).await;
    let replica = start_replica(&dir.data_dir(), &replica_args(&nats, "replica-a", 2000)).await;
    // 2500 events: three stream messages (1000, 1000, 500).
    let events = events_with_producer_ids(0, 2500);
    let ids = ids_of(&events);
    let file = ndjson_file(dir.root(), "events.ndjson", &events);
    let empty = dir.root().join("import-dir");
    let output = import_to_cluster(&nats, &file, &empty);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("published to the JetStream stream 2500 events"),
        "{stdout}"
    );
    // Imported again (a retried import): every replica still holds each event once.
    let again = import_to_cluster(&nats, &file, &empty);
    assert!(again.status.success());
    let client = client();
    let logs = wait_until_visible(
        &client,
        replica.base_url(),
        replica.token(),
        Some(TENANT),
        &ids,
        Duration::from_secs(60),
    )
    .await;
    assert_each_present_once(&logs, &ids);
    assert_eq!(logs.len(), 2500);

    // A data directory holding an embedded store is refused: the trail would be split.
    let embedded = dir.root().join("embedded");
    let small = ndjson_file(
        dir.root(),
        "small.ndjson",
        &events_with_producer_ids(5000, 3),
    );
    let output = run_to_exit(&[
        "import",
        small.to_str().unwrap(),
        "--no-progress",
        "--data-dir",
        embedded.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let refused = import_to_cluster(&nats, &small, &embedded);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("holds an embedded store"), "{stderr}");
    // Refused before connecting: nothing of it reached the stream.
    let logs = fetch_all_logs(&client, replica.base_url(), replica.token(), TENANT).await;
    assert_eq!(logs.len(), 2500);
    let small_ids: Vec<String> = std::fs::read_to_string(&small)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_none_present(&logs, &small_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/cluster.sh"]
async fn bench_ingest_cluster_reports_its_figures_and_no_lost_event() {
    let binary = crate::harness::nats::nats_server_binary();
    let dir = TestDir::new();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BINARY)
            .args([
                "bench",
                "ingest",
                "--cluster",
                "--events",
                "2000",
                "--batch",
                "50",
                "--nats-server",
                &binary,
                "--dir",
            ])
            .arg(dir.root())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix("cluster summary: "))
        .map(|json| serde_json::from_str(json).expect("the summary is JSON"))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    eprintln!("{stdout}");
    assert_eq!(summary["replicas"], json!(2), "{summary}");
    assert!(
        summary["events_per_second"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(summary["catch_up_seconds"].as_f64().is_some(), "{summary}");
    assert!(
        summary["leader_kill_longest_gap_seconds"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(
        summary["leader_kill_unavailable"].as_u64().is_some(),
        "{summary}"
    );
    assert_eq!(summary["verified_events"], json!(4000), "{summary}");
    assert_eq!(summary["lost"], json!(0), "{summary}");
    assert_eq!(summary["duplicated"], json!(0), "{summary}");
    assert_eq!(summary["unexpected"], json!(0), "{summary}");
}
