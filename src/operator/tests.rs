//! Reconciler scenarios against a mock API server: every request the controller makes is
//! checked (path, field manager, body) in the order a real API server would see it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::controller::{Ctx, Plan, plan, reconcile};
use super::crd::{AuditExport, AuditExportStatus, DestinationKind, ExportJobPhase};
use super::fixtures::{
    ApiServer, Call, FakeExporter, Script, audited_context, conditions, now, part, test_context,
};
use super::progress::{Progress, STATUS_FILES};
use super::{convert, status};
use crate::export::job::{Checkpoint, ExportFailure};

const TIMEOUT: Duration = Duration::from_secs(10);

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

fn object_with(status: &Value) -> AuditExport {
    AuditExport::test()
        .finalized()
        .with_status(serde_json::from_value(status.clone()).unwrap())
}

/// A status of a job that ran elsewhere and uploaded `files` parts.
fn running_status(files: usize) -> AuditExportStatus {
    let mut status = AuditExportStatus {
        export_id: Some("exp_01test".into()),
        estimated_records: Some(4),
        started_at: Some("2026-09-21T00:00:00Z".into()),
        ..AuditExportStatus::default()
    };
    let checkpoint = Checkpoint {
        snapshot_seq: 42,
        files: (1..=files).map(part).collect(),
        after: None,
    };
    convert::record_checkpoint(&mut status, &checkpoint);
    status::set_phase(&mut status, ExportJobPhase::Running, Some(1), now());
    status
}

#[tokio::test]
async fn a_new_resource_gets_the_finalizer_first() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test();
    let scenario = async {
        server.expect_finalizer_added(&object).await;
        server.expect_silence().await;
    };
    let (action, ()) = tokio::time::timeout(TIMEOUT, async {
        tokio::join!(reconcile(Arc::new(object.clone()), ctx.clone()), scenario)
    })
    .await
    .unwrap();
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(exporter.calls().is_empty());
}

#[tokio::test]
async fn an_export_goes_through_pending_running_and_completed() {
    let exporter = FakeExporter::new(Script::Complete { parts: 2 });
    let (ctx, mut server, audit) = audited_context(exporter.clone());
    let object = AuditExport::test().finalized();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    let when =
        serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now())).unwrap();
    tokio::time::timeout(TIMEOUT, async {
        // The namespace's label allows the resource's tenant.
        server.expect_namespace(Some("tnt_acme")).await;
        // Accepted: id, estimate, Pending, conditions: the whole status in one apply.
        let pending = server.expect_status_apply(&object).await;
        let export_id = pending["exportId"].as_str().unwrap().to_string();
        assert!(
            export_id.starts_with("exp_") && export_id.len() == 30,
            "{export_id}"
        );
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "observedGeneration": 1, "lastTransitionTime": when})
        };
        assert_eq!(
            pending,
            json!({
                "phase": "Pending",
                "exportId": export_id,
                "estimatedRecords": 4,
                "conditions": [
                    condition("Ready", "False", "Queued", "the export has not run yet"),
                    condition("Progressing", "True", "Queued", "waiting for a free export slot"),
                    condition("Failed", "False", "NoFailure", ""),
                ],
                "observedGeneration": 1,
            })
        );
        let event = server.expect_event("Normal", "Queued").await;
        assert_eq!(
            event["note"],
            format!("export {export_id} queued: about 4 records")
        );
        // Recorded in the audit log before it was accepted, with the resource as the actor.
        let recorded = audit.events();
        assert_eq!(recorded.len(), 1);
        let created = &recorded[0];
        assert_eq!(created.id, format!("export_created:{export_id}"));
        assert_eq!(created.action, crate::event::Action::ExportCreated);
        assert_eq!(created.tenant_id, "tnt_acme");
        assert_eq!(created.identity_id, "kubernetes:default/test");
        assert_eq!(created.extra_data["export_id"], export_id.as_str());
        assert_eq!(created.extra_data["estimated_records"], 4);
        let mut current = object_with(&pending);

        // The job: Running with its snapshot, then one apply per uploaded part.
        let running = server.expect_status_apply(&current).await;
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["startedAt"], "2026-09-21T14:13:20.000000Z");
        assert_eq!(running["checkpoint"], json!({"snapshotSeq": 42}));
        assert_eq!(running["exportId"], export_id.as_str());
        assert_eq!(
            conditions(&running)["Progressing"],
            pair("True", "Exporting")
        );
        current = object_with(&running);
        server.expect_event("Normal", "Started").await;
        for parts in 1..=2u64 {
            let progress = server.expect_status_apply(&current).await;
            assert_eq!(progress["files"].as_array().unwrap().len() as u64, parts);
            assert_eq!(progress["recordCount"], 2 * parts);
            assert_eq!(progress["checkpoint"]["afterSeq"], parts);
            current = object_with(&progress);
        }
        let done = server.expect_status_apply(&current).await;
        assert_eq!(done["phase"], "Completed");
        assert_eq!(done["recordCount"], 4);
        assert_eq!(done["completedAt"], "2026-09-21T14:13:20.000000Z");
        assert!(done.get("checkpoint").is_none(), "{done}");
        assert_eq!(done["files"][1]["key"], "2026-01/part-0002.jsonl");
        let conditions = conditions(&done);
        assert_eq!(conditions["Ready"], pair("True", "Completed"));
        assert_eq!(conditions["Progressing"], pair("False", "Completed"));
        assert_eq!(conditions["Failed"], pair("False", "NoFailure"));
        let event = server.expect_event("Normal", "Completed").await;
        assert_eq!(event["note"], "4 records exported in 2 files");
        ctx.jobs.wait_idle().await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    assert_eq!(
        reconciled.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(600))
    );
    assert_eq!(
        exporter.calls(),
        [
            Call::Estimate,
            Call::Run {
                resumed_after_files: 0
            }
        ]
    );
}

