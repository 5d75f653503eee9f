//! Azure Blob Storage with the official `azure_storage_blob` client: block blobs, staged in
//! [`UPLOAD_CHUNK_BYTES`] blocks and committed as one list.
//!
//! The official client authenticates with Entra ID tokens or a SAS in the URL; account keys
//! (what most storage secrets hold) need the Shared Key scheme, signed here by a pipeline policy
//! that runs after the client has set every header. The API version is pinned to one that
//! Azure and the Azurite emulator both accept.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Request, RequestContent, RetryOptions, Url,
};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlockBlobClientCommitBlockListOptions, BlockBlobClientUploadOptions,
    BlockLookupList, HttpRange,
};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use base64::Engine;
use hmac::{KeyInit, Mac};

use super::endpoint::{EndpointPolicy, FilteringResolver};
use super::{
    CappedBuffer, ChunkStream, ObjectInfo, READ_LIMIT_BYTES, Sink, SinkError, SinkErrorKind,
    SmallObject, UPLOAD_CHUNK_BYTES, kind_of_status, read_chunk,
};
use crate::export::credentials::{AzureAuth, AzureCredentials, SecretString};

/// Blob service API version sent by the client (supported by Azure and by Azurite 3.35).
const API_VERSION: &str = "2025-01-05";

pub struct AzureSink {
    container: BlobContainerClient,
    account: String,
    container_name: String,
}

impl AzureSink {
    pub fn new(
        container: &str,
        credentials: &AzureCredentials,
        endpoints: &EndpointPolicy,
    ) -> Result<Self, SinkError> {
        let invalid = |reason: String| SinkError::new(SinkErrorKind::InvalidCredentials, reason);
        let mut url = Url::parse(&credentials.endpoint_url).map_err(|_| {
            invalid("the Azure endpoint URL in the credentials secret is not a URL".into())
        })?;
        let mut client_options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                max_retries: 3,
                max_total_elapsed: azure_core::time::Duration::seconds(60),
                ..Default::default()
            }),
            transport: Some(azure_core::http::Transport::new(Arc::new(http_client(
                endpoints,
            )?))),
            ..Default::default()
        };
        match &credentials.auth {
            AzureAuth::SasToken(sas) => {
                url.set_query(Some(sas.expose().trim_start_matches('?')));
            }
            AzureAuth::AccountKey(key) => {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(key.expose())
                    .map_err(|_| invalid("the Azure account key is not base64".into()))?;
                client_options
                    .per_try_policies
                    .push(Arc::new(SharedKeyPolicy {
                        account: credentials.account_name.clone(),
                        key: SecretBytes(key),
                    }));
            }
        }
        let options = BlobServiceClientOptions {
            client_options,
            version: API_VERSION.to_string(),
        };
        let service = BlobServiceClient::new(url, None, Some(options)).map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("creating the Azure client: {error}"),
            )
        })?;
        Ok(AzureSink {
            container: service.blob_container_client(container),
            account: credentials.account_name.clone(),
            container_name: container.to_string(),
        })
    }

    fn error(&self, action: &str, key: &str, error: &azure_core::Error) -> SinkError {
        let location = format!("azure://{}/{}/{key}", self.account, self.container_name);
        let (status, code) = match error.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => (u16::from(*status), error_code.clone().unwrap_or_default()),
            ErrorKind::Connection | ErrorKind::Io => {
                return SinkError::transient(format!(
                    "{action} {location}: Azure Blob Storage is unreachable"
                ));
            }
            ErrorKind::Credential => (401, String::new()),
            _ => (0, String::new()),
        };
        let kind = match code.as_str() {
            "ContainerNotFound" => SinkErrorKind::BucketNotFound,
            "AuthenticationFailed" | "InvalidAuthenticationInfo" => {
                SinkErrorKind::InvalidCredentials
            }
            "AuthorizationFailure" | "AuthorizationPermissionMismatch" => {
                SinkErrorKind::AccessDenied
            }
            _ if status == 0 => SinkErrorKind::Transient,
            // Azure answers 403 for a bad signature as well as for missing permission.
            _ => kind_of_status(status),
        };
        let explanation = match kind {
            SinkErrorKind::BucketNotFound => {
                format!("the container {} does not exist", self.container_name)
            }
            SinkErrorKind::InvalidCredentials => {
                "Azure rejected the account key or SAS token in the credentials secret".to_string()
            }
            SinkErrorKind::AccessDenied => {
                "Azure refused the request: check the account key or SAS token and its \
                 permissions (write, read)"
                    .to_string()
            }
            _ => format!("Azure answered {status}"),
        };
        let code = if code.is_empty() {
            String::new()
        } else {
            format!(" ({code})")
        };
        SinkError::new(kind, format!("{action} {location}: {explanation}{code}"))
    }

    async fn upload_blocks(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let blob = self.container.blob_client(key).block_blob_client();
        let mut ids = Vec::new();
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(UPLOAD_CHUNK_BYTES as u64) as usize;
            let chunk = read_chunk(path, offset, len).await?;
            // Block ids of one blob must all have the same length.
            let id = format!("block-{:08}", ids.len()).into_bytes();
            blob.stage_block(&id, len as u64, RequestContent::from(chunk), None)
                .await
                .map_err(|error| self.error("uploading", key, &error))?;
            ids.push(id);
            offset += len as u64;
        }
        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let list = list.try_into().map_err(|error: azure_core::Error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("encoding the block list: {error}"),
            )
        })?;
        let options = BlockBlobClientCommitBlockListOptions {
            blob_content_type: Some(content_type.to_string()),
            ..Default::default()
        };
        blob.commit_block_list(list, Some(options))
            .await
            .map_err(|error| self.error("committing", key, &error))?;
        Ok(())
    }
}

