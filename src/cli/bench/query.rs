//! `bench query`: the reference query mix (WORKLOAD.md, docs/workload.md) over HTTP.
//!
//! Generates the workload, loads it through HTTP ingest into a fresh server, waits until the
//! largest tenant's events are all searchable, picks each query's parameters from the generated
//! events by the same rules as the PostgreSQL harness (`pick_params` in the peers' `pg_queries.py`),
//! warms up, and times each query `--runs` times with one keep-alive client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use super::{
    BENCH_TOKEN, BenchServer, RssPeaks, RssSampler, RssSplit, generate_bodies, generated_workload,
    percentile, post_all, read_bodies, start_run,
};
use scaivault_audit::timestamp;

/// Flags of `bench query`.
#[derive(Debug, Clone, Args)]
pub struct QueryBenchArgs {
    /// Events to generate and ingest.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Timed runs per query (after one warm-up pass over the whole mix).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Record the mix's reads as `audit_read` events (the audit of the audit, on by default in
    /// the product). Off by default here: recorded reads are writes that change the tenant's
    /// newest events while the mix runs, and PostgreSQL records nothing.
    #[arg(long)]
    pub audit_reads: bool,
    /// Directory for the benchmark's data directory (default: a new temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Load these NDJSON events instead of generating them (`--events` and `--seed` are then
    /// ignored), every timestamp moved by the same whole number of seconds so that the newest
    /// falls in the second before now: the file the PostgreSQL harness loaded
    /// (`../shared/bench/peers`, its `events.ndjson`) gives both systems the same events and
    /// the same parameters.
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
}

const LIMIT: usize = 100;
const CURSOR_PAGE: usize = 50;
const DAY_US: i64 = 86_400_000_000;
const INGEST_CLIENTS: usize = 4;
const INGEST_BATCH: usize = 1000;

/// The fields of a generated event that the parameter rules look at.
#[derive(Deserialize)]
struct EventFields {
    tenant_id: String,
    timestamp: String,
    action: String,
    identity_type: String,
    identity_id: String,
    secret_path: Option<String>,
    request_id: Option<String>,
}

/// Every query parameter, chosen from the data (ties broken by key, like the PostgreSQL harness).
#[derive(Debug)]
struct Params {
    tenant: String,
    tenant_events: u64,
    /// One second after the tenant's newest event, whole seconds: the "now" of the windows.
    now_us: i64,
    mid_identity: String,
    request_id: String,
    most_read_path: String,
    busiest_sa: String,
}

/// The API as the tenant's client sees it: a keep-alive client, the server's address and the
/// tenant every request names.
struct TenantApi {
    client: reqwest::Client,
    address: String,
    tenant: String,
}

impl TenantApi {
    /// The API of `server` for `params`' tenant, through a new client (whose connections belong
    /// to the runtime it is first used on).
    fn new(server_address: &str, params: &Params) -> TenantApi {
        TenantApi {
            client: reqwest::Client::new(),
            address: server_address.to_string(),
            tenant: params.tenant.clone(),
        }
    }
}

/// One query of the mix: a path and query string against the server, and whether the workload
/// guarantees it matches something.
#[derive(Clone)]
struct Query {
    number: u8,
    label: &'static str,
    path_and_query: String,
    must_match: bool,
}

