//! Conversions between the resource (camelCase, Kubernetes shapes) and the export engine's
//! model (`export::job`). Pure: no I/O.

use std::collections::BTreeMap;

use super::crd::{
    AuditExportSpec, AuditExportStatus, DestinationKind, ExportCheckpoint, ExportCompression,
    ExportDestination, ExportError, ExportFile, ExportFileFormat, ExportFilters, ExportJobPhase,
};
use crate::event::FieldErrors;
use crate::export::format::{Compression, ExportFormat};
use crate::export::job::{
    Checkpoint, DestinationType, ExportFailure, ExportPhase, ExportSpec, ExportStatus, FileEntry,
};
use crate::export::request::{DestinationRequest, ExportRequest};
use crate::store::search::SortKey;

/// Validates the resource's spec exactly as `POST /v1/audit/export` validates its body (one
/// validator: [`ExportRequest::validate`]). Field names in the errors are the POST body's
/// (`destination.credentials_path`); the tenant is `tenantId`.
pub fn export_spec(spec: &AuditExportSpec) -> Result<ExportSpec, FieldErrors> {
    ExportRequest::from(spec).validate()
}

/// The resource's spec as an export request (typed already: no shape problems).
impl From<&AuditExportSpec> for ExportRequest {
    fn from(spec: &AuditExportSpec) -> Self {
        let destination = &spec.destination;
        ExportRequest {
            tenant_id: spec.tenant_id.clone(),
            from: Some(spec.from.clone()),
            to: Some(spec.to.clone()),
            format: Some(export_format(spec.format)),
            compression: spec.compression.map(|compression| match compression {
                ExportCompression::None => Compression::None,
                ExportCompression::Gzip => Compression::Gzip,
            }),
            filters: spec.filters.as_ref().map(filter_params).unwrap_or_default(),
            destination: Some(DestinationRequest {
                kind: Some(destination_type(destination.kind)),
                bucket: destination.bucket.clone(),
                prefix: destination.prefix.clone().unwrap_or_default(),
                credentials_path: destination.credentials_path.clone(),
                problems: FieldErrors::default(),
            }),
            max_records_per_file: spec.max_records_per_file,
            problems: FieldErrors::default(),
        }
    }
}

/// The filters by their query names, as the query text of `GET /v1/audit/logs`.
fn filter_params(filters: &ExportFilters) -> BTreeMap<String, String> {
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
    let mut params: BTreeMap<String, String> = pairs
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|value| (name.to_string(), value)))
        .collect();
    if let Some(success) = filters.success {
        params.insert("success".into(), success.to_string());
    }
    params
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

fn export_format(format: ExportFileFormat) -> ExportFormat {
    match format {
        ExportFileFormat::Jsonl => ExportFormat::Jsonl,
        ExportFileFormat::Csv => ExportFormat::Csv,
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
