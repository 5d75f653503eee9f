//! Continuous exports over REST (scope `audit:export`): `POST /v1/audit/export-schedules`,
//! `GET /v1/audit/export-schedules`, `GET /v1/audit/export-schedules/{id}`,
//! `DELETE /v1/audit/export-schedules/{id}` (docs/lifecycle.md "Continuous exports").
//!
//! Standalone, the schedules run in this process ([`crate::export::schedule`]); in a cluster
//! outside Kubernetes they are shared through JetStream's key-value store and run on one
//! replica ([`crate::cluster::schedules`]), with the same endpoints and answers. With the
//! operator they are `AuditExportSchedule` resources, run by the leader's controller: `GET`
//! lists and shows the tenant's accepted ones (same shape, plus `resource`), while `POST` and
//! `DELETE` answer 409 `schedules_not_available` pointing to kubectl (a schedule in a cluster
//! is created where its namespace's tenant label admits it, by whoever may create resources
//! there).

use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::audit_trail::{AuditedRead, audited};
use super::rate_limit::Category;
use super::{ApiError, json_response, tenant_header, with_state};
use crate::auth::{Principal, Scope};
use crate::event::Action;
use crate::export::schedule::scheduler::{ScheduleError, Scheduler};
use crate::export::schedule::{
    self, MAX_SCHEDULES_PER_TENANT, NextRun, ScheduleRecord, is_schedule_id,
};
use crate::operator::schedule_registry::{ClusterSchedule, Unavailable};
use crate::state::AppState;
use crate::timestamp;

/// Largest accepted schedule body.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "audit" / "export-schedules")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state(state.clone()))
        .then(|headers: HeaderMap, body, state: AppState| async move {
            let read =
                AuditedRead::new("POST /v1/audit/export-schedules").action(Action::ExportCreated);
            let run = |principal| create_schedule(state.clone(), principal, headers.clone(), body);
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
    let list = warp::path!("v1" / "audit" / "export-schedules")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_state(state.clone()))
        .then(|headers: HeaderMap, state: AppState| async move {
            let read = AuditedRead::new("GET /v1/audit/export-schedules");
            let run = |principal| list_schedules(state.clone(), principal, headers.clone());
            audited(
                &state,
                &headers,
                Scope::Export,
                Category::Queries,
                read,
                run,
            )
            .await
        });
    let get = warp::path!("v1" / "audit" / "export-schedules" / String)
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_state(state.clone()))
        .then(
            |id: String, headers: HeaderMap, state: AppState| async move {
                let read = AuditedRead::new("GET /v1/audit/export-schedules/{schedule_id}")
                    .with("schedule_id", &id);
                let run = |principal| get_schedule(state.clone(), principal, headers.clone(), id);
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
    let delete = warp::path!("v1" / "audit" / "export-schedules" / String)
        .and(warp::delete())
        .and(warp::header::headers_cloned())
        .and(with_state(state))
        .then(
            |id: String, headers: HeaderMap, state: AppState| async move {
                let read = AuditedRead::new("DELETE /v1/audit/export-schedules/{schedule_id}")
                    .with("schedule_id", &id);
                let run =
                    |principal| delete_schedule(state.clone(), principal, headers.clone(), id);
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
        .or(delete)
        .unify()
        .boxed()
}

fn scheduler(state: &AppState) -> Result<&Scheduler, ApiError> {
    state.schedules.as_ref().ok_or_else(|| {
        let message = if state.cluster_schedules.is_some() {
            "in a cluster, export schedules are AuditExportSchedule resources: create and \
             delete them with kubectl (docs/operator.md); GET /v1/audit/export-schedules lists \
             them"
        } else {
            "export schedules are not available on this instance"
        };
        ApiError::new(StatusCode::CONFLICT, "schedules_not_available", message)
    })
}

fn cluster_unavailable(error: Unavailable) -> ApiError {
    tracing::error!(%error, "export schedules unavailable");
    ApiError::unavailable("export schedules are temporarily unavailable; retry shortly")
}

/// The API shape of a cluster schedule: [`schedule_json`] and its resource.
fn cluster_json(schedule: &ClusterSchedule, now_us: i64) -> Value {
    let mut body = schedule_json(&schedule.record, now_us);
    body["resource"] = json!({
        "kind": "AuditExportSchedule",
        "namespace": schedule.namespace,
        "name": schedule.name,
    });
    body
}

async fn create_schedule<S, B>(
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
    let scheduler = scheduler(&state)?;
    let body = super::ingest::read_body(
        body,
        super::ingest::content_length(&headers),
        MAX_BODY_BYTES,
    )
    .await?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid_request(format!("the body is not JSON: {error}")))?;
    let now = timestamp::now_micros();
    let spec = schedule::spec_from_body(
        &body,
        &tenant,
        schedule::new_schedule_id(),
        &principal.identity_id,
        scheduler.min_interval_seconds(),
        now,
    )
    .map_err(ApiError::validation)?;
    super::exports::check_policy(&state, &spec.export).await?;
    let record = ScheduleRecord::new(spec, now).map_err(ApiError::validation)?;
    let record = scheduler.create(record).await.map_err(schedule_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        &schedule_json(&record, timestamp::now_micros()),
    ))
}

async fn list_schedules(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let now = timestamp::now_micros();
    if let Some(cluster) = &state.cluster_schedules {
        let schedules: Vec<Value> = cluster
            .list(&tenant, now)
            .await
            .map_err(cluster_unavailable)?
            .iter()
            .map(|schedule| cluster_json(schedule, now))
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "schedules": schedules }),
        ));
    }
    let schedules: Vec<Value> = scheduler(&state)?
        .list(&tenant)
        .iter()
        .map(|record| schedule_json(record, now))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "schedules": schedules }),
    ))
}

