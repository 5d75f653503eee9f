//! Restoring a data directory from a snapshot, crash-safe:
//!
//! 1. the data directory is locked (`LOCK`, as the store does) and must hold no store;
//! 2. every file is downloaded into `DATA_DIR/.snapshot-restore/` while its size and SHA-256
//!    are checked against the manifest; a mismatch, a missing or an oversized file stops the
//!    restore with [`SnapshotError::Corrupt`] and nothing is placed;
//! 3. `DATA_DIR/RESTORING` is written: from here until it is removed the store refuses to open
//!    the directory ([`marker_path`]), and a new restore starts over;
//! 4. the integrity files are renamed into place, the snapshot's public keys are added to the
//!    data directory's key ring as retired keys, and `index/` is renamed into place last;
//! 5. the marker is removed (every step synced before the next).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::manifest::{INDEX_META, ManifestFile, SnapshotManifest};
use super::remote::SnapshotTarget;
use super::{SnapshotError, exists, io};
use crate::store::schema::SCHEMA_VERSION;

/// The marker of an unfinished restore, in the data directory.
pub const MARKER: &str = "RESTORING";
/// The download folder, in the data directory.
const DOWNLOADS: &str = ".snapshot-restore";
/// The public key ring inside a snapshot.
const KEYRING: &str = "integrity/keys/keyring.json";

/// What a restore may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// Only a data directory without a store (or with an unfinished restore).
    IntoEmpty,
    /// Also a stale index, replaced whole (a cluster replica whose log window moved past its
    /// position; the caller has closed the store). Never a directory with WAL segments.
    ReplaceStale,
}

/// What a restore placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    pub id: String,
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
    /// The log position of the restored index: consumption continues here.
    pub position: u64,
    pub files: usize,
    pub bytes: u64,
}

/// The marker of an unfinished restore into `data_dir`.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER)
}

/// Whether `data_dir` holds no store: no index commit and no WAL segment, or an unfinished
/// restore.
pub fn holds_no_store(data_dir: &Path) -> Result<bool, SnapshotError> {
    Ok(exists(&marker_path(data_dir))?
        || (!exists(&data_dir.join(INDEX_META))? && !has_wal(data_dir)))
}

