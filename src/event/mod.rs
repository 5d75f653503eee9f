//! The audit event of SPEC §2: its types, its validation and its two JSON shapes.
//!
//! * The **API shape** (`ApiEvent`) is what ScaiVault clients read: the §2 fields in §2 order,
//!   timestamps as RFC 3339 UTC with microseconds, no tenant.
//! * The **storage shape** (`AuditEvent`'s serde derive) is what the WAL and the index keep:
//!   the same fields plus `tenant_id`, with the timestamp as integer microseconds.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::timestamp;

pub mod api_json;
mod input;

pub use input::{EventInput, EventMembers};

/// Largest accepted serialized `extra_data` object.
pub const MAX_EXTRA_DATA_BYTES: usize = 16 * 1024;
/// Longest accepted `secret_path`.
pub const MAX_PATH_CHARS: usize = 512;
/// Most `/`-separated segments in a `secret_path`.
pub const MAX_PATH_SEGMENTS: usize = 10;
const MAX_ID_CHARS: usize = 128;
const MAX_IDENTITY_ID_CHARS: usize = 256;
const MAX_USER_AGENT_CHARS: usize = 1024;
const MAX_REQUEST_ID_CHARS: usize = 128;
const MAX_TENANT_ID_CHARS: usize = 64;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order (the order of ordinals).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the wire name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            /// Stable number used as the indexed value.
            pub fn ordinal(self) -> u64 {
                self as u64
            }

            /// Inverse of [`Self::ordinal`].
            pub fn from_ordinal(ordinal: u64) -> Option<Self> {
                Self::ALL.get(usize::try_from(ordinal).ok()?).copied()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What ScaiVault did (SPEC §2). Ordinals are stored in the index: append only.
    Action {
        Read => "read", Write => "write", Delete => "delete", List => "list", Rotate => "rotate",
        PolicyCreate => "policy_create", PolicyUpdate => "policy_update",
        PolicyDelete => "policy_delete", PolicyBind => "policy_bind",
        PolicyUnbind => "policy_unbind", PkiIssue => "pki_issue", PkiSign => "pki_sign",
        PkiRevoke => "pki_revoke", PkiCaCreate => "pki_ca_create",
        DynamicGenerate => "dynamic_generate", DynamicRenew => "dynamic_renew",
        DynamicRevoke => "dynamic_revoke", WebhookDelivery => "webhook_delivery",
        SubscriptionEvent => "subscription_event", FederationSync => "federation_sync",
        IdentitySync => "identity_sync", ExportCreated => "export_created",
        // A read of audit data itself (issue 13, the audit of the audit): appended, as
        // every action must be.
        AuditRead => "audit_read",
        // A retention sweep removed expired events of the tenant (issue 14): appended.
        RetentionSweep => "retention_sweep",
    }
);

string_enum!(
    /// Who acted. `system` covers ScaiVault's own actors (`system:rotation-scheduler`).
    IdentityType {
        User => "user", ServiceAccount => "service_account", Group => "group", System => "system",
    }
);

/// One stored audit event (storage shape through serde; see [`ApiEvent`] for the API shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub tenant_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub timestamp_us: i64,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_path: Option<String>,
    pub identity_type: IdentityType,
    pub identity_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra_data: Map<String, Value>,
}

impl AuditEvent {
    /// The SPEC §2 view of this event, for API responses and exports.
    pub fn api(&self) -> ApiEvent<'_> {
        ApiEvent(self)
    }
}

/// Serializes an event in the ScaiVault API shape (SPEC §2 field order, no tenant).
pub struct ApiEvent<'a>(pub &'a AuditEvent);

