//! `POST /v1/audit/events` (SPEC §3.6): JSON or NDJSON batches, atomic, durable on ack.

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, authenticate, json_response, respond, with_state};
use crate::auth::{AuthError, Principal, Scope, TenantAccess};
use crate::config::IngestLimits;
use crate::event::{self, EventInput, FieldErrors, ValidEvent};
use crate::state::AppState;
use crate::store::PreparedEvent;

/// An oversized body is read and dropped for at most this long before the 413 is sent.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// At most this many field errors are listed in one 422 response.
const MAX_REPORTED_FIELD_ERRORS: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "audit" / "events")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state(state))
        .then(|headers: HeaderMap, body, state: AppState| async move {
            let response = respond(ingest(state.clone(), headers, body).await);
            super::with_failure_budget(&state, response)
        })
        .boxed()
}

async fn ingest<S, B>(state: AppState, headers: HeaderMap, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let principal = acting_for(authenticate(&state, &headers).await?, &headers)?;
    principal.require(Scope::Write)?;
    super::require_ready(&state)?;
    let body = read_body(body, content_length(&headers), state.limits.max_body_bytes).await?;
    state.api_metrics.ingest_bytes.inc_by(body.len() as u64);
    let format = BodyFormat::of(&headers);
    let limits = state.limits;
    let id_state = state.clone();
    // Parsing holds the body and its parsed values (several times its size): a bounded
    // number run at once, whoever sends them. The body is read before, so a slow client
    // never holds a slot.
    let slot = state.work.ingest_parses.enter().await?;
    // Parsing and validating up to 16 MiB is CPU work: keep it off the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let events = parse_and_validate(&body, format, &principal, limits)?;
        Ok::<_, ApiError>(prepare(events, &id_state))
    })
    .await
    .map_err(|error| ApiError::internal(&error))??;
    let submitted = prepared.len();
    let outcome = state.store.ingest(prepared).await?;
    let body = json!({"accepted": submitted, "ids": outcome.ids, "duplicates": outcome.duplicates});
    Ok(json_response(StatusCode::OK, &body))
}

/// With `X-Tenant-ID`, the request acts for that one tenant (as on reads): a tenant-bound token
/// must name its own tenant, and an all-tenant token's events default to, and must belong to,
/// the named tenant.
fn acting_for(principal: Principal, headers: &HeaderMap) -> Result<Principal, ApiError> {
    match super::tenant_header(headers) {
        Some(asked) => {
            let tenant = principal.read_tenant(Some(asked))?;
            Ok(Principal {
                tenants: TenantAccess::One(tenant),
                ..principal
            })
        }
        None => Ok(principal),
    }
}

/// The body's wire format, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `{"events": [...]}`
    Json,
    /// One event per line (`application/x-ndjson`).
    Ndjson,
}

impl BodyFormat {
    fn of(headers: &HeaderMap) -> Self {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/jsonlines" => BodyFormat::Ndjson,
            _ => BodyFormat::Json,
        }
    }
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the body, refusing more than `limit` bytes (with or without a `Content-Length`).
pub(super) async fn read_body<S, B>(
    mut body: S,
    declared: Option<u64>,
    limit: usize,
) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_large =
        || ApiError::payload_too_large(format!("the request body exceeds {limit} bytes"));
    if declared.is_some_and(|length| length > limit as u64) {
        discard_rest(body, limit).await;
        return Err(too_large());
    }
    let mut buffer = BytesMut::with_capacity(declared.map_or(64 * 1024, |length| length as usize));
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|error| {
            ApiError::invalid_request(format!("failed to read the request body: {error}"))
        })?;
        if buffer.len() + chunk.remaining() > limit {
            discard_rest(body, limit).await;
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let len = part.len();
            buffer.extend_from_slice(part);
            chunk.advance(len);
        }
    }
    Ok(buffer)
}

