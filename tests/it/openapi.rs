//! `docs/openapi.json` against the real server: every representative response (successes and
//! each error status) is validated with `jsonschema` against the schema the document declares
//! for its path, method and status, declared headers are checked, every declared operation is
//! routed, and every declared query parameter constraint is what the server enforces. Any drift
//! between the server and the document fails here.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::*;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const TEST_DEADLINE: Duration = Duration::from_secs(300);
const SECRET: &str = "environments/production/db";
const IDENTITY: &str = "user:alice@acme.example";
const LOGS: &str = "/v1/audit/logs";
const EVENTS: &str = "/v1/audit/events";
const SECRETS: &str = "/v1/audit/secrets/{path}";
const IDENTITIES: &str = "/v1/audit/identities/{identity_id}";
const SUMMARY: &str = "/v1/audit/summary";
const EXPORT: &str = "/v1/audit/export";
const EXPORTS: &str = "/v1/audit/exports";
const EXPORT_ONE: &str = "/v1/audit/exports/{export_id}";
const CHECKPOINTS: &str = "/v1/audit/integrity/checkpoints";
const KEYS: &str = "/v1/audit/integrity/keys";
const RETENTION: &str = "/v1/audit/retention";
/// Well-formed, but no export has it.
const UNKNOWN_EXPORT: &str = "exp_01jz0000000000000000000000";
/// Well-formed, but no schedule has it.
const UNKNOWN_SCHEDULE: &str = "sch_01jz0000000000000000000000";
/// Headers whose presence on an undocumented response is drift.
const CHECKED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
];

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

/// `docs/openapi.json`, with the checks other test modules (operator mode) reuse.
pub(crate) struct Document {
    root: Value,
}

impl Document {
    pub(crate) fn load() -> Document {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let text = std::fs::read_to_string(path).expect("read docs/openapi.json");
        Document {
            root: serde_json::from_str(&text).expect("docs/openapi.json is JSON"),
        }
    }

    /// Follows local `$ref`s until a non-reference value.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(target) = value.get("$ref").and_then(Value::as_str) else {
                return value;
            };
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {target}"));
            value = self
                .root
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {target}"));
        }
        panic!("$ref chain too long at {value}");
    }

    fn operations(&self) -> Vec<(String, String)> {
        let mut operations = Vec::new();
        for (path, item) in self.root["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    operations.push((path.clone(), method.clone()));
                }
            }
        }
        operations
    }

    fn operation(&self, path: &str, method: &str) -> &Value {
        let operation = &self.root["paths"][path][method];
        assert!(
            operation.is_object(),
            "{} {path} is not documented",
            method.to_uppercase()
        );
        operation
    }

    /// The operation's parameters, resolved.
    fn parameters(&self, path: &str, method: &str) -> Vec<&Value> {
        self.operation(path, method)["parameters"]
            .as_array()
            .map(|parameters| parameters.iter().map(|p| self.resolve(p)).collect())
            .unwrap_or_default()
    }

    fn query_parameters(&self, path: &str, method: &str) -> Vec<&Value> {
        self.parameters(path, method)
            .into_iter()
            .filter(|parameter| parameter["in"] == "query")
            .collect()
    }

    /// A compiled validator for `schema`, whose `$ref`s resolve inside this document.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let wrapper = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.root["components"].clone(),
            "allOf": [schema],
        });
        jsonschema::options()
            .should_validate_formats(true)
            .build(&wrapper)
            .unwrap_or_else(|error| panic!("schema {schema} does not compile: {error}"))
    }

    fn assert_valid(&self, schema: &Value, instance: &Value, context: &str) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|error| format!("at '{}': {error}", error.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{context}: does not match the documented schema {schema}:\n{}\ninstance: {instance}",
            errors.join("\n")
        );
    }

    /// Validates `reply` against what `method path` declares for its status.
    pub(crate) fn check(&self, path: &str, method: &str, reply: &Reply) {
        let status = reply.0.as_str().to_owned();
        let responses = &self.operation(path, method)["responses"];
        let context = format!("{} {path} -> {status}", method.to_uppercase());
        let response = responses.get(&status).unwrap_or_else(|| {
            let declared: Vec<&String> = responses.as_object().expect("responses").keys().collect();
            panic!(
                "{context}: status not documented (documented: {declared:?}); body: {}",
                reply.2
            )
        });
        self.check_response(response, reply, &context);
    }

    /// Validates `reply` against `#/components/responses/{name}`.
    fn check_component(&self, name: &str, reply: &Reply) {
        let response = &self.root["components"]["responses"][name];
        assert!(response.is_object(), "no component response {name}");
        self.check_response(response, reply, &format!("component response {name}"));
    }

    fn check_response(&self, response: &Value, reply: &Reply, context: &str) {
        let (_, headers, body) = reply;
        let response = self.resolve(response);
        match response.get("content").and_then(Value::as_object) {
            Some(content) => {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_else(|| panic!("{context}: no Content-Type"));
                let media = content.get(content_type).unwrap_or_else(|| {
                    let declared: Vec<&String> = content.keys().collect();
                    panic!(
                        "{context}: Content-Type {content_type} is not documented ({declared:?})"
                    )
                });
                self.assert_valid(&media["schema"], body, &format!("{context}: body"));
            }
            None => assert_eq!(body, &json!(""), "{context}: undocumented body"),
        }
        let declared = response.get("headers").and_then(Value::as_object);
        let mut declared_names = BTreeSet::new();
        for (name, header) in declared.into_iter().flatten() {
            declared_names.insert(name.to_ascii_lowercase());
            let header = self.resolve(header);
            match headers.get(name.as_str()) {
                None => assert_ne!(
                    header["required"],
                    json!(true),
                    "{context}: required header {name} missing"
                ),
                Some(value) => {
                    let text = value.to_str().expect("ASCII header").to_owned();
                    let schema = &header["schema"];
                    let instance = match schema["type"].as_str() {
                        Some("integer") => text.parse::<i64>().map_or(json!(text), Value::from),
                        _ => json!(text),
                    };
                    self.assert_valid(schema, &instance, &format!("{context}: header {name}"));
                }
            }
        }
        for name in CHECKED_HEADERS {
            if headers.contains_key(*name) {
                assert!(
                    declared_names.contains(*name),
                    "{context}: the server sent {name}, which is not documented for this response"
                );
            }
        }
        // Error envelopes only: the `error` field of an export (200) is not one.
        if let Some(error) = body.get("error").filter(|_| !reply.0.is_success()) {
            assert_eq!(
                error["request_id"],
                json!(request_id_header(headers)),
                "{context}: error.request_id vs X-Request-ID"
            );
        }
    }
}

