//! Prometheus metrics of the REST surface: requests per route template and status class,
//! latency, error codes, authentication refusals, 429s and ingest 503s by reason, ingested
//! bytes, query latency (names get the registry's `scaivault_audit_` prefix).
//!
//! Every label comes from a bounded `match` or a `&'static str` of the code (route
//! templates, error codes, causes): a raw path, a tenant or an identity never becomes a
//! label, whatever a client sends.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

/// The route templates of the service (as in the OpenAPI document); `{…}` matches one path
/// segment, `{path}` the rest of the path.
const ROUTES: &[&str] = &[
    "/v1/audit/events",
    "/v1/audit/logs",
    "/v1/audit/secrets/{path}",
    "/v1/audit/identities/{identity_id}",
    "/v1/audit/summary",
    "/v1/health",
    "/v1/health/ready",
    "/metrics",
    "/v1/audit/openapi.json",
    "/v1/audit/export",
    "/v1/audit/exports",
    "/v1/audit/exports/{export_id}",
    "/v1/audit/integrity/checkpoints",
    "/v1/audit/integrity/keys",
    "/v1/audit/retention",
    "/v1/audit/export-schedules",
    "/v1/audit/export-schedules/{schedule_id}",
];

/// The error codes of 401 and 403 answers.
const AUTH_REFUSALS: [&str; 5] = [
    "authentication_required",
    "token_invalid",
    "token_expired",
    "insufficient_scope",
    "tenant_access_denied",
];

/// The causes of an ingest 503.
const INGEST_UNAVAILABLE: [Cause; 8] = [
    Cause::Starting,
    Cause::ShuttingDown,
    Cause::LogUnavailable,
    Cause::WalError,
    Cause::DedupLookupError,
    Cause::IndexUnhealthy,
    Cause::Busy,
    Cause::AuthUnavailable,
];

/// The `endpoint` labels of query latency.
pub const QUERY_ENDPOINTS: [&str; 4] = ["logs", "secret_trail", "identity_trail", "summary"];

/// The label of a path that matches no route.
const OTHER_ROUTE: &str = "other";

/// The route template `path` matches, or `"other"`.
pub fn route_template(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|template| template_matches(template, path))
        .copied()
        .unwrap_or(OTHER_ROUTE)
}

fn template_matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            // The secret path may hold slashes: it takes the rest.
            (Some("{path}"), Some(segment)) => return !segment.is_empty(),
            (Some(pattern), Some(segment)) if pattern.starts_with('{') => {
                if segment.is_empty() {
                    return false;
                }
            }
            (Some(pattern), Some(segment)) if pattern == segment => {}
            _ => return false,
        }
    }
}

