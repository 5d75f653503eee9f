//! Continuous (scheduled) exports: a tenant's trail delivered into its own destination on a
//! cron schedule, every event exactly once (docs/lifecycle.md "Continuous exports").
//!
//! Run `k` fires at cron tick `c_k` and exports the window `[T_{k-1}, T_k)` with
//! `T_k = c_k − delay`, from a snapshot `S_k` (the store's committed sequence when the run
//! starts):
//!
//! ```text
//! run k = { ts in [T_{k-1}, T_k), seq < S_k }                  the window
//!       ∪ { ts in [T_0, T_{k-1}), S_{k-1} <= seq < S_k }       late events
//! ```
//!
//! Every event `(ts, seq)` with `ts >= T_0` lands in exactly one run: let `k*` be the first run
//! whose snapshot holds it (`seq < S_{k*}`). If `ts >= T_{k*-1}`, it is in the window of the
//! run `j >= k*` with `ts in [T_{j-1}, T_j)` (and `seq < S_{k*} <= S_j`), and in no late set
//! (those need `ts < T_{m-1}` with `m = k*`). If `ts < T_{k*-1}`, no window holds it in time
//! (window `j < k*` has `seq >= S_j`), and the late set of run `k*` does. An event with a
//! timestamp inside a window but committed after that window's snapshot is therefore the next
//! run's late event. The first run has no late set (`S_0` = nothing before it); events older
//! than `T_0` (the schedule's `start`) are never exported. `T` and `S` only move when a run has
//! completed: a failed run is retried with the same window, snapshot and prefix.
//!
//! - [`cron`]: the cron expressions (UTC, optional seconds field);
//! - this module: the schedule's spec and state, and what its next run exports;
//! - [`files`]: the schedules' durable files in the data directory;
//! - [`store`]: where the schedules are kept (the files, or a JetStream key-value bucket
//!   shared by a cluster's replicas);
//! - [`scheduler`]: runs due schedules on the export engine, retries, catch-up.

pub mod cron;
pub mod files;
pub mod scheduler;
pub mod store;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::cron::Cron;
use super::job::{Checkpoint, ExportFailure, ExportSpec, LateEvents, LateSummary};
use super::request::ExportRequest;
use crate::event::FieldErrors;
use crate::timestamp;

/// Default delay between a window's end and the run that exports it (late arrivals).
pub const DEFAULT_DELAY_SECONDS: u64 = 300;
/// Largest accepted delay (one day).
pub const MAX_DELAY_SECONDS: u64 = 86_400;
/// Default of `[export] schedule_min_interval_seconds`: the shortest interval between two runs
/// of a schedule.
pub const DEFAULT_MIN_INTERVAL_SECONDS: u64 = 60;
/// Largest accepted `schedule_min_interval_seconds` (one day: every cron fires at least that
/// often on its matching days).
pub const MAX_MIN_INTERVAL_SECONDS: u64 = 86_400;
/// Runs kept in a schedule's status (newest last).
pub const MAX_HISTORY: usize = 20;
/// Schedules one tenant may have.
pub const MAX_SCHEDULES_PER_TENANT: usize = 20;
/// Longest accepted cron expression.
const MAX_CRON_CHARS: usize = 128;

/// The fields of a `POST /v1/audit/export-schedules` body besides an export's own (`format`,
/// `compression`, `filters`, `destination`, `max_records_per_file`).
pub const SCHEDULE_FIELDS: &[&str] = &["schedule", "delay_seconds", "start"];

/// A validated schedule of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// `sch_` and a lowercase ULID.
    pub schedule_id: String,
    pub tenant_id: String,
    /// Cron expression, UTC ([`cron`]).
    pub schedule: String,
    pub delay_seconds: u64,
    /// `T_0`: the first window's start, RFC 3339 UTC with microseconds.
    pub start: String,
    /// What each run exports; its `from`, `to` and `late` are set per run and the run's
    /// prefix is [`run_prefix`] of its `destination.prefix`.
    pub export: ExportSpec,
    pub created_at: String,
    pub created_by: String,
}

/// Where a schedule stands (persisted with its spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// `T`: every event before it (from `start` on) has been delivered, microseconds.
    pub watermark_us: i64,
    /// `S`: the snapshot of the last completed run (`None` before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_seq: Option<u64>,
    /// Completed runs (the next run's number is this plus one).
    pub runs_completed: u64,
    /// The next cron tick to run, microseconds (may lie in the past: a missed run).
    pub next_run_us: i64,
    /// The run in progress (its window, snapshot and parts are fixed once it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentRun>,
    /// The last completed runs, oldest first, at most [`MAX_HISTORY`].
    #[serde(default)]
    pub history: VecDeque<RunRecord>,
    /// The last failure of the current run, if its last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RunFailure>,
}

