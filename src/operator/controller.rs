//! The AuditExport controller: `reconcile` is plumbing (metrics, finalizer); the decisions are
//! in [`plan`] (pure) and carried out by the functions below. Export jobs run under the job
//! supervisor ([`crate::export::supervisor`], its store is [`super::jobs`]), so a reconcile
//! never waits for an export. Every status write and Event goes through the status writer
//! ([`super::status_writer`]), the only writer of AuditExport status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::audit::AuditLog;
use super::crd::{AuditExport, AuditExportStatus, ExportJobPhase};
use super::exporter::Exporter;
use super::jobs::{ResourceJobs, Tracking};
use super::metrics::{OperatorMetrics, ReconcileResult};
use super::progress::{self, ProgressFiles, Restored};
use super::status::{self, VALIDATION_ERROR, reasons};
use super::status_writer::{Note, StatusWriter, Target};
use super::trust::{self, AnnotationSigner, Origin};
use super::{CANCEL_ANNOTATION, ESTIMATED_RECORDS_ANNOTATION, FINALIZER, convert};
use crate::event::FieldErrors;
use crate::export::job::{Checkpoint, ExportFailure, ExportSpec};
use crate::export::supervisor::{Job, STOP_TIMEOUT, StopReason, Supervisor, SupervisorSettings};

pub use super::status::Clock;

/// Failures of one reconcile; all of them are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to patch status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("failed to estimate the export: {0}")]
    Estimate(#[source] ExportFailure),
    #[error("failed to clean up incomplete uploads: {0}")]
    Cleanup(#[source] ExportFailure),
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    #[error("finalizer failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("failed to read the namespace's tenant label: {0}")]
    Namespace(#[source] kube::Error),
    #[error("failed to record export_created in the audit log: {0}")]
    Record(String),
}

/// Every value [`Error::metric_label`] returns (the series start at zero).
pub const ERROR_LABELS: [&str; 7] = [
    "patch_status",
    "estimate",
    "cleanup",
    "missing_object_key",
    "finalizer",
    "namespace",
    "audit_log",
];

impl Error {
    /// Bounded metric label (one of [`ERROR_LABELS`]).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::PatchStatus(_) => "patch_status",
            Error::Estimate(_) => "estimate",
            Error::Cleanup(_) => "cleanup",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Finalizer(_) => "finalizer",
            Error::Namespace(_) => "namespace",
            Error::Record(_) => "audit_log",
        }
    }
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Namespaces to watch, one watch each; empty watches all namespaces.
    pub namespaces: Vec<String>,
    /// Export jobs that run at once; more wait in `Pending`.
    pub max_concurrent_exports: usize,
    /// Reconciles that run at once.
    pub reconcile_concurrency: u16,
    /// Name reported on Kubernetes Events (`reportingController`).
    pub reporter: String,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            namespaces: Vec::new(),
            max_concurrent_exports: 2,
            reconcile_concurrency: 4,
            reporter: super::REPORTER.to_string(),
        }
    }
}

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub exporter: Arc<dyn Exporter>,
    /// Where `export_created` is recorded.
    pub audit: Arc<dyn AuditLog>,
    /// Verifies the annotations of resources the REST API created.
    pub signer: AnnotationSigner,
    /// Namespaces (read for their tenant label).
    pub namespaces: Api<Namespace>,
    /// The export jobs of this process.
    pub jobs: Supervisor,
    /// Their store: the status of each running job's resource.
    pub job_store: Arc<ResourceJobs>,
    /// The only writer of AuditExport status (and of the controller's Events).
    pub status: StatusWriter,
    pub metrics: OperatorMetrics,
    pub clock: Clock,
    /// The full file lists of running exports, in the data directory.
    pub progress: ProgressFiles,
    /// Consecutive failures per object, for the requeue backoff.
    failures: Mutex<std::collections::HashMap<String, u32>>,
}

