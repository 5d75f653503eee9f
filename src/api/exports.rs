//! Exports (SPEC §3.5), scope `audit:export`: `POST /v1/audit/export`, `GET /v1/audit/exports`,
//! `GET /v1/audit/exports/{id}`, `DELETE /v1/audit/exports/{id}`.
//!
//! The handlers only validate and talk to the [`ExportRegistry`]; the standalone runner or the
//! Kubernetes controller does the work.

use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::audit_trail::{self, AuditedRead, Filters, REDACTED, audited};
use super::rate_limit::Category;
use super::{ApiError, client, json_response, raw_query, request_id, tenant_header, with_state};
use crate::auth::{Principal, Scope};
use crate::event::{Action, AuditEvent, FieldErrors};
use crate::export::job::{EXPORT_FILTER_NAMES, ExportPhase, ExportSpec, ExportStatus};
use crate::export::registry::{
    self, DEFAULT_LIST_LIMIT, ExportRecord, MAX_LIST_LIMIT, RegistryError,
};
use crate::export::request::ExportRequest;
use crate::state::AppState;
use crate::store::PreparedEvent;
use crate::timestamp;

/// Largest accepted export request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The audit-of-audit label of export creation.
const CREATE: &str = "POST /v1/audit/export";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "audit" / "export")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state(state.clone()))
        .then(|headers: HeaderMap, body, state: AppState| async move {
            // Authentication and the rate limit come first; the body is read (bounded) after.
            // An accepted export records its own durable `export_created`; a refused one is
            // recorded like a read, as an unsuccessful `export_created`.
            let read = AuditedRead::new(CREATE).action(Action::ExportCreated);
            let run = |principal| create_export(state.clone(), principal, headers.clone(), body);
            audited(
                &state,
                &headers,
                Scope::Export,
                Category::Exports,
                read,
                run,
            )
            .await
        });
    let list = warp::path!("v1" / "audit" / "exports")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(raw_query())
        .and(with_state(state.clone()))
        .then(
            |headers: HeaderMap, raw: String, state: AppState| async move {
                let read = AuditedRead::query("GET /v1/audit/exports", &raw);
                let run = |principal| list_exports(state.clone(), principal, headers.clone(), raw);
                audited(
                    &state,
                    &headers,
                    Scope::Export,
                    Category::Queries,
                    read,
                    run,
                )
                .await
            },
        );
    let get = warp::path!("v1" / "audit" / "exports" / String)
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_state(state.clone()))
        .then(
            |id: String, headers: HeaderMap, state: AppState| async move {
                let read =
                    AuditedRead::new("GET /v1/audit/exports/{export_id}").with("export_id", &id);
                let run = |principal| get_export(state.clone(), principal, headers.clone(), id);
                audited(
                    &state,
                    &headers,
                    Scope::Export,
                    Category::Queries,
                    read,
                    run,
                )
                .await
            },
        );
    let cancel = warp::path!("v1" / "audit" / "exports" / String)
        .and(warp::delete())
        .and(warp::header::headers_cloned())
        .and(with_state(state))
        .then(
            |id: String, headers: HeaderMap, state: AppState| async move {
                let read =
                    AuditedRead::new("DELETE /v1/audit/exports/{export_id}").with("export_id", &id);
                let run = |principal| cancel_export(state.clone(), principal, headers.clone(), id);
                audited(
                    &state,
                    &headers,
                    Scope::Export,
                    Category::Exports,
                    read,
                    run,
                )
                .await
            },
        );
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(cancel)
        .unify()
        .boxed()
}

