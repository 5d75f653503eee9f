//! The durable audit store: a write-ahead log in front of a Tantivy index.
//!
//! ```text
//! data/
//!   LOCK          held (flock) by the one process using this directory
//!   wal/          write-ahead log segments (see `wal`)
//!   index/        the Tantivy index; each commit's payload records the WAL position it covers,
//!                 each document its link of the tenant's hash chain (see `chain`)
//!   index.*/      an index rebuild for a newer storage format, and its swap (see `migrate`)
//!   quarantine/   damaged WAL bytes and undecodable events, moved aside at start (never read)
//!   snapshots/    staging of index snapshots being uploaded (see `crate::snapshot`)
//!   RESTORING     present while a snapshot restore places files: the store refuses to open
//! ```
//!
//! Data flows one way: ingest → WAL (durable, acknowledged) → index (searchable within the
//! commit interval) → searchers. On start, the WAL after the last commit is replayed; what
//! fails its checks is copied to `quarantine/` (error log, `wal_quarantined` metrics) and the
//! store serves everything else.

pub mod bloom;
pub mod chain;
pub mod dedup;
pub mod documents;
pub mod log;
pub mod lookup;
pub mod merge_order;
pub mod metrics;
pub mod migrate;
pub mod retention;
pub mod scan;
pub mod schema;
pub mod search;
pub mod source;
pub mod timeline;
pub mod verify;
pub mod wal;
pub mod writer;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{Index, IndexReader, IndexSettings, ReloadPolicy};
use tokio::sync::{mpsc, oneshot};

pub use crate::config::{CommitPolicy, StoreConfig};
pub use metrics::{CommitTrigger, StoreMetrics};
pub use schema::Fields;
pub use writer::{IngestOutcome, PreparedEvent, WriteError};

use crate::integrity::chain::ChainLink;
use crate::query::partials::PartialCache;
use crate::query::{LogFilters, QueryError};
use dedup::Deduplicator;
use log::{ConsumeStage, EventLog, LocalLog, LogSource, Replicated};
use merge_order::ArrivalOrderMergePolicy;
use scan::ScanDirectory;
use timeline::Timelines;
use wal::Wal;
use writer::{CommitPayload, IndexStage, Request, SharedState};

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another scaivault-audit process")]
    Locked(PathBuf),
    #[error("failed to open the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error(
        "the index was written by a newer scaivault-audit (storage format {found}; this version reads up to {supported})"
    )]
    NewerVersion { found: u32, supported: u32 },
    #[error("index commit payload is unreadable: {0}")]
    Payload(#[source] serde_json::Error),
    #[error(transparent)]
    Anchors(#[from] retention::AnchorError),
    #[error(
        "a snapshot restore into {0} did not finish; run `scaivault-audit snapshot restore` again (the directory is not opened half-restored)"
    )]
    RestoreUnfinished(PathBuf),
    #[error("{0}")]
    Mode(String),
}

/// Health of the store, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// Index open and WAL replayed.
    pub ready: bool,
    pub index_ok: bool,
    pub wal_ok: bool,
    pub startup_error: Option<String>,
    /// Clustered mode: log records not yet committed here (as last measured).
    pub log_lag: Option<u64>,
    /// Clustered mode: the lag exceeds its limit; the replica is not ready.
    pub lagging: bool,
    /// Clustered mode: records this replica never indexed are gone from the log; not ready.
    pub log_gap: bool,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    reader: IndexReader,
    fields: Fields,
    /// Kept alive here, like `partials`: the reader holds its warmers only weakly.
    timelines: Arc<Timelines>,
    /// Kept alive here: the reader holds its warmer only weakly.
    partials: Arc<PartialCache>,
    requests: mpsc::Sender<Request>,
    /// Where ingest requests become durable: the local WAL or the replicated log.
    log: Arc<dyn EventLog>,
    clustered: bool,
    shared: Arc<SharedState>,
    startup_error: Mutex<Option<String>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    _lock: File,
}

impl Store {
    /// Opens the store. The WAL replay runs in the background: [`Store::health`] reports
    /// `ready` once it is done; until then writes answer [`WriteError::NotReady`].
    pub fn open(config: &StoreConfig, metrics: StoreMetrics) -> Result<Store, StoreError> {
        Self::open_with(config, metrics, None)
    }

