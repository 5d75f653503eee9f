//! Conversions between the `AuditExportSchedule` resource and the schedule's pure state
//! ([`ScheduleRecord`]): the controller reads the record from the resource's status, lets the
//! same logic as standalone (`due`, `plan_run`, `complete`, `fail`) decide, and writes the
//! record back as status. Pure: no I/O.
//!
//! The run in progress is kept in `status.currentRun` as its number, tick, start time and
//! checkpoint; its export (window, late events, prefix) is recomputed with
//! [`ScheduleRecord::plan_run`], which depends only on the watermark, which does not move
//! while a run is in progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::convert::{export_error, export_file, export_spec, file_entry};
use super::crd::{AuditExportSpec, ExportCheckpoint};
use super::schedule_crd::{
    AuditExportScheduleSpec, AuditExportScheduleStatus, ScheduleCurrentRun, ScheduleRun,
    ScheduleRunFailure,
};
use crate::event::FieldErrors;
use crate::export::job::{Checkpoint, ExportFailure};
use crate::export::schedule::{
    DEFAULT_DELAY_SECONDS, MAX_DELAY_SECONDS, RunFailure, RunRecord, ScheduleRecord, ScheduleSpec,
    ScheduleState, parse_schedule,
};
use crate::store::search::SortKey;
use crate::timestamp;

/// Who created a schedule: the resource, by namespace and name (`kubernetes:NAMESPACE/NAME`,
/// the actor of an AuditExport applied with kubectl too).
pub fn created_by(namespace: &str, name: &str) -> String {
    format!("kubernetes:{namespace}/{name}")
}

/// Validates the resource's spec exactly as `POST /v1/audit/export-schedules` validates its
/// body: the cron (no more frequent than `min_interval_seconds`), the delay, the start
/// (default: `created_at_us`, the resource's creation), and the export fields through the one
/// export validator.
pub fn schedule_spec(
    resource: &AuditExportScheduleSpec,
    schedule_id: String,
    created_by: &str,
    min_interval_seconds: u64,
    created_at_us: i64,
) -> Result<ScheduleSpec, FieldErrors> {
    let mut errors = FieldErrors::default();
    if let Err(found) = parse_schedule(&resource.schedule, min_interval_seconds) {
        errors.0.extend(found.0);
    }
    let delay_seconds = resource.delay_seconds.unwrap_or(DEFAULT_DELAY_SECONDS);
    if delay_seconds > MAX_DELAY_SECONDS {
        errors.add(
            "delaySeconds",
            format!("must be an integer from 0 to {MAX_DELAY_SECONDS}"),
        );
    }
    let start_us = match &resource.start {
        None => created_at_us,
        Some(text) => timestamp::parse_rfc3339_micros(text).unwrap_or_else(|problem| {
            errors.add("start", problem);
            created_at_us
        }),
    };
    let as_export = AuditExportSpec {
        tenant_id: resource.tenant_id.clone(),
        from: timestamp::format_micros(start_us),
        to: timestamp::format_micros(start_us.saturating_add(1)),
        format: resource.format,
        compression: resource.compression,
        filters: resource.filters.clone(),
        destination: resource.destination.clone(),
        max_records_per_file: resource.max_records_per_file,
    };
    let export = export_spec(&as_export).map_err(|found| errors.0.extend(found.0));
    match export {
        Ok(export) if errors.is_empty() => Ok(ScheduleSpec {
            schedule_id,
            tenant_id: resource.tenant_id.clone(),
            schedule: resource.schedule.trim().to_string(),
            delay_seconds,
            start: timestamp::format_micros(start_us),
            export,
            created_at: timestamp::format_micros(created_at_us),
            created_by: created_by.to_string(),
        }),
        _ => Err(errors),
    }
}

