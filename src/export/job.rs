//! The export data model shared by the REST API, the standalone runner and the Kubernetes
//! controller: what to export ([`ExportSpec`]), how far a job got ([`Checkpoint`]), and what it
//! produced ([`ExportStatus`], [`FileEntry`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{Compression, ExportFormat};
use crate::event::{FieldErrors, check_secret_path};
use crate::query::{self, LogFilters};
use crate::store::search::SortKey;
use crate::timestamp;

/// Default and maximum of `max_records_per_file` (SPEC §3.5).
pub const DEFAULT_MAX_RECORDS_PER_FILE: u64 = 1_000_000;
const MAX_MAX_RECORDS_PER_FILE: u64 = 100_000_000;

/// The §3.1 filters an export accepts (no paging, no time range: those have their own fields).
pub const EXPORT_FILTER_NAMES: &[&str] = &[
    "action",
    "identity_id",
    "identity_type",
    "path_prefix",
    "secret_path",
    "success",
    "source_ip",
    "request_id",
    "q",
];

/// Where the part files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationType {
    S3,
    Gcs,
    AzureBlob,
    /// A local directory (standalone and development use); `bucket` is a directory relative to
    /// `[export] file_root` (see [`check_file_bucket`] and [`super::policy`]).
    File,
}

impl DestinationType {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationType::S3 => "s3",
            DestinationType::Gcs => "gcs",
            DestinationType::AzureBlob => "azure_blob",
            DestinationType::File => "file",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::S3, Self::Gcs, Self::AzureBlob, Self::File]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// The destination of an export: a bucket (container, directory) and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    #[serde(rename = "type")]
    pub kind: DestinationType,
    pub bucket: String,
    /// Prepended verbatim to every object key (`scaivault/2026-01/`); may be empty.
    #[serde(default)]
    pub prefix: String,
    /// ScaiVault secret path of the destination credentials (optional only for `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_path: Option<String>,
}

/// A validated export request of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub tenant_id: String,
    /// Inclusive start, RFC 3339 UTC with microseconds.
    pub from: String,
    /// Exclusive end.
    pub to: String,
    pub format: ExportFormat,
    #[serde(default)]
    pub compression: Compression,
    /// §3.1 filter parameters as given (names from [`EXPORT_FILTER_NAMES`]).
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    pub destination: Destination,
    pub max_records_per_file: u64,
}

