//! The writer: the only code that writes the WAL and the index.
//!
//! ```text
//!  HTTP handlers ──Request──▶ [WAL stage thread] ──IndexMessage──▶ [index stage thread]
//!                 (bounded)    owns Wal + Deduplicator  (bounded)   owns IndexWriter
//!                  ◀── ack after fdatasync                            commits per CommitPolicy,
//!                                                                     publishes committed_seq
//! ```
//!
//! Each stage owns its resource outright, so there are no locks around the WAL or the
//! `IndexWriter`. The split lets a group's `fdatasync` overlap with indexing and commits of
//! earlier groups: acknowledgements never wait for a commit. Group commit: the WAL stage takes
//! every request already queued, writes them all, and pays one `fdatasync` for the lot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tantivy::index::SegmentId;
use tantivy::{IndexReader, IndexWriter};
use tokio::sync::{mpsc, oneshot};

use super::dedup::Deduplicator;
use super::metrics::{CommitLabels, CommitTrigger, StoreMetrics};
use super::retention::{self, Expiry, RetentionAnchors};
use super::schema::{Fields, SCHEMA_VERSION};
use super::wal::{self, Wal, WalError};
use crate::config::CommitPolicy;
use crate::event::AuditEvent;
use crate::integrity::chain::{ChainHeads, ChainLink};

/// Most events one group commit takes before writing (bounds the group's memory and latency).
const MAX_GROUP_EVENTS: usize = 50_000;
/// A fully committed active WAL segment at least this large is closed so it can be deleted.
const RETIRE_ACTIVE_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How often an idle index stage looks for segments merges finished (a read of meta.json).
const MERGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// An event ready for the writer: validated, id assigned, storage JSON encoded.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub event: AuditEvent,
    /// The storage JSON of `event` (what the WAL and the index keep).
    pub source: Vec<u8>,
    /// Whether the producer chose the id (only those can be duplicates).
    pub producer_id: bool,
}

impl PreparedEvent {
    /// Encodes `event`'s storage JSON.
    pub fn new(event: AuditEvent, producer_id: bool) -> Self {
        // Serializing plain data to a Vec cannot fail.
        let source = serde_json::to_vec(&event).unwrap_or_default();
        PreparedEvent {
            event,
            source,
            producer_id,
        }
    }
}

/// What an acknowledged batch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// One id per submitted event, in submission order.
    pub ids: Vec<String>,
    /// Events whose id was already stored (acknowledged, not stored again).
    pub duplicates: usize,
}

/// Why a write was not acknowledged. Nothing of an unacknowledged batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("failed to write the write-ahead log: {0}")]
    Wal(#[source] WalError),
    #[error("failed to look up stored ids: {0}")]
    DedupLookup(#[source] tantivy::TantivyError),
    #[error("failed to commit the index: {0}")]
    Commit(#[source] tantivy::TantivyError),
    #[error("the index cannot accept writes until a failed commit is retried")]
    IndexUnhealthy,
    #[error("the store is starting (replaying the write-ahead log)")]
    NotReady,
    #[error("the store is shut down")]
    Closed,
    #[error("failed to expire events: {0}")]
    Expire(String),
    /// Clustered mode: no acknowledgement from JetStream within the deadline (no quorum,
    /// stream full, connection lost). The request may still be stored later: retry it with the
    /// same ids.
    #[error("the replicated log did not acknowledge the write: {0}")]
    LogUnavailable(String),
    /// Clustered mode: the request, compressed, is larger than one log message may be.
    #[error(
        "the batch is {size} bytes compressed; the replicated log takes at most {limit} bytes per request"
    )]
    TooLargeForLog { size: usize, limit: usize },
}

impl CommitPolicy {
    /// The trigger that is due for this much uncommitted work, if any.
    fn due(&self, docs: usize, bytes: usize, oldest: Option<Instant>) -> Option<CommitTrigger> {
        if docs >= self.max_docs {
            Some(CommitTrigger::DocCount)
        } else if bytes >= self.max_bytes {
            Some(CommitTrigger::Memory)
        } else if oldest.is_some_and(|since| since.elapsed() >= self.interval) {
            Some(CommitTrigger::Interval)
        } else {
            None
        }
    }
}

