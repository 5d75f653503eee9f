//! `scaivault-audit import FILE|-`: offline bulk load of NDJSON events.
//!
//! Events take the same path as HTTP ingest (validation, the WAL, the index), in large
//! batches, so an import is exactly as durable and deduplicated as live traffic. A reader
//! thread parses and validates while the store writes the previous batch. The first invalid
//! line stops the import with its line number; everything before it is stored (and reported),
//! nothing of the bad batch is. `--dry-run` validates a file without storing anything.
//!
//! In the clustered mode (`[cluster] nats_url`, `--nats-url`) the events are published to the
//! JetStream stream instead, through the same publish path as HTTP ingest
//! ([`scaivault_audit::cluster::JetStreamLog`]): messages of at most [`STREAM_MESSAGE_EVENTS`]
//! events (halved until they fit the servers' `max_payload`), each with the message id of its
//! tenant-scoped event ids, retried with the same ids while the stream answers no quorum
//! ([`StreamPublisher`]); every replica then indexes them. A data directory holding an embedded
//! store is refused in this mode: its events are in no stream, so the trail would be split.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use scaivault_audit::config::{ClusterSettings, Settings, SettingsArgs};
use scaivault_audit::event::{self, TenantRule};
use scaivault_audit::store::log::EventLog;
use scaivault_audit::store::{
    DataDirContents, IngestOutcome, PreparedEvent, Store, StoreMetrics, WriteError,
};

