//! Reference test (issue 3): the server against a brute-force in-memory model.
//!
//! One server receives a quarter of a million events of the reference workload (SPEC §2,
//! docs/workload.md) over four tenants, plus groups of events that share exact timestamps, from one
//! sequential client, with some batches sent out of time order. The test keeps every stored
//! event with its send index: the server breaks timestamp ties by an ingest sequence, so
//! sorting the model by (timestamp, send index) predicts every page exactly.
//!
//! Compared with the model, per tenant (SPEC §3.1–§3.4): random log queries (first page field
//! by field, `has_more`, `cursor`), full cursor walks, summaries with their top lists, secret and
//! identity trails with their 30-day summaries, and cursor walks that run while new events
//! arrive. Every returned event is checked by id to belong to the queried tenant.
//!
//! Disagreements are collected and reported together at the end. `REFERENCE_SEED=N` replays a
//! run.
//!
//! The workload comes from the binary's own `scaivault-audit gen`. This module holds the test,
//! the workload and the HTTP calls; [`model`] the brute-force model and its expected
//! aggregates, [`queries`] the random queries and walks, [`comparison`] the diffs and the report.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::harness::{
    AUDIT_OF_AUDIT_OFF, BINARY, Server, TestDir, client, post_raw, reply_ids, try_send,
};
use fastrand::Rng;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

mod comparison;
mod model;
mod queries;

use comparison::*;
use model::*;
use queries::*;

// ---------------------------------------------------------------------------------------------
// Sizes and deadlines
// ---------------------------------------------------------------------------------------------

const WORKLOAD_EVENTS: u64 = 250_000;
const TENANTS: usize = 4;
const WORKLOAD_DAYS: f64 = 40.0;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
/// Trail summaries cover `now - 30 days ..` (SPEC §3.2, §3.3).
const TRAIL_WINDOW_DAYS: i64 = 30;
/// No event lies this close to `now - 30 days`, so the trail window cannot flake.
const WINDOW_BOUNDARY_MARGIN_US: i64 = 2 * MICROS_PER_HOUR;

const TIE_GROUPS: usize = 300;
const TIE_GROUP_SIZES: RangeInclusive<usize> = 5..=50;
const WORKLOAD_EVENTS_PER_BATCH: RangeInclusive<usize> = 5_000..=9_000;
const MAX_BATCH_EVENTS: usize = 10_000;
/// Share of batch positions whose batches trade places before sending.
const SHUFFLED_BATCH_SHARE: f64 = 0.4;

const DEFAULT_LIMIT: usize = 100;
const DEFAULT_TOP: usize = 10;
const TRAIL_TOP: usize = 10;
const MIN_RANDOM_QUERIES: usize = 320;
const MIN_FULL_WALKS: usize = 45;
const MAX_QUERY_ATTEMPTS: usize = 3_000;
/// Share of further multi-page queries walked once `MIN_FULL_WALKS` is reached.
const EXTRA_WALK_SHARE: f64 = 0.05;
const MAX_WALK_MATCHES: usize = 20_000;
/// A walk that would need more pages at the query's own limit uses a larger one.
const MAX_WALK_PAGES: usize = 60;
const SUMMARIES_PER_TENANT: usize = 12;
const RANDOM_SECRET_TRAILS_PER_TENANT: usize = 8;
const RANDOM_IDENTITY_TRAILS_PER_TENANT: usize = 8;

const CONCURRENT_BATCHES: usize = 16;
const CONCURRENT_BATCH_EVENTS: usize = 500;
const CONCURRENT_WALK_PAUSE: Duration = Duration::from_millis(20);
/// After the concurrent ingest, walkers pause this long so the new events become visible.
const VISIBILITY_PAUSE: Duration = Duration::from_millis(1_500);
const MAX_CONCURRENT_WALK_PAGES: usize = 2_000;

const START_DEADLINE: Duration = Duration::from_secs(90);
const INGEST_DEADLINE: Duration = Duration::from_secs(300);
const VISIBILITY_DEADLINE: Duration = Duration::from_secs(30);
const QUERY_PHASE_DEADLINE: Duration = Duration::from_secs(300);
const SIGNAL_DEADLINE: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

const MAX_REPORTED_MISMATCHES: usize = 40;
const MAX_SHOWN_CHARS: usize = 600;

