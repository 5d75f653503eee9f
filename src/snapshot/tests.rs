//! Snapshot round trips through a real `file` destination and real stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use super::manifest::{self, SnapshotManifest};
use super::restore::{self, RestoreMode};
use std::sync::Arc;

use parking_lot::Mutex;

use super::rejoin::{LocalStore, LogWindow, RejoinError, read_local, restore_to_join};
use super::service::{SnapshotMetrics, snapshot_once};
use super::{SnapshotError, SnapshotTarget};
use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::credentials::DestinationCredentials;
use crate::export::job::{Destination, DestinationType};
use crate::export::sink::{self, SinkContext, endpoint::EndpointPolicy};
use crate::store::log::{EventLog, LogError, LogRecord, LogSource, Replicated};
use crate::store::schema::SCHEMA_VERSION;
use crate::store::{IngestOutcome, PreparedEvent, Store, StoreConfig, StoreMetrics, WriteError};

const PREFIX: &str = "cluster-a/";

fn event(tenant: &str, id: &str, timestamp_us: i64) -> PreparedEvent {
    let event = AuditEvent {
        id: id.to_string(),
        tenant_id: tenant.into(),
        timestamp_us,
        action: Action::Read,
        secret_path: Some("db/prod".into()),
        identity_type: IdentityType::User,
        identity_id: "user:a".into(),
        source_ip: None,
        user_agent: None,
        success: true,
        duration_ms: None,
        request_id: None,
        extra_data: Default::default(),
    };
    PreparedEvent::new(event, true)
}

async fn open_ready(data_dir: &Path) -> Store {
    let store = Store::open(
        &StoreConfig::with_data_dir(data_dir),
        StoreMetrics::unregistered(),
    )
    .unwrap();
    store.wait_ready(Duration::from_secs(30)).await.unwrap();
    store
}

async fn file_target(root: &Path) -> SnapshotTarget {
    let bucket = root.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let destination = Destination {
        kind: DestinationType::File,
        bucket: "bucket".into(),
        prefix: PREFIX.into(),
        credentials_path: None,
    };
    let context = SinkContext {
        export_id: "snapshots".into(),
        endpoints: EndpointPolicy::default(),
        journal_dir: root.join("journal"),
    };
    let sink = sink::open(
        &destination,
        DestinationCredentials::FileDirectory(bucket),
        &context,
    )
    .await
    .unwrap();
    SnapshotTarget::new(sink, PREFIX)
}

/// A store with events of two tenants, committed; returns it with its events' ids.
async fn filled_store(data_dir: &Path) -> Store {
    let store = open_ready(data_dir).await;
    let batch: Vec<PreparedEvent> = (0..40)
        .map(|i| {
            let tenant = if i % 3 == 0 { "tnt_b" } else { "tnt_a" };
            event(tenant, &format!("e{i:03}"), 1_000_000 + i * 10)
        })
        .collect();
    store.ingest(batch).await.unwrap();
    store.flush().await.unwrap();
    store.ingest(vec![event("tnt_a", "late", 5)]).await.unwrap();
    store.flush().await.unwrap();
    store
}

fn bucket_path(root: &Path, key: &str) -> std::path::PathBuf {
    root.join("bucket").join(key)
}