/// Runs `bench query`.
pub async fn run(args: QueryBenchArgs) -> anyhow::Result<()> {
    // The workload ends now (whole seconds): the trails' 30-day summaries are relative to the
    // server's clock, and must cover the newest 30 days of data as the PostgreSQL harness's do.
    let end = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?;
    let (temp, bodies) = match &args.events_file {
        Some(file) => {
            let workload = format!("the events of {}", file.display());
            let temp = start_run(args.dir.as_deref(), &workload)?;
            let bodies = read_bodies(file, INGEST_BATCH)?;
            (temp, ending_before(bodies, end.as_second())?)
        }
        None => {
            let workload = generated_workload(args.events, args.seed);
            let temp = start_run(args.dir.as_deref(), &workload)?;
            let bodies = generate_bodies(args.events, args.seed, INGEST_BATCH, Some(end))?;
            (temp, bodies)
        }
    };
    let params = pick_params(&bodies)?;
    println!(
        "parameters: tenant {} ({} events), mid identity {}, request_id {}, most-read path {}, busiest service account {}",
        params.tenant,
        params.tenant_events,
        params.mid_identity,
        params.request_id,
        params.most_read_path,
        params.busiest_sa
    );
    let audit_reads = if args.audit_reads { "true" } else { "false" };
    let server = BenchServer::start_with(
        &temp.path().join("data"),
        &[
            "--audit-of-audit-enabled".to_string(),
            audit_reads.to_string(),
        ],
    )
    .await?;
    let started = Instant::now();
    post_all(&server, Arc::new(bodies), INGEST_CLIENTS).await?;
    let api = TenantApi::new(&server.address, &params);
    wait_searchable(&api, &params).await?;
    println!(
        "loaded over HTTP and searchable in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let settled = Instant::now();
    let idle = server.wait_idle(Duration::from_secs(300)).await;
    println!(
        "server {} after {:.1} s more (background merges)",
        if idle { "idle" } else { "still busy" },
        settled.elapsed().as_secs_f64()
    );
    let mut queries = mix(&params);
    let cursor = walk_to_page(&api, &queries[3].path_and_query).await?;
    match cursor {
        Some(cursor) => queries[7]
            .path_and_query
            .push_str(&format!("&cursor={cursor}")),
        None => println!("q8 skipped: fewer than {CURSOR_PAGE} pages for query 4 at this size"),
    }
    let cursor_found = queries[7].path_and_query.contains("cursor=");
    queries.retain(|query| query.number != 8 || cursor_found);
    let before = RssSplit::of(server.pid).unwrap_or_default();
    server.reset_peak_rss()?;
    let sampler = RssSampler::start(server.pid);
    time_mix(&server.address, &params, &queries, args.runs.max(1)).await?;
    let peaks = sampler.finish();
    print_rss(server.peak_rss_kib(), before, peaks);
    server.stop().await
}

/// Prints the server's peak RSS during the mix and what it was made of.
fn print_rss(peak_kib: u64, before: RssSplit, peaks: RssPeaks) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "server peak RSS during the query mix (VmHWM): {:.0} MiB",
        mib(peak_kib)
    );
    println!(
        "  sampled every 10 ms: largest total {:.0} MiB = anonymous {:.0} + file-backed {:.0} + shmem {:.0}; \
         peak anonymous {:.0} MiB, peak file-backed {:.0} MiB; before the mix: anonymous {:.0}, file-backed {:.0}",
        mib(peaks.at_peak.total()),
        mib(peaks.at_peak.anon),
        mib(peaks.at_peak.file),
        mib(peaks.at_peak.shmem),
        mib(peaks.each.anon),
        mib(peaks.each.file),
        mib(before.anon),
        mib(before.file),
    );
}

/// Chooses the parameters from the generated NDJSON bodies.
fn pick_params(bodies: &[Vec<u8>]) -> anyhow::Result<Params> {
    let mut events = Vec::new();
    for line in bodies.iter().flat_map(|body| body.split(|b| *b == b'\n')) {
        if !line.is_empty() {
            events.push(serde_json::from_slice::<EventFields>(line)?);
        }
    }
    let tenant_counts = count(events.iter().map(|e| Some(e.tenant_id.as_str())));
    let (tenant, tenant_events) = top_one(&tenant_counts).context("no events generated")?;
    let events: Vec<_> = events.iter().filter(|e| e.tenant_id == tenant).collect();
    let mut newest_us = i64::MIN;
    for event in &events {
        let micros = timestamp::parse_rfc3339_micros(&event.timestamp)
            .map_err(|problem| anyhow::anyhow!("generated timestamp: {problem}"))?;
        newest_us = newest_us.max(micros);
    }
    let identities = ranked(&count(events.iter().map(|e| Some(e.identity_id.as_str()))));
    let mid_identity = identities
        .get(identities.len() / 2)
        .map(|(key, _)| key.clone())
        .context("no identities")?;
    let request_ids = count(events.iter().map(|e| e.request_id.as_deref()));
    let reads = events.iter().filter(|e| e.action == "read");
    let paths = count(reads.map(|e| e.secret_path.as_deref()));
    let accounts = events
        .iter()
        .filter(|e| e.identity_type == "service_account");
    let accounts = count(accounts.map(|e| Some(e.identity_id.as_str())));
    Ok(Params {
        tenant,
        tenant_events,
        now_us: newest_us.div_euclid(1_000_000) * 1_000_000 + 1_000_000,
        mid_identity,
        request_id: top_one(&request_ids).context("no request_id")?.0,
        most_read_path: top_one(&paths).context("no read path")?.0,
        busiest_sa: top_one(&accounts).context("no service account")?.0,
    })
}