impl ApiEvent<'_> {
    /// Writes the SPEC §2 members, in order, into an open map (exports append the chain
    /// members after them).
    pub fn serialize_entries<M: serde::ser::SerializeMap>(
        &self,
        map: &mut M,
    ) -> Result<(), M::Error> {
        let event = self.0;
        map.serialize_entry("id", &event.id)?;
        map.serialize_entry("timestamp", &timestamp::format_micros(event.timestamp_us))?;
        map.serialize_entry("action", event.action.as_str())?;
        map.serialize_entry("secret_path", &event.secret_path)?;
        map.serialize_entry("identity_type", event.identity_type.as_str())?;
        map.serialize_entry("identity_id", &event.identity_id)?;
        map.serialize_entry("source_ip", &event.source_ip)?;
        map.serialize_entry("user_agent", &event.user_agent)?;
        map.serialize_entry("success", &event.success)?;
        map.serialize_entry("duration_ms", &event.duration_ms)?;
        map.serialize_entry("request_id", &event.request_id)?;
        map.serialize_entry("extra_data", &event.extra_data)
    }
}

impl Serialize for ApiEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(12))?;
        self.serialize_entries(&mut map)?;
        map.end()
    }
}

/// An event that passed validation; `id` is `None` when the producer sent none.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub id: Option<String>,
    pub event: AuditEvent,
}

/// Field-level validation failures, keyed like `events[3].action`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    /// Records a failure for `field` (the first one recorded for a field wins).
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves every error of `other` in, each key prefixed with `prefix`.
    pub fn absorb(&mut self, prefix: &str, other: FieldErrors) {
        for (field, message) in other.0 {
            self.add(format!("{prefix}.{field}"), message);
        }
    }
}

/// What validation knows about the caller's tenant.
#[derive(Debug, Clone, Copy)]
pub enum TenantRule<'a> {
    /// The token is bound to this tenant: a missing `tenant_id` means this one.
    Bound(&'a str),
    /// The token may write any tenant: every event must name its tenant.
    Required,
}

/// The SPEC §2 fields in §2 order: the keys of every event in the API shape.
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

/// The field naming an event's tenant: accepted on input, never in the API shape.
pub const TENANT_FIELD: &str = "tenant_id";

/// Validates one incoming event (a JSON value of the SPEC §2 shape).
///
/// Error keys are field names (`action`, `timestamp`); the caller prefixes them with the
/// event's position. Cross-tenant writes are not decided here: the returned event keeps the
/// tenant it named, and the caller compares it with the token.
pub fn validate(value: Value, tenant_rule: TenantRule<'_>) -> Result<ValidEvent, FieldErrors> {
    validate_input(EventInput::from(value), tenant_rule)
}