    /// Opens the store of one replica in the clustered mode: ingest goes to `replicated.log`,
    /// the index follows `replicated.source` from the position its last commit recorded. Must
    /// be called within a Tokio runtime (the log is read on it).
    pub fn open_replicated(
        config: &StoreConfig,
        metrics: StoreMetrics,
        replicated: Replicated,
    ) -> Result<Store, StoreError> {
        Self::open_with(config, metrics, Some(replicated))
    }

    fn open_with(
        config: &StoreConfig,
        metrics: StoreMetrics,
        replicated: Option<Replicated>,
    ) -> Result<Store, StoreError> {
        let data_dir = &config.data_dir;
        create_dir(data_dir)?;
        let lock = lock_data_dir(data_dir)?;
        let marker = crate::snapshot::restore::marker_path(data_dir);
        let restoring = marker.try_exists().map_err(|source| StoreError::Io {
            action: "check",
            path: marker,
            source,
        })?;
        if restoring {
            return Err(StoreError::RestoreUnfinished(data_dir.clone()));
        }
        let (index, fields) = open_or_create_index(data_dir, config.index_memory_bytes)?;
        let payload = CommitPayload::parse(index.load_metas()?.payload.as_deref())
            .map_err(StoreError::Payload)?;
        check_mode(&payload, replicated.is_some(), data_dir)?;
        // The summary partials are built as the query reader first sees each segment, from
        // scans that leave no pages mapped.
        let scan = ScanDirectory::open(&index_dir(data_dir))?;
        let partials = Arc::new(PartialCache::new(fields.tenant, scan.clone()));
        // So are the searches' block time bounds.
        let timelines = Arc::new(Timelines::scanning(scan.clone()));
        let partials_warmer: Weak<dyn tantivy::Warmer> = Arc::downgrade(&partials) as _;
        let timelines_warmer: Weak<dyn tantivy::Warmer> = Arc::downgrade(&timelines) as _;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .warmers(vec![partials_warmer, timelines_warmer])
            .try_into()?;
        // The deduplication reads through the query reader: a second reader would keep the
        // segments merges replaced open (and their pages mapped) until its own next reload.
        let dedup_reader = reader.clone();
        let index_writer: tantivy::IndexWriter = index
            .writer_with_num_threads(config.index_threads.max(1), config.index_memory_bytes)?;
        index_writer.set_merge_policy(Box::new(ArrivalOrderMergePolicy::new(index.clone())));
        metrics
            .index_documents
            .set(reader.searcher().num_docs() as i64);

        let shared = Arc::new(SharedState::default());
        shared
            .committed_seq
            .store(payload.next_seq, Ordering::SeqCst);
        shared.index_ok.store(true, Ordering::SeqCst);
        shared.wal_ok.store(true, Ordering::SeqCst);
        let (requests, request_rx) = mpsc::channel(config.request_queue.max(1));
        let (log, follow): (Arc<dyn EventLog>, _) = match replicated {
            Some(replicated) => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|error| {
                    StoreError::Mode(format!(
                        "the clustered store needs a Tokio runtime: {error}"
                    ))
                })?;
                let follow = Follow {
                    source: replicated.source,
                    max_lag: replicated.max_lag,
                    runtime,
                };
                (replicated.log, Some(follow))
            }
            None => (
                Arc::new(LocalLog {
                    requests: requests.clone(),
                }),
                None,
            ),
        };
        let inner = Arc::new(StoreInner {
            reader: reader.clone(),
            fields,
            timelines,
            partials,
            requests,
            log,
            clustered: follow.is_some(),
            shared: shared.clone(),
            startup_error: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            _lock: lock,
        });
        let mut index_stage = IndexStage::new(
            index_writer,
            reader,
            fields,
            config.commit,
            shared,
            metrics,
            payload.next_seq,
        );
        let anchors_path = retention::RetentionAnchors::path_in(&data_dir.join("integrity"));
        let anchors = retention::RetentionAnchors::load(&anchors_path)?;
        index_stage.keep_anchors(anchors_path, anchors);
        if follow.is_some() {
            index_stage.resume_position(payload.log_position.unwrap_or(0));
        }
        let startup = Startup {
            wal_dir: data_dir.join("wal"),
            quarantine_dir: data_dir.join("quarantine"),
            wal_segment_bytes: config.wal_segment_bytes,
            committed_seq: payload.next_seq,
            index_stage,
            dedup_reader,
            scan,
            request_rx,
            index_queue: 64,
            follow,
        };
        let background = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("store-startup".into())
            .spawn(move || startup.run(background))
            .map_err(|source| StoreError::Io {
                action: "spawn the store thread",
                path: data_dir.clone(),
                source,
            })?;
        Ok(Store { inner })
    }

    /// Stores a batch durably; returns once it is on disk (or why it is not).
    pub async fn ingest(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
        if !self.inner.shared.ready.load(Ordering::SeqCst) {
            return Err(WriteError::NotReady);
        }
        self.inner.log.append(events).await
    }

    /// Whether this store is one replica of the clustered mode.
    pub fn is_clustered(&self) -> bool {
        self.inner.clustered
    }

    /// Deletes `expiry`'s events through the single writer, after everything acknowledged
    /// before it is committed; returns how many were deleted (see [`retention`]).
    pub async fn expire(&self, expiry: retention::Expiry) -> Result<u64, WriteError> {
        if !self.inner.shared.ready.load(Ordering::SeqCst) {
            return Err(WriteError::NotReady);
        }
        let (reply, response) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Expire { expiry, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        response.await.map_err(|_| WriteError::Closed)?
    }

    /// Commits everything acknowledged so far and makes it searchable.
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (reply, response) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Flush { reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        response.await.map_err(|_| WriteError::Closed)?
    }

    /// Final commit and stop of the writer threads. Later writes answer [`WriteError::Closed`].
    pub async fn shutdown(&self) {
        let (reply, response) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = response.await;
        }
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Waits until the WAL replay is done, or fails with the startup error.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let health = self.health();
            if health.ready {
                return Ok(());
            }
            if let Some(error) = health.startup_error {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err("timed out waiting for the WAL replay".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A point-in-time view of the committed index.
    pub fn searcher(&self) -> tantivy::Searcher {
        self.inner.reader.searcher()
    }

    /// Every tenant's chain head as of the last commit (what the searcher shows).
    pub fn committed_heads(&self) -> HashMap<String, ChainLink> {
        self.inner.shared.committed_heads.read().clone()
    }

    /// The time bounds of the index's blocks, for searches.
    pub fn timelines(&self) -> &Timelines {
        &self.inner.timelines
    }

    pub fn fields(&self) -> &Fields {
        &self.inner.fields
    }

    /// The per-segment summary partials of the searchers' segments.
    pub fn partials(&self) -> &Arc<PartialCache> {
        &self.inner.partials
    }

    /// The Tantivy query for `tenant` and `filters` over `searcher`, every filter included
    /// (see [`crate::query::build_query`]); the tenant answered from the partials' maps.
    pub fn query(
        &self,
        searcher: &tantivy::Searcher,
        tenant: &str,
        filters: &LogFilters,
    ) -> Result<Box<dyn tantivy::query::Query>, QueryError> {
        crate::query::build_query(
            searcher.index(),
            self.fields(),
            tenant,
            filters,
            Some(self.partials()),
        )
    }

    /// The search plan of a page for `tenant` and `filters` over `searcher` (see
    /// [`crate::query::build_search`]); the tenant answered from the partials' maps.
    pub fn search_plan(
        &self,
        searcher: &tantivy::Searcher,
        tenant: &str,
        filters: &LogFilters,
    ) -> Result<search::SearchPlan, QueryError> {
        crate::query::build_search(
            searcher.index(),
            self.fields(),
            tenant,
            filters,
            Some(self.partials()),
        )
    }

    /// Sequence number below which every event is committed (a consistent snapshot bound).
    pub fn committed_seq(&self) -> u64 {
        self.inner.shared.committed_seq.load(Ordering::SeqCst)
    }

    pub fn health(&self) -> StoreHealth {
        let shared = &self.inner.shared;
        StoreHealth {
            ready: shared.ready.load(Ordering::SeqCst),
            index_ok: shared.index_ok.load(Ordering::SeqCst),
            wal_ok: shared.wal_ok.load(Ordering::SeqCst),
            startup_error: self.inner.startup_error.lock().clone(),
            log_lag: self
                .inner
                .clustered
                .then(|| shared.log_lag.load(Ordering::SeqCst)),
            lagging: shared.lagging.load(Ordering::SeqCst),
            log_gap: shared.log_gap.load(Ordering::SeqCst),
        }
    }
}

/// The background start: replay the WAL into the index, then run the writer stages.
struct Startup {
    wal_dir: PathBuf,
    quarantine_dir: PathBuf,
    wal_segment_bytes: u64,
    committed_seq: u64,
    index_stage: IndexStage,
    dedup_reader: IndexReader,
    /// Where the deduplication's filter reads the stored ids through.
    scan: ScanDirectory,
    request_rx: mpsc::Receiver<Request>,
    index_queue: usize,
    /// Clustered mode: the log this replica follows instead of replaying a WAL.
    follow: Option<Follow>,
}

/// What a replica follows: its cursor on the replicated log.
struct Follow {
    source: Box<dyn LogSource>,
    max_lag: u64,
    runtime: tokio::runtime::Handle,
}

impl Startup {
    fn run(self, store: std::sync::Weak<StoreInner>) {
        let shared = self.index_stage.shared.clone();
        let replaying = self.index_stage.metrics.replay_in_progress.clone();
        replaying.set(1);
        let started = if self.follow.is_some() {
            self.follow_log()
        } else {
            self.replay_and_spawn()
        };
        replaying.set(0);
        match started {
            Ok(threads) => {
                if let Some(store) = store.upgrade() {
                    store.threads.lock().extend(threads);
                }
                shared.ready.store(true, Ordering::SeqCst);
            }
            Err(error) => {
                tracing::error!(%error, "store failed to start");
                if let Some(store) = store.upgrade() {
                    *store.startup_error.lock() = Some(error);
                }
            }
        }
    }

    /// Clustered mode: resume the chains from the committed index, then follow the log.
    fn follow_log(mut self) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
        let Some(follow) = self.follow.take() else {
            return Err("no log to follow".into());
        };
        let stage = &mut self.index_stage;
        let mut heads = chain::recover_heads(&stage.query_reader.searcher(), &stage.fields)
            .map_err(|e| format!("failed to read the chain heads: {e}"))?;
        stage.anchors().raise_heads(&mut heads);
        stage.resume_chains(heads);
        let next_seq = stage.next_seq;
        let shared = stage.shared.clone();
        let position = shared.committed_position.load(Ordering::SeqCst);
        let dedup = Deduplicator::load(self.dedup_reader, self.index_stage.fields, self.scan)
            .map_err(|e| e.to_string())?;
        let (index_tx, index_thread) =
            writer::spawn_index_stage(self.index_stage, self.index_queue)
                .map_err(|e| format!("failed to spawn the index thread: {e}"))?;
        let stage = ConsumeStage::new(
            follow.source,
            dedup,
            shared,
            index_tx,
            next_seq,
            follow.max_lag,
        );
        let requests = self.request_rx;
        let runtime = follow.runtime;
        let consume_thread = std::thread::Builder::new()
            .name("store-log".into())
            .spawn(move || stage.run(requests, runtime))
            .map_err(|e| format!("failed to spawn the log thread: {e}"))?;
        tracing::info!(position, next_seq, "following the replicated log");
        Ok(vec![consume_thread, index_thread])
    }

    fn replay_and_spawn(mut self) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
        let started = Instant::now();
        let (wal, report) = Wal::open(
            &self.wal_dir,
            &self.quarantine_dir,
            self.wal_segment_bytes,
            self.committed_seq,
        )
        .map_err(|e| e.to_string())?;
        let mut quarantined = report.quarantined.clone();
        let mut replayed = 0u64;
        let mut undecodable = Vec::new();
        let stage = &mut self.index_stage;
        let mut heads = chain::recover_heads(&stage.query_reader.searcher(), &stage.fields)
            .map_err(|e| format!("failed to read the chain heads: {e}"))?;
        // A tenant whose every event expired continues after its newest deleted one.
        stage.anchors().raise_heads(&mut heads);
        stage.resume_chains(heads);
        quarantined.extend(
            wal.replay_from(
                self.committed_seq,
                |seq, source| match serde_json::from_slice(source) {
                    Ok(event) => {
                        replayed += 1;
                        stage.add(seq, event, source.to_vec(), Some(CommitTrigger::Replay));
                    }
                    Err(error) => {
                        tracing::error!(%error, seq, "a WAL event does not decode; moving it to quarantine");
                        undecodable.push((seq, source.to_vec()));
                    }
                },
            )
            .map_err(|e| e.to_string())?,
        );
        for (seq, source) in &undecodable {
            let name = format!("event-{seq:020}.json");
            let copy = wal::quarantine_bytes(wal.quarantine_dir(), &name, source)
                .map_err(|e| e.to_string())?;
            tracing::error!(seq, quarantined_to = %copy.path.display(), "undecodable WAL event quarantined; it is not served");
            quarantined.push(copy);
        }
        // Sequence numbers continue after the WAL even if its last events were undecodable.
        stage.next_seq = stage.next_seq.max(wal.next_seq());
        stage
            .commit(CommitTrigger::Replay)
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        stage
            .metrics
            .replay_duration_seconds
            .set(elapsed.as_secs_f64());
        stage.metrics.replayed_events.inc_by(replayed);
        stage.metrics.wal_bytes.set(wal.disk_bytes() as i64);
        stage
            .metrics
            .wal_quarantined
            .inc_by(quarantined.len() as u64);
        let quarantined_bytes: u64 = quarantined.iter().map(|copy| copy.bytes).sum();
        stage
            .metrics
            .wal_quarantined_bytes
            .inc_by(quarantined_bytes);
        if !quarantined.is_empty() {
            tracing::error!(
                pieces = quarantined.len(),
                bytes = quarantined_bytes,
                dir = %self.quarantine_dir.display(),
                "damaged write-ahead log data was moved to quarantine; serving everything else"
            );
        }
        tracing::info!(
            replayed,
            undecodable = undecodable.len(),
            quarantined = quarantined.len(),
            tail_bytes_cut = report.tail_bytes_cut,
            elapsed_ms = elapsed.as_millis() as u64,
            "write-ahead log replayed"
        );
        let dedup = Deduplicator::load(self.dedup_reader, self.index_stage.fields, self.scan)
            .map_err(|e| e.to_string())?;
        let (wal_thread, index_thread) = writer::spawn_stages(
            wal,
            dedup,
            self.index_stage,
            self.request_rx,
            self.index_queue,
        )
        .map_err(|e| format!("failed to spawn writer threads: {e}"))?;
        Ok(vec![wal_thread, index_thread])
    }
}

