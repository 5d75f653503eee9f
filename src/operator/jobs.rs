//! Export jobs of this process: one task per resource, at most N running at once (the rest
//! wait, `Pending`). Each task owns its resource's status while it runs and writes it through
//! server-side apply: `Running`, every checkpoint, then `Completed` / `Failed` / `Cancelled`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::events::{EventType, Recorder};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::controller::{Clock, patch_status, publish_with};
use super::convert;
use super::crd::{AuditExport, AuditExportStatus, ExportJobPhase};
use super::exporter::Exporter;
use super::metrics::OperatorMetrics;
use super::status::{self, reasons};
use crate::export::engine::{ExportOutcome, ProgressSink};
use crate::export::job::{Checkpoint, ExportFailure, ExportSpec};

/// Why a job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Cancelled through the REST API: abort uploads, report `Cancelled`.
    Cancel,
    /// The resource is being deleted: the finalizer cleans up.
    Delete,
    /// Shutdown or lost leadership: leave the status as is, the next leader resumes.
    Shutdown,
}

/// How long cleanup waits for a stopping job before aborting its uploads anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Status writes of a job are retried this many times (1, 2, 4, 8 s apart).
const STATUS_ATTEMPTS: u32 = 5;

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    handle: JoinHandle<()>,
}

/// The jobs of this process, keyed by `namespace/name`.
#[derive(Clone)]
pub struct Jobs {
    running: Arc<Mutex<HashMap<String, Running>>>,
    slots: Arc<Semaphore>,
    metrics: OperatorMetrics,
}

/// Everything a job task needs.
pub struct JobRequest {
    pub key: String,
    pub api: Api<AuditExport>,
    pub object: AuditExport,
    pub export_id: String,
    pub spec: ExportSpec,
    pub status: AuditExportStatus,
    /// `Some` to resume a job that ran in another process.
    pub checkpoint: Option<Checkpoint>,
    pub exporter: Arc<dyn Exporter>,
    pub recorder: Recorder,
    pub clock: Clock,
}

impl Jobs {
    pub fn new(max_concurrent: usize, metrics: OperatorMetrics) -> Self {
        Jobs {
            running: Arc::default(),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            metrics,
        }
    }

    /// Whether the job of `key` runs (or waits for a slot) in this process.
    pub fn is_running(&self, key: &str) -> bool {
        self.running
            .lock()
            .get(key)
            .is_some_and(|job| !job.handle.is_finished())
    }

    /// Starts the job unless it already runs.
    pub fn spawn(&self, request: JobRequest) {
        let mut running = self.running.lock();
        if running
            .get(&request.key)
            .is_some_and(|job| !job.handle.is_finished())
        {
            return;
        }
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let key = request.key.clone();
        let task = JobTask {
            request,
            cancel: cancel.clone(),
            reason: reason.clone(),
            slots: self.slots.clone(),
            metrics: self.metrics.clone(),
        };
        let handle = tokio::spawn(task.run());
        running.insert(
            key,
            Running {
                cancel,
                reason,
                handle,
            },
        );
    }

    /// Asks the job of `key` to stop (no-op when none runs).
    pub fn stop(&self, key: &str, why: StopReason) {
        if let Some(job) = self.running.lock().get(key) {
            job.reason.lock().get_or_insert(why);
            job.cancel.cancel();
        }
    }

    /// Stops the job of `key` and waits (bounded) until its task ended.
    pub async fn stop_and_wait(&self, key: &str, why: StopReason) {
        self.stop(key, why);
        let job = self.running.lock().remove(key);
        if let Some(job) = job
            && tokio::time::timeout(STOP_TIMEOUT, job.handle)
                .await
                .is_err()
        {
            tracing::warn!(key, "export job did not stop in time");
        }
    }

    /// Stops every job (shutdown, lost leadership) and waits for them.
    pub async fn stop_all(&self, why: StopReason) {
        let keys: Vec<String> = self.running.lock().keys().cloned().collect();
        for key in keys {
            self.stop_and_wait(&key, why).await;
        }
    }

