//! Black-box durability tests (SPEC §2 ids, §3.6 "an acknowledged event is never lost"):
//! kill -9 at random moments, torn and garbage WAL tails, idempotent producer ids across
//! restarts, graceful shutdown and a full disk, all against the real binary.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const CRASH_ROUNDS: usize = 12;
const PRODUCERS: usize = 4;
const MAX_BATCH: usize = 200;
/// Upper bound on how long a producer keeps sending when nothing stops it.
const PRODUCER_DEADLINE: Duration = Duration::from_secs(60);
const TEST_DEADLINE: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------------
// Producers: concurrent clients recording every acknowledged id
// ---------------------------------------------------------------------------------------------

/// What the producers have had acknowledged, shared by all producer tasks.
#[derive(Default)]
struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// Every id in a 200 response.
    acked: HashSet<String>,
    /// Acknowledged events carrying producer ids, each once: material for re-sends.
    resendable: Vec<Value>,
    /// Producer-id events of batches whose request failed: retried in the next round.
    unacknowledged: Vec<Vec<Value>>,
    /// Non-200 responses.
    refusals: Vec<(StatusCode, Value)>,
    /// Problems with 200 responses (wrong ids).
    bad_acks: Vec<String>,
    next_event: u64,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().expect("ledger lock")
    }

    fn acked_ids(&self) -> Vec<String> {
        self.lock().acked.iter().cloned().collect()
    }

    fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    fn take_retry(&self) -> Option<Vec<Value>> {
        self.lock().unacknowledged.pop()
    }

    fn refusals(&self) -> Vec<(StatusCode, Value)> {
        self.lock().refusals.clone()
    }

    /// 1..=200 events: sometimes starting with already-acknowledged producer ids (re-sends),
    /// the rest new, half of them with fresh producer ids.
    fn build_batch(&self, rng: &mut fastrand::Rng) -> Vec<Value> {
        let mut state = self.lock();
        let size = rng.usize(1..=MAX_BATCH);
        let mut batch = Vec::with_capacity(size);
        if rng.u8(..5) == 0 && !state.resendable.is_empty() {
            let count = rng.usize(1..=size.min(20).min(state.resendable.len()));
            let start = rng.usize(..=state.resendable.len() - count);
            batch.extend_from_slice(&state.resendable[start..start + count]);
        }
        while batch.len() < size {
            let new_event = event(state.next_event);
            state.next_event += 1;
            batch.push(if rng.bool() {
                with_id(new_event, &producer_id())
            } else {
                new_event
            });
        }
        batch
    }

    fn record_ack(&self, batch: &[Value], body: &Value) {
        let mut state = self.lock();
        let ids: Vec<String> = body["ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() != batch.len() {
            state
                .bad_acks
                .push(format!("{} events acknowledged with {body}", batch.len()));
            return;
        }
        for (event, id) in batch.iter().zip(ids) {
            if let Some(sent) = event["id"].as_str()
                && sent != id
            {
                state
                    .bad_acks
                    .push(format!("producer id {sent} acknowledged as {id}"));
            }
            let newly_acked = state.acked.insert(id);
            if newly_acked && event["id"].is_string() {
                state.resendable.push(event.clone());
            }
        }
    }

    fn record_failure(&self, batch: &[Value]) {
        let with_ids: Vec<Value> = batch
            .iter()
            .filter(|event| event["id"].is_string())
            .cloned()
            .collect();
        if !with_ids.is_empty() {
            self.lock().unacknowledged.push(with_ids);
        }
    }

    fn assert_acks_consistent(&self) {
        let state = self.lock();
        assert!(
            state.bad_acks.is_empty(),
            "inconsistent acknowledgements: {:?}",
            state.bad_acks
        );
    }
}

/// Sends one batch; `false` when the producer should stop (transport error or refusal).
async fn deliver(
    client: &Client,
    base: &str,
    token: &str,
    ledger: &Ledger,
    batch: Vec<Value>,
) -> bool {
    let body = json!({ "events": batch });
    match try_post_events(client, base, token, &body).await {
        Ok((StatusCode::OK, _, reply)) => {
            ledger.record_ack(&batch, &reply);
            true
        }
        Ok((status, _, reply)) => {
            ledger.record_failure(&batch);
            ledger.lock().refusals.push((status, reply));
            false
        }
        Err(_) => {
            ledger.record_failure(&batch);
            false
        }
    }
}

