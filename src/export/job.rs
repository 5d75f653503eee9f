//! The export data model shared by the REST API, the standalone runner and the Kubernetes
//! controller: what to export ([`ExportSpec`]), how far a job got ([`Checkpoint`]), and what it
//! produced ([`ExportStatus`], [`FileEntry`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{Compression, ExportFormat};
use crate::event::FieldErrors;
use crate::query::{self, LogFilters};
use crate::store::search::SortKey;

/// Default and maximum of `max_records_per_file` (SPEC §3.5).
pub const DEFAULT_MAX_RECORDS_PER_FILE: u64 = 1_000_000;
/// Largest accepted `max_records_per_file`.
pub const MAX_MAX_RECORDS_PER_FILE: u64 = 100_000_000;

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

    /// The type named `text` (`s3`, `gcs`, `azure_blob`, `file`).
    pub fn parse(text: &str) -> Option<Self> {
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
    /// Set on the runs of a continuous export (`export::schedule`): events older than `from`
    /// that were ingested after the previous run's snapshot are exported too (late events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<LateEvents>,
}

/// The late events a scheduled run includes besides its window `[from, to)`: events with a
/// timestamp in `[since, from)` ingested at or after `since_seq` (the previous run's snapshot,
/// which exported everything older that was there then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvents {
    /// The schedule's start (its first window's start), RFC 3339 UTC with microseconds.
    pub since: String,
    /// The previous run's snapshot: its events had sequence numbers below this.
    pub since_seq: u64,
}

/// What a scheduled run's manifest says about its late events (they are the first records of
/// its first parts: older than the window, they sort before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateSummary {
    pub count: u64,
    /// Only events ingested at or after this sequence number were late for this run.
    pub since_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_event: Option<RecordBound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<RecordBound>,
}

impl ExportSpec {
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
        if let Some(late) = &self.late {
            let mut errors = FieldErrors::default();
            match (
                crate::timestamp::parse_rfc3339_micros(&late.since),
                filters.from_us,
            ) {
                (Ok(since), Some(window_from)) => {
                    filters.from_us = Some(since.min(window_from));
                    filters.late = Some((window_from, late.since_seq));
                }
                _ => {
                    errors.add("late.since", "must be an RFC 3339 timestamp");
                    return Err(errors);
                }
            }
        }
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
    /// The part's first record (absent for parts recorded before this field existed, and in
    /// the operator's resource status, which does not keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_event: Option<RecordBound>,
    /// The part's last record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<RecordBound>,
}

/// The first or last record of a part file: its event id and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBound {
    pub id: String,
    pub timestamp: String,
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
    }
}
