//! Status and conditions, computed in one place (pure): each phase maps to one set of
//! `Ready` / `Progressing` / `Failed` conditions, and a condition's `lastTransitionTime`
//! changes only when its status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{AuditExportStatus, ExportJobPhase};
use crate::export::job::ExportFailure;

/// Condition types.
pub mod conditions {
    /// The export completed: every file and the manifest are uploaded.
    pub const READY: &str = "Ready";
    /// The export is queued or running.
    pub const PROGRESSING: &str = "Progressing";
    /// The export failed; `reason` and `message` say why.
    pub const FAILED: &str = "Failed";
}

/// Condition and Event reasons.
pub mod reasons {
    pub const QUEUED: &str = "Queued";
    pub const EXPORTING: &str = "Exporting";
    pub const COMPLETED: &str = "Completed";
    pub const CANCELLED: &str = "Cancelled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const EXPORT_FAILED: &str = "ExportFailed";
    pub const NO_FAILURE: &str = "NoFailure";
    /// The namespace's `audit.scailabs.ai/tenant` label does not allow the resource's tenant.
    pub const TENANT_NOT_ALLOWED: &str = "TenantNotAllowed";
    /// The destination or its credentials path lies outside the tenant's confinement.
    pub const DESTINATION_NOT_ALLOWED: &str = "DestinationNotAllowed";
    /// Event: the job started (a new snapshot).
    pub const STARTED: &str = "Started";
    /// Event: the job continues from the checkpoint of an earlier run.
    pub const RESUMED: &str = "Resumed";
    /// Event (warning): the file list of an earlier run is not in this replica's data
    /// directory, so the job starts over from its first part (same snapshot).
    pub const RESTARTED: &str = "Restarted";
    /// Event: a deleted export's incomplete uploads were removed.
    pub const CLEANED_UP: &str = "CleanedUp";
}

/// The time source (tests pin it).
pub type Clock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The condition reason of a failure code.
pub fn failure_reason(code: &str) -> &'static str {
    match code {
        VALIDATION_ERROR => reasons::INVALID_SPEC,
        super::trust::TENANT_NOT_ALLOWED => reasons::TENANT_NOT_ALLOWED,
        crate::export::policy::TENANT_ACCESS_DENIED
        | crate::export::policy::DESTINATION_NOT_ALLOWED => reasons::DESTINATION_NOT_ALLOWED,
        _ => reasons::EXPORT_FAILED,
    }
}

/// Error code of a spec that fails validation (as in the REST API).
pub const VALIDATION_ERROR: &str = "validation_error";

/// The one timestamp form of the service (`2026-04-23T18:00:00.123456Z`, see
/// [`crate::timestamp::format_micros`]) for the status' `startedAt` / `completedAt` and the REST
/// view's `created_at`; conditions keep Kubernetes' own `Time`.
pub fn rfc3339(now: Timestamp) -> String {
    crate::timestamp::format_micros(now.as_microsecond())
}

/// Sets `phase` (and `observedGeneration`), then recomputes the conditions.
pub fn set_phase(
    status: &mut AuditExportStatus,
    phase: ExportJobPhase,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.phase = Some(phase);
    if generation.is_some() {
        status.observed_generation = generation;
    }
    if matches!(
        phase,
        ExportJobPhase::Completed | ExportJobPhase::Failed | ExportJobPhase::Cancelled
    ) && status.completed_at.is_none()
    {
        status.completed_at = Some(rfc3339(now));
    }
    if phase != ExportJobPhase::Failed {
        status.error = None;
    }
    refresh_conditions(status, now);
}

/// Marks the export failed with `failure`.
pub fn set_failed(
    status: &mut AuditExportStatus,
    failure: &ExportFailure,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.error = Some(super::convert::export_error(failure));
    set_phase(status, ExportJobPhase::Failed, generation, now);
}

/// Recomputes the conditions from the phase, keeping `lastTransitionTime` of unchanged ones.
pub fn refresh_conditions(status: &mut AuditExportStatus, now: Timestamp) {
    let generation = status.observed_generation;
    let wanted = desired(status);
    let mut next = Vec::with_capacity(wanted.len());
    for (type_, value, reason, message) in wanted {
        let previous = status.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(old) if old.status == value => old.last_transition_time.clone(),
            _ => Time(now),
        };
        next.push(Condition {
            type_: type_.to_string(),
            status: value.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time,
        });
    }
    status.conditions = next;
}

