//! ScaiKey JWTs through the real server: `--jwks-url file://...` with the test keys of
//! tests/fixtures/jwt (SPEC §4.1), alongside static tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

pub(crate) fn sign(kid: &str, claims: &Value) -> String {
    let (algorithm, pem) = match kid {
        "ec-1" => (Algorithm::ES256, "ec.pem"),
        "ed-1" => (Algorithm::EdDSA, "ed25519.pem"),
        _ => (Algorithm::RS256, "rsa.pem"),
    };
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_string());
    encode(&header, claims, &key).unwrap()
}

/// Changes one character in the middle of the signature (the last character of a base64url
/// signature may carry only padding bits, so changing it can leave the bytes unchanged).
fn tamper_signature(token: &str) -> String {
    let signature_start = token.rfind('.').unwrap() + 1;
    let position = signature_start + (token.len() - signature_start) / 2;
    let original = token.as_bytes()[position];
    let replacement = if original == b'A' { 'B' } else { 'A' };
    let mut tampered = token.to_string();
    tampered.replace_range(position..position + 1, &replacement.to_string());
    assert_ne!(tampered, token);
    tampered
}

pub(crate) fn claims(sub: &str, scope: &str, tenant: Option<&str>, expires_in: i64) -> Value {
    let now = unix_now() as i64;
    let mut claims = json!({"sub": sub, "scope": scope, "iat": now, "exp": now + expires_in,
        "iss": "https://scaikey.example/tenants/t", "aud": "scaivault"});
    if let Some(tenant) = tenant {
        claims["tenant_id"] = json!(tenant);
    }
    claims
}

/// A server accepting the fixture JWKS. The audit of the audit is off: the tests count the
/// events a token sees, and their polling reads would add `audit_read` events.
async fn start_with_jwks(dir: &TestDir) -> Server {
    let jwks = format!("file://{}", fixture("jwks.json").display());
    let args = [
        &["--jwks-url", &jwks, "--jwt-audience", "scaivault"],
        AUDIT_OF_AUDIT_OFF,
    ]
    .concat();
    Server::start(&dir.data_dir(), &args).await
}

async fn get_logs_with(server: &Server, token: &str, tenant_header: Option<&str>) -> Reply {
    let mut request = client()
        .get(format!("{}/v1/audit/logs?limit=5", server.base_url()))
        .bearer_auth(token);
    if let Some(tenant) = tenant_header {
        request = request.header("X-Tenant-ID", tenant);
    }
    send(request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn scaikey_tokens_of_every_algorithm_read_and_write_their_tenant() {
    let dir = TestDir::new();
    let server = start_with_jwks(&dir).await;
    assert!(
        server.bootstrap_token().is_none(),
        "a JWKS is auth: no bootstrap token"
    );
    let writer = sign(
        "ec-1",
        &claims("sa:ingest", "audit:write", Some(TENANT), 600),
    );
    let event = event_for_tenant(1, None);
    let ids = ingest_ok(&client(), server.base_url(), &writer, &[event]).await;
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let reader = sign(
            kid,
            &claims(
                "user:alice@acme.example",
                "openid audit:read",
                Some(TENANT),
                600,
            ),
        );
        let logs = wait_until_visible(
            &client(),
            server.base_url(),
            &reader,
            None,
            &ids,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(logs.len(), 1, "{kid}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_scaikey_tokens_get_precise_errors() {
    let dir = TestDir::new();
    let server = start_with_jwks(&dir).await;
    let expired = sign("rsa-1", &claims("sa:r", "audit:read", Some(TENANT), -3600));
    assert_error(
        &get_logs_with(&server, &expired, None).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );
    let tampered = tamper_signature(&sign(
        "rsa-1",
        &claims("sa:r", "audit:read", Some(TENANT), 600),
    ));
    assert_error(
        &get_logs_with(&server, &tampered, None).await,
        StatusCode::UNAUTHORIZED,
        "token_invalid",
    );
    let mut wrong_audience = claims("sa:r", "audit:read", Some(TENANT), 600);
    wrong_audience["aud"] = json!("someone-else");
    let token = sign("rsa-1", &wrong_audience);
    assert_error(
        &get_logs_with(&server, &token, None).await,
        StatusCode::UNAUTHORIZED,
        "token_invalid",
    );
    let no_scope = sign("rsa-1", &claims("sa:r", "secrets:read", Some(TENANT), 600));
    assert_error(
        &get_logs_with(&server, &no_scope, None).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    );
    let bound = sign("rsa-1", &claims("sa:r", "audit:read", Some(TENANT), 600));
    assert_error(
        &get_logs_with(&server, &bound, Some("tnt_other")).await,
        StatusCode::FORBIDDEN,
        "tenant_access_denied",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn partner_admin_role_picks_tenants_with_the_header() {
    let dir = TestDir::new();
    let server = start_with_jwks(&dir).await;
    let mut admin = claims(
        "user:root@partner.example",
        "audit:read audit:write",
        None,
        600,
    );
    admin["role"] = json!("partner_admin");
    let admin = sign("ed-1", &admin);
    let ids = ingest_ok(
        &client(),
        server.base_url(),
        &admin,
        &[event_for_tenant(7, Some("tnt_globex"))],
    )
    .await;
    let logs = wait_until_visible(
        &client(),
        server.base_url(),
        &admin,
        Some("tnt_globex"),
        &ids,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(logs.len(), 1);
    let missing_header = get_logs_with(&server, &admin, None).await;
    assert_error(&missing_header, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, _, body) = get_logs_with(&server, &admin, Some(TENANT)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["logs"].as_array().unwrap().len(),
        0,
        "tnt_acme has no events"
    );
}
