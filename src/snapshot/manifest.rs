//! The snapshot manifest (`PREFIXsnapshots/ID.manifest.json`) and the choices made from a
//! destination's listing: which snapshots exist (a manifest makes one), which is the newest,
//! which are deleted when only the newest N are kept.
//!
//! A manifest comes from object storage: before anything of it is used, every path is checked
//! to be a plain relative path under `index/` or `integrity/` (no `..`, no absolute path, no
//! unusual characters), sizes and counts are bounded, and a snapshot written by a newer
//! storage format is refused.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// Version of the manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Folder of the snapshots under the destination's prefix.
pub const SNAPSHOTS_FOLDER: &str = "snapshots/";
/// End of a manifest's key: `PREFIXsnapshots/ID.manifest.json`.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Most files one snapshot may list.
pub const MAX_FILES: usize = 20_000;
/// Largest file a snapshot may list (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// Longest path inside a snapshot.
const MAX_PATH_BYTES: usize = 200;
/// Longest snapshot id.
const MAX_ID_BYTES: usize = 64;
/// The top-level folders a snapshot may place files in.
const ROOTS: [&str; 2] = ["index", "integrity"];
/// The file that makes a restored directory a store.
pub const INDEX_META: &str = "index/meta.json";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the data directory (`index/…`, `integrity/…`); also its key under the
    /// snapshot's folder.
    pub path: String,
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

/// What a snapshot holds, written after every file is uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format_version: u32,
    /// A ULID: sorts by creation time.
    pub id: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Where the log continues after this snapshot: every record before it is in the
    /// snapshot. Embedded: the next WAL sequence number (the commit's `next_seq`); cluster
    /// replica: the stream sequence after the commit's `log_position` (the consumed stream
    /// position + 1).
    pub position: u64,
    /// The commit payload as the index recorded it.
    pub commit_payload: String,
    /// The index storage format ([`crate::store::schema::SCHEMA_VERSION`]).
    pub index_version: u32,
    pub files: Vec<ManifestFile>,
}

impl SnapshotManifest {
    /// The consumed position of the replicated log the snapshot's commit records: every
    /// record through it is in the snapshot. `None` for an embedded store's snapshot (whose
    /// events are in no replicated log).
    pub fn log_position(&self) -> Option<u64> {
        crate::store::writer::CommitPayload::parse(Some(&self.commit_payload))
            .ok()
            .and_then(|payload| payload.log_position)
    }

    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size_bytes).sum()
    }

    /// Checks everything a restore relies on; `supported_index_version` is the newest storage
    /// format this build reads.
    pub fn check(&self, supported_index_version: u32) -> Result<(), SnapshotError> {
        let bad = |message: String| SnapshotError::BadManifest {
            id: self.id.clone(),
            message,
        };
        if self.format_version > FORMAT_VERSION {
            return Err(bad(format!(
                "manifest format {} is newer than this version reads ({FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.index_version > supported_index_version {
            return Err(SnapshotError::NewerIndex {
                id: self.id.clone(),
                found: self.index_version,
                supported: supported_index_version,
            });
        }
        if !is_id(&self.id) {
            return Err(bad("the id is not a snapshot id".into()));
        }
        if self.files.len() > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        let mut seen = BTreeSet::new();
        for file in &self.files {
            if !is_safe_path(&file.path) {
                return Err(bad(format!("'{}' is not a snapshot path", file.path)));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(bad(format!("'{}' is listed twice", file.path)));
            }
            if file.size_bytes > MAX_FILE_BYTES {
                return Err(bad(format!("'{}' is too large", file.path)));
            }
            let hex = file.sha256.len() == 64
                && file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(bad(format!("'{}' has no SHA-256", file.path)));
            }
        }
        if !seen.contains(INDEX_META) {
            return Err(bad(format!("no {INDEX_META}")));
        }
        Ok(())
    }
}

/// Whether `id` can be a snapshot id (and a key segment): ASCII letters and digits.
pub fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `path` is a plain relative path under one of the snapshot roots.
pub fn is_safe_path(path: &str) -> bool {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return false;
    }
    let mut parts = path.split('/');
    if !parts.next().is_some_and(|root| ROOTS.contains(&root)) {
        return false;
    }
    let mut rest = 0;
    for part in parts {
        rest += 1;
        let plain = !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !plain {
            return false;
        }
    }
    rest > 0
}

