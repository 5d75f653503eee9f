//! Random log queries, summaries and trails per tenant, full cursor walks, and cursor walks
//! while new events arrive: each answer is checked against the model.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{ACTIONS, percent_encode};
use fastrand::Rng;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::*;

// ---------------------------------------------------------------------------------------------
// Filters and queries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(super) struct TimeBound {
    pub(super) text: String,
    pub(super) micros: i64,
}

impl TimeBound {
    pub(super) fn random_spelling(rng: &mut Rng, micros: i64) -> TimeBound {
        TimeBound {
            text: render_time(rng, micros),
            micros,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct SourceIpFilter {
    pub(super) text: String,
    pub(super) network: IpNet,
}

/// The SPEC §3.1 filters (all but `q`), with the text each is sent as.
#[derive(Debug, Clone, Default)]
pub(super) struct Filters {
    pub(super) from: Option<TimeBound>,
    pub(super) to: Option<TimeBound>,
    pub(super) actions: Vec<String>,
    pub(super) identity_id: Option<String>,
    pub(super) identity_type: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) success: Option<bool>,
    pub(super) source_ip: Option<SourceIpFilter>,
    pub(super) request_id: Option<String>,
}

impl Filters {
    pub(super) fn matches(&self, event: &ModelEvent) -> bool {
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

    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
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
pub(super) enum Order {
    Asc,
    Desc,
}

/// A listing request: filters plus paging parameters (`None` = parameter left out).
#[derive(Debug, Clone, Default)]
pub(super) struct LogQuery {
    pub(super) filters: Filters,
    pub(super) limit: Option<usize>,
    pub(super) order: Option<Order>,
}

impl LogQuery {
    pub(super) fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    pub(super) fn ascending(&self) -> bool {
        self.order == Some(Order::Asc)
    }

    /// The query string, with the limit replaced by `limit` when given.
    pub(super) fn query_string(&self, limit: Option<usize>, cursor: Option<&str>) -> String {
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

pub(super) fn with_query(endpoint: &str, query: &str) -> String {
    if query.is_empty() {
        endpoint.to_owned()
    } else {
        format!("{endpoint}?{query}")
    }
}

pub(super) fn random_limit(rng: &mut Rng) -> Option<usize> {
    match rng.u8(0..10) {
        0 => None,
        1 | 2 => Some(rng.usize(1..=10)),
        3..=6 => Some(rng.usize(11..=200)),
        _ => Some(rng.usize(201..=1000)),
    }
}

pub(super) fn random_order(rng: &mut Rng) -> Option<Order> {
    match rng.u8(0..3) {
        0 => None,
        1 => Some(Order::Asc),
        _ => Some(Order::Desc),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FilterKind {
    Time,
    Actions,
    IdentityId,
    IdentityType,
    PathPrefix,
    Success,
    SourceIp,
    RequestId,
}

pub(super) const FILTER_KINDS: [FilterKind; 8] = [
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
pub(super) fn random_path_prefix(rng: &mut Rng, path: &str) -> String {
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
pub(super) fn random_ip_filter(rng: &mut Rng, ip: IpAddr) -> SourceIpFilter {
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
// Random log queries
// ---------------------------------------------------------------------------------------------

pub(super) struct Ctx<'a> {
    pub(super) api: &'a Api,
    pub(super) model: &'a Model,
    pub(super) catalogs: &'a [TenantCatalog],
}

impl Ctx<'_> {
    pub(super) fn tenant_id(&self, tenant: usize) -> &str {
        &self.model.tenant_ids[tenant]
    }

    pub(super) fn random_event(&self, rng: &mut Rng, tenant: usize) -> &ModelEvent {
        let events = &self.model.events[tenant];
        &events[rng.usize(..events.len())]
    }

    pub(super) fn random_event_with_path(&self, rng: &mut Rng, tenant: usize) -> &ModelEvent {
        (0..1_000)
            .map(|_| self.random_event(rng, tenant))
            .find(|event| event.secret_path.is_some())
            .expect("tenant has events with paths")
    }

    /// `count` different random filters, with values taken mostly from `anchor`.
    pub(super) fn random_filters(
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

    pub(super) fn add_filter(
        &self,
        rng: &mut Rng,
        anchor: &ModelEvent,
        kind: FilterKind,
        f: &mut Filters,
    ) {
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
    pub(super) fn random_window(
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

    pub(super) fn random_log_query(&self, rng: &mut Rng, tenant: usize) -> LogQuery {
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
pub(super) fn random_actions(rng: &mut Rng, anchor_action: &str) -> Vec<String> {
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
pub(super) struct Listing<'a> {
    pub(super) tenant: usize,
    pub(super) endpoint: String,
    pub(super) query: LogQuery,
    pub(super) expected: Vec<&'a ModelEvent>,
}

impl Listing<'_> {
    pub(super) fn request(&self, tenant_id: &str) -> String {
        format!(
            "[{tenant_id}] GET {} ({} matches)",
            with_query(&self.endpoint, &self.query.query_string(None, None)),
            self.expected.len()
        )
    }

    /// Multi-page and small enough to walk completely.
    pub(super) fn walkable(&self) -> bool {
        self.expected.len() > self.query.effective_limit()
            && self.expected.len() <= MAX_WALK_MATCHES
    }
}

/// Fetches the first page, compares it; returns the response body for further checks.
pub(super) async fn check_first_page(
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
pub(super) async fn check_full_walk(ctx: &Ctx<'_>, listing: &Listing<'_>, report: &mut Report) {
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

pub(super) async fn check_random_queries(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
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

pub(super) async fn check_summaries(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
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

pub(super) async fn check_summary(
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

pub(super) enum Trail {
    Secret(String),
    Identity { id: String, percent_encoded: bool },
}

impl Trail {
    pub(super) fn endpoint(&self) -> String {
        match self {
            Trail::Secret(path) => format!("/v1/audit/secrets/{path}"),
            Trail::Identity {
                id,
                percent_encoded: true,
            } => format!("/v1/audit/identities/{}", percent_encode(id)),
            Trail::Identity { id, .. } => format!("/v1/audit/identities/{id}"),
        }
    }

    pub(super) fn contains(&self, event: &ModelEvent) -> bool {
        match self {
            Trail::Secret(path) => event.secret_path.as_ref() == Some(path),
            Trail::Identity { id, .. } => event.identity_id == *id,
        }
    }

    /// The filter the trail replaces (not accepted as a parameter).
    pub(super) fn pinned_filter(&self) -> FilterKind {
        match self {
            Trail::Secret(_) => FilterKind::PathPrefix,
            Trail::Identity { .. } => FilterKind::IdentityId,
        }
    }

    /// The trail's key as echoed in the response.
    pub(super) fn echo(&self) -> (&'static str, &str) {
        match self {
            Trail::Secret(path) => ("path", path),
            Trail::Identity { id, .. } => ("identity_id", id),
        }
    }

    pub(super) fn summary_json(&self, aggregate: &Aggregate) -> Value {
        match self {
            Trail::Secret(_) => aggregate.secret_trail_json(),
            Trail::Identity { .. } => aggregate.identity_trail_json(),
        }
    }
}

pub(super) async fn check_trails(ctx: &Ctx<'_>, rng: &mut Rng, report: &mut Report) {
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
pub(super) fn secret_trails(ctx: &Ctx<'_>, rng: &mut Rng, tenant: usize) -> Vec<Trail> {
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
pub(super) fn identity_trails(ctx: &Ctx<'_>, rng: &mut Rng, tenant: usize) -> Vec<Trail> {
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
pub(super) async fn check_trail(
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
pub(super) struct WalkSignals {
    /// The ingest starts once the walkers fetched this many pages together.
    pub(super) ingest_after_pages: usize,
    pub(super) pages: AtomicUsize,
    pub(super) walks_finished: AtomicUsize,
    pub(super) ingest_done: AtomicBool,
}

impl WalkSignals {
    pub(super) fn new(ingest_after_pages: usize) -> WalkSignals {
        WalkSignals {
            ingest_after_pages,
            pages: AtomicUsize::new(0),
            walks_finished: AtomicUsize::new(0),
            ingest_done: AtomicBool::new(false),
        }
    }
}

/// Polls until `condition` holds (bounded).
pub(super) async fn wait_for(what: &str, condition: impl Fn() -> bool) -> Result<(), String> {
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
pub(super) async fn walk_while_ingesting(
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

pub(super) async fn walk_pages_while_ingesting(
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
pub(super) async fn ingest_during_walks(
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
pub(super) fn concurrent_batches(
    rng: &mut Rng,
    model: &Model,
    walked_tenant: usize,
) -> Vec<Vec<WireEvent>> {
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
pub(super) fn check_walk_during_ingest(
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
pub(super) async fn check_walks_during_ingest(
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

pub(super) fn walk_during_ingest_queries() -> [LogQuery; 2] {
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
pub(super) async fn check_walks_after_ingest(
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
