//! `GET /v1/audit/integrity/checkpoints` (the caller's tenant's signed checkpoints) and
//! `GET /v1/audit/integrity/keys` (the public keys as a JWKS, no authentication): SPEC §8,
//! docs/integrity.md.
//!
//! Checkpoints are paged oldest first by their `sequence`; the cursor is a signed
//! [`CursorCodec`](crate::query::cursor::CursorCodec) cursor whose position carries the last
//! sequence and whose fingerprint binds it to the endpoint, the tenant and `from`/`to`, so it
//! cannot be forged nor replayed for another tenant or other filters.

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, json_response, tenant_header, with_state};
use crate::auth::Principal;
use crate::query::cursor::CursorScope;
use crate::query::{self, LogFilters};
use crate::state::AppState;
use crate::store::search::{Direction, SortKey};

/// Query parameters of the checkpoint listing.
const CHECKPOINT_PARAMS: &[&str] = &["from", "to", "limit", "cursor"];
/// Separates checkpoint cursors from log cursors.
const CURSOR_ENDPOINT: &str = "checkpoints";
/// Public keys change only at a rotation (and a restart): caches may keep them a while.
const KEYS_CACHE_CONTROL: &str = "public, max-age=300";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let checkpoints = super::query_route(
        warp::path!("v1" / "audit" / "integrity" / "checkpoints"),
        "GET /v1/audit/integrity/checkpoints",
        state.clone(),
        list_checkpoints,
    );
    let keys = warp::path!("v1" / "audit" / "integrity" / "keys")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: AppState| super::respond(keys(&state)))
        .boxed();
    checkpoints.or(keys).unify().boxed()
}

async fn list_checkpoints(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    raw_query: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let params = query::parse_log_params(&query::query_pairs(&raw_query), CHECKPOINT_PARAMS)
        .map_err(ApiError::validation)?;
    let filters = LogFilters {
        from_us: params.filters.from_us,
        to_us: params.filters.to_us,
        ..LogFilters::default()
    };
    let fingerprint = CursorScope {
        endpoint: CURSOR_ENDPOINT,
        tenant: &tenant,
        filters: &filters,
        direction: Direction::OldestFirst,
    }
    .fingerprint();
    let after = match &params.page.cursor {
        Some(text) => state.cursors.decode(text, fingerprint)?.seq,
        None => 0,
    };
    let log = state.checkpoints.clone().ok_or_else(not_enabled)?;
    let limit = params.page.limit;
    let (from_us, to_us) = (
        filters.from_us.unwrap_or(i64::MIN),
        filters.to_us.unwrap_or(i64::MAX),
    );
    let page = tokio::task::spawn_blocking(move || log.page(&tenant, from_us, to_us, after, limit))
        .await
        .map_err(|error| ApiError::internal(&error))?
        .map_err(|error| ApiError::internal(&error))?;
    let cursor = page.next_after.map(|sequence| {
        let position = SortKey {
            timestamp_us: 0,
            seq: sequence,
        };
        state.cursors.encode(position, fingerprint)
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "checkpoints": page.checkpoints,
            "cursor": cursor,
            "has_more": cursor.is_some(),
        }),
    ))
}

fn keys(state: &AppState) -> Result<Response, ApiError> {
    let log = state.checkpoints.as_ref().ok_or_else(not_enabled)?;
    let mut response = json_response(StatusCode::OK, &log.keyring().jwks());
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(KEYS_CACHE_CONTROL),
    );
    Ok(response)
}

fn not_enabled() -> ApiError {
    ApiError::unavailable("integrity checkpoints are not available on this server")
}
