//! The REST surface: routes, the HTTP server, request ids.
//!
//! Each resource has its own file exposing `routes(state)`; handlers are infallible
//! (`.then`) and turn every failure into ScaiVault's envelope through [`error::ApiError`].
//! Every response carries `X-Request-ID` (a client-sent one is echoed).

pub mod audit_trail;
pub mod client;
pub mod error;
pub mod exports;
pub mod health;
pub mod ingest;
pub mod integrity;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod request_id;
pub mod retention;
pub mod schedules;
pub mod summary;
pub mod tls;
pub mod trails;
pub mod work_limit;

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode, header};
use warp::reply::Response;

use crate::auth::{Principal, Scope};
use crate::state::AppState;
pub use error::ApiError;
use rate_limit::Category;

/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route of the service, with rejections mapped to the error envelope, each answer
/// counted in the HTTP metrics ([`metrics::ApiMetrics::observe`]).
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let metrics = state.api_metrics.clone();
    // Filters run in order: the clock starts before routing and reading the body.
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(service_routes(state))
        .map(
            move |started: Instant, method, path: warp::path::FullPath, response: Response| {
                metrics.observe(&method, path.as_str(), &response, started.elapsed());
                response
            },
        )
        .boxed()
}

fn service_routes(state: AppState) -> BoxedFilter<(Response,)> {
    health::routes(state.clone())
        .or(ingest::routes(state.clone()))
        .unify()
        .or(logs::routes(state.clone()))
        .unify()
        .or(summary::routes(state.clone()))
        .unify()
        .or(trails::routes(state.clone()))
        .unify()
        .or(exports::routes(state.clone()))
        .unify()
        .or(integrity::routes(state.clone()))
        .unify()
        .or(schedules::routes(state.clone()))
        .unify()
        .or(retention::routes(state))
        .unify()
        .or(openapi::routes())
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

/// Serves `routes` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let service = warp::service(routes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(%error, "failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // An answer goes out as soon as it is written, not held back by Nagle's
                // algorithm until the client acknowledges an earlier segment.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                let connection = Connection { service: service.clone(), watcher: graceful.watcher(), client: peer.ip() };
                let tls = tls.clone();
                // The TLS handshake runs in the connection's own task, never in the accept loop.
                tokio::spawn(async move {
                    match tls {
                        None => connection.serve(stream).await,
                        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => connection.serve(tls_stream).await,
                            Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        },
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the drain timeout");
    }
}

/// One accepted connection: the routes and the graceful-shutdown watcher it reports to.
struct Connection<S> {
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    /// The peer's address (see [`client`]).
    client: std::net::IpAddr,
}

impl<S> Connection<S>
where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (service, peer) = (self.service, self.client);
        let hyper_service = hyper::service::service_fn(move |request| {
            client::scope(peer, request_id::handle(service.clone(), request))
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
        if let Err(error) = self.watcher.watch(connection.into_owned()).await {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes_response(status, bytes),
        Err(error) => ApiError::internal(&error).into_response(),
    }
}

/// A response with `status` and the JSON `bytes` as its body.
fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON object written member by member, byte for byte what `serde_json::to_vec` writes for
/// the same members in the same order; members can be JSON that is already written (a page of
/// events, see [`crate::store::search::top_api_json`]).
pub struct JsonObject {
    bytes: Vec<u8>,
}

impl JsonObject {
    /// An empty object with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> JsonObject {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.push(b'{');
        JsonObject { bytes }
    }

    fn key(&mut self, key: &str) -> Result<(), ApiError> {
        if self.bytes.len() > 1 {
            self.bytes.push(b',');
        }
        serde_json::to_writer(&mut self.bytes, key).map_err(|error| ApiError::internal(&error))?;
        self.bytes.push(b':');
        Ok(())
    }

    /// Appends member `key` with `value` serialized.
    pub fn member(mut self, key: &str, value: &impl Serialize) -> Result<JsonObject, ApiError> {
        self.key(key)?;
        serde_json::to_writer(&mut self.bytes, value)
            .map_err(|error| ApiError::internal(&error))?;
        Ok(self)
    }

    /// Appends member `key` with `json`, which must be one complete JSON value.
    pub fn raw_member(mut self, key: &str, json: &[u8]) -> Result<JsonObject, ApiError> {
        self.key(key)?;
        self.bytes.extend_from_slice(json);
        Ok(self)
    }

    /// The object as a response with `status`.
    pub fn into_response(mut self, status: StatusCode) -> Response {
        self.bytes.push(b'}');
        json_bytes_response(status, self.bytes)
    }
}

/// Turns a handler result into a response.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Hands the state to a handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Authenticates the request's bearer token (failed attempts are limited per client
/// address).
/// The caller is noted for the request's access line and span ([`request_id::note_caller`]).
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let principal = state
        .auth
        .authenticate_from(client::current(), authorization)
        .await?;
    let tenant = principal.read_tenant(tenant_header(headers)).ok();
    request_id::note_caller(&principal.identity_id, tenant.as_deref());
    Ok(principal)
}

