//! Destination credentials, read from a ScaiVault secret path (SPEC §3.5).
//!
//! Two backends: ScaiVault itself (`GET {SCAIVAULT_URL}/v1/secrets/{path}` with the service's
//! token, re-read from its file whenever the file changes) and, for standalone and development
//! use, a directory holding `<path>.json` secret documents. Secret values are wrapped in
//! [`SecretString`], whose `Debug` prints nothing, and never enter an error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::job::{DestinationType, ExportFailure};

/// A secret value; `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The value, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Why credentials could not be obtained. Messages name paths and codes, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no credentials backend is configured: set SCAIVAULT_URL and SCAIVAULT_TOKEN_FILE, or \
         SCAIVAULT_AUDIT_CREDENTIALS_DIR for development"
    )]
    NotConfigured,
    #[error("credentials secret '{path}' was not found in ScaiVault ({code})")]
    NotFound { path: String, code: String },
    #[error(
        "ScaiVault denied this service access to credentials secret '{path}' ({code}): grant \
         its identity read access to the path"
    )]
    AccessDenied { path: String, code: String },
    #[error(
        "ScaiVault rejected the service's token ({code}): check the token in SCAIVAULT_TOKEN_FILE"
    )]
    Unauthenticated { code: String },
    #[error("the service's ScaiVault token could not be read from {file}: {reason}")]
    TokenFile { file: String, reason: String },
    #[error("ScaiVault is unavailable: {0}")]
    Unavailable(String),
    #[error("credentials secret '{path}' is unusable: {reason}")]
    Malformed { path: String, reason: String },
}

impl CredentialError {
    /// Worth retrying: ScaiVault may come back.
    pub fn is_transient(&self) -> bool {
        matches!(self, CredentialError::Unavailable(_))
    }

    /// The export failure reported to users: it names the problem and the tenant's own path,
    /// never the ScaiVault URL, the token file or the server's directories (those are logged).
    pub fn to_failure(&self) -> ExportFailure {
        let code = match self {
            CredentialError::NotConfigured => "credentials_not_configured",
            CredentialError::NotFound { .. } => "credentials_not_found",
            CredentialError::AccessDenied { .. } => "credentials_access_denied",
            CredentialError::Unauthenticated { .. } | CredentialError::TokenFile { .. } => {
                "scaivault_authentication_failed"
            }
            CredentialError::Unavailable(_) => "scaivault_unavailable",
            CredentialError::Malformed { .. } => "credentials_invalid",
        };
        let message = match self {
            CredentialError::TokenFile { .. } => {
                tracing::error!(error = %self, "the service's ScaiVault token is unreadable");
                "the audit service could not read its own ScaiVault token; its operators must fix \
                 it (see the service log)"
                    .to_string()
            }
            other => other.to_string(),
        };
        ExportFailure::new(code, message)
    }
}

/// The `data` of a secret document (values redacted in `Debug`).
#[derive(Clone)]
pub struct SecretData {
    path: String,
    data: Map<String, Value>,
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("path", &self.path)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretData {
    pub fn new(path: impl Into<String>, data: Map<String, Value>) -> Self {
        SecretData {
            path: path.into(),
            data,
        }
    }

    /// This data with `key` set to `value` (`verify --endpoint-url`).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.data.insert(key.to_string(), Value::from(value));
        self
    }

    /// This data with `key` set to `value` unless it has a value already.
    pub fn with_default(mut self, key: &str, value: &str) -> Self {
        self.data
            .entry(key.to_string())
            .or_insert_with(|| Value::from(value));
        self
    }

    fn malformed(&self, reason: impl Into<String>) -> CredentialError {
        CredentialError::Malformed {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// A string value (`None` when absent or empty).
    fn optional(&self, key: &str) -> Result<Option<SecretString>, CredentialError> {
        match self.data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(SecretString::new(text.clone()))),
            Some(_) => Err(self.malformed(format!("data.{key} must be a string"))),
        }
    }

    fn required(&self, key: &str, kind: DestinationType) -> Result<SecretString, CredentialError> {
        self.optional(key)?.ok_or_else(|| {
            self.malformed(format!(
                "data.{key} is required for a {} destination",
                kind.as_str()
            ))
        })
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, CredentialError> {
        match self.data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(Value::String(text)) if text == "true" || text == "false" => {
                Ok(Some(text == "true"))
            }
            Some(_) => Err(self.malformed(format!("data.{key} must be true or false"))),
        }
    }
}

/// S3 (or S3-compatible) credentials.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    pub region: String,
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); defaults to on with a custom endpoint.
    pub force_path_style: bool,
}

