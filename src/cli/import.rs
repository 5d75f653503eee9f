//! `scaivault-audit import FILE|-`: offline bulk load of NDJSON events.
//!
//! Events take the same path as HTTP ingest (validation, the WAL, the index), in large
//! batches, so an import is exactly as durable and deduplicated as live traffic. A reader
//! thread parses and validates while the store writes the previous batch. The first invalid
//! line stops the import with its line number; everything before it is stored (and reported),
//! nothing of the bad batch is. `--dry-run` validates a file without storing anything.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use scaivault_audit::config::{Settings, SettingsArgs};
use scaivault_audit::event::{self, TenantRule};
use scaivault_audit::store::{PreparedEvent, Store, StoreMetrics};

/// Events per write batch.
const BATCH_EVENTS: usize = 10_000;
/// Batches parsed ahead of the store.
const BATCHES_AHEAD: usize = 4;

/// Flags of `scaivault-audit import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// NDJSON file to load, or `-` for standard input.
    pub input: String,
    /// Tenant of events that carry no `tenant_id` (default: every event must name its tenant).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Validate every line without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar (it is drawn on stderr only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("failed to read {input}: {source}")]
    Read {
        input: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {message} ({stored} events before it were stored)")]
    InvalidLine {
        line: u64,
        message: String,
        stored: u64,
    },
    #[error("failed to store a batch: {source} ({stored} events before it were stored)")]
    Store {
        #[source]
        source: scaivault_audit::store::WriteError,
        stored: u64,
    },
    #[error("the store did not start: {0}")]
    Start(String),
}

/// Totals of an import.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImportSummary {
    pub lines: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub elapsed: Duration,
}

impl ImportSummary {
    pub fn events_per_second(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the `import` command.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.settings)?;
    scaivault_audit::telemetry::init_logging(&settings.log_level, settings.log_format)
        .map_err(anyhow::Error::msg)?;
    if let Some(tenant) = &args.tenant_id {
        event::check_tenant_id(tenant)
            .map_err(|message| super::UsageError(format!("--tenant-id {message}")))?;
    }
    let reader: Box<dyn BufRead + Send> = if args.input == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let path = PathBuf::from(&args.input);
        let file = std::fs::File::open(&path).map_err(|source| ImportError::Read {
            input: args.input.clone(),
            source,
        })?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    };
    let progress = (!args.no_progress).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos} events  {per_sec}  {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let store = if args.dry_run {
        None
    } else {
        let store = Store::open(&settings.store, StoreMetrics::unregistered())?;
        store
            .wait_ready(Duration::from_secs(3600))
            .await
            .map_err(ImportError::Start)?;
        Some(store)
    };
    let result = import_reader(
        store.as_ref(),
        reader,
        args.input.clone(),
        args.tenant_id.clone(),
        progress.clone(),
    )
    .await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(store) = &store {
        store
            .flush()
            .await
            .map_err(|source| ImportError::Store { source, stored: 0 })?;
        store.shutdown().await;
    }
    let summary = result?;
    let verb = if args.dry_run {
        "validated"
    } else {
        "imported"
    };
    println!(
        "{verb} {} events ({} stored, {} duplicates) in {:.2} s: {:.0} events/s",
        summary.lines,
        summary.stored,
        summary.duplicates,
        summary.elapsed.as_secs_f64(),
        summary.events_per_second()
    );
    Ok(())
}

type ParsedBatch = Result<(u64, Vec<PreparedEvent>), ImportError>;

/// Loads NDJSON from `reader` into `store` (or only validates, when `store` is `None`).
pub async fn import_reader(
    store: Option<&Store>,
    reader: Box<dyn BufRead + Send>,
    input: String,
    default_tenant: Option<String>,
    progress: Option<ProgressBar>,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let (batches, mut parsed) = mpsc::channel::<ParsedBatch>(BATCHES_AHEAD);
    let parser =
        tokio::task::spawn_blocking(move || parse_batches(reader, input, default_tenant, batches));
    let mut summary = ImportSummary {
        lines: 0,
        stored: 0,
        duplicates: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(batch) = parsed.recv().await {
        let (lines, events) = batch.map_err(|error| with_stored(error, summary.stored))?;
        let count = events.len() as u64;
        if let Some(store) = store {
            let outcome = store
                .ingest(events)
                .await
                .map_err(|source| ImportError::Store {
                    source,
                    stored: summary.stored,
                })?;
            summary.duplicates += outcome.duplicates as u64;
            summary.stored += count - outcome.duplicates as u64;
        }
        summary.lines += lines;
        if let Some(bar) = &progress {
            bar.inc(count);
        }
    }
    // The parser ends by closing the channel; a panic there is a bug worth surfacing.
    if let Err(error) = parser.await {
        return Err(ImportError::Start(format!(
            "the parser thread failed: {error}"
        )));
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn with_stored(error: ImportError, stored: u64) -> ImportError {
    match error {
        ImportError::InvalidLine { line, message, .. } => ImportError::InvalidLine {
            line,
            message,
            stored,
        },
        other => other,
    }
}

/// Reads, validates and prepares batches of events; stops at the first bad line.
fn parse_batches(
    mut reader: Box<dyn BufRead + Send>,
    input: String,
    default_tenant: Option<String>,
    batches: mpsc::Sender<ParsedBatch>,
) {
    let mut ids = ulid::Generator::new();
    let mut line_number = 0u64;
    let mut line = Vec::with_capacity(1024);
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    let mut batch_lines = 0u64;
    let tenant_rule = match &default_tenant {
        Some(tenant) => TenantRule::Bound(tenant),
        None => TenantRule::Required,
    };
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(source) => {
                let _ = batches.blocking_send(Err(ImportError::Read { input, source }));
                return;
            }
        }
        line_number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(&line, tenant_rule, &mut ids) {
            Ok(prepared) => {
                batch.push(prepared);
                batch_lines += 1;
            }
            Err(message) => {
                let _ = batches.blocking_send(Err(ImportError::InvalidLine {
                    line: line_number,
                    message,
                    stored: 0,
                }));
                return;
            }
        }
        if batch.len() == BATCH_EVENTS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
            if batches.blocking_send(Ok((batch_lines, full))).is_err() {
                return;
            }
            batch_lines = 0;
        }
    }
    if !batch.is_empty() {
        let _ = batches.blocking_send(Ok((batch_lines, batch)));
    }
}

fn parse_line(
    line: &[u8],
    tenant_rule: TenantRule<'_>,
    ids: &mut ulid::Generator,
) -> Result<PreparedEvent, String> {
    let value = serde_json::from_slice(line).map_err(|error| format!("malformed JSON: {error}"))?;
    let valid = event::validate(value, tenant_rule).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|(field, problem)| format!("{field} {problem}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let producer_id = valid.id.is_some();
    let mut event = valid.event;
    if !producer_id {
        let ulid = ids.generate().unwrap_or_else(|_| ulid::Ulid::generate());
        event.id = format!("log_{ulid}");
    }
    Ok(PreparedEvent::new(event, producer_id))
}
