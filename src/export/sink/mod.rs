//! Destinations of export files behind one trait: a local directory, S3, GCS and Azure Blob.
//!
//! The engine spools each part file to local disk (bounded by the part size, never by the
//! export size) and hands the finished file to [`Sink::upload_file`], which streams it in
//! chunks (S3 multipart, GCS resumable, Azure staged blocks): memory stays at a few chunks.
//!
//! Nothing is ever downloaded whole: existence is a HEAD / metadata call
//! ([`Sink::exists`]), and the only body read ([`Sink::read_small`]) is a range request
//! streamed into a buffer capped at [`READ_LIMIT_BYTES`]. A prefix is claimed with one atomic
//! conditional create ([`Sink::create_new`]).

mod azure;
pub mod endpoint;
mod file;
mod gcs;
mod journal;
#[cfg(test)]
pub mod memory;
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use file::{spool_name, spool_prefix};

use super::credentials::DestinationCredentials;
use super::job::{Destination, DestinationType, ExportFailure};

/// Chunk size of multipart / block / resumable uploads (S3's minimum part is 5 MiB).
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes the service reads from any destination object (claims and manifests are far
/// smaller; anything larger is not ours).
pub const READ_LIMIT_BYTES: usize = 1024 * 1024;

/// One object found by [`Sink::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size_bytes: u64,
}

/// The body of an object, chunk by chunk ([`Sink::read_stream`]): memory stays at one chunk.
pub type ChunkStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, SinkError>>;

/// The error of a read operation a sink does not offer.
fn unsupported(what: &str) -> SinkError {
    SinkError::new(
        SinkErrorKind::Rejected,
        format!("this destination cannot {what}"),
    )
}

/// What [`Sink::read_small`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmallObject {
    /// No object at the key.
    Missing,
    /// The whole object, at most [`READ_LIMIT_BYTES`].
    Body(Vec<u8>),
    /// The object is larger than [`READ_LIMIT_BYTES`]; reading stopped there.
    TooLarge,
}

/// A buffer that accepts at most [`READ_LIMIT_BYTES`].
#[derive(Debug, Default)]
struct CappedBuffer {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl CappedBuffer {
    /// Appends `chunk`; `false` once the limit is exceeded (stop reading then).
    fn push(&mut self, chunk: &[u8]) -> bool {
        if self.bytes.len() + chunk.len() > READ_LIMIT_BYTES {
            self.overflowed = true;
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }

    fn finish(self) -> SmallObject {
        if self.overflowed {
            SmallObject::TooLarge
        } else {
            SmallObject::Body(self.bytes)
        }
    }
}

/// The HTTP `Range` of a capped read: one byte more than the limit, so that a larger object
/// shows itself without being downloaded.
fn capped_range() -> String {
    format!("bytes=0-{READ_LIMIT_BYTES}")
}

/// What every sink of one job knows: whose objects it writes and which endpoints it may reach.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The export the sink works for: its uploads are recorded under this id, and only those
    /// are ever aborted.
    pub export_id: String,
    /// Endpoints the sink may connect to.
    pub endpoints: endpoint::EndpointPolicy,
    /// Where the sink keeps its upload journal (the engine's spool directory).
    pub journal_dir: PathBuf,
}

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
    /// The endpoint is not public and not allowed ([`endpoint::EndpointPolicy`]).
    EndpointRefused,
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
            SinkErrorKind::EndpointRefused => endpoint::REFUSED_CODE,
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

    /// Writes a small object only if nothing exists at `key` (S3 `If-None-Match: *`, GCS
    /// `ifGenerationMatch=0`, Azure `If-None-Match: *`, `O_EXCL`): `true` when this call
    /// created it, `false` when an object was already there. Atomic: of two racing callers
    /// exactly one gets `true`.
    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, SinkError>;

    /// Whether an object exists at `key` (a HEAD / metadata request: no body is read).
    async fn exists(&self, key: &str) -> Result<bool, SinkError>;

    /// Reads the object at `key` if it is at most [`READ_LIMIT_BYTES`] (a range request,
    /// streamed, never buffering more than the limit).
    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError>;

    /// Every object whose key starts with `prefix`, across all pages (for `verify`).
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        Err(unsupported("list objects"))
    }

    /// Streams the object at `key` (for `verify`); `None` when there is none.
    async fn read_stream(&self, _key: &str) -> Result<Option<ChunkStream>, SinkError> {
        Err(unsupported("read objects"))
    }

    /// Deletes the object at `key`; a missing object is not an error (for the retention of
    /// index snapshots, which deletes only what a newer snapshot replaced).
    async fn delete(&self, _key: &str) -> Result<(), SinkError> {
        Err(unsupported("delete objects"))
    }

    /// Removes incomplete uploads that earlier attempts of this sink's export left under
    /// `prefix` (S3 multipart uploads recorded in its journal, spooled files). Never touches
    /// another export's or another client's uploads. Returns how many were removed.
    async fn abort_incomplete(&self, prefix: &str) -> Result<usize, SinkError>;
}

