//! Prometheus metrics of the durable store.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why the index committed (the commit policy's triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum CommitTrigger {
    /// The oldest uncommitted event reached the commit interval.
    Interval,
    /// Enough uncommitted documents.
    DocCount,
    /// Enough uncommitted event bytes held in memory.
    Memory,
    /// Events replayed from the WAL at start.
    Replay,
    /// Requested (tests, bulk import, benchmarks).
    Force,
    /// Graceful shutdown.
    Shutdown,
    /// A retention sweep's deletes (and the events before them).
    Retention,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CommitLabels {
    pub trigger: CommitTrigger,
}

/// Handles to every store metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub events_ingested: Counter,
    pub duplicate_events: Counter,
    pub ingest_batch_duration: Histogram,
    pub wal_bytes: Gauge,
    pub wal_bytes_written: Counter,
    pub wal_write_errors: Counter,
    pub commits: Family<CommitLabels, Counter>,
    pub commit_errors: Counter,
    pub index_documents: Gauge,
    pub replay_duration_seconds: Gauge<f64, AtomicU64>,
    pub replayed_events: Counter,
    /// 1 while the write-ahead log replay at start runs.
    pub replay_in_progress: Gauge,
    /// Damaged WAL stretches and undecodable events moved to quarantine.
    pub wal_quarantined: Counter,
    pub wal_quarantined_bytes: Counter,
}

impl StoreMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = StoreMetrics {
            events_ingested: Counter::default(),
            duplicate_events: Counter::default(),
            ingest_batch_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            wal_bytes: Gauge::default(),
            wal_bytes_written: Counter::default(),
            wal_write_errors: Counter::default(),
            commits: Family::default(),
            commit_errors: Counter::default(),
            index_documents: Gauge::default(),
            replay_duration_seconds: Gauge::default(),
            replayed_events: Counter::default(),
            replay_in_progress: Gauge::default(),
            wal_quarantined: Counter::default(),
            wal_quarantined_bytes: Counter::default(),
        };
        // Every trigger's series exists from the start (scraped at zero).
        for trigger in [
            CommitTrigger::Interval,
            CommitTrigger::DocCount,
            CommitTrigger::Memory,
            CommitTrigger::Replay,
            CommitTrigger::Force,
            CommitTrigger::Shutdown,
        ] {
            let _ = metrics.commits.get_or_create(&CommitLabels { trigger });
        }
        registry.register(
            "events_ingested",
            "Events acknowledged as durable (duplicates excluded)",
            metrics.events_ingested.clone(),
        );
        registry.register(
            "duplicate_events",
            "Events not stored again because their id was already stored",
            metrics.duplicate_events.clone(),
        );
        registry.register(
            "ingest_batch_duration_seconds",
            "Time from a batch entering the writer queue to its durable acknowledgement",
            metrics.ingest_batch_duration.clone(),
        );
        registry.register(
            "wal_bytes",
            "Bytes of write-ahead log segments on disk",
            metrics.wal_bytes.clone(),
        );
        registry.register(
            "wal_bytes_written",
            "Bytes appended to the write-ahead log",
            metrics.wal_bytes_written.clone(),
        );
        registry.register(
            "wal_write_errors",
            "Failed write-ahead log appends (answered 503)",
            metrics.wal_write_errors.clone(),
        );
        registry.register(
            "index_commits",
            "Index commits by trigger",
            metrics.commits.clone(),
        );
        registry.register(
            "index_commit_errors",
            "Failed index commits",
            metrics.commit_errors.clone(),
        );
        registry.register(
            "index_documents",
            "Documents in the committed index",
            metrics.index_documents.clone(),
        );
        registry.register(
            "wal_replay_duration_seconds",
            "Duration of the write-ahead log replay at the last start",
            metrics.replay_duration_seconds.clone(),
        );
        registry.register(
            "wal_replayed_events",
            "Events replayed from the write-ahead log at start",
            metrics.replayed_events.clone(),
        );
        registry.register(
            "wal_replay_in_progress",
            "1 while the write-ahead log replay at start runs (the pod is not ready meanwhile)",
            metrics.replay_in_progress.clone(),
        );
        registry.register(
            "wal_quarantined",
            "Damaged write-ahead log stretches and undecodable events moved to the quarantine directory (not served)",
            metrics.wal_quarantined.clone(),
        );
        registry.register(
            "wal_quarantined_bytes",
            "Bytes moved to the quarantine directory",
            metrics.wal_quarantined_bytes.clone(),
        );
        metrics
    }

    /// Metrics registered nowhere (tests, offline commands).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }
}
