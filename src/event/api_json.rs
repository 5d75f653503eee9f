//! The API shape of an event written straight from its storage JSON, without decoding it.
//!
//! A page of 100 events used to be decoded into [`AuditEvent`](super::AuditEvent)s and written
//! again through [`ApiEvent`](super::ApiEvent): most of a page's CPU. The storage JSON is
//! serde's compact serialization of an `AuditEvent`, whose members are already in SPEC §2
//! order; the API shape drops `tenant_id`, formats `timestamp_us` as `timestamp`, writes
//! `null` for absent members and `{}` for an empty `extra_data`. [`StorageMembers::split`]
//! finds each member's value bytes and [`StorageMembers::write_api`] copies them.
//!
//! The bytes written are exactly what decoding and `ApiEvent` would write, or nothing: a
//! source that is not in the form serde writes (whitespace, other member orders, escapes serde
//! never writes, numbers that a decode would rewrite) is refused with `None`/`false`, and the
//! caller takes the decoding path. `extra_data` is copied only when every number in it is an
//! integer serde keeps as it is; otherwise it alone is decoded and written again (a float
//! may come back one unit in the last place off, as it does through a full decode).

use serde_json::{Map, Value};

use super::{Action, IdentityType};

/// Storage-JSON members in serde's order (the `AuditEvent` field order).
const MEMBERS: [&[u8]; 13] = [
    b"id",
    b"tenant_id",
    b"timestamp_us",
    b"action",
    b"secret_path",
    b"identity_type",
    b"identity_id",
    b"source_ip",
    b"user_agent",
    b"success",
    b"duration_ms",
    b"request_id",
    b"extra_data",
];

const ID: usize = 0;
const TIMESTAMP_US: usize = 2;
const ACTION: usize = 3;
const SECRET_PATH: usize = 4;
const IDENTITY_TYPE: usize = 5;
const IDENTITY_ID: usize = 6;
const SOURCE_IP: usize = 7;
const USER_AGENT: usize = 8;
const SUCCESS: usize = 9;
const DURATION_MS: usize = 10;
const REQUEST_ID: usize = 11;
const EXTRA_DATA: usize = 12;

/// Members every storage JSON has (serde never skips them).
const REQUIRED: [usize; 7] = [
    ID,
    1,
    TIMESTAMP_US,
    ACTION,
    IDENTITY_TYPE,
    IDENTITY_ID,
    SUCCESS,
];

/// The value bytes of each member of one storage JSON.
#[derive(Debug, Clone, Copy)]
pub struct StorageMembers<'a> {
    values: [Option<&'a [u8]>; 13],
}

impl<'a> StorageMembers<'a> {
    /// Splits a storage JSON into its members' values; `None` if it is not in the form serde
    /// writes for an `AuditEvent`.
    pub fn split(source: &'a [u8]) -> Option<StorageMembers<'a>> {
        let mut values = [None; 13];
        let mut at = 1;
        let mut next_member = 0;
        if source.first() != Some(&b'{') || source.last() != Some(&b'}') || source.len() < 2 {
            return None;
        }
        // A decode refuses what is not UTF-8; copying must too.
        std::str::from_utf8(source).ok()?;
        while at < source.len() - 1 {
            let (key, value_start) = member_key(source, at)?;
            let index = next_member + MEMBERS[next_member..].iter().position(|m| *m == key)?;
            let value_end = if index == EXTRA_DATA {
                source.len() - 1
            } else {
                scalar_end(source, value_start)?
            };
            values[index] = Some(&source[value_start..value_end]);
            next_member = index + 1;
            at = value_end;
            match source.get(at) {
                Some(b',') if index != EXTRA_DATA => at += 1,
                _ if at == source.len() - 1 => {}
                _ => return None,
            }
        }
        let members = StorageMembers { values };
        REQUIRED
            .iter()
            .all(|index| members.values[*index].is_some())
            .then_some(members)
    }

    /// The stored `timestamp_us` value (`null` where a column holds it).
    pub fn timestamp_us(&self) -> Option<&'a [u8]> {
        self.values[TIMESTAMP_US]
    }