#[async_trait]
impl Sink for AzureSink {
    fn location(&self) -> String {
        format!("azure://{}/{}", self.account, self.container_name)
    }

    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        self.upload_blocks(key, path, size, content_type).await
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some(content_type.to_string()),
            ..Default::default()
        };
        self.container
            .blob_client(key)
            .upload(RequestContent::from(body), Some(options))
            .await
            .map_err(|error| self.error("uploading", key, &error))?;
        Ok(())
    }

    /// `If-None-Match: *`: the upload succeeds only if no blob exists.
    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, SinkError> {
        let options = BlockBlobClientUploadOptions {
            blob_content_type: Some(content_type.to_string()),
            ..Default::default()
        }
        .if_not_exists();
        let uploaded = self
            .container
            .blob_client(key)
            .upload(RequestContent::from(body), Some(options))
            .await;
        match uploaded {
            Ok(_) => Ok(true),
            Err(error) if matches!(status_and_code(&error).0, 409 | 412) => Ok(false),
            Err(error) => Err(self.error("claiming", key, &error)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        match self.container.blob_client(key).get_properties(None).await {
            Ok(_) => Ok(true),
            Err(error) => match status_and_code(&error) {
                (404, code) if code == "BlobNotFound" || code.is_empty() => Ok(false),
                _ => Err(self.error("checking", key, &error)),
            },
        }
    }

    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError> {
        use futures::StreamExt;
        let limit = READ_LIMIT_BYTES as u64 + 1;
        let options = BlobClientDownloadOptions {
            range: Some(HttpRange::from(0..limit)),
            parallel: std::num::NonZero::new(1),
            partition_size: std::num::NonZero::new(limit as usize),
            ..Default::default()
        };
        let downloaded = match self
            .container
            .blob_client(key)
            .download(Some(options))
            .await
        {
            Ok(downloaded) => downloaded,
            Err(error) => {
                return match status_and_code(&error) {
                    (404, code) if code == "BlobNotFound" || code.is_empty() => {
                        Ok(SmallObject::Missing)
                    }
                    (416, _) => Ok(SmallObject::Body(Vec::new())),
                    _ => Err(self.error("reading", key, &error)),
                };
            }
        };
        let mut body = downloaded.body;
        let mut buffer = CappedBuffer::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| self.error("reading", key, &error))?;
            if !buffer.push(&chunk) {
                break;
            }
        }
        Ok(buffer.finish())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        use futures::StreamExt;
        let options = azure_storage_blob::models::BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_string()),
            ..Default::default()
        };
        let mut items = self
            .container
            .list_blobs(Some(options))
            .map_err(|error| self.error("listing", prefix, &error))?;
        let mut objects = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|error| self.error("listing", prefix, &error))?;
            if let Some(key) = item.name {
                let size_bytes = item
                    .properties
                    .and_then(|properties| properties.content_length)
                    .unwrap_or(0);
                objects.push(ObjectInfo { key, size_bytes });
            }
        }
        Ok(objects)
    }

    async fn read_stream(&self, key: &str) -> Result<Option<ChunkStream>, SinkError> {
        use futures::StreamExt;
        let options = BlobClientDownloadOptions {
            parallel: std::num::NonZero::new(1),
            ..Default::default()
        };
        let downloaded = match self
            .container
            .blob_client(key)
            .download(Some(options))
            .await
        {
            Ok(downloaded) => downloaded,
            Err(error) => {
                return match status_and_code(&error) {
                    (404, code) if code == "BlobNotFound" || code.is_empty() => Ok(None),
                    _ => Err(self.error("reading", key, &error)),
                };
            }
        };
        let location = format!("azure://{}/{}/{key}", self.account, self.container_name);
        let chunks = downloaded.body.map(move |chunk| {
            chunk.map_err(|_| {
                SinkError::transient(format!("reading {location}: the download broke off"))
            })
        });
        Ok(Some(chunks.boxed()))
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        match self.container.blob_client(key).delete(None).await {
            Ok(_) => Ok(()),
            Err(error) => match status_and_code(&error) {
                (404, code) if code == "BlobNotFound" || code.is_empty() => Ok(()),
                _ => Err(self.error("deleting", key, &error)),
            },
        }
    }

    /// Uncommitted blocks are discarded by Azure itself (after a week); nothing to abort.
    async fn abort_incomplete(&self, _prefix: &str) -> Result<usize, SinkError> {
        Ok(0)
    }
}