/// A run that started and has not completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRun {
    pub run: u64,
    pub export_id: String,
    /// The cron tick it belongs to, microseconds.
    pub tick_us: i64,
    /// The export of this run (window, late events, prefix).
    pub spec: ExportSpec,
    pub checkpoint: Checkpoint,
    pub started_at: String,
}

/// The last failure of the current run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    pub run: u64,
    pub attempts: u32,
    pub error: ExportFailure,
    pub failed_at: String,
    /// When the next attempt starts, microseconds.
    pub retry_at_us: i64,
}

/// A completed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: u64,
    pub export_id: String,
    pub scheduled_at: String,
    pub from: String,
    pub to: String,
    pub record_count: u64,
    /// Late events among `record_count`.
    pub late_count: u64,
    pub files: u64,
    /// The manifest's object key at the destination.
    pub manifest: String,
    pub started_at: String,
    pub completed_at: String,
}

/// A schedule and its state: what its file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub spec: ScheduleSpec,
    pub state: ScheduleState,
}

/// What a run that is due does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextRun {
    /// Nothing is due before this time (microseconds).
    Wait(i64),
    /// The tick's window is empty (its end is not after the watermark): skip to the next tick.
    Skip,
    /// Start (or resume) a run.
    Run,
}

impl ScheduleRecord {
    /// A new schedule: nothing delivered yet, the first run at the first tick after `now_us`.
    pub fn new(spec: ScheduleSpec, now_us: i64) -> Result<ScheduleRecord, FieldErrors> {
        let cron = parse_cron(&spec.schedule)?;
        let watermark_us = timestamp::parse_rfc3339_micros(&spec.start)
            .map_err(|problem| field_error("start", problem))?;
        let next_run_us = cron
            .next_after(now_us)
            .ok_or_else(|| field_error("schedule", "never fires"))?;
        Ok(ScheduleRecord {
            spec,
            state: ScheduleState {
                watermark_us,
                next_run_us,
                ..ScheduleState::default()
            },
        })
    }

    /// What is due at `now_us`.
    pub fn due(&self, now_us: i64) -> NextRun {
        let state = &self.state;
        if let Some(failure) = &state.failure
            && failure.retry_at_us > now_us
        {
            return NextRun::Wait(failure.retry_at_us);
        }
        if state.current.is_some() {
            return NextRun::Run;
        }
        if state.next_run_us > now_us {
            return NextRun::Wait(state.next_run_us);
        }
        if self.window_end(state.next_run_us) <= state.watermark_us {
            NextRun::Skip
        } else {
            NextRun::Run
        }
    }

    /// The end of the window of the run at `tick_us`.
    pub fn window_end(&self, tick_us: i64) -> i64 {
        let delay = i64::try_from(self.spec.delay_seconds).unwrap_or(i64::MAX);
        tick_us.saturating_sub(delay.saturating_mul(1_000_000))
    }

    /// The export of the run at the next tick, from `checkpoint`'s snapshot.
    pub fn plan_run(&self, checkpoint: Checkpoint, now_us: i64) -> CurrentRun {
        let state = &self.state;
        let run = state.runs_completed + 1;
        let tick_us = state.next_run_us;
        let mut spec = self.spec.export.clone();
        spec.from = timestamp::format_micros(state.watermark_us);
        spec.to = timestamp::format_micros(self.window_end(tick_us));
        spec.destination.prefix = run_prefix(&spec.destination.prefix, state.watermark_us, run);
        spec.late = state.watermark_seq.map(|since_seq| LateEvents {
            since: self.spec.start.clone(),
            since_seq,
        });
        CurrentRun {
            run,
            export_id: format!("{}_r{run:06}", self.spec.schedule_id),
            tick_us,
            spec,
            checkpoint,
            started_at: timestamp::format_micros(now_us),
        }
    }

    /// Moves past a tick whose window is empty.
    pub fn skip_tick(&mut self) {
        self.state.next_run_us = self.next_tick(self.state.next_run_us);
    }

