//! Conversions between the resource (camelCase, Kubernetes shapes) and the export engine's
//! model (`export::job`). Pure: no I/O.

use serde_json::{Map, Value, json};

use super::crd::{
    AuditExportSpec, AuditExportStatus, DestinationKind, ExportCheckpoint, ExportCompression,
    ExportDestination, ExportError, ExportFile, ExportFileFormat, ExportFilters, ExportJobPhase,
};
use crate::event::{FieldErrors, check_tenant_id};
use crate::export::format::{Compression, ExportFormat};
use crate::export::job::{
    Checkpoint, DestinationType, ExportFailure, ExportPhase, ExportSpec, ExportStatus, FileEntry,
};
use crate::store::search::SortKey;

/// Validates the resource's spec exactly as `POST /v1/audit/export` validates its body.
/// Field names in the errors are the POST body's (`destination.credentials_path`).
pub fn export_spec(spec: &AuditExportSpec) -> Result<ExportSpec, FieldErrors> {
    if let Err(problem) = check_tenant_id(&spec.tenant_id) {
        let mut errors = FieldErrors::default();
        errors.add("tenantId", problem);
        return Err(errors);
    }
    ExportSpec::from_request(&request_body(spec), &spec.tenant_id)
}

/// The spec as a `POST /v1/audit/export` body (snake_case, without the tenant).
pub fn request_body(spec: &AuditExportSpec) -> Value {
    let mut body = Map::new();
    body.insert("from".into(), json!(spec.from));
    body.insert("to".into(), json!(spec.to));
    body.insert("format".into(), json!(format_name(spec.format)));
    if let Some(compression) = spec.compression {
        let name = match compression {
            ExportCompression::None => "none",
            ExportCompression::Gzip => "gzip",
        };
        body.insert("compression".into(), json!(name));
    }
    if let Some(filters) = &spec.filters {
        body.insert("filters".into(), Value::Object(filter_body(filters)));
    }
    let destination = &spec.destination;
    let mut dest = Map::new();
    dest.insert(
        "type".into(),
        json!(destination_type(destination.kind).as_str()),
    );
    dest.insert("bucket".into(), json!(destination.bucket));
    if let Some(prefix) = &destination.prefix {
        dest.insert("prefix".into(), json!(prefix));
    }
    if let Some(path) = &destination.credentials_path {
        dest.insert("credentials_path".into(), json!(path));
    }
    body.insert("destination".into(), Value::Object(dest));
    if let Some(max) = spec.max_records_per_file {
        body.insert("max_records_per_file".into(), json!(max));
    }
    Value::Object(body)
}

fn filter_body(filters: &ExportFilters) -> Map<String, Value> {
    let pairs = [
        ("action", &filters.action),
        ("identity_id", &filters.identity_id),
        ("identity_type", &filters.identity_type),
        ("path_prefix", &filters.path_prefix),
        ("secret_path", &filters.secret_path),
        ("source_ip", &filters.source_ip),
        ("request_id", &filters.request_id),
        ("q", &filters.q),
    ];
    let mut body: Map<String, Value> = pairs
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name.to_string(), json!(v))))
        .collect();
    if let Some(success) = filters.success {
        body.insert("success".into(), json!(success));
    }
    body
}

/// The resource spec of a validated export (what `KubeRegistry::create` applies).
pub fn resource_spec(spec: &ExportSpec) -> AuditExportSpec {
    let filter = |name: &str| spec.filters.get(name).cloned();
    let filters = ExportFilters {
        action: filter("action"),
        identity_id: filter("identity_id"),
        identity_type: filter("identity_type"),
        path_prefix: filter("path_prefix"),
        secret_path: filter("secret_path"),
        success: filter("success").map(|text| text == "true"),
        source_ip: filter("source_ip"),
        request_id: filter("request_id"),
        q: filter("q"),
    };
    AuditExportSpec {
        tenant_id: spec.tenant_id.clone(),
        from: spec.from.clone(),
        to: spec.to.clone(),
        format: match spec.format {
            ExportFormat::Jsonl => ExportFileFormat::Jsonl,
            ExportFormat::Csv => ExportFileFormat::Csv,
        },
        compression: Some(match spec.compression {
            Compression::None => ExportCompression::None,
            Compression::Gzip => ExportCompression::Gzip,
        }),
        filters: (filters != ExportFilters::default()).then_some(filters),
        destination: ExportDestination {
            kind: match spec.destination.kind {
                DestinationType::S3 => DestinationKind::S3,
                DestinationType::Gcs => DestinationKind::Gcs,
                DestinationType::AzureBlob => DestinationKind::AzureBlob,
                DestinationType::File => DestinationKind::File,
            },
            bucket: spec.destination.bucket.clone(),
            prefix: Some(spec.destination.prefix.clone()).filter(|prefix| !prefix.is_empty()),
            credentials_path: spec.destination.credentials_path.clone(),
        },
        max_records_per_file: Some(spec.max_records_per_file),
    }
}