/// Google Cloud Storage credentials.
#[derive(Debug, Clone)]
pub struct GcsCredentials {
    /// The service account key file (JSON).
    pub service_account_json: SecretString,
    pub endpoint_url: Option<String>,
}

/// How to authenticate to Azure Blob Storage.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    AccountKey(SecretString),
    /// A SAS token (the query string, with or without a leading `?`).
    SasToken(SecretString),
}

/// Azure Blob Storage credentials.
#[derive(Debug, Clone)]
pub struct AzureCredentials {
    pub account_name: String,
    pub auth: AzureAuth,
    /// Blob service URL; `https://{account}.blob.core.windows.net` by default.
    pub endpoint_url: String,
}

/// Credentials for one destination type.
#[derive(Debug, Clone)]
pub enum DestinationCredentials {
    S3(S3Credentials),
    Gcs(GcsCredentials),
    Azure(AzureCredentials),
    /// A `file` destination's directory, already resolved under `[export] file_root` by the
    /// [`super::policy::ExportPolicy`]: the only authority a file sink gets.
    FileDirectory(PathBuf),
    /// No credentials (a `file` destination before its directory is resolved: no sink opens).
    None,
}

impl DestinationCredentials {
    /// Interprets a secret's `data` for `kind` (SPEC §3.5 keys).
    pub fn parse(kind: DestinationType, data: &SecretData) -> Result<Self, CredentialError> {
        match kind {
            DestinationType::S3 => parse_s3(data),
            DestinationType::Gcs => parse_gcs(data),
            DestinationType::AzureBlob => parse_azure(data),
            DestinationType::File => Ok(DestinationCredentials::None),
        }
    }
}

fn parse_s3(data: &SecretData) -> Result<DestinationCredentials, CredentialError> {
    let kind = DestinationType::S3;
    let endpoint_url = data.optional("endpoint_url")?.map(|url| url.0);
    if let Some(url) = &endpoint_url {
        check_url(data, url)?;
    }
    let force_path_style = data
        .flag("force_path_style")?
        .unwrap_or(endpoint_url.is_some());
    Ok(DestinationCredentials::S3(S3Credentials {
        access_key_id: data.required("access_key_id", kind)?,
        secret_access_key: data.required("secret_access_key", kind)?,
        session_token: data.optional("session_token")?,
        region: data
            .optional("region")?
            .map_or_else(|| "us-east-1".to_string(), |region| region.0),
        endpoint_url,
        force_path_style,
    }))
}

fn parse_gcs(data: &SecretData) -> Result<DestinationCredentials, CredentialError> {
    let key = match data.data.get("service_account_json") {
        Some(Value::Object(object)) => serde_json::to_string(object)
            .map_err(|_| data.malformed("data.service_account_json is not valid JSON"))?,
        Some(Value::String(text)) => {
            if serde_json::from_str::<Map<String, Value>>(text).is_err() {
                return Err(data.malformed("data.service_account_json is not a JSON object"));
            }
            text.clone()
        }
        _ => {
            return Err(data.malformed(
                "data.service_account_json (the key file, as an object or a string) is required \
                 for a gcs destination",
            ));
        }
    };
    let endpoint_url = data.optional("endpoint_url")?.map(|url| url.0);
    if let Some(url) = &endpoint_url {
        check_url(data, url)?;
    }
    Ok(DestinationCredentials::Gcs(GcsCredentials {
        service_account_json: SecretString::new(key),
        endpoint_url,
    }))
}

fn parse_azure(data: &SecretData) -> Result<DestinationCredentials, CredentialError> {
    let kind = DestinationType::AzureBlob;
    if let Some(connection) = data.optional("connection_string")? {
        return parse_connection_string(data, connection.expose());
    }
    let account_name = data.required("account_name", kind)?.0;
    let auth = match (data.optional("account_key")?, data.optional("sas_token")?) {
        (Some(key), _) => AzureAuth::AccountKey(key),
        (None, Some(sas)) => AzureAuth::SasToken(sas),
        (None, None) => {
            return Err(data.malformed(
                "an azure_blob destination needs data.account_key or data.sas_token (or \
                 data.connection_string)",
            ));
        }
    };
    let endpoint_url = match data.optional("endpoint_url")? {
        Some(url) => {
            check_url(data, url.expose())?;
            url.0
        }
        None => format!("https://{account_name}.blob.core.windows.net"),
    };
    Ok(DestinationCredentials::Azure(AzureCredentials {
        account_name,
        auth,
        endpoint_url,
    }))
}

