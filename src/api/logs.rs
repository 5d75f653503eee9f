//! `GET /v1/audit/logs` (SPEC §3.1): filtered, keyset-paged, newest first by default.

use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{ApiError, JsonObject, tenant_header};
use crate::auth::Principal;
use crate::export::schedule::complete_through;
use crate::query::{self, LogParams, cursor};
use crate::state::AppState;
use crate::store::search::{self, Budget};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let path = warp::path!("v1" / "audit" / "logs");
    super::query_route(path, "GET /v1/audit/logs", state, list_logs)
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
    // Taken after the page was read: a poller that saw this value has every event before it
    // that is expected at all (docs/lifecycle.md).
    let complete_through = complete_through(crate::timestamp::now_micros());
    Ok(JsonObject::with_capacity(page.logs.len() + 256)
        .raw_member("logs", &page.logs)?
        .member("cursor", &page.cursor)?
        .member("has_more", &page.has_more)?
        .member("complete_through", &complete_through)?
        .into_response(StatusCode::OK))
}

/// One page of a log listing, with the cursor of the next page.
#[derive(Debug)]
pub struct LogPage {
    /// The page's events in the API shape (SPEC §2), as one JSON array.
    pub logs: Vec<u8>,
    pub cursor: Option<String>,
    pub has_more: bool,
}

/// Runs a log listing for `tenant` (see [`run_search`] for where). `endpoint` separates the cursors of
/// different endpoints that share parameters.
pub async fn run_page(
    state: AppState,
    endpoint: &'static str,
    tenant: String,
    params: LogParams,
) -> Result<LogPage, ApiError> {
    let LogParams { filters, page } = params;
    let fingerprint = cursor::CursorScope {
        endpoint,
        tenant: &tenant,
        filters: &filters,
        direction: page.direction,
    }
    .fingerprint();
    let after = match &page.cursor {
        Some(text) => Some(state.cursors.decode(text, fingerprint)?),
        None => None,
    };
    let searchable = query::narrow_to_cursor(filters, page.direction, after);
    let codec = state.cursors.clone();
    let search = move |budget: &mut Budget<'_>| {
        let searcher = state.store.searcher();
        let fields = state.store.fields();
        let plan = state.store.search_plan(&searcher, &tenant, &searchable)?;
        let result = search::top_api_json(
            &searcher,
            state.store.timelines(),
            fields,
            &plan,
            page.direction,
            after,
            page.limit,
            budget,
        )
        .map_err(|error| ApiError::internal(&error))?;
        let cursor = match (result.has_more, result.last) {
            (true, Some(position)) => Some(codec.encode(position, fingerprint)),
            _ => None,
        };
        Ok(LogPage {
            logs: result.json,
            cursor,
            has_more: result.has_more,
        })
    };
    run_search(search).await
}

/// How much of a search runs inline on the runtime worker before the rest moves off it (see
/// [`Budget`]): about half a millisecond here, a 100-event page with a short walk.
const INLINE_WORK: u64 = 32 * 1024;

/// Runs a search (blocking work) for an async handler without the hop to the blocking pool
/// and back. On the multi-threaded runtime it starts right here, on the worker, and once it
/// has spent [`INLINE_WORK`] it continues in `block_in_place`, which first hands this worker's
/// other tasks to another thread: a small page pays neither the hop nor the hand-off (each a
/// thread wake-up, about as much as the page itself; docs/benchmarks.md, issue 12), and a long
/// search still blocks nobody else for long. Elsewhere (a current-thread runtime) the whole
/// search runs on the blocking pool.
async fn run_search<T: Send + 'static>(
    search: impl FnOnce(&mut Budget<'_>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        let handoff = |work: &mut dyn FnMut()| tokio::task::block_in_place(work);
        return search(&mut Budget::inline(INLINE_WORK, &handoff));
    }
    tokio::task::spawn_blocking(move || search(&mut Budget::unbounded()))
        .await
        .map_err(|error| ApiError::internal(&error))?
}
