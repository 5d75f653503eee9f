//! Request ids: every response carries `X-Request-ID`, and error bodies repeat it.
//!
//! The id is chosen before routing (a sane client-sent id is echoed, otherwise a new
//! `req_<ULID>`), kept in a task-local for the duration of the request so that the error
//! envelope can include it wherever the error arises, and set on the response afterwards.
//!
//! Why not tower-http's `SetRequestIdLayer` / `PropagateRequestIdLayer` (kept on purpose, issue
//! 11): `SetRequestId` trusts any client-sent header value (no length or character check), so
//! it would need a sanitising layer in front of it; the envelope still needs the id in a
//! task-local, because errors are rendered far from the request (`ApiError::into_response`
//! has no request at hand), so a third layer would copy the extension into the task-local; and
//! `PropagateRequestId` would replace the two lines that set the response header. Three layers
//! around the same logic as [`handle`]'s dozen lines is not a win.
//!
//! The access log lives here too (issue 15): every request runs inside a `request` span
//! carrying its id (and, once authenticated, the identity and tenant), so every log line of a
//! request can be found by its id, and ends with one `access` line: method, route *template*
//! (`/v1/audit/secrets/{path}`, never the raw path, which names secrets), status, duration,
//! request id, identity and tenant. A `TraceLayer` would need the same route and caller
//! plumbing; it would not save any of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tower::Service;
use tracing::Instrument;
use warp::http::HeaderValue;
use warp::reply::Response;

tokio::task_local! {
    static REQUEST: Arc<RequestScope>;
}

/// What is known about the request being served.
#[derive(Debug, Default)]
struct RequestScope {
    id: String,
    caller: Mutex<Caller>,
}

/// The authenticated caller of a request (empty until authentication succeeds).
#[derive(Debug, Default, Clone)]
struct Caller {
    identity: Option<String>,
    tenant: Option<String>,
}

const HEADER: &str = "x-request-id";
const MAX_CLIENT_ID_LEN: usize = 128;
/// The `target` of access log lines (filter them with `LOG_LEVEL=info,access=off`).
pub const ACCESS_TARGET: &str = "access";

/// The current request's id (empty outside a request).
pub fn current() -> String {
    REQUEST
        .try_with(|scope| scope.id.clone())
        .unwrap_or_default()
}

/// Records who made the current request (for its access line and its span); `tenant` is the
/// tenant it acts on when known.
pub fn note_caller(identity: &str, tenant: Option<&str>) {
    let span = tracing::Span::current();
    span.record("identity", identity);
    if let Some(tenant) = tenant {
        span.record("tenant", tenant);
    }
    let _ = REQUEST.try_with(|scope| {
        *scope.caller.lock() = Caller {
            identity: Some(identity.to_string()),
            tenant: tenant.map(str::to_string),
        };
    });
}

/// The id for a request: the client's if it is printable ASCII of sane length, else a new one.
pub fn choose(client_id: Option<&HeaderValue>) -> String {
    let sane = |id: &str| {
        !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
    };
    match client_id.and_then(|value| value.to_str().ok()) {
        Some(id) if sane(id) => id.to_string(),
        _ => format!("req_{}", ulid::Ulid::generate()),
    }
}

/// Runs one request through the routes with its id in scope and on the response, inside a
/// `request` span, and writes its access line.
pub async fn handle<S>(
    mut service: S,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, Infallible>
where
    S: Service<hyper::Request<hyper::body::Incoming>, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let request_id = choose(request.headers().get(HEADER));
    let method = request.method().clone();
    let route = super::metrics::route_template(request.uri().path());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        identity = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    let scope = Arc::new(RequestScope {
        id: request_id.clone(),
        caller: Mutex::default(),
    });
    let mut response = REQUEST
        .scope(
            scope.clone(),
            service.call(request).instrument(span.clone()),
        )
        .await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HEADER, value);
    }
    let caller = scope.caller.lock().clone();
    span.in_scope(|| {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %method,
            route,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = %request_id,
            identity = caller.identity.as_deref().unwrap_or("-"),
            tenant = caller.tenant.as_deref().unwrap_or("-"),
            "request"
        );
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_echoed_only_when_sane() {
        assert_eq!(
            choose(Some(&HeaderValue::from_static("req_abc"))),
            "req_abc"
        );
        assert!(choose(None).starts_with("req_"));
        assert!(choose(Some(&HeaderValue::from_static("has space"))).starts_with("req_"));
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert!(choose(Some(&long)).starts_with("req_"));
    }
}
