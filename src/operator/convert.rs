//! Conversions between the resource (camelCase, Kubernetes shapes) and the export engine's
//! model (`export::job`). Pure: no I/O.

use std::collections::BTreeMap;

use super::crd::{
    AuditExportSpec, AuditExportStatus, DestinationKind, ExportCheckpoint, ExportCompression,
    ExportDestination, ExportError, ExportFile, ExportFileFormat, ExportFilters, ExportJobPhase,
};
use super::progress::STATUS_FILES;
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
        first_event: None,
        last_event: None,
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

/// The engine checkpoint a status describes (`None` before the job started); its files are the
/// status' list, which may be only the first ones ([`super::progress::restore`] completes it).
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

/// Writes `checkpoint` into a status: the resume point, the totals so far and the first
/// files (the full list goes to the progress file, [`super::progress`]).
pub fn record_checkpoint(status: &mut AuditExportStatus, checkpoint: &Checkpoint) {
    status.checkpoint = Some(ExportCheckpoint {
        snapshot_seq: checkpoint.snapshot_seq,
        after_timestamp_us: checkpoint.after.map(|key| key.timestamp_us),
        after_seq: checkpoint.after.map(|key| key.seq),
    });
    record_files(status, &checkpoint.files);
}

/// Writes the totals of `files` and the first [`STATUS_FILES`] of them into a status.
pub fn record_files(status: &mut AuditExportStatus, files: &[FileEntry]) {
    status.files = files.iter().take(STATUS_FILES).map(export_file).collect();
    status.file_count = Some(files.len() as u64);
    status.size_bytes = Some(files.iter().map(|file| file.size_bytes).sum());
    status.record_count = Some(files.iter().map(|file| file.records).sum());
}