/// Retries what earlier rounds could not deliver, then sends new batches until the server
/// stops answering 200 (or the producer deadline passes).
async fn produce(base: String, token: String, ledger: Arc<Ledger>, seed: u64) {
    let client = client();
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    while started.elapsed() < PRODUCER_DEADLINE {
        let batch = match ledger.take_retry() {
            Some(retry) => retry,
            None => ledger.build_batch(&mut rng),
        };
        if !deliver(&client, &base, &token, &ledger, batch).await {
            return;
        }
    }
}

fn spawn_producers(
    server: &Server,
    ledger: &Arc<Ledger>,
    count: usize,
    rng: &mut fastrand::Rng,
) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|_| {
            let task = produce(
                server.base_url().to_owned(),
                server.token().to_owned(),
                Arc::clone(ledger),
                rng.u64(..),
            );
            tokio::spawn(task)
        })
        .collect()
}

async fn join_producers(producers: Vec<JoinHandle<()>>) {
    for producer in producers {
        tokio::time::timeout(PRODUCER_DEADLINE + Duration::from_secs(10), producer)
            .await
            .expect("producer finished in time")
            .expect("producer task did not panic");
    }
}

/// Delivers every batch left unacknowledged by a crash; each must now be accepted.
async fn retry_unacknowledged(server: &Server, ledger: &Ledger) {
    let client = client();
    while let Some(batch) = ledger.take_retry() {
        let delivered = deliver(&client, server.base_url(), server.token(), ledger, batch).await;
        assert!(delivered, "retry refused: {:?}", ledger.refusals());
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Re-sends `events` whose producer ids are already stored: 200 with the same ids.
async fn resend_ok(client: &Client, server: &Server, events: &[Value]) {
    let reply = post_events(
        client,
        server.base_url(),
        server.token(),
        json!({ "events": events }),
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "re-send refused: {}", reply.2);
    assert_eq!(
        reply_ids(&reply.2),
        ids_of(events),
        "re-send returns the original ids"
    );
}

/// Ingests a fresh sentinel and waits until it and `expected` are visible; returns all logs.
/// Anything applied before the sentinel (e.g. a duplicate) is visible by then.
async fn settle(
    client: &Client,
    server: &Server,
    expected: &[String],
    deadline: Duration,
) -> (Vec<Value>, String) {
    let sentinel = events_with_producer_ids(900_000 + fastrand::u64(..1000), 1);
    let sentinel_id = ingest_ok(client, server.base_url(), server.token(), &sentinel)
        .await
        .remove(0);
    let mut wanted = expected.to_vec();
    wanted.push(sentinel_id.clone());
    let logs = wait_until_visible(
        client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &wanted,
        deadline,
    )
    .await;
    (logs, sentinel_id)
}

/// Waits until `expected` is visible after a restart and returns all logs.
async fn all_logs_once_visible(
    client: &Client,
    server: &Server,
    expected: &[String],
) -> Vec<Value> {
    wait_until_visible(
        client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        expected,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await
}

fn concat(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|part| part.iter().cloned()).collect()
}

/// `args` with the audit of the audit off, for tests that check with [`assert_exactly`] that a
/// tenant holds exactly the acknowledged events (their reads would add `audit_read` events).
fn exact(args: &[&'static str]) -> Vec<&'static str> {
    [args, AUDIT_OF_AUDIT_OFF].concat()
}

fn assert_exactly(logs: &[Value], expected: &[String]) {
    assert_each_present_once(logs, expected);
    let expected: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let unexpected: Vec<&Value> = logs
        .iter()
        .filter(|log| log["id"].as_str().is_none_or(|id| !expected.contains(id)))
        .map(|log| &log["id"])
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected events stored: {unexpected:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// kill -9 at random moments
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_repeated_kill9() {
    tokio::time::timeout(TEST_DEADLINE, crash_rounds())
        .await
        .expect("crash test finished in time");
}

async fn crash_rounds() {
    let started = Instant::now();
    let dir = TestDir::new();
    let data = dir.data_dir();
    let ledger = Arc::new(Ledger::default());
    let seed = fastrand::u64(..);
    eprintln!("crash test seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rounds_with_acks = 0;

    for round in 0..CRASH_ROUNDS {
        let (mode, args) = if round % 2 == 0 {
            ("fast commits", FAST_COMMITS)
        } else {
            ("no commits", NO_COMMITS)
        };
        let round_started = Instant::now();
        let mut server = Server::start(&data, args).await;
        let ready_after = round_started.elapsed();
        let acked_before = ledger.acked_count();
        let producers = spawn_producers(&server, &ledger, PRODUCERS, &mut rng);
        let kill_after = Duration::from_millis(rng.u64(200..=1500));
        tokio::time::sleep(kill_after).await;
        server.assert_running();
        server.kill9();
        join_producers(producers).await;

        let refusals = ledger.refusals();
        assert!(refusals.is_empty(), "valid batches refused: {refusals:?}");
        ledger.assert_acks_consistent();
        let acked_now = ledger.acked_count();
        if acked_now > acked_before {
            rounds_with_acks += 1;
        }
        eprintln!(
            "round {round} ({mode}): ready after {ready_after:?}, killed after {kill_after:?}, \
             {} new acks, {acked_now} total",
            acked_now - acked_before
        );
    }
    assert!(
        rounds_with_acks >= CRASH_ROUNDS / 2,
        "only {rounds_with_acks} rounds acknowledged anything"
    );

    let server = Server::start(&data, FAST_COMMITS).await;
    retry_unacknowledged(&server, &ledger).await;
    ledger.assert_acks_consistent();
    let client = client();
    let acked = ledger.acked_ids();
    let logs = all_logs_once_visible(&client, &server, &acked).await;
    assert_each_present_once(&logs, &acked);
    eprintln!(
        "crash test: {} acknowledged, {} stored, {:?} in total",
        acked.len(),
        logs.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged WAL tails
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn torn_wal_tail_loses_only_the_torn_batch() {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let client = client();

    // Without index commits, every batch lives only in the WAL.
    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let batch_a = events_with_producer_ids(0, 5);
    let batch_b = events_with_producer_ids(100, 5);
    let ids_a = ingest_ok(&client, server.base_url(), server.token(), &batch_a).await;
    let ids_b = ingest_ok(&client, server.base_url(), server.token(), &batch_b).await;
    server.kill9();

    let segment = newest_wal_segment(&data);
    cut_tail(&segment, 3);

    // The replay at start commits what it recovered.
    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let logs = all_logs_once_visible(&client, &server, &ids_a).await;
    assert_none_present(&logs, &ids_b);
    assert_exactly(&logs, &ids_a);

    // C is appended after the cut tail; only the WAL holds it when the server dies.
    let batch_c = events_with_producer_ids(200, 5);
    let ids_c = ingest_ok(&client, server.base_url(), server.token(), &batch_c).await;
    server.kill9();

    let server = Server::start(&data, &exact(NO_COMMITS)).await;
    let expected = concat(&[&ids_a, &ids_c]);
    let logs = all_logs_once_visible(&client, &server, &expected).await;
    assert_exactly(&logs, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_after_the_wal_tail_loses_nothing() {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let client = client();

    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let batch_a = events_with_producer_ids(0, 20);
    let ids_a = ingest_ok(&client, server.base_url(), server.token(), &batch_a).await;
    server.kill9();

    let garbage: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(777)
        .collect();
    append_bytes(&newest_wal_segment(&data), &garbage);

    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let logs = all_logs_once_visible(&client, &server, &ids_a).await;
    assert_exactly(&logs, &ids_a);
    let batch_b = events_with_producer_ids(100, 20);
    let ids_b = ingest_ok(&client, server.base_url(), server.token(), &batch_b).await;
    server.kill9();

    let server = Server::start(&data, &exact(NO_COMMITS)).await;
    let expected = concat(&[&ids_a, &ids_b]);
    let logs = all_logs_once_visible(&client, &server, &expected).await;
    assert_exactly(&logs, &expected);
}

// ---------------------------------------------------------------------------------------------
// Idempotent producer ids
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Stop {
    Sigterm,
    Sigkill,
}

async fn stop(server: &mut Server, how: Stop) {
    match how {
        Stop::Sigterm => {
            let status = server.terminate().await;
            assert!(status.success(), "SIGTERM exit status {status}");
        }
        Stop::Sigkill => server.kill9(),
    }
}

async fn producer_ids_stay_unique_across_restart(how: Stop) {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let client = client();

    // Run 1, no index commits: duplicates must be caught before anything reaches the index.
    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let events = events_with_producer_ids(0, 5);
    let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
    resend_ok(&client, &server, &events).await;
    // Old and new producer ids mixed.
    let fresh = events_with_producer_ids(10, 2);
    let mixed = vec![
        events[1].clone(),
        fresh[0].clone(),
        events[3].clone(),
        fresh[1].clone(),
    ];
    resend_ok(&client, &server, &mixed).await;
    resend_ok(&client, &server, &mixed).await;
    let service_assigned =
        ingest_ok(&client, server.base_url(), server.token(), &[event(20)]).await;
    let expected = concat(&[&ids, &ids_of(&fresh), &service_assigned]);
    stop(&mut server, how).await;

    // Run 2: what run 1 stored is recovered once; re-sends still find it.
    let mut server = Server::start(&data, &exact(NO_COMMITS)).await;
    let logs = all_logs_once_visible(&client, &server, &expected).await;
    assert_exactly(&logs, &expected);
    resend_ok(&client, &server, &events).await;
    resend_ok(&client, &server, &mixed).await;
    stop(&mut server, how).await;

    // Run 3, with index commits: still once, and re-sends against the committed index too.
    let server = Server::start(&data, &exact(FAST_COMMITS)).await;
    let logs = all_logs_once_visible(&client, &server, &expected).await;
    assert_exactly(&logs, &expected);
    resend_ok(&client, &server, &events).await;
    resend_ok(&client, &server, &mixed).await;
    let (logs, sentinel) = settle(&client, &server, &expected, VISIBILITY_DEADLINE).await;
    assert_exactly(&logs, &concat(&[&expected, &[sentinel]]));
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_ids_are_stored_once_across_sigterm_restart() {
    producer_ids_stay_unique_across_restart(Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_ids_are_stored_once_across_sigkill_restart() {
    producer_ids_stay_unique_across_restart(Stop::Sigkill).await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_keeps_everything_acknowledged() {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let client = client();
    let mut server = Server::start(&data, NO_COMMITS).await;

    let mut acked = Vec::new();
    for batch in 0..3 {
        let events: Vec<Value> = (0..50)
            .map(|i| event(1_000_000 + batch * 100 + i))
            .collect();
        acked.extend(ingest_ok(&client, server.base_url(), server.token(), &events).await);
    }
    // SIGTERM while producers are still sending.
    let ledger = Arc::new(Ledger::default());
    let mut rng = fastrand::Rng::new();
    let producers = spawn_producers(&server, &ledger, 2, &mut rng);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exit status {status}");
    join_producers(producers).await;
    ledger.assert_acks_consistent();
    for (status, body) in ledger.refusals() {
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "refusal while draining: {body}"
        );
        assert_eq!(
            body["error"]["code"],
            json!("service_unavailable"),
            "{body}"
        );
    }

    let server = Server::start(&data, NO_COMMITS).await;
    acked.extend(ledger.acked_ids());
    let logs = all_logs_once_visible(&client, &server, &acked).await;
    assert_each_present_once(&logs, &acked);
}

// ---------------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------------

const FILE_SIZE_LIMIT: &str = "--fsize=2000000";
const MAX_DISK_FULL_BATCHES: u64 = 400;

/// `count` events with producer ids and ~1 KiB of `extra_data` each.
fn bulky_events(first: u64, count: u64) -> Vec<Value> {
    let padding = "p".repeat(1024);
    events_with_producer_ids(first, count)
        .into_iter()
        .map(|mut event| {
            event["extra_data"] = json!({ "padding": padding });
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_answers_503_and_loses_nothing() {
    let dir = TestDir::new();
    let data = dir.data_dir();
    let client = client();
    let mut server = Server::start_wrapped(&["prlimit", FILE_SIZE_LIMIT], &data, &[]).await;

    let mut acked = Vec::new();
    let mut sent = Vec::new();
    let mut refused = false;
    for batch in 0..MAX_DISK_FULL_BATCHES {
        let events = bulky_events(batch * 100, 40);
        sent.extend(ids_of(&events));
        let body = json!({ "events": events });
        let reply = match try_post_events(&client, server.base_url(), server.token(), &body).await {
            Ok(reply) => reply,
            Err(error) => panic!("{error}; server exit status: {:?}", server.exit_status()),
        };
        if reply.0 == StatusCode::OK {
            assert_eq!(reply_ids(&reply.2), ids_of(&events));
            acked.extend(reply_ids(&reply.2));
            continue;
        }
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        );
        refused = true;
        break;
    }
    assert!(
        refused,
        "no 503 after {MAX_DISK_FULL_BATCHES} bulky batches under prlimit {FILE_SIZE_LIMIT}"
    );
    assert!(
        !acked.is_empty(),
        "nothing was accepted before the disk filled up"
    );

    // Another small batch: refused too, or accepted and then durable like any other.
    let small = events_with_producer_ids(1_000_000, 1);
    sent.extend(ids_of(&small));
    let reply = post_events(
        &client,
        server.base_url(),
        server.token(),
        json!({ "events": small }),
    )
    .await;
    if reply.0 == StatusCode::OK {
        acked.extend(reply_ids(&reply.2));
    } else {
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        );
    }
    eprintln!(
        "disk full: {} events acknowledged before and after the first 503",
        acked.len()
    );
    server.kill9();

    let server = Server::start(&data, &[]).await;
    let logs = all_logs_once_visible(&client, &server, &acked).await;
    assert_each_present_once(&logs, &acked);
    let sent: HashSet<&String> = sent.iter().collect();
    for log in &logs {
        let id = log["id"].as_str().unwrap_or_default().to_owned();
        assert!(sent.contains(&id), "stored an event nobody sent: {log}");
    }

    let after = events_with_producer_ids(2_000_000, 10);
    let after_ids = ingest_ok(&client, server.base_url(), server.token(), &after).await;
    let logs = wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &after_ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_each_present_once(&logs, &concat(&[&acked, &after_ids]));
}

// ---------------------------------------------------------------------------------------------
// Readiness during the WAL replay
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_and_writes_refused_until_the_wal_is_replayed() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let dir = TestDir::new();
        let data = dir.data_dir();
        let client = client();
        let mut server = Server::start(&data, NO_COMMITS).await;
        // 100,000 acknowledged, uncommitted events make the replay long enough to observe.
        const BATCHES: u64 = 20;
        const BATCH: u64 = 5_000;
        for batch in 0..BATCHES {
            let events: Vec<Value> = (0..BATCH).map(|i| event(batch * BATCH + i)).collect();
            let body = json!({ "events": events });
            let reply = post_events(&client, server.base_url(), server.token(), body).await;
            assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        }
        server.kill9();

        let mut server = Server::start_listening(&data, NO_COMMITS).await;
        let ready_url = format!("{}/v1/health/ready", server.base_url());
        let early = client.get(&ready_url).send().await.unwrap();
        assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
        let early: Value = early.json().await.unwrap();
        assert_eq!(early["status"], "not_ready", "{early}");
        assert_eq!(early["checks"]["wal"], "starting", "{early}");
        let refused = post_events(
            &client,
            server.base_url(),
            server.token(),
            json!({ "events": [event(BATCHES * BATCH)] }),
        )
        .await;
        assert_error(
            &refused,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        );

        server.wait_ready().await;
        let summary = client
            .get(format!("{}/v1/audit/summary", server.base_url()))
            .bearer_auth(server.token())
            .header("X-Tenant-ID", TENANT)
            .send()
            .await
            .unwrap();
        let summary: Value = summary.json().await.unwrap();
        assert_eq!(summary["total_events"], BATCHES * BATCH, "{summary}");
    })
    .await
    .expect("test deadline");
}