/// The schedule's record: `spec` and the state its resource's status holds (a new schedule,
/// first run at the first tick after `now_us`, when the status holds none yet).
pub fn schedule_record(
    spec: ScheduleSpec,
    status: Option<&AuditExportScheduleStatus>,
    now_us: i64,
) -> Result<ScheduleRecord, FieldErrors> {
    let Some(status) = status.filter(|status| status.complete_through.is_some()) else {
        return ScheduleRecord::new(spec, now_us);
    };
    let time = |field: &str, text: Option<&String>| match text {
        Some(text) => timestamp::parse_rfc3339_micros(text).map_err(|problem| {
            let mut errors = FieldErrors::default();
            errors.add(format!("status.{field}"), problem);
            errors
        }),
        None => Ok(i64::MAX),
    };
    let mut record = ScheduleRecord {
        spec,
        state: ScheduleState {
            watermark_us: time("completeThrough", status.complete_through.as_ref())?,
            watermark_seq: status.complete_through_seq,
            runs_completed: status.runs_completed,
            next_run_us: time("nextRunAt", status.next_run_at.as_ref())?,
            current: None,
            history: status.last_runs.iter().map(run_record).collect(),
            failure: None,
        },
    };
    // Only the next run can be in progress or failing: a `currentRun` or `failure` of an
    // earlier run is a leftover (a status written by a merge rather than an apply that drops
    // what it omits) and is ignored.
    let next = status.runs_completed.saturating_add(1);
    if let Some(current) = status
        .current_run
        .as_ref()
        .filter(|current| current.run == next)
    {
        let tick_us = time("currentRun.scheduledAt", Some(&current.scheduled_at))?;
        let started_us = time("currentRun.startedAt", Some(&current.started_at))?;
        let next_run_us = record.state.next_run_us;
        record.state.next_run_us = tick_us;
        let planned = record.plan_run(resume_point(current), started_us);
        record.state.next_run_us = next_run_us;
        record.state.current = Some(planned);
    }
    if let Some(failure) = status
        .failure
        .as_ref()
        .filter(|failure| failure.run == next)
    {
        record.state.failure = Some(RunFailure {
            run: failure.run,
            attempts: failure.attempts,
            error: ExportFailure::new(&failure.error.code, &failure.error.message),
            failed_at: failure.failed_at.clone(),
            retry_at_us: time("failure.retryAt", Some(&failure.retry_at))?,
        });
    }
    Ok(record)
}

