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
