//! The audit of the audit (issue 13; PCI DSS 10.2.1.3: all access to audit logs is logged):
//! every read of audit data is itself recorded as an event of the tenant it read.
//!
//! A route wraps its handler in [`audited`] instead of [`super::rate_limited`], naming the
//! endpoint and the filters ([`AuditedRead`]); [`super::query_route`] does it for plain `GET`
//! query routes. After the handler has answered, the request becomes one `audit_read` event
//! (export creation: `export_created`) of the tenant the read acted on, by the caller, with
//! `extra_data = {"endpoint", "filters", "status"}`, and is handed to a bounded queue. One
//! background task ([`AuditTrailWriter`]) writes the queue in batches through the store's
//! normal durable ingest path, so reads never wait on fsync; a full queue drops the event and
//! counts it (`scaivault_audit_audit_reads_dropped_total{reason="queue_full"}`) instead of
//! blocking or failing the read. The task flushes the queue at graceful shutdown, before the
//! store stops.
//!
//! Requests that fail authentication are not recorded (there is no identity to record); any
//! answer to an authenticated caller is, with `success = false` unless it is 2xx. The cursor is
//! never recorded, and the values of query parameters the endpoint does not know are replaced
//! by [`REDACTED`] (a client that misplaces a token in the query string does not have it kept).
//!
//! Wiring one more read route is one line:
//!
//! * a plain `GET` query route built with [`super::query_route`] passes its label:
//!   `query_route(path, "GET /v1/audit/integrity/checkpoints", state, handler)`;
//! * any other route calls [`audited`] where it called [`super::rate_limited`], with the same
//!   arguments plus the [`AuditedRead`]: `audited(&state, &headers, scope, category,
//!   AuditedRead::query("GET /v1/audit/…", &raw), run)` (path parameters: `.with(name, value)`).
//!
//! Unauthenticated routes (health, metrics, the OpenAPI document, the public keys) and ingest
//! are not wired.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, StatusCode, header};
use warp::reply::Response;

use super::rate_limit::Category;
use super::{client, request_id, tenant_header};
use crate::auth::{Principal, Scope, TenantAccess};
use crate::config::AuditOfAuditSettings;
use crate::event::{Action, AuditEvent, IdentityType, MAX_EXTRA_DATA_BYTES};
use crate::query::LOG_PARAM_NAMES;
use crate::state::AppState;
use crate::store::{PreparedEvent, Store, WriteError};
use crate::timestamp;

/// Events waiting for the writer; beyond this, new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Most events the writer stores in one batch.
const MAX_BATCH: usize = 512;
/// Most recorded filters (names) per event.
const MAX_FILTERS: usize = 32;
const MAX_FILTER_NAME_CHARS: usize = 64;
const MAX_FILTER_VALUE_CHARS: usize = 512;
/// Budget of the recorded filters as JSON: far below [`MAX_EXTRA_DATA_BYTES`], so the event
/// always passes the normal event validation whatever the query string holds.
const MAX_FILTERS_BYTES: usize = 8 * 1024;
const MAX_IDENTITY_ID_CHARS: usize = 256;
const MAX_USER_AGENT_CHARS: usize = 1024;
/// At most one warning about dropped events per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// How long the writer waits for the store's WAL replay before giving a batch up.
const READY_WAIT: Duration = Duration::from_secs(120);
/// The value recorded for a query parameter the endpoint does not know.
pub const REDACTED: &str = "[redacted: unknown parameter]";
/// Query parameters never recorded: the cursor (an opaque capability to continue a listing).
const NEVER_RECORDED: &[&str] = &["cursor"];
/// Query parameters of audited endpoints besides the log parameters ([`LOG_PARAM_NAMES`]: the
/// filters, `limit`, `order`), recorded with their values: the summary's `top`.
const OTHER_KNOWN_PARAMS: &[&str] = &["top"];

/// Why an audit-of-audit event was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum DropReason {
    /// The queue to the writer was full.
    QueueFull,
    /// The store refused the batch (or is shut down).
    WriteFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
}

/// Counters of the audit of the audit.
#[derive(Debug, Clone, Default)]
pub struct AuditTrailMetrics {
    /// Events stored durably.
    pub recorded: Counter,
    /// Events lost, by reason.
    pub dropped: Family<DropLabels, Counter>,
}

