//! The `AuditExportSchedule` controller: continuous exports in a cluster, run by the Lease
//! holder only (the same leader term as the AuditExport controller, see [`super::run`]).
//!
//! ```text
//! reconcile ─▶ new: validate (as the REST body), admit (confinement, namespace label),
//!              │     record export_created, status: scheduleId, watermark, nextRunAt
//!              ├▶ Wait(t): requeue at t (at most 30 s)
//!              ├▶ Skip: empty window, next tick (status)
//!              └▶ Run: admit again ─▶ run task (a slot) ─▶ currentRun: snapshot, window,
//!                 prefix (status, before anything is written) ─▶ engine.run (each part:
//!                 status) ─▶ completed: watermark, lastRuns, next tick (status)
//!                           └▶ failed: failure, retry after a backoff (status)
//! ```
//!
//! The decisions are the standalone scheduler's: [`ScheduleRecord::due`], `plan_run`,
//! `complete` and `fail` (`crate::export::schedule`), on the record the resource's status holds
//! ([`super::schedule_convert`]). Within a leader term the record is kept in memory and is the
//! truth (this process is the status' only writer); every change is written as the whole
//! status, in order, under one lock, so a stale watch cache never re-plans a run. A new term
//! (another replica, a restart) starts from the status: a run found in `currentRun` resumes
//! with the same window, snapshot and prefix after its last uploaded part (the engine's
//! claim makes a run whose manifest was already written complete without writing again).
//!
//! Deletion goes through a finalizer: the run in progress stops and its incomplete uploads are
//! removed before the resource goes (also when it was deleted while no operator ran, or
//! between a failed attempt and its retry); files of completed runs stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::audit::AuditLog;
use super::exporter::Exporter;
use super::schedule_convert::{created_by, schedule_record, schedule_spec, schedule_status};
use super::schedule_crd::{AuditExportSchedule, AuditExportScheduleStatus};
use super::status::{Clock, VALIDATION_ERROR};
use super::status_writer::{is_not_found, patch_status};
use super::trust;
use crate::event::FieldErrors;
use crate::export::engine::ProgressReporter;
use crate::export::job::{Checkpoint, ExportFailure, ExportSpec};
use crate::export::schedule::scheduler::{ScheduleMetrics, retry_backoff};
use crate::export::schedule::{CurrentRun, DEFAULT_MIN_INTERVAL_SECONDS, NextRun, ScheduleRecord};
use crate::export::supervisor::STOP_TIMEOUT;

/// Finalizer that stops a schedule's run and removes its incomplete uploads on delete.
pub const SCHEDULE_FINALIZER: &str = "auditexportschedules.audit.scailabs.ai/cleanup";
/// The longest a schedule waits for its next reconcile (the lag metric's refresh).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Empty ticks skipped in one reconcile (a start far ahead of a frequent schedule).
const MAX_SKIPS: usize = 1000;
/// A run's last status write (completed, failed) is tried this many times.
const SAVE_ATTEMPTS: u32 = 4;

/// Failures of one reconcile; all of them are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to patch status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    #[error("finalizer failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("failed to read the namespace's tenant label: {0}")]
    Namespace(#[source] kube::Error),
    #[error("failed to record export_created in the audit log: {0}")]
    Record(String),
    #[error("failed to clean up incomplete uploads: {0}")]
    Cleanup(#[source] ExportFailure),
}

/// Settings of the schedule controller.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Namespaces to watch, one watch each; empty watches all namespaces.
    pub namespaces: Vec<String>,
    /// The shortest interval between two runs a new schedule may ask for, seconds
    /// (`[export] schedule_min_interval_seconds`); schedules accepted earlier keep running.
    pub min_interval_seconds: u64,
    /// Runs that export at once (of all schedules); more wait.
    pub max_concurrent_runs: usize,
    /// Backoff after a run's first failure; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Reconciles that run at once.
    pub reconcile_concurrency: u16,
    /// The `export_schedule_*` metrics (shared with the standalone scheduler).
    pub metrics: ScheduleMetrics,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            namespaces: Vec::new(),
            min_interval_seconds: DEFAULT_MIN_INTERVAL_SECONDS,
            max_concurrent_runs: 2,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            reconcile_concurrency: 4,
            metrics: ScheduleMetrics::default(),
        }
    }
}