    /// Records the current run as completed: the watermark moves to its window's end and its
    /// snapshot, and the next tick follows the run's own (missed ticks run next, in order).
    pub fn complete(&mut self, late: Option<LateSummary>, files: u64, records: u64, now_us: i64) {
        let Some(current) = self.state.current.take() else {
            return;
        };
        let state = &mut self.state;
        state.watermark_us =
            timestamp::parse_rfc3339_micros(&current.spec.to).unwrap_or(state.watermark_us);
        state.watermark_seq = Some(current.checkpoint.snapshot_seq);
        state.runs_completed = current.run;
        state.failure = None;
        state.history.push_back(RunRecord {
            run: current.run,
            export_id: current.export_id.clone(),
            scheduled_at: timestamp::format_micros(current.tick_us),
            from: current.spec.from.clone(),
            to: current.spec.to.clone(),
            record_count: records,
            late_count: late.map_or(0, |late| late.count),
            files,
            manifest: current.spec.manifest_key(),
            started_at: current.started_at.clone(),
            completed_at: timestamp::format_micros(now_us),
        });
        while state.history.len() > MAX_HISTORY {
            state.history.pop_front();
        }
        self.state.next_run_us = self.next_tick(current.tick_us);
    }

    /// Records a failed attempt of the current run: retried after `backoff` (nothing else
    /// moves).
    pub fn fail(&mut self, error: ExportFailure, backoff_us: i64, now_us: i64) {
        let run = self.state.runs_completed + 1;
        let attempts = self
            .state
            .failure
            .as_ref()
            .filter(|failure| failure.run == run)
            .map_or(0, |failure| failure.attempts);
        self.state.failure = Some(RunFailure {
            run,
            attempts: attempts.saturating_add(1),
            error,
            failed_at: timestamp::format_micros(now_us),
            retry_at_us: now_us.saturating_add(backoff_us),
        });
    }

    fn next_tick(&self, after_us: i64) -> i64 {
        Cron::parse(&self.spec.schedule)
            .ok()
            .and_then(|cron| cron.next_after(after_us))
            .unwrap_or(i64::MAX)
    }
}

/// The prefix of run `run` whose window starts at `from_us`:
/// `{prefix}{yyyy}/{mm}/{dd}/{HH}{MM}-{run:06}/` (UTC).
pub fn run_prefix(prefix: &str, from_us: i64, run: u64) -> String {
    let seconds = from_us.div_euclid(1_000_000);
    let (year, month, day) = timestamp::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{prefix}{year:04}/{month:02}/{day:02}/{:02}{:02}-{run:06}/",
        of_day / 3600,
        of_day / 60 % 60
    )
}

/// A validated `schedule`.
pub fn parse_cron(text: &str) -> Result<Cron, FieldErrors> {
    if text.chars().count() > MAX_CRON_CHARS {
        return Err(field_error(
            "schedule",
            &format!("must be at most {MAX_CRON_CHARS} characters"),
        ));
    }
    Cron::parse(text).map_err(|error| field_error("schedule", &error.to_string()))
}

/// A validated `schedule` whose consecutive runs never come closer than
/// `min_interval_seconds` (`[export] schedule_min_interval_seconds`: every run commits the
/// index and writes a manifest, so a tenant may not run them every second).
pub fn parse_schedule(text: &str, min_interval_seconds: u64) -> Result<Cron, FieldErrors> {
    let cron = parse_cron(text)?;
    let interval = cron.min_interval_seconds();
    if u64::try_from(interval).unwrap_or(0) < min_interval_seconds {
        return Err(field_error(
            "schedule",
            &format!(
                "runs may come {interval} s apart; the minimum interval between runs is \
                 {min_interval_seconds} s"
            ),
        ));
    }
    Ok(cron)
}

