//! AuditExportSchedule reconciler scenarios against a mock API server: every request the
//! controller makes (status applies, Namespace reads, finalizer patches) is checked in order,
//! with a clock the test moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::crd::{DestinationKind, ExportDestination, ExportFileFormat};
use super::fixtures::{
    ApiServer, Call, FakeAudit, FakeExporter, NOW, Script, json_response, mock_services,
};
use super::schedule_controller::{SCHEDULE_FINALIZER, ScheduleCtx, ScheduleSettings, reconcile};
use super::schedule_crd::{AuditExportSchedule, AuditExportScheduleSpec};
use crate::export::job::ExportFailure;
use crate::export::schedule::scheduler::{OutcomeLabels, ScheduleMetrics};

const TIMEOUT: Duration = Duration::from_secs(10);
const PATH: &str = "/apis/audit.scailabs.ai/v1alpha1/namespaces/default/auditexportschedules/test";
const SCHEDULE_ID: &str = "sch_01jz0000000000000000000000";

/// `default/test`: every 10 minutes, a minute's delay, from 13:00 on the test's day (the test
/// clock starts at 14:13:20), finalized.
fn schedule() -> AuditExportSchedule {
    let mut object = AuditExportSchedule::new(
        "test",
        AuditExportScheduleSpec {
            tenant_id: "tnt_acme".into(),
            schedule: "*/10 * * * *".into(),
            delay_seconds: Some(60),
            start: Some("2026-09-21T13:00:00Z".into()),
            format: ExportFileFormat::Jsonl,
            compression: None,
            filters: None,
            destination: ExportDestination {
                kind: DestinationKind::File,
                bucket: "audit-exports".into(),
                prefix: Some("acme/".into()),
                credentials_path: None,
            },
            max_records_per_file: Some(2),
        },
    );
    let meta = object.meta_mut();
    meta.namespace = Some("default".into());
    meta.uid = Some("uid-s1".into());
    meta.generation = Some(1);
    meta.resource_version = Some("7".into());
    meta.creation_timestamp = Some(Time(at("2026-09-21T14:00:00Z")));
    meta.finalizers = Some(vec![SCHEDULE_FINALIZER.into()]);
    object
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn with_status(status: &Value) -> AuditExportSchedule {
    let mut object = schedule();
    object.status = Some(serde_json::from_value(status.clone()).unwrap());
    object
}

/// An accepted schedule whose first tick (14:10) is due.
fn due_status() -> Value {
    json!({"scheduleId": SCHEDULE_ID, "completeThrough": "2026-09-21T13:00:00.000000Z",
           "runsCompleted": 0, "nextRunAt": "2026-09-21T14:10:00.000000Z"})
}

struct Test {
    ctx: Arc<ScheduleCtx>,
    server: ApiServer,
    audit: Arc<FakeAudit>,
    metrics: ScheduleMetrics,
    /// The controller's clock, microseconds.
    now: Arc<AtomicI64>,
}

impl Test {
    fn new(exporter: Arc<FakeExporter>) -> Test {
        let (client, services, server, audit) = mock_services(exporter);
        let now = Arc::new(AtomicI64::new(NOW * 1_000_000));
        let clock_now = now.clone();
        let metrics = ScheduleMetrics::default();
        let ctx = ScheduleCtx::new(
            client,
            &services,
            ScheduleSettings {
                metrics: metrics.clone(),
                ..ScheduleSettings::default()
            },
            Arc::new(move || {
                Timestamp::from_microsecond(clock_now.load(Ordering::SeqCst)).unwrap()
            }),
        );
        Test {
            ctx,
            server,
            audit,
            metrics,
            now,
        }
    }

    fn set_clock(&self, text: &str) {
        self.now.store(at(text).as_microsecond(), Ordering::SeqCst);
    }

    fn runs(&self, outcome: &'static str) -> u64 {
        self.metrics
            .runs
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Expects a server-side apply of the schedule's `/status`; returns the status sent.
    async fn expect_status(&mut self) -> Value {
        let (seen, send) = self.server.next().await;
        assert_eq!(seen.method, Method::PATCH, "{seen:?}");
        assert_eq!(
            seen.uri,
            format!("{PATH}/status?&force=true&fieldManager=scaivault-audit-operator")
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(seen.body["kind"], "AuditExportSchedule");
        assert_eq!(seen.body.as_object().unwrap().len(), 3, "{}", seen.body);
        let status = seen.body["status"].clone();
        send.send_response(json_response(&with_status(&status)));
        status
    }

    /// Waits until no run task holds a schedule any more.
    async fn runs_ended(&self) {
        tokio::time::timeout(TIMEOUT, async {
            while self.ctx.running() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the run task did not end");
    }
}

async fn reconciled(object: AuditExportSchedule, ctx: &Arc<ScheduleCtx>) -> Action {
    tokio::time::timeout(TIMEOUT, reconcile(Arc::new(object), ctx.clone()))
        .await
        .unwrap()
        .unwrap()
}

fn ready(status: &Value) -> (String, String, String) {
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "Ready");
    (
        condition["status"].as_str().unwrap().to_string(),
        condition["reason"].as_str().unwrap().to_string(),
        condition["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_new_schedule_is_accepted_then_each_due_run_writes_its_window_before_its_parts() {
    let mut test = Test::new(FakeExporter::new(Script::Complete { parts: 2 }));
    let object = schedule();
    let ctx = test.ctx.clone();
    let reconciling = tokio::spawn(async move { reconciled(object, &ctx).await });
    // Admitted by the namespace label, recorded, accepted: the whole status in one apply.
    test.server.expect_namespace(Some("tnt_acme")).await;
    let accepted = test.expect_status().await;
    let schedule_id = accepted["scheduleId"].as_str().unwrap().to_string();
    assert!(
        crate::export::schedule::is_schedule_id(&schedule_id),
        "{schedule_id}"
    );
    assert_eq!(accepted["completeThrough"], "2026-09-21T13:00:00.000000Z");
    assert_eq!(accepted["nextRunAt"], "2026-09-21T14:20:00.000000Z");
    assert_eq!(accepted["runsCompleted"], 0);
    assert!(accepted.get("currentRun").is_none(), "{accepted}");
    assert_eq!(ready(&accepted).0, "True");
    assert_eq!(ready(&accepted).1, "Scheduled");
    // Requeued for the lag refresh, well before the first tick.
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(30))
    );
    let recorded = test.audit.events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].id, format!("export_created:{schedule_id}"));
    assert_eq!(recorded[0].identity_id, "kubernetes:default/test");
    assert_eq!(
        recorded[0].extra_data["created_through"],
        "AuditExportSchedule"
    );
    assert_eq!(recorded[0].extra_data["schedule_id"], schedule_id.as_str());

    // The watch brings the accepted status back: nothing to write, nothing runs.
    let action = reconciled(with_status(&accepted), &test.ctx).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    test.server.expect_silence().await;

    // The first tick (14:20): the run is admitted again, then fixed and written first.
    test.set_clock("2026-09-21T14:20:01Z");
    let ctx = test.ctx.clone();
    let reconciling = tokio::spawn(async move { reconciled(with_status(&accepted), &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    let started = test.expect_status().await;
    let run = &started["currentRun"];
    assert_eq!(run["run"], 1);
    assert_eq!(run["exportId"], format!("{schedule_id}_r000001"));
    assert_eq!(run["scheduledAt"], "2026-09-21T14:20:00.000000Z");
    assert_eq!(run["from"], "2026-09-21T13:00:00.000000Z");
    assert_eq!(run["to"], "2026-09-21T14:19:00.000000Z");
    assert_eq!(run["prefix"], "acme/2026/09/21/1300-000001/");
    assert_eq!(run["checkpoint"], json!({"snapshotSeq": 42}));
    assert_eq!(started["completeThrough"], "2026-09-21T13:00:00.000000Z");
    assert_eq!(
        reconciling.await.unwrap(),
        Action::requeue(Duration::from_secs(30))
    );
    // One write per uploaded part.
    for parts in 1..=2 {
        let progress = test.expect_status().await;
        let files = progress["currentRun"]["files"].as_array().unwrap();
        assert_eq!(files.len(), parts);
        assert_eq!(progress["currentRun"]["checkpoint"]["afterSeq"], parts);
    }
    // Completed: the watermark moves to the window's end, the run is in lastRuns.
    let done = test.expect_status().await;
    test.runs_ended().await;
    assert!(done.get("currentRun").is_none(), "{done}");
    assert_eq!(done["completeThrough"], "2026-09-21T14:19:00.000000Z");
    assert_eq!(done["completeThroughSeq"], 42);
    assert_eq!(done["runsCompleted"], 1);
    assert_eq!(done["nextRunAt"], "2026-09-21T14:30:00.000000Z");
    let last = &done["lastRuns"][0];
    assert_eq!(last["recordCount"], 4);
    assert_eq!(last["files"], 2);
    assert_eq!(last["lateCount"], 0);
    assert_eq!(
        last["manifest"],
        "acme/2026/09/21/1300-000001/manifest.json"
    );
    assert_eq!(ready(&done).1, "RunSucceeded");
    assert_eq!((test.runs("completed"), test.runs("failed")), (1, 0));
    assert_eq!(test.metrics.records.get(), 4);

    // The next reconcile waits for 14:30; the second run has late events from the first's
    // snapshot on.
    let action = reconciled(with_status(&done), &test.ctx).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    test.server.expect_silence().await;
    test.set_clock("2026-09-21T14:30:00Z");
    let ctx = test.ctx.clone();
    let reconciling = tokio::spawn(async move { reconciled(with_status(&done), &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    let second = test.expect_status().await;
    assert_eq!(second["currentRun"]["from"], "2026-09-21T14:19:00.000000Z");
    assert_eq!(second["currentRun"]["to"], "2026-09-21T14:29:00.000000Z");
    reconciling.await.unwrap();
    for _ in 0..2 {
        test.expect_status().await;
    }
    let done = test.expect_status().await;
    test.runs_ended().await;
    assert_eq!(done["runsCompleted"], 2);
    assert_eq!(done["lastRuns"][1]["lateCount"], 1);
    assert_eq!(done["lastRuns"].as_array().unwrap().len(), 2);
    test.server.expect_silence().await;
}

#[tokio::test]
async fn a_failed_run_keeps_the_watermark_reports_why_and_retries_the_same_run_after_a_backoff() {
    let failure = ExportFailure::new("destination_not_found", "bucket audit-exports is gone");
    let exporter = FakeExporter::new(Script::Fail(failure));
    let mut test = Test::new(exporter.clone());
    let ctx = test.ctx.clone();
    let reconciling =
        tokio::spawn(async move { reconciled(with_status(&due_status()), &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    let started = test.expect_status().await;
    reconciling.await.unwrap();
    let progress = test.expect_status().await;
    let failed = test.expect_status().await;
    test.runs_ended().await;
    assert_eq!(
        failed["completeThrough"], "2026-09-21T13:00:00.000000Z",
        "the watermark does not move"
    );
    assert_eq!(failed["runsCompleted"], 0);
    assert_eq!(
        failed["currentRun"], progress["currentRun"],
        "kept for the retry"
    );
    assert_eq!(
        failed["currentRun"]["exportId"],
        started["currentRun"]["exportId"]
    );
    assert_eq!(failed["failure"]["attempts"], 1);
    assert_eq!(failed["failure"]["error"]["code"], "destination_not_found");
    assert_eq!(failed["failure"]["retryAt"], "2026-09-21T14:13:21.000000Z");
    let (status, reason, message) = ready(&failed);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "destination_not_found")
    );
    assert!(
        message.contains("run 1 failed 1 time(s): bucket audit-exports is gone")
            && message.contains("retrying at 2026-09-21T14:13:21.000000Z"),
        "{message}"
    );
    assert_eq!((test.runs("completed"), test.runs("failed")), (0, 1));

    // Before the retry time: nothing; the requeue is the backoff.
    let action = reconciled(with_status(&failed), &test.ctx).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    test.server.expect_silence().await;
    // At the retry time: the same run resumes after its uploaded part; the backoff doubles.
    test.set_clock("2026-09-21T14:13:21Z");
    let ctx = test.ctx.clone();
    let reconciling = tokio::spawn(async move { reconciled(with_status(&failed), &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    reconciling.await.unwrap();
    let again = test.expect_status().await;
    test.runs_ended().await;
    assert_eq!(
        again["currentRun"]["exportId"],
        started["currentRun"]["exportId"]
    );
    assert_eq!(again["completeThrough"], "2026-09-21T13:00:00.000000Z");
    assert_eq!(again["failure"]["attempts"], 2);
    assert_eq!(again["failure"]["retryAt"], "2026-09-21T14:13:23.000000Z");
    assert_eq!(
        exporter.calls(),
        [
            Call::Run {
                resumed_after_files: 0
            },
            Call::Run {
                resumed_after_files: 1
            }
        ]
    );
    test.server.expect_silence().await;
}

#[tokio::test]
async fn a_new_leader_resumes_the_run_in_current_run_after_its_last_part() {
    // What a previous leader wrote: run 1 started, one part uploaded.
    let previous = Test::new(FakeExporter::new(Script::Hang));
    let mut previous = previous;
    let ctx = previous.ctx.clone();
    let reconciling =
        tokio::spawn(async move { reconciled(with_status(&due_status()), &ctx).await });
    previous.server.expect_namespace(Some("tnt_acme")).await;
    previous.expect_status().await;
    reconciling.await.unwrap();
    let interrupted = previous.expect_status().await;
    assert_eq!(
        interrupted["currentRun"]["files"].as_array().unwrap().len(),
        1
    );
    // The leader stops (lost lease, shutdown): the run stops, nothing more is written.
    super::schedule_controller::stop(&previous.ctx).await;
    previous.server.expect_silence().await;

    // The next leader: the same window and snapshot, from the second part on.
    let exporter = FakeExporter::new(Script::Complete { parts: 2 });
    let mut test = Test::new(exporter.clone());
    let ctx = test.ctx.clone();
    let object = with_status(&interrupted);
    let reconciling = tokio::spawn(async move { reconciled(object, &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    reconciling.await.unwrap();
    let progress = test.expect_status().await;
    let keys: Vec<&str> = progress["currentRun"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["2026-01/part-0001.jsonl", "2026-01/part-0002.jsonl"]);
    assert_eq!(
        progress["currentRun"]["checkpoint"]["snapshotSeq"],
        interrupted["currentRun"]["checkpoint"]["snapshotSeq"]
    );
    let done = test.expect_status().await;
    test.runs_ended().await;
    assert_eq!(done["runsCompleted"], 1);
    assert_eq!(done["lastRuns"][0]["files"], 2, "no part twice");
    assert_eq!(done["lastRuns"][0]["recordCount"], 4);
    assert_eq!(
        done["lastRuns"][0]["exportId"],
        interrupted["currentRun"]["exportId"]
    );
    assert_eq!(done["completeThrough"], "2026-09-21T14:09:00.000000Z");
    assert_eq!(
        exporter.calls(),
        [Call::Run {
            resumed_after_files: 1
        }],
        "no new snapshot, no part again"
    );
    test.server.expect_silence().await;
}

#[tokio::test]
async fn a_schedule_for_a_tenant_its_namespace_does_not_allow_is_refused_once() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let mut test = Test::new(exporter.clone());
    let ctx = test.ctx.clone();
    let reconciling = tokio::spawn(async move { reconciled(schedule(), &ctx).await });
    test.server.expect_namespace(Some("tnt_other")).await;
    let refused = test.expect_status().await;
    assert_eq!(reconciling.await.unwrap(), Action::await_change());
    assert!(refused.get("scheduleId").is_none(), "{refused}");
    let (status, reason, message) = ready(&refused);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "tenant_not_allowed")
    );
    assert!(message.contains("audit.scailabs.ai/tenant"), "{message}");
    assert!(test.audit.events().is_empty(), "nothing recorded");
    // Reported once per generation.
    let ctx = test.ctx.clone();
    let again = tokio::spawn(async move { reconciled(with_status(&refused), &ctx).await });
    test.server.expect_namespace(Some("tnt_other")).await;
    assert_eq!(again.await.unwrap(), Action::await_change());
    test.server.expect_silence().await;
    assert!(exporter.calls().is_empty());
}

#[tokio::test]
async fn deleting_a_schedule_stops_its_run_and_removes_the_incomplete_uploads() {
    let exporter = FakeExporter::new(Script::Hang);
    let mut test = Test::new(exporter.clone());
    let ctx = test.ctx.clone();
    let reconciling =
        tokio::spawn(async move { reconciled(with_status(&due_status()), &ctx).await });
    test.server.expect_namespace(Some("tnt_acme")).await;
    test.expect_status().await;
    reconciling.await.unwrap();
    let running = test.expect_status().await;
    let export_id = running["currentRun"]["exportId"]
        .as_str()
        .unwrap()
        .to_string();

    let mut deleting = with_status(&running);
    deleting.meta_mut().deletion_timestamp = Some(Time(at("2026-09-21T14:13:30Z")));
    let ctx = test.ctx.clone();
    let cleanup = tokio::spawn(async move { reconciled(deleting, &ctx).await });
    let (seen, send) = test.server.next().await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.uri, format!("{PATH}?"));
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert!(
        seen.body
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
        "{}",
        seen.body
    );
    let mut gone = with_status(&running);
    gone.finalizers_mut().clear();
    send.send_response(json_response(&gone));
    assert_eq!(cleanup.await.unwrap(), Action::await_change());
    assert_eq!(test.ctx.running(), 0, "the run stopped");
    assert_eq!(
        exporter.calls(),
        [
            Call::Run {
                resumed_after_files: 0
            },
            Call::Abort(export_id)
        ]
    );
    test.server.expect_silence().await;
}