/// [`validate`] for an event read by [`EventInput`]'s one-pass parser (the ingest path).
pub fn validate_input(
    input: EventInput,
    tenant_rule: TenantRule<'_>,
) -> Result<ValidEvent, FieldErrors> {
    let mut errors = FieldErrors::default();
    let EventInput::Object(mut members) = input else {
        errors.add("", "must be a JSON object");
        return Err(errors);
    };
    for name in members.unknown() {
        errors.add(name.clone(), "unknown field");
    }
    let mut take = |name: &str| members.take(name);
    let id = optional_string(take("id"), "id", &mut errors, check_id);
    let tenant_id = optional_string(
        take(TENANT_FIELD),
        TENANT_FIELD,
        &mut errors,
        check_tenant_id,
    );
    let timestamp_us = required(take("timestamp"), "timestamp", &mut errors, parse_timestamp);
    let action = required(take("action"), "action", &mut errors, parse_action);
    let secret_path = optional_string(take("secret_path"), "secret_path", &mut errors, |p| {
        check_secret_path(p).map_err(str::to_string)
    });
    let identity_type = required(take("identity_type"), "identity_type", &mut errors, |v| {
        let text = as_str(&v)?;
        IdentityType::parse(text)
            .ok_or_else(|| "must be one of user, service_account, group, system".to_string())
    });
    let identity_id = required(take("identity_id"), "identity_id", &mut errors, |v| {
        owned_string(v, |text| check_text(text, MAX_IDENTITY_ID_CHARS))
    });
    let source_ip = optional(take("source_ip"), "source_ip", &mut errors, |v| {
        as_str(&v)?
            .parse::<IpAddr>()
            .map_err(|_| "must be an IPv4 or IPv6 address".to_string())
    });
    let user_agent = optional_string(take("user_agent"), "user_agent", &mut errors, |t| {
        check_text(t, MAX_USER_AGENT_CHARS)
    });
    let success = required(take("success"), "success", &mut errors, |v| {
        v.as_bool().ok_or_else(|| "must be a boolean".to_string())
    });
    let duration_ms = optional(take("duration_ms"), "duration_ms", &mut errors, |v| {
        v.as_u64()
            .ok_or_else(|| "must be a non-negative integer".to_string())
    });
    let request_id = optional_string(take("request_id"), "request_id", &mut errors, |t| {
        check_text(t, MAX_REQUEST_ID_CHARS)
    });
    let extra_data = optional(
        take("extra_data"),
        "extra_data",
        &mut errors,
        parse_extra_data,
    )
    .unwrap_or_default();

    let tenant_id = match (tenant_id, tenant_rule) {
        (Some(tenant), _) => Some(tenant),
        (None, TenantRule::Bound(tenant)) => Some(tenant.to_string()),
        (None, TenantRule::Required) => {
            if !errors.0.contains_key("tenant_id") {
                errors.add(
                    "tenant_id",
                    "required when the token is not bound to one tenant",
                );
            }
            None
        }
    };

    match (
        tenant_id,
        timestamp_us,
        action,
        identity_type,
        identity_id,
        success,
    ) {
        (
            Some(tenant_id),
            Some(timestamp_us),
            Some(action),
            Some(identity_type),
            Some(identity_id),
            Some(success),
        ) if errors.is_empty() => Ok(ValidEvent {
            id: id.clone(),
            event: AuditEvent {
                id: id.unwrap_or_default(),
                tenant_id,
                timestamp_us,
                action,
                secret_path,
                identity_type,
                identity_id,
                source_ip,
                user_agent,
                success,
                duration_ms,
                request_id,
                extra_data,
            },
        }),
        _ => Err(errors),
    }
}

fn required<T>(
    value: Option<Value>,
    field: &str,
    errors: &mut FieldErrors,
    parse: impl FnOnce(Value) -> Result<T, String>,
) -> Option<T> {
    match value {
        None => {
            errors.add(field, "required");
            None
        }
        Some(value) => optional(Some(value), field, errors, parse),
    }
}

fn optional<T>(
    value: Option<Value>,
    field: &str,
    errors: &mut FieldErrors,
    parse: impl FnOnce(Value) -> Result<T, String>,
) -> Option<T> {
    match parse(value?) {
        Ok(parsed) => Some(parsed),
        Err(message) => {
            errors.add(field, message);
            None
        }
    }
}

