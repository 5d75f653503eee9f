//! `GET /v1/audit/retention`: the caller's tenant's retention (`[retention]`,
//! docs/lifecycle.md): how many days its events stay, whether a legal hold keeps everything,
//! the cut-off a sweep would apply now and how often sweeps run. `audit:read`, the caller's
//! tenant only, no query parameters.

use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{ApiError, json_response, tenant_header};
use crate::auth::Principal;
use crate::query;
use crate::state::AppState;

/// The answer.
#[derive(Debug, Serialize)]
struct TenantRetentionView {
    tenant_id: String,
    /// Days an event stays in the hot store.
    retention_days: u32,
    /// Nothing is deleted while it holds.
    legal_hold: bool,
    /// `tenant` (its own `[retention.tenants.*]` table) or `default`.
    source: &'static str,
    /// Events older than this are deleted by the next sweep; `null` under a legal hold.
    cutoff: Option<String>,
    sweep_interval_seconds: u64,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    super::query_route(
        warp::path!("v1" / "audit" / "retention"),
        "GET /v1/audit/retention",
        state,
        get_retention,
    )
}

async fn get_retention(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    raw_query: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    query::parse_log_params(&query::query_pairs(&raw_query), &[]).map_err(ApiError::validation)?;
    let settings = &state.retention;
    let policy = settings.for_tenant(&tenant);
    let view = TenantRetentionView {
        retention_days: policy.days,
        legal_hold: policy.legal_hold,
        source: if settings.has_own(&tenant) {
            "tenant"
        } else {
            "default"
        },
        cutoff: policy
            .cutoff_us(crate::timestamp::now_micros())
            .map(crate::timestamp::format_micros),
        sweep_interval_seconds: settings.sweep_interval.as_secs(),
        tenant_id: tenant,
    };
    Ok(json_response(StatusCode::OK, &view))
}
