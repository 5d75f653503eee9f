//! Black-box tests of the query endpoints' error paths, tenant isolation, cursors and rate
//! limits (SPEC §3, §3.1–§3.4, §3.7, §4): `GET /v1/audit/logs`, `/secrets/{path}`,
//! `/identities/{identity_id}`, `/summary` (and ingest where tenants are concerned), against
//! the real binary.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TEST_DEADLINE: Duration = Duration::from_secs(300);
const SECRET: &str = "shared/db-credentials";
const IDENTITY: &str = "user:shared@acme.example";
const LOGS: &str = "/v1/audit/logs";
const SUMMARY: &str = "/v1/audit/summary";

fn secret_url(path: &str) -> String {
    format!("/v1/audit/secrets/{path}")
}

fn identity_url(identity: &str) -> String {
    format!("/v1/audit/identities/{}", percent_encode(identity))
}

/// The four query endpoints: name and URL path (trails on [`SECRET`] and [`IDENTITY`]).
fn query_endpoints() -> Vec<(&'static str, String)> {
    vec![
        ("logs", LOGS.to_owned()),
        ("secrets", secret_url(SECRET)),
        ("identities", identity_url(IDENTITY)),
        ("summary", SUMMARY.to_owned()),
    ]
}

/// `url` with `query` appended.
fn with_query(url: &str, query: &str) -> String {
    if query.is_empty() {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Tokens of two tenants, scope-limited tokens and a partner admin.
struct Auth {
    /// Reads and writes [`TENANT`].
    a: StaticToken,
    /// Reads and writes [`OTHER_TENANT`].
    b: StaticToken,
    /// Only `audit:read`, [`TENANT`].
    a_read: StaticToken,
    /// Only `audit:write`, [`TENANT`].
    a_write: StaticToken,
    /// Every tenant.
    admin: StaticToken,
}

impl Auth {
    fn new() -> Auth {
        Auth {
            a: StaticToken::new("qa-a", &["audit:read", "audit:write"], Some(TENANT)),
            b: StaticToken::new("qa-b", &["audit:read", "audit:write"], Some(OTHER_TENANT)),
            a_read: StaticToken::new("qa-a-read", &["audit:read"], Some(TENANT)),
            a_write: StaticToken::new("qa-a-write", &["audit:write"], Some(TENANT)),
            admin: StaticToken::new("qa-admin", &["audit:read", "audit:write"], None),
        }
    }

    fn all(&self) -> Vec<&StaticToken> {
        vec![&self.a, &self.b, &self.a_read, &self.a_write, &self.admin]
    }
}

/// A server with [`Auth`]'s tokens; queries limited per identity to `queries_per_minute`.
async fn start(dir: &TestDir, auth: &Auth, queries_per_minute: Option<u32>) -> Server {
    start_with_tokens(dir, "tokens.toml", &auth.all(), queries_per_minute, &[]).await
}

/// Like [`start`] (queries unlimited) with the audit of the audit off, for tests comparing a
/// tenant's events exactly with what was ingested (their reads would add `audit_read` events;
/// tests/it/audit_of_audit.rs checks those stay in the reader's tenant).
async fn start_exact(dir: &TestDir, auth: &Auth) -> Server {
    start_with_tokens(dir, "tokens.toml", &auth.all(), None, AUDIT_OF_AUDIT_OFF).await
}

/// A recent event (inside the trails' 30-day window) on `path` by `identity`, without
/// `tenant_id` (the tenant-bound token decides).
fn recent_event(i: u64, path: &str, identity: &str) -> Value {
    let mut event = event_for_tenant(i, None);
    event["timestamp"] = json!(recent_timestamp(100 + i, i));
    event["secret_path"] = json!(path);
    event["identity_type"] = json!("user");
    event["identity_id"] = json!(identity);
    event["request_id"] = json!("req_shared");
    event
}

async fn get(client: &Client, server: &Server, url: &str, token: &str) -> Reply {
    get_as(client, server.base_url(), url, Some(token), None).await
}

/// Asserts a 200 with an `X-Request-ID`.
fn assert_ok(reply: &Reply, context: &str) {
    assert_eq!(reply.0, StatusCode::OK, "{context}: {}", reply.2);
    assert!(
        request_id_header(&reply.1).is_some_and(|id| !id.is_empty()),
        "{context}: no X-Request-ID"
    );
}

/// Walks every page of `url` (`limit` per page) and returns all `logs`.
async fn walk(
    client: &Client,
    server: &Server,
    url: &str,
    token: &str,
    tenant: Option<&str>,
    limit: usize,
) -> Vec<Value> {
    let mut logs = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut page_url = with_query(url, &format!("limit={limit}"));
        if let Some(cursor) = &cursor {
            page_url = with_query(&page_url, &format!("cursor={}", percent_encode(cursor)));
        }
        let reply = get_as(client, server.base_url(), &page_url, Some(token), tenant).await;
        assert_ok(&reply, &page_url);
        let page = reply.2["logs"].as_array().expect("logs array");
        assert!(
            page.len() <= limit,
            "{page_url}: page longer than the limit"
        );
        logs.extend(page.iter().cloned());
        if reply.2["has_more"] != json!(true) {
            assert_eq!(reply.2["cursor"], Value::Null, "last page has a cursor");
            return logs;
        }
        cursor = Some(reply.2["cursor"].as_str().expect("cursor").to_owned());
    }
    panic!("{url}: more than 1000 pages");
}

fn id_set(logs: &[Value]) -> BTreeSet<String> {
    let ids: Vec<String> = logs
        .iter()
        .map(|log| log["id"].as_str().expect("id").to_owned())
        .collect();
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "an id appears twice: {ids:?}");
    set
}

