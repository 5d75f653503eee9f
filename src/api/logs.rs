//! `GET /v1/audit/logs` (SPEC §3.1): filtered, keyset-paged, newest first by default.

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{ApiError, json_response, tenant_header};
use crate::auth::Principal;
use crate::event::AuditEvent;
use crate::query::{self, LogFilters, LogParams, cursor};
use crate::state::AppState;
use crate::store::search::{self, Direction, SortKey};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    super::query_route(warp::path!("v1" / "audit" / "logs"), state, list_logs)
}

async fn list_logs(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    raw_query: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let params = query::parse_log_params(&query::query_pairs(&raw_query), query::LOG_PARAM_NAMES)
        .map_err(ApiError::validation)?;
    super::require_ready(&state)?;
    let page = run_page(state, "logs", tenant, params).await?;
    let logs: Vec<_> = page.events.iter().map(AuditEvent::api).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"logs": logs, "cursor": page.cursor, "has_more": page.has_more}),
    ))
}

/// One page of a log listing, with the cursor of the next page.
#[derive(Debug)]
pub struct LogPage {
    pub events: Vec<AuditEvent>,
    pub cursor: Option<String>,
    pub has_more: bool,
}

/// Runs a log listing for `tenant` on a blocking thread. `endpoint` separates the cursors of
/// different endpoints that share parameters.
pub async fn run_page(
    state: AppState,
    endpoint: &'static str,
    tenant: String,
    params: LogParams,
) -> Result<LogPage, ApiError> {
    let LogParams { filters, page } = params;
    let fingerprint = cursor::fingerprint(&[
        endpoint,
        &tenant,
        &format!("{filters:?}"),
        &format!("{:?}", page.direction),
    ]);
    let after = match &page.cursor {
        Some(text) => Some(state.cursors.decode(text, fingerprint)?),
        None => None,
    };
    let searchable = narrow_to_cursor(filters, page.direction, after);
    let codec = state.cursors.clone();
    tokio::task::spawn_blocking(move || {
        let searcher = state.store.searcher();
        let fields = state.store.fields();
        let query = query::build_query(searcher.index(), fields, &tenant, &searchable)?;
        let result = search::top_by_time(
            &searcher,
            fields,
            query.as_ref(),
            page.direction,
            after,
            page.limit,
        )
        .map_err(|error| ApiError::internal(&error))?;
        let cursor = match (result.has_more, result.events.last()) {
            (true, Some((position, _))) => Some(codec.encode(*position, fingerprint)),
            _ => None,
        };
        Ok(LogPage {
            events: result.events.into_iter().map(|(_, event)| event).collect(),
            cursor,
            has_more: result.has_more,
        })
    })
    .await
    .map_err(|error| ApiError::internal(&error))?
}

/// Tightens the time range to what can still follow the cursor, so the index skips the rest.
fn narrow_to_cursor(
    mut filters: LogFilters,
    direction: Direction,
    after: Option<SortKey>,
) -> LogFilters {
    let Some(after) = after else {
        return filters;
    };
    match direction {
        Direction::NewestFirst => {
            let bound = after.timestamp_us.saturating_add(1);
            filters.to_us = Some(filters.to_us.map_or(bound, |to| to.min(bound)));
        }
        Direction::OldestFirst => {
            filters.from_us = Some(
                filters
                    .from_us
                    .map_or(after.timestamp_us, |from| from.max(after.timestamp_us)),
            );
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_narrowing_keeps_ties() {
        let after = Some(SortKey {
            timestamp_us: 100,
            seq: 5,
        });
        let newest = narrow_to_cursor(LogFilters::default(), Direction::NewestFirst, after);
        assert_eq!(newest.to_us, Some(101));
        let bounded = narrow_to_cursor(
            LogFilters {
                to_us: Some(50),
                ..Default::default()
            },
            Direction::NewestFirst,
            after,
        );
        assert_eq!(bounded.to_us, Some(50));
        let oldest = narrow_to_cursor(LogFilters::default(), Direction::OldestFirst, after);
        assert_eq!(oldest.from_us, Some(100));
    }
}