/// Opens the sink of `destination` with its credentials, after checking every endpoint the
/// credentials name against the context's [`endpoint::EndpointPolicy`].
pub async fn open(
    destination: &Destination,
    credentials: DestinationCredentials,
    context: &SinkContext,
) -> Result<Arc<dyn Sink>, SinkError> {
    check_endpoints(&credentials, &context.endpoints).await?;
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
        (DestinationType::File, DestinationCredentials::FileDirectory(dir)) => Arc::new(
            file::FileSink::open(&dir, &destination.bucket, &context.export_id)?,
        ),
        (DestinationType::S3, DestinationCredentials::S3(credentials)) => {
            Arc::new(s3::S3Sink::new(&destination.bucket, &credentials, context))
        }
        (DestinationType::Gcs, DestinationCredentials::Gcs(credentials)) => Arc::new(
            gcs::GcsSink::new(&destination.bucket, &credentials, &context.endpoints).await?,
        ),
        (DestinationType::AzureBlob, DestinationCredentials::Azure(credentials)) => Arc::new(
            azure::AzureSink::new(&destination.bucket, &credentials, &context.endpoints)?,
        ),
        _ => return Err(mismatch()),
    })
}

/// Drops the upload journal of `export_id` in `dir` once its job finished (every journaled
/// upload was completed or aborted).
pub fn forget_uploads(dir: &Path, export_id: &str) {
    let path = journal::journal_path(dir, export_id);
    if let Err(error) = journal::remove(&path) {
        tracing::warn!(path = %path.display(), %error, "could not remove an upload journal");
    }
}

/// Refuses credentials whose endpoints (S3 `endpoint_url`, GCS `endpoint_url` and the key's
/// `token_uri`, the Azure blob endpoint) are not public, unless the policy allows them.
async fn check_endpoints(
    credentials: &DestinationCredentials,
    policy: &endpoint::EndpointPolicy,
) -> Result<(), SinkError> {
    let mut urls: Vec<(&str, String)> = Vec::new();
    match credentials {
        DestinationCredentials::S3(s3) => {
            if let Some(url) = &s3.endpoint_url {
                urls.push(("endpoint_url", url.clone()));
            }
        }
        DestinationCredentials::Gcs(gcs) => {
            if let Some(url) = &gcs.endpoint_url {
                urls.push(("endpoint_url", url.clone()));
            }
            if let Some(url) = gcs::token_uri(gcs) {
                urls.push(("service account key's token_uri", url));
            }
        }
        DestinationCredentials::Azure(azure) => {
            urls.push(("blob endpoint", azure.endpoint_url.clone()));
        }
        DestinationCredentials::None | DestinationCredentials::FileDirectory(_) => {}
    }
    for (what, url) in urls {
        policy
            .check_url(what, &url)
            .await
            .map_err(|error| match error {
                endpoint::EndpointError::Refused(message) => {
                    SinkError::new(SinkErrorKind::EndpointRefused, message)
                }
                endpoint::EndpointError::Unresolved(message) => SinkError::transient(message),
            })?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::export::credentials::{
        AzureAuth, AzureCredentials, GcsCredentials, S3Credentials, SecretString,
    };

    fn s3(endpoint: &str) -> DestinationCredentials {
        DestinationCredentials::S3(S3Credentials {
            access_key_id: SecretString::new("AKIA"),
            secret_access_key: SecretString::new("secret"),
            session_token: None,
            region: "us-east-1".into(),
            endpoint_url: Some(endpoint.into()),
            force_path_style: true,
        })
    }

    /// Every credentials field that names an endpoint is checked (IP literals only: no DNS,
    /// no traffic).
    #[tokio::test]
    async fn every_endpoint_in_the_credentials_is_checked() {
        let strict = endpoint::EndpointPolicy::default();
        let gcs = DestinationCredentials::Gcs(GcsCredentials {
            service_account_json: SecretString::new(
                r#"{"type": "service_account", "token_uri": "http://169.254.169.254/token"}"#,
            ),
            endpoint_url: None,
        });
        let azure = DestinationCredentials::Azure(AzureCredentials {
            account_name: "acct".into(),
            auth: AzureAuth::SasToken(SecretString::new("sv=x")),
            endpoint_url: "http://[::ffff:10.0.0.7]:10000/acct".into(),
        });
        for credentials in [s3("http://127.0.0.1:9000"), gcs, azure] {
            let error = check_endpoints(&credentials, &strict).await.unwrap_err();
            assert_eq!(error.kind, SinkErrorKind::EndpointRefused, "{error}");
            assert_eq!(error.to_failure().code, "destination_endpoint_refused");
        }
        let allowed = endpoint::EndpointPolicy::allow_all();
        assert!(
            check_endpoints(&s3("http://127.0.0.1:9000"), &allowed)
                .await
                .is_ok()
        );
        assert!(
            check_endpoints(&DestinationCredentials::None, &strict)
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_capped_buffer_keeps_at_most_the_limit() {
        let mut buffer = CappedBuffer::default();
        assert!(buffer.push(&vec![0; READ_LIMIT_BYTES - 1]));
        assert!(buffer.push(&[0]));
        assert!(!buffer.push(&[0]));
        assert_eq!(buffer.finish(), SmallObject::TooLarge);
        assert_eq!(capped_range(), format!("bytes=0-{READ_LIMIT_BYTES}"));
    }
}
