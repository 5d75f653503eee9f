//! Continuous exports over REST (`/v1/audit/export-schedules`) with the `file` destination: a
//! schedule firing every 2 seconds for many runs while events keep arriving, late ones
//! included, across a restart and a destination that fails and recovers; the union of all
//! runs' files must be exactly the tenant's events from the schedule's start (no duplicate, no
//! gap), each run's late events flagged in its manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::export::*;
use crate::harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SCHEDULES: &str = "/v1/audit/export-schedules";
const DEADLINE: Duration = Duration::from_secs(120);

/// Fast commits, no audit of the audit, and runs every second allowed (the default minimum
/// interval is 60 s).
fn args() -> Vec<&'static str> {
    let mut args = FAST_COMMITS.to_vec();
    args.extend(AUDIT_OF_AUDIT_OFF);
    args.extend(["--export-schedule-min-interval-seconds", "1"]);
    args
}

/// RFC 3339 (UTC, microseconds) of now minus `seconds_ago`.
fn at(seconds_ago: f64) -> String {
    let now = jiff::Timestamp::now().as_microsecond();
    let micros = now - (seconds_ago * 1e6) as i64;
    jiff::Timestamp::from_microsecond(micros)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// An event of `tenant` numbered `n`, `seconds_ago` old.
fn event_at(n: u64, tenant: &str, seconds_ago: f64) -> Value {
    let mut event = event_for_tenant(n, Some(tenant));
    event["timestamp"] = json!(at(seconds_ago));
    event
}

/// Ingests a batch of the tenant's events (current and late, as given) plus one of another
/// tenant; returns the tenant's ids that a schedule starting at `start` must deliver.
async fn ingest_batch(
    server: &Server,
    counter: &mut u64,
    ages: &[f64],
    start: &str,
) -> Vec<String> {
    let mut events = Vec::new();
    for age in ages {
        *counter += 1;
        events.push(event_at(*counter, TENANT, *age));
    }
    *counter += 1;
    events.push(event_at(*counter, OTHER_TENANT, 0.0));
    let ids = ingest_ok(&client(), server.base_url(), server.token(), &events).await;
    ids.into_iter()
        .zip(&events)
        .take(ages.len())
        .filter(|(_, event)| event["timestamp"].as_str().unwrap() >= start)
        .map(|(id, _)| id)
        .collect()
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    tenant: &str,
    body: Option<&Value>,
) -> Reply {
    let mut request = client()
        .request(method, format!("{}{path}", server.base_url()))
        .bearer_auth(server.token())
        .header("X-Tenant-ID", tenant);
    if let Some(body) = body {
        request = request.json(body);
    }
    send(request).await
}

async fn schedule(server: &Server, id: &str) -> Value {
    let reply = call(
        server,
        reqwest::Method::GET,
        &format!("{SCHEDULES}/{id}"),
        TENANT,
        None,
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    reply.2
}

/// Every `manifest.json` under `dir`.
fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name == "manifest.json") {
                found.push(path);
            }
        }
    }
    found
}

