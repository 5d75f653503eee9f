//! One event as a CSV row (SPEC §3.5), with spreadsheet-formula neutralisation.
//!
//! Cells follow the API shape: timestamps as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, `success` as
//! `true`/`false`, absent optional values as empty cells, `extra_data` as compact JSON (`{}` when
//! empty).
//!
//! **Formula neutralisation** (OWASP CSV injection): a text cell whose first character is `=`,
//! `+`, `-`, `@`, a tab or a carriage return would be run as a formula by spreadsheet software,
//! so it is written with a single quote `'` in front (`=1+1` → `'=1+1`). The rule applies to every
//! text cell; numbers the service writes itself (`duration_ms`, never negative) and empty cells are
//! left alone. Quoting and escaping are then the normal RFC 4180 ones of the `csv` crate.

use std::fmt::Write as _;
use std::io;

use csv::ByteRecord;

use crate::event::AuditEvent;
use crate::integrity::chain::ChainLink;
use crate::timestamp;

/// The header row, in SPEC §3.5 order, then the chain columns.
pub(super) const HEADER: [&str; 14] = [
    "id",
    "timestamp",
    "action",
    "identity_type",
    "identity_id",
    "secret_path",
    "source_ip",
    "user_agent",
    "success",
    "duration_ms",
    "request_id",
    "extra_data",
    "chain_seq",
    "chain_hash",
];

/// Leading characters that make a spreadsheet evaluate a cell.
const FORMULA_TRIGGERS: &[u8] = b"=+-@\t\r";

/// Reusable buffers that turn events into CSV records without per-event allocations.
#[derive(Default)]
pub(super) struct CsvRow {
    record: ByteRecord,
    neutralised: Vec<u8>,
    text: String,
    json: Vec<u8>,
}

impl CsvRow {
    /// Fills the record with `event`'s cells and its chain `link` (`chain_seq` in decimal,
    /// `chain_hash` in hex: never neutralised); the result is valid until the next call.
    pub(super) fn fill(&mut self, event: &AuditEvent, link: &ChainLink) -> io::Result<&ByteRecord> {
        self.record.clear();
        self.push_text(event.id.as_bytes());
        self.push_timestamp(event.timestamp_us);
        self.push_text(event.action.as_str().as_bytes());
        self.push_text(event.identity_type.as_str().as_bytes());
        self.push_text(event.identity_id.as_bytes());
        self.push_optional_text(event.secret_path.as_deref());
        self.push_source_ip(event.source_ip);
        self.push_optional_text(event.user_agent.as_deref());
        self.push_text(if event.success { b"true" } else { b"false" });
        self.push_duration(event.duration_ms);
        self.push_optional_text(event.request_id.as_deref());
        self.push_extra_data(&event.extra_data)?;
        self.text.clear();
        let _ = write!(self.text, "{}", link.seq);
        self.record.push_field(self.text.as_bytes());
        self.record.push_field(link.hash_hex().as_bytes());
        Ok(&self.record)
    }

    fn push_text(&mut self, cell: &[u8]) {
        push_neutralised(&mut self.record, &mut self.neutralised, cell);
    }

    fn push_optional_text(&mut self, cell: Option<&str>) {
        self.push_text(cell.unwrap_or_default().as_bytes());
    }

    fn push_timestamp(&mut self, micros: i64) {
        self.text.clear();
        timestamp::write_micros(micros, &mut self.text);
        push_neutralised(
            &mut self.record,
            &mut self.neutralised,
            self.text.as_bytes(),
        );
    }

    fn push_source_ip(&mut self, ip: Option<std::net::IpAddr>) {
        self.text.clear();
        if let Some(ip) = ip {
            // Writing to a String cannot fail.
            let _ = write!(self.text, "{ip}");
        }
        push_neutralised(
            &mut self.record,
            &mut self.neutralised,
            self.text.as_bytes(),
        );
    }

    /// A number the service writes itself: never neutralised.
    fn push_duration(&mut self, duration_ms: Option<u64>) {
        self.text.clear();
        if let Some(duration_ms) = duration_ms {
            let _ = write!(self.text, "{duration_ms}");
        }
        self.record.push_field(self.text.as_bytes());
    }

    fn push_extra_data(
        &mut self,
        extra_data: &serde_json::Map<String, serde_json::Value>,
    ) -> io::Result<()> {
        self.json.clear();
        serde_json::to_writer(&mut self.json, extra_data)?;
        push_neutralised(&mut self.record, &mut self.neutralised, &self.json);
        Ok(())
    }
}

/// Whether a spreadsheet would evaluate `cell` as a formula.
pub(super) fn is_formula_like(cell: &[u8]) -> bool {
    cell.first()
        .is_some_and(|first| FORMULA_TRIGGERS.contains(first))
}

/// Pushes `cell`, with a leading `'` when it is formula-like (`scratch` avoids allocations).
fn push_neutralised(record: &mut ByteRecord, scratch: &mut Vec<u8>, cell: &[u8]) {
    if is_formula_like(cell) {
        scratch.clear();
        scratch.push(b'\'');
        scratch.extend_from_slice(cell);
        record.push_field(scratch);
    } else {
        record.push_field(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};

    fn event() -> AuditEvent {
        AuditEvent {
            id: "log_1".into(),
            tenant_id: "tnt_a".into(),
            timestamp_us: 1_776_967_200_123_456,
            action: Action::Read,
            secret_path: None,
            identity_type: IdentityType::User,
            identity_id: "user:alice@acme.example".into(),
            source_ip: None,
            user_agent: None,
            success: false,
            duration_ms: None,
            request_id: None,
            extra_data: serde_json::Map::new(),
        }
    }

    fn link() -> ChainLink {
        ChainLink {
            seq: 7,
            hash: [0xab; 32],
        }
    }

    fn cells(event: &AuditEvent) -> Vec<String> {
        let mut row = CsvRow::default();
        let record = row.fill(event, &link()).unwrap();
        record
            .iter()
            .map(|cell| String::from_utf8(cell.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn every_trigger_character_is_neutralised_and_nothing_else() {
        for (raw, expected) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@SUM(1)", "'@SUM(1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=1", "a=1"),
            (" =1", " =1"),
            ("'quoted", "'quoted"),
            ("", ""),
        ] {
            let mut ev = event();
            ev.user_agent = Some(raw.into());
            assert_eq!(cells(&ev)[7], expected, "{raw:?}");
        }
    }

    #[test]
    fn absent_values_are_empty_and_empty_extra_data_is_braces() {
        let row = cells(&event());
        assert_eq!(
            row,
            [
                "log_1",
                "2026-04-23T18:00:00.123456Z",
                "read",
                "user",
                "user:alice@acme.example",
                "",
                "",
                "",
                "false",
                "",
                "",
                "{}",
                "7",
                &"ab".repeat(32),
            ]
        );
    }

    #[test]
    fn numbers_and_addresses_are_written_plainly() {
        let mut ev = event();
        ev.duration_ms = Some(u64::MAX);
        ev.source_ip = Some("2001:db8::1".parse().unwrap());
        ev.success = true;
        let row = cells(&ev);
        assert_eq!(row[6], "2001:db8::1");
        assert_eq!(row[8], "true");
        assert_eq!(row[9], "18446744073709551615");
    }

    #[test]
    fn header_matches_the_spec_row() {
        assert_eq!(
            HEADER.join(","),
            "id,timestamp,action,identity_type,identity_id,secret_path,source_ip,user_agent,\
             success,duration_ms,request_id,extra_data,chain_seq,chain_hash"
        );
    }
}