/// What precedes an event's timestamp in NDJSON as producers and both generators write it.
const TIMESTAMP_MEMBER: &[u8] = b"\"timestamp\":\"";

/// `bodies` with every event's timestamp moved by the same whole number of seconds, so that
/// the newest falls in the second before `end_second` (time windows are relative to the
/// newest event, and the trails' to the server's clock).
fn ending_before(bodies: Vec<Vec<u8>>, end_second: i64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut newest_us = None;
    for line in bodies.iter().flat_map(|body| body.split(|b| *b == b'\n')) {
        if let Some((_, micros)) = timestamp_in(line)? {
            newest_us = newest_us.max(Some(micros));
        }
    }
    let newest_us = newest_us.context("no event of the file has a timestamp")?;
    let shift_us = (end_second - 1 - newest_us.div_euclid(1_000_000)) * 1_000_000;
    bodies
        .into_iter()
        .map(|body| {
            let mut moved = Vec::with_capacity(body.len());
            for line in body.split_inclusive(|b| *b == b'\n') {
                match timestamp_in(line)? {
                    Some((range, micros)) => {
                        moved.extend_from_slice(&line[..range.start]);
                        moved.extend_from_slice(
                            timestamp::format_micros(micros + shift_us).as_bytes(),
                        );
                        moved.extend_from_slice(&line[range.end..]);
                    }
                    None => moved.extend_from_slice(line),
                }
            }
            Ok(moved)
        })
        .collect()
}

/// Where the first `"timestamp":"…"` value of `line` is and the instant it names; `None` for
/// a line without one (the server will refuse it).
fn timestamp_in(line: &[u8]) -> anyhow::Result<Option<(std::ops::Range<usize>, i64)>> {
    let Some(member) = memchr::memmem::find(line, TIMESTAMP_MEMBER) else {
        return Ok(None);
    };
    let start = member + TIMESTAMP_MEMBER.len();
    let Some(length) = memchr::memchr(b'"', &line[start..]) else {
        return Ok(None);
    };
    let range = start..start + length;
    let text = std::str::from_utf8(&line[range.clone()])?;
    let micros = timestamp::parse_rfc3339_micros(text)
        .map_err(|problem| anyhow::anyhow!("timestamp {text:?}: {problem}"))?;
    Ok(Some((range, micros)))
}

