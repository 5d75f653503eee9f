//! Black-box tests of `POST /v1/audit/events`, authentication, tenants, request ids and the
//! operational endpoints (SPEC §2, §3, §3.1, §3.6, §3.7, §4), against the real binary.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A server with the bootstrap token (no auth configured). The audit of the audit is off in
/// this module: its tests check that a tenant holds exactly what was ingested, and the reads
/// that check it would add `audit_read` events (tests/it/audit_of_audit.rs covers those).
async fn start_bootstrap_server(dir: &TestDir) -> Server {
    Server::start(&dir.data_dir(), AUDIT_OF_AUDIT_OFF).await
}

/// Static tokens: a tenant-bound writer, a tenant-bound reader and a partner admin.
struct StaticAuth {
    writer: StaticToken,
    reader: StaticToken,
    admin: StaticToken,
}

async fn start_with_static_tokens(dir: &TestDir) -> (Server, StaticAuth) {
    let auth = StaticAuth {
        writer: StaticToken::new("writer-acme", &["audit:write", "audit:read"], Some(TENANT)),
        reader: StaticToken::new("reader-acme", &["audit:read"], Some(TENANT)),
        admin: StaticToken::new(
            "partner-admin",
            &["audit:read", "audit:write", "audit:export"],
            None,
        ),
    };
    let tokens_file = dir.root().join("tokens.toml");
    write_tokens_file(&tokens_file, &[&auth.writer, &auth.reader, &auth.admin]);
    let tokens_arg = tokens_file.to_str().expect("utf-8 path");
    let args = [&["--tokens-file", tokens_arg], AUDIT_OF_AUDIT_OFF].concat();
    let server = Server::start(&dir.data_dir(), &args).await;
    (server, auth)
}

/// `count_before` valid events, then `bad`, then one more valid event.
fn batch_with_bad_event_at(count_before: u64, bad: Value) -> Value {
    let mut events: Vec<Value> = (0..count_before).map(event).collect();
    events.push(bad);
    events.push(event(count_before + 1));
    json!({ "events": events })
}

/// Posts a batch whose event at `index` is `bad` and asserts the 422 names `events[index].field`.
async fn assert_event_rejected(server: &Server, bad: Value, index: u64, field: &str) {
    let body = batch_with_bad_event_at(index, bad.clone());
    let reply = post_events(&client(), server.base_url(), server.token(), body).await;
    let key = format!("events[{index}].{field}");
    assert_eq!(
        reply.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{bad} must be rejected: {}",
        reply.2
    );
    assert_validation_error(&reply, &key);
}

/// Ingests a sentinel event, waits until it is visible, and asserts it is the only event
/// stored for [`TENANT`]: everything rejected earlier left no trace.
async fn assert_only_sentinel_stored(server: &Server) {
    let client = client();
    let sentinel = vec![with_id(event(999_999), &producer_id())];
    let ids = ingest_ok(&client, server.base_url(), server.token(), &sentinel).await;
    let logs = wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    let stored: Vec<&Value> = logs.iter().map(|log| &log["id"]).collect();
    assert_eq!(stored, vec![&json!(ids[0])], "rejected events were stored");
}

fn without_field(mut event: Value, field: &str) -> Value {
    event
        .as_object_mut()
        .expect("event is an object")
        .remove(field);
    event
}

fn with_field(mut event: Value, field: &str, value: Value) -> Value {
    event[field] = value;
    event
}

