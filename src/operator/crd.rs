//! The `AuditExport` custom resource (SPEC §5): its spec mirrors the body of
//! `POST /v1/audit/export` in camelCase, its status reports the export job.
//!
//! Doc comments on the types below are user documentation: they become the CRD's schema
//! descriptions, which `kubectl explain auditexport.spec` prints.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "audit.scailabs.ai";

/// An export of one tenant's audit events in a time range to object storage (S3, GCS or Azure
/// Blob), as JSONL or CSV part files plus a manifest. The operator runs the export as soon as
/// the resource is created and reports progress in `status`; `spec` cannot change once the
/// export has started. Deleting the resource cancels a running export and removes its
/// incomplete uploads (files of a completed export are kept).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "audit.scailabs.ai",
    version = "v1alpha1",
    kind = "AuditExport",
    plural = "auditexports",
    singular = "auditexport",
    shortname = "aex",
    category = "scaivault",
    namespaced,
    status = "AuditExportStatus",
    derive = "PartialEq",
    doc = "An export of one tenant's ScaiVault audit events in a time range to object storage (S3, GCS or Azure Blob) as JSONL or CSV files. The scaivault-audit operator runs it and reports progress in status.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "True once the export completed (kubectl wait --for=condition=Ready)"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Pending, Running, Completed, Failed or Cancelled"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId", description = "Tenant whose events are exported"),
    printcolumn(name = "Destination", type_ = "string", json_path = ".spec.destination.type", description = "s3, gcs, azure_blob or file"),
    printcolumn(name = "Records", type_ = "integer", json_path = ".status.recordCount", description = "Events exported so far"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Export ID", type_ = "string", json_path = ".status.exportId", description = "The export's id in the REST API", priority = "1"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", description = "Why the export is (not) ready", priority = "1"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec == oldSelf.spec").message("spec is immutable once the export has started (status.startedAt is set): create a new AuditExport instead").reason(Reason::FieldValueForbidden),
)]
#[x_kube(validation = Rule::new("timestamp(self.from) < timestamp(self.to)").message("from must be before to").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct AuditExportSpec {
    /// Tenant whose events are exported, e.g. `tnt_acme`. Tenants never see each other's exports.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub tenant_id: String,
    /// Start of the time range (inclusive), an RFC 3339 timestamp such as `2026-01-01T00:00:00Z`.
    #[schemars(extend("format" = "date-time"))]
    pub from: String,
    /// End of the time range (exclusive), an RFC 3339 timestamp after `from`.
    #[schemars(extend("format" = "date-time"))]
    pub to: String,
    /// File format: `jsonl` (one event per line, the REST API's shape) or `csv` (RFC 4180 with
    /// a header row).
    pub format: ExportFileFormat,
    /// Compression of each part file: `none` (default) or `gzip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<ExportCompression>,
    /// Which events to export, with the same meaning as the filters of `GET /v1/audit/logs`.
    /// All given filters must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<ExportFilters>,
    /// Where the files are written.
    pub destination: ExportDestination,
    /// Most events in one part file (default 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub max_records_per_file: Option<u64>,
}

/// Export file format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFileFormat {
    Jsonl,
    Csv,
}

/// Part file compression.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportCompression {
    None,
    Gzip,
}

/// Event filters (the filters of `GET /v1/audit/logs`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportFilters {
    /// One action or a comma-separated list, e.g. `read,write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Exact identity, e.g. `sa:reporting-service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<String>,
    /// `user`, `service_account`, `group` or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_type: Option<String>,
    /// Plain string prefix of the secret path (end it with `/` to match whole segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Exact secret path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_path: Option<String>,
    /// Only successful (`true`) or only failed (`false`) requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// Source IP address, or a CIDR block such as `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Exact request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Free-text search over user agent, secret path, identity and extra data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// The object-storage destination. Credentials are never given here: `credentialsPath` names