/// `AccountName=..;AccountKey=..;BlobEndpoint=..` (or `SharedAccessSignature=..`).
fn parse_connection_string(
    data: &SecretData,
    text: &str,
) -> Result<DestinationCredentials, CredentialError> {
    let mut parts = std::collections::HashMap::new();
    for item in text.split(';').filter(|item| !item.trim().is_empty()) {
        let Some((name, value)) = item.split_once('=') else {
            return Err(data.malformed("data.connection_string is not NAME=VALUE pairs"));
        };
        parts.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let Some(account_name) = parts.get("accountname").cloned() else {
        return Err(data.malformed("data.connection_string has no AccountName"));
    };
    let auth = match (parts.get("accountkey"), parts.get("sharedaccesssignature")) {
        (Some(key), _) => AzureAuth::AccountKey(SecretString::new(key.clone())),
        (None, Some(sas)) => AzureAuth::SasToken(SecretString::new(sas.clone())),
        (None, None) => {
            return Err(data.malformed(
                "data.connection_string has neither AccountKey nor SharedAccessSignature",
            ));
        }
    };
    let endpoint_url = match parts.get("blobendpoint") {
        Some(url) => {
            check_url(data, url)?;
            url.clone()
        }
        None => {
            let protocol = parts
                .get("defaultendpointsprotocol")
                .map_or("https", String::as_str);
            let suffix = parts
                .get("endpointsuffix")
                .map_or("core.windows.net", String::as_str);
            format!("{protocol}://{account_name}.blob.{suffix}")
        }
    };
    Ok(DestinationCredentials::Azure(AzureCredentials {
        account_name,
        auth,
        endpoint_url,
    }))
}

fn check_url(data: &SecretData, url: &str) -> Result<(), CredentialError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(data.malformed("the endpoint URL must start with http:// or https://"))
    }
}

/// Where credential secrets come from.
#[derive(Clone)]
pub enum CredentialSource {
    /// ScaiVault's secrets API.
    ScaiVault(ScaiVaultClient),
    /// `DIR/<path>.json` documents (development).
    Directory(PathBuf),
    /// Neither configured: only `file` destinations work.
    Unconfigured,
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::ScaiVault(client) => write!(f, "ScaiVault({})", client.base_url),
            CredentialSource::Directory(dir) => write!(f, "Directory({})", dir.display()),
            CredentialSource::Unconfigured => f.write_str("Unconfigured"),
        }
    }
}

impl CredentialSource {
    /// Reads the secret at `path`.
    pub async fn fetch(&self, path: &str) -> Result<SecretData, CredentialError> {
        match self {
            CredentialSource::ScaiVault(client) => client.read_secret(path).await,
            CredentialSource::Directory(dir) => read_secret_file(dir, path).await,
            CredentialSource::Unconfigured => Err(CredentialError::NotConfigured),
        }
    }

    /// Credentials for `kind` from the secret at `path` (none needed for `file`).
    pub async fn destination(
        &self,
        kind: DestinationType,
        path: Option<&str>,
    ) -> Result<DestinationCredentials, CredentialError> {
        match (kind, path) {
            (DestinationType::File, _) => Ok(DestinationCredentials::None),
            (_, None) => Err(CredentialError::Malformed {
                path: String::new(),
                reason: "destination.credentials_path is required".into(),
            }),
            (kind, Some(path)) => {
                let data = self.fetch(path).await?;
                DestinationCredentials::parse(kind, &data)
            }
        }
    }
}

/// The secret document shape (SPEC §3.5 / ScaiVault `GET /v1/secrets/{path}`).
#[derive(Deserialize)]
struct SecretDocument {
    data: Map<String, Value>,
}

async fn read_secret_file(dir: &Path, path: &str) -> Result<SecretData, CredentialError> {
    crate::event::check_secret_path(path).map_err(|problem| CredentialError::Malformed {
        path: path.to_string(),
        reason: problem.to_string(),
    })?;
    let file = dir.join(format!("{path}.json"));
    let bytes = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::NotFound {
                path: path.to_string(),
                code: "secret_not_found".into(),
            });
        }
        Err(error) => {
            tracing::warn!(file = %file.display(), %error, "credentials file unreadable");
            return Err(CredentialError::Unavailable(format!(
                "the credentials directory could not be read ({})",
                error.kind()
            )));
        }
    };
    let document: SecretDocument =
        serde_json::from_slice(&bytes).map_err(|_| CredentialError::Malformed {
            path: path.to_string(),
            reason: "the secret is not a document with a \"data\" object".into(),
        })?;
    Ok(SecretData::new(path, document.data))
}

/// A client of ScaiVault's secrets API.
#[derive(Clone)]
pub struct ScaiVaultClient {
    base_url: String,
    token_file: PathBuf,
    http: reqwest::Client,
    token: std::sync::Arc<Mutex<Option<CachedToken>>>,
}