/// A schedule this leader term has accepted or read: its record is the truth.
struct Known {
    uid: Option<String>,
    api: Api<AuditExportSchedule>,
    name: String,
    generation: Option<i64>,
    record: ScheduleRecord,
    /// The status last written (or read), for the condition's transition time.
    status: Option<AuditExportScheduleStatus>,
    /// Set while a run task works on it.
    running: Option<CancellationToken>,
}

/// What every reconcile and run task of one leader term shares.
pub struct ScheduleCtx {
    client: Client,
    exporter: Arc<dyn Exporter>,
    audit: Arc<dyn AuditLog>,
    namespaces: Api<Namespace>,
    settings: ScheduleSettings,
    clock: Clock,
    known: Mutex<HashMap<String, Known>>,
    /// Serialises status writes: each writes the newest record.
    io: tokio::sync::Mutex<()>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Consecutive reconcile failures per object, for the requeue backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl ScheduleCtx {
    /// A context for one leader term.
    pub fn new(
        client: Client,
        services: &super::Services,
        settings: ScheduleSettings,
        clock: Clock,
    ) -> Arc<ScheduleCtx> {
        Arc::new(ScheduleCtx {
            namespaces: Api::all(client.clone()),
            client,
            exporter: services.exporter.clone(),
            audit: services.audit.clone(),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_runs.max(1))),
            settings,
            clock,
            known: Mutex::default(),
            io: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            failures: Mutex::default(),
        })
    }

    fn now_us(&self) -> i64 {
        (self.clock)().as_microsecond()
    }

    /// Schedules whose run task is working now.
    pub fn running(&self) -> usize {
        self.known
            .lock()
            .values()
            .filter(|known| known.running.is_some())
            .count()
    }

    fn is_running(&self, key: &str) -> bool {
        self.known
            .lock()
            .get(key)
            .is_some_and(|known| known.running.is_some())
    }

    /// The record this term holds for `object` (`None` for another object of that name).
    fn record(&self, key: &str, uid: Option<&String>) -> Option<ScheduleRecord> {
        self.known
            .lock()
            .get(key)
            .filter(|known| known.uid.as_ref() == uid)
            .map(|known| known.record.clone())
    }

    /// Applies `change` to the record of `key` in memory; `false` when it is not known.
    fn change(&self, key: &str, change: impl FnOnce(&mut ScheduleRecord)) -> bool {
        match self.known.lock().get_mut(key) {
            Some(known) => {
                change(&mut known.record);
                true
            }
            None => false,
        }
    }

    /// Writes the newest record of `key` as its resource's status (one write at a time).
    async fn persist(&self, key: &str) -> Result<(), kube::Error> {
        let _io = self.io.lock().await;
        let Some((api, name, status)) = self.status_to_write(key) else {
            return Ok(());
        };
        patch_status(&api, &name, &status).await?;
        if let Some(known) = self.known.lock().get_mut(key) {
            known.status = Some(status);
        }
        Ok(())
    }

    /// [`Self::persist`], tried up to [`SAVE_ATTEMPTS`] times (1, 2, 4 s apart) unless the
    /// term ends; a write that failed for good is logged (the next write catches up, and a
    /// next leader resumes from the status it finds).
    async fn persist_retried(&self, key: &str) {
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=SAVE_ATTEMPTS {
            match self.persist(key).await {
                Ok(()) => return,
                Err(error) if attempt == SAVE_ATTEMPTS || is_not_found(&error) => {
                    tracing::warn!(%error, schedule = key, "failed to write schedule status");
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, schedule = key, ?delay, "schedule status write failed; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return,
            }
            delay = delay.saturating_mul(2);
        }
    }

    fn status_to_write(
        &self,
        key: &str,
    ) -> Option<(Api<AuditExportSchedule>, String, AuditExportScheduleStatus)> {
        let known = self.known.lock();
        let known = known.get(key)?;
        let status = schedule_status(
            &known.record,
            known.status.as_ref(),
            known.generation,
            (self.clock)(),
        );
        Some((known.api.clone(), known.name.clone(), status))
    }

    /// Refreshes `export_schedule_lag_seconds` from every schedule this term knows.
    fn refresh_lag(&self, now_us: i64) {
        let oldest = self
            .known
            .lock()
            .values()
            .map(|known| known.record.state.watermark_us)
            .min();
        self.settings.metrics.set_lag(oldest, now_us);
    }
}

