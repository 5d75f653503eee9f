//! The full file list of the operator's running exports, kept out of the resource: one small
//! JSON file per AuditExport (by `metadata.uid`) in `DATA_DIR/operator-exports/`, rewritten
//! atomically at every checkpoint and removed when the export ends.
//!
//! The resource's status stays bounded: the resume point, the totals and the first
//! [`STATUS_FILES`] file entries ([`super::convert::record_checkpoint`]). On resume
//! ([`restore`]), the file list comes from the status when it is complete there (at most
//! [`STATUS_FILES`] files, or a status written before the list was bounded), else from this
//! file; when the file is missing or does not match the status (a new volume, another
//! replica), the export restarts from its first part at the same snapshot, overwriting its own
//! part names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::crd::AuditExportStatus;
use crate::export::job::{Checkpoint, FileEntry};

/// File entries a resource's status lists; `fileCount` counts them all.
pub const STATUS_FILES: usize = 10;
/// Directory of the progress files inside the data directory.
pub const PROGRESS_DIR: &str = "operator-exports";
/// Longest `metadata.uid` accepted as a file name (Kubernetes uids are 36-character UUIDs).
const MAX_UID_LEN: usize = 64;

/// Why a progress file cannot be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("export progress {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("export progress {path}: not a progress record ({message})")]
    Corrupt { path: PathBuf, message: String },
    #[error("export progress: {0:?} is not a usable resource uid")]
    Uid(String),
}

/// What a progress file holds: the snapshot it belongs to and every uploaded part, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub snapshot_seq: u64,
    pub files: Vec<FileEntry>,
}

/// The progress files of one data directory (cheap to clone).
#[derive(Debug, Clone)]
pub struct ProgressFiles {
    dir: PathBuf,
}

impl ProgressFiles {
    /// Progress files in `DATA_DIR/operator-exports` (created on the first write).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        ProgressFiles {
            dir: data_dir.join(PROGRESS_DIR),
        }
    }

    /// The file of resource `uid`: only uids of ASCII letters, digits and `-` name a file.
    fn path(&self, uid: &str) -> Result<PathBuf, ProgressError> {
        let usable = !uid.is_empty()
            && uid.len() <= MAX_UID_LEN
            && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if usable {
            Ok(self.dir.join(format!("{uid}.json")))
        } else {
            Err(ProgressError::Uid(uid.to_string()))
        }
    }

    /// Replaces the progress of resource `uid` (durably).
    pub fn save(&self, uid: &str, progress: &Progress) -> Result<(), ProgressError> {
        let path = self.path(uid)?;
        let io = |source| ProgressError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(progress).map_err(|error| ProgressError::Corrupt {
            path: path.clone(),
            message: error.to_string(),
        })?;
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        crate::durable_file::replace(&path, &body).map_err(io)
    }

    /// The progress of resource `uid`; `None` when there is none.
    pub fn load(&self, uid: &str) -> Result<Option<Progress>, ProgressError> {
        let path = self.path(uid)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ProgressError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| ProgressError::Corrupt {
                path,
                message: error.to_string(),
            })
    }

    /// Removes the progress of resource `uid` (nothing to remove is fine).
    pub fn remove(&self, uid: &str) -> Result<(), ProgressError> {
        let path = self.path(uid)?;
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ProgressError::Io {
                path,
                source: error,
            }),
            _ => Ok(()),
        }
    }
}

/// Where a resumed job starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub checkpoint: Checkpoint,
    /// Why the job starts over from its first part (same snapshot); `None` when it resumes.
    pub restart: Option<String>,
}

/// The checkpoint a job resumes from, given the status' resume point (`checkpoint`, whose
/// files are the status' list) and the progress file (`saved`, if any). Pure.
pub fn restore(
    status: &AuditExportStatus,
    checkpoint: Checkpoint,
    saved: Option<Progress>,
) -> Restored {
    let count = status.file_count.map_or(checkpoint.files.len(), |count| {
        usize::try_from(count).unwrap_or(usize::MAX)
    });
    let records = status.record_count.unwrap_or(0);
    if let Some(files) = saved.and_then(|saved| matching(status, &checkpoint, saved, count)) {
        return Restored {
            checkpoint: Checkpoint {
                files,
                ..checkpoint
            },
            restart: None,
        };
    }
    if checkpoint.files.len() == count && checkpoint.records() == records {
        // The status lists every file (few files, or written before the list was bounded).
        return Restored {
            checkpoint,
            restart: None,
        };
    }
    let restart = format!(
        "the list of the {count} files uploaded so far is not in this replica's data directory \
         (another volume or replica ran the export): restarting from the first part"
    );
    Restored {
        checkpoint: Checkpoint::start(checkpoint.snapshot_seq),
        restart: Some(restart),
    }
}

