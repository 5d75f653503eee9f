//! The export job supervisor, one for both modes: at most N jobs run at once (the rest wait in
//! `Pending`), each can be stopped with a reason, and every change of a job is recorded in a
//! [`JobStore`]: the job files in the data directory (standalone, [`super::runner`]) or the
//! AuditExport resources (operator, `operator::jobs`).
//!
//! ```text
//! spawn(job) ─▶ wait for a slot ─▶ checkpoint (resumed, or a new snapshot) ─▶ store.running
//!     ─▶ engine.run ──(each part)──▶ store.progress
//!     ─▶ store.finished(Completed | Failed | Cancelled)   or, stopped for Delete/Shutdown,
//!        store.stopped (the status stays as it is: the next run resumes from the checkpoint)
//! ```
//!
//! The supervisor owns the running set (keys, cancellation tokens, stop reasons) and the slots;
//! the store owns what is recorded about a job; the engine owns the work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{ExportEngine, ExportOutcome, ProgressReporter};
use super::job::{Checkpoint, ExportFailure, ExportSpec};
use crate::store::Store;

/// Why a job is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Cancelled through the REST API: abort uploads, record `Cancelled`.
    Cancel,
    /// The resource is being deleted: its finalizer cleans up, nothing is recorded.
    Delete,
    /// Shutdown or lost leadership: nothing is recorded; the job resumes from its checkpoint
    /// after the restart (or on the next leader).
    Shutdown,
}

/// One export job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// What the job is known by in its store: the export id (standalone) or
    /// `namespace/name` (operator).
    pub key: String,
    pub export_id: String,
    pub spec: ExportSpec,
    /// Where to continue; `None` for a job that never started (it takes a new snapshot).
    pub checkpoint: Option<Checkpoint>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(ExportOutcome),
    Failed(ExportFailure),
    Cancelled,
}

/// Where the supervisor records its jobs' phases, checkpoints and outcomes.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// The job runs from `checkpoint` (`Running`); `resumed` when it ran before. An error
    /// fails the job.
    async fn running(
        &self,
        job: &Job,
        checkpoint: &Checkpoint,
        resumed: bool,
    ) -> Result<(), ExportFailure>;
    /// A part was uploaded: record the checkpoint. An error stops the job (failed).
    async fn progress(&self, job: &Job, checkpoint: &Checkpoint) -> Result<(), ExportFailure>;
    /// Every part is uploaded and the manifest comes next: an error stops the job without it
    /// (the cluster's store confirms the job's lease here).
    async fn before_manifest(&self, _job: &Job) -> Result<(), ExportFailure> {
        Ok(())
    }
    /// The job ended: `Completed`, `Failed` or `Cancelled`.
    async fn finished(&self, job: &Job, outcome: Outcome);
    /// The job was stopped for `why` ([`StopReason::Delete`] or [`StopReason::Shutdown`]):
    /// nothing is recorded; the store may forget what it kept for the job.
    async fn stopped(&self, _job: &Job, _why: StopReason) {}
    /// The jobs to continue after a restart (pending or running). The operator's resources
    /// come back through the controller's watch instead, so its store lists none.
    fn resumable(&self) -> Vec<Job> {
        Vec::new()
    }
}

/// What the supervisor needs from the export engine (the operator's tests script it).
#[async_trait]
pub trait JobEngine: Send + Sync + 'static {
    /// A checkpoint for a job starting now (fixes its snapshot).
    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure>;
    /// Runs (or resumes) a job until it completes, fails or `cancel` fires.
    async fn run(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure>;
    /// Removes the incomplete uploads of a job that will not finish.
    async fn abort(&self, export_id: &str, spec: &ExportSpec) -> Result<(), ExportFailure>;
}

#[async_trait]
impl JobEngine for ExportEngine {
    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
        ExportEngine::start_checkpoint(self).await
    }

    async fn run(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        ExportEngine::run(self, export_id, spec, checkpoint, progress, cancel).await
    }

    async fn abort(&self, export_id: &str, spec: &ExportSpec) -> Result<(), ExportFailure> {
        ExportEngine::abort(self, export_id, spec).await
    }
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Jobs that run at once; more wait for a slot.
    pub max_concurrent: usize,
    /// Remove the incomplete uploads of a failed job at once (standalone: nothing else ever
    /// would). The operator leaves them to the resource's finalizer.
    pub abort_failed: bool,
    /// Counts the jobs that hold a slot (the operator's `running_jobs`).
    pub running: Option<Gauge>,
}

/// How long [`Supervisor::stop_all`] waits for each job.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    done: CancellationToken,
}

/// Runs export jobs: one task per job, at most `max_concurrent` at once. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn JobEngine>,
    store: Arc<dyn JobStore>,
    settings: SupervisorSettings,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<String, Running>>,
    tasks: TaskTracker,
}