/// What a data directory holds, as far as the modes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirContents {
    /// No events (missing, empty, or a store that never stored any).
    Empty,
    /// An embedded store's events (committed, or still only in its WAL).
    Embedded,
    /// A cluster replica's index.
    Replica,
}

/// Reads what `data_dir` holds without opening, locking or changing a store (the `import`
/// command uses it to refuse a combination that would split the trail).
pub fn data_dir_contents(data_dir: &Path) -> Result<DataDirContents, StoreError> {
    let index_dir = index_dir(data_dir);
    let meta = index_dir.join("meta.json");
    let indexed = meta.try_exists().map_err(|source| StoreError::Io {
        action: "check",
        path: meta,
        source,
    })?;
    if indexed {
        let index = tantivy::Index::open_in_dir(&index_dir)?;
        let payload = CommitPayload::parse(index.load_metas()?.payload.as_deref())
            .map_err(StoreError::Payload)?;
        if payload.log_position.is_some() {
            return Ok(DataDirContents::Replica);
        }
        if payload.next_seq > 0 {
            return Ok(DataDirContents::Embedded);
        }
    }
    let wal_dir = data_dir.join("wal");
    let entries = match fs::read_dir(&wal_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DataDirContents::Empty);
        }
        Err(source) => {
            return Err(StoreError::Io {
                action: "read",
                path: wal_dir,
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry
            .metadata()
            .is_ok_and(|meta| meta.is_file() && meta.len() > 0)
        {
            return Ok(DataDirContents::Embedded);
        }
    }
    Ok(DataDirContents::Empty)
}

/// A data directory belongs to one mode: an embedded store's events are in no replicated log
/// (other replicas would never see them), and a replica's index follows a log position that
/// a WAL knows nothing of.
fn check_mode(payload: &CommitPayload, clustered: bool, data_dir: &Path) -> Result<(), StoreError> {
    let dir = data_dir.display();
    match (clustered, payload.log_position) {
        (true, None) if payload.next_seq > 0 => Err(StoreError::Mode(format!(
            "data directory {dir} holds an embedded store; a cluster replica needs an empty data directory (or one a replica wrote)"
        ))),
        (false, Some(_)) => Err(StoreError::Mode(format!(
            "data directory {dir} was written by a cluster replica; start it with [cluster] nats_url, or use an empty data directory"
        ))),
        _ => Ok(()),
    }
}

/// The index's directory in `data_dir`.
fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(path).map_err(|source| StoreError::Io {
        action: "create",
        path: path.to_path_buf(),
        source,
    })
}

