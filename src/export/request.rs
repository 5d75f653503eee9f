//! What an export asks for, before validation: [`ExportRequest`]. Both front doors map into it
//! — the body of `POST /v1/audit/export` ([`ExportRequest::from_body`]) and the spec of an
//! `AuditExport` resource (`From<&AuditExportSpec>` in `operator::convert`) — and
//! [`ExportRequest::validate`] is the one place that turns it into an [`ExportSpec`] or the
//! field errors (SPEC §3.5). Field names in the errors are the POST body's
//! (`destination.credentials_path`), whichever door the request came through.

use std::collections::BTreeMap;

use serde_json::Value;

use super::format::{Compression, ExportFormat};
use super::job::{
    DEFAULT_MAX_RECORDS_PER_FILE, Destination, DestinationType, EXPORT_FILTER_NAMES, ExportSpec,
    MAX_MAX_RECORDS_PER_FILE, check_file_bucket,
};
use crate::event::{FieldErrors, check_secret_path, check_tenant_id};
use crate::query;
use crate::timestamp;

/// The field of the tenant in errors (a resource's `spec.tenantId`; the REST API takes the
/// tenant from the caller, already checked).
pub const TENANT_FIELD: &str = "tenantId";

/// The fields of a `POST /v1/audit/export` body.
const BODY_FIELDS: &[&str] = &[
    "from",
    "to",
    "format",
    "compression",
    "filters",
    "destination",
    "max_records_per_file",
];

/// An export request of one tenant as given, not yet validated.
///
/// `problems` (and the destination's) carry what reading a JSON body already found wrong with
/// its shape (a number where a string belongs, an unknown field): [`Self::validate`] reports
/// them together with everything else. A typed source (the resource spec) has none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportRequest {
    pub tenant_id: String,
    /// Inclusive start, RFC 3339 as given.
    pub from: Option<String>,
    /// Exclusive end, RFC 3339 as given.
    pub to: Option<String>,
    pub format: Option<ExportFormat>,
    /// `None` means no compression.
    pub compression: Option<Compression>,
    /// §3.1 filter parameters by their query names (`identity_id`), values as query text
    /// (`read,write`, `true`).
    pub filters: BTreeMap<String, String>,
    pub destination: Option<DestinationRequest>,
    /// `None` means [`DEFAULT_MAX_RECORDS_PER_FILE`].
    pub max_records_per_file: Option<u64>,
    /// Shape problems outside `destination`, keyed by field.
    pub problems: FieldErrors,
}

/// The destination of an [`ExportRequest`], not yet validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationRequest {
    /// `None` when missing or not one of the known types.
    pub kind: Option<DestinationType>,
    /// Empty when missing.
    pub bucket: String,
    pub prefix: String,
    pub credentials_path: Option<String>,
    /// Shape problems of the destination, keyed by field (`destination.prefix`).
    pub problems: FieldErrors,
}

impl ExportRequest {
    /// Reads a `POST /v1/audit/export` body for `tenant_id` (the caller's, already checked).
    /// Only a body that is not a JSON object fails here; every other problem is kept for
    /// [`Self::validate`].
    pub fn from_body(body: &Value, tenant_id: &str) -> Result<ExportRequest, FieldErrors> {
        let Some(object) = body.as_object() else {
            let mut errors = FieldErrors::default();
            errors.add("body", "must be a JSON object");
            return Err(errors);
        };
        let mut problems = FieldErrors::default();
        for key in object.keys() {
            if !BODY_FIELDS.contains(&key.as_str()) {
                problems.add(key.clone(), "is not a known field");
            }
        }
        let from = body_time(object.get("from"), "from", &mut problems);
        let to = body_time(object.get("to"), "to", &mut problems);
        let format = object.get("format").and_then(|value| {
            let format = match value.as_str() {
                Some("jsonl") => Some(ExportFormat::Jsonl),
                Some("csv") => Some(ExportFormat::Csv),
                _ => None,
            };
            if format.is_none() {
                problems.add("format", "must be jsonl or csv");
            }
            format
        });
        let compression = match object.get("compression") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_str() {
                Some("none") => Some(Compression::None),
                Some("gzip") => Some(Compression::Gzip),
                _ => {
                    problems.add("compression", "must be none or gzip");
                    None
                }
            },
        };
        let max_records_per_file = match object.get("max_records_per_file") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let count = value.as_u64();
                if count.is_none() {
                    problems.add("max_records_per_file", max_records_problem());
                }
                count
            }
        };
        let filters = body_filters(object.get("filters"), &mut problems);
        let destination = object
            .get("destination")
            .and_then(Value::as_object)
            .map(body_destination);
        Ok(ExportRequest {
            tenant_id: tenant_id.to_string(),
            from,
            to,
            format,
            compression,
            filters,
            destination,
            max_records_per_file,
            problems,
        })
    }

    /// Validates the request (SPEC §3.5): the spec of the export, or every problem by field.
    /// An invalid tenant is reported alone.
    pub fn validate(self) -> Result<ExportSpec, FieldErrors> {
        if let Err(problem) = check_tenant_id(&self.tenant_id) {
            let mut errors = FieldErrors::default();
            errors.add(TENANT_FIELD, problem);
            return Err(errors);
        }
        let mut errors = self.problems;
        let from = required_time(self.from.as_deref(), "from", &mut errors);
        let to = required_time(self.to.as_deref(), "to", &mut errors);
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            errors.add("to", "must be after from");
        }
        if self.format.is_none() {
            errors.add("format", "is required (jsonl or csv)");
        }
        let max_records_per_file = match self.max_records_per_file {
            None => DEFAULT_MAX_RECORDS_PER_FILE,
            Some(count) if (1..=MAX_MAX_RECORDS_PER_FILE).contains(&count) => count,
            Some(_) => {
                errors.add("max_records_per_file", max_records_problem());
                DEFAULT_MAX_RECORDS_PER_FILE
            }
        };
        // The filters are parsed as a query only when everything before them is well-formed.
        if errors.is_empty() {
            check_filters(&self.filters, &mut errors);
        }
        let destination = validate_destination(self.destination, &mut errors);
        match (from, to, self.format, destination) {
            (Some(from), Some(to), Some(format), Some(destination)) if errors.is_empty() => {
                Ok(ExportSpec {
                    tenant_id: self.tenant_id,
                    from: timestamp::format_micros(from),
                    to: timestamp::format_micros(to),
                    format,
                    compression: self.compression.unwrap_or_default(),
                    filters: self.filters,
                    destination,
                    max_records_per_file,
                    late: None,
                })
            }
            _ => Err(errors),
        }
    }
}