impl ExportSpec {
    /// Validates a `POST /v1/audit/export` body (SPEC §3.5) for `tenant_id`.
    pub fn from_request(body: &Value, tenant_id: &str) -> Result<ExportSpec, FieldErrors> {
        let mut errors = FieldErrors::default();
        let Some(object) = body.as_object() else {
            errors.add("body", "must be a JSON object");
            return Err(errors);
        };
        const KNOWN: &[&str] = &[
            "from",
            "to",
            "format",
            "compression",
            "filters",
            "destination",
            "max_records_per_file",
        ];
        for key in object.keys() {
            if !KNOWN.contains(&key.as_str()) {
                errors.add(key.clone(), "is not a known field");
            }
        }
        let from = required_time(object.get("from"), "from", &mut errors);
        let to = required_time(object.get("to"), "to", &mut errors);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            errors.add("to", "must be after from");
        }
        let format = match object.get("format") {
            None => {
                errors.add("format", "is required (jsonl or csv)");
                None
            }
            Some(value) => match value.as_str() {
                Some("jsonl") => Some(ExportFormat::Jsonl),
                Some("csv") => Some(ExportFormat::Csv),
                _ => {
                    errors.add("format", "must be jsonl or csv");
                    None
                }
            },
        };
        let compression = match object.get("compression") {
            None | Some(Value::Null) => Compression::None,
            Some(value) => match value.as_str() {
                Some("none") => Compression::None,
                Some("gzip") => Compression::Gzip,
                _ => {
                    errors.add("compression", "must be none or gzip");
                    Compression::None
                }
            },
        };
        let max_records_per_file = match object.get("max_records_per_file") {
            None | Some(Value::Null) => DEFAULT_MAX_RECORDS_PER_FILE,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=MAX_MAX_RECORDS_PER_FILE).contains(&n) => n,
                _ => {
                    errors.add(
                        "max_records_per_file",
                        format!("must be an integer from 1 to {MAX_MAX_RECORDS_PER_FILE}"),
                    );
                    DEFAULT_MAX_RECORDS_PER_FILE
                }
            },
        };
        let filters = parse_filters(object.get("filters"), &mut errors);
        let destination = parse_destination(object.get("destination"), &mut errors);
        match (from, to, format, destination) {
            (Some(from), Some(to), Some(format), Some(destination)) if errors.is_empty() => {
                Ok(ExportSpec {
                    tenant_id: tenant_id.to_string(),
                    from: timestamp::format_micros(from),
                    to: timestamp::format_micros(to),
                    format,
                    compression,
                    filters,
                    destination,
                    max_records_per_file,
                })
            }
            _ => Err(errors),
        }
    }

    /// The query filters of this export (time range included).
    pub fn log_filters(&self) -> Result<LogFilters, FieldErrors> {
        let mut pairs: Vec<(String, String)> = self
            .filters
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        pairs.push(("from".into(), self.from.clone()));
        pairs.push(("to".into(), self.to.clone()));
        let mut names: Vec<&str> = EXPORT_FILTER_NAMES.to_vec();
        names.extend(["from", "to"]);
        let mut filters = query::parse_log_params(&pairs, &names)?.filters;
        // The query API reads `secret_path` from the trail's URL, not from parameters.
        filters.secret_path = self.filters.get("secret_path").cloned();
        Ok(filters)
    }

    /// The `extra_data` of this export's `export_created` audit event (REST and operator alike).
    pub fn export_created_details(
        &self,
        export_id: &str,
        estimated_records: u64,
    ) -> serde_json::Map<String, Value> {
        let mut extra = serde_json::Map::new();
        extra.insert("export_id".into(), Value::from(export_id));
        extra.insert("format".into(), serde_json::json!(self.format));
        extra.insert(
            "destination_type".into(),
            serde_json::json!(self.destination.kind),
        );
        extra.insert(
            "bucket".into(),
            Value::from(self.destination.bucket.as_str()),
        );
        extra.insert(
            "prefix".into(),
            Value::from(self.destination.prefix.as_str()),
        );
        extra.insert("from".into(), Value::from(self.from.as_str()));
        extra.insert("to".into(), Value::from(self.to.as_str()));
        extra.insert("estimated_records".into(), Value::from(estimated_records));
        extra
    }

    /// Object key of part `number` (1-based): `{prefix}part-0001.jsonl[.gz]`.
    pub fn part_key(&self, number: usize) -> String {
        format!(
            "{}part-{number:04}.{}",
            self.destination.prefix,
            super::format::file_extension(self.format, self.compression)
        )
    }

    /// Object key of the manifest, written last.
    pub fn manifest_key(&self) -> String {
        format!("{}manifest.json", self.destination.prefix)
    }
}

fn required_time(value: Option<&Value>, field: &str, errors: &mut FieldErrors) -> Option<i64> {
    let Some(value) = value else {
        errors.add(field, "is required (RFC 3339 timestamp)");
        return None;
    };
    match value.as_str().map(timestamp::parse_rfc3339_micros) {
        Some(Ok(micros)) => Some(micros),
        Some(Err(problem)) => {
            errors.add(field, problem);
            None
        }
        None => {
            errors.add(field, "must be an RFC 3339 timestamp string");
            None
        }
    }
}