/// A rate-limited, audited `GET` query route: `path`, then bearer auth with `audit:read`, one
/// token of the caller's query budget, and `handler(state, principal, headers, raw_query)`; the
/// request is recorded as an `audit_read` of `endpoint` (`"GET /v1/audit/logs"`) with the query
/// parameters as its filters ([`audit_trail`]).
pub fn query_route<P, H, Fut>(
    path: P,
    endpoint: &'static str,
    state: AppState,
    handler: H,
) -> BoxedFilter<(Response,)>
where
    P: Filter<Extract = (), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    H: Fn(AppState, Principal, HeaderMap, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send,
{
    path.and(warp::get())
        .and(warp::header::headers_cloned())
        .and(raw_query())
        .and(with_state(state))
        .then(move |headers: HeaderMap, raw: String, state: AppState| {
            let handler = handler.clone();
            async move {
                let read = audit_trail::AuditedRead::query(endpoint, &raw);
                let (own_state, own_headers) = (state.clone(), headers.clone());
                let run = |principal| async move {
                    let started = Instant::now();
                    let metrics = own_state.api_metrics.clone();
                    let answer = handler(own_state, principal, own_headers, raw).await;
                    metrics.observe_query(query_label(endpoint), started.elapsed());
                    answer
                };
                audit_trail::audited(&state, &headers, Scope::Read, Category::Queries, read, run)
                    .await
            }
        })
        .boxed()
}

/// The `endpoint` label of a query route's latency.
fn query_label(endpoint: &str) -> &'static str {
    match endpoint {
        "GET /v1/audit/logs" => "logs",
        "GET /v1/audit/summary" => "summary",
        _ => "other",
    }
}

/// Runs a rate-limited handler: authenticate, require `scope`, take a token of `category`,
/// then call `handler`. Every response after authentication carries the rate-limit headers.
pub async fn rate_limited<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
    category: Category,
    handler: F,
) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let principal = match authenticate(state, headers).await {
        Ok(principal) => principal,
        Err(error) => return unauthenticated(state, error),
    };
    authorized(state, principal, scope, category, handler).await
}

/// The answer to a request whose authentication failed. A 401 carries the `X-RateLimit-*`
/// headers of the budget that applies before any identity is known: the client address's
/// failed authentications (none when that limit is off).
pub fn unauthenticated(state: &AppState, error: ApiError) -> Response {
    with_failure_budget(state, error.into_response())
}

/// Adds the client address's failed-authentication budget to a 401 (see [`unauthenticated`]).
pub fn with_failure_budget(state: &AppState, mut response: Response) -> Response {
    if response.status() == warp::http::StatusCode::UNAUTHORIZED
        && let Some(budget) = client::current().and_then(|ip| state.auth.failure_budget(ip))
    {
        rate_limit::Decision::unspent(budget).apply_headers(response.headers_mut());
    }
    response
}

/// The part of [`rate_limited`] after authentication: require `scope`, take a token of
/// `category`, then call `handler`; the answer carries the rate-limit headers.
pub async fn authorized<F, Fut>(
    state: &AppState,
    principal: Principal,
    scope: Scope,
    category: Category,
    handler: F,
) -> Response
where
    F: FnOnce(Principal) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if let Err(error) = principal.require(scope) {
        // A 403 takes no token but shows the caller's bucket, like every other answer.
        let mut response = ApiError::from(error).into_response();
        if let Some(decision) = state.rate_limiter.peek(&principal.identity_id, category) {
            decision.apply_headers(response.headers_mut());
        }
        return response;
    }
    let decision = state.rate_limiter.acquire(&principal.identity_id, category);
    let mut response = if decision.allowed {
        respond(handler(principal).await)
    } else {
        ApiError::rate_limited(decision.limit, decision.retry_after_secs)
            .with_cause(category.metric_label())
            .into_response()
    };
    decision.apply_headers(response.headers_mut());
    response
}

/// The `X-Tenant-ID` header, if any.
pub fn tenant_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-tenant-id")
        .and_then(|value| value.to_str().ok())
}

/// Fails with 503 until the store has replayed its WAL.
pub fn require_ready(state: &AppState) -> Result<(), ApiError> {
    if state.store.health().ready {
        Ok(())
    } else {
        Err(
            ApiError::unavailable("the audit store is starting; retry shortly")
                .with_cause(metrics::Cause::Starting),
        )
    }
}
