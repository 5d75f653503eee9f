//! Export jobs shared among the replicas of a cluster outside Kubernetes (docs/cluster.md,
//! "Coordination"): the job records live in a JetStream key-value bucket, and a job runs on the
//! replica that holds its lease ([`super::lease`], key `export.<export_id>`).
//!
//! ```text
//! POST on any replica ─▶ record created in the jobs bucket (create: ids never collide)
//! every replica: watch of the bucket + a tick every third of the lease TTL
//!     ─▶ a pending/running job nobody runs here, whose snapshot this replica has indexed
//!     ─▶ try to take its lease ─▶ taken: the supervisor runs (or resumes) it from the record's
//!        checkpoint, renewing the lease; every record write is a compare-and-set on the
//!        record's revision, made only while the lease is held
//! lease lost (taken over, or not renewed for a TTL) ─▶ the job stops here, nothing recorded
//! runner dies ─▶ its lease lapses after one TTL ─▶ another replica takes it and resumes
//! ```
//!
//! Resuming on another replica is the same resume as after a restart (export::engine): the
//! destination's claim names the export, parts continue after the last checkpointed one (a part
//! uploaded but not checkpointed is written again under the same key, with the same records:
//! the snapshot is a sequence number, and every replica assigns the same ones), and a manifest
//! already written completes the job without writing anything. Right before the manifest the
//! runner confirms its lease ([`super::lease::Lease::confirm`]).
//!
//! Cancel from any replica writes `cancelled` into the record (compare-and-set); the runner
//! sees it through its watch, stops, and removes its incomplete uploads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use super::lease::{Lease, LeaseBucket};
use crate::export::engine::{ExportEngine, cancelled};
use crate::export::job::{Checkpoint, ExportFailure, ExportPhase};
use crate::export::registry::{self, ExportList, ExportRecord, ExportRegistry, RegistryError};
use crate::export::runner::{self, job_of};
use crate::export::supervisor::{
    Job, JobStore, Outcome, StopReason, Supervisor, SupervisorSettings,
};
use crate::store::Store;

/// How long one key-value request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Compare-and-set attempts of one record change (another writer is a cancel, at most).
const CAS_ATTEMPTS: usize = 5;
/// How long `cancel` waits for a job running here to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Largest value of the jobs bucket.
const MAX_VALUE_BYTES: i32 = 1 << 20;
/// Largest job record this service writes (its checkpoint lists every part: about 2000 parts),
/// below NATS' default `max_payload` of 1 MB.
const MAX_RECORD_BYTES: usize = 768 << 10;

/// Failures opening the jobs bucket.
#[derive(Debug, thiserror::Error)]
#[error("JetStream key-value bucket {bucket}: {message}")]
pub struct JobsBucketError {
    bucket: String,
    message: String,
}

/// Settings of the shared export jobs.
#[derive(Debug, Clone)]
pub struct ClusterExportSettings {
    /// The jobs bucket.
    pub bucket: String,
    /// Its replicas (the stream's).
    pub replicas: usize,
    /// Jobs that run at once on this replica.
    pub max_concurrent: usize,
}

/// The export registry and runner of a replica in a cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterExports {
    inner: Arc<Inner>,
}

struct Inner {
    records: Arc<KvRecords>,
    supervisor: Supervisor,
    store: Store,
    leases: LeaseBucket,
}

/// The jobs bucket, what this replica saw of it, and the leases of the jobs it runs.
struct KvRecords {
    kv: kv::Store,
    /// Every record as of the watch (`list` answers from it).
    seen: RwLock<BTreeMap<String, ExportRecord>>,
    /// The leases of the jobs this replica runs, by export id.
    held: Mutex<HashMap<String, Lease>>,
}