fn read_manifest(root: &Path, id: &str) -> SnapshotManifest {
    let bytes = std::fs::read(bucket_path(root, &manifest::manifest_key(PREFIX, id))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Nothing of a refused restore is placed: no index, no marker, no downloads.
fn assert_nothing_placed(dir: &Path) {
    assert!(
        !dir.join("index").try_exists().unwrap(),
        "an index was placed"
    );
    assert!(
        !restore::marker_path(dir).try_exists().unwrap(),
        "the marker was left"
    );
    assert!(
        !dir.join(".snapshot-restore").try_exists().unwrap(),
        "downloads were left"
    );
    assert!(restore::holds_no_store(dir).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_store_holds_the_same_events_and_continues_the_chains() {
    let root = tempfile::tempdir().unwrap();
    let (source, restored) = (root.path().join("a"), root.path().join("b"));
    let target = file_target(root.path()).await;
    let store = filled_store(&source).await;
    let heads = store.committed_heads();
    let position = store.committed_seq();
    let (manifest, bytes) = snapshot_once(&store, &source, &target, 3).await.unwrap();
    assert_eq!(manifest.position, position);
    assert_eq!(manifest.index_version, SCHEMA_VERSION);
    assert_eq!(bytes, manifest.total_bytes());
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.path == manifest::INDEX_META),
        "{manifest:?}"
    );
    assert!(
        !source
            .join("snapshots")
            .join("staging")
            .join(&manifest.id)
            .try_exists()
            .unwrap(),
        "the staging folder stays behind"
    );
    assert_eq!(
        target.complete_ids().await.unwrap(),
        vec![manifest.id.clone()]
    );
    store.shutdown().await;
    drop(store);

    let outcome = restore::restore(&target, &restored, None, RestoreMode::IntoEmpty)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (outcome.id.as_str(), outcome.position),
        (manifest.id.as_str(), position)
    );
    assert!(!restore::marker_path(&restored).try_exists().unwrap());
    assert!(!restored.join(".snapshot-restore").try_exists().unwrap());
    let copy = open_ready(&restored).await;
    assert_eq!(copy.searcher().num_docs(), 41);
    assert_eq!(copy.committed_seq(), position);
    assert_eq!(copy.committed_heads(), heads);
    // New events continue each tenant's chain after the restored head, and ids stay unique.
    let outcome = copy
        .ingest(vec![
            event("tnt_a", "after", 2_000_000),
            event("tnt_a", "e001", 1),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcome.duplicates, 1,
        "the restored index still knows its ids"
    );
    copy.flush().await.unwrap();
    let after = copy.committed_heads();
    assert_eq!(after["tnt_a"].seq, heads["tnt_a"].seq + 1);
    assert_eq!(after["tnt_b"], heads["tnt_b"]);
    assert_eq!(copy.committed_seq(), position + 1);
    copy.shutdown().await;
    drop(copy);

    // Restoring again into a directory that holds a store is refused.
    let error = restore::restore(&target, &restored, None, RestoreMode::IntoEmpty)
        .await
        .unwrap_err();
    assert!(matches!(error, SnapshotError::NotEmpty(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_truncated_or_missing_files_are_refused_and_nothing_is_placed() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("a");
    let target = file_target(root.path()).await;
    let store = filled_store(&source).await;
    let (manifest, _) = snapshot_once(&store, &source, &target, 3).await.unwrap();
    store.shutdown().await;
    let largest = manifest
        .files
        .iter()
        .filter(|file| file.path.starts_with("index/"))
        .max_by_key(|file| file.size_bytes)
        .unwrap()
        .clone();
    let object = bucket_path(
        root.path(),
        &manifest::file_key(PREFIX, &manifest.id, &largest.path),
    );
    let original = std::fs::read(&object).unwrap();

    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x40;
    let mut truncated = original.clone();
    truncated.truncate(original.len() - 1);
    let mut longer = original.clone();
    longer.push(0);
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("SHA-256", Some(flipped)),
        ("truncated", Some(truncated)),
        ("larger than", Some(longer)),
        ("missing", None),
    ];
    for (n, (expected, content)) in cases.into_iter().enumerate() {
        match content {
            Some(bytes) => std::fs::write(&object, bytes).unwrap(),
            None => std::fs::remove_file(&object).unwrap(),
        }
        let dir = root.path().join(format!("restore-{n}"));
        let error = restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, SnapshotError::Corrupt { path, .. } if *path == largest.path),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert!(
            error.to_string().contains("nothing was restored"),
            "{error}"
        );
        assert_nothing_placed(&dir);
    }
    std::fs::write(&object, &original).unwrap();
    let dir = root.path().join("restore-ok");
    assert!(
        restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_without_a_manifest_do_not_exist_and_only_the_newest_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("a");
    let target = file_target(root.path()).await;
    let empty = root.path().join("empty");
    assert_eq!(
        restore::restore(&target, &empty, None, RestoreMode::IntoEmpty)
            .await
            .unwrap(),
        None,
        "an empty destination restores nothing"
    );
    let store = filled_store(&source).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        store
            .ingest(vec![event("tnt_a", &format!("more{n}"), 3_000_000 + n)])
            .await
            .unwrap();
        store.flush().await.unwrap();
        let (manifest, _) = snapshot_once(&store, &source, &target, 2).await.unwrap();
        ids.push(manifest.id);
    }
    store.shutdown().await;
    let newest_first: Vec<String> = ids.iter().rev().take(2).cloned().collect();
    assert_eq!(target.complete_ids().await.unwrap(), newest_first);
    let oldest = read_manifest_files_left(root.path(), &ids[0]);
    assert!(
        oldest.is_empty(),
        "files of a pruned snapshot remain: {oldest:?}"
    );

    // The newest loses its manifest: it no longer exists, the one before is restored.
    let newest = ids[3].clone();
    let kept = read_manifest(root.path(), &ids[2]);
    std::fs::remove_file(bucket_path(
        root.path(),
        &manifest::manifest_key(PREFIX, &newest),
    ))
    .unwrap();
    let dir = root.path().join("restored");
    let outcome = restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.id, kept.id);
    assert_eq!(outcome.position, kept.position);
    let error = restore::restore(
        &target,
        &root.path().join("x"),
        Some(&newest),
        RestoreMode::IntoEmpty,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SnapshotError::NotFound(_)), "{error}");
}

/// The snapshot files of `id` still at the destination.
fn read_manifest_files_left(root: &Path, id: &str) -> Vec<String> {
    let folder = bucket_path(root, &format!("{}{id}", manifest::folder(PREFIX)));
    let mut left = Vec::new();
    let mut stack = vec![folder];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                left.push(entry.path().display().to_string());
            }
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_index_version_is_refused_and_an_unfinished_restore_is_never_opened() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("a");
    let target = file_target(root.path()).await;
    let store = filled_store(&source).await;
    let (manifest, _) = snapshot_once(&store, &source, &target, 3).await.unwrap();
    store.shutdown().await;
    let key = bucket_path(root.path(), &manifest::manifest_key(PREFIX, &manifest.id));
    let mut newer = manifest.clone();
    newer.index_version = SCHEMA_VERSION + 1;
    std::fs::write(&key, serde_json::to_vec(&newer).unwrap()).unwrap();
    let dir = root.path().join("b");
    let error = restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
        .await
        .unwrap_err();
    assert!(matches!(error, SnapshotError::NewerIndex { .. }), "{error}");
    assert_nothing_placed(&dir);

    // A path escaping the data directory is refused before anything is downloaded.
    let mut escaping = manifest.clone();
    escaping.files[0].path = "index/../../../etc/x".into();
    std::fs::write(&key, serde_json::to_vec(&escaping).unwrap()).unwrap();
    let error = restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::BadManifest { .. }),
        "{error}"
    );
    assert_nothing_placed(&dir);

    // A crash while placing leaves the marker: the store refuses the directory.
    std::fs::write(&key, serde_json::to_vec(&manifest).unwrap()).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(restore::marker_path(&dir), b"x").unwrap();
    let refused = Store::open(
        &StoreConfig::with_data_dir(&dir),
        StoreMetrics::unregistered(),
    );
    let message = refused.err().unwrap().to_string();
    assert!(message.contains("did not finish"), "{message}");
    // ... and a new restore finishes it.
    assert!(restore::holds_no_store(&dir).unwrap());
    restore::restore(&target, &dir, None, RestoreMode::IntoEmpty)
        .await
        .unwrap()
        .unwrap();
    let copy = open_ready(&dir).await;
    assert_eq!(copy.committed_seq(), manifest.position);
    copy.shutdown().await;
}