async fn get_schedule(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    schedule_id: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    if let Some(cluster) = &state.cluster_schedules {
        let now = timestamp::now_micros();
        let found = match is_schedule_id(&schedule_id) {
            true => cluster
                .get(&tenant, &schedule_id, now)
                .await
                .map_err(cluster_unavailable)?,
            false => None,
        };
        let schedule = found.ok_or_else(|| not_found(&schedule_id))?;
        return Ok(json_response(StatusCode::OK, &cluster_json(&schedule, now)));
    }
    let scheduler = scheduler(&state)?;
    let found = match is_schedule_id(&schedule_id) {
        true => scheduler
            .get(&tenant, &schedule_id)
            .await
            .map_err(schedule_error)?,
        false => None,
    };
    let record = found.ok_or_else(|| not_found(&schedule_id))?;
    Ok(json_response(
        StatusCode::OK,
        &schedule_json(&record, timestamp::now_micros()),
    ))
}

async fn delete_schedule(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    schedule_id: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    if !is_schedule_id(&schedule_id) {
        return Err(not_found(&schedule_id));
    }
    let record = scheduler(&state)?
        .delete(&tenant, &schedule_id)
        .await
        .map_err(schedule_error)?
        .ok_or_else(|| not_found(&schedule_id))?;
    Ok(json_response(
        StatusCode::OK,
        &schedule_json(&record, timestamp::now_micros()),
    ))
}

/// The API shape of a schedule: what was asked for and its status.
pub fn schedule_json(record: &ScheduleRecord, now_us: i64) -> Value {
    let spec = &record.spec;
    let export = &spec.export;
    let state = &record.state;
    let mut destination = json!({
        "type": export.destination.kind,
        "bucket": export.destination.bucket,
        "prefix": export.destination.prefix,
    });
    if let Some(path) = &export.destination.credentials_path {
        destination["credentials_path"] = json!(path);
    }
    let next_run_at = match record.due(now_us) {
        NextRun::Wait(at) => at,
        NextRun::Skip | NextRun::Run => now_us.min(state.next_run_us),
    };
    let current = state.current.as_ref().map(|current| {
        json!({
            "run": current.run,
            "export_id": current.export_id,
            "from": current.spec.from,
            "to": current.spec.to,
            "prefix": current.spec.destination.prefix,
            "started_at": current.started_at,
            "files_uploaded": current.checkpoint.files.len(),
        })
    });
    json!({
        "schedule_id": spec.schedule_id,
        "schedule": spec.schedule,
        "delay_seconds": spec.delay_seconds,
        "start": spec.start,
        "format": export.format,
        "compression": export.compression,
        "filters": export.filters,
        "destination": destination,
        "max_records_per_file": export.max_records_per_file,
        "created_by": spec.created_by,
        "created_at": spec.created_at,
        "status": {
            "complete_through": timestamp::format_micros(state.watermark_us),
            "runs_completed": state.runs_completed,
            "next_run_at": timestamp::format_micros(next_run_at),
            "current_run": current,
            "last_runs": state.history,
            "conditions": [condition(record)],
        },
    })
}

/// `Ready`: `True` while runs succeed, `False` with the failure's code while a run is being
/// retried.
fn condition(record: &ScheduleRecord) -> Value {
    match &record.state.failure {
        Some(failure) => json!({
            "type": "Ready",
            "status": "False",
            "reason": failure.error.code,
            "message": format!(
                "run {} failed {} time(s): {}; retrying at {}",
                failure.run,
                failure.attempts,
                failure.error.message,
                timestamp::format_micros(failure.retry_at_us)
            ),
            "last_transition_time": failure.failed_at,
        }),
        None => json!({
            "type": "Ready",
            "status": "True",
            "reason": if record.state.runs_completed == 0 { "Scheduled" } else { "RunSucceeded" },
            "message": format!("{} run(s) completed", record.state.runs_completed),
            "last_transition_time": record
                .state
                .history
                .back()
                .map_or(record.spec.created_at.as_str(), |run| run.completed_at.as_str()),
        }),
    }
}

fn not_found(schedule_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "schedule_not_found",
        format!("export schedule '{schedule_id}' not found"),
    )
}

fn schedule_error(error: ScheduleError) -> ApiError {
    match error {
        ScheduleError::TooMany => ApiError::new(
            StatusCode::CONFLICT,
            "schedule_limit_reached",
            format!(
                "a tenant may have at most {MAX_SCHEDULES_PER_TENANT} export schedules; delete \
                 one first"
            ),
        ),
        ScheduleError::Store(cause) => {
            tracing::error!(%cause, "export schedules unavailable");
            ApiError::unavailable("export schedules are temporarily unavailable; retry shortly")
        }
    }
}
