//! The `AuditExportSchedule` custom resource: a continuous export in a cluster, the sibling of
//! `AuditExport` (docs/lifecycle.md "Kubernetes: a sibling resource"). Its spec is the body of
//! `POST /v1/audit/export-schedules` in camelCase, its status the schedule's state: the
//! watermark, the run in progress (resumable), the last runs and a `Ready` condition.
//!
//! Doc comments on the types below are user documentation: they become the CRD's schema
//! descriptions (`kubectl explain auditexportschedule.spec`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::{
    ExportCheckpoint, ExportCompression, ExportDestination, ExportError, ExportFile,
    ExportFileFormat, ExportFilters,
};

/// A continuous export of one tenant's audit events into object storage (S3, GCS or Azure
/// Blob) on a cron schedule (UTC): each run exports the window from the previous run's end to
/// its tick minus `delaySeconds`, plus the events that arrived late for earlier windows, so
/// every event is delivered exactly once, in consecutive files under a date-partitioned prefix.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "audit.scailabs.ai",
    version = "v1alpha1",
    kind = "AuditExportSchedule",
    plural = "auditexportschedules",
    singular = "auditexportschedule",
    shortname = "aexs",
    category = "scaivault",
    namespaced,
    status = "AuditExportScheduleStatus",
    derive = "PartialEq",
    doc = "A continuous export of one tenant's ScaiVault audit events to object storage on a cron schedule (UTC), every event exactly once. The scaivault-audit operator runs it and reports the watermark and the last runs in status.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule", description = "Cron expression, UTC"),
    printcolumn(name = "Complete-Through", type_ = "string", json_path = ".status.completeThrough", description = "Every event before this time has been delivered"),
    printcolumn(name = "Runs", type_ = "integer", json_path = ".status.runsCompleted", description = "Runs completed"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.scheduleId) || self.spec == oldSelf.spec").message("spec is immutable once the schedule has started (status.scheduleId is set): create a new AuditExportSchedule instead").reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct AuditExportScheduleSpec {
    /// Tenant whose events are exported, e.g. `tnt_acme`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub tenant_id: String,
    /// Cron expression in UTC, as a CronJob's `schedule` (five fields or a macro such as
    /// `@hourly`; an optional leading sixth field gives seconds). Runs may not come closer than
    /// the service's `[export] schedule_min_interval_seconds` (default 60).
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Seconds a window's run waits after the window's end for late arrivals (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86_400))]
    pub delay_seconds: Option<u64>,
    /// Start of the first window, RFC 3339 (default: the resource's creation time). Older
    /// events are never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub start: Option<String>,
    /// File format of every run: `jsonl` or `csv`.
    pub format: ExportFileFormat,
    /// Compression of each part file: `none` (default) or `gzip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<ExportCompression>,
    /// Which events to export (the filters of `GET /v1/audit/logs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<ExportFilters>,
    /// Where the files are written; each run writes under
    /// `{prefix}{yyyy}/{mm}/{dd}/{HH}{MM}-{run}/`.
    pub destination: ExportDestination,
    /// Most events in one part file (default 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub max_records_per_file: Option<u64>,
}

/// Where the schedule stands. The run in progress lives here too (`currentRun`: its window,
/// snapshot and uploaded parts), written before the run writes anything, so a restarted
/// operator resumes it with the same window and after its last uploaded part.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditExportScheduleStatus {
    /// The schedule's id (`sch_…`); each run's export id is `{scheduleId}_r{run}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The watermark: every event from `spec.start` up to here has been delivered (late
    /// arrivals go into the next run). Moves only when a run has completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_through: Option<String>,
    /// The store snapshot of the last completed run: events committed after it that are older
    /// than `completeThrough` are the next run's late events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_through_seq: Option<u64>,
    /// Runs completed so far.
    #[serde(default)]
    pub runs_completed: u64,
    /// The next cron tick to run (in the past while missed ticks catch up), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
    /// The run in progress or being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<ScheduleCurrentRun>,
    /// The last completed runs, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub last_runs: Vec<ScheduleRun>,
    /// The last failure of the current run, while it is being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ScheduleRunFailure>,
    /// `Ready`: `True` while runs succeed, `False` with the failing run's error code as reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::crd::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A run that started and has not completed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCurrentRun {
    /// Run number (1 for the first).
    pub run: u64,
    /// The run's export id.
    pub export_id: String,
    /// The cron tick it belongs to, RFC 3339.
    pub scheduled_at: String,
    /// Window start (the watermark when it started), RFC 3339.
    pub from: String,
    /// Window end (its tick minus the delay), RFC 3339.
    pub to: String,
    /// Where its files go.
    pub prefix: String,
    /// When it first started, RFC 3339.
    pub started_at: String,
    /// Its snapshot and resume point.
    pub checkpoint: ExportCheckpoint,
    /// Parts uploaded so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportFile>,
}

/// A completed run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    pub run: u64,
    pub export_id: String,
    pub scheduled_at: String,
    pub from: String,
    pub to: String,
    /// Events delivered by the run.
    pub record_count: u64,
    /// Late events among them (older than `from`).
    pub late_count: u64,
    /// Part files written.
    pub files: u64,
    /// The manifest's object key.
    pub manifest: String,
    pub started_at: String,
    pub completed_at: String,
}

/// The last failed attempt of the current run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRunFailure {
    pub run: u64,
    pub attempts: u32,
    pub error: ExportError,
    pub failed_at: String,
    /// When the next attempt starts, RFC 3339.
    pub retry_at: String,
}