fn lock_data_dir(data_dir: &Path) -> Result<File, StoreError> {
    let path = data_dir.join("LOCK");
    let file = File::create(&path).map_err(|source| StoreError::Io {
        action: "create",
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

/// Index settings: a zstd-compressed document store, because audit events are very repetitive
/// and disk per event is one of the product's goals.
///
/// Blocks of [`DOCSTORE_BLOCK_BYTES`]: a merge copies a segment's compressed blocks unchanged
/// only once the segment holds six of them, and compresses smaller segments' documents again.
/// Small blocks reach that sooner, so fresh events are compressed about once instead of at
/// every early merge, and a document read decompresses a quarter as much (see
/// docs/benchmarks.md, "Document store blocks").
fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(6),
        }),
        docstore_blocksize: DOCSTORE_BLOCK_BYTES,
        ..IndexSettings::default()
    }
}

/// Uncompressed size of a document-store block.
const DOCSTORE_BLOCK_BYTES: usize = 64 * 1024;

/// Makes an opened index write its new segments in [`DOCSTORE_BLOCK_BYTES`] blocks. A
/// segment's blocks are read whatever their size, so older segments stay as they are (merges
/// carry them over) and need no rebuild; any other settings change bumps
/// [`schema::SCHEMA_VERSION`] instead.
fn adopt_current_block_size(index: &mut Index) {
    let settings = index.settings_mut();
    if settings.docstore_blocksize != DOCSTORE_BLOCK_BYTES {
        tracing::info!(
            from = settings.docstore_blocksize,
            to = DOCSTORE_BLOCK_BYTES,
            "new segments use the current document-store block size"
        );
        settings.docstore_blocksize = DOCSTORE_BLOCK_BYTES;
    }
}

