//! Export schedules shared among the replicas of a cluster outside Kubernetes (docs/cluster.md,
//! "Coordination"): a three-node NATS cluster of the test's own, two real replicas, and the S3
//! emulator (moto) behind a proxy that stalls the first run part-way. The replica running the
//! schedules is killed -9 mid-run; the other resumes the run and keeps the schedule going. At
//! the end every window's objects exist exactly once and the windows are contiguous. Needs
//! `$SCAIVAULT_TEST_NATS_SERVER` (scripts/cluster.sh) and the emulators (scripts/emulators.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::export::*;
use crate::harness::nats::NatsCluster;
use crate::harness::replicas::{self, Replica};
use crate::harness::*;

const VAULT_TOKEN: &str = "svt_vault_token_for_cluster_schedules";
const SCHEDULES: &str = "/v1/audit/export-schedules";
/// Short leases: the dead runner's role moves after about this long.
const LEASE_TTL_SECONDS: u64 = 3;
/// Events of the first run, in parts of `PART_RECORDS`.
const EVENTS: u64 = 12_000;
const PART_RECORDS: u64 = 2_000;
/// The schedule's start: before every event of the test.
const START: &str = "2026-01-01T00:00:00.000000Z";
const DEADLINE: Duration = Duration::from_secs(120);

/// Replica `id`, whose schedules may run every second (the default minimum interval is 60 s).
async fn start_replica(
    nats: &NatsCluster,
    id: &'static str,
    vault: &FakeScaiVault,
    dir: &TestDir,
) -> Replica {
    let extra = ["--export-schedule-min-interval-seconds", "1"];
    replicas::start_replica(nats, id, vault, dir, LEASE_TTL_SECONDS, &extra).await
}

async fn call(
    replica: &Replica,
    method: Method,
    path: &str,
    tenant: &str,
    body: Option<&Value>,
) -> Reply {
    let mut request = client()
        .request(method, format!("{}{path}", replica.server.base_url()))
        .bearer_auth(replica.server.token())
        .header("X-Tenant-ID", tenant);
    if let Some(body) = body {
        request = request.json(body);
    }
    send(request).await
}

async fn schedule(replica: &Replica, id: &str) -> Value {
    let reply = call(
        replica,
        Method::GET,
        &format!("{SCHEDULES}/{id}"),
        TENANT,
        None,
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}: {}", replica.id, reply.2);
    reply.2
}