/// Occurrences of each present key.
fn count<'a>(keys: impl Iterator<Item = Option<&'a str>>) -> HashMap<&'a str, u64> {
    let mut counts = HashMap::new();
    for key in keys.flatten() {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Keys by count descending, then by key.
fn ranked(counts: &HashMap<&str, u64>) -> Vec<(String, u64)> {
    let mut ranked: Vec<_> = counts.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked
}

fn top_one(counts: &HashMap<&str, u64>) -> Option<(String, u64)> {
    ranked(counts).into_iter().next()
}

/// The 11 queries of WORKLOAD.md, against the largest tenant, newest first.
fn mix(p: &Params) -> Vec<Query> {
    let since = |days: i64| encode(&timestamp::format_micros(p.now_us - days * DAY_US));
    let logs = |filter: String| format!("/v1/audit/logs?limit={LIMIT}{filter}");
    let query = |number, label, path_and_query, must_match| Query {
        number,
        label,
        path_and_query,
        must_match,
    };
    let production = "&path_prefix=environments%2Fproduction%2F".to_string();
    vec![
        query(1, "latest page, no filter", logs(String::new()), true),
        query(
            2,
            "action=read, last 24 h",
            logs(format!("&action=read&from={}", since(1))),
            true,
        ),
        query(
            3,
            "identity_id, mid-popularity",
            logs(format!("&identity_id={}", encode(&p.mid_identity))),
            true,
        ),
        query(
            4,
            "path_prefix=environments/production/",
            logs(production.clone()),
            true,
        ),
        query(
            5,
            "request_id exact",
            logs(format!("&request_id={}", encode(&p.request_id))),
            true,
        ),
        query(
            6,
            "success=false, last 7 days",
            logs(format!("&success=false&from={}", since(7))),
            true,
        ),
        query(
            7,
            "action=write,delete,rotate + path_prefix=integrations/",
            logs("&action=write,delete,rotate&path_prefix=integrations%2F".into()),
            true,
        ),
        query(8, "page 50 of the q4 cursor walk", logs(production), true),
        query(
            9,
            "/summary, last 30 days",
            format!("/v1/audit/summary?from={}", since(30)),
            true,
        ),
        query(
            10,
            "secret trail (most-read path) + 30-day summary",
            format!(
                "/v1/audit/secrets/{}?limit={LIMIT}",
                encode_path(&p.most_read_path)
            ),
            true,
        ),
        query(
            11,
            "identity trail (busiest service account) + 30-day summary",
            format!(
                "/v1/audit/identities/{}?limit={LIMIT}",
                encode(&p.busiest_sa)
            ),
            true,
        ),
    ]
}

/// Query-string encoding of one value.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Percent-encodes each segment of a secret path, keeping its slashes.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// GETs `path_and_query` as the tenant; the body, failing on any status but 200.
async fn get_body(api: &TenantApi, path_and_query: &str) -> anyhow::Result<bytes::Bytes> {
    let response = api
        .client
        .get(format!("{}{path_and_query}", api.address))
        .bearer_auth(BENCH_TOKEN)
        .header("x-tenant-id", &api.tenant)
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != reqwest::StatusCode::OK {
        bail!(
            "GET {path_and_query} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

/// GETs `path_and_query` as the tenant; the parsed body, failing on any status but 200.
async fn get_json(api: &TenantApi, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
    let body = get_body(api, path_and_query).await?;
    serde_json::from_slice(&body).with_context(|| format!("GET {path_and_query}: body is not JSON"))
}

/// One event of a page (SPEC §2), decoded as a client decodes its rows: every member into a
/// typed field, `extra_data` into a JSON tree (as the PostgreSQL harness's psycopg decodes
/// every column of every row, `jsonb` included).
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Decoded to be paid for, not read.
struct Row {
    id: String,
    timestamp: String,
    action: String,
    secret_path: Option<String>,
    identity_type: String,
    identity_id: String,
    source_ip: Option<String>,
    user_agent: Option<String>,
    success: bool,
    duration_ms: Option<u64>,
    request_id: Option<String>,
    extra_data: serde_json::Value,
}

/// The summary of `/v1/audit/summary` or of a trail (SPEC §3.4), decoded the same way.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Summary {
    total_events: u64,
    successful_events: u64,
    failed_events: u64,
    actions_breakdown: HashMap<String, u64>,
    top_identities: Vec<serde_json::Value>,
    top_resources: Vec<serde_json::Value>,
}

/// A page of the mix: `logs`, with a trail's own `summary` (decoded as a JSON tree).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Page {
    logs: Vec<Row>,
    cursor: Option<String>,
    has_more: bool,
    summary: Option<serde_json::Value>,
}

/// Rows an answer returned: a page's `logs` entries, or a summary's `total_events`.
fn decoded_rows(path_and_query: &str, body: &[u8]) -> serde_json::Result<u64> {
    if path_and_query.starts_with("/v1/audit/summary") {
        Ok(serde_json::from_slice::<Summary>(body)?.total_events)
    } else {
        Ok(serde_json::from_slice::<Page>(body)?.logs.len() as u64)
    }
}

/// Runs `query` once and checks that it matched something where the workload guarantees it.
async fn get_rows(api: &TenantApi, query: &Query) -> anyhow::Result<u64> {
    let body = get_body(api, &query.path_and_query).await?;
    let rows = decoded_rows(&query.path_and_query, &body)
        .with_context(|| format!("GET {}: not a page or a summary", query.path_and_query))?;
    if query.must_match && rows == 0 {
        bail!(
            "query {} ({}) returned no rows: GET {}",
            query.number,
            query.label,
            query.path_and_query
        );
    }
    Ok(rows)
}

/// Runs the mix once untimed, then times `runs` runs of each query and prints its line.
///
/// The client runs on a runtime of its own with one thread, so that a request and its answer
/// are handled on the thread that waits for them, as with a blocking client (the PostgreSQL
/// harness's psycopg), rather than handed between the worker threads of the bench's runtime:
/// on two cores each hand-off is a thread wake-up that is no part of the server's answer.
async fn time_mix(
    server_address: &str,
    params: &Params,
    queries: &[Query],
    runs: usize,
) -> anyhow::Result<()> {
    let api = TenantApi::new(server_address, params);
    let queries = queries.to_vec();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            for query in &queries {
                get_rows(&api, query).await?;
            }
            println!(
                "query mix: {runs} timed runs per query after one warm-up, one keep-alive client, limit {LIMIT}"
            );
            for query in &queries {
                time_query(&api, query, runs).await?;
            }
            Ok(())
        })
    })
    .await?
}

