//! `bench export`: exports of the reference workload (one tenant) as JSONL and CSV, with and
//! without gzip, to the file sink and optionally to an S3 endpoint (e.g. the moto emulator),
//! printing events/s and the process's anonymous resident memory while each export runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use scaivault_audit::export::credentials::CredentialSource;
use scaivault_audit::export::engine::{EngineConfig, ExportEngine, ProgressReporter, RetryPolicy};
use scaivault_audit::export::format::{Compression, ExportFormat};
use scaivault_audit::export::job::{
    Checkpoint, DEFAULT_MAX_RECORDS_PER_FILE, Destination, DestinationType, ExportFailure,
    ExportSpec,
};
use scaivault_audit::export::policy::ExportPolicy;
use scaivault_audit::export::sink::endpoint::EndpointPolicy;
use scaivault_audit::store::Store;

/// Flags of `bench export`.
#[derive(Debug, Clone, Args)]
pub struct ExportBenchArgs {
    /// Events in the store (all of one tenant).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also export to this S3 endpoint (e.g. `http://127.0.0.1:5000` for moto).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Bucket on the S3 endpoint (must exist).
    #[arg(long, default_value = "audit")]
    pub s3_bucket: String,
    /// Directory for the data directory and the exported files (default: a temporary one).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const TENANT: &str = "tnt_acme";

pub async fn run(args: ExportBenchArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("scaivault-bench-export-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    println!("machine: {}", super::machine_description());
    let store = load_store(temp.path(), args.events, args.seed).await?;
    let secrets = temp.path().join("secrets");
    std::fs::create_dir_all(temp.path().join("files").join(FILE_BUCKET))?;
    if let Some(endpoint) = &args.s3_endpoint {
        let file = secrets.join("bench/s3.json");
        std::fs::create_dir_all(secrets.join("bench"))?;
        let secret = json!({"data": {"access_key_id": "bench", "secret_access_key": "bench",
                                     "endpoint_url": endpoint}});
        std::fs::write(file, secret.to_string())?;
    }
    let engine = ExportEngine::new(
        store.clone(),
        CredentialSource::Directory(secrets),
        EngineConfig {
            spool_dir: temp.path().join("spool"),
            retry: RetryPolicy::default(),
            // The benchmark writes to a local emulator.
            endpoints: EndpointPolicy::allow_all(),
            policy: ExportPolicy::new(
                Some(temp.path().join("files").canonicalize()?),
                vec!["bench/".to_string()],
            ),
        },
    );
    let mut destinations = vec![file_destination()];
    if args.s3_endpoint.is_some() {
        destinations.push(Destination {
            kind: DestinationType::S3,
            bucket: args.s3_bucket.clone(),
            prefix: String::new(),
            credentials_path: Some("bench/s3".into()),
        });
    }
    let mut run = 0;
    for destination in &destinations {
        for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
            for compression in [Compression::None, Compression::Gzip] {
                run += 1;
                let mut destination = destination.clone();
                destination.prefix = format!("bench-{}/run-{run}/", std::process::id());
                measure(&engine, destination, format, compression, args.events).await?;
            }
        }
    }
    store.shutdown().await;
    Ok(())
}

/// The `file` bucket, a directory under `files/` of the benchmark's directory (the file root).
const FILE_BUCKET: &str = "out";

fn file_destination() -> Destination {
    Destination {
        kind: DestinationType::File,
        bucket: FILE_BUCKET.to_string(),
        prefix: String::new(),
        credentials_path: None,
    }
}

/// Generates and imports the workload into a fresh store.
async fn load_store(dir: &Path, events: u64, seed: u64) -> anyhow::Result<Store> {
    let started = Instant::now();
    let mut generator =
        crate::cli::workload::WorkloadGenerator::new(crate::cli::workload::WorkloadOptions {
            count: events,
            seed,
            tenants: 1,
            ..Default::default()
        });
    let mut ndjson = Vec::with_capacity(events as usize * 420);
    while generator.write_next(&mut ndjson)? {}
    let store = super::open_store(&dir.join("data")).await?;
    let reader: Box<dyn std::io::BufRead + Send> = Box::new(std::io::Cursor::new(ndjson));
    crate::cli::import::import_reader(Some(&store), reader, "benchmark".into(), None, None).await?;
    store.flush().await?;
    // Reopen, so that segment merges of the import do not run during the measurements.
    store.shutdown().await;
    drop(store);
    let store = super::open_store(&dir.join("data")).await?;
    println!(
        "store: {events} events of {TENANT} imported and reopened in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(store)
}

struct NoProgress;

#[async_trait]
impl ProgressReporter for NoProgress {
    async fn checkpoint(&self, _: &Checkpoint) -> Result<(), ExportFailure> {
        Ok(())
    }
}

async fn measure(
    engine: &ExportEngine,
    destination: Destination,
    format: ExportFormat,
    compression: Compression,
    events: u64,
) -> anyhow::Result<()> {
    let spec = ExportSpec {
        tenant_id: TENANT.into(),
        from: "1970-01-01T00:00:00Z".into(),
        to: "2200-01-01T00:00:00Z".into(),
        format,
        compression,
        filters: Default::default(),
        destination: destination.clone(),
        max_records_per_file: DEFAULT_MAX_RECORDS_PER_FILE,
        late: None,
    };
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let checkpoint = engine
        .start_checkpoint()
        .await
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    let id = format!(
        "exp_bench{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let outcome = engine
        .run(
            &id,
            &spec,
            checkpoint,
            &NoProgress,
            &CancellationToken::new(),
        )
        .await
        .map_err(|failure| anyhow::anyhow!("{failure}"))
        .with_context(|| format!("export to {}", destination.kind.as_str()))?;
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    anyhow::ensure!(
        outcome.record_count == events,
        "exported {} of {events} events",
        outcome.record_count
    );
    let bytes: u64 = outcome.files.iter().map(|file| file.size_bytes).sum();
    println!(
        "export {:<5} {:<4} -> {:<4}: {} events in {:.2} s = {:>9.0} events/s, {:.1} MB in {} file(s), anonymous RSS {:.0} -> peak {:.0} MiB",
        format!("{format:?}").to_lowercase(),
        format!("{compression:?}").to_lowercase(),
        destination.kind.as_str(),
        outcome.record_count,
        elapsed.as_secs_f64(),
        outcome.record_count as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6,
        outcome.files.len(),
        rss_before as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
    );
    Ok(())
}

/// Anonymous resident memory of this process in KiB: heap and stacks, without the index's
/// memory-mapped file pages (those are page cache, shared and reclaimable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
