//! The log behind the store: one interface, two implementations.
//!
//! ```text
//!  embedded:  ingest ─▶ EventLog = LocalLog ─▶ [WAL stage: dedup, seq, WAL fdatasync, ack]
//!                                                   └─▶ [index stage] commit {next_seq}
//!
//!  clustered: ingest ─▶ EventLog = JetStream publish ─▶ ack after the stream's quorum ack
//!             stream ─▶ LogSource (this replica's durable consumer)
//!                        ─▶ [consume stage: dedup, seq, in stream order]
//!                             └─▶ [index stage] commit {next_seq, log_position}
//!                        ◀── ack-all through the committed log_position
//! ```
//!
//! [`EventLog`] is where a request becomes durable, all or nothing. In the embedded mode that
//! is the local WAL ([`LocalLog`], today's code); in the clustered mode the request is one
//! JetStream message (`crate::cluster`). A replicated log is read back by every replica through
//! a [`LogSource`]: the [`ConsumeStage`] runs the id deduplication and assigns sequence
//! numbers in log order (so every replica computes the same hash chains and drops the same
//! duplicates), the index stage records the log position in each commit, and only committed
//! positions are acknowledged to the log. After a crash the replica resumes after the committed
//! position; records delivered again are skipped by position.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::WriteError;
use super::dedup::Deduplicator;
use super::writer::{IndexMessage, IngestOutcome, PreparedEvent, Request, Sequenced, SharedState};

/// How long one poll of the log waits for records before control requests are looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often the lag behind the log is measured.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// How long a flush waits for the records the log already holds.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The append side of the log: where an ingest request becomes durable.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Makes a request's events durable, all or nothing; returns once they are acknowledged.
    async fn append(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError>;
}

/// The embedded log: the WAL stage of this process.
pub(super) struct LocalLog {
    pub requests: mpsc::Sender<Request>,
}

#[async_trait::async_trait]
impl EventLog for LocalLog {
    async fn append(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
        let (reply, response) = oneshot::channel();
        let request = Request::Ingest {
            events,
            enqueued: Instant::now(),
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| WriteError::Closed)?;
        response.await.map_err(|_| WriteError::Closed)?
    }
}

/// One record of a replicated log: one ingest request's events, at its position.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Position in the log (JetStream: the stream sequence), increasing from 1.
    pub position: u64,
    /// The request's events; empty when the record could not be decoded (it is skipped by
    /// every replica alike).
    pub events: Vec<PreparedEvent>,
}

/// Why the log could not be read or acknowledged (retried; never fatal).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// The read side of a replicated log: this replica's durable cursor.
#[async_trait::async_trait]
pub trait LogSource: Send + 'static {
    /// The next records after position `after`, in log order: waits at most `wait` for the
    /// first, may return none. Records at or before `after` may come again (they are skipped).
    async fn next_records(
        &mut self,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError>;
    /// Every record through `position` is committed here: the log may forget them for this
    /// replica.
    async fn acknowledge_through(&mut self, position: u64) -> Result<(), LogError>;
    /// The position of the log's last record.
    async fn end_position(&mut self) -> Result<u64, LogError>;
}

/// A replicated log as the store uses it.
pub struct Replicated {
    pub log: Arc<dyn EventLog>,
    pub source: Box<dyn LogSource>,
    /// Records this replica may be behind before it reports not ready.
    pub max_lag: u64,
}

/// The clustered counterpart of the WAL stage: reads this replica's log cursor, deduplicates
/// and sequences in log order, feeds the index stage, acknowledges committed positions.
pub(super) struct ConsumeStage {
    pub source: Box<dyn LogSource>,
    pub dedup: Deduplicator,
    pub shared: Arc<SharedState>,
    pub index: std_mpsc::SyncSender<IndexMessage>,
    /// Sequence number of the next stored event.
    pub next_seq: u64,
    /// Every record through this position was handed to the index stage.
    pub processed: u64,
    /// Every record through this position was acknowledged to the log.
    pub acknowledged: u64,
    pub max_lag: u64,
    seen_committed_seq: u64,
}

