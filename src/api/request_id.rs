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
//! around the same logic as [`handle`]'s dozen lines is not a win. There is no access log
//! to replace either: the service logs events (errors, shutdown, exports), not requests, and
//! a `TraceLayer` would add a log line per request, which is new behaviour.

use std::convert::Infallible;

use tower::Service;
use warp::http::HeaderValue;
use warp::reply::Response;

tokio::task_local! {
    static REQUEST_ID: String;
}

const HEADER: &str = "x-request-id";
const MAX_CLIENT_ID_LEN: usize = 128;

/// The current request's id (empty outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
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

/// Runs one request through the routes with its id in scope and on the response.
pub async fn handle<S>(
    mut service: S,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, Infallible>
where
    S: Service<hyper::Request<hyper::body::Incoming>, Response = Response, Error = Infallible>,
{
    let request_id = choose(request.headers().get(HEADER));
    let mut response = REQUEST_ID
        .scope(request_id.clone(), service.call(request))
        .await?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HEADER, value);
    }
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