impl AuditTrailMetrics {
    /// Creates the counters and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = AuditTrailMetrics::default();
        // Every series exists from the start (scraped at zero).
        for reason in [DropReason::QueueFull, DropReason::WriteFailed] {
            let _ = metrics.dropped.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "audit_reads_recorded",
            "Reads of audit data recorded as audit events (the audit of the audit)",
            metrics.recorded.clone(),
        );
        registry.register(
            "audit_reads_dropped",
            "Audit-of-audit events lost: the queue was full or the store refused them",
            metrics.dropped.clone(),
        );
        metrics
    }

    fn drop_count(&self, reason: DropReason, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(count);
    }
}

/// Where handlers hand their audit-of-audit events: a bounded queue to the writer task, or
/// nothing when the feature is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct AuditRecorder {
    inner: Option<Arc<RecorderInner>>,
}

struct RecorderInner {
    sender: mpsc::Sender<AuditEvent>,
    metrics: AuditTrailMetrics,
    warnings: WarnLimiter,
}

impl AuditRecorder {
    /// A recorder that records nothing (`[audit_of_audit] enabled = false`).
    pub fn disabled() -> Self {
        AuditRecorder { inner: None }
    }

    /// Whether reads are recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for the writer without waiting; a full queue drops it (counted, and
    /// warned about at most once a minute).
    pub fn record(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else {
            return;
        };
        match inner.sender.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                inner.metrics.drop_count(DropReason::QueueFull, 1);
                if let Some(suppressed) = inner.warnings.allow() {
                    tracing::warn!(
                        capacity = QUEUE_CAPACITY,
                        suppressed,
                        "the audit-of-audit queue is full: a read of audit data was not recorded"
                    );
                }
            }
            // Only after the writer's final flush (shutdown): nothing can store it any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                inner.metrics.drop_count(DropReason::WriteFailed, 1);
                tracing::debug!("a read of audit data after the final flush was not recorded");
            }
        }
    }
}

/// The writer task; [`AuditTrailWriter::shutdown`] flushes what is queued and stops it.
pub struct AuditTrailWriter {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AuditTrailWriter {
    /// Stores everything queued so far, then stops. Call after the HTTP server has drained
    /// and before the store shuts down.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(task) = self.task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the audit-of-audit writer failed");
        }
    }
}

/// Starts the writer task over `store` when the feature is enabled; returns the recorder the
/// handlers use and the writer to flush at shutdown.
pub fn start(
    store: Store,
    settings: AuditOfAuditSettings,
    metrics: AuditTrailMetrics,
) -> (AuditRecorder, AuditTrailWriter) {
    let stop = CancellationToken::new();
    if !settings.enabled {
        let writer = AuditTrailWriter { stop, task: None };
        return (AuditRecorder::disabled(), writer);
    }
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let inner = RecorderInner {
        sender,
        metrics: metrics.clone(),
        warnings: WarnLimiter::default(),
    };
    let writer = Writer {
        store,
        metrics,
        warnings: WarnLimiter::default(),
    };
    let task = tokio::spawn(writer.run(receiver, stop.clone()));
    let recorder = AuditRecorder {
        inner: Some(Arc::new(inner)),
    };
    (
        recorder,
        AuditTrailWriter {
            stop,
            task: Some(task),
        },
    )
}

/// The background writer: batches the queue into durable store writes.
struct Writer {
    store: Store,
    metrics: AuditTrailMetrics,
    warnings: WarnLimiter,
}

impl Writer {
    async fn run(self, mut receiver: mpsc::Receiver<AuditEvent>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                received = receiver.recv() => received,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            self.write(batch).await;
        }
        // Shutdown: refuse new events, store what is queued.
        receiver.close();
        let mut batch = Vec::new();
        while let Some(event) = receiver.recv().await {
            batch.push(event);
            if batch.len() == MAX_BATCH {
                self.write(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.write(batch).await;
        }
    }

    /// Stores one batch (service-assigned ids, no deduplication); while the store replays its
    /// WAL the batch waits for it.
    async fn write(&self, batch: Vec<AuditEvent>) {
        let count = batch.len();
        let prepared: Vec<PreparedEvent> = batch
            .into_iter()
            .map(|event| PreparedEvent::new(event, false))
            .collect();
        let mut result = self.store.ingest(prepared.clone()).await;
        if matches!(result, Err(WriteError::NotReady))
            && self.store.wait_ready(READY_WAIT).await.is_ok()
        {
            result = self.store.ingest(prepared).await;
        }
        match result {
            Ok(_) => {
                self.metrics
                    .recorded
                    .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
            }
            Err(error) => {
                self.metrics.drop_count(DropReason::WriteFailed, count);
                if let Some(suppressed) = self.warnings.allow() {
                    tracing::warn!(%error, count, suppressed, "failed to store audit-of-audit events");
                }
            }
        }
    }
}

/// Lets one warning through per [`WARN_INTERVAL`]; counts the ones held back.
#[derive(Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    /// `Some(number held back since the last one)` when a warning may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock();
        if last.is_some_and(|at| at.elapsed() < WARN_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------------
// What a request records
// ---------------------------------------------------------------------------------------------

/// The filters of one read, bounded in count and size (they come from the query string).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    map: Map<String, Value>,
    bytes: usize,
    truncated: bool,
}

impl Filters {
    /// The recordable query parameters of `raw_query`: the cursor left out, the values of
    /// parameters no audited endpoint knows replaced by [`REDACTED`].
    pub fn from_query(raw_query: &str) -> Self {
        let mut filters = Filters::default();
        filters.add_query(raw_query);
        filters
    }