fn parse_filters(value: Option<&Value>, errors: &mut FieldErrors) -> BTreeMap<String, String> {
    let mut filters = BTreeMap::new();
    let object = match value {
        None | Some(Value::Null) => return filters,
        Some(Value::Object(object)) => object,
        Some(_) => {
            errors.add("filters", "must be an object of §3.1 filter parameters");
            return filters;
        }
    };
    for (name, value) in object {
        let field = format!("filters.{name}");
        if !EXPORT_FILTER_NAMES.contains(&name.as_str()) {
            errors.add(field, "is not an export filter");
            continue;
        }
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Bool(flag) => flag.to_string(),
            Value::Array(items) if name == "action" => {
                let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                match names {
                    Some(names) => names.join(","),
                    None => {
                        errors.add(field, "must be a string or a list of strings");
                        continue;
                    }
                }
            }
            _ => {
                errors.add(field, "must be a string");
                continue;
            }
        };
        filters.insert(name.clone(), text);
    }
    if errors.is_empty() {
        let pairs: Vec<(String, String)> = filters
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        if let Err(problems) = query::parse_log_params(&pairs, EXPORT_FILTER_NAMES) {
            errors.absorb("filters", problems);
        }
        if let Some(path) = filters.get("secret_path")
            && let Err(problem) = check_secret_path(path)
        {
            errors.add("filters.secret_path", problem);
        }
    }
    filters
}

fn parse_destination(value: Option<&Value>, errors: &mut FieldErrors) -> Option<Destination> {
    let Some(object) = value.and_then(Value::as_object) else {
        errors.add(
            "destination",
            "is required (an object with type and bucket)",
        );
        return None;
    };
    let before = errors.0.len();
    for key in object.keys() {
        match key.as_str() {
            "type" | "bucket" | "prefix" | "credentials_path" => {}
            _ => errors.add(
                format!("destination.{key}"),
                "is not allowed: credentials only come from credentials_path",
            ),
        }
    }
    let kind = match object.get("type").and_then(Value::as_str) {
        Some(text) => DestinationType::parse(text),
        None => None,
    };
    if kind.is_none() {
        errors.add("destination.type", "must be s3, gcs, azure_blob or file");
    }
    let bucket = object
        .get("bucket")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if bucket.is_empty() {
        errors.add("destination.bucket", "is required");
    } else if let Some(kind) = kind
        && let Err(problem) = check_bucket(kind, bucket)
    {
        errors.add("destination.bucket", problem);
    }
    let prefix = match object.get("prefix") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(prefix)) => prefix.clone(),
        Some(_) => {
            errors.add("destination.prefix", "must be a string");
            String::new()
        }
    };
    if let Err(problem) = check_prefix(&prefix) {
        errors.add("destination.prefix", problem);
    }
    let credentials_path = match object.get("credentials_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) => {
            if let Err(problem) = check_secret_path(path) {
                errors.add("destination.credentials_path", problem);
            }
            Some(path.clone())
        }
        Some(_) => {
            errors.add("destination.credentials_path", "must be a string");
            None
        }
    };
    if credentials_path.is_none() && kind.is_some_and(|kind| kind != DestinationType::File) {
        errors.add(
            "destination.credentials_path",
            "is required: the ScaiVault secret path holding the destination credentials",
        );
    }
    match kind {
        Some(kind) if errors.0.len() == before => Some(Destination {
            kind,
            bucket: bucket.to_string(),
            prefix,
            credentials_path,
        }),
        _ => None,
    }
}

/// Bucket names: S3/GCS 3–63 of `a-z0-9.-`, Azure containers 3–63 of `a-z0-9-`; a `file`
/// destination is a directory relative to the server's file root ([`check_file_bucket`]).
fn check_bucket(kind: DestinationType, bucket: &str) -> Result<(), &'static str> {
    match kind {
        DestinationType::File => check_file_bucket(bucket),
        _ => {
            let allowed = |c: char| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || c == '-'
                    || (c == '.' && kind != DestinationType::AzureBlob)
                    || (c == '_' && kind == DestinationType::Gcs)
            };
            let edges_ok = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !(3..=63).contains(&bucket.len()) || !bucket.chars().all(allowed) || !edges_ok {
                return Err(
                    "must be 3-63 lowercase letters, digits and hyphens (dots for s3/gcs), \
                     starting and ending with a letter or digit",
                );
            }
            Ok(())
        }
    }
}

