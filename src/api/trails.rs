//! `GET /v1/audit/secrets/{path}` and `GET /v1/audit/identities/{identity_id}` (SPEC §3.2,
//! §3.3): a filtered, paged trail plus a summary of the last 30 days.

use percent_encoding::percent_decode_str;
use serde_json::Value;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::path::Tail;
use warp::reply::Response;

use super::audit_trail::{self, AuditedRead};
use super::logs::run_page;
use super::rate_limit::Category;
use super::summary::{aggregate, top_identities, top_resources};
use super::{ApiError, JsonObject, raw_query, tenant_header, with_state};
use crate::auth::{Principal, Scope};
use crate::event::check_secret_path;
use crate::query::summary::{Aggregate, Breakdowns};
use crate::query::{self, LOG_PARAM_NAMES, LogFilters};
use crate::state::AppState;
use crate::timestamp;

/// Days covered by a trail's summary.
const WINDOW_DAYS: i64 = 30;
const TOP_ENTRIES: usize = 10;
const MAX_IDENTITY_ID_CHARS: usize = 256;

/// Which trail a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trail {
    Secret(String),
    Identity(String),
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let secrets = warp::path!("v1" / "audit" / "secrets" / ..)
        .and(warp::path::tail())
        .map(|tail: Tail| tail.as_str().to_string())
        .and_then(|raw: String| async move { decode_segment(&raw).map(Trail::Secret) });
    let identities = warp::path!("v1" / "audit" / "identities" / ..)
        .and(warp::path::tail())
        .map(|tail: Tail| tail.as_str().to_string())
        .and_then(|raw: String| async move { decode_segment(&raw).map(Trail::Identity) });
    secrets
        .or(identities)
        .unify()
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(raw_query())
        .and(with_state(state))
        .then(
            |trail: Trail, headers: HeaderMap, raw: String, state: AppState| async move {
                let read = audited_read(&trail, &raw);
                let endpoint = match trail {
                    Trail::Secret(_) => "secret_trail",
                    Trail::Identity(_) => "identity_trail",
                };
                let (own_state, own_headers) = (state.clone(), headers.clone());
                let handler = |principal| async move {
                    let started = std::time::Instant::now();
                    let metrics = own_state.api_metrics.clone();
                    let answer =
                        trail_response(own_state, principal, trail, own_headers, raw).await;
                    metrics.observe_query(endpoint, started.elapsed());
                    answer
                };
                let (scope, category) = (Scope::Read, Category::Queries);
                audit_trail::audited(&state, &headers, scope, category, read, handler).await
            },
        )
        .boxed()
}

/// What the audit of the audit records of a trail request: the endpoint, the trail's key and
/// the query parameters.
fn audited_read(trail: &Trail, raw_query: &str) -> AuditedRead {
    match trail {
        Trail::Secret(path) => AuditedRead::new("GET /v1/audit/secrets/{path}").with("path", path),
        Trail::Identity(identity) => {
            AuditedRead::new("GET /v1/audit/identities/{identity_id}").with("identity_id", identity)
        }
    }
    .with_query(raw_query)
}

/// Percent-decodes the rest of the path; an empty rest is not this route.
fn decode_segment(raw: &str) -> Result<String, warp::Rejection> {
    if raw.is_empty() {
        return Err(warp::reject::not_found());
    }
    match percent_decode_str(raw).decode_utf8() {
        Ok(text) => Ok(text.into_owned()),
        Err(_) => Err(warp::reject::custom(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the path is not valid UTF-8 after percent-decoding",
        ))),
    }
}

async fn trail_response(
    state: AppState,
    principal: Principal,
    trail: Trail,
    headers: HeaderMap,
    raw_query: String,
) -> Result<Response, ApiError> {
    let tenant = principal.read_tenant(tenant_header(&headers))?;
    check_trail(&trail)?;
    let excluded = match trail {
        Trail::Secret(_) => "path_prefix",
        Trail::Identity(_) => "identity_id",
    };
    let allowed: Vec<&str> = LOG_PARAM_NAMES
        .iter()
        .copied()
        .filter(|name| *name != excluded)
        .collect();
    let mut params = query::parse_log_params(&query::query_pairs(&raw_query), &allowed)
        .map_err(ApiError::validation)?;
    super::require_ready(&state)?;
    let (endpoint, pinned) = pin(&trail, LogFilters::default());
    params.filters = pin(&trail, params.filters).1;
    // The trail's key is part of the filters, so it is part of the cursor fingerprint too.
    let page = run_page(state.clone(), endpoint, tenant.clone(), params).await?;
    let window = LogFilters {
        from_us: Some(timestamp::now_micros() - WINDOW_DAYS * 86_400_000_000),
        ..pinned
    };
    // Each trail reports the other key's counts only (SPEC §3.2, §3.3).
    let breakdowns = match &trail {
        Trail::Secret(_) => Breakdowns::IDENTITIES,
        Trail::Identity(_) => Breakdowns::PATHS,
    };
    let aggregate = aggregate(state, tenant, window, breakdowns).await?;
    let complete_through = crate::export::schedule::complete_through(timestamp::now_micros());
    let (key, value, summary) = match &trail {
        Trail::Secret(path) => ("path", path, secret_summary(&aggregate)),
        Trail::Identity(identity) => ("identity_id", identity, identity_summary(&aggregate)),
    };
    Ok(JsonObject::with_capacity(page.logs.len() + 2048)
        .member(key, value)?
        .raw_member("logs", &page.logs)?
        .member("cursor", &page.cursor)?
        .member("has_more", &page.has_more)?
        .member("summary", &summary)?
        .member("complete_through", &complete_through)?
        .into_response(StatusCode::OK))
}