impl ConsumeStage {
    pub fn new(
        source: Box<dyn LogSource>,
        dedup: Deduplicator,
        shared: Arc<SharedState>,
        index: std_mpsc::SyncSender<IndexMessage>,
        next_seq: u64,
        max_lag: u64,
    ) -> Self {
        let position = shared.committed_position.load(Ordering::SeqCst);
        let seen_committed_seq = shared.committed_seq.load(Ordering::SeqCst);
        ConsumeStage {
            source,
            dedup,
            shared,
            index,
            next_seq,
            processed: position,
            acknowledged: position,
            max_lag,
            seen_committed_seq,
        }
    }

    /// Runs until shutdown (on its own thread, driving futures on `runtime`).
    pub fn run(self, requests: mpsc::Receiver<Request>, runtime: tokio::runtime::Handle) {
        runtime.block_on(self.run_async(requests));
    }

    async fn run_async(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut lag_measured: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            if self.control(&mut requests).await {
                return;
            }
            match self.source.next_records(self.processed, POLL).await {
                Ok(records) => {
                    if failing_since.take().is_some() {
                        tracing::info!("reading the replicated log again");
                    }
                    for record in records {
                        self.apply(record);
                    }
                }
                Err(error) => {
                    if failing_since.is_none() {
                        tracing::warn!(%error, "cannot read the replicated log; retrying");
                        failing_since = Some(Instant::now());
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            self.observe_commits().await;
            if lag_measured.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                lag_measured = Some(Instant::now());
                self.measure_lag().await;
            }
        }
    }

    /// Serves queued control requests; true once the stage is to stop.
    async fn control(&mut self, requests: &mut mpsc::Receiver<Request>) -> bool {
        loop {
            let request = match requests.try_recv() {
                Ok(request) => request,
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.stop_index().await;
                    return true;
                }
            };
            match request {
                // Never sent in this mode (the store publishes), answered for completeness.
                Request::Ingest { reply, .. } => drop(reply.send(Err(WriteError::Closed))),
                Request::Flush { reply } => {
                    self.catch_up().await;
                    drop(self.index.send(IndexMessage::Flush(reply)))
                }
                Request::Expire { expiry, reply } => {
                    drop(self.index.send(IndexMessage::Expire(expiry, reply)))
                }
                Request::Shutdown { reply } => {
                    self.stop_index().await;
                    let _ = reply.send(());
                    return true;
                }
            }
        }
    }