fn unavailable(error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

impl KvRecords {
    /// The record `export_id` and its revision, fresh from the bucket.
    async fn read(&self, export_id: &str) -> Result<Option<(ExportRecord, u64)>, RegistryError> {
        let entry = tokio::time::timeout(REQUEST_TIMEOUT, self.kv.entry(export_id))
            .await
            .map_err(|_| unavailable("the jobs bucket did not answer in time"))?
            .map_err(|error| unavailable(super::describe(&error)))?;
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record: ExportRecord = serde_json::from_slice(&entry.value)
            .map_err(|error| unavailable(format!("export record {export_id}: {error}")))?;
        Ok(Some((record, entry.revision)))
    }

    /// Applies `change` to the record with compare-and-set (re-read and retried when another
    /// replica wrote in between). `change` returns `false` to write nothing. Returns the record
    /// as stored afterwards.
    async fn change(
        &self,
        export_id: &str,
        mut change: impl FnMut(&mut ExportRecord) -> bool,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.read(export_id).await? else {
                return Ok(None);
            };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            let body = Bytes::from(serde_json::to_vec(&record).map_err(unavailable)?);
            let update = self.kv.update(export_id, body, revision);
            match tokio::time::timeout(REQUEST_TIMEOUT, update).await {
                Ok(Ok(_)) => {
                    self.seen
                        .write()
                        .insert(export_id.to_string(), record.clone());
                    return Ok(Some(record));
                }
                Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Ok(Err(error)) => return Err(unavailable(super::describe(&error))),
                Err(_) => return Err(unavailable("the jobs bucket did not answer in time")),
            }
        }
        Err(unavailable(format!(
            "export record {export_id} kept changing under {CAS_ATTEMPTS} attempts"
        )))
    }

    /// The lease of `job` when this replica still holds it.
    fn lease(&self, job: &Job) -> Option<Lease> {
        self.held
            .lock()
            .get(&job.export_id)
            .filter(|lease| lease.is_held())
            .cloned()
    }

    fn lost(job: &Job) -> ExportFailure {
        tracing::warn!(export_id = %job.export_id, "the export's lease is no longer this replica's");
        ExportFailure::new(
            "lease_lost",
            "this replica no longer runs the export; another one continues it",
        )
    }

    /// A running job's record change, made only under its lease; a cancelled record stops the
    /// job.
    async fn change_running(
        &self,
        job: &Job,
        change: impl Fn(&mut ExportRecord),
    ) -> Result<(), ExportFailure> {
        if self.lease(job).is_none() {
            return Err(Self::lost(job));
        }
        let mut was_cancelled = false;
        let mut too_large = false;
        let changed = self
            .change(&job.export_id, |record| {
                was_cancelled = record.status.phase.is_terminal();
                if was_cancelled {
                    return false;
                }
                change(record);
                too_large =
                    serde_json::to_vec(record).map_or(true, |body| body.len() > MAX_RECORD_BYTES);
                !too_large
            })
            .await;
        match changed {
            Ok(Some(_)) if too_large => Err(ExportFailure::new(
                "too_many_parts",
                format!(
                    "in the clustered mode an export's record holds at most {MAX_RECORD_BYTES} \
                     bytes (about 2000 parts); raise max_records_per_file"
                ),
            )),
            Ok(Some(_)) if !was_cancelled => Ok(()),
            Ok(Some(_)) => Err(cancelled()),
            Ok(None) => Err(ExportFailure::new(
                "internal_error",
                "the export record vanished",
            )),
            Err(error) => {
                // The job stops here without recording anything (its lease is given back): a
                // replica that can reach the bucket resumes it from its last checkpoint.
                tracing::warn!(export_id = %job.export_id, %error, "could not record the export's progress; it stops here and is resumed from its last checkpoint");
                self.release(job).await;
                Err(Self::lost(job))
            }
        }
    }

    /// Drops and releases the lease of `job`.
    async fn release(&self, job: &Job) {
        let lease = self.held.lock().remove(&job.export_id);
        if let Some(lease) = lease {
            lease.release().await;
        }
    }
}

#[async_trait]
impl JobStore for KvRecords {
    async fn running(
        &self,
        job: &Job,
        checkpoint: &Checkpoint,
        _resumed: bool,
    ) -> Result<(), ExportFailure> {
        self.change_running(job, |record| runner::mark_running(record, checkpoint))
            .await
    }

    async fn progress(&self, job: &Job, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        self.change_running(job, |record| runner::record_progress(record, checkpoint))
            .await
    }

    async fn before_manifest(&self, job: &Job) -> Result<(), ExportFailure> {
        let Some(lease) = self.lease(job) else {
            return Err(Self::lost(job));
        };
        if let Err(error) = lease.confirm().await {
            tracing::warn!(export_id = %job.export_id, %error, "lease not confirmed before the manifest");
            return Err(Self::lost(job));
        }
        // Not cancelled in the meantime (the record is only read: writing it would need
        // another confirmation).
        match self.read(&job.export_id).await {
            Ok(Some((record, _))) if record.status.phase.is_terminal() => Err(cancelled()),
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ExportFailure::new(
                "internal_error",
                "the export record vanished",
            )),
            Err(error) => {
                tracing::warn!(export_id = %job.export_id, %error, "export record unreadable before the manifest");
                Err(ExportFailure::new(
                    "store_unavailable",
                    "the cluster's job bucket did not answer; the export will continue",
                ))
            }
        }
    }

    async fn finished(&self, job: &Job, outcome: Outcome) {
        // Only the lease holder records an outcome: a job stopped because its lease moved is
        // continued (and recorded) by the new holder.
        if self.lease(job).is_some() {
            let mut outcome = Some(outcome);
            let changed = self
                .change(&job.export_id, |record| {
                    match (record.status.phase.is_terminal(), outcome.take()) {
                        (false, Some(outcome)) => {
                            runner::record_outcome(record, outcome);
                            true
                        }
                        _ => false,
                    }
                })
                .await;
            if let Err(error) = changed {
                tracing::error!(export_id = %job.export_id, %error, "could not record how the export ended; another replica runs it again");
            }
        }
        self.release(job).await;
    }

    async fn stopped(&self, job: &Job, _why: StopReason) {
        // Shutdown or a lost lease: give it back so another replica continues at once.
        self.release(job).await;
    }
}