impl Supervisor {
    /// A supervisor running jobs on `engine` and recording them in `store`.
    pub fn new(
        engine: Arc<dyn JobEngine>,
        store: Arc<dyn JobStore>,
        settings: SupervisorSettings,
    ) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                engine,
                store,
                slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
                settings,
                running: Mutex::default(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Whether the job of `key` runs (or waits for a slot).
    pub fn is_running(&self, key: &str) -> bool {
        self.inner
            .running
            .lock()
            .get(key)
            .is_some_and(|job| !job.done.is_cancelled())
    }

    /// Starts `job` unless a job of the same key runs; `false` when it already ran.
    pub fn spawn(&self, job: Job) -> bool {
        let mut running = self.inner.running.lock();
        if running
            .get(&job.key)
            .is_some_and(|job| !job.done.is_cancelled())
        {
            return false;
        }
        let entry = Running {
            cancel: CancellationToken::new(),
            reason: Arc::default(),
            done: CancellationToken::new(),
        };
        let task = JobTask {
            inner: self.inner.clone(),
            cancel: entry.cancel.clone(),
            reason: entry.reason.clone(),
            job,
        };
        let done = entry.done.clone();
        let key = task.job.key.clone();
        running.insert(key.clone(), entry);
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            // `done` fires when the task ends, even by a panic.
            let _done = done.drop_guard();
            task.run().await;
            inner.running.lock().remove(&key);
        });
        true
    }

    /// Starts every job the store lists as resumable (after a restart).
    pub fn resume(&self) {
        for job in self.inner.store.resumable() {
            tracing::info!(export_id = %job.export_id, "resuming export");
            self.spawn(job);
        }
    }

    /// Asks the job of `key` to stop for `why` (no-op when none runs); the first reason given
    /// wins.
    pub fn stop(&self, key: &str, why: StopReason) {
        if let Some(job) = self.inner.running.lock().get(key) {
            job.reason.lock().get_or_insert(why);
            job.cancel.cancel();
        }
    }

    /// Stops the job of `key` and waits until its task ended (what it records is written), at
    /// most `timeout`; `false` when it did not end in time.
    pub async fn stop_and_wait(&self, key: &str, why: StopReason, timeout: Duration) -> bool {
        self.stop(key, why);
        let done = self
            .inner
            .running
            .lock()
            .get(key)
            .map(|job| job.done.clone());
        let Some(done) = done else {
            return true;
        };
        let ended = tokio::time::timeout(timeout, done.cancelled())
            .await
            .is_ok();
        if !ended {
            tracing::warn!(key, "export job did not stop in time");
        }
        ended
    }

    /// Stops every job for `why` (shutdown, lost leadership) and waits for them.
    pub async fn stop_all(&self, why: StopReason) {
        let keys: Vec<String> = self.inner.running.lock().keys().cloned().collect();
        for key in &keys {
            self.stop(key, why);
        }
        for key in keys {
            self.stop_and_wait(&key, why, STOP_TIMEOUT).await;
        }
    }

    /// Stops every job for shutdown and waits until all tasks ended (no new job starts).
    pub async fn shutdown(&self) {
        self.inner.tasks.close();
        self.stop_all(StopReason::Shutdown).await;
        self.inner.tasks.wait().await;
    }

    /// Waits until no job runs (tests).
    pub async fn wait_idle(&self) {
        loop {
            let pending: Vec<CancellationToken> = self
                .inner
                .running
                .lock()
                .values()
                .map(|job| job.done.clone())
                .filter(|done| !done.is_cancelled())
                .collect();
            if pending.is_empty() {
                return;
            }
            for done in pending {
                done.cancelled().await;
            }
        }
    }
}

/// One job's task.
struct JobTask {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    job: Job,
}

impl JobTask {
    async fn run(self) {
        let slot = tokio::select! {
            slot = self.inner.slots.clone().acquire_owned() => slot.ok(),
            () = self.cancel.cancelled() => None,
        };
        let Some(_slot) = slot else {
            // Stopped while waiting: never ran in this process.
            return self.ended(Err(super::engine::cancelled()), false).await;
        };
        let gauge = self.inner.settings.running.clone();
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        let result = self.execute().await;
        if let Some(gauge) = &gauge {
            gauge.dec();
        }
        self.ended(result, true).await;
    }