/// Runs the schedule controller until `shutdown` fires; then stops the runs of this process
/// without touching their status (the next leader resumes them from `currentRun`).
pub async fn run(ctx: Arc<ScheduleCtx>, shutdown: CancellationToken) {
    let apis: Vec<Api<AuditExportSchedule>> = if ctx.settings.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.settings
            .namespaces
            .iter()
            .map(|namespace| Api::namespaced(ctx.client.clone(), namespace))
            .collect()
    };
    let concurrency = ctx.settings.reconcile_concurrency;
    let controllers = apis.into_iter().map(|api| {
        let stop = shutdown.clone();
        Controller::new(api, watcher::Config::default().any_semantic())
            .with_config(ControllerConfig::default().concurrency(concurrency))
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(name = %object.name, "schedule reconciled"),
                    Err(error) => tracing::warn!(%error, "schedule reconcile failed"),
                }
            })
    });
    futures::future::join_all(controllers).await;
    stop(&ctx).await;
}

/// Stops every run of this term and waits for them (their status stays as it is).
pub async fn stop(ctx: &ScheduleCtx) {
    ctx.shutdown.cancel();
    ctx.tasks.close();
    ctx.tasks.wait().await;
}

/// Plumbing: the finalizer around [`apply`] and [`cleanup`].
pub async fn reconcile(
    object: Arc<AuditExportSchedule>,
    ctx: Arc<ScheduleCtx>,
) -> Result<Action, Error> {
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let api: Api<AuditExportSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, SCHEDULE_FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(&object, &api, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(&object, &ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// Transient failures requeue with exponential backoff (1 s doubling to 5 min) per object.
pub fn error_policy(
    object: Arc<AuditExportSchedule>,
    error: &Error,
    ctx: Arc<ScheduleCtx>,
) -> Action {
    let key = object_key(&object);
    let attempts = {
        let mut failures = ctx.failures.lock();
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = super::controller::backoff(attempts);
    tracing::warn!(%error, name = %object.name_any(), attempts, ?delay, "schedule reconcile failed; retrying");
    Action::requeue(delay)
}

fn object_key(object: &AuditExportSchedule) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Apply branch of the finalizer: accept a new schedule, then do what is due.
async fn apply(
    object: &AuditExportSchedule,
    api: &Api<AuditExportSchedule>,
    ctx: &Arc<ScheduleCtx>,
) -> Result<Action, Error> {
    let key = object_key(object);
    if ctx.is_running(&key) {
        // The run task writes its status; its end triggers the next reconcile.
        return Ok(Action::requeue(MAX_SLEEP));
    }
    let known = ctx.record(&key, object.metadata.uid.as_ref());
    let action = match known {
        Some(_) => step(object, ctx, &key).await?,
        None => match accept(object, api, ctx, &key).await? {
            true => step(object, ctx, &key).await?,
            false => Action::await_change(),
        },
    };
    ctx.failures.lock().remove(&key);
    Ok(action)
}

/// Reads (or, for a new resource, validates, admits, records and writes) the schedule's
/// record; `false` when the resource is refused (reported in its status).
async fn accept(
    object: &AuditExportSchedule,
    api: &Api<AuditExportSchedule>,
    ctx: &ScheduleCtx,
    key: &str,
) -> Result<bool, Error> {
    let now_us = ctx.now_us();
    let status = object.status.as_ref();
    let accepted = status.and_then(|status| status.schedule_id.clone());
    let record = match record_of(object, ctx, now_us) {
        Ok(record) => record,
        Err(errors) => {
            let failure = ExportFailure::new(
                VALIDATION_ERROR,
                format!("invalid spec: {}", describe(&errors)),
            );
            report_refused(object, api, ctx, &failure).await?;
            return Ok(false);
        }
    };
    let new = accepted.is_none();
    if new {
        if let Err(refusal) = admit(object, ctx, &record.spec.export).await? {
            report_refused(object, api, ctx, &refusal).await?;
            return Ok(false);
        }
        // Like the REST API: recorded before the schedule is accepted (deduplicated by id).
        let event = schedule_created(object, &record);
        ctx.audit.append(event).await.map_err(Error::Record)?;
    }
    ctx.known.lock().insert(
        key.to_string(),
        Known {
            uid: object.metadata.uid.clone(),
            api: api.clone(),
            name: object.name_any(),
            generation: object.metadata.generation,
            record,
            status: status.cloned(),
            running: None,
        },
    );
    if new {
        tracing::info!(schedule = key, "AuditExportSchedule accepted");
        if let Err(error) = ctx.persist(key).await {
            ctx.known.lock().remove(key);
            return Err(Error::PatchStatus(error));
        }
    }
    Ok(true)
}

/// The record of `object`: the spec validated as the REST body (the minimum interval only
/// for a schedule not accepted yet), the state from its status.
fn record_of(
    object: &AuditExportSchedule,
    ctx: &ScheduleCtx,
    now_us: i64,
) -> Result<ScheduleRecord, FieldErrors> {
    let status = object.status.as_ref();
    let accepted = status.and_then(|status| status.schedule_id.clone());
    let min_interval = match accepted {
        Some(_) => 0,
        None => ctx.settings.min_interval_seconds,
    };
    let created_at_us = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now_us, |time| time.0.as_microsecond());
    let schedule_id = accepted.unwrap_or_else(|| derived_schedule_id(object, created_at_us));
    let namespace = object.namespace().unwrap_or_default();
    let spec = schedule_spec(
        &object.spec,
        schedule_id,
        &created_by(&namespace, &object.name_any()),
        min_interval,
        created_at_us,
    )?;
    schedule_record(spec, status, now_us)
}

/// The schedule id of a resource: `sch_` and a ULID from its creation time and uid, stable
/// across reconciles and replicas (so a retried acceptance records `export_created` once).
pub fn derived_schedule_id(object: &AuditExportSchedule, created_at_us: i64) -> String {
    let Some(uid) = object.metadata.uid.as_deref() else {
        return crate::export::schedule::new_schedule_id();
    };
    let millis = u64::try_from(created_at_us / 1000).unwrap_or(0);
    let digest = Sha256::digest(uid.as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let ulid = ulid::Ulid::from_parts(millis, u128::from_be_bytes(random));
    format!("sch_{}", ulid.to_string().to_lowercase())
}

/// The `export_created` event of an accepted schedule (`extra_data.created_through`:
/// `AuditExportSchedule`), with the resource as the actor.
fn schedule_created(
    object: &AuditExportSchedule,
    record: &ScheduleRecord,
) -> crate::event::AuditEvent {
    let spec = &record.spec;
    let created_at = crate::timestamp::parse_rfc3339_micros(&spec.created_at).unwrap_or(0);
    let when = k8s_openapi::jiff::Timestamp::from_microsecond(created_at)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let mut event =
        super::audit::export_created(&spec.schedule_id, &spec.export, 0, &spec.created_by, when);
    let extra = &mut event.extra_data;
    extra.remove("export_id");
    extra.remove("estimated_records");
    extra.remove("from");
    extra.remove("to");
    extra.insert("schedule_id".into(), json!(spec.schedule_id));
    extra.insert("schedule".into(), json!(spec.schedule));
    extra.insert("delay_seconds".into(), json!(spec.delay_seconds));
    extra.insert("start".into(), json!(spec.start));
    extra.insert("created_through".into(), json!("AuditExportSchedule"));
    extra.insert(
        "resource".into(),
        json!(format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        )),
    );
    event
}

/// Whether `object` may export its tenant to its destination: inside the installation's
/// confinement (credentials prefixes, file root), and its tenant in its namespace's
/// `audit.scailabs.ai/tenant` label, as for an AuditExport applied with kubectl.
/// `Ok(Err(_))` is a refusal; `Err(_)` a failure to read the namespace (retried).
async fn admit(
    object: &AuditExportSchedule,
    ctx: &ScheduleCtx,
    spec: &ExportSpec,
) -> Result<Result<(), ExportFailure>, Error> {
    if let Err(refusal) = ctx.exporter.confine(spec) {
        return Ok(Err(refusal));
    }
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    trust::namespace_admits(&ctx.namespaces, &namespace, &object.spec.tenant_id)
        .await
        .map_err(Error::Namespace)
}

/// A resource that is invalid, or names a tenant or destination it may not: `Ready` `False`
/// with the error code as reason, written once per generation; nothing else happens.
async fn report_refused(
    object: &AuditExportSchedule,
    api: &Api<AuditExportSchedule>,
    ctx: &ScheduleCtx,
    refusal: &ExportFailure,
) -> Result<(), Error> {
    let generation = object.metadata.generation;
    let previous = object.status.clone().unwrap_or_default();
    let reported = previous.observed_generation == generation
        && previous.conditions.iter().any(|condition| {
            condition.type_ == "Ready"
                && condition.status == "False"
                && condition.reason == refusal.code
                && condition.message == refusal.message
        });
    if reported {
        return Ok(());
    }
    tracing::warn!(name = %object_key(object), tenant = %object.spec.tenant_id, code = %refusal.code, "AuditExportSchedule refused");
    let status = AuditExportScheduleStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: refusal.code.clone(),
            message: refusal.message.clone(),
            observed_generation: generation,
            last_transition_time: Time((ctx.clock)()),
        }],
        observed_generation: generation,
        ..AuditExportScheduleStatus::default()
    };
    patch_status(api, &object.name_any(), &status)
        .await
        .map_err(Error::PatchStatus)
}