/// The folder of everything under `prefix`: `PREFIXsnapshots/`.
pub fn folder(prefix: &str) -> String {
    format!("{prefix}{SNAPSHOTS_FOLDER}")
}

/// The key of snapshot `id`'s manifest.
pub fn manifest_key(prefix: &str, id: &str) -> String {
    format!("{}{id}{MANIFEST_SUFFIX}", folder(prefix))
}

/// The key of a snapshot file.
pub fn file_key(prefix: &str, id: &str, path: &str) -> String {
    format!("{}{id}/{path}", folder(prefix))
}

/// The ids of the complete snapshots among `keys` (those with a manifest), newest first.
/// Keys of files without a manifest name no snapshot and are ignored.
pub fn complete_ids<'a>(prefix: &str, keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let folder = folder(prefix);
    let mut ids: Vec<String> = keys
        .into_iter()
        .filter_map(|key| key.strip_prefix(folder.as_str()))
        .filter_map(|rest| rest.strip_suffix(MANIFEST_SUFFIX))
        .filter(|id| is_id(id))
        .map(str::to_owned)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    ids
}

/// The snapshots to delete when `keep` are kept: every complete one after the newest `keep`
/// (there is always a newer complete one), oldest first.
pub fn to_prune(complete_newest_first: &[String], keep: usize) -> Vec<String> {
    let keep = keep.max(1);
    let mut old: Vec<String> = complete_newest_first.iter().skip(keep).cloned().collect();
    old.reverse();
    old
}

/// Folders of snapshots without a manifest that are older than the oldest kept complete one
/// (an upload that failed): `keys` of the whole listing, `kept` newest first.
pub fn abandoned_keys<'a>(
    prefix: &str,
    keys: impl IntoIterator<Item = &'a str>,
    kept: &[String],
) -> Vec<String> {
    let Some(oldest_kept) = kept.last() else {
        return Vec::new();
    };
    let folder = folder(prefix);
    let complete: BTreeSet<&str> = kept.iter().map(String::as_str).collect();
    keys.into_iter()
        .filter(|key| {
            let Some(rest) = key.strip_prefix(folder.as_str()) else {
                return false;
            };
            let Some((id, _)) = rest.split_once('/') else {
                return false;
            };
            is_id(id) && id < oldest_kept.as_str() && !complete.contains(id)
        })
        .map(str::to_owned)
        .collect()
}

/// Length of an owner tag ([`owner_tag`]) at the end of a snapshot id.
pub const OWNER_TAG_LEN: usize = 8;

/// The tag that marks the snapshots one cluster replica uploads (and alone prunes): the first
/// [`OWNER_TAG_LEN`] hex digits of the SHA-256 of its replica id. Lowercase hex after the
/// 26 uppercase characters of a ULID, so ids still sort by creation time.
pub fn owner_tag(replica_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(replica_id.as_bytes()));
    digest[..OWNER_TAG_LEN].to_string()
}

/// A new snapshot id: a ULID, followed by the uploader's tag in a cluster.
pub fn new_id(owner: Option<&str>) -> String {
    let ulid = ulid::Ulid::generate().to_string();
    match owner {
        Some(tag) => format!("{ulid}{tag}"),
        None => ulid,
    }
}

/// Whether snapshot `id` was uploaded by the owner tagged `tag` (`None`: every id is, as in the
/// embedded mode where one process owns its destination).
pub fn is_owned_by(id: &str, tag: Option<&str>) -> bool {
    tag.is_none_or(|tag| id.len() == ULID_LEN + tag.len() && id.ends_with(tag))
}

/// Length of a ULID in its text form.
const ULID_LEN: usize = 26;

