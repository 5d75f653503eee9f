//! Part-file encoders for exports (SPEC §3.5).
//!
//! A [`PartEncoder`] streams events into one part file: JSONL (one API-shape event per `\n`
//! line) or CSV (RFC 4180, CRLF, the SPEC header row, formula-like cells neutralised — see
//! [`csv_row`]), optionally gzip-compressed. Size and SHA-256 in [`PartStats`] are computed over
//! exactly the bytes handed to the destination writer, so they describe the uploaded object.
//! Memory stays bounded: only fixed-size buffers sit between the events and the destination.

mod csv_row;
mod hashing_writer;

use std::io::{self, BufWriter, Write};

use serde::{Deserialize, Serialize};

use crate::event::{ApiEvent, AuditEvent};
use crate::integrity::chain::ChainLink;
use csv_row::CsvRow;
use hashing_writer::PartStream;

/// Buffer between the encoders and the compressor or destination.
const BUFFER_BYTES: usize = 64 * 1024;

/// Encoding of the events in a part file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One API-shape JSON event per line.
    Jsonl,
    /// RFC 4180 CSV with the SPEC §3.5 header row.
    Csv,
}

/// Compression of a whole part file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// File name suffix: "jsonl", "csv", "jsonl.gz", "csv.gz".
pub fn file_extension(format: ExportFormat, compression: Compression) -> &'static str {
    match (format, compression) {
        (ExportFormat::Jsonl, Compression::None) => "jsonl",
        (ExportFormat::Csv, Compression::None) => "csv",
        (ExportFormat::Jsonl, Compression::Gzip) => "jsonl.gz",
        (ExportFormat::Csv, Compression::Gzip) => "csv.gz",
    }
}

/// Content-Type for uploads: application/x-ndjson, text/csv; gzip → application/gzip.
pub fn content_type(format: ExportFormat, compression: Compression) -> &'static str {
    match (format, compression) {
        (_, Compression::Gzip) => "application/gzip",
        (ExportFormat::Jsonl, Compression::None) => "application/x-ndjson",
        (ExportFormat::Csv, Compression::None) => "text/csv",
    }
}

/// What one finished part file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStats {
    /// Events in the part.
    pub records: u64,
    /// Bytes written to the destination (after compression).
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the bytes as written (after compression).
    pub sha256: String,
}

/// Streams events into one part file written to `out`.
pub struct PartEncoder<W: Write> {
    body: Body<W>,
    records: u64,
}

/// The format-specific encoder in front of the part's byte stream.
enum Body<W: Write> {
    Jsonl(BufWriter<PartStream<W>>),
    Csv {
        writer: Box<csv::Writer<PartStream<W>>>,
        row: CsvRow,
    },
}

impl<W: Write> PartEncoder<W> {
    /// Starts a part (writes the CSV header row for CSV).
    pub fn new(format: ExportFormat, compression: Compression, out: W) -> io::Result<Self> {
        let stream = PartStream::new(compression, out);
        let body = match format {
            ExportFormat::Jsonl => Body::Jsonl(BufWriter::with_capacity(BUFFER_BYTES, stream)),
            ExportFormat::Csv => Body::Csv {
                writer: Box::new(csv_writer_with_header(stream)?),
                row: CsvRow::default(),
            },
        };
        Ok(Self { body, records: 0 })
    }

    /// Appends one event with its link of the tenant's hash chain (a JSONL line or a CSV
    /// record; `chain_seq` and `chain_hash` follow the SPEC §3.1 members).
    pub fn write_event(&mut self, event: &AuditEvent, link: &ChainLink) -> io::Result<()> {
        match &mut self.body {
            Body::Jsonl(buffer) => write_jsonl_line(buffer, event, link)?,
            Body::Csv { writer, row } => writer.write_byte_record(row.fill(event, link)?)?,
        }
        self.records += 1;
        Ok(())
    }

    /// Events written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Finishes compression, flushes, and returns the writer with the part's stats.
    pub fn finish(self) -> io::Result<(W, PartStats)> {
        let stream = match self.body {
            Body::Jsonl(buffer) => buffer.into_inner().map_err(|e| e.into_error())?,
            Body::Csv { writer, .. } => (*writer).into_inner().map_err(|e| e.into_error())?,
        };
        let (out, size_bytes, sha256) = stream.finish()?.finish()?;
        let stats = PartStats {
            records: self.records,
            size_bytes,
            sha256,
        };
        Ok((out, stats))
    }
}