/// The resource status of `record`, with a `Ready` condition (its transition time kept from
/// `previous` while its status does not change).
pub fn schedule_status(
    record: &ScheduleRecord,
    previous: Option<&AuditExportScheduleStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> AuditExportScheduleStatus {
    let state = &record.state;
    let current_run = state.current.as_ref().map(|current| ScheduleCurrentRun {
        run: current.run,
        export_id: current.export_id.clone(),
        scheduled_at: timestamp::format_micros(current.tick_us),
        from: current.spec.from.clone(),
        to: current.spec.to.clone(),
        prefix: current.spec.destination.prefix.clone(),
        started_at: current.started_at.clone(),
        checkpoint: ExportCheckpoint {
            snapshot_seq: current.checkpoint.snapshot_seq,
            after_timestamp_us: current.checkpoint.after.map(|key| key.timestamp_us),
            after_seq: current.checkpoint.after.map(|key| key.seq),
        },
        files: current.checkpoint.files.iter().map(export_file).collect(),
    });
    let failure = state.failure.as_ref().map(|failure| ScheduleRunFailure {
        run: failure.run,
        attempts: failure.attempts,
        error: export_error(&failure.error),
        failed_at: failure.failed_at.clone(),
        retry_at: timestamp::format_micros(failure.retry_at_us),
    });
    AuditExportScheduleStatus {
        schedule_id: Some(record.spec.schedule_id.clone()),
        complete_through: Some(timestamp::format_micros(state.watermark_us)),
        complete_through_seq: state.watermark_seq,
        runs_completed: state.runs_completed,
        next_run_at: Some(timestamp::format_micros(state.next_run_us)),
        current_run,
        last_runs: state.history.iter().map(schedule_run).collect(),
        failure,
        conditions: vec![ready_condition(record, previous, generation, now)],
        observed_generation: generation,
    }
}

/// `Ready`: `True` (`Scheduled` before the first run, then `RunSucceeded`) or `False` with the
/// failing run's error code as reason, its attempts and next retry in the message.
fn ready_condition(
    record: &ScheduleRecord,
    previous: Option<&AuditExportScheduleStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let state = &record.state;
    let (status, reason, message) = match &state.failure {
        Some(failure) => (
            "False",
            failure.error.code.clone(),
            format!(
                "run {} failed {} time(s): {}; retrying at {}",
                failure.run,
                failure.attempts,
                failure.error.message,
                timestamp::format_micros(failure.retry_at_us)
            ),
        ),
        None => (
            "True",
            if state.runs_completed == 0 {
                "Scheduled".to_string()
            } else {
                "RunSucceeded".to_string()
            },
            format!("{} run(s) completed", state.runs_completed),
        ),
    };
    let last_transition_time = previous
        .and_then(|previous| previous.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|old| old.status == status)
        .map_or(Time(now), |old| old.last_transition_time.clone());
    Condition {
        type_: "Ready".to_string(),
        status: status.to_string(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn resume_point(current: &ScheduleCurrentRun) -> Checkpoint {
    let resume = &current.checkpoint;
    let after = match (resume.after_timestamp_us, resume.after_seq) {
        (Some(timestamp_us), Some(seq)) => Some(SortKey { timestamp_us, seq }),
        _ => None,
    };
    Checkpoint {
        snapshot_seq: resume.snapshot_seq,
        files: current.files.iter().map(file_entry).collect(),
        after,
    }
}

fn run_record(run: &ScheduleRun) -> RunRecord {
    RunRecord {
        run: run.run,
        export_id: run.export_id.clone(),
        scheduled_at: run.scheduled_at.clone(),
        from: run.from.clone(),
        to: run.to.clone(),
        record_count: run.record_count,
        late_count: run.late_count,
        files: run.files,
        manifest: run.manifest.clone(),
        started_at: run.started_at.clone(),
        completed_at: run.completed_at.clone(),
    }
}

fn schedule_run(run: &RunRecord) -> ScheduleRun {
    ScheduleRun {
        run: run.run,
        export_id: run.export_id.clone(),
        scheduled_at: run.scheduled_at.clone(),
        from: run.from.clone(),
        to: run.to.clone(),
        record_count: run.record_count,
        late_count: run.late_count,
        files: run.files,
        manifest: run.manifest.clone(),
        started_at: run.started_at.clone(),
        completed_at: run.completed_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::export::schedule::NextRun;
    use crate::export::schedule::new_schedule_id;
    use crate::operator::crd::{DestinationKind, ExportDestination, ExportFileFormat};

    fn at(text: &str) -> i64 {
        timestamp::parse_rfc3339_micros(text).unwrap()
    }

    fn resource(schedule: &str) -> AuditExportScheduleSpec {
        AuditExportScheduleSpec {
            tenant_id: "tnt_acme".into(),
            schedule: schedule.into(),
            delay_seconds: Some(60),
            start: Some("2026-12-03T14:00:00Z".into()),
            format: ExportFileFormat::Jsonl,
            compression: None,
            filters: None,
            destination: ExportDestination {
                kind: DestinationKind::S3,
                bucket: "acme-audit".into(),
                prefix: Some("continuous/".into()),
                credentials_path: Some("tenants/tnt_acme/aws/writer".into()),
            },
            max_records_per_file: None,
        }
    }

    /// The record survives a trip through the status at every step of its life.
    fn through_status(record: &ScheduleRecord, now_us: i64) -> ScheduleRecord {
        let status = schedule_status(record, None, Some(1), Timestamp::UNIX_EPOCH);
        let json = serde_json::to_value(&status).unwrap();
        let status: AuditExportScheduleStatus = serde_json::from_value(json).unwrap();
        schedule_record(record.spec.clone(), Some(&status), now_us).unwrap()
    }

    #[test]
    fn the_schedule_state_lives_in_the_status() {
        let created = at("2026-12-03T14:03:00Z");
        let spec = schedule_spec(
            &resource("*/10 * * * *"),
            new_schedule_id(),
            &created_by("team-a", "acme"),
            60,
            created,
        )
        .unwrap();
        let mut record = schedule_record(spec, None, created).unwrap();
        assert_eq!(through_status(&record, created), record);
        let now = at("2026-12-03T14:10:00Z");
        assert_eq!(record.due(now), NextRun::Run);
        // A run in progress with one part uploaded: resumed with the same window and parts.
        let mut checkpoint = Checkpoint::start(17);
        checkpoint.files.push(crate::export::job::FileEntry {
            key: "continuous/2026/12/03/1400-000001/part-0001.jsonl".into(),
            size_bytes: 10,
            records: 2,
            sha256: "ab".repeat(32),
            first_event: None,
            last_event: None,
        });
        checkpoint.after = Some(SortKey {
            timestamp_us: at("2026-12-03T14:05:00Z"),
            seq: 9,
        });
        record.state.current = Some(record.plan_run(checkpoint, now));
        assert_eq!(through_status(&record, now), record);
        // A failed attempt: the same run, retried later.
        record.fail(
            ExportFailure::new("destination_not_found", "gone"),
            2_000_000,
            now,
        );
        let restored = through_status(&record, now);
        assert_eq!(restored, record);
        let status = schedule_status(&restored, None, Some(1), Timestamp::UNIX_EPOCH);
        assert_eq!(status.conditions[0].status, "False");
        assert_eq!(status.conditions[0].reason, "destination_not_found");
        // Completed: the watermark moves, the history holds the run.
        record.complete(None, 1, 2, now + 3_000_000);
        let restored = through_status(&record, now);
        assert_eq!(restored, record);
        let status = schedule_status(&restored, None, Some(1), Timestamp::UNIX_EPOCH);
        assert_eq!(
            status.complete_through.as_deref(),
            Some("2026-12-03T14:09:00.000000Z")
        );
        assert_eq!(status.complete_through_seq, Some(17));
        assert_eq!(status.last_runs.len(), 1);
        assert_eq!(status.conditions[0].reason, "RunSucceeded");
        // A completed run's `currentRun` and `failure` left in the status are not resumed.
        let mut stale = status.clone();
        stale.current_run = Some(ScheduleCurrentRun {
            run: 1,
            ..through_status_current(&restored, now)
        });
        stale.failure = Some(ScheduleRunFailure {
            run: 1,
            attempts: 1,
            error: export_error(&ExportFailure::new("destination_not_found", "gone")),
            failed_at: "2026-12-03T14:10:00Z".into(),
            retry_at: "2026-12-03T14:10:02Z".into(),
        });
        let ignored = schedule_record(record.spec.clone(), Some(&stale), now).unwrap();
        assert_eq!(ignored, record);
    }

    /// A `currentRun` as the status holds it while `record`'s next run is in progress.
    fn through_status_current(record: &ScheduleRecord, now_us: i64) -> ScheduleCurrentRun {
        let mut running = record.clone();
        running.state.current = Some(running.plan_run(Checkpoint::start(99), now_us));
        schedule_status(&running, None, Some(1), Timestamp::UNIX_EPOCH)
            .current_run
            .unwrap()
    }

    #[test]
    fn the_spec_is_validated_as_the_rest_body() {
        let fast = schedule_spec(&resource("*/5 * * * * *"), new_schedule_id(), "x", 60, 0)
            .unwrap_err()
            .0;
        assert!(fast["schedule"].contains("minimum interval"), "{fast:?}");
        let mut bad = resource("* * * * *");
        bad.delay_seconds = Some(86_401);
        bad.start = Some("soon".into());
        bad.destination.bucket = String::new();
        let errors = schedule_spec(&bad, new_schedule_id(), "x", 60, 0)
            .unwrap_err()
            .0;
        for field in ["delaySeconds", "start", "destination.bucket"] {
            assert!(errors.contains_key(field), "{field}: {errors:?}");
        }
    }
}