#[tokio::test]
async fn a_failed_export_reports_why() {
    let failure = ExportFailure::new("destination_error", "bucket acme-audit does not exist");
    let exporter = FakeExporter::new(Script::Fail(failure));
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test().finalized();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_acme")).await;
        let mut current = object_with(&server.expect_status_apply(&object).await);
        server.expect_event("Normal", "Queued").await;
        current = object_with(&server.expect_status_apply(&current).await);
        server.expect_event("Normal", "Started").await;
        current = object_with(&server.expect_status_apply(&current).await);
        let failed = server.expect_status_apply(&current).await;
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(
            failed["error"],
            json!({"code": "destination_error", "message": "bucket acme-audit does not exist"})
        );
        let conditions = conditions(&failed);
        assert_eq!(conditions["Failed"], pair("True", "ExportFailed"));
        assert_eq!(conditions["Ready"], pair("False", "ExportFailed"));
        let failed_condition = failed["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Failed")
            .unwrap();
        assert_eq!(
            failed_condition["message"],
            "bucket acme-audit does not exist"
        );
        let event = server.expect_event("Warning", "ExportFailed").await;
        assert_eq!(
            event["note"],
            "destination_error: bucket acme-audit does not exist"
        );
        ctx.jobs.wait_idle().await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    // A failed export that had started is final: the next reconcile does nothing.
    let mut finished = AuditExport::test()
        .finalized()
        .with_status(running_status(1));
    status::set_failed(
        finished.status.as_mut().unwrap(),
        &ExportFailure::new("x", "y"),
        Some(1),
        now(),
    );
    assert_eq!(plan(&finished, false), Plan::Idle);
}