fn max_records_problem() -> String {
    format!("must be an integer from 1 to {MAX_MAX_RECORDS_PER_FILE}")
}

/// A time field of a body: its text, or a problem when it is there but not a string.
fn body_time(value: Option<&Value>, field: &str, problems: &mut FieldErrors) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        _ => {
            problems.add(field, "must be an RFC 3339 timestamp string");
            None
        }
    }
}

fn required_time(text: Option<&str>, field: &str, errors: &mut FieldErrors) -> Option<i64> {
    let Some(text) = text else {
        errors.add(field, "is required (RFC 3339 timestamp)");
        return None;
    };
    match timestamp::parse_time_param(text) {
        Ok(micros) => Some(micros),
        Err(problem) => {
            errors.add(field, problem);
            None
        }
    }
}

/// The `filters` object of a body as query text: strings as given, `true`/`false`, and a list
/// of actions joined with commas.
fn body_filters(value: Option<&Value>, problems: &mut FieldErrors) -> BTreeMap<String, String> {
    let mut filters = BTreeMap::new();
    let object = match value {
        None | Some(Value::Null) => return filters,
        Some(Value::Object(object)) => object,
        Some(_) => {
            problems.add("filters", "must be an object of §3.1 filter parameters");
            return filters;
        }
    };
    for (name, value) in object {
        let field = format!("filters.{name}");
        if !EXPORT_FILTER_NAMES.contains(&name.as_str()) {
            problems.add(field, "is not an export filter");
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
                        problems.add(field, "must be a string or a list of strings");
                        continue;
                    }
                }
            }
            _ => {
                problems.add(field, "must be a string");
                continue;
            }
        };
        filters.insert(name.clone(), text);
    }
    filters
}

/// The filters as the query API would parse them, and the secret path's grammar.
fn check_filters(filters: &BTreeMap<String, String>, errors: &mut FieldErrors) {
    for name in filters.keys() {
        if !EXPORT_FILTER_NAMES.contains(&name.as_str()) {
            errors.add(format!("filters.{name}"), "is not an export filter");
        }
    }
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

/// The `destination` object of a body; a type it does not know is left `None`.
fn body_destination(object: &serde_json::Map<String, Value>) -> DestinationRequest {
    let mut problems = FieldErrors::default();
    for key in object.keys() {
        match key.as_str() {
            "type" | "bucket" | "prefix" | "credentials_path" => {}
            _ => problems.add(
                format!("destination.{key}"),
                "is not allowed: credentials only come from credentials_path",
            ),
        }
    }
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .and_then(DestinationType::parse);
    let bucket = object
        .get("bucket")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let prefix = match object.get("prefix") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(prefix)) => prefix.clone(),
        Some(_) => {
            problems.add("destination.prefix", "must be a string");
            String::new()
        }
    };
    let credentials_path = match object.get("credentials_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) => Some(path.clone()),
        Some(_) => {
            problems.add("destination.credentials_path", "must be a string");
            None
        }
    };
    DestinationRequest {
        kind,
        bucket,
        prefix,
        credentials_path,
        problems,
    }
}