async fn get_json(client: &Client, url: String) -> Reply {
    send(client.get(url)).await
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_invalid_request() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    for body in [
        "{\"events\": [",
        "not json",
        "{\"events\": [{\"action\": \"read\",]}",
    ] {
        let reply = post_raw(
            &client,
            server.base_url(),
            server.token(),
            "application/json",
            body,
        )
        .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_without_events_array_is_invalid_request() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let bodies = [
        json!({ "items": [event(0)] }),
        json!([event(0)]),
        json!("events"),
        json!(42),
    ];
    for body in bodies {
        let reply = post_events(&client, server.base_url(), server.token(), body.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_only_sentinel_stored(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Per-event validation (422 keyed by index)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wrong_field_types_are_validation_errors() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    assert_event_rejected(
        &server,
        with_field(event(0), "success", json!("yes")),
        0,
        "success",
    )
    .await;
    let duration_as_text = with_field(event(0), "duration_ms", json!("12"));
    assert_event_rejected(&server, duration_as_text, 2, "duration_ms").await;
    assert_only_sentinel_stored(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_action_is_reported_with_its_index() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    assert_event_rejected(
        &server,
        with_field(event(0), "action", json!("launch")),
        3,
        "action",
    )
    .await;
    assert_event_rejected(
        &server,
        with_field(event(0), "action", json!("READ")),
        1,
        "action",
    )
    .await;
    assert_only_sentinel_stored(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unparseable_timestamps_are_rejected() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    for (index, timestamp) in [
        (1, "yesterday"),
        (2, "2026-01-01T00:00:00"),
        (4, "2026-13-01T00:00:00Z"),
    ] {
        let bad = with_field(event(0), "timestamp", json!(timestamp));
        assert_event_rejected(&server, bad, index, "timestamp").await;
    }
    assert_only_sentinel_stored(&server).await;
}

/// A path of `segments` segments totalling exactly `len` characters.
fn path_of(len: usize, segments: usize) -> String {
    let letters = len - (segments - 1);
    let mut parts: Vec<String> = (0..segments)
        .map(|_| "a".repeat(letters / segments))
        .collect();
    parts[segments - 1].push_str(&"b".repeat(letters % segments));
    let path = parts.join("/");
    assert_eq!(path.len(), len);
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_path_rules_are_enforced() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let eleven_segments = (0..11)
        .map(|i| format!("s{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let bad_paths = [
        "Environments/production/db".to_owned(),
        "/environments/production/db".to_owned(),
        "environments/production/db/".to_owned(),
        "environments//db".to_owned(),
        eleven_segments,
        path_of(513, 10),
        "environments/prod db".to_owned(),
        "environments/prod.db".to_owned(),
    ];
    for (index, path) in (1..).zip(&bad_paths) {
        let bad = with_field(event(0), "secret_path", json!(path));
        assert_event_rejected(&server, bad, index, "secret_path").await;
    }
    assert_only_sentinel_stored(&server).await;

    let ten_segments = (0..10)
        .map(|i| format!("s{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let valid = vec![
        with_field(event(1), "secret_path", json!(path_of(512, 10))),
        with_field(event(2), "secret_path", json!(ten_segments)),
        with_field(event(3), "secret_path", json!("a-b_c/0-9/x")),
        with_field(event(4), "secret_path", Value::Null),
        without_field(
            with_field(event(5), "action", json!("identity_sync")),
            "secret_path",
        ),
    ];
    ingest_ok(&client(), server.base_url(), server.token(), &valid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_source_ip_is_rejected() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    for (index, ip) in [
        (1, "10.0.0.256"),
        (2, "not-an-ip"),
        (3, "10.0.0.0/8"),
        (0, "10.0.0"),
    ] {
        let bad = with_field(event(0), "source_ip", json!(ip));
        assert_event_rejected(&server, bad, index, "source_ip").await;
    }
    assert_only_sentinel_stored(&server).await;
    let valid = vec![
        with_field(event(1), "source_ip", json!("2001:db8::1")),
        with_field(event(2), "source_ip", json!("192.168.1.1")),
    ];
    ingest_ok(&client(), server.base_url(), server.token(), &valid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_identity_type_is_rejected() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    for (index, identity_type) in [(2, "robot"), (1, "Service_Account")] {
        let bad = with_field(event(0), "identity_type", json!(identity_type));
        assert_event_rejected(&server, bad, index, "identity_type").await;
    }
    assert_only_sentinel_stored(&server).await;
    let valid: Vec<Value> = ["user", "service_account", "group", "system"]
        .into_iter()
        .zip(1..)
        .map(|(identity_type, i)| with_field(event(i), "identity_type", json!(identity_type)))
        .collect();
    ingest_ok(&client(), server.base_url(), server.token(), &valid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_data_must_be_an_object_of_at_most_16_kib() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let too_big = json!({ "blob": "x".repeat(17 * 1024) });
    let bad_values = [json!([1, 2, 3]), json!("text"), json!(7), too_big];
    for (index, extra_data) in (1..).zip(bad_values) {
        let bad = with_field(event(0), "extra_data", extra_data);
        assert_event_rejected(&server, bad, index, "extra_data").await;
    }
    assert_only_sentinel_stored(&server).await;
    let eight_kib = json!({ "blob": "x".repeat(8 * 1024), "nested": { "list": [1, "two", null] } });
    let valid = vec![with_field(event(1), "extra_data", eight_kib)];
    ingest_ok(&client(), server.base_url(), server.token(), &valid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_with_one_invalid_event_stores_nothing() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let mut events = events_with_producer_ids(0, 5);
    events.insert(3, with_field(event(3), "action", json!("teleport")));
    let reply = post_events(
        &client,
        server.base_url(),
        server.token(),
        json!({ "events": events }),
    )
    .await;
    assert_validation_error(&reply, "events[3].action");
    assert_only_sentinel_stored(&server).await;

    // The rejected producer ids were not burned: the valid events alone are accepted and stored.
    events.remove(3);
    let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
    wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_batch_is_validation_error() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let reply = post_events(
        &client(),
        server.base_url(),
        server.token(),
        json!({ "events": [] }),
    )
    .await;
    assert_validation_error(&reply, "events");
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// One valid event padded with whitespace to exactly `total_len` bytes.
fn padded_body(total_len: usize) -> Vec<u8> {
    let mut body = format!("{{\"events\": [{}]", event(0)).into_bytes();
    assert!(body.len() < total_len);
    body.resize(total_len - 1, b' ');
    body.push(b'}');
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_16_mib_is_payload_too_large() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let (base, token) = (server.base_url(), server.token());

    let with_length = padded_body(17 * MIB);
    let reply = post_raw(&client, base, token, "application/json", with_length).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Chunked, without Content-Length: the server must count the bytes itself.
    let chunks: Vec<Vec<u8>> = padded_body(17 * MIB)
        .chunks(MIB)
        .map(<[u8]>::to_vec)
        .collect();
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let reply = post_raw(
        &client,
        base,
        token,
        "application/json",
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let under_limit = padded_body(16 * MIB - 4096);
    let reply = post_raw(&client, base, token, "application/json", under_limit).await;
    assert_eq!(
        reply.0,
        StatusCode::OK,
        "a body under 16 MiB is accepted: {}",
        reply.2
    );
    assert_eq!(reply.2["accepted"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_10000_events_is_payload_too_large() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let events: Vec<Value> = (0..10_001).map(event).collect();
    let reply = post_events(
        &client,
        server.base_url(),
        server.token(),
        json!({ "events": events }),
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let ids = ingest_ok(
        &client,
        server.base_url(),
        server.token(),
        &events[..10_000],
    )
    .await;
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        10_000,
        "ids are distinct"
    );
}

// ---------------------------------------------------------------------------------------------
// NDJSON
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_batches_are_accepted() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let events = events_with_producer_ids(0, 3);
    let body = format!("{}\n\n{}\n   \n{}\n\n", events[0], events[1], events[2]);
    let reply = post_raw(
        &client,
        server.base_url(),
        server.token(),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "NDJSON ingest: {}", reply.2);
    assert_eq!(reply.2["accepted"], json!(3));
    assert_eq!(reply_ids(&reply.2), ids_of(&events));
    let logs = wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids_of(&events),
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_eq!(logs.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_with_a_malformed_line_is_invalid_request() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let body = format!("{}\n{{\"action\": \"read\"\n{}\n", event(0), event(1));
    let reply = post_raw(
        &client,
        server.base_url(),
        server.token(),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    assert_only_sentinel_stored(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Authentication and scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn missing_authorization_is_authentication_required() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let body = json!({ "events": [event(0)] });
    let reply = send(client.post(events_url(server.base_url())).json(&body)).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authentication_required");
    let reply = send(client.get(format!("{}/v1/audit/logs", server.base_url()))).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authentication_required");
    assert_only_sentinel_stored(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_token_is_token_invalid() {
    let dir = TestDir::new();
    let (server, _auth) = start_with_static_tokens(&dir).await;
    let reply = post_events(
        &client(),
        server.base_url(),
        &random_token(),
        json!({ "events": [event(0)] }),
    )
    .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_without_write_scope_is_insufficient_scope() {
    let dir = TestDir::new();
    let (server, auth) = start_with_static_tokens(&dir).await;
    let client = client();
    let events = events_with_producer_ids(0, 1);
    let body = json!({ "events": [without_field(events[0].clone(), "tenant_id")] });
    let reply = post_events(&client, server.base_url(), &auth.reader.secret, body).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
    let logs = fetch_all_logs_as(&client, server.base_url(), &auth.reader.secret, None).await;
    assert!(logs.is_empty(), "a refused ingest stored events: {logs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_file_disables_the_bootstrap_token() {
    let dir = TestDir::new();
    let (server, _auth) = start_with_static_tokens(&dir).await;
    let token_file = dir.data_dir().join("bootstrap-token");
    assert!(
        !token_file.try_exists().expect("stat"),
        "bootstrap token written despite tokens file"
    );
    assert!(
        server.bootstrap_token().is_none(),
        "bootstrap token printed despite tokens file"
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tenant_bound_writer_stores_events_under_its_tenant() {
    let dir = TestDir::new();
    let (server, auth) = start_with_static_tokens(&dir).await;
    let client = client();
    let base = server.base_url();
    let events: Vec<Value> = (0..3)
        .map(|i| with_id(event_for_tenant(i, None), &producer_id()))
        .collect();
    let mut ids = ingest_ok(&client, base, &auth.writer.secret, &events).await;
    // Naming its own tenant explicitly is allowed.
    let own_tenant = vec![with_id(event_for_tenant(3, Some(TENANT)), &producer_id())];
    ids.extend(ingest_ok(&client, base, &auth.writer.secret, &own_tenant).await);

    let seen_by_reader = wait_until_visible(
        &client,
        base,
        &auth.reader.secret,
        None,
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_eq!(seen_by_reader.len(), 4);
    let seen_by_admin = fetch_all_logs(&client, base, &auth.admin.secret, TENANT).await;
    assert_each_present_once(&seen_by_admin, &ids);
    assert_eq!(seen_by_admin.len(), 4);
    let other_tenant = fetch_all_logs(&client, base, &auth.admin.secret, OTHER_TENANT).await;
    assert!(
        other_tenant.is_empty(),
        "events leaked into {OTHER_TENANT}: {other_tenant:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_bound_writer_cannot_write_another_tenant() {
    let dir = TestDir::new();
    let (server, auth) = start_with_static_tokens(&dir).await;
    let client = client();
    let base = server.base_url();
    let events = vec![
        with_id(event_for_tenant(0, None), &producer_id()),
        with_id(event_for_tenant(1, Some(OTHER_TENANT)), &producer_id()),
    ];
    let reply = post_events(
        &client,
        base,
        &auth.writer.secret,
        json!({ "events": events }),
    )
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");

    let sentinel = vec![with_id(event_for_tenant(2, None), &producer_id())];
    let sentinel_ids = ingest_ok(&client, base, &auth.writer.secret, &sentinel).await;
    let own = wait_until_visible(
        &client,
        base,
        &auth.reader.secret,
        None,
        &sentinel_ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_eq!(own.len(), 1, "only the sentinel is stored: {own:?}");
    let other = fetch_all_logs(&client, base, &auth.admin.secret, OTHER_TENANT).await;
    assert!(other.is_empty(), "denied batch stored events: {other:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_tenants_token_requires_tenant_id_on_each_event() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let missing_tenant = without_field(event(1), "tenant_id");
    assert_event_rejected(&server, missing_tenant, 1, "tenant_id").await;
    assert_only_sentinel_stored(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn all_tenants_token_read_requires_x_tenant_id() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let reply = get_logs(
        &client(),
        server.base_url(),
        server.token(),
        None,
        "limit=10",
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_bound_reader_cannot_pick_another_tenant() {
    let dir = TestDir::new();
    let (server, auth) = start_with_static_tokens(&dir).await;
    let client = client();
    let base = server.base_url();
    let foreign = vec![with_id(
        event_for_tenant(0, Some(OTHER_TENANT)),
        &producer_id(),
    )];
    let foreign_ids = ingest_ok(&client, base, &auth.admin.secret, &foreign).await;
    wait_until_visible(
        &client,
        base,
        &auth.admin.secret,
        Some(OTHER_TENANT),
        &foreign_ids,
        VISIBILITY_DEADLINE,
    )
    .await;

    let reply = get_logs(
        &client,
        base,
        &auth.reader.secret,
        Some(OTHER_TENANT),
        "limit=10",
    )
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
    let own = fetch_all_logs_as(&client, base, &auth.reader.secret, None).await;
    assert!(
        own.is_empty(),
        "{TENANT} reader sees another tenant's events: {own:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let (base, token) = (server.base_url(), server.token());

    let health = get_json(&client, format!("{base}/v1/health")).await;
    let ingested = post_events(&client, base, token, json!({ "events": [event(0)] })).await;
    assert_eq!(ingested.0, StatusCode::OK);
    let invalid = post_events(&client, base, token, json!({ "events": [] })).await;
    assert_validation_error(&invalid, "events");
    let unauthenticated = send(client.get(format!("{base}/v1/audit/logs"))).await;
    assert_error(
        &unauthenticated,
        StatusCode::UNAUTHORIZED,
        "authentication_required",
    );
    let malformed = post_raw(&client, base, token, "application/json", "{").await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "invalid_request");
    let unknown_route = send(
        client
            .get(format!("{base}/v1/audit/no-such-route"))
            .bearer_auth(token),
    )
    .await;
    assert_error(&unknown_route, StatusCode::NOT_FOUND, "not_found");

    let replies = [
        &health,
        &ingested,
        &invalid,
        &unauthenticated,
        &malformed,
        &unknown_route,
    ];
    let mut request_ids = HashSet::new();
    for (status, headers, body) in replies {
        let id = request_id_header(headers)
            .unwrap_or_else(|| panic!("{status} response without X-Request-ID: {body}"));
        assert!(!id.is_empty());
        request_ids.insert(id.to_owned());
    }
    assert_eq!(
        request_ids.len(),
        replies.len(),
        "generated request ids are unique"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_request_id_is_echoed() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let (base, token) = (server.base_url(), server.token());
    let ingest = |body: Value, request_id: &'static str| {
        let request = client
            .post(events_url(base))
            .bearer_auth(token)
            .header("X-Request-ID", request_id);
        send(request.json(&body))
    };

    let accepted = ingest(json!({ "events": [event(0)] }), "req_it_echo_ok").await;
    assert_eq!(accepted.0, StatusCode::OK);
    assert_eq!(request_id_header(&accepted.1), Some("req_it_echo_ok"));

    let rejected = ingest(json!({ "events": [] }), "req_it_echo_422").await;
    assert_validation_error(&rejected, "events");
    assert_eq!(request_id_header(&rejected.1), Some("req_it_echo_422"));

    let request = client
        .get(format!("{base}/v1/nothing-here"))
        .header("X-Request-ID", "req_it_echo_404");
    let not_found = send(request).await;
    assert_error(&not_found, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(request_id_header(&not_found.1), Some("req_it_echo_404"));
}

// ---------------------------------------------------------------------------------------------
// Successful ingest
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn service_assigned_ids_are_sortable_in_ingest_order() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let mut ids = Vec::new();
    for batch in 0..3 {
        let events: Vec<Value> = (0..4).map(|i| event(batch * 10 + i)).collect();
        ids.extend(ingest_ok(&client, server.base_url(), server.token(), &events).await);
    }
    for id in &ids {
        assert!(
            id.starts_with("log_") && id.len() > 4,
            "service id {id} must start with log_"
        );
    }
    for pair in ids.windows(2) {
        assert!(
            pair[0] < pair[1],
            "ids not increasing in ingest order: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_ids_are_returned_as_sent() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let first = producer_id();
    let third = producer_id();
    let events = vec![
        with_id(event(0), &first),
        event(1),
        with_id(event(2), &third),
        event(3),
    ];
    let reply = post_events(
        &client,
        server.base_url(),
        server.token(),
        json!({ "events": events }),
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    assert_eq!(reply.2["accepted"], json!(4));
    let ids = reply_ids(&reply.2);
    assert_eq!(ids.len(), 4);
    assert_eq!(
        (ids[0].as_str(), ids[2].as_str()),
        (first.as_str(), third.as_str())
    );
    assert!(ids[1].starts_with("log_") && ids[3].starts_with("log_"));
    let logs = wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_each_present_once(&logs, &ids);
    assert_eq!(logs.len(), 4);
}

/// Asserts `stored` has exactly the §2 fields (a `tenant_id`, if echoed, must be right) and
/// that every field equals `sent`, except the normalised timestamp.
fn assert_stored_as_sent(stored: &Value, sent: &Value, normalised_timestamp: &str) {
    let keys: HashSet<&str> = stored
        .as_object()
        .expect("event object")
        .keys()
        .map(String::as_str)
        .collect();
    for field in API_FIELDS {
        assert!(
            keys.contains(field),
            "stored event lacks `{field}`: {stored}"
        );
    }
    for key in &keys {
        assert!(
            API_FIELDS.contains(key) || *key == "tenant_id",
            "unexpected field `{key}`: {stored}"
        );
    }
    if keys.contains("tenant_id") {
        assert_eq!(stored["tenant_id"], json!(TENANT));
    }
    assert_eq!(
        stored["timestamp"],
        json!(normalised_timestamp),
        "timestamp normalisation"
    );
    for field in API_FIELDS.iter().filter(|field| **field != "timestamp") {
        assert_eq!(stored[*field], sent[*field], "field `{field}` of {stored}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_events_round_trip_in_the_spec_shape() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let cases = [
        (
            "2026-04-23T20:00:00.123+02:00",
            "2026-04-23T18:00:00.123000Z",
        ),
        ("2026-04-23T18:00:01Z", "2026-04-23T18:00:01.000000Z"),
        (
            "2026-04-23T13:00:02.654321-05:00",
            "2026-04-23T18:00:02.654321Z",
        ),
    ];
    let events: Vec<Value> = (0..)
        .zip(cases)
        .map(|(i, (input, _))| {
            let event = with_id(event(i), &producer_id());
            let event = with_field(
                event,
                "extra_data",
                json!({ "case": i, "nested": { "ok": true } }),
            );
            with_field(event, "timestamp", json!(input))
        })
        .collect();
    let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
    let logs = wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    assert_eq!(logs.len(), 3);

    // Newest first: the last case has the latest instant.
    for (stored, (sent, (_, normalised))) in logs.iter().zip(events.iter().zip(cases).rev()) {
        assert_stored_as_sent(stored, sent, normalised);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_visible_within_one_second_of_the_ack() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    for round in 0..3 {
        let events: Vec<Value> = (0..50).map(|i| event(round * 100 + i)).collect();
        let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
        let acked_at = Instant::now();
        wait_until_visible(
            &client,
            server.base_url(),
            server.token(),
            Some(TENANT),
            &ids,
            VISIBILITY_DEADLINE,
        )
        .await;
        assert!(acked_at.elapsed() <= VISIBILITY_DEADLINE + Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_answer_without_auth() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let (status, _, body) = get_json(&client, format!("{}/v1/health", server.base_url())).await;
    assert_eq!(status, StatusCode::OK, "liveness: {body}");
    let (status, _, body) =
        get_json(&client, format!("{}/v1/health/ready", server.base_url())).await;
    assert_eq!(status, StatusCode::OK, "readiness: {body}");
    assert_eq!(body["status"], json!("ready"), "readiness body: {body}");
}

/// Sum of all samples of `name` (any labels) in a Prometheus text exposition.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_ingest_wal_and_index_series() {
    let dir = TestDir::new();
    let server = start_bootstrap_server(&dir).await;
    let client = client();
    let events: Vec<Value> = (0..3).map(event).collect();
    let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
    wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;

    let request = client
        .get(format!("{}/metrics", server.base_url()))
        .bearer_auth(server.token());
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    let exposition = body
        .as_str()
        .unwrap_or_else(|| panic!("metrics are not text: {body}"))
        .to_owned();
    for name in [
        "scaivault_audit_events_ingested_total",
        "scaivault_audit_ingest_batch_duration_seconds",
        "scaivault_audit_wal_bytes",
        "scaivault_audit_index_commits_total",
        "scaivault_audit_index_documents",
        "scaivault_audit_wal_replay_duration_seconds",
    ] {
        assert!(
            exposition.contains(name),
            "metrics lack {name}:\n{exposition}"
        );
    }
    let ingested = metric_sum(&exposition, "scaivault_audit_events_ingested_total");
    assert!(ingested >= 3.0, "events_ingested_total = {ingested}");
    let batches = metric_sum(
        &exposition,
        "scaivault_audit_ingest_batch_duration_seconds_count",
    );
    assert!(
        batches >= 1.0,
        "ingest_batch_duration_seconds_count = {batches}"
    );
    let wal_bytes = metric_sum(&exposition, "scaivault_audit_wal_bytes");
    assert!(wal_bytes > 0.0, "wal_bytes = {wal_bytes}");
}