/// Whether `data_dir` holds write-ahead log segments (an embedded store's).
pub fn has_wal(data_dir: &Path) -> bool {
    fs::read_dir(data_dir.join("wal"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// Restores snapshot `id` (the newest complete one when `None`) into `data_dir`. `Ok(None)`
/// when the destination holds no snapshot.
pub async fn restore(
    target: &SnapshotTarget,
    data_dir: &Path,
    id: Option<&str>,
    mode: RestoreMode,
) -> Result<Option<RestoreOutcome>, SnapshotError> {
    fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    let _lock = lock(data_dir)?;
    check_replaceable(data_dir, mode)?;
    let id = match id {
        Some(id) => id.to_string(),
        None => match target.complete_ids().await?.into_iter().next() {
            Some(newest) => newest,
            None => return Ok(None),
        },
    };
    let manifest = target.manifest(&id, SCHEMA_VERSION).await?;
    let downloads = data_dir.join(DOWNLOADS);
    remove_dir_if_present(&downloads)?;
    fs::create_dir_all(&downloads).map_err(io("create", &downloads))?;
    let downloaded = download_all(target, &manifest, &downloads).await;
    if let Err(error) = downloaded {
        remove_dir_if_present(&downloads)?;
        return Err(error);
    }
    let placing = data_dir.to_path_buf();
    let placed_manifest = manifest.clone();
    tokio::task::spawn_blocking(move || place(&placing, &downloads, &placed_manifest, mode))
        .await??;
    Ok(Some(RestoreOutcome {
        id: manifest.id.clone(),
        created_at: manifest.created_at.clone(),
        position: manifest.position,
        files: manifest.files.len(),
        bytes: manifest.total_bytes(),
    }))
}

fn check_replaceable(data_dir: &Path, mode: RestoreMode) -> Result<(), SnapshotError> {
    if has_wal(data_dir) && !exists(&marker_path(data_dir))? {
        return Err(match mode {
            RestoreMode::IntoEmpty => SnapshotError::NotEmpty(data_dir.to_path_buf()),
            RestoreMode::ReplaceStale => SnapshotError::HasWal(data_dir.to_path_buf()),
        });
    }
    if mode == RestoreMode::IntoEmpty && !holds_no_store(data_dir)? {
        return Err(SnapshotError::NotEmpty(data_dir.to_path_buf()));
    }
    Ok(())
}

/// Takes the data directory's `LOCK` (the store's): no process uses it while it is restored.
fn lock(data_dir: &Path) -> Result<fs::File, SnapshotError> {
    let path = data_dir.join("LOCK");
    let file = fs::File::create(&path).map_err(io("create", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SnapshotError::Locked(data_dir.to_path_buf())),
        Err(fs::TryLockError::Error(source)) => Err(io("lock", &path)(source)),
    }
}

async fn download_all(
    target: &SnapshotTarget,
    manifest: &SnapshotManifest,
    downloads: &Path,
) -> Result<(), SnapshotError> {
    for file in &manifest.files {
        download(target, manifest, file, &downloads.join(&file.path)).await?;
    }
    Ok(())
}

/// Downloads one file to `local`, checking its size (never writing more than the manifest
/// says) and its SHA-256.
async fn download(
    target: &SnapshotTarget,
    manifest: &SnapshotManifest,
    file: &ManifestFile,
    local: &Path,
) -> Result<(), SnapshotError> {
    let corrupt = |message: String| SnapshotError::Corrupt {
        id: manifest.id.clone(),
        path: file.path.clone(),
        message,
    };
    let key = super::manifest::file_key(target.prefix(), &manifest.id, &file.path);
    let Some(mut chunks) = target.sink().read_stream(&key).await? else {
        return Err(corrupt("the file is missing at the destination".into()));
    };
    if let Some(parent) = local.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let mut out = fs::File::create(local).map_err(io("create", local))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > file.size_bytes {
            return Err(corrupt(format!(
                "larger than the {} bytes the manifest lists",
                file.size_bytes
            )));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).map_err(io("write", local))?;
    }
    if size != file.size_bytes {
        return Err(corrupt(format!(
            "{size} bytes where the manifest lists {} (truncated)",
            file.size_bytes
        )));
    }
    let sha256 = hex::encode(hasher.finalize());
    if sha256 != file.sha256 {
        return Err(corrupt(format!(
            "SHA-256 {sha256} where the manifest lists {}",
            file.sha256
        )));
    }
    out.sync_all().map_err(io("sync", local))
}

/// Moves the verified downloads into place (blocking).
fn place(
    data_dir: &Path,
    downloads: &Path,
    manifest: &SnapshotManifest,
    mode: RestoreMode,
) -> Result<(), SnapshotError> {
    let marker = marker_path(data_dir);
    crate::durable_file::replace(&marker, manifest.id.as_bytes()).map_err(io("write", &marker))?;
    let index = data_dir.join("index");
    remove_dir_if_present(&index)?;
    for sub in ["index.rebuild", "index.new", "index.old"] {
        remove_dir_if_present(&data_dir.join(sub))?;
    }
    let integrity = data_dir.join("integrity");
    if mode == RestoreMode::ReplaceStale {
        remove_stale_integrity(data_dir, manifest)?;
    }
    for file in &manifest.files {
        let path = file.path.as_str();
        if !path.starts_with("integrity/") || path == KEYRING {
            continue;
        }
        let target = data_dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        fs::rename(downloads.join(path), &target).map_err(io("place", &target))?;
    }
    if manifest.files.iter().any(|file| file.path == KEYRING) {
        let bytes =
            fs::read(downloads.join(KEYRING)).map_err(io("read", downloads.join(KEYRING)))?;
        crate::integrity::keys::Keyring::adopt_public_ring(&integrity.join("keys"), &bytes)?;
    }
    sync_dir(&integrity)?;
    fs::rename(downloads.join("index"), &index).map_err(io("place", &index))?;
    sync_dir(&index)?;
    sync_dir(data_dir)?;
    fs::remove_file(&marker).map_err(io("remove", &marker))?;
    sync_dir(data_dir)?;
    remove_dir_if_present(downloads)
}

/// The integrity files a snapshot carries beside the index: they describe its index.
const CARRIED: [&str; 3] = [
    crate::integrity::checkpoint::LOG_FILE,
    crate::store::retention::ANCHORS_FILE,
    crate::export::manifest::LINKS_FILE,
];

/// Removes a replaced store's own copies of the files in [`CARRIED`] that the snapshot does not
/// bring (they described the replaced index; the snapshot's replace the others).
fn remove_stale_integrity(
    data_dir: &Path,
    manifest: &SnapshotManifest,
) -> Result<(), SnapshotError> {
    for name in CARRIED {
        let path = format!("integrity/{name}");
        if manifest.files.iter().any(|file| file.path == path) {
            continue;
        }
        let local = data_dir.join(&path);
        match fs::remove_file(&local) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("remove", &local)(error)),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    if !exists(dir)? {
        return Ok(());
    }
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io("sync", dir))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), SnapshotError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io("remove", dir)(error)),
    }
}
