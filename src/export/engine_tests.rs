//! Unit tests of the export engine against an in-memory sink ([`MemorySink`]): the claim,
//! parts and manifest, checkpoints and resuming, retries of transient failures, cancellation
//! and permanent failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;
use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::job::LateEvents;
use crate::export::policy::DEFAULT_CREDENTIALS_PATH_PREFIX;
use crate::export::request::ExportRequest;
use crate::export::sink::memory::MemorySink;
use crate::export::sink::{SinkError, SinkErrorKind};
use crate::store::{PreparedEvent, StoreConfig, StoreMetrics};

const TENANT: &str = "tnt_acme";
/// 2026-01-02T00:00:00Z.
const FIRST_EVENT_US: i64 = 1_767_312_000_000_000;
const DEADLINE: Duration = Duration::from_secs(60);
const PREFIX: &str = "exports/";

/// A store with `count` events of [`TENANT`], one second apart, plus events the export must
/// leave out (another tenant's, one outside the time range).
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    engine: ExportEngine,
    sink: Arc<MemorySink>,
    /// The ids of [`TENANT`]'s events, oldest first.
    ids: Vec<String>,
}

impl Fixture {
    async fn new(count: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &StoreConfig::with_data_dir(dir.path().join("data")),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(DEADLINE).await.unwrap();
        let ids: Vec<String> = (0..count).map(|i| format!("log_{i:04}")).collect();
        let mut events: Vec<PreparedEvent> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event(id, TENANT, FIRST_EVENT_US + i as i64 * 1_000_000))
            .collect();
        events.push(event("log_other", "tnt_other", FIRST_EVENT_US));
        events.push(event(
            "log_late",
            TENANT,
            FIRST_EVENT_US + 40 * 86_400_000_000,
        ));
        store.ingest(events).await.unwrap();
        let engine = engine_on(&store, dir.path(), RetryPolicy::default());
        let sink = Arc::new(MemorySink::new("test"));
        let mut fixture = Fixture {
            dir,
            store,
            engine,
            sink,
            ids,
        };
        fixture.set_retry(fast_retry(Duration::from_secs(10)));
        fixture
    }

    fn set_retry(&mut self, retry: RetryPolicy) {
        let mut engine = engine_on(&self.store, self.dir.path(), retry);
        engine.test_sink = Some(self.sink.clone());
        self.engine = engine;
    }

    /// Runs `export_id` from `checkpoint` (a fresh one when `None`) and records checkpoints.
    async fn run(
        &self,
        export_id: &str,
        checkpoint: Option<Checkpoint>,
        progress: &Recorder,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        let checkpoint = match checkpoint {
            Some(checkpoint) => checkpoint,
            None => self.engine.start_checkpoint().await.unwrap(),
        };
        self.engine
            .run(export_id, &spec(), checkpoint, progress, cancel)
            .await
    }

    /// The ids in the parts of `files`, in order, checking each part's size and hash.
    fn exported_ids(&self, files: &[FileEntry]) -> Vec<String> {
        let mut ids = Vec::new();
        for file in files {
            let object = self.sink.object(&file.key).expect("part is written");
            assert_eq!(object.body.len() as u64, file.size_bytes, "{}", file.key);
            assert_eq!(hex::encode(Sha256::digest(&object.body)), file.sha256);
            let lines: Vec<Value> = object
                .body
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).unwrap())
                .collect();
            assert_eq!(lines.len() as u64, file.records, "{}", file.key);
            ids.extend(
                lines
                    .iter()
                    .map(|line| line["id"].as_str().unwrap().to_string()),
            );
        }
        ids
    }
}

fn event(id: &str, tenant: &str, timestamp_us: i64) -> PreparedEvent {
    let event = AuditEvent {
        id: id.to_string(),
        tenant_id: tenant.to_string(),
        timestamp_us,
        action: Action::Read,
        secret_path: Some("app/db".into()),
        identity_type: IdentityType::User,
        identity_id: "user:alice".into(),
        source_ip: None,
        user_agent: None,
        success: true,
        duration_ms: None,
        request_id: None,
        extra_data: Default::default(),
    };
    PreparedEvent::new(event, true)
}

fn engine_on(store: &Store, dir: &Path, retry: RetryPolicy) -> ExportEngine {
    ExportEngine::new(
        store.clone(),
        CredentialSource::Unconfigured,
        EngineConfig {
            spool_dir: dir.join("spool"),
            retry,
            endpoints: EndpointPolicy::default(),
            policy: ExportPolicy::new(None, vec![DEFAULT_CREDENTIALS_PATH_PREFIX.to_string()]),
        },
    )
}

