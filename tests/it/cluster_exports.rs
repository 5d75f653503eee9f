//! Export jobs shared among the replicas of a cluster outside Kubernetes (docs/cluster.md,
//! "Coordination"): a three-node NATS cluster of the test's own, two real replicas, and the S3
//! emulator (moto) behind a proxy that stalls an export part-way. Needs
//! `$SCAIVAULT_TEST_NATS_SERVER` (scripts/cluster.sh) and the emulators (scripts/emulators.sh).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::export::*;
use crate::harness::nats::NatsCluster;
use crate::harness::replicas::{Replica, start_replica, start_vault};
use crate::harness::*;

const VAULT_TOKEN: &str = "svt_vault_token_for_cluster_exports";
const PART_RECORDS: u64 = 10_000;
/// Short leases: a dead runner's job moves after about this long.
const LEASE_TTL_SECONDS: u64 = 3;
const OTHER_TENANT: &str = "tnt_other";

fn export_request(bucket: &str, prefix: &str, credentials_path: &str) -> Value {
    json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
        "max_records_per_file": PART_RECORDS,
        "filters": {"identity_type": "service_account"},
        "destination": {"type": "s3", "bucket": bucket, "prefix": prefix,
                        "credentials_path": credentials_path},
    })
}

fn unique_prefix(label: &str) -> String {
    format!(
        "{label}-{}/",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// The replica whose log says it runs `export_id` (waits for one to say so).
async fn runner_of(replicas: &[&Replica], export_id: &str) -> usize {
    let started = Instant::now();
    loop {
        for (index, replica) in replicas.iter().enumerate() {
            let log = std::fs::read_to_string(replica.server.stderr_log()).unwrap_or_default();
            if log
                .lines()
                .any(|line| line.contains("export running") && line.contains(export_id))
            {
                return index;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replica runs export {export_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET of `export_id` as `tenant`.
async fn get_as(replica: &Replica, tenant: &str, export_id: &str) -> Reply {
    send(
        client()
            .get(format!(
                "{}/v1/audit/exports/{export_id}",
                replica.server.base_url()
            ))
            .bearer_auth(replica.server.token())
            .header("X-Tenant-ID", tenant),
    )
    .await
}

/// The export ids `tenant`'s list shows on `replica`.
async fn listed_as(replica: &Replica, tenant: &str) -> Vec<String> {
    let (status, _, body) = send(
        client()
            .get(format!("{}/v1/audit/exports", replica.server.base_url()))
            .bearer_auth(replica.server.token())
            .header("X-Tenant-ID", tenant),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|export| export["export_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every replica shows the job to its tenant (list included, within a few seconds: the list
/// follows a watch) and to no other tenant.
async fn visible_only_to_its_tenant(replicas: &[&Replica], export_id: &str) {
    for replica in replicas {
        let (status, _, body) = get_as(replica, TENANT, export_id).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", replica.id);
        let (status, _, body) = get_as(replica, OTHER_TENANT, export_id).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}: {body}", replica.id);
        let started = Instant::now();
        while !listed_as(replica, TENANT)
            .await
            .iter()
            .any(|id| id == export_id)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} does not list {export_id}",
                replica.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !listed_as(replica, OTHER_TENANT)
                .await
                .iter()
                .any(|id| id == export_id),
            "{} lists {export_id} to another tenant",
            replica.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster.sh and scripts/emulators.sh"]
async fn an_export_whose_runner_dies_completes_exactly_once_on_another_replica() {
    let dir = TestDir::new();
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let nats = NatsCluster::start(dir.root()).await;
    let vault = start_vault(&dir, VAULT_TOKEN).await;
    let a = start_replica(&nats, "replica-a", &vault, &dir, LEASE_TTL_SECONDS, &[]).await;
    let b = start_replica(&nats, "replica-b", &vault, &dir, LEASE_TTL_SECONDS, &[]).await;
    let client = client();

    // 40 000 events through replica a, visible on both.
    let mut ids = Vec::new();
    for chunk in (0..40_000u64).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<Value> = chunk.iter().map(|&i| event(i)).collect();
        ids.extend(ingest_ok(&client, a.server.base_url(), a.server.token(), &events).await);
    }
    let mut logs = Vec::new();
    for replica in [&a, &b] {
        logs = wait_until_visible(
            &client,
            replica.server.base_url(),
            replica.server.token(),
            Some(TENANT),
            &ids,
            Duration::from_secs(60),
        )
        .await;
    }
    let logs = ascending(logs);

    // 1. Cancel from the replica that does not run the job: the run stops there.
    let cut = Proxy::start(endpoint_addr(&endpoint)).await;
    vault.put(
        "infra/aws/cut",
        json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": "s3-secret",
               "region": "us-east-1", "endpoint_url": cut.url()}),
    );
    cut.cut();
    let cancelled_prefix = unique_prefix("cancelled");
    let cancelled = start_export(
        &client,
        a.server.base_url(),
        a.server.token(),
        &export_request(&bucket, &cancelled_prefix, "infra/aws/cut"),
    )
    .await;
    let runner = runner_of(&[&a, &b], &cancelled).await;
    let (runner, other) = if runner == 0 { (&a, &b) } else { (&b, &a) };
    visible_only_to_its_tenant(&[&a, &b], &cancelled).await;
    let (status, _, body) = send(
        client
            .delete(format!(
                "{}/v1/audit/exports/{cancelled}",
                other.server.base_url()
            ))
            .bearer_auth(other.server.token())
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "cancel on {}: {body}", other.id);
    assert_eq!(body["status"], "cancelled", "{body}");
    // The runner stops: its log says so, and with the destination back nothing completes.
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(runner.server.stderr_log()).unwrap();
        if log.lines().any(|line| {
            line.contains("export cancelled on another replica") && line.contains(&cancelled)
        }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{} never stopped the cancelled export",
            runner.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cut.restore();
    tokio::time::sleep(Duration::from_secs(LEASE_TTL_SECONDS + 2)).await;
    for replica in [&a, &b] {
        let (_, _, body) = get_as(replica, TENANT, &cancelled).await;
        assert_eq!(body["status"], "cancelled", "{}: {body}", replica.id);
    }
    let keys = s3_keys(&endpoint, &bucket, &cancelled_prefix).await;
    assert!(
        !keys.iter().any(|key| key.ends_with("manifest.json")),
        "a cancelled export wrote its manifest: {keys:?}"
    );

    // 2. The runner is killed part-way: the other replica completes the job exactly once, and
    // its manifest links to the previous manifest of its destination family, whichever
    // replica wrote that one.
    let family = unique_prefix("family");
    vault.put(
        "infra/aws/direct",
        json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": "s3-secret",
               "region": "us-east-1", "endpoint_url": endpoint}),
    );
    let earlier = start_export(
        &client,
        a.server.base_url(),
        a.server.token(),
        &export_request(&bucket, &format!("{family}earlier/"), "infra/aws/direct"),
    )
    .await;
    let earlier_status =
        wait_finished(&client, a.server.base_url(), a.server.token(), &earlier).await;
    assert_eq!(earlier_status["status"], "completed", "{earlier_status}");
    let proxy = Proxy::start(endpoint_addr(&endpoint)).await;
    vault.put(
        "infra/aws/proxied",
        json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": "s3-secret",
               "region": "us-east-1", "endpoint_url": proxy.url()}),
    );
    proxy.cut_after(9 << 20);
    let prefix = format!("{family}takeover/");
    let export_id = start_export(
        &client,
        b.server.base_url(),
        b.server.token(),
        &export_request(&bucket, &prefix, "infra/aws/proxied"),
    )
    .await;
    let mut replicas = [Some(a), Some(b)];
    let runner = {
        let live: Vec<&Replica> = replicas.iter().flatten().collect();
        runner_of(&live, &export_id).await
    };
    let survivor = 1 - runner;
    let survivor_replica = replicas[survivor].as_ref().unwrap();
    let stalled = wait_export(
        &client,
        survivor_replica.server.base_url(),
        survivor_replica.server.token(),
        &export_id,
        "part-way",
        |body| proxy.is_down() && body["record_count"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    let uploaded_before = stalled["files"].as_array().unwrap().len();
    assert!((1..4).contains(&uploaded_before), "{stalled}");
    let mut dead = replicas[runner].take().unwrap();
    eprintln!(
        "killing {} (runs {export_id}, {uploaded_before} parts uploaded)",
        dead.id
    );
    dead.server.kill9();
    proxy.restore();
    let killed_at = Instant::now();
    let survivor = replicas[survivor].as_ref().unwrap();
    let status = wait_finished(
        &client,
        survivor.server.base_url(),
        survivor.server.token(),
        &export_id,
    )
    .await;
    eprintln!(
        "{} completed the export {:?} after the kill",
        survivor.id,
        killed_at.elapsed()
    );
    assert_eq!(status["status"], "completed", "{status}");
    let log = std::fs::read_to_string(survivor.server.stderr_log()).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("resuming export") && line.contains(&export_id)),
        "{} resumed the job",
        survivor.id
    );
    let files = status["files"].as_array().unwrap();
    assert_eq!(
        &files[..uploaded_before],
        &stalled["files"].as_array().unwrap()[..],
        "the parts checkpointed before the kill are kept"
    );
    let written = read_parts(&status, |key| {
        let (endpoint, bucket) = (endpoint.clone(), bucket.clone());
        async move { s3_get(&endpoint, &bucket, &key).await }
    })
    .await;
    assert_eq!(
        without_chain(&written),
        expected_jsonl(&logs),
        "every event of the snapshot exactly once"
    );
    let keys = s3_keys(&endpoint, &bucket, &prefix).await;
    let parts = keys.iter().filter(|key| key.contains("part-")).count();
    assert_eq!(parts, files.len(), "no stray parts: {keys:?}");
    let manifests = keys
        .iter()
        .filter(|key| key.ends_with("manifest.json"))
        .count();
    assert_eq!(manifests, 1, "{keys:?}");
    let manifest: Value = serde_json::from_slice(
        &s3_get(&endpoint, &bucket, &format!("{prefix}manifest.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["previous_manifest"]["key"],
        format!("{family}earlier/manifest.json"),
        "{manifest}"
    );
    assert_eq!(
        shared_manifest_links(&nats).await,
        vec![format!("{prefix}manifest.json")],
        "the family's newest manifest is recorded in the cluster's bucket"
    );
    eprintln!(
        "incomplete multipart uploads the killed runner left: {}",
        s3_open_uploads(&endpoint, &bucket, &prefix).await
    );
    visible_only_to_its_tenant(&[survivor], &export_id).await;

    // 3. The killed replica comes back: it lists the jobs created before it started.
    let dead_id = dead.id;
    drop(dead);
    let back = start_replica(&nats, dead_id, &vault, &dir, LEASE_TTL_SECONDS, &[]).await;
    let started = Instant::now();
    loop {
        let listed = listed_as(&back, TENANT).await;
        if [&earlier, &export_id, &cancelled]
            .iter()
            .all(|id| listed.contains(id))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{dead_id} restarted does not list the jobs created before it started: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The manifest keys recorded in the cluster's manifest links bucket.
async fn shared_manifest_links(nats: &NatsCluster) -> Vec<String> {
    use futures::TryStreamExt;
    let urls = nats.urls();
    let first = urls.split(',').next().unwrap().to_string();
    let client = async_nats::connect(first).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("SCAIVAULT_AUDIT_MANIFEST_LINKS")
        .await
        .unwrap();
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    let mut manifests = Vec::new();
    for key in keys {
        let value = kv.get(&key).await.unwrap().unwrap();
        let link: Value = serde_json::from_slice(&value).unwrap();
        manifests.push(link["key"].as_str().unwrap().to_string());
    }
    manifests
}
