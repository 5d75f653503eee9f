//! The operator's side of the export job supervisor ([`crate::export::supervisor`]): the
//! AuditExport resources as its [`JobStore`]. While a job runs, [`ResourceJobs`] keeps its
//! resource's status and sends every change to the [`StatusWriter`] (server-side apply):
//! `Running`, every checkpoint, then `Completed` / `Failed` / `Cancelled`, each with its Event.

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::convert;
use super::crd::{AuditExportStatus, ExportJobPhase};
use super::metrics::OperatorMetrics;
use super::status::{self, Clock, reasons};
use super::status_writer::{Note, StatusWriter, Target};
use crate::export::engine::ExportOutcome;
use crate::export::job::{Checkpoint, ExportFailure};
use crate::export::supervisor::{Job, JobStore, Outcome, StopReason};

/// The job of a resource that runs in this process: where its status goes, and the status.
struct Tracked {
    target: Target,
    status: AuditExportStatus,
}

/// The AuditExport resources as the supervisor's job store (jobs keyed `namespace/name`).
pub struct ResourceJobs {
    writer: StatusWriter,
    tracked: Mutex<HashMap<String, Tracked>>,
    metrics: OperatorMetrics,
    clock: Clock,
}

impl ResourceJobs {
    pub fn new(writer: StatusWriter, metrics: OperatorMetrics, clock: Clock) -> Self {
        ResourceJobs {
            writer,
            tracked: Mutex::default(),
            metrics,
            clock,
        }
    }

    /// Remembers the resource and status of the job `key` before it is spawned.
    pub fn track(&self, key: &str, target: Target, status: AuditExportStatus) {
        self.tracked
            .lock()
            .insert(key.to_string(), Tracked { target, status });
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
        let note = if resumed {
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
            Outcome::Completed(outcome) => self.completed(&job.key, outcome).await,
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
        self.forget(&job.key);
    }

    async fn stopped(&self, job: &Job, _why: StopReason) {
        self.forget(&job.key);
    }
}

impl ResourceJobs {
    async fn completed(&self, key: &str, outcome: ExportOutcome) {
        let note = Note::normal(
            reasons::COMPLETED,
            format!(
                "{} records exported in {} files",
                outcome.record_count,
                outcome.files.len()
            ),
        );
        self.update(
            key,
            |status, now| {
                status.files = outcome.files.iter().map(convert::export_file).collect();
                status.record_count = Some(outcome.record_count);
                status.completed_at = Some(outcome.completed_at.clone());
                status.checkpoint = None;
                status::set_phase(status, ExportJobPhase::Completed, None, now);
            },
            Some(note),
        )
        .await;
    }
}
