//! Compact stored sources: the storage JSON without the values its columns already hold.
//!
//! Every document stores its event's storage JSON in `source`, but two members are near-unique
//! per event and already kept in numeric fast-field columns: `timestamp_us` (`ts`) and
//! `source_ip`. The stored JSON keeps `null` in their place (a value serde never writes for
//! them) and [`SourceColumns::restore`] puts the column values back, byte for byte: a numeric
//! column read per member, nothing measurable. `id` and `request_id` are kept in full: their
//! columns are string dictionaries, and restoring from them reads a zstd-compressed dictionary
//! block per event (~15 µs), measured at +0.7–1.1 ms per 100-event page; see
//! docs/benchmarks.md for what stripping them would save.
//!
//! The storage JSON is serde's serialization of [`AuditEvent`]: a flat object whose only
//! nested member, `extra_data`, comes last. Before it, no string value can hold `,"` (serde
//! escapes quotes), so the first `,"name":` there is the member itself; placeholders are only
//! written and only looked for in that flat part. A member whose bytes are not exactly where
//! expected is kept as it is (and then not restored), so a source is never damaged.
//! `source_ip` is kept when it is an IPv4-mapped IPv6 address, which the IP column (IPv6
//! only) cannot tell apart from the IPv4 address.

use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::schema::Field;
use tantivy::{DocId, SegmentReader, TantivyError};

use super::schema::fast;
use crate::event::AuditEvent;
use crate::event::api_json::StorageMembers;

/// What a stripped member holds in a stored source.
const PLACEHOLDER: &[u8] = b"null";
/// Where the nested part of a storage JSON starts.
const NESTED_MEMBER: &[u8] = b",\"extra_data\":";

/// The members kept in columns, in storage-JSON order, with the bytes that precede each value.
const TIMESTAMP: &[u8] = b",\"timestamp_us\":";
const SOURCE_IP: &[u8] = b",\"source_ip\":";

/// The members kept in columns, in storage-JSON order.
const MEMBERS: [&[u8]; 2] = [TIMESTAMP, SOURCE_IP];

/// The stored form of `source` (the storage JSON of `event`): column-held members replaced by
/// `null`.
pub fn compact(source: &[u8], event: &AuditEvent) -> Vec<u8> {
    let starts = value_starts(source);
    let ip = event.source_ip.filter(|ip| !is_v4_mapped(ip));
    let values = [
        Some(event.timestamp_us.to_string().into_bytes()),
        ip.and_then(|ip| serde_json::to_vec(&ip).ok()),
    ];
    let mut stored = Vec::with_capacity(source.len());
    let mut copied = 0;
    for (start, value) in starts.into_iter().zip(values) {
        let (Some(start), Some(value)) = (start, value) else {
            continue;
        };
        if let Some(range) = value_range(source, start, &value) {
            stored.extend_from_slice(&source[copied..range.start]);
            stored.extend_from_slice(PLACEHOLDER);
            copied = range.end;
        }
    }
    stored.extend_from_slice(&source[copied..]);
    stored
}

