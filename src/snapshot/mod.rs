//! Index snapshots in object storage, and restoring a data directory from one
//! (docs/snapshots.md).
//!
//! ```text
//! take:    checkpoint log ─▶ pin the commit (tantivy's meta lock: no GC) ─▶ hard-link its files
//!          ─▶ anchors, manifest links, public key ring ─▶ upload every file
//!          ─▶ PREFIXsnapshots/ID.manifest.json (last: a snapshot without one does not exist)
//!          ─▶ delete snapshots older than the newest `keep` (manifest first)
//! restore: newest manifest ─▶ download every file into DATA_DIR/.snapshot-restore/, checking
//!          size and SHA-256 ─▶ RESTORING marker ─▶ integrity files, then index/ renamed into
//!          place ─▶ marker removed
//! ```
//!
//! A snapshot is generic over "the position recorded in the index commit": the embedded mode
//! records the WAL position there, a cluster replica its consumed log position; the manifest
//! carries it ([`SnapshotManifest::position`]), and [`manifest::needs_restore`] /
//! [`manifest::covers`] tell the log side when a replica must restore and whether a snapshot
//! is recent enough.
//!
//! What a snapshot leaves out, deliberately: the WAL (everything before the position is in the
//! index), secrets (the signing key, `cursor.key`, the bootstrap token, the operator's
//! annotation key: a restored store makes its own, and the restored key ring lists the old
//! public keys as retired so old checkpoints still verify), and node-local state (export jobs
//! and spool, schedules, quarantine).

pub mod capture;
pub mod manifest;
pub mod rejoin;
pub mod remote;
pub mod restore;
pub mod service;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use manifest::{SnapshotManifest, covers, needs_restore};
pub use remote::SnapshotTarget;
pub use restore::{RestoreMode, RestoreOutcome};
pub use service::{SnapshotMetrics, Snapshotter};

use crate::export::sink::SinkError;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot destination: {0}")]
    Sink(#[from] SinkError),
    #[error("snapshot destination: {0}")]
    Destination(String),
    #[error("failed to read the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("the index commit payload is unreadable: {0}")]
    Payload(#[source] serde_json::Error),
    #[error("snapshot {id}: the manifest is not usable: {message}")]
    BadManifest { id: String, message: String },
    #[error(
        "snapshot {id} was written by a newer scaivault-audit (storage format {found}; this version reads up to {supported})"
    )]
    NewerIndex {
        id: String,
        found: u32,
        supported: u32,
    },
    #[error("snapshot {id} is damaged, nothing was restored: {path}: {message}")]
    Corrupt {
        id: String,
        path: String,
        message: String,
    },
    #[error("no snapshot {0} at the destination")]
    NotFound(String),
    #[error("{0} already holds a store; a snapshot is restored only into an empty data directory")]
    NotEmpty(PathBuf),
    #[error(
        "{0} holds write-ahead log segments: in the embedded mode the WAL is the log and is never replaced by a snapshot"
    )]
    HasWal(PathBuf),
    #[error("data directory {0} is in use by another scaivault-audit process")]
    Locked(PathBuf),
    #[error(transparent)]
    Keys(#[from] crate::integrity::keys::KeyError),
    #[error("a snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// An I/O error of `action` on `path`.
fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.into();
    move |source| SnapshotError::Io {
        action,
        path,
        source,
    }
}

/// Whether `path` exists (an error other than "not found" is an error).
fn exists(path: &std::path::Path) -> Result<bool, SnapshotError> {
    path.try_exists().map_err(io("check", path))
}
