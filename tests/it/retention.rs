//! Retention against the real server: events spread over 100 days, a tenant kept 30 days, one
//! kept the default 7 years and one on legal hold. After a sweep each tenant sees exactly what
//! a model of its retention says (logs, summary, cursors taken before the sweep), the sweep is
//! recorded in the tenant's trail, the index shrinks on disk, `verify --data-dir` still
//! verifies every kept event, and `kill -9` during a sweep loses nothing that should stay and
//! resurrects nothing that went.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::harness::export::*;
use crate::harness::*;

const TEST_DEADLINE: Duration = Duration::from_secs(300);
const SHORT: &str = "tnt_short";
const LONG: &str = "tnt_long";
const HELD: &str = "tnt_held";
const DAY: u64 = 86_400;
const DAYS: u64 = 100;
/// Events per day: the 30-day tenant carries most of the volume, so a sweep removes about
/// half of the index.
const SHORT_PER_DAY: u64 = 60;
const OTHER_PER_DAY: u64 = 15;
/// The audit of the audit is off: the model compares exact event sets.
const BASE_ARGS: &[&str] = &[
    "--audit-of-audit-enabled",
    "false",
    "--commit-interval-ms",
    "100",
];

/// The retention settings of these tests: 30 days for [`SHORT`], the default for [`LONG`], and
/// a 1-day retention under a legal hold for [`HELD`] (the hold wins).
const RETENTION: &str = "[retention]\nsweep_interval_seconds = 86400\n\
    [retention.tenants.tnt_short]\ndays = 30\n\
    [retention.tenants.tnt_held]\ndays = 1\nlegal_hold = true\n";
/// Nothing of these events expires under this file: a restart with it shows what is stored.
const KEEP_ALL: &str = "[retention]\nsweep_interval_seconds = 86400\n";

/// One event of the model.
#[derive(Debug, Clone)]
struct Modelled {
    id: String,
    tenant: &'static str,
    age_days: u64,
    body: Value,
}

/// Events of the three tenants over [`DAYS`] days, oldest first (the order they are ingested:
/// arrival follows time, as in production). Each sits mid-day, hours away from any cut-off.
fn model() -> Vec<Modelled> {
    let mut events = Vec::new();
    let mut i = 0u64;
    for age_days in (0..DAYS).rev() {
        for (tenant, per_day) in [
            (SHORT, SHORT_PER_DAY),
            (LONG, OTHER_PER_DAY),
            (HELD, OTHER_PER_DAY),
        ] {
            for k in 0..per_day {
                i += 1;
                let seconds_ago = age_days * DAY + DAY / 2 - k * 60;
                let id = producer_id();
                let mut body = with_id(event_for_tenant(i, Some(tenant)), &id);
                body["timestamp"] = json!(recent_timestamp(seconds_ago, i % 1_000_000));
                events.push(Modelled {
                    id,
                    tenant,
                    age_days,
                    body,
                });
            }
        }
    }
    events
}

/// The ids the model keeps for `tenant` after a sweep under [`RETENTION`].
fn kept(model: &[Modelled], tenant: &str) -> BTreeSet<String> {
    model
        .iter()
        .filter(|event| event.tenant == tenant && (tenant != SHORT || event.age_days < 30))
        .map(|event| event.id.clone())
        .collect()
}

fn all_of(model: &[Modelled], tenant: &str) -> BTreeSet<String> {
    model
        .iter()
        .filter(|event| event.tenant == tenant)
        .map(|event| event.id.clone())
        .collect()
}