/// The HTTP status and Azure error code of a failed request (`0` and empty when it has none).
fn status_and_code(error: &azure_core::Error) -> (u16, String) {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => (u16::from(*status), error_code.clone().unwrap_or_default()),
        _ => (0, String::new()),
    }
}

/// The HTTP client of the Azure sink: addresses filtered by the endpoint policy, no redirects
/// (a redirect to an IP literal would bypass the resolver).
fn http_client(endpoints: &EndpointPolicy) -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(FilteringResolver::new(endpoints.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("creating the Azure HTTP client: {error}"),
            )
        })
}

/// Key bytes whose `Debug` prints nothing.
struct SecretBytes(Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Signs each attempt with Azure Storage's Shared Key scheme (`Authorization: SharedKey
/// account:signature`), over the request exactly as it is about to be sent.
#[derive(Debug)]
struct SharedKeyPolicy {
    account: String,
    key: SecretBytes,
}

impl SharedKeyPolicy {
    /// The string to sign (Shared Key for the Blob service, API versions from 2015-02-21).
    fn string_to_sign(&self, request: &Request) -> String {
        let header = |name: &'static str| {
            request
                .headers()
                .get_optional_str(&HeaderName::from_static(name))
                .unwrap_or("")
                .to_string()
        };
        let content_length = match request.body().len() {
            Some(0) | None => String::new(),
            Some(len) => len.to_string(),
        };
        let mut canonical_headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-ms-"))
            .map(|(name, value)| {
                (
                    name.as_str().to_lowercase(),
                    value.as_str().trim().to_string(),
                )
            })
            .collect();
        canonical_headers.sort();
        let mut lines = vec![
            request.method().as_ref().to_string(),
            header("content-encoding"),
            header("content-language"),
            content_length,
            header("content-md5"),
            header("content-type"),
            String::new(), // Date: x-ms-date is used instead
            header("if-modified-since"),
            header("if-match"),
            header("if-none-match"),
            header("if-unmodified-since"),
            header("range"),
        ];
        for (name, value) in canonical_headers {
            lines.push(format!("{name}:{value}"));
        }
        lines.push(self.canonical_resource(request.url()));
        lines.join("\n")
    }

    fn canonical_resource(&self, url: &Url) -> String {
        let mut resource = format!("/{}{}", self.account, url.path());
        let mut parameters: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in url.query_pairs() {
            parameters
                .entry(name.to_lowercase())
                .or_default()
                .push(value.into_owned());
        }
        for (name, mut values) in parameters {
            values.sort();
            resource.push_str(&format!("\n{name}:{}", values.join(",")));
        }
        resource
    }

    fn sign(&self, text: &str) -> SecretString {
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key.0) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length.
            Err(_) => return SecretString::new(String::new()),
        };
        mac.update(text.as_bytes());
        SecretString::new(
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
        )
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let now = jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S GMT");
        request.insert_header("x-ms-date", now.to_string());
        let signature = self.sign(&self.string_to_sign(request));
        request.insert_header(
            "authorization",
            format!("SharedKey {}:{}", self.account, signature.expose()),
        );
        match next.split_first() {
            Some((first, rest)) => first.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "the shared key policy must not be last in the pipeline",
            )),
        }
    }
}