async fn create_export<S, B>(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let body = super::ingest::read_body(
        body,
        super::ingest::content_length(&headers),
        MAX_BODY_BYTES,
    )
    .await?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid_request(format!("the body is not JSON: {error}")))?;
    // SPEC §2: a malformed shape is 400 `invalid_request`; field problems are 422.
    if !body.is_object() {
        return Err(ApiError::invalid_request(
            "the body must be a JSON object (an export request)",
        ));
    }
    let filters = body_filters(&body);
    audit_trail::note_filters(filters.clone());
    let spec = ExportRequest::from_body(&body, &tenant)
        .and_then(ExportRequest::validate)
        .map_err(ApiError::validation)?;
    check_policy(&state, &spec).await?;
    super::require_ready(&state)?;
    let estimated = state
        .export_engine
        .estimate(&spec)
        .await
        .map_err(|failure| match failure.code.as_str() {
            // The free-text filter parses only against the index.
            "invalid_spec" => ApiError::validation(field_error("filters.q", &failure.message)),
            _ => ApiError::internal(&failure),
        })?;
    let export_id = registry::new_export_id();
    let record = ExportRecord {
        export_id: export_id.clone(),
        spec,
        requested_by: principal.identity_id.clone(),
        status: ExportStatus {
            phase: ExportPhase::Pending,
            estimated_records: estimated,
            record_count: 0,
            files: Vec::new(),
            created_at: timestamp::format_micros(jiff::Timestamp::now().as_microsecond()),
            started_at: None,
            completed_at: None,
            error: None,
            checkpoint: None,
        },
    };
    // Recorded before the job exists: an export nobody can see in the audit log never runs.
    record_export_created(&state, &principal, &headers, &record, &filters).await?;
    let record = state.exports.create(record).await.map_err(registry_error)?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "export_id": record.export_id,
            "status": record.status.phase,
            "estimated_records": record.status.estimated_records,
        }),
    ))
}

async fn list_exports(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    raw: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let (limit, after) = parse_list_params(&raw).map_err(ApiError::validation)?;
    let page = state
        .exports
        .list(&tenant, after.as_deref(), limit)
        .await
        .map_err(registry_error)?;
    let exports: Vec<Value> = page.exports.iter().map(record_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "exports": exports,
            "cursor": page.next_after,
            "has_more": page.next_after.is_some(),
        }),
    ))
}

async fn get_export(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    export_id: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let record = state
        .exports
        .get(&tenant, &export_id)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| not_found(&export_id))?;
    Ok(json_response(StatusCode::OK, &record_json(&record)))
}

async fn cancel_export(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    export_id: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let record = state
        .exports
        .cancel(&tenant, &export_id)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| not_found(&export_id))?;
    Ok(json_response(StatusCode::OK, &record_json(&record)))
}

/// The installation's confinement rules (before anything is fetched or recorded): a foreign
/// credentials path is 403 `tenant_access_denied`, a refused `file` destination 422.
pub(crate) async fn check_policy(state: &AppState, spec: &ExportSpec) -> Result<(), ApiError> {
    let policy = state.export_engine.policy().clone();
    let spec = spec.clone();
    // A `file` destination's directory is inspected on disk.
    let checked = tokio::task::spawn_blocking(move || policy.check(&spec))
        .await
        .map_err(|error| ApiError::internal(&error))?;
    checked.map_err(|refusal| {
        if refusal.is_access_denied() {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_access_denied",
                refusal.to_string(),
            )
        } else {
            ApiError::validation(field_error(refusal.field(), &refusal.to_string()))
        }
    })
}

/// `limit` (1..=500, default 50) and `cursor` (the id to continue after).
fn parse_list_params(raw: &str) -> Result<(usize, Option<String>), FieldErrors> {
    let mut errors = FieldErrors::default();
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut cursor = None;
    for (name, value) in crate::query::query_pairs(raw) {
        match name.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => limit = n,
                _ => errors.add(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIST_LIMIT}"),
                ),
            },
            "cursor" => {
                if is_export_id(&value) {
                    cursor = Some(value);
                } else {
                    errors.add("cursor", "is not a cursor of this listing");
                }
            }
            _ => errors.add(name, "unknown parameter"),
        }
    }
    if errors.is_empty() {
        Ok((limit, cursor))
    } else {
        Err(errors)
    }
}