/// Opens the index of `data_dir`, creating it if new and rebuilding it (see [`migrate`]) if
/// an older version wrote it.
fn open_or_create_index(
    data_dir: &Path,
    memory_bytes: usize,
) -> Result<(Index, Fields), StoreError> {
    migrate::recover(data_dir)?;
    let index_dir = index_dir(data_dir);
    create_dir(&index_dir)?;
    let (schema, fields) = schema::build_schema();
    let meta = index_dir.join("meta.json");
    let exists = meta.try_exists().map_err(|source| StoreError::Io {
        action: "check",
        path: meta.clone(),
        source,
    })?;
    if !exists {
        let index = Index::builder()
            .schema(schema)
            .settings(index_settings())
            .create_in_dir(&index_dir)?;
        return Ok((index, fields));
    }
    let mut index = Index::open_in_dir(&index_dir)?;
    let payload = CommitPayload::parse(index.load_metas()?.payload.as_deref())
        .map_err(StoreError::Payload)?;
    if !migrate::needs_rebuild(&index, &payload)? {
        adopt_current_block_size(&mut index);
        return Ok((index, fields));
    }
    migrate::rebuild(data_dir, &index, &payload, index_settings(), memory_bytes)?;
    drop(index);
    Ok((Index::open_in_dir(&index_dir)?, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, AuditEvent, IdentityType};

    fn event(id: &str, timestamp_us: i64) -> PreparedEvent {
        let event = AuditEvent {
            id: id.to_string(),
            tenant_id: "tnt_a".into(),
            timestamp_us,
            action: Action::Read,
            secret_path: Some("a/b".into()),
            identity_type: IdentityType::User,
            identity_id: "user:a".into(),
            source_ip: None,
            user_agent: None,
            success: true,
            duration_ms: None,
            request_id: None,
            extra_data: Default::default(),
        };
        PreparedEvent::new(event, true)
    }

    pub(super) fn committed_payload(data_dir: &Path) -> CommitPayload {
        let index = Index::open_in_dir(data_dir.join("index")).unwrap();
        CommitPayload::parse(index.load_metas().unwrap().payload.as_deref()).unwrap()
    }

    async fn open_ready(data_dir: &Path) -> Store {
        let store = Store::open(
            &StoreConfig::with_data_dir(data_dir),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            store.wait_ready(Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .unwrap();
        store
    }

    fn committed_block_size(data_dir: &Path) -> usize {
        let index = Index::open_in_dir(data_dir.join("index")).unwrap();
        index
            .load_metas()
            .unwrap()
            .index_settings
            .docstore_blocksize
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_index_with_older_block_size_keeps_its_events_and_writes_new_segments_in_current_blocks()
     {
        let dir = tempfile::tempdir().unwrap();
        let store = open_ready(dir.path()).await;
        store.ingest(vec![event("e0", 10)]).await.unwrap();
        store.flush().await.unwrap();
        store.shutdown().await;
        drop(store);
        assert_eq!(committed_block_size(dir.path()), DOCSTORE_BLOCK_BYTES);

        // Rewrite the settings as an older version wrote them (256 KiB blocks).
        let meta_path = dir.path().join("index/meta.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        meta["index_settings"]["docstore_blocksize"] = serde_json::json!(256 * 1024);
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        assert_eq!(committed_block_size(dir.path()), 256 * 1024);

        let store = open_ready(dir.path()).await;
        store.ingest(vec![event("e1", 20)]).await.unwrap();
        store.flush().await.unwrap();
        let searcher = store.searcher();
        assert_eq!(searcher.num_docs(), 2, "no rebuild, nothing lost");
        for segment in searcher.segment_readers() {
            let documents = segment.get_store_reader(1).unwrap();
            for doc in segment.doc_ids_alive() {
                let _: tantivy::TantivyDocument = documents.get(doc).unwrap();
            }
        }
        store.shutdown().await;
        assert_eq!(committed_block_size(dir.path()), DOCSTORE_BLOCK_BYTES);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_reader_serves_what_a_merge_made_after_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_ready(dir.path()).await;
        // Eight one-event commits: the eighth makes eight segments, which Tantivy's log merge
        // policy merges in the background, after the commit and the reader's reload.
        for n in 0..8 {
            store
                .ingest(vec![event(&format!("e{n}"), 10 * n)])
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        let index = Index::open_in_dir(dir.path().join("index")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let searcher = store.searcher();
            let mut served: Vec<_> = searcher
                .segment_readers()
                .iter()
                .map(|segment| segment.segment_id())
                .collect();
            let mut current = index.searchable_segment_ids().unwrap();
            served.sort();
            current.sort();
            if served.len() < 8 && served == current {
                assert_eq!(searcher.num_docs(), 8);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still serving {} segments, the index has {}",
                served.len(),
                current.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn replay_starts_at_the_commit_payload_and_skips_what_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_ready(dir.path()).await;
        store
            .ingest(vec![event("e0", 10), event("e1", 20), event("e2", 30)])
            .await
            .unwrap();
        store.flush().await.unwrap();
        store.shutdown().await;
        drop(store);
        assert_eq!(committed_payload(dir.path()).next_seq, 3);

        // Acknowledged but never committed: records beyond the payload's position, in a segment
        // that also holds an already committed event (seq 2), which must not be indexed twice.
        let wal_dir = dir.path().join("wal");
        std::fs::remove_dir_all(&wal_dir).unwrap();
        let quarantine_dir = dir.path().join("quarantine");
        let (mut wal, _) = Wal::open(&wal_dir, &quarantine_dir, 1 << 20, 2).unwrap();
        let committed = event("e2", 30);
        let record = wal::encode_record(2, std::iter::once(committed.source.as_slice()));
        wal.append(&record, 1).unwrap();
        let late = [event("e3", 40), event("e4", 5)];
        wal.append(
            &wal::encode_record(3, late.iter().map(|e| e.source.as_slice())),
            2,
        )
        .unwrap();
        drop(wal);

        let store = open_ready(dir.path()).await;
        assert_eq!(
            store.searcher().num_docs(),
            5,
            "e3 and e4 replayed, e2 not twice"
        );
        assert_eq!(store.committed_seq(), 5);
        assert_eq!(committed_payload(dir.path()).next_seq, 5);
        // Producer ids replayed from the WAL count as stored.
        let outcome = store
            .ingest(vec![event("e4", 5), event("e5", 50)])
            .await
            .unwrap();
        assert_eq!(outcome.duplicates, 1);
        store.shutdown().await;
    }
}