/// Times `runs` runs of `query` and prints its line.
async fn time_query(api: &TenantApi, query: &Query, runs: usize) -> anyhow::Result<()> {
    let mut latencies = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let sent = Instant::now();
        rows = get_rows(api, query).await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "q{:<2} {:<58} p50 {:>9.2} ms  p95 {:>9.2} ms  p99 {:>9.2} ms  rows {rows}",
        query.number,
        query.label,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

/// Polls the all-time summary until it counts every event of the tenant.
async fn wait_searchable(api: &TenantApi, params: &Params) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let body = get_json(api, "/v1/audit/summary").await?;
        // Recorded reads (`--audit-reads`) are the tenant's events too; they are not the load.
        let recorded_reads = body
            .pointer("/actions_breakdown/audit_read")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let total = body
            .get("total_events")
            .and_then(serde_json::Value::as_u64)
            .map(|total| total.saturating_sub(recorded_reads));
        if total == Some(params.tenant_events) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {total:?} of {} events searchable after 600 s",
                params.tenant_events
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows query 4's cursors to the start of page 50; `None` if there are fewer pages.
async fn walk_to_page(api: &TenantApi, first_page: &str) -> anyhow::Result<Option<String>> {
    let mut cursor: Option<String> = None;
    for _ in 1..CURSOR_PAGE {
        let path = match &cursor {
            None => first_page.to_string(),
            Some(cursor) => format!("{first_page}&cursor={cursor}"),
        };
        let body = get_json(api, &path).await?;
        let next = body.get("cursor").and_then(serde_json::Value::as_str);
        let has_more = body.get("has_more").and_then(serde_json::Value::as_bool);
        match (next, has_more) {
            (Some(next), Some(true)) => cursor = Some(encode(next)),
            _ => return Ok(None),
        }
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(timestamp: &str) -> String {
        format!(r#"{{"id":"log_1","timestamp":"{timestamp}","action":"read","tenant_id":"tnt_a"}}"#)
    }

    #[test]
    fn events_from_a_file_come_in_batches_and_end_in_the_second_before_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.ndjson");
        let lines = [
            line("2026-10-31T23:59:58.250000Z"),
            line("2026-10-01T00:00:00.000001Z"),
            line("2026-10-31T23:59:59.750000Z"),
        ];
        std::fs::write(&file, format!("{}\n\n{}\n{}", lines[0], lines[1], lines[2])).unwrap();
        let bodies = read_bodies(&file, 2).unwrap();
        assert_eq!(
            bodies,
            vec![
                format!("{}\n{}\n", lines[0], lines[1]).into_bytes(),
                format!("{}\n", lines[2]).into_bytes(),
            ]
        );
        let end = timestamp::parse_rfc3339_micros("2026-12-05T10:00:00Z").unwrap() / 1_000_000;
        let moved = ending_before(bodies, end).unwrap();
        // One shift for all (34 days, 10 hours): the newest lands in 09:59:59, order and gaps
        // are kept, and nothing but the timestamps changes.
        let expected = [
            line("2026-12-05T09:59:58.250000Z"),
            line("2026-11-04T10:00:00.000001Z"),
            line("2026-12-05T09:59:59.750000Z"),
        ];
        assert_eq!(
            moved,
            vec![
                format!("{}\n{}\n", expected[0], expected[1]).into_bytes(),
                format!("{}\n", expected[2]).into_bytes(),
            ]
        );
        assert!(ending_before(vec![b"{\"timestamp\":\"yesterday\"}\n".to_vec()], end).is_err());
        assert!(ending_before(vec![b"{\"id\":\"log_1\"}\n".to_vec()], end).is_err());
        assert!(read_bodies(&dir.path().join("missing"), 2).is_err());
    }
}
