//! Destinations of export files behind one trait: a local directory, S3, GCS and Azure Blob.
//!
//! The engine spools each part file to local disk (bounded by the part size, never by the
//! export size) and hands the finished file to [`Sink::upload_file`], which streams it in
//! chunks (S3 multipart, GCS resumable, Azure staged blocks): memory stays at a few chunks.

mod azure;
mod file;
mod gcs;
mod s3;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use file::{spool_name, spool_prefix};

use super::credentials::DestinationCredentials;
use super::job::{Destination, DestinationType, ExportFailure};

/// Chunk size of multipart / block / resumable uploads (S3's minimum part is 5 MiB).
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// What kind of failure a sink hit: decides between retrying and failing the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Network trouble, timeouts, throttling, 5xx: retry with backoff.
    Transient,
    /// The credentials were refused (unknown key, bad signature, expired token).
    InvalidCredentials,
    /// The credentials are valid but lack permission.
    AccessDenied,
    /// The bucket / container / directory does not exist.
    BucketNotFound,
    /// Anything else the destination rejected.
    Rejected,
}

/// A sink failure with a message fit for users (no secret values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: SinkErrorKind,
    pub message: String,
}

impl SinkError {
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        SinkError {
            kind,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Transient, message)
    }

    pub fn is_transient(&self) -> bool {
        self.kind == SinkErrorKind::Transient
    }

    /// The export failure reported to users.
    pub fn to_failure(&self) -> ExportFailure {
        let code = match self.kind {
            SinkErrorKind::Transient => "destination_unavailable",
            SinkErrorKind::InvalidCredentials => "destination_credentials_invalid",
            SinkErrorKind::AccessDenied => "destination_access_denied",
            SinkErrorKind::BucketNotFound => "destination_not_found",
            SinkErrorKind::Rejected => "destination_error",
        };
        ExportFailure::new(code, self.message.clone())
    }
}

/// A destination of export objects.
#[async_trait]
pub trait Sink: Send + Sync {
    /// `s3://bucket`, `file:///dir`, ... for messages.
    fn location(&self) -> String;

    /// A directory where part files may be spooled so that [`Sink::upload_file`] is a rename
    /// (the file sink); `None` spools into the service's data directory.
    fn spool_dir(&self) -> Option<&Path> {
        None
    }

    /// Uploads the complete local file `path` as `key`: in one request up to
    /// [`UPLOAD_CHUNK_BYTES`], else through [`Sink::upload_large`].
    async fn upload_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let size = file_len(path).await?;
        if size <= UPLOAD_CHUNK_BYTES as u64 {
            let body = read_chunk(path, 0, size as usize).await?;
            return self.put_bytes(key, body, content_type).await;
        }
        self.upload_large(key, path, size, content_type).await
    }

    /// Uploads a file larger than one chunk, streaming it in chunks (multipart, blocks,
    /// resumable).
    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
    ) -> Result<(), SinkError>;

    /// Writes a small object in one request.
    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), SinkError>;

    /// Reads a small object; `None` when it does not exist.
    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError>;

    /// Removes incomplete uploads that an earlier attempt of `export_id` left under `prefix`
    /// (S3 multipart uploads, spooled files). Returns how many were removed.
    async fn abort_incomplete(&self, prefix: &str, export_id: &str) -> Result<usize, SinkError>;
}

/// Opens the sink of `destination` with its credentials.
pub async fn open(
    destination: &Destination,
    credentials: DestinationCredentials,
) -> Result<Arc<dyn Sink>, SinkError> {
    let mismatch = || {
        SinkError::new(
            SinkErrorKind::Rejected,
            format!(
                "the credentials do not fit a {} destination",
                destination.kind.as_str()
            ),
        )
    };
    Ok(match (destination.kind, credentials) {
        (DestinationType::File, DestinationCredentials::FileDirectory(dir)) => {
            Arc::new(file::FileSink::open(&dir, &destination.bucket)?)
        }
        (DestinationType::S3, DestinationCredentials::S3(credentials)) => {
            Arc::new(s3::S3Sink::new(&destination.bucket, &credentials))
        }
        (DestinationType::Gcs, DestinationCredentials::Gcs(credentials)) => {
            Arc::new(gcs::GcsSink::new(&destination.bucket, &credentials).await?)
        }
        (DestinationType::AzureBlob, DestinationCredentials::Azure(credentials)) => {
            Arc::new(azure::AzureSink::new(&destination.bucket, &credentials)?)
        }
        _ => return Err(mismatch()),
    })
}

/// Reads `len` bytes at `offset` of `file` (the chunk of a multipart upload).
async fn read_chunk(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, SinkError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let local = |error: std::io::Error| {
        SinkError::new(
            SinkErrorKind::Rejected,
            format!("reading spooled part {}: {error}", path.display()),
        )
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(local)?;
    let mut chunk = vec![0; len];
    file.read_exact(&mut chunk).await.map_err(local)?;
    Ok(chunk)
}

/// Size of a spooled file.
async fn file_len(path: &Path) -> Result<u64, SinkError> {
    tokio::fs::metadata(path)
        .await
        .map(|metadata| metadata.len())
        .map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("reading spooled part {}: {error}", path.display()),
            )
        })
}

/// Classifies an HTTP status of a storage service.
fn kind_of_status(status: u16) -> SinkErrorKind {
    match status {
        401 => SinkErrorKind::InvalidCredentials,
        403 => SinkErrorKind::AccessDenied,
        404 => SinkErrorKind::BucketNotFound,
        408 | 429 | 500..=599 => SinkErrorKind::Transient,
        _ => SinkErrorKind::Rejected,
    }
}