/// A concrete URL path for a documented path template.
fn concrete(path: &str, secret: &str, identity: &str) -> String {
    path.replace("{path}", secret)
        .replace("{identity_id}", &percent_encode(identity))
        .replace("{export_id}", UNKNOWN_EXPORT)
        .replace("{schedule_id}", UNKNOWN_SCHEDULE)
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

struct Tokens {
    rw: StaticToken,
    read_only: StaticToken,
    write_only: StaticToken,
    admin: StaticToken,
    export: StaticToken,
    export_admin: StaticToken,
}

fn tokens() -> Tokens {
    Tokens {
        rw: StaticToken::new("oa-rw", &["audit:read", "audit:write"], Some(TENANT)),
        read_only: StaticToken::new("oa-read", &["audit:read"], Some(TENANT)),
        write_only: StaticToken::new("oa-write", &["audit:write"], Some(TENANT)),
        admin: StaticToken::new("oa-admin", &["audit:read", "audit:write"], None),
        export: StaticToken::new("oa-export", &["audit:export"], Some(TENANT)),
        export_admin: StaticToken::new("oa-export-admin", &["audit:export"], None),
    }
}

impl Tokens {
    fn all(&self) -> Vec<&StaticToken> {
        vec![
            &self.rw,
            &self.read_only,
            &self.write_only,
            &self.admin,
            &self.export,
            &self.export_admin,
        ]
    }
}

/// A recent event of the token's tenant on [`SECRET`] by [`IDENTITY`].
fn trail_event(i: u64, action: &str) -> Value {
    let mut event = event_for_tenant(i, None);
    event["timestamp"] = json!(recent_timestamp(60 + i, i));
    event["action"] = json!(action);
    event["secret_path"] = json!(SECRET);
    event["identity_type"] = json!("user");
    event["identity_id"] = json!(IDENTITY);
    event
}

async fn get(client: &Client, server: &Server, url: &str, token: Option<&str>) -> Reply {
    get_as(client, server.base_url(), url, token, None).await
}

async fn request(
    client: &Client,
    server: &Server,
    method: Method,
    url: &str,
    token: Option<&str>,
) -> Reply {
    let mut builder = client.request(method, format!("{}{url}", server.base_url()));
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    send(builder).await
}

/// An export call as `token` for `tenant`, with a raw body when one is given.
async fn export_call(
    client: &Client,
    server: &Server,
    method: Method,
    url: &str,
    token: &str,
    tenant: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut builder = client
        .request(method, format!("{}{url}", server.base_url()))
        .bearer_auth(token);
    if let Some(tenant) = tenant {
        builder = builder.header("X-Tenant-ID", tenant);
    }
    if let Some(body) = body {
        builder = builder.header(CONTENT_TYPE, "application/json").body(body);
    }
    send(builder).await
}

fn json_bytes(body: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(body).unwrap())
}

/// The documented schema of `POST /v1/audit/export`'s body.
fn export_request_schema(doc: &Document) -> &Value {
    &doc.operation(EXPORT, "post")["requestBody"]["content"]["application/json"]["schema"]
}

// ---------------------------------------------------------------------------------------------
// The document on its own
// ---------------------------------------------------------------------------------------------

#[test]
fn every_schema_compiles_and_examples_match() {
    let doc = Document::load();
    assert_eq!(doc.root["openapi"], "3.1.0");
    let schemas = doc.root["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    for (name, schema) in schemas {
        doc.validator(&json!({ "$ref": format!("#/components/schemas/{name}") }));
        for example in schema["examples"].as_array().into_iter().flatten() {
            doc.assert_valid(schema, example, &format!("example of {name}"));
        }
    }
    // The document's enums are the server's.
    let actions: Vec<&str> = schemas["Action"]["enum"]
        .as_array()
        .expect("Action enum")
        .iter()
        .map(|value| value.as_str().expect("string"))
        .collect();
    // `retention_sweep` (appended after the generated events' list, which stays as it was so that
    // their action mix does not change) is recorded by the retention sweep.
    assert_eq!(actions, [ACTIONS, &["retention_sweep"]].concat());
    // Every operation documents X-Request-ID on every response, and 401 where it authenticates.
    for (path, method) in doc.operations() {
        let operation = doc.operation(&path, &method);
        let protected = operation["security"] != json!([]);
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let response = doc.resolve(response);
            assert!(
                response["headers"]["X-Request-ID"].is_object(),
                "{method} {path} {status} lacks X-Request-ID"
            );
        }
        assert_eq!(
            operation["responses"]["401"].is_object(),
            protected,
            "{method} {path}: 401 documented iff authenticated"
        );
    }
}

