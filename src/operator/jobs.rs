//! The operator's side of the export job supervisor ([`crate::export::supervisor`]): the
//! AuditExport resources as its [`JobStore`]. While a job runs, [`ResourceJobs`] keeps its
//! resource's status and sends every change to the [`StatusWriter`] (server-side apply):
//! `Running`, every checkpoint, then `Completed` / `Failed` / `Cancelled`, each with its Event.
//! The full file list of each checkpoint goes to the job's progress file ([`super::progress`]);
//! the status keeps the totals and the first files.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::convert;
use super::crd::{AuditExportStatus, ExportJobPhase};
use super::metrics::OperatorMetrics;
use super::progress::{Progress, ProgressFiles};
use super::status::{self, Clock, reasons};
use super::status_writer::{Note, StatusWriter, Target};
use crate::export::engine::ExportOutcome;
use crate::export::job::{Checkpoint, ExportFailure};
use crate::export::supervisor::{Job, JobStore, Outcome, StopReason};

/// The job of a resource that runs in this process: where its status goes, and the status.
struct Tracked {
    target: Target,
    status: AuditExportStatus,
    /// The resource's `metadata.uid`: names its progress file.
    uid: Option<String>,
    /// Why the job starts over instead of resuming (reported when it runs).
    restart: Option<String>,
}

/// What [`ResourceJobs::track`] keeps about a job besides its status.
#[derive(Debug, Clone, Default)]
pub struct Tracking {
    /// The resource's `metadata.uid`.
    pub uid: Option<String>,
    /// Why the job starts over from its first part ([`super::progress::Restored::restart`]).
    pub restart: Option<String>,
}

/// The AuditExport resources as the supervisor's job store (jobs keyed `namespace/name`).
pub struct ResourceJobs {
    writer: StatusWriter,
    tracked: Mutex<HashMap<String, Tracked>>,
    metrics: OperatorMetrics,
    clock: Clock,
    progress: ProgressFiles,
}

impl ResourceJobs {
    pub fn new(
        writer: StatusWriter,
        metrics: OperatorMetrics,
        clock: Clock,
        progress: ProgressFiles,
    ) -> Self {
        ResourceJobs {
            writer,
            tracked: Mutex::default(),
            metrics,
            clock,
            progress,
        }
    }

    /// Remembers the resource and status of the job `key` before it is spawned.
    pub fn track(&self, key: &str, target: Target, status: AuditExportStatus, tracking: Tracking) {
        let tracked = Tracked {
            target,
            status,
            uid: tracking.uid,
            restart: tracking.restart,
        };
        self.tracked.lock().insert(key.to_string(), tracked);
    }

    /// Why job `key` starts over instead of resuming (once).
    fn take_restart(&self, key: &str) -> Option<String> {
        self.tracked
            .lock()
            .get_mut(key)
            .and_then(|job| job.restart.take())
    }

    /// The uid of job `key`'s resource.
    fn uid(&self, key: &str) -> Option<String> {
        self.tracked.lock().get(key).and_then(|job| job.uid.clone())
    }

    /// Writes `checkpoint`'s file list to the progress file of job `key`. A failure is logged,
    /// not fatal: a resume that finds no matching file restarts from the first part.
    async fn save_progress(&self, key: &str, checkpoint: &Checkpoint) {
        let Some(uid) = self.uid(key) else {
            return;
        };
        let files = self.progress.clone();
        let progress = Progress {
            snapshot_seq: checkpoint.snapshot_seq,
            files: checkpoint.files.clone(),
        };
        let saved = tokio::task::spawn_blocking(move || files.save(&uid, &progress)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, key, "failed to save the export's progress"),
            Err(error) => tracing::warn!(%error, key, "failed to save the export's progress"),
        }
    }

    /// Removes the progress file of job `key` (the export ended or its resource is gone).
    async fn remove_progress(&self, key: &str) {
        let Some(uid) = self.uid(key) else {
            return;
        };
        let files = self.progress.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || files.remove(&uid)).await {
            tracing::warn!(%error, key, "failed to remove the export's progress");
        }
    }

    /// Changes the status of the job `key` and sends it (with `note`) to the writer.
    async fn update(
        &self,
        key: &str,
        change: impl FnOnce(&mut AuditExportStatus, k8s_openapi::jiff::Timestamp),
        note: Option<Note>,
    ) {
        let now = (self.clock)();
        let write = {
            let mut tracked = self.tracked.lock();
            tracked.get_mut(key).map(|job| {
                change(&mut job.status, now);
                (job.target.clone(), job.status.clone())
            })
        };
        match write {
            Some((target, status)) => self.writer.submit(target, status, note).await,
            None => tracing::warn!(key, "status change of an untracked export job dropped"),
        }
    }

    fn forget(&self, key: &str) {
        self.tracked.lock().remove(key);
    }
}