fn check_trail(trail: &Trail) -> Result<(), ApiError> {
    match trail {
        Trail::Secret(path) => check_secret_path(path).map_err(|problem| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!("secret path {problem}"),
            )
        }),
        Trail::Identity(identity)
            if identity.is_empty()
                || identity.chars().count() > MAX_IDENTITY_ID_CHARS
                || identity.chars().any(char::is_control) =>
        {
            let mut errors = crate::event::FieldErrors::default();
            errors.add(
                "identity_id",
                format!("must be 1 to {MAX_IDENTITY_ID_CHARS} printable characters"),
            );
            Err(ApiError::validation(errors))
        }
        Trail::Identity(_) => Ok(()),
    }
}

/// Adds the trail's own filter; returns the endpoint name for cursor binding.
fn pin(trail: &Trail, mut filters: LogFilters) -> (&'static str, LogFilters) {
    match trail {
        Trail::Secret(path) => {
            filters.secret_path = Some(path.clone());
            ("secrets", filters)
        }
        Trail::Identity(identity) => {
            filters.identity_id = Some(identity.clone());
            ("identities", filters)
        }
    }
}

fn optional_time(micros: Option<i64>) -> Value {
    micros.map_or(Value::Null, |micros| {
        timestamp::format_micros(micros).into()
    })
}

/// The fields both trail summaries share (SPEC §3.2, §3.3), in order.
fn window_summary(aggregate: &Aggregate) -> serde_json::Map<String, Value> {
    let mut summary = serde_json::Map::new();
    summary.insert("window_days".into(), WINDOW_DAYS.into());
    summary.insert("total_events".into(), aggregate.total.into());
    summary.insert("successful_events".into(), aggregate.successful.into());
    summary.insert("failed_events".into(), aggregate.failed().into());
    summary.insert(
        "actions_breakdown".into(),
        aggregate.actions_breakdown().into(),
    );
    summary
}

fn secret_summary(aggregate: &Aggregate) -> Value {
    let mut summary = window_summary(aggregate);
    let top_identities = top_identities(aggregate, TOP_ENTRIES);
    summary.insert(
        "unique_identities".into(),
        aggregate.by_identity.distinct().into(),
    );
    summary.insert("top_identities".into(), top_identities.into());
    summary.insert(
        "last_accessed_at".into(),
        optional_time(aggregate.last_read_us),
    );
    summary.into()
}

fn identity_summary(aggregate: &Aggregate) -> Value {
    let mut summary = window_summary(aggregate);
    let top_resources = top_resources(aggregate, TOP_ENTRIES);
    summary.insert("unique_secrets".into(), aggregate.by_path.distinct().into());
    summary.insert("top_resources".into(), top_resources.into());
    summary.insert("first_seen".into(), optional_time(aggregate.first_us));
    summary.insert("last_seen".into(), optional_time(aggregate.last_us));
    summary.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(
            decode_segment("user%3Aalice%40acme.example").unwrap(),
            "user:alice@acme.example"
        );
        assert_eq!(
            decode_segment("user:alice@acme.example").unwrap(),
            "user:alice@acme.example"
        );
        assert_eq!(
            decode_segment("environments/production/x").unwrap(),
            "environments/production/x"
        );
        assert!(decode_segment("").is_err());
        assert!(decode_segment("%ff").is_err());
    }

    #[test]
    fn trails_validate_their_key() {
        assert_eq!(
            check_trail(&Trail::Secret("Bad/Path".into()))
                .unwrap_err()
                .code,
            "invalid_path"
        );
        assert!(check_trail(&Trail::Secret("a/b".into())).is_ok());
        assert_eq!(
            check_trail(&Trail::Identity("x".repeat(300)))
                .unwrap_err()
                .code,
            "validation_error"
        );
    }
}