    /// Takes a snapshot (or resumes), records `Running`, runs the engine.
    async fn execute(&self) -> Result<ExportOutcome, ExportFailure> {
        let job = &self.job;
        let resumed = job.checkpoint.is_some();
        let checkpoint = match &job.checkpoint {
            Some(checkpoint) => checkpoint.clone(),
            None => self.inner.engine.start_checkpoint().await?,
        };
        self.inner.store.running(job, &checkpoint, resumed).await?;
        tracing::info!(
            export_id = %job.export_id,
            resumed_parts = checkpoint.files.len(),
            "export running"
        );
        let progress = StoreProgress {
            store: self.inner.store.as_ref(),
            job,
        };
        self.inner
            .engine
            .run(
                &job.export_id,
                &job.spec,
                checkpoint,
                &progress,
                &self.cancel,
            )
            .await
    }

    /// Records how the job ended; `started`: it held a slot (uploads may exist).
    async fn ended(&self, result: Result<ExportOutcome, ExportFailure>, started: bool) {
        let job = &self.job;
        let stopped = *self.reason.lock();
        let may_have_uploads = started || job.checkpoint.is_some();
        match (result, stopped) {
            (_, Some(why @ (StopReason::Shutdown | StopReason::Delete))) => {
                tracing::info!(export_id = %job.export_id, ?why, "export job stopped");
                self.inner.store.stopped(job, why).await;
            }
            (_, Some(StopReason::Cancel)) => {
                if may_have_uploads {
                    self.abort().await;
                }
                self.inner.store.finished(job, Outcome::Cancelled).await;
            }
            (Ok(outcome), None) => {
                self.inner
                    .store
                    .finished(job, Outcome::Completed(outcome))
                    .await;
            }
            (Err(failure), None) => {
                tracing::warn!(export_id = %job.export_id, %failure, "export failed");
                if self.inner.settings.abort_failed {
                    self.abort().await;
                }
                self.inner
                    .store
                    .finished(job, Outcome::Failed(failure))
                    .await;
            }
        }
    }

    /// Removes the job's incomplete uploads (failures are logged).
    async fn abort(&self) {
        let job = &self.job;
        if let Err(failure) = self.inner.engine.abort(&job.export_id, &job.spec).await {
            tracing::warn!(export_id = %job.export_id, code = failure.code, "failed to remove incomplete uploads");
        }
    }
}

/// The engine's progress callback: each checkpoint goes to the store.
struct StoreProgress<'a> {
    store: &'a dyn JobStore,
    job: &'a Job,
}

#[async_trait]
impl ProgressReporter for StoreProgress<'_> {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        self.store.progress(self.job, checkpoint).await
    }

    async fn before_manifest(&self) -> Result<(), ExportFailure> {
        self.store.before_manifest(self.job).await
    }
}