impl ClusterExports {
    /// Opens (creating if missing) the jobs bucket and returns the registry; call
    /// [`ClusterExports::spawn`] to start running jobs.
    pub async fn open(
        context: &jetstream::Context,
        settings: &ClusterExportSettings,
        engine: ExportEngine,
        leases: LeaseBucket,
    ) -> Result<ClusterExports, JobsBucketError> {
        let kv = open_bucket(context, settings).await?;
        let records = Arc::new(KvRecords {
            kv,
            seen: RwLock::default(),
            held: Mutex::default(),
        });
        let supervisor = Supervisor::new(
            Arc::new(engine.clone()),
            records.clone(),
            SupervisorSettings {
                max_concurrent: settings.max_concurrent,
                abort_failed: true,
                running: None,
            },
        );
        Ok(ClusterExports {
            inner: Arc::new(Inner {
                records,
                supervisor,
                store: engine.store().clone(),
                leases,
            }),
        })
    }

    /// Follows the jobs bucket and runs the jobs whose lease this replica takes, until
    /// `shutdown`; then stops them (their leases are given back).
    pub fn spawn(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if !crate::export::supervisor::wait_for_store(&this.inner.store, "cluster exports")
                .await
            {
                return;
            }
            let watch = tokio::spawn(this.clone().follow(shutdown.clone()));
            let period = this.inner.leases.ttl() / 3;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(period) => {}
                }
                this.take_orphans().await;
            }
            let _ = watch.await;
            this.inner.supervisor.shutdown().await;
        })
    }

    /// Keeps the view of the bucket current, stops jobs cancelled elsewhere, and starts jobs
    /// as they appear. The watch starts with every job's current record (a replica that starts
    /// after a job was created lists it, and takes it over when its runner dies), then follows
    /// the changes.
    async fn follow(self, shutdown: CancellationToken) {
        loop {
            let watch = match self.inner.records.kv.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::warn!(error = %super::describe(&error), "cannot watch the export jobs bucket; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let watch = watch.take_until(shutdown.clone().cancelled_owned());
            let mut watch = std::pin::pin!(watch);
            while let Some(entry) = watch.next().await {
                match entry {
                    Ok(entry) => self.seen(entry).await,
                    Err(error) => {
                        tracing::warn!(error = %super::describe(&error), "the export jobs watch failed; reopening");
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// One entry of the watch.
    async fn seen(&self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            self.inner.records.seen.write().remove(&entry.key);
            return;
        }
        let record: ExportRecord = match serde_json::from_slice(&entry.value) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(key = %entry.key, %error, "an export record does not decode; ignored");
                return;
            }
        };
        let phase = record.status.phase;
        let export_id = record.export_id.clone();
        self.inner
            .records
            .seen
            .write()
            .insert(export_id.clone(), record.clone());
        if phase == ExportPhase::Cancelled && self.inner.supervisor.is_running(&export_id) {
            tracing::info!(%export_id, "export cancelled on another replica: stopping it here");
            self.inner.supervisor.stop(&export_id, StopReason::Cancel);
        } else if !phase.is_terminal() {
            self.try_run(&record).await;
        }
    }

    /// Tries to take every unfinished job that runs nowhere (its runner died, or it waited
    /// for a replica that has indexed its snapshot).
    async fn take_orphans(&self) {
        let waiting: Vec<ExportRecord> = self
            .inner
            .records
            .seen
            .read()
            .values()
            .filter(|record| !record.status.phase.is_terminal())
            .cloned()
            .collect();
        for record in waiting {
            self.try_run(&record).await;
        }
    }

    /// Runs `record`'s job here if its lease can be taken.
    async fn try_run(&self, record: &ExportRecord) {
        let export_id = &record.export_id;
        if self.inner.supervisor.is_running(export_id)
            || self.inner.records.held.lock().contains_key(export_id)
        {
            return;
        }
        // A resumed job reads its snapshot from this replica's index: it must hold it.
        if let Some(checkpoint) = &record.status.checkpoint
            && checkpoint.snapshot_seq > self.inner.store.committed_seq()
        {
            return;
        }
        let lease = match self
            .inner
            .leases
            .try_acquire(&format!("export.{export_id}"))
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%export_id, %error, "cannot take the export's lease");
                return;
            }
        };
        // The record as it is now that nobody else can change it (but a cancel).
        let fresh = match self.inner.records.read(export_id).await {
            Ok(Some((fresh, _))) if !fresh.status.phase.is_terminal() => fresh,
            Ok(_) => return lease.release().await,
            Err(error) => {
                tracing::warn!(%export_id, %error, "cannot read the export record");
                return lease.release().await;
            }
        };
        if fresh.status.checkpoint.is_some() {
            tracing::info!(%export_id, holder = self.inner.leases.holder(), "resuming export");
        }
        self.hold(export_id, &lease);
        if !self.inner.supervisor.spawn(job_of(&fresh)) {
            self.inner.records.held.lock().remove(export_id);
            lease.release().await;
        }
    }

    /// Keeps `lease` renewed while the job runs; losing it stops the job here.
    fn hold(&self, export_id: &str, lease: &Lease) {
        self.inner
            .records
            .held
            .lock()
            .insert(export_id.to_string(), lease.clone());
        lease.keep();
        let ended = lease.ended();
        let lease = lease.clone();
        let supervisor = self.inner.supervisor.clone();
        let export_id = export_id.to_string();
        tokio::spawn(async move {
            ended.cancelled().await;
            if !lease.is_held() && supervisor.is_running(&export_id) {
                tracing::warn!(%export_id, "export lease lost: stopping the job here");
                supervisor.stop(&export_id, StopReason::Shutdown);
            }
        });
    }
}

