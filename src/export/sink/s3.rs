//! Amazon S3 and S3-compatible stores with `aws-sdk-s3`: single PUT for small files, multipart
//! upload in [`UPLOAD_CHUNK_BYTES`] parts otherwise, aborted on failure.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{Sink, SinkError, SinkErrorKind, UPLOAD_CHUNK_BYTES, kind_of_status, read_chunk};
use crate::export::credentials::S3Credentials;

pub struct S3Sink {
    client: Client,
    bucket: String,
}

impl S3Sink {
    pub fn new(bucket: &str, credentials: &S3Credentials) -> Self {
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(Credentials::new(
                credentials.access_key_id.expose(),
                credentials.secret_access_key.expose(),
                credentials
                    .session_token
                    .as_ref()
                    .map(|token| token.expose().to_string()),
                None,
                "scaivault-secret",
            ))
            .region(Region::new(credentials.region.clone()))
            .force_path_style(credentials.force_path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = &credentials.endpoint_url {
            // S3-compatible stores often reject the newer default checksums.
            config = config
                .endpoint_url(endpoint)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3Sink {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_string(),
        }
    }

    fn error<E, R>(&self, action: &str, key: &str, error: SdkError<E, R>) -> SinkError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let location = format!("s3://{}/{key}", self.bucket);
        match &error {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                SinkError::transient(format!("{action} {location}: S3 is unreachable"))
            }
            SdkError::ResponseError(_) => {
                SinkError::transient(format!("{action} {location}: unreadable S3 response"))
            }
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("");
                let status = service.raw().status_code();
                let kind = match code {
                    "NoSuchBucket" => SinkErrorKind::BucketNotFound,
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken" => SinkErrorKind::InvalidCredentials,
                    "AccessDenied" | "AllAccessDisabled" => SinkErrorKind::AccessDenied,
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
                        SinkErrorKind::Transient
                    }
                    _ => kind_of_status(status),
                };
                let explanation = match kind {
                    SinkErrorKind::BucketNotFound => {
                        format!("the bucket {} does not exist", self.bucket)
                    }
                    SinkErrorKind::InvalidCredentials => {
                        "S3 rejected the access key in the credentials secret".to_string()
                    }
                    SinkErrorKind::AccessDenied => {
                        "the credentials lack permission (s3:PutObject, s3:GetObject, \
                         s3:ListBucketMultipartUploads, s3:AbortMultipartUpload)"
                            .to_string()
                    }
                    _ => format!("S3 answered {status}"),
                };
                let code = if code.is_empty() {
                    String::new()
                } else {
                    format!(" ({code})")
                };
                SinkError::new(kind, format!("{action} {location}: {explanation}{code}"))
            }
            _ => SinkError::new(
                SinkErrorKind::Rejected,
                format!("{action} {location}: the request could not be built"),
            ),
        }
    }

    async fn upload_multipart(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|error| self.error("starting upload of", key, error))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(SinkError::new(
                SinkErrorKind::Rejected,
                format!("S3 returned no upload id for s3://{}/{key}", self.bucket),
            ));
        };
        let uploaded = self.upload_parts(key, &upload_id, path, size).await;
        match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|error| self.error("completing upload of", key, error)),
            Err(error) => {
                // Best effort: a later abort_incomplete() catches what this misses.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<Vec<CompletedPart>, SinkError> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1;
        while offset < size {
            let len = (size - offset).min(UPLOAD_CHUNK_BYTES as u64) as usize;
            let chunk = read_chunk(path, offset, len).await?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|error| self.error("uploading", key, error))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                    .build(),
            );
            offset += len as u64;
            number += 1;
        }
        Ok(parts)
    }
}

/// The HTTP status of a raw response, whatever its type.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[async_trait]
impl Sink for S3Sink {
    fn location(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        self.upload_multipart(key, path, size, content_type).await
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), SinkError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| self.error("uploading", key, error))?;
        Ok(())
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let output = match response {
            Ok(output) => output,
            Err(error) if error.code() == Some("NoSuchKey") => return Ok(None),
            Err(error) => return Err(self.error("reading", key, error)),
        };
        let bytes = output.body.collect().await.map_err(|_| {
            SinkError::transient(format!(
                "reading s3://{}/{key}: the download broke off",
                self.bucket
            ))
        })?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn abort_incomplete(&self, prefix: &str, _export_id: &str) -> Result<usize, SinkError> {
        let listing = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|error| self.error("listing uploads under", prefix, error))?;
        let mut aborted = 0;
        for upload in listing.uploads() {
            let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            // Only our part files: the prefix may be shared with unrelated objects.
            if !key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with("part-"))
            {
                continue;
            }
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|error| self.error("aborting upload of", key, error))?;
            aborted += 1;
        }
        Ok(aborted)
    }
}
