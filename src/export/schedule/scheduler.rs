//! Runs due schedules on the export engine, standalone and in a cluster outside Kubernetes
//! alike: the schedules live in a [`ScheduleStore`] (the data directory's files, or a JetStream
//! key-value bucket shared by the replicas), and runs happen only while this process holds the
//! scheduler role ([`SchedulerSettings::role`]: held for good standalone, a lease in a
//! cluster, `crate::cluster::schedules`).
//!
//! ```text
//! loop: for every schedule not running whose next tick (or retry) is due
//!     ─▶ task: wait for a slot ─▶ skip an empty window, or
//!        start the run (snapshot S_k, window, prefix: persisted before anything is written)
//!        ─▶ engine.run (each part: checkpoint persisted) ─▶ manifest
//!        ─▶ completed: watermark := (T_k, S_k), history, next tick   (persisted)
//!        ─▶ failed: retry after a backoff with the same run           (persisted)
//! ```
//! A run interrupted by shutdown resumes from its checkpoint after the restart (in a cluster:
//! on the replica that takes the role over); ticks missed while nobody ran them run one after
//! the other, in order, each its own window. Every write names the record's revision
//! ([`ScheduleStore::update`]): a write refused because the record changed elsewhere reloads it
//! and changes nothing here. A run starts (or resumes) only once this replica's index holds
//! the previous run's snapshot (and the run's own), so snapshots never go back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{Change, ScheduleStore, StoreError, Stored};
use super::{
    CurrentRun, DEFAULT_MIN_INTERVAL_SECONDS, MAX_SCHEDULES_PER_TENANT, NextRun, ScheduleRecord,
};
use crate::cluster::lease::RoleLease;
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
    /// Runs happen only while this is held: [`RoleLease::always`] standalone, the cluster's
    /// `role.export_scheduler` lease (`crate::cluster::schedules::SCHEDULER_ROLE`) in a cluster.
    pub role: RoleLease,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            max_concurrent: 2,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            min_interval_seconds: DEFAULT_MIN_INTERVAL_SECONDS,
            metrics: ScheduleMetrics::default(),
            role: RoleLease::always(crate::cluster::schedules::SCHEDULER_ROLE),
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
    Store(#[from] StoreError),
}

/// The longest a schedule loop sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How long a run waits before looking again when this replica's index is behind its snapshot.
const INDEX_WAIT: Duration = Duration::from_millis(500);
/// How long the changes of a shared store are waited for before watching again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

struct Entry {
    record: ScheduleRecord,
    /// The store revision `record` was read or written at.
    revision: u64,
    /// Set while a task works on the schedule.
    running: Option<CancellationToken>,
}