    /// Waits until no job runs (tests).
    pub async fn wait_idle(&self) {
        loop {
            let handles: Vec<String> = self
                .running
                .lock()
                .iter()
                .filter(|(_, job)| !job.handle.is_finished())
                .map(|(key, _)| key.clone())
                .collect();
            if handles.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct JobTask {
    request: JobRequest,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    slots: Arc<Semaphore>,
    metrics: OperatorMetrics,
}

impl JobTask {
    async fn run(self) {
        let _slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = self.cancel.cancelled() => {
                self.stopped_before_start().await;
                return;
            }
        };
        self.metrics.running_jobs.inc();
        self.execute().await;
        self.metrics.running_jobs.dec();
    }

    async fn execute(&self) {
        let request = &self.request;
        let resumed = request.checkpoint.is_some();
        let sink = StatusSink {
            api: request.api.clone(),
            name: request.object.name_any(),
            status: Mutex::new(request.status.clone()),
            clock: request.clock.clone(),
        };
        let checkpoint = match &request.checkpoint {
            Some(checkpoint) => checkpoint.clone(),
            None => match request.exporter.start_checkpoint().await {
                Ok(checkpoint) => checkpoint,
                Err(failure) => return self.failed(&sink, &failure).await,
            },
        };
        sink.update(|status, now| {
            status
                .started_at
                .get_or_insert_with(|| status::rfc3339(now));
            convert::record_checkpoint(status, &checkpoint);
            status::set_phase(status, ExportJobPhase::Running, None, now);
        })
        .await;
        let (reason, note) = if resumed {
            (
                "Resumed",
                format!("resumed after {} files", checkpoint.files.len()),
            )
        } else {
            ("Started", format!("export {} started", request.export_id))
        };
        self.event(EventType::Normal, reason, &note).await;
        self.metrics.job_phase(ExportJobPhase::Running);
        let result = request
            .exporter
            .run(
                &request.export_id,
                &request.spec,
                checkpoint,
                &sink,
                &self.cancel,
            )
            .await;
        let stopped = *self.reason.lock();
        match (result, stopped) {
            (_, Some(StopReason::Shutdown | StopReason::Delete)) => {
                tracing::info!(export_id = %request.export_id, "export job stopped");
            }
            (_, Some(StopReason::Cancel)) => self.cancelled(&sink).await,
            (Ok(outcome), None) => self.completed(&sink, outcome).await,
            (Err(failure), None) => self.failed(&sink, &failure).await,
        }
    }

    async fn completed(&self, sink: &StatusSink, outcome: ExportOutcome) {
        sink.update(|status, now| {
            status.files = outcome.files.iter().map(convert::export_file).collect();
            status.record_count = Some(outcome.record_count);
            status.completed_at = Some(outcome.completed_at.clone());
            status.checkpoint = None;
            status::set_phase(status, ExportJobPhase::Completed, None, now);
        })
        .await;
        let note = format!(
            "{} records exported in {} files",
            outcome.record_count,
            outcome.files.len()
        );
        self.event(EventType::Normal, reasons::COMPLETED, &note)
            .await;
        self.metrics.job_phase(ExportJobPhase::Completed);
    }

    async fn failed(&self, sink: &StatusSink, failure: &ExportFailure) {
        tracing::warn!(export_id = %self.request.export_id, %failure, "export failed");
        sink.update(|status, now| status::set_failed(status, failure, None, now))
            .await;
        self.event(
            EventType::Warning,
            reasons::EXPORT_FAILED,
            &failure.to_string(),
        )
        .await;
        self.metrics.job_phase(ExportJobPhase::Failed);
    }

    async fn cancelled(&self, sink: &StatusSink) {
        let request = &self.request;
        if let Err(error) = request
            .exporter
            .abort(&request.export_id, &request.spec)
            .await
        {
            tracing::warn!(%error, export_id = %request.export_id, "failed to remove incomplete uploads");
        }
        sink.update(|status, now| {
            status.checkpoint = None;
            status::set_phase(status, ExportJobPhase::Cancelled, None, now);
        })
        .await;
        self.event(
            EventType::Normal,
            reasons::CANCELLED,
            "the export was cancelled",
        )
        .await;
        self.metrics.job_phase(ExportJobPhase::Cancelled);
    }

    /// Cancelled while waiting for a slot: nothing was uploaded.
    async fn stopped_before_start(&self) {
        if *self.reason.lock() != Some(StopReason::Cancel) {
            return;
        }
        let sink = StatusSink {
            api: self.request.api.clone(),
            name: self.request.object.name_any(),
            status: Mutex::new(self.request.status.clone()),
            clock: self.request.clock.clone(),
        };
        sink.update(|status, now| status::set_phase(status, ExportJobPhase::Cancelled, None, now))
            .await;
        self.event(
            EventType::Normal,
            reasons::CANCELLED,
            "the export was cancelled",
        )
        .await;
        self.metrics.job_phase(ExportJobPhase::Cancelled);
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        publish_with(
            &self.request.recorder,
            &self.request.object,
            type_,
            reason,
            note,
        )
        .await;
    }
}

/// The job's view of its resource's status; persists checkpoints for the engine.
struct StatusSink {
    api: Api<AuditExport>,
    name: String,
    status: Mutex<AuditExportStatus>,
    clock: Clock,
}

impl StatusSink {
    /// Changes the status and writes it, retrying transient failures. A status that cannot be
    /// written is logged, not fatal: the export goes on and a later write catches up.
    async fn update(
        &self,
        change: impl FnOnce(&mut AuditExportStatus, k8s_openapi::jiff::Timestamp),
    ) {
        let snapshot = {
            let mut status = self.status.lock();
            change(&mut status, (self.clock)());
            status.clone()
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=STATUS_ATTEMPTS {
            match patch_status(&self.api, &self.name, &snapshot).await {
                Ok(()) => return,
                Err(super::controller::Error::PatchStatus(kube::Error::Api(status)))
                    if status.is_not_found() =>
                {
                    return;
                }
                Err(error) if attempt < STATUS_ATTEMPTS => {
                    tracing::debug!(%error, attempt, "status write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(error) => {
                    tracing::warn!(%error, name = %self.name, "failed to write export status")
                }
            }
        }
    }
}

#[async_trait]
impl ProgressSink for StatusSink {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        self.update(|status, now| {
            convert::record_checkpoint(status, checkpoint);
            status::refresh_conditions(status, now);
        })
        .await;
        Ok(())
    }
}
