//! Google Cloud Storage with Google's official `google-cloud-storage` client: objects are
//! written in one request up to 8 MiB, above that as a resumable upload streamed from the
//! spooled file.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::model_ext::ReadRange;
use google_cloud_storage::retry_policy::RetryableErrors;

use super::{
    CappedBuffer, READ_LIMIT_BYTES, Sink, SinkError, SinkErrorKind, SmallObject,
    UPLOAD_CHUNK_BYTES, kind_of_status,
};
use crate::export::credentials::GcsCredentials;

/// How long the client keeps retrying one request before the engine's own backoff takes over.
const CLIENT_RETRY_LIMIT: Duration = Duration::from_secs(30);

pub struct GcsSink {
    client: Storage,
    bucket: String,
}

impl GcsSink {
    pub async fn new(bucket: &str, credentials: &GcsCredentials) -> Result<Self, SinkError> {
        let invalid = |reason: &str| {
            SinkError::new(
                SinkErrorKind::InvalidCredentials,
                format!("the GCS service account key in the credentials secret {reason}"),
            )
        };
        let key: serde_json::Value =
            serde_json::from_str(credentials.service_account_json.expose())
                .map_err(|_| invalid("is not JSON"))?;
        let service_account = google_cloud_auth::credentials::service_account::Builder::new(key)
            .build()
            .map_err(|_| invalid("is not a usable service account key"))?;
        let mut builder = Storage::builder()
            .with_credentials(service_account)
            .with_retry_policy(RetryableErrors.with_time_limit(CLIENT_RETRY_LIMIT));
        if let Some(endpoint) = &credentials.endpoint_url {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let client = builder.build().await.map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("creating the GCS client: {error}"),
            )
        })?;
        Ok(GcsSink {
            client,
            bucket: bucket.to_string(),
        })
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    fn error(&self, action: &str, key: &str, error: &google_cloud_storage::Error) -> SinkError {
        let location = format!("gs://{}/{key}", self.bucket);
        if error.is_timeout() || error.is_connect() || error.is_io() || error.is_transport() {
            tracing::debug!(%error, "GCS request failed");
            return SinkError::transient(format!("{action} {location}: GCS is unreachable"));
        }
        if error.is_authentication() {
            return SinkError::new(
                SinkErrorKind::InvalidCredentials,
                format!("{action} {location}: GCS rejected the service account credentials"),
            );
        }
        let kind = error
            .http_status_code()
            .map_or(SinkErrorKind::Transient, kind_of_status);
        let explanation = match kind {
            SinkErrorKind::BucketNotFound => format!("the bucket {} does not exist", self.bucket),
            SinkErrorKind::AccessDenied => {
                "the service account lacks permission (storage.objects.create, \
                 storage.objects.get)"
                    .to_string()
            }
            SinkErrorKind::InvalidCredentials => {
                "GCS rejected the service account credentials".to_string()
            }
            _ => match error.http_status_code() {
                Some(status) => format!("GCS answered {status}"),
                None => format!("the request failed ({error})"),
            },
        };
        SinkError::new(kind, format!("{action} {location}: {explanation}"))
    }
}

#[async_trait]
impl Sink for GcsSink {
    fn location(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    /// Streams the file in a resumable upload (8 MiB chunks).
    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        _size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let file = tokio::fs::File::open(path).await.map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("reading spooled part {}: {error}", path.display()),
            )
        })?;
        self.client
            .write_object(self.bucket_path(), key, file)
            .set_content_type(content_type)
            .with_resumable_upload_threshold(0usize)
            .with_resumable_upload_buffer_size(UPLOAD_CHUNK_BYTES)
            .send_unbuffered()
            .await
            .map_err(|error| self.error("uploading", key, &error))?;
        Ok(())
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), SinkError> {
        self.client
            .write_object(self.bucket_path(), key, bytes::Bytes::from(body))
            .set_content_type(content_type)
            .send_buffered()
            .await
            .map_err(|error| self.error("uploading", key, &error))?;
        Ok(())
    }

    /// `ifGenerationMatch=0`: the write succeeds only if no live object exists.
    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, SinkError> {
        let written = self
            .client
            .write_object(self.bucket_path(), key, bytes::Bytes::from(body))
            .set_content_type(content_type)
            .set_if_generation_match(0)
            .send_buffered()
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(error) if error.http_status_code() == Some(412) => Ok(false),
            Err(error) => Err(self.error("claiming", key, &error)),
        }
    }

    /// The data-plane client has no metadata call: a one-byte ranged read stands in (its
    /// response carries the object's metadata; the body is at most one byte).
    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        let response = self
            .client
            .read_object(self.bucket_path(), key)
            .set_read_range(ReadRange::head(1))
            .send()
            .await;
        match response {
            Ok(_) => Ok(true),
            // An empty object has no first byte.
            Err(error) if error.http_status_code() == Some(416) => Ok(true),
            Err(error) if error.http_status_code() == Some(404) => Ok(false),
            Err(error) => Err(self.error("checking", key, &error)),
        }
    }

    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError> {
        let response = self
            .client
            .read_object(self.bucket_path(), key)
            .set_read_range(ReadRange::segment(0, READ_LIMIT_BYTES as u64 + 1))
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) if error.http_status_code() == Some(404) => {
                return Ok(SmallObject::Missing);
            }
            Err(error) if error.http_status_code() == Some(416) => {
                return Ok(SmallObject::Body(Vec::new()));
            }
            Err(error) => return Err(self.error("reading", key, &error)),
        };
        let mut buffer = CappedBuffer::default();
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|error| self.error("reading", key, &error))?;
            if !buffer.push(&chunk) {
                break;
            }
        }
        Ok(buffer.finish())
    }

    /// GCS discards incomplete resumable uploads itself (after a week); nothing to abort.
    async fn abort_incomplete(&self, _prefix: &str) -> Result<usize, SinkError> {
        Ok(0)
    }
}

/// The `token_uri` of the service account key, which the auth library may call.
pub fn token_uri(credentials: &GcsCredentials) -> Option<String> {
    let key: serde_json::Value =
        serde_json::from_str(credentials.service_account_json.expose()).ok()?;
    key.get("token_uri")
        .and_then(|uri| uri.as_str())
        .map(str::to_string)
}
