//! Runs due schedules on the export engine (standalone mode).
//!
//! ```text
//! loop: for every schedule not running whose next tick (or retry) is due
//!     ─▶ task: wait for a slot ─▶ skip an empty window, or
//!        start the run (snapshot S_k, window, prefix: persisted before anything is written)
//!        ─▶ engine.run (each part: checkpoint persisted) ─▶ manifest
//!        ─▶ completed: watermark := (T_k, S_k), history, next tick   (persisted)
//!        ─▶ failed: retry after a backoff with the same run           (persisted)
//! ```
//! A run interrupted by shutdown resumes from its checkpoint after the restart; ticks missed
//! while the service was down run one after the other, in order, each its own window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::files::{FilesError, ScheduleFiles};
use super::{
    CurrentRun, DEFAULT_MIN_INTERVAL_SECONDS, MAX_SCHEDULES_PER_TENANT, NextRun, ScheduleRecord,
};
use crate::export::engine::{ExportEngine, ProgressReporter};
use crate::export::job::{Checkpoint, ExportFailure};
use crate::export::supervisor::wait_for_store;
use crate::timestamp;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Runs that export at once (of all schedules); more wait.
    pub max_concurrent: usize,
    /// Backoff after a run's first failure; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The shortest interval between two runs a new schedule may ask for, seconds
    /// (`[export] schedule_min_interval_seconds`).
    pub min_interval_seconds: u64,
    /// Where runs are counted.
    pub metrics: ScheduleMetrics,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            max_concurrent: 2,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            min_interval_seconds: DEFAULT_MIN_INTERVAL_SECONDS,
            metrics: ScheduleMetrics::default(),
        }
    }
}

/// Metrics of continuous exports (names get the registry's `scaivault_audit_` prefix).
#[derive(Debug, Clone, Default)]
pub struct ScheduleMetrics {
    /// Run attempts that ended, by `outcome` (`completed`, `failed`).
    pub runs: Family<OutcomeLabels, Counter>,
    /// Events delivered by completed runs (late ones included).
    pub records: Counter,
    /// Seconds the oldest schedule's `complete_through` lies behind now (0 without schedules);
    /// refreshed at least every 30 s.
    pub lag_seconds: Gauge,
}

/// The `outcome` label of [`ScheduleMetrics::runs`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl ScheduleMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ScheduleMetrics::default();
        // Both outcomes exist at zero from the start, so `increase()` sees the first failure.
        for outcome in ["completed", "failed"] {
            let _ = metrics.runs.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "export_schedule_runs",
            "Runs of export schedules that ended, by outcome (completed, failed)",
            metrics.runs.clone(),
        );
        registry.register(
            "export_schedule_records",
            "Events delivered by completed runs of export schedules",
            metrics.records.clone(),
        );
        registry.register(
            "export_schedule_lag_seconds",
            "Seconds the oldest export schedule's complete_through lies behind now",
            metrics.lag_seconds.clone(),
        );
        metrics
    }

    /// Counts a run attempt that ended (`completed` or `failed`).
    pub fn run_ended(&self, outcome: &'static str) {
        self.runs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets the lag from the oldest `complete_through` (microseconds; `None` without
    /// schedules) at `now_us`.
    pub fn set_lag(&self, oldest_watermark_us: Option<i64>, now_us: i64) {
        let oldest = oldest_watermark_us.unwrap_or(now_us).min(now_us);
        self.lag_seconds
            .set(now_us.saturating_sub(oldest).max(0) / 1_000_000);
    }
}

/// The wait before the next attempt of a run that failed `attempts` times before this
/// failure: `initial` doubling per failure up to `max` (the standalone scheduler and the
/// operator's AuditExportSchedule controller both use it).
pub fn retry_backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    initial.saturating_mul(1 << attempts.min(20)).min(max)
}

/// Why a schedule cannot be created or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The tenant has [`MAX_SCHEDULES_PER_TENANT`] schedules already.
    #[error("a tenant may have at most {MAX_SCHEDULES_PER_TENANT} export schedules")]
    TooMany,
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// The longest a schedule loop sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(30);

struct Entry {
    record: ScheduleRecord,
    /// Set while a task works on the schedule.
    running: Option<CancellationToken>,
}