#[tokio::test]
async fn deleting_a_running_export_stops_it_cleans_up_and_releases_the_finalizer() {
    let exporter = FakeExporter::new(Script::Hang);
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test().finalized();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    let export_id = tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_other.tnt_acme")).await;
        let pending = server.expect_status_apply(&object).await;
        let mut current = object_with(&pending);
        server.expect_event("Normal", "Queued").await;
        current = object_with(&server.expect_status_apply(&current).await);
        server.expect_event("Normal", "Started").await;
        server.expect_status_apply(&current).await; // part 1, then the job hangs
        server.expect_silence().await;
        pending["exportId"].as_str().unwrap().to_string()
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert!(ctx.jobs.is_running("default/test"));

    let deleting = AuditExport::test()
        .finalized()
        .with_status(running_status(1))
        .deleting();
    let mut deleting = deleting;
    deleting.status.as_mut().unwrap().export_id = Some(export_id.clone());
    let cleanup = tokio::spawn(reconcile(Arc::new(deleting.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        // No status write for a deleted export: its job stops quietly, the uploads go.
        server.expect_event("Normal", "CleanedUp").await;
        server.expect_finalizer_removed(&deleting).await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    assert_eq!(cleanup.await.unwrap().unwrap(), Action::await_change());
    assert!(!ctx.jobs.is_running("default/test"));
    assert_eq!(
        exporter.calls(),
        [
            Call::Estimate,
            Call::Run {
                resumed_after_files: 0
            },
            Call::Abort(export_id)
        ]
    );
}

#[tokio::test]
async fn deleting_a_completed_export_keeps_its_files() {
    let exporter = FakeExporter::new(Script::Hang);
    let (ctx, mut server) = test_context(exporter.clone());
    let mut status = running_status(2);
    status::set_phase(&mut status, ExportJobPhase::Completed, Some(1), now());
    let deleting = AuditExport::test()
        .finalized()
        .with_status(status)
        .deleting();
    let cleanup = tokio::spawn(reconcile(Arc::new(deleting.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_finalizer_removed(&deleting).await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    cleanup.await.unwrap().unwrap();
    assert!(exporter.calls().is_empty());
}

#[tokio::test]
async fn a_new_controller_resumes_from_the_checkpoint_in_status() {
    let exporter = FakeExporter::new(Script::Complete { parts: 2 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test()
        .finalized()
        .with_status(running_status(1));
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_acme")).await;
        // No new id, no new estimate, no Pending: straight back to Running.
        let running = server.expect_status_apply(&object).await;
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["exportId"], "exp_01test");
        assert_eq!(
            running["startedAt"], "2026-09-21T00:00:00Z",
            "the original start is kept"
        );
        assert_eq!(running["files"].as_array().unwrap().len(), 1);
        let mut current = object_with(&running);
        let event = server.expect_event("Normal", "Resumed").await;
        assert_eq!(event["note"], "resumed after 1 files");
        let progress = server.expect_status_apply(&current).await;
        assert_eq!(progress["files"].as_array().unwrap().len(), 2);
        current = object_with(&progress);
        let done = server.expect_status_apply(&current).await;
        assert_eq!(done["phase"], "Completed");
        assert_eq!(done["recordCount"], 4);
        server.expect_event("Normal", "Completed").await;
        ctx.jobs.wait_idle().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert_eq!(
        exporter.calls(),
        [Call::Run {
            resumed_after_files: 1
        }]
    );
}

/// The uid of [`AuditExport::test`]: names its progress file.
const UID: &str = "uid-1";

/// Answers the status applies of parts `from..=to` of a running job, checking that each status
/// lists at most [`STATUS_FILES`] files while the progress file holds all of them.
async fn expect_parts(
    server: &mut ApiServer,
    ctx: &Ctx,
    mut current: AuditExport,
    parts: std::ops::RangeInclusive<u64>,
) -> AuditExport {
    for count in parts {
        let progress = server.expect_status_apply(&current).await;
        let shown = progress["files"].as_array().unwrap().len() as u64;
        assert_eq!(shown, count.min(STATUS_FILES as u64), "{progress}");
        assert_eq!(progress["fileCount"], count);
        assert_eq!(progress["recordCount"], 2 * count);
        assert_eq!(progress["sizeBytes"], 100 * count);
        let saved = ctx.progress.load(UID).unwrap().unwrap();
        assert_eq!(saved.files.len() as u64, count);
        current = object_with(&progress);
    }
    current
}

#[tokio::test]
async fn a_many_file_export_keeps_its_status_bounded_and_names_the_manifest() {
    let exporter = FakeExporter::new(Script::Complete { parts: 25 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test().finalized();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_acme")).await;
        let pending = server.expect_status_apply(&object).await;
        server.expect_event("Normal", "Queued").await;
        let running = server.expect_status_apply(&object_with(&pending)).await;
        assert_eq!(running["fileCount"], 0);
        server.expect_event("Normal", "Started").await;
        let current = expect_parts(&mut server, &ctx, object_with(&running), 1..=25).await;
        let done = server.expect_status_apply(&current).await;
        assert_eq!(done["phase"], "Completed");
        let keys: Vec<&str> = done["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| file["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys.len(), STATUS_FILES);
        assert_eq!(keys[0], "2026-01/part-0001.jsonl");
        assert_eq!(keys[9], "2026-01/part-0010.jsonl");
        assert_eq!(done["fileCount"], 25);
        assert_eq!(done["recordCount"], 50);
        assert_eq!(done["sizeBytes"], 2500);
        assert_eq!(done["manifest"], "2026-01/manifest.json");
        let event = server.expect_event("Normal", "Completed").await;
        assert_eq!(event["note"], "50 records exported in 25 files");
        assert_eq!(
            conditions(&done)["Ready"],
            pair("True", "Completed"),
            "{done}"
        );
        assert!(
            done["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("in 25 files"),
            "{done}"
        );
        ctx.jobs.wait_idle().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert_eq!(ctx.progress.load(UID).unwrap(), None, "removed at the end");
}

/// A status after `files` parts as a bounded status shows it (10 files, the totals).
fn bounded_running_status(files: usize) -> AuditExportStatus {
    let status = running_status(files);
    assert_eq!(status.files.len(), files.min(STATUS_FILES));
    assert_eq!(status.file_count, Some(files as u64));
    status
}

#[tokio::test]
async fn a_bounded_status_resumes_with_the_progress_file_of_the_earlier_run() {
    let exporter = FakeExporter::new(Script::Complete { parts: 27 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test()
        .finalized()
        .with_status(bounded_running_status(25));
    let saved = Progress {
        snapshot_seq: 42,
        files: (1..=25).map(part).collect(),
    };
    ctx.progress.save(UID, &saved).unwrap();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_acme")).await;
        let running = server.expect_status_apply(&object).await;
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["fileCount"], 25);
        let event = server.expect_event("Normal", "Resumed").await;
        assert_eq!(event["note"], "resumed after 25 files");
        let current = expect_parts(&mut server, &ctx, object_with(&running), 26..=27).await;
        let done = server.expect_status_apply(&current).await;
        assert_eq!(done["fileCount"], 27);
        assert_eq!(done["recordCount"], 54);
        server.expect_event("Normal", "Completed").await;
        ctx.jobs.wait_idle().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert_eq!(
        exporter.calls(),
        [Call::Run {
            resumed_after_files: 25
        }]
    );
    assert_eq!(ctx.progress.load(UID).unwrap(), None);
}

#[tokio::test]
async fn a_bounded_status_without_its_progress_file_restarts_from_the_first_part() {
    let exporter = FakeExporter::new(Script::Complete { parts: 12 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test()
        .finalized()
        .with_status(bounded_running_status(25));
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(Some("tnt_acme")).await;
        // Same export, same snapshot, no resume point: back to part 1.
        let running = server.expect_status_apply(&object).await;
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["exportId"], "exp_01test");
        assert_eq!(running["checkpoint"], json!({"snapshotSeq": 42}));
        assert_eq!(running["fileCount"], 0);
        assert!(running.get("files").is_none(), "{running}");
        let event = server.expect_event("Warning", "Restarted").await;
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("25 files") && note.contains("restarting from the first part"),
            "{note}"
        );
        let current = expect_parts(&mut server, &ctx, object_with(&running), 1..=12).await;
        let done = server.expect_status_apply(&current).await;
        assert_eq!(done["fileCount"], 12);
        assert_eq!(done["files"][0]["key"], "2026-01/part-0001.jsonl");
        server.expect_event("Normal", "Completed").await;
        ctx.jobs.wait_idle().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert_eq!(
        exporter.calls(),
        [Call::Run {
            resumed_after_files: 0
        }]
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_once_and_waits_for_a_change() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server) = test_context(exporter.clone());
    let object = AuditExport::test().finalized().invalid();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    let reported = tokio::time::timeout(TIMEOUT, async {
        let failed = server.expect_status_apply(&object).await;
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(failed["error"]["code"], "validation_error");
        assert_eq!(
            failed["error"]["message"],
            "invalid spec: to: must be after from"
        );
        assert_eq!(failed["observedGeneration"], 1);
        assert_eq!(conditions(&failed)["Failed"], pair("True", "InvalidSpec"));
        server.expect_event("Warning", "InvalidSpec").await;
        failed
    })
    .await
    .unwrap();
    assert_eq!(reconciled.await.unwrap().unwrap(), Action::await_change());

    // The same generation again (e.g. a resync): no write, no event, no requeue.
    let again = object
        .clone()
        .with_status(serde_json::from_value(reported.clone()).unwrap());
    let second = tokio::spawn(reconcile(Arc::new(again.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, server.expect_silence())
        .await
        .unwrap();
    assert_eq!(second.await.unwrap().unwrap(), Action::await_change());

    // A fixed spec (new generation) is accepted.
    let mut fixed = AuditExport::test()
        .finalized()
        .with_status(serde_json::from_value(reported).unwrap());
    fixed.metadata.generation = Some(2);
    assert!(matches!(plan(&fixed, false), Plan::Start(_)));
    assert!(exporter.calls().is_empty());
}

#[tokio::test]
async fn cancelling_a_queued_export_marks_it_cancelled() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server) = test_context(exporter.clone());
    let mut status = AuditExportStatus {
        export_id: Some("exp_01test".into()),
        ..AuditExportStatus::default()
    };
    status::set_phase(&mut status, ExportJobPhase::Pending, Some(1), now());
    let object = AuditExport::test()
        .finalized()
        .with_status(status)
        .cancel_requested();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        let cancelled = server.expect_status_apply(&object).await;
        assert_eq!(cancelled["phase"], "Cancelled");
        assert_eq!(
            conditions(&cancelled)["Progressing"],
            pair("False", "Cancelled")
        );
        server.expect_event("Normal", "Cancelled").await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert!(
        exporter.calls().is_empty(),
        "nothing was uploaded, nothing to abort"
    );
}

#[test]
fn plan_table() {
    let base = AuditExport::test().finalized();
    let cases: [(AuditExport, bool, &str); 6] = [
        (base.clone(), false, "start"),
        (base.clone(), true, "idle"),
        (base.clone().with_status(running_status(1)), false, "resume"),
        (base.clone().with_status(running_status(1)), true, "idle"),
        (base.clone().invalid(), false, "invalid"),
        (
            base.clone()
                .with_status(running_status(1))
                .cancel_requested(),
            true,
            "cancel",
        ),
    ];
    for (object, job_running, want) in cases {
        let got = match plan(&object, job_running) {
            Plan::Idle => "idle",
            Plan::ReportInvalid(_) => "invalid",
            Plan::Start(_) => "start",
            Plan::Resume(..) => "resume",
            Plan::Cancel(_) => "cancel",
        };
        assert_eq!(
            got,
            want,
            "{:?} running={job_running}",
            object.status.map(|s| s.phase)
        );
    }
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    use super::controller::backoff;
    let delays: Vec<u64> = [1, 2, 3, 9, 10, 50]
        .iter()
        .map(|n| backoff(*n).as_secs())
        .collect();
    assert_eq!(delays, [1, 2, 4, 256, 300, 300]);
}

/// A resource whose namespace does not allow its tenant (`label`): Failed/TenantNotAllowed with
/// a message naming the label, a Warning event, nothing estimated, run or recorded; the same
/// generation again is left alone.
async fn refused(label: Option<&str>) -> String {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server, audit) = audited_context(exporter.clone());
    let object = AuditExport::test().finalized();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    let failed = tokio::time::timeout(TIMEOUT, async {
        server.expect_namespace(label).await;
        let failed = server.expect_status_apply(&object).await;
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(failed["error"]["code"], "tenant_not_allowed");
        assert!(failed.get("exportId").is_none(), "{failed}");
        assert_eq!(failed["observedGeneration"], 1);
        let conditions = conditions(&failed);
        assert_eq!(conditions["Failed"], pair("True", "TenantNotAllowed"));
        assert_eq!(conditions["Ready"], pair("False", "TenantNotAllowed"));
        let event = server.expect_event("Warning", "TenantNotAllowed").await;
        assert_eq!(event["note"], failed["error"]["message"]);
        server.expect_silence().await;
        failed
    })
    .await
    .unwrap();
    assert_eq!(reconciled.await.unwrap().unwrap(), Action::await_change());
    assert!(exporter.calls().is_empty(), "nothing estimated or run");
    assert!(audit.events().is_empty(), "nothing recorded");
    // A resync of the same generation: no namespace read, no write.
    let again = object.with_status(serde_json::from_value(failed.clone()).unwrap());
    assert_eq!(plan(&again, false), Plan::Idle);
    failed["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_tenant_the_namespace_label_does_not_list_is_not_allowed() {
    let message = refused(Some("tnt_globex.tnt_initech")).await;
    assert_eq!(
        message,
        "tenant 'tnt_acme' is not allowed in namespace 'default': its label \
         audit.scailabs.ai/tenant allows 'tnt_globex.tnt_initech'"
    );
}

#[tokio::test]
async fn a_foreign_credentials_path_fails_before_the_namespace_is_read_or_anything_estimated() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server, audit) = audited_context(exporter.clone());
    let mut object = AuditExport::test().finalized();
    object.spec.destination.kind = DestinationKind::S3;
    object.spec.destination.credentials_path = Some("tenants/tnt_globex/aws/writer".into());
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        let failed = server.expect_status_apply(&object).await;
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(failed["error"]["code"], "tenant_access_denied");
        assert!(failed.get("exportId").is_none(), "{failed}");
        let conditions = conditions(&failed);
        assert_eq!(conditions["Failed"], pair("True", "DestinationNotAllowed"));
        server
            .expect_event("Warning", "DestinationNotAllowed")
            .await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    assert_eq!(reconciled.await.unwrap().unwrap(), Action::await_change());
    assert!(exporter.calls().is_empty(), "nothing estimated or run");
    assert!(audit.events().is_empty(), "nothing recorded");
}

#[tokio::test]
async fn a_namespace_without_the_tenant_label_allows_no_tenant() {
    let message = refused(None).await;
    assert!(
        message.starts_with("namespace 'default' has no label audit.scailabs.ai/tenant"),
        "{message}"
    );
}

#[tokio::test]
async fn annotations_without_a_valid_signature_are_ignored() {
    let forged_id = "exp_01forged0000000000000000";
    // Written by hand (no signature), signed by another key, or edited after signing: the
    // namespace label decides, the export gets an id of its own and the resource is the actor.
    let other_key = super::trust::AnnotationSigner::new([1; 32])
        .sign(&super::trust::Signed {
            namespace: "default",
            name: "test",
            export_id: forged_id,
            requested_by: "user:ceo",
            spec: &AuditExport::test().spec,
        })
        .unwrap();
    let mut edited = AuditExport::test()
        .finalized()
        .rest_created(forged_id, "user:ceo");
    edited.spec.destination.bucket = "attacker-bucket".into();
    let cases = [
        AuditExport::test()
            .finalized()
            .with_annotations(forged_id, "user:ceo", ""),
        AuditExport::test()
            .finalized()
            .with_annotations(forged_id, "user:ceo", &other_key),
        edited,
    ];
    for object in cases {
        let exporter = FakeExporter::new(Script::Complete { parts: 1 });
        let (ctx, mut server, audit) = audited_context(exporter.clone());
        // Unsigned is refused where the label does not allow the tenant ...
        let refused = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
        tokio::time::timeout(TIMEOUT, async {
            server.expect_namespace(None).await;
            let failed = server.expect_status_apply(&object).await;
            assert_eq!(
                conditions(&failed)["Failed"],
                pair("True", "TenantNotAllowed")
            );
            server.expect_event("Warning", "TenantNotAllowed").await;
        })
        .await
        .unwrap();
        refused.await.unwrap().unwrap();
        // ... and where it does, runs under its own id, recorded as the resource's.
        let allowed = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
        tokio::time::timeout(TIMEOUT, async {
            server.expect_namespace(Some("tnt_acme")).await;
            let pending = server.expect_status_apply(&object).await;
            let export_id = pending["exportId"].as_str().unwrap();
            assert_ne!(export_id, forged_id);
            assert_eq!(
                export_id,
                super::trust::derived_export_id(&object, now()),
                "derived from the resource's uid"
            );
            server.expect_event("Normal", "Queued").await;
            let created = audit.events();
            assert_eq!(created.len(), 1);
            assert_eq!(created[0].identity_id, "kubernetes:default/test");
            assert_eq!(created[0].extra_data["export_id"], export_id);
            run_to_completion(&mut server, &object, &ctx).await;
        })
        .await
        .unwrap();
        allowed.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_signed_rest_resource_needs_no_label_and_keeps_its_id_and_requester() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server, audit) = audited_context(exporter.clone());
    let export_id = "exp_01rest000000000000000000000";
    let object = AuditExport::test()
        .finalized()
        .rest_created(export_id, "user:alice");
    assert!(matches!(
        super::trust::origin(&object, &super::fixtures::test_signer()),
        super::trust::Origin::Service { .. }
    ));
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        // No namespace read: the REST API authorised the tenant.
        let pending = server.expect_status_apply(&object).await;
        assert_eq!(pending["exportId"], export_id);
        server.expect_event("Normal", "Queued").await;
        run_to_completion(&mut server, &object, &ctx).await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert!(
        audit.events().is_empty(),
        "the REST API recorded export_created itself"
    );
    let record = super::registry::record_of(
        &object.clone().with_status(running_status(0)),
        &super::fixtures::test_signer(),
    )
    .unwrap();
    assert_eq!(record.requested_by, "user:alice");
}

/// The job of an accepted export (one part) runs to Completed.
async fn run_to_completion(server: &mut ApiServer, object: &AuditExport, ctx: &Ctx) {
    let running = server.expect_status_apply(object).await;
    assert_eq!(running["phase"], "Running");
    server.expect_event("Normal", "Started").await;
    server.expect_status_apply(object).await;
    let done = server.expect_status_apply(object).await;
    assert_eq!(done["phase"], "Completed");
    server.expect_event("Normal", "Completed").await;
    ctx.jobs.wait_idle().await;
}

/// The REST API writes no status: a REST export cancelled before the controller accepted it
/// still reports its (signed) export id.
#[tokio::test]
async fn cancelling_a_rest_export_before_it_was_accepted_keeps_its_id() {
    let exporter = FakeExporter::new(Script::Complete { parts: 1 });
    let (ctx, mut server) = test_context(exporter.clone());
    let export_id = "exp_01rest000000000000000000000";
    let object = AuditExport::test()
        .finalized()
        .rest_created(export_id, "user:alice")
        .cancel_requested();
    let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
    tokio::time::timeout(TIMEOUT, async {
        let cancelled = server.expect_status_apply(&object).await;
        assert_eq!(cancelled["phase"], "Cancelled");
        assert_eq!(cancelled["exportId"], export_id);
        server.expect_event("Normal", "Cancelled").await;
        server.expect_silence().await;
    })
    .await
    .unwrap();
    reconciled.await.unwrap().unwrap();
    assert!(exporter.calls().is_empty(), "nothing estimated or aborted");
}
