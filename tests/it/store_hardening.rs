//! Black-box tests of the store's tenant confinement and hostile-input limits (issue 10):
//! producer ids deduplicated per tenant, damaged WAL data quarantined, and global bounds on
//! summary work answered with 503 + `Retry-After`.

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// `event(i)` of `tenant` carrying the producer id `id`.
fn tenant_event(i: u64, tenant: &str, id: &str) -> Value {
    with_id(event_for_tenant(i, Some(tenant)), id)
}

/// Posts `events` with the admin token; returns `duplicates` of the 200 reply.
async fn post_counting_duplicates(client: &Client, server: &Server, events: &[Value]) -> u64 {
    let reply = post_events(
        client,
        server.base_url(),
        server.token(),
        json!({ "events": events }),
    )
    .await;
    assert_eq!(reply.0, StatusCode::OK, "ingest failed: {}", reply.2);
    reply.2["duplicates"]
        .as_u64()
        .unwrap_or_else(|| panic!("no duplicates count: {}", reply.2))
}

/// The ids of every log `tenant` can read.
async fn tenant_ids(client: &Client, server: &Server, tenant: &str) -> Vec<String> {
    fetch_all_logs(client, server.base_url(), server.token(), tenant)
        .await
        .iter()
        .map(|log| log["id"].as_str().expect("log id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_id_is_deduplicated_per_tenant_before_and_after_replay() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "per-tenant deduplication", async {
        let client = client();
        let data = dir.data_dir();
        let shared_id = producer_id();
        // Run 1, no index commits: the WAL stage's pending set decides.
        let mut server = Server::start(&data, NO_COMMITS).await;
        let first = [tenant_event(1, TENANT, &shared_id)];
        assert_eq!(post_counting_duplicates(&client, &server, &first).await, 0);
        // Another tenant sending the same id is stored, and learns nothing about the first.
        let foreign = [tenant_event(2, OTHER_TENANT, &shared_id)];
        assert_eq!(
            post_counting_duplicates(&client, &server, &foreign).await,
            0
        );
        // Resends within each tenant are still duplicates.
        assert_eq!(
            post_counting_duplicates(&client, &server, &foreign).await,
            1
        );
        assert_eq!(post_counting_duplicates(&client, &server, &first).await, 1);
        server.kill9();

        // Run 2: both were replayed from the WAL into the index, which now decides.
        let server = Server::start(&data, NO_COMMITS).await;
        assert_eq!(
            tenant_ids(&client, &server, TENANT).await,
            vec![shared_id.clone()]
        );
        assert_eq!(
            tenant_ids(&client, &server, OTHER_TENANT).await,
            vec![shared_id.clone()]
        );
        assert_eq!(post_counting_duplicates(&client, &server, &first).await, 1);
        assert_eq!(
            post_counting_duplicates(&client, &server, &foreign).await,
            1
        );
        let third = [tenant_event(3, "tnt_third", &shared_id)];
        assert_eq!(post_counting_duplicates(&client, &server, &third).await, 0);
    })
    .await;
}

/// Offsets and lengths of the records of a WAL segment (`len: u32 LE | crc: u32 | payload`).
fn wal_records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        records.push((offset, 8 + len));
        offset += 8 + len;
    }
    assert_eq!(offset, bytes.len(), "the segment ends after a whole record");
    records
}

/// The value of an unlabelled metric sample.
async fn metric(client: &Client, server: &Server, name: &str) -> f64 {
    let request = client
        .get(format!("{}/metrics", server.base_url()))
        .bearer_auth(server.token());
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("numeric sample")
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

fn quarantined_files(data: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(data.join("quarantine"))
        .expect("quarantine directory exists")
        .map(|entry| entry.expect("quarantine entry").path())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read quarantined file"))
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_wal_record_is_quarantined_and_everything_else_served() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "WAL quarantine", async {
        let client = client();
        let data = dir.data_dir();
        let mut server = Server::start(&data, NO_COMMITS).await;
        // One request, one WAL record: three records, the middle one to be damaged.
        let batches: Vec<Vec<Value>> = (0..3)
            .map(|b| events_with_producer_ids(b * 10, 3))
            .collect();
        for batch in &batches {
            ingest_ok(&client, server.base_url(), server.token(), batch).await;
        }
        server.kill9();

        let segment = newest_wal_segment(&data);
        let mut bytes = std::fs::read(&segment).unwrap();
        let records = wal_records(&bytes);
        assert_eq!(records.len(), 3, "one record per request");
        let (offset, len) = records[1];
        bytes[offset + 8 + len / 2] ^= 0x55;
        std::fs::write(&segment, &bytes).unwrap();

        let mut server = Server::start(&data, NO_COMMITS).await;
        server.assert_running();
        let files = quarantined_files(&data);
        assert_eq!(
            files.len(),
            1,
            "{:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert_eq!(
            files[0].1,
            bytes[offset..offset + len],
            "the damaged record's bytes"
        );
        assert_eq!(
            metric(&client, &server, "scaivault_audit_wal_quarantined_total").await,
            1.0
        );
        assert_eq!(
            metric(
                &client,
                &server,
                "scaivault_audit_wal_quarantined_bytes_total"
            )
            .await,
            len as f64
        );
        let log = without_ansi(&std::fs::read_to_string(server.stderr_log()).unwrap());
        let segment_name = segment.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            log.lines().any(|line| line.contains("ERROR")
                && line.contains("quarantine")
                && line.contains(&segment_name)
                && line.contains(&format!("offset={offset}"))),
            "no error line naming the segment and offset:\n{log}"
        );

        // The events around the damage are served; the damaged request's are not.
        let served = tenant_ids(&client, &server, TENANT).await;
        let mut expected = [ids_of(&batches[0]), ids_of(&batches[2])].concat();
        expected.sort();
        let mut served_sorted = served.clone();
        served_sorted.sort();
        assert_eq!(served_sorted, expected);
        // And the store keeps taking writes.
        ingest_ok(&client, server.base_url(), server.token(), &[event(99)]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn summaries_beyond_the_global_limit_get_503_with_retry_after() {
    let dir = TestDir::new();
    within(TEST_DEADLINE, "summary concurrency limit", async {
        let client = client();
        // One slot, a short wait, and every summary holding its slot for 5 s: of two summaries
        // sent together, whichever comes second finds the slot taken.
        let args = [
            "--max-concurrent-summaries",
            "1",
            "--busy-wait-ms",
            "200",
            "--debug-summary-hold-ms",
            "5000",
        ];
        let server = Server::start(&dir.data_dir(), &args).await;
        let summary = |tenant: &'static str| {
            get_as(
                &client,
                server.base_url(),
                "/v1/audit/summary",
                Some(server.token()),
                Some(tenant),
            )
        };
        // Two tenants: the bound is global, not per tenant.
        let (first, second) = tokio::join!(summary(TENANT), summary(OTHER_TENANT));
        let mut statuses = [first.0, second.0];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
        let refused = if first.0 == StatusCode::OK {
            second
        } else {
            first
        };
        assert_eq!(
            refused.2["error"]["code"],
            json!("service_unavailable"),
            "{}",
            refused.2
        );
        assert_eq!(
            header_u64(&refused.1, "retry-after"),
            Some(1),
            "{:?}",
            refused.1
        );
        // Once the slot is free again, the next summary runs.
        let again = summary(TENANT).await;
        assert_eq!(again.0, StatusCode::OK, "{}", again.2);
    })
    .await;
}
