//! Checkpoints in the running service: the key ring and the checkpoint log opened at start, a
//! checkpoint of every tenant whose committed chain head moved written every interval, and one
//! more after the store's final commit at shutdown.
//!
//! Only committed heads are checkpointed ([`Store::committed_heads`]): committed events are in
//! the index and their WAL records are durable, so no checkpoint ever covers an event a crash
//! can lose, and after a restart the chain continues from the committed heads.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{CheckpointError, CheckpointLog};
use super::keys::{KeyError, Keyring};
use crate::config::IntegritySettings;
use crate::store::Store;

/// Why checkpointing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Log(#[from] CheckpointError),
}

/// Loads the key ring (creating it only in its default place) and opens the checkpoint log.
pub fn open(settings: &IntegritySettings) -> Result<CheckpointLog, IntegrityError> {
    let keyring = Keyring::load(&settings.keys_dir, settings.create_keys)?;
    tracing::info!(
        keys_dir = %settings.keys_dir.display(),
        kid = keyring.kid(),
        "checkpoints are signed with the active key of the ring"
    );
    Ok(CheckpointLog::open(&settings.dir, keyring)?)
}

/// Metrics of checkpointing.
#[derive(Debug, Clone, Default)]
pub struct CheckpointMetrics {
    /// Checkpoints written (one per tenant whose head moved).
    pub written: Counter,
    /// Checkpoint rounds that failed (the next round retries).
    pub failures: Counter,
}

impl CheckpointMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CheckpointMetrics::default();
        registry.register(
            "integrity_checkpoints_written",
            "Signed checkpoints written to the checkpoint log",
            metrics.written.clone(),
        );
        registry.register(
            "integrity_checkpoint_failures",
            "Checkpoint rounds that failed (retried at the next interval)",
            metrics.failures.clone(),
        );
        metrics
    }
}

/// Writes checkpoints of the store's committed heads.
#[derive(Clone)]
pub struct Checkpointer {
    store: Store,
    log: Arc<CheckpointLog>,
    metrics: CheckpointMetrics,
}

impl Checkpointer {
    pub fn new(store: Store, log: Arc<CheckpointLog>, metrics: CheckpointMetrics) -> Self {
        Checkpointer {
            store,
            log,
            metrics,
        }
    }

    /// One round: a checkpoint for every tenant whose committed head moved. Failures are
    /// logged and counted, never returned: the next round covers the same heads again.
    pub async fn checkpoint_now(&self) -> usize {
        let this = self.clone();
        let outcome =
            tokio::task::spawn_blocking(move || this.log.checkpoint(&this.store.committed_heads()))
                .await;
        match outcome {
            Ok(Ok(written)) => {
                self.metrics.written.inc_by(written as u64);
                if written > 0 {
                    tracing::debug!(written, "checkpoints written");
                }
                written
            }
            Ok(Err(error)) => {
                self.metrics.failures.inc();
                tracing::error!(%error, "failed to write checkpoints; retrying at the next interval");
                0
            }
            Err(error) => {
                self.metrics.failures.inc();
                tracing::error!(%error, "the checkpoint task failed");
                0
            }
        }
    }

    /// Checkpoints every `interval` until `shutdown` is cancelled (the final checkpoint is the
    /// caller's, after the store's final commit).
    pub fn spawn(self, interval: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: the first round comes one interval after the start.
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                self.checkpoint_now().await;
            }
        })
    }
}
