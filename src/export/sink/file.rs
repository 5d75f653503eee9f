//! The `file` sink: a local directory (standalone and development use). Objects appear
//! atomically: parts are spooled in the directory and renamed into place, then synced.
//!
//! The directory was resolved under `[export] file_root` by the export policy; keys are walked
//! below it one directory at a time, and a symbolic link anywhere on the way is refused, so
//! nothing is ever written or read outside the root. Messages name the bucket, never the
//! server's paths.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{
    CappedBuffer, ChunkStream, ObjectInfo, READ_LIMIT_BYTES, Sink, SinkError, SinkErrorKind,
    SmallObject,
};
use crate::export::policy::{WalkError, walk_under};

/// Name prefix of files spooled by an export, removed by `abort_incomplete`.
const SPOOL_PREFIX: &str = ".scaivault-export-";

pub struct FileSink {
    root: PathBuf,
    /// The bucket as the tenant named it (for messages).
    bucket: String,
    /// The export whose spool files `abort_incomplete` removes.
    export_id: String,
}

impl FileSink {
    /// A sink writing under `dir`, the existing directory of `bucket` (not a symbolic link),
    /// for the export `export_id`.
    pub fn open(dir: &Path, bucket: &str, export_id: &str) -> Result<Self, SinkError> {
        let is_plain_dir = std::fs::symlink_metadata(dir)
            .is_ok_and(|metadata| metadata.is_dir() && !metadata.file_type().is_symlink());
        if !is_plain_dir {
            return Err(SinkError::new(
                SinkErrorKind::BucketNotFound,
                format!("the destination directory '{bucket}' does not exist"),
            ));
        }
        Ok(FileSink {
            root: dir.to_path_buf(),
            bucket: bucket.to_string(),
            export_id: export_id.to_string(),
        })
    }

    fn io_error(&self, action: &str, error: std::io::Error) -> SinkError {
        let kind = match error.kind() {
            std::io::ErrorKind::PermissionDenied => SinkErrorKind::AccessDenied,
            std::io::ErrorKind::NotFound => SinkErrorKind::BucketNotFound,
            _ => SinkErrorKind::Transient,
        };
        tracing::warn!(dir = %self.root.display(), action, %error, "file destination I/O failed");
        SinkError::new(
            kind,
            format!(
                "{action} in the destination directory '{}': {}",
                self.bucket,
                error.kind()
            ),
        )
    }

    fn walk_error(&self, key: &str, error: WalkError) -> SinkError {
        match error {
            WalkError::Io { source, .. } => self.io_error("creating directories", source),
            other => SinkError::new(
                SinkErrorKind::Rejected,
                format!("key '{key}' in '{}': {other}", self.bucket),
            ),
        }
    }