fn write_config(dir: &TestDir, name: &str, text: &str) -> String {
    let path = dir.root().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

async fn start(data: &Path, config: &str) -> Server {
    let args = [BASE_ARGS, &["--config", config]].concat();
    Server::start(data, &args).await
}

async fn ingest_model(client: &Client, server: &Server, model: &[Modelled]) {
    let bodies: Vec<Value> = model.iter().map(|event| event.body.clone()).collect();
    for batch in bodies.chunks(500) {
        ingest_ok(client, server.base_url(), server.token(), batch).await;
    }
}

/// The ids of `tenant`'s events and its `retention_sweep` events.
async fn stored(client: &Client, server: &Server, tenant: &str) -> (BTreeSet<String>, Vec<Value>) {
    let logs = fetch_all_logs(client, server.base_url(), server.token(), tenant).await;
    let (sweeps, events): (Vec<Value>, Vec<Value>) = logs
        .into_iter()
        .partition(|log| log["action"] == json!("retention_sweep"));
    let ids = events
        .iter()
        .map(|log| log["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, sweeps)
}

/// Waits for `tenant`'s first `retention_sweep` event.
async fn wait_for_sweep(client: &Client, server: &Server, tenant: &str) -> Value {
    let started = Instant::now();
    loop {
        let reply = get_logs(
            client,
            server.base_url(),
            server.token(),
            Some(tenant),
            "action=retention_sweep",
        )
        .await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        if let Some(sweep) = reply.2["logs"].as_array().and_then(|logs| logs.first()) {
            return sweep.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no retention sweep recorded for {tenant}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `tenant`'s events (its sweep events left out) are exactly `ids`.
async fn wait_for_exactly(client: &Client, server: &Server, tenant: &str, ids: &BTreeSet<String>) {
    let started = Instant::now();
    loop {
        let (found, _) = stored(client, server, tenant).await;
        if found == *ids {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{tenant} holds {} events, expected {}",
            found.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn verify_data_dir(data: &Path) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(["verify", "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), text)
}

/// Pages through `tenant`'s events from `cursor` on (`order`), returning the ids (sweep
/// events left out).
async fn rest_of_pages(
    client: &Client,
    server: &Server,
    tenant: &str,
    order: &str,
    mut cursor: String,
) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let query = format!("limit=500&order={order}&cursor={}", percent_encode(&cursor));
        let reply = get_logs(
            client,
            server.base_url(),
            server.token(),
            Some(tenant),
            &query,
        )
        .await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        for log in reply.2["logs"].as_array().unwrap() {
            if log["action"] != json!("retention_sweep") {
                ids.push(log["id"].as_str().unwrap().to_owned());
            }
        }
        match reply.2["cursor"].as_str() {
            Some(next) if reply.2["has_more"] == json!(true) => cursor = next.to_owned(),
            _ => return ids,
        }
    }
}

/// The first page (`limit`) of `tenant`'s events in `order`: its ids and its cursor.
async fn first_page(
    client: &Client,
    server: &Server,
    tenant: &str,
    order: &str,
    limit: usize,
) -> (Vec<String>, String) {
    let query = format!("limit={limit}&order={order}");
    let reply = get_logs(
        client,
        server.base_url(),
        server.token(),
        Some(tenant),
        &query,
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    let ids = reply.2["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|log| log["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, reply.2["cursor"].as_str().unwrap().to_owned())
}

/// `model`'s ids of `tenant` in time order (oldest first), restricted to `ids`.
fn in_time_order(model: &[Modelled], tenant: &str, ids: &BTreeSet<String>) -> Vec<String> {
    model
        .iter()
        .filter(|event| event.tenant == tenant && ids.contains(&event.id))
        .map(|event| event.id.clone())
        .collect()
}

#[tokio::test]
async fn a_sweep_keeps_exactly_each_tenants_retention_and_shrinks_the_index() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "retention sweep", async {
        let data = dir.data_dir();
        let client = client();
        let model = model();
        let keep_all = write_config(&dir, "keep-all.toml", KEEP_ALL);
        let retention = write_config(&dir, "retention.toml", RETENTION);

        // Stored under a 7-year default: nothing expires yet.
        let mut server = start(&data, &keep_all).await;
        ingest_model(&client, &server, &model).await;
        let short_all = all_of(&model, SHORT);
        let ids: Vec<String> = short_all.iter().cloned().collect();
        wait_until_visible(
            &client,
            server.base_url(),
            server.token(),
            Some(SHORT),
            &ids,
            Duration::from_secs(30),
        )
        .await;
        for tenant in [SHORT, LONG, HELD] {
            assert_eq!(stored(&client, &server, tenant).await.0, all_of(&model, tenant));
        }
        // Cursors taken before the sweep, both directions.
        let (newest_page, newest_cursor) = first_page(&client, &server, SHORT, "desc", 100).await;
        let (oldest_page, oldest_cursor) = first_page(&client, &server, SHORT, "asc", 100).await;
        assert!(server.terminate().await.success());
        let index_before = dir_bytes(&data.join("index"));

        // Under the retention settings: the start's sweep removes 70 of tnt_short's 100 days.
        let mut server = start(&data, &retention).await;
        let sweep = wait_for_sweep(&client, &server, SHORT).await;
        let expected_removed = (short_all.len() - kept(&model, SHORT).len()) as u64;
        assert_eq!(sweep["extra_data"]["removed"], json!(expected_removed), "{sweep}");
        assert_eq!(sweep["extra_data"]["retention_days"], json!(30), "{sweep}");
        assert_eq!(sweep["identity_id"], json!("system:retention"), "{sweep}");
        assert!(sweep["extra_data"]["cutoff"].is_string(), "{sweep}");
        // The record is stored before the delete: the delete follows within a commit.
        wait_for_exactly(&client, &server, SHORT, &kept(&model, SHORT)).await;
        for tenant in [SHORT, LONG, HELD] {
            let (ids, sweeps) = stored(&client, &server, tenant).await;
            assert_eq!(ids, kept(&model, tenant), "{tenant}");
            let expected_sweeps = usize::from(tenant == SHORT);
            assert_eq!(sweeps.len(), expected_sweeps, "{tenant}: {sweeps:?}");
        }

        // Summaries count only what is kept (the sweep event included).
        let from = recent_timestamp(DAYS * DAY + DAY, 0);
        let query = format!("/v1/audit/summary?from={}", percent_encode(&from));
        let summary = get_as(&client, server.base_url(), &query, Some(server.token()), Some(SHORT)).await;
        assert_eq!(summary.0, StatusCode::OK, "{}", summary.2);
        let kept_short = kept(&model, SHORT).len() as u64;
        assert_eq!(summary.2["total_events"], json!(kept_short + 1), "{}", summary.2);

        // Cursors from before the sweep: no skip, no repeat. Newest first, the first page was
        // all kept; the rest is every other kept event.
        let kept_order = in_time_order(&model, SHORT, &kept(&model, SHORT));
        let rest = rest_of_pages(&client, &server, SHORT, "desc", newest_cursor).await;
        let mut expected_rest: Vec<String> = kept_order.iter().rev().cloned().collect();
        assert_eq!(expected_rest[..100], newest_page[..]);
        expected_rest.drain(..100);
        assert_eq!(rest, expected_rest, "newest-first cursor across the sweep");
        // Oldest first, the first page was all expired: the rest is exactly the kept events.
        assert!(oldest_page.iter().all(|id| !kept(&model, SHORT).contains(id)));
        let rest = rest_of_pages(&client, &server, SHORT, "asc", oldest_cursor).await;
        assert_eq!(rest, kept_order, "oldest-first cursor across the sweep");

        // The tenant sees its own retention.
        let reply = get_as(&client, server.base_url(), "/v1/audit/retention", Some(server.token()), Some(SHORT)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["retention_days"], json!(30), "{}", reply.2);
        assert_eq!(reply.2["source"], json!("tenant"), "{}", reply.2);
        let reply = get_as(&client, server.base_url(), "/v1/audit/retention", Some(server.token()), Some(HELD)).await;
        assert_eq!(reply.2["legal_hold"], json!(true), "{}", reply.2);
        assert_eq!(reply.2["cutoff"], Value::Null, "{}", reply.2);
        let reply = get_as(&client, server.base_url(), "/v1/audit/retention", Some(server.token()), Some(LONG)).await;
        assert_eq!(reply.2["retention_days"], json!(2557), "{}", reply.2);
        assert_eq!(reply.2["source"], json!("default"), "{}", reply.2);

        // Disk: the expired documents leave the index (whole segments at the sweep's commit,
        // boundary segments through the merges their deletes trigger).
        let started = Instant::now();
        let index_after = loop {
            let bytes = dir_bytes(&data.join("index"));
            if bytes * 10 < index_before * 7 || started.elapsed() > Duration::from_secs(60) {
                break bytes;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "index before the sweep: {index_before} bytes; after: {index_after} bytes ({} of {} events removed)",
            expected_removed,
            model.len()
        );
        assert!(
            index_after * 10 < index_before * 7,
            "the index did not shrink by 30%: {index_before} -> {index_after} bytes"
        );
        assert!(server.terminate().await.success());

        // The kept events still verify, from the anchor recorded before the delete.
        let (ok, text) = verify_data_dir(&data);
        assert!(ok, "{text}");
        assert!(data.join("integrity/retention-anchors.json").try_exists().unwrap());

        // A restart continues every chain (the checkpoints and verify agree) and nothing comes
        // back even when nothing would expire any more.
        let mut server = start(&data, &keep_all).await;
        let more: Vec<Value> = (0..5)
            .map(|i| with_id(event_for_tenant(900_000 + i, Some(SHORT)), &producer_id()))
            .collect();
        ingest_ok(&client, server.base_url(), server.token(), &more).await;
        let mut expected = kept(&model, SHORT);
        expected.extend(ids_of(&more));
        let visible: Vec<String> = expected.iter().cloned().collect();
        wait_until_visible(&client, server.base_url(), server.token(), Some(SHORT), &visible, Duration::from_secs(30)).await;
        assert_eq!(stored(&client, &server, SHORT).await.0, expected);
        assert!(server.terminate().await.success());
        let (ok, text) = verify_data_dir(&data);
        assert!(ok, "{text}");
    })
    .await;
}

#[tokio::test]
async fn kill_9_during_a_sweep_loses_nothing_kept_and_resurrects_nothing_removed() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "retention kill -9", async {
        let data = dir.data_dir();
        let client = client();
        let model = model();
        let keep_all = write_config(&dir, "keep-all.toml", KEEP_ALL);
        let retention = write_config(&dir, "retention.toml", RETENTION);
        let mut server = start(&data, &keep_all).await;
        ingest_model(&client, &server, &model).await;
        assert!(server.terminate().await.success());

        let (all_short, kept_short) = (all_of(&model, SHORT), kept(&model, SHORT));
        let mut removed_seen = false;
        // Killed at several points of the start's sweep (before, during, after its delete).
        for delay_ms in [0u64, 5, 20, 50, 120, 400, 2000] {
            let mut server = start(&data, &retention).await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            server.kill9();

            // Restarted where nothing expires: what is stored shows as it is.
            let mut server = start(&data, &keep_all).await;
            let (short, _) = stored(&client, &server, SHORT).await;
            assert!(
                short == all_short || short == kept_short,
                "after a kill at {delay_ms} ms, {SHORT} holds {} events (all: {}, kept: {})",
                short.len(),
                all_short.len(),
                kept_short.len()
            );
            if removed_seen {
                assert_eq!(short, kept_short, "expired events came back after a kill");
            }
            removed_seen |= short == kept_short;
            for tenant in [LONG, HELD] {
                assert_eq!(
                    stored(&client, &server, tenant).await.0,
                    all_of(&model, tenant)
                );
            }
            assert!(server.terminate().await.success());
            let (ok, text) = verify_data_dir(&data);
            assert!(ok, "after a kill at {delay_ms} ms: {text}");
        }
        // Whatever the kills interrupted, a sweep that runs to its end leaves the model.
        let server = start(&data, &retention).await;
        wait_for_sweep(&client, &server, SHORT).await;
        let started = Instant::now();
        while stored(&client, &server, SHORT).await.0 != kept_short {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the sweep did not complete"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Cold tier (S3 emulator)
// ---------------------------------------------------------------------------------------------

const VAULT_TOKEN: &str = "svt_vault_token_for_retention_tests";

/// The `counter` of `/metrics` (0 when not yet exported).
async fn counter(client: &Client, server: &Server, name: &str) -> u64 {
    let (status, _, body) = send(client.get(format!("{}/metrics", server.base_url()))).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text").to_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}

/// The ids in the gzipped JSONL parts under `prefix` (the manifest and claim left out).
async fn cold_ids(endpoint: &str, bucket: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    use std::io::Read;
    let keys = s3_keys(endpoint, bucket, prefix).await;
    let mut ids = Vec::new();
    for key in keys.iter().filter(|key| key.ends_with(".jsonl.gz")) {
        let bytes = s3_get(endpoint, bucket, key).await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            ids.push(record["id"].as_str().unwrap().to_owned());
        }
    }
    (keys, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/emulators.sh"]
async fn the_cold_tier_gets_expiring_events_first_and_a_failing_one_blocks_the_delete() {
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let bucket = emulator_env("SCAIVAULT_TEST_BUCKET");
    let dir = TestDir::new();
    // The emulator's bucket outlives the test: a prefix of this run only.
    let cold_prefix = format!("cold/{}/", producer_id().to_lowercase());
    within(TEST_DEADLINE, "retention cold tier", async {
        let data = dir.data_dir();
        let client = client();
        // One tenant: the cold export's content is compared with exactly its expired events.
        let model: Vec<Modelled> = model()
            .into_iter()
            .filter(|event| event.tenant == SHORT)
            .collect();
        let vault = FakeScaiVault::start(VAULT_TOKEN).await;
        let proxy = Proxy::start(endpoint_addr(&endpoint)).await;
        vault.put(
            "infra/aws/cold",
            json!({"access_key_id": "AKIATESTCOLDTIER", "secret_access_key": "cold-secret-3b1e",
                   "region": "us-east-1", "endpoint_url": proxy.url()}),
        );
        let token_file = dir.root().join("scaivault-token");
        std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap();
        let token_path = token_file.display().to_string();
        let vault_args = [
            "--scaivault-url",
            vault.url.as_str(),
            "--scaivault-token-file",
            token_path.as_str(),
            "--export-allow-private-endpoints",
            "--export-retry-max-seconds",
            "1",
            "--retention-sweep-interval-seconds",
            "2",
        ];
        let keep_all = write_config(&dir, "keep-all.toml", KEEP_ALL);
        let cold = format!(
            "{RETENTION}[retention.cold_storage]\ntype = \"s3\"\nbucket = \"{bucket}\"\n\
             prefix = \"{cold_prefix}\"\ncredentials_path = \"infra/aws/cold\"\n"
        );
        let cold = write_config(&dir, "cold.toml", &cold);
        let start_with = |config: String| {
            let args: Vec<String> = [BASE_ARGS, &vault_args[..], &["--config", &config]]
                .concat()
                .into_iter()
                .map(str::to_owned)
                .collect();
            let data = data.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Server::start(&data, &args).await
            }
        };

        let mut server = start_with(keep_all).await;
        ingest_model(&client, &server, &model).await;
        let all = all_of(&model, SHORT);
        let ids: Vec<String> = all.iter().cloned().collect();
        wait_until_visible(
            &client,
            server.base_url(),
            server.token(),
            Some(SHORT),
            &ids,
            Duration::from_secs(30),
        )
        .await;
        assert!(server.terminate().await.success());

        // The destination is down: sweeps fail, nothing is deleted, nothing is recorded.
        proxy.cut();
        let server = start_with(cold).await;
        let started = Instant::now();
        let failures = "scaivault_audit_retention_cold_export_failures_total";
        while counter(&client, &server, failures).await < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no failed cold export counted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (stored_ids, sweeps) = stored(&client, &server, SHORT).await;
        assert_eq!(
            stored_ids, all,
            "events were deleted although the cold export failed"
        );
        assert!(sweeps.is_empty(), "{sweeps:?}");
        let log = std::fs::read_to_string(server.stderr_log()).unwrap_or_default()
            + &std::fs::read_to_string(server.stdout_log()).unwrap_or_default();
        assert!(log.contains("cold-tier export failed"), "no error logged");

        // Back: the next sweep exports, then deletes.
        proxy.restore();
        let sweep = wait_for_sweep(&client, &server, SHORT).await;
        let kept_ids = kept(&model, SHORT);
        let expired: BTreeSet<String> = all.difference(&kept_ids).cloned().collect();
        assert_eq!(
            sweep["extra_data"]["removed"],
            json!(expired.len()),
            "{sweep}"
        );
        let started = Instant::now();
        while stored(&client, &server, SHORT).await.0 != kept_ids {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the sweep did not delete"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (keys, exported) =
            cold_ids(&endpoint, &bucket, &format!("{cold_prefix}{SHORT}/")).await;
        assert!(
            keys.iter().any(|key| key.ends_with("manifest.json")),
            "{keys:?}"
        );
        let exported_set: BTreeSet<String> = exported.iter().cloned().collect();
        assert_eq!(
            exported.len(),
            exported_set.len(),
            "a record was exported twice"
        );
        assert_eq!(
            exported_set, expired,
            "the cold tier holds exactly the expired events"
        );
        assert!(
            counter(
                &client,
                &server,
                "scaivault_audit_retention_cold_exported_events_total"
            )
            .await
                >= expired.len() as u64
        );
    })
    .await;
}