impl Ctx {
    /// A context whose status writer task starts now (call inside the runtime); the jobs and
    /// the writer end with [`run`].
    pub fn new(
        client: Client,
        services: &super::Services,
        settings: &ControllerSettings,
        metrics: OperatorMetrics,
        clock: Clock,
    ) -> Arc<Ctx> {
        let exporter = services.exporter.clone();
        let progress = services.progress.clone();
        let recorder = Recorder::new(client.clone(), Reporter::from(settings.reporter.as_str()));
        let status = StatusWriter::spawn(recorder.clone());
        let job_store = Arc::new(ResourceJobs::new(
            status.clone(),
            metrics.clone(),
            clock.clone(),
            progress.clone(),
        ));
        let jobs = Supervisor::new(
            exporter.clone(),
            job_store.clone(),
            SupervisorSettings {
                max_concurrent: settings.max_concurrent_exports,
                abort_failed: false,
                running: Some(metrics.running_jobs.clone()),
            },
        );
        Arc::new(Ctx {
            jobs,
            job_store,
            status,
            namespaces: Api::all(client.clone()),
            client,
            recorder,
            exporter,
            audit: services.audit.clone(),
            signer: services.signer.clone(),
            metrics,
            clock,
            progress,
            failures: Mutex::default(),
        })
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }
}

/// Runs the controller until `shutdown` fires; then stops the jobs of this process without
/// touching their status (the next leader resumes them from their checkpoints) and the status
/// writer.
/// One watch per namespace (so a namespaced Role in each is all the operator needs).
pub async fn run(ctx: Arc<Ctx>, settings: &ControllerSettings, shutdown: CancellationToken) {
    let apis: Vec<Api<AuditExport>> = if settings.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        settings
            .namespaces
            .iter()
            .map(|namespace| Api::namespaced(ctx.client.clone(), namespace))
            .collect()
    };
    let controllers = apis.into_iter().map(|api| {
        let stop = shutdown.clone();
        Controller::new(api, watcher::Config::default().any_semantic())
            .with_config(ControllerConfig::default().concurrency(settings.reconcile_concurrency))
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                    Err(error) => tracing::warn!(%error, "reconcile failed"),
                }
            })
    });
    futures::future::join_all(controllers).await;
    ctx.jobs.stop_all(StopReason::Shutdown).await;
    ctx.status.stop();
}

/// Plumbing: metrics, then the finalizer around [`apply`] and [`cleanup`].
pub async fn reconcile(object: Arc<AuditExport>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let api: Api<AuditExport> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(&object, &api, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(&object, &api, &ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)));
    let outcome = match &result {
        Ok(_) => ReconcileResult::Ok,
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics.observe_reconcile(outcome, started.elapsed());
    result
}

/// Transient failures requeue with exponential backoff (1 s doubling to 5 min) per object.
pub fn error_policy(object: Arc<AuditExport>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = object_key(&object);
    let attempts = {
        let mut failures = ctx.failures.lock();
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    ctx.metrics.reconcile_error(error.metric_label());
    let delay = backoff(attempts);
    tracing::warn!(%error, name = %object.name_any(), attempts, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The retry delay after `attempts` consecutive failures.
pub fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exponent).min(300))
}

fn object_key(object: &AuditExport) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// What a reconcile does with an object (pure).
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Nothing to do: finished, or the job runs in this process.
    Idle,
    /// The spec is invalid: report it once per generation and wait for a change.
    ReportInvalid(FieldErrors),
    /// Accept the export (id, estimate, `Pending`) and queue its job.
    Start(ExportSpec),
    /// The job was running in a process that is gone: resume it from its checkpoint.
    Resume(ExportSpec, Checkpoint),
    /// Cancellation was requested through the REST API.
    Cancel(Option<ExportSpec>),
}