fn set_of(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

/// The first cursor of `url` (which must have more than one page of `limit`).
async fn first_cursor(
    client: &Client,
    server: &Server,
    url: &str,
    token: &str,
    limit: usize,
) -> String {
    let reply = get(
        client,
        server,
        &with_query(url, &format!("limit={limit}")),
        token,
    )
    .await;
    assert_ok(&reply, url);
    assert_eq!(reply.2["has_more"], json!(true), "{url}: {}", reply.2);
    reply.2["cursor"].as_str().expect("cursor").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Parameter validation
// ---------------------------------------------------------------------------------------------

/// Query-string cases every log-like endpoint rejects with 422 on the given field.
const LOG_PARAMETER_CASES: &[(&str, &str)] = &[
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=x", "limit"),
    ("limit=-1", "limit"),
    ("limit=1.5", "limit"),
    ("limit=", "limit"),
    ("action=launch", "action"),
    ("action=read,launch", "action"),
    ("action=READ", "action"),
    ("action=", "action"),
    ("from=yesterday", "from"),
    ("from=2026-01-01T00:00", "from"),
    ("from=20260101", "from"),
    ("from=2026-02-30", "from"),
    ("to=2026-01-01T00:00:00%2B0200", "to"),
    ("from=2026-02-30T00:00:00Z", "from"),
    ("to=soon", "to"),
    ("to=2026-01-01%2000:00:00Z", "to"),
    ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
    (
        "from=2026-01-01T02:00:00%2B02:00&to=2025-12-31T23:59:59Z",
        "to",
    ),
    ("identity_type=robot", "identity_type"),
    ("identity_type=User", "identity_type"),
    ("source_ip=10.0.0.256", "source_ip"),
    ("source_ip=10.0.0.0/33", "source_ip"),
    ("source_ip=fd00::/129", "source_ip"),
    ("source_ip=not-an-ip", "source_ip"),
    ("order=sideways", "order"),
    ("order=DESC", "order"),
    ("success=maybe", "success"),
    ("success=1", "success"),
    ("request_id=", "request_id"),
    ("q=", "q"),
    ("q=nofield:x", "q"),
    ("colour=red", "colour"),
    ("tenant_id=tnt_other", "tenant_id"),
    ("page=2", "page"),
    ("limit=1&limit=2", "limit"),
    ("action=read&action=write", "action"),
    ("order=asc&order=asc", "order"),
];

/// Sends `url` and asserts a 422 naming `field`; returns the field's message.
async fn expect_422(
    client: &Client,
    server: &Server,
    token: &str,
    url: &str,
    field: &str,
) -> String {
    let reply = get(client, server, url, token).await;
    assert_eq!(
        reply.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{url}: {}",
        reply.2
    );
    assert_validation_error(&reply, field);
    reply.2["error"]["details"]["fields"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{url}: message of {field} is not a string"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_like_endpoints_reject_every_bad_parameter() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "log_like_endpoints_reject_every_bad_parameter",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let token = auth.a.secret.as_str();
            for (name, url) in &query_endpoints()[..3] {
                for (query, field) in LOG_PARAMETER_CASES {
                    let url = with_query(url, query);
                    let message = expect_422(&client, &server, token, &url, field).await;
                    let unknown = ["colour", "tenant_id", "page"].contains(field);
                    assert_eq!(
                        message == "unknown parameter",
                        unknown,
                        "{name} {query}: {message}"
                    );
                    if query.matches(&format!("{field}=")).count() > 1 {
                        assert!(
                            message.contains("more than once"),
                            "{name} {query}: {message}"
                        );
                    }
                }
                // Every problem is reported at once.
                let url = with_query(url, "from=x&limit=0&order=up&colour=red");
                let reply = get(&client, &server, &url, token).await;
                assert_validation_error(&reply, "from");
                let fields = reply.2["error"]["details"]["fields"].as_object().unwrap();
                let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
                assert_eq!(
                    keys,
                    BTreeSet::from(["colour", "from", "limit", "order"]),
                    "{name}"
                );
            }

            // `path_prefix`: validated on logs and the identity trail, unknown on the secret trail.
            for url in [LOGS.to_owned(), identity_url(IDENTITY)] {
                for bad in ["Env", "a%20b", "a.b"] {
                    let url = with_query(&url, &format!("path_prefix={bad}"));
                    let message = expect_422(&client, &server, token, &url, "path_prefix").await;
                    assert_ne!(message, "unknown parameter", "{url}");
                }
                let long = with_query(&url, &format!("path_prefix={}", "a".repeat(513)));
                expect_422(&client, &server, token, &long, "path_prefix").await;
                let fine = with_query(&url, &format!("path_prefix={}", "a".repeat(512)));
                assert_ok(&get(&client, &server, &fine, token).await, &fine);
            }
            let url = with_query(&secret_url(SECRET), "path_prefix=shared/");
            let message = expect_422(&client, &server, token, &url, "path_prefix").await;
            assert_eq!(message, "unknown parameter");

            // `identity_id`: validated on logs and the secret trail, unknown on the identity trail.
            for url in [LOGS.to_owned(), secret_url(SECRET)] {
                let bad = with_query(&url, "identity_id=");
                let message = expect_422(&client, &server, token, &bad, "identity_id").await;
                assert_ne!(message, "unknown parameter");
            }
            let url = with_query(&identity_url(IDENTITY), &format!("identity_id={IDENTITY}"));
            let message = expect_422(&client, &server, token, &url, "identity_id").await;
            assert_eq!(message, "unknown parameter");

            // The same parameters, valid, are accepted.
            let good = "from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&action=read,%20write\
                    &identity_type=system&source_ip=fd00::/8&order=asc&success=true\
                    &request_id=r&q=salesforce&limit=1000&cursor=";
            for (name, url) in &query_endpoints()[..3] {
                let url = with_query(url, good);
                assert_ok(&get(&client, &server, &url, token).await, name);
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn summary_rejects_every_bad_parameter() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "summary_rejects_every_bad_parameter",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let token = auth.a.secret.as_str();
            let cases: &[(&str, &str, Option<&str>)] = &[
                ("top=0", "top", None),
                ("top=101", "top", None),
                ("top=x", "top", None),
                ("top=-1", "top", None),
                ("top=", "top", None),
                (
                    "top=1&top=2",
                    "top",
                    Some("given more than once (use a comma-separated list)"),
                ),
                ("from=yesterday", "from", None),
                ("to=2026-01-01T00", "to", None),
                (
                    "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
                    "to",
                    None,
                ),
                (
                    "from=2026-01-01T00:00:00Z&from=2026-01-02T00:00:00Z",
                    "from",
                    None,
                ),
                // Everything else is an unknown parameter here.
                ("limit=0", "limit", Some("unknown parameter")),
                ("limit=1001", "limit", Some("unknown parameter")),
                ("limit=x", "limit", Some("unknown parameter")),
                ("limit=10", "limit", Some("unknown parameter")),
                ("action=launch", "action", Some("unknown parameter")),
                ("action=read", "action", Some("unknown parameter")),
                (
                    "identity_type=robot",
                    "identity_type",
                    Some("unknown parameter"),
                ),
                (
                    "source_ip=10.0.0.0/33",
                    "source_ip",
                    Some("unknown parameter"),
                ),
                ("path_prefix=Env", "path_prefix", Some("unknown parameter")),
                ("order=sideways", "order", Some("unknown parameter")),
                ("cursor=abc", "cursor", Some("unknown parameter")),
                ("identity_id=x", "identity_id", Some("unknown parameter")),
                ("colour=red", "colour", Some("unknown parameter")),
            ];
            for (query, field, expected) in cases {
                let url = with_query(SUMMARY, query);
                let message = expect_422(&client, &server, token, &url, field).await;
                match expected {
                    Some(expected) => assert_eq!(&message, expected, "{query}"),
                    None => assert_ne!(message, "unknown parameter", "{query}"),
                }
            }
            let reply = get(
                &client,
                &server,
                &with_query(SUMMARY, "from=x&top=0"),
                token,
            )
            .await;
            assert_validation_error(&reply, "from");
            assert_validation_error(&reply, "top");
            for top in ["1", "100"] {
                let url = with_query(SUMMARY, &format!("top={top}&from=2026-01-01T00:00:00Z"));
                assert_ok(&get(&client, &server, &url, token).await, &url);
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_secret_paths_and_identities_in_the_url() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "invalid_secret_paths_and_identities_in_the_url",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let token = auth.a.secret.as_str();
            let eleven = ["a"; 11].join("/");
            let long = "a".repeat(513);
            let bad_paths = [
                "Bad/Path",
                "a//b",
                "a/b/",
                "%2Fa",
                "a%2F%2Fb",
                "a%20b",
                "a.b",
                "caf%C3%A9",
                "%ff",
                "a%00b",
                eleven.as_str(),
                long.as_str(),
            ];
            for path in bad_paths {
                let reply = get(&client, &server, &secret_url(path), token).await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_path");
            }
            // At the limits, and unknown: an empty trail, not an error.
            let ten = ["a"; 10].join("/");
            let longest = format!("{}/b", "a".repeat(510));
            for path in ["no/such/secret", ten.as_str(), longest.as_str()] {
                let reply = get(&client, &server, &secret_url(path), token).await;
                assert_ok(&reply, path);
                assert_eq!(reply.2["path"], json!(path));
                assert_eq!(reply.2["logs"], json!([]));
                assert_eq!(reply.2["summary"]["total_events"], json!(0));
            }
            let encoded = get(
                &client,
                &server,
                &secret_url("shared%2Fdb-credentials"),
                token,
            )
            .await;
            assert_ok(&encoded, "percent-encoded secret path");
            assert_eq!(encoded.2["path"], json!(SECRET));

            let reply = get(&client, &server, "/v1/audit/identities/%ff", token).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_path");
            for identity in ["x".repeat(257), "%01x".to_owned(), "a%0Ab".to_owned()] {
                let url = format!("/v1/audit/identities/{identity}");
                let reply = get(&client, &server, &url, token).await;
                assert_validation_error(&reply, "identity_id");
            }
            let longest = format!("/v1/audit/identities/{}", "x".repeat(256));
            assert_ok(
                &get(&client, &server, &longest, token).await,
                "256-char identity",
            );
            let raw = get(
                &client,
                &server,
                &format!("/v1/audit/identities/{IDENTITY}"),
                token,
            )
            .await;
            let encoded = get(&client, &server, &identity_url(IDENTITY), token).await;
            assert_ok(&raw, "raw identity");
            assert_ok(&encoded, "encoded identity");
            assert_eq!(raw.2["identity_id"], json!(IDENTITY));
            assert_eq!(encoded.2["identity_id"], json!(IDENTITY));
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Authentication and scopes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_scope_errors_on_every_endpoint() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "authentication_and_scope_errors_on_every_endpoint",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, Some(50)).await;
            let client = client();
            let base = server.base_url();
            let authorizations: &[(Option<&str>, &str)] = &[
                (None, "authentication_required"),
                (Some("Basic YWxpY2U6c2VjcmV0"), "authentication_required"),
                (Some("Bearer"), "authentication_required"),
                (Some("Bearer "), "authentication_required"),
                (Some("skt_no_scheme"), "authentication_required"),
                (Some("Bearer skt_0000000000000000"), "token_invalid"),
                (
                    Some("Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
                    "token_invalid",
                ),
            ];
            // ScaiVault documents the rate-limit headers on every response: a 401 shows the
            // address's failed-authentication budget (60 a minute by default), a 403 the
            // caller's query bucket (50 here); neither is a 429, so no Retry-After.
            let assert_rate_headers_of = |reply: &Reply, limit: u64, context: &str| {
                assert_eq!(
                    header_u64(&reply.1, "x-ratelimit-limit"),
                    Some(limit),
                    "{context}"
                );
                assert!(
                    header_u64(&reply.1, "x-ratelimit-remaining").is_some()
                        && header_u64(&reply.1, "x-ratelimit-reset").is_some()
                        && !reply.1.contains_key("retry-after"),
                    "{context}: {:?}",
                    reply.1
                );
            };
            for (name, url) in query_endpoints() {
                for (authorization, code) in authorizations {
                    let mut request = client.get(format!("{base}{url}"));
                    if let Some(value) = authorization {
                        request = request.header("Authorization", *value);
                    }
                    let reply = send(request).await;
                    assert_error(&reply, StatusCode::UNAUTHORIZED, code);
                    assert_rate_headers_of(&reply, 60, name);
                }
                let reply = get(&client, &server, &url, &auth.a_write.secret).await;
                assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
                assert_eq!(
                    reply.2["error"]["details"]["required_scope"],
                    json!("audit:read")
                );
                assert_rate_headers_of(&reply, 50, name);
                assert_ok(
                    &get(&client, &server, &url, &auth.a_read.secret).await,
                    name,
                );
            }
            let body = json!({ "events": [recent_event(1, SECRET, IDENTITY)] });
            for (authorization, code) in authorizations {
                let mut request = client.post(events_url(base)).json(&body);
                if let Some(value) = authorization {
                    request = request.header("Authorization", *value);
                }
                let reply = send(request).await;
                assert_error(&reply, StatusCode::UNAUTHORIZED, code);
                assert_rate_headers_of(&reply, 60, "ingest");
            }
            let reply = post_events(&client, base, &auth.a_read.secret, body.clone()).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
            assert_eq!(
                reply.2["error"]["details"]["required_scope"],
                json!("audit:write")
            );
            let reply = post_events(&client, base, &auth.a_write.secret, body).await;
            assert_ok(&reply, "write-only token ingests");
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn foreign_tenant_header_is_denied_on_every_query_endpoint() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "foreign_tenant_header_is_denied", async {
        let auth = Auth::new();
        let server = start_exact(&dir, &auth).await;
        let client = client();
        let base = server.base_url();
        for (name, url) in query_endpoints() {
            for token in [&auth.a, &auth.a_read] {
                let reply = get_as(
                    &client,
                    base,
                    &url,
                    Some(token.secret.as_str()),
                    Some(OTHER_TENANT),
                )
                .await;
                assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
                let reply = get_as(
                    &client,
                    base,
                    &url,
                    Some(token.secret.as_str()),
                    Some("tnt_nobody"),
                )
                .await;
                assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
                let reply = get_as(
                    &client,
                    base,
                    &url,
                    Some(token.secret.as_str()),
                    Some(TENANT),
                )
                .await;
                assert_ok(&reply, name);
            }
            let reply = get_as(
                &client,
                base,
                &url,
                Some(auth.b.secret.as_str()),
                Some(TENANT),
            )
            .await;
            assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
            // A partner admin must name a valid tenant.
            let admin = Some(auth.admin.secret.as_str());
            let reply = get_as(&client, base, &url, admin, None).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
            let reply = get_as(&client, base, &url, admin, Some("bad tenant!")).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
            assert_ok(
                &get_as(&client, base, &url, admin, Some(OTHER_TENANT)).await,
                name,
            );
        }

        // Ingest: an event naming another tenant is refused and nothing of the batch is stored.
        let mut foreign = recent_event(2, SECRET, IDENTITY);
        foreign["tenant_id"] = json!(OTHER_TENANT);
        let own = with_id(recent_event(3, SECRET, IDENTITY), &producer_id());
        let foreign = with_id(foreign, &producer_id());
        let refused_ids = ids_of(&[own.clone(), foreign.clone()]);
        let reply = post_events(
            &client,
            base,
            &auth.a.secret,
            json!({ "events": [own, foreign] }),
        )
        .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
        let sentinel_a = ingest_ok(
            &client,
            base,
            &auth.a.secret,
            &[recent_event(4, SECRET, IDENTITY)],
        )
        .await;
        let sentinel_b = ingest_ok(
            &client,
            base,
            &auth.b.secret,
            &[recent_event(5, SECRET, IDENTITY)],
        )
        .await;
        let logs_a = wait_until_visible(
            &client,
            base,
            &auth.a.secret,
            None,
            &sentinel_a,
            VISIBILITY_DEADLINE,
        )
        .await;
        let logs_b = wait_until_visible(
            &client,
            base,
            &auth.b.secret,
            None,
            &sentinel_b,
            VISIBILITY_DEADLINE,
        )
        .await;
        assert_none_present(&logs_a, &refused_ids);
        assert_none_present(&logs_b, &refused_ids);
        assert_eq!(id_set(&logs_a), set_of(&sentinel_a));
        assert_eq!(id_set(&logs_b), set_of(&sentinel_b));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_with_a_foreign_tenant_header_is_denied() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "ingest_with_a_foreign_tenant_header_is_denied",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let base = server.base_url();
            let event = with_id(recent_event(1, SECRET, IDENTITY), &producer_id());
            let request = client
                .post(events_url(base))
                .bearer_auth(&auth.a.secret)
                .header("X-Tenant-ID", OTHER_TENANT)
                .json(&json!({ "events": [event.clone()] }));
            let reply = send(request).await;
            // Whatever the answer, the event must not land in tenant B.
            let sentinel_b = ingest_ok(
                &client,
                base,
                &auth.b.secret,
                &[recent_event(2, SECRET, IDENTITY)],
            )
            .await;
            let logs_b = wait_until_visible(
                &client,
                base,
                &auth.b.secret,
                None,
                &sentinel_b,
                VISIBILITY_DEADLINE,
            )
            .await;
            assert_none_present(&logs_b, &ids_of(&[event]));
            assert_eq!(
                reply.0,
                StatusCode::FORBIDDEN,
                "a {TENANT} token sending X-Tenant-ID: {OTHER_TENANT} to ingest must be refused \
                 (403 tenant_access_denied), not have the header ignored: {}",
                reply.2
            );
            assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_never_see_count_or_page_into_each_other() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "tenants_never_see_count_or_page_into_each_other",
        async {
            let auth = Auth::new();
            let server = start_exact(&dir, &auth).await;
            let client = client();
            let base = server.base_url();
            let (a, b) = (auth.a.secret.as_str(), auth.b.secret.as_str());
            // Both tenants use the same secret path, identity and request id.
            let events_a: Vec<Value> = (0..5).map(|i| recent_event(i, SECRET, IDENTITY)).collect();
            let events_b: Vec<Value> = (10..14)
                .map(|i| recent_event(i, SECRET, IDENTITY))
                .collect();
            let ids_a = ingest_ok(&client, base, a, &events_a).await;
            let mut ids_b = ingest_ok(&client, base, b, &events_b).await;
            let mut admin_event = recent_event(20, "b/only", "sa:b-only");
            admin_event["tenant_id"] = json!(OTHER_TENANT);
            ids_b.extend(ingest_ok(&client, base, &auth.admin.secret, &[admin_event]).await);
            wait_until_visible(&client, base, a, None, &ids_a, VISIBILITY_DEADLINE).await;
            wait_until_visible(&client, base, b, None, &ids_b, VISIBILITY_DEADLINE).await;
            let (set_a, set_b) = (set_of(&ids_a), set_of(&ids_b));

            // Listings and trails, walked page by page.
            let urls = [
                LOGS.to_owned(),
                with_query(LOGS, "request_id=req_shared"),
                secret_url(SECRET),
                identity_url(IDENTITY),
            ];
            for url in &urls {
                assert_eq!(
                    id_set(&walk(&client, &server, url, a, None, 2).await),
                    set_a,
                    "A {url}"
                );
            }
            assert_eq!(
                id_set(&walk(&client, &server, LOGS, b, None, 2).await),
                set_b
            );
            let admin = auth.admin.secret.as_str();
            let as_admin = walk(&client, &server, LOGS, admin, Some(TENANT), 3).await;
            assert_eq!(id_set(&as_admin), set_a);
            for url in [secret_url("b/only"), identity_url("sa:b-only")] {
                assert_eq!(
                    walk(&client, &server, &url, a, None, 2).await,
                    Vec::<Value>::new()
                );
            }

            // Counts: A's summaries only count A's events.
            let expected_actions = |events: &[Value]| {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for event in events {
                    *counts
                        .entry(event["action"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
                json!(counts)
            };
            let failed_a = events_a
                .iter()
                .filter(|e| e["success"] == json!(false))
                .count();
            let reply = get(&client, &server, SUMMARY, a).await;
            assert_ok(&reply, "summary A");
            let summary = &reply.2;
            assert_eq!(summary["total_events"], json!(5));
            assert_eq!(summary["failed_events"], json!(failed_a));
            assert_eq!(summary["successful_events"], json!(5 - failed_a));
            assert_eq!(summary["actions_breakdown"], expected_actions(&events_a));
            assert_eq!(
                summary["top_identities"],
                json!([{"identity_id": IDENTITY, "count": 5}])
            );
            assert_eq!(
                summary["top_resources"],
                json!([{"path": SECRET, "count": 5}])
            );
            let reply = get(&client, &server, SUMMARY, b).await;
            assert_eq!(reply.2["total_events"], json!(5));
            assert_eq!(
                reply.2["top_resources"],
                json!([{"path": SECRET, "count": 4}, {"path": "b/only", "count": 1}])
            );

            let reply = get(&client, &server, &secret_url(SECRET), a).await;
            let trail = &reply.2["summary"];
            assert_eq!(trail["total_events"], json!(5));
            assert_eq!(trail["unique_identities"], json!(1));
            assert_eq!(trail["actions_breakdown"], expected_actions(&events_a));
            assert_eq!(
                trail["top_identities"],
                json!([{"identity_id": IDENTITY, "count": 5}])
            );
            let reply = get(&client, &server, &identity_url(IDENTITY), a).await;
            let trail = &reply.2["summary"];
            assert_eq!(trail["total_events"], json!(5));
            assert_eq!(trail["unique_secrets"], json!(1));
            assert_eq!(
                trail["top_resources"],
                json!([{"path": SECRET, "count": 5}])
            );
            let newest_a = events_a
                .iter()
                .map(|e| e["timestamp"].as_str().unwrap())
                .max();
            assert_eq!(trail["last_seen"], json!(newest_a));

            // B's cursors are useless to A, on every paged endpoint.
            for url in [
                LOGS.to_owned(),
                with_query(LOGS, "request_id=req_shared"),
                secret_url(SECRET),
                identity_url(IDENTITY),
            ] {
                let cursor = first_cursor(&client, &server, &url, b, 2).await;
                let reply = get(
                    &client,
                    &server,
                    &with_query(&url, &format!("limit=2&cursor={cursor}")),
                    a,
                )
                .await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
                // The admin reading A with B's cursor: refused too.
                let reply = get_as(
                    &client,
                    base,
                    &with_query(&url, &format!("limit=2&cursor={cursor}")),
                    Some(admin),
                    Some(TENANT),
                )
                .await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------------------------

/// Ingests five recent events on [`SECRET`] by [`IDENTITY`] for `token` and waits for them.
async fn seed(client: &Client, server: &Server, token: &str) -> Vec<String> {
    let events: Vec<Value> = (0..5).map(|i| recent_event(i, SECRET, IDENTITY)).collect();
    let ids = ingest_ok(client, server.base_url(), token, &events).await;
    wait_until_visible(
        client,
        server.base_url(),
        token,
        None,
        &ids,
        VISIBILITY_DEADLINE,
    )
    .await;
    ids
}

/// `cursor` with its character at `index` replaced by another base64url character.
fn flip(cursor: &str, index: usize) -> String {
    let mut chars: Vec<char> = cursor.chars().collect();
    chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_foreign_cursors_are_invalid() {
    let dir = TestDir::new();
    let other_dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "tampered_and_foreign_cursors_are_invalid",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let a = auth.a.secret.as_str();
            let ids = seed(&client, &server, a).await;
            assert_eq!(ids.len(), 5);

            let cursor = first_cursor(&client, &server, LOGS, a, 2).await;
            let next = |query: &str, cursor: &str| {
                with_query(query, &format!("limit=2&cursor={}", percent_encode(cursor)))
            };
            // The genuine cursor works.
            let reply = get(&client, &server, &next(LOGS, &cursor), a).await;
            assert_ok(&reply, "genuine cursor");
            assert_eq!(reply.2["logs"].as_array().map(Vec::len), Some(2));

            let mut random = [0u8; 40];
            random.iter_mut().for_each(|byte| *byte = fastrand::u8(..));
            let len = cursor.chars().count();
            let tampered = vec![
                flip(&cursor, 0),
                flip(&cursor, len / 2),
                flip(&cursor, len - 2),
                flip(&cursor, len - 1),
                cursor[..len - 1].to_owned(),
                cursor[..len / 2].to_owned(),
                format!("{cursor}A"),
                format!("{cursor}{cursor}"),
                cursor.to_uppercase(),
                URL_SAFE_NO_PAD.encode(random),
                URL_SAFE_NO_PAD.encode([0u8; 40]),
                "not a cursor!".to_owned(),
                "%%%".to_owned(),
                "null".to_owned(),
            ];
            for bad in &tampered {
                assert_ne!(bad, &cursor);
                let reply = get(&client, &server, &next(LOGS, bad), a).await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
            }

            // A cursor is bound to its filters and order (not to the page size).
            for other in [
                with_query(LOGS, "action=read"),
                with_query(LOGS, "order=asc"),
                with_query(LOGS, "order=desc&success=true"),
                with_query(LOGS, "from=2026-01-01T00:00:00Z"),
                with_query(LOGS, &format!("identity_id={}", percent_encode(IDENTITY))),
                with_query(LOGS, "path_prefix=shared/"),
                with_query(LOGS, "q=scaivault"),
            ] {
                let reply = get(&client, &server, &next(&other, &cursor), a).await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
            }
            let other_size = format!("{LOGS}?limit=3&cursor={}", percent_encode(&cursor));
            assert_ok(
                &get(&client, &server, &other_size, a).await,
                "other page size",
            );

            // ... and to its endpoint and trail key.
            let secret_cursor = first_cursor(&client, &server, &secret_url(SECRET), a, 2).await;
            let identity_cursor =
                first_cursor(&client, &server, &identity_url(IDENTITY), a, 2).await;
            let reply = get(
                &client,
                &server,
                &next(&secret_url(SECRET), &secret_cursor),
                a,
            )
            .await;
            assert_ok(&reply, "genuine secret trail cursor");
            let foreign_uses = [
                (secret_url(SECRET), cursor.clone()),
                (identity_url(IDENTITY), cursor.clone()),
                (identity_url(IDENTITY), secret_cursor.clone()),
                (LOGS.to_owned(), secret_cursor.clone()),
                (secret_url("shared/other"), secret_cursor.clone()),
                (secret_url(SECRET), identity_cursor.clone()),
                (LOGS.to_owned(), identity_cursor.clone()),
                (
                    identity_url("user:other@acme.example"),
                    identity_cursor.clone(),
                ),
            ];
            for (url, foreign) in &foreign_uses {
                let reply = get(&client, &server, &next(url, foreign), a).await;
                assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
            }

            // ... and to the server's data directory (its key).
            let other = start(&other_dir, &auth, None).await;
            seed(&client, &other, a).await;
            let other_cursor = first_cursor(&client, &other, LOGS, a, 2).await;
            assert_ok(
                &get(&client, &other, &next(LOGS, &other_cursor), a).await,
                "cursor on its own server",
            );
            let reply = get(&client, &server, &next(LOGS, &other_cursor), a).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

/// Asserts the `X-RateLimit-*` headers of a query response.
fn assert_rate_headers(reply: &Reply, limit: u64, remaining: u64, context: &str) {
    let now = unix_now();
    assert_eq!(
        header_u64(&reply.1, "x-ratelimit-limit"),
        Some(limit),
        "{context}"
    );
    assert_eq!(
        header_u64(&reply.1, "x-ratelimit-remaining"),
        Some(remaining),
        "{context}"
    );
    let reset = header_u64(&reply.1, "x-ratelimit-reset")
        .unwrap_or_else(|| panic!("{context}: no X-RateLimit-Reset"));
    assert!(
        reset > now.saturating_sub(1) && reset <= now + 61,
        "{context}: X-RateLimit-Reset {reset} is not unix seconds within the next minute of {now}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_rate_limits_are_per_identity() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "query_rate_limits_are_per_identity", async {
        let auth = Auth::new();
        let server = start(&dir, &auth, Some(3)).await;
        let client = client();
        let a = auth.a.secret.as_str();
        let before = unix_now();
        // One bucket across every query endpoint.
        let endpoints = query_endpoints();
        for (i, (name, url)) in endpoints[..3].iter().enumerate() {
            let reply = get(&client, &server, url, a).await;
            assert_ok(&reply, name);
            assert_rate_headers(&reply, 3, 2 - i as u64, name);
            let reset = header_u64(&reply.1, "x-ratelimit-reset").unwrap();
            assert!(
                reset > before,
                "{name}: reset {reset} not in the future of {before}"
            );
        }
        for (name, url) in &endpoints {
            let reply = get(&client, &server, url, a).await;
            assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            assert_rate_headers(&reply, 3, 0, name);
            let retry_after = header_u64(&reply.1, "retry-after")
                .unwrap_or_else(|| panic!("{name}: 429 without Retry-After"));
            assert!(
                (1..=60).contains(&retry_after),
                "{name}: Retry-After {retry_after}"
            );
            assert_eq!(
                reply.2["error"]["details"]["retry_after"],
                json!(retry_after)
            );
        }
        // Errors after authentication count too and carry the headers: the bucket stays empty.
        let reply = get(&client, &server, &with_query(LOGS, "limit=0"), a).await;
        assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

        // Another identity has its own bucket, even of the same tenant.
        for token in [&auth.b, &auth.a_read] {
            let reply = get(&client, &server, LOGS, &token.secret).await;
            assert_ok(&reply, token.name);
            assert_rate_headers(&reply, 3, 2, token.name);
        }
        let reply = get(
            &client,
            &server,
            &with_query(LOGS, "limit=0"),
            &auth.b.secret,
        )
        .await;
        assert_validation_error(&reply, "limit");
        assert_rate_headers(&reply, 3, 1, "422 of B");

        // Unauthenticated callers get 401, not 429, with the rate-limit headers of the budget
        // that applies to them: their address's failed authentications (60 a minute by
        // default). A missing token is no failed attempt; an unknown one spends one.
        let failure_cases = [
            (None, 60),
            (Some("Bearer skt_unknown"), 59),
            (Some("Bearer skt_unknown"), 58),
            (None, 58),
        ];
        for (authorization, remaining) in failure_cases {
            let mut request = client.get(format!("{}{LOGS}", server.base_url()));
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let reply = send(request).await;
            assert_eq!(reply.0, StatusCode::UNAUTHORIZED, "{}", reply.2);
            assert_rate_headers(&reply, 60, remaining, &format!("401 {authorization:?}"));
            assert!(!reply.1.contains_key("retry-after"));
        }
        // A 403 (the scope is missing) takes no token but shows the caller's bucket.
        for _ in 0..2 {
            let reply = get(&client, &server, LOGS, &auth.a_write.secret).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
            assert_rate_headers(&reply, 3, 3, "403 of a write-only token");
            assert!(!reply.1.contains_key("retry-after"));
        }
        // Ingest is not a query: A can still write.
        let ids = ingest_ok(
            &client,
            server.base_url(),
            a,
            &[recent_event(1, SECRET, IDENTITY)],
        )
        .await;
        assert_eq!(ids.len(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Request ids and server errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_and_repeated_in_errors() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "request_ids_are_echoed_and_repeated_in_errors",
        async {
            let auth = Auth::new();
            let server = start(&dir, &auth, None).await;
            let client = client();
            let base = server.base_url();
            let cases: Vec<(String, Option<&str>, StatusCode)> = vec![
                (
                    with_query(LOGS, "limit=0"),
                    Some(auth.a.secret.as_str()),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
                (
                    with_query(LOGS, "cursor=bad"),
                    Some(auth.a.secret.as_str()),
                    StatusCode::BAD_REQUEST,
                ),
                (
                    secret_url("Bad"),
                    Some(auth.a.secret.as_str()),
                    StatusCode::BAD_REQUEST,
                ),
                (SUMMARY.to_owned(), None, StatusCode::UNAUTHORIZED),
                (
                    SUMMARY.to_owned(),
                    Some(auth.a_write.secret.as_str()),
                    StatusCode::FORBIDDEN,
                ),
                ("/v1/audit/nowhere".to_owned(), None, StatusCode::NOT_FOUND),
                (
                    identity_url(IDENTITY),
                    Some(auth.a.secret.as_str()),
                    StatusCode::OK,
                ),
            ];
            for (url, token, status) in cases {
                for (sent, echoed) in [("qa-trace-0001", true), ("has space", false), ("", false)] {
                    let mut request = client
                        .get(format!("{base}{url}"))
                        .header("X-Request-ID", sent);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    let reply = send(request).await;
                    assert_eq!(reply.0, status, "{url}: {}", reply.2);
                    let header = request_id_header(&reply.1)
                        .expect("X-Request-ID")
                        .to_owned();
                    if echoed {
                        assert_eq!(header, sent, "{url}");
                    } else {
                        assert!(header.starts_with("req_"), "{url}: {header}");
                    }
                    if status != StatusCode::OK {
                        assert_eq!(reply.2["error"]["request_id"], json!(header), "{url}");
                    }
                }
            }
            // Generated ids are unique per request.
            let first = get(&client, &server, LOGS, &auth.a.secret).await;
            let second = get(&client, &server, LOGS, &auth.a.secret).await;
            assert_ne!(request_id_header(&first.1), request_id_header(&second.1));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_never_leak_internals() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "server_errors_never_leak_internals", async {
        let data_dir = dir.data_dir();
        let server = Server::start_wrapped(&["prlimit", "--fsize=2000000"], &data_dir, &[]).await;
        let client = client();
        let reply = ingest_until_refused(&client, &server, server.token(), 100).await;
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        );
        let error = reply.2["error"].as_object().expect("error object");
        let keys: BTreeSet<&str> = error.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["code", "message", "request_id"]),
            "{}",
            reply.2
        );
        let body = reply.2.to_string().to_lowercase();
        let data_dir_text = data_dir.to_string_lossy().to_lowercase();
        for leak in [
            data_dir_text.as_str(),
            "os error",
            "too large",
            "errno",
            "efbig",
            ".wal",
            "panick",
            "src/",
            "tantivy",
            "backtrace",
            "io error",
        ] {
            assert!(!body.contains(leak), "5xx body leaks `{leak}`: {body}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn free_text_search_covers_agent_path_identity_and_extra_data() {
    let dir = TestDir::new();
    let server = Server::start(&dir.data_dir(), &[]).await;
    let client = client();
    let marked = |i: u64, field: &str, value: Value| {
        let mut event = event(i);
        event[field] = value;
        event
    };
    let events = [
        marked(1, "user_agent", json!("terraform-provider-scaivault/0.9.1")),
        marked(2, "extra_data", json!({"lease_id": "lease_7f3a9c"})),
        marked(3, "secret_path", json!("integrations/stripe/oauth-1")),
        marked(4, "identity_id", json!("user:zed@acme.example")),
    ];
    let ids = ingest_ok(&client, server.base_url(), server.token(), &events).await;
    wait_until_visible(
        &client,
        server.base_url(),
        server.token(),
        Some(TENANT),
        &ids,
        Duration::from_secs(10),
    )
    .await;
    let search = |q: &str| {
        let url = format!(
            "{}/v1/audit/logs?q={}",
            server.base_url(),
            percent_encode(q)
        );
        let request = client
            .get(url)
            .bearer_auth(server.token())
            .header("X-Tenant-ID", TENANT);
        send(request)
    };
    for (q, expected) in [
        ("terraform", vec![&ids[0]]),
        ("lease_7f3a9c", vec![&ids[1]]),
        ("stripe", vec![&ids[2]]),
        ("zed", vec![&ids[3]]),
        ("stripe OR zed", vec![&ids[3], &ids[2]]),
        ("stripe AND zed", vec![]),
    ] {
        let (status, _, body) = search(q).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        let found: Vec<&str> = body["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let expected: Vec<&str> = expected.iter().map(|id| id.as_str()).collect();
        assert_eq!(found, expected, "q={q}");
    }
    let (status, _, body) = search("\"terraform provider\"").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["logs"][0]["id"], ids[0].as_str(), "phrase query");
    assert_eq!(body["logs"].as_array().unwrap().len(), 1);
    let reply = search("title:(unbalanced").await;
    assert_validation_error(&reply, "q");
}

#[tokio::test(flavor = "multi_thread")]
async fn time_parameters_take_a_date_or_a_time_without_offset_as_utc() {
    let dir = TestDir::new();
    within(
        TEST_DEADLINE,
        "time_parameters_take_a_date_or_a_time_without_offset_as_utc",
        async {
            let auth = Auth::new();
            let server = start_exact(&dir, &auth).await;
            let client = client();
            let token = auth.a.secret.as_str();
            let times = [
                "2026-04-22T23:59:59.999999Z",
                "2026-04-23T00:00:00.000000Z",
                "2026-04-23T12:00:00.000000Z",
            ];
            let events: Vec<Value> = times
                .iter()
                .enumerate()
                .map(|(i, time)| {
                    let mut event = event_for_tenant(i as u64, None);
                    event["timestamp"] = json!(time);
                    event
                })
                .collect();
            let ids = ingest_ok(&client, server.base_url(), token, &events).await;
            wait_until_visible(
                &client,
                server.base_url(),
                token,
                None,
                &ids,
                RESTART_VISIBILITY_DEADLINE,
            )
            .await;
            let timestamps = |reply: &Reply| -> Vec<String> {
                let logs = reply.2["logs"].as_array().expect("logs");
                let mut found: Vec<String> = logs
                    .iter()
                    .map(|log| log["timestamp"].as_str().expect("timestamp").to_owned())
                    .collect();
                found.sort();
                found
            };
            for (query, expected) in [
                ("from=2026-04-23", &times[1..]),
                ("from=2026-04-23T00:00:00", &times[1..]),
                ("from=2026-04-23T02:00:00%2B02:00", &times[1..]),
                ("to=2026-04-23", &times[..1]),
                ("from=2026-04-23&to=2026-04-23T12:00:00", &times[1..2]),
                (
                    "from=2026-04-22T23:59:59.999999&to=2026-04-23T12:00:00.000001",
                    &times[..],
                ),
            ] {
                for (name, url) in &query_endpoints()[..1] {
                    let reply = get(&client, &server, &with_query(url, query), token).await;
                    assert_ok(&reply, &format!("{name} {query}"));
                    assert_eq!(timestamps(&reply), expected, "{name} {query}");
                }
            }
            // An unencoded `+` decodes to a space: the message says to encode it.
            for (name, url) in query_endpoints() {
                let plus = with_query(&url, "from=2026-04-23T02:00:00+02:00");
                let message = expect_422(&client, &server, token, &plus, "from").await;
                assert!(
                    message.contains("%2B") && message.contains("2026-04-23T02:00:00%2B02:00"),
                    "{name}: {message}"
                );
                let hour_only = with_query(&url, "to=2026-04-23T18");
                let message = expect_422(&client, &server, token, &hour_only, "to").await;
                assert!(message.contains("a date (2026-04-23"), "{name}: {message}");
            }
        },
    )
    .await;
}
