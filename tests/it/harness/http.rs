//! HTTP helpers: sending with deadlines, the ingest and query endpoints, error assertions.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::*;

pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// SPEC §3.6: events are visible to queries within 1 second of the acknowledgement.
pub const VISIBILITY_DEADLINE: Duration = Duration::from_secs(1);
/// After a restart, replayed events must become visible; the bound is looser than the
/// per-ack visibility contract because the property under test is durability.
pub const RESTART_VISIBILITY_DEADLINE: Duration = Duration::from_secs(15);
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
pub const MAX_PAGES: usize = 100_000;

/// Status, headers and JSON body of a response (a non-JSON body becomes a JSON string).
pub type Reply = (StatusCode, HeaderMap, Value);

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_DEADLINE)
        .build()
        .expect("build HTTP client")
}

/// Sends a request; transport errors and timeouts become `Err`.
pub async fn try_send(request: RequestBuilder) -> Result<Reply, String> {
    let response = tokio::time::timeout(REQUEST_DEADLINE, request.send())
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|error| format!("request failed: {}", error_chain(&error)))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(REQUEST_DEADLINE, response.bytes())
        .await
        .map_err(|_| "reading response body timed out".to_owned())?
        .map_err(|error| format!("reading response body failed: {}", error_chain(&error)))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, headers, body))
}

/// An error and all its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Sends a request that must get a response.
pub async fn send(request: RequestBuilder) -> Reply {
    try_send(request)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

pub fn events_url(base: &str) -> String {
    format!("{base}/v1/audit/events")
}

pub async fn post_events(client: &Client, base: &str, token: &str, body: Value) -> Reply {
    send(client.post(events_url(base)).bearer_auth(token).json(&body)).await
}

pub async fn try_post_events(
    client: &Client,
    base: &str,
    token: &str,
    body: &Value,
) -> Result<Reply, String> {
    try_send(client.post(events_url(base)).bearer_auth(token).json(body)).await
}

/// POSTs raw bytes to the ingest endpoint with the given content type.
pub async fn post_raw(
    client: &Client,
    base: &str,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let request = client
        .post(events_url(base))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body);
    send(request).await
}

/// Posts `events` and asserts a 200 whose ids match the batch; returns the ids.
pub async fn ingest_ok(client: &Client, base: &str, token: &str, events: &[Value]) -> Vec<String> {
    let reply = post_events(client, base, token, json!({ "events": events })).await;
    assert_eq!(reply.0, StatusCode::OK, "ingest failed: {}", reply.2);
    assert_eq!(
        reply.2["accepted"],
        json!(events.len()),
        "accepted count: {}",
        reply.2
    );
    let ids = reply_ids(&reply.2);
    assert_eq!(ids.len(), events.len(), "one id per event: {}", reply.2);
    for (event, id) in events.iter().zip(&ids) {
        if let Some(sent) = event["id"].as_str() {
            assert_eq!(id, sent, "producer id returned as sent");
        }
    }
    ids
}

/// The `ids` array of an ingest response.
pub fn reply_ids(body: &Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("response without `ids` array: {body}"))
        .iter()
        .map(|id| {
            id.as_str()
                .unwrap_or_else(|| panic!("non-string id in {body}"))
                .to_owned()
        })
        .collect()
}

/// `GET /v1/audit/logs?QUERY` with an optional `X-Tenant-ID`.
pub async fn get_logs(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
    query: &str,
) -> Reply {
    let mut request = client
        .get(format!("{base}/v1/audit/logs?{query}"))
        .bearer_auth(token);
    if let Some(tenant) = tenant {
        request = request.header("X-Tenant-ID", tenant);
    }
    send(request).await
}

/// Every log of `tenant`, walking all pages (for partner-admin tokens such as the bootstrap one).
pub async fn fetch_all_logs(client: &Client, base: &str, token: &str, tenant: &str) -> Vec<Value> {
    fetch_all_logs_as(client, base, token, Some(tenant)).await
}

