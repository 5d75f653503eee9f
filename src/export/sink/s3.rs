//! Amazon S3 and S3-compatible stores with `aws-sdk-s3`: single PUT for small files, multipart
//! upload in [`UPLOAD_CHUNK_BYTES`] parts otherwise, aborted on failure. Every multipart upload
//! is recorded in the export's upload journal first, and only journaled uploads are aborted.
//! The client resolves host names through [`FilteringResolver`], so it never connects to an
//! address the endpoint policy refuses.

use std::path::{Path, PathBuf};
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

use super::endpoint::FilteringResolver;
use super::{
    CappedBuffer, ChunkStream, ObjectInfo, Sink, SinkContext, SinkError, SinkErrorKind,
    SmallObject, UPLOAD_CHUNK_BYTES, capped_range, journal, kind_of_status, read_chunk,
};
use crate::export::credentials::S3Credentials;

pub struct S3Sink {
    client: Client,
    bucket: String,
    /// This export's upload journal.
    journal: PathBuf,
}

impl S3Sink {
    pub fn new(bucket: &str, credentials: &S3Credentials, context: &SinkContext) -> Self {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build_with_resolver(FilteringResolver::new(context.endpoints.clone()));
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
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
            journal: journal::journal_path(&context.journal_dir, &context.export_id),
        }
    }

    fn error<E, R>(&self, action: &str, key: &str, error: SdkError<E, R>) -> SinkError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let location = format!("s3://{}/{key}", self.bucket);
        match &error {
            SdkError::DispatchFailure(failure) if refused_by_resolver(failure) => SinkError::new(
                SinkErrorKind::EndpointRefused,
                format!(
                    "{action} {location}: the S3 endpoint resolves only to addresses that \
                     [export] endpoint_allowlist / allow_private_endpoints do not allow"
                ),
            ),
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
                         s3:ListBucket, s3:AbortMultipartUpload)"
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
        if let Err(error) = journal::record(&self.journal, &upload_id, key) {
            self.abort_upload(key, &upload_id).await;
            return Err(SinkError::new(
                SinkErrorKind::Rejected,
                format!(
                    "recording the upload of s3://{}/{key}: {error}",
                    self.bucket
                ),
            ));
        }
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
                self.abort_upload(key, &upload_id).await;
                Err(error)
            }
        }
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
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

    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, SinkError> {
        let created = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(error) if status_of(&error) == Some(412) => Ok(false),
            Err(error) if status_of(&error) == Some(409) => Err(SinkError::transient(format!(
                "claiming s3://{}/{key}: a concurrent write is in progress",
                self.bucket
            ))),
            Err(error) => Err(self.error("claiming", key, error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error("listing", prefix, error))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    objects.push(ObjectInfo {
                        key: key.to_string(),
                        size_bytes: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        Ok(objects)
    }

    async fn read_stream(&self, key: &str) -> Result<Option<ChunkStream>, SinkError> {
        use futures::StreamExt;
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let body = match response {
            Ok(response) => response.body,
            Err(error) if error.code() == Some("NoSuchKey") || status_of(&error) == Some(404) => {
                return Ok(None);
            }
            Err(error) => return Err(self.error("reading", key, error)),
        };
        let location = format!("s3://{}/{key}", self.bucket);
        let chunks = futures::stream::unfold(body, move |mut body| {
            let location = location.clone();
            async move {
                let chunk = body.next().await?;
                let chunk = chunk.map_err(|_| {
                    SinkError::transient(format!("reading {location}: the download broke off"))
                });
                Some((chunk, body))
            }
        });
        Ok(Some(chunks.boxed()))
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match head {
            Ok(_) => Ok(true),
            // (A missing bucket is 404 too; the claim's GET, which comes first, tells it apart.)
            Err(error) if error.code() == Some("NotFound") || status_of(&error) == Some(404) => {
                Ok(false)
            }
            Err(error) => Err(self.error("checking", key, error)),
        }
    }

    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(capped_range())
            .send()
            .await;
        let mut output = match response {
            Ok(output) => output,
            Err(error) if error.code() == Some("NoSuchKey") => return Ok(SmallObject::Missing),
            // The range of an empty object is unsatisfiable.
            Err(error) if status_of(&error) == Some(416) => {
                return Ok(SmallObject::Body(Vec::new()));
            }
            Err(error) => return Err(self.error("reading", key, error)),
        };
        let mut buffer = CappedBuffer::default();
        while let Some(chunk) = output.body.next().await {
            let chunk = chunk.map_err(|_| {
                SinkError::transient(format!(
                    "reading s3://{}/{key}: the download broke off",
                    self.bucket
                ))
            })?;
            if !buffer.push(&chunk) {
                break;
            }
        }
        Ok(buffer.finish())
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("NoSuchKey") || status_of(&error) == Some(404) => {
                Ok(())
            }
            Err(error) => Err(self.error("deleting", key, error)),
        }
    }

    async fn abort_incomplete(&self, prefix: &str) -> Result<usize, SinkError> {
        let local = |error: std::io::Error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("reading the upload journal: {error}"),
            )
        };
        let mut aborted = 0;
        for (upload_id, key) in journal::entries(&self.journal).map_err(local)? {
            if !key.starts_with(prefix) {
                continue;
            }
            let result = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
            match result {
                Ok(_) => aborted += 1,
                // Completed or already aborted.
                Err(error)
                    if error.code() == Some("NoSuchUpload") || status_of(&error) == Some(404) => {}
                Err(error) => return Err(self.error("aborting upload of", &key, error)),
            }
        }
        journal::remove(&self.journal).map_err(local)?;
        Ok(aborted)
    }
}

/// The HTTP status of a service error, if the request got that far.
fn status_of<E, R: HasStatus>(error: &SdkError<E, R>) -> Option<u16> {
    match error {
        SdkError::ServiceError(service) => Some(service.raw().status_code()),
        _ => None,
    }
}

/// Whether a dispatch failure is the endpoint policy's refusal (every resolved address refused).
fn refused_by_resolver(failure: &aws_smithy_runtime_api::client::result::DispatchFailure) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = failure
        .as_connector_error()
        .map(|error| error as &(dyn std::error::Error + 'static));
    while let Some(error) = source {
        if error
            .downcast_ref::<super::endpoint::EndpointError>()
            .is_some()
        {
            return true;
        }
        source = error.source();
    }
    false
}