    /// The stored `source_ip` value, if any (`null` where a column holds it).
    pub fn source_ip(&self) -> Option<&'a [u8]> {
        self.values[SOURCE_IP]
    }

    /// Appends the API shape of the event to `out`, with `timestamp_us` and the JSON of
    /// `source_ip` given by the caller (they may come from columns). `false`, with `out` as
    /// it was, when a value is not one serde would write back unchanged.
    pub fn write_api(
        &self,
        timestamp_us: i64,
        source_ip: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> bool {
        let start = out.len();
        if self.try_write_api(timestamp_us, source_ip, out).is_none() {
            out.truncate(start);
            return false;
        }
        true
    }

    fn try_write_api(
        &self,
        timestamp_us: i64,
        source_ip: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let value = |index: usize| self.values[index];
        let action = value(ACTION)?;
        Action::parse(plain_string(action)?)?;
        let identity_type = value(IDENTITY_TYPE)?;
        IdentityType::parse(plain_string(identity_type)?)?;
        let success = value(SUCCESS)?;
        if success != b"true" && success != b"false" {
            return None;
        }
        if let Some(duration) = value(DURATION_MS)
            && duration != b"null"
            && !is_copied_integer(duration, false)
        {
            return None;
        }
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(string(value(ID)?)?);
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(crate::timestamp::format_micros(timestamp_us).as_bytes());
        out.extend_from_slice(b"\",\"action\":");
        out.extend_from_slice(action);
        out.extend_from_slice(b",\"secret_path\":");
        out.extend_from_slice(optional_string(value(SECRET_PATH))?);
        out.extend_from_slice(b",\"identity_type\":");
        out.extend_from_slice(identity_type);
        out.extend_from_slice(b",\"identity_id\":");
        out.extend_from_slice(string(value(IDENTITY_ID)?)?);
        out.extend_from_slice(b",\"source_ip\":");
        out.extend_from_slice(source_ip.unwrap_or(b"null"));
        out.extend_from_slice(b",\"user_agent\":");
        out.extend_from_slice(optional_string(value(USER_AGENT))?);
        out.extend_from_slice(b",\"success\":");
        out.extend_from_slice(success);
        out.extend_from_slice(b",\"duration_ms\":");
        out.extend_from_slice(value(DURATION_MS).unwrap_or(b"null"));
        out.extend_from_slice(b",\"request_id\":");
        out.extend_from_slice(optional_string(value(REQUEST_ID))?);
        out.extend_from_slice(b",\"extra_data\":");
        write_extra_data(value(EXTRA_DATA), out)?;
        out.push(b'}');
        Some(())
    }
}

/// The key of the member starting at `at` (`"key":`) and where its value starts. Keys are
/// plain ASCII names, never escaped.
fn member_key(source: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = source.get(at..)?.strip_prefix(b"\"")?;
    let close = rest.iter().position(|&byte| byte == b'"')?;
    let key = &rest[..close];
    (rest.get(close + 1) == Some(&b':')).then_some((key, at + close + 3))
}

/// Where the scalar value starting at `at` ends (a string, a number, `true`, `false` or
/// `null`), checked to be in serde's form.
fn scalar_end(source: &[u8], at: usize) -> Option<usize> {
    if source.get(at) == Some(&b'"') {
        return string_end(source, at);
    }
    let len = source[at..]
        .iter()
        .position(|&byte| byte == b',' || byte == b'}')?;
    let token = &source[at..at + len];
    let is_literal = matches!(token, b"true" | b"false" | b"null");
    (is_literal || is_copied_integer(token, true)).then_some(at + len)
}

/// Where the string starting at `at` (its opening quote) ends, past its closing quote; `None`
/// if it holds raw control characters or an escape serde does not write.
fn string_end(source: &[u8], at: usize) -> Option<usize> {
    let mut index = at + 1;
    loop {
        let offset = memchr::memchr2(b'"', b'\\', &source[index..])?;
        if has_control_character(&source[index..index + offset]) {
            return None;
        }
        index += offset;
        match source[index] {
            b'"' => return Some(index + 1),
            _ => index += escape_len(&source[index..])?,
        }
    }
}