fn fast_retry(max_elapsed: Duration) -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_elapsed,
    }
}

/// January 2026 of [`TENANT`] to an S3 destination (opened as the memory sink), ten records
/// per part.
fn spec() -> ExportSpec {
    let body = json!({
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
        "format": "jsonl",
        "destination": {"type": "s3", "bucket": "audit", "prefix": PREFIX,
                        "credentials_path": "tenants/tnt_acme/s3"},
        "max_records_per_file": 10,
    });
    ExportRequest::from_body(&body, TENANT)
        .and_then(ExportRequest::validate)
        .unwrap()
}

/// Records every checkpoint; can fail or cancel at checkpoint number `n` (1-based).
#[derive(Default)]
struct Recorder {
    checkpoints: Mutex<Vec<Checkpoint>>,
    fail_at: Option<usize>,
    cancel_at: Option<(usize, CancellationToken)>,
}

#[async_trait]
impl ProgressReporter for Recorder {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        let mut checkpoints = self.checkpoints.lock();
        checkpoints.push(checkpoint.clone());
        let n = checkpoints.len();
        if let Some((at, cancel)) = &self.cancel_at
            && *at == n
        {
            cancel.cancel();
        }
        if self.fail_at == Some(n) {
            return Err(ExportFailure::new(
                "store_unavailable",
                "checkpoint not saved",
            ));
        }
        Ok(())
    }
}

impl Recorder {
    fn all(&self) -> Vec<Checkpoint> {
        self.checkpoints.lock().clone()
    }
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("the test finishes in time")
}

