//! `GET /v1/health` (liveness), `GET /v1/health/ready` (readiness), `GET /metrics`.

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::reply::Response;

use super::{json_response, with_state};
use crate::state::AppState;
use crate::timestamp;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let live = warp::path!("v1" / "health")
        .and(warp::get())
        .then(|| async { liveness() });
    let ready = warp::path!("v1" / "health" / "ready")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(|state: AppState| async move { readiness(&state) });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: AppState| async move { metrics(&state) });
    live.or(ready).unify().or(metrics).unify().boxed()
}

fn liveness() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"status": "healthy", "timestamp": timestamp::format_micros(timestamp::now_micros())}),
    )
}

fn readiness(state: &AppState) -> Response {
    let health = state.store.health();
    let status_of = |ok: bool| if ok { "ok" } else { "error" };
    let mut errors = serde_json::Map::new();
    let index = if !health.ready {
        "starting"
    } else {
        status_of(health.index_ok)
    };
    let wal = if !health.ready {
        "starting"
    } else {
        status_of(health.wal_ok)
    };
    if let Some(error) = &health.startup_error {
        errors.insert("store".into(), json!(error));
    }
    if health.ready && !health.index_ok {
        errors.insert(
            "index".into(),
            json!("the last index commit failed; retrying"),
        );
    }
    if health.ready && !health.wal_ok {
        errors.insert(
            "wal".into(),
            json!("the last write-ahead log append failed"),
        );
    }
    // Without its JWKS the service cannot authenticate JWTs: out of the Service until loaded.
    let auth_problem = state.auth.not_ready();
    if let Some(reason) = &auth_problem {
        errors.insert("auth".into(), json!(reason));
    }
    // A cluster replica too far behind the replicated log would answer stale queries: out of
    // the Service until it has caught up (docs/cluster.md).
    if health.log_gap {
        errors.insert(
            "log".into(),
            json!(
                "records this replica never indexed are gone from the replicated log; restore it"
            ),
        );
    } else if health.lagging {
        errors.insert(
            "log".into(),
            json!(format!(
                "{} records of the replicated log are not indexed here yet",
                health.log_lag.unwrap_or_default()
            )),
        );
    }
    // A failing WAL or index only affects writes: queries still work, so the pod stays in
    // the Service and the checks tell operators what is wrong.
    let ready = health.ready && auth_problem.is_none() && !health.lagging && !health.log_gap;
    let auth = if auth_problem.is_some() {
        "starting"
    } else {
        "ok"
    };
    let mut body = json!({"status": if ready { "ready" } else { "not_ready" }, "checks": {"index": index, "wal": wal, "auth": auth}});
    if let Some(lag) = health.log_lag {
        body["checks"]["log"] = json!(if health.log_gap {
            "gap"
        } else if health.lagging {
            "lagging"
        } else {
            "ok"
        });
        body["log_lag"] = json!(lag);
    }
    if !errors.is_empty() {
        body["errors"] = errors.into();
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

fn metrics(state: &AppState) -> Response {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        return super::ApiError::internal(&error).into_response();
    }
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