/// Decides what to do with `object`; `job_running` says whether its job runs here.
pub fn plan(object: &AuditExport, job_running: bool) -> Plan {
    let status = object.status.clone().unwrap_or_default();
    let phase = status.phase;
    let finished = matches!(
        phase,
        Some(ExportJobPhase::Completed | ExportJobPhase::Cancelled)
    ) || (phase == Some(ExportJobPhase::Failed)
        && (status.started_at.is_some()
            || status.observed_generation == object.metadata.generation));
    if finished {
        return Plan::Idle;
    }
    let spec = convert::export_spec(&object.spec);
    if object.annotations().contains_key(CANCEL_ANNOTATION) {
        return Plan::Cancel(spec.ok());
    }
    if job_running {
        return Plan::Idle;
    }
    match (spec, phase) {
        (Err(errors), _) => Plan::ReportInvalid(errors),
        (Ok(spec), Some(ExportJobPhase::Running)) => match convert::checkpoint(&status) {
            Some(checkpoint) => Plan::Resume(spec, checkpoint),
            None => Plan::Start(spec),
        },
        (Ok(spec), _) => Plan::Start(spec),
    }
}

/// Apply branch of the finalizer.
async fn apply(object: &AuditExport, api: &Api<AuditExport>, ctx: &Ctx) -> Result<Action, Error> {
    let key = object_key(object);
    let job_running = ctx.jobs.is_running(&key);
    let action = match plan(object, job_running) {
        Plan::Idle => Action::await_change(),
        Plan::ReportInvalid(errors) => report_invalid(object, api, ctx, &errors).await?,
        Plan::Start(spec) => match admit(object, ctx, &spec).await? {
            Ok(origin) => start(object, api, ctx, spec, None, &origin).await?,
            Err(refusal) => report_not_allowed(object, api, ctx, refusal).await?,
        },
        Plan::Resume(spec, checkpoint) => match admit(object, ctx, &spec).await? {
            Ok(origin) => {
                let restored = restore(object, ctx, checkpoint).await;
                start(object, api, ctx, spec, Some(restored), &origin).await?
            }
            Err(refusal) => report_not_allowed(object, api, ctx, refusal).await?,
        },
        Plan::Cancel(spec) => cancel(object, api, ctx, spec).await?,
    };
    ctx.failures.lock().remove(&key);
    Ok(action)
}

