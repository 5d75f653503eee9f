//! Reference test (issue 3): the server against a brute-force in-memory model.
//!
//! One server receives a quarter of a million events of the reference workload (SPEC §2,
//! WORKLOAD.md) over four tenants, plus groups of events that share exact timestamps, from one
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

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    ACTIONS, API_FIELDS, Server, TestDir, client, percent_encode, post_raw, reply_ids, try_send,
};
use fastrand::Rng;
use ipnet::IpNet;
use reqwest::{Client, StatusCode};
use scaivault_audit::workload::{WorkloadGenerator, WorkloadOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

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
        Server::start(&dir.data_dir(), &[]),
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
// Events: as sent, and as the model keeps them
// ---------------------------------------------------------------------------------------------

/// An event as sent to the ingest endpoint (the workload's NDJSON line shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    tenant_id: String,
    timestamp: String,
    action: String,
    secret_path: Option<String>,
    identity_type: String,
    identity_id: String,
    source_ip: Option<String>,
    user_agent: Option<String>,
    success: bool,
    duration_ms: Option<u64>,
    request_id: Option<String>,
    #[serde(default)]
    extra_data: Map<String, Value>,
}

/// A stored event: what was sent, the id the server acknowledged and the send order.
#[derive(Debug, Clone)]
struct ModelEvent {
    id: String,
    tenant: usize,
    timestamp_us: i64,
    send_index: u64,
    action: String,
    secret_path: Option<String>,
    identity_type: String,
    identity_id: String,
    source_ip: Option<IpAddr>,
    user_agent: Option<String>,
    success: bool,
    duration_ms: Option<u64>,
    request_id: Option<String>,
    extra_data: Map<String, Value>,
}

impl ModelEvent {
    fn new(wire: WireEvent, id: String, tenant: usize, send_index: u64) -> ModelEvent {
        ModelEvent {
            id,
            tenant,
            timestamp_us: parse_time(&wire.timestamp),
            send_index,
            action: wire.action,
            secret_path: wire.secret_path,
            identity_type: wire.identity_type,
            identity_id: wire.identity_id,
            source_ip: wire
                .source_ip
                .map(|ip| ip.parse().unwrap_or_else(|_| panic!("source_ip {ip}"))),
            user_agent: wire.user_agent,
            success: wire.success,
            duration_ms: wire.duration_ms,
            request_id: wire.request_id,
            extra_data: wire.extra_data,
        }
    }

    /// The server's total order: timestamp, then ingest sequence.
    fn order_key(&self) -> (i64, u64) {
        (self.timestamp_us, self.send_index)
    }

    /// The SPEC §2 API shape the server must return for this event.
    fn api_json(&self) -> Value {
        json!({
            "id": self.id,
            "timestamp": format_utc(self.timestamp_us),
            "action": self.action,
            "secret_path": self.secret_path,
            "identity_type": self.identity_type,
            "identity_id": self.identity_id,
            "source_ip": self.source_ip.map(|ip| ip.to_string()),
            "user_agent": self.user_agent,
            "success": self.success,
            "duration_ms": self.duration_ms,
            "request_id": self.request_id,
            "extra_data": self.extra_data,
        })
    }

