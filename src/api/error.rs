//! One mapping from every failure to ScaiVault's error envelope.
//!
//! ```json
//! {"error": {"code": "validation_error", "message": "...", "details": {"fields": {...}},
//!            "request_id": "req_..."}}
//! ```
//! The `request_id` is the response's `X-Request-ID` (see [`super::request_id`]). 5xx bodies
//! carry a generic message; the cause goes to the log only.

use serde_json::{Value, json};
use warp::http::StatusCode;
use warp::reply::Response;

use super::metrics::Cause;
use crate::auth::AuthError;
use crate::event::FieldErrors;
use crate::query::QueryError;
use crate::query::cursor::CursorError;
use crate::store::WriteError;

/// An error response: status, stable code, human message, optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Why a 429 or 503 was answered, for the metrics only (never sent; see
    /// [`super::metrics::ErrorLabel`]).
    pub cause: Option<Cause>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            cause: None,
        }
    }

    /// This error, counted under `cause` in the metrics.
    pub fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `invalid_request`: malformed JSON or wrong shape.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 422 `validation_error` with `details.fields`.
    pub fn validation(errors: FieldErrors) -> Self {
        let message = match errors.0.iter().next() {
            Some((field, problem)) if errors.0.len() == 1 => format!("{field} {problem}"),
            Some((field, problem)) => {
                format!("{field} {problem} (and {} more)", errors.0.len() - 1)
            }
            None => "validation failed".to_string(),
        };
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            message,
        )
        .with_details(json!({ "fields": errors.0 }))
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 503 `service_unavailable`, never revealing the internal cause.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// 503 `service_unavailable` because the service is at capacity: the response carries
    /// `Retry-After` (and `details.retry_after`).
    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::unavailable(message)
            .with_details(json!({ "retry_after": retry_after_secs }))
            .with_cause(Cause::Busy)
    }

    /// 500 `internal_error`; `cause` is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    /// 429 `rate_limited`; the caller adds `Retry-After`.
    pub fn rate_limited(limit: u32, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit of {limit} requests per minute exceeded; retry in {retry_after_secs} s"
            ),
        )
        .with_details(json!({ "retry_after": retry_after_secs }))
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// The envelope as an HTTP response carrying the current request id.
    pub fn into_response(self) -> Response {
        let request_id = super::request_id::current();
        let retry_after = self
            .details
            .as_ref()
            .and_then(|details| details.get("retry_after"))
            .and_then(Value::as_u64);
        let mut error =
            json!({ "code": self.code, "message": self.message, "request_id": request_id });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let body = json!({ "error": error });
        let mut response = super::json_response(self.status, &body);
        response
            .extensions_mut()
            .insert(super::metrics::ErrorLabel {
                code: self.code,
                cause: self.cause,
            });
        // Every error that tells the client when to retry says so in the standard header too.
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let (status, code) = match &error {
            AuthError::Missing | AuthError::Malformed => {
                (StatusCode::UNAUTHORIZED, "authentication_required")
            }
            AuthError::Invalid => (StatusCode::UNAUTHORIZED, "token_invalid"),
            AuthError::Expired => (StatusCode::UNAUTHORIZED, "token_expired"),
            AuthError::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            AuthError::TenantAccessDenied(_) => (StatusCode::FORBIDDEN, "tenant_access_denied"),
            AuthError::TenantRequired => (StatusCode::BAD_REQUEST, "invalid_request"),
            AuthError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            AuthError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        };
        let api_error = ApiError::new(status, code, error.to_string());
        match error {
            AuthError::InsufficientScope(scope) => {
                api_error.with_details(json!({ "required_scope": scope.as_str() }))
            }
            AuthError::RateLimited {
                retry_after_secs, ..
            } => api_error
                .with_details(json!({ "retry_after": retry_after_secs }))
                .with_cause(Cause::FailedAuth),
            AuthError::Unavailable => api_error.with_cause(Cause::AuthUnavailable),
            _ => api_error,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::NotReady => {
                ApiError::unavailable("the audit store is starting; retry shortly")
                    .with_cause(Cause::Starting)
            }
            WriteError::Closed => ApiError::unavailable("the audit store is shutting down")
                .with_cause(Cause::ShuttingDown),
            WriteError::LogUnavailable(reason) => {
                tracing::warn!(%reason, "ingest not acknowledged by the replicated log");
                ApiError::unavailable(
                    "the replicated audit log did not acknowledge the events in time; retry with the same event ids (they are stored once)",
                )
                .with_details(json!({ "retry_after": 1 }))
                .with_cause(Cause::LogUnavailable)
            }
            WriteError::TooLargeForLog { .. } => {
                ApiError::payload_too_large(format!("{error}; split the batch"))
            }
            other => {
                tracing::error!(error = %other, "ingest not acknowledged");
                let cause = match other {
                    WriteError::Wal(_) => Cause::WalError,
                    WriteError::DedupLookup(_) => Cause::DedupLookupError,
                    WriteError::Commit(_) | WriteError::IndexUnhealthy | WriteError::Expire(_) => {
                        Cause::IndexUnhealthy
                    }
                    WriteError::NotReady => Cause::Starting,
                    WriteError::Closed => Cause::ShuttingDown,
                    WriteError::LogUnavailable(_) | WriteError::TooLargeForLog { .. } => {
                        Cause::LogUnavailable
                    }
                };
                ApiError::unavailable(
                    "the audit store cannot accept writes right now; nothing was stored, retry later",
                )
                .with_cause(cause)
            }
        }
    }
}

impl From<CursorError> for ApiError {
    fn from(error: CursorError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", error.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        let QueryError::Text(message) = error;
        let mut fields = FieldErrors::default();
        fields.add("q", format!("is not a valid query: {message}"));
        ApiError::validation(fields)
    }
}

/// Turns warp's own rejections (no route, wrong method, bad headers) into the envelope.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::not_found()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        // `content_length_limit` (export requests) refuses by the declared length alone.
        ApiError::payload_too_large("the request body exceeds the size limit of this endpoint")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::invalid_request("a Content-Length header is required")
    } else {
        tracing::debug!(?rejection, "request rejected");
        ApiError::invalid_request("the request could not be understood")
    };
    Ok(error.into_response())
}

impl warp::reject::Reject for ApiError {}