fn csv_writer_with_header<W: Write>(
    stream: PartStream<W>,
) -> io::Result<csv::Writer<PartStream<W>>> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .buffer_capacity(BUFFER_BYTES)
        .from_writer(stream);
    writer.write_record(csv_row::HEADER)?;
    Ok(writer)
}

fn write_jsonl_line<W: Write>(
    buffer: &mut BufWriter<W>,
    event: &AuditEvent,
    link: &ChainLink,
) -> io::Result<()> {
    serde_json::to_writer(&mut *buffer, &ChainedRecord { event, link })?;
    buffer.write_all(b"\n")
}

/// An exported JSONL record: the API shape (SPEC §3.1 order) followed by `chain_seq` and
/// `chain_hash` (lowercase hex).
struct ChainedRecord<'a> {
    event: &'a AuditEvent,
    link: &'a ChainLink,
}

impl Serialize for ChainedRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        ApiEvent(self.event).serialize_entries(&mut map)?;
        map.serialize_entry("chain_seq", &self.link.seq)?;
        map.serialize_entry("chain_hash", &self.link.hash_hex())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};
    use crate::timestamp::format_micros;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::path::Path;
    use std::process::Command;

    const HEADER_LINE: &str = "id,timestamp,action,identity_type,identity_id,secret_path,\
                               source_ip,user_agent,success,duration_ms,request_id,extra_data,\
                               chain_seq,chain_hash";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn extra(value: Value) -> serde_json::Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn minimal(id: &str) -> AuditEvent {
        AuditEvent {
            id: id.into(),
            tenant_id: "tnt_acme".into(),
            timestamp_us: 0,
            action: Action::IdentitySync,
            secret_path: None,
            identity_type: IdentityType::System,
            identity_id: "system:sync".into(),
            source_ip: None,
            user_agent: None,
            success: false,
            duration_ms: None,
            request_id: None,
            extra_data: serde_json::Map::new(),
        }
    }

    /// Awkward events with their expected CSV cells, written out by hand.
    fn awkward_cases() -> Vec<(AuditEvent, [&'static str; 12])> {
        let full = AuditEvent {
            id: "log_01".into(),
            timestamp_us: 1_776_967_200_123_456,
            action: Action::Read,
            secret_path: Some("environments/production/app".into()),
            identity_type: IdentityType::User,
            identity_id: "user:o'brien,\"the\" admin".into(),
            source_ip: Some("10.0.1.50".parse().unwrap()),
            user_agent: Some("=cmd|' /C calc'!A0".into()),
            success: true,
            duration_ms: Some(12),
            request_id: Some("+1".into()),
            extra_data: extra(json!({
                "nested": {"list": [1, "two", {"three": null}], "quote": "say \"hi\", ok"},
                "formula": "=1+1",
                "emoji": "🔐"
            })),
            ..minimal("")
        };
        let absent = AuditEvent {
            identity_id: "-2".into(),
            ..minimal("log_02")
        };
        let multiline = AuditEvent {
            id: "@SUM(1)".into(),
            timestamp_us: 1_700_000_000_000_001,
            action: Action::Write,
            secret_path: Some("a/b".into()),
            identity_type: IdentityType::ServiceAccount,
            identity_id: "\tsa:tabbed".into(),
            source_ip: Some("::1".parse().unwrap()),
            user_agent: Some("line one\nline two\r\nline three".into()),
            success: true,
            duration_ms: Some(0),
            request_id: Some("\rreq".into()),
            extra_data: extra(json!({"multi": "a\r\nb", "ünï": "çødé 日本語"})),
            ..minimal("")
        };
        let unicode = AuditEvent {
            action: Action::PolicyBind,
            secret_path: Some("x".into()),
            identity_type: IdentityType::Group,
            identity_id: "user:zoë@例え.jp 👩‍💻".into(),
            source_ip: Some("2001:db8::42".parse().unwrap()),
            user_agent: Some("Mozilla/5.0 \"quoted\" , comma".into()),
            request_id: Some(String::new()),
            extra_data: extra(json!({"empty": "", "arr": [], "lead": "-x"})),
            ..minimal("log_04")
        };
        vec![
            (
                full,
                [
                    "log_01",
                    "2026-04-23T18:00:00.123456Z",
                    "read",
                    "user",
                    "user:o'brien,\"the\" admin",
                    "environments/production/app",
                    "10.0.1.50",
                    "'=cmd|' /C calc'!A0",
                    "true",
                    "12",
                    "'+1",
                    r#"{"nested":{"list":[1,"two",{"three":null}],"quote":"say \"hi\", ok"},"formula":"=1+1","emoji":"🔐"}"#,
                ],
            ),
            (
                absent,
                [
                    "log_02",
                    "1970-01-01T00:00:00.000000Z",
                    "identity_sync",
                    "system",
                    "'-2",
                    "",
                    "",
                    "",
                    "false",
                    "",
                    "",
                    "{}",
                ],
            ),
            (
                multiline,
                [
                    "'@SUM(1)",
                    "2023-11-14T22:13:20.000001Z",
                    "write",
                    "service_account",
                    "'\tsa:tabbed",
                    "a/b",
                    "::1",
                    "line one\nline two\r\nline three",
                    "true",
                    "0",
                    "'\rreq",
                    r#"{"multi":"a\r\nb","ünï":"çødé 日本語"}"#,
                ],
            ),
            (
                unicode,
                [
                    "log_04",
                    "1970-01-01T00:00:00.000000Z",
                    "policy_bind",
                    "group",
                    "user:zoë@例え.jp 👩‍💻",
                    "x",
                    "2001:db8::42",
                    "Mozilla/5.0 \"quoted\" , comma",
                    "false",
                    "",
                    "",
                    r#"{"empty":"","arr":[],"lead":"-x"}"#,
                ],
            ),
        ]
    }

    /// The chain link the tests give the event at `index`.
    fn link_of(index: usize) -> ChainLink {
        ChainLink {
            seq: index as u64 + 1,
            hash: [index as u8; 32],
        }
    }

    fn awkward_events() -> Vec<AuditEvent> {
        awkward_cases()
            .into_iter()
            .map(|(event, _)| event)
            .collect()
    }

    fn encode(
        format: ExportFormat,
        compression: Compression,
        events: &[AuditEvent],
    ) -> (Vec<u8>, PartStats) {
        let mut encoder = PartEncoder::new(format, compression, Vec::new()).unwrap();
        for (index, event) in events.iter().enumerate() {
            encoder.write_event(event, &link_of(index)).unwrap();
        }
        assert_eq!(encoder.records(), events.len() as u64);
        encoder.finish().unwrap()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn assert_stats_describe(stats: &PartStats, bytes: &[u8], records: usize) {
        assert_eq!(stats.records, records as u64);
        assert_eq!(stats.size_bytes, bytes.len() as u64);
        assert_eq!(stats.sha256, sha256_hex(bytes));
    }

    fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip_decompress_with_command(path: &Path) -> Vec<u8> {
        let output = Command::new("gzip")
            .arg("-d")
            .arg("-c")
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        output.stdout
    }

    fn gunzip_with_flate2(bytes: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .unwrap();
        plain
    }

    fn python_csv_rows(path: &Path) -> Vec<Vec<String>> {
        let script = "import csv, json, sys\n\
                      with open(sys.argv[1], newline='', encoding='utf-8') as f:\n    \
                          print(json.dumps(list(csv.reader(f))))";
        let output = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn csv_crate_rows(bytes: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|record| record.unwrap().iter().map(String::from).collect())
            .collect()
    }

    fn expected_csv_rows() -> Vec<Vec<String>> {
        let header = HEADER_LINE.split(',').map(String::from).collect();
        let rows = awkward_cases()
            .into_iter()
            .enumerate()
            .map(|(index, (_, cells))| {
                let link = link_of(index);
                let mut row: Vec<String> = cells.iter().map(|cell| cell.to_string()).collect();
                row.extend([link.seq.to_string(), link.hash_hex()]);
                row
            });
        std::iter::once(header).chain(rows).collect()
    }

    #[test]
    fn encoders_can_move_to_blocking_threads() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<PartEncoder<std::fs::File>>();
        assert_send::<PartStats>();
    }

    #[test]
    fn extensions_content_types_and_serde_names() {
        use Compression::{Gzip, None as Plain};
        use ExportFormat::{Csv, Jsonl};
        assert_eq!(file_extension(Jsonl, Plain), "jsonl");
        assert_eq!(file_extension(Csv, Plain), "csv");
        assert_eq!(file_extension(Jsonl, Gzip), "jsonl.gz");
        assert_eq!(file_extension(Csv, Gzip), "csv.gz");
        assert_eq!(content_type(Jsonl, Plain), "application/x-ndjson");
        assert_eq!(content_type(Csv, Plain), "text/csv");
        assert_eq!(content_type(Jsonl, Gzip), "application/gzip");
        assert_eq!(content_type(Csv, Gzip), "application/gzip");
        assert_eq!(serde_json::to_string(&Jsonl).unwrap(), r#""jsonl""#);
        assert_eq!(
            serde_json::from_str::<ExportFormat>(r#""csv""#).unwrap(),
            Csv
        );
        assert_eq!(
            serde_json::from_str::<Compression>(r#""gzip""#).unwrap(),
            Gzip
        );
        assert_eq!(
            serde_json::to_string(&Compression::default()).unwrap(),
            r#""none""#
        );
        assert!(serde_json::from_str::<ExportFormat>(r#""Parquet""#).is_err());
    }

    #[test]
    fn jsonl_lines_parse_back_to_the_api_shape() {
        let events = awkward_events();
        let (bytes, stats) = encode(ExportFormat::Jsonl, Compression::None, &events);
        assert_stats_describe(&stats, &bytes, events.len());
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.ends_with('\n') && !text.contains('\r'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), events.len());
        let mut spec_order = crate::event::API_FIELDS.to_vec();
        spec_order.extend(["chain_seq", "chain_hash"]);
        for (index, (line, event)) in lines.iter().zip(&events).enumerate() {
            let parsed: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            let keys: Vec<&str> = parsed.keys().map(String::as_str).collect();
            assert_eq!(keys, spec_order);
            assert_eq!(parsed["id"], json!(event.id));
            assert_eq!(
                parsed["timestamp"],
                json!(format_micros(event.timestamp_us))
            );
            assert_eq!(parsed["action"], json!(event.action.as_str()));
            assert_eq!(parsed["secret_path"], json!(event.secret_path));
            assert_eq!(parsed["identity_type"], json!(event.identity_type.as_str()));
            assert_eq!(parsed["identity_id"], json!(event.identity_id));
            let ip = event.source_ip.map(|ip| ip.to_string());
            assert_eq!(parsed["source_ip"], json!(ip));
            assert_eq!(parsed["user_agent"], json!(event.user_agent));
            assert_eq!(parsed["success"], json!(event.success));
            assert_eq!(parsed["duration_ms"], json!(event.duration_ms));
            assert_eq!(parsed["request_id"], json!(event.request_id));
            assert_eq!(
                parsed["extra_data"],
                Value::Object(event.extra_data.clone())
            );
            let api = serde_json::to_string(&event.api()).unwrap();
            let link = link_of(index);
            assert_eq!(
                *line,
                format!(
                    "{},\"chain_seq\":{},\"chain_hash\":\"{}\"}}",
                    &api[..api.len() - 1],
                    link.seq,
                    link.hash_hex()
                )
            );
        }
        assert_eq!(
            lines[0].split(',').take(3).collect::<Vec<_>>(),
            [
                r#"{"id":"log_01""#,
                r#""timestamp":"2026-04-23T18:00:00.123456Z""#,
                r#""action":"read""#
            ]
        );
    }

    #[test]
    fn csv_round_trips_through_python_and_the_csv_crate() {
        let events = awkward_events();
        let (bytes, stats) = encode(ExportFormat::Csv, Compression::None, &events);
        assert_stats_describe(&stats, &bytes, events.len());
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "part-0001.csv", &bytes);
        let expected = expected_csv_rows();
        assert_eq!(python_csv_rows(&path), expected);
        assert_eq!(csv_crate_rows(&bytes), expected);
    }

    #[test]
    fn csv_starts_with_the_spec_header_and_ends_records_with_crlf() {
        let (bytes, _) = encode(ExportFormat::Csv, Compression::None, &[minimal("log_1")]);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER_LINE}\r\nlog_1,1970-01-01T00:00:00.000000Z,identity_sync,system,\
                 system:sync,,,,false,,,{{}},1,{}\r\n",
                "00".repeat(32)
            )
        );
    }

    #[test]
    fn gzip_parts_decompress_to_the_plain_encoding() {
        let events = awkward_events();
        let dir = tempfile::tempdir().unwrap();
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            let (plain, _) = encode(format, Compression::None, &events);
            let file = std::fs::File::create(dir.path().join("part.gz")).unwrap();
            let mut encoder = PartEncoder::new(format, Compression::Gzip, file).unwrap();
            for (index, event) in events.iter().enumerate() {
                encoder.write_event(event, &link_of(index)).unwrap();
            }
            let (_file, stats) = encoder.finish().unwrap();
            let gz = std::fs::read(dir.path().join("part.gz")).unwrap();
            assert_stats_describe(&stats, &gz, events.len());
            assert_eq!(&gz[..2], [0x1f, 0x8b]);
            assert_eq!(
                gzip_decompress_with_command(&dir.path().join("part.gz")),
                plain
            );
            assert_eq!(gunzip_with_flate2(&gz), plain);
        }
    }

    #[test]
    fn empty_parts_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let (jsonl, stats) = encode(ExportFormat::Jsonl, Compression::None, &[]);
        assert!(jsonl.is_empty());
        assert_eq!(stats.sha256, EMPTY_SHA256);
        assert_stats_describe(&stats, &jsonl, 0);
        let (csv, stats) = encode(ExportFormat::Csv, Compression::None, &[]);
        assert_eq!(csv, format!("{HEADER_LINE}\r\n").into_bytes());
        assert_stats_describe(&stats, &csv, 0);
        for (format, plain) in [(ExportFormat::Jsonl, jsonl), (ExportFormat::Csv, csv)] {
            let (gz, stats) = encode(format, Compression::Gzip, &[]);
            assert_stats_describe(&stats, &gz, 0);
            let path = write_file(dir.path(), "empty.gz", &gz);
            assert_eq!(gzip_decompress_with_command(&path), plain);
            assert_eq!(gunzip_with_flate2(&gz), plain);
        }
    }

    /// Discards bytes, counting them where the test can see them while the encoder runs.
    struct CountingOut(std::rc::Rc<std::cell::Cell<u64>>);

    impl Write for CountingOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.set(self.0.get() + buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn varied_event(rng: &mut fastrand::Rng, index: u64) -> AuditEvent {
        let token: String = (0..24).map(|_| rng.alphanumeric()).collect();
        AuditEvent {
            id: format!("log_{index:08}{token}"),
            timestamp_us: 1_776_967_200_000_000 + rng.i64(0..1_000_000_000),
            secret_path: Some(format!("env/prod/svc-{}", rng.u32(..))),
            user_agent: Some(format!("agent/{token}")),
            request_id: Some(format!("req_{}", rng.u64(..))),
            duration_ms: Some(rng.u64(0..10_000)),
            ..minimal("")
        }
    }

    #[test]
    fn parts_stream_with_only_a_bounded_amount_pending() {
        let mut rng = fastrand::Rng::with_seed(7);
        let events: Vec<AuditEvent> = (0..20_000).map(|i| varied_event(&mut rng, i)).collect();
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            for compression in [Compression::None, Compression::Gzip] {
                let received = std::rc::Rc::new(std::cell::Cell::new(0));
                let out = CountingOut(received.clone());
                let mut encoder = PartEncoder::new(format, compression, out).unwrap();
                for (index, event) in events.iter().enumerate() {
                    encoder.write_event(event, &link_of(index)).unwrap();
                }
                let before_finish = received.get();
                let (_, stats) = encoder.finish().unwrap();
                assert_eq!(stats.size_bytes, received.get());
                let pending = stats.size_bytes - before_finish;
                assert!(stats.size_bytes > 1_000_000, "{format:?} {compression:?}");
                assert!(
                    pending < 256 * 1024,
                    "{format:?} {compression:?}: {pending}"
                );
            }
        }
    }

    struct FailingOut;

    impl Write for FailingOut {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn destination_errors_surface() {
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            for compression in [Compression::None, Compression::Gzip] {
                let mut encoder = PartEncoder::new(format, compression, FailingOut).unwrap();
                encoder.write_event(&minimal("log_1"), &link_of(0)).unwrap();
                let error = encoder.finish().err().unwrap();
                assert_eq!(error.to_string(), "disk full", "{format:?} {compression:?}");
            }
        }
    }
}