/// The first `count` files of `saved` when they agree with the status: same snapshot, the
/// status' files as their beginning, the status' record count.
fn matching(
    status: &AuditExportStatus,
    checkpoint: &Checkpoint,
    saved: Progress,
    count: usize,
) -> Option<Vec<FileEntry>> {
    if saved.snapshot_seq != checkpoint.snapshot_seq || saved.files.len() < count {
        return None;
    }
    let mut files = saved.files;
    files.truncate(count);
    let same = |shown: &FileEntry, kept: &FileEntry| {
        shown.key == kept.key
            && shown.sha256 == kept.sha256
            && shown.size_bytes == kept.size_bytes
            && shown.records == kept.records
    };
    let prefix_agrees = checkpoint.files.len() <= files.len()
        && checkpoint
            .files
            .iter()
            .zip(&files)
            .all(|(shown, kept)| same(shown, kept));
    let records: u64 = files.iter().map(|file| file.records).sum();
    (prefix_agrees && records == status.record_count.unwrap_or(0)).then_some(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::operator::convert;
    use crate::operator::fixtures::part;

    fn progress(files: usize) -> Progress {
        Progress {
            snapshot_seq: 42,
            files: (1..=files).map(part).collect(),
        }
    }

    /// The status after `files` parts, and the checkpoint a controller reads from it.
    fn status_after(files: usize) -> (AuditExportStatus, Checkpoint) {
        let mut status = AuditExportStatus::default();
        let full = Checkpoint {
            snapshot_seq: 42,
            files: (1..=files).map(part).collect(),
            after: None,
        };
        convert::record_checkpoint(&mut status, &full);
        let read = convert::checkpoint(&status).unwrap();
        (status, read)
    }

    #[test]
    fn progress_files_round_trip_and_refuse_unusable_uids() {
        let dir = tempfile::tempdir().unwrap();
        let files = ProgressFiles::in_data_dir(dir.path());
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(files.load(uid).unwrap(), None);
        files.save(uid, &progress(3)).unwrap();
        files.save(uid, &progress(12)).unwrap();
        assert_eq!(files.load(uid).unwrap(), Some(progress(12)));
        files.remove(uid).unwrap();
        files.remove(uid).unwrap();
        assert_eq!(files.load(uid).unwrap(), None);
        for uid in ["", "../x", "a/b", ".hidden", &"a".repeat(65)] {
            assert!(matches!(
                files.save(uid, &progress(1)),
                Err(ProgressError::Uid(_))
            ));
            assert!(matches!(files.load(uid), Err(ProgressError::Uid(_))));
        }
        std::fs::write(dir.path().join(PROGRESS_DIR).join("bad.json"), b"{").unwrap();
        assert!(matches!(
            files.load("bad"),
            Err(ProgressError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_bounded_status_resumes_from_the_progress_file_only() {
        let (status, read) = status_after(25);
        assert_eq!(read.files.len(), STATUS_FILES);
        let resumed = restore(&status, read.clone(), Some(progress(25)));
        assert_eq!(resumed.restart, None);
        assert_eq!(resumed.checkpoint.files, progress(25).files);
        // A file ahead of the status (its write was lost) is cut to the status' count.
        let ahead = restore(&status, read.clone(), Some(progress(27)));
        assert_eq!(ahead.checkpoint.files, progress(25).files);

        let other_snapshot = Progress {
            snapshot_seq: 7,
            ..progress(25)
        };
        let mut other_parts = progress(25);
        other_parts.files[3].sha256 = "f".repeat(64);
        for saved in [
            None,
            Some(progress(24)),
            Some(other_snapshot),
            Some(other_parts),
        ] {
            let restarted = restore(&status, read.clone(), saved.clone());
            assert_eq!(restarted.checkpoint, Checkpoint::start(42), "{saved:?}");
            assert!(restarted.restart.unwrap().contains("25 files"), "{saved:?}");
        }
    }

    #[test]
    fn a_complete_status_resumes_without_a_progress_file() {
        let (status, read) = status_after(STATUS_FILES);
        let resumed = restore(&status, read.clone(), None);
        assert_eq!(resumed.restart, None);
        assert_eq!(resumed.checkpoint.files.len(), STATUS_FILES);

        // Written before the list was bounded: every file in `files`, no `fileCount`.
        let mut legacy = AuditExportStatus {
            files: (1..=30).map(|n| convert::export_file(&part(n))).collect(),
            record_count: Some(60),
            ..AuditExportStatus::default()
        };
        legacy.checkpoint = status.checkpoint.clone();
        let read = convert::checkpoint(&legacy).unwrap();
        let resumed = restore(&legacy, read, None);
        assert_eq!(resumed.restart, None);
        assert_eq!(resumed.checkpoint.files.len(), 30);
    }
}