/// Waits until the schedule has completed at least `runs` runs; returns its status.
async fn wait_runs(server: &Server, id: &str, runs: u64) -> Value {
    let started = Instant::now();
    loop {
        let status = schedule(server, id).await;
        if status["status"]["runs_completed"].as_u64().unwrap() >= runs {
            return status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "runs never reached {runs}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ingests batches (current events and late ones) every 300 ms for `duration`.
async fn keep_ingesting(
    server: &Server,
    counter: &mut u64,
    expected: &mut Vec<String>,
    duration: Duration,
    start: &str,
) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        // Current, late (older than the watermark), and one older than the schedule's start.
        let ages = [0.0, 0.2, 12.0, 25.0, 7200.0];
        expected.extend(ingest_batch(server, counter, &ages, start).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_delivers_every_event_exactly_once_across_restarts_late_events_and_failures() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "continuous");
    let mut server = Server::start(&dir.data_dir(), &args()).await;
    let mut counter = 0;
    let mut expected = Vec::new();
    // Before the start: never exported.
    let start = at(60.0);
    let none = ingest_batch(&server, &mut counter, &[65.0, 3600.0], &start).await;
    assert!(none.is_empty());
    expected.extend(ingest_batch(&server, &mut counter, &[30.0, 1.0], &start).await);
    let body = json!({"schedule": "*/2 * * * * *", "delay_seconds": 1, "start": start,
        "format": "jsonl", "destination": {"type": "file", "bucket": "continuous",
        "prefix": "acme/"}});
    let created = call(
        &server,
        reqwest::Method::POST,
        SCHEDULES,
        TENANT,
        Some(&body),
    )
    .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let id = created.2["schedule_id"].as_str().unwrap().to_string();
    assert_eq!(created.2["status"]["runs_completed"], 0);
    assert_eq!(created.2["status"]["conditions"][0]["reason"], "Scheduled");

    // Tenant confinement and the error envelope.
    let foreign = call(
        &server,
        reqwest::Method::GET,
        &format!("{SCHEDULES}/{id}"),
        OTHER_TENANT,
        None,
    )
    .await;
    assert_error(&foreign, StatusCode::NOT_FOUND, "schedule_not_found");
    let listed = call(&server, reqwest::Method::GET, SCHEDULES, OTHER_TENANT, None).await;
    assert_eq!(listed.2["schedules"], json!([]));
    let bad = json!({"schedule": "*/2 * * * * * *", "from": "2026-01-01T00:00:00Z",
        "delay_seconds": -1, "format": "jsonl", "destination": {"type": "file", "bucket": "continuous"}});
    let refused = call(
        &server,
        reqwest::Method::POST,
        SCHEDULES,
        TENANT,
        Some(&bad),
    )
    .await;
    for field in ["schedule", "from", "delay_seconds"] {
        assert_validation_error(&refused, field);
    }

    // Several runs while events keep arriving.
    keep_ingesting(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(5),
        &start,
    )
    .await;
    wait_runs(&server, &id, 2).await;

    // A restart between runs: the schedule and its watermark survive.
    let before = schedule(&server, &id).await;
    server.terminate().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // ticks are missed meanwhile
    server = Server::start(&dir.data_dir(), &args()).await;
    let after = schedule(&server, &id).await;
    assert!(
        after["status"]["runs_completed"].as_u64() >= before["status"]["runs_completed"].as_u64(),
        "{before} / {after}"
    );
    keep_ingesting(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(3),
        &start,
    )
    .await;

    // The destination fails (a file where the bucket directory should be), then recovers.
    let moved = dir.root().join("moved-away");
    std::fs::rename(&out, &moved).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();
    let completed_then = schedule(&server, &id).await["status"]["runs_completed"].clone();
    let failing = {
        let started = Instant::now();
        loop {
            let status = schedule(&server, &id).await;
            // The first failure may be an interrupted upload; retries meet the refusal.
            let condition = &status["status"]["conditions"][0];
            if condition["status"] == "False" && condition["reason"] == "destination_not_allowed" {
                break status;
            }
            assert!(started.elapsed() < DEADLINE, "never failed: {status}");
            expected.extend(ingest_batch(&server, &mut counter, &[0.0, 15.0], &start).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    keep_ingesting(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(3),
        &start,
    )
    .await;
    let still = schedule(&server, &id).await;
    assert_eq!(
        still["status"]["complete_through"], failing["status"]["complete_through"],
        "the watermark does not move while the run fails"
    );
    assert!(
        still["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("retrying")
    );
    std::fs::remove_file(&out).unwrap();
    std::fs::rename(&moved, &out).unwrap();
    let recovered = wait_runs(&server, &id, completed_then.as_u64().unwrap() + 2).await;
    assert_eq!(
        recovered["status"]["conditions"][0]["status"], "True",
        "{recovered}"
    );

    // The last events, then a run whose snapshot and window cover them all.
    expected.extend(ingest_batch(&server, &mut counter, &[0.0, 20.0], &start).await);
    let last_ingest = at(0.0);
    let final_status = {
        let started = Instant::now();
        loop {
            let status = schedule(&server, &id).await;
            let runs = status["status"]["last_runs"].as_array().unwrap();
            // Its window ends after the last event, so its tick (and snapshot) came later.
            let done = runs
                .last()
                .is_some_and(|run| run["to"].as_str().unwrap() > last_ingest.as_str());
            if done {
                break status;
            }
            assert!(started.elapsed() < DEADLINE, "never caught up: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Since the restart: runs completed and failed, events delivered, a small lag.
    let metrics = metrics_text(&server).await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}:\n{metrics}"))
    };
    assert!(value("scaivault_audit_export_schedule_runs_total{outcome=\"completed\"}") >= 1.0);
    assert!(value("scaivault_audit_export_schedule_runs_total{outcome=\"failed\"}") >= 1.0);
    assert!(value("scaivault_audit_export_schedule_records_total ") >= 1.0);
    let lag = value("scaivault_audit_export_schedule_lag_seconds ");
    assert!((0.0..60.0).contains(&lag), "lag {lag}");
    let deleted = call(
        &server,
        reqwest::Method::DELETE,
        &format!("{SCHEDULES}/{id}"),
        TENANT,
        None,
    )
    .await;
    assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.2);
    let gone = call(
        &server,
        reqwest::Method::GET,
        &format!("{SCHEDULES}/{id}"),
        TENANT,
        None,
    )
    .await;
    assert_error(&gone, StatusCode::NOT_FOUND, "schedule_not_found");
    let runs = final_status["status"]["runs_completed"].as_u64().unwrap();
    assert!(runs >= 5, "{final_status}");

    // The union of every run's files: exactly the tenant's events since the start.
    let mut by_run: BTreeMap<String, Value> = BTreeMap::new();
    for path in manifests(&out) {
        let manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        by_run.insert(
            manifest["export_id"].as_str().unwrap().to_string(),
            manifest,
        );
    }
    assert!(
        by_run.len() as u64 >= runs,
        "{} manifests for {runs} runs",
        by_run.len()
    );
    let mut delivered: Vec<String> = Vec::new();
    let mut late_total = 0;
    let mut previous_to: Option<String> = None;
    for (export_id, manifest) in &by_run {
        let prefix = manifest["destination"]["prefix"].as_str().unwrap();
        let shape = regex_like_prefix(prefix);
        assert!(shape, "{export_id}: prefix {prefix}");
        if let Some(to) = &previous_to {
            assert_eq!(
                manifest["from"].as_str(),
                Some(to.as_str()),
                "consecutive windows"
            );
        }
        previous_to = manifest["to"].as_str().map(str::to_string);
        let mut records = Vec::new();
        for file in manifest["files"].as_array().unwrap() {
            let bytes = std::fs::read(out.join(file["key"].as_str().unwrap())).unwrap();
            assert_eq!(
                crate::harness::export::sha256_hex(&bytes),
                file["sha256"],
                "{export_id}"
            );
            for line in bytes
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.is_empty())
            {
                records.push(serde_json::from_slice::<Value>(line).unwrap());
            }
        }
        assert_eq!(
            records.len() as u64,
            manifest["record_count"].as_u64().unwrap()
        );
        let from = manifest["from"].as_str().unwrap();
        let late: Vec<&Value> = records
            .iter()
            .filter(|record| record["timestamp"].as_str().unwrap() < from)
            .collect();
        match manifest.get("late") {
            Some(summary) => {
                assert_eq!(summary["count"], json!(late.len()), "{export_id}");
                if let (Some(first), Some(last)) = (late.first(), late.last()) {
                    assert_eq!(summary["first_event"]["id"], first["id"]);
                    assert_eq!(summary["last_event"]["id"], last["id"]);
                }
                late_total += late.len();
            }
            None => assert!(late.is_empty(), "the first run has no late events"),
        }
        delivered.extend(
            records
                .iter()
                .map(|record| record["id"].as_str().unwrap().to_string()),
        );
    }
    assert!(
        late_total > 10,
        "late events were delivered as such: {late_total}"
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

    // Deleted: no further run writes anything.
    let count = manifests(&out).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manifests(&out).len(), count);
}

/// The service's `/metrics` text.
async fn metrics_text(server: &Server) -> String {
    let (status, _, body) = send(client().get(format!("{}/metrics", server.base_url()))).await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().expect("metrics are text").to_string()
}

/// `acme/{yyyy}/{mm}/{dd}/{HH}{MM}-{run:06}/`
fn regex_like_prefix(prefix: &str) -> bool {
    let Some(rest) = prefix.strip_prefix("acme/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let digits =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 5
        && digits(parts[0], 4)
        && digits(parts[1], 2)
        && digits(parts[2], 2)
        && parts[3]
            .split_once('-')
            .is_some_and(|(time, run)| digits(time, 4) && digits(run, 6))
        && parts[4].is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_trails_report_complete_through() {
    let dir = TestDir::new();
    let server = Server::start(&dir.data_dir(), &args()).await;
    let before = at(300.0);
    let reply = get_logs(
        &client(),
        server.base_url(),
        server.token(),
        Some(TENANT),
        "limit=1",
    )
    .await;
    let after = at(300.0);
    let complete = reply.2["complete_through"].as_str().unwrap().to_string();
    assert!(
        before <= complete && complete <= after,
        "{before} {complete} {after}"
    );
    let trail = get_as(
        &client(),
        server.base_url(),
        "/v1/audit/identities/sa%3Aci",
        Some(server.token()),
        Some(TENANT),
    )
    .await;
    assert_eq!(trail.0, StatusCode::OK, "{}", trail.2);
    assert!(trail.2["complete_through"].as_str().unwrap() >= before.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_more_frequent_than_the_minimum_interval_is_refused() {
    let dir = TestDir::new();
    file_bucket(&dir, "continuous");
    let mut args = FAST_COMMITS.to_vec();
    args.extend(AUDIT_OF_AUDIT_OFF);
    // The default minimum: 60 s.
    let server = Server::start(&dir.data_dir(), &args).await;
    let body = |schedule: &str| {
        json!({"schedule": schedule, "format": "jsonl",
            "destination": {"type": "file", "bucket": "continuous"}})
    };
    for (fast, apart) in [("*/2 * * * * *", "2 s"), ("0,30 * * * * *", "30 s")] {
        let refused = call(
            &server,
            reqwest::Method::POST,
            SCHEDULES,
            TENANT,
            Some(&body(fast)),
        )
        .await;
        assert_validation_error(&refused, "schedule");
        let message = refused.2["error"]["details"]["fields"]["schedule"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let minimum = "the minimum interval between runs is 60 s";
        assert!(
            message.contains(minimum) && message.contains(&format!("{apart} apart")),
            "{fast}: {}",
            refused.2
        );
    }
    // Nothing was stored.
    let listed = call(&server, reqwest::Method::GET, SCHEDULES, TENANT, None).await;
    assert_eq!(listed.2["schedules"], json!([]));
    let allowed = call(
        &server,
        reqwest::Method::POST,
        SCHEDULES,
        TENANT,
        Some(&body("* * * * *")),
    )
    .await;
    assert_eq!(allowed.0, StatusCode::CREATED, "{}", allowed.2);

    // A lower setting lets faster schedules through.
    let mut server = server;
    server.terminate().await;
    let mut args = args.clone();
    args.extend(["--export-schedule-min-interval-seconds", "2"]);
    let server = Server::start(&dir.data_dir(), &args).await;
    let fast = call(
        &server,
        reqwest::Method::POST,
        SCHEDULES,
        TENANT,
        Some(&body("*/2 * * * * *")),
    )
    .await;
    assert_eq!(fast.0, StatusCode::CREATED, "{}", fast.2);
    let faster = call(
        &server,
        reqwest::Method::POST,
        SCHEDULES,
        TENANT,
        Some(&body("* * * * * *")),
    )
    .await;
    assert_validation_error(&faster, "schedule");
}