/// Whether `id` is a cluster replica's snapshot id: a ULID followed by an owner tag
/// ([`owner_tag`], lowercase hex; a ULID's own characters are uppercase).
pub fn is_replica_id(id: &str) -> bool {
    id.len() == ULID_LEN + OWNER_TAG_LEN
        && is_id(id)
        && id[ULID_LEN..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// When snapshot `id` was started (ms since the epoch, from its ULID); `None` if it has none.
pub fn started_ms(id: &str) -> Option<u64> {
    let ulid = ulid::Ulid::from_string(id.get(..ULID_LEN)?).ok()?;
    Some(ulid.timestamp_ms())
}

/// A complete snapshot of a cluster replica, as the cluster's uploader prunes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    pub id: String,
    /// Where the log continues after it (`None`: its manifest is unreadable).
    pub next: Option<u64>,
}

/// The snapshots the cluster's single uploader deletes, whichever replica uploaded them
/// (`snapshots` in any order): every one after the newest `keep` by creation (the newest is
/// always kept), except the one furthest along the log, which a joining replica restores
/// first ([`super::rejoin`]) and which an uploader that lags behind the former one must not
/// remove. Oldest first.
pub fn to_prune_across_replicas(snapshots: &[ReplicaSnapshot], keep: usize) -> Vec<String> {
    let mut newest_first: Vec<&ReplicaSnapshot> = snapshots.iter().collect();
    newest_first.sort_by(|a, b| b.id.cmp(&a.id));
    newest_first.dedup_by(|a, b| a.id == b.id);
    let furthest = newest_first
        .iter()
        .filter_map(|snapshot| snapshot.next.map(|next| (next, &snapshot.id)))
        .max()
        .map(|(_, id)| id.clone());
    let mut old: Vec<String> = newest_first
        .iter()
        .skip(keep.max(1))
        .filter(|snapshot| Some(&snapshot.id) != furthest.as_ref())
        .map(|snapshot| snapshot.id.clone())
        .collect();
    old.reverse();
    old
}

/// The files of incomplete uploads the cluster's uploader (tagged `own`) deletes: those
/// [`abandoned_keys`] finds, but another replica's only once they were started more than
/// `grace_ms` before `now_ms` (a former uploader may still be finishing a run it started
/// before it lost the role; deleting its files then would leave a manifest without them).
pub fn abandoned_across_replicas<'a>(
    prefix: &str,
    keys: impl IntoIterator<Item = &'a str>,
    kept: &[String],
    own: &str,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<String> {
    abandoned_keys(prefix, keys, kept)
        .into_iter()
        .filter(|key| {
            let Some(id) = id_of_key(prefix, key) else {
                return false;
            };
            if !is_replica_id(id) {
                return false;
            }
            is_owned_by(id, Some(own))
                || started_ms(id).is_some_and(|started| now_ms.saturating_sub(started) > grace_ms)
        })
        .collect()
}

/// The snapshot id a key under `PREFIXsnapshots/` belongs to (a manifest's or a file's).
pub fn id_of_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(folder(prefix).as_str())?;
    let id = match rest.split_once('/') {
        Some((id, _)) => id,
        None => rest.strip_suffix(MANIFEST_SUFFIX)?,
    };
    is_id(id).then_some(id)
}

/// Whether a snapshot at `snapshot_position` lets a replica continue from a log whose oldest
/// retained position is `oldest_available`: nothing between them may be missing.
pub fn covers(snapshot_position: u64, oldest_available: u64) -> bool {
    snapshot_position >= oldest_available
}