/// State both stages and the readers share.
#[derive(Debug, Default)]
pub struct SharedState {
    /// Every event with a lower sequence number is committed and visible to searchers.
    pub committed_seq: AtomicU64,
    /// Clustered mode: every log record up to this position (JetStream stream sequence) is
    /// committed. Zero in the embedded mode.
    pub committed_position: AtomicU64,
    /// Clustered mode: log records not yet committed here, as last measured.
    pub log_lag: AtomicU64,
    /// Clustered mode: the lag exceeds its limit (the replica reports not ready).
    pub lagging: AtomicBool,
    /// Clustered mode: records this replica never indexed are gone from the log (not ready).
    pub log_gap: AtomicBool,
    pub ready: AtomicBool,
    pub index_ok: AtomicBool,
    pub wal_ok: AtomicBool,
    /// Each tenant's chain head as of the last commit. The index stage holds the write lock
    /// across a commit and the reader reload, so a reader that takes the searcher under the
    /// read lock sees heads that match it exactly.
    pub committed_heads: RwLock<HashMap<String, ChainLink>>,
}

pub(super) enum Request {
    Ingest {
        events: Vec<PreparedEvent>,
        enqueued: Instant,
        reply: oneshot::Sender<Result<IngestOutcome, WriteError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Expire {
        expiry: Expiry,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

pub(super) enum IndexMessage {
    Events(Vec<Sequenced>),
    /// Clustered mode: the events of the log records up to `position` (possibly none, when
    /// every event of those records was a duplicate).
    Logged {
        events: Vec<Sequenced>,
        position: u64,
    },
    Flush(oneshot::Sender<Result<(), WriteError>>),
    Expire(Expiry, oneshot::Sender<Result<u64, WriteError>>),
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Sequenced {
    pub seq: u64,
    pub event: AuditEvent,
    pub source: Vec<u8>,
}

/// The index stage: owns the `IndexWriter`.
pub(super) struct IndexStage {
    pub writer: IndexWriter,
    pub query_reader: IndexReader,
    pub fields: Fields,
    pub policy: CommitPolicy,
    pub shared: Arc<SharedState>,
    pub metrics: StoreMetrics,
    /// Sequence number after the last added event.
    pub next_seq: u64,
    /// Every tenant's chain head, including uncommitted events.
    heads: ChainHeads,
    /// Where the retention anchors are kept, and their content (see [`retention`]).
    anchors_path: Option<PathBuf>,
    anchors: RetentionAnchors,
    uncommitted: Vec<Sequenced>,
    uncommitted_bytes: usize,
    oldest_uncommitted: Option<Instant>,
    /// Clustered mode: the log position the added events cover (recorded in each commit).
    log_position: Option<u64>,
    /// The log position moved since the last commit (a commit is due even without events).
    position_moved: bool,
}

// === impl IndexStage ===

impl IndexStage {
    pub fn new(
        writer: IndexWriter,
        query_reader: IndexReader,
        fields: Fields,
        policy: CommitPolicy,
        shared: Arc<SharedState>,
        metrics: StoreMetrics,
        next_seq: u64,
    ) -> Self {
        IndexStage {
            heads: ChainHeads::default(),
            anchors_path: None,
            anchors: RetentionAnchors::default(),
            writer,
            query_reader,
            fields,
            policy,
            shared,
            metrics,
            next_seq,
            uncommitted: Vec::new(),
            uncommitted_bytes: 0,
            oldest_uncommitted: None,
            log_position: None,
            position_moved: false,
        }
    }

    /// Clustered mode: continues from log `position`, the committed index's.
    pub fn resume_position(&mut self, position: u64) {
        self.log_position = Some(position);
        self.shared
            .committed_position
            .store(position, Ordering::SeqCst);
    }

    /// Records that the added events cover the log up to `position`.
    fn advance_position(&mut self, position: u64) {
        if self.log_position.is_none_or(|current| position > current) {
            self.log_position = Some(position);
            self.position_moved = true;
            self.oldest_uncommitted.get_or_insert_with(Instant::now);
        }
    }

    /// Keeps the retention anchors in `path`, whose current content is `anchors`.
    pub fn keep_anchors(&mut self, path: PathBuf, anchors: RetentionAnchors) {
        self.anchors_path = Some(path);
        self.anchors = anchors;
    }

    /// The retention anchors as last recorded.
    pub fn anchors(&self) -> &RetentionAnchors {
        &self.anchors
    }

    /// Continues the chains from `heads`, the committed index's (before the WAL replay).
    pub fn resume_chains(&mut self, heads: HashMap<String, ChainLink>) {
        *self.shared.committed_heads.write() = heads.clone();
        self.heads = ChainHeads::from_heads(heads);
    }

    /// Adds one event (replay path and the stage loop); commits when the policy says so.
    pub fn add(
        &mut self,
        seq: u64,
        event: AuditEvent,
        source: Vec<u8>,
        trigger_label: Option<CommitTrigger>,
    ) {
        self.add_sequenced(Sequenced { seq, event, source });
        if let Some(trigger) = self
            .policy
            .due(self.uncommitted.len(), self.uncommitted_bytes, None)
        {
            // Failures are logged and retried by the next commit; acknowledged data stays in the WAL.
            let _ = self.commit(trigger_label.unwrap_or(trigger));
        }
    }

    fn add_sequenced(&mut self, item: Sequenced) {
        let link = self.heads.append(&item.event);
        let document = self
            .fields
            .document(&item.event, item.seq, &item.source, link);
        if let Err(error) = self.writer.add_document(document) {
            tracing::error!(%error, "failed to add a document to the index");
            self.shared.index_ok.store(false, Ordering::SeqCst);
        }
        self.next_seq = self.next_seq.max(item.seq + 1);
        self.uncommitted_bytes += item.source.len();
        self.uncommitted.push(item);
        self.oldest_uncommitted.get_or_insert_with(Instant::now);
    }

    /// Commits everything added so far, recording the WAL position in the commit payload.
    pub fn commit(&mut self, trigger: CommitTrigger) -> Result<(), WriteError> {
        if self.uncommitted.is_empty()
            && !self.position_moved
            && self.shared.index_ok.load(Ordering::SeqCst)
        {
            return Ok(());
        }
        let started = Instant::now();
        let shared = self.shared.clone();
        let mut committed_heads = shared.committed_heads.write();
        match self.try_commit() {
            Ok(()) => {
                committed_heads.extend(self.heads.take_moved());
                drop(committed_heads);
                self.metrics
                    .commits
                    .get_or_create(&CommitLabels { trigger })
                    .inc();
                let documents = self.query_reader.searcher().num_docs();
                self.metrics.index_documents.set(documents as i64);
                tracing::debug!(
                    ?trigger,
                    docs = self.uncommitted.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    next_seq = self.next_seq,
                    "index committed"
                );
                self.uncommitted.clear();
                self.uncommitted_bytes = 0;
                self.oldest_uncommitted = None;
                self.position_moved = false;
                self.shared.index_ok.store(true, Ordering::SeqCst);
                self.shared
                    .committed_seq
                    .store(self.next_seq, Ordering::SeqCst);
                if let Some(position) = self.log_position {
                    self.shared
                        .committed_position
                        .store(position, Ordering::SeqCst);
                }
                Ok(())
            }
            Err(error) => {
                // The uncommitted events are chained again when they are re-added.
                self.heads.roll_back_moved(&committed_heads);
                drop(committed_heads);
                self.metrics.commit_errors.inc();
                self.shared.index_ok.store(false, Ordering::SeqCst);
                tracing::error!(%error, ?trigger, "index commit failed; will roll back and retry");
                self.recover_after_failure();
                Err(WriteError::Commit(error))
            }
        }
    }

    /// Deletes `expiry`'s events: commits what is pending, finds the set, records the chain
    /// anchors durably, deletes and commits. Returns how many events were deleted.
    fn expire(&mut self, expiry: &Expiry) -> Result<u64, WriteError> {
        self.commit(CommitTrigger::Retention)?;
        let failed = |error: &dyn std::fmt::Display| WriteError::Expire(error.to_string());
        let searcher = self.query_reader.searcher();
        let set =
            retention::expired_set(&searcher, &self.fields, expiry).map_err(|e| failed(&e))?;
        if set.docs.is_empty() {
            return Ok(0);
        }
        let mut links = Vec::with_capacity(set.anchor_docs.len());
        for at in &set.anchor_docs {
            if let Some(link) = retention::link_of(&searcher, *at).map_err(|e| failed(&e))? {
                links.push(link);
            }
        }
        let oldest_kept = match set.oldest_kept {
            Some(at) => retention::link_of(&searcher, at)
                .map_err(|e| failed(&e))?
                .map(|link| link.seq),
            None => None,
        };
        let mut anchors = self.anchors.clone();
        anchors.record(&expiry.tenant, &links, oldest_kept);
        // Durable before anything is deleted: a crash after the delete commit keeps them.
        if let Some(path) = &self.anchors_path {
            anchors.save(path).map_err(|e| failed(&e))?;
        }
        self.anchors = anchors;
        drop(searcher);
        self.writer
            .delete_query(Box::new(retention::delete_query(&self.fields, expiry)))
            .map_err(|e| failed(&e))?;
        let started = Instant::now();
        if let Err(error) = self.try_commit() {
            self.metrics.commit_errors.inc();
            tracing::error!(%error, "retention commit failed; nothing was deleted");
            self.recover_after_failure();
            return Err(WriteError::Commit(error));
        }
        self.metrics
            .commits
            .get_or_create(&CommitLabels {
                trigger: CommitTrigger::Retention,
            })
            .inc();
        let documents = self.query_reader.searcher().num_docs();
        self.metrics.index_documents.set(documents as i64);
        tracing::debug!(
            tenant = %expiry.tenant,
            deleted = set.docs.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "expired events deleted"
        );
        Ok(set.docs.len() as u64)
    }

    fn try_commit(&mut self) -> tantivy::Result<()> {
        let payload = CommitPayload {
            next_seq: self.next_seq,
            schema_version: SCHEMA_VERSION,
            log_position: self.log_position,
        };
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload.to_json());
        prepared.commit()?;
        self.query_reader.reload()
    }

    /// Drops the failed segment work and re-adds the uncommitted events for the next attempt.
    fn recover_after_failure(&mut self) {
        if let Err(error) = self.writer.rollback() {
            tracing::error!(%error, "index rollback failed");
            return;
        }
        let pending = std::mem::take(&mut self.uncommitted);
        self.uncommitted_bytes = 0;
        for item in pending {
            self.add_sequenced(item);
        }
        // Retry after one interval rather than in a tight loop.
        self.oldest_uncommitted = Some(Instant::now());
    }

    fn run(mut self, messages: std_mpsc::Receiver<IndexMessage>) {
        loop {
            let message = match self.oldest_uncommitted {
                Some(since) => {
                    let wait = self.policy.interval.saturating_sub(since.elapsed());
                    match messages.recv_timeout(wait) {
                        Ok(message) => Some(message),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match messages.recv_timeout(MERGE_CHECK_INTERVAL) {
                    Ok(message) => Some(message),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.adopt_merged_segments();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match message {
                None => {
                    let _ = self.commit(CommitTrigger::Interval);
                }
                Some(IndexMessage::Events(batch)) => {
                    for item in batch {
                        self.add_sequenced(item);
                    }
                    self.commit_if_due();
                }
                Some(IndexMessage::Logged { events, position }) => {
                    for item in events {
                        self.add_sequenced(item);
                    }
                    self.advance_position(position);
                    self.commit_if_due();
                }
                Some(IndexMessage::Flush(reply)) => {
                    let _ = reply.send(self.commit(CommitTrigger::Force));
                }
                Some(IndexMessage::Expire(expiry, reply)) => {
                    let _ = reply.send(self.expire(&expiry));
                }
                Some(IndexMessage::Shutdown(reply)) => {
                    self.final_commit();
                    let _ = reply.send(());
                    return;
                }
            }
        }
        self.final_commit();
    }

    /// Serves the segments background merges made since the last commit. A merge records its
    /// result in the index's metadata without a commit of ours, and until the next commit the
    /// reader kept serving the segments it replaced: more of them to search, and their files
    /// (deleted, but open) kept mapped with every page the merge read.
    fn adopt_merged_segments(&mut self) {
        let served: HashSet<SegmentId> = self
            .query_reader
            .searcher()
            .segment_readers()
            .iter()
            .map(|segment| segment.segment_id())
            .collect();
        match self.writer.index().searchable_segment_ids() {
            Ok(current)
                if current.iter().all(|id| served.contains(id))
                    && current.len() == served.len() => {}
            Ok(_) => {
                if let Err(error) = self.query_reader.reload() {
                    tracing::warn!(%error, "failed to open the merged segments");
                }
            }
            Err(error) => tracing::warn!(%error, "failed to read the index's segments"),
        }
    }

    fn commit_if_due(&mut self) {
        let due = self.policy.due(
            self.uncommitted.len(),
            self.uncommitted_bytes,
            self.oldest_uncommitted,
        );
        if let Some(trigger) = due {
            let _ = self.commit(trigger);
        }
    }

    fn final_commit(&mut self) {
        if let Err(error) = self.commit(CommitTrigger::Shutdown) {
            tracing::error!(%error, "final commit failed; the WAL replays the rest at next start");
        }
    }
}

/// What each commit records: the WAL position it covers (and, clustered, the log position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitPayload {
    /// Every event with a lower sequence number is in this commit.
    pub next_seq: u64,
    pub schema_version: u32,
    /// Clustered mode: every record of the replicated log (JetStream stream sequence) up to
    /// this one is in this commit. Absent in the embedded mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_position: Option<u64>,
}

impl CommitPayload {
    pub fn to_json(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }

    /// Parses a commit payload; an index without one (new) starts at zero.
    pub fn parse(payload: Option<&str>) -> Result<Self, serde_json::Error> {
        match payload {
            None => Ok(CommitPayload {
                next_seq: 0,
                schema_version: SCHEMA_VERSION,
                log_position: None,
            }),
            Some(text) => serde_json::from_str(text),
        }
    }
}

/// The WAL stage: owns the WAL and the deduplicator.
pub(super) struct WalStage {
    pub wal: Wal,
    pub dedup: Deduplicator,
    pub shared: Arc<SharedState>,
    pub metrics: StoreMetrics,
    seen_committed_seq: u64,
    index: std_mpsc::SyncSender<IndexMessage>,
}

struct IngestRequest {
    events: Vec<PreparedEvent>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<IngestOutcome, WriteError>>,
}

struct PendingReply {
    reply: oneshot::Sender<Result<IngestOutcome, WriteError>>,
    outcome: IngestOutcome,
    enqueued: Instant,
    stored: u64,
}

// === impl WalStage ===

impl WalStage {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(first) = requests.blocking_recv() {
            self.observe_commits(RETIRE_ACTIVE_SEGMENT_BYTES);
            let mut group = Vec::new();
            let mut control = None;
            let mut group_events = 0;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Ingest {
                        events,
                        enqueued,
                        reply,
                    } => {
                        group_events += events.len();
                        group.push(IngestRequest {
                            events,
                            enqueued,
                            reply,
                        });
                        if group_events < MAX_GROUP_EVENTS {
                            next = requests.try_recv().ok();
                        }
                    }
                    other => control = Some(other),
                }
            }
            if !group.is_empty() {
                self.write_group(group);
            }
            match control {
                // A dropped flush reply tells the caller the store is closed.
                Some(Request::Flush { reply }) => drop(self.index.send(IndexMessage::Flush(reply))),
                Some(Request::Expire { expiry, reply }) => {
                    drop(self.index.send(IndexMessage::Expire(expiry, reply)))
                }
                Some(Request::Shutdown { reply }) => {
                    let (index_done, index_reply) = oneshot::channel();
                    if self.index.send(IndexMessage::Shutdown(index_done)).is_ok() {
                        let _ = index_reply.blocking_recv();
                    }
                    // After the final commit every WAL segment is redundant: leave none behind.
                    self.observe_commits(0);
                    let _ = reply.send(());
                    return;
                }
                _ => {}
            }
        }
    }

    /// Applies commits the index stage published: prune dedup state and committed WAL segments.
    /// `retire_bytes`: a fully committed active segment at least this large is retired too.
    fn observe_commits(&mut self, retire_bytes: u64) {
        let committed = self.shared.committed_seq.load(Ordering::SeqCst);
        if committed <= self.seen_committed_seq {
            return;
        }
        if let Err(error) = self.wal.retire_committed_active(committed, retire_bytes) {
            tracing::warn!(%error, "failed to start a new WAL segment");
        }
        if let Err(error) = self.dedup.on_commit(committed) {
            tracing::error!(%error, "failed to refresh the id index after a commit");
            return;
        }
        match self.wal.remove_segments_below(committed) {
            Ok(_) => self.seen_committed_seq = committed,
            Err(error) => tracing::warn!(%error, "failed to remove committed WAL segments"),
        }
        self.metrics.wal_bytes.set(self.wal.disk_bytes() as i64);
    }

    fn write_group(&mut self, group: Vec<IngestRequest>) {
        if !self.shared.index_ok.load(Ordering::SeqCst) {
            for request in group {
                let _ = request.reply.send(Err(WriteError::IndexUnhealthy));
            }
            return;
        }
        let first_seq = self.wal.next_seq();
        let mut next_seq = first_seq;
        let mut records = Vec::new();
        let mut sequenced = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        let mut failure = None;
        for request in group {
            if failure.is_none() {
                match self.sequence_request(
                    request.events,
                    &mut next_seq,
                    &mut records,
                    &mut sequenced,
                ) {
                    Ok((outcome, stored)) => {
                        replies.push(PendingReply {
                            reply: request.reply,
                            outcome,
                            enqueued: request.enqueued,
                            stored,
                        });
                        continue;
                    }
                    Err(error) => failure = Some(error),
                }
            }
            replies.push(PendingReply {
                reply: request.reply,
                outcome: IngestOutcome {
                    ids: Vec::new(),
                    duplicates: 0,
                },
                enqueued: request.enqueued,
                stored: 0,
            });
        }
        if let Some(error) = failure {
            self.dedup.forget_from(first_seq);
            tracing::error!(%error, "id lookup failed; group not stored");
            for pending in replies {
                let copy = tantivy::TantivyError::InternalError(error.to_string());
                let _ = pending.reply.send(Err(WriteError::DedupLookup(copy)));
            }
            return;
        }
        self.append_and_ack(records, sequenced, replies, first_seq);
    }

    /// Drops already-stored ids, assigns sequence numbers and encodes the request's record.
    fn sequence_request(
        &mut self,
        events: Vec<PreparedEvent>,
        next_seq: &mut u64,
        records: &mut Vec<u8>,
        sequenced: &mut Vec<Sequenced>,
    ) -> tantivy::Result<(IngestOutcome, u64)> {
        let mut outcome = IngestOutcome {
            ids: Vec::with_capacity(events.len()),
            duplicates: 0,
        };
        let request_first_seq = *next_seq;
        let kept_from = sequenced.len();
        for prepared in events {
            outcome.ids.push(prepared.event.id.clone());
            let event = &prepared.event;
            if prepared.producer_id && self.dedup.is_stored(&event.tenant_id, &event.id)? {
                outcome.duplicates += 1;
                continue;
            }
            self.dedup.record(&event.tenant_id, &event.id, *next_seq);
            sequenced.push(Sequenced {
                seq: *next_seq,
                event: prepared.event,
                source: prepared.source,
            });
            *next_seq += 1;
        }
        let kept = &sequenced[kept_from..];
        if !kept.is_empty() {
            records.extend(wal::encode_record(
                request_first_seq,
                kept.iter().map(|item| item.source.as_slice()),
            ));
        }
        Ok((outcome, kept.len() as u64))
    }

    fn append_and_ack(
        &mut self,
        records: Vec<u8>,
        sequenced: Vec<Sequenced>,
        replies: Vec<PendingReply>,
        first_seq: u64,
    ) {
        let event_count = sequenced.len() as u64;
        if event_count > 0 {
            if let Err(error) = self.wal.append(&records, event_count) {
                self.dedup.forget_from(first_seq);
                self.metrics.wal_write_errors.inc();
                self.shared.wal_ok.store(false, Ordering::SeqCst);
                tracing::error!(%error, "write-ahead log append failed; batch answered 503");
                for pending in replies {
                    let _ = pending
                        .reply
                        .send(Err(WriteError::Wal(clone_wal_error(&error))));
                }
                return;
            }
            self.shared.wal_ok.store(true, Ordering::SeqCst);
            self.metrics.wal_bytes_written.inc_by(records.len() as u64);
            self.metrics.wal_bytes.inc_by(records.len() as i64);
        }
        for pending in replies {
            self.metrics.events_ingested.inc_by(pending.stored);
            self.metrics
                .duplicate_events
                .inc_by(pending.outcome.duplicates as u64);
            self.metrics
                .ingest_batch_duration
                .observe(pending.enqueued.elapsed().as_secs_f64());
            let _ = pending.reply.send(Ok(pending.outcome));
        }
        if event_count > 0 && self.index.send(IndexMessage::Events(sequenced)).is_err() {
            tracing::error!("index stage is gone; events stay in the WAL until the next start");
        }
    }
}

fn clone_wal_error(error: &WalError) -> WalError {
    match error {
        WalError::Io {
            action,
            path,
            source,
        } => WalError::Io {
            action,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}

/// Starts the index stage on its own thread; returns its queue.
pub(super) fn spawn_index_stage(
    index_stage: IndexStage,
    index_queue: usize,
) -> std::io::Result<(
    std_mpsc::SyncSender<IndexMessage>,
    std::thread::JoinHandle<()>,
)> {
    let (index_tx, index_rx) = std_mpsc::sync_channel(index_queue);
    let index_thread = std::thread::Builder::new()
        .name("store-index".into())
        .spawn(move || index_stage.run(index_rx))?;
    Ok((index_tx, index_thread))
}

/// Starts both stages on their own threads; the WAL stage runs on the calling thread's spawn.
pub(super) fn spawn_stages(
    wal: Wal,
    dedup: Deduplicator,
    index_stage: IndexStage,
    requests: mpsc::Receiver<Request>,
    index_queue: usize,
) -> std::io::Result<(std::thread::JoinHandle<()>, std::thread::JoinHandle<()>)> {
    let (index_tx, index_rx) = std_mpsc::sync_channel(index_queue);
    let shared = index_stage.shared.clone();
    let metrics = index_stage.metrics.clone();
    let seen_committed_seq = shared.committed_seq.load(Ordering::SeqCst);
    let index_thread = std::thread::Builder::new()
        .name("store-index".into())
        .spawn(move || index_stage.run(index_rx))?;
    let wal_stage = WalStage {
        wal,
        dedup,
        shared,
        metrics,
        seen_committed_seq,
        index: index_tx,
    };
    let wal_thread = std::thread::Builder::new()
        .name("store-wal".into())
        .spawn(move || wal_stage.run(requests))?;
    Ok((wal_thread, index_thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commit_policy_triggers_in_priority_order() {
        let policy = CommitPolicy {
            interval: Duration::from_millis(500),
            max_docs: 10,
            max_bytes: 1000,
        };
        assert_eq!(policy.due(0, 0, None), None);
        assert_eq!(policy.due(10, 5000, None), Some(CommitTrigger::DocCount));
        assert_eq!(policy.due(9, 1000, None), Some(CommitTrigger::Memory));
        let old = Instant::now() - Duration::from_secs(1);
        assert_eq!(policy.due(1, 1, Some(old)), Some(CommitTrigger::Interval));
        assert_eq!(policy.due(1, 1, Some(Instant::now())), None);
    }

    #[test]
    fn commit_payload_round_trips_and_defaults_to_zero() {
        let payload = CommitPayload {
            next_seq: 42,
            schema_version: SCHEMA_VERSION,
            log_position: None,
        };
        assert_eq!(
            CommitPayload::parse(Some(&payload.to_json())).unwrap(),
            payload
        );
        assert_eq!(CommitPayload::parse(None).unwrap().next_seq, 0);
        // The embedded payload is unchanged on disk; the clustered one adds the log position.
        assert!(!payload.to_json().contains("log_position"));
        let clustered = CommitPayload {
            log_position: Some(7),
            ..payload
        };
        assert_eq!(
            CommitPayload::parse(Some(&clustered.to_json())).unwrap(),
            clustered
        );
        assert!(CommitPayload::parse(Some("not json")).is_err());
    }
}