fn validate_destination(
    destination: Option<DestinationRequest>,
    errors: &mut FieldErrors,
) -> Option<Destination> {
    let Some(destination) = destination else {
        errors.add(
            "destination",
            "is required (an object with type and bucket)",
        );
        return None;
    };
    let mut found = destination.problems;
    let kind = destination.kind;
    if kind.is_none() {
        found.add("destination.type", "must be s3, gcs, azure_blob or file");
    }
    let bucket = destination.bucket;
    if bucket.is_empty() {
        found.add("destination.bucket", "is required");
    } else if let Some(kind) = kind
        && let Err(problem) = check_bucket(kind, &bucket)
    {
        found.add("destination.bucket", problem);
    }
    if let Err(problem) = check_prefix(&destination.prefix) {
        found.add("destination.prefix", problem);
    }
    match &destination.credentials_path {
        Some(path) => {
            if let Err(problem) = check_secret_path(path) {
                found.add("destination.credentials_path", problem);
            }
        }
        None if kind.is_some_and(|kind| kind != DestinationType::File) => found.add(
            "destination.credentials_path",
            "is required: the ScaiVault secret path holding the destination credentials",
        ),
        None => {}
    }
    let valid = found.is_empty();
    for (field, problem) in found.0 {
        errors.add(field, problem);
    }
    match kind {
        Some(kind) if valid => Some(Destination {
            kind,
            bucket,
            prefix: destination.prefix,
            credentials_path: destination.credentials_path,
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

    fn validate(body: Value) -> Result<ExportSpec, FieldErrors> {
        ExportRequest::from_body(&body, "tnt_acme").and_then(ExportRequest::validate)
    }

    fn problems(change: Value) -> Vec<String> {
        match validate(request(change)) {
            Ok(spec) => panic!("accepted: {spec:?}"),
            Err(errors) => errors.0.into_keys().collect(),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_spec_with_defaults_and_normalised_times() {
        let spec = validate(request(
            json!({"filters": {"action": ["read", "write"], "success": true}}),
        ))
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
    fn a_file_bucket_must_be_relative() {
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

    /// Messages as well as fields: what the error envelope and the resource status show.
    #[test]
    fn shape_problems_are_reported_with_the_rest() {
        let errors = validate(request(json!({
            "from": 5, "format": null, "compression": "zip", "max_records_per_file": -1,
            "filters": {"action": [1], "page": "2", "success": 3}, "extra": true,
            "destination": {"type": "s3", "bucket": 7, "prefix": 1, "credentials_path": 2,
                            "access_key": "x"},
        })))
        .err()
        .map(|errors| errors.0);
        let expected: BTreeMap<String, String> = [
            ("compression", "must be none or gzip"),
            (
                "destination.access_key",
                "is not allowed: credentials only come from credentials_path",
            ),
            ("destination.bucket", "is required"),
            ("destination.credentials_path", "must be a string"),
            ("destination.prefix", "must be a string"),
            ("extra", "is not a known field"),
            ("filters.action", "must be a string or a list of strings"),
            ("filters.page", "is not an export filter"),
            ("filters.success", "must be a string"),
            ("format", "must be jsonl or csv"),
            ("from", "must be an RFC 3339 timestamp string"),
            (
                "max_records_per_file",
                "must be an integer from 1 to 100000000",
            ),
        ]
        .into_iter()
        .map(|(field, message)| (field.to_string(), message.to_string()))
        .collect();
        assert_eq!(errors, Some(expected));
        assert_eq!(
            ExportRequest::from_body(&json!([]), "tnt_acme").err(),
            Some(FieldErrors(BTreeMap::from([(
                "body".to_string(),
                "must be a JSON object".to_string()
            )])))
        );
    }

    #[test]
    fn the_filters_are_parsed_only_when_the_rest_is_well_formed() {
        let bad_filter = json!({"filters": {"identity_type": "robot"}});
        assert_eq!(problems(bad_filter.clone()), ["filters.identity_type"]);
        let mut both = bad_filter;
        both["to"] = json!("2025-01-01T00:00:00Z");
        assert_eq!(problems(both), ["to"]);
        // A destination problem does not hide a filter problem.
        assert_eq!(
            problems(json!({"filters": {"identity_type": "robot"},
                            "destination": {"type": "s3", "bucket": "acme-audit"}})),
            ["destination.credentials_path", "filters.identity_type"]
        );
    }

    #[test]
    fn an_invalid_tenant_is_reported_alone() {
        let errors = ExportRequest::from_body(&request(json!({"format": "xml"})), "bad tenant")
            .and_then(ExportRequest::validate)
            .err()
            .map(|errors| errors.0.into_keys().collect::<Vec<_>>());
        assert_eq!(errors, Some(vec![TENANT_FIELD.to_string()]));
    }
}
