//! The tamper matrix against the `file` destination: real exports of a real store, altered on
//! disk, each alteration reported in plain words.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::credentials::{CredentialSource, DestinationCredentials};
use crate::export::engine::{EngineConfig, ExportEngine, ProgressReporter, RetryPolicy};
use crate::export::job::{Checkpoint, Destination, DestinationType, ExportFailure};
use crate::export::manifest::{
    ExportIntegrity, FamilyLink, LinksError, ManifestLink, ManifestLinkStore, ManifestLinks,
    family_key,
};
use crate::export::policy::{DEFAULT_CREDENTIALS_PATH_PREFIX, ExportPolicy};
use crate::export::request::ExportRequest;
use crate::export::sink::{self, SinkContext, endpoint::EndpointPolicy};
use crate::integrity::checkpoint::CheckpointLog;
use crate::integrity::keys::Keyring;
use crate::store::{PreparedEvent, Store, StoreConfig, StoreMetrics};

const TENANT: &str = "tnt_acme";
/// 2026-01-02T00:00:00Z.
const FIRST_EVENT_US: i64 = 1_767_312_000_000_000;
const EVENTS: usize = 25;

struct NoProgress;

#[async_trait]
impl ProgressReporter for NoProgress {
    async fn checkpoint(&self, _checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        Ok(())
    }
}

/// A store with [`EVENTS`] events of [`TENANT`] (one ingested late, with an early timestamp:
/// chain order differs from export order) and one of another tenant, and an engine that
/// signs manifests and writes `file` destinations under `root`.
struct Fixture {
    dir: tempfile::TempDir,
    _store: Store,
    engine: ExportEngine,
    keyring: Keyring,
    links: Arc<dyn ManifestLinkStore>,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_links(|links| Arc::new(links)).await
    }

    /// As [`Fixture::new`], the manifest links kept by `links` around the data directory's.
    async fn with_links(
        links: impl FnOnce(ManifestLinks) -> Arc<dyn ManifestLinkStore>,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &StoreConfig::with_data_dir(dir.path().join("data")),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(60)).await.unwrap();
        let mut events: Vec<PreparedEvent> = (0..EVENTS - 1)
            .map(|i| {
                event(
                    &format!("log_{i:04}"),
                    TENANT,
                    FIRST_EVENT_US + i as i64 * 1_000_000,
                )
            })
            .collect();
        events.push(event("log_other", "tnt_other", FIRST_EVENT_US));
        events.push(event("log_late", TENANT, FIRST_EVENT_US + 500_000));
        store.ingest(events).await.unwrap();
        let root = dir.path().join("exports");
        std::fs::create_dir_all(root.join("audit")).unwrap();
        let keyring = Keyring::load(&dir.path().join("keys"), true).unwrap();
        let integrity_dir = dir.path().join("data/integrity");
        let log = CheckpointLog::open(&integrity_dir, keyring.clone()).unwrap();
        let links = links(ManifestLinks::open(&integrity_dir).unwrap());
        let integrity = ExportIntegrity {
            checkpoints: Arc::new(log),
            links: links.clone(),
        };
        let engine = ExportEngine::new(
            store.clone(),
            CredentialSource::Unconfigured,
            EngineConfig {
                spool_dir: dir.path().join("spool"),
                retry: RetryPolicy::default(),
                endpoints: EndpointPolicy::default(),
                policy: ExportPolicy::new(
                    Some(root.canonicalize().unwrap()),
                    vec![DEFAULT_CREDENTIALS_PATH_PREFIX.to_string()],
                ),
            },
        )
        .with_integrity(Arc::new(integrity));
        Fixture {
            dir,
            _store: store,
            engine,
            keyring,
            links,
        }
    }

    fn bucket(&self) -> PathBuf {
        self.dir.path().join("exports/audit")
    }

    /// Exports everything of [`TENANT`] to `prefix` with `extra` request members.
    async fn export(&self, prefix: &str, extra: Value) -> PathBuf {
        let id = crate::export::registry::new_export_id();
        self.export_as(&id, prefix, extra).await
    }

    /// As [`Fixture::export`], as the export `id` (running an id again resumes it).
    async fn export_as(&self, id: &str, prefix: &str, extra: Value) -> PathBuf {
        let mut body = json!({
            "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
            "destination": {"type": "file", "bucket": "audit", "prefix": prefix},
            "max_records_per_file": 10,
        });
        for (name, value) in extra.as_object().unwrap() {
            body[name] = value.clone();
        }
        let spec = ExportRequest::from_body(&body, TENANT)
            .and_then(ExportRequest::validate)
            .unwrap();
        let checkpoint = self.engine.start_checkpoint().await.unwrap();
        self.engine
            .run(
                id,
                &spec,
                checkpoint,
                &NoProgress,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        self.bucket().join(prefix)
    }

    async fn verify(&self, prefix: &str) -> Report {
        self.verify_with(prefix, &self.keyring.public_keys()).await
    }

    async fn verify_with(&self, prefix: &str, keys: &PublicKeys) -> Report {
        let sink = file_sink(&self.bucket()).await;
        let key = format!("{prefix}manifest.json");
        verify_export(sink.as_ref(), &key, &KeyMap::default(), keys)
            .await
            .unwrap()
    }
}