fn is_v4_mapped(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// Where the value of each of [`MEMBERS`] starts, if the member is in the flat part: one pass
/// over the commas up to the nested part, keeping each member's first occurrence.
fn value_starts(source: &[u8]) -> [Option<usize>; 2] {
    let mut starts = [None; 2];
    let mut at = 0;
    while let Some(offset) = source[at..].iter().position(|&byte| byte == b',') {
        let comma = at + offset;
        let rest = &source[comma..];
        if rest.starts_with(NESTED_MEMBER) {
            break;
        }
        for (start, key) in starts.iter_mut().zip(MEMBERS) {
            if start.is_none() && rest.starts_with(key) {
                *start = Some(comma + key.len());
            }
        }
        at = comma + 1;
    }
    starts
}

/// The byte range of `value` at `start`, if it is there and ends the member.
fn value_range(source: &[u8], start: usize, value: &[u8]) -> Option<Range<usize>> {
    let end = start + value.len();
    let ends_member = matches!(source.get(end), Some(b',' | b'}'));
    (source.get(start..end) == Some(value) && ends_member).then_some(start..end)
}

/// Tantivy's type codes of stored values (`schema::document::type_codes`, not public) for the
/// kinds our documents store: [`stored_bytes`] gives up on any other.
const TEXT_CODE: u8 = 0;
const U64_CODE: u8 = 1;
const I64_CODE: u8 = 2;
const BYTES_CODE: u8 = 4;
const F64_CODE: u8 = 6;

/// The first value of bytes field `field` in a stored document as the document store keeps it
/// (`StoreReader::get_document_bytes`): a VInt count of values, then per value the field id
/// (little-endian `u32`), a type code and the value. Read in place, without Tantivy's
/// deserializer, which copies a bytes value one byte per call (~13 % of a page's server time).
/// `None` when the document has no such value or holds a value kind not parsed here; the
/// caller then reads the document through Tantivy. The unit tests pin this against Tantivy's
/// own reading, so a format change in an upgrade fails them.
pub fn stored_bytes(document: &[u8], field: Field) -> Option<&[u8]> {
    let mut rest = document;
    let count = read_vint(&mut rest)?;
    for _ in 0..count {
        let (id, tail) = rest.split_first_chunk::<4>()?;
        let (code, tail) = tail.split_first()?;
        rest = tail;
        let length = match *code {
            TEXT_CODE | BYTES_CODE => usize::try_from(read_vint(&mut rest)?).ok()?,
            U64_CODE | I64_CODE | F64_CODE => 8,
            _ => return None,
        };
        let (value, tail) = rest.split_at_checked(length)?;
        if *code == BYTES_CODE && u32::from_le_bytes(*id) == field.field_id() {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// Tantivy's VInt: 7 bits per byte, least significant first, the last byte's high bit set.
pub(super) fn read_vint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 != 0 {
            return Some(value);
        }
    }
    None
}

/// How many segments' columns [`SourceColumns::of_segment`] keeps open.
const RECENT_SEGMENTS: usize = 32;

/// The columns of the segments read last (opening them costs ~20 µs; a page reads ~100
/// sources, an export millions). Segments never change, so an entry never goes stale; it only
/// keeps a merged-away segment's `.fast` file mapped until it is pushed out.
static RECENT: Mutex<Vec<(SegmentId, Arc<SourceColumns>)>> = Mutex::new(Vec::new());

/// The columns of one segment that a compact source's members are restored from.
pub struct SourceColumns {
    timestamps: Option<Column<i64>>,
    ips: Option<Column<Ipv6Addr>>,
}

impl SourceColumns {
    pub fn open(segment: &SegmentReader) -> tantivy::Result<Self> {
        let fast_fields = segment.fast_fields();
        Ok(SourceColumns {
            timestamps: fast_fields.column_opt(fast::TIMESTAMP)?,
            ips: fast_fields.column_opt(fast::SOURCE_IP)?,
        })
    }

    /// The columns of `segment`, opened once for the [`RECENT_SEGMENTS`] segments read last.
    pub fn of_segment(segment: &SegmentReader) -> tantivy::Result<Arc<SourceColumns>> {
        let id = segment.segment_id();
        if let Some((_, columns)) = RECENT.lock().iter().find(|(seen, _)| *seen == id) {
            return Ok(columns.clone());
        }
        let columns = Arc::new(SourceColumns::open(segment)?);
        let mut recent = RECENT.lock();
        if recent.len() >= RECENT_SEGMENTS {
            recent.remove(0);
        }
        recent.push((id, columns.clone()));
        Ok(columns)
    }

    /// The storage JSON of document `doc` from its stored (compact or complete) source.
    pub fn restore(&self, doc: DocId, stored: &[u8]) -> tantivy::Result<Vec<u8>> {
        let mut source: Option<Vec<u8>> = None;
        let mut copied = 0;
        for (start, key) in value_starts(stored).into_iter().zip(MEMBERS) {
            let Some(range) = start.and_then(|start| value_range(stored, start, PLACEHOLDER))
            else {
                continue;
            };
            let source = source.get_or_insert_with(|| Vec::with_capacity(stored.len() + 64));
            source.extend_from_slice(&stored[copied..range.start]);
            source.extend_from_slice(&self.value(key, doc)?);
            copied = range.end;
        }
        let Some(mut source) = source else {
            return Ok(stored.to_vec());
        };
        source.extend_from_slice(&stored[copied..]);
        Ok(source)
    }

    /// Appends the API shape of document `doc` (SPEC §2, what [`AuditEvent::api`] writes)
    /// straight from its stored source, with the column-held members from the columns.
    /// `false`, with `out` unchanged, when the source is not in the form that allows it (see
    /// [`crate::event::api_json`]); the caller then decodes the source.
    pub fn write_api(&self, doc: DocId, stored: &[u8], out: &mut Vec<u8>) -> tantivy::Result<bool> {
        let Some(members) = StorageMembers::split(stored) else {
            return Ok(false);
        };
        let timestamp_us = match members.timestamp_us() {
            Some(PLACEHOLDER) => self.timestamps.as_ref().and_then(|c| c.first(doc)),
            Some(text) => std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()),
            None => None,
        };
        let Some(timestamp_us) = timestamp_us else {
            return Ok(false);
        };
        let source_ip = match members.source_ip() {
            None => None,
            Some(PLACEHOLDER) => Some(self.value(SOURCE_IP, doc)?),
            Some(text) if is_canonical_ip(text) => Some(text.to_vec()),
            Some(_) => return Ok(false),
        };
        Ok(members.write_api(timestamp_us, source_ip.as_deref(), out))
    }

    /// The JSON value of member `key` of `doc`, from its column.
    fn value(&self, key: &[u8], doc: DocId) -> tantivy::Result<Vec<u8>> {
        let missing = || {
            TantivyError::InternalError(format!(
                "document {doc}: the column of stored-source member {} has no value",
                String::from_utf8_lossy(key)
            ))
        };
        if key == TIMESTAMP {
            let timestamp = self.timestamps.as_ref().and_then(|c| c.first(doc));
            return Ok(timestamp.ok_or_else(missing)?.to_string().into_bytes());
        }
        let ip = self.ips.as_ref().and_then(|c| c.first(doc));
        serde_json::to_vec(&from_ipv6(ip.ok_or_else(missing)?))
            .map_err(|error| TantivyError::InternalError(error.to_string()))
    }
}

/// Whether a stored `source_ip` value is a JSON string that decoding and writing again would
/// keep as it is.
fn is_canonical_ip(value: &[u8]) -> bool {
    let text = value
        .strip_prefix(b"\"")
        .and_then(|inner| inner.strip_suffix(b"\""))
        .and_then(|inner| std::str::from_utf8(inner).ok());
    text.and_then(|text| Some((text, text.parse::<IpAddr>().ok()?)))
        .is_some_and(|(text, ip)| ip.to_string() == text)
}

/// The event's address from the IP column: IPv4 addresses are kept mapped (see
/// [`super::schema::to_ipv6`]); mapped IPv6 addresses are never stripped, so this is exact.
fn from_ipv6(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};
    use crate::integrity::chain::ChainLink;
    use crate::store::schema::build_schema;

    fn event(ip: Option<&str>, request_id: Option<&str>, extra: serde_json::Value) -> AuditEvent {
        AuditEvent {
            id: "log_\"odd\\id".into(),
            tenant_id: "tnt_a".into(),
            timestamp_us: 1_791_158_407_552_987,
            action: Action::Read,
            secret_path: Some("a/b".into()),
            identity_type: IdentityType::User,
            identity_id: "user:a".into(),
            source_ip: ip.map(|ip| ip.parse().unwrap()),
            user_agent: Some(",\"request_id\":null,\"source_ip\":null".into()),
            success: true,
            duration_ms: Some(3),
            request_id: request_id.map(str::to_string),
            extra_data: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    /// Indexes `events` in RAM and restores each one's stored source.
    fn round_trip(events: &[AuditEvent]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (schema, fields) = build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        let mut writer: tantivy::IndexWriter = index.writer(15_000_000).unwrap();
        for (seq, event) in events.iter().enumerate() {
            let source = serde_json::to_vec(event).unwrap();
            writer
                .add_document(fields.document(event, seq as u64, &source, ChainLink::GENESIS))
                .unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];
        let columns = SourceColumns::open(segment).unwrap();
        let store = segment.get_store_reader(1).unwrap();
        let restored: Vec<(Vec<u8>, Vec<u8>)> = (0..events.len() as u32)
            .map(|doc| {
                let document: tantivy::TantivyDocument = store.get(doc).unwrap();
                let stored =
                    tantivy::schema::Value::as_bytes(&document.get_first(fields.source).unwrap())
                        .unwrap()
                        .to_vec();
                // Read in place, the same bytes as through Tantivy's deserializer; a field
                // the document does not store has none.
                let raw = store.get_document_bytes(doc).unwrap();
                assert_eq!(stored_bytes(&raw, fields.source), Some(stored.as_slice()));
                assert_eq!(stored_bytes(&raw, fields.id), None, "not stored");
                for cut in 0..raw.len() {
                    // A damaged document is refused, never read past its end.
                    if let Some(value) = stored_bytes(&raw[..cut], fields.source) {
                        assert_eq!(value, stored.as_slice());
                    }
                }
                (stored.clone(), columns.restore(doc, &stored).unwrap())
            })
            .collect();
        restored
    }

    #[test]
    fn compact_sources_restore_byte_for_byte() {
        let events = [
            event(Some("10.1.2.3"), Some("req_1"), serde_json::json!({})),
            event(
                Some("fd00::1"),
                None,
                serde_json::json!({"request_id": null}),
            ),
            event(
                Some("::ffff:10.0.0.1"),
                Some("req_\u{e9}\"2"),
                serde_json::json!({"source_ip": null, "a": {"timestamp_us": null}}),
            ),
            event(
                None,
                None,
                serde_json::json!({"id": null, "request_id": "x"}),
            ),
        ];
        for (event, (stored, restored)) in events.iter().zip(round_trip(&events)) {
            let source = serde_json::to_vec(event).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&restored),
                String::from_utf8_lossy(&source)
            );
            let text = String::from_utf8(stored).unwrap();
            assert!(text.starts_with("{\"id\":\"log_"), "{text}");
            assert!(!text.contains("1791158407552987"), "{text}");
        }
    }

    /// A value kind the in-place reader does not parse ends the reading (`None`: the page then
    /// reads the document through Tantivy) instead of being skipped by a guess.
    #[test]
    fn stored_bytes_refuses_value_kinds_it_does_not_parse() {
        let mut builder = tantivy::schema::Schema::builder();
        let flag = builder.add_bool_field("flag", tantivy::schema::STORED);
        let text = builder.add_text_field("text", tantivy::schema::STORED);
        let number = builder.add_i64_field("number", tantivy::schema::STORED);
        let bytes = builder.add_bytes_field("bytes", tantivy::schema::STORED);
        let index = tantivy::Index::create_in_ram(builder.build());
        let mut writer: tantivy::IndexWriter = index.writer(15_000_000).unwrap();
        let mut parsed = tantivy::TantivyDocument::default();
        parsed.add_text(text, "\u{e9}".repeat(100));
        parsed.add_i64(number, -7);
        parsed.add_bytes(bytes, b"payload".as_slice());
        let mut refused = tantivy::TantivyDocument::default();
        refused.add_bool(flag, true);
        refused.add_bytes(bytes, b"payload".as_slice());
        writer.add_document(parsed).unwrap();
        writer.add_document(refused).unwrap();
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let store = searcher.segment_readers()[0].get_store_reader(1).unwrap();
        let raw = |doc| store.get_document_bytes(doc).unwrap();
        assert_eq!(stored_bytes(&raw(0), bytes), Some(b"payload".as_slice()));
        assert_eq!(stored_bytes(&raw(0), flag), None, "absent");
        assert_eq!(stored_bytes(&raw(1), bytes), None, "after a bool: refused");
    }

    #[test]
    fn compact_drops_only_what_the_columns_hold() {
        let plain = event(Some("10.1.2.3"), Some("req_1"), serde_json::json!({}));
        let source = serde_json::to_vec(&plain).unwrap();
        let stored = compact(&source, &plain);
        let text = String::from_utf8(stored).unwrap();
        assert!(
            text.contains("req_1") && !text.contains("10.1.2.3"),
            "{text}"
        );
        let mapped = event(Some("::ffff:10.0.0.1"), None, serde_json::json!({}));
        let source = serde_json::to_vec(&mapped).unwrap();
        let text = String::from_utf8(compact(&source, &mapped)).unwrap();
        assert!(text.contains("::ffff:10.0.0.1"), "{text}");
        // Bytes that are not the event's own storage JSON are stored unchanged.
        assert_eq!(compact(b"{\"x\":1}", &plain), b"{\"x\":1}");
    }

    /// A random string with the characters that need care: quotes, backslashes, control
    /// characters (short and `\u00xx` escapes), DEL, `/`, non-ASCII and astral characters.
    fn random_text(rng: &mut fastrand::Rng) -> String {
        const PIECES: [&str; 12] = [
            "a",
            "Z9",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "/",
            "\u{e9}",
            "\u{1f600}",
            " ",
        ];
        (0..rng.usize(0..8))
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect()
    }

    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
        use serde_json::Value;
        match rng.u8(..if depth > 2 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => rng.i64(..).into(),
            3 => rng.u64(..).into(),
            4 => (rng.f64() * 10f64.powi(rng.i32(-30..30)) - 0.5).into(),
            5 => random_text(rng).into(),
            6 => Value::Array(
                (0..rng.usize(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.usize(0..4))
                    .map(|_| (random_text(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    fn random_event(rng: &mut fastrand::Rng) -> AuditEvent {
        let ips = [
            "10.1.2.3",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::",
            "2001:db8::8:800:200c:417a",
        ];
        let text = |rng: &mut fastrand::Rng| rng.bool().then(|| random_text(rng));
        let mut extra = serde_json::Map::new();
        for _ in 0..rng.usize(0..4) {
            extra.insert(random_text(rng), random_value(rng, 0));
        }
        AuditEvent {
            id: format!("log_{}", random_text(rng)),
            tenant_id: "tnt_a".into(),
            timestamp_us: rng.i64(-62_000_000_000_000_000..250_000_000_000_000_000),
            action: *rng.choice(Action::ALL).unwrap(),
            secret_path: text(rng),
            identity_type: *rng.choice(IdentityType::ALL).unwrap(),
            identity_id: random_text(rng),
            source_ip: rng
                .bool()
                .then(|| ips[rng.usize(..ips.len())].parse().unwrap()),
            user_agent: text(rng),
            success: rng.bool(),
            duration_ms: rng.bool().then(|| rng.u64(..)),
            request_id: text(rng),
            extra_data: extra,
        }
    }

    #[test]
    fn api_json_from_stored_sources_is_what_decoding_writes() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut events: Vec<AuditEvent> = (0..400).map(|_| random_event(&mut rng)).collect();
        // The shapes of the reference workload: plain strings, integers, no floats.
        events.push(event(
            Some("10.1.2.3"),
            Some("req_1"),
            serde_json::json!({}),
        ));
        events.push(event(
            None,
            None,
            serde_json::json!({"attempt": 3, "tags": ["a", "b"], "nested": {"ok": true}}),
        ));
        let (schema, fields) = build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        let mut writer: tantivy::IndexWriter = index.writer(15_000_000).unwrap();
        for (seq, event) in events.iter().enumerate() {
            let source = serde_json::to_vec(event).unwrap();
            writer
                .add_document(fields.document(event, seq as u64, &source, ChainLink::GENESIS))
                .unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];
        let columns = SourceColumns::open(segment).unwrap();
        let store = segment.get_store_reader(1).unwrap();
        let mut copied = 0;
        for (doc, event) in events.iter().enumerate() {
            let document: tantivy::TantivyDocument = store.get(doc as u32).unwrap();
            let stored =
                tantivy::schema::Value::as_bytes(&document.get_first(fields.source).unwrap())
                    .unwrap()
                    .to_vec();
            let mut out = b"[".to_vec();
            if columns.write_api(doc as u32, &stored, &mut out).unwrap() {
                copied += 1;
            } else {
                assert_eq!(
                    out, b"[",
                    "seed {seed}: a refusal leaves the buffer as it was"
                );
                continue;
            }
            // What the decoding path writes: the stored source restored, decoded, written.
            let decoded: AuditEvent =
                serde_json::from_slice(&columns.restore(doc as u32, &stored).unwrap()).unwrap();
            let expected = serde_json::to_vec(&decoded.api()).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out[1..]),
                String::from_utf8_lossy(&expected),
                "seed {seed}: event {doc}: {event:?}"
            );
        }
        assert_eq!(
            copied,
            events.len(),
            "seed {seed}: every serde-written source is copied"
        );
    }

    #[test]
    fn api_json_refuses_sources_serde_would_rewrite() {
        let index = super::super::schema::one_empty_document_index();
        let searcher = index.reader().unwrap().searcher();
        let columns = SourceColumns::open(&searcher.segment_readers()[0]).unwrap();
        let base = r#"{"id":"a","tenant_id":"t","timestamp_us":5,"action":"read","identity_type":"user","identity_id":"u","success":true"#;
        let refused = [
            format!("{base},\"request_id\":\"\\u00e9\"}}"),
            format!("{base},\"request_id\":\"\\/\"}}"),
            format!("{base},\"request_id\":\"\\u000A\"}}"),
            format!("{base},\"request_id\":\"raw\u{1}control\"}}"),
            format!("{base},\"request_id\":\"\\\"then raw\u{1f}\"}}"),
            format!("{base},\"duration_ms\":007}}"),
            format!("{base},\"duration_ms\":-1}}"),
            format!("{base}, \"duration_ms\":1}}"),
            base.replace("\"read\"", "\"reed\"") + "}",
            base.replace(
                r#""id":"a","tenant_id":"t","#,
                r#""tenant_id":"t","id":"a","#,
            ) + "}",
            base.replace(r#""success":true"#, r#""success":1"#) + "}",
            "{}".to_string(),
            "".to_string(),
        ];
        for source in refused {
            let mut out = Vec::new();
            assert!(
                !columns.write_api(0, source.as_bytes(), &mut out).unwrap(),
                "{source}"
            );
            assert!(out.is_empty());
        }
        // Floats in extra_data are written the way a decode writes them.
        let source = format!("{base},\"extra_data\":{{\"f\":1e5,\"g\":[0.10000000000000001]}}}}");
        let mut out = Vec::new();
        assert!(columns.write_api(0, source.as_bytes(), &mut out).unwrap());
        let decoded: AuditEvent = serde_json::from_str(&source).unwrap();
        assert_eq!(out, serde_json::to_vec(&decoded.api()).unwrap());
    }
}