/// Most `/`-separated directories in the bucket of a `file` destination.
const MAX_FILE_BUCKET_SEGMENTS: usize = 8;

/// The bucket of a `file` destination: a directory relative to `[export] file_root`, named like
/// an S3 bucket (3–63 of `a-z 0-9 . -`, starting and ending with a letter or digit), optionally
/// followed by `/`-separated sub-directories of the same characters (1–63 each). No absolute
/// path, no `.` or `..`, no hidden names, at most 8 levels.
pub fn check_file_bucket(bucket: &str) -> Result<(), &'static str> {
    const GRAMMAR: &str = "must be a directory relative to the file root: an S3-style bucket name \
                           (3-63 of a-z 0-9 . -, starting and ending with a letter or digit), \
                           optionally followed by /sub-directories of the same characters \
                           (no absolute path, no . or .. segments, at most 8 levels)";
    if bucket.starts_with('/') || bucket.split('/').count() > MAX_FILE_BUCKET_SEGMENTS {
        return Err(GRAMMAR);
    }
    let segment_ok = |segment: &str, min: usize| {
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        (min..=63).contains(&segment.len())
            && segment.chars().all(allowed)
            && segment.starts_with(|c: char| c.is_ascii_alphanumeric())
            && segment.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let mut segments = bucket.split('/');
    let first_ok = segments.next().is_some_and(|first| segment_ok(first, 3));
    if first_ok && segments.all(|segment| segment_ok(segment, 1)) {
        Ok(())
    } else {
        Err(GRAMMAR)
    }
}

/// Prefixes: at most 512 bytes, relative, no `.`/`..` segments, no control characters.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.len() > 512 {
        return Err("must be at most 512 bytes");
    }
    if prefix.starts_with('/') {
        return Err("must not start with /");
    }
    if prefix.chars().any(char::is_control) || prefix.contains('\\') {
        return Err("must not contain control characters or backslashes");
    }
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err("must not contain . or .. segments");
    }
    Ok(())
}

/// Lifecycle of an export job (SPEC §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportPhase {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ExportPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportPhase::Pending => "pending",
            ExportPhase::Running => "running",
            ExportPhase::Completed => "completed",
            ExportPhase::Failed => "failed",
            ExportPhase::Cancelled => "cancelled",
        }
    }

    /// Completed, failed or cancelled: nothing more happens to the job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExportPhase::Completed | ExportPhase::Failed | ExportPhase::Cancelled
        )
    }
}

/// One uploaded part file, as reported in status and manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub key: String,
    pub size_bytes: u64,
    pub records: u64,
    pub sha256: String,
}

/// Where a job stands: enough to resume after the last fully uploaded part with neither
/// duplicate nor missing records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The snapshot: only events with a sequence number below this are exported.
    pub snapshot_seq: u64,
    /// Parts uploaded so far, in order.
    pub files: Vec<FileEntry>,
    /// Sort position (timestamp, sequence) of the last record of the last uploaded part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<SortKey>,
}

impl Checkpoint {
    /// A fresh checkpoint for a job starting on a store whose committed sequence is `committed`.
    pub fn start(committed: u64) -> Self {
        Checkpoint {
            snapshot_seq: committed,
            files: Vec::new(),
            after: None,
        }
    }

    /// Records uploaded so far.
    pub fn records(&self) -> u64 {
        self.files.iter().map(|file| file.records).sum()
    }
}

/// Why a job failed: a stable code and a message a human can act on (never a secret value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExportFailure {
    pub code: String,
    pub message: String,
}

