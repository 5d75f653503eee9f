//! What every handler shares: cheap handles only (Arcs and clones of them).

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;

use crate::api::audit_trail::AuditRecorder;
use crate::api::metrics::ApiMetrics;
use crate::api::rate_limit::RateLimiter;
use crate::api::work_limit::WorkGates;
use crate::auth::Authenticator;
use crate::config::{IngestLimits, RateLimits, RetentionSettings, WorkLimits};
use crate::export::engine::ExportEngine;
use crate::export::registry::ExportRegistry;
use crate::export::schedule::scheduler::Scheduler;
use crate::integrity::checkpoint::CheckpointLog;
use crate::query::cursor::CursorCodec;
use crate::store::Store;

/// Shared application state.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub cursors: CursorCodec,
    /// The Prometheus registry, complete once the server starts (read-only afterwards).
    pub metrics: Arc<Registry>,
    /// The REST metrics (registered in `metrics` by [`AppState::new`]).
    pub api_metrics: ApiMetrics,
    pub limits: IngestLimits,
    pub rate_limiter: Arc<RateLimiter>,
    /// Estimates exports (and, standalone, runs them).
    pub export_engine: ExportEngine,
    /// Where exports are recorded: the standalone runner or the AuditExport resources.
    pub exports: Arc<dyn ExportRegistry>,
    ids: Arc<Mutex<ulid::Generator>>,
    /// Global bounds on summaries and ingest parsing.
    pub work: WorkGates,
    /// Where reads of audit data are recorded (the audit of the audit); off unless set with
    /// [`AppState::with_audit_trail`].
    pub audit_trail: AuditRecorder,
    /// The signed checkpoint log and its key ring (`GET /v1/audit/integrity/…`); `None` only
    /// where no service runs (`serve` always opens it).
    pub checkpoints: Option<Arc<CheckpointLog>>,
    /// The retention settings (`GET /v1/audit/retention`); the defaults unless set with
    /// [`AppState::with_retention`].
    pub retention: Arc<RetentionSettings>,
    /// Continuous exports run by this process (standalone; `None` with the operator).
    pub schedules: Option<Scheduler>,
    /// The cluster's AuditExportSchedules (operator mode): listed and shown by the REST API,
    /// created and deleted with kubectl.
    pub cluster_schedules: Option<crate::operator::schedule_registry::KubeSchedules>,
}

/// The export side of the state.
#[derive(Clone)]
pub struct ExportHandles {
    pub engine: ExportEngine,
    pub registry: Arc<dyn ExportRegistry>,
}

impl AppState {
    pub fn new(
        store: Store,
        auth: Authenticator,
        cursors: CursorCodec,
        mut metrics: Registry,
        limits: IngestLimits,
        rate_limits: RateLimits,
        exports: ExportHandles,
    ) -> Self {
        let api_metrics = ApiMetrics::register(&mut metrics);
        AppState {
            store,
            auth: Arc::new(auth),
            cursors,
            metrics: Arc::new(metrics),
            api_metrics,
            limits,
            rate_limiter: Arc::new(RateLimiter::new(rate_limits)),
            export_engine: exports.engine,
            exports: exports.registry,
            ids: Arc::new(Mutex::new(ulid::Generator::new())),
            work: WorkGates::new(&WorkLimits::default()),
            audit_trail: AuditRecorder::disabled(),
            checkpoints: None,
            retention: Arc::new(RetentionSettings::default()),
            schedules: None,
            cluster_schedules: None,
        }
    }

    /// The state serving and running `scheduler`'s export schedules.
    pub fn with_schedules(mut self, scheduler: Scheduler) -> Self {
        self.schedules = Some(scheduler);
        self
    }

    /// The state listing the cluster's AuditExportSchedules (operator mode).
    pub fn with_cluster_schedules(
        mut self,
        schedules: crate::operator::schedule_registry::KubeSchedules,
    ) -> Self {
        self.cluster_schedules = Some(schedules);
        self
    }

    /// The state recording reads of audit data through `recorder`.
    pub fn with_audit_trail(mut self, recorder: AuditRecorder) -> Self {
        self.audit_trail = recorder;
        self
    }

    /// The state serving `log`'s checkpoints and its key ring's public keys.
    pub fn with_checkpoints(mut self, log: Arc<CheckpointLog>) -> Self {
        self.checkpoints = Some(log);
        self
    }

    /// The state reporting these retention settings.
    pub fn with_retention(mut self, retention: Arc<RetentionSettings>) -> Self {
        self.retention = retention;
        self
    }

    /// The state with these work bounds instead of the defaults.
    pub fn with_work_limits(mut self, limits: &WorkLimits) -> Self {
        self.work = WorkGates::new(limits);
        self
    }

    /// A new event id: `log_` and a ULID, monotonic within this process so ids sort in
    /// ingest order.
    pub fn new_event_id(&self) -> String {
        let ulid = match self.ids.lock().generate() {
            Ok(ulid) => ulid,
            // 2^80 ids in one millisecond: fall back to a fresh random one.
            Err(_) => ulid::Ulid::generate(),
        };
        format!("log_{ulid}")
    }
}