fn describe(errors: &FieldErrors) -> String {
    errors
        .0
        .iter()
        .map(|(field, problem)| format!("{field}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Does what is due for a known schedule: skips empty ticks, starts (or resumes) a run, or
/// waits for the next tick or retry.
async fn step(
    object: &AuditExportSchedule,
    ctx: &Arc<ScheduleCtx>,
    key: &str,
) -> Result<Action, Error> {
    let now_us = ctx.now_us();
    let mut skipped = false;
    for _ in 0..MAX_SKIPS {
        let Some(record) = ctx.record(key, object.metadata.uid.as_ref()) else {
            return Ok(Action::await_change());
        };
        match record.due(now_us) {
            NextRun::Skip => {
                ctx.change(key, ScheduleRecord::skip_tick);
                skipped = true;
            }
            NextRun::Wait(at) => {
                if skipped {
                    ctx.persist(key).await.map_err(Error::PatchStatus)?;
                }
                ctx.refresh_lag(now_us);
                return Ok(Action::requeue(until(at, now_us)));
            }
            NextRun::Run => {
                if skipped {
                    ctx.persist(key).await.map_err(Error::PatchStatus)?;
                }
                return start(object, ctx, key, &record, now_us).await;
            }
        }
    }
    ctx.persist(key).await.map_err(Error::PatchStatus)?;
    Ok(Action::requeue(Duration::from_millis(10)))
}

/// The requeue delay until `at` (at most [`MAX_SLEEP`]).
fn until(at_us: i64, now_us: i64) -> Duration {
    u64::try_from(at_us.saturating_sub(now_us))
        .map(Duration::from_micros)
        .unwrap_or_default()
        .clamp(Duration::from_millis(10), MAX_SLEEP)
}

/// Admits the run (the namespace label may have changed since the schedule was accepted)
/// and hands it to a run task; a refusal is a failed attempt, retried after a backoff.
async fn start(
    object: &AuditExportSchedule,
    ctx: &Arc<ScheduleCtx>,
    key: &str,
    record: &ScheduleRecord,
    now_us: i64,
) -> Result<Action, Error> {
    if let Err(refusal) = admit(object, ctx, &record.spec.export).await? {
        tracing::warn!(schedule = key, code = %refusal.code, "scheduled run refused");
        failed(ctx, key, refusal);
        ctx.persist(key).await.map_err(Error::PatchStatus)?;
        let retry_at = ctx
            .record(key, object.metadata.uid.as_ref())
            .and_then(|record| record.state.failure.map(|failure| failure.retry_at_us))
            .unwrap_or(now_us);
        return Ok(Action::requeue(until(retry_at, now_us)));
    }
    let cancel = ctx.shutdown.child_token();
    {
        let mut known = ctx.known.lock();
        let Some(entry) = known.get_mut(key) else {
            return Ok(Action::await_change());
        };
        entry.running = Some(cancel.clone());
    }
    let task_ctx = ctx.clone();
    let task_key = key.to_string();
    ctx.tasks.spawn(async move {
        run_task(&task_ctx, &task_key, &cancel).await;
    });
    Ok(Action::requeue(MAX_SLEEP))
}

/// Records a failed attempt of the current run (in memory): retried after a backoff.
fn failed(ctx: &ScheduleCtx, key: &str, failure: ExportFailure) {
    let settings = &ctx.settings;
    settings.metrics.run_ended("failed");
    let now_us = ctx.now_us();
    ctx.change(key, |record| {
        let run = record.state.runs_completed + 1;
        let attempts = record
            .state
            .failure
            .as_ref()
            .filter(|failure| failure.run == run)
            .map_or(0, |failure| failure.attempts);
        let backoff = retry_backoff(settings.retry_initial, settings.retry_max, attempts);
        tracing::warn!(schedule = key, %failure, attempts = attempts + 1, retry_in_ms = backoff.as_millis() as u64, "scheduled export run failed; retrying");
        let backoff_us = i64::try_from(backoff.as_micros()).unwrap_or(i64::MAX);
        record.fail(failure, backoff_us, now_us);
    });
}

/// One run of a schedule, in a slot: planned and written first (or resumed), exported,
/// recorded as completed or failed. The record changes in memory, the task lets go of the
/// schedule, then the status is written: a reconcile that comes meanwhile sees the new record.
async fn run_task(ctx: &Arc<ScheduleCtx>, key: &str, cancel: &CancellationToken) {
    let slot = tokio::select! {
        slot = ctx.slots.clone().acquire_owned() => slot.ok(),
        () = cancel.cancelled() => None,
    };
    let outcome = match slot {
        Some(_slot) => run_once(ctx, key, cancel).await,
        None => Ended::Stopped,
    };
    if let Some(known) = ctx.known.lock().get_mut(key) {
        known.running = None;
    }
    if outcome == Ended::Recorded {
        ctx.persist_retried(key).await;
        ctx.refresh_lag(ctx.now_us());
    }
}

/// How a run task ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Completed or failed: the record changed and must be written.
    Recorded,
    /// Stopped (shutdown, deletion, lost leadership) or not started: nothing to write.
    Stopped,
}

async fn run_once(ctx: &Arc<ScheduleCtx>, key: &str, cancel: &CancellationToken) -> Ended {
    let Some(record) = ctx.known.lock().get(key).map(|known| known.record.clone()) else {
        return Ended::Stopped;
    };
    let current = match record.state.current.clone() {
        Some(current) => current,
        None => match start_run(ctx, key, &record).await {
            Ok(Some(current)) => current,
            Ok(None) => return Ended::Stopped,
            Err(failure) => {
                failed(ctx, key, failure);
                return Ended::Recorded;
            }
        },
    };
    tracing::info!(
        schedule = key,
        export_id = current.export_id,
        from = current.spec.from,
        to = current.spec.to,
        resumed_after_files = current.checkpoint.files.len(),
        "scheduled export run"
    );
    let progress = RunProgress {
        ctx: ctx.clone(),
        key: key.to_string(),
    };
    let result = ctx
        .exporter
        .run(
            &current.export_id,
            &current.spec,
            current.checkpoint.clone(),
            &progress,
            cancel,
        )
        .await;
    if cancel.is_cancelled() {
        // Shutdown or lost leadership: resumed from `currentRun` by the next leader;
        // deletion: the finalizer removes the incomplete uploads.
        return Ended::Stopped;
    }
    match result {
        Ok(outcome) => {
            let snapshot = current.checkpoint.snapshot_seq;
            let late = ctx
                .exporter
                .late_summary(&current.spec, snapshot)
                .await
                .unwrap_or_else(|failure| {
                    tracing::warn!(schedule = key, %failure, "late events not counted");
                    None
                });
            let files = outcome.files.len() as u64;
            let records = outcome.record_count;
            tracing::info!(
                schedule = key,
                export_id = current.export_id,
                records,
                "scheduled export run completed"
            );
            let metrics = &ctx.settings.metrics;
            metrics.run_ended("completed");
            metrics.records.inc_by(records);
            let now_us = ctx.now_us();
            ctx.change(key, |record| record.complete(late, files, records, now_us));
        }
        Err(failure) => failed(ctx, key, failure),
    }
    Ended::Recorded
}

/// Fixes the run's snapshot, window and prefix and writes them (`currentRun`) before
/// anything is written; `None` when that write failed (retried by a later reconcile).
async fn start_run(
    ctx: &ScheduleCtx,
    key: &str,
    record: &ScheduleRecord,
) -> Result<Option<CurrentRun>, ExportFailure> {
    let checkpoint = ctx.exporter.start_checkpoint().await?;
    let current = record.plan_run(checkpoint, ctx.now_us());
    let planned = current.clone();
    if !ctx.change(key, move |record| record.state.current = Some(planned)) {
        return Ok(None);
    }
    if let Err(error) = ctx.persist(key).await {
        tracing::warn!(%error, schedule = key, "the run could not be recorded; not started");
        ctx.change(key, |record| record.state.current = None);
        return Ok(None);
    }
    Ok(Some(current))
}

/// Cleanup branch of the finalizer: stop the run, remove its incomplete uploads.
async fn cleanup(object: &AuditExportSchedule, ctx: &ScheduleCtx) -> Result<Action, Error> {
    let key = object_key(object);
    let running = ctx
        .known
        .lock()
        .get(&key)
        .and_then(|known| known.running.clone());
    if let Some(cancel) = running {
        cancel.cancel();
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while ctx.is_running(&key) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let record = ctx.record(&key, object.metadata.uid.as_ref()).or_else(|| {
        object.status.as_ref()?.schedule_id.as_ref()?;
        record_of(object, ctx, ctx.now_us()).ok()
    });
    if let Some(current) = record.and_then(|record| record.state.current) {
        ctx.exporter
            .abort(&current.export_id, &current.spec)
            .await
            .map_err(Error::Cleanup)?;
        tracing::info!(schedule = %key, export_id = current.export_id, "incomplete uploads of a deleted schedule's run removed");
    }
    ctx.known.lock().remove(&key);
    ctx.failures.lock().remove(&key);
    ctx.refresh_lag(ctx.now_us());
    Ok(Action::await_change())
}

/// Writes each part's checkpoint into the status' `currentRun`.
struct RunProgress {
    ctx: Arc<ScheduleCtx>,
    key: String,
}

#[async_trait]
impl ProgressReporter for RunProgress {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        let checkpoint = checkpoint.clone();
        self.ctx.change(&self.key, move |record| {
            if let Some(current) = &mut record.state.current {
                current.checkpoint = checkpoint;
            }
        });
        self.ctx.persist(&self.key).await.map_err(|error| {
            tracing::warn!(%error, schedule = self.key, "a run's progress could not be recorded");
            ExportFailure::new(
                "schedule_unavailable",
                "the schedule's progress could not be recorded",
            )
        })
    }
}