/// Events per write batch.
const BATCH_EVENTS: usize = 10_000;
/// Events per stream message in the clustered mode (a message is halved until it fits the
/// servers' `max_payload`).
pub const STREAM_MESSAGE_EVENTS: usize = 1000;
/// First pause before a publish the stream refused (no quorum) is sent again; doubled up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// A message not acknowledged within this long (retries included) stops the import.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(300);
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
    #[error(
        "data directory {0} holds an embedded store, and [cluster] nats_url sends the import to the JetStream stream: \
         the trail would be split between the two (the cluster's replicas never see the embedded store's events). \
         Import without --nats-url into the embedded store, or move its events into the cluster first \
         (export them, then import the export with --nats-url and --data-dir pointing at an empty directory)"
    )]
    SplitTrail(PathBuf),
    #[error("cannot reach the JetStream stream: {0}")]
    Cluster(#[from] scaivault_audit::cluster::ClusterError),
    #[error("cannot read data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
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
    let stream = match (&settings.cluster, args.dry_run) {
        (Some(cluster), false) => {
            Some(StreamPublisher::connect(cluster, &settings.store.data_dir).await?)
        }
        _ => None,
    };
    let store = if args.dry_run || stream.is_some() {
        None
    } else {
        let store = Store::open(&settings.store, StoreMetrics::unregistered())?;
        store
            .wait_ready(Duration::from_secs(3600))
            .await
            .map_err(ImportError::Start)?;
        Some(store)
    };
    let target = match (&store, &stream) {
        (Some(store), _) => Target::Store(store),
        (None, Some(stream)) => Target::Stream(stream),
        (None, None) => Target::Validate,
    };
    let result = import_into(
        target,
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
    let verb = match (args.dry_run, &stream) {
        (true, _) => "validated",
        (false, Some(_)) => "published to the JetStream stream",
        (false, None) => "imported",
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

/// Publishes an import to the clustered mode's JetStream stream through the ingest path.
pub struct StreamPublisher {
    log: std::sync::Arc<dyn EventLog>,
}

impl StreamPublisher {
    /// Connects to the stream (created if missing, checked if it exists), after refusing a
    /// `data_dir` that holds an embedded store.
    pub async fn connect(
        cluster: &ClusterSettings,
        data_dir: &std::path::Path,
    ) -> Result<Self, ImportError> {
        refuse_split_trail(data_dir)?;
        // Only the append side: the read side (a replica's consumer) is never opened here.
        let (log, _) = scaivault_audit::cluster::connect(cluster).await?;
        Ok(Self::new(log.into_event_log()))
    }

    /// A publisher on `log`.
    pub fn new(log: std::sync::Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    /// Publishes `events` in order as messages of at most [`STREAM_MESSAGE_EVENTS`], each
    /// halved while it is larger than the servers' `max_payload`; returns the events the
    /// stream recognised as already published (whole messages within its duplicate window).
    pub async fn publish(&self, events: Vec<PreparedEvent>) -> Result<usize, WriteError> {
        let mut pending: Vec<Vec<PreparedEvent>> = Vec::new();
        let mut rest = events;
        while rest.len() > STREAM_MESSAGE_EVENTS {
            let tail = rest.split_off(STREAM_MESSAGE_EVENTS);
            pending.push(rest);
            rest = tail;
        }
        pending.push(rest);
        pending.reverse();
        let mut duplicates = 0;
        while let Some(message) = pending.pop() {
            match self.append_retrying(message.clone()).await {
                Ok(outcome) => duplicates += outcome.duplicates,
                Err(WriteError::TooLargeForLog { .. }) if message.len() > 1 => {
                    let mut first = message;
                    let second = first.split_off(first.len() / 2);
                    pending.push(second);
                    pending.push(first);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(duplicates)
    }

    /// One message, sent again with the same ids while the stream has no quorum (503 in the
    /// API), with a doubling pause, for up to [`PUBLISH_DEADLINE`].
    async fn append_retrying(
        &self,
        events: Vec<PreparedEvent>,
    ) -> Result<IngestOutcome, WriteError> {
        // Tokio's clock, which the retry pauses advance (and tests can pause).
        let started = tokio::time::Instant::now();
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            match self.log.append(events.clone()).await {
                Err(WriteError::LogUnavailable(reason)) if started.elapsed() < PUBLISH_DEADLINE => {
                    tracing::warn!(%reason, retry_in_ms = pause.as_millis() as u64, "the stream did not acknowledge; retrying with the same ids");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }
}

/// In the clustered mode a data directory with an embedded store's events is refused.
fn refuse_split_trail(data_dir: &std::path::Path) -> Result<(), ImportError> {
    let contents = scaivault_audit::store::data_dir_contents(data_dir).map_err(|error| {
        ImportError::DataDir {
            path: data_dir.to_path_buf(),
            message: error.to_string(),
        }
    })?;
    match contents {
        DataDirContents::Embedded => Err(ImportError::SplitTrail(data_dir.to_path_buf())),
        DataDirContents::Empty | DataDirContents::Replica => Ok(()),
    }
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
    let target = match store {
        Some(store) => Target::Store(store),
        None => Target::Validate,
    };
    import_into(target, reader, input, default_tenant, progress).await
}

/// Where an import's events go.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Nowhere: validation only (`--dry-run`).
    Validate,
    /// An embedded store.
    Store(&'a Store),
    /// The JetStream stream of the clustered mode.
    Stream(&'a StreamPublisher),
}

impl Target<'_> {
    async fn write(&self, events: Vec<PreparedEvent>) -> Result<usize, WriteError> {
        match self {
            Target::Validate => Ok(0),
            Target::Store(store) => Ok(store.ingest(events).await?.duplicates),
            Target::Stream(stream) => stream.publish(events).await,
        }
    }
}

/// Loads NDJSON from `reader` into `target`.
pub async fn import_into(
    target: Target<'_>,
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
        if !matches!(target, Target::Validate) {
            let duplicates = target
                .write(events)
                .await
                .map_err(|source| ImportError::Store {
                    source,
                    stored: summary.stored,
                })? as u64;
            summary.duplicates += duplicates;
            summary.stored += count - duplicates;
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

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A log that refuses messages above `max_events` as too large and answers "no quorum" to
    /// the first `unavailable` appends; records what it stored.
    struct FakeLog {
        max_events: usize,
        unavailable: Mutex<usize>,
        stored: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl EventLog for FakeLog {
        async fn append(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
            if events.len() > self.max_events {
                return Err(WriteError::TooLargeForLog {
                    size: events.len(),
                    limit: self.max_events,
                });
            }
            let mut unavailable = self.unavailable.lock();
            if *unavailable > 0 {
                *unavailable -= 1;
                return Err(WriteError::LogUnavailable("no quorum".into()));
            }
            let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
            self.stored.lock().push(ids.clone());
            Ok(IngestOutcome { ids, duplicates: 0 })
        }
    }

    fn events(count: usize) -> Vec<PreparedEvent> {
        let mut ids = ulid::Generator::new();
        (0..count)
            .map(|i| {
                let line = format!(
                    r#"{{"id":"evt_{i}","tenant_id":"tnt_a","timestamp":"2026-01-01T00:00:00Z","action":"read","identity_type":"user","identity_id":"user:a","success":true}}"#
                );
                parse_line(line.as_bytes(), TenantRule::Required, &mut ids).unwrap()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn stream_messages_are_split_to_fit_and_retried_in_order() {
        let log = std::sync::Arc::new(FakeLog {
            max_events: 300,
            unavailable: Mutex::new(2),
            stored: Mutex::new(Vec::new()),
        });
        let publisher = StreamPublisher::new(log.clone());
        let input = events(2500);
        let expected: Vec<String> = input.iter().map(|e| e.event.id.clone()).collect();
        assert_eq!(publisher.publish(input).await.unwrap(), 0);
        let stored = log.stored.lock().clone();
        // 1000-event messages, halved twice to 250 to fit; the 500 tail halved once.
        let sizes: Vec<usize> = stored.iter().map(Vec::len).collect();
        assert_eq!(sizes, [250, 250, 250, 250, 250, 250, 250, 250, 250, 250]);
        assert_eq!(stored.concat(), expected, "every event once, in file order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_quorum_stops_the_import_after_the_deadline() {
        let log = std::sync::Arc::new(FakeLog {
            max_events: 1000,
            unavailable: Mutex::new(usize::MAX),
            stored: Mutex::new(Vec::new()),
        });
        let error = StreamPublisher::new(log.clone())
            .publish(events(3))
            .await
            .unwrap_err();
        assert!(matches!(error, WriteError::LogUnavailable(_)), "{error}");
        assert!(log.stored.lock().is_empty());
    }

    #[test]
    fn an_embedded_store_is_refused_in_the_clustered_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refuse_split_trail(&dir.path().join("missing")).is_ok());
        assert!(refuse_split_trail(dir.path()).is_ok());
        let wal = dir.path().join("wal");
        std::fs::create_dir(&wal).unwrap();
        std::fs::write(wal.join("00000001.wal"), b"").unwrap();
        assert!(
            refuse_split_trail(dir.path()).is_ok(),
            "an empty segment holds nothing"
        );
        std::fs::write(wal.join("00000001.wal"), b"record").unwrap();
        assert!(matches!(
            refuse_split_trail(dir.path()),
            Err(ImportError::SplitTrail(_))
        ));
    }
}
