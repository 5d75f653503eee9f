//! Snapshots in the running service: the periodic task (`[snapshots] interval_seconds`), the
//! restore at start (`restore_on_start`, into a data directory without a store), and their
//! metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::remote::{DestinationOpener, SnapshotTarget};
use super::restore::{self, RestoreMode, RestoreOutcome};
use super::{SnapshotError, capture};
use crate::store::Store;
use crate::store::schema::SCHEMA_VERSION;

/// How often the age of the newest snapshot is refreshed between runs.
const AGE_REFRESH: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `success` or `failure`.
    pub outcome: &'static str,
}

/// Metrics of snapshots; cheap to clone. Unregistered by default.
#[derive(Debug, Clone, Default)]
pub struct SnapshotMetrics {
    /// Snapshot runs by outcome.
    pub runs: Family<OutcomeLabels, Counter>,
    /// Bytes of snapshot files uploaded.
    pub uploaded_bytes: Counter,
    /// Restores at start by outcome.
    pub restores: Family<OutcomeLabels, Counter>,
    /// Seconds since the newest snapshot this process took or restored (-1: none known).
    pub newest_age_seconds: Gauge<f64, AtomicU64>,
    /// When the newest known snapshot was created (µs since the epoch; 0: none).
    newest_micros: Arc<AtomicI64>,
}

impl SnapshotMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = SnapshotMetrics::default();
        for outcome in ["success", "failure"] {
            let _ = metrics.runs.get_or_create(&OutcomeLabels { outcome });
            let _ = metrics.restores.get_or_create(&OutcomeLabels { outcome });
        }
        metrics.newest_age_seconds.set(-1.0);
        registry.register(
            "snapshot_runs",
            "Index snapshot runs by outcome (success: uploaded with its manifest; failure: retried at the next interval)",
            metrics.runs.clone(),
        );
        registry.register(
            "snapshot_uploaded_bytes",
            "Bytes of index snapshot files uploaded",
            metrics.uploaded_bytes.clone(),
        );
        registry.register(
            "snapshot_restores",
            "Restores of an index snapshot at start, by outcome",
            metrics.restores.clone(),
        );
        registry.register(
            "snapshot_newest_age_seconds",
            "Seconds since the newest index snapshot this process uploaded or restored was created (-1: none yet)",
            metrics.newest_age_seconds.clone(),
        );
        metrics
    }

    fn outcome(family: &Family<OutcomeLabels, Counter>, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records that a snapshot created at `created_at` (RFC 3339) exists.
    fn saw(&self, created_at: &str) {
        if let Ok(micros) = crate::timestamp::parse_rfc3339_micros(created_at) {
            self.newest_micros.fetch_max(micros, Ordering::SeqCst);
        }
        self.refresh_age();
    }

    /// Records a successful restore of the snapshot `outcome` names.
    pub fn restored(&self, outcome: &RestoreOutcome) {
        Self::outcome(&self.restores, true);
        self.saw(&outcome.created_at);
    }

    /// Records a failed restore.
    pub fn restore_failed(&self) {
        Self::outcome(&self.restores, false);
    }

    fn refresh_age(&self) {
        let newest = self.newest_micros.load(Ordering::SeqCst);
        if newest > 0 {
            let age = (crate::timestamp::now_micros() - newest).max(0) as f64 / 1e6;
            self.newest_age_seconds.set(age);
        }
    }
}

/// Takes a snapshot of `store` (in `data_dir`) and uploads it to `target`, then keeps the
/// newest `keep`. Returns the manifest's id and the bytes uploaded.
pub async fn snapshot_once(
    store: &Store,
    data_dir: &Path,
    target: &SnapshotTarget,
    keep: usize,
) -> Result<(super::SnapshotManifest, u64), SnapshotError> {
    let uploaded = upload_snapshot(store, data_dir, target).await?;
    prune(target, keep).await;
    Ok(uploaded)
}

/// Takes a snapshot of `store` (in `data_dir`) and uploads it to `target`. Returns the
/// manifest and the bytes uploaded.
async fn upload_snapshot(
    store: &Store,
    data_dir: &Path,
    target: &SnapshotTarget,
) -> Result<(super::SnapshotManifest, u64), SnapshotError> {
    let index = store.searcher().index().clone();
    let dir = data_dir.to_path_buf();
    let owner = target.owner().map(str::to_owned);
    let staged =
        tokio::task::spawn_blocking(move || capture::stage(&dir, &index, owner.as_deref()))
            .await??;
    let uploaded = target.upload(&staged).await;
    staged.remove();
    let bytes = uploaded?;
    Ok((staged.manifest, bytes))
}

/// Keeps the newest `keep` snapshots at `target`; a failure is logged (the new snapshot is
/// complete; old ones go at the next run).
async fn prune(target: &SnapshotTarget, keep: usize) {
    if let Err(error) = target.prune(keep, SCHEMA_VERSION).await {
        tracing::warn!(%error, "could not delete old snapshots");
    }
}

/// Decides, before each periodic run and again before its pruning, whether this process
/// uploads (and prunes) snapshots now.
///
/// Embedded, the one process does at every interval ([`EveryInterval`]). In a cluster only
/// the holder of the `snapshotter` role does (`crate::cluster::snapshotter`): one upload of
/// the index per interval for the whole cluster, pruned across replicas.
#[async_trait::async_trait]
pub trait UploadGate: Send + Sync {
    /// Fencing before an irreversible step: whether this process may upload or prune now (a
    /// role lease is renewed by the call, so the step starts with a whole TTL of validity).
    async fn may_upload(&self) -> bool;
}