struct Inner {
    engine: ExportEngine,
    store: Arc<dyn ScheduleStore>,
    settings: SchedulerSettings,
    schedules: Mutex<BTreeMap<String, Entry>>,
    /// Serialises this process's writes, so a finishing run never resurrects a deleted
    /// schedule.
    io: tokio::sync::Mutex<()>,
    wake: Notify,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The schedules and the loop that runs them. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// The scheduler over the schedules in `store` (loaded now), running on `engine`.
    pub async fn open(
        engine: ExportEngine,
        store: Arc<dyn ScheduleStore>,
        settings: SchedulerSettings,
    ) -> Result<Self, StoreError> {
        let schedules = store
            .load_all()
            .await?
            .into_iter()
            .map(|stored| {
                let entry = Entry {
                    record: stored.record,
                    revision: stored.revision,
                    running: None,
                };
                (entry.record.spec.schedule_id.clone(), entry)
            })
            .collect();
        Ok(Scheduler {
            inner: Arc::new(Inner {
                engine,
                store,
                slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
                settings,
                schedules: Mutex::new(schedules),
                io: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The shortest interval between two runs a new schedule may ask for, seconds.
    pub fn min_interval_seconds(&self) -> u64 {
        self.inner.settings.min_interval_seconds
    }

    /// Records a new schedule durably and wakes the loop. In a cluster the per-tenant limit
    /// counts the schedules this replica has seen (two replicas creating at the same instant
    /// can each admit one more).
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
        let revision = self.inner.store.create(&record).await?;
        self.inner.apply(Change::Put(Stored {
            record: record.clone(),
            revision,
        }));
        Ok(record)
    }

    /// The schedule `schedule_id` of `tenant` (`None` also for another tenant's); read from
    /// the store when other replicas share it.
    pub async fn get(
        &self,
        tenant: &str,
        schedule_id: &str,
    ) -> Result<Option<ScheduleRecord>, ScheduleError> {
        let record = if self.inner.store.is_shared() {
            self.inner
                .store
                .read(schedule_id)
                .await?
                .map(|stored| stored.record)
        } else {
            record_of(&self.inner, schedule_id)
        };
        Ok(record.filter(|record| record.spec.tenant_id == tenant))
    }

    /// The schedules of `tenant`, oldest first (in a cluster: as this replica's watch of the
    /// store has seen them).
    pub fn list(&self, tenant: &str) -> Vec<ScheduleRecord> {
        self.inner
            .schedules
            .lock()
            .values()
            .filter(|entry| entry.record.spec.tenant_id == tenant)
            .map(|entry| entry.record.clone())
            .collect()
    }

    /// Deletes the schedule: a run in progress stops (here, or on the replica running it,
    /// which sees the removal) and its incomplete uploads are removed (files of completed runs
    /// stay). `None` when `tenant` has no such schedule.
    pub async fn delete(
        &self,
        tenant: &str,
        schedule_id: &str,
    ) -> Result<Option<ScheduleRecord>, ScheduleError> {
        let _io = self.inner.io.lock().await;
        let found = self.get(tenant, schedule_id).await?;
        let Some(record) = found else {
            return Ok(None);
        };
        self.inner.store.remove(schedule_id).await?;
        let entry = self.inner.schedules.lock().remove(schedule_id);
        match entry.and_then(|entry| entry.running) {
            // The run task sees the schedule gone and removes its incomplete uploads.
            Some(cancel) => cancel.cancel(),
            None => {
                if let Some(current) = &record.state.current {
                    abort(&self.inner.engine, current).await;
                }
            }
        }
        Ok(Some(record))
    }

    /// Follows the changes other replicas make and runs due schedules while holding the role,
    /// until [`Self::shutdown`] (runs start once the store has replayed its log).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let scheduler = self.clone();
        tokio::spawn(async move {
            if scheduler.inner.store.is_shared() {
                let follower = scheduler.clone();
                scheduler
                    .inner
                    .tasks
                    .spawn(async move { follower.follow().await });
            }
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

    /// Keeps the view of a shared store current: schedules created, changed or deleted on
    /// other replicas (a deleted one's run stops here).
    async fn follow(&self) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            match self.inner.store.watch().await {
                Ok(None) => return,
                Ok(Some(changes)) => {
                    let changes = changes.take_until(shutdown.clone().cancelled_owned());
                    let mut changes = std::pin::pin!(changes);
                    while let Some(change) = changes.next().await {
                        match change {
                            Ok(change) => self.inner.apply(change),
                            Err(error) => {
                                tracing::warn!(%error, "the export schedules watch failed; reopening");
                                break;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the export schedules; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(WATCH_RETRY) => {}
            }
        }
    }

    /// Waits for the role, runs the schedules while it is held, and again.
    async fn run_loop(&self) {
        let role = self.inner.settings.role.clone();
        let mut held = role.subscribe();
        loop {
            if !role.is_held() {
                // Another replica runs the schedules: only the lag is kept current here.
                self.inner.set_lag(timestamp::now_micros());
                tokio::select! {
                    () = changed(&mut held) => {}
                    () = tokio::time::sleep(MAX_SLEEP) => {}
                    () = self.inner.shutdown.cancelled() => return,
                }
                continue;
            }
            if self.inner.store.is_shared() {
                tracing::info!(role = role.name(), "this replica runs the export schedules");
                self.refresh().await;
            }
            let term = self.inner.shutdown.child_token();
            self.run_while_held(&role, &mut held, &term).await;
            // The role is lost (or the process stops): every run stops here, unrecorded.
            term.cancel();
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            tracing::warn!(
                role = role.name(),
                "this replica no longer runs the export schedules"
            );
        }
    }

    async fn run_while_held(
        &self,
        role: &RoleLease,
        held: &mut tokio::sync::watch::Receiver<bool>,
        term: &CancellationToken,
    ) {
        loop {
            if !role.is_held() {
                return;
            }
            let now = timestamp::now_micros();
            let (due, wake_at) = self.due(now, term);
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
                () = lost(held) => return,
                () = term.cancelled() => return,
            }
        }
    }

    /// Reloads every schedule from the shared store (this replica just took the role; removals
    /// come through the watch, which delivers them in order with creations).
    async fn refresh(&self) {
        match self.inner.store.load_all().await {
            Ok(all) => {
                for stored in all {
                    self.inner.apply(Change::Put(stored));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reload the export schedules; using the watched view");
            }
        }
    }

    /// The schedules due at `now` (marked running, each with a child of `term`), and when the
    /// next one is.
    fn due(&self, now: i64, term: &CancellationToken) -> (Vec<(String, CancellationToken)>, i64) {
        let mut wake_at = now.saturating_add(MAX_SLEEP.as_micros() as i64);
        let mut due = Vec::new();
        for (id, entry) in self.inner.schedules.lock().iter_mut() {
            if entry.running.is_some() {
                continue;
            }
            match entry.record.due(now) {
                NextRun::Wait(at) => wake_at = wake_at.min(at),
                NextRun::Skip | NextRun::Run => {
                    let cancel = term.child_token();
                    entry.running = Some(cancel.clone());
                    due.push((id.clone(), cancel));
                }
            }
        }
        self.inner.set_lag(now);
        (due, wake_at)
    }
}

impl Inner {
    /// Takes a record read from the store into the view when it is newer than the one held;
    /// a removal stops the schedule's run here.
    fn apply(&self, change: Change) {
        {
            let mut schedules = self.schedules.lock();
            match change {
                Change::Put(stored) => {
                    let id = stored.record.spec.schedule_id.clone();
                    match schedules.get_mut(&id) {
                        Some(entry) if entry.revision >= stored.revision => return,
                        Some(entry) => {
                            entry.record = stored.record;
                            entry.revision = stored.revision;
                        }
                        None => {
                            schedules.insert(
                                id,
                                Entry {
                                    record: stored.record,
                                    revision: stored.revision,
                                    running: None,
                                },
                            );
                        }
                    }
                }
                Change::Removed {
                    schedule_id,
                    revision,
                } => {
                    let older = schedules
                        .get(&schedule_id)
                        .is_some_and(|entry| entry.revision < revision);
                    if !older {
                        return;
                    }
                    if let Some(cancel) = schedules
                        .remove(&schedule_id)
                        .and_then(|entry| entry.running)
                    {
                        tracing::info!(
                            schedule_id,
                            "export schedule deleted on another replica: stopping its run"
                        );
                        cancel.cancel();
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    fn set_lag(&self, now: i64) {
        let oldest = self
            .schedules
            .lock()
            .values()
            .map(|entry| entry.record.state.watermark_us)
            .min();
        self.settings.metrics.set_lag(oldest, now);
    }
}

/// Fires when the role changes to "not held" (never when nobody can change it).
async fn lost(held: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        changed(held).await;
        if !*held.borrow_and_update() {
            return;
        }
    }
}

/// Fires at the role's next change (never when nobody can change it).
async fn changed(held: &mut tokio::sync::watch::Receiver<bool>) {
    if held.changed().await.is_err() {
        std::future::pending::<()>().await;
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
                // Started here or on another replica: resumed from its checkpoint, once this
                // index holds its snapshot.
                Some(current) => {
                    let snapshot = current.checkpoint.snapshot_seq;
                    if inner.engine.store().committed_seq() < snapshot {
                        return wait_for_index(schedule_id, snapshot, cancel).await;
                    }
                    current
                }
                None => match start_run(inner, schedule_id, &record, cancel).await {
                    Ok(Some(current)) => current,
                    Ok(None) => return,
                    Err(failure) => return failed(inner, schedule_id, failure).await,
                },
            };
            execute(inner, schedule_id, current, cancel).await;
        }
    }
}

/// This replica's index is behind a snapshot a run needs (it just took the role over): the
/// run waits a little and is looked at again.
async fn wait_for_index(schedule_id: &str, snapshot: u64, cancel: &CancellationToken) {
    tracing::debug!(
        schedule_id,
        snapshot,
        "the index is behind the run's snapshot; waiting"
    );
    tokio::select! {
        () = tokio::time::sleep(INDEX_WAIT) => {}
        () = cancel.cancelled() => {}
    }
}

/// Fixes the run's snapshot, window and prefix, durably, before anything is written. The
/// snapshot is never older than the previous run's (their difference is the run's late set).
async fn start_run(
    inner: &Arc<Inner>,
    schedule_id: &str,
    record: &ScheduleRecord,
    cancel: &CancellationToken,
) -> Result<Option<CurrentRun>, ExportFailure> {
    let checkpoint = inner.engine.start_checkpoint().await?;
    if let Some(previous) = record.state.watermark_seq
        && checkpoint.snapshot_seq < previous
    {
        wait_for_index(schedule_id, previous, cancel).await;
        return Ok(None);
    }
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
        parts_done = current.checkpoint.files.len(),
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
            let recorded = update(inner, schedule_id, move |record| {
                record.complete(late, files, records, timestamp::now_micros());
            })
            .await;
            if recorded {
                tracing::info!(
                    schedule_id,
                    export_id = current.export_id,
                    records,
                    "scheduled export run completed"
                );
                let metrics = &inner.settings.metrics;
                metrics.run_ended("completed");
                metrics.records.inc_by(records);
            }
        }
        Err(failure) => failed(inner, schedule_id, failure).await,
    }
}

/// Records a failed attempt; the run is retried after a backoff. A run stopped because the
/// role moved is not a failure: the new holder resumes it.
async fn failed(inner: &Arc<Inner>, schedule_id: &str, failure: ExportFailure) {
    let settings = &inner.settings;
    if !settings.role.is_held() || failure.code == ROLE_LOST {
        tracing::warn!(schedule_id, %failure, "scheduled export run stopped: the scheduler role moved");
        return;
    }
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

/// The failure code of a run stopped because this replica no longer holds the role.
const ROLE_LOST: &str = "lease_lost";

fn record_of(inner: &Inner, schedule_id: &str) -> Option<ScheduleRecord> {
    inner
        .schedules
        .lock()
        .get(schedule_id)
        .map(|entry| entry.record.clone())
}

/// Applies `change` to the schedule and writes it at its revision; `false` when the schedule
/// is gone, the role is no longer held, or the write failed (logged; the change is then not
/// kept in memory either). A write refused because the record changed elsewhere reloads it.
async fn update(
    inner: &Arc<Inner>,
    schedule_id: &str,
    change: impl FnOnce(&mut ScheduleRecord),
) -> bool {
    let _io = inner.io.lock().await;
    if !inner.settings.role.is_held() {
        return false;
    }
    let stored = inner
        .schedules
        .lock()
        .get(schedule_id)
        .map(|entry| (entry.record.clone(), entry.revision));
    let Some((mut record, revision)) = stored else {
        return false;
    };
    change(&mut record);
    match inner.store.update(&record, revision).await {
        Ok(revision) => {
            inner.apply(Change::Put(Stored { record, revision }));
            true
        }
        Err(StoreError::Conflict { .. }) => {
            tracing::warn!(
                schedule_id,
                "the export schedule changed elsewhere; reloaded, nothing recorded"
            );
            match inner.store.read(schedule_id).await {
                Ok(Some(stored)) => inner.apply(Change::Put(stored)),
                Ok(None) => inner.apply(Change::Removed {
                    schedule_id: schedule_id.to_string(),
                    revision: u64::MAX,
                }),
                Err(error) => {
                    tracing::warn!(schedule_id, %error, "cannot reload the export schedule")
                }
            }
            false
        }
        Err(error) => {
            tracing::error!(schedule_id, %error, "a schedule could not be recorded");
            false
        }
    }
}

async fn abort(engine: &ExportEngine, current: &CurrentRun) {
    if let Err(failure) = engine.abort(&current.export_id, &current.spec).await {
        tracing::warn!(export_id = current.export_id, %failure, "incomplete uploads of a deleted schedule's run not removed");
    }
}

/// Persists each part's checkpoint in the schedule's current run, and confirms the role
/// before the manifest.
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
        } else if !self.inner.settings.role.is_held() {
            Err(role_lost())
        } else {
            Err(ExportFailure::new(
                "schedule_unavailable",
                "the schedule's progress could not be recorded",
            ))
        }
    }

    async fn before_manifest(&self) -> Result<(), ExportFailure> {
        if self.inner.settings.role.confirm().await {
            Ok(())
        } else {
            Err(role_lost())
        }
    }
}

fn role_lost() -> ExportFailure {
    ExportFailure::new(
        ROLE_LOST,
        "this replica no longer runs the export schedules; another one continues the run",
    )
}