/// Waits until `store` has replayed its WAL (exports' snapshots must see every acknowledged
/// event), logging every minute; `false` when the store failed to start (no export runs).
pub async fn wait_for_store(store: &Store, who: &str) -> bool {
    loop {
        match store.wait_ready(Duration::from_secs(60)).await {
            Ok(()) => return true,
            Err(error) => {
                if store.health().startup_error.is_some() {
                    tracing::error!(%error, who, "the store failed to start: no export runs");
                    return false;
                }
                tracing::info!(who, "waiting for the store to finish replaying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::export::job::ExportSpec;
    use crate::export::request::ExportRequest;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Records every call, as `key:what`.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Log {
        fn push(&self, entry: String) {
            self.0.lock().push(entry);
        }

        fn entries(&self) -> Vec<String> {
            self.0.lock().clone()
        }
    }

    #[async_trait]
    impl JobStore for Log {
        async fn running(
            &self,
            job: &Job,
            checkpoint: &Checkpoint,
            resumed: bool,
        ) -> Result<(), ExportFailure> {
            let resumed = if resumed { " resumed" } else { "" };
            self.push(format!(
                "{}:running at {}{resumed}",
                job.key, checkpoint.snapshot_seq
            ));
            Ok(())
        }

        async fn progress(&self, job: &Job, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
            self.push(format!("{}:progress {}", job.key, checkpoint.snapshot_seq));
            Ok(())
        }

        async fn finished(&self, job: &Job, outcome: Outcome) {
            let outcome = match outcome {
                Outcome::Completed(_) => "completed".to_string(),
                Outcome::Failed(failure) => format!("failed {}", failure.code),
                Outcome::Cancelled => "cancelled".to_string(),
            };
            self.push(format!("{}:{outcome}", job.key));
        }

        async fn stopped(&self, job: &Job, why: StopReason) {
            self.push(format!("{}:stopped {why:?}", job.key));
        }

        fn resumable(&self) -> Vec<Job> {
            vec![job("r", Some(Checkpoint::start(7)))]
        }
    }

    /// Reports one checkpoint, then waits for cancellation, or fails when the export id says
    /// so; counts the jobs inside `run` at once.
    #[derive(Default)]
    struct Engine {
        log: Arc<Log>,
        inside: Mutex<(usize, usize)>,
    }

    #[async_trait]
    impl JobEngine for Engine {
        async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
            Ok(Checkpoint::start(1))
        }

        async fn run(
            &self,
            export_id: &str,
            _spec: &ExportSpec,
            checkpoint: Checkpoint,
            progress: &dyn ProgressReporter,
            cancel: &CancellationToken,
        ) -> Result<ExportOutcome, ExportFailure> {
            {
                let mut inside = self.inside.lock();
                inside.0 += 1;
                inside.1 = inside.1.max(inside.0);
            }
            progress.checkpoint(&checkpoint).await?;
            let result = if export_id == "fail" {
                Err(ExportFailure::new("destination_error", "gone"))
            } else {
                cancel.cancelled().await;
                Err(super::super::engine::cancelled())
            };
            self.inside.lock().0 -= 1;
            result
        }

        async fn abort(&self, export_id: &str, _spec: &ExportSpec) -> Result<(), ExportFailure> {
            self.log.push(format!("{export_id}:abort"));
            Ok(())
        }
    }

    fn job(key: &str, checkpoint: Option<Checkpoint>) -> Job {
        let spec = ExportRequest::from_body(
            &serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z",
                "format": "jsonl", "destination": {"type": "file", "bucket": "out"}}),
            "tnt_acme",
        )
        .and_then(ExportRequest::validate)
        .unwrap();
        Job {
            key: key.to_string(),
            export_id: key.to_string(),
            spec,
            checkpoint,
        }
    }

    fn supervisor(
        max_concurrent: usize,
        abort_failed: bool,
    ) -> (Supervisor, Arc<Log>, Arc<Engine>) {
        let log = Arc::new(Log::default());
        let engine = Arc::new(Engine {
            log: log.clone(),
            ..Engine::default()
        });
        let supervisor = Supervisor::new(
            engine.clone(),
            log.clone(),
            SupervisorSettings {
                max_concurrent,
                abort_failed,
                running: None,
            },
        );
        (supervisor, log, engine)
    }

    /// Waits until `log` holds `entry`.
    async fn logged(log: &Log, entry: &str) {
        tokio::time::timeout(TIMEOUT, async {
            while !log.entries().iter().any(|e| e == entry) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{entry} never logged: {:?}", log.entries()));
    }

    #[tokio::test]
    async fn jobs_wait_for_a_slot_and_stop_with_their_reason() {
        let (supervisor, log, engine) = supervisor(1, false);
        assert!(supervisor.spawn(job("a", None)));
        assert!(!supervisor.spawn(job("a", None)), "already running");
        logged(&log, "a:progress 1").await;
        supervisor.spawn(job("b", None));
        supervisor.spawn(job("c", Some(Checkpoint::start(5))));
        // b waits for the slot: cancelled there, it never ran and has nothing to abort.
        assert!(
            supervisor
                .stop_and_wait("b", StopReason::Cancel, TIMEOUT)
                .await
        );
        // a is cancelled while running: its uploads go, then Cancelled.
        assert!(
            supervisor
                .stop_and_wait("a", StopReason::Cancel, TIMEOUT)
                .await
        );
        // c resumes from its checkpoint in the freed slot; shutdown records nothing.
        logged(&log, "c:progress 5").await;
        supervisor.shutdown().await;
        assert_eq!(
            log.entries(),
            [
                "a:running at 1",
                "a:progress 1",
                "b:cancelled",
                "a:abort",
                "a:cancelled",
                "c:running at 5 resumed",
                "c:progress 5",
                "c:stopped Shutdown",
            ]
        );
        assert_eq!(engine.inside.lock().1, 1, "never more than one at once");
        assert!(!supervisor.is_running("c"));
    }

    #[tokio::test]
    async fn a_failed_job_is_recorded_and_its_uploads_removed_when_asked() {
        for abort_failed in [false, true] {
            let (supervisor, log, _) = supervisor(2, abort_failed);
            supervisor.spawn(job("fail", None));
            tokio::time::timeout(TIMEOUT, supervisor.wait_idle())
                .await
                .unwrap();
            let mut expected = vec!["fail:running at 1", "fail:progress 1"];
            if abort_failed {
                expected.push("fail:abort");
            }
            expected.push("fail:failed destination_error");
            assert_eq!(log.entries(), expected);
        }
    }

    #[tokio::test]
    async fn resume_starts_what_the_store_lists() {
        let (supervisor, log, _) = supervisor(2, false);
        supervisor.resume();
        logged(&log, "r:progress 7").await;
        assert!(supervisor.is_running("r"));
        supervisor
            .stop_and_wait("r", StopReason::Delete, TIMEOUT)
            .await;
        assert_eq!(
            log.entries(),
            ["r:running at 7 resumed", "r:progress 7", "r:stopped Delete"]
        );
    }
}