struct Inner {
    engine: ExportEngine,
    files: ScheduleFiles,
    settings: SchedulerSettings,
    schedules: Mutex<BTreeMap<String, Entry>>,
    /// Serialises file writes with deletes, so a finishing run never resurrects a schedule.
    io: tokio::sync::Mutex<()>,
    wake: Notify,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The schedules of this process and the loop that runs them. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// The scheduler over the schedule files in `files` (loaded now), running on `engine`.
    pub fn new(engine: ExportEngine, files: ScheduleFiles, settings: SchedulerSettings) -> Self {
        let schedules = files
            .load_all()
            .into_iter()
            .map(|record| {
                let entry = Entry {
                    record,
                    running: None,
                };
                (entry.record.spec.schedule_id.clone(), entry)
            })
            .collect();
        Scheduler {
            inner: Arc::new(Inner {
                engine,
                files,
                slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
                settings,
                schedules: Mutex::new(schedules),
                io: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The shortest interval between two runs a new schedule may ask for, seconds.
    pub fn min_interval_seconds(&self) -> u64 {
        self.inner.settings.min_interval_seconds
    }

    /// Records a new schedule durably and wakes the loop.
    pub async fn create(&self, record: ScheduleRecord) -> Result<ScheduleRecord, ScheduleError> {
        let _io = self.inner.io.lock().await;
        let tenant = &record.spec.tenant_id;
        let count = self
            .inner
            .schedules
            .lock()
            .values()
            .filter(|entry| &entry.record.spec.tenant_id == tenant)
            .count();
        if count >= MAX_SCHEDULES_PER_TENANT {
            return Err(ScheduleError::TooMany);
        }
        save(&self.inner.files, &record).await?;
        let entry = Entry {
            record: record.clone(),
            running: None,
        };
        self.inner
            .schedules
            .lock()
            .insert(record.spec.schedule_id.clone(), entry);
        self.inner.wake.notify_one();
        Ok(record)
    }

    /// The schedule `schedule_id` of `tenant` (`None` also for another tenant's).
    pub fn get(&self, tenant: &str, schedule_id: &str) -> Option<ScheduleRecord> {
        self.inner
            .schedules
            .lock()
            .get(schedule_id)
            .filter(|entry| entry.record.spec.tenant_id == tenant)
            .map(|entry| entry.record.clone())
    }

    /// The schedules of `tenant`, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<ScheduleRecord> {
        self.inner
            .schedules
            .lock()
            .values()
            .filter(|entry| entry.record.spec.tenant_id == tenant)
            .map(|entry| entry.record.clone())
            .collect()
    }

    /// Deletes the schedule: a run in progress stops and its incomplete uploads are removed
    /// (files of completed runs stay). `None` when `tenant` has no such schedule.
    pub async fn delete(
        &self,
        tenant: &str,
        schedule_id: &str,
    ) -> Result<Option<ScheduleRecord>, ScheduleError> {
        let _io = self.inner.io.lock().await;
        let entry = {
            let mut schedules = self.inner.schedules.lock();
            let ours = schedules
                .get(schedule_id)
                .is_some_and(|entry| entry.record.spec.tenant_id == tenant);
            if !ours {
                return Ok(None);
            }
            schedules.remove(schedule_id)
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        self.inner.files.remove(schedule_id)?;
        match &entry.running {
            // The run task sees the schedule gone and removes its incomplete uploads.
            Some(cancel) => cancel.cancel(),
            None => {
                if let Some(current) = &entry.record.state.current {
                    abort(&self.inner.engine, current).await;
                }
            }
        }
        Ok(Some(entry.record))
    }

    /// Runs due schedules until [`Self::shutdown`] (once the store has replayed its WAL).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let scheduler = self.clone();
        tokio::spawn(async move {
            let store = scheduler.inner.engine.store().clone();
            let ready = tokio::select! {
                ready = wait_for_store(&store, "export schedules") => ready,
                () = scheduler.inner.shutdown.cancelled() => false,
            };
            if !ready {
                return;
            }
            scheduler.run_loop().await;
        })
    }

    /// Stops the loop and every run (a run resumes from its checkpoint after the restart).
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    async fn run_loop(&self) {
        loop {
            let now = timestamp::now_micros();
            let (due, wake_at) = self.due(now);
            for (schedule_id, cancel) in due {
                let inner = self.inner.clone();
                self.inner.tasks.spawn(async move {
                    run_task(&inner, &schedule_id, &cancel).await;
                    if let Some(entry) = inner.schedules.lock().get_mut(&schedule_id) {
                        entry.running = None;
                    }
                    inner.wake.notify_one();
                });
            }
            let sleep = u64::try_from(wake_at.saturating_sub(now))
                .map(Duration::from_micros)
                .unwrap_or_default()
                .clamp(Duration::from_millis(10), MAX_SLEEP);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.inner.wake.notified() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// The schedules due at `now` (marked running), and when the next one is.
    fn due(&self, now: i64) -> (Vec<(String, CancellationToken)>, i64) {
        let mut wake_at = now.saturating_add(MAX_SLEEP.as_micros() as i64);
        let mut due = Vec::new();
        let mut oldest = None;
        for (id, entry) in self.inner.schedules.lock().iter_mut() {
            let watermark = entry.record.state.watermark_us;
            oldest = Some(oldest.map_or(watermark, |oldest: i64| oldest.min(watermark)));
            if entry.running.is_some() {
                continue;
            }
            match entry.record.due(now) {
                NextRun::Wait(at) => wake_at = wake_at.min(at),
                NextRun::Skip | NextRun::Run => {
                    let cancel = self.inner.shutdown.child_token();
                    entry.running = Some(cancel.clone());
                    due.push((id.clone(), cancel));
                }
            }
        }
        self.inner.settings.metrics.set_lag(oldest, now);
        (due, wake_at)
    }
}

/// One step of one schedule: skip an empty tick, or run (or retry) its current run.
async fn run_task(inner: &Arc<Inner>, schedule_id: &str, cancel: &CancellationToken) {
    // A run retried after a failure may have left incomplete uploads.
    let earlier = record_of(inner, schedule_id).and_then(|record| record.state.current);
    let slot = tokio::select! {
        slot = inner.slots.clone().acquire_owned() => slot.ok(),
        () = cancel.cancelled() => None,
    };
    let Some(_slot) = slot else {
        // Deleted while waiting: what an earlier attempt left goes with the schedule.
        if let Some(current) = earlier
            && record_of(inner, schedule_id).is_none()
        {
            abort(&inner.engine, &current).await;
        }
        return;
    };
    let Some(record) = record_of(inner, schedule_id) else {
        return;
    };
    let now = timestamp::now_micros();
    match record.due(now) {
        NextRun::Wait(_) => {}
        NextRun::Skip => {
            update(inner, schedule_id, ScheduleRecord::skip_tick).await;
        }
        NextRun::Run => {
            let current = match record.state.current.clone() {
                Some(current) => current,
                None => match start_run(inner, schedule_id, &record).await {
                    Ok(Some(current)) => current,
                    Ok(None) => return,
                    Err(failure) => return failed(inner, schedule_id, failure).await,
                },
            };
            execute(inner, schedule_id, current, cancel).await;
        }
    }
}

/// Fixes the run's snapshot, window and prefix, durably, before anything is written.
async fn start_run(
    inner: &Arc<Inner>,
    schedule_id: &str,
    record: &ScheduleRecord,
) -> Result<Option<CurrentRun>, ExportFailure> {
    let checkpoint = inner.engine.start_checkpoint().await?;
    let current = record.plan_run(checkpoint, timestamp::now_micros());
    let planned = current.clone();
    let saved = update(inner, schedule_id, move |record| {
        record.state.current = Some(planned);
    })
    .await;
    Ok(saved.then_some(current))
}

/// Runs (or resumes) `current` and records how it ended.
async fn execute(
    inner: &Arc<Inner>,
    schedule_id: &str,
    current: CurrentRun,
    cancel: &CancellationToken,
) {
    tracing::info!(
        schedule_id,
        export_id = current.export_id,
        from = current.spec.from,
        to = current.spec.to,
        "scheduled export run"
    );
    let progress = RunProgress {
        inner: inner.clone(),
        schedule_id: schedule_id.to_string(),
    };
    let engine = &inner.engine;
    let result = engine
        .run(
            &current.export_id,
            &current.spec,
            current.checkpoint.clone(),
            &progress,
            cancel,
        )
        .await;
    if cancel.is_cancelled() {
        if record_of(inner, schedule_id).is_none() {
            abort(engine, &current).await;
        }
        return;
    }
    match result {
        Ok(outcome) => {
            let late = engine
                .late_summary(&current.spec, current.checkpoint.snapshot_seq)
                .await
                .unwrap_or_else(|failure| {
                    tracing::warn!(schedule_id, %failure, "late events not counted");
                    None
                });
            let files = outcome.files.len() as u64;
            let records = outcome.record_count;
            tracing::info!(
                schedule_id,
                export_id = current.export_id,
                records,
                "scheduled export run completed"
            );
            let metrics = &inner.settings.metrics;
            metrics.run_ended("completed");
            metrics.records.inc_by(records);
            update(inner, schedule_id, move |record| {
                record.complete(late, files, records, timestamp::now_micros());
            })
            .await;
        }
        Err(failure) => failed(inner, schedule_id, failure).await,
    }
}

/// Records a failed attempt; the run is retried after a backoff.
async fn failed(inner: &Arc<Inner>, schedule_id: &str, failure: ExportFailure) {
    let settings = &inner.settings;
    settings.metrics.run_ended("failed");
    let attempts = record_of(inner, schedule_id)
        .and_then(|record| record.state.failure.map(|failure| failure.attempts))
        .unwrap_or(0);
    let backoff = retry_backoff(settings.retry_initial, settings.retry_max, attempts);
    tracing::warn!(schedule_id, %failure, attempts = attempts + 1, retry_in_ms = backoff.as_millis() as u64, "scheduled export run failed; retrying");
    let backoff_us = i64::try_from(backoff.as_micros()).unwrap_or(i64::MAX);
    update(inner, schedule_id, move |record| {
        record.fail(failure, backoff_us, timestamp::now_micros());
    })
    .await;
}

fn record_of(inner: &Inner, schedule_id: &str) -> Option<ScheduleRecord> {
    inner
        .schedules
        .lock()
        .get(schedule_id)
        .map(|entry| entry.record.clone())
}

/// Applies `change` to the schedule and writes it durably; `false` when the schedule is gone
/// or the file could not be written (logged; the change is then not kept in memory either).
async fn update(
    inner: &Arc<Inner>,
    schedule_id: &str,
    change: impl FnOnce(&mut ScheduleRecord),
) -> bool {
    let _io = inner.io.lock().await;
    let Some(mut record) = record_of(inner, schedule_id) else {
        return false;
    };
    change(&mut record);
    if let Err(error) = save(&inner.files, &record).await {
        tracing::error!(schedule_id, %error, "a schedule could not be recorded");
        return false;
    }
    if let Some(entry) = inner.schedules.lock().get_mut(schedule_id) {
        entry.record = record;
    }
    true
}

async fn save(files: &ScheduleFiles, record: &ScheduleRecord) -> Result<(), FilesError> {
    let files = files.clone();
    let record = record.clone();
    tokio::task::spawn_blocking(move || files.save(&record))
        .await
        .unwrap_or_else(|error| {
            Err(FilesError::Io {
                path: std::path::PathBuf::new(),
                source: std::io::Error::other(error.to_string()),
            })
        })
}

async fn abort(engine: &ExportEngine, current: &CurrentRun) {
    if let Err(failure) = engine.abort(&current.export_id, &current.spec).await {
        tracing::warn!(export_id = current.export_id, %failure, "incomplete uploads of a deleted schedule's run not removed");
    }
}

/// Persists each part's checkpoint in the schedule's current run.
struct RunProgress {
    inner: Arc<Inner>,
    schedule_id: String,
}

#[async_trait]
impl ProgressReporter for RunProgress {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        let checkpoint = checkpoint.clone();
        let saved = update(&self.inner, &self.schedule_id, move |record| {
            if let Some(current) = &mut record.state.current {
                current.checkpoint = checkpoint;
            }
        })
        .await;
        if saved {
            Ok(())
        } else {
            Err(ExportFailure::new(
                "schedule_unavailable",
                "the schedule's progress could not be recorded",
            ))
        }
    }
}
