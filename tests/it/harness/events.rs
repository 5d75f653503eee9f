//! Events: valid events per tenant, producer ids, timestamps, the SPEC §2 fields and actions.

use serde_json::{Value, json};

/// Tenant used by the event builders.
pub const TENANT: &str = "tnt_acme";
pub const OTHER_TENANT: &str = "tnt_other";

/// The SPEC §2 fields in §2 order (the tests' own copy of the contract).
pub const API_FIELDS: [&str; 12] = [
    "id",
    "timestamp",
    "action",
    "secret_path",
    "identity_type",
    "identity_id",
    "source_ip",
    "user_agent",
    "success",
    "duration_ms",
    "request_id",
    "extra_data",
];

pub const ACTIONS: &[&str] = &[
    "read",
    "write",
    "delete",
    "list",
    "rotate",
    "policy_create",
    "policy_update",
    "policy_delete",
    "policy_bind",
    "policy_unbind",
    "pki_issue",
    "pki_sign",
    "pki_revoke",
    "pki_ca_create",
    "dynamic_generate",
    "dynamic_renew",
    "dynamic_revoke",
    "webhook_delivery",
    "subscription_event",
    "federation_sync",
    "identity_sync",
    "export_created",
    "audit_read",
];

/// A valid event of [`TENANT`], distinct per `i`.
pub fn event(i: u64) -> Value {
    event_for_tenant(i, Some(TENANT))
}

/// A valid event; `tenant: None` leaves `tenant_id` out (for tenant-bound tokens).
pub fn event_for_tenant(i: u64, tenant: Option<&str>) -> Value {
    let index = usize::try_from(i).expect("index fits usize");
    let mut event = json!({
        "timestamp": timestamp_for(i),
        "action": ACTIONS[index % ACTIONS.len()],
        "secret_path": format!("environments/production/app-{}/db-credentials", i % 7),
        "identity_type": "service_account",
        "identity_id": format!("sa:service-{}", i % 5),
        "source_ip": format!("10.0.{}.{}", (i / 250) % 250, i % 250 + 1),
        "user_agent": "scaivault-it/1.0",
        "success": !i.is_multiple_of(3),
        "duration_ms": i % 100,
        "request_id": format!("req_{i}"),
        "extra_data": { "sequence": i },
    });
    if let Some(tenant) = tenant {
        event["tenant_id"] = json!(tenant);
    }
    event
}

/// `event` carrying the producer id `id`.
pub fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

/// A fresh producer id shaped like the service's own: `log_` + a 26-character ULID.
pub fn producer_id() -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut id = String::from("log_0");
    for _ in 0..25 {
        id.push(char::from(CROCKFORD[fastrand::usize(..CROCKFORD.len())]));
    }
    id
}

/// `count` valid events of [`TENANT`] with fresh producer ids, numbered from `first`.
pub fn events_with_producer_ids(first: u64, count: u64) -> Vec<Value> {
    (first..first + count)
        .map(|i| with_id(event(i), &producer_id()))
        .collect()
}

pub fn ids_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            event["id"]
                .as_str()
                .expect("event has a producer id")
                .to_owned()
        })
        .collect()
}

/// `2026-03-01T00:00:00Z` plus `i` seconds and `i % 1_000_000` microseconds, in the
/// normalised output form (UTC, `Z`, 6 fractional digits).
pub fn timestamp_for(i: u64) -> String {
    let base = jiff::Timestamp::from_second(1_772_323_200).expect("valid base timestamp");
    let seconds = i64::try_from(i).expect("index fits i64");
    let at = base
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .expect("in range");
    format!("{}.{:06}Z", at.strftime("%Y-%m-%dT%H:%M:%S"), i % 1_000_000)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The RFC 3339 output form (UTC, 6 fractional digits) of now minus `seconds_ago` seconds and
/// `micros` microseconds: recent enough for the 30-day trail summaries.
pub fn recent_timestamp(seconds_ago: u64, micros: u64) -> String {
    let now = jiff::Timestamp::now().as_second();
    let seconds = now - i64::try_from(seconds_ago).expect("fits i64") - 1;
    let at = jiff::Timestamp::from_second(seconds).expect("valid timestamp");
    format!(
        "{}.{:06}Z",
        at.strftime("%Y-%m-%dT%H:%M:%S"),
        micros % 1_000_000
    )
}
