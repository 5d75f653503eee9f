//! The brute-force model: every stored event with its send index, per-tenant catalogues,
//! and the aggregates (summaries, trail summaries) the server must answer.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::*;

// ---------------------------------------------------------------------------------------------
// Events: as sent, and as the model keeps them
// ---------------------------------------------------------------------------------------------

/// An event as sent to the ingest endpoint (the workload's NDJSON line shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    pub(super) tenant_id: String,
    pub(super) timestamp: String,
    pub(super) action: String,
    pub(super) secret_path: Option<String>,
    pub(super) identity_type: String,
    pub(super) identity_id: String,
    pub(super) source_ip: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) success: bool,
    pub(super) duration_ms: Option<u64>,
    pub(super) request_id: Option<String>,
    #[serde(default)]
    pub(super) extra_data: Map<String, Value>,
}

/// A stored event: what was sent, the id the server acknowledged and the send order.
#[derive(Debug, Clone)]
pub(super) struct ModelEvent {
    pub(super) id: String,
    pub(super) tenant: usize,
    pub(super) timestamp_us: i64,
    pub(super) send_index: u64,
    pub(super) action: String,
    pub(super) secret_path: Option<String>,
    pub(super) identity_type: String,
    pub(super) identity_id: String,
    pub(super) source_ip: Option<IpAddr>,
    pub(super) user_agent: Option<String>,
    pub(super) success: bool,
    pub(super) duration_ms: Option<u64>,
    pub(super) request_id: Option<String>,
    pub(super) extra_data: Map<String, Value>,
}

impl ModelEvent {
    pub(super) fn new(wire: WireEvent, id: String, tenant: usize, send_index: u64) -> ModelEvent {
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
    pub(super) fn order_key(&self) -> (i64, u64) {
        (self.timestamp_us, self.send_index)
    }

    /// The SPEC §2 API shape the server must return for this event.
    pub(super) fn api_json(&self) -> Value {
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
    pub(super) fn to_wire(&self, tenant_id: &str, timestamp: String) -> WireEvent {
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

    pub(super) fn describe(&self) -> String {
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
pub(super) struct Model {
    pub(super) tenant_ids: Vec<String>,
    pub(super) events: Vec<Vec<ModelEvent>>,
    pub(super) tenant_of_id: HashMap<String, usize>,
    pub(super) next_send_index: u64,
}

impl Model {
    pub(super) fn new(tenant_ids: Vec<String>) -> Model {
        Model {
            events: vec![Vec::new(); tenant_ids.len()],
            tenant_ids,
            tenant_of_id: HashMap::new(),
            next_send_index: 0,
        }
    }

    /// Adds events sent with consecutive send indices from `next_send_index` on.
    pub(super) fn add_all(&mut self, events: Vec<ModelEvent>) {
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

    pub(super) fn total(&self) -> usize {
        self.tenant_of_id.len()
    }

    /// The events of `tenant` that satisfy `pinned` and `filters`, in page order.
    pub(super) fn select(
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

    pub(super) fn time_bounds(&self) -> (i64, i64) {
        let all = self.events.iter().flatten().map(|event| event.timestamp_us);
        let oldest = all.clone().min().expect("model has events");
        (oldest, all.max().expect("model has events"))
    }
}

/// Facts about one tenant's events that random queries draw from.
pub(super) struct TenantCatalog {
    /// Request ids carried by more than one event of the tenant.
    pub(super) shared_request_ids: Vec<String>,
    pub(super) most_read_path: String,
    pub(super) single_event_paths: Vec<String>,
    pub(super) busiest_identity: String,
    pub(super) identities_by_type: BTreeMap<String, Vec<String>>,
}

pub(super) fn build_catalog(events: &[ModelEvent]) -> TenantCatalog {
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
pub(super) fn most_frequent<'a>(
    counts: impl IntoIterator<Item = (&'a str, usize)>,
) -> Option<String> {
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(key, _)| key.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Aggregates (summaries and trail summaries)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub(super) struct Aggregate {
    pub(super) total: u64,
    pub(super) successful: u64,
    pub(super) by_action: HashMap<String, u64>,
    pub(super) by_identity: HashMap<String, u64>,
    pub(super) by_path: HashMap<String, u64>,
    pub(super) first_us: Option<i64>,
    pub(super) last_us: Option<i64>,
    pub(super) last_read_us: Option<i64>,
}

impl Aggregate {
    pub(super) fn of<'a>(events: impl IntoIterator<Item = &'a ModelEvent>) -> Aggregate {
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

    pub(super) fn actions_breakdown(&self) -> Value {
        let breakdown: Map<String, Value> = self
            .by_action
            .iter()
            .map(|(action, count)| (action.clone(), json!(count)))
            .collect();
        Value::Object(breakdown)
    }

    /// `GET /v1/audit/summary` (SPEC §3.4).
    pub(super) fn summary_json(&self, top: usize) -> Value {
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
    pub(super) fn secret_trail_json(&self) -> Value {
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
    pub(super) fn identity_trail_json(&self) -> Value {
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
pub(super) fn ranking(counts: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut ranked: Vec<(&str, u64)> = counts.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
}

pub(super) fn top_json(counts: &HashMap<String, u64>, top: usize, key_name: &str) -> Value {
    let entries: Vec<Value> = ranking(counts)
        .into_iter()
        .take(top)
        .map(|(key, count)| json!({ key_name: key, "count": count }))
        .collect();
    Value::Array(entries)
}

/// Whether the `top`-th entry ties with the first one left out (the key order decides).
pub(super) fn tied_at_cut(counts: &HashMap<String, u64>, top: usize) -> bool {
    let ranked = ranking(counts);
    ranked.len() > top && ranked[top - 1].1 == ranked[top].1
}