/// Whether a replica whose index stands at `local_position` (`None`: no index) must restore a
/// snapshot before consuming a log whose oldest retained position is `oldest_available`.
pub fn needs_restore(local_position: Option<u64>, oldest_available: u64) -> bool {
    match local_position {
        None => true,
        Some(position) => position < oldest_available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> SnapshotManifest {
        SnapshotManifest {
            format_version: FORMAT_VERSION,
            id: "01JZ0000000000000000000000".into(),
            created_at: "2026-12-03T17:00:00.000000Z".into(),
            position: 42,
            commit_payload: r#"{"next_seq":42,"schema_version":3}"#.into(),
            index_version: 3,
            files: vec![
                ManifestFile {
                    path: INDEX_META.into(),
                    size_bytes: 10,
                    sha256: "a".repeat(64),
                },
                ManifestFile {
                    path: "integrity/checkpoints.jsonl".into(),
                    size_bytes: 0,
                    sha256: "0".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn a_sound_manifest_passes_and_a_newer_index_is_refused() {
        assert!(manifest().check(3).is_ok());
        assert!(manifest().check(4).is_ok(), "an older index is migrated");
        let error = manifest().check(2).unwrap_err();
        assert!(matches!(
            error,
            SnapshotError::NewerIndex {
                found: 3,
                supported: 2,
                ..
            }
        ));
        assert!(error.to_string().contains("newer"), "{error}");
        let mut newer_format = manifest();
        newer_format.format_version = FORMAT_VERSION + 1;
        assert!(newer_format.check(3).is_err());
    }

    #[test]
    fn paths_outside_the_snapshot_roots_are_refused() {
        for path in [
            "../etc/passwd",
            "index/../../x",
            "/index/meta.json",
            "index",
            "index/",
            "index//a",
            "wal/000001.log",
            "cursor.key",
            "integrity/./a",
            "index/a b",
            "index/a\\b",
            "",
        ] {
            assert!(!is_safe_path(path), "{path}");
            let mut bad = manifest();
            bad.files.push(ManifestFile {
                path: path.into(),
                size_bytes: 1,
                sha256: "b".repeat(64),
            });
            assert!(bad.check(3).is_err(), "{path}");
        }
        for path in [
            "index/meta.json",
            "index/.managed.json",
            "index/0a1b.7.del",
            "integrity/keys/keyring.json",
        ] {
            assert!(is_safe_path(path), "{path}");
        }
        let mut twice = manifest();
        twice.files.push(twice.files[0].clone());
        assert!(twice.check(3).is_err());
        let mut no_meta = manifest();
        no_meta.files.remove(0);
        assert!(no_meta.check(3).is_err());
        let mut bad_hash = manifest();
        bad_hash.files[0].sha256 = "A".repeat(64);
        assert!(bad_hash.check(3).is_err());
        let mut bad_id = manifest();
        bad_id.id = "../x".into();
        assert!(bad_id.check(3).is_err());
    }

    #[test]
    fn only_snapshots_with_a_manifest_exist_newest_first() {
        let keys = [
            "p/snapshots/01A.manifest.json",
            "p/snapshots/01A/index/meta.json",
            "p/snapshots/01C/index/meta.json",
            "p/snapshots/01B.manifest.json",
            "p/snapshots/01B/index/meta.json",
            "p/snapshots/bad..id.manifest.json",
            "p/other/01D.manifest.json",
            "q/snapshots/01E.manifest.json",
        ];
        assert_eq!(complete_ids("p/", keys), vec!["01B", "01A"]);
        assert_eq!(complete_ids("", keys), Vec::<String>::new());
        assert_eq!(manifest_key("p/", "01B"), "p/snapshots/01B.manifest.json");
        assert_eq!(
            file_key("p/", "01B", INDEX_META),
            "p/snapshots/01B/index/meta.json"
        );
    }

    #[test]
    fn pruning_keeps_the_newest_and_deletes_only_what_a_newer_manifest_replaced() {
        let ids: Vec<String> = ["05", "04", "03", "02", "01"]
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(to_prune(&ids, 3), vec!["01", "02"]);
        assert_eq!(to_prune(&ids, 5), Vec::<String>::new());
        assert_eq!(to_prune(&ids, 0), vec!["01", "02", "03", "04"]);
        assert_eq!(to_prune(&[], 1), Vec::<String>::new());
        let keys = [
            "snapshots/00/index/a",
            "snapshots/02/index/a",
            "snapshots/03/index/a",
            "snapshots/06/index/a",
        ];
        let kept = vec!["05".to_string(), "03".to_string()];
        // 00 and 02 never completed and are older than the oldest kept; 06 may be uploading.
        assert_eq!(
            abandoned_keys("", keys, &kept),
            vec!["snapshots/00/index/a", "snapshots/02/index/a"]
        );
        assert!(abandoned_keys("", keys, &[]).is_empty());
    }

    #[test]
    fn a_replica_owns_the_snapshots_that_carry_its_tag() {
        let tag = owner_tag("replica-a");
        assert_eq!(tag.len(), OWNER_TAG_LEN);
        assert_ne!(tag, owner_tag("replica-b"));
        let id = new_id(Some(&tag));
        assert!(is_id(&id), "{id}");
        assert!(is_owned_by(&id, Some(&tag)));
        assert!(!is_owned_by(&id, Some(&owner_tag("replica-b"))));
        // An untagged (embedded) id is nobody's in a cluster, everybody's embedded.
        let plain = new_id(None);
        assert!(!is_owned_by(&plain, Some(&tag)));
        assert!(is_owned_by(&plain, None));
        assert_eq!(id_of_key("p/", &manifest_key("p/", &id)), Some(id.as_str()));
        assert_eq!(
            id_of_key("p/", &file_key("p/", &id, INDEX_META)),
            Some(id.as_str())
        );
        assert_eq!(id_of_key("p/", "p/snapshots/x..y/index/a"), None);
        assert_eq!(id_of_key("p/", "q/snapshots/01A.manifest.json"), None);
    }

    fn replica_id(ms: u64, owner: &str) -> String {
        let ulid = ulid::Ulid::from_parts(ms, 7).to_string();
        format!("{ulid}{}", owner_tag(owner))
    }

    #[test]
    fn replica_ids_are_told_from_embedded_ones() {
        let id = replica_id(1_000, "replica-a");
        assert!(is_replica_id(&id), "{id}");
        assert_eq!(started_ms(&id), Some(1_000));
        assert!(!is_replica_id(&new_id(None)));
        assert!(!is_replica_id(&format!("{}ABCDEFGH", new_id(None))));
        assert!(!is_replica_id("../x"));
        assert_eq!(started_ms("short"), None);
    }

    #[test]
    fn the_uploader_prunes_across_replicas_but_keeps_the_newest_and_the_furthest() {
        let snapshot = |ms, owner, next| ReplicaSnapshot {
            id: replica_id(ms, owner),
            next,
        };
        // a uploaded until it died; b took the role and uploaded twice since.
        let a1 = snapshot(1, "replica-a", Some(10));
        let a2 = snapshot(2, "replica-a", Some(20));
        let a3 = snapshot(3, "replica-a", Some(30));
        let b1 = snapshot(4, "replica-b", Some(30));
        let b2 = snapshot(5, "replica-b", Some(31));
        let all = [b1.clone(), a1.clone(), b2.clone(), a3.clone(), a2.clone()];
        assert_eq!(
            to_prune_across_replicas(&all, 2),
            vec![a1.id.clone(), a2.id.clone(), a3.id.clone()],
            "the old holder's snapshots beyond the newest 2 go, oldest first"
        );
        assert_eq!(to_prune_across_replicas(&all, 5), Vec::<String>::new());
        // keep 0 counts as 1: the newest is never deleted.
        assert_eq!(to_prune_across_replicas(&all, 0).len(), 4);
        assert!(!to_prune_across_replicas(&all, 0).contains(&b2.id));
        // b lags behind where a was: a's furthest snapshot stays until b passes it.
        let lagging_b1 = snapshot(4, "replica-b", Some(12));
        let lagging_b2 = snapshot(5, "replica-b", Some(15));
        let lagging = [a1.clone(), a2.clone(), a3.clone(), lagging_b1, lagging_b2];
        assert_eq!(
            to_prune_across_replicas(&lagging, 1),
            vec![a1.id.clone(), a2.id.clone(), replica_id(4, "replica-b")]
        );
        // An unreadable manifest is never the furthest; of equal positions the newest is.
        let unreadable = snapshot(6, "replica-b", None);
        let tied = [a3.clone(), b1.clone(), unreadable.clone()];
        assert_eq!(to_prune_across_replicas(&tied, 1), vec![a3.id.clone()]);
        assert_eq!(to_prune_across_replicas(&[], 1), Vec::<String>::new());
    }

    #[test]
    fn another_replicas_incomplete_upload_goes_only_after_the_grace() {
        let own = owner_tag("replica-b");
        let kept = vec![replica_id(10_000, "replica-b")];
        let old_own = file_key("p/", &replica_id(1_000, "replica-b"), INDEX_META);
        let old_other = file_key("p/", &replica_id(2_000, "replica-a"), INDEX_META);
        let embedded = file_key(
            "p/",
            &ulid::Ulid::from_parts(1_000, 1).to_string(),
            INDEX_META,
        );
        let newer = file_key("p/", &replica_id(20_000, "replica-a"), INDEX_META);
        let keys = [
            old_own.as_str(),
            old_other.as_str(),
            embedded.as_str(),
            newer.as_str(),
        ];
        // Within the grace only this replica's own abandoned upload goes.
        assert_eq!(
            abandoned_across_replicas("p/", keys, &kept, &own, 5_000, 10_000),
            vec![old_own.clone()]
        );
        // After it the other replica's goes too; never an embedded store's, never a newer one.
        assert_eq!(
            abandoned_across_replicas("p/", keys, &kept, &own, 50_000, 10_000),
            vec![old_own, old_other]
        );
    }

    #[test]
    fn the_log_window_decides_a_restore() {
        assert!(needs_restore(None, 0));
        assert!(needs_restore(Some(10), 11));
        assert!(!needs_restore(Some(11), 11));
        assert!(!needs_restore(Some(50), 11));
        assert!(covers(11, 11));
        assert!(!covers(10, 11));
    }
}