/// Whether `text` holds a raw control character; written without an early exit, so that it
/// compiles to vector instructions.
fn has_control_character(text: &[u8]) -> bool {
    text.iter()
        .fold(false, |found, &byte| found | (byte < 0x20))
}

/// The length of the escape at the start of `rest` if serde writes it: the short escapes, and
/// `\u00xx` (lower-case hex) for the other control characters.
fn escape_len(rest: &[u8]) -> Option<usize> {
    match rest.get(1)? {
        b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => Some(2),
        b'u' => {
            let hex = rest.get(2..6)?;
            let lower = hex
                .iter()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte));
            let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            let written_long = code < 0x20 && !matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
            (lower && written_long).then_some(6)
        }
        _ => None,
    }
}

/// A whole string value (quotes included), checked.
fn string(value: &[u8]) -> Option<&[u8]> {
    (value.first() == Some(&b'"') && string_end(value, 0) == Some(value.len())).then_some(value)
}

/// An absent member as `null`, a string as it is.
fn optional_string(value: Option<&[u8]>) -> Option<&[u8]> {
    match value {
        None | Some(b"null") => Some(b"null"),
        Some(value) => string(value),
    }
}

/// The text of a string value without escapes.
fn plain_string(value: &[u8]) -> Option<&str> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.iter().any(|&byte| byte == b'"' || byte == b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// Whether `token` is an integer that a decode writes back unchanged: no leading zeros, no
/// `-0` (a decode makes it the float `-0.0`), within `u64` (or `i64` when negative: beyond,
/// a decode makes it a float), a sign only if `signed`.
fn is_copied_integer(token: &[u8], signed: bool) -> bool {
    let (negative, digits) = match token.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, token),
    };
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && !negative));
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    canonical
        && if negative {
            signed && text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        }
}

/// Writes `extra_data`: `{}` when absent, the stored object when it is copied unchanged by a
/// decode, else the object decoded and written again.
fn write_extra_data(value: Option<&[u8]>, out: &mut Vec<u8>) -> Option<()> {
    let Some(value) = value else {
        out.extend_from_slice(b"{}");
        return Some(());
    };
    if value == b"null" {
        out.extend_from_slice(b"{}");
        return Some(());
    }
    if is_copied_object(value) {
        out.extend_from_slice(value);
        return Some(());
    }
    let map: Map<String, Value> = serde_json::from_slice(value).ok()?;
    serde_json::to_writer(out, &map).ok()
}

/// Whether a stored `extra_data` object is in serde's compact form with only integers a
/// decode keeps: strings checked as above, no whitespace, balanced brackets.
fn is_copied_object(value: &[u8]) -> bool {
    if value.first() != Some(&b'{') {
        return false;
    }
    let mut depth = 0_usize;
    let mut at = 0;
    while at < value.len() {
        match value[at] {
            b'"' => match string_end(value, at) {
                Some(end) => at = end,
                None => return false,
            },
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
                at += 1;
                if depth == 0 && at != value.len() {
                    return false;
                }
            }
            b',' | b':' => at += 1,
            b't' | b'f' | b'n' => {
                let len = token_len(&value[at..]);
                if !matches!(&value[at..at + len], b"true" | b"false" | b"null") {
                    return false;
                }
                at += len;
            }
            _ => {
                let len = token_len(&value[at..]);
                if !is_copied_integer(&value[at..at + len], true) {
                    return false;
                }
                at += len;
            }
        }
    }
    depth == 0
}

/// The length of the bare token (number or literal) at the start of `rest`.
fn token_len(rest: &[u8]) -> usize {
    rest.iter()
        .position(|&byte| matches!(byte, b',' | b'}' | b']' | b':'))
        .unwrap_or(rest.len())
        .max(1)
}