async fn open_bucket(
    context: &jetstream::Context,
    settings: &ClusterExportSettings,
) -> Result<kv::Store, JobsBucketError> {
    let config = kv::Config {
        bucket: settings.bucket.clone(),
        description: "scaivault-audit export jobs".into(),
        history: 1,
        max_value_size: MAX_VALUE_BYTES,
        storage: jetstream::stream::StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    super::kv::open_or_create(context, config)
        .await
        .map_err(|message| JobsBucketError {
            bucket: settings.bucket.clone(),
            message,
        })
}

#[async_trait]
impl ExportRegistry for ClusterExports {
    async fn create(&self, record: ExportRecord) -> Result<ExportRecord, RegistryError> {
        let body = Bytes::from(serde_json::to_vec(&record).map_err(unavailable)?);
        let created = self.inner.records.kv.create(&record.export_id, body);
        match tokio::time::timeout(REQUEST_TIMEOUT, created).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(unavailable(super::describe(&error))),
            Err(_) => return Err(unavailable("the jobs bucket did not answer in time")),
        }
        self.inner
            .records
            .seen
            .write()
            .insert(record.export_id.clone(), record.clone());
        let this = self.clone();
        let pending = record.clone();
        tokio::spawn(async move { this.try_run(&pending).await });
        Ok(record)
    }

    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        Ok(self
            .inner
            .records
            .read(export_id)
            .await?
            .map(|(record, _)| record)
            .filter(|record| record.spec.tenant_id == tenant))
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError> {
        Ok(registry::page(
            &self.inner.records.seen.read(),
            tenant,
            after,
            limit,
        ))
    }

    /// Writes `cancelled` into the record; the runner (here or on another replica) sees it
    /// and stops. A job running here is waited for (at most [`CANCEL_WAIT`]).
    async fn cancel(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        let Some(record) = self.get(tenant, export_id).await? else {
            return Ok(None);
        };
        if record.status.phase.is_terminal() {
            return Err(RegistryError::Finished(export_id.to_string()));
        }
        let mut finished_first = false;
        let changed = self
            .inner
            .records
            .change(export_id, |record| {
                finished_first = record.status.phase.is_terminal();
                if finished_first {
                    return false;
                }
                runner::record_outcome(record, Outcome::Cancelled);
                true
            })
            .await?;
        if finished_first {
            return Err(RegistryError::Finished(export_id.to_string()));
        }
        if self.inner.supervisor.is_running(export_id) {
            self.inner
                .supervisor
                .stop_and_wait(export_id, StopReason::Cancel, CANCEL_WAIT)
                .await;
        }
        Ok(changed.filter(|record| record.spec.tenant_id == tenant))
    }
}