    /// Reads until everything the log held when called is handed to the index stage (bounded
    /// by [`CATCH_UP`]), so a flush covers every event acknowledged before it.
    async fn catch_up(&mut self) {
        let Ok(end) = self.source.end_position().await else {
            return;
        };
        let started = Instant::now();
        while self.processed < end && started.elapsed() < CATCH_UP {
            match self.source.next_records(self.processed, POLL).await {
                Ok(records) => {
                    for record in records {
                        self.apply(record);
                    }
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Final commit of the index stage, then the last acknowledgement.
    async fn stop_index(&mut self) {
        let (done, finished) = oneshot::channel();
        if self.index.send(IndexMessage::Shutdown(done)).is_ok() {
            let _ = finished.await;
        }
        self.observe_commits().await;
    }

    /// Deduplicates and sequences one record's events and hands them to the index stage.
    fn apply(&mut self, record: LogRecord) {
        if record.position <= self.processed {
            return;
        }
        if record.position > self.processed + 1 && !self.shared.log_gap.swap(true, Ordering::SeqCst)
        {
            // The stream no longer holds what this replica has not indexed (its window moved
            // on, or messages were deleted): it is not ready until restored (docs/cluster.md).
            tracing::error!(
                missing_from = self.processed + 1,
                missing_to = record.position - 1,
                "log records this replica never indexed are gone from the stream"
            );
        }
        let events = loop {
            match self.sequence(&record.events) {
                Ok(events) => break events,
                Err(error) => {
                    // Nothing is skipped: the same record is sequenced again once lookups work.
                    tracing::error!(%error, position = record.position, "id lookup failed; retrying the record");
                    std::thread::sleep(POLL);
                }
            }
        };
        self.next_seq += events.len() as u64;
        self.processed = record.position;
        let message = IndexMessage::Logged {
            events,
            position: record.position,
        };
        if self.index.send(message).is_err() {
            tracing::error!("index stage is gone; the log is read again at the next start");
        }
    }

    /// The record's events that are not stored yet, with their sequence numbers.
    fn sequence(&mut self, events: &[PreparedEvent]) -> tantivy::Result<Vec<Sequenced>> {
        let mut sequenced = Vec::with_capacity(events.len());
        let mut seq = self.next_seq;
        for prepared in events {
            let event = &prepared.event;
            let stored = if prepared.producer_id {
                self.dedup.is_stored(&event.tenant_id, &event.id)
            } else {
                Ok(false)
            };
            match stored {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    self.dedup.forget_from(self.next_seq);
                    return Err(error);
                }
            }
            self.dedup.record(&event.tenant_id, &event.id, seq);
            sequenced.push(Sequenced {
                seq,
                event: prepared.event.clone(),
                source: prepared.source.clone(),
            });
            seq += 1;
        }
        Ok(sequenced)
    }

    /// After commits: refresh the deduplicator and acknowledge the committed position.
    async fn observe_commits(&mut self) {
        let committed_seq = self.shared.committed_seq.load(Ordering::SeqCst);
        if committed_seq > self.seen_committed_seq {
            match self.dedup.on_commit(committed_seq) {
                Ok(()) => self.seen_committed_seq = committed_seq,
                Err(error) => {
                    tracing::error!(%error, "failed to refresh the id index after a commit")
                }
            }
        }
        let committed = self.shared.committed_position.load(Ordering::SeqCst);
        if committed > self.acknowledged {
            match self.source.acknowledge_through(committed).await {
                Ok(()) => self.acknowledged = committed,
                Err(error) => tracing::warn!(%error, "failed to acknowledge committed log records"),
            }
        }
    }

    async fn measure_lag(&mut self) {
        match self.source.end_position().await {
            Ok(end) => {
                let committed = self.shared.committed_position.load(Ordering::SeqCst);
                let lag = end.saturating_sub(committed);
                self.shared.log_lag.store(lag, Ordering::SeqCst);
                let lagging = lag > self.max_lag;
                let was = self.shared.lagging.swap(lagging, Ordering::SeqCst);
                if lagging != was {
                    tracing::warn!(
                        lag,
                        limit = self.max_lag,
                        lagging,
                        "replica lag crossed its limit"
                    );
                }
            }
            Err(error) => tracing::debug!(%error, "cannot measure the lag behind the log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicU64;

    use parking_lot::Mutex;

    use super::*;
    use crate::event::{Action, AuditEvent, IdentityType};
    use crate::store::{Store, StoreConfig, StoreError, StoreMetrics};

    /// A replicated log in memory: every record ever appended, in order.
    #[derive(Clone, Default)]
    struct MemoryLog {
        records: Arc<Mutex<Vec<LogRecord>>>,
    }

    impl MemoryLog {
        fn push(&self, events: Vec<PreparedEvent>) -> u64 {
            let mut records = self.records.lock();
            let position = records.len() as u64 + 1;
            records.push(LogRecord { position, events });
            position
        }

        fn source(&self) -> (Box<dyn LogSource>, Arc<AtomicU64>) {
            let acknowledged = Arc::new(AtomicU64::new(0));
            let source = MemorySource {
                log: self.clone(),
                acknowledged: acknowledged.clone(),
            };
            (Box::new(source), acknowledged)
        }
    }

    #[async_trait::async_trait]
    impl EventLog for MemoryLog {
        async fn append(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
            let ids = events.iter().map(|e| e.event.id.clone()).collect();
            self.push(events);
            Ok(IngestOutcome { ids, duplicates: 0 })
        }
    }

    struct MemorySource {
        log: MemoryLog,
        acknowledged: Arc<AtomicU64>,
    }

    #[async_trait::async_trait]
    impl LogSource for MemorySource {
        async fn next_records(
            &mut self,
            after: u64,
            wait: Duration,
        ) -> Result<Vec<LogRecord>, LogError> {
            // From the first record on, every time: records at or before `after` come again,
            // like redeliveries, and must be skipped.
            let records = self.log.records.lock().clone();
            if records.iter().all(|record| record.position <= after) {
                tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
            }
            Ok(records)
        }

        async fn acknowledge_through(&mut self, position: u64) -> Result<(), LogError> {
            self.acknowledged.fetch_max(position, Ordering::SeqCst);
            Ok(())
        }

        async fn end_position(&mut self) -> Result<u64, LogError> {
            Ok(self.log.records.lock().len() as u64)
        }
    }

    fn event(id: &str, producer_id: bool) -> PreparedEvent {
        let event = AuditEvent {
            id: id.to_string(),
            tenant_id: "tnt_a".into(),
            timestamp_us: 1_700_000_000_000_000,
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
        PreparedEvent::new(event, producer_id)
    }

    fn config(dir: &Path) -> StoreConfig {
        let mut config = StoreConfig::with_data_dir(dir);
        config.commit.interval = Duration::from_millis(50);
        config
    }

    async fn replica(dir: &Path, log: &MemoryLog, max_lag: u64) -> (Store, Arc<AtomicU64>) {
        let (source, acknowledged) = log.source();
        let replicated = Replicated {
            log: Arc::new(log.clone()),
            source,
            max_lag,
        };
        let store =
            Store::open_replicated(&config(dir), StoreMetrics::unregistered(), replicated).unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        (store, acknowledged)
    }

    /// Waits until `store` committed every record through `position`.
    async fn caught_up(store: &Store, position: u64) {
        let started = Instant::now();
        while store.inner.shared.committed_position.load(Ordering::SeqCst) < position {
            assert!(started.elapsed() < Duration::from_secs(20), "not caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn replicas_sequence_the_log_alike_drop_duplicates_and_resume_after_their_commit() {
        let log = MemoryLog::default();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, acked_a) = replica(dir_a.path(), &log, 1000).await;
        let (b, acked_b) = replica(dir_b.path(), &log, 1000).await;
        a.ingest(vec![event("e1", true), event("e2", true)])
            .await
            .unwrap();
        // A retry regrouped (past the duplicate window): e2 is stored once, e3 is new.
        b.ingest(vec![event("e2", true), event("e3", true)])
            .await
            .unwrap();
        // An id the service chose is never a duplicate; e1 again in a record of its own is.
        a.ingest(vec![event("s1", false)]).await.unwrap();
        log.push(vec![event("e1", true)]);
        for store in [&a, &b] {
            caught_up(store, 4).await;
            assert_eq!(store.searcher().num_docs(), 4);
            assert_eq!(store.committed_seq(), 4);
        }
        // Same events in the same order: the same hash chain on both replicas.
        assert_eq!(a.committed_heads(), b.committed_heads());
        assert_eq!(a.committed_heads()["tnt_a"].seq, 4);
        let started = Instant::now();
        while acked_a.load(Ordering::SeqCst) < 4 || acked_b.load(Ordering::SeqCst) < 4 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!a.health().lagging);
        assert_eq!(a.health().log_lag, Some(0));

        // Restarted, the replica continues after its commit's position: nothing twice.
        a.shutdown().await;
        drop(a);
        log.push(vec![event("e5", true), event("e3", true)]);
        let (a, _) = replica(dir_a.path(), &log, 1000).await;
        caught_up(&a, 5).await;
        caught_up(&b, 5).await;
        assert_eq!(a.searcher().num_docs(), 5);
        assert_eq!(a.committed_heads(), b.committed_heads());
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_replica_too_far_behind_is_not_ready_and_modes_do_not_mix() {
        let log = MemoryLog::default();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = replica(dir.path(), &log, 1).await;
        store.shutdown().await;
        drop(store);
        // Three records arrive while the replica is down; its limit is one.
        for id in ["x1", "x2", "x3"] {
            log.push(vec![event(id, true)]);
        }
        let (source, _) = log.source();
        let slow = SlowStart {
            inner: source,
            polls: 0,
        };
        let replicated = Replicated {
            log: Arc::new(log.clone()),
            source: Box::new(slow),
            max_lag: 1,
        };
        let store = Store::open_replicated(
            &config(dir.path()),
            StoreMetrics::unregistered(),
            replicated,
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        let started = Instant::now();
        while !store.health().lagging {
            assert!(started.elapsed() < Duration::from_secs(10), "lag not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        caught_up(&store, 3).await;
        let started = Instant::now();
        while store.health().lagging {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "lag not cleared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.shutdown().await;
        drop(store);

        // The replica's data directory is refused by the embedded mode, and the other way.
        let error = Store::open(&config(dir.path()), StoreMetrics::unregistered())
            .err()
            .unwrap();
        assert!(matches!(error, StoreError::Mode(_)), "{error}");
        let embedded = tempfile::tempdir().unwrap();
        let store = Store::open(&config(embedded.path()), StoreMetrics::unregistered()).unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        store.ingest(vec![event("local", true)]).await.unwrap();
        store.shutdown().await;
        drop(store);
        let (source, _) = log.source();
        let replicated = Replicated {
            log: Arc::new(log.clone()),
            source,
            max_lag: 1,
        };
        let error = Store::open_replicated(
            &config(embedded.path()),
            StoreMetrics::unregistered(),
            replicated,
        )
        .err()
        .unwrap();
        assert!(matches!(error, StoreError::Mode(_)), "{error}");
    }

    /// A source whose log lost record 2 (its window moved on while the replica was away).
    struct Lost {
        inner: Box<dyn LogSource>,
    }

    #[async_trait::async_trait]
    impl LogSource for Lost {
        async fn next_records(
            &mut self,
            after: u64,
            wait: Duration,
        ) -> Result<Vec<LogRecord>, LogError> {
            let mut records = self.inner.next_records(after, wait).await?;
            records.retain(|record| record.position != 2);
            Ok(records)
        }

        async fn acknowledge_through(&mut self, position: u64) -> Result<(), LogError> {
            self.inner.acknowledge_through(position).await
        }

        async fn end_position(&mut self) -> Result<u64, LogError> {
            self.inner.end_position().await
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_replica_that_missed_records_gone_from_the_log_is_not_ready() {
        let log = MemoryLog::default();
        for id in ["g1", "g2", "g3"] {
            log.push(vec![event(id, true)]);
        }
        let dir = tempfile::tempdir().unwrap();
        let (source, _) = log.source();
        let replicated = Replicated {
            log: Arc::new(log.clone()),
            source: Box::new(Lost { inner: source }),
            max_lag: 1000,
        };
        let store = Store::open_replicated(
            &config(dir.path()),
            StoreMetrics::unregistered(),
            replicated,
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        caught_up(&store, 3).await;
        assert_eq!(store.searcher().num_docs(), 2);
        assert!(store.health().log_gap);
        store.shutdown().await;
    }

    /// A source that delivers nothing for its first polls (a slow network), so the lag shows.
    struct SlowStart {
        inner: Box<dyn LogSource>,
        polls: u32,
    }

    #[async_trait::async_trait]
    impl LogSource for SlowStart {
        async fn next_records(
            &mut self,
            after: u64,
            wait: Duration,
        ) -> Result<Vec<LogRecord>, LogError> {
            self.polls += 1;
            if self.polls < 20 {
                tokio::time::sleep(wait).await;
                return Ok(Vec::new());
            }
            self.inner.next_records(after, wait).await
        }

        async fn acknowledge_through(&mut self, position: u64) -> Result<(), LogError> {
            self.inner.acknowledge_through(position).await
        }

        async fn end_position(&mut self) -> Result<u64, LogError> {
            self.inner.end_position().await
        }
    }
}