    fn target(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The directory of `key`, created below the root without following any link.
    fn parent_of(&self, key: &str) -> Result<PathBuf, SinkError> {
        match key.rsplit_once('/') {
            Some((parent, _)) => {
                walk_under(&self.root, parent, true).map_err(|error| self.walk_error(key, error))
            }
            None => Ok(self.root.clone()),
        }
    }

    /// Checks the directories of `key` below the root (creating none, following no link);
    /// a missing directory is fine: the key then does not exist.
    fn existing_parent(&self, key: &str) -> Result<(), SinkError> {
        match key.rsplit_once('/') {
            Some((parent, _)) => match walk_under(&self.root, parent, false) {
                Ok(_) => Ok(()),
                Err(error) => Err(self.walk_error(key, error)),
            },
            None => Ok(()),
        }
    }

    /// Refuses a symbolic link at `key` itself (renames replace links, reads would follow).
    fn refuse_link(&self, key: &str, target: &Path) -> Result<(), SinkError> {
        match std::fs::symlink_metadata(target) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                Err(self.walk_error(key, WalkError::Symlink(key.to_string())))
            }
            _ => Ok(()),
        }
    }

    /// Renames `from` to `key` durably (file and directory synced).
    fn place(&self, from: &Path, key: &str) -> Result<(), SinkError> {
        let parent = self.parent_of(key)?;
        let target = self.target(key);
        self.refuse_link(key, &target)?;
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
        format!("file://{}", self.bucket)
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

    /// `O_EXCL`: of two racing exports exactly one creates the file.
    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        _content_type: &str,
    ) -> Result<bool, SinkError> {
        use std::io::Write;
        let parent = self.parent_of(key)?;
        let target = self.target(key);
        self.refuse_link(key, &target)?;
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(self.io_error("claiming", error)),
        };
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(|error| self.io_error("writing", error))?;
        std::fs::File::open(&parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| self.io_error("syncing", error))?;
        Ok(true)
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        self.existing_parent(key)?;
        match std::fs::symlink_metadata(self.target(key)) {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(self.io_error("checking", error)),
        }
    }

    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError> {
        use std::io::Read;
        self.existing_parent(key)?;
        let target = self.target(key);
        self.refuse_link(key, &target)?;
        let file = match std::fs::File::open(&target) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SmallObject::Missing);
            }
            Err(error) => return Err(self.io_error("reading", error)),
        };
        let mut buffer = CappedBuffer::default();
        let mut chunk = vec![0u8; 64 * 1024];
        // At most one byte past the limit is read, whatever the file (or FIFO) holds.
        let mut limited = file.take(READ_LIMIT_BYTES as u64 + 1);
        loop {
            let n = limited
                .read(&mut chunk)
                .map_err(|error| self.io_error("reading", error))?;
            if n == 0 || !buffer.push(&chunk[..n]) {
                break;
            }
        }
        Ok(buffer.finish())
    }

    /// The files of the prefix's directory whose keys start with `prefix` (not recursive:
    /// export objects never sit deeper than their prefix). Spool files are left out.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let (dir_key, dir) = match prefix.rsplit_once('/') {
            Some((parent, _)) => (
                format!("{parent}/"),
                walk_under(&self.root, parent, false)
                    .map_err(|error| self.walk_error(prefix, error))?,
            ),
            None => (String::new(), self.root.clone()),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.io_error("listing", error)),
        };
        let mut objects = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| self.io_error("listing", error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = format!("{dir_key}{name}");
            let metadata = entry
                .metadata()
                .map_err(|error| self.io_error("listing", error))?;
            if key.starts_with(prefix) && metadata.is_file() && !name.starts_with(SPOOL_PREFIX) {
                objects.push(ObjectInfo {
                    key,
                    size_bytes: metadata.len(),
                });
            }
        }
        objects.sort_by(|left, right| left.key.cmp(&right.key));
        Ok(objects)
    }

    async fn read_stream(&self, key: &str) -> Result<Option<ChunkStream>, SinkError> {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;
        self.existing_parent(key)?;
        let target = self.target(key);
        self.refuse_link(key, &target)?;
        let file = match tokio::fs::File::open(&target).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.io_error("reading", error)),
        };
        let bucket = self.bucket.clone();
        let chunks = futures::stream::try_unfold(file, move |mut file| {
            let bucket = bucket.clone();
            async move {
                let mut chunk = vec![0u8; 256 * 1024];
                let n = file.read(&mut chunk).await.map_err(|error| {
                    SinkError::transient(format!(
                        "reading in the destination directory '{bucket}': {}",
                        error.kind()
                    ))
                })?;
                if n == 0 {
                    return Ok(None);
                }
                chunk.truncate(n);
                Ok(Some((bytes::Bytes::from(chunk), file)))
            }
        });
        Ok(Some(chunks.boxed()))
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.existing_parent(key)?;
        let target = self.target(key);
        self.refuse_link(key, &target)?;
        match std::fs::remove_file(&target) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.io_error("removing", error)),
        }
    }

    async fn abort_incomplete(&self, _prefix: &str) -> Result<usize, SinkError> {
        let own = spool_prefix(&self.export_id);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sink(dir: &Path) -> FileSink {
        FileSink::open(dir, "bucket", "exp_test").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_racing_creates_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let sink = std::sync::Arc::new(sink(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                sink.create_new("p/.claim", format!("{i}").into_bytes(), "text/plain")
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap());
        }
        assert_eq!(winners, 1);
        assert!(sink.exists("p/.claim").await.unwrap());
        assert!(!sink.exists("p/other").await.unwrap());
    }

    #[tokio::test]
    async fn reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path());
        std::fs::write(dir.path().join("small"), b"{}").unwrap();
        std::fs::write(dir.path().join("exact"), vec![b'x'; READ_LIMIT_BYTES]).unwrap();
        std::fs::write(dir.path().join("large"), vec![b'x'; READ_LIMIT_BYTES + 1]).unwrap();
        assert_eq!(
            sink.read_small("small").await.unwrap(),
            SmallObject::Body(b"{}".to_vec())
        );
        assert!(matches!(
            sink.read_small("exact").await.unwrap(),
            SmallObject::Body(body) if body.len() == READ_LIMIT_BYTES
        ));
        assert_eq!(
            sink.read_small("large").await.unwrap(),
            SmallObject::TooLarge
        );
        assert_eq!(
            sink.read_small("missing").await.unwrap(),
            SmallObject::Missing
        );
    }
}
