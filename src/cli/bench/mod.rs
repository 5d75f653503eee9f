//! `scaivault-audit bench ...`: benchmarks that print their figures.
//!
//! `bench ingest` generates the reference workload itself, then measures
//! 1. HTTP ingest against a real server process (this binary's `serve`), with concurrent
//!    clients posting NDJSON batches and durable acknowledgements; the server's peak RSS;
//! 2. disk bytes per event after a final commit (graceful stop of that server);
//! 3. bulk import of the same events into a fresh data directory.
//!
//! `bench export` measures the export engine (see [`export`]); `bench query` the reference query
//! mix (see [`query`]).
//!
//! Run them from a release build: `cargo run --release -- bench ingest`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::AsyncBufReadExt;

mod cluster;
mod export;
mod nats;
mod query;

use crate::cli::workload::{WorkloadGenerator, WorkloadOptions};
use scaivault_audit::store::{Store, StoreConfig, StoreMetrics};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// HTTP ingest, disk per event, peak RSS and bulk import on the reference workload.
    Ingest(IngestBenchArgs),
    /// Exports (JSONL/CSV, gzip or not) to the file sink and optionally an S3 endpoint.
    Export(export::ExportBenchArgs),
    /// The 11-query reference mix over HTTP: p50/p95/p99 per query and the server's peak RSS.
    Query(query::QueryBenchArgs),
}

/// Flags of `bench ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestBenchArgs {
    /// Events to ingest.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Directory for the benchmark's data directories (default: a new temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Against service replicas in the clustered mode on NATS JetStream (docs/cluster.md):
    /// throughput, time until every replica indexed everything, a run that kills the stream
    /// leader, and a verification that every acknowledged event is indexed exactly once.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: service replicas.
    #[arg(long, default_value_t = 2, requires = "cluster")]
    pub replicas: usize,
    /// With --cluster: the nats-server binary for a three-node cluster of the benchmark's own
    /// (default: $SCAIVAULT_TEST_NATS_SERVER; scripts/cluster.sh install provides it).
    #[arg(long, requires = "cluster", conflicts_with = "nats_url")]
    pub nats_server: Option<PathBuf>,
    /// With --cluster: an existing NATS cluster instead (no leader-kill run then).
    #[arg(long, requires = "cluster")]
    pub nats_url: Option<String>,
    /// With --cluster: skip the leader-kill run.
    #[arg(long, requires = "cluster")]
    pub no_leader_kill: bool,
    /// With --cluster: also run the embedded figure with the same workload and clients.
    #[arg(long, requires = "cluster")]
    pub compare_embedded: bool,
}

/// Runs a benchmark command.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Export(args) => export::run(args).await,
        BenchCommand::Query(args) => query::run(args).await,
    }
}

const BENCH_TOKEN: &str = "skt_benchmark_token_not_secret";

async fn ingest(args: IngestBenchArgs) -> anyhow::Result<()> {
    let temp = start_run(
        args.dir.as_deref(),
        &generated_workload(args.events, args.seed),
    )?;
    if args.cluster {
        return cluster::run(args, temp.path()).await;
    }
    let started = Instant::now();
    let bodies = generate_bodies(args.events, args.seed, args.batch.max(1), None)?;
    let raw_bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "generated {} batches, {:.1} MB of NDJSON ({:.0} bytes/event) in {:.2} s",
        bodies.len(),
        raw_bytes as f64 / 1e6,
        raw_bytes as f64 / args.events as f64,
        started.elapsed().as_secs_f64()
    );
    let http_dir = temp.path().join("http");
    let http = http_ingest(&http_dir, Arc::new(bodies.clone()), args.clients.max(1)).await?;
    println!(
        "http ingest: {} events, batches of {}, {} clients, durable acks: {:.2} s = {:.0} events/s (batch latency p50 {:.1} ms, p99 {:.1} ms)",
        args.events,
        args.batch,
        args.clients,
        http.elapsed.as_secs_f64(),
        args.events as f64 / http.elapsed.as_secs_f64(),
        http.p50_ms,
        http.p99_ms
    );
    println!(
        "server peak RSS during ingest: {:.0} MiB",
        http.peak_rss_kib as f64 / 1024.0
    );
    if let Some(cpu) = http.server_cpu {
        println!(
            "server CPU during ingest: {:.2} s user + {:.2} s system = {:.2} µs/event",
            cpu.user_seconds,
            cpu.system_seconds,
            cpu.total_seconds() * 1e6 / args.events as f64
        );
    }
    report_disk(
        "disk after graceful stop (final commit)",
        &http_dir,
        args.events,
    )?;

    let import_dir = temp.path().join("import");
    let ndjson: Vec<u8> = bodies.concat();
    drop(bodies);
    let import = bulk_import(&import_dir, ndjson).await?;
    println!(
        "bulk import: {} events in {:.2} s = {:.0} events/s",
        import.lines,
        import.elapsed.as_secs_f64(),
        import.events_per_second()
    );
    report_disk("disk after import", &import_dir, args.events)?;
    Ok(())
}