    /// Adds the recordable parameters of `raw_query` (see [`Filters::from_query`]).
    pub fn add_query(&mut self, raw_query: &str) {
        for (name, value) in crate::query::query_pairs(raw_query) {
            if NEVER_RECORDED.contains(&name.as_str()) {
                continue;
            }
            let known = LOG_PARAM_NAMES.contains(&name.as_str())
                || OTHER_KNOWN_PARAMS.contains(&name.as_str());
            self.add(&name, if known { &value } else { REDACTED });
        }
    }

    /// Adds `name = value` (a repeated name collects its values in an array). Past the count
    /// or size budget, or when `value` is cut short, the filters are marked truncated.
    pub fn add(&mut self, name: &str, value: &str) {
        let (name, name_cut) = cut(name, MAX_FILTER_NAME_CHARS);
        let (value, value_cut) = cut(value, MAX_FILTER_VALUE_CHARS);
        self.truncated |= name_cut || value_cut;
        let cost = json_len(&name) + json_len(&value) + 2;
        let repeated = self.map.contains_key(&name);
        if (!repeated && self.map.len() >= MAX_FILTERS) || self.bytes + cost > MAX_FILTERS_BYTES {
            self.truncated = true;
            return;
        }
        self.bytes += cost;
        match self.map.get_mut(&name) {
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => {
                let first = first.take();
                self.map
                    .insert(name, Value::Array(vec![first, Value::String(value)]));
            }
            None => {
                self.map.insert(name, Value::String(value));
            }
        }
    }

    /// `self` with `name = value` added (a path parameter, an export id).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.add(name, value);
        self
    }

    /// Whether something was left out or cut short.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The `extra_data` of an audited request: `{"endpoint", "filters", "status"}` and
    /// `"filters_truncated": true` when the filters were bounded. Always within
    /// [`MAX_EXTRA_DATA_BYTES`].
    pub fn extra_data(&self, endpoint: &str, status: StatusCode) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert("endpoint".into(), Value::from(endpoint));
        extra.insert("filters".into(), Value::Object(self.map.clone()));
        extra.insert("status".into(), Value::from(status.as_u16()));
        if self.truncated {
            extra.insert("filters_truncated".into(), Value::Bool(true));
        }
        let size = serde_json::to_vec(&extra).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_EXTRA_DATA_BYTES {
            extra.insert("filters".into(), Value::Object(Map::new()));
            extra.insert("filters_truncated".into(), Value::Bool(true));
        }
        extra
    }
}

/// One audited endpoint's request: its label (`GET /v1/audit/logs`), the action recorded and
/// the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedRead {
    endpoint: &'static str,
    action: Action,
    filters: Filters,
}

impl AuditedRead {
    /// An `audit_read` of `endpoint` with no filters yet.
    pub fn new(endpoint: &'static str) -> Self {
        AuditedRead {
            endpoint,
            action: Action::AuditRead,
            filters: Filters::default(),
        }
    }

    /// An `audit_read` of `endpoint` whose filters are the query string's parameters.
    pub fn query(endpoint: &'static str, raw_query: &str) -> Self {
        AuditedRead::new(endpoint).with_query(raw_query)
    }

    /// Adds the query string's recordable parameters to the filters.
    pub fn with_query(mut self, raw_query: &str) -> Self {
        self.filters.add_query(raw_query);
        self
    }

    /// Adds a filter (a path parameter such as the secret path or the export id).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.filters.add(name, value);
        self
    }

    /// Records `action` instead of `audit_read`.
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// The endpoint label.
    pub fn endpoint(&self) -> &'static str {
        self.endpoint
    }
}