async fn file_sink(dir: &Path) -> Arc<dyn Sink> {
    let destination = Destination {
        kind: DestinationType::File,
        bucket: "audit".into(),
        prefix: String::new(),
        credentials_path: None,
    };
    let context = SinkContext {
        export_id: "verify".into(),
        endpoints: EndpointPolicy::default(),
        journal_dir: dir.to_path_buf(),
    };
    sink::open(
        &destination,
        DestinationCredentials::FileDirectory(dir.to_path_buf()),
        &context,
    )
    .await
    .unwrap()
}

fn event(id: &str, tenant: &str, timestamp_us: i64) -> PreparedEvent {
    let mut extra = serde_json::Map::new();
    extra.insert("ratio".into(), json!(0.1));
    extra.insert("nested".into(), json!({"b": [1, 2.5e-7], "a": "é\"\n"}));
    let event = AuditEvent {
        id: id.to_string(),
        tenant_id: tenant.to_string(),
        timestamp_us,
        action: Action::Read,
        secret_path: Some("app/db".into()),
        identity_type: IdentityType::User,
        identity_id: "user:alice".into(),
        source_ip: Some("10.0.0.1".parse().unwrap()),
        user_agent: None,
        success: true,
        duration_ms: Some(3),
        request_id: None,
        extra_data: extra,
    };
    PreparedEvent::new(event, true)
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Asserts that verification failed and one problem's message contains each of `expected`.
fn assert_reports(report: &Report, expected: &[&str]) {
    assert!(!report.ok, "tampering went unnoticed: {report:#?}");
    for text in expected {
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.message.contains(text)),
            "no problem mentions {text:?}: {:#?}",
            report.problems
        );
    }
}

#[tokio::test]
async fn an_untouched_export_verifies_with_its_whole_chain_and_checkpoint() {
    let fixture = Fixture::new().await;
    let dir = fixture.export("2026-01/", json!({})).await;
    let report = fixture.verify("2026-01/").await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.checked.files, 3);
    assert_eq!(report.checked.records, EVENTS as u64);
    assert_eq!(
        report.checked.chain,
        format!("complete: 1..={EVENTS} ending at the manifest's chain head")
    );
    assert!(report.checked.checkpoint.contains("equals the chain head"));
    assert_eq!(
        report.checked.signed_by.as_deref(),
        Some(fixture.keyring.kid())
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["chain"]["chain_seq"], json!(EVENTS));
    assert_eq!(manifest["files"][0]["first_event"]["id"], "log_0000");
    assert_eq!(
        manifest["files"][0]["first_event"]["timestamp"],
        "2026-01-02T00:00:00.000000Z"
    );
    assert_eq!(manifest["files"][0]["last_event"]["id"], "log_0008");
    assert_eq!(manifest["previous_manifest"], Value::Null);
    // The late event (chain_seq 25) is the second record of the first part.
    let first = lines_of(&dir.join("part-0001.jsonl"));
    let late: Value = serde_json::from_str(&first[1]).unwrap();
    assert_eq!(
        (late["id"].as_str(), late["chain_seq"].as_u64()),
        (Some("log_late"), Some(25))
    );
}