#[async_trait]
impl JobStore for ResourceJobs {
    async fn running(
        &self,
        job: &Job,
        checkpoint: &Checkpoint,
        resumed: bool,
    ) -> Result<(), ExportFailure> {
        self.save_progress(&job.key, checkpoint).await;
        let note = if let Some(restart) = self.take_restart(&job.key) {
            Note::warning(reasons::RESTARTED, restart)
        } else if resumed {
            Note::normal(
                reasons::RESUMED,
                format!("resumed after {} files", checkpoint.files.len()),
            )
        } else {
            Note::normal(
                reasons::STARTED,
                format!("export {} started", job.export_id),
            )
        };
        self.update(
            &job.key,
            |status, now| {
                status
                    .started_at
                    .get_or_insert_with(|| status::rfc3339(now));
                convert::record_checkpoint(status, checkpoint);
                status::set_phase(status, ExportJobPhase::Running, None, now);
            },
            Some(note),
        )
        .await;
        self.metrics.job_phase(ExportJobPhase::Running);
        Ok(())
    }

    /// A status that cannot be written is logged, not fatal: the next write catches up.
    async fn progress(&self, job: &Job, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        self.save_progress(&job.key, checkpoint).await;
        self.update(
            &job.key,
            |status, now| {
                convert::record_checkpoint(status, checkpoint);
                status::refresh_conditions(status, now);
            },
            None,
        )
        .await;
        Ok(())
    }

    async fn finished(&self, job: &Job, outcome: Outcome) {
        let phase = match &outcome {
            Outcome::Completed(_) => ExportJobPhase::Completed,
            Outcome::Failed(_) => ExportJobPhase::Failed,
            Outcome::Cancelled => ExportJobPhase::Cancelled,
        };
        match outcome {
            Outcome::Completed(outcome) => self.completed(job, outcome).await,
            Outcome::Failed(failure) => {
                let note = Note::warning(reasons::EXPORT_FAILED, failure.to_string());
                self.update(
                    &job.key,
                    |status, now| status::set_failed(status, &failure, None, now),
                    Some(note),
                )
                .await;
            }
            Outcome::Cancelled => {
                let note = Note::normal(reasons::CANCELLED, "the export was cancelled");
                self.update(
                    &job.key,
                    |status, now| {
                        status.checkpoint = None;
                        status::set_phase(status, ExportJobPhase::Cancelled, None, now);
                    },
                    Some(note),
                )
                .await;
            }
        }
        self.metrics.job_phase(phase);
        self.remove_progress(&job.key).await;
        self.forget(&job.key);
    }

    /// Shutdown and lost leadership keep the progress file (the next run resumes from it);
    /// a deleted resource's goes.
    async fn stopped(&self, job: &Job, why: StopReason) {
        if why == StopReason::Delete {
            self.remove_progress(&job.key).await;
        }
        self.forget(&job.key);
    }
}

impl ResourceJobs {
    async fn completed(&self, job: &Job, outcome: ExportOutcome) {
        let note = Note::normal(
            reasons::COMPLETED,
            format!(
                "{} records exported in {} files",
                outcome.record_count,
                outcome.files.len()
            ),
        );
        let manifest = job.spec.manifest_key();
        self.update(
            &job.key,
            |status, now| {
                convert::record_files(status, &outcome.files);
                status.record_count = Some(outcome.record_count);
                status.manifest = Some(manifest);
                status.completed_at = Some(outcome.completed_at.clone());
                status.checkpoint = None;
                status::set_phase(status, ExportJobPhase::Completed, None, now);
            },
            Some(note),
        )
        .await;
    }
}
