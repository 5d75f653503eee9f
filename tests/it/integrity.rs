//! Signed checkpoints against the real server: written every interval for each tenant with new
//! events (and only for those), paged with cursors bound to the tenant and the filters,
//! confined to the caller's tenant, verifiable with the JWKS of `/v1/audit/integrity/keys`, and
//! equal to the chain recomputed from the events read back through `/v1/audit/logs`. They
//! survive `kill -9` (only durable events are covered; the chain continues after the WAL
//! replay), a graceful stop writes a last one, and the key ring commands feed the service.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use scaivault_audit::integrity::canonical::record_bytes;
use scaivault_audit::integrity::chain::ChainLink;
use scaivault_audit::integrity::checkpoint::checkpoint_hash;
use scaivault_audit::integrity::keys::PublicKeys;
use serde_json::{Value, json};

use crate::harness::*;

const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// Checkpoints come every second in these tests; a round must show up well within this.
const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(20);
const CHECKPOINTS: &str = "/v1/audit/integrity/checkpoints";
const KEYS: &str = "/v1/audit/integrity/keys";
/// The audit of the audit is off in these tests: they compare each checkpoint with the chain
/// of exactly the events they ingested, and reading checkpoints would add `audit_read` events.
const EVERY_SECOND: &[&str] = &[
    "--audit-of-audit-enabled",
    "false",
    "--integrity-checkpoint-interval-seconds",
    "1",
    "--commit-interval-ms",
    "200",
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `count` events of `tenant` numbered from `first` (strictly increasing timestamps, so time
/// order is ingest order), with the tenant set for all-tenant tokens.
fn tenant_events(tenant: &str, first: u64, count: u64) -> Vec<Value> {
    (first..first + count)
        .map(|i| event_for_tenant(i, Some(tenant)))
        .collect()
}

/// Every checkpoint of `tenant` (walking the pages of `limit`).
async fn all_checkpoints(client: &Client, base: &str, token: &str, tenant: &str) -> Vec<Value> {
    let mut checkpoints = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let query = match &cursor {
            Some(cursor) => format!("?limit=2&cursor={}", percent_encode(cursor)),
            None => "?limit=2".to_owned(),
        };
        let reply = get_as(
            client,
            base,
            &format!("{CHECKPOINTS}{query}"),
            Some(token),
            Some(tenant),
        )
        .await;
        assert_eq!(reply.0, StatusCode::OK, "{query}: {}", reply.2);
        let page = reply.2["checkpoints"].as_array().expect("checkpoints");
        assert!(page.len() <= 2, "{}", reply.2);
        checkpoints.extend(page.iter().cloned());
        if reply.2["has_more"] != json!(true) {
            assert_eq!(reply.2["cursor"], Value::Null);
            return checkpoints;
        }
        cursor = Some(reply.2["cursor"].as_str().expect("cursor").to_owned());
    }
    panic!("too many pages of checkpoints");
}

/// Waits until `tenant`'s last checkpoint covers `event_count` events; returns all of them.
async fn wait_for_checkpoint(
    client: &Client,
    base: &str,
    token: &str,
    tenant: &str,
    event_count: u64,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let checkpoints = all_checkpoints(client, base, token, tenant).await;
        let covered = checkpoints
            .last()
            .and_then(|last| last["event_count"].as_u64());
        if covered == Some(event_count) {
            return checkpoints;
        }
        assert!(
            covered.is_none_or(|covered| covered < event_count),
            "a checkpoint covers {covered:?} events, more than the {event_count} stored"
        );
        assert!(
            started.elapsed() < CHECKPOINT_DEADLINE,
            "no checkpoint of {tenant} covering {event_count} events within {CHECKPOINT_DEADLINE:?}: {checkpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JWKS served without a token.
async fn public_keys(client: &Client, base: &str) -> (Value, PublicKeys) {
    let reply = get_as(client, base, KEYS, None, None).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    assert_eq!(
        reply.1.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("public, max-age=300")
    );
    let keys = PublicKeys::from_jwks(&reply.2).expect("a JWKS of Ed25519 keys");
    (reply.2, keys)
}

/// The chain links of `tenant`'s events, recomputed from the API records in time order (the
/// ingest order here): `links[n - 1]` is the head after `n` events.
async fn recomputed_chain(
    client: &Client,
    base: &str,
    token: &str,
    tenant: &str,
) -> Vec<ChainLink> {
    let mut logs = fetch_all_logs(client, base, token, tenant).await;
    logs.sort_by(|a, b| {
        let time = |log: &Value| log["timestamp"].as_str().unwrap_or_default().to_owned();
        time(a).cmp(&time(b))
    });
    let mut head = ChainLink::GENESIS;
    logs.iter()
        .map(|log| {
            head = head.next(&record_bytes(tenant, log.as_object().expect("record")));
            head
        })
        .collect()
}

/// Checks `checkpoints` (all of `tenant`'s) against the chain and the keys: sequences from 1,
/// each linked to the one before, signed, and each head the recomputed chain's at its count.
fn assert_checkpoints_prove(
    checkpoints: &[Value],
    chain: &[ChainLink],
    keys: &PublicKeys,
    tenant: &str,
) {
    assert!(!checkpoints.is_empty());
    let mut previous: Option<&Value> = None;
    for (index, checkpoint) in checkpoints.iter().enumerate() {
        let context = format!("checkpoint {checkpoint}");
        assert_eq!(checkpoint["tenant_id"], json!(tenant), "{context}");
        assert_eq!(checkpoint["sequence"], json!(index + 1), "{context}");
        keys.verify_object(checkpoint.as_object().expect("object"))
            .unwrap_or_else(|error| panic!("{context}: {error}"));
        let expected_link = previous.map(|previous| json!(checkpoint_hash(previous)));
        assert_eq!(
            checkpoint["previous_checkpoint_hash"],
            expected_link.unwrap_or(Value::Null),
            "{context}"
        );
        let count = checkpoint["event_count"].as_u64().expect("event_count") as usize;
        assert!(
            (1..=chain.len()).contains(&count),
            "{context}: covers {count} of {} stored events",
            chain.len()
        );
        if let Some(previous) = previous {
            assert!(
                count > previous["event_count"].as_u64().unwrap_or(0) as usize,
                "{context}: a checkpoint only when the head moved"
            );
        }
        assert_eq!(
            checkpoint["chain_head"],
            json!(chain[count - 1].hash_hex()),
            "{context}: the head is not the chain over the first {count} events"
        );
        previous = Some(checkpoint);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_appear_per_tenant_page_and_stay_in_their_tenant() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "checkpoints per tenant", async {
        let acme = StaticToken::new("ck-acme", &["audit:read", "audit:write"], Some(TENANT));
        let other = StaticToken::new("ck-other", &["audit:read"], Some(OTHER_TENANT));
        let admin = StaticToken::new("ck-admin", &["audit:read", "audit:write"], None);
        let writer = StaticToken::new("ck-writer", &["audit:write"], Some(TENANT));
        let tokens = [&acme, &other, &admin, &writer];
        let server = start_with_tokens(&dir, "tokens.toml", &tokens, None, EVERY_SECOND).await;
        let client = client();
        let base = server.base_url();
        let (acme_token, admin_token) = (acme.secret.as_str(), admin.secret.as_str());

        // Three rounds of new events: three checkpoints, each covering all events so far.
        for round in 0..3u64 {
            let events: Vec<Value> = (0..2)
                .map(|i| event_for_tenant(round * 10 + i, None))
                .collect();
            ingest_ok(&client, base, acme_token, &events).await;
            wait_for_checkpoint(&client, base, acme_token, TENANT, (round + 1) * 2).await;
        }
        let whole = get_as(&client, base, CHECKPOINTS, Some(acme_token), None).await;
        assert_eq!(whole.0, StatusCode::OK, "{}", whole.2);
        assert_eq!(whole.2["has_more"], json!(false));
        assert_eq!(whole.2["cursor"], Value::Null);
        let whole: Vec<Value> = whole.2["checkpoints"].as_array().unwrap().clone();
        assert_eq!(whole.len(), 3, "{whole:?}");
        let counts: Vec<u64> = whole
            .iter()
            .map(|c| c["event_count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [2, 4, 6]);
        // Paged by 2 (cursor) = the whole list; no round without new events adds one.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            all_checkpoints(&client, base, acme_token, TENANT).await,
            whole
        );

        // The other tenant has no events, hence no checkpoints; it never sees acme's.
        let reply = get_as(&client, base, CHECKPOINTS, Some(&other.secret), None).await;
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
        assert_eq!(reply.2["checkpoints"], json!([]));
        let reply = get_as(
            &client,
            base,
            CHECKPOINTS,
            Some(&other.secret),
            Some(TENANT),
        )
        .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_access_denied");
        // An all-tenant token names the tenant.
        let reply = get_as(&client, base, CHECKPOINTS, Some(admin_token), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            all_checkpoints(&client, base, admin_token, TENANT).await,
            whole
        );
        let reply = get_as(
            &client,
            base,
            CHECKPOINTS,
            Some(admin_token),
            Some(OTHER_TENANT),
        )
        .await;
        assert_eq!(reply.2["checkpoints"], json!([]), "{}", reply.2);

        // Events of the other tenant: its own first checkpoint; acme's list does not move.
        ingest_ok(
            &client,
            base,
            admin_token,
            &tenant_events(OTHER_TENANT, 100, 3),
        )
        .await;
        let others = wait_for_checkpoint(&client, base, &other.secret, OTHER_TENANT, 3).await;
        assert_eq!(others.len(), 1);
        assert_eq!(others[0]["sequence"], json!(1));
        assert_eq!(others[0]["previous_checkpoint_hash"], Value::Null);
        assert_eq!(
            all_checkpoints(&client, base, acme_token, TENANT).await,
            whole
        );
        let metrics = get_as(&client, base, "/metrics", None, None).await;
        let metrics = metrics.2.as_str().unwrap_or_default();
        for line in [
            "scaivault_audit_integrity_checkpoints_written_total 4",
            "scaivault_audit_integrity_checkpoint_failures_total 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
        }

        // from (inclusive) and to (exclusive) select by the checkpoint's timestamp.
        let at = |index: usize| whole[index]["timestamp"].as_str().unwrap().to_owned();
        let url = format!(
            "{CHECKPOINTS}?from={}&to={}",
            percent_encode(&at(1)),
            percent_encode(&at(2))
        );
        let reply = get_as(&client, base, &url, Some(acme_token), None).await;
        assert_eq!(
            reply.2["checkpoints"],
            json!([whole[1].clone()]),
            "{}",
            reply.2
        );

        // Cursors: bound to the tenant and the filters, and unforgeable.
        let first = get_as(
            &client,
            base,
            &format!("{CHECKPOINTS}?limit=1"),
            Some(acme_token),
            None,
        )
        .await;
        assert_eq!(first.2["has_more"], json!(true), "{}", first.2);
        assert_eq!(first.2["checkpoints"], json!([whole[0].clone()]));
        let cursor = percent_encode(first.2["cursor"].as_str().unwrap());
        let next = format!("{CHECKPOINTS}?limit=1&cursor={cursor}");
        let reply = get_as(&client, base, &next, Some(acme_token), None).await;
        assert_eq!(
            reply.2["checkpoints"],
            json!([whole[1].clone()]),
            "{}",
            reply.2
        );
        let reply = get_as(&client, base, &next, Some(admin_token), Some(OTHER_TENANT)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
        let filtered = format!("{next}&from=2026-01-01T00:00:00Z");
        let reply = get_as(&client, base, &filtered, Some(acme_token), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
        let logs_cursor = get_logs(&client, base, acme_token, None, "limit=1").await;
        let logs_cursor = percent_encode(logs_cursor.2["cursor"].as_str().unwrap());
        let url = format!("{CHECKPOINTS}?cursor={logs_cursor}");
        let reply = get_as(&client, base, &url, Some(acme_token), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");
        let url = format!("{CHECKPOINTS}?cursor=AAAA{cursor}");
        let reply = get_as(&client, base, &url, Some(acme_token), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_cursor");

        // Bad parameters are refused before any work, naming the parameter.
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("from=yesterday", "from"),
            ("to=2026-01-01T00", "to"),
            ("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
            ("action=read", "action"),
            ("limit=1&limit=2", "limit"),
        ] {
            let url = format!("{CHECKPOINTS}?{query}");
            let reply = get_as(&client, base, &url, Some(acme_token), None).await;
            assert_validation_error(&reply, field);
        }
        let reply = get_as(&client, base, CHECKPOINTS, None, None).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "authentication_required");
        let reply = get_as(&client, base, CHECKPOINTS, Some(&writer.secret), None).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "insufficient_scope");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_keys_verify_checkpoints_that_match_the_recomputed_chain() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "keys and chain", async {
        let server = Server::start(&dir.data_dir(), EVERY_SECOND).await;
        let client = client();
        let (base, token) = (server.base_url(), server.token());
        // Two tenants interleaved in one batch: each has its own chain.
        let (acme_events, other_events) = (
            tenant_events(TENANT, 0, 4),
            tenant_events(OTHER_TENANT, 4, 3),
        );
        let mut batch = Vec::new();
        for (index, event) in acme_events.into_iter().enumerate() {
            batch.push(event);
            batch.extend(other_events.get(index).cloned());
        }
        ingest_ok(&client, base, token, &batch).await;
        wait_for_checkpoint(&client, base, token, TENANT, 4).await;
        ingest_ok(&client, base, token, &tenant_events(TENANT, 10, 5)).await;
        let acme = wait_for_checkpoint(&client, base, token, TENANT, 9).await;
        let other = wait_for_checkpoint(&client, base, token, OTHER_TENANT, 3).await;

        let (jwks, keys) = public_keys(&client, base).await;
        let listed = jwks["keys"].as_array().expect("keys");
        assert_eq!(listed.len(), 1, "{jwks}");
        for member in ["kty", "crv", "x", "kid", "alg", "use", "valid_from"] {
            assert!(listed[0][member].is_string(), "{member}: {jwks}");
        }
        assert_eq!(listed[0]["valid_until"], Value::Null);
        assert_eq!(acme[0]["signature"]["kid"], listed[0]["kid"]);

        let chain = recomputed_chain(&client, base, token, TENANT).await;
        assert_eq!(chain.len(), 9);
        assert_checkpoints_prove(&acme, &chain, &keys, TENANT);
        let chain = recomputed_chain(&client, base, token, OTHER_TENANT).await;
        assert_checkpoints_prove(&other, &chain, &keys, OTHER_TENANT);

        // A checkpoint altered in any member no longer verifies.
        let mut forged = acme[0].as_object().unwrap().clone();
        forged.insert("event_count".into(), json!(1));
        assert!(keys.verify_object(&forged).is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_survive_kill_9_and_the_chain_continues_after_the_replay() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "checkpoints across kill -9", async {
        let data = dir.data_dir();
        let client = client();
        let mut server = Server::start(&data, EVERY_SECOND).await;
        let token = server.token().to_owned();
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 0, 10),
        )
        .await;
        wait_for_checkpoint(&client, server.base_url(), &token, TENANT, 10).await;
        // Acknowledged (in the WAL), most likely neither committed nor checkpointed yet.
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 10, 10),
        )
        .await;
        server.kill9();

        // The replay restores the second batch; its chain continues the first one's.
        let mut server = Server::start(&data, EVERY_SECOND).await;
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 20, 10),
        )
        .await;
        wait_for_checkpoint(&client, server.base_url(), &token, TENANT, 30).await;

        // Once more, with nothing committed before the kill: no checkpoint covers those events
        // until they are replayed and committed.
        server.kill9();
        let mut server = Server::start(&data, NO_COMMITS_EVERY_SECOND).await;
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 30, 5),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let checkpoints = all_checkpoints(&client, server.base_url(), &token, TENANT).await;
        let last = checkpoints.last().unwrap()["event_count"].as_u64();
        assert_eq!(last, Some(30), "uncommitted events were checkpointed");
        server.kill9();

        let server = Server::start(&data, EVERY_SECOND).await;
        let checkpoints = wait_for_checkpoint(&client, server.base_url(), &token, TENANT, 35).await;
        let chain = recomputed_chain(&client, server.base_url(), &token, TENANT).await;
        assert_eq!(chain.len(), 35, "every acknowledged event is stored once");
        let (_, keys) = public_keys(&client, server.base_url()).await;
        assert_checkpoints_prove(&checkpoints, &chain, &keys, TENANT);
    })
    .await;
}

/// Checkpoints every second, but no index commit (only the WAL replay at start commits).
const NO_COMMITS_EVERY_SECOND: &[&str] = &[
    "--audit-of-audit-enabled",
    "false",
    "--integrity-checkpoint-interval-seconds",
    "1",
    "--commit-interval-ms",
    "3600000",
    "--commit-max-docs",
    "100000000",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_writes_a_final_checkpoint() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "final checkpoint", async {
        let data = dir.data_dir();
        let client = client();
        // No round before the stop: an hour between checkpoints, and no commit either (the
        // final commit happens at the stop, the final checkpoint after it).
        let args = [
            "--audit-of-audit-enabled",
            "false",
            "--integrity-checkpoint-interval-seconds",
            "3600",
            "--commit-interval-ms",
            "3600000",
            "--commit-max-docs",
            "100000000",
        ];
        let mut server = Server::start(&data, &args).await;
        let token = server.token().to_owned();
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 0, 7),
        )
        .await;
        let reply = get_as(
            &client,
            server.base_url(),
            CHECKPOINTS,
            Some(&token),
            Some(TENANT),
        )
        .await;
        assert_eq!(reply.2["checkpoints"], json!([]), "{}", reply.2);
        let status = server.terminate().await;
        assert!(status.success(), "{status}");

        let server = Server::start(&data, &args).await;
        let checkpoints = all_checkpoints(&client, server.base_url(), &token, TENANT).await;
        assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
        assert_eq!(checkpoints[0]["event_count"], json!(7));
        let chain = recomputed_chain(&client, server.base_url(), &token, TENANT).await;
        let (_, keys) = public_keys(&client, server.base_url()).await;
        assert_checkpoints_prove(&checkpoints, &chain, &keys, TENANT);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_and_rotate_key_make_the_ring_a_configured_keys_dir_needs() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "key ring commands", async {
        let keys_dir = dir.root().join("secret");
        let keys_arg = path_arg(&keys_dir).to_owned();
        let data = dir.data_dir();

        // A configured directory without a ring stops the start with a clear error.
        let output = run_to_exit(&[
            "serve",
            "--data-dir",
            path_arg(&data),
            "--listen",
            "127.0.0.1:0",
            "--integrity-keys-dir",
            &keys_arg,
        ]);
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        assert!(stderr.contains("no signing key ring"), "{stderr}");
        assert!(stderr.contains("integrity keygen"), "{stderr}");

        let check = [
            "check-config",
            "--data-dir",
            path_arg(&data),
            "--integrity-keys-dir",
            &keys_arg,
        ];
        let output = run_to_exit(&check);
        // A missing key ring is a failure at run time (1), not a usage error (2).
        assert_eq!(
            output.status.code(),
            Some(1),
            "check-config checks the ring too"
        );
        assert!(text(&output.stderr).contains("no signing key ring"));

        let output = run_to_exit(&["integrity", "keygen", "--dir", &keys_arg]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(run_to_exit(&check).status.success());
        assert!(keys_dir.join("keyring.json").is_file());
        let output = run_to_exit(&["integrity", "keygen", "--dir", &keys_arg]);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            text(&output.stderr).contains("already holds a key ring"),
            "{}",
            text(&output.stderr)
        );

        let args = [EVERY_SECOND, &["--integrity-keys-dir", &keys_arg]].concat();
        let mut server = Server::start(&data, &args).await;
        let client = client();
        let token = server.token().to_owned();
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 0, 3),
        )
        .await;
        let before = wait_for_checkpoint(&client, server.base_url(), &token, TENANT, 3).await;
        let (jwks, _) = public_keys(&client, server.base_url()).await;
        let first_kid = jwks["keys"][0]["kid"].clone();
        assert_eq!(before[0]["signature"]["kid"], first_kid);
        assert!(
            !data.join("integrity/keys").try_exists().unwrap(),
            "no ring is created beside a configured one"
        );
        assert!(server.terminate().await.success());

        // Rotated while stopped: the new key signs, the old one stays listed and verifies.
        let output = run_to_exit(&["integrity", "rotate-key", "--dir", &keys_arg]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let server = Server::start(&data, &args).await;
        ingest_ok(
            &client,
            server.base_url(),
            &token,
            &tenant_events(TENANT, 3, 2),
        )
        .await;
        let after = wait_for_checkpoint(&client, server.base_url(), &token, TENANT, 5).await;
        let (jwks, keys) = public_keys(&client, server.base_url()).await;
        let listed = jwks["keys"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "{jwks}");
        assert_eq!(listed[0]["kid"], first_kid);
        assert!(listed[0]["valid_until"].is_string(), "{jwks}");
        assert_eq!(listed[1]["valid_until"], Value::Null);
        let last = after.last().unwrap();
        assert_eq!(last["signature"]["kid"], listed[1]["kid"]);
        let chain = recomputed_chain(&client, server.base_url(), &token, TENANT).await;
        assert_checkpoints_prove(&after, &chain, &keys, TENANT);
    })
    .await;
}

