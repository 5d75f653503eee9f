//! Canonical bytes: the one encoding that hashes and signatures are computed over.
//!
//! Canonical JSON (docs/integrity.md gives the rules and a Python equivalent): object members
//! sorted by key (Unicode code points), no whitespace, strings escaped exactly as
//! `json.dumps(..., ensure_ascii=False)` does (`"` `\` and control characters only), integers
//! in decimal, other numbers in the ECMAScript shortest form (`1.5`, `1e+21`, `1e-7`), as in
//! RFC 8785. An event's canonical bytes are the canonical JSON of its API record (SPEC §3.1
//! shape, every member present, `null` when absent) plus its `tenant_id`, without the chain
//! members: exactly what an exported JSONL line holds, so a verifier recomputes them from the
//! line alone.

use std::io::Write;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::event::AuditEvent;
use crate::timestamp;

/// Members of an exported record that are not part of the event's canonical bytes.
pub const CHAIN_MEMBERS: [&str; 2] = ["chain_hash", "chain_seq"];

/// The canonical JSON of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    out
}

/// Appends the canonical JSON of `value` to `out`.
pub fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    // Members mostly arrive sorted already (and objects are small): no sorting then.
    if map.keys().is_sorted() {
        write_members(map.iter(), out);
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_unstable_by(|left, right| left.0.cmp(right.0));
        write_members(members.into_iter(), out);
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (index, (key, value)) in members.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(value, out);
    }
    out.push(b'}');
}

/// A JSON string, escaped as `serde_json` (and Python's `json.dumps(ensure_ascii=False)`) do.
fn write_string(text: &str, out: &mut Vec<u8>) {
    // A fold without early exit, so that the compiler vectorizes it (this runs for every
    // string of every ingested event).
    let plain = !text.bytes().fold(false, |special, byte| {
        special | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if plain {
        // Nothing to escape (most identifiers, paths and timestamps): copy.
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) {
    if let Some(integer) = number.as_u64() {
        write_u64(integer, out);
    } else if let Some(integer) = number.as_i64() {
        out.push(b'-');
        write_u64(integer.unsigned_abs(), out);
    } else if let Some(float) = number.as_f64() {
        out.extend_from_slice(ecmascript_number(float).as_bytes());
    }
}

/// An unsigned integer in decimal, without the formatting machinery (once or more per event).
fn write_u64(mut value: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// An IP address as a JSON string (its text never needs escaping), without a temporary
/// `String`.
fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                write_u64(u64::from(octet), out);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// `Number.prototype.toString` of a finite float (ECMA-262 §6.1.6.1.20): the shortest digits
/// that round-trip, in positional form for exponents -6 < n <= 21, else as `d.ddde±x`.
pub fn ecmascript_number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    // `{:e}` gives the shortest round-trip digits: "1.2345e-7".
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let k = digits.len() as i64;
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let tail = if k > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let sign = if n - 1 < 0 { "-" } else { "+" };
        format!("{}{tail}e{sign}{}", &digits[..1], (n - 1).abs())
    };
    format!("{sign}{body}")
}

/// Appends the canonical bytes of `event` (see the module documentation) to `out`. Written
/// member by member, in sorted order, without building a JSON value or any temporary (numbers,
/// the timestamp and the address go straight into `out`): this runs once per ingested event.
pub fn write_event(event: &AuditEvent, out: &mut Vec<u8>) {
    let text = |out: &mut Vec<u8>, value: Option<&str>| match value {
        Some(value) => write_string(value, out),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"action\":");
    write_string(event.action.as_str(), out);
    out.extend_from_slice(b",\"duration_ms\":");
    match event.duration_ms {
        Some(duration) => write_u64(duration, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"extra_data\":");
    write_object(&event.extra_data, out);
    out.extend_from_slice(b",\"id\":");
    write_string(&event.id, out);
    out.extend_from_slice(b",\"identity_id\":");
    write_string(&event.identity_id, out);
    out.extend_from_slice(b",\"identity_type\":");
    write_string(event.identity_type.as_str(), out);
    out.extend_from_slice(b",\"request_id\":");
    text(out, event.request_id.as_deref());
    out.extend_from_slice(b",\"secret_path\":");
    text(out, event.secret_path.as_deref());
    out.extend_from_slice(b",\"source_ip\":");
    match event.source_ip {
        Some(ip) => write_ip(ip, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"success\":");
    out.extend_from_slice(if event.success { b"true" } else { b"false" });
    out.extend_from_slice(b",\"tenant_id\":");
    write_string(&event.tenant_id, out);
    out.extend_from_slice(b",\"timestamp\":");
    // The timestamp form needs no escaping.
    out.push(b'"');
    timestamp::write_micros_bytes(event.timestamp_us, out);
    out.push(b'"');
    out.extend_from_slice(b",\"user_agent\":");
    text(out, event.user_agent.as_deref());
    out.push(b'}');
}

/// The canonical bytes of an exported JSONL record of `tenant_id`: the record without its
/// chain members, plus `tenant_id`.
pub fn record_bytes(tenant_id: &str, record: &Map<String, Value>) -> Vec<u8> {
    let mut event: Map<String, Value> = record
        .iter()
        .filter(|(key, _)| !CHAIN_MEMBERS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    event.insert("tenant_id".to_owned(), Value::String(tenant_id.to_owned()));
    to_vec(&Value::Object(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};
    use serde_json::json;

    fn event(extra: Value, ip: Option<&str>) -> AuditEvent {
        AuditEvent {
            id: "evt_1".into(),
            tenant_id: "tnt_a".into(),
            timestamp_us: 1_767_225_600_123_456,
            action: Action::Read,
            secret_path: Some("db/\"prod\"\n".into()),
            identity_type: IdentityType::User,
            identity_id: "usr_é".into(),
            source_ip: ip.map(|ip| ip.parse().unwrap()),
            user_agent: None,
            success: true,
            duration_ms: Some(12),
            request_id: None,
            extra_data: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn event_bytes_equal_the_canonical_json_of_the_exported_record() {
        let extras = [
            json!({}),
            json!({"z": 1, "a": [1.5, -0.0, 1e21, 1e-7, 123456789012345680000.0], "m": {"b": null, "a": "\u{1f}\t"}}),
            json!({"big": u64::MAX, "neg": i64::MIN, "f": 0.1, "g": 1e300}),
        ];
        for extra in extras {
            for ip in [
                None,
                Some("10.0.0.1"),
                Some("::ffff:10.0.0.1"),
                Some("2001:db8::1"),
            ] {
                let event = event(extra.clone(), ip);
                let mut direct = Vec::new();
                write_event(&event, &mut direct);
                let record = serde_json::to_value(event.api()).unwrap();
                let from_record = record_bytes(&event.tenant_id, record.as_object().unwrap());
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(from_record).unwrap()
                );
            }
        }
    }

    #[test]
    fn members_are_sorted_and_strings_escaped_like_python_json() {
        let value = json!({"b": "\"\\\u{7f}é\u{1}", "a": [true, null, 7]});
        assert_eq!(
            String::from_utf8(to_vec(&value)).unwrap(),
            "{\"a\":[true,null,7],\"b\":\"\\\"\\\\\u{7f}é\\u0001\"}"
        );
    }

    #[test]
    fn floats_take_the_ecmascript_shortest_form() {
        let cases = [
            (1.5, "1.5"),
            (100.0, "100"),
            (0.1, "0.1"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123.456e-10, "1.23456e-8"),
            (-2.5e25, "-2.5e+25"),
            (0.0, "0"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (value, expected) in cases {
            assert_eq!(ecmascript_number(value), expected, "{value:e}");
        }
    }
}