/// the ScaiVault secret that holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.type == 'file' || has(self.credentialsPath)").message("credentialsPath is required for s3, gcs and azure_blob destinations").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.type != 'file' || self.bucket.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?){0,7}$')").message("a file destination's bucket is a directory relative to the server's [export] file_root: a bucket-style name, optionally with /sub-directories").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.type == 'file' || self.bucket.matches('^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')").message("bucket must be 3-63 lowercase letters, digits, hyphens or dots").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.type != 'azure_blob' || self.bucket.matches('^[a-z0-9-]+$')").message("an Azure container name has only lowercase letters, digits and hyphens").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct ExportDestination {
    /// `s3`, `gcs` or `azure_blob` (`file`, a directory on the operator's volume, is for
    /// development).
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    /// Bucket (S3, GCS) or container (Azure Blob) name; for `file`, a directory relative to
    /// the server's `[export] file_root` (e.g. `audit` or `audit/2026`).
    pub bucket: String,
    /// Prepended to every object key, e.g. `scaivault/2026-01/`. An export never overwrites
    /// another export's files under the same prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// ScaiVault secret path of the upload credentials, e.g.
    /// `tenants/tnt_acme/aws/audit-export-writer`; it must lie under one of the server's
    /// `[export] credentials_path_prefixes` (default `tenants/{tenant_id}/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[a-z0-9_-]+(/[a-z0-9_-]+)*$")
    )]
    pub credentials_path: Option<String>,
}

/// Destination type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    S3,
    Gcs,
    AzureBlob,
    File,
}

/// What the operator reports about the export.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditExportStatus {
    /// `Pending` (accepted, waiting to run), `Running`, `Completed`, `Failed` or `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExportJobPhase>,
    /// The export's id in the REST API (`GET /v1/audit/exports/{exportId}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// Events matching the export when it was accepted (an estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_records: Option<u64>,
    /// Events written so far; the total once `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_count: Option<u64>,
    /// The first part files uploaded so far, in order: at most 10, so a large export keeps its
    /// status small. `fileCount` counts them all; the manifest lists every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportFile>,
    /// Part files uploaded so far (more than `files` lists when the export has more than 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_count: Option<u64>,
    /// Bytes uploaded so far, all part files together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Object key of the signed manifest in the destination bucket (set once `Completed`): it
    /// lists every part file with its size, records, hash and first and last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// When the export job started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the export completed, failed or was cancelled (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why the export failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExportError>,
    /// `Ready` (the export completed), `Progressing` (it is queued or running) and `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where a running export stands: a restarted operator resumes after the last uploaded
    /// file instead of starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<ExportCheckpoint>,
}

/// Export job phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExportJobPhase {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// One uploaded part file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportFile {
    /// Object key, e.g. `scaivault/2026-01/part-0001.jsonl`.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Events in the file.
    pub records: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

/// Why an export failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ExportError {
    /// Stable error code, e.g. `validation_error`, `destination_error`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// Resume point of a running export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportCheckpoint {
    /// The consistent snapshot the export reads: events stored after the job started are not
    /// exported.
    pub snapshot_seq: u64,
    /// Time (microseconds since the epoch) of the last event in the last uploaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_timestamp_us: Option<i64>,
    /// Sequence number of the last event in the last uploaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
}

/// Kubernetes conditions are a list map keyed by `type`, so server-side apply merges them by
/// type.
pub(super) fn conditions_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "A Kubernetes condition.",
            "properties": {
                "lastTransitionTime": { "format": "date-time", "type": "string", "description": "When the condition last changed status." },
                "message": { "type": "string", "description": "Human-readable details." },
                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0, "description": "The metadata.generation the condition was set for." },
                "reason": { "type": "string", "description": "CamelCase reason for the last transition." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"], "description": "True, False or Unknown." },
                "type": { "type": "string", "description": "Ready, Progressing or Failed." }
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"]
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use kube::CustomResourceExt;

    use super::AuditExport;
    use crate::operator::status::conditions;

    /// `kubectl get aex` shows readiness, tenant, destination, records and age; `-o wide` adds
    /// the export id and the Ready condition's message.
    #[test]
    fn printer_columns_show_readiness_and_wide_details() {
        let crd = AuditExport::crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap();
        let shown: Vec<(&str, &str, i32)> = columns
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.json_path.as_str(),
                    c.priority.unwrap_or(0),
                )
            })
            .collect();
        let ready = format!(".status.conditions[?(@.type==\"{}\")]", conditions::READY);
        assert_eq!(
            shown,
            [
                ("Ready", format!("{ready}.status").as_str(), 0),
                ("Phase", ".status.phase", 0),
                ("Tenant", ".spec.tenantId", 0),
                ("Destination", ".spec.destination.type", 0),
                ("Records", ".status.recordCount", 0),
                ("Age", ".metadata.creationTimestamp", 0),
                ("Export ID", ".status.exportId", 1),
                ("Message", format!("{ready}.message").as_str(), 1),
            ]
        );
    }
}