fn format_name(format: ExportFileFormat) -> &'static str {
    match format {
        ExportFileFormat::Jsonl => "jsonl",
        ExportFileFormat::Csv => "csv",
    }
}

fn destination_type(kind: DestinationKind) -> DestinationType {
    match kind {
        DestinationKind::S3 => DestinationType::S3,
        DestinationKind::Gcs => DestinationType::Gcs,
        DestinationKind::AzureBlob => DestinationType::AzureBlob,
        DestinationKind::File => DestinationType::File,
    }
}

/// The REST phase of a resource phase (a resource without status is pending).
pub fn export_phase(phase: Option<ExportJobPhase>) -> ExportPhase {
    match phase {
        None | Some(ExportJobPhase::Pending) => ExportPhase::Pending,
        Some(ExportJobPhase::Running) => ExportPhase::Running,
        Some(ExportJobPhase::Completed) => ExportPhase::Completed,
        Some(ExportJobPhase::Failed) => ExportPhase::Failed,
        Some(ExportJobPhase::Cancelled) => ExportPhase::Cancelled,
    }
}

pub fn file_entry(file: &ExportFile) -> FileEntry {
    FileEntry {
        key: file.key.clone(),
        size_bytes: file.size_bytes,
        records: file.records,
        sha256: file.sha256.clone(),
    }
}

pub fn export_file(file: &FileEntry) -> ExportFile {
    ExportFile {
        key: file.key.clone(),
        size_bytes: file.size_bytes,
        records: file.records,
        sha256: file.sha256.clone(),
    }
}

pub fn export_error(failure: &ExportFailure) -> ExportError {
    ExportError {
        code: failure.code.clone(),
        message: failure.message.clone(),
    }
}

/// The engine checkpoint a status describes (`None` before the job started).
pub fn checkpoint(status: &AuditExportStatus) -> Option<Checkpoint> {
    let resume = status.checkpoint.as_ref()?;
    let after = match (resume.after_timestamp_us, resume.after_seq) {
        (Some(timestamp_us), Some(seq)) => Some(SortKey { timestamp_us, seq }),
        _ => None,
    };
    Some(Checkpoint {
        snapshot_seq: resume.snapshot_seq,
        files: status.files.iter().map(file_entry).collect(),
        after,
    })
}

/// Writes `checkpoint` into a status: the resume point and the files so far.
pub fn record_checkpoint(status: &mut AuditExportStatus, checkpoint: &Checkpoint) {
    status.checkpoint = Some(ExportCheckpoint {
        snapshot_seq: checkpoint.snapshot_seq,
        after_timestamp_us: checkpoint.after.map(|key| key.timestamp_us),
        after_seq: checkpoint.after.map(|key| key.seq),
    });
    status.files = checkpoint.files.iter().map(export_file).collect();
    status.record_count = Some(checkpoint.records());
}

/// The REST view of a resource's status; `created_at` comes from the resource's metadata.
pub fn export_status(status: Option<&AuditExportStatus>, created_at: String) -> ExportStatus {
    let empty = AuditExportStatus::default();
    let status = status.unwrap_or(&empty);
    ExportStatus {
        phase: export_phase(status.phase),
        estimated_records: status.estimated_records.unwrap_or(0),
        record_count: status.record_count.unwrap_or(0),
        files: status.files.iter().map(file_entry).collect(),
        created_at,
        started_at: status.started_at.clone(),
        completed_at: status.completed_at.clone(),
        error: status.error.as_ref().map(|error| ExportFailure {
            code: error.code.clone(),
            message: error.message.clone(),
        }),
        checkpoint: checkpoint(status),
    }
}
