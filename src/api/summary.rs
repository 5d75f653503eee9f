//! `GET /v1/audit/summary` (SPEC §3.4): totals, actions, top identities and resources.

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{ApiError, json_response, tenant_header};
use crate::auth::Principal;
use crate::event::FieldErrors;
use crate::query::summary::{self, Aggregate, Breakdowns, Window};
use crate::query::{self, LogFilters};
use crate::state::AppState;

/// Default and largest length of the top lists.
const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let path = warp::path!("v1" / "audit" / "summary");
    super::query_route(path, "GET /v1/audit/summary", state, summary)
}

async fn summary(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    raw_query: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    let pairs = query::query_pairs(&raw_query);
    let (filters, top) = parse_summary_params(&pairs).map_err(ApiError::validation)?;
    super::require_ready(&state)?;
    let aggregate = aggregate(state, tenant, filters, Breakdowns::ALL).await?;
    let body = json!({
        "total_events": aggregate.total,
        "successful_events": aggregate.successful,
        "failed_events": aggregate.failed(),
        "actions_breakdown": aggregate.actions_breakdown(),
        "top_identities": top_identities(&aggregate, top),
        "top_resources": top_resources(&aggregate, top),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `[{identity_id, count}]`, the `n` busiest identities.
pub fn top_identities(aggregate: &Aggregate, n: usize) -> Vec<serde_json::Value> {
    let top = aggregate.by_identity.top(n).into_iter();
    top.map(|entry| json!({"identity_id": entry.key, "count": entry.count}))
        .collect()
}

/// `[{path, count}]`, the `n` most used secret paths.
pub fn top_resources(aggregate: &Aggregate, n: usize) -> Vec<serde_json::Value> {
    let top = aggregate.by_path.top(n).into_iter();
    top.map(|entry| json!({"path": entry.key, "count": entry.count}))
        .collect()
}

fn parse_summary_params(pairs: &[(String, String)]) -> Result<(LogFilters, usize), FieldErrors> {
    let params = query::parse_log_params(pairs, &["from", "to", "top"]);
    let top = match pairs.iter().find(|(name, _)| name == "top") {
        None => Ok(DEFAULT_TOP),
        Some((_, value)) => match value.parse::<usize>() {
            Ok(top) if (1..=MAX_TOP).contains(&top) => Ok(top),
            _ => Err(format!("must be an integer between 1 and {MAX_TOP}")),
        },
    };
    match (params, top) {
        (Ok(params), Ok(top)) => Ok((params.filters, top)),
        (Err(mut errors), Err(message)) => {
            errors.add("top", message);
            Err(errors)
        }
        (Err(errors), Ok(_)) => Err(errors),
        (Ok(_), Err(message)) => {
            let mut errors = FieldErrors::default();
            errors.add("top", message);
            Err(errors)
        }
    }
}

/// Aggregates the tenant's events matching `filters` on a blocking thread, in one of the
/// global summary slots (503 with `Retry-After` when none frees up in time).
pub async fn aggregate(
    state: AppState,
    tenant: String,
    filters: LogFilters,
    breakdowns: Breakdowns,
) -> Result<Aggregate, ApiError> {
    let slot = state.work.summaries.enter().await?;
    tokio::task::spawn_blocking(move || {
        // The slot is released when the work is done, even if the client went away: the
        // memory is in use until then.
        let _slot = slot;
        let searcher = state.store.searcher();
        let aggregate = run_aggregate(&state, &searcher, &tenant, filters, breakdowns);
        if !state.work.summary_hold.is_zero() {
            std::thread::sleep(state.work.summary_hold);
        }
        aggregate
    })
    .await
    .map_err(|error| ApiError::internal(&error))?
}

/// The summary's own filter is only the time window: it comes from the partials. Anything
/// else (a trail's path or identity) is walked directly, the window checked per document,
/// counting per key only what `breakdowns` asks for.
fn run_aggregate(
    state: &AppState,
    searcher: &tantivy::Searcher,
    tenant: &str,
    filters: LogFilters,
    breakdowns: Breakdowns,
) -> Result<Aggregate, ApiError> {
    let window = Window {
        from_us: filters.from_us,
        to_us: filters.to_us,
    };
    let rest = LogFilters {
        from_us: None,
        to_us: None,
        ..filters
    };
    let partials = state.store.partials();
    let aggregate = if rest == LogFilters::default() {
        summary::summarize_tenant(partials, searcher, tenant, window)
    } else {
        let query = state.store.query(searcher, tenant, &rest)?;
        summary::aggregate_matching(
            partials,
            searcher,
            tenant,
            query.as_ref(),
            window,
            breakdowns,
        )
    };
    aggregate.map_err(|error| ApiError::internal(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_bounded_and_unknown_params_rejected() {
        let parse = |query: &str| parse_summary_params(&query::query_pairs(query));
        assert_eq!(parse("").unwrap().1, 10);
        assert_eq!(parse("top=100").unwrap().1, 100);
        for bad in ["top=0", "top=101", "top=x"] {
            assert!(parse(bad).unwrap_err().0.contains_key("top"), "{bad}");
        }
        assert!(parse("action=read").unwrap_err().0.contains_key("action"));
        let errors = parse("from=x&top=0").unwrap_err().0;
        assert!(errors.contains_key("from") && errors.contains_key("top"));
    }
}
