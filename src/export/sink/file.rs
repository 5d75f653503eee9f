//! The `file` sink: a local directory (standalone and development use). Objects appear
//! atomically: parts are spooled in the directory and renamed into place, then synced.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{Sink, SinkError, SinkErrorKind};

/// Name prefix of files spooled by an export, removed by `abort_incomplete`.
const SPOOL_PREFIX: &str = ".scaivault-export-";

pub struct FileSink {
    root: PathBuf,
}

impl FileSink {
    /// A sink writing under the existing directory `root`.
    pub fn open(root: &str) -> Result<Self, SinkError> {
        let root = PathBuf::from(root);
        if !root.is_dir() {
            return Err(SinkError::new(
                SinkErrorKind::BucketNotFound,
                format!(
                    "the destination directory {} does not exist",
                    root.display()
                ),
            ));
        }
        Ok(FileSink { root })
    }

    fn io_error(&self, action: &str, error: std::io::Error) -> SinkError {
        let kind = match error.kind() {
            std::io::ErrorKind::PermissionDenied => SinkErrorKind::AccessDenied,
            std::io::ErrorKind::NotFound => SinkErrorKind::BucketNotFound,
            _ => SinkErrorKind::Transient,
        };
        SinkError::new(
            kind,
            format!("{action} in {}: {error}", self.root.display()),
        )
    }

    fn target(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Renames `from` to `key` durably (file and directory synced).
    fn place(&self, from: &Path, key: &str) -> Result<(), SinkError> {
        let target = self.target(key);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|error| self.io_error("creating", error))?;
        std::fs::File::open(from)
            .and_then(|file| file.sync_all())
            .map_err(|error| self.io_error("syncing", error))?;
        if from.parent() == Some(self.root.as_path()) {
            std::fs::rename(from, &target).map_err(|error| self.io_error("renaming", error))?;
        } else {
            std::fs::copy(from, &target).map_err(|error| self.io_error("copying", error))?;
        }
        std::fs::File::open(&parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| self.io_error("syncing", error))
    }
}

#[async_trait]
impl Sink for FileSink {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn spool_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }

    /// A rename (or copy) into place, whatever the size.
    async fn upload_file(
        &self,
        key: &str,
        path: &Path,
        _content_type: &str,
    ) -> Result<(), SinkError> {
        self.place(path, key)
    }

    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        _size: u64,
        _content_type: &str,
    ) -> Result<(), SinkError> {
        self.place(path, key)
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        _content_type: &str,
    ) -> Result<(), SinkError> {
        let temporary = self.root.join(format!(
            "{SPOOL_PREFIX}put-{}.partial",
            ulid::Ulid::generate()
        ));
        std::fs::write(&temporary, body).map_err(|error| self.io_error("writing", error))?;
        let placed = self.place(&temporary, key);
        if placed.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        placed
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match std::fs::read(self.target(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.io_error("reading", error)),
        }
    }

    async fn abort_incomplete(&self, _prefix: &str, export_id: &str) -> Result<usize, SinkError> {
        let own = spool_prefix(export_id);
        let mut removed = 0;
        let entries =
            std::fs::read_dir(&self.root).map_err(|error| self.io_error("listing", error))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&own) {
                std::fs::remove_file(entry.path())
                    .map_err(|error| self.io_error("removing", error))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Name prefix of every spool file of `export_id`.
pub fn spool_prefix(export_id: &str) -> String {
    format!("{SPOOL_PREFIX}{export_id}-")
}

/// Spool file name of part `number` of `export_id` (inside a [`Sink::spool_dir`]).
pub fn spool_name(export_id: &str, number: usize) -> String {
    format!("{}part-{number:04}.partial", spool_prefix(export_id))
}