/// The checks below would be worthless if the validator accepted anything: drifted bodies fail.
#[test]
fn the_validator_rejects_drifted_bodies() {
    let doc = Document::load();
    let logs_200 = &doc.root["paths"][LOGS]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let event = doc.root["components"]["schemas"]["Event"]["examples"][0].clone();
    let page = |event: Value| {
        json!({"logs": [event], "cursor": null, "has_more": false,
               "complete_through": "2026-04-23T17:55:00.000000Z"})
    };
    assert!(doc.validator(logs_200).is_valid(&page(event.clone())));
    let mut drifted = Vec::new();
    let mut with = |field: &str, value: Value| {
        let mut changed = event.clone();
        changed[field] = value;
        drifted.push(page(changed));
    };
    with("tenant_id", json!("tnt_acme"));
    with("timestamp", json!("2026-04-23T18:00:00Z"));
    with("timestamp", json!("2026-04-23T25:00:00.000000Z"));
    with("action", json!("launch"));
    with("source_ip", json!("999.1.1.1"));
    with("secret_path", json!("Upper/Case"));
    with("duration_ms", json!(-1));
    with("extra_data", Value::Null);
    let mut missing = event.clone();
    missing.as_object_mut().unwrap().remove("request_id");
    drifted.push(page(missing));
    drifted.push(json!({"logs": [], "cursor": null}));
    drifted.push(json!({"logs": [], "cursor": null, "has_more": false, "total": 0}));
    for body in &drifted {
        assert!(
            !doc.validator(logs_200).is_valid(body),
            "accepted a drifted body: {body}"
        );
    }
    let error_422 = &doc.root["paths"][LOGS]["get"]["responses"]["422"]["content"]["application/json"]
        ["schema"];
    let envelope = |code: &str, details: Value| json!({"error": {"code": code, "message": "m", "details": details, "request_id": "req_1"}});
    let validator = doc.validator(error_422);
    assert!(validator.is_valid(&envelope(
        "validation_error",
        json!({"fields": {"limit": "x"}})
    )));
    assert!(!validator.is_valid(&envelope(
        "invalid_request",
        json!({"fields": {"limit": "x"}})
    )));
    assert!(!validator.is_valid(&envelope("validation_error", json!({}))));
    assert!(!validator.is_valid(&json!({"error": {"code": "validation_error", "message": "m"}})));

    let export_200 = &doc.operation(EXPORT_ONE, "get")["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let export = doc.root["components"]["schemas"]["Export"]["examples"][0].clone();
    let validator = doc.validator(export_200);
    assert!(validator.is_valid(&export));
    let drifted_exports = [
        ("status", json!("done")),
        ("from", json!("2026-01-01T00:00:00Z")),
        ("completed_at", json!("yesterday")),
        (
            "files",
            json!([{"key": "part-0001.jsonl", "size_bytes": 1, "records": 1}]),
        ),
        ("error", json!({"code": "oops", "message": "m"})),
        ("filters", json!({"limit": "5"})),
        (
            "destination",
            json!({"type": "s3", "bucket": "b", "prefix": "", "access_key_id": "AKIA"}),
        ),
    ];
    for (field, value) in drifted_exports {
        let mut changed = export.clone();
        changed[field] = value;
        assert!(
            !validator.is_valid(&changed),
            "accepted a drifted export: {changed}"
        );
    }
    let mut missing = export.clone();
    missing.as_object_mut().unwrap().remove("started_at");
    assert!(
        !validator.is_valid(&missing),
        "accepted an export without started_at"
    );
}

// ---------------------------------------------------------------------------------------------
// Responses against the document
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn responses_match_the_document() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "responses_match_the_document", async {
        let doc = Document::load();
        let tokens = tokens();
        // The audit of the audit is off: the summaries below count exactly the ingested events.
        let args = [
            &[
                "--max-body-bytes",
                "65536",
                "--max-batch-events",
                "50",
                "--integrity-checkpoint-interval-seconds",
                "1",
            ],
            AUDIT_OF_AUDIT_OFF,
        ]
        .concat();
        let server =
            start_with_tokens(&dir, "tokens.toml", &tokens.all(), Some(1000), &args).await;
        let client = client();
        let base = server.base_url();
        let rw = tokens.rw.secret.as_str();

        // --- 200s -------------------------------------------------------------------------
        let json_events: Vec<Value> = ["read", "write", "read", "rotate"]
            .iter()
            .enumerate()
            .map(|(i, action)| trail_event(i as u64, action))
            .collect();
        let reply = post_events(&client, base, rw, json!({ "events": json_events })).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(EVENTS, "post", &reply);
        let mut ids = reply_ids(&reply.2);

        let ndjson: String = (10..12)
            .map(|i| format!("{}\n", with_id(trail_event(i, "list"), &producer_id())))
            .collect();
        let reply = post_raw(&client, base, rw, "application/x-ndjson", ndjson.clone()).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(EVENTS, "post", &reply);
        ids.extend(reply_ids(&reply.2));

        // A retried batch: stored once, reported as duplicates.
        let reply = post_raw(&client, base, rw, "application/x-ndjson", ndjson).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["duplicates"], json!(2));
        doc.check(EVENTS, "post", &reply);

        // A partner admin names the tenant; no path, IPv6 source, nulls everywhere.
        let system_event = json!({
            "tenant_id": TENANT, "timestamp": recent_timestamp(5, 0), "action": "identity_sync",
            "identity_type": "system", "identity_id": "system:sync", "success": false,
            "source_ip": "fd00::1", "secret_path": null, "extra_data": {"k": [1, {"x": null}]}
        });
        let reply = post_events(
            &client,
            base,
            &tokens.admin.secret,
            json!({ "events": [system_event] }),
        )
        .await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(EVENTS, "post", &reply);
        ids.extend(reply_ids(&reply.2));
        wait_until_visible(&client, base, rw, None, &ids, VISIBILITY_DEADLINE).await;

        let first = get(&client, &server, &format!("{LOGS}?limit=2"), Some(rw)).await;
        assert_eq!(first.0, StatusCode::OK, "{}", first.2);
        assert_eq!(first.2["has_more"], json!(true));
        doc.check(LOGS, "get", &first);
        let cursor = first.2["cursor"].as_str().expect("cursor").to_owned();
        let url = format!("{LOGS}?limit=2&cursor={}", percent_encode(&cursor));
        let second = get(&client, &server, &url, Some(rw)).await;
        assert_eq!(second.0, StatusCode::OK, "{}", second.2);
        assert_ne!(second.2["logs"][0]["id"], first.2["logs"][0]["id"]);
        doc.check(LOGS, "get", &second);
        let filtered = format!(
            "{LOGS}?action=read,identity_sync&order=asc&source_ip=fd00::/16&success=false&limit=1000"
        );
        let reply = get(&client, &server, &filtered, Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["logs"].as_array().map(Vec::len), Some(1));
        doc.check(LOGS, "get", &reply);

        let secret_url = concrete(SECRETS, SECRET, IDENTITY);
        let reply = get(&client, &server, &secret_url, Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["summary"]["total_events"], json!(6));
        assert!(reply.2["summary"]["last_accessed_at"].is_string());
        doc.check(SECRETS, "get", &reply);
        let reply = get(&client, &server, "/v1/audit/secrets/no/such/secret", Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["summary"]["last_accessed_at"], Value::Null);
        doc.check(SECRETS, "get", &reply);

        let identity_url = concrete(IDENTITIES, SECRET, IDENTITY);
        let reply = get(&client, &server, &identity_url, Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["identity_id"], json!(IDENTITY));
        assert_eq!(reply.2["summary"]["unique_secrets"], json!(1));
        doc.check(IDENTITIES, "get", &reply);
        let raw = format!("/v1/audit/identities/{IDENTITY}?limit=1");
        let reply = get(&client, &server, &raw, Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(IDENTITIES, "get", &reply);

        for url in [SUMMARY.to_owned(), format!("{SUMMARY}?top=1")] {
            let reply = get(&client, &server, &url, Some(rw)).await;
            assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
            assert_eq!(reply.2["total_events"], json!(7));
            doc.check(SUMMARY, "get", &reply);
        }

        // Checkpoints come every second here: a page with one, and an empty one.
        let started = std::time::Instant::now();
        loop {
            let reply = get(&client, &server, CHECKPOINTS, Some(rw)).await;
            assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
            doc.check(CHECKPOINTS, "get", &reply);
            if reply.2["checkpoints"].as_array().is_some_and(|page| !page.is_empty()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no checkpoint");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = format!("{CHECKPOINTS}?limit=1&to=2026-01-01T00:00:00Z");
        let reply = get(&client, &server, &url, Some(rw)).await;
        assert_eq!(reply.2["checkpoints"], json!([]), "{}", reply.2);
        doc.check(CHECKPOINTS, "get", &reply);
        let reply = get(&client, &server, RETENTION, Some(rw)).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(RETENTION, "get", &reply);

        for path in [
            "/v1/health",
            "/v1/health/ready",
            "/metrics",
            "/v1/audit/openapi.json",
            KEYS,
        ] {
            let reply = get(&client, &server, path, None).await;
            assert_eq!(reply.0, StatusCode::OK, "{path}: {}", reply.2);
            doc.check(path, "get", &reply);
        }
        let served = get(&client, &server, "/v1/audit/openapi.json", None).await;
        assert_eq!(served.2, doc.root, "the served document is docs/openapi.json");

        // After the summaries: creating an export records an `export_created` event.
        check_export_responses(&doc, &client, &server, &tokens, &dir).await;

        // --- 400 --------------------------------------------------------------------------
        let admin = tokens.admin.secret.as_str();
        let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
            (LOGS, format!("{LOGS}?cursor=garbage"), Some(rw), "invalid_cursor"),
            (LOGS, LOGS.to_owned(), Some(admin), "invalid_request"),
            (SECRETS, "/v1/audit/secrets/Bad/Path".to_owned(), Some(rw), "invalid_path"),
            (SECRETS, "/v1/audit/secrets/%ff".to_owned(), Some(rw), "invalid_path"),
            (SECRETS, format!("{secret_url}?cursor={cursor}"), Some(rw), "invalid_cursor"),
            (IDENTITIES, "/v1/audit/identities/%ff".to_owned(), None, "invalid_path"),
            (IDENTITIES, identity_url.clone(), Some(admin), "invalid_request"),
            (SUMMARY, SUMMARY.to_owned(), Some(admin), "invalid_request"),
            (CHECKPOINTS, format!("{CHECKPOINTS}?cursor=garbage"), Some(rw), "invalid_cursor"),
            (CHECKPOINTS, CHECKPOINTS.to_owned(), Some(admin), "invalid_request"),
            (RETENTION, RETENTION.to_owned(), Some(admin), "invalid_request"),
        ];
        for (path, url, token, code) in cases {
            let reply = get(&client, &server, &url, token).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, code);
            doc.check(path, "get", &reply);
        }
        let reply = post_raw(&client, base, rw, "application/json", "{\"events\": [").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        doc.check(EVENTS, "post", &reply);
        let reply = post_raw(&client, base, rw, "application/x-ndjson", "{}\nnot json\n").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(reply.2["error"]["details"]["line"], json!(2));
        doc.check(EVENTS, "post", &reply);

        // --- 401 --------------------------------------------------------------------------
        for (path, method) in doc.operations() {
            if doc.operation(&path, &method)["security"] == json!([]) {
                continue;
            }
            let url = concrete(&path, SECRET, IDENTITY);
            let method_value = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let send_as = |token: Option<&str>| {
                let mut builder = client.request(method_value.clone(), format!("{base}{url}"));
                if let Some(token) = token {
                    builder = builder.bearer_auth(token);
                }
                if method == "post" {
                    builder = builder.header(CONTENT_TYPE, "application/json").body("{}");
                }
                send(builder)
            };
            let reply = send_as(None).await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "authentication_required");
            doc.check(&path, &method, &reply);
            let reply = send_as(Some("skt_nope")).await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
            doc.check(&path, &method, &reply);
        }

        // --- 403 --------------------------------------------------------------------------
        for path in [LOGS, SECRETS, IDENTITIES, SUMMARY, CHECKPOINTS] {
            let url = concrete(path, SECRET, IDENTITY);
            let reply = get(&client, &server, &url, Some(tokens.write_only.secret.as_str())).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
            doc.check(path, "get", &reply);
            let reply = get_as(&client, base, &url, Some(rw), Some(OTHER_TENANT)).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
            doc.check(path, "get", &reply);
        }
        let one = json!({ "events": [trail_event(20, "read")] });
        let reply = post_events(&client, base, &tokens.read_only.secret, one).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
        doc.check(EVENTS, "post", &reply);
        let foreign = json!({ "events": [event_for_tenant(21, Some(OTHER_TENANT))] });
        let reply = post_events(&client, base, rw, foreign).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
        doc.check(EVENTS, "post", &reply);

        // --- 404 and 405 ------------------------------------------------------------------
        let reply = get(&client, &server, "/v1/audit/secrets/", Some(rw)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        doc.check(SECRETS, "get", &reply);
        let reply = get(&client, &server, "/v1/audit/identities/", Some(rw)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        doc.check(IDENTITIES, "get", &reply);
        let reply = get(&client, &server, "/v1/audit/no-such-route", Some(rw)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        doc.check_component("NotFound", &reply);
        let reply = request(&client, &server, Method::DELETE, LOGS, Some(rw)).await;
        assert_error(
            &reply,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        doc.check_component("MethodNotAllowed", &reply);

        // --- 413 --------------------------------------------------------------------------
        let too_many: Vec<Value> = (0..51).map(|i| trail_event(100 + i, "read")).collect();
        let reply = post_events(&client, base, rw, json!({ "events": too_many })).await;
        assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        doc.check(EVENTS, "post", &reply);
        let reply = post_raw(&client, base, rw, "application/json", vec![b' '; 70_000]).await;
        assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        doc.check(EVENTS, "post", &reply);

        // --- 422 --------------------------------------------------------------------------
        let long_identity = format!("/v1/audit/identities/{}", "x".repeat(300));
        let cases: Vec<(&str, String, &str)> = vec![
            (LOGS, format!("{LOGS}?limit=0"), "limit"),
            (LOGS, format!("{LOGS}?q=nofield:x"), "q"),
            (SECRETS, format!("{secret_url}?path_prefix=a"), "path_prefix"),
            (IDENTITIES, format!("{identity_url}?identity_id=a"), "identity_id"),
            (IDENTITIES, long_identity, "identity_id"),
            (SUMMARY, format!("{SUMMARY}?top=0"), "top"),
            (CHECKPOINTS, format!("{CHECKPOINTS}?limit=0"), "limit"),
            (CHECKPOINTS, format!("{CHECKPOINTS}?order=asc"), "order"),
        ];
        for (path, url, field) in cases {
            let reply = get(&client, &server, &url, Some(rw)).await;
            assert_validation_error(&reply, field);
            doc.check(path, "get", &reply);
        }
        let mut bad = trail_event(30, "read");
        bad["action"] = json!("launch");
        let reply = post_events(&client, base, rw, json!({ "events": [bad] })).await;
        assert_validation_error(&reply, "events[0].action");
        doc.check(EVENTS, "post", &reply);
        let reply = post_events(&client, base, rw, json!({ "events": [] })).await;
        assert_validation_error(&reply, "events");
        doc.check(EVENTS, "post", &reply);
    })
    .await;
}

/// Every status of the export endpoints, from real calls with a `file` destination.
async fn check_export_responses(
    doc: &Document,
    client: &Client,
    server: &Server,
    tokens: &Tokens,
    dir: &TestDir,
) {
    let token = tokens.export.secret.as_str();
    let call = move |method: Method, url: String, body: Option<Vec<u8>>| async move {
        export_call(client, server, method, &url, token, Some(TENANT), body).await
    };
    let out = crate::harness::export::file_bucket(dir, "openapi");
    let request_schema = export_request_schema(doc);
    let request = json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00+02:00",
        "format": "csv", "compression": "gzip", "max_records_per_file": 1,
        "filters": {"action": ["read", "write"], "success": true, "path_prefix": "environments/"},
        "destination": {"type": "file", "bucket": crate::harness::export::bucket_name(&out), "prefix": "oa/"},
    });
    doc.assert_valid(request_schema, &request, "the export request");

    // --- 202, then 200s while it runs and once it is over -------------------------------
    let reply = call(Method::POST, EXPORT.into(), json_bytes(&request)).await;
    assert_eq!(reply.0, StatusCode::ACCEPTED, "{}", reply.2);
    doc.check(EXPORT, "post", &reply);
    let id = reply.2["export_id"].as_str().expect("export_id").to_owned();
    let url = format!("{EXPORTS}/{id}");
    let started = std::time::Instant::now();
    let finished = loop {
        let reply = call(Method::GET, url.clone(), None).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(EXPORT_ONE, "get", &reply);
        if !matches!(reply.2["status"].as_str(), Some("pending" | "running")) {
            break reply.2;
        }
        assert!(
            started.elapsed() < TEST_DEADLINE / 2,
            "export {id}: {}",
            reply.2
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["record_count"], json!(2), "{finished}");
    assert_eq!(finished["files"].as_array().map(Vec::len), Some(2));

    // A failed export shows its error: no credentials backend is configured.
    let mut s3 = request.clone();
    s3["destination"] =
        json!({"type": "s3", "bucket": "acme-audit", "credentials_path": "infra/aws/writer"});
    doc.assert_valid(request_schema, &s3, "the s3 export request");
    let reply = call(Method::POST, EXPORT.into(), json_bytes(&s3)).await;
    assert_eq!(reply.0, StatusCode::ACCEPTED, "{}", reply.2);
    doc.check(EXPORT, "post", &reply);
    let failed_id = reply.2["export_id"].as_str().expect("export_id").to_owned();
    let failed_url = format!("{EXPORTS}/{failed_id}");
    let started = std::time::Instant::now();
    let failed = loop {
        let reply = call(Method::GET, failed_url.clone(), None).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(EXPORT_ONE, "get", &reply);
        if reply.2["status"] != "pending" && reply.2["status"] != "running" {
            break reply.2;
        }
        assert!(
            started.elapsed() < TEST_DEADLINE / 2,
            "export {failed_id}: {}",
            reply.2
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["error"]["code"], "credentials_not_configured",
        "{failed}"
    );

    // Cancelling right away: 200 if the job was still going, 409 if it already failed.
    let reply = call(Method::POST, EXPORT.into(), json_bytes(&s3)).await;
    assert_eq!(reply.0, StatusCode::ACCEPTED, "{}", reply.2);
    let racing = format!("{EXPORTS}/{}", reply.2["export_id"].as_str().expect("id"));
    let reply = call(Method::DELETE, racing, None).await;
    assert!(
        [StatusCode::OK, StatusCode::CONFLICT].contains(&reply.0),
        "{}",
        reply.2
    );
    doc.check(EXPORT_ONE, "delete", &reply);

    // Listing, newest first, one per page.
    let reply = call(Method::GET, format!("{EXPORTS}?limit=1"), None).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    assert_eq!(reply.2["has_more"], json!(true), "{}", reply.2);
    doc.check(EXPORTS, "get", &reply);
    let cursor = reply.2["cursor"].as_str().expect("cursor").to_owned();
    let reply = call(
        Method::GET,
        format!("{EXPORTS}?limit=500&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    assert_eq!(reply.2["has_more"], json!(false), "{}", reply.2);
    assert_eq!(reply.2["exports"][0]["export_id"], json!(failed_id));
    assert_eq!(reply.2["exports"][1]["export_id"], json!(id));
    doc.check(EXPORTS, "get", &reply);

    // --- 409 and 404 ------------------------------------------------------------------
    let reply = call(Method::DELETE, url.clone(), None).await;
    assert_error(&reply, StatusCode::CONFLICT, "export_finished");
    doc.check(EXPORT_ONE, "delete", &reply);
    let unknown = concrete(EXPORT_ONE, SECRET, IDENTITY);
    for method in [Method::GET, Method::DELETE] {
        let reply = call(method.clone(), unknown.clone(), None).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "export_not_found");
        doc.check(EXPORT_ONE, &method.as_str().to_lowercase(), &reply);
    }
    // Another tenant's token sees nothing of this tenant's exports.
    let other = export_call(
        client,
        server,
        Method::GET,
        &url,
        &tokens.export_admin.secret,
        Some(OTHER_TENANT),
        None,
    )
    .await;
    assert_error(&other, StatusCode::NOT_FOUND, "export_not_found");
    doc.check(EXPORT_ONE, "get", &other);

    // --- 400, 403, 413 ----------------------------------------------------------------
    let reply = call(Method::POST, EXPORT.into(), Some(b"{not json".to_vec())).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    doc.check(EXPORT, "post", &reply);
    let reply = call(Method::POST, EXPORT.into(), None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    doc.check(EXPORT, "post", &reply);
    let admin = tokens.export_admin.secret.as_str();
    let no_tenant: [(Method, &str, &str, Option<Vec<u8>>); 4] = [
        (Method::POST, EXPORT, EXPORT, json_bytes(&request)),
        (Method::GET, EXPORTS, EXPORTS, None),
        (Method::GET, EXPORT_ONE, &url, None),
        (Method::DELETE, EXPORT_ONE, &url, None),
    ];
    for (method, path, url, body) in no_tenant {
        let reply = export_call(client, server, method.clone(), url, admin, None, body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        doc.check(path, &method.as_str().to_lowercase(), &reply);
    }
    let reply = export_call(
        client,
        server,
        Method::POST,
        EXPORT,
        token,
        Some(OTHER_TENANT),
        json_bytes(&request),
    )
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
    doc.check(EXPORT, "post", &reply);
    let rw = tokens.rw.secret.as_str();
    let reply = export_call(client, server, Method::GET, EXPORTS, rw, None, None).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
    assert_eq!(
        reply.2["error"]["details"]["required_scope"],
        "audit:export"
    );
    doc.check(EXPORTS, "get", &reply);
    let mut padded = request.clone();
    padded["filters"]["q"] = json!("x".repeat(70_000));
    let reply = call(Method::POST, EXPORT.into(), json_bytes(&padded)).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    doc.check(EXPORT, "post", &reply);

    // --- 422: refused by the server and by the documented schema alike -----------------
    let with = |field: &str, value: Value| {
        let mut body = request.clone();
        body[field] = value;
        body
    };
    let destination = |value: Value| with("destination", value);
    let mut unknown_key = request.clone();
    unknown_key["colour"] = json!("blue");
    let mut missing = request.clone();
    missing.as_object_mut().unwrap().remove("from");
    // JSON that is not an object is a malformed shape (SPEC: 400 `invalid_request`).
    assert!(!doc.validator(request_schema).is_valid(&json!([])));
    let reply = call(Method::POST, EXPORT.into(), json_bytes(&json!([]))).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    doc.check(EXPORT, "post", &reply);
    let bad_bodies: Vec<(Value, &str)> = vec![
        (unknown_key, "colour"),
        (missing, "from"),
        (with("to", json!("yesterday")), "to"),
        (with("format", json!("xml")), "format"),
        (with("compression", json!("zstd")), "compression"),
        (
            with("max_records_per_file", json!(0)),
            "max_records_per_file",
        ),
        (
            with("max_records_per_file", json!(100_000_001)),
            "max_records_per_file",
        ),
        (with("filters", json!("read")), "filters"),
        (with("filters", json!({"limit": "5"})), "filters.limit"),
        (
            with("filters", json!({"action": ["launch"]})),
            "filters.action",
        ),
        (
            with("filters", json!({"success": "maybe"})),
            "filters.success",
        ),
        (
            with("filters", json!({"identity_type": "robot"})),
            "filters.identity_type",
        ),
        (
            with("filters", json!({"secret_path": "Bad/Path"})),
            "filters.secret_path",
        ),
        (destination(json!("s3://acme-audit")), "destination"),
        (
            destination(json!({"type": "ftp", "bucket": "b"})),
            "destination.type",
        ),
        (
            destination(json!({"type": "s3", "bucket": "acme-audit"})),
            "destination.credentials_path",
        ),
        (
            destination(
                json!({"type": "s3", "bucket": "acme-audit", "credentials_path": "a/b",
                               "access_key_id": "AKIA..."}),
            ),
            "destination.access_key_id",
        ),
        (
            destination(json!({"type": "file", "bucket": "audit", "prefix": "x".repeat(513)})),
            "destination.prefix",
        ),
    ];
    let validator = doc.validator(request_schema);
    for (body, field) in bad_bodies {
        assert!(
            !validator.is_valid(&body),
            "the documented schema accepts a body the server refuses on {field}: {body}"
        );
        let reply = call(Method::POST, EXPORT.into(), json_bytes(&body)).await;
        assert_validation_error(&reply, field);
        doc.check(EXPORT, "post", &reply);
    }
    // `to` before `from` is beyond the schema, not beyond the server.
    let reply = call(
        Method::POST,
        EXPORT.into(),
        json_bytes(&with("to", json!("2019-01-01T00:00:00Z"))),
    )
    .await;
    assert_validation_error(&reply, "to");
    doc.check(EXPORT, "post", &reply);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=abc", "cursor"),
        ("page=2", "page"),
    ] {
        let reply = call(Method::GET, format!("{EXPORTS}?{query}"), None).await;
        assert_validation_error(&reply, field);
        doc.check(EXPORTS, "get", &reply);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_responses_match_the_document() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "rate_limited_responses_match_the_document",
        async {
            let doc = Document::load();
            let tokens = tokens();
            let args = ["--rate-limit-exports-per-minute", "1"];
            let server =
                start_with_tokens(&dir, "tokens.toml", &tokens.all(), Some(1), &args).await;
            let client = client();
            let rw = tokens.rw.secret.as_str();
            let reply = get(&client, &server, LOGS, Some(rw)).await;
            assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
            assert_eq!(header_u64(&reply.1, "x-ratelimit-limit"), Some(1));
            doc.check(LOGS, "get", &reply);
            for path in [LOGS, SECRETS, IDENTITIES, SUMMARY, CHECKPOINTS] {
                let url = concrete(path, SECRET, IDENTITY);
                let reply = get(&client, &server, &url, Some(rw)).await;
                assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
                doc.check(path, "get", &reply);
            }
            // Creating and cancelling share the export bucket; listing and reading, the query one.
            let export = tokens.export.secret.as_str();
            let tenant = Some(TENANT);
            let one = concrete(EXPORT_ONE, SECRET, IDENTITY);
            let empty = Some(b"{}".to_vec());
            let reply = export_call(
                &client,
                &server,
                Method::POST,
                EXPORT,
                export,
                tenant,
                empty.clone(),
            )
            .await;
            assert_validation_error(&reply, "from");
            assert_eq!(header_u64(&reply.1, "x-ratelimit-limit"), Some(1));
            doc.check(EXPORT, "post", &reply);
            let reply =
                export_call(&client, &server, Method::GET, EXPORTS, export, tenant, None).await;
            assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
            doc.check(EXPORTS, "get", &reply);
            let limited = [
                (Method::POST, EXPORT, EXPORT, empty),
                (Method::DELETE, EXPORT_ONE, one.as_str(), None),
                (Method::GET, EXPORTS, EXPORTS, None),
                (Method::GET, EXPORT_ONE, one.as_str(), None),
            ];
            for (method, path, url, body) in limited {
                let reply =
                    export_call(&client, &server, method.clone(), url, export, tenant, body).await;
                assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
                doc.check(path, &method.as_str().to_lowercase(), &reply);
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_response_matches_the_document() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "unavailable_response_matches_the_document",
        async {
            let doc = Document::load();
            let server =
                Server::start_wrapped(&["prlimit", "--fsize=2000000"], &dir.data_dir(), &[]).await;
            let client = client();
            let reply = ingest_until_refused(&client, &server, server.token(), 100).await;
            assert_error(
                &reply,
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
            );
            doc.check(EVENTS, "post", &reply);
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Routes and parameters against the document
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_routed_and_no_other_method() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "every_documented_operation_is_routed",
        async {
            let doc = Document::load();
            let server = Server::start(&dir.data_dir(), &[]).await;
            let client = client();
            let paths = doc.root["paths"].as_object().expect("paths");
            assert_eq!(paths.len(), 17, "documented paths: {:?}", paths.keys());
            for (path, item) in paths {
                let url = concrete(path, SECRET, IDENTITY);
                for method in ["get", "post", "put", "delete", "patch"] {
                    let method_value =
                        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                    let reply = request(&client, &server, method_value, &url, None).await;
                    if item.get(method).is_some() {
                        assert_ne!(
                            reply.0,
                            StatusCode::NOT_FOUND,
                            "{method} {url}: {}",
                            reply.2
                        );
                        assert_ne!(reply.0, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
                        doc.check(path, method, &reply);
                    } else {
                        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
                        doc.check_component("MethodNotAllowed", &reply);
                    }
                }
            }
        },
    )
    .await;
}

/// A valid value of a documented query parameter, for probing the others.
fn sample(name: &str, doc: &Document) -> String {
    match name {
        "from" => "2026-01-01T00:00:00Z".into(),
        "to" => "2030-01-01T00:00:00+02:00".into(),
        "action" => doc.root["components"]["schemas"]["Action"]["enum"]
            .as_array()
            .expect("actions")
            .iter()
            .map(|action| action.as_str().expect("string"))
            .collect::<Vec<_>>()
            .join(","),
        "identity_id" => IDENTITY.into(),
        "identity_type" => "service_account".into(),
        "path_prefix" => "environments/".into(),
        "success" => "false".into(),
        "source_ip" => "10.0.0.0/8".into(),
        "request_id" => "req_1".into(),
        "q" => "salesforce".into(),
        "limit" => "5".into(),
        "cursor" => String::new(),
        "order" => "asc".into(),
        "top" => "5".into(),
        other => panic!("documented query parameter {other} has no sample value in this test"),
    }
}

/// Values the parameter's documented schema accepts and rejects.
fn probes(doc: &Document, name: &str, schema: &Value) -> (Vec<String>, Vec<String>) {
    let schema = doc.resolve(schema);
    let mut valid = vec![sample(name, doc)];
    let mut invalid = Vec::new();
    match schema["type"].as_str() {
        Some("integer") => {
            invalid.push("x".into());
            if let Some(min) = schema["minimum"].as_i64() {
                valid.push(min.to_string());
                invalid.push((min - 1).to_string());
            }
            if let Some(max) = schema["maximum"].as_i64() {
                valid.push(max.to_string());
                invalid.push((max + 1).to_string());
            }
        }
        Some("boolean") => {
            valid.extend(["true".into(), "false".into()]);
            invalid.push("maybe".into());
        }
        Some("array") => invalid.push("bogus".into()),
        _ => {}
    }
    if let Some(values) = schema["enum"].as_array() {
        valid.extend(
            values
                .iter()
                .map(|v| v.as_str().expect("string").to_owned()),
        );
        invalid.push("bogus".into());
    }
    if schema["format"] == "date-time" {
        invalid.extend(["yesterday".into(), "2026-01-01".into()]);
    }
    let any_of = schema["anyOf"].as_array().into_iter().flatten();
    if any_of.into_iter().any(|branch| branch["format"] == "date") {
        // A TimeParameter: a date alone and a time without offset too, nothing shorter.
        valid.extend(["2026-01-01".into(), "2026-01-01T00:00:00.5".into()]);
        invalid.extend([
            "yesterday".into(),
            "2026-01-01T00:00".into(),
            "2026-1-1".into(),
        ]);
    }
    if schema["minLength"].as_u64().is_some_and(|min| min >= 1) {
        invalid.push(String::new());
    }
    if let Some(max) = schema["maxLength"].as_u64() {
        valid.push("a".repeat(max as usize));
        invalid.push("a".repeat(max as usize + 1));
    }
    if schema.get("pattern").is_some() || schema.get("anyOf").is_some() {
        invalid.push("Bad Value!".into());
    }
    (valid, invalid)
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_query_parameters_are_exactly_what_the_server_accepts() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "documented_query_parameters", async {
        let doc = Document::load();
        // Rate limiting off (the harness default).
        let server = Server::start(&dir.data_dir(), &[]).await;
        let client = client();
        let token = server.token().to_owned();
        let mut all_names: BTreeSet<String> = ["colour", "tenant_id", "page", "offset", "sort"]
            .into_iter()
            .map(String::from)
            .collect();
        for (path, method) in doc.operations() {
            for parameter in doc.query_parameters(&path, &method) {
                all_names.insert(parameter["name"].as_str().expect("name").to_owned());
            }
        }
        for path in [LOGS, SECRETS, IDENTITIES, SUMMARY, CHECKPOINTS] {
            let base_url = concrete(path, SECRET, IDENTITY);
            let declared = doc.query_parameters(path, "get");
            let declared_names: BTreeSet<String> = declared
                .iter()
                .map(|parameter| parameter["name"].as_str().expect("name").to_owned())
                .collect();
            let query = |pairs: &[(&str, &str)]| {
                let encoded: Vec<String> = pairs
                    .iter()
                    .map(|(name, value)| format!("{name}={}", percent_encode(value)))
                    .collect();
                format!("{base_url}?{}", encoded.join("&"))
            };
            let get = |url: String| {
                let client = client.clone();
                let base = server.base_url().to_owned();
                let token = token.clone();
                async move { get_as(&client, &base, &url, Some(token.as_str()), Some(TENANT)).await }
            };
            // Every declared parameter at once.
            let samples: Vec<(String, String)> = declared_names
                .iter()
                .map(|name| (name.clone(), sample(name, &doc)))
                .collect();
            let pairs: Vec<(&str, &str)> = samples
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let reply = get(query(&pairs)).await;
            assert_eq!(reply.0, StatusCode::OK, "{path} with {pairs:?}: {}", reply.2);
            doc.check(path, "get", &reply);
            // Each declared parameter's documented constraints.
            for parameter in &declared {
                let name = parameter["name"].as_str().expect("name");
                let (valid, invalid) = probes(&doc, name, &parameter["schema"]);
                for value in valid {
                    let reply = get(query(&[(name, &value)])).await;
                    assert_eq!(reply.0, StatusCode::OK, "{path} {name}={value}: {}", reply.2);
                    doc.check(path, "get", &reply);
                }
                for value in invalid {
                    let reply = get(query(&[(name, &value)])).await;
                    assert_eq!(
                        reply.0,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "{path}: {name}={value} breaks the documented schema but was accepted: {}",
                        reply.2
                    );
                    assert_validation_error(&reply, name);
                    doc.check(path, "get", &reply);
                }
                // Given twice: refused.
                let value = sample(name, &doc);
                let reply = get(query(&[(name, &value), (name, &value)])).await;
                assert_validation_error(&reply, name);
            }
            // Every other parameter name is unknown here.
            for name in all_names.difference(&declared_names) {
                let value = match name.as_str() {
                    "colour" | "tenant_id" | "page" | "offset" | "sort" => "x".to_owned(),
                    known => sample(known, &doc),
                };
                let reply = get(query(&[(name, &value)])).await;
                assert_validation_error(&reply, name);
                assert_eq!(
                    reply.2["error"]["details"]["fields"][name],
                    json!("unknown parameter"),
                    "{path}?{name}"
                );
                doc.check(path, "get", &reply);
            }
        }
    })
    .await;
}

/// The audit of the audit's own events (`audit_read`, a refused `export_created`) are events of
/// the document's shape, as the logs endpoint answers them.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_reads_match_the_document() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "recorded_reads_match_the_document", async {
        let doc = Document::load();
        let server = Server::start(&dir.data_dir(), FAST_COMMITS).await;
        let (client, base, token) = (client(), server.base_url(), server.token());
        for query in ["limit=1&action=read", "limit=0", "colour=red"] {
            get_logs(&client, base, token, Some(TENANT), query).await;
        }
        let refused = client
            .post(format!("{base}{EXPORT}"))
            .bearer_auth(token)
            .header("X-Tenant-ID", TENANT)
            .json(&json!({"format": "xml"}));
        assert_eq!(send(refused).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        let query = "action=audit_read,export_created&order=asc&limit=1000";
        let reply = loop {
            let reply = get_logs(&client, base, token, Some(TENANT), query).await;
            let logs = reply.2["logs"].as_array().expect("logs");
            let refusals = logs.iter().filter(|log| log["success"] == json!(false));
            if logs.len() >= 4 && refusals.count() >= 3 {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        doc.check(LOGS, "get", &reply);
        let logs = reply.2["logs"].as_array().unwrap();
        assert!(logs.iter().any(|log| log["action"] == "export_created"));
        assert!(
            logs.iter()
                .all(|log| log["extra_data"]["endpoint"].is_string())
        );
    })
    .await;
}

/// The export-schedule routes: created, read (before and after runs), listed, refused,
/// unknown and deleted schedules all match the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_responses_match_the_document() {
    const SCHEDULES: &str = "/v1/audit/export-schedules";
    const SCHEDULE_ONE: &str = "/v1/audit/export-schedules/{schedule_id}";
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "schedule_responses_match_the_document",
        async {
            let doc = Document::load();
            crate::harness::export::file_bucket(&dir, "scheduled");
            let mut args = FAST_COMMITS.to_vec();
            args.extend(["--export-schedule-min-interval-seconds", "1"]);
            let server = Server::start(&dir.data_dir(), &args).await;
            let client = client();
            let token = server.token();
            let call = |method: Method, path: String, body: Option<Value>| {
                let mut request = client
                    .request(method, format!("{}{path}", server.base_url()))
                    .bearer_auth(token)
                    .header("X-Tenant-ID", TENANT);
                if let Some(body) = body {
                    request = request.json(&body);
                }
                send(request)
            };
            ingest_ok(&client, server.base_url(), token, &[event(1)]).await;
            let body = json!({"schedule": "* * * * * *", "delay_seconds": 0,
            "start": "2020-01-01T00:00:00Z", "format": "jsonl", "compression": "gzip",
            "destination": {"type": "file", "bucket": "scheduled", "prefix": "acme/"}});
            let created = call(Method::POST, SCHEDULES.into(), Some(body)).await;
            assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
            doc.check(SCHEDULES, "post", &created);
            let id = created.2["schedule_id"].as_str().unwrap().to_string();
            let refused = call(Method::POST, SCHEDULES.into(), Some(json!({"schedule": 5}))).await;
            assert_error(
                &refused,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            );
            doc.check(SCHEDULES, "post", &refused);
            let one = format!("{SCHEDULES}/{id}");
            let ran = loop {
                let reply = call(Method::GET, one.clone(), None).await;
                doc.check(SCHEDULE_ONE, "get", &reply);
                if reply.2["status"]["runs_completed"].as_u64() >= Some(2) {
                    break reply;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let first = &ran.2["status"]["last_runs"][0];
            assert_eq!(first["from"], "2020-01-01T00:00:00.000000Z", "{}", ran.2);
            assert!(first["record_count"].as_u64() >= Some(1), "{}", ran.2);
            let listed = call(Method::GET, SCHEDULES.into(), None).await;
            assert_eq!(listed.2["schedules"][0]["schedule_id"], json!(id));
            doc.check(SCHEDULES, "get", &listed);
            let unknown = call(Method::GET, concrete(SCHEDULE_ONE, SECRET, IDENTITY), None).await;
            assert_error(&unknown, StatusCode::NOT_FOUND, "schedule_not_found");
            doc.check(SCHEDULE_ONE, "get", &unknown);
            let deleted = call(Method::DELETE, one.clone(), None).await;
            assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.2);
            doc.check(SCHEDULE_ONE, "delete", &deleted);
            let again = call(Method::DELETE, one, None).await;
            assert_error(&again, StatusCode::NOT_FOUND, "schedule_not_found");
            doc.check(SCHEDULE_ONE, "delete", &again);
        },
    )
    .await;
}
