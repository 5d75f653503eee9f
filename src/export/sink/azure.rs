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
    BlockBlobClientCommitBlockListOptions, BlockBlobClientUploadOptions, BlockLookupList,
};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use base64::Engine;
use hmac::{KeyInit, Mac};

use super::{Sink, SinkError, SinkErrorKind, UPLOAD_CHUNK_BYTES, kind_of_status, read_chunk};
use crate::export::credentials::{AzureAuth, AzureCredentials, SecretString};

/// Blob service API version sent by the client (supported by Azure and by Azurite 3.35).
const API_VERSION: &str = "2025-01-05";

pub struct AzureSink {
    container: BlobContainerClient,
    account: String,
    container_name: String,
}

impl AzureSink {
    pub fn new(container: &str, credentials: &AzureCredentials) -> Result<Self, SinkError> {
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

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let blob = self.container.blob_client(key);
        let downloaded = match blob.download(None).await {
            Ok(downloaded) => downloaded,
            Err(error) => {
                if let ErrorKind::HttpResponse {
                    error_code: Some(code),
                    ..
                } = error.kind()
                    && code == "BlobNotFound"
                {
                    return Ok(None);
                }
                return Err(self.error("reading", key, &error));
            }
        };
        let bytes = downloaded
            .body
            .collect()
            .await
            .map_err(|error| self.error("reading", key, &error))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Uncommitted blocks are discarded by Azure itself (after a week); nothing to abort.
    async fn abort_incomplete(&self, _prefix: &str, _export_id: &str) -> Result<usize, SinkError> {
        Ok(0)
    }
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