#[tokio::test]
async fn gzip_and_csv_exports_verify_and_a_filtered_one_checks_the_links_it_holds() {
    let fixture = Fixture::new().await;
    fixture.export("gz/", json!({"compression": "gzip"})).await;
    let report = fixture.verify("gz/").await;
    assert!(report.ok, "{report:#?}");
    assert!(report.checked.chain.starts_with("complete"));
    fixture.export("csv/", json!({"format": "csv"})).await;
    let report = fixture.verify("csv/").await;
    assert!(report.ok, "{report:#?}");
    assert!(
        report.checked.chain.contains("CSV"),
        "{}",
        report.checked.chain
    );
    let dir = fixture
        .export("part/", json!({"from": "2026-01-02T00:00:05Z"}))
        .await;
    let report = fixture.verify("part/").await;
    assert!(report.ok, "{report:#?}");
    assert!(report.checked.chain.starts_with("partial"));
    let path = dir.join("part-0001.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("user:alice", "user:alicf", 1)).unwrap();
    assert_reports(
        &fixture.verify("part/").await,
        &["part-0001.jsonl: SHA-256 differs from the manifest (file altered)"],
    );
}

#[tokio::test]
async fn one_changed_byte_in_a_record_is_reported_with_file_and_record() {
    let fixture = Fixture::new().await;
    let dir = fixture.export("2026-01/", json!({})).await;
    let path = dir.join("part-0002.jsonl");
    let mut lines = lines_of(&path);
    lines[2] = lines[2].replacen("user:alice", "user:alicf", 1);
    write_lines(&path, &lines);
    let report = fixture.verify("2026-01/").await;
    assert_reports(
        &report,
        &[
            "part-0002.jsonl: SHA-256 differs from the manifest (file altered)",
            "record 3 of part-0002.jsonl: chain_hash does not follow from the previous record",
        ],
    );
    let problem = report
        .problems
        .iter()
        .find(|problem| problem.record.is_some())
        .unwrap();
    assert_eq!(
        (problem.file.as_deref(), problem.record),
        (Some("part-0002.jsonl"), Some(3))
    );
}

#[tokio::test]
async fn deleted_swapped_and_inserted_records_are_reported() {
    let fixture = Fixture::new().await;
    let dir = fixture.export("del/", json!({})).await;
    let path = dir.join("part-0002.jsonl");
    let mut lines = lines_of(&path);
    lines.remove(4);
    write_lines(&path, &lines);
    assert_reports(
        &fixture.verify("del/").await,
        &[
            "part-0002.jsonl: holds 9 records, the manifest says 10",
            "the chain is not contiguous",
            "record 5 of part-0002.jsonl: the record before it",
        ],
    );

    let dir = fixture.export("swap/", json!({})).await;
    let path = dir.join("part-0003.jsonl");
    let mut lines = lines_of(&path);
    lines.swap(1, 2);
    write_lines(&path, &lines);
    assert_reports(
        &fixture.verify("swap/").await,
        &[
            "part-0003.jsonl: SHA-256 differs",
            "record 3 of part-0003.jsonl: is out of timestamp order",
        ],
    );

    let dir = fixture.export("insert/", json!({})).await;
    let path = dir.join("part-0001.jsonl");
    let mut lines = lines_of(&path);
    let mut forged: Value = serde_json::from_str(&lines[3]).unwrap();
    forged["id"] = json!("log_forged");
    forged["chain_seq"] = json!(EVENTS + 1);
    lines.insert(4, forged.to_string());
    write_lines(&path, &lines);
    assert_reports(
        &fixture.verify("insert/").await,
        &[
            "part-0001.jsonl: holds 11 records, the manifest says 10",
            "lies beyond the manifest's chain head",
            "record 5 of part-0001.jsonl: chain_hash does not follow",
        ],
    );
}

#[tokio::test]
async fn truncated_deleted_renamed_and_substituted_parts_are_reported() {
    let fixture = Fixture::new().await;
    let dir = fixture.export("trunc/", json!({})).await;
    let path = dir.join("part-0001.jsonl");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    assert_reports(
        &fixture.verify("trunc/").await,
        &[
            "part-0001.jsonl: is ",
            "(file truncated, extended or replaced)",
        ],
    );

    let dir = fixture.export("gone/", json!({})).await;
    std::fs::remove_file(dir.join("part-0003.jsonl")).unwrap();
    assert_reports(
        &fixture.verify("gone/").await,
        &["part-0003.jsonl: is missing", "the chain is not contiguous"],
    );

    let dir = fixture.export("renamed/", json!({})).await;
    std::fs::rename(dir.join("part-0002.jsonl"), dir.join("part-0009.jsonl")).unwrap();
    assert_reports(
        &fixture.verify("renamed/").await,
        &[
            "part-0002.jsonl: is missing",
            "part-0009.jsonl: is not listed in the manifest",
        ],
    );

    let other = fixture
        .export("other/", json!({"max_records_per_file": 7}))
        .await;
    let dir = fixture.export("subst/", json!({})).await;
    std::fs::copy(other.join("part-0002.jsonl"), dir.join("part-0002.jsonl")).unwrap();
    assert_reports(
        &fixture.verify("subst/").await,
        &[
            "part-0002.jsonl: SHA-256 differs",
            "part-0002.jsonl: holds 7 records, the manifest says 10",
        ],
    );
}

#[tokio::test]
async fn an_edited_or_re_signed_manifest_is_reported() {
    let fixture = Fixture::new().await;
    let dir = fixture.export("2026-01/", json!({})).await;
    let path = dir.join("manifest.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    type Edit = (&'static str, fn(&mut Value));
    let edits: [Edit; 5] = [
        ("record_count", |m| m["record_count"] = json!(24)),
        ("chain head", |m| {
            m["chain"]["chain_hash"] = json!("00".repeat(32))
        }),
        ("time range", |m| {
            m["from"] = json!("2026-01-03T00:00:00.000000Z")
        }),
        ("a file's hash", |m| {
            m["files"][1]["sha256"] = json!("ab".repeat(32))
        }),
        ("the tenant", |m| m["tenant_id"] = json!("tnt_other")),
    ];
    for (what, edit) in edits {
        let mut manifest = original.clone();
        edit(&mut manifest);
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        let report = fixture.verify("2026-01/").await;
        assert_reports(
            &report,
            &["manifest.json: its signature does not match its content"],
        );
        assert!(report.checked.signed_by.is_none(), "{what}");
    }
    // Only whitespace changed: the signature is over the canonical form.
    std::fs::write(&path, serde_json::to_vec(&original).unwrap()).unwrap();
    assert!(fixture.verify("2026-01/").await.ok);

    let other = Keyring::load(&fixture.dir.path().join("other-keys"), true).unwrap();
    let mut manifest = original.as_object().cloned().unwrap();
    manifest.insert("record_count".into(), json!(24));
    other.sign_object(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let report = fixture.verify("2026-01/").await;
    assert_reports(
        &report,
        &[
            "which is not among the trusted public keys",
            "record_count is 24",
        ],
    );
    // Trusting only the other key does not help: the checkpoint is still the service's.
    let report = fixture.verify_with("2026-01/", &other.public_keys()).await;
    assert_reports(
        &report,
        &["the manifest's checkpoint: it is signed with key"],
    );
}

#[tokio::test]
async fn manifests_of_a_family_chain_and_a_broken_link_is_reported() {
    let fixture = Fixture::new().await;
    let first = fixture.export("acme/2026-01/", json!({})).await;
    fixture.export("elsewhere/2026-01/", json!({})).await;
    fixture.export("acme/2026-02/", json!({})).await;
    let report = fixture.verify("acme/2026-02/").await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(
        report.checked.previous_manifest,
        "acme/2026-01/manifest.json matches"
    );
    let path = first.join("manifest.json");
    let bytes = std::fs::read(&path).unwrap();
    let mut edited = bytes.clone();
    edited.push(b'\n');
    std::fs::write(&path, &edited).unwrap();
    assert_reports(
        &fixture.verify("acme/2026-02/").await,
        &["previous manifest acme/2026-01/manifest.json: SHA-256 differs"],
    );
    std::fs::remove_file(&path).unwrap();
    assert_reports(
        &fixture.verify("acme/2026-02/").await,
        &["previous manifest acme/2026-01/manifest.json is missing at the destination"],
    );
}

/// The `previous_manifest` key of the manifest under `prefix` (`None` when it links nowhere).
fn previous_of(fixture: &Fixture, prefix: &str) -> Option<String> {
    let bytes = std::fs::read(fixture.bucket().join(prefix).join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    manifest["previous_manifest"]["key"]
        .as_str()
        .map(str::to_string)
}

/// Links whose first [`RACERS`] reads wait for each other: that many exports read the family's
/// newest manifest before any records its own.
struct RacingLinks {
    inner: ManifestLinks,
    reads: std::sync::atomic::AtomicUsize,
    barrier: tokio::sync::Barrier,
}

const RACERS: usize = 3;

#[async_trait]
impl ManifestLinkStore for RacingLinks {
    async fn newest(&self, family: &str) -> Result<FamilyLink, LinksError> {
        let read = self.inner.newest(family).await;
        if self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < RACERS {
            self.barrier.wait().await;
        }
        read
    }

    async fn record(
        &self,
        family: &str,
        version: u64,
        link: &ManifestLink,
    ) -> Result<bool, LinksError> {
        self.inner.record(family, version, link).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_of_one_family_racing_still_form_one_chain() {
    let fixture = Fixture::with_links(|inner| {
        Arc::new(RacingLinks {
            inner,
            reads: Default::default(),
            barrier: tokio::sync::Barrier::new(RACERS),
        })
    })
    .await;
    let prefixes = ["acme/a/", "acme/b/", "acme/c/", "acme/d/"];
    futures::future::join_all(prefixes.map(|prefix| fixture.export(prefix, json!({})))).await;
    let mut links: Vec<Option<String>> = prefixes
        .iter()
        .map(|prefix| previous_of(&fixture, prefix))
        .collect();
    links.sort();
    // One manifest starts the chain, every other links to a different one of the family.
    assert_eq!(links[0], None, "{links:?}");
    let linked: std::collections::BTreeSet<_> = links[1..].iter().flatten().collect();
    assert_eq!(linked.len(), prefixes.len() - 1, "a fork: {links:?}");
    for prefix in prefixes {
        assert!(fixture.verify(prefix).await.ok, "{prefix}");
    }
}

#[tokio::test]
async fn a_manifest_written_but_not_recorded_is_adopted_when_its_job_resumes() {
    let fixture = Fixture::new().await;
    fixture.export("acme/2026-01/", json!({})).await;
    let family_before = fixture
        .links
        .newest(&family_of(&fixture, "acme/2026-01/"))
        .await
        .unwrap();
    fixture
        .export_as("exp_feb", "acme/2026-02/", json!({}))
        .await;
    // The process stopped after February's manifest was written, before it was recorded.
    let family = family_of(&fixture, "acme/2026-02/");
    let current = fixture.links.newest(&family).await.unwrap();
    let january = family_before.newest.clone().unwrap();
    assert!(
        fixture
            .links
            .record(&family, current.version, &january)
            .await
            .unwrap()
    );
    // The job resumes: its manifest is there, and becomes the family's newest.
    fixture
        .export_as("exp_feb", "acme/2026-02/", json!({}))
        .await;
    fixture.export("acme/2026-03/", json!({})).await;
    assert_eq!(
        previous_of(&fixture, "acme/2026-03/").as_deref(),
        Some("acme/2026-02/manifest.json")
    );
    assert!(fixture.verify("acme/2026-03/").await.ok);
}

/// The links key of a `file` export of [`TENANT`] to `prefix`.
fn family_of(_fixture: &Fixture, prefix: &str) -> String {
    let body = json!({
        "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "format": "jsonl",
        "destination": {"type": "file", "bucket": "audit", "prefix": prefix},
    });
    let spec = ExportRequest::from_body(&body, TENANT)
        .and_then(ExportRequest::validate)
        .unwrap();
    family_key(&spec)
}

#[tokio::test]
async fn a_copied_export_directory_verifies_in_place() {
    let fixture = Fixture::new().await;
    fixture.export("acme/2026-01/", json!({})).await;
    fixture.export("acme/2026-02/", json!({})).await;
    let copy = fixture.dir.path().join("copy");
    for month in ["2026-01", "2026-02"] {
        let from = fixture.bucket().join("acme").join(month);
        let to = copy.join(format!("m-{month}"));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    // The previous manifest is looked for in a sibling directory named like its prefix.
    std::fs::rename(copy.join("m-2026-01"), copy.join("2026-01")).unwrap();
    let sink = file_sink(&copy).await;
    let key_map = KeyMap::relocated_directory("acme/2026-02/manifest.json", "m-2026-02");
    let keys = fixture.keyring.public_keys();
    let report = verify_export(sink.as_ref(), "m-2026-02/manifest.json", &key_map, &keys)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(
        report.checked.previous_manifest,
        "acme/2026-01/manifest.json matches"
    );
}

#[test]
fn key_maps_relocate_the_export_and_its_family() {
    let identity = KeyMap::new("a/b/manifest.json", "a/b/manifest.json");
    assert_eq!(
        identity.map("a/b/part-0001.jsonl").as_deref(),
        Some("a/b/part-0001.jsonl")
    );
    let moved = KeyMap::new("acme/2026-02/manifest.json", "copies/feb/manifest.json");
    assert_eq!(
        moved.map("acme/2026-02/part-0001.jsonl").as_deref(),
        Some("copies/feb/part-0001.jsonl")
    );
    assert_eq!(
        moved.map("acme/2026-01/manifest.json").as_deref(),
        Some("copies/2026-01/manifest.json")
    );
    assert_eq!(moved.map("other/x").as_deref(), None);
}