fn optional_string(
    value: Option<Value>,
    field: &str,
    errors: &mut FieldErrors,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Option<String> {
    optional(value, field, errors, |v| owned_string(v, check))
}

/// The string `value` holds, moved out, once `check` accepts it.
fn owned_string(
    value: Value,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Result<String, String> {
    match value {
        Value::String(text) => check(&text).map(|()| text),
        _ => Err("must be a string".to_string()),
    }
}

fn as_str(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| "must be a string".to_string())
}

fn parse_timestamp(value: Value) -> Result<i64, String> {
    timestamp::parse_rfc3339_micros(as_str(&value)?)
        .map_err(|reason| format!("must be an RFC 3339 timestamp with offset ({reason})"))
}

fn parse_action(value: Value) -> Result<Action, String> {
    let text = as_str(&value)?;
    Action::parse(text).ok_or_else(|| format!("unknown action '{}'", truncate(text, 64)))
}

fn parse_extra_data(value: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(map) = value else {
        return Err("must be a JSON object".to_string());
    };
    let mut counter = ByteCounter(0);
    let size = serde_json::to_writer(&mut counter, &map)
        .map(|()| counter.0)
        .unwrap_or(usize::MAX);
    if size > MAX_EXTRA_DATA_BYTES {
        return Err(format!(
            "must be at most {MAX_EXTRA_DATA_BYTES} bytes as JSON (is {size})"
        ));
    }
    Ok(map)
}

/// Counts the bytes written to it (the JSON size of `extra_data`, without keeping them).
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    // Most values are ASCII, where characters are bytes and the control characters are the
    // ASCII ones: one vectorized check instead of two passes decoding UTF-8 (ingest hot path).
    let (chars, control) = if text.is_ascii() {
        (text.len(), text.bytes().any(|byte| byte.is_ascii_control()))
    } else {
        (text.chars().count(), text.chars().any(char::is_control))
    };
    if chars > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if control {
        return Err("must not contain control characters".to_string());
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if id.is_empty() || id.len() > MAX_ID_CHARS || !id.chars().all(valid_char) {
        return Err(format!(
            "must be 1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 _ - . :"
        ));
    }
    Ok(())
}

/// Checks a tenant id (`tnt_acme`): 1 to 64 characters of `A-Z a-z 0-9 _ -`.
pub fn check_tenant_id(tenant: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
    if tenant.is_empty() || tenant.len() > MAX_TENANT_ID_CHARS || !tenant.chars().all(valid_char) {
        return Err(format!(
            "must be 1 to {MAX_TENANT_ID_CHARS} characters of A-Z a-z 0-9 _ -"
        ));
    }
    Ok(())
}

/// Checks ScaiVault's path rules: `a-z 0-9 - _ /`, no leading, trailing or double slash, at
/// most 512 characters and 10 segments.
pub fn check_secret_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("must not be empty");
    }
    if path.len() > MAX_PATH_CHARS {
        return Err("must be at most 512 characters");
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'/');
    if !path.bytes().all(allowed) {
        return Err("may only contain a-z 0-9 - _ /");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Err("must not start or end with '/'");
    }
    if path.contains("//") {
        return Err("must not contain empty segments ('//')");
    }
    if path.split('/').count() > MAX_PATH_SEGMENTS {
        return Err("must have at most 10 segments");
    }
    Ok(())
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "timestamp": "2026-04-23T18:00:00.123456Z",
            "action": "read",
            "secret_path": "environments/production/salesforce/api-credentials",
            "identity_type": "service_account",
            "identity_id": "sa:reporting-service",
            "source_ip": "10.0.1.50",
            "user_agent": "scaivault-python/1.0.0",
            "success": true,
            "duration_ms": 12,
            "request_id": "req_xyz",
            "extra_data": {}
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut event = valid();
        event[field] = value;
        event
    }

    fn error_of(event: Value) -> BTreeMap<String, String> {
        validate(event, TenantRule::Bound("tnt_acme"))
            .expect_err("must be invalid")
            .0
    }

    #[test]
    fn a_complete_event_is_valid_and_takes_the_bound_tenant() {
        let valid = validate(valid(), TenantRule::Bound("tnt_acme")).unwrap();
        assert_eq!(valid.id, None);
        assert_eq!(valid.event.tenant_id, "tnt_acme");
        assert_eq!(valid.event.action, Action::Read);
        assert_eq!(valid.event.timestamp_us, 1_776_967_200_123_456);
        assert_eq!(valid.event.source_ip, Some("10.0.1.50".parse().unwrap()));
    }

    #[test]
    fn minimal_event_needs_only_the_required_fields() {
        let event = json!({"timestamp": "2026-04-23T18:00:00Z", "action": "identity_sync",
            "identity_type": "system", "identity_id": "system:sync", "success": true});
        let valid = validate(event, TenantRule::Bound("tnt_a")).unwrap();
        assert_eq!(valid.event.secret_path, None);
        assert!(valid.event.extra_data.is_empty());
    }

    #[test]
    fn every_field_rule_reports_its_field() {
        let long = "a".repeat(513);
        let eleven = ["a"; 11].join("/");
        let cases: Vec<(&str, Value)> = vec![
            ("id", json!("has space")),
            ("id", json!(12)),
            ("tenant_id", json!("bad tenant!")),
            ("timestamp", json!("yesterday")),
            ("timestamp", json!("2026-01-01T00:00:00")),
            ("timestamp", json!("2026-01-01 00:00:00Z")),
            ("timestamp", json!("2026-02-30T00:00:00Z")),
            ("timestamp", json!(1700000000)),
            ("action", json!("launch")),
            ("action", json!(["read"])),
            ("secret_path", json!("Upper/case")),
            ("secret_path", json!("/leading")),
            ("secret_path", json!("trailing/")),
            ("secret_path", json!("a//b")),
            ("secret_path", json!(eleven)),
            ("secret_path", json!(long)),
            ("secret_path", json!("has space")),
            ("secret_path", json!("")),
            ("identity_type", json!("robot")),
            ("identity_id", json!("")),
            ("identity_id", json!("a\u{0007}b")),
            ("source_ip", json!("10.0.0.256")),
            ("source_ip", json!("example.com")),
            ("user_agent", json!(7)),
            ("success", json!("yes")),
            ("duration_ms", json!(-1)),
            ("duration_ms", json!(1.5)),
            ("request_id", json!("x".repeat(129))),
            ("extra_data", json!("text")),
            (
                "extra_data",
                json!({"blob": "x".repeat(MAX_EXTRA_DATA_BYTES)}),
            ),
        ];
        for (field, value) in cases {
            let errors = error_of(with(field, value.clone()));
            assert!(errors.contains_key(field), "{field}={value}: {errors:?}");
            assert_eq!(errors.len(), 1, "{field}={value}: {errors:?}");
        }
    }

    #[test]
    fn required_fields_are_reported_missing() {
        for field in [
            "timestamp",
            "action",
            "identity_type",
            "identity_id",
            "success",
        ] {
            let mut event = valid();
            event.as_object_mut().unwrap().remove(field);
            assert_eq!(error_of(event)[field], "required");
        }
    }

    #[test]
    fn unknown_fields_and_missing_tenant_are_rejected() {
        assert_eq!(
            error_of(with("colour", json!("red")))["colour"],
            "unknown field"
        );
        let errors = validate(valid(), TenantRule::Required).unwrap_err().0;
        assert!(errors.contains_key("tenant_id"));
        assert!(validate(with("tenant_id", json!("tnt_x")), TenantRule::Required).is_ok());
    }

    #[test]
    fn nulls_mean_absent_for_optional_fields() {
        let event = with("secret_path", Value::Null);
        let event = {
            let mut e = event;
            e["source_ip"] = Value::Null;
            e["extra_data"] = Value::Null;
            e
        };
        let valid = validate(event, TenantRule::Bound("t")).unwrap();
        assert_eq!(valid.event.secret_path, None);
        assert_eq!(valid.event.source_ip, None);
    }

    #[test]
    fn path_rules_accept_the_edges() {
        let ten = ["a"; 10].join("/");
        assert!(check_secret_path(&ten).is_ok());
        assert!(check_secret_path(&"a".repeat(512)).is_ok());
        assert!(check_secret_path("pki/edge_1/certs-2").is_ok());
    }

    #[test]
    fn api_shape_has_spec_fields_in_order_and_no_tenant() {
        let event = validate(valid(), TenantRule::Bound("tnt_acme"))
            .unwrap()
            .event;
        let text = serde_json::to_string(&event.api()).unwrap();
        assert!(
            text.starts_with(
                r#"{"id":"","timestamp":"2026-04-23T18:00:00.123456Z","action":"read""#
            )
        );
        assert!(!text.contains("tnt_acme"));
        let storage: AuditEvent =
            serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
        assert_eq!(storage, event);
    }

    #[test]
    fn ordinals_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::from_ordinal(action.ordinal()), Some(*action));
            assert_eq!(Action::parse(action.as_str()), Some(*action));
        }
        assert_eq!(Action::ALL.len(), 24);
        assert_eq!(
            Action::RetentionSweep.ordinal(),
            23,
            "appended after audit_read"
        );
        assert_eq!(
            Action::AuditRead.ordinal(),
            22,
            "appended after export_created"
        );
    }
}