/// NDJSON request bodies of `batch` events each; the workload ends at `end` (default: the
/// workload's fixed end).
fn generate_bodies(
    events: u64,
    seed: u64,
    batch: usize,
    end: Option<jiff::Timestamp>,
) -> std::io::Result<Vec<Vec<u8>>> {
    let defaults = WorkloadOptions::default();
    let mut generator = WorkloadGenerator::new(WorkloadOptions {
        count: events,
        seed,
        end: end.unwrap_or(defaults.end),
        ..defaults
    });
    let mut bodies = Bodies::new(batch);
    while generator.write_next(bodies.open())? {
        bodies.line_written();
    }
    Ok(bodies.finish())
}

/// NDJSON request bodies of up to `batch` events each, filled one line at a time.
struct Bodies {
    batch: usize,
    full: Vec<Vec<u8>>,
    open: Vec<u8>,
    lines_in_open: usize,
}

impl Bodies {
    /// Bytes reserved per event of a body (the reference workload's lines are ~400).
    const LINE_BYTES: usize = 420;

    fn new(batch: usize) -> Bodies {
        Bodies {
            batch,
            full: Vec::new(),
            open: Vec::with_capacity(batch * Self::LINE_BYTES),
            lines_in_open: 0,
        }
    }

    /// The body the next line is written to.
    fn open(&mut self) -> &mut Vec<u8> {
        &mut self.open
    }

    /// Counts the line just written to [`Bodies::open`]; a body of `batch` lines is closed.
    fn line_written(&mut self) {
        self.lines_in_open += 1;
        if self.lines_in_open == self.batch {
            let next = Vec::with_capacity(self.batch * Self::LINE_BYTES);
            self.full.push(std::mem::replace(&mut self.open, next));
            self.lines_in_open = 0;
        }
    }

    /// Every body, the last one possibly short.
    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.lines_in_open > 0 {
            self.full.push(self.open);
        }
        self.full
    }
}

/// The NDJSON events of `file` in request bodies of `batch` lines each (blank lines skipped;
/// the server checks every event as it would any producer's).
fn read_bodies(file: &Path, batch: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let mut bodies = Bodies::new(batch);
    for line in reader.split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let body = bodies.open();
        body.extend_from_slice(&line);
        body.push(b'\n');
        bodies.line_written();
    }
    let bodies = bodies.finish();
    anyhow::ensure!(!bodies.is_empty(), "{} holds no events", file.display());
    Ok(bodies)
}

struct HttpFigures {
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_kib: u64,
    /// The server's CPU time from its start until the last batch was acknowledged.
    server_cpu: Option<CpuTime>,
}