impl ExportFailure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ExportFailure {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Status of a job as the REST API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStatus {
    pub phase: ExportPhase,
    pub estimated_records: u64,
    pub record_count: u64,
    pub files: Vec<FileEntry>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExportFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(change: Value) -> Value {
        let mut body = json!({
            "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "format": "csv",
            "destination": {"type": "s3", "bucket": "acme-audit", "prefix": "scaivault/2026-01/",
                            "credentials_path": "infra/aws/audit-export-writer"},
        });
        for (key, value) in change.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        body
    }

    fn problems(change: Value) -> Vec<String> {
        match ExportSpec::from_request(&request(change), "tnt_acme") {
            Ok(spec) => panic!("accepted: {spec:?}"),
            Err(errors) => errors.0.into_keys().collect(),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_spec_with_defaults_and_normalised_times() {
        let spec = ExportSpec::from_request(
            &request(json!({"filters": {"action": ["read", "write"], "success": true}})),
            "tnt_acme",
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(spec.from, "2026-01-01T00:00:00.000000Z");
        assert_eq!(spec.compression, Compression::None);
        assert_eq!(spec.max_records_per_file, DEFAULT_MAX_RECORDS_PER_FILE);
        assert_eq!(spec.filters["action"], "read,write");
        assert_eq!(spec.filters["success"], "true");
        assert_eq!(spec.part_key(12), "scaivault/2026-01/part-0012.csv");
        let filters = spec
            .log_filters()
            .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(filters.actions.len(), 2);
        assert_eq!(filters.success, Some(true));
        assert!(filters.from_us.is_some() && filters.to_us.is_some());
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        assert_eq!(problems(json!({"from": "2026-03-01T00:00:00Z"})), ["to"]);
        assert_eq!(
            problems(json!({"format": "xml", "compression": "zip"})),
            ["compression", "format"]
        );
        assert_eq!(
            problems(json!({"filters": {"secret_path": "/bad/"}})),
            ["filters.secret_path"]
        );
        assert_eq!(
            problems(
                json!({"destination": {"type": "gcs", "bucket": "b", "credentials_path": "a"}})
            ),
            ["destination.bucket"]
        );
        assert_eq!(
            problems(
                json!({"destination": {"type": "azure_blob", "bucket": "with.dot",
                                            "credentials_path": "a/b"}})
            ),
            ["destination.bucket"]
        );
        assert_eq!(
            problems(json!({"destination": {"type": "s3", "bucket": "acme-audit",
                                            "credentials_path": "a/b", "secret_access_key": "x"}})),
            ["destination.secret_access_key"]
        );
    }

    #[test]
    fn file_buckets_are_relative_s3_style_names() {
        for bucket in ["audit", "acme-audit/2026", "a.b/c/d-e/f", "abc/1"] {
            assert_eq!(check_file_bucket(bucket), Ok(()), "{bucket}");
        }
        for bucket in [
            "/data/exports/jobs",
            "/tmp",
            "ab",
            "audit/../data",
            "audit/..",
            "audit/.",
            "audit/.hidden",
            "audit/",
            "audit//x",
            "Audit",
            "au_dit",
            "audit/sub dir",
            "audit\\x",
            "a.b/c/d/e/f/g/h/i/j",
            "",
        ] {
            assert!(check_file_bucket(bucket).is_err(), "{bucket}");
        }
        assert_eq!(
            problems(json!({"destination": {"type": "file", "bucket": "/data/exports/jobs"}})),
            ["destination.bucket"]
        );
    }

    #[test]
    fn prefixes_cannot_escape_or_hide_control_characters() {
        for prefix in ["../x/", "a/./b/", "/abs/", "tab\there/", "back\\slash/"] {
            assert!(check_prefix(prefix).is_err(), "{prefix}");
        }
        for prefix in ["", "scaivault/2026-01/", "flat-", "a..b/"] {
            assert!(check_prefix(prefix).is_ok(), "{prefix}");
        }
    }
}