type Wanted = (&'static str, &'static str, &'static str, String);

fn desired(status: &AuditExportStatus) -> [Wanted; 3] {
    use conditions::{FAILED, PROGRESSING, READY};
    let records = status.record_count.unwrap_or(0);
    let files = status.file_count.unwrap_or(status.files.len() as u64);
    let no_failure = (FAILED, "False", reasons::NO_FAILURE, String::new());
    match status.phase.unwrap_or(ExportJobPhase::Pending) {
        ExportJobPhase::Pending => [
            (
                READY,
                "False",
                reasons::QUEUED,
                "the export has not run yet".into(),
            ),
            (
                PROGRESSING,
                "True",
                reasons::QUEUED,
                "waiting for a free export slot".into(),
            ),
            no_failure,
        ],
        ExportJobPhase::Running => {
            let progress = match status.estimated_records {
                Some(estimate) => {
                    format!("{records} of about {estimate} records exported in {files} files")
                }
                None => format!("{records} records exported in {files} files"),
            };
            [
                (
                    READY,
                    "False",
                    reasons::EXPORTING,
                    "the export is running".into(),
                ),
                (PROGRESSING, "True", reasons::EXPORTING, progress),
                no_failure,
            ]
        }
        ExportJobPhase::Completed => {
            let done = format!("{records} records exported in {files} files");
            [
                (READY, "True", reasons::COMPLETED, done.clone()),
                (PROGRESSING, "False", reasons::COMPLETED, done),
                no_failure,
            ]
        }
        ExportJobPhase::Cancelled => {
            let message = String::from("the export was cancelled");
            [
                (READY, "False", reasons::CANCELLED, message.clone()),
                (PROGRESSING, "False", reasons::CANCELLED, message),
                (FAILED, "False", reasons::CANCELLED, String::new()),
            ]
        }
        ExportJobPhase::Failed => {
            let (code, message) = match &status.error {
                Some(error) => (error.code.as_str(), error.message.clone()),
                None => ("", "the export failed".to_string()),
            };
            let reason = failure_reason(code);
            [
                (READY, "False", reason, message.clone()),
                (PROGRESSING, "False", reason, message.clone()),
                (FAILED, "True", reason, message),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn condition<'a>(status: &'a AuditExportStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn each_phase_has_its_conditions() {
        let cases = [
            (
                ExportJobPhase::Pending,
                "False",
                "True",
                "False",
                reasons::QUEUED,
            ),
            (
                ExportJobPhase::Running,
                "False",
                "True",
                "False",
                reasons::EXPORTING,
            ),
            (
                ExportJobPhase::Completed,
                "True",
                "False",
                "False",
                reasons::COMPLETED,
            ),
            (
                ExportJobPhase::Cancelled,
                "False",
                "False",
                "False",
                reasons::CANCELLED,
            ),
        ];
        for (phase, ready, progressing, failed, reason) in cases {
            let mut status = AuditExportStatus::default();
            set_phase(&mut status, phase, Some(2), at(1000));
            assert_eq!(
                condition(&status, conditions::READY).status,
                ready,
                "{phase:?}"
            );
            assert_eq!(
                condition(&status, conditions::READY).reason,
                reason,
                "{phase:?}"
            );
            assert_eq!(
                condition(&status, conditions::PROGRESSING).status,
                progressing
            );
            assert_eq!(condition(&status, conditions::FAILED).status, failed);
            assert_eq!(
                condition(&status, conditions::READY).observed_generation,
                Some(2)
            );
        }
    }

    #[test]
    fn failures_name_their_reason() {
        let mut status = AuditExportStatus::default();
        let invalid = ExportFailure::new(VALIDATION_ERROR, "to: must be after from");
        set_failed(&mut status, &invalid, Some(1), at(5));
        let failed = condition(&status, conditions::FAILED);
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(failed.message, "to: must be after from");
        assert!(status.completed_at.is_some());
        let mut status = AuditExportStatus::default();
        set_failed(
            &mut status,
            &ExportFailure::new("destination_error", "bucket not found"),
            None,
            at(5),
        );
        assert_eq!(
            condition(&status, conditions::FAILED).reason,
            "ExportFailed"
        );
        assert_eq!(status.error.as_ref().unwrap().code, "destination_error");
    }

    #[test]
    fn transition_time_changes_only_when_the_status_flips() {
        let mut status = AuditExportStatus::default();
        set_phase(&mut status, ExportJobPhase::Pending, Some(1), at(10));
        set_phase(&mut status, ExportJobPhase::Running, Some(1), at(20));
        // Progressing stayed True; Ready stayed False.
        assert_eq!(
            condition(&status, conditions::PROGRESSING).last_transition_time,
            Time(at(10))
        );
        assert_eq!(
            condition(&status, conditions::READY).last_transition_time,
            Time(at(10))
        );
        set_phase(&mut status, ExportJobPhase::Completed, Some(1), at(30));
        assert_eq!(
            condition(&status, conditions::READY).last_transition_time,
            Time(at(30))
        );
        assert_eq!(
            condition(&status, conditions::FAILED).last_transition_time,
            Time(at(10))
        );
        assert_eq!(
            status.completed_at.as_deref(),
            Some("1970-01-01T00:00:30.000000Z")
        );
    }
}
