//! Snapshot round trips through a real `file` destination and real stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use super::manifest::{self, SnapshotManifest};
use super::restore::{self, RestoreMode};
use super::service::{restore_if_behind, snapshot_once};
use super::{SnapshotError, SnapshotTarget};
use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::credentials::DestinationCredentials;
use crate::export::job::{Destination, DestinationType};
use crate::export::sink::{self, SinkContext, endpoint::EndpointPolicy};
use crate::store::schema::SCHEMA_VERSION;
use crate::store::{PreparedEvent, Store, StoreConfig, StoreMetrics};

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

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_behind_the_log_window_restores_one_that_covers_it() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("a");
    let target = file_target(root.path()).await;
    let store = filled_store(&source).await;
    let (manifest, _) = snapshot_once(&store, &source, &target, 3).await.unwrap();
    store.shutdown().await;
    let stale = root.path().join("stale");
    assert_eq!(
        restore_if_behind(&target, &stale, Some(manifest.position), manifest.position)
            .await
            .unwrap(),
        None,
        "within the window: nothing to do"
    );
    let error = restore_if_behind(&target, &stale, Some(1), manifest.position + 1)
        .await
        .unwrap_err();
    assert!(matches!(error, SnapshotError::NotFound(_)), "{error}");
    let outcome = restore_if_behind(&target, &stale, None, manifest.position)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.position, manifest.position);
    // An embedded store's WAL is never replaced.
    let embedded = root.path().join("embedded");
    std::fs::create_dir_all(embedded.join("wal")).unwrap();
    std::fs::write(embedded.join("wal").join("00000000000000000000.wal"), b"x").unwrap();
    let error = restore_if_behind(&target, &embedded, Some(0), manifest.position)
        .await
        .unwrap_err();
    assert!(matches!(error, SnapshotError::HasWal(_)), "{error}");
    assert!(!embedded.join("index").try_exists().unwrap());
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