/// Polls the schedule on `replica` until `check` holds.
async fn wait_schedule(
    replica: &Replica,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let status = schedule(replica, id).await;
        if check(&status) {
            return status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{}: schedule not {what} after {DEADLINE:?}: {status}",
            replica.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the replica whose log has a line with every one of `needles` (waits).
async fn logged(replicas: &[&Replica], needles: &[&str]) -> usize {
    let started = Instant::now();
    loop {
        for (index, replica) in replicas.iter().enumerate() {
            let log = std::fs::read_to_string(replica.server.stderr_log()).unwrap_or_default();
            if log
                .lines()
                .any(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return index;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replica logged {needles:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An event of `tenant` numbered `n` stamped now.
fn event_now(n: u64, tenant: &str) -> Value {
    let mut event = event_for_tenant(n, Some(tenant));
    event["timestamp"] = json!(
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
            .to_string()
    );
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster.sh and scripts/emulators.sh"]
async fn a_schedule_survives_its_runners_death_with_every_window_delivered_once() {
    let dir = TestDir::new();
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let nats = NatsCluster::start(dir.root()).await;
    let vault = replicas::start_vault(&dir, VAULT_TOKEN).await;
    let a = start_replica(&nats, "replica-a", &vault, &dir).await;
    let b = start_replica(&nats, "replica-b", &vault, &dir).await;
    let client = client();

    // The first run's events (timestamps of March 2026), visible on both replicas.
    let mut expected = Vec::new();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<Value> = chunk.iter().map(|&i| event(i)).collect();
        expected.extend(ingest_ok(&client, a.server.base_url(), a.server.token(), &events).await);
    }
    let other: Vec<Value> = (0..10)
        .map(|i| event_for_tenant(EVENTS + i, Some(OTHER_TENANT)))
        .collect();
    ingest_ok(&client, a.server.base_url(), a.server.token(), &other).await;
    let mut logs = Vec::new();
    for replica in [&a, &b] {
        logs = wait_until_visible(
            &client,
            replica.server.base_url(),
            replica.server.token(),
            Some(TENANT),
            &expected,
            Duration::from_secs(60),
        )
        .await;
    }
    let record_bytes = logs
        .iter()
        .map(|log| serde_json::to_string(log).unwrap().len() as u64)
        .sum::<u64>()
        / logs.len() as u64;

    // The schedule is created on the replica that does not run schedules.
    let holder = logged(&[&a, &b], &["this replica runs the export schedules"]).await;
    let (runner, creator) = if holder == 0 { (&a, &b) } else { (&b, &a) };
    let proxy = Proxy::start(endpoint_addr(&endpoint)).await;
    vault.put(
        "infra/aws/proxied",
        json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": "s3-secret",
               "region": "us-east-1", "endpoint_url": proxy.url()}),
    );
    // The first run stalls after about two and a half parts.
    proxy.cut_after(record_bytes * PART_RECORDS * 5 / 2);
    let prefix = format!(
        "schedule-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let body = json!({"schedule": "*/2 * * * * *", "delay_seconds": 1, "start": START,
        "format": "jsonl", "max_records_per_file": PART_RECORDS,
        "destination": {"type": "s3", "bucket": bucket, "prefix": prefix,
                        "credentials_path": "infra/aws/proxied"}});
    let created = call(creator, Method::POST, SCHEDULES, TENANT, Some(&body)).await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let id = created.2["schedule_id"].as_str().unwrap().to_string();

    // Any replica lists and reads it, for its tenant only.
    for replica in [&a, &b] {
        let started = Instant::now();
        loop {
            let listed = call(replica, Method::GET, SCHEDULES, TENANT, None).await;
            assert_eq!(listed.0, StatusCode::OK, "{}", listed.2);
            let ids: Vec<&str> = listed.2["schedules"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|schedule| schedule["schedule_id"].as_str())
                .collect();
            if ids == [id.as_str()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} lists {ids:?}",
                replica.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let foreign = call(
            replica,
            Method::GET,
            &format!("{SCHEDULES}/{id}"),
            OTHER_TENANT,
            None,
        )
        .await;
        assert_error(&foreign, StatusCode::NOT_FOUND, "schedule_not_found");
        let listed = call(replica, Method::GET, SCHEDULES, OTHER_TENANT, None).await;
        assert_eq!(listed.2["schedules"], json!([]), "{}", replica.id);
    }

    // The first run stalls part-way on the runner; the other replica sees its progress.
    let first_run = format!("{id}_r000001");
    let ran = logged(&[&a, &b], &["scheduled export run", &first_run]).await;
    assert_eq!(ran, holder, "the role holder runs the schedule");
    let stalled = wait_schedule(creator, &id, "part-way", |status| {
        proxy.is_down()
            && status["status"]["current_run"]["files_uploaded"]
                .as_u64()
                .unwrap_or(0)
                > 0
    })
    .await;
    let uploaded_before = stalled["status"]["current_run"]["files_uploaded"]
        .as_u64()
        .unwrap();
    assert!(
        uploaded_before < EVENTS / PART_RECORDS,
        "stalled after {uploaded_before} parts: {stalled}"
    );
    assert_eq!(stalled["status"]["runs_completed"], 0, "{stalled}");
    let runner_id = runner.id;
    let (mut dead, survivor) = if holder == 0 { (a, b) } else { (b, a) };
    eprintln!("killing {runner_id} (runs {first_run}, {uploaded_before} parts uploaded)");
    dead.server.kill9();
    proxy.restore();
    let killed_at = Instant::now();

    // The survivor takes the role over and resumes the same run from its checkpoint.
    logged(
        &[&survivor],
        &["scheduled export run", &first_run, "parts_done"],
    )
    .await;
    let log = std::fs::read_to_string(survivor.server.stderr_log()).unwrap();
    let resumed = log.lines().any(|line| {
        line.contains("scheduled export run")
            && line.contains(&first_run)
            && !line.contains("parts_done=0")
    });
    assert!(
        resumed,
        "{} resumed {first_run} from its checkpoint",
        survivor.id
    );
    let completed = wait_schedule(&survivor, &id, "past its first run", |status| {
        status["status"]["runs_completed"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    eprintln!(
        "{} completed the first run {:?} after the kill",
        survivor.id,
        killed_at.elapsed()
    );
    assert_eq!(completed["status"]["last_runs"][0]["export_id"], first_run);

    // More runs on the survivor, with current events and late ones (old timestamps).
    let mut n = EVENTS + 100;
    for _ in 0..3 {
        let mut events: Vec<Value> = (0..5).map(|i| event_now(n + i, TENANT)).collect();
        events.push(event(n + 5));
        events.push(event_now(n + 6, OTHER_TENANT));
        n += 10;
        let ids = ingest_ok(
            &client,
            survivor.server.base_url(),
            survivor.server.token(),
            &events,
        )
        .await;
        expected.extend(ids.into_iter().take(6));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let last_ingest = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
    let final_status = wait_schedule(&survivor, &id, "caught up", |status| {
        status["status"]["last_runs"]
            .as_array()
            .and_then(|runs| runs.last())
            .is_some_and(|run| run["to"].as_str().unwrap_or_default() > last_ingest.as_str())
    })
    .await;
    let runs = final_status["status"]["runs_completed"].as_u64().unwrap();
    assert!(runs >= 3, "{final_status}");
    let deleted = call(
        &survivor,
        Method::DELETE,
        &format!("{SCHEDULES}/{id}"),
        TENANT,
        None,
    )
    .await;
    assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.2);

    // Every run's objects: one manifest per run, contiguous windows from the start, every
    // part listed once, every event of the tenant exactly once.
    let keys = s3_keys(&endpoint, &bucket, &prefix).await;
    let mut manifests: BTreeMap<String, Value> = BTreeMap::new();
    for key in keys.iter().filter(|key| key.ends_with("manifest.json")) {
        let bytes = s3_get(&endpoint, &bucket, key).await.unwrap();
        let manifest: Value = serde_json::from_slice(&bytes).unwrap();
        let export_id = manifest["export_id"].as_str().unwrap().to_string();
        assert!(
            manifests.insert(export_id.clone(), manifest).is_none(),
            "two manifests of {export_id}: {keys:?}"
        );
    }
    assert!(
        manifests.len() as u64 >= runs,
        "{} manifests for {runs} runs: {keys:?}",
        manifests.len()
    );
    let mut previous_to = START.to_string();
    let mut delivered: Vec<String> = Vec::new();
    let mut listed_parts = 0;
    for (export_id, manifest) in &manifests {
        assert_eq!(
            manifest["from"].as_str(),
            Some(previous_to.as_str()),
            "{export_id}: windows are contiguous"
        );
        previous_to = manifest["to"].as_str().unwrap().to_string();
        let parts = read_parts(manifest, |key| {
            let (endpoint, bucket) = (endpoint.clone(), bucket.clone());
            async move { s3_get(&endpoint, &bucket, &key).await }
        })
        .await;
        // The run's prefix holds exactly the parts its manifest lists (a part uploaded twice
        // across the takeover went to the same key).
        let files: BTreeSet<&str> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| file["key"].as_str().unwrap())
            .collect();
        let run_prefix = manifest["destination"]["prefix"].as_str().unwrap();
        let stored: BTreeSet<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| key.starts_with(run_prefix) && key.contains("part-"))
            .collect();
        assert_eq!(stored, files, "{export_id}: no stray parts");
        listed_parts += files.len();
        let records: Vec<Value> = parts
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(
            records.len() as u64,
            manifest["record_count"].as_u64().unwrap(),
            "{export_id}"
        );
        delivered.extend(
            records
                .iter()
                .map(|record| record["id"].as_str().unwrap().to_string()),
        );
    }
    let first = &manifests[&first_run];
    assert_eq!(
        first["files"].as_array().unwrap().len() as u64,
        EVENTS.div_ceil(PART_RECORDS),
        "{first}"
    );
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event was delivered twice"
    );
    let expected: BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<_> = expected.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(
        final_status["status"]["complete_through"].as_str(),
        manifests
            .values()
            .find(|manifest| manifest["export_id"]
                == final_status["status"]["last_runs"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()["export_id"])
            .and_then(|manifest| manifest["to"].as_str()),
        "the watermark is the last window's end"
    );
    eprintln!(
        "{} runs, {} events delivered once, {} parts",
        manifests.len(),
        delivered.len(),
        listed_parts
    );
    drop(dead);
}