/// Every log visible to `token`, sending `X-Tenant-ID` only when `tenant` is given.
pub async fn fetch_all_logs_as(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
) -> Vec<Value> {
    let mut logs = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let query = match &cursor {
            Some(cursor) => format!("limit=1000&cursor={}", percent_encode(cursor)),
            None => "limit=1000".to_owned(),
        };
        let (status, _, page) = get_logs(client, base, token, tenant, &query).await;
        assert_eq!(status, StatusCode::OK, "GET /v1/audit/logs?{query}: {page}");
        let page_logs = page["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("no logs: {page}"));
        logs.extend(page_logs.iter().cloned());
        if page["has_more"] != json!(true) {
            return logs;
        }
        let next = page["cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("has_more without cursor"));
        cursor = Some(next.to_owned());
    }
    panic!("more than {MAX_PAGES} pages of logs");
}

/// Polls until every id in `ids` is visible to `tenant`, failing after `deadline`.
pub async fn wait_until_visible(
    client: &Client,
    base: &str,
    token: &str,
    tenant: Option<&str>,
    ids: &[String],
    deadline: Duration,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let logs = fetch_all_logs_as(client, base, token, tenant).await;
        let visible: HashSet<&str> = logs.iter().filter_map(|log| log["id"].as_str()).collect();
        let missing = ids
            .iter()
            .filter(|id| !visible.contains(id.as_str()))
            .count();
        if missing == 0 {
            return logs;
        }
        assert!(
            started.elapsed() < deadline,
            "{missing} of {} acknowledged events not visible after {deadline:?}",
            ids.len()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How often each id occurs in `logs`.
pub fn id_counts(logs: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for log in logs {
        let id = log["id"]
            .as_str()
            .unwrap_or_else(|| panic!("log without id: {log}"));
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Asserts no id occurs twice and every id in `expected` occurs.
pub fn assert_each_present_once<'a>(
    logs: &[Value],
    expected: impl IntoIterator<Item = &'a String>,
) {
    let counts = id_counts(logs);
    let duplicated: Vec<_> = counts
        .iter()
        .filter(|(_, count)| **count > 1)
        .take(10)
        .collect();
    assert!(
        duplicated.is_empty(),
        "ids stored more than once (first 10): {duplicated:?}"
    );
    let missing: Vec<&String> = expected
        .into_iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids missing, first 10: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

pub fn assert_none_present(logs: &[Value], absent: &[String]) {
    let counts = id_counts(logs);
    let present: Vec<&String> = absent
        .iter()
        .filter(|id| counts.contains_key(*id))
        .collect();
    assert!(
        present.is_empty(),
        "ids that must not be stored are present: {present:?}"
    );
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub fn request_id_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
}

/// Asserts the status, `error.code`, a message, and `error.request_id` == `X-Request-ID`.
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    let (actual_status, headers, body) = reply;
    assert_eq!(*actual_status, status, "status; body: {body}");
    assert_eq!(
        body["error"]["code"],
        json!(code),
        "error code; body: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "error.message missing: {body}"
    );
    let header = request_id_header(headers).unwrap_or_else(|| panic!("no X-Request-ID header"));
    assert!(!header.is_empty(), "empty X-Request-ID header");
    assert_eq!(
        body["error"]["request_id"],
        json!(header),
        "error.request_id vs header: {body}"
    );
}

/// Asserts a 422 `validation_error` naming `field` in `details.fields`, and no field of an
/// event other than the one `field` belongs to.
pub fn assert_validation_error(reply: &Reply, field: &str) {
    assert_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    let fields = reply.2["error"]["details"]["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("422 without details.fields: {}", reply.2));
    assert!(
        fields.contains_key(field),
        "details.fields lacks `{field}`: {}",
        reply.2
    );
    let event_prefix = field.find("].").map(|end| &field[..end + 2]);
    if let Some(prefix) = event_prefix {
        for key in fields.keys() {
            assert!(
                key.starts_with(prefix),
                "unexpected field `{key}` besides `{field}`"
            );
        }
    }
}

/// Runs `future`, panicking when it takes longer than `deadline` (the servers it started are
/// dropped, hence killed; declare the [`TestDir`] outside so that it reports their logs).
pub async fn within<F: std::future::Future>(
    deadline: Duration,
    what: &str,
    future: F,
) -> F::Output {
    match tokio::time::timeout(deadline, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {deadline:?}"),
    }
}

/// `GET {base}{path_and_query}` with an optional bearer token and `X-Tenant-ID`.
pub async fn get_as(
    client: &Client,
    base: &str,
    path_and_query: &str,
    token: Option<&str>,
    tenant: Option<&str>,
) -> Reply {
    let mut request = client.get(format!("{base}{path_and_query}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        request = request.header("X-Tenant-ID", tenant);
    }
    send(request).await
}

/// A header as an unsigned integer (`None` when absent or not a number).
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Ingests bulky batches into a server started under `prlimit --fsize=N` until it refuses
/// one; returns that refusal (the server must refuse within `max_batches`).
pub async fn ingest_until_refused(
    client: &Client,
    server: &Server,
    token: &str,
    max_batches: u64,
) -> Reply {
    let padding = "p".repeat(1024);
    for batch in 0..max_batches {
        let events: Vec<Value> = events_with_producer_ids(batch * 1000, 200)
            .into_iter()
            .map(|mut event| {
                event["extra_data"] = json!({ "padding": padding });
                event
            })
            .collect();
        let reply = post_events(
            client,
            server.base_url(),
            token,
            json!({ "events": events }),
        )
        .await;
        if reply.0 != StatusCode::OK {
            return reply;
        }
    }
    panic!("no refusal after {max_batches} bulky batches");
}