async fn http_ingest(
    data_dir: &Path,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> anyhow::Result<HttpFigures> {
    let server = BenchServer::start(data_dir).await?;
    let started = Instant::now();
    let mut latencies = post_all(&server, bodies, clients).await?;
    let elapsed = started.elapsed();
    let peak_rss_kib = server.peak_rss_kib();
    let server_cpu = CpuTime::of(server.pid);
    server.stop().await?;
    latencies.sort_by(f64::total_cmp);
    Ok(HttpFigures {
        elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        peak_rss_kib,
        server_cpu,
    })
}

/// Posts every body with `clients` concurrent keep-alive clients; the latency of each batch in ms.
async fn post_all(
    server: &BenchServer,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, address, bodies, next) = (
            server.client.clone(),
            server.address.clone(),
            bodies.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            post_batches(client, address, bodies, next).await
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

/// A `serve` process of this binary on a data directory, with a bench token that may read and
/// write every tenant.
struct BenchServer {
    child: tokio::process::Child,
    pid: u32,
    /// `http://host:port`, as the server printed it.
    address: String,
    /// A keep-alive client for it.
    client: reqwest::Client,
    /// Its data directory.
    data_dir: PathBuf,
}

impl BenchServer {
    /// Starts the server on `data_dir` and waits until it is ready.
    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &[]).await
    }

    /// Starts the server on `data_dir` with `extra` serve arguments and waits until it is ready.
    async fn start_with(data_dir: &Path, extra: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let tokens = data_dir.with_extension("tokens.toml");
        std::fs::write(
            &tokens,
            format!(
                "[[tokens]]\nname = \"bench\"\nsha256 = \"{}\"\nidentity_id = \"sa:bench\"\nscopes = [\"audit:write\", \"audit:read\"]\nall_tenants = true\n",
                scaivault_audit::auth::hash_token(BENCH_TOKEN)
            ),
        )?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                // The query mix issues far more than a user's quota of queries per minute.
                "--rate-limit-queries-per-minute",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--tokens-file")
            .arg(&tokens)
            .args(extra)
            // The clustered mode only where `extra` asks for it (--nats-url).
            .env_remove("SCAIVAULT_AUDIT_NATS_URL")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start the server")?;
        let pid = child.id().context("server has no pid")?;
        let stdout = child.stdout.take().context("no server stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(address) = line.strip_prefix("listening on ") {
                    return Ok(address.to_string());
                }
            }
            bail!("the server exited before listening")
        })
        .await
        .context("the server did not start within 60 s")??;
        let client = reqwest::Client::new();
        wait_ready(&client, &address).await?;
        Ok(Self {
            child,
            pid,
            address,
            client,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The server's peak resident set so far (VmHWM), 0 where /proc cannot tell.
    fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid).unwrap_or(0)
    }

    /// Waits until the server has used less than 2 % of a core over each of two consecutive
    /// half-second intervals (merges after a load finished), or `limit` passed; whether it did.
    async fn wait_idle(&self, limit: Duration) -> bool {
        const INTERVAL: Duration = Duration::from_millis(500);
        let deadline = Instant::now() + limit;
        let mut quiet_intervals = 0;
        let mut last = CpuTime::of(self.pid);
        while Instant::now() < deadline {
            tokio::time::sleep(INTERVAL).await;
            let now = CpuTime::of(self.pid);
            let (Some(before), Some(after)) = (last, now) else {
                return false;
            };
            let busy = after.total_seconds() - before.total_seconds();
            quiet_intervals = if busy < 0.02 * INTERVAL.as_secs_f64() {
                quiet_intervals + 1
            } else {
                0
            };
            if quiet_intervals == 2 {
                return true;
            }
            last = now;
        }
        false
    }

    /// Resets the server's peak resident size (VmHWM) to its current size (`clear_refs` 5,
    /// Linux 4.0+), so that the next [`Self::peak_rss_kib`] covers only what follows.
    fn reset_peak_rss(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .map_err(|error| anyhow::anyhow!("cannot reset the server's peak RSS: {error}"))
    }

    /// Stops the server gracefully (SIGTERM, final commit) and checks its exit status.
    async fn stop(mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("failed to signal the server");
        }
        let exit = tokio::time::timeout(Duration::from_secs(300), self.child.wait())
            .await
            .context("server did not stop")??;
        if !exit.success() {
            bail!("server exited with {exit}");
        }
        Ok(())
    }
}

async fn post_batches(
    client: reqwest::Client,
    address: String,
    bodies: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<f64>> {
    let url = format!("{address}/v1/audit/events");
    let mut latencies = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(index) else {
            return Ok(latencies);
        };
        let sent = Instant::now();
        let response = client
            .post(&url)
            .bearer_auth(BENCH_TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "batch {index} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
}

async fn wait_ready(client: &reqwest::Client, address: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let response = client
            .get(format!("{address}/v1/health/ready"))
            .send()
            .await;
        if response.is_ok_and(|response| response.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not become ready")
}

async fn bulk_import(
    data_dir: &Path,
    ndjson: Vec<u8>,
) -> anyhow::Result<crate::cli::import::ImportSummary> {
    let store = open_store(data_dir).await?;
    let reader: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(ndjson));
    let mut summary =
        crate::cli::import::import_reader(Some(&store), reader, "benchmark".into(), None, None)
            .await?;
    store.flush().await?;
    store.shutdown().await;
    summary.elapsed = summary.elapsed.max(Duration::from_nanos(1));
    Ok(summary)
}

/// A store on `data_dir` (no metrics), once it has replayed its WAL.
async fn open_store(data_dir: &Path) -> anyhow::Result<Store> {
    let store = Store::open(
        &StoreConfig::with_data_dir(data_dir),
        StoreMetrics::unregistered(),
    )?;
    store
        .wait_ready(Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(store)
}

fn report_disk(label: &str, dir: &Path, events: u64) -> anyhow::Result<()> {
    let index = dir_bytes(&dir.join("index"))?;
    let wal = dir_bytes(&dir.join("wal"))?;
    println!(
        "{label}: {:.1} MB = {:.1} bytes/event (index {:.1}, wal {:.1})",
        (index + wal) as f64 / 1e6,
        (index + wal) as f64 / events as f64,
        index as f64 / events as f64,
        wal as f64 / events as f64
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// CPU time a process has used so far (`/proc/PID/stat`). Less noisy than throughput on a
/// shared machine when two builds are compared.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    user_seconds: f64,
    system_seconds: f64,
}

impl CpuTime {
    fn of(pid: u32) -> Option<CpuTime> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_cpu_time(&stat, USER_HZ)
    }

    fn total_seconds(self) -> f64 {
        self.user_seconds + self.system_seconds
    }
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted after its closing one.
fn parse_cpu_time(stat: &str, ticks_per_second: f64) -> Option<CpuTime> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user_seconds: user / ticks_per_second,
        system_seconds: system / ticks_per_second,
    })
}

/// The unit of `/proc/PID/stat`'s times: Linux's `USER_HZ` (`sysconf(_SC_CLK_TCK)`), 100 on
/// every architecture the service is built for.
const USER_HZ: f64 = 100.0;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmHWM:")
}