/// A status time in the service's one output form (resources written by older versions carry
/// second precision); `None` for text that is no RFC 3339 time at all.
fn one_form(text: &str) -> Option<String> {
    crate::timestamp::parse_rfc3339_micros(text)
        .ok()
        .map(crate::timestamp::format_micros)
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
        started_at: status.started_at.as_deref().and_then(one_form),
        completed_at: status.completed_at.as_deref().and_then(one_form),
        error: status.error.as_ref().map(|error| ExportFailure {
            code: error.code.clone(),
            message: error.message.clone(),
        }),
        checkpoint: checkpoint(status),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::export::request::TENANT_FIELD;

    type Change = (&'static str, fn(&mut Value), fn(&mut AuditExportSpec));

    /// The same export as a `POST /v1/audit/export` body and as a resource spec.
    fn both() -> (Value, AuditExportSpec) {
        let body = json!({
            "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "format": "jsonl",
            "destination": {"type": "s3", "bucket": "acme-audit", "prefix": "scaivault/",
                            "credentials_path": "tenants/tnt_acme/aws/writer"},
        });
        let spec = AuditExportSpec {
            tenant_id: "tnt_acme".into(),
            from: "2026-01-01T00:00:00Z".into(),
            to: "2026-02-01T00:00:00Z".into(),
            format: ExportFileFormat::Jsonl,
            compression: None,
            filters: None,
            destination: ExportDestination {
                kind: DestinationKind::S3,
                bucket: "acme-audit".into(),
                prefix: Some("scaivault/".into()),
                credentials_path: Some("tenants/tnt_acme/aws/writer".into()),
            },
            max_records_per_file: None,
        };
        (body, spec)
    }

    fn filters(spec: &mut AuditExportSpec) -> &mut ExportFilters {
        spec.filters.get_or_insert_with(ExportFilters::default)
    }

    const CASES: &[Change] = &[
        ("as given", |_| {}, |_| {}),
        (
            "every option",
            |body| {
                body["compression"] = json!("gzip");
                body["max_records_per_file"] = json!(10);
                body["format"] = json!("csv");
                body["filters"] = json!({"action": "read,write", "success": false,
                                          "identity_type": "user", "source_ip": "10.0.0.0/8",
                                          "path_prefix": "environments/", "q": "deploy"});
            },
            |spec| {
                spec.compression = Some(ExportCompression::Gzip);
                spec.max_records_per_file = Some(10);
                spec.format = ExportFileFormat::Csv;
                let filters = filters(spec);
                filters.action = Some("read,write".into());
                filters.success = Some(false);
                filters.identity_type = Some("user".into());
                filters.source_ip = Some("10.0.0.0/8".into());
                filters.path_prefix = Some("environments/".into());
                filters.q = Some("deploy".into());
            },
        ),
        (
            "file destination",
            |body| body["destination"] = json!({"type": "file", "bucket": "audit/2026"}),
            |spec| {
                spec.destination = ExportDestination {
                    kind: DestinationKind::File,
                    bucket: "audit/2026".into(),
                    prefix: None,
                    credentials_path: None,
                };
            },
        ),
        (
            "to before from",
            |body| body["to"] = json!("2025-01-01T00:00:00Z"),
            |spec| spec.to = "2025-01-01T00:00:00Z".into(),
        ),
        (
            "not a timestamp",
            |body| body["from"] = json!("yesterday"),
            |spec| spec.from = "yesterday".into(),
        ),
        (
            "no records per file",
            |body| body["max_records_per_file"] = json!(0),
            |spec| spec.max_records_per_file = Some(0),
        ),
        (
            "too many records per file",
            |body| body["max_records_per_file"] = json!(100_000_001),
            |spec| spec.max_records_per_file = Some(100_000_001),
        ),
        (
            "bad bucket",
            |body| body["destination"]["bucket"] = json!("B"),
            |spec| spec.destination.bucket = "B".into(),
        ),
        (
            "empty bucket",
            |body| body["destination"]["bucket"] = json!(""),
            |spec| spec.destination.bucket = String::new(),
        ),
        (
            "azure container with a dot",
            |body| {
                body["destination"]["type"] = json!("azure_blob");
                body["destination"]["bucket"] = json!("acme.audit");
            },
            |spec| {
                spec.destination.kind = DestinationKind::AzureBlob;
                spec.destination.bucket = "acme.audit".into();
            },
        ),
        (
            "absolute file bucket",
            |body| body["destination"] = json!({"type": "file", "bucket": "/data/exports"}),
            |spec| {
                spec.destination.kind = DestinationKind::File;
                spec.destination.bucket = "/data/exports".into();
                spec.destination.credentials_path = None;
            },
        ),
        (
            "no credentials path",
            |body| {
                body["destination"]
                    .as_object_mut()
                    .map(|d| d.remove("credentials_path"));
            },
            |spec| spec.destination.credentials_path = None,
        ),
        (
            "bad credentials path",
            |body| body["destination"]["credentials_path"] = json!("/bad/"),
            |spec| spec.destination.credentials_path = Some("/bad/".into()),
        ),
        (
            "escaping prefix",
            |body| body["destination"]["prefix"] = json!("../up/"),
            |spec| spec.destination.prefix = Some("../up/".into()),
        ),
        (
            "unknown identity type",
            |body| body["filters"] = json!({"identity_type": "robot"}),
            |spec| filters(spec).identity_type = Some("robot".into()),
        ),
        (
            "bad secret path filter",
            |body| body["filters"] = json!({"secret_path": "/bad/"}),
            |spec| filters(spec).secret_path = Some("/bad/".into()),
        ),
        (
            "bad filter and bad time",
            |body| {
                body["filters"] = json!({"source_ip": "nowhere"});
                body["to"] = json!("2025-01-01T00:00:00Z");
            },
            |spec| {
                filters(spec).source_ip = Some("nowhere".into());
                spec.to = "2025-01-01T00:00:00Z".into();
            },
        ),
    ];

    /// REST and the resource give the same spec, or the same errors (fields and messages), for
    /// the same request.
    #[test]
    fn a_rest_body_and_a_resource_spec_validate_alike() {
        for (name, change_body, change_spec) in CASES {
            let (mut body, mut spec) = both();
            change_body(&mut body);
            change_spec(&mut spec);
            let from_rest =
                ExportRequest::from_body(&body, &spec.tenant_id).and_then(ExportRequest::validate);
            let from_resource = export_spec(&spec);
            assert_eq!(from_rest, from_resource, "{name}");
            let valid = matches!(*name, "as given" | "every option" | "file destination");
            assert_eq!(from_resource.is_ok(), valid, "{name}: {from_resource:?}");
        }
    }

    #[test]
    fn an_invalid_tenant_is_the_only_error_either_way() {
        let (mut body, mut spec) = both();
        body["format"] = json!("xml");
        spec.tenant_id = "tnt acme".into();
        let from_rest =
            ExportRequest::from_body(&body, "tnt acme").and_then(ExportRequest::validate);
        let errors = export_spec(&spec).err().map(|errors| errors.0);
        assert_eq!(from_rest.err().map(|errors| errors.0), errors);
        let fields: Option<Vec<String>> = errors.map(|errors| errors.into_keys().collect());
        assert_eq!(fields, Some(vec![TENANT_FIELD.to_string()]));
    }

    #[test]
    fn a_validated_spec_round_trips_through_the_resource() {
        for (name, change_body, _) in CASES.iter().take(3) {
            let (mut body, _) = both();
            change_body(&mut body);
            let spec = ExportRequest::from_body(&body, "tnt_acme")
                .and_then(ExportRequest::validate)
                .unwrap_or_else(|errors| panic!("{name}: {errors:?}"));
            assert_eq!(export_spec(&resource_spec(&spec)), Ok(spec), "{name}");
        }
    }

    #[test]
    fn status_times_come_out_in_the_one_form_whatever_precision_was_stored() {
        let status = AuditExportStatus {
            phase: Some(ExportJobPhase::Failed),
            started_at: Some("2026-09-21T14:13:20Z".into()),
            completed_at: Some("2026-09-21T16:13:21.5+02:00".into()),
            ..AuditExportStatus::default()
        };
        let view = export_status(Some(&status), "2026-09-21T14:13:19.000000Z".into());
        assert_eq!(
            view.started_at.as_deref(),
            Some("2026-09-21T14:13:20.000000Z")
        );
        assert_eq!(
            view.completed_at.as_deref(),
            Some("2026-09-21T14:13:21.500000Z")
        );
        let garbled = AuditExportStatus {
            started_at: Some("yesterday".into()),
            ..AuditExportStatus::default()
        };
        assert_eq!(
            export_status(Some(&garbled), String::new()).started_at,
            None
        );
    }
}
