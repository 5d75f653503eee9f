//! Taking a consistent local copy of a committed store: the files a snapshot uploads, staged
//! under `DATA_DIR/snapshots/staging/ID/` by hard links (segment files are immutable; a link
//! keeps a file alive after tantivy's garbage collection removes its name) or copies.
//!
//! Order matters for consistency:
//! 1. the checkpoint log first: its checkpoints cover committed heads only, so every one of them
//!    is covered by the commit pinned next;
//! 2. the commit, under tantivy's meta lock (garbage collection and reader reloads wait for it,
//!    a few milliseconds): `meta.json` read twice around the segment list, equal both times, and
//!    every file of its segments linked;
//! 3. the retention anchors after the commit: they are written before a deletion is committed,
//!    so they are never older than the pinned commit (newer ones are a state the store handles
//!    after any crash);
//! 4. the export manifest links and the public half of the key ring.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tantivy::Index;
use tantivy::directory::{Directory, META_LOCK};

use super::manifest::{FORMAT_VERSION, INDEX_META, ManifestFile, SnapshotManifest};
use super::{SnapshotError, io};
use crate::store::writer::CommitPayload;

/// Attempts at reading a commit that no concurrent commit replaced meanwhile.
const PIN_ATTEMPTS: usize = 20;

/// Files of the integrity directory copied after the commit (relative to it).
const AFTER_COMMIT: [&str; 3] = [
    crate::store::retention::ANCHORS_FILE,
    crate::export::manifest::LINKS_FILE,
    "keys/keyring.json",
];

/// A snapshot staged locally, ready to upload.
#[derive(Debug)]
pub struct StagedSnapshot {
    /// The staging folder (removed by [`StagedSnapshot::remove`]).
    pub dir: PathBuf,
    /// The manifest to upload last (files with their sizes and hashes).
    pub manifest: SnapshotManifest,
}

impl StagedSnapshot {
    /// The local copy of a manifest path.
    pub fn local(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// Removes the staging folder.
    pub fn remove(&self) {
        if let Err(error) = fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove a staged snapshot");
        }
    }
}

/// The staging root of a data directory: `DATA_DIR/snapshots/staging`.
pub fn staging_root(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots").join("staging")
}

/// Stages a snapshot of `index` (the committed index of the store in `data_dir`) with a new
/// id. Blocking: run it off the async runtime.
///
/// `owner` is the uploader's tag ([`super::manifest::owner_tag`]) in a cluster, appended to the
/// id: snapshots tell their uploader, and replicas' snapshots are told from an embedded
/// store's.
pub fn stage(
    data_dir: &Path,
    index: &Index,
    owner: Option<&str>,
) -> Result<StagedSnapshot, SnapshotError> {
    let root = staging_root(data_dir);
    // Leftovers of an interrupted run are never uploaded again.
    match fs::remove_dir_all(&root) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io("remove", &root)(error)),
    }
    let id = super::manifest::new_id(owner);
    let dir = root.join(&id);
    let integrity = data_dir.join("integrity");
    for sub in ["index", "integrity/keys"] {
        fs::create_dir_all(dir.join(sub)).map_err(io("create", dir.join(sub)))?;
    }
    let mut paths = BTreeSet::new();
    let checkpoints = crate::integrity::checkpoint::LOG_FILE;
    if let Some(bytes) = read_optional(&integrity.join(checkpoints))? {
        // A line being appended right now is not part of the log yet.
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        let path = format!("integrity/{checkpoints}");
        write_new(&dir.join(&path), &bytes[..complete])?;
        paths.insert(path);
    }
    let payload = pin_commit(
        index,
        &data_dir.join("index"),
        &dir.join("index"),
        &mut paths,
    )?;
    for name in AFTER_COMMIT {
        if let Some(bytes) = read_optional(&integrity.join(name))? {
            let path = format!("integrity/{name}");
            write_new(&dir.join(&path), &bytes)?;
            paths.insert(path);
        }
    }
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let (size_bytes, sha256) = hash_file(&dir.join(&path))?;
        files.push(ManifestFile {
            path,
            size_bytes,
            sha256,
        });
    }
    let manifest = SnapshotManifest {
        format_version: FORMAT_VERSION,
        id,
        created_at: crate::timestamp::format_micros(crate::timestamp::now_micros()),
        position: continues_at(&payload),
        commit_payload: payload.to_json(),
        index_version: payload.schema_version,
        files,
    };
    Ok(StagedSnapshot { dir, manifest })
}

/// Where the log continues after a commit: the stream sequence after the consumed
/// `log_position` for a cluster replica, the next WAL sequence number embedded.
pub fn continues_at(payload: &CommitPayload) -> u64 {
    payload
        .log_position
        .map_or(payload.next_seq, |position| position.saturating_add(1))
}

/// Links the files of the current commit of `index` (in `index_dir`) into `target` and writes
/// its `meta.json` and a `.managed.json` listing them; returns the commit's payload.
fn pin_commit(
    index: &Index,
    index_dir: &Path,
    target: &Path,
    paths: &mut BTreeSet<String>,
) -> Result<CommitPayload, SnapshotError> {
    let directory = index.directory();
    let _meta_lock = directory
        .acquire_lock(&META_LOCK)
        .map_err(|error| SnapshotError::Io {
            action: "lock the commit of",
            path: index_dir.to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        })?;
    let meta_path = Path::new("meta.json");
    let read_meta = || {
        directory
            .atomic_read(meta_path)
            .map_err(|error| SnapshotError::Io {
                action: "read",
                path: index_dir.join(meta_path),
                source: std::io::Error::other(error.to_string()),
            })
    };
    for _ in 0..PIN_ATTEMPTS {
        let before = read_meta()?;
        let metas = index.load_metas()?;
        if read_meta()? != before {
            continue; // a commit landed in between
        }
        let payload =
            CommitPayload::parse(metas.payload.as_deref()).map_err(SnapshotError::Payload)?;
        let mut managed = vec!["meta.json".to_string()];
        for file in metas.list_segment_files() {
            let name = file.to_string_lossy().into_owned();
            let source = index_dir.join(&file);
            // Candidates include components a segment does not have.
            if !super::exists(&source)? {
                continue;
            }
            link_or_copy(&source, &target.join(&file))?;
            paths.insert(format!("index/{name}"));
            managed.push(name);
        }
        write_new(&target.join("meta.json"), &before)?;
        paths.insert(INDEX_META.to_string());
        managed.sort();
        let managed = serde_json::to_vec(&managed).map_err(SnapshotError::Payload)?;
        write_new(&target.join(".managed.json"), &managed)?;
        paths.insert("index/.managed.json".to_string());
        return Ok(payload);
    }
    Err(SnapshotError::Io {
        action: "pin a commit of",
        path: index_dir.to_path_buf(),
        source: std::io::Error::other("the index kept committing; retry later"),
    })
}

fn link_or_copy(source: &Path, target: &Path) -> Result<(), SnapshotError> {
    if fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    fs::copy(source, target)
        .map(drop)
        .map_err(io("copy", source))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SnapshotError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io("read", path)(error)),
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    fs::write(path, bytes).map_err(io("write", path))
}

/// Size and lowercase hex SHA-256 of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<(u64, String), SnapshotError> {
    let mut file = fs::File::open(path).map_err(io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}