struct CachedToken {
    modified: Option<SystemTime>,
    len: u64,
    value: SecretString,
}

/// Time limits of one ScaiVault request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl ScaiVaultClient {
    /// A client of `base_url` (e.g. `https://scaivault.internal`) authenticating with the token in
    /// `token_file`.
    pub fn new(base_url: &str, token_file: PathBuf) -> Result<Self, CredentialError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("scaivault-audit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CredentialError::Unavailable(error.to_string()))?;
        Ok(ScaiVaultClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            token_file,
            http,
            token: Default::default(),
        })
    }

    /// The token, re-read when the file's size or modification time changed.
    fn current_token(&self) -> Result<SecretString, CredentialError> {
        let file_error = |reason: String| CredentialError::TokenFile {
            file: self.token_file.display().to_string(),
            reason,
        };
        let metadata =
            std::fs::metadata(&self.token_file).map_err(|error| file_error(error.to_string()))?;
        let modified = metadata.modified().ok();
        let mut cached = self.token.lock();
        if let Some(token) = cached.as_ref()
            && token.modified == modified
            && token.len == metadata.len()
        {
            return Ok(token.value.clone());
        }
        let text = std::fs::read_to_string(&self.token_file)
            .map_err(|error| file_error(error.to_string()))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(file_error("the file is empty".into()));
        }
        let value = SecretString::new(value);
        *cached = Some(CachedToken {
            modified,
            len: metadata.len(),
            value: value.clone(),
        });
        Ok(value)
    }

    async fn read_secret(&self, path: &str) -> Result<SecretData, CredentialError> {
        crate::event::check_secret_path(path).map_err(|problem| CredentialError::Malformed {
            path: path.to_string(),
            reason: problem.to_string(),
        })?;
        let token = self.current_token()?;
        let url = format!("{}/v1/secrets/{path}", self.base_url);
        let response = self
            .http
            .get(&url)
            .bearer_auth(token.expose())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|error| {
                // The URL is the operators' business: logged, not shown to the tenant.
                tracing::warn!(url, error = %error, "ScaiVault request failed");
                CredentialError::Unavailable(format!("ScaiVault {}", describe(&error)))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| {
            tracing::warn!(url, error = %error, "ScaiVault answer unreadable");
            CredentialError::Unavailable(format!("ScaiVault {}", describe(&error)))
        })?;
        if status.is_success() {
            let document: SecretDocument =
                serde_json::from_slice(&body).map_err(|_| CredentialError::Malformed {
                    path: path.to_string(),
                    reason: "ScaiVault's answer is not a secret document with a \"data\" object"
                        .into(),
                })?;
            return Ok(SecretData::new(path, document.data));
        }
        Err(map_error(path, status.as_u16(), &body))
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// Maps ScaiVault's error envelope (`{"error": {"code", ...}}`) to a credential error.
fn map_error(path: &str, status: u16, body: &[u8]) -> CredentialError {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.pointer("/error/code")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("http_{status}"));
    let path = path.to_string();
    match status {
        401 => CredentialError::Unauthenticated { code },
        403 => CredentialError::AccessDenied { path, code },
        404 => CredentialError::NotFound { path, code },
        400 => CredentialError::Malformed {
            path,
            reason: format!("ScaiVault rejected the path ({code})"),
        },
        408 | 429 | 500..=599 => {
            CredentialError::Unavailable(format!("ScaiVault answered {status} ({code})"))
        }
        _ => CredentialError::Unavailable(format!("ScaiVault answered {status} ({code})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> SecretData {
        let Value::Object(map) = value else {
            panic!("object expected")
        };
        SecretData::new("infra/aws/writer", map)
    }

    #[test]
    fn s3_keys_are_read_and_path_style_follows_a_custom_endpoint() {
        let parsed = DestinationCredentials::parse(
            DestinationType::S3,
            &data(
                json!({"access_key_id": "AKIA", "secret_access_key": "very-secret",
                         "endpoint_url": "http://127.0.0.1:5000"}),
            ),
        );
        let Ok(DestinationCredentials::S3(s3)) = parsed else {
            panic!("s3 expected: {parsed:?}")
        };
        assert_eq!(s3.access_key_id.expose(), "AKIA");
        assert!(s3.force_path_style);
        assert_eq!(s3.region, "us-east-1");
        assert!(!format!("{s3:?}").contains("very-secret"));
    }

    #[test]
    fn missing_keys_name_the_key_not_the_values() {
        let error = DestinationCredentials::parse(
            DestinationType::S3,
            &data(json!({"access_key_id": "AKIA-visible-only-as-a-value"})),
        )
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(
            error.contains("data.secret_access_key is required"),
            "{error}"
        );
        assert!(!error.contains("AKIA"), "{error}");
    }

    #[test]
    fn azure_connection_strings_and_sas_tokens_are_understood() {
        let parsed = DestinationCredentials::parse(
            DestinationType::AzureBlob,
            &data(json!({"connection_string":
                "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/dev;"})),
        );
        let Ok(DestinationCredentials::Azure(azure)) = parsed else {
            panic!("azure expected")
        };
        assert_eq!(azure.account_name, "dev");
        assert_eq!(azure.endpoint_url, "http://127.0.0.1:10000/dev");
        assert!(matches!(azure.auth, AzureAuth::AccountKey(_)));

        let parsed = DestinationCredentials::parse(
            DestinationType::AzureBlob,
            &data(json!({"account_name": "acct", "sas_token": "?sv=1&sig=x"})),
        );
        let Ok(DestinationCredentials::Azure(azure)) = parsed else {
            panic!("azure expected")
        };
        assert_eq!(azure.endpoint_url, "https://acct.blob.core.windows.net");
        assert!(matches!(azure.auth, AzureAuth::SasToken(_)));
    }

    #[test]
    fn gcs_key_files_may_be_objects_or_strings() {
        for key in [
            json!({"type": "service_account"}),
            json!("{\"type\":\"service_account\"}"),
        ] {
            let parsed = DestinationCredentials::parse(
                DestinationType::Gcs,
                &data(json!({"service_account_json": key})),
            );
            assert!(matches!(parsed, Ok(DestinationCredentials::Gcs(_))));
        }
        let parsed = DestinationCredentials::parse(
            DestinationType::Gcs,
            &data(json!({"service_account_json": "not json"})),
        );
        assert!(matches!(parsed, Err(CredentialError::Malformed { .. })));
    }

    #[test]
    fn scaivault_errors_map_to_actionable_kinds() {
        let body = br#"{"error": {"code": "secret_not_found", "message": "x"}}"#;
        assert!(
            matches!(map_error("a/b", 404, body), CredentialError::NotFound { code, .. } if code == "secret_not_found")
        );
        assert!(
            matches!(map_error("a/b", 403, b"{}"), CredentialError::AccessDenied { code, .. } if code == "http_403")
        );
        assert!(matches!(
            map_error("a/b", 401, b""),
            CredentialError::Unauthenticated { .. }
        ));
        assert!(map_error("a/b", 503, b"").is_transient());
        assert!(!map_error("a/b", 403, b"").is_transient());
    }

    #[test]
    fn tenant_visible_messages_name_no_server_internals() {
        let token = CredentialError::TokenFile {
            file: "/var/run/secrets/scaivault/token".into(),
            reason: "permission denied".into(),
        };
        let failure = token.to_failure();
        assert_eq!(failure.code, "scaivault_authentication_failed");
        assert!(!failure.message.contains("/var/run"), "{failure:?}");
        let missing = map_error("tenants/tnt_acme/s3", 404, b"").to_failure();
        assert!(
            missing
                .message
                .contains("credentials secret 'tenants/tnt_acme/s3' was not found"),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn scaivault_connection_failures_do_not_name_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        drop(listener);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap_or_else(|e| panic!("{e}"));
        let client = ScaiVaultClient::new(&url, token).unwrap_or_else(|e| panic!("{e}"));
        let failure = match client.read_secret("tenants/tnt_acme/s3").await {
            Err(error) => error.to_failure(),
            Ok(data) => panic!("read {data:?}"),
        };
        assert_eq!(failure.code, "scaivault_unavailable");
        assert!(!failure.message.contains("127.0.0.1"), "{failure:?}");
    }

    #[tokio::test]
    async fn the_directory_backend_reads_secret_documents() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let secret_dir = dir.path().join("infra/aws");
        std::fs::create_dir_all(&secret_dir).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(
            secret_dir.join("writer.json"),
            br#"{"path": "infra/aws/writer", "version": 1, "secret_type": "json",
                 "data": {"access_key_id": "a", "secret_access_key": "b"}}"#,
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let source = CredentialSource::Directory(dir.path().to_path_buf());
        let found = source
            .destination(DestinationType::S3, Some("infra/aws/writer"))
            .await;
        assert!(matches!(found, Ok(DestinationCredentials::S3(_))));
        let missing = source.fetch("infra/aws/other").await;
        assert!(matches!(missing, Err(CredentialError::NotFound { .. })));
    }
}