/// Deletes the document at ingest position `seq` from the stopped store in `data`, through
/// Tantivy, keeping the commit payload: an attacker with write access to the volume.
fn delete_event_on_disk(data: &Path, seq: u64) {
    use tantivy::query::RangeQuery;
    use tantivy::{Index, IndexWriter, Term};
    let index = Index::open_in_dir(data.join("index")).unwrap();
    let payload = index.load_metas().unwrap().payload;
    let (_, fields) = scaivault_audit::store::schema::build_schema();
    let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
    let term = |value| Term::from_field_u64(fields.seq, value);
    writer
        .delete_query(Box::new(RangeQuery::new(
            std::ops::Bound::Included(term(seq)),
            std::ops::Bound::Included(term(seq)),
        )))
        .unwrap();
    let mut commit = writer.prepare_commit().unwrap();
    if let Some(payload) = payload {
        commit.set_payload(&payload);
    }
    commit.commit().unwrap();
    writer.wait_merging_threads().unwrap();
}

fn verify_data_dir(data: &Path) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(["verify", "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), text)
}

#[tokio::test]
async fn verify_data_dir_passes_on_a_stopped_store_and_names_a_deleted_event() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "verify --data-dir", async {
        let data = dir.data_dir();
        let client = client();
        let mut server = Server::start(&data, EVERY_SECOND).await;
        let token = server.token().to_owned();
        let events = tenant_events(TENANT, 0, 9);
        ingest_ok(&client, server.base_url(), &token, &events).await;
        assert!(server.terminate().await.success());

        let (ok, text) = verify_data_dir(&data);
        assert!(ok, "{text}");
        assert!(text.contains("events: 9") && text.contains("OK"), "{text}");

        // Ingest positions 0..9 are this tenant's chain positions 1..=9.
        delete_event_on_disk(&data, 4);
        let (ok, text) = verify_data_dir(&data);
        assert!(!ok, "{text}");
        assert!(
            text.contains(&format!("tenant {TENANT}, event #5")) && text.contains("deleted"),
            "{text}"
        );
    })
    .await;
}
