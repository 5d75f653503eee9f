//! `[storage]`: the data directory, commit thresholds, indexing resources and WAL segments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

/// Tantivy needs at least this much indexing memory per thread.
const MIN_INDEX_MEMORY_MB_PER_THREAD: u64 = 15;

/// `[storage]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Data directory: WAL, index, keys, bootstrap token.
    #[arg(
        id = "storage.data_dir",
        long = "data-dir",
        env = "SCAIVAULT_AUDIT_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
    /// Commit the index at least this often while events are pending (milliseconds).
    #[arg(
        id = "storage.commit_interval_ms",
        long = "commit-interval-ms",
        env = "SCAIVAULT_AUDIT_COMMIT_INTERVAL_MS",
        value_name = "MS"
    )]
    pub commit_interval_ms: Option<u64>,
    /// Commit once this many events are pending.
    #[arg(
        id = "storage.commit_max_docs",
        long = "commit-max-docs",
        env = "SCAIVAULT_AUDIT_COMMIT_MAX_DOCS",
        value_name = "N"
    )]
    pub commit_max_docs: Option<u64>,
    /// Commit once pending events hold this many bytes.
    #[arg(
        id = "storage.commit_max_bytes",
        long = "commit-max-bytes",
        env = "SCAIVAULT_AUDIT_COMMIT_MAX_BYTES",
        value_name = "BYTES"
    )]
    pub commit_max_bytes: Option<u64>,
    /// Tantivy indexing memory budget in MiB (at least 15 per indexing thread).
    #[arg(
        id = "storage.index_memory_mb",
        long = "index-memory-mb",
        env = "SCAIVAULT_AUDIT_INDEX_MEMORY_MB",
        value_name = "MIB"
    )]
    pub index_memory_mb: Option<u64>,
    /// Tantivy indexing threads.
    #[arg(
        id = "storage.index_threads",
        long = "index-threads",
        env = "SCAIVAULT_AUDIT_INDEX_THREADS",
        value_name = "N"
    )]
    pub index_threads: Option<u64>,
    /// Size at which a WAL segment is closed and a new one started, in MiB.
    #[arg(
        id = "storage.wal_segment_mb",
        long = "wal-segment-mb",
        env = "SCAIVAULT_AUDIT_WAL_SEGMENT_MB",
        value_name = "MIB"
    )]
    pub wal_segment_mb: Option<u64>,
}

super::layered!(StorageSection {
    data_dir,
    commit_interval_ms,
    commit_max_docs,
    commit_max_bytes,
    index_memory_mb,
    index_threads,
    wal_segment_mb,
});

/// Commit thresholds (SPEC: searchable within one second of the acknowledgement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    pub interval: Duration,
    pub max_docs: usize,
    pub max_bytes: usize,
}

/// Settings of the store: the resolved `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub commit: CommitPolicy,
    /// Tantivy indexing memory budget, split across the indexing threads.
    pub index_memory_bytes: usize,
    pub index_threads: usize,
    pub wal_segment_bytes: u64,
    /// Ingest requests that may wait for the WAL stage before callers wait to enqueue.
    pub request_queue: usize,
}

impl StoreConfig {
    /// Defaults for a data directory (the embedded standalone default).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            commit: CommitPolicy {
                interval: Duration::from_millis(500),
                max_docs: 200_000,
                max_bytes: 64 * 1024 * 1024,
            },
            index_memory_bytes: 256 * 1024 * 1024,
            index_threads: 2,
            wal_segment_bytes: 64 * 1024 * 1024,
            request_queue: 1024,
        }
    }

    /// The effective section, every key set.
    pub fn to_section(&self) -> StorageSection {
        StorageSection {
            data_dir: Some(self.data_dir.clone()),
            commit_interval_ms: Some(self.commit.interval.as_millis() as u64),
            commit_max_docs: Some(self.commit.max_docs as u64),
            commit_max_bytes: Some(self.commit.max_bytes as u64),
            index_memory_mb: Some((self.index_memory_bytes >> 20) as u64),
            index_threads: Some(self.index_threads as u64),
            wal_segment_mb: Some(self.wal_segment_bytes >> 20),
        }
    }
}

impl StorageSection {
    /// Defaults filled in and every value checked.
    pub fn resolve(&self) -> Result<StoreConfig, ConfigError> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"));
        let defaults = StoreConfig::with_data_dir(&data_dir);
        let commit_interval_ms = self
            .commit_interval_ms
            .unwrap_or(defaults.commit.interval.as_millis() as u64);
        let commit_max_docs = self
            .commit_max_docs
            .unwrap_or(defaults.commit.max_docs as u64);
        let commit_max_bytes = self
            .commit_max_bytes
            .unwrap_or(defaults.commit.max_bytes as u64);
        let index_threads = self.index_threads.unwrap_or(defaults.index_threads as u64);
        let index_memory_mb = self
            .index_memory_mb
            .unwrap_or((defaults.index_memory_bytes >> 20) as u64);
        let wal_segment_mb = self
            .wal_segment_mb
            .unwrap_or(defaults.wal_segment_bytes >> 20);
        positive("commit_interval_ms", commit_interval_ms)?;
        positive("commit_max_docs", commit_max_docs)?;
        positive("commit_max_bytes", commit_max_bytes)?;
        positive("wal_segment_mb", wal_segment_mb)?;
        if !(1..=16).contains(&index_threads) {
            return Err(invalid("index_threads", "must be between 1 and 16"));
        }
        if index_memory_mb < MIN_INDEX_MEMORY_MB_PER_THREAD * index_threads {
            return Err(invalid(
                "index_memory_mb",
                &format!(
                    "must be at least {MIN_INDEX_MEMORY_MB_PER_THREAD} MiB per indexing thread ({} for {index_threads})",
                    MIN_INDEX_MEMORY_MB_PER_THREAD * index_threads
                ),
            ));
        }
        Ok(StoreConfig {
            data_dir,
            commit: CommitPolicy {
                interval: Duration::from_millis(commit_interval_ms),
                max_docs: commit_max_docs as usize,
                max_bytes: commit_max_bytes as usize,
            },
            index_memory_bytes: (index_memory_mb << 20) as usize,
            index_threads: index_threads as usize,
            wal_segment_bytes: wal_segment_mb << 20,
            request_queue: defaults.request_queue,
        })
    }
}