fn part_keys(count: usize) -> Vec<String> {
    (1..=count).map(|n| spec().part_key(n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claims_the_prefix_writes_its_parts_in_order_and_the_manifest_last() {
    within(async {
        let fixture = Fixture::new(25).await;
        let progress = Recorder::default();
        let outcome = fixture
            .run("exp_1", None, &progress, &CancellationToken::new())
            .await
            .unwrap();

        assert_eq!(outcome.record_count, 25);
        let records: Vec<u64> = outcome.files.iter().map(|file| file.records).collect();
        assert_eq!(records, [10, 10, 5]);
        assert_eq!(fixture.exported_ids(&outcome.files), fixture.ids);
        let claim_key = format!("{PREFIX}{CLAIM_NAME}");
        let mut expected_order = vec![claim_key.clone()];
        expected_order.extend(part_keys(3));
        expected_order.push(spec().manifest_key());
        assert_eq!(fixture.sink.written(), expected_order);

        let claim: Value =
            serde_json::from_slice(&fixture.sink.object(&claim_key).unwrap().body).unwrap();
        assert_eq!(claim["export_id"], "exp_1");
        assert_eq!(claim["tenant_id"], TENANT);
        let manifest = fixture.sink.object(&spec().manifest_key()).unwrap();
        assert_eq!(manifest.content_type, "application/json");
        let manifest: Value = serde_json::from_slice(&manifest.body).unwrap();
        assert_eq!(manifest["export_id"], "exp_1");
        assert_eq!(manifest["status"], "completed");
        assert_eq!(manifest["record_count"], 25);
        assert_eq!(manifest["files"], json!(outcome.files));
        assert_eq!(manifest["completed_at"], outcome.completed_at.as_str());

        // One checkpoint per part, each extending the previous one.
        let checkpoints = progress.all();
        let files: Vec<usize> = checkpoints.iter().map(|c| c.files.len()).collect();
        assert_eq!(files, [1, 2, 3]);
        assert_eq!(checkpoints[2].files, outcome.files);
        assert_eq!(fixture.sink.aborted(), [PREFIX]);
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiple_of_the_part_size_ends_without_an_empty_part() {
    within(async {
        let fixture = Fixture::new(20).await;
        let outcome = fixture
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let records: Vec<u64> = outcome.files.iter().map(|file| file.records).collect();
        assert_eq!(records, [10, 10]);
        assert!(fixture.sink.object(&spec().part_key(3)).is_none());
        assert_eq!(fixture.exported_ids(&outcome.files), fixture.ids);
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_continues_after_its_last_checkpoint_and_a_finished_one_writes_nothing() {
    within(async {
        let fixture = Fixture::new(25).await;
        // The second checkpoint is not saved: the job stops, the first checkpoint is what a
        // restarted job gets.
        let interrupted = Recorder {
            fail_at: Some(2),
            ..Recorder::default()
        };
        let failure = fixture
            .run("exp_1", None, &interrupted, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(failure.code, "store_unavailable");
        assert!(fixture.sink.object(&spec().manifest_key()).is_none());
        let saved = interrupted.all()[0].clone();

        let resumed = Recorder::default();
        let outcome = fixture
            .run("exp_1", Some(saved), &resumed, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(fixture.exported_ids(&outcome.files), fixture.ids);
        let keys = part_keys(3);
        assert_eq!(
            fixture.sink.writes_of(&keys[0]),
            1,
            "part 1 is not written again"
        );
        assert_eq!(
            fixture.sink.writes_of(&keys[1]),
            2,
            "part 2 was not checkpointed"
        );
        assert_eq!(fixture.sink.writes_of(&keys[2]), 1);
        let files: Vec<usize> = resumed.all().iter().map(|c| c.files.len()).collect();
        assert_eq!(files, [2, 3]);

        // Run once more with the final checkpoint: the manifest is there, nothing is written.
        let writes = fixture.sink.writes();
        let last = resumed.all().pop().unwrap();
        let again = fixture
            .run(
                "exp_1",
                Some(last),
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(again.files, outcome.files);
        assert_eq!(again.record_count, 25);
        assert_eq!(again.completed_at, outcome.completed_at);
        assert_eq!(fixture.sink.writes(), writes);
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_export_completes() {
    within(async {
        let fixture = Fixture::new(25).await;
        // Writes 1 and 2 are the claim's, 3 and 4 part 1's, 5 and 6 part 2's.
        fixture
            .sink
            .fail_write(1, SinkError::transient("503 from the claim"));
        fixture
            .sink
            .fail_write(3, SinkError::transient("connection reset"));
        fixture
            .sink
            .fail_write(5, SinkError::transient("throttled"));
        let outcome = fixture
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(fixture.exported_ids(&outcome.files), fixture.ids);
        assert_eq!(fixture.sink.writes_of(&format!("{PREFIX}{CLAIM_NAME}")), 2);
        let keys = part_keys(3);
        assert_eq!(fixture.sink.writes_of(&keys[0]), 2);
        assert_eq!(fixture.sink.writes_of(&keys[1]), 2);
        assert_eq!(fixture.sink.writes_of(&keys[2]), 1);
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_give_up_once_retrying_took_too_long() {
    within(async {
        let mut fixture = Fixture::new(25).await;
        fixture.set_retry(fast_retry(Duration::from_millis(50)));
        fixture
            .sink
            .fail_writes_from(2, SinkError::transient("destination away"));
        let failure = fixture
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(failure.code, "destination_unavailable");
        assert!(failure.message.contains("destination away"), "{failure:?}");
        assert!(fixture.sink.writes_of(&spec().part_key(1)) > 1);
        assert!(fixture.sink.object(&spec().part_key(1)).is_none());
        assert!(fixture.sink.object(&spec().manifest_key()).is_none());
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_fails_the_job_at_once_without_a_manifest() {
    within(async {
        let fixture = Fixture::new(25).await;
        fixture.sink.fail_write(
            3,
            SinkError::new(SinkErrorKind::AccessDenied, "no PutObject on audit"),
        );
        let failure = fixture
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(failure.code, "destination_access_denied");
        assert_eq!(failure.message, "no PutObject on audit");
        assert_eq!(fixture.sink.writes(), 3, "no retry");
        assert!(fixture.sink.object(&spec().part_key(2)).is_none());
        assert!(fixture.sink.object(&spec().manifest_key()).is_none());
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_the_job_after_the_current_part() {
    within(async {
        let fixture = Fixture::new(25).await;
        let cancel = CancellationToken::new();
        let progress = Recorder {
            cancel_at: Some((1, cancel.clone())),
            ..Recorder::default()
        };
        let failure = fixture
            .run("exp_1", None, &progress, &cancel)
            .await
            .unwrap_err();
        assert_eq!(failure, cancelled());
        assert_eq!(progress.all().len(), 1);
        assert!(fixture.sink.object(&spec().part_key(1)).is_some());
        assert!(fixture.sink.object(&spec().part_key(2)).is_none());
        assert!(fixture.sink.object(&spec().manifest_key()).is_none());
        fixture.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_holding_another_exports_claim_or_unclaimed_files_is_a_conflict() {
    within(async {
        let fixture = Fixture::new(5).await;
        let claim_key = format!("{PREFIX}{CLAIM_NAME}");
        let other = json!({"export_id": "exp_other", "tenant_id": TENANT}).to_string();
        fixture.sink.insert(&claim_key, other.as_bytes());
        let failure = fixture
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(failure.code, "destination_conflict");
        assert!(
            failure.message.contains("memory://test/exports/"),
            "{failure:?}"
        );
        assert!(!failure.message.contains("exp_other"), "{failure:?}");
        assert_eq!(fixture.sink.writes(), 0);

        let unclaimed = Fixture::new(5).await;
        unclaimed
            .sink
            .insert(&spec().part_key(1), b"someone else's");
        let failure = unclaimed
            .run(
                "exp_1",
                None,
                &Recorder::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(failure.code, "destination_conflict");
        assert_eq!(unclaimed.sink.writes(), 0);
        assert_eq!(
            unclaimed.sink.object(&spec().part_key(1)).unwrap().body,
            b"someone else's"
        );
        fixture.store.shutdown().await;
        unclaimed.store.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_exports_racing_for_one_prefix_exactly_one_wins() {
    within(async {
        let fixture = Fixture::new(25).await;
        let (first, second) = (Recorder::default(), Recorder::default());
        let cancel = CancellationToken::new();
        let (a, b) = tokio::join!(
            fixture.run("exp_a", None, &first, &cancel),
            fixture.run("exp_b", None, &second, &cancel),
        );
        let (winner, loser) = match (a, b) {
            (Ok(winner), Err(loser)) => (winner, loser),
            (Err(loser), Ok(winner)) => (winner, loser),
            other => panic!("exactly one export must win: {other:?}"),
        };
        assert_eq!(loser.code, "destination_conflict");
        assert_eq!(fixture.exported_ids(&winner.files), fixture.ids);
        fixture.store.shutdown().await;
    })
    .await;
}

/// Two runs of a schedule: the second takes its window plus the late events (older than its
/// window, ingested after the first run's snapshot), flags them in the manifest, and together
/// the runs hold every event from the start exactly once.
#[tokio::test]
async fn scheduled_runs_deliver_late_events_once_and_flag_them() {
    let fixture = Fixture::new(20).await;
    let at = |seconds: i64| timestamp::format_micros(FIRST_EVENT_US + seconds * 1_000_000);
    let run_spec = |from: i64, to: i64, prefix: &str, late: Option<LateEvents>| {
        let mut spec = spec();
        spec.from = at(from);
        spec.to = at(to);
        spec.destination.prefix = prefix.to_string();
        spec.late = late;
        spec
    };
    let cancel = CancellationToken::new();
    let first = run_spec(0, 10, "r1/", None);
    let snapshot_1 = fixture.engine.start_checkpoint().await.unwrap();
    let since_seq = snapshot_1.snapshot_seq;
    let one = fixture
        .engine
        .run("run-1", &first, snapshot_1, &Recorder::default(), &cancel)
        .await
        .unwrap();
    // Late (in the first window, after its snapshot), current, and before the start.
    fixture
        .store
        .ingest(vec![
            event("log_late_a", TENANT, FIRST_EVENT_US + 5_000_000),
            event("log_late_b", TENANT, FIRST_EVENT_US + 7_000_000),
            event("log_current", TENANT, FIRST_EVENT_US + 15_500_000),
            event("log_before", TENANT, FIRST_EVENT_US - 86_400_000_000),
        ])
        .await
        .unwrap();
    let late = LateEvents {
        since: at(0),
        since_seq,
    };
    let second = run_spec(10, 20, "r2/", Some(late));
    let snapshot_2 = fixture.engine.start_checkpoint().await.unwrap();
    let snapshot_seq = snapshot_2.snapshot_seq;
    let two = fixture
        .engine
        .run("run-2", &second, snapshot_2, &Recorder::default(), &cancel)
        .await
        .unwrap();
    let first_ids = fixture.exported_ids(&one.files);
    let second_ids = fixture.exported_ids(&two.files);
    assert_eq!(first_ids, fixture.ids[..10]);
    let mut expected = vec!["log_late_a".to_string(), "log_late_b".to_string()];
    expected.extend(fixture.ids[10..16].iter().cloned());
    expected.push("log_current".into());
    expected.extend(fixture.ids[16..].iter().cloned());
    assert_eq!(second_ids, expected, "late events first, then the window");
    let summary = fixture
        .engine
        .late_summary(&second, snapshot_seq)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.count, 2);
    assert_eq!(summary.first_event.as_ref().unwrap().id, "log_late_a");
    assert_eq!(summary.last_event.as_ref().unwrap().id, "log_late_b");
    let manifest: Value =
        serde_json::from_slice(&fixture.sink.object("r2/manifest.json").unwrap().body).unwrap();
    assert_eq!(manifest["late"], json!(summary));
    let first_manifest: Value =
        serde_json::from_slice(&fixture.sink.object("r1/manifest.json").unwrap().body).unwrap();
    assert!(first_manifest.get("late").is_none());
    assert_eq!(
        fixture
            .engine
            .late_summary(&first, since_seq)
            .await
            .unwrap(),
        None
    );
}
