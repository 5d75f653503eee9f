//! The audit of the audit (issue 13): every read of audit data by an authenticated caller is
//! itself an event of the tenant read, with the caller, the endpoint and the filters (never the
//! cursor); health, metrics, the OpenAPI document, the public keys and ingest are not reads;
//! `--audit-of-audit-enabled false` records nothing; a graceful shutdown stores what is queued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::harness::export::*;
use crate::harness::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const USER_AGENT: &str = "audit-of-audit-test/1.0";
const DEADLINE: Duration = Duration::from_secs(20);

/// One request the test makes, with its own request id.
struct Call {
    request_id: String,
    method: Method,
    path: String,
    token: String,
    tenant: Option<&'static str>,
    body: Option<Value>,
}

impl Call {
    fn new(label: &str, method: Method, path: &str, token: &str) -> Call {
        Call {
            request_id: format!("req_aoa_{label}_{}", fastrand::u32(..)),
            method,
            path: path.to_string(),
            token: token.to_string(),
            tenant: None,
            body: None,
        }
    }

    fn tenant(mut self, tenant: &'static str) -> Call {
        self.tenant = Some(tenant);
        self
    }

    fn body(mut self, body: Value) -> Call {
        self.body = Some(body);
        self
    }

    async fn send(&self, client: &Client, base: &str) -> Reply {
        let mut request = client
            .request(self.method.clone(), format!("{base}{}", self.path))
            .header("X-Request-ID", &self.request_id)
            .header("User-Agent", USER_AGENT);
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(tenant) = self.tenant {
            request = request.header("X-Tenant-ID", tenant);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        send(request).await
    }
}

/// The counter `scaivault_audit_audit_reads_recorded_total`.
async fn recorded_total(client: &Client, base: &str) -> u64 {
    let (status, _, body) = send(client.get(format!("{base}/metrics"))).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text");
    text.lines()
        .find_map(|line| line.strip_prefix("scaivault_audit_audit_reads_recorded_total "))
        .map(|value| value.trim().parse().expect("a counter value"))
        .unwrap_or_else(|| panic!("no audit_reads_recorded counter:\n{text}"))
}

/// Every event of `tenant` (through the all-tenant token; those reads are recorded too).
async fn tenant_events(client: &Client, base: &str, admin: &str, tenant: &str) -> Vec<Value> {
    fetch_all_logs(client, base, admin, tenant).await
}

/// Waits until an event with each of `request_ids` is visible in `tenant`.
async fn wait_for_requests(
    client: &Client,
    base: &str,
    admin: &str,
    tenant: &str,
    request_ids: &[&str],
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let events = tenant_events(client, base, admin, tenant).await;
        let missing: Vec<&&str> = request_ids
            .iter()
            .filter(|id| !events.iter().any(|event| event["request_id"] == json!(id)))
            .collect();
        if missing.is_empty() {
            return events;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no audit-of-audit event for {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one event of `request_id`.
fn event_of<'a>(events: &'a [Value], request_id: &str) -> &'a Value {
    let matching: Vec<&Value> = events
        .iter()
        .filter(|event| event["request_id"] == json!(request_id))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one event for {request_id}: {matching:?}"
    );
    matching[0]
}

/// Checks the event of `call`: action, caller, endpoint, filters, status.
fn assert_recorded(
    events: &[Value],
    call: &Call,
    (action, identity): (&str, &str),
    endpoint: &str,
    filters: Value,
    status: StatusCode,
) {
    let event = event_of(events, &call.request_id);
    assert_eq!(event["action"], action, "{event}");
    assert_eq!(event["identity_id"], identity, "{event}");
    assert_eq!(event["identity_type"], "service_account", "{event}");
    assert_eq!(event["source_ip"], "127.0.0.1", "{event}");
    assert_eq!(event["user_agent"], USER_AGENT, "{event}");
    assert_eq!(event["success"], json!(status.is_success()), "{event}");
    assert!(event["duration_ms"].is_u64(), "{event}");
    assert_eq!(event["secret_path"], Value::Null, "{event}");
    assert_eq!(event["extra_data"]["endpoint"], endpoint, "{event}");
    assert_eq!(event["extra_data"]["filters"], filters, "{event}");
    assert_eq!(event["extra_data"]["status"], status.as_u16(), "{event}");
}

fn export_body(bucket: &str) -> Value {
    json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
        "filters": {"action": "read"},
        "destination": {"type": "file", "bucket": bucket, "prefix": "aoa/"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_audit_data_is_recorded_with_the_caller_tenant_endpoint_and_filters() {
    let dir = TestDir::new();
    let out = file_bucket(&dir, "out");
    let reader = StaticToken::new("reader", &["audit:read"], Some(TENANT));
    let exporter = StaticToken::new("exporter", &["audit:export"], Some(TENANT));
    let writer = StaticToken::new("writer", &["audit:write"], Some(TENANT));
    let admin = StaticToken::new("admin", &["audit:read", "audit:write"], None);
    let tokens = [&reader, &exporter, &writer, &admin];
    let server = start_with_tokens(&dir, "tokens.toml", &tokens, None, FAST_COMMITS).await;
    let (client, base) = (client(), server.base_url());
    let events = events_with_producer_ids(0, 30);
    ingest_ok(&client, base, &writer.secret, &events).await;
    wait_until_visible(
        &client,
        base,
        &admin.secret,
        Some(TENANT),
        &ids_of(&events),
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    let before = recorded_total(&client, base).await;

    // Not reads of audit data: health, metrics, the OpenAPI document, ingest, no credentials.
    let (read, export) = (reader.secret.as_str(), exporter.secret.as_str());
    let not_reads = [
        Call::new("health", Method::GET, "/v1/health", ""),
        Call::new("ready", Method::GET, "/v1/health/ready", ""),
        Call::new("metrics", Method::GET, "/metrics", ""),
        Call::new("openapi", Method::GET, "/v1/audit/openapi.json", read),
        Call::new("keys", Method::GET, "/v1/audit/integrity/keys", ""),
        Call::new("ingest", Method::POST, "/v1/audit/events", &writer.secret)
            .body(json!({"events": [event(100)]})),
        Call::new("anonymous", Method::GET, "/v1/audit/logs", ""),
        Call::new("bad-token", Method::GET, "/v1/audit/summary", "skt_wrong"),
    ];
    for call in &not_reads {
        call.send(&client, base).await;
    }

    // The reads. The first page's cursor goes into the second request, never into an event.
    let first = Call::new(
        "logs",
        Method::GET,
        "/v1/audit/logs?action=read&limit=1",
        read,
    );
    let (status, _, page) = first.send(&client, base).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let cursor = page["cursor"].as_str().expect("a second page").to_string();
    let second_path = format!(
        "/v1/audit/logs?action=read&limit=1&cursor={}",
        percent_encode(&cursor)
    );
    let second = Call::new("logs-page-2", Method::GET, &second_path, read);
    let path = events[0]["secret_path"].as_str().unwrap().to_string();
    let secret = Call::new(
        "secret",
        Method::GET,
        &format!("/v1/audit/secrets/{path}?limit=5"),
        read,
    );
    let identity = Call::new(
        "identity",
        Method::GET,
        "/v1/audit/identities/user%3Aalice%40acme.example?success=true",
        read,
    );
    let summary = Call::new("summary", Method::GET, "/v1/audit/summary?top=3", read);
    let checkpoints = Call::new(
        "checkpoints",
        Method::GET,
        "/v1/audit/integrity/checkpoints?limit=5",
        read,
    );
    let bad_filter = Call::new(
        "bad-filter",
        Method::GET,
        "/v1/audit/logs?limit=0&access_token=s3cret",
        read,
    );
    let other_tenant =
        Call::new("other-tenant", Method::GET, "/v1/audit/logs", read).tenant(OTHER_TENANT);
    let wrong_scope = Call::new("wrong-scope", Method::GET, "/v1/audit/summary", export);
    let admin_read = Call::new(
        "admin",
        Method::GET,
        "/v1/audit/logs?limit=2",
        &admin.secret,
    )
    .tenant(TENANT);
    let reads = [
        &second,
        &secret,
        &identity,
        &summary,
        &checkpoints,
        &bad_filter,
        &other_tenant,
        &wrong_scope,
        &admin_read,
    ];
    let mut statuses = vec![status];
    for call in reads {
        statuses.push(call.send(&client, base).await.0);
    }

    // Exports: create (accepted, then refused), list, status, an unknown id, cancel.
    let create = Call::new("create", Method::POST, "/v1/audit/export", export)
        .body(export_body(&bucket_name(&out)));
    let (status, _, created) = create.send(&client, base).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let export_id = created["export_id"].as_str().unwrap().to_string();
    let mut refused_body = export_body(&bucket_name(&out));
    refused_body["filters"] = json!({"action": "launch", "token": "s3cret"});
    let refused =
        Call::new("create-refused", Method::POST, "/v1/audit/export", export).body(refused_body);
    let list = Call::new("list", Method::GET, "/v1/audit/exports?limit=5", export);
    let status_call = Call::new(
        "status",
        Method::GET,
        &format!("/v1/audit/exports/{export_id}"),
        export,
    );
    let unknown = Call::new(
        "unknown",
        Method::GET,
        "/v1/audit/exports/exp_01jz0000000000000000000000",
        export,
    );
    let cancel = Call::new(
        "cancel",
        Method::DELETE,
        &format!("/v1/audit/exports/{export_id}"),
        export,
    );
    let export_calls = [&refused, &list, &status_call, &unknown, &cancel];
    let mut export_statuses = Vec::new();
    for call in export_calls {
        export_statuses.push(call.send(&client, base).await.0);
    }
    assert_eq!(export_statuses[0], StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(export_statuses[3], StatusCode::NOT_FOUND);
    let cancel_status = export_statuses[4];
    assert!(
        [StatusCode::OK, StatusCode::CONFLICT].contains(&cancel_status),
        "{cancel_status}"
    );

    let mut expected: Vec<&str> = vec![first.request_id.as_str()];
    expected.extend(reads.iter().map(|call| call.request_id.as_str()));
    expected.push(create.request_id.as_str());
    expected.extend(export_calls.iter().map(|call| call.request_id.as_str()));
    let all = wait_for_requests(&client, base, &admin.secret, TENANT, &expected).await;

    let reader_id = ("audit_read", "sa:reader");
    assert_recorded(
        &all,
        &first,
        reader_id,
        "GET /v1/audit/logs",
        json!({"action": "read", "limit": "1"}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &second,
        reader_id,
        "GET /v1/audit/logs",
        json!({"action": "read", "limit": "1"}),
        statuses[1],
    );
    assert_recorded(
        &all,
        &secret,
        reader_id,
        "GET /v1/audit/secrets/{path}",
        json!({"path": path, "limit": "5"}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &identity,
        reader_id,
        "GET /v1/audit/identities/{identity_id}",
        json!({"identity_id": "user:alice@acme.example", "success": "true"}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &summary,
        reader_id,
        "GET /v1/audit/summary",
        json!({"top": "3"}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &checkpoints,
        reader_id,
        "GET /v1/audit/integrity/checkpoints",
        json!({"limit": "5"}),
        StatusCode::OK,
    );
    // A refused read is recorded, unknown parameters by name only.
    let refused_filter = event_of(&all, &bad_filter.request_id);
    assert_eq!(refused_filter["success"], false);
    assert_eq!(refused_filter["extra_data"]["filters"]["limit"], "0");
    let redacted = &refused_filter["extra_data"]["filters"]["access_token"];
    assert!(
        redacted.as_str().unwrap().contains("redacted"),
        "{redacted}"
    );
    // A tenant-bound token asking for another tenant is recorded in its own tenant (403).
    assert_recorded(
        &all,
        &other_tenant,
        reader_id,
        "GET /v1/audit/logs",
        json!({}),
        StatusCode::FORBIDDEN,
    );
    assert_recorded(
        &all,
        &wrong_scope,
        ("audit_read", "sa:exporter"),
        "GET /v1/audit/summary",
        json!({}),
        StatusCode::FORBIDDEN,
    );
    // An all-tenant token is recorded in the tenant it chose.
    assert_recorded(
        &all,
        &admin_read,
        ("audit_read", "sa:admin"),
        "GET /v1/audit/logs",
        json!({"limit": "2"}),
        StatusCode::OK,
    );

    // The accepted export is its one export_created event, carrying the request's details.
    let exporter_id = ("audit_read", "sa:exporter");
    let accepted = event_of(&all, &create.request_id);
    assert_eq!(accepted["action"], "export_created", "{accepted}");
    assert_eq!(accepted["identity_id"], "sa:exporter");
    assert_eq!(accepted["success"], true);
    assert_eq!(accepted["source_ip"], "127.0.0.1");
    assert_eq!(accepted["extra_data"]["export_id"], json!(export_id));
    assert_eq!(accepted["extra_data"]["endpoint"], "POST /v1/audit/export");
    assert_eq!(accepted["extra_data"]["status"], 202);
    assert_eq!(
        accepted["extra_data"]["filters"],
        json!({"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "action": "read"})
    );
    let refused_event = event_of(&all, &refused.request_id);
    assert_eq!(refused_event["action"], "export_created", "{refused_event}");
    assert_eq!(refused_event["success"], false);
    assert_eq!(refused_event["extra_data"]["status"], 422);
    assert_eq!(
        refused_event["extra_data"]["filters"]["action"], "launch",
        "{refused_event}"
    );
    assert!(
        !refused_event.to_string().contains("s3cret"),
        "{refused_event}"
    );
    assert_recorded(
        &all,
        &list,
        exporter_id,
        "GET /v1/audit/exports",
        json!({"limit": "5"}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &status_call,
        exporter_id,
        "GET /v1/audit/exports/{export_id}",
        json!({"export_id": export_id}),
        StatusCode::OK,
    );
    assert_recorded(
        &all,
        &unknown,
        exporter_id,
        "GET /v1/audit/exports/{export_id}",
        json!({"export_id": "exp_01jz0000000000000000000000"}),
        StatusCode::NOT_FOUND,
    );
    assert_recorded(
        &all,
        &cancel,
        exporter_id,
        "DELETE /v1/audit/exports/{export_id}",
        json!({"export_id": export_id}),
        cancel_status,
    );

    // Nothing else: no event for the requests that are not reads, no cursor, no token anywhere.
    for call in &not_reads {
        let found: Vec<&Value> = all
            .iter()
            .filter(|event| event["request_id"] == json!(call.request_id))
            .collect();
        assert!(found.is_empty(), "{}: {found:?}", call.path);
    }
    let text = serde_json::to_string(&all).unwrap();
    for secret in [&cursor, &reader.secret, &admin.secret, &exporter.secret] {
        assert!(!text.contains(secret.as_str()), "{secret} was recorded");
    }
    assert!(!text.contains("s3cret"));
    let ingested = ids_of(&events);
    let recorded = all.iter().filter(|event| {
        event["action"] == "audit_read" && !ingested.iter().any(|id| event["id"] == json!(id))
    });
    for event in recorded {
        let filters = event["extra_data"]["filters"].as_object().unwrap();
        assert!(!filters.contains_key("cursor"), "{event}");
        let endpoint = event["extra_data"]["endpoint"].as_str().unwrap();
        assert!(endpoint.contains(" /v1/audit/"), "{event}");
        assert!(!endpoint.contains("health") && !endpoint.contains("openapi"));
        assert!(!endpoint.contains("integrity/keys"), "{event}");
    }
    // Nothing of the other tenant: it was never read.
    let other = tenant_events(&client, base, &admin.secret, OTHER_TENANT).await;
    assert!(
        other.iter().all(|event| event["identity_id"] == "sa:admin"),
        "{other:?}"
    );
    // The summary shows them like any other event.
    let (status, _, summary) = send(
        client
            .get(format!("{base}/v1/audit/summary"))
            .bearer_auth(&admin.secret)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        summary["actions_breakdown"]["audit_read"].as_u64().unwrap() >= 13,
        "{summary}"
    );
    assert!(recorded_total(&client, base).await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_setting_off_no_read_is_recorded() {
    let dir = TestDir::new();
    let args = [FAST_COMMITS, &["--audit-of-audit-enabled", "false"]].concat();
    let server = Server::start(&dir.data_dir(), &args).await;
    let (client, base, token) = (client(), server.base_url(), server.token());
    let events = events_with_producer_ids(0, 10);
    ingest_ok(&client, base, token, &events).await;
    for query in ["limit=1", "action=read", "limit=0"] {
        get_logs(&client, base, token, Some(TENANT), query).await;
    }
    for path in [
        "/v1/audit/summary",
        "/v1/audit/identities/sa%3Ax",
        "/v1/audit/exports",
    ] {
        send(
            client
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .header("X-Tenant-ID", TENANT),
        )
        .await;
    }
    // A marker ingested after the reads: once it is visible, recorded reads would be too.
    let marker = events_with_producer_ids(99, 1).remove(0);
    ingest_ok(&client, base, token, std::slice::from_ref(&marker)).await;
    wait_until_visible(
        &client,
        base,
        token,
        Some(TENANT),
        &ids_of(std::slice::from_ref(&marker)),
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = fetch_all_logs(&client, base, token, TENANT).await;
    assert_eq!(logs.len(), 11, "only the ingested events: {logs:?}");
    assert!(logs.iter().all(|log| log["action"] != "audit_read"));
    assert_eq!(recorded_total(&client, base).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_just_before_a_graceful_shutdown_are_stored() {
    let dir = TestDir::new();
    // Commits practically never: what survives the restart was stored before the exit.
    let mut server = Server::start(&dir.data_dir(), NO_COMMITS).await;
    let (client, base) = (client(), server.base_url().to_string());
    let token = server.token().to_string();
    let calls: Vec<Call> = (0..20)
        .map(|i| {
            Call::new(
                &format!("shutdown-{i}"),
                Method::GET,
                "/v1/audit/logs",
                &token,
            )
            .tenant(TENANT)
        })
        .collect();
    for call in &calls {
        assert_eq!(call.send(&client, &base).await.0, StatusCode::OK);
    }
    assert!(server.terminate().await.success());
    let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
    let ids: Vec<&str> = calls.iter().map(|call| call.request_id.as_str()).collect();
    let all = wait_for_requests(&client, server.base_url(), &token, TENANT, &ids).await;
    for call in &calls {
        let event = event_of(&all, &call.request_id);
        assert_eq!(event["identity_id"], "system:bootstrap");
        assert_eq!(event["identity_type"], "system");
    }
}