const IDENTITY_TYPES: [&str; 4] = ["user", "service_account", "group", "system"];
const UNKNOWN_SECRET_PATH: &str = "environments/nowhere/no-such-service/no-such-secret";
const UNKNOWN_IDENTITY: &str = "user:nobody@nowhere.example";

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_agrees_with_brute_force_model() {
    let started = Instant::now();
    let seed = seed_from_env();
    println!("reference seed {seed} (replay with REFERENCE_SEED={seed})");
    let mut rng = Rng::with_seed(seed);
    let dir = TestDir::new();
    let server = phase(
        "start server",
        START_DEADLINE,
        // The harness turns the query rate limit off (the test sends thousands of queries).
        // The audit of the audit is off: the model holds what was ingested, and every query
        // would add an `audit_read` event to the tenant it compares (tests/it/audit_of_audit.rs
        // covers those events).
        Server::start(&dir.data_dir(), AUDIT_OF_AUDIT_OFF),
    )
    .await;
    let api = Api::new(&server);
    let mut report = Report::default();

    let workload = build_workload(&mut rng, seed, now_micros());
    report.record_workload(&workload);
    let mut model = Model::new(workload.tenant_ids.clone());
    phase(
        "ingest",
        INGEST_DEADLINE,
        ingest_workload(&api, &mut model, workload.batches),
    )
    .await;
    phase(
        "visibility",
        VISIBILITY_DEADLINE,
        wait_until_totals_match(&api, &model),
    )
    .await;

    let catalogs: Vec<TenantCatalog> = model
        .events
        .iter()
        .map(|events| build_catalog(events.as_slice()))
        .collect();
    let ctx = Ctx {
        api: &api,
        model: &model,
        catalogs: &catalogs,
    };
    phase(
        "random log queries",
        QUERY_PHASE_DEADLINE,
        check_random_queries(&ctx, &mut rng, &mut report),
    )
    .await;
    phase(
        "summaries",
        QUERY_PHASE_DEADLINE,
        check_summaries(&ctx, &mut rng, &mut report),
    )
    .await;
    phase(
        "trails",
        QUERY_PHASE_DEADLINE,
        check_trails(&ctx, &mut rng, &mut report),
    )
    .await;
    phase(
        "walks during ingest",
        QUERY_PHASE_DEADLINE,
        check_walks_during_ingest(&api, &mut model, &mut rng, &mut report),
    )
    .await;

    report.print(seed, started.elapsed());
    report.assert_no_mismatches(seed);
}

/// Runs one phase under a deadline and prints how long it took.
async fn phase<T>(name: &str, deadline: Duration, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let output = tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| panic!("phase `{name}` did not finish within {deadline:?}"));
    println!("phase {name}: {:.1?}", started.elapsed());
    output
}