/// Reads and validates a `POST /v1/audit/export-schedules` body for `tenant_id`: the schedule
/// fields (the cron no more frequent than `min_interval_seconds`, see [`parse_schedule`]), and
/// the export fields through the one export validator ([`ExportRequest`]).
pub fn spec_from_body(
    body: &Value,
    tenant_id: &str,
    schedule_id: String,
    created_by: &str,
    min_interval_seconds: u64,
    now_us: i64,
) -> Result<ScheduleSpec, FieldErrors> {
    let Some(object) = body.as_object() else {
        return Err(field_error("body", "must be a JSON object"));
    };
    let mut errors = FieldErrors::default();
    let schedule = match object.get("schedule") {
        Some(Value::String(text)) => match parse_schedule(text, min_interval_seconds) {
            Ok(_) => Some(text.trim().to_string()),
            Err(found) => {
                errors.0.extend(found.0);
                None
            }
        },
        Some(_) => {
            errors.add("schedule", "must be a cron expression (a string)");
            None
        }
        None => {
            errors.add("schedule", "is required (a cron expression, UTC)");
            None
        }
    };
    let delay_seconds = match object.get("delay_seconds") {
        None | Some(Value::Null) => DEFAULT_DELAY_SECONDS,
        Some(value) => match value.as_u64() {
            Some(delay) if delay <= MAX_DELAY_SECONDS => delay,
            _ => {
                errors.add(
                    "delay_seconds",
                    format!("must be an integer from 0 to {MAX_DELAY_SECONDS}"),
                );
                DEFAULT_DELAY_SECONDS
            }
        },
    };
    let start_us = match object.get("start") {
        None | Some(Value::Null) => Some(now_us),
        Some(Value::String(text)) => match timestamp::parse_rfc3339_micros(text) {
            Ok(start) => Some(start),
            Err(problem) => {
                errors.add("start", problem);
                None
            }
        },
        Some(_) => {
            errors.add("start", "must be an RFC 3339 timestamp");
            None
        }
    };
    // The export fields, validated as an export of [start, start + 1 µs).
    let mut export_body = object.clone();
    for name in SCHEDULE_FIELDS.iter().chain(["from", "to"].iter()) {
        if export_body.remove(*name).is_some() && matches!(*name, "from" | "to") {
            errors.add(
                *name,
                "is not a field of a schedule (each run's window is computed)",
            );
        }
    }
    let start = start_us.unwrap_or(now_us);
    export_body.insert("from".into(), Value::from(timestamp::format_micros(start)));
    export_body.insert(
        "to".into(),
        Value::from(timestamp::format_micros(start.saturating_add(1))),
    );
    let export = ExportRequest::from_body(&Value::Object(export_body), tenant_id)
        .and_then(ExportRequest::validate);
    let export = match export {
        Ok(export) => Some(export),
        Err(found) => {
            errors.0.extend(found.0);
            None
        }
    };
    match (schedule, start_us, export) {
        (Some(schedule), Some(start_us), Some(export)) if errors.is_empty() => Ok(ScheduleSpec {
            schedule_id,
            tenant_id: tenant_id.to_string(),
            schedule,
            delay_seconds,
            start: timestamp::format_micros(start_us),
            export,
            created_at: timestamp::format_micros(now_us),
            created_by: created_by.to_string(),
        }),
        _ => Err(errors),
    }
}

/// The `complete_through` of `GET /v1/audit/logs` and the trails at `now_us`: the newest
/// timestamp before which no more events are expected, `now − DEFAULT_DELAY_SECONDS` (the
/// late-arrival delay a schedule uses by default), RFC 3339.
pub fn complete_through(now_us: i64) -> String {
    let delay = DEFAULT_DELAY_SECONDS as i64 * 1_000_000;
    timestamp::format_micros(now_us.saturating_sub(delay))
}

/// A new schedule id: `sch_` and a lowercase ULID.
pub fn new_schedule_id() -> String {
    format!("sch_{}", ulid::Ulid::generate().to_string().to_lowercase())
}

