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

use super::endpoint::{EndpointPolicy, FilteringResolver};
use super::{
    CappedBuffer, ChunkStream, ObjectInfo, READ_LIMIT_BYTES, Sink, SinkError, SinkErrorKind,
    SmallObject, UPLOAD_CHUNK_BYTES, kind_of_status,
};
use crate::export::credentials::GcsCredentials;

/// The JSON API's endpoint when the credentials name none.
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// How long the client keeps retrying one request before the engine's own backoff takes over.
const CLIENT_RETRY_LIMIT: Duration = Duration::from_secs(30);

pub struct GcsSink {
    client: Storage,
    bucket: String,
    /// For listing, which goes through the JSON API (the crate lists over gRPC only).
    credentials: google_cloud_auth::credentials::Credentials,
    endpoint: String,
    http: reqwest::Client,
}

impl GcsSink {
    pub async fn new(
        bucket: &str,
        credentials: &GcsCredentials,
        endpoints: &EndpointPolicy,
    ) -> Result<Self, SinkError> {
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
            .with_credentials(service_account.clone())
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
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(FilteringResolver::new(
                endpoints.clone(),
            )))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|error| {
                SinkError::new(
                    SinkErrorKind::Rejected,
                    format!("creating the GCS HTTP client: {error}"),
                )
            })?;
        let endpoint = credentials
            .endpoint_url
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        Ok(GcsSink {
            client,
            bucket: bucket.to_string(),
            credentials: service_account,
            endpoint,
            http,
        })
    }

    /// One page of the JSON API's object listing.
    async fn list_page(
        &self,
        prefix: &str,
        page_token: Option<&str>,
    ) -> Result<ListPage, SinkError> {
        let location = format!("gs://{}/{prefix}", self.bucket);
        let headers = self.auth_headers("listing", &location).await?;
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let mut query = vec![("prefix", prefix.to_string())];
        if let Some(token) = page_token {
            query.push(("pageToken", token.to_string()));
        }
        let response = self
            .http
            .get(url)
            .headers(headers)
            .query(&query)
            .send()
            .await
            .map_err(|_| SinkError::transient(format!("listing {location}: GCS is unreachable")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(SinkError::new(
                kind_of_status(status),
                format!("listing {location}: GCS answered {status}"),
            ));
        }
        response.json().await.map_err(|_| {
            SinkError::transient(format!("listing {location}: unreadable GCS response"))
        })
    }

    /// The authorization headers of a JSON API request (`action` and `location` for errors).
    async fn auth_headers(
        &self,
        action: &str,
        location: &str,
    ) -> Result<http::HeaderMap, SinkError> {
        match self.credentials.headers(http::Extensions::new()).await {
            Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => Ok(data),
            _ => Err(SinkError::new(
                SinkErrorKind::InvalidCredentials,
                format!("{action} {location}: no token from the service account key"),
            )),
        }
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

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, token.as_deref()).await?;
            for item in page.items {
                objects.push(ObjectInfo {
                    key: item.name,
                    size_bytes: item.size.parse().unwrap_or(0),
                });
            }
            match page.next_page_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(objects),
            }
        }
    }

    async fn read_stream(&self, key: &str) -> Result<Option<ChunkStream>, SinkError> {
        use futures::StreamExt;
        let response = self
            .client
            .read_object(self.bucket_path(), key)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) if error.http_status_code() == Some(404) => return Ok(None),
            Err(error) => return Err(self.error("reading", key, &error)),
        };
        let location = format!("gs://{}/{key}", self.bucket);
        let chunks = futures::stream::unfold(response, move |mut response| {
            let location = location.clone();
            async move {
                let chunk = response.next().await?;
                let chunk = chunk.map_err(|_| {
                    SinkError::transient(format!("reading {location}: the download broke off"))
                });
                Some((chunk, response))
            }
        });
        Ok(Some(chunks.boxed()))
    }

    /// A JSON API `DELETE` (the data-plane client has no delete).
    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        let location = format!("gs://{}/{key}", self.bucket);
        let headers = self.auth_headers("deleting", &location).await?;
        let mut url =
            url::Url::parse(&format!("{}/storage/v1/b/", self.endpoint)).map_err(|_| {
                SinkError::new(
                    SinkErrorKind::Rejected,
                    format!("deleting {location}: the GCS endpoint is not a URL"),
                )
            })?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend([self.bucket.as_str(), "o", key]);
        }
        let response = self
            .http
            .delete(url)
            .headers(headers)
            .send()
            .await
            .map_err(|_| {
                SinkError::transient(format!("deleting {location}: GCS is unreachable"))
            })?;
        match response.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            status => Err(SinkError::new(
                kind_of_status(status),
                format!("deleting {location}: GCS answered {status}"),
            )),
        }
    }

    /// GCS discards incomplete resumable uploads itself (after a week); nothing to abort.
    async fn abort_incomplete(&self, _prefix: &str) -> Result<usize, SinkError> {
        Ok(0)
    }
}

/// A page of `GET /storage/v1/b/BUCKET/o`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<ListItem>,
    next_page_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListItem {
    name: String,
    /// A decimal string in the JSON API.
    #[serde(default)]
    size: String,
}

/// The `token_uri` of the service account key, which the auth library may call.
pub fn token_uri(credentials: &GcsCredentials) -> Option<String> {
    let key: serde_json::Value =
        serde_json::from_str(credentials.service_account_json.expose()).ok()?;
    key.get("token_uri")
        .and_then(|uri| uri.as_str())
        .map(str::to_string)
}