/// What a handler adds while it runs (see [`note_filters`], [`mark_recorded`]).
#[derive(Debug, Default)]
struct Notes {
    /// Filters known only inside the handler (an export body's), replacing the route's.
    filters: Option<Filters>,
    /// The handler recorded the request itself (durably): nothing more to record.
    recorded: bool,
}

tokio::task_local! {
    static NOTES: Arc<Mutex<Notes>>;
}

/// From inside an [`audited`] handler: the request's filters are `filters` (known only after
/// reading the body). Outside an audited request it does nothing.
pub fn note_filters(filters: Filters) {
    let _ = NOTES.try_with(|notes| notes.lock().filters = Some(filters));
}

/// From inside an [`audited`] handler: the handler has recorded this request itself (export
/// creation's durable `export_created`), so [`audited`] records nothing more.
pub fn mark_recorded() {
    let _ = NOTES.try_with(|notes| notes.lock().recorded = true);
}

/// [`super::rate_limited`] plus the audit of the audit: authenticate (a failure is answered
/// and not recorded), then scope, rate limit and `handler`; the answer, whatever it is, is
/// recorded as `read` by the caller in the tenant the read acted on.
pub async fn audited<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    category: Category,
    read: AuditedRead,
    handler: F,
) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: Future<Output = Result<Response, super::ApiError>>,
{
    let started = Instant::now();
    let at_us = timestamp::now_micros();
    let principal = match super::authenticate(state, headers).await {
        Ok(principal) => principal,
        Err(error) => return super::unauthenticated(state, error),
    };
    if !state.audit_trail.is_enabled() {
        return super::authorized(state, principal, scope, category, handler).await;
    }
    let notes = Arc::new(Mutex::new(Notes::default()));
    let caller = principal.clone();
    let answer = super::authorized(state, principal, scope, category, handler);
    let response = NOTES.scope(notes.clone(), answer).await;
    let notes = std::mem::take(&mut *notes.lock());
    if notes.recorded {
        return response;
    }
    let read = AuditedRead {
        filters: notes.filters.unwrap_or(read.filters),
        ..read
    };
    let context = RequestContext {
        id: state.new_event_id(),
        at_us,
        duration: started.elapsed(),
        headers,
    };
    if let Some(event) = read_event(&caller, &read, response.status(), &context) {
        state.audit_trail.record(event);
    }
    response
}

/// The request facts an audit-of-audit event takes besides the principal and the read.
struct RequestContext<'a> {
    id: String,
    at_us: i64,
    duration: Duration,
    headers: &'a HeaderMap,
}

/// The event recording `read` answered with `status`; `None` when the read acted on no
/// tenant (an all-tenant token without a usable `X-Tenant-ID`).
fn read_event(
    principal: &Principal,
    read: &AuditedRead,
    status: StatusCode,
    context: &RequestContext<'_>,
) -> Option<AuditEvent> {
    let tenant_id = event_tenant(principal, tenant_header(context.headers))?;
    let request_id = request_id::current();
    Some(AuditEvent {
        id: context.id.clone(),
        tenant_id,
        timestamp_us: context.at_us,
        action: read.action,
        secret_path: None,
        identity_type: identity_type_of(&principal.identity_id),
        identity_id: identity_id(principal),
        source_ip: client::current(),
        user_agent: user_agent(context.headers),
        success: status.is_success(),
        duration_ms: Some(u64::try_from(context.duration.as_millis()).unwrap_or(u64::MAX)),
        request_id: (!request_id.is_empty()).then_some(request_id),
        extra_data: read.filters.extra_data(read.endpoint, status),
    })
}

/// The tenant a read is recorded in: the one it acted on, or for a tenant-bound token that
/// asked for another tenant (403), its own.
fn event_tenant(principal: &Principal, tenant_header: Option<&str>) -> Option<String> {
    match principal.read_tenant(tenant_header) {
        Ok(tenant) => Some(tenant),
        Err(_) => match &principal.tenants {
            TenantAccess::One(own) => Some(own.clone()),
            TenantAccess::All => None,
        },
    }
}

/// The identity type implied by an identity id's scheme (`user:`, `group:`, `system:`; any
/// other, `sa:` included, is a service account).
pub fn identity_type_of(identity_id: &str) -> IdentityType {
    match identity_id.split_once(':').map(|(scheme, _)| scheme) {
        Some("user") => IdentityType::User,
        Some("group") => IdentityType::Group,
        Some("system") => IdentityType::System,
        _ => IdentityType::ServiceAccount,
    }
}