/// Reads and drops what is left of an oversized body (bounded in bytes and time), so the
/// client finishes sending and reads the 413 instead of hitting a reset connection.
async fn discard_rest<S, B>(mut body: S, limit: usize)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let budget = (limit as u64).saturating_mul(4);
    let drain = async {
        let mut discarded = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            discarded += chunk.remaining() as u64;
            if discarded > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBatch {
    events: Vec<EventInput>,
}

/// Parses the body and validates every event; the batch is all-or-nothing.
pub fn parse_and_validate(
    body: &[u8],
    format: BodyFormat,
    principal: &Principal,
    limits: IngestLimits,
) -> Result<Vec<ValidEvent>, ApiError> {
    let values = match format {
        BodyFormat::Json => parse_json_batch(body)?,
        BodyFormat::Ndjson => parse_ndjson(body, limits.max_batch_events)?,
    };
    if values.len() > limits.max_batch_events {
        return Err(ApiError::payload_too_large(format!(
            "a batch holds at most {} events (got {})",
            limits.max_batch_events,
            values.len()
        )));
    }
    if values.is_empty() {
        let mut errors = FieldErrors::default();
        errors.add("events", "must contain at least one event");
        return Err(ApiError::validation(errors));
    }
    let mut valid = Vec::with_capacity(values.len());
    let mut errors = FieldErrors::default();
    for (index, value) in values.into_iter().enumerate() {
        match event::validate_input(value, principal.tenant_rule()) {
            Ok(event) => valid.push(event),
            Err(field_errors) if errors.0.len() < MAX_REPORTED_FIELD_ERRORS => {
                let prefix = format!("events[{index}]");
                if field_errors.0.contains_key("") {
                    errors.add(prefix, "must be a JSON object");
                } else {
                    errors.absorb(&prefix, field_errors);
                }
            }
            Err(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(foreign) = valid
        .iter()
        .find(|event| !principal.may_write_tenant(&event.event.tenant_id))
    {
        return Err(AuthError::TenantAccessDenied(foreign.event.tenant_id.clone()).into());
    }
    Ok(valid)
}

fn parse_json_batch(body: &[u8]) -> Result<Vec<EventInput>, ApiError> {
    match serde_json::from_slice::<JsonBatch>(body) {
        Ok(batch) => Ok(batch.events),
        Err(error) if error.is_data() => Err(ApiError::invalid_request(format!(
            "the body must be {{\"events\": [...]}} (or NDJSON with Content-Type: application/x-ndjson): {error}"
        ))),
        Err(error) => Err(ApiError::invalid_request(format!(
            "malformed JSON: {error}"
        ))),
    }
}

fn parse_ndjson(body: &[u8], max_events: usize) -> Result<Vec<EventInput>, ApiError> {
    let mut values = Vec::new();
    for (line_index, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if values.len() == max_events {
            // One over the limit is enough to answer 413; parsing the rest would be waste.
            values.push(EventInput::NotAnObject);
            break;
        }
        let value = serde_json::from_slice(line).map_err(|error| {
            ApiError::invalid_request(format!(
                "malformed JSON on line {}: {error}",
                line_index + 1
            ))
            .with_details(json!({"line": line_index + 1}))
        })?;
        values.push(value);
    }
    Ok(values)
}

/// Assigns ids to events without one and encodes their storage form.
fn prepare(events: Vec<ValidEvent>, state: &AppState) -> Vec<PreparedEvent> {
    events
        .into_iter()
        .map(|valid| {
            let producer_id = valid.id.is_some();
            let mut event = valid.event;
            if !producer_id {
                event.id = state.new_event_id();
            }
            PreparedEvent::new(event, producer_id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenants: TenantAccess) -> Principal {
        Principal {
            identity_id: "sa:test".into(),
            scopes: [Scope::Write].into_iter().collect(),
            tenants,
        }
    }

    fn event_json(action: &str) -> String {
        format!(
            r#"{{"timestamp":"2026-04-23T18:00:00Z","action":"{action}","identity_type":"user","identity_id":"user:a","success":true}}"#
        )
    }

    fn status_and_code(result: Result<Vec<ValidEvent>, ApiError>) -> (u16, &'static str) {
        let error = result.unwrap_err();
        (error.status.as_u16(), error.code)
    }

    #[test]
    fn json_and_ndjson_bodies_parse() {
        let bound = principal(TenantAccess::One("tnt_a".into()));
        let json = format!(
            r#"{{"events":[{},{}]}}"#,
            event_json("read"),
            event_json("write")
        );
        let events = parse_and_validate(
            json.as_bytes(),
            BodyFormat::Json,
            &bound,
            IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        let ndjson = format!("{}\n\n  \n{}\n", event_json("read"), event_json("list"));
        let events = parse_and_validate(
            ndjson.as_bytes(),
            BodyFormat::Ndjson,
            &bound,
            IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(events[1].event.action, crate::event::Action::List);
    }

    #[test]
    fn bad_bodies_get_precise_errors() {
        let bound = principal(TenantAccess::One("tnt_a".into()));
        let limits = IngestLimits {
            max_body_bytes: 1 << 20,
            max_batch_events: 2,
        };
        let check =
            |body: String, format| parse_and_validate(body.as_bytes(), format, &bound, limits);
        assert_eq!(
            status_and_code(check("{".into(), BodyFormat::Json)),
            (400, "invalid_request")
        );
        assert_eq!(
            status_and_code(check("[]".into(), BodyFormat::Json)),
            (400, "invalid_request")
        );
        assert_eq!(
            status_and_code(check(r#"{"events":{}}"#.into(), BodyFormat::Json)),
            (400, "invalid_request")
        );
        assert_eq!(
            status_and_code(check(r#"{"events":[]}"#.into(), BodyFormat::Json)),
            (422, "validation_error")
        );
        let three = format!(
            "{}\n{}\n{}",
            event_json("read"),
            event_json("read"),
            event_json("read")
        );
        assert_eq!(
            status_and_code(check(three, BodyFormat::Ndjson)),
            (413, "payload_too_large")
        );
        assert_eq!(
            status_and_code(check("not json\n".into(), BodyFormat::Ndjson)),
            (400, "invalid_request")
        );
        let error = check(
            format!(
                r#"{{"events":[{},{}]}}"#,
                event_json("read"),
                event_json("launch")
            ),
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(
            error.details.unwrap()["fields"]["events[1].action"],
            "unknown action 'launch'"
        );
    }

    #[test]
    fn cross_tenant_writes_are_denied_and_admins_must_name_tenants() {
        let bound = principal(TenantAccess::One("tnt_a".into()));
        let foreign = event_json("read").replace('}', r#","tenant_id":"tnt_b"}"#);
        let result = parse_and_validate(
            format!(r#"{{"events":[{foreign}]}}"#).as_bytes(),
            BodyFormat::Json,
            &bound,
            IngestLimits::default(),
        );
        assert_eq!(status_and_code(result), (403, "tenant_access_denied"));
        let admin = principal(TenantAccess::All);
        let result = parse_and_validate(
            format!(r#"{{"events":[{}]}}"#, event_json("read")).as_bytes(),
            BodyFormat::Json,
            &admin,
            IngestLimits::default(),
        );
        assert!(result.unwrap_err().details.unwrap()["fields"]["events[0].tenant_id"].is_string());
    }

    #[test]
    fn content_type_selects_the_format() {
        let mut headers = HeaderMap::new();
        assert_eq!(BodyFormat::of(&headers), BodyFormat::Json);
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(BodyFormat::of(&headers), BodyFormat::Ndjson);
    }
}