/// The gate of a process that uploads at every interval (the embedded mode).
#[derive(Debug, Clone, Copy)]
pub struct EveryInterval;

#[async_trait::async_trait]
impl UploadGate for EveryInterval {
    async fn may_upload(&self) -> bool {
        true
    }
}

/// The periodic snapshot task of the running service.
#[derive(Clone)]
pub struct Snapshotter {
    store: Store,
    data_dir: PathBuf,
    opener: DestinationOpener,
    interval: Duration,
    keep: usize,
    metrics: SnapshotMetrics,
    gate: Arc<dyn UploadGate>,
    /// The cluster's single uploader: prunes every replica's snapshots.
    across_replicas: bool,
}

impl Snapshotter {
    pub fn new(
        store: Store,
        data_dir: PathBuf,
        opener: DestinationOpener,
        interval: Duration,
        keep: usize,
        metrics: SnapshotMetrics,
    ) -> Self {
        Snapshotter {
            store,
            data_dir,
            opener,
            interval,
            keep,
            metrics,
            gate: Arc::new(EveryInterval),
            across_replicas: false,
        }
    }

    /// This replica as a candidate for the cluster's single uploader: it uploads only while
    /// `gate` (the `snapshotter` role) lets it, and then prunes the snapshots of every replica,
    /// those a former uploader left included ([`SnapshotTarget::pruning_across_replicas`]).
    pub fn as_cluster_uploader(mut self, gate: Arc<dyn UploadGate>) -> Self {
        self.gate = gate;
        self.across_replicas = true;
        self
    }

    /// One run: snapshot, upload, prune (the gate confirmed before the upload and again before
    /// the pruning); counted and logged. `Ok(false)`: the gate refused, nothing was done.
    pub async fn run_once(&self) -> Result<bool, SnapshotError> {
        if !self.gate.may_upload().await {
            return Ok(false);
        }
        let result = async {
            let mut target = self.opener.open().await?;
            if self.across_replicas {
                target = target.pruning_across_replicas();
            }
            let uploaded = upload_snapshot(&self.store, &self.data_dir, &target).await?;
            if self.gate.may_upload().await {
                prune(&target, self.keep).await;
            }
            Ok(uploaded)
        }
        .await;
        SnapshotMetrics::outcome(&self.metrics.runs, result.is_ok());
        match result {
            Ok((manifest, bytes)) => {
                self.metrics.uploaded_bytes.inc_by(bytes);
                self.metrics.saw(&manifest.created_at);
                tracing::info!(
                    id = %manifest.id,
                    position = manifest.position,
                    files = manifest.files.len(),
                    bytes,
                    destination = %self.opener.location(),
                    "index snapshot uploaded"
                );
                Ok(true)
            }
            Err(error) => {
                tracing::error!(%error, destination = %self.opener.location(), "index snapshot failed; retried at the next interval");
                Err(error)
            }
        }
    }

    /// Runs a snapshot every interval (the first one interval after the store is ready) until
    /// `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            if !crate::export::supervisor::wait_for_store(&self.store, "snapshots").await {
                return;
            }
            let mut next = tokio::time::Instant::now() + self.interval;
            loop {
                let tick = next.min(tokio::time::Instant::now() + AGE_REFRESH);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(tick) => {}
                }
                self.metrics.refresh_age();
                if tokio::time::Instant::now() < next {
                    continue;
                }
                // A run stopped by the shutdown uploaded no manifest: it is no snapshot.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    ran = self.run_once() => if let Ok(false) = ran {
                        tracing::debug!("another replica uploads the index snapshots");
                    }
                }
                next = tokio::time::Instant::now() + self.interval;
            }
        })
    }
}

/// At start, before anything else uses the data directory: restores the newest snapshot when
/// `[snapshots]` is configured with `restore_on_start` and `data_dir` holds no store.
/// `Ok(None)` when nothing was restored. A failed restore stops the start (a replica must not
/// come up empty when its snapshot is damaged or unreachable).
pub async fn restore_at_start(
    opener: &DestinationOpener,
    data_dir: &Path,
    metrics: &SnapshotMetrics,
) -> Result<Option<RestoreOutcome>, SnapshotError> {
    if !restore::holds_no_store(data_dir)? {
        return Ok(None);
    }
    let result = async {
        let target = opener.open().await?;
        restore::restore(&target, data_dir, None, RestoreMode::IntoEmpty).await
    }
    .await;
    match &result {
        Ok(Some(outcome)) => {
            SnapshotMetrics::outcome(&metrics.restores, true);
            metrics.saw(&outcome.created_at);
            tracing::info!(
                id = %outcome.id,
                position = outcome.position,
                files = outcome.files,
                bytes = outcome.bytes,
                destination = %opener.location(),
                "restored the data directory from an index snapshot"
            );
        }
        Ok(None) => tracing::info!(
            destination = %opener.location(),
            "no index snapshot at the destination: starting empty"
        ),
        Err(error) => {
            SnapshotMetrics::outcome(&metrics.restores, false);
            tracing::error!(%error, destination = %opener.location(), "restoring an index snapshot failed");
        }
    }
    result
}