fn seed_from_env() -> u64 {
    std::env::var("REFERENCE_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn trail_window_start(now_us: i64) -> i64 {
    now_us - TRAIL_WINDOW_DAYS * MICROS_PER_DAY
}

fn near_window_boundary(micros: i64, now_us: i64) -> bool {
    (micros - trail_window_start(now_us)).abs() < WINDOW_BOUNDARY_MARGIN_US
}

fn parse_time(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .unwrap_or_else(|error| panic!("timestamp {text}: {error}"))
        .as_microsecond()
}

/// `YYYY-MM-DDTHH:MM:SS` of a wall-clock time in microseconds.
fn date_time(wall_us: i64) -> String {
    jiff::Timestamp::from_second(wall_us.div_euclid(MICROS_PER_SECOND))
        .expect("timestamp in range")
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The server's output form: RFC 3339 UTC, six fractional digits, `Z`.
fn format_utc(micros: i64) -> String {
    format!(
        "{}.{:06}Z",
        date_time(micros),
        micros.rem_euclid(MICROS_PER_SECOND)
    )
}

/// The same instant written with a UTC offset of `offset_minutes`.
fn format_with_offset(micros: i64, offset_minutes: i64) -> String {
    let wall = micros + offset_minutes * MICROS_PER_MINUTE;
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let minutes = offset_minutes.abs();
    format!(
        "{}.{:06}{sign}{:02}:{:02}",
        date_time(wall),
        wall.rem_euclid(MICROS_PER_SECOND),
        minutes / 60,
        minutes % 60
    )
}

/// One of several RFC 3339 spellings of `micros` (inputs accept any offset and precision).
fn render_time(rng: &mut Rng, micros: i64) -> String {
    match rng.u8(0..10) {
        0 => format_with_offset(micros, 120),
        1 => format_with_offset(micros, -330),
        2 if micros % MICROS_PER_SECOND == 0 => format!("{}Z", date_time(micros)),
        3 if micros % 1_000 == 0 => format!(
            "{}.{:03}Z",
            date_time(micros),
            micros.rem_euclid(MICROS_PER_SECOND) / 1_000
        ),
        _ => format_utc(micros),
    }
}

/// A random time in `[oldest, newest)` that is not near the trail window boundary.
fn random_time_off_boundary(rng: &mut Rng, oldest: i64, newest: i64, now_us: i64) -> i64 {
    for _ in 0..1_000 {
        let micros = rng.i64(oldest..newest);
        if !near_window_boundary(micros, now_us) {
            return micros;
        }
    }
    panic!("no time in [{oldest}, {newest}) away from the window boundary");
}

fn log_uniform(rng: &mut Rng, low: i64, high: i64) -> i64 {
    let ratio = high as f64 / low as f64;
    (low as f64 * ratio.powf(rng.f64())) as i64
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

struct Workload {
    tenant_ids: Vec<String>,
    batches: Vec<Vec<WireEvent>>,
    dropped_near_boundary: usize,
    tie_events: usize,
    moved_batches: usize,
}

/// The reference workload, ending an hour ago, with tie groups mixed in and some batches
/// moved out of time order.
fn build_workload(rng: &mut Rng, seed: u64, now_us: i64) -> Workload {
    let (events, tenant_ids, dropped_near_boundary) = generate_workload_events(seed, now_us);
    let ties = tie_group_events(rng, &events, &tenant_ids, now_us);
    let tie_events = ties.len();
    let mut batches = split_into_batches(rng, events);
    mix_into_batches(rng, &mut batches, ties);
    let moved_batches = shuffle_some_batches(rng, &mut batches);
    Workload {
        tenant_ids,
        batches,
        dropped_near_boundary,
        tie_events,
        moved_batches,
    }
}

/// Workload events, minus those near the trail window boundary, with the tenant ids (sorted).
fn generate_workload_events(seed: u64, now_us: i64) -> (Vec<WireEvent>, Vec<String>, usize) {
    let mut events = Vec::with_capacity(WORKLOAD_EVENTS as usize);
    let mut tenant_ids = BTreeSet::new();
    let mut dropped = 0;
    for line in run_gen(seed, now_us - MICROS_PER_HOUR).lines() {
        let event: WireEvent = serde_json::from_str(line).expect("workload line parses");
        tenant_ids.insert(event.tenant_id.clone());
        if near_window_boundary(parse_time(&event.timestamp), now_us) {
            dropped += 1;
        } else {
            events.push(event);
        }
    }
    let tenant_ids: Vec<String> = tenant_ids.into_iter().collect();
    assert_eq!(tenant_ids.len(), TENANTS);
    (events, tenant_ids, dropped)
}

/// The NDJSON of `scaivault-audit gen`: the reference workload of `seed`, ending at `end_us`.
fn run_gen(seed: u64, end_us: i64) -> String {
    let end = jiff::Timestamp::from_microsecond(end_us).expect("valid end");
    let output = std::process::Command::new(BINARY)
        .arg("gen")
        .args(["--count", &WORKLOAD_EVENTS.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--days", &WORKLOAD_DAYS.to_string()])
        .args(["--end", &end.to_string()])
        .args(["--tenants", &TENANTS.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scaivault-audit gen");
    assert!(output.status.success(), "gen failed: {}", output.status);
    String::from_utf8(output.stdout).expect("gen writes UTF-8")
}

/// Groups of 5 to 50 events sharing one exact timestamp, within one tenant or across tenants,
/// copied from workload events; half of the groups also share one request id.
fn tie_group_events(
    rng: &mut Rng,
    events: &[WireEvent],
    tenant_ids: &[String],
    now_us: i64,
) -> Vec<WireEvent> {
    let mut by_tenant: Vec<Vec<&WireEvent>> = vec![Vec::new(); tenant_ids.len()];
    for event in events {
        let tenant = tenant_ids.iter().position(|id| *id == event.tenant_id);
        by_tenant[tenant.expect("workload tenant")].push(event);
    }
    let oldest = events.iter().map(|e| parse_time(&e.timestamp)).min();
    let oldest = oldest.expect("workload has events");
    let newest = now_us - MICROS_PER_HOUR;
    let mut ties = Vec::new();
    for group in 0..TIE_GROUPS {
        let micros = tie_timestamp(rng, events, oldest, newest, now_us);
        let single_tenant = rng.bool().then(|| rng.usize(..tenant_ids.len()));
        let request_id = rng.bool().then(|| format!("req_tie_{group}"));
        for member in 0..rng.usize(TIE_GROUP_SIZES) {
            let tenant = single_tenant.unwrap_or_else(|| rng.usize(..tenant_ids.len()));
            let template = by_tenant[tenant][rng.usize(..by_tenant[tenant].len())];
            let mut event = template.clone();
            event.id = None;
            event.timestamp = render_time(rng, micros);
            if let Some(request_id) = &request_id {
                event.request_id = Some(request_id.clone());
            }
            event.extra_data = json!({"tie_group": group, "member": member})
                .as_object()
                .cloned()
                .expect("object");
            ties.push(event);
        }
    }
    ties
}

/// A workload event's timestamp, or a random (sometimes whole-second) time off the boundary.
fn tie_timestamp(
    rng: &mut Rng,
    events: &[WireEvent],
    oldest: i64,
    newest: i64,
    now_us: i64,
) -> i64 {
    if rng.f64() < 0.4 {
        return parse_time(&events[rng.usize(..events.len())].timestamp);
    }
    for _ in 0..1_000 {
        let mut micros = random_time_off_boundary(rng, oldest, newest, now_us);
        if rng.f64() < 0.25 {
            micros -= micros.rem_euclid(MICROS_PER_SECOND);
        }
        if !near_window_boundary(micros, now_us) && micros >= oldest {
            return micros;
        }
    }
    panic!("no tie timestamp found");
}

fn split_into_batches(rng: &mut Rng, events: Vec<WireEvent>) -> Vec<Vec<WireEvent>> {
    let mut batches = Vec::new();
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let size = rng.usize(WORKLOAD_EVENTS_PER_BATCH);
        batches.push(events.by_ref().take(size).collect());
    }
    batches
}

/// Spreads `extra` over the batches at random positions, keeping every batch within limits.
fn mix_into_batches(rng: &mut Rng, batches: &mut [Vec<WireEvent>], extra: Vec<WireEvent>) {
    let mut per_batch: Vec<Vec<WireEvent>> = vec![Vec::new(); batches.len()];
    for event in extra {
        let batch = (0..1_000)
            .map(|_| rng.usize(..batches.len()))
            .find(|&b| batches[b].len() + per_batch[b].len() < MAX_BATCH_EVENTS)
            .expect("a batch with room");
        per_batch[batch].push(event);
    }
    for (batch, extra) in batches.iter_mut().zip(per_batch) {
        let mut slots: Vec<(usize, WireEvent)> = extra
            .into_iter()
            .map(|event| (rng.usize(..=batch.len()), event))
            .collect();
        slots.sort_by_key(|(slot, _)| *slot);
        let original = std::mem::take(batch);
        let mut slots = slots.into_iter().peekable();
        for (position, event) in original.into_iter().enumerate() {
            while let Some((_, extra)) = slots.next_if(|(slot, _)| *slot <= position) {
                batch.push(extra);
            }
            batch.push(event);
        }
        batch.extend(slots.map(|(_, event)| event));
    }
}

/// Permutes a random subset of batch positions; returns how many batches moved.
fn shuffle_some_batches(rng: &mut Rng, batches: &mut [Vec<WireEvent>]) -> usize {
    let chosen: Vec<usize> = (0..batches.len())
        .filter(|_| rng.f64() < SHUFFLED_BATCH_SHARE)
        .collect();
    let mut sources = chosen.clone();
    rng.shuffle(&mut sources);
    let mut taken: Vec<Vec<WireEvent>> = chosen
        .iter()
        .map(|&position| std::mem::take(&mut batches[position]))
        .collect();
    for (&target, &source) in chosen.iter().zip(&sources) {
        let source_slot = chosen.iter().position(|&c| c == source).expect("chosen");
        batches[target] = std::mem::take(&mut taken[source_slot]);
    }
    let moved = chosen.iter().zip(&sources).filter(|(a, b)| a != b).count();
    if moved == 0 && batches.len() > 1 {
        let last = batches.len() - 1;
        batches.swap(0, last);
        return 2;
    }
    moved
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Api {
    client: Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            client: client(),
            base: server.base_url().to_owned(),
            token: server.token().to_owned(),
        }
    }

    /// `GET` as the bootstrap token acting for `tenant_id`; anything but a 200 is an error.
    async fn get(&self, tenant_id: &str, path_and_query: &str) -> Result<Value, String> {
        let request = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(&self.token)
            .header("X-Tenant-ID", tenant_id);
        let (status, _, body) = try_send(request).await?;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(format!("status {status}: {}", shorten(&body.to_string())))
        }
    }
}

/// Sends one NDJSON batch; returns the model events with send indices from `first_send_index`.
async fn send_batch(
    api: &Api,
    tenant_ids: &[String],
    batch: Vec<WireEvent>,
    first_send_index: u64,
) -> Vec<ModelEvent> {
    let mut body = Vec::with_capacity(batch.len() * 450);
    for event in &batch {
        serde_json::to_writer(&mut body, event).expect("serialize event");
        body.push(b'\n');
    }
    let (status, _, reply) = post_raw(
        &api.client,
        &api.base,
        &api.token,
        "application/x-ndjson",
        body,
    )
    .await;
    let reply_text = shorten(&reply.to_string());
    assert_eq!(status, StatusCode::OK, "ingest failed: {reply_text}");
    assert_eq!(reply["accepted"], json!(batch.len()), "{reply_text}");
    assert_eq!(reply["duplicates"], json!(0), "{reply_text}");
    let ids = reply_ids(&reply);
    assert_eq!(ids.len(), batch.len(), "one id per event");
    batch
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(offset, (event, id))| {
            if let Some(sent) = &event.id {
                assert_eq!(*sent, id, "producer id returned as sent");
            }
            let tenant = tenant_ids.iter().position(|t| *t == event.tenant_id);
            let tenant = tenant.expect("known tenant");
            ModelEvent::new(event, id, tenant, first_send_index + offset as u64)
        })
        .collect()
}

async fn ingest_workload(api: &Api, model: &mut Model, batches: Vec<Vec<WireEvent>>) {
    let mut stored = Vec::new();
    for batch in batches {
        let first = model.next_send_index + stored.len() as u64;
        stored.extend(send_batch(api, &model.tenant_ids, batch, first).await);
    }
    model.add_all(stored);
    println!("ingested {} events", model.total());
}

/// Polls `/summary` until every tenant's total equals the model's (bounded).
async fn wait_until_totals_match(api: &Api, model: &Model) {
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for (tenant, tenant_id) in model.tenant_ids.iter().enumerate() {
            let body = api.get(tenant_id, "/v1/audit/summary").await;
            let body = body.unwrap_or_else(|error| panic!("summary of {tenant_id}: {error}"));
            let expected = model.events[tenant].len();
            if body["total_events"] != json!(expected) {
                pending.push(format!(
                    "{tenant_id}: {} of {expected}",
                    body["total_events"]
                ));
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < VISIBILITY_DEADLINE,
            "summary totals still differ from the model after {VISIBILITY_DEADLINE:?}: {pending:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One page of a listing.
struct Page {
    logs: Vec<Value>,
    cursor: Option<String>,
    has_more: bool,
}

/// Reads `logs`, `cursor` and `has_more`, checking `cursor` is null exactly when `!has_more`.
fn parse_page(body: &Value) -> Result<Page, String> {
    let logs = body["logs"]
        .as_array()
        .ok_or_else(|| format!("no `logs` array: {}", shorten(&body.to_string())))?
        .clone();
    let has_more = body["has_more"]
        .as_bool()
        .ok_or_else(|| format!("`has_more` is {}", body["has_more"]))?;
    let cursor = match body.get("cursor") {
        Some(Value::Null) => None,
        Some(Value::String(cursor)) => Some(cursor.clone()),
        other => return Err(format!("`cursor` is neither a string nor null: {other:?}")),
    };
    if has_more != cursor.is_some() {
        return Err(format!(
            "has_more = {has_more} but cursor = {}",
            body["cursor"]
        ));
    }
    Ok(Page {
        logs,
        cursor,
        has_more,
    })
}

/// Walks every page of `endpoint` with `query` (limit `limit`); at most `max_pages`.
async fn walk_pages(
    api: &Api,
    tenant_id: &str,
    endpoint: &str,
    query: &LogQuery,
    limit: usize,
    max_pages: usize,
) -> Result<(Vec<Value>, usize), String> {
    let mut logs = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 1..=max_pages {
        let url = with_query(
            endpoint,
            &query.query_string(Some(limit), cursor.as_deref()),
        );
        let body = api
            .get(tenant_id, &url)
            .await
            .map_err(|e| format!("page {page_number}: {e}"))?;
        let page = parse_page(&body).map_err(|e| format!("page {page_number}: {e}"))?;
        if page.has_more && page.logs.len() != limit {
            return Err(format!(
                "page {page_number} has {} logs, limit {limit}, and has_more",
                page.logs.len()
            ));
        }
        logs.extend(page.logs);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok((logs, page_number)),
        }
    }
    Err(format!(
        "still has_more after {max_pages} pages ({} logs)",
        logs.len()
    ))
}

/// The limit a full walk uses: the query's own unless that needs too many pages.
fn walk_limit(matches: usize, limit: usize) -> usize {
    if matches.div_ceil(limit) > MAX_WALK_PAGES {
        matches.div_ceil(MAX_WALK_PAGES)
    } else {
        limit
    }
}