/// A replicated log of fixed records in memory, for replica stores.
#[derive(Clone, Default)]
struct FixedLog {
    records: Arc<Mutex<Vec<LogRecord>>>,
}

impl FixedLog {
    fn with(records: &[Vec<PreparedEvent>]) -> Self {
        let log = FixedLog::default();
        for (index, events) in records.iter().enumerate() {
            log.records.lock().push(LogRecord {
                position: index as u64 + 1,
                events: events.clone(),
            });
        }
        log
    }

    /// A replica store in `data_dir` that consumed the whole log (flushed).
    async fn replica(&self, data_dir: &Path) -> Store {
        let replicated = Replicated {
            log: Arc::new(self.clone()),
            source: Box::new(self.clone()),
            max_lag: 1000,
        };
        let store = Store::open_replicated(
            &StoreConfig::with_data_dir(data_dir),
            StoreMetrics::unregistered(),
            replicated,
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        store.flush().await.unwrap();
        store
    }
}

#[async_trait::async_trait]
impl EventLog for FixedLog {
    async fn append(&self, _: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
        Err(WriteError::Closed)
    }
}

#[async_trait::async_trait]
impl LogSource for FixedLog {
    async fn next_records(
        &mut self,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        let records: Vec<LogRecord> = self
            .records
            .lock()
            .iter()
            .filter(|record| record.position > after)
            .cloned()
            .collect();
        if records.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
        }
        Ok(records)
    }

    async fn acknowledge_through(&mut self, _: u64) -> Result<(), LogError> {
        Ok(())
    }