fn is_export_id(text: &str) -> bool {
    text.strip_prefix("exp_")
        .is_some_and(|rest| rest.len() == 26 && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The API shape of an export: status, manifest and what was asked for.
pub fn record_json(record: &ExportRecord) -> Value {
    let status = &record.status;
    let spec = &record.spec;
    let mut destination = json!({
        "type": spec.destination.kind,
        "bucket": spec.destination.bucket,
        "prefix": spec.destination.prefix,
    });
    if let Some(path) = &spec.destination.credentials_path {
        destination["credentials_path"] = json!(path);
    }
    json!({
        "export_id": record.export_id,
        "status": status.phase,
        "format": spec.format,
        "compression": spec.compression,
        "from": spec.from,
        "to": spec.to,
        "filters": spec.filters,
        "destination": destination,
        "max_records_per_file": spec.max_records_per_file,
        "requested_by": record.requested_by,
        "estimated_records": status.estimated_records,
        "record_count": status.record_count,
        "files": status.files,
        "created_at": status.created_at,
        "started_at": status.started_at,
        "completed_at": status.completed_at,
        "error": status.error,
    })
}

/// What the audit of the audit records of an export request's body: its time range and its
/// filters (values of filter names exports do not know are [`REDACTED`]). The destination is
/// in the accepted export's `export_created` event itself.
fn body_filters(body: &Value) -> Filters {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut filters = Filters::default();
    for name in ["from", "to"] {
        if let Some(value) = body.get(name) {
            filters.add(name, &text(value));
        }
    }
    if let Some(Value::Object(given)) = body.get("filters") {
        for (name, value) in given {
            let known = EXPORT_FILTER_NAMES.contains(&name.as_str());
            filters.add(name, &if known { text(value) } else { REDACTED.into() });
        }
    }
    filters
}

/// Records the `export_created` audit event (durable before the export is accepted). Besides
/// the export's details it carries what the audit of the audit records of every read (the
/// endpoint, the filters, the status), so the request is recorded once.
async fn record_export_created(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    record: &ExportRecord,
    filters: &Filters,
) -> Result<(), ApiError> {
    let spec = &record.spec;
    let mut extra = spec.export_created_details(&record.export_id, record.status.estimated_records);
    extra.extend(filters.extra_data(CREATE, StatusCode::ACCEPTED));
    let event = AuditEvent {
        id: state.new_event_id(),
        tenant_id: spec.tenant_id.clone(),
        timestamp_us: jiff::Timestamp::now().as_microsecond(),
        action: Action::ExportCreated,
        secret_path: spec.destination.credentials_path.clone(),
        identity_type: audit_trail::identity_type_of(&principal.identity_id),
        identity_id: principal.identity_id.clone(),
        source_ip: client::current(),
        user_agent: audit_trail::user_agent(headers),
        success: true,
        duration_ms: None,
        request_id: Some(request_id::current()),
        extra_data: extra,
    };
    state
        .store
        .ingest(vec![PreparedEvent::new(event, false)])
        .await?;
    audit_trail::mark_recorded();
    Ok(())
}

fn field_error(field: &str, message: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    errors.add(field, message);
    errors
}

fn not_found(export_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "export_not_found",
        format!("export '{export_id}' not found"),
    )
}

fn registry_error(error: RegistryError) -> ApiError {
    match error {
        RegistryError::Finished(id) => ApiError::new(
            StatusCode::CONFLICT,
            "export_finished",
            format!("export '{id}' has already finished and cannot be cancelled"),
        ),
        RegistryError::Unavailable(cause) => {
            tracing::error!(%cause, "export registry unavailable");
            ApiError::unavailable("exports are temporarily unavailable; retry shortly")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_are_checked() {
        assert_eq!(parse_list_params("").ok(), Some((DEFAULT_LIST_LIMIT, None)));
        let id = "exp_01jz0000000000000000000000";
        assert_eq!(
            parse_list_params(&format!("limit=5&cursor={id}")).ok(),
            Some((5, Some(id.to_string())))
        );
        for bad in ["limit=0", "limit=501", "cursor=abc", "page=2"] {
            assert!(parse_list_params(bad).is_err(), "{bad}");
        }
    }
}