/// The principal's identity as a valid event field (printable, at most 256 characters).
fn identity_id(principal: &Principal) -> String {
    let id = printable(&principal.identity_id, MAX_IDENTITY_ID_CHARS);
    if id.is_empty() {
        "unknown".to_string()
    } else {
        id
    }
}

/// The request's `User-Agent` as a valid event field, if any.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let agent = printable(agent, MAX_USER_AGENT_CHARS);
    (!agent.is_empty()).then_some(agent)
}

/// `text` without control characters, at most `max_chars` characters.
fn printable(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

/// `text` cut to `max_chars` characters, and whether anything was cut.
fn cut(text: &str, max_chars: usize) -> (String, bool) {
    let kept: String = text.chars().take(max_chars).collect();
    let was_cut = kept.len() < text.len();
    (kept, was_cut)
}

/// Bytes of `text` as a JSON string.
fn json_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len() * 6 + 2, |json| json.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use crate::config::StoreConfig;
    use crate::event::{TenantRule, validate};
    use crate::store::metrics::StoreMetrics;
    use warp::http::HeaderValue;

    fn principal(identity: &str, tenants: TenantAccess) -> Principal {
        Principal {
            identity_id: identity.into(),
            scopes: [Scope::Read].into_iter().collect(),
            tenants,
        }
    }

    fn context(headers: &HeaderMap) -> RequestContext<'_> {
        RequestContext {
            id: "log_01".into(),
            at_us: 1_700_000_000_000_000,
            duration: Duration::from_millis(7),
            headers,
        }
    }

    /// The event passes the normal ingest validation (as a producer would send it).
    fn assert_valid(event: &AuditEvent) {
        let mut json = serde_json::to_value(event.api()).unwrap();
        json["tenant_id"] = Value::from(event.tenant_id.as_str());
        validate(json, TenantRule::Required).unwrap();
    }

    #[test]
    fn query_filters_leave_out_the_cursor_and_redact_unknown_parameters() {
        let filters =
            Filters::from_query("action=read,write&cursor=c1&limit=5&access_token=s3cret&q=a%20b");
        let extra = filters.extra_data("GET /v1/audit/logs", StatusCode::OK);
        assert_eq!(
            Value::Object(extra),
            serde_json::json!({
                "endpoint": "GET /v1/audit/logs",
                "filters": {"action": "read,write", "limit": "5", "access_token": REDACTED, "q": "a b"},
                "status": 200,
            })
        );
        let repeated = Filters::from_query("action=read&action=write&top=3");
        let extra = repeated.extra_data("GET /v1/audit/summary", StatusCode::BAD_REQUEST);
        assert_eq!(
            extra["filters"]["action"],
            serde_json::json!(["read", "write"])
        );
        assert_eq!(extra["filters"]["top"], "3");
        assert_eq!(extra["status"], 400);
        assert!(!extra.contains_key("filters_truncated"));
    }

    #[test]
    fn hostile_query_strings_are_bounded_and_the_event_stays_valid() {
        let long = "\u{1F510}".repeat(5000);
        let many: Vec<String> = (0..200).map(|i| format!("p{i}={long}")).collect();
        let repeated: Vec<String> = (0..200).map(|_| format!("q={long}")).collect();
        let control = format!("q={}", "%00%1F".repeat(3000));
        for raw in [many.join("&"), repeated.join("&"), control] {
            let read =
                AuditedRead::query("GET /v1/audit/logs", &raw).with("path", &"a".repeat(10_000));
            assert!(read.filters.is_truncated());
            let headers = HeaderMap::new();
            let caller = principal("user:alice", TenantAccess::One("tnt_a".into()));
            let event = read_event(&caller, &read, StatusCode::OK, &context(&headers)).unwrap();
            let size = serde_json::to_vec(&event.extra_data).unwrap().len();
            assert!(size <= MAX_EXTRA_DATA_BYTES, "{size}");
            assert_eq!(event.extra_data["filters_truncated"], true);
            assert_valid(&event);
        }
    }

    #[test]
    fn the_event_names_the_caller_the_tenant_read_and_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, HeaderValue::from_static("curl/8.5\tx"));
        headers.insert("x-tenant-id", HeaderValue::from_static("tnt_b"));
        let read = AuditedRead::new("GET /v1/audit/exports/{export_id}").with("export_id", "exp_1");
        let admin = principal("system:bootstrap", TenantAccess::All);
        let event = read_event(&admin, &read, StatusCode::NOT_FOUND, &context(&headers)).unwrap();
        assert_eq!(event.tenant_id, "tnt_b");
        assert_eq!(event.action, Action::AuditRead);
        assert_eq!(event.identity_type, IdentityType::System);
        assert_eq!(event.identity_id, "system:bootstrap");
        assert_eq!(event.user_agent.as_deref(), Some("curl/8.5x"));
        assert_eq!(event.duration_ms, Some(7));
        assert!(!event.success);
        assert_eq!(event.secret_path, None);
        assert_eq!(event.extra_data["filters"]["export_id"], "exp_1");
        assert_eq!(event.extra_data["status"], 404);
        assert_valid(&event);
        // A tenant-bound token asking for another tenant is recorded in its own.
        let bound = principal("sa:reporting", TenantAccess::One("tnt_a".into()));
        let event = read_event(&bound, &read, StatusCode::FORBIDDEN, &context(&headers)).unwrap();
        assert_eq!(event.tenant_id, "tnt_a");
        assert_eq!(event.identity_type, IdentityType::ServiceAccount);
        // An all-tenant token without a usable tenant read no tenant: nothing to record.
        headers.remove("x-tenant-id");
        assert!(read_event(&admin, &read, StatusCode::BAD_REQUEST, &context(&headers)).is_none());
        headers.insert("x-tenant-id", HeaderValue::from_static("bad tenant"));
        assert!(read_event(&admin, &read, StatusCode::FORBIDDEN, &context(&headers)).is_none());
    }

    #[test]
    fn identity_types_follow_the_id_scheme() {
        assert_eq!(
            identity_type_of("user:alice@acme.example"),
            IdentityType::User
        );
        assert_eq!(
            identity_type_of("sa:reporting"),
            IdentityType::ServiceAccount
        );
        assert_eq!(identity_type_of("group:admins"), IdentityType::Group);
        assert_eq!(identity_type_of("system:rotation"), IdentityType::System);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let limiter = WarnLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        *limiter.last.lock() = Instant::now().checked_sub(WARN_INTERVAL);
        assert_eq!(limiter.allow(), Some(2));
    }

    fn read_event_of(i: usize) -> AuditEvent {
        let headers = HeaderMap::new();
        let caller = principal("user:alice", TenantAccess::One("tnt_a".into()));
        let read = AuditedRead::query("GET /v1/audit/logs", "limit=1");
        let mut event = read_event(&caller, &read, StatusCode::OK, &context(&headers)).unwrap();
        event.id = format!("log_{i:04}");
        event
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_writer_stores_what_is_queued_and_flushes_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &StoreConfig::with_data_dir(dir.path()),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        let metrics = AuditTrailMetrics::default();
        let settings = AuditOfAuditSettings { enabled: true };
        let (recorder, writer) = start(store.clone(), settings, metrics.clone());
        assert!(recorder.is_enabled());
        for i in 0..1000 {
            recorder.record(read_event_of(i));
        }
        writer.shutdown().await;
        // After the final flush nothing more is accepted (counted as lost).
        recorder.record(read_event_of(1000));
        let write_failed = DropLabels {
            reason: DropReason::WriteFailed,
        };
        assert_eq!(metrics.dropped.get_or_create(&write_failed).get(), 1);
        let queue_full = DropLabels {
            reason: DropReason::QueueFull,
        };
        let lost = metrics.dropped.get_or_create(&queue_full).get();
        assert_eq!(metrics.recorded.get() + lost, 1000);
        store.flush().await.unwrap();
        assert_eq!(store.searcher().num_docs(), metrics.recorded.get());
        store.shutdown().await;
        drop(store);
        // Stored like any other event: chained, and the chain verifies.
        let keys = crate::integrity::keys::PublicKeys::default();
        let report = crate::store::verify::verify_data_dir(dir.path(), &keys).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.events, metrics.recorded.get());
        assert_eq!(report.tenants, 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (sender, _receiver) = mpsc::channel(2);
        let metrics = AuditTrailMetrics::default();
        let recorder = AuditRecorder {
            inner: Some(Arc::new(RecorderInner {
                sender,
                metrics: metrics.clone(),
                warnings: WarnLimiter::default(),
            })),
        };
        for i in 0..5 {
            recorder.record(read_event_of(i));
        }
        let queue_full = DropLabels {
            reason: DropReason::QueueFull,
        };
        assert_eq!(metrics.dropped.get_or_create(&queue_full).get(), 3);
        assert!(!AuditRecorder::disabled().is_enabled());
    }
}