/// The KiB figure of line `key` (e.g. `RssAnon:`) of a `/proc/PID/status` text.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's resident memory split by kind (`/proc/PID/status`), KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RssSplit {
    /// Heap, stacks and other private anonymous pages.
    anon: u64,
    /// Pages of mapped files: the index's memory-mapped segment files, the binary.
    file: u64,
    /// Shared memory.
    shmem: u64,
}

impl RssSplit {
    /// The current split of process `pid`.
    fn of(pid: u32) -> Option<RssSplit> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(RssSplit {
            anon: status_kib(&status, "RssAnon:")?,
            file: status_kib(&status, "RssFile:")?,
            shmem: status_kib(&status, "RssShmem:")?,
        })
    }

    fn total(self) -> u64 {
        self.anon + self.file + self.shmem
    }

    /// Each kind's maximum of `self` and `other`.
    fn max(self, other: RssSplit) -> RssSplit {
        RssSplit {
            anon: self.anon.max(other.anon),
            file: self.file.max(other.file),
            shmem: self.shmem.max(other.shmem),
        }
    }
}

/// Samples a process's [`RssSplit`] every 10 ms on a thread until [`RssSampler::finish`]:
/// `VmHWM` only keeps the peak of the total, not what it was made of.
struct RssSampler {
    running: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<RssPeaks>,
}

/// What an [`RssSampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
struct RssPeaks {
    /// Each kind's own maximum (not necessarily at the same moment).
    each: RssSplit,
    /// The sample with the largest total.
    at_peak: RssSplit,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = running.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = RssPeaks::default();
            while flag.load(Ordering::Relaxed) {
                if let Some(split) = RssSplit::of(pid) {
                    peaks.each = peaks.each.max(split);
                    if split.total() > peaks.at_peak.total() {
                        peaks.at_peak = split;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peaks
        });
        RssSampler { running, thread }
    }

    fn finish(self) -> RssPeaks {
        self.running.store(false, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The temporary directory of one benchmark run (under `dir`, else the system's), after printing
/// the machine and `workload` (what the run loads).
fn start_run(dir: Option<&Path>, workload: &str) -> anyhow::Result<tempfile::TempDir> {
    let temp = tempfile::Builder::new()
        .prefix("scaivault-bench-")
        .tempdir_in(
            dir.map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir),
        )?;
    println!("machine: {}", machine_description());
    println!("workload: {workload}");
    Ok(temp)
}

/// The `workload` line of [`start_run`] for generated events.
fn generated_workload(events: u64, seed: u64) -> String {
    format!("{events} events, seed {seed}, reference shape (docs/workload.md)")
}

/// The `p` quantile (0..=1) of ascending `sorted` values (nearest rank, rounded down); 0 if empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0.0)
}

fn machine_description() -> String {
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({model}), {memory_gib:.0} GiB RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_come_in_bodies_of_the_batch_size() {
        let bodies = generate_bodies(2_500, 7, 1_000, None).unwrap();
        let lines: Vec<usize> = bodies
            .iter()
            .map(|body| body.iter().filter(|byte| **byte == b'\n').count())
            .collect();
        assert_eq!(lines, [1_000, 1_000, 500]);
        assert!(bodies.iter().all(|body| body.ends_with(b"\n")));
    }

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (scaivault (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0";
        let cpu = parse_cpu_time(stat, 100.0).expect("parsed");
        assert_eq!(cpu.user_seconds, 2.5);
        assert_eq!(cpu.system_seconds, 0.75);
        assert!(parse_cpu_time("4242 (truncated", 100.0).is_none());
    }
}