    async fn end_position(&mut self) -> Result<u64, LogError> {
        Ok(self.records.lock().len() as u64)
    }
}

fn records() -> Vec<Vec<PreparedEvent>> {
    (0..3)
        .map(|record| {
            (0..4)
                .map(|i| {
                    let tenant = if i % 2 == 0 { "tnt_a" } else { "tnt_b" };
                    event(
                        tenant,
                        &format!("r{record}e{i}"),
                        1_000_000 + record * 10 + i,
                    )
                })
                .collect()
        })
        .collect()
}

fn window(first: u64, last: u64) -> LogWindow {
    LogWindow { first, last }
}

/// Every file of `dir` with its content (to show nothing changed).
fn contents(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() != "LOCK" {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_behind_the_stream_restores_a_covering_snapshot_and_keeps_its_store_without_one()
{
    let root = tempfile::tempdir().unwrap();
    let target = file_target(root.path()).await.owned_by("aaaaaaaa");
    let metrics = SnapshotMetrics::default();
    let log = FixedLog::with(&records());
    let source = root.path().join("a");
    let store = log.replica(&source).await;
    let (manifest, _) = snapshot_once(&store, &source, &target, 3).await.unwrap();
    store.shutdown().await;
    // The snapshot records the consumed stream position; it continues after it.
    assert_eq!(manifest.log_position(), Some(3));
    assert_eq!(manifest.position, 4);
    assert!(manifest.id.ends_with("aaaaaaaa"), "{}", manifest.id);
    // A newer snapshot of an embedded store at the same destination is not a replica's.
    let embedded = root.path().join("embedded");
    let store = filled_store(&embedded).await;
    snapshot_once(&store, &embedded, &file_target(root.path()).await, 3)
        .await
        .unwrap();
    store.shutdown().await;

    // A replica that indexed only record 1: its store continues at 2.
    let stale = root.path().join("stale");
    let store = FixedLog::with(&records()[..1]).replica(&stale).await;
    store.shutdown().await;
    drop(store);
    assert_eq!(read_local(&stale).unwrap(), LocalStore::Replica { next: 2 });
    // Retention anchors of the stale index (the snapshot's uploader never expired anything).
    let anchors = stale.join("integrity").join("retention-anchors.json");
    std::fs::create_dir_all(stale.join("integrity")).unwrap();
    std::fs::write(&anchors, b"{\"stale\": true}").unwrap();
    let before = contents(&stale);
    let join = |window| restore_to_join(&target, "file://bucket/", &stale, window, &metrics);

    // Inside the window: nothing to do.
    assert_eq!(join(window(2, 3)).await.unwrap(), None);
    assert_eq!(contents(&stale), before);
    // Records 2..=4 are gone and the snapshot continues at 4: no snapshot covers, nothing
    // changes.
    let error = join(window(5, 6)).await.unwrap_err();
    assert!(matches!(error, RejoinError::Gap(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("records 2..=4 expired"), "{message}");
    assert!(message.contains(&manifest.id), "{message}");
    assert_eq!(
        contents(&stale),
        before,
        "a refused rejoin changed the store"
    );
    // Record 2 is gone, the snapshot covers: the stale store is replaced by it.
    let outcome = join(window(3, 3)).await.unwrap().unwrap();
    assert_eq!(outcome.id, manifest.id);
    assert_eq!(read_local(&stale).unwrap(), LocalStore::Replica { next: 4 });
    assert!(
        std::fs::read(&anchors).ok().as_deref() != Some(&b"{\"stale\": true}"[..]),
        "the replaced store's retention anchors were kept"
    );
    let restored = log.replica(&stale).await;
    assert_eq!(restored.searcher().num_docs(), 12);
    restored.shutdown().await;

    // An empty data directory restores too, once the window moved on.
    let empty = root.path().join("empty");
    let outcome = restore_to_join(&target, "file://bucket/", &empty, window(4, 9), &metrics)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.position, 4);
    // A store the embedded mode wrote is never replaced.
    assert_eq!(read_local(&embedded).unwrap(), LocalStore::Embedded);
    let untouched = contents(&embedded);
    assert_eq!(
        restore_to_join(
            &target,
            "file://bucket/",
            &embedded,
            window(50, 60),
            &metrics
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(contents(&embedded), untouched);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_a_destination_prune_only_their_own_snapshots() {
    let root = tempfile::tempdir().unwrap();
    let log = FixedLog::with(&records());
    let dir = root.path().join("a");
    let store = log.replica(&dir).await;
    let a = file_target(root.path())
        .await
        .owned_by(&manifest::owner_tag("replica-a"));
    let b = file_target(root.path())
        .await
        .owned_by(&manifest::owner_tag("replica-b"));
    let (first_b, _) = snapshot_once(&store, &dir, &b, 1).await.unwrap();
    let mut of_a = Vec::new();
    for _ in 0..3 {
        of_a.push(snapshot_once(&store, &dir, &a, 1).await.unwrap().0.id);
    }
    store.shutdown().await;
    // a kept its newest; b's only snapshot, older than all of a's, is b's to prune.
    let left = a.complete_ids().await.unwrap();
    assert_eq!(left, vec![of_a[2].clone(), first_b.id.clone()]);
    assert!(read_manifest_files_left(root.path(), &of_a[0]).is_empty());
    assert!(!read_manifest_files_left(root.path(), &first_b.id).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_uploader_prunes_what_a_former_uploader_left_but_no_embedded_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let log = FixedLog::with(&records());
    let dir = root.path().join("a");
    let store = log.replica(&dir).await;
    let a = file_target(root.path())
        .await
        .owned_by(&manifest::owner_tag("replica-a"))
        .pruning_across_replicas();
    let b = file_target(root.path())
        .await
        .owned_by(&manifest::owner_tag("replica-b"))
        .pruning_across_replicas();
    // An embedded store sharing the destination, then a's snapshots while it held the role.
    let embedded_dir = root.path().join("embedded");
    let embedded = filled_store(&embedded_dir).await;
    let (of_embedded, _) =
        snapshot_once(&embedded, &embedded_dir, &file_target(root.path()).await, 3)
            .await
            .unwrap();
    embedded.shutdown().await;
    // An upload of an earlier holder c that never completed (older than every kept snapshot):
    // files, no manifest.
    let unfinished = manifest::new_id(Some(&manifest::owner_tag("replica-c")));
    let unfinished_file = bucket_path(
        root.path(),
        &manifest::file_key(PREFIX, &unfinished, manifest::INDEX_META),
    );
    std::fs::create_dir_all(unfinished_file.parent().unwrap()).unwrap();
    std::fs::write(&unfinished_file, b"{}").unwrap();
    // Ids order by their millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut of_a = Vec::new();
    for _ in 0..3 {
        of_a.push(snapshot_once(&store, &dir, &a, 3).await.unwrap().0.id);
    }
    // b took the role: its first run keeps the newest 2 of every replica's snapshots.
    let (first_b, _) = snapshot_once(&store, &dir, &b, 2).await.unwrap();
    store.shutdown().await;
    let left = b.complete_ids().await.unwrap();
    assert_eq!(
        left,
        vec![first_b.id.clone(), of_a[2].clone(), of_embedded.id.clone()]
    );
    for id in &of_a[..2] {
        assert!(read_manifest_files_left(root.path(), id).is_empty(), "{id}");
    }
    assert!(!read_manifest_files_left(root.path(), &of_a[2]).is_empty());
    assert!(!read_manifest_files_left(root.path(), &of_embedded.id).is_empty());
    // c's unfinished upload may still be running (a former holder finishing its run): left
    // alone within the grace, although older than the oldest kept snapshot.
    assert!(unfinished_file.try_exists().unwrap());
}

#[test]
fn a_restored_key_ring_keeps_the_old_public_keys_as_retired() {
    use crate::integrity::keys::Keyring;
    let root = tempfile::tempdir().unwrap();
    let old_dir = root.path().join("old");
    let old = Keyring::load(&old_dir, true).unwrap();
    let old_json = std::fs::read(old_dir.join("keyring.json")).unwrap();
    let new_dir = root.path().join("new");
    let ring = Keyring::adopt_public_ring(&new_dir, &old_json).unwrap();
    assert_ne!(
        ring.kid(),
        old.kid(),
        "a restored store signs with its own key"
    );
    let retired = ring
        .entries()
        .iter()
        .find(|entry| entry.kid == old.kid())
        .unwrap();
    assert!(retired.valid_until.is_some());
    assert!(
        !new_dir
            .join(format!("{}.pem", old.kid()))
            .try_exists()
            .unwrap(),
        "the old private key is never copied"
    );
    // Adopting again (a second restore) keeps one entry per key and the active key.
    let again = Keyring::adopt_public_ring(&new_dir, &old_json).unwrap();
    assert_eq!(again.kid(), ring.kid());
    assert_eq!(again.entries().len(), 2);
}