    /// A new event to send, copying this one's fields (no id: the server assigns one).
    fn to_wire(&self, tenant_id: &str, timestamp: String) -> WireEvent {
        WireEvent {
            id: None,
            tenant_id: tenant_id.to_owned(),
            timestamp,
            action: self.action.clone(),
            secret_path: self.secret_path.clone(),
            identity_type: self.identity_type.clone(),
            identity_id: self.identity_id.clone(),
            source_ip: self.source_ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.clone(),
            success: self.success,
            duration_ms: self.duration_ms,
            request_id: self.request_id.clone(),
            extra_data: self.extra_data.clone(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} @ {} (send #{})",
            self.id,
            format_utc(self.timestamp_us),
            self.send_index
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// Every stored event, per tenant, in ascending (timestamp, send index) order.
struct Model {
    tenant_ids: Vec<String>,
    events: Vec<Vec<ModelEvent>>,
    tenant_of_id: HashMap<String, usize>,
    next_send_index: u64,
}

impl Model {
    fn new(tenant_ids: Vec<String>) -> Model {
        Model {
            events: vec![Vec::new(); tenant_ids.len()],
            tenant_ids,
            tenant_of_id: HashMap::new(),
            next_send_index: 0,
        }
    }

    /// Adds events sent with consecutive send indices from `next_send_index` on.
    fn add_all(&mut self, events: Vec<ModelEvent>) {
        for (offset, event) in events.into_iter().enumerate() {
            assert_eq!(event.send_index, self.next_send_index + offset as u64);
            let previous = self.tenant_of_id.insert(event.id.clone(), event.tenant);
            assert!(previous.is_none(), "id {} acknowledged twice", event.id);
            self.events[event.tenant].push(event);
        }
        self.next_send_index = self.tenant_of_id.len() as u64;
        for events in &mut self.events {
            events.sort_by_key(ModelEvent::order_key);
        }
    }

    fn total(&self) -> usize {
        self.tenant_of_id.len()
    }

    /// The events of `tenant` that satisfy `pinned` and `filters`, in page order.
    fn select(
        &self,
        tenant: usize,
        filters: &Filters,
        ascending: bool,
        pinned: impl Fn(&ModelEvent) -> bool,
    ) -> Vec<&ModelEvent> {
        let mut selected: Vec<&ModelEvent> = self.events[tenant]
            .iter()
            .filter(|event| pinned(event) && filters.matches(event))
            .collect();
        if !ascending {
            selected.reverse();
        }
        selected
    }

    fn time_bounds(&self) -> (i64, i64) {
        let all = self.events.iter().flatten().map(|event| event.timestamp_us);
        let oldest = all.clone().min().expect("model has events");
        (oldest, all.max().expect("model has events"))
    }
}

/// Facts about one tenant's events that random queries draw from.
struct TenantCatalog {
    /// Request ids carried by more than one event of the tenant.
    shared_request_ids: Vec<String>,
    most_read_path: String,
    single_event_paths: Vec<String>,
    busiest_identity: String,
    identities_by_type: BTreeMap<String, Vec<String>>,
}

fn build_catalog(events: &[ModelEvent]) -> TenantCatalog {
    let mut request_ids: HashMap<&str, usize> = HashMap::new();
    let mut reads: HashMap<&str, usize> = HashMap::new();
    let mut paths: HashMap<&str, usize> = HashMap::new();
    let mut identities: HashMap<&str, (usize, &str)> = HashMap::new();
    for event in events {
        if let Some(request_id) = &event.request_id {
            *request_ids.entry(request_id).or_default() += 1;
        }
        if let Some(path) = &event.secret_path {
            *paths.entry(path).or_default() += 1;
            if event.action == "read" {
                *reads.entry(path).or_default() += 1;
            }
        }
        identities
            .entry(&event.identity_id)
            .or_insert((0, &event.identity_type))
            .0 += 1;
    }
    let mut identities_by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (identity, (_, identity_type)) in &identities {
        identities_by_type
            .entry((*identity_type).to_owned())
            .or_default()
            .push((*identity).to_owned());
    }
    for ids in identities_by_type.values_mut() {
        ids.sort();
    }
    let mut single_event_paths: Vec<String> = paths
        .iter()
        .filter(|(_, count)| **count == 1)
        .map(|(path, _)| (*path).to_owned())
        .collect();
    single_event_paths.sort();
    let mut shared_request_ids: Vec<String> = request_ids
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| (*id).to_owned())
        .collect();
    shared_request_ids.sort();
    let identity_counts = identities.iter().map(|(id, (count, _))| (*id, *count));
    TenantCatalog {
        shared_request_ids,
        most_read_path: most_frequent(reads).expect("tenant has reads"),
        single_event_paths,
        busiest_identity: most_frequent(identity_counts).expect("tenant has identities"),
        identities_by_type,
    }
}

/// The key with the largest count (ties: smallest key).
fn most_frequent<'a>(counts: impl IntoIterator<Item = (&'a str, usize)>) -> Option<String> {
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(key, _)| key.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Filters and queries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct TimeBound {
    text: String,
    micros: i64,
}

impl TimeBound {
    fn random_spelling(rng: &mut Rng, micros: i64) -> TimeBound {
        TimeBound {
            text: render_time(rng, micros),
            micros,
        }
    }
}

#[derive(Debug, Clone)]
struct SourceIpFilter {
    text: String,
    network: IpNet,
}

/// The SPEC §3.1 filters (all but `q`), with the text each is sent as.
#[derive(Debug, Clone, Default)]
struct Filters {
    from: Option<TimeBound>,
    to: Option<TimeBound>,
    actions: Vec<String>,
    identity_id: Option<String>,
    identity_type: Option<String>,
    path_prefix: Option<String>,
    success: Option<bool>,
    source_ip: Option<SourceIpFilter>,
    request_id: Option<String>,
}

impl Filters {
    fn matches(&self, event: &ModelEvent) -> bool {
        self.from
            .as_ref()
            .is_none_or(|from| event.timestamp_us >= from.micros)
            && self
                .to
                .as_ref()
                .is_none_or(|to| event.timestamp_us < to.micros)
            && (self.actions.is_empty() || self.actions.contains(&event.action))
            && self
                .identity_id
                .as_ref()
                .is_none_or(|id| *id == event.identity_id)
            && self
                .identity_type
                .as_ref()
                .is_none_or(|kind| *kind == event.identity_type)
            && self.path_prefix.as_ref().is_none_or(|prefix| {
                event
                    .secret_path
                    .as_ref()
                    .is_some_and(|path| path.starts_with(prefix.as_str()))
            })
            && self.success.is_none_or(|success| success == event.success)
            && self.source_ip.as_ref().is_none_or(|filter| {
                event
                    .source_ip
                    .is_some_and(|ip| filter.network.contains(&ip))
            })
            && self
                .request_id
                .as_ref()
                .is_none_or(|id| event.request_id.as_ref() == Some(id))
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(from) = &self.from {
            params.push(("from", from.text.clone()));
        }
        if let Some(to) = &self.to {
            params.push(("to", to.text.clone()));
        }
        if !self.actions.is_empty() {
            params.push(("action", self.actions.join(",")));
        }
        let texts = [
            ("identity_id", &self.identity_id),
            ("identity_type", &self.identity_type),
            ("path_prefix", &self.path_prefix),
            ("request_id", &self.request_id),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                params.push((name, value.clone()));
            }
        }
        if let Some(success) = self.success {
            params.push(("success", success.to_string()));
        }
        if let Some(filter) = &self.source_ip {
            params.push(("source_ip", filter.text.clone()));
        }
        params
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Asc,
    Desc,
}

/// A listing request: filters plus paging parameters (`None` = parameter left out).
#[derive(Debug, Clone, Default)]
struct LogQuery {
    filters: Filters,
    limit: Option<usize>,
    order: Option<Order>,
}

impl LogQuery {
    fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    fn ascending(&self) -> bool {
        self.order == Some(Order::Asc)
    }

    /// The query string, with the limit replaced by `limit` when given.
    fn query_string(&self, limit: Option<usize>, cursor: Option<&str>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.filters.params() {
            query.append_pair(name, &value);
        }
        if let Some(limit) = limit.or(self.limit) {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(order) = self.order {
            let order = if order == Order::Asc { "asc" } else { "desc" };
            query.append_pair("order", order);
        }
        if let Some(cursor) = cursor {
            query.append_pair("cursor", cursor);
        }
        query.finish()
    }
}

fn with_query(endpoint: &str, query: &str) -> String {
    if query.is_empty() {
        endpoint.to_owned()
    } else {
        format!("{endpoint}?{query}")
    }
}

fn random_limit(rng: &mut Rng) -> Option<usize> {
    match rng.u8(0..10) {
        0 => None,
        1 | 2 => Some(rng.usize(1..=10)),
        3..=6 => Some(rng.usize(11..=200)),
        _ => Some(rng.usize(201..=1000)),
    }
}

fn random_order(rng: &mut Rng) -> Option<Order> {
    match rng.u8(0..3) {
        0 => None,
        1 => Some(Order::Asc),
        _ => Some(Order::Desc),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    Time,
    Actions,
    IdentityId,
    IdentityType,
    PathPrefix,
    Success,
    SourceIp,
    RequestId,
}

const FILTER_KINDS: [FilterKind; 8] = [
    FilterKind::Time,
    FilterKind::Actions,
    FilterKind::IdentityId,
    FilterKind::IdentityType,
    FilterKind::PathPrefix,
    FilterKind::Success,
    FilterKind::SourceIp,
    FilterKind::RequestId,
];

/// A prefix of `path`: whole, whole segments with a trailing `/`, the first segment, or a
/// random number of bytes.
fn random_path_prefix(rng: &mut Rng, path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    match rng.u8(0..4) {
        0 => path.to_owned(),
        1 if segments.len() > 1 => {
            let kept = rng.usize(1..segments.len());
            format!("{}/", segments[..kept].join("/"))
        }
        2 => segments[0].to_owned(),
        _ => path[..rng.usize(1..=path.len())].to_owned(),
    }
}

/// An exact address or a CIDR network around `ip`, sometimes written with host bits set.
fn random_ip_filter(rng: &mut Rng, ip: IpAddr) -> SourceIpFilter {
    let prefix = match ip {
        IpAddr::V4(_) => [32, 8, 16, 24][rng.usize(..4)],
        IpAddr::V6(_) => [128, 32, 32, 48][rng.usize(..4)],
    };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let network = IpNet::new(ip, prefix).expect("valid prefix").trunc();
    let text = if prefix == full {
        ip.to_string()
    } else if rng.bool() {
        format!("{ip}/{prefix}")
    } else {
        network.to_string()
    };
    SourceIpFilter { text, network }
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

/// Workload events, minus those near the trail window boundary.
fn generate_workload_events(seed: u64, now_us: i64) -> (Vec<WireEvent>, Vec<String>, usize) {
    let options = WorkloadOptions {
        count: WORKLOAD_EVENTS,
        seed,
        days: WORKLOAD_DAYS,
        end: jiff::Timestamp::from_microsecond(now_us - MICROS_PER_HOUR).expect("valid end"),
        tenants: TENANTS,
        include_tenant: true,
    };
    let mut generator = WorkloadGenerator::new(options);
    let tenant_ids = generator.tenant_ids();
    assert_eq!(tenant_ids.len(), TENANTS);
    let mut events = Vec::with_capacity(WORKLOAD_EVENTS as usize);
    let mut dropped = 0;
    let mut line = Vec::new();
    while generator.write_next(&mut line) {
        let event: WireEvent = serde_json::from_slice(&line).expect("workload line parses");
        line.clear();
        if near_window_boundary(parse_time(&event.timestamp), now_us) {
            dropped += 1;
        } else {
            events.push(event);
        }
    }
    (events, tenant_ids, dropped)
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

// ---------------------------------------------------------------------------------------------
// Comparing responses with the model
// ---------------------------------------------------------------------------------------------

fn shorten(text: &str) -> String {
    if text.len() <= MAX_SHOWN_CHARS {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN_CHARS;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} chars)", &text[..end], text.len())
}

fn log_id(log: &Value) -> Result<&str, String> {
    log["id"]
        .as_str()
        .ok_or_else(|| format!("log without a string id: {}", shorten(&log.to_string())))
}

fn describe_log(log: &Value) -> String {
    format!("{} @ {}", log["id"], log["timestamp"])
}

/// Every returned event must be a known event of `tenant`.
fn check_tenant_isolation(model: &Model, tenant: usize, got: &[Value]) -> Result<(), String> {
    for log in got {
        let id = log_id(log)?;
        match model.tenant_of_id.get(id) {
            Some(&owner) if owner == tenant => {}
            Some(&owner) => {
                return Err(format!(
                    "event {id} of tenant {} returned to tenant {}",
                    model.tenant_ids[owner], model.tenant_ids[tenant]
                ));
            }
            None => return Err(format!("event {id} is unknown to the model")),
        }
    }
    Ok(())
}

fn check_no_duplicates(got: &[Value]) -> Result<(), String> {
    let mut seen = HashSet::new();
    let duplicated: Vec<&str> = got
        .iter()
        .filter_map(|log| log["id"].as_str())
        .filter(|id| !seen.insert(*id))
        .take(5)
        .collect();
    if duplicated.is_empty() {
        Ok(())
    } else {
        Err(format!("ids returned twice (first 5): {duplicated:?}"))
    }
}

fn check_same_set(got: &[Value], expected: &[&ModelEvent]) -> Result<(), String> {
    let got_ids: HashSet<&str> = got.iter().filter_map(|log| log["id"].as_str()).collect();
    let expected_ids: HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !got_ids.contains(e.id.as_str()))
        .map(|e| e.describe())
        .collect();
    let unexpected: Vec<String> = got
        .iter()
        .filter(|log| {
            log["id"]
                .as_str()
                .is_some_and(|id| !expected_ids.contains(id))
        })
        .map(describe_log)
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} expected events missing (first 3: {:?}); {} unexpected events (first 3: {:?})",
        missing.len(),
        &missing[..missing.len().min(3)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(3)]
    ))
}

/// The first difference between a returned event and the model's, field by field.
fn diff_event(got: &Value, expected: &Value) -> Option<String> {
    let Some(object) = got.as_object() else {
        return Some(format!("not an object: {}", shorten(&got.to_string())));
    };
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    if keys != API_FIELDS {
        return Some(format!("fields {keys:?}, expected {API_FIELDS:?}"));
    }
    API_FIELDS
        .iter()
        .find(|field| got[**field] != expected[**field])
        .map(|field| {
            format!(
                "{field}: expected {}, got {}",
                expected[*field], got[*field]
            )
        })
}

/// `got` must be exactly `expected`: same events of the right tenant, same order, same fields.
fn compare_events(
    model: &Model,
    tenant: usize,
    got: &[Value],
    expected: &[&ModelEvent],
) -> Result<(), String> {
    check_tenant_isolation(model, tenant, got)?;
    check_no_duplicates(got)?;
    check_same_set(got, expected)?;
    for (position, (log, event)) in got.iter().zip(expected).enumerate() {
        if log["id"].as_str() != Some(event.id.as_str()) {
            return Err(format!(
                "order differs at position {position}: expected {}, got {}",
                event.describe(),
                describe_log(log)
            ));
        }
        if let Some(diff) = diff_event(log, &event.api_json()) {
            return Err(format!("event {} at position {position}: {diff}", event.id));
        }
    }
    Ok(())
}

/// The first page must be the first `limit` expected events, with the right `has_more`.
fn compare_first_page(
    model: &Model,
    tenant: usize,
    page: &Page,
    expected: &[&ModelEvent],
    limit: usize,
) -> Result<(), String> {
    let expected_page = &expected[..expected.len().min(limit)];
    compare_events(model, tenant, &page.logs, expected_page)?;
    let expected_has_more = expected.len() > limit;
    if page.has_more != expected_has_more {
        return Err(format!(
            "has_more: expected {expected_has_more} ({} matches, limit {limit}), got {}",
            expected.len(),
            page.has_more
        ));
    }
    Ok(())
}

/// Where two JSON values first differ (arrays element by element).
fn diff_values(expected: &Value, got: &Value) -> String {
    if let (Some(want), Some(have)) = (expected.as_array(), got.as_array()) {
        let first = want.iter().zip(have).position(|(a, b)| a != b);
        return match first {
            Some(i) => format!(
                "first difference at [{i}] (lengths {} vs {}): expected {}, got {}",
                want.len(),
                have.len(),
                want[i],
                have[i]
            ),
            None => format!("lengths {} expected, {} got", want.len(), have.len()),
        };
    }
    format!(
        "expected {}, got {}",
        shorten(&expected.to_string()),
        shorten(&got.to_string())
    )
}

/// Field-by-field comparison of two JSON objects.
fn compare_object(got: &Value, expected: &Value) -> Result<(), String> {
    let (Some(have), Some(want)) = (got.as_object(), expected.as_object()) else {
        return Err(format!("not an object: {}", shorten(&got.to_string())));
    };
    let mut problems = Vec::new();
    for (key, value) in want {
        match have.get(key) {
            None => problems.push(format!("`{key}` missing")),
            Some(actual) if actual != value => {
                problems.push(format!("`{key}`: {}", diff_values(value, actual)));
            }
            Some(_) => {}
        }
    }
    for key in have.keys().filter(|key| !want.contains_key(*key)) {
        problems.push(format!("unexpected field `{key}`"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregates (summaries and trail summaries)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Aggregate {
    total: u64,
    successful: u64,
    by_action: HashMap<String, u64>,
    by_identity: HashMap<String, u64>,
    by_path: HashMap<String, u64>,
    first_us: Option<i64>,
    last_us: Option<i64>,
    last_read_us: Option<i64>,
}

impl Aggregate {
    fn of<'a>(events: impl IntoIterator<Item = &'a ModelEvent>) -> Aggregate {
        let mut aggregate = Aggregate::default();
        for event in events {
            aggregate.total += 1;
            aggregate.successful += u64::from(event.success);
            *aggregate.by_action.entry(event.action.clone()).or_default() += 1;
            *aggregate
                .by_identity
                .entry(event.identity_id.clone())
                .or_default() += 1;
            if let Some(path) = &event.secret_path {
                *aggregate.by_path.entry(path.clone()).or_default() += 1;
            }
            let at = Some(event.timestamp_us);
            aggregate.first_us = aggregate.first_us.min(at).or(at);
            aggregate.last_us = aggregate.last_us.max(at);
            if event.action == "read" {
                aggregate.last_read_us = aggregate.last_read_us.max(at);
            }
        }
        aggregate
    }

    fn actions_breakdown(&self) -> Value {
        let breakdown: Map<String, Value> = self
            .by_action
            .iter()
            .map(|(action, count)| (action.clone(), json!(count)))
            .collect();
        Value::Object(breakdown)
    }

    /// `GET /v1/audit/summary` (SPEC §3.4).
    fn summary_json(&self, top: usize) -> Value {
        json!({
            "total_events": self.total,
            "successful_events": self.successful,
            "failed_events": self.total - self.successful,
            "actions_breakdown": self.actions_breakdown(),
            "top_identities": top_json(&self.by_identity, top, "identity_id"),
            "top_resources": top_json(&self.by_path, top, "path"),
        })
    }

    /// The `summary` of a secret trail (SPEC §3.2).
    fn secret_trail_json(&self) -> Value {
        json!({
            "window_days": TRAIL_WINDOW_DAYS,
            "total_events": self.total,
            "successful_events": self.successful,
            "failed_events": self.total - self.successful,
            "actions_breakdown": self.actions_breakdown(),
            "unique_identities": self.by_identity.len(),
            "top_identities": top_json(&self.by_identity, TRAIL_TOP, "identity_id"),
            "last_accessed_at": self.last_read_us.map(format_utc),
        })
    }

    /// The `summary` of an identity trail (SPEC §3.3).
    fn identity_trail_json(&self) -> Value {
        json!({
            "window_days": TRAIL_WINDOW_DAYS,
            "total_events": self.total,
            "successful_events": self.successful,
            "failed_events": self.total - self.successful,
            "actions_breakdown": self.actions_breakdown(),
            "unique_secrets": self.by_path.len(),
            "top_resources": top_json(&self.by_path, TRAIL_TOP, "path"),
            "first_seen": self.first_us.map(format_utc),
            "last_seen": self.last_us.map(format_utc),
        })
    }
}

/// Count descending, then key ascending.
fn ranking(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut ranked: Vec<(&str, u64)> = counts.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
}

fn top_json(counts: &HashMap<String, u64>, top: usize, key_name: &str) -> Value {
    let entries: Vec<Value> = ranking(counts)
        .into_iter()
        .take(top)
        .map(|(key, count)| json!({ key_name: key, "count": count }))
        .collect();
    Value::Array(entries)
}

/// Whether the `top`-th entry ties with the first one left out (the key order decides).
fn tied_at_cut(counts: &HashMap<String, u64>, top: usize) -> bool {
    let ranked = ranking(counts);
    ranked.len() > top && ranked[top - 1].1 == ranked[top].1
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    workload_events: usize,
    dropped_near_boundary: usize,
    tie_events: usize,
    batches: usize,
    moved_batches: usize,
    log_queries: usize,
    empty_queries: usize,
    filters_used: usize,
    first_page_events: usize,
    full_walks: usize,
    walked_pages: usize,
    walked_events: usize,
    summaries: usize,
    top_lists_tied_at_cut: usize,
    secret_trails: usize,
    identity_trails: usize,
    concurrent_walks: usize,
    concurrent_events: usize,
    concurrent_walk_notes: Vec<String>,
    final_walk_events: usize,
    mismatches: Vec<String>,
    mismatch_count: usize,
}

impl Report {
    fn record_workload(&mut self, workload: &Workload) {
        self.batches = workload.batches.len();
        self.workload_events = workload.batches.iter().map(Vec::len).sum();
        self.dropped_near_boundary = workload.dropped_near_boundary;
        self.tie_events = workload.tie_events;
        self.moved_batches = workload.moved_batches;
    }

    fn mismatch(&mut self, request: &str, detail: &str) {
        self.mismatch_count += 1;
        if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
            self.mismatches.push(format!("{request}\n    {detail}"));
        }
    }

    fn record(&mut self, request: &str, outcome: Result<(), String>) {
        if let Err(detail) = outcome {
            self.mismatch(request, &detail);
        }
    }

    fn print(&self, seed: u64, elapsed: Duration) {
        println!("---- reference test summary (seed {seed}, {elapsed:.1?}) ----");
        println!(
            "ingested {} events in {} NDJSON batches ({} moved out of time order); {} in tie \
             groups; {} workload events dropped near the 30-day boundary",
            self.workload_events,
            self.batches,
            self.moved_batches,
            self.tie_events,
            self.dropped_near_boundary
        );
        println!(
            "log queries: {} ({} empty, {} filters), {} first-page events compared field by field",
            self.log_queries, self.empty_queries, self.filters_used, self.first_page_events
        );
        println!(
            "full cursor walks: {} ({} pages, {} events)",
            self.full_walks, self.walked_pages, self.walked_events
        );
        println!(
            "summaries: {} ({} top lists tied at the cut)",
            self.summaries, self.top_lists_tied_at_cut
        );
        println!(
            "trails: {} secret, {} identity",
            self.secret_trails, self.identity_trails
        );
        println!(
            "walks during ingest: {} ({} new events sent; {}), then {} events walked against the \
             updated model",
            self.concurrent_walks,
            self.concurrent_events,
            self.concurrent_walk_notes.join("; "),
            self.final_walk_events
        );
        println!("disagreements with the model: {}", self.mismatch_count);
    }

    fn assert_no_mismatches(&self, seed: u64) {
        assert!(
            self.mismatch_count == 0,
            "{} disagreements with the model (seed {seed}); first {}:\n{}",
            self.mismatch_count,
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random log queries
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    api: &'a Api,
    model: &'a Model,
    catalogs: &'a [TenantCatalog],
}

impl Ctx<'_> {
    fn tenant_id(&self, tenant: usize) -> &str {
        &self.model.tenant_ids[tenant]
    }

    fn random_event(&self, rng: &mut Rng, tenant: usize) -> &ModelEvent {
        let events = &self.model.events[tenant];
        &events[rng.usize(..events.len())]
    }

    fn random_event_with_path(&self, rng: &mut Rng, tenant: usize) -> &ModelEvent {
        (0..1_000)
            .map(|_| self.random_event(rng, tenant))
            .find(|event| event.secret_path.is_some())
            .expect("tenant has events with paths")
    }

    /// `count` different random filters, with values taken mostly from `anchor`.
    fn random_filters(
        &self,
        rng: &mut Rng,
        anchor: &ModelEvent,
        count: usize,
        excluded: &[FilterKind],
    ) -> Filters {
        let mut kinds: Vec<FilterKind> = FILTER_KINDS
            .into_iter()
            .filter(|kind| !excluded.contains(kind))
            .collect();
        rng.shuffle(&mut kinds);
        let mut filters = Filters::default();
        for kind in kinds.into_iter().take(count) {
            self.add_filter(rng, anchor, kind, &mut filters);
        }
        filters
    }

    fn add_filter(&self, rng: &mut Rng, anchor: &ModelEvent, kind: FilterKind, f: &mut Filters) {
        let tenant = anchor.tenant;
        match kind {
            FilterKind::Time => (f.from, f.to) = self.random_window(rng, anchor),
            FilterKind::Actions => f.actions = random_actions(rng, &anchor.action),
            FilterKind::IdentityId => {
                let other_tenant = rng.usize(..TENANTS);
                let source = if rng.f64() < 0.8 {
                    anchor
                } else {
                    self.random_event(rng, other_tenant)
                };
                f.identity_id = Some(source.identity_id.clone());
            }
            FilterKind::IdentityType => {
                let kind = if rng.f64() < 0.7 {
                    anchor.identity_type.clone()
                } else {
                    IDENTITY_TYPES[rng.usize(..IDENTITY_TYPES.len())].to_owned()
                };
                f.identity_type = Some(kind);
            }
            FilterKind::PathPrefix => {
                let source = match &anchor.secret_path {
                    Some(_) => anchor,
                    None => self.random_event_with_path(rng, tenant),
                };
                let path = source.secret_path.as_deref().expect("has a path");
                f.path_prefix = Some(random_path_prefix(rng, path));
            }
            FilterKind::Success => f.success = Some(rng.bool()),
            FilterKind::SourceIp => {
                let ip = anchor.source_ip.expect("workload events carry an IP");
                f.source_ip = Some(random_ip_filter(rng, ip));
            }
            FilterKind::RequestId => {
                let shared = &self.catalogs[tenant].shared_request_ids;
                f.request_id = if rng.f64() < 0.4 && !shared.is_empty() {
                    Some(shared[rng.usize(..shared.len())].clone())
                } else {
                    anchor.request_id.clone()
                };
            }
        }
    }

    /// `from` only, `to` only, both around the anchor, or both exactly at event timestamps.
    fn random_window(
        &self,
        rng: &mut Rng,
        anchor: &ModelEvent,
    ) -> (Option<TimeBound>, Option<TimeBound>) {
        let width = log_uniform(rng, MICROS_PER_SECOND, 40 * MICROS_PER_DAY);
        let start = anchor.timestamp_us - rng.i64(0..=width);
        let bound = TimeBound::random_spelling;
        match rng.u8(0..5) {
            0 => (Some(bound(rng, start)), None),
            1 => {
                let end = anchor.timestamp_us + rng.i64(0..=width);
                (None, Some(bound(rng, end)))
            }
            2 => {
                let other = self.random_event(rng, anchor.tenant).timestamp_us;
                let (low, high) = (
                    other.min(anchor.timestamp_us),
                    other.max(anchor.timestamp_us),
                );
                (Some(bound(rng, low)), Some(bound(rng, high)))
            }
            _ => (Some(bound(rng, start)), Some(bound(rng, start + width))),
        }
    }

    fn random_log_query(&self, rng: &mut Rng, tenant: usize) -> LogQuery {
        let anchor = self.random_event(rng, tenant);
        let count = rng.usize(0..=4);
        LogQuery {
            filters: self.random_filters(rng, anchor, count, &[]),
            limit: random_limit(rng),
            order: random_order(rng),
        }
    }
}

/// The anchor's action plus up to two random others.
fn random_actions(rng: &mut Rng, anchor_action: &str) -> Vec<String> {
    let mut actions = vec![anchor_action.to_owned()];
    for _ in 0..rng.usize(0..=2) {
        let action = ACTIONS[rng.usize(..ACTIONS.len())].to_owned();
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    rng.shuffle(&mut actions);
    actions
}

/// A listing request and what the model says it must return.
struct Listing<'a> {
    tenant: usize,
    endpoint: String,
    query: LogQuery,
    expected: Vec<&'a ModelEvent>,
}

impl Listing<'_> {
    fn request(&self, tenant_id: &str) -> String {
        format!(
            "[{tenant_id}] GET {} ({} matches)",
            with_query(&self.endpoint, &self.query.query_string(None, None)),
            self.expected.len()
        )
    }

    /// Multi-page and small enough to walk completely.
    fn walkable(&self) -> bool {
        self.expected.len() > self.query.effective_limit()
            && self.expected.len() <= MAX_WALK_MATCHES
    }
}

/// Fetches the first page, compares it; returns the response body for further checks.
async fn check_first_page(
    ctx: &Ctx<'_>,
    listing: &Listing<'_>,
    report: &mut Report,
) -> Option<Value> {
    let tenant_id = ctx.tenant_id(listing.tenant);
    let request = listing.request(tenant_id);
    let url = with_query(&listing.endpoint, &listing.query.query_string(None, None));
    let outcome = match ctx.api.get(tenant_id, &url).await {
        Ok(body) => parse_page(&body).map(|page| (body, page)),
        Err(error) => Err(error),
    };
    let (body, page) = match outcome {
        Ok(fetched) => fetched,
        Err(error) => {
            report.mismatch(&request, &error);
            return None;
        }
    };
    let limit = listing.query.effective_limit();
    let compared = compare_first_page(ctx.model, listing.tenant, &page, &listing.expected, limit);
    report.first_page_events += page.logs.len();
    report.record(&request, compared);
    Some(body)
}

/// Walks every page and compares the concatenation with the model.
async fn check_full_walk(ctx: &Ctx<'_>, listing: &Listing<'_>, report: &mut Report) {
    let tenant_id = ctx.tenant_id(listing.tenant);
    let limit = walk_limit(listing.expected.len(), listing.query.effective_limit());
    let request = format!(
        "full walk (limit {limit}) of {}",
        listing.request(tenant_id)
    );
    let max_pages = listing.expected.len().div_ceil(limit) + 2;
    let walked = walk_pages(
        ctx.api,
        tenant_id,
        &listing.endpoint,
        &listing.query,
        limit,
        max_pages,
    )
    .await;
    report.full_walks += 1;
    match walked {
        Ok((logs, pages)) => {
            report.walked_pages += pages;
            report.walked_events += logs.len();
            let compared = compare_events(ctx.model, listing.tenant, &logs, &listing.expected);
            report.record(&request, compared);
        }
        Err(error) => report.mismatch(&request, &error),
    }
}

async fn check_random_queries(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
    let mut walks = 0;
    for _ in 0..MAX_QUERY_ATTEMPTS {
        if report.log_queries >= MIN_RANDOM_QUERIES && walks >= MIN_FULL_WALKS {
            break;
        }
        let tenant = rng.usize(..TENANTS);
        let query = ctx.random_log_query(rng, tenant);
        let expected = ctx
            .model
            .select(tenant, &query.filters, query.ascending(), |_| true);
        report.filters_used += query.filters.params().len();
        report.empty_queries += usize::from(expected.is_empty());
        let listing = Listing {
            tenant,
            endpoint: "/v1/audit/logs".to_owned(),
            query,
            expected,
        };
        report.log_queries += 1;
        check_first_page(ctx, &listing, report).await;
        let walk = listing.walkable() && (walks < MIN_FULL_WALKS || rng.f64() < EXTRA_WALK_SHARE);
        if walk {
            walks += 1;
            check_full_walk(ctx, &listing, report).await;
        }
    }
    assert!(
        report.log_queries >= MIN_RANDOM_QUERIES && walks >= MIN_FULL_WALKS,
        "only {} queries and {walks} walks after {MAX_QUERY_ATTEMPTS} attempts",
        report.log_queries
    );
}

// ---------------------------------------------------------------------------------------------
// Summaries
// ---------------------------------------------------------------------------------------------

async fn check_summaries(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
    for tenant in 0..TENANTS {
        for round in 0..SUMMARIES_PER_TENANT {
            let mut filters = Filters::default();
            if round > 0 {
                let anchor = ctx.random_event(rng, tenant);
                (filters.from, filters.to) = ctx.random_window(rng, anchor);
            }
            let top = match round % 3 {
                0 => None,
                1 => Some(rng.usize(1..=15)),
                _ => Some(rng.usize(1..=100)),
            };
            check_summary(ctx, tenant, &filters, top, report).await;
        }
    }
}

async fn check_summary(
    ctx: &Ctx<'_>,
    tenant: usize,
    window: &Filters,
    top: Option<usize>,
    report: &mut Report,
) {
    let aggregate = Aggregate::of(ctx.model.select(tenant, window, true, |_| true));
    let top_entries = top.unwrap_or(DEFAULT_TOP);
    let expected = aggregate.summary_json(top_entries);
    report.top_lists_tied_at_cut += usize::from(tied_at_cut(&aggregate.by_identity, top_entries));
    report.top_lists_tied_at_cut += usize::from(tied_at_cut(&aggregate.by_path, top_entries));
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in window.params() {
        query.append_pair(name, &value);
    }
    if let Some(top) = top {
        query.append_pair("top", &top.to_string());
    }
    let url = with_query("/v1/audit/summary", &query.finish());
    let tenant_id = ctx.tenant_id(tenant);
    let request = format!("[{tenant_id}] GET {url} ({} events)", aggregate.total);
    report.summaries += 1;
    let outcome = match ctx.api.get(tenant_id, &url).await {
        Ok(body) => compare_object(&body, &expected),
        Err(error) => Err(error),
    };
    report.record(&request, outcome);
}

// ---------------------------------------------------------------------------------------------
// Trails
// ---------------------------------------------------------------------------------------------

enum Trail {
    Secret(String),
    Identity { id: String, percent_encoded: bool },
}

impl Trail {
    fn endpoint(&self) -> String {
        match self {
            Trail::Secret(path) => format!("/v1/audit/secrets/{path}"),
            Trail::Identity {
                id,
                percent_encoded: true,
            } => format!("/v1/audit/identities/{}", percent_encode(id)),
            Trail::Identity { id, .. } => format!("/v1/audit/identities/{id}"),
        }
    }

    fn contains(&self, event: &ModelEvent) -> bool {
        match self {
            Trail::Secret(path) => event.secret_path.as_ref() == Some(path),
            Trail::Identity { id, .. } => event.identity_id == *id,
        }
    }

    /// The filter the trail replaces (not accepted as a parameter).
    fn pinned_filter(&self) -> FilterKind {
        match self {
            Trail::Secret(_) => FilterKind::PathPrefix,
            Trail::Identity { .. } => FilterKind::IdentityId,
        }
    }

    /// The trail's key as echoed in the response.
    fn echo(&self) -> (&'static str, &str) {
        match self {
            Trail::Secret(path) => ("path", path),
            Trail::Identity { id, .. } => ("identity_id", id),
        }
    }

    fn summary_json(&self, aggregate: &Aggregate) -> Value {
        match self {
            Trail::Secret(_) => aggregate.secret_trail_json(),
            Trail::Identity { .. } => aggregate.identity_trail_json(),
        }
    }
}

async fn check_trails(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
    for tenant in 0..TENANTS {
        for trail in secret_trails(ctx, rng, tenant) {
            report.secret_trails += 1;
            check_trail(ctx, rng, tenant, &trail, report).await;
        }
        for trail in identity_trails(ctx, rng, tenant) {
            report.identity_trails += 1;
            check_trail(ctx, rng, tenant, &trail, report).await;
        }
    }
}

/// The most-read path, a path with one event, an unknown path and random paths.
fn secret_trails(ctx: &Ctx<'_>, rng: &mut Rng, tenant: usize) -> Vec<Trail> {
    let catalog = &ctx.catalogs[tenant];
    let mut paths = vec![
        catalog.most_read_path.clone(),
        UNKNOWN_SECRET_PATH.to_owned(),
    ];
    if !catalog.single_event_paths.is_empty() {
        let singles = &catalog.single_event_paths;
        paths.push(singles[rng.usize(..singles.len())].clone());
    }
    for _ in 0..RANDOM_SECRET_TRAILS_PER_TENANT {
        let event = ctx.random_event_with_path(rng, tenant);
        paths.extend(event.secret_path.clone());
    }
    paths.into_iter().map(Trail::Secret).collect()
}

/// The busiest identity, one of each type, random ones and an unknown one; user ids (with
/// `:` and `@`) both raw and percent-encoded.
fn identity_trails(ctx: &Ctx<'_>, rng: &mut Rng, tenant: usize) -> Vec<Trail> {
    let catalog = &ctx.catalogs[tenant];
    let mut ids = vec![
        catalog.busiest_identity.clone(),
        UNKNOWN_IDENTITY.to_owned(),
    ];
    for of_type in catalog.identities_by_type.values() {
        ids.push(of_type[rng.usize(..of_type.len())].clone());
    }
    for _ in 0..RANDOM_IDENTITY_TRAILS_PER_TENANT {
        ids.push(ctx.random_event(rng, tenant).identity_id.clone());
    }
    let mut trails = Vec::new();
    for id in ids {
        if id.contains('@') {
            trails.push(Trail::Identity {
                id: id.clone(),
                percent_encoded: true,
            });
            trails.push(Trail::Identity {
                id,
                percent_encoded: false,
            });
        } else {
            let percent_encoded = rng.bool();
            trails.push(Trail::Identity {
                id,
                percent_encoded,
            });
        }
    }
    trails
}

/// One trail request with random extra filters: the key echo, the first page, `has_more`,
/// the 30-day summary; small multi-page trails are walked completely.
async fn check_trail(
    ctx: &Ctx<'_>,
    rng: &mut Rng,
    tenant: usize,
    trail: &Trail,
    report: &mut Report,
) {
    let members: Vec<&ModelEvent> = ctx.model.events[tenant]
        .iter()
        .filter(|event| trail.contains(event))
        .collect();
    let filters = if members.is_empty() {
        Filters::default()
    } else {
        let anchor = members[rng.usize(..members.len())];
        let count = rng.usize(0..=2);
        ctx.random_filters(rng, anchor, count, &[trail.pinned_filter()])
    };
    let query = LogQuery {
        filters,
        limit: random_limit(rng),
        order: random_order(rng),
    };
    let expected = ctx
        .model
        .select(tenant, &query.filters, query.ascending(), |e| {
            trail.contains(e)
        });
    let listing = Listing {
        tenant,
        endpoint: trail.endpoint(),
        query,
        expected,
    };
    let window_start = trail_window_start(now_micros());
    let in_window = members.iter().filter(|e| e.timestamp_us >= window_start);
    let expected_summary = trail.summary_json(&Aggregate::of(in_window.copied()));
    let Some(body) = check_first_page(ctx, &listing, report).await else {
        return;
    };
    let request = listing.request(ctx.tenant_id(tenant));
    let (key, value) = trail.echo();
    if body[key] != json!(value) {
        let detail = format!("`{key}`: expected {value:?}, got {}", body[key]);
        report.mismatch(&request, &detail);
    }
    let compared = compare_object(&body["summary"], &expected_summary)
        .map_err(|detail| format!("summary: {detail}"));
    report.record(&request, compared);
    if listing.walkable() && rng.f64() < 0.5 {
        check_full_walk(ctx, &listing, report).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cursor walks while events arrive
// ---------------------------------------------------------------------------------------------

/// Shared progress of the walkers and the concurrent ingest.
struct WalkSignals {
    /// The ingest starts once the walkers fetched this many pages together.
    ingest_after_pages: usize,
    pages: AtomicUsize,
    walks_finished: AtomicUsize,
    ingest_done: AtomicBool,
}

impl WalkSignals {
    fn new(ingest_after_pages: usize) -> WalkSignals {
        WalkSignals {
            ingest_after_pages,
            pages: AtomicUsize::new(0),
            walks_finished: AtomicUsize::new(0),
            ingest_done: AtomicBool::new(false),
        }
    }
}

/// Polls until `condition` holds (bounded).
async fn wait_for(what: &str, condition: impl Fn() -> bool) -> Result<(), String> {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > SIGNAL_DEADLINE {
            return Err(format!("{what} did not happen within {SIGNAL_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Walks every page while the ingest runs; at `hold_at_page` waits for the ingest to finish
/// (so the rest of the walk sees the new events).
async fn walk_while_ingesting(
    api: &Api,
    tenant_id: &str,
    query: &LogQuery,
    hold_at_page: usize,
    signals: &WalkSignals,
) -> Result<Vec<Value>, String> {
    let walked = walk_pages_while_ingesting(api, tenant_id, query, hold_at_page, signals).await;
    signals.walks_finished.fetch_add(1, Ordering::SeqCst);
    walked
}

async fn walk_pages_while_ingesting(
    api: &Api,
    tenant_id: &str,
    query: &LogQuery,
    hold_at_page: usize,
    signals: &WalkSignals,
) -> Result<Vec<Value>, String> {
    let mut logs = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 1..=MAX_CONCURRENT_WALK_PAGES {
        if page_number == hold_at_page {
            wait_for("the concurrent ingest", || {
                signals.ingest_done.load(Ordering::SeqCst)
            })
            .await?;
            tokio::time::sleep(VISIBILITY_PAUSE).await;
        }
        let url = with_query(
            "/v1/audit/logs",
            &query.query_string(None, cursor.as_deref()),
        );
        let body = api.get(tenant_id, &url).await?;
        let page = parse_page(&body).map_err(|e| format!("page {page_number}: {e}"))?;
        logs.extend(page.logs);
        signals.pages.fetch_add(1, Ordering::SeqCst);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(logs),
        }
        if !signals.ingest_done.load(Ordering::SeqCst) {
            tokio::time::sleep(CONCURRENT_WALK_PAUSE).await;
        }
    }
    Err(format!("more than {MAX_CONCURRENT_WALK_PAGES} pages"))
}

/// Sends `batches` once the walkers are a quarter through (or both gave up: their errors are
/// reported); returns the stored events.
async fn ingest_during_walks(
    api: &Api,
    tenant_ids: &[String],
    batches: Vec<Vec<WireEvent>>,
    first_send_index: u64,
    signals: &WalkSignals,
) -> Vec<ModelEvent> {
    let walking = wait_for("the walkers' first pages", || {
        signals.pages.load(Ordering::SeqCst) >= signals.ingest_after_pages
            || signals.walks_finished.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut stored = Vec::new();
    if walking.is_ok() {
        for batch in batches {
            let first = first_send_index + stored.len() as u64;
            stored.extend(send_batch(api, tenant_ids, batch, first).await);
        }
    }
    signals.ingest_done.store(true, Ordering::SeqCst);
    walking.expect("walkers started");
    stored
}

/// New events copied from existing ones (80% of them for the walked tenant), at random times
/// over the whole stored range up to a minute ago, some tying with stored timestamps.
fn concurrent_batches(rng: &mut Rng, model: &Model, walked_tenant: usize) -> Vec<Vec<WireEvent>> {
    let now_us = now_micros();
    let (oldest, _) = model.time_bounds();
    let newest = now_us - MICROS_PER_MINUTE;
    let mut batches = Vec::new();
    for batch in 0..CONCURRENT_BATCHES {
        let events = (0..CONCURRENT_BATCH_EVENTS).map(|member| {
            let tenant = if rng.f64() < 0.8 {
                walked_tenant
            } else {
                rng.usize(..TENANTS)
            };
            let tenant_events = &model.events[tenant];
            let template = &tenant_events[rng.usize(..tenant_events.len())];
            let micros = if rng.f64() < 0.1 {
                tenant_events[rng.usize(..tenant_events.len())].timestamp_us
            } else {
                random_time_off_boundary(rng, oldest, newest, now_us)
            };
            let timestamp = render_time(rng, micros);
            let mut event = template.to_wire(&model.tenant_ids[tenant], timestamp);
            event.extra_data = json!({"concurrent_batch": batch, "member": member})
                .as_object()
                .cloned()
                .expect("object");
            event
        });
        batches.push(events.collect());
    }
    batches
}

/// A walk during ingest must return every event that matched before, exactly once and in
/// model order; any other event must be a new one of the tenant that matches the filters.
/// Returns how many new events the walk saw.
fn check_walk_during_ingest(
    model: &Model,
    tenant: usize,
    query: &LogQuery,
    got: &[Value],
    new_events: &HashMap<&str, &ModelEvent>,
) -> Result<usize, String> {
    check_no_duplicates(got)?;
    let mut existing = Vec::new();
    let mut new_seen = 0;
    for log in got {
        let id = log_id(log)?;
        if model.tenant_of_id.contains_key(id) {
            existing.push(log.clone());
            continue;
        }
        let Some(event) = new_events.get(id) else {
            return Err(format!("event {id} is unknown to the model"));
        };
        if event.tenant != tenant || !query.filters.matches(event) {
            return Err(format!(
                "new event {} (tenant {}) does not belong to this walk",
                event.describe(),
                model.tenant_ids[event.tenant]
            ));
        }
        if let Some(diff) = diff_event(log, &event.api_json()) {
            return Err(format!("new event {id}: {diff}"));
        }
        new_seen += 1;
    }
    let before = model.select(tenant, &query.filters, query.ascending(), |_| true);
    compare_events(model, tenant, &existing, &before)
        .map_err(|detail| format!("events stored before the walk: {detail}"))?;
    Ok(new_seen)
}

/// Two cursor walks (newest first over the whole tenant, oldest first over a path prefix) run
/// while a second client ingests events older and newer than the walk positions; afterwards
/// the same walks must equal the updated model exactly.
async fn check_walks_during_ingest(
    api: &Api,
    model: &mut Model,
    rng: &mut Rng,
    report: &mut Report,
) {
    let tenant = 0;
    let tenant_id = model.tenant_ids[tenant].clone();
    let queries = walk_during_ingest_queries();
    let batches = concurrent_batches(rng, model, tenant);
    report.concurrent_events = batches.iter().map(Vec::len).sum();
    let pages: Vec<usize> = queries
        .iter()
        .map(|query| {
            let matches = model.select(tenant, &query.filters, true, |_| true).len();
            matches.div_ceil(query.effective_limit())
        })
        .collect();
    // Ingest from about a quarter to (at most) three fifths of each walk: new events land both
    // behind and ahead of the cursors.
    let signals = WalkSignals::new(pages.iter().sum::<usize>() / 4);
    let holds: Vec<usize> = pages.iter().map(|pages| (pages * 3 / 5).max(3)).collect();
    let (walk_a, walk_b, new_events) = tokio::join!(
        walk_while_ingesting(api, &tenant_id, &queries[0], holds[0], &signals),
        walk_while_ingesting(api, &tenant_id, &queries[1], holds[1], &signals),
        ingest_during_walks(
            api,
            &model.tenant_ids,
            batches,
            model.next_send_index,
            &signals
        ),
    );
    let new_by_id: HashMap<&str, &ModelEvent> =
        new_events.iter().map(|e| (e.id.as_str(), e)).collect();
    for (query, walked) in queries.iter().zip([walk_a, walk_b]) {
        let request = format!(
            "[{tenant_id}] walk during ingest of GET /v1/audit/logs?{}",
            query.query_string(None, None)
        );
        report.concurrent_walks += 1;
        let outcome = walked
            .and_then(|logs| check_walk_during_ingest(model, tenant, query, &logs, &new_by_id));
        let matching_new = new_events
            .iter()
            .filter(|event| event.tenant == tenant && query.filters.matches(event))
            .count();
        match outcome {
            Ok(seen) => report.concurrent_walk_notes.push(format!(
                "{}: saw {seen} of {matching_new} matching new events",
                query.query_string(None, None)
            )),
            Err(detail) => report.mismatch(&request, &detail),
        }
    }
    model.add_all(new_events);
    wait_until_totals_match(api, model).await;
    check_walks_after_ingest(api, model, &queries, report).await;
}

fn walk_during_ingest_queries() -> [LogQuery; 2] {
    let newest_first = LogQuery {
        filters: Filters::default(),
        limit: Some(1000),
        order: Some(Order::Desc),
    };
    let by_prefix = LogQuery {
        filters: Filters {
            path_prefix: Some("environments/".to_owned()),
            ..Filters::default()
        },
        limit: Some(500),
        order: Some(Order::Asc),
    };
    [newest_first, by_prefix]
}

/// The same walks, after the ingest, against the model that now holds the new events.
async fn check_walks_after_ingest(
    api: &Api,
    model: &Model,
    queries: &[LogQuery],
    report: &mut Report,
) {
    let tenant = 0;
    let tenant_id = &model.tenant_ids[tenant];
    for query in queries {
        let expected = model.select(tenant, &query.filters, query.ascending(), |_| true);
        let limit = query.effective_limit();
        let request = format!(
            "[{tenant_id}] walk after ingest of GET /v1/audit/logs?{}",
            query.query_string(None, None)
        );
        let max_pages = expected.len().div_ceil(limit) + 2;
        let walked = walk_pages(api, tenant_id, "/v1/audit/logs", query, limit, max_pages).await;
        let outcome = walked.and_then(|(logs, _)| {
            report.final_walk_events += logs.len();
            compare_events(model, tenant, &logs, &expected)
        });
        report.record(&request, outcome);
    }
}