/// The method label: the methods the API uses, everything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`, …
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Why a 429 or 503 was answered (a small enum: it rides in every [`super::ApiError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// 429: the identity's query budget is spent.
    Queries,
    /// 429: the identity's export budget is spent.
    Exports,
    /// 429: too many failed authentication attempts from the client address.
    FailedAuth,
    /// 503: the token verifier (JWKS, TokenReview) is unavailable.
    AuthUnavailable,
    /// 503: the store is replaying its write-ahead log.
    Starting,
    /// 503: the store is shutting down.
    ShuttingDown,
    /// 503: the replicated log (clustered mode) did not acknowledge in time.
    LogUnavailable,
    /// 503: a write-ahead log append failed.
    WalError,
    /// 503: looking up stored event ids failed.
    DedupLookupError,
    /// 503: the index cannot take writes until a failed commit is retried.
    IndexUnhealthy,
    /// 503: all slots of a bounded kind of work are busy.
    Busy,
}

impl Cause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Queries => "queries",
            Cause::Exports => "exports",
            Cause::FailedAuth => "failed_auth",
            Cause::AuthUnavailable => "auth_unavailable",
            Cause::Starting => "starting",
            Cause::ShuttingDown => "shutting_down",
            Cause::LogUnavailable => "log_unavailable",
            Cause::WalError => "wal_error",
            Cause::DedupLookupError => "dedup_lookup_error",
            Cause::IndexUnhealthy => "index_unhealthy",
            Cause::Busy => "busy",
        }
    }
}

/// What an error response says about itself for the metrics (put on the response by
/// [`super::ApiError::into_response`]; never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorLabel {
    /// The envelope's `code`.
    pub code: &'static str,
    /// Why a 429 or 503 was answered.
    pub cause: Option<Cause>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Handles to every REST metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub auth_refusals: Family<ReasonLabels, Counter>,
    pub rate_limited: Family<ReasonLabels, Counter>,
    pub ingest_unavailable: Family<CauseLabels, Counter>,
    pub ingest_bytes: Counter,
    pub query_duration: Family<EndpointLabels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            auth_refusals: Family::default(),
            rate_limited: Family::default(),
            ingest_unavailable: Family::default(),
            ingest_bytes: Counter::default(),
            query_duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl ApiMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ApiMetrics::default();
        metrics.start_at_zero();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response, by method and route template",
            metrics.request_duration.clone(),
        );
        registry.register(
            "http_errors",
            "Error responses by route template and error code",
            metrics.errors.clone(),
        );
        registry.register(
            "auth_refusals",
            "Requests refused with 401 or 403, by error code",
            metrics.auth_refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429, by reason (queries, exports: per-identity budgets; failed_auth: failed attempts per client address)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "ingest_unavailable",
            "Ingest requests answered 503, by cause",
            metrics.ingest_unavailable.clone(),
        );
        registry.register(
            "ingest_bytes",
            "Bytes of ingest request bodies read",
            metrics.ingest_bytes.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Time an authorised query took to answer, by endpoint (logs, secret_trail, identity_trail, summary)",
            metrics.query_duration.clone(),
        );
        metrics
    }

    /// Creates the series of every refusal reason and query endpoint at zero, so that they are
    /// scraped (and `increase()` sees the first refusal) before anything happened.
    fn start_at_zero(&self) {
        for reason in AUTH_REFUSALS {
            let _ = self.auth_refusals.get_or_create(&ReasonLabels { reason });
        }
        for cause in [Cause::Queries, Cause::Exports, Cause::FailedAuth] {
            let reason = cause.as_str();
            let _ = self.rate_limited.get_or_create(&ReasonLabels { reason });
        }
        for cause in INGEST_UNAVAILABLE.map(Cause::as_str) {
            let _ = self
                .ingest_unavailable
                .get_or_create(&CauseLabels { cause });
        }
        for endpoint in QUERY_ENDPOINTS {
            let _ = self
                .query_duration
                .get_or_create(&EndpointLabels { endpoint });
        }
    }

    /// Records one answered request.
    pub fn observe(&self, method: &Method, path: &str, response: &Response, took: Duration) {
        let route = route_template(path);
        let method = method_label(method);
        let status = response.status();
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status_class: status_class(status),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
        let Some(error) = response.extensions().get::<ErrorLabel>() else {
            return;
        };
        self.errors
            .get_or_create(&ErrorLabels {
                route,
                code: error.code,
            })
            .inc();
        let cause = error.cause.map_or("other", Cause::as_str);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                self.auth_refusals
                    .get_or_create(&ReasonLabels { reason: error.code })
                    .inc();
            }
            StatusCode::TOO_MANY_REQUESTS => {
                self.rate_limited
                    .get_or_create(&ReasonLabels { reason: cause })
                    .inc();
            }
            StatusCode::SERVICE_UNAVAILABLE if route == "/v1/audit/events" => {
                self.ingest_unavailable
                    .get_or_create(&CauseLabels { cause })
                    .inc();
            }
            _ => {}
        }
    }

    /// Records how long a query of `endpoint` took.
    pub fn observe_query(&self, endpoint: &'static str, took: Duration) {
        self.query_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_templates_and_nothing_else() {
        let cases = [
            ("/v1/audit/events", "/v1/audit/events"),
            (
                "/v1/audit/secrets/db/prod/password",
                "/v1/audit/secrets/{path}",
            ),
            ("/v1/audit/secrets/", OTHER_ROUTE),
            (
                "/v1/audit/identities/user_1",
                "/v1/audit/identities/{identity_id}",
            ),
            ("/v1/audit/identities/user_1/x", OTHER_ROUTE),
            ("/v1/audit/exports/exp_1", "/v1/audit/exports/{export_id}"),
            ("/v1/audit/exports", "/v1/audit/exports"),
            ("/v1/health/ready", "/v1/health/ready"),
            ("/metrics", "/metrics"),
            ("/attacker/chosen/path", OTHER_ROUTE),
            ("", OTHER_ROUTE),
        ];
        for (path, template) in cases {
            assert_eq!(route_template(path), template, "{path}");
        }
    }

    #[test]
    fn every_openapi_path_is_a_route_template() {
        let document: serde_json::Value =
            serde_json::from_str(super::super::openapi::DOCUMENT).expect("document");
        let paths = document["paths"].as_object().expect("paths");
        for template in paths.keys() {
            assert!(ROUTES.contains(&template.as_str()), "{template} is missing");
        }
        assert_eq!(paths.len(), ROUTES.len());
    }

    #[test]
    fn errors_are_counted_by_code_and_cause() {
        let metrics = ApiMetrics::default();
        let mut response = Response::new(Vec::new().into());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response.extensions_mut().insert(ErrorLabel {
            code: "service_unavailable",
            cause: Some(Cause::WalError),
        });
        let took = Duration::from_millis(3);
        metrics.observe(&Method::POST, "/v1/audit/events", &response, took);
        let unavailable = CauseLabels { cause: "wal_error" };
        assert_eq!(
            metrics.ingest_unavailable.get_or_create(&unavailable).get(),
            1
        );
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        metrics.observe(&Method::GET, "/v1/audit/logs", &response, took);
        let reason = ReasonLabels {
            reason: "wal_error",
        };
        assert_eq!(metrics.rate_limited.get_or_create(&reason).get(), 1);
        let labels = RequestLabels {
            method: "GET",
            route: "/v1/audit/logs",
            status_class: "4xx",
        };
        assert_eq!(metrics.requests.get_or_create(&labels).get(), 1);
    }
}