async fn report_invalid(
    object: &AuditExport,
    api: &Api<AuditExport>,
    ctx: &Ctx,
    errors: &FieldErrors,
) -> Result<Action, Error> {
    let message = errors
        .0
        .iter()
        .map(|(field, problem)| format!("{field}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = status_of(object, ctx);
    let failure = ExportFailure::new(VALIDATION_ERROR, format!("invalid spec: {message}"));
    status.completed_at = None;
    status::set_failed(&mut status, &failure, object.metadata.generation, ctx.now());
    let note = Note::warning(reasons::INVALID_SPEC, failure.message.clone());
    write(ctx, api, object, status, note).await?;
    ctx.metrics.job_phase(ExportJobPhase::Failed);
    // A new generation triggers the next reconcile; nothing else would change the outcome.
    Ok(Action::await_change())
}

/// Whether `object` may export its tenant to its destination: a resource the REST API created
/// (valid signature) was authorised there; any other needs its tenant in its namespace's label;
/// every spec must stay inside the installation's confinement (credentials prefixes, file
/// root). `Ok(Err(_))` is a refusal; `Err(_)` a failure to read the namespace (retried).
async fn admit(
    object: &AuditExport,
    ctx: &Ctx,
    spec: &ExportSpec,
) -> Result<Result<Origin, ExportFailure>, Error> {
    if let Err(refusal) = ctx.exporter.confine(spec) {
        return Ok(Err(refusal));
    }
    let origin = trust::origin(object, &ctx.signer);
    if matches!(origin, Origin::Service { .. }) {
        return Ok(Ok(origin));
    }
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let admitted = trust::namespace_admits(&ctx.namespaces, &namespace, &object.spec.tenant_id)
        .await
        .map_err(Error::Namespace)?;
    Ok(admitted.map(|()| origin))
}

/// A resource naming a tenant its namespace does not allow (Failed/TenantNotAllowed) or a
/// destination outside the confinement (Failed/DestinationNotAllowed): once per generation,
/// nothing estimated, exported, fetched or recorded.
async fn report_not_allowed(
    object: &AuditExport,
    api: &Api<AuditExport>,
    ctx: &Ctx,
    refusal: ExportFailure,
) -> Result<Action, Error> {
    tracing::warn!(name = %object_key(object), tenant = %object.spec.tenant_id, code = %refusal.code, "AuditExport refused");
    let mut status = status_of(object, ctx);
    status.completed_at = None;
    status.checkpoint = None;
    status::set_failed(&mut status, &refusal, object.metadata.generation, ctx.now());
    let note = Note::warning(status::failure_reason(&refusal.code), refusal.message);
    write(ctx, api, object, status, note).await?;
    ctx.metrics.job_phase(ExportJobPhase::Failed);
    Ok(Action::await_change())
}

/// The checkpoint a job resumes from: the status' resume point with the full file list (from
/// the status or the progress file), or its first part when that list is not here.
async fn restore(object: &AuditExport, ctx: &Ctx, checkpoint: Checkpoint) -> Restored {
    let status = object.status.clone().unwrap_or_default();
    let saved = match object.metadata.uid.clone() {
        Some(uid) => {
            let files = ctx.progress.clone();
            match tokio::task::spawn_blocking(move || files.load(&uid)).await {
                Ok(Ok(saved)) => saved,
                Ok(Err(error)) => {
                    tracing::warn!(%error, name = %object_key(object), "export progress unusable");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, name = %object_key(object), "export progress unread");
                    None
                }
            }
        }
        None => None,
    };
    let restored = progress::restore(&status, checkpoint, saved);
    if let Some(why) = &restored.restart {
        tracing::warn!(name = %object_key(object), "{why}");
    }
    restored
}

async fn start(
    object: &AuditExport,
    api: &Api<AuditExport>,
    ctx: &Ctx,
    spec: ExportSpec,
    restored: Option<Restored>,
    origin: &Origin,
) -> Result<Action, Error> {
    let (checkpoint, restart) = match restored {
        Some(restored) => (Some(restored.checkpoint), restored.restart),
        None => (None, None),
    };
    let mut status = object.status.clone().unwrap_or_default();
    if status.phase != Some(ExportJobPhase::Pending) && checkpoint.is_none() {
        let estimate = estimate(object, ctx, &spec, origin).await?;
        let export_id = match (&status.export_id, origin) {
            (Some(export_id), _) => export_id.clone(),
            (None, Origin::Service { export_id, .. }) => export_id.clone(),
            (None, Origin::Namespace) => trust::derived_export_id(object, ctx.now()),
        };
        if *origin == Origin::Namespace {
            // Like the REST API: recorded before the export is accepted.
            let actor = trust::resource_actor(object);
            let event =
                super::audit::export_created(&export_id, &spec, estimate, &actor, ctx.now());
            ctx.audit.append(event).await.map_err(Error::Record)?;
        }
        status = AuditExportStatus {
            export_id: Some(export_id),
            estimated_records: Some(estimate),
            conditions: status.conditions,
            ..AuditExportStatus::default()
        };
        status::set_phase(
            &mut status,
            ExportJobPhase::Pending,
            object.metadata.generation,
            ctx.now(),
        );
        let note = format!(
            "export {} queued: about {estimate} records",
            status.export_id.clone().unwrap_or_default()
        );
        let note = Note::normal(reasons::QUEUED, note);
        write(ctx, api, object, status.clone(), note).await?;
        ctx.metrics.job_phase(ExportJobPhase::Pending);
    }
    let export_id = status
        .export_id
        .clone()
        .ok_or(Error::MissingObjectKey(".status.exportId"))?;
    let key = object_key(object);
    if !ctx.jobs.is_running(&key) {
        let tracking = Tracking {
            uid: object.metadata.uid.clone(),
            restart,
        };
        ctx.job_store
            .track(&key, Target::new(api, object), status, tracking);
        ctx.jobs.spawn(Job {
            key,
            export_id,
            spec,
            checkpoint,
        });
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// The estimate of a new export: the one the REST API made (its annotation on a resource it
/// created), else the engine's now.
async fn estimate(
    object: &AuditExport,
    ctx: &Ctx,
    spec: &ExportSpec,
    origin: &Origin,
) -> Result<u64, Error> {
    let annotated = object
        .annotations()
        .get(ESTIMATED_RECORDS_ANNOTATION)
        .and_then(|estimate| estimate.parse().ok());
    match (origin, annotated) {
        (Origin::Service { .. }, Some(estimate)) => Ok(estimate),
        _ => ctx.exporter.estimate(spec).await.map_err(Error::Estimate),
    }
}

async fn cancel(
    object: &AuditExport,
    api: &Api<AuditExport>,
    ctx: &Ctx,
    spec: Option<ExportSpec>,
) -> Result<Action, Error> {
    let key = object_key(object);
    if ctx.jobs.is_running(&key) {
        // The job task aborts its uploads and reports Cancelled.
        ctx.jobs.stop(&key, StopReason::Cancel);
        return Ok(Action::await_change());
    }
    let mut status = status_of(object, ctx);
    if let (Some(spec), Some(export_id)) = (&spec, &status.export_id)
        && status.started_at.is_some()
    {
        ctx.exporter
            .abort(export_id, spec)
            .await
            .map_err(Error::Cleanup)?;
    }
    status::set_phase(
        &mut status,
        ExportJobPhase::Cancelled,
        object.metadata.generation,
        ctx.now(),
    );
    let note = Note::normal(reasons::CANCELLED, "the export was cancelled");
    write(ctx, api, object, status, note).await?;
    ctx.metrics.job_phase(ExportJobPhase::Cancelled);
    Ok(Action::await_change())
}

/// Cleanup branch of the finalizer: stop the job, remove incomplete uploads.
async fn cleanup(object: &AuditExport, api: &Api<AuditExport>, ctx: &Ctx) -> Result<Action, Error> {
    let key = object_key(object);
    ctx.jobs
        .stop_and_wait(&key, StopReason::Delete, STOP_TIMEOUT)
        .await;
    let status = object.status.clone().unwrap_or_default();
    let unfinished = !matches!(
        status.phase,
        Some(ExportJobPhase::Completed | ExportJobPhase::Cancelled)
    );
    if let (true, Some(_), Some(export_id), Ok(spec)) = (
        unfinished,
        &status.started_at,
        &status.export_id,
        convert::export_spec(&object.spec),
    ) {
        ctx.exporter
            .abort(export_id, &spec)
            .await
            .map_err(Error::Cleanup)?;
        let note = Note::normal(reasons::CLEANED_UP, "incomplete uploads removed");
        ctx.status.publish(Target::new(api, object), note).await;
    }
    if let Some(uid) = object.metadata.uid.clone() {
        let files = ctx.progress.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || files.remove(&uid)).await {
            tracing::warn!(%error, name = %key, "failed to remove the export's progress");
        }
    }
    ctx.failures.lock().remove(&key);
    Ok(Action::await_change())
}

/// The status to update: the object's, or for a resource the REST API created and no
/// controller accepted yet (the REST API writes no status), one carrying its signed export id.
fn status_of(object: &AuditExport, ctx: &Ctx) -> AuditExportStatus {
    object.status.clone().unwrap_or_else(|| AuditExportStatus {
        export_id: match trust::origin(object, &ctx.signer) {
            Origin::Service { export_id, .. } => Some(export_id),
            Origin::Namespace => None,
        },
        ..AuditExportStatus::default()
    })
}

/// Writes `status` through the status writer, then publishes `note`.
async fn write(
    ctx: &Ctx,
    api: &Api<AuditExport>,
    object: &AuditExport,
    status: AuditExportStatus,
    note: Note,
) -> Result<(), Error> {
    ctx.status
        .apply(Target::new(api, object), status, Some(note))
        .await
        .map_err(Error::PatchStatus)
}