/// Whether `text` has the shape of a schedule id.
pub fn is_schedule_id(text: &str) -> bool {
    text.strip_prefix("sch_")
        .is_some_and(|rest| rest.len() == 26 && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn field_error(field: &str, message: &str) -> FieldErrors {
    let mut errors = FieldErrors::default();
    errors.add(field, message);
    errors
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> i64 {
        timestamp::parse_rfc3339_micros(text).unwrap()
    }

    fn record(now: &str) -> ScheduleRecord {
        let body = json!({"schedule": "*/10 * * * *", "delay_seconds": 60,
            "start": "2026-12-03T14:00:00Z", "format": "jsonl",
            "destination": {"type": "file", "bucket": "out", "prefix": "acme/"}});
        let spec =
            spec_from_body(&body, "tnt_acme", new_schedule_id(), "sa:ci", 1, at(now)).unwrap();
        ScheduleRecord::new(spec, at(now)).unwrap()
    }

    #[test]
    fn runs_move_the_watermark_in_consecutive_windows_and_catch_up_in_order() {
        let mut record = record("2026-12-03T14:03:00Z");
        assert_eq!(
            record.due(at("2026-12-03T14:05:00Z")),
            NextRun::Wait(at("2026-12-03T14:10:00Z"))
        );
        // Down until 14:35: the ticks of 14:10, 14:20 and 14:30 run in order.
        let now = at("2026-12-03T14:35:00Z");
        let mut windows = Vec::new();
        for snapshot in [10, 20, 30] {
            assert_eq!(record.due(now), NextRun::Run);
            let run = record.plan_run(Checkpoint::start(snapshot), now);
            windows.push((
                run.spec.from.clone(),
                run.spec.to.clone(),
                run.spec.destination.prefix.clone(),
                run.spec.late.clone(),
            ));
            record.state.current = Some(run);
            record.complete(None, 1, 5, now);
        }
        assert_eq!(record.due(now), NextRun::Wait(at("2026-12-03T14:40:00Z")));
        assert_eq!(record.state.watermark_us, at("2026-12-03T14:29:00Z"));
        assert_eq!(record.state.watermark_seq, Some(30));
        let since = |seq| {
            Some(LateEvents {
                since: "2026-12-03T14:00:00.000000Z".into(),
                since_seq: seq,
            })
        };
        assert_eq!(
            windows,
            [
                (
                    "2026-12-03T14:00:00.000000Z".into(),
                    "2026-12-03T14:09:00.000000Z".into(),
                    "acme/2026/12/03/1400-000001/".into(),
                    None
                ),
                (
                    "2026-12-03T14:09:00.000000Z".into(),
                    "2026-12-03T14:19:00.000000Z".into(),
                    "acme/2026/12/03/1409-000002/".into(),
                    since(10)
                ),
                (
                    "2026-12-03T14:19:00.000000Z".into(),
                    "2026-12-03T14:29:00.000000Z".into(),
                    "acme/2026/12/03/1419-000003/".into(),
                    since(20)
                ),
            ]
        );
        assert_eq!(record.state.history.len(), 3);
    }

    #[test]
    fn a_failed_run_keeps_its_window_and_waits_for_its_retry() {
        let mut record = record("2026-12-03T14:03:00Z");
        let now = at("2026-12-03T14:10:00Z");
        let run = record.plan_run(Checkpoint::start(3), now);
        record.state.current = Some(run.clone());
        record.fail(
            ExportFailure::new("destination_not_found", "gone"),
            2_000_000,
            now,
        );
        record.fail(
            ExportFailure::new("destination_not_found", "gone"),
            2_000_000,
            now,
        );
        assert_eq!(record.state.failure.as_ref().unwrap().attempts, 2);
        assert_eq!(record.due(now), NextRun::Wait(now + 2_000_000));
        assert_eq!(record.due(now + 2_000_000), NextRun::Run);
        assert_eq!(record.state.current.as_ref(), Some(&run));
        assert_eq!(record.state.watermark_us, at("2026-12-03T14:00:00Z"));
    }

    #[test]
    fn an_empty_window_is_skipped() {
        // Start in the future: the first ticks have nothing to export.
        let body = json!({"schedule": "* * * * *", "delay_seconds": 0,
            "start": "2026-12-03T15:00:00Z", "format": "jsonl",
            "destination": {"type": "file", "bucket": "out"}});
        let now = at("2026-12-03T14:03:00Z");
        let spec = spec_from_body(&body, "tnt_acme", new_schedule_id(), "sa:ci", 1, now).unwrap();
        let mut record = ScheduleRecord::new(spec, now).unwrap();
        assert_eq!(record.due(at("2026-12-03T14:04:00Z")), NextRun::Skip);
        record.skip_tick();
        assert_eq!(record.state.next_run_us, at("2026-12-03T14:05:00Z"));
    }

    #[test]
    fn a_schedule_more_frequent_than_the_minimum_is_refused() {
        let body = |schedule: &str| {
            json!({"schedule": schedule, "format": "jsonl",
                "destination": {"type": "file", "bucket": "out"}})
        };
        let refused = spec_from_body(&body("*/30 * * * * *"), "t", new_schedule_id(), "x", 60, 0)
            .unwrap_err()
            .0;
        let message = &refused["schedule"];
        assert!(
            message.contains("30 s apart")
                && message.contains("minimum interval between runs is 60 s"),
            "{message}"
        );
        // Two runs a minute apart at the hour's end: refused as well.
        assert!(
            spec_from_body(&body("0,59 * * * *"), "t", new_schedule_id(), "x", 120, 0).is_err()
        );
        for allowed in ["* * * * *", "0 * * * * *", "*/10 * * * *", "@daily"] {
            assert!(
                spec_from_body(&body(allowed), "t", new_schedule_id(), "x", 60, 0).is_ok(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let body = json!({"schedule": "61 * * * *", "delay_seconds": 86_401, "start": "soon",
            "from": "2026-01-01T00:00:00Z", "format": "xml",
            "destination": {"type": "file", "bucket": "out"}});
        let errors = spec_from_body(&body, "tnt_acme", new_schedule_id(), "sa:ci", 1, 0)
            .unwrap_err()
            .0;
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        for field in ["schedule", "delay_seconds", "start", "from", "format"] {
            assert!(fields.contains(&field), "{field} in {errors:?}");
        }
        assert!(spec_from_body(&json!([]), "tnt_acme", new_schedule_id(), "x", 1, 0).is_err());
    }
}
