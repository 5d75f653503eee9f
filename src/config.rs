//! Configuration: one TOML file, environment variables and flags, resolved once into
//! [`Settings`]. Precedence: flag > environment > file > default.
//!
//! Every setting has a flag, an environment variable and a TOML key; the table in the README
//! and `config/scaivault-audit.toml` list them all. ScaiVault's own names are used where they
//! exist (`BIND_ADDRESS`, `LOG_LEVEL`, `LOG_FORMAT`); the rest are `SCAIVAULT_AUDIT_*`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use clap::builder::TypedValueParser;
use serde::{Deserialize, Serialize};

use crate::api::rate_limit::RateLimits;
use crate::auth::jwt::{JwksSource, JwtOptions};
use crate::export::policy::{
    DEFAULT_CREDENTIALS_PATH_PREFIX, check_credentials_prefix, comparable_path, paths_overlap,
};
use crate::export::sink::endpoint::EndpointPolicy;
use crate::state::{IngestLimits, WorkLimits};
use crate::store::{CommitPolicy, StoreConfig};

/// Tantivy needs at least this much indexing memory per thread.
const MIN_INDEX_MEMORY_MB_PER_THREAD: u64 = 15;

/// Errors resolving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Flags (and their environment variables) shared by `serve`, `check-config` and `import`.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML configuration file.
    #[arg(long, env = "SCAIVAULT_AUDIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: WAL, index, keys, bootstrap token.
    #[arg(long, env = "SCAIVAULT_AUDIT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (host:port; port 0 picks a free port).
    #[arg(long, env = "BIND_ADDRESS", value_name = "ADDR")]
    pub listen: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key-file the API serves HTTPS.
    #[arg(long, env = "TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Static API tokens file (TOML, hashed tokens). Without any auth configured, a bootstrap
    /// token is generated in the data directory.
    #[arg(long, env = "SCAIVAULT_AUDIT_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// JWKS of ScaiKey JWTs: an http(s) URL, or `file://` / a path.
    #[arg(long, env = "SCAIKEY_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim of JWTs (unchecked when unset).
    #[arg(long, env = "SCAIVAULT_AUDIT_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim of JWTs (unchecked when unset).
    #[arg(long, env = "SCAIVAULT_AUDIT_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Audit queries per minute per identity (0 = unlimited).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_RATE_LIMIT_QUERIES_PER_MINUTE",
        value_name = "N"
    )]
    pub rate_limit_queries_per_minute: Option<u32>,
    /// Export requests per minute per identity (0 = unlimited).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_RATE_LIMIT_EXPORTS_PER_MINUTE",
        value_name = "N"
    )]
    pub rate_limit_exports_per_minute: Option<u32>,
    /// Commit the index at least this often while events are pending (milliseconds).
    #[arg(long, env = "SCAIVAULT_AUDIT_COMMIT_INTERVAL_MS", value_name = "MS")]
    pub commit_interval_ms: Option<u64>,
    /// Commit once this many events are pending.
    #[arg(long, env = "SCAIVAULT_AUDIT_COMMIT_MAX_DOCS", value_name = "N")]
    pub commit_max_docs: Option<u64>,
    /// Commit once pending events hold this many bytes.
    #[arg(long, env = "SCAIVAULT_AUDIT_COMMIT_MAX_BYTES", value_name = "BYTES")]
    pub commit_max_bytes: Option<u64>,
    /// Tantivy indexing memory budget in MiB (at least 15 per indexing thread).
    #[arg(long, env = "SCAIVAULT_AUDIT_INDEX_MEMORY_MB", value_name = "MIB")]
    pub index_memory_mb: Option<u64>,
    /// Tantivy indexing threads.
    #[arg(long, env = "SCAIVAULT_AUDIT_INDEX_THREADS", value_name = "N")]
    pub index_threads: Option<u64>,
    /// Size at which a WAL segment is closed and a new one started, in MiB.
    #[arg(long, env = "SCAIVAULT_AUDIT_WAL_SEGMENT_MB", value_name = "MIB")]
    pub wal_segment_mb: Option<u64>,
    /// Largest accepted ingest body in bytes.
    #[arg(long, env = "SCAIVAULT_AUDIT_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Most events in one ingest request.
    #[arg(long, env = "SCAIVAULT_AUDIT_MAX_BATCH_EVENTS", value_name = "N")]
    pub max_batch_events: Option<u64>,
    /// ScaiVault base URL, for reading export destination credentials.
    #[arg(long, env = "SCAIVAULT_URL", value_name = "URL")]
    pub scaivault_url: Option<String>,
    /// File holding the service's ScaiVault token (re-read when it changes).
    #[arg(long, env = "SCAIVAULT_TOKEN_FILE", value_name = "FILE")]
    pub scaivault_token_file: Option<PathBuf>,
    /// Development credentials backend: `DIR/<secret path>.json` documents instead of ScaiVault.
    #[arg(long, env = "SCAIVAULT_AUDIT_CREDENTIALS_DIR", value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Export jobs running at once.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_EXPORT_MAX_CONCURRENT_JOBS",
        value_name = "N"
    )]
    pub export_max_concurrent_jobs: Option<u64>,
    /// How long an export keeps retrying transient failures before it fails (seconds).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_EXPORT_RETRY_MAX_SECONDS",
        value_name = "SECONDS"
    )]
    pub export_retry_max_seconds: Option<u64>,
    /// Let exports connect to loopback, link-local, private and other non-public endpoints
    /// (development and emulators only).
    #[arg(long, env = "SCAIVAULT_AUDIT_EXPORT_ALLOW_PRIVATE_ENDPOINTS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub export_allow_private_endpoints: Option<bool>,
    /// Destination hosts exports may reach even when they resolve to non-public addresses
    /// (comma-separated names or IP literals).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_EXPORT_ENDPOINT_ALLOWLIST",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub export_endpoint_allowlist: Option<Vec<String>>,
    /// Directory holding every `file` export destination (`bucket` is a sub-directory of it);
    /// empty disables them. Default: `exports` beside the data directory; unset in Kubernetes.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_EXPORT_FILE_ROOT",
        value_name = "DIR",
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    pub export_file_root: Option<PathBuf>,
    /// ScaiVault path prefixes export credentials may be read from, comma-separated;
    /// `{tenant_id}` is replaced by the export's tenant (default `tenants/{tenant_id}/`).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_EXPORT_CREDENTIALS_PATH_PREFIXES",
        value_name = "PREFIXES",
        value_delimiter = ','
    )]
    pub export_credentials_path_prefixes: Option<Vec<String>>,
    /// Log filter: a level (`info`) or tracing directives (`info,scaivault_audit=debug`).
    #[arg(long, env = "LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// Summary aggregations (summary endpoint, trail summaries) running at once, all tenants
    /// together; more wait up to --busy-wait-ms, then get 503.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_MAX_CONCURRENT_SUMMARIES",
        value_name = "N"
    )]
    pub max_concurrent_summaries: Option<u64>,
    /// Ingest bodies parsed and validated at once, all tenants together; more wait up to
    /// --busy-wait-ms, then get 503.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_MAX_CONCURRENT_INGEST_PARSES",
        value_name = "N"
    )]
    pub max_concurrent_ingest_parses: Option<u64>,
    /// How long a summary or an ingest parse waits for a free slot before the request is
    /// answered 503 with Retry-After (milliseconds).
    #[arg(long, env = "SCAIVAULT_AUDIT_BUSY_WAIT_MS", value_name = "MS")]
    pub busy_wait_ms: Option<u64>,
    /// Test hook: every summary keeps its slot this long after finishing (milliseconds).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_DEBUG_SUMMARY_HOLD_MS",
        value_name = "MS",
        hide = true
    )]
    pub debug_summary_hold_ms: Option<u64>,
    /// Accept JWTs for any audience (otherwise --jwt-audience is required with a JWKS).
    #[arg(long, env = "SCAIVAULT_AUDIT_JWT_ALLOW_ANY_AUDIENCE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub jwt_allow_any_audience: Option<bool>,
    /// Re-load the JWKS this often, so removed keys stop working (seconds).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_JWKS_REFRESH_SECONDS",
        value_name = "SECONDS"
    )]
    pub jwks_refresh_seconds: Option<u64>,
    /// Failed authentications per minute per client address before it gets 429 (0 = unlimited).
    #[arg(long, env = "SCAIVAULT_AUDIT_FAILED_AUTH_PER_MINUTE", value_name = "N")]
    pub failed_auth_per_minute: Option<u32>,
}

/// Kubernetes settings: the operator and ServiceAccount-token authentication.
#[derive(Debug, Clone, Default, Args)]
pub struct KubernetesArgs {
    /// Run the AuditExport operator (default: on when running inside a cluster).
    #[arg(long, env = "SCAIVAULT_AUDIT_OPERATOR", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub operator: Option<bool>,
    /// Namespace whose AuditExports the operator runs and the REST API creates (default: the
    /// client's namespace, i.e. the pod's).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_OPERATOR_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub operator_namespace: Option<String>,
    /// Accept Kubernetes ServiceAccount tokens, verified with the TokenReview API.
    #[arg(long, env = "SCAIVAULT_AUDIT_TOKEN_REVIEW", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub token_review: Option<bool>,
    /// Audience ServiceAccount tokens must be issued for.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_TOKEN_REVIEW_AUDIENCE",
        value_name = "AUDIENCE"
    )]
    pub token_review_audience: Option<String>,
    /// Issuer (`iss`) of the cluster's ServiceAccount tokens: only those are reviewed.
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_TOKEN_REVIEW_ISSUER",
        value_name = "ISSUER"
    )]
    pub token_review_issuer: Option<String>,
    /// Namespaces whose AuditExports the operator runs, comma-separated (default: the operator
    /// namespace; that namespace is always watched, REST-created exports live there).
    #[arg(
        long,
        env = "SCAIVAULT_AUDIT_OPERATOR_NAMESPACES",
        value_name = "NAMESPACES",
        value_delimiter = ','
    )]
    pub operator_namespaces: Option<Vec<String>>,
}

/// The TOML file (every key optional; unknown keys are errors).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub operator: OperatorSection,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub max_body_bytes: Option<u64>,
    pub max_batch_events: Option<u64>,
    pub max_concurrent_summaries: Option<u64>,
    pub max_concurrent_ingest_parses: Option<u64>,
    pub busy_wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub data_dir: Option<PathBuf>,
    pub commit_interval_ms: Option<u64>,
    pub commit_max_docs: Option<u64>,
    pub commit_max_bytes: Option<u64>,
    pub index_memory_mb: Option<u64>,
    pub index_threads: Option<u64>,
    pub wal_segment_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub tokens_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub rate_limit_queries_per_minute: Option<u32>,
    pub rate_limit_exports_per_minute: Option<u32>,
    pub jwt_allow_any_audience: Option<bool>,
    pub jwks_refresh_seconds: Option<u64>,
    pub failed_auth_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_review: Option<TokenReviewSection>,
}

/// `[auth.token_review]`: Kubernetes ServiceAccount tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewSection {
    pub enabled: Option<bool>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    #[serde(default)]
    pub bindings: Vec<TokenReviewBindingSection>,
}

/// `[[auth.token_review.bindings]]`: scopes and tenant of one ServiceAccount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewBindingSection {
    /// `namespace/name`.
    pub service_account: String,
    pub scopes: Vec<String>,
    pub tenant_id: Option<String>,
    pub all_tenants: Option<bool>,
}

/// `[operator]`: the AuditExport controller.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    pub enabled: Option<bool>,
    pub namespace: Option<String>,
    pub lease_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    pub scaivault_url: Option<String>,
    pub scaivault_token_file: Option<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
    pub max_concurrent_jobs: Option<u64>,
    pub retry_max_seconds: Option<u64>,
    pub allow_private_endpoints: Option<bool>,
    pub endpoint_allowlist: Option<Vec<String>>,
    pub file_root: Option<PathBuf>,
    pub credentials_path_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Certificate chain and key files, when the API serves HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub store: StoreConfig,
    pub limits: IngestLimits,
    pub tokens_file: Option<PathBuf>,
    /// The JWKS location as configured, and parsed.
    pub jwks_url: Option<String>,
    pub jwks: Option<JwksSource>,
    pub jwt: JwtOptions,
    pub rate_limits: RateLimits,
    pub export: ExportSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    pub operator: OperatorSettings,
    pub token_review: Option<crate::auth::token_review::TokenReviewSettings>,
    pub work: WorkLimits,
    /// JWTs for any audience are accepted although a JWKS is configured without audience.
    pub jwt_allow_any_audience: bool,
    /// Failed authentications per minute per client address (0 = unlimited).
    pub failed_auth_per_minute: u32,
}

/// The operator's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    pub enabled: bool,
    /// `None`: the Kubernetes client's default namespace.
    pub namespace: Option<String>,
    pub max_concurrent_exports: usize,
    pub lease_name: String,
    /// This replica's lease identity: the pod name (`HOSTNAME`).
    pub identity: String,
    /// Further namespaces whose AuditExports the controller runs (besides `namespace`).
    pub namespaces: Vec<String>,
}

/// Where export credentials come from, and how export jobs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub scaivault_url: Option<String>,
    pub scaivault_token_file: Option<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
    pub max_concurrent_jobs: usize,
    pub retry_max_elapsed: Duration,
    /// Which destination endpoints exports may reach (SSRF protection).
    pub endpoints: EndpointPolicy,
    /// Root of `file` destinations (as configured; `None`: they are refused).
    pub file_root: Option<PathBuf>,
    /// Secret-path prefixes export credentials may come from (`{tenant_id}` unexpanded).
    pub credentials_path_prefixes: Vec<String>,
}

impl ExportSettings {
    pub const DEFAULT_MAX_CONCURRENT_JOBS: u64 = 2;
    pub const DEFAULT_RETRY_MAX_SECONDS: u64 = 900;

    fn resolve(args: &SettingsArgs, file: &ExportSection) -> Result<Self, ConfigError> {
        let scaivault_url = args.scaivault_url.clone().or(file.scaivault_url.clone());
        let scaivault_token_file = args
            .scaivault_token_file
            .clone()
            .or(file.scaivault_token_file.clone());
        let credentials_dir = args
            .credentials_dir
            .clone()
            .or(file.credentials_dir.clone());
        if let Some(url) = &scaivault_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                "scaivault_url (SCAIVAULT_URL)",
                &format!("'{url}' is not an http(s) URL"),
            ));
        }
        if scaivault_url.is_some() != scaivault_token_file.is_some() {
            return Err(invalid(
                "scaivault_url/scaivault_token_file (SCAIVAULT_URL/SCAIVAULT_TOKEN_FILE)",
                "set both or neither",
            ));
        }
        if scaivault_url.is_some() && credentials_dir.is_some() {
            return Err(invalid(
                "credentials_dir (SCAIVAULT_AUDIT_CREDENTIALS_DIR)",
                "is a development backend and cannot be combined with SCAIVAULT_URL",
            ));
        }
        let max_concurrent_jobs = args
            .export_max_concurrent_jobs
            .or(file.max_concurrent_jobs)
            .unwrap_or(Self::DEFAULT_MAX_CONCURRENT_JOBS);
        if !(1..=64).contains(&max_concurrent_jobs) {
            return Err(invalid(
                "export.max_concurrent_jobs",
                "must be between 1 and 64",
            ));
        }
        let retry_max_seconds = args
            .export_retry_max_seconds
            .or(file.retry_max_seconds)
            .unwrap_or(Self::DEFAULT_RETRY_MAX_SECONDS);
        positive("export.retry_max_seconds", retry_max_seconds)?;
        let endpoints = resolve_endpoint_policy(args, file)?;
        Ok(ExportSettings {
            scaivault_url,
            scaivault_token_file,
            credentials_dir,
            max_concurrent_jobs: max_concurrent_jobs as usize,
            retry_max_elapsed: Duration::from_secs(retry_max_seconds),
            endpoints,
            file_root: None,
            credentials_path_prefixes: resolve_credentials_prefixes(args, file)?,
        })
    }

    fn to_section(&self) -> ExportSection {
        ExportSection {
            scaivault_url: self.scaivault_url.clone(),
            scaivault_token_file: self.scaivault_token_file.clone(),
            credentials_dir: self.credentials_dir.clone(),
            max_concurrent_jobs: Some(self.max_concurrent_jobs as u64),
            retry_max_seconds: Some(self.retry_max_elapsed.as_secs()),
            allow_private_endpoints: Some(self.endpoints.allow_private),
            endpoint_allowlist: Some(self.endpoints.allowlist.clone()),
            // Empty: file destinations are disabled.
            file_root: Some(self.file_root.clone().unwrap_or_default()),
            credentials_path_prefixes: Some(self.credentials_path_prefixes.clone()),
        }
    }
}

/// `[export] allow_private_endpoints` and `[export] endpoint_allowlist`: off and empty by
/// default; allowlist entries are host names or IP literals.
fn resolve_endpoint_policy(
    args: &SettingsArgs,
    file: &ExportSection,
) -> Result<EndpointPolicy, ConfigError> {
    let allow_private = args
        .export_allow_private_endpoints
        .or(file.allow_private_endpoints)
        .unwrap_or(false);
    let mut allowlist = Vec::new();
    let entries = args
        .export_endpoint_allowlist
        .clone()
        .or(file.endpoint_allowlist.clone())
        .unwrap_or_default();
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        let valid = bare.parse::<std::net::IpAddr>().is_ok()
            || (!bare.contains([':', '/', '@', ' ']) && url::Host::parse(bare).is_ok());
        if !valid {
            return Err(invalid(
                "export.endpoint_allowlist (SCAIVAULT_AUDIT_EXPORT_ENDPOINT_ALLOWLIST)",
                &format!("'{entry}' is not a host name or IP address (no scheme, port or path)"),
            ));
        }
        allowlist.push(bare.to_ascii_lowercase());
    }
    Ok(EndpointPolicy {
        allow_private,
        allowlist,
    })
}

/// `[export] credentials_path_prefixes`: every entry checked; empty entries are dropped (an
/// empty list allows no credentials path at all).
fn resolve_credentials_prefixes(
    args: &SettingsArgs,
    file: &ExportSection,
) -> Result<Vec<String>, ConfigError> {
    let key = "export.credentials_path_prefixes (SCAIVAULT_AUDIT_EXPORT_CREDENTIALS_PATH_PREFIXES)";
    let prefixes: Vec<String> = args
        .export_credentials_path_prefixes
        .clone()
        .or(file.credentials_path_prefixes.clone())
        .unwrap_or_else(|| vec![DEFAULT_CREDENTIALS_PATH_PREFIX.to_string()])
        .into_iter()
        .map(|prefix| prefix.trim().to_string())
        .filter(|prefix| !prefix.is_empty())
        .collect();
    for prefix in &prefixes {
        check_credentials_prefix(prefix).map_err(|message| invalid(key, &message))?;
    }
    Ok(prefixes)
}

/// `[export] file_root`: explicit (empty disables), else `exports` beside the data directory
/// standalone and unset in Kubernetes (in a pod, or with the operator on). It may neither
/// contain nor lie inside the data directory (job files, spool and WAL live there).
fn resolve_file_root(
    args: &SettingsArgs,
    file: &FileConfig,
    data_dir: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    let key = "export.file_root (SCAIVAULT_AUDIT_EXPORT_FILE_ROOT)";
    let kubernetes = in_cluster()
        || args
            .kubernetes
            .operator
            .or(file.operator.enabled)
            .unwrap_or(false);
    let root = match args
        .export_file_root
        .clone()
        .or(file.export.file_root.clone())
    {
        Some(root) if root.as_os_str().is_empty() => return Ok(None),
        Some(root) => root,
        None if kubernetes => return Ok(None),
        None => match data_dir.parent() {
            Some(parent) => parent.join("exports"),
            None => return Ok(None),
        },
    };
    let comparable = |path: &Path| {
        comparable_path(path)
            .map_err(|error| invalid(key, &format!("cannot resolve {}: {error}", path.display())))
    };
    if paths_overlap(&comparable(&root)?, &comparable(data_dir)?) {
        return Err(invalid(
            key,
            &format!(
                "{} must neither contain nor lie inside the data directory {}",
                root.display(),
                data_dir.display()
            ),
        ));
    }
    Ok(Some(root))
}

impl Settings {
    /// Resolves flags/environment over the file over defaults, and validates the result.
    pub fn resolve(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let pick = |flag: Option<u64>, from_file: Option<u64>, default: u64| {
            flag.or(from_file).unwrap_or(default)
        };
        let storage = &file.storage;
        let data_dir = args
            .data_dir
            .clone()
            .or(storage.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        let listen_text = args
            .listen
            .clone()
            .or(file.server.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|error| ConfigError::Invalid {
                key: "listen (BIND_ADDRESS)",
                message: format!("'{listen_text}' is not host:port ({error})"),
            })?;
        let defaults = StoreConfig::with_data_dir(&data_dir);
        let commit_interval_ms = pick(
            args.commit_interval_ms,
            storage.commit_interval_ms,
            defaults.commit.interval.as_millis() as u64,
        );
        let commit_max_docs = pick(
            args.commit_max_docs,
            storage.commit_max_docs,
            defaults.commit.max_docs as u64,
        );
        let commit_max_bytes = pick(
            args.commit_max_bytes,
            storage.commit_max_bytes,
            defaults.commit.max_bytes as u64,
        );
        let index_threads = pick(
            args.index_threads,
            storage.index_threads,
            defaults.index_threads as u64,
        );
        let index_memory_mb = pick(
            args.index_memory_mb,
            storage.index_memory_mb,
            (defaults.index_memory_bytes >> 20) as u64,
        );
        let wal_segment_mb = pick(
            args.wal_segment_mb,
            storage.wal_segment_mb,
            defaults.wal_segment_bytes >> 20,
        );
        let max_body_bytes = pick(
            args.max_body_bytes,
            file.server.max_body_bytes,
            IngestLimits::default().max_body_bytes as u64,
        );
        let max_batch_events = pick(
            args.max_batch_events,
            file.server.max_batch_events,
            IngestLimits::default().max_batch_events as u64,
        );
        positive("commit_interval_ms", commit_interval_ms)?;
        positive("commit_max_docs", commit_max_docs)?;
        positive("commit_max_bytes", commit_max_bytes)?;
        positive("wal_segment_mb", wal_segment_mb)?;
        positive("max_body_bytes", max_body_bytes)?;
        positive("max_batch_events", max_batch_events)?;
        if !(1..=16).contains(&index_threads) {
            return Err(invalid("index_threads", "must be between 1 and 16"));
        }
        if index_memory_mb < MIN_INDEX_MEMORY_MB_PER_THREAD * index_threads {
            return Err(invalid(
                "index_memory_mb",
                &format!(
                    "must be at least {MIN_INDEX_MEMORY_MB_PER_THREAD} MiB per indexing thread ({} for {index_threads})",
                    MIN_INDEX_MEMORY_MB_PER_THREAD * index_threads
                ),
            ));
        }
        let tls = match (
            args.tls_cert_file
                .clone()
                .or(file.server.tls_cert_file.clone()),
            args.tls_key_file
                .clone()
                .or(file.server.tls_key_file.clone()),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls_cert_file/tls_key_file (TLS_CERT_FILE/TLS_KEY_FILE)",
                    "set both or neither",
                ));
            }
        };
        let jwks_url = args.jwks_url.clone().or(file.auth.jwks_url.clone());
        let jwks = match &jwks_url {
            Some(text) => Some(
                JwksSource::parse(text)
                    .map_err(|message| invalid("jwks_url (SCAIKEY_JWKS_URL)", &message))?,
            ),
            None => None,
        };
        let log_level = args
            .log_level
            .clone()
            .or(file.log.level.clone())
            .unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|error| {
            invalid("log_level (LOG_LEVEL)", &format!("'{log_level}': {error}"))
        })?;
        let log_format = match args
            .log_format
            .clone()
            .or(file.log.format.clone())
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format (LOG_FORMAT)",
                    &format!("'{other}' is not text or json"),
                ));
            }
        };
        let mut export = ExportSettings::resolve(args, &file.export)?;
        export.file_root = resolve_file_root(args, &file, &data_dir)?;
        let work = resolve_work_limits(args, &file.server)?;
        let auth = resolve_auth(args, &file.auth, jwks.is_some())?;
        Ok(Settings {
            listen,
            tls,
            store: StoreConfig {
                data_dir,
                commit: CommitPolicy {
                    interval: Duration::from_millis(commit_interval_ms),
                    max_docs: commit_max_docs as usize,
                    max_bytes: commit_max_bytes as usize,
                },
                index_memory_bytes: (index_memory_mb << 20) as usize,
                index_threads: index_threads as usize,
                wal_segment_bytes: wal_segment_mb << 20,
                request_queue: defaults.request_queue,
            },
            limits: IngestLimits {
                max_body_bytes: max_body_bytes as usize,
                max_batch_events: max_batch_events as usize,
            },
            tokens_file: args.tokens_file.clone().or(file.auth.tokens_file.clone()),
            jwks_url,
            jwks,
            jwt: auth.jwt,
            rate_limits: RateLimits {
                queries_per_minute: args
                    .rate_limit_queries_per_minute
                    .or(file.auth.rate_limit_queries_per_minute)
                    .unwrap_or(RateLimits::default().queries_per_minute),
                exports_per_minute: args
                    .rate_limit_exports_per_minute
                    .or(file.auth.rate_limit_exports_per_minute)
                    .unwrap_or(RateLimits::default().exports_per_minute),
            },
            export: export.clone(),
            log_level,
            log_format,
            operator: resolve_operator(
                &args.kubernetes,
                &file.operator,
                export.max_concurrent_jobs,
            )?,
            token_review: resolve_token_review(&args.kubernetes, file.auth.token_review.as_ref())?,
            work,
            jwt_allow_any_audience: auth.allow_any_audience,
            failed_auth_per_minute: auth.failed_auth_per_minute,
        })
    }

    /// The effective settings in the TOML file's shape (what `check-config` prints).
    pub fn to_file_config(&self) -> FileConfig {
        FileConfig {
            server: ServerSection {
                listen: Some(self.listen.to_string()),
                tls_cert_file: self.tls.as_ref().map(|(cert, _)| cert.clone()),
                tls_key_file: self.tls.as_ref().map(|(_, key)| key.clone()),
                max_body_bytes: Some(self.limits.max_body_bytes as u64),
                max_batch_events: Some(self.limits.max_batch_events as u64),
                max_concurrent_summaries: Some(self.work.max_concurrent_summaries as u64),
                max_concurrent_ingest_parses: Some(self.work.max_concurrent_ingest_parses as u64),
                busy_wait_ms: Some(self.work.permit_wait.as_millis() as u64),
            },
            storage: StorageSection {
                data_dir: Some(self.store.data_dir.clone()),
                commit_interval_ms: Some(self.store.commit.interval.as_millis() as u64),
                commit_max_docs: Some(self.store.commit.max_docs as u64),
                commit_max_bytes: Some(self.store.commit.max_bytes as u64),
                index_memory_mb: Some((self.store.index_memory_bytes >> 20) as u64),
                index_threads: Some(self.store.index_threads as u64),
                wal_segment_mb: Some(self.store.wal_segment_bytes >> 20),
            },
            auth: AuthSection {
                tokens_file: self.tokens_file.clone(),
                jwks_url: self.jwks_url.clone(),
                jwt_issuer: self.jwt.issuer.clone(),
                jwt_audience: self.jwt.audience.clone(),
                rate_limit_queries_per_minute: Some(self.rate_limits.queries_per_minute),
                rate_limit_exports_per_minute: Some(self.rate_limits.exports_per_minute),
                jwt_allow_any_audience: Some(self.jwt_allow_any_audience),
                jwks_refresh_seconds: Some(self.jwt.refresh_interval.as_secs()),
                failed_auth_per_minute: Some(self.failed_auth_per_minute),
                token_review: self.token_review.as_ref().map(token_review_section),
            },
            export: self.export.to_section(),
            log: LogSection {
                level: Some(self.log_level.clone()),
                format: Some(match self.log_format {
                    LogFormat::Text => "text".into(),
                    LogFormat::Json => "json".into(),
                }),
            },
            operator: OperatorSection {
                enabled: Some(self.operator.enabled),
                namespace: self.operator.namespace.clone(),
                lease_name: Some(self.operator.lease_name.clone()),
                namespaces: Some(self.operator.namespaces.clone()).filter(|list| !list.is_empty()),
            },
        }
    }
}

/// The global bounds on summaries and ingest parsing (`[server]`).
fn resolve_work_limits(
    args: &SettingsArgs,
    server: &ServerSection,
) -> Result<WorkLimits, ConfigError> {
    let defaults = WorkLimits::default();
    let summaries = args
        .max_concurrent_summaries
        .or(server.max_concurrent_summaries)
        .unwrap_or(defaults.max_concurrent_summaries as u64);
    let parses = args
        .max_concurrent_ingest_parses
        .or(server.max_concurrent_ingest_parses)
        .unwrap_or(defaults.max_concurrent_ingest_parses as u64);
    let wait_ms = args
        .busy_wait_ms
        .or(server.busy_wait_ms)
        .unwrap_or(defaults.permit_wait.as_millis() as u64);
    for (key, value) in [
        ("server.max_concurrent_summaries", summaries),
        ("server.max_concurrent_ingest_parses", parses),
    ] {
        if !(1..=1024).contains(&value) {
            return Err(invalid(key, "must be between 1 and 1024"));
        }
    }
    if wait_ms > 60_000 {
        return Err(invalid(
            "server.busy_wait_ms",
            "must be at most 60000 (one minute)",
        ));
    }
    Ok(WorkLimits {
        max_concurrent_summaries: summaries as usize,
        max_concurrent_ingest_parses: parses as usize,
        permit_wait: Duration::from_millis(wait_ms),
        summary_hold: Duration::from_millis(args.debug_summary_hold_ms.unwrap_or(0)),
    })
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

// === Authentication ===

/// The resolved JWT options and failed-authentication limit.
struct AuthSettings {
    jwt: JwtOptions,
    allow_any_audience: bool,
    failed_auth_per_minute: u32,
}

/// With a JWKS, a JWT audience is required unless any audience is explicitly allowed: ScaiKey
/// signs the tokens of every service with the same keys.
fn resolve_auth(
    args: &SettingsArgs,
    file: &AuthSection,
    jwks_configured: bool,
) -> Result<AuthSettings, ConfigError> {
    let audience = args
        .jwt_audience
        .clone()
        .or(file.jwt_audience.clone())
        .filter(|audience| !audience.is_empty());
    let allow_any_audience = args
        .jwt_allow_any_audience
        .or(file.jwt_allow_any_audience)
        .unwrap_or(false);
    if jwks_configured && audience.is_none() && !allow_any_audience {
        return Err(invalid(
            "jwt_audience (--jwt-audience, SCAIVAULT_AUDIT_JWT_AUDIENCE)",
            "is required when jwks_url is set, so that JWTs ScaiKey issued for other services \
             are refused; to accept every audience, set jwt_allow_any_audience = true \
             (--jwt-allow-any-audience, SCAIVAULT_AUDIT_JWT_ALLOW_ANY_AUDIENCE)",
        ));
    }
    let refresh_seconds = args
        .jwks_refresh_seconds
        .or(file.jwks_refresh_seconds)
        .unwrap_or(crate::auth::jwt::DEFAULT_REFRESH_INTERVAL.as_secs());
    positive("jwks_refresh_seconds", refresh_seconds)?;
    Ok(AuthSettings {
        jwt: JwtOptions {
            issuer: args.jwt_issuer.clone().or(file.jwt_issuer.clone()),
            audience,
            refresh_interval: Duration::from_secs(refresh_seconds),
            ..JwtOptions::default()
        },
        allow_any_audience,
        failed_auth_per_minute: args
            .failed_auth_per_minute
            .or(file.failed_auth_per_minute)
            .unwrap_or(crate::auth::failures::DEFAULT_FAILED_AUTH_PER_MINUTE),
    })
}

// === Kubernetes: operator and TokenReview ===

/// Default lease of the operator's leader election.
pub const DEFAULT_LEASE_NAME: &str = "scaivault-audit-operator";

/// Whether the process runs in a Kubernetes pod (the API server's service is in the env).
fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The operator runs at most `max_concurrent_exports` jobs: `[export] max_concurrent_jobs`,
/// the same limit as the standalone runner's.
fn resolve_operator(
    args: &KubernetesArgs,
    file: &OperatorSection,
    max_concurrent_exports: usize,
) -> Result<OperatorSettings, ConfigError> {
    let identity = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("scaivault-audit-{}", std::process::id()));
    Ok(OperatorSettings {
        enabled: args.operator.or(file.enabled).unwrap_or_else(in_cluster),
        namespace: args.operator_namespace.clone().or(file.namespace.clone()),
        max_concurrent_exports,
        lease_name: file
            .lease_name
            .clone()
            .unwrap_or_else(|| DEFAULT_LEASE_NAME.into()),
        identity,
        namespaces: operator_namespaces(args, file)?,
    })
}

/// `[operator] namespaces`: DNS labels (RFC 1123), without duplicates, in the given order.
fn operator_namespaces(
    args: &KubernetesArgs,
    file: &OperatorSection,
) -> Result<Vec<String>, ConfigError> {
    let given = args
        .operator_namespaces
        .clone()
        .or(file.namespaces.clone())
        .unwrap_or_default();
    let mut namespaces: Vec<String> = Vec::with_capacity(given.len());
    for namespace in given.iter().map(|name| name.trim()) {
        let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        let valid = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace.chars().all(label)
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !valid {
            return Err(invalid(
                "operator.namespaces",
                &format!("'{namespace}' is not a namespace name (RFC 1123 label)"),
            ));
        }
        if !namespaces.iter().any(|known| known == namespace) {
            namespaces.push(namespace.to_string());
        }
    }
    Ok(namespaces)
}

fn resolve_token_review(
    args: &KubernetesArgs,
    file: Option<&TokenReviewSection>,
) -> Result<Option<crate::auth::token_review::TokenReviewSettings>, ConfigError> {
    use crate::auth::token_review::{Binding, TokenReviewSettings};
    use crate::auth::{Scope, TenantAccess};
    let enabled = args
        .token_review
        .or(file.and_then(|f| f.enabled))
        .unwrap_or(false);
    if !enabled {
        return Ok(None);
    }
    let key = "auth.token_review.bindings";
    let mut bindings = Vec::new();
    for binding in file.map(|f| f.bindings.as_slice()).unwrap_or_default() {
        let account = &binding.service_account;
        if account.split('/').filter(|part| !part.is_empty()).count() != 2
            || account.matches('/').count() != 1
        {
            return Err(invalid(
                key,
                &format!("service_account '{account}' is not namespace/name"),
            ));
        }
        let scopes = binding
            .scopes
            .iter()
            .map(|scope| {
                Scope::parse(scope).ok_or_else(|| invalid(key, &format!("unknown scope '{scope}'")))
            })
            .collect::<Result<_, _>>()?;
        let tenants = match (&binding.tenant_id, binding.all_tenants.unwrap_or(false)) {
            (Some(tenant), false) => {
                crate::event::check_tenant_id(tenant)
                    .map_err(|message| invalid(key, &format!("tenant_id: {message}")))?;
                TenantAccess::One(tenant.clone())
            }
            (None, true) => TenantAccess::All,
            _ => {
                return Err(invalid(
                    key,
                    &format!("{account}: give tenant_id or all_tenants = true"),
                ));
            }
        };
        bindings.push(Binding {
            service_account: account.clone(),
            scopes,
            tenants,
        });
    }
    Ok(Some(TokenReviewSettings {
        audience: args
            .token_review_audience
            .clone()
            .or(file.and_then(|f| f.audience.clone()))
            .filter(|audience| !audience.is_empty()),
        bindings,
        issuer: args
            .token_review_issuer
            .clone()
            .or(file.and_then(|f| f.issuer.clone()))
            .filter(|issuer| !issuer.is_empty())
            .unwrap_or_else(|| crate::auth::token_review::DEFAULT_ISSUER.to_string()),
    }))
}

fn token_review_section(
    settings: &crate::auth::token_review::TokenReviewSettings,
) -> TokenReviewSection {
    use crate::auth::TenantAccess;
    TokenReviewSection {
        enabled: Some(true),
        audience: settings.audience.clone(),
        issuer: Some(settings.issuer.clone()),
        bindings: settings
            .bindings
            .iter()
            .map(|binding| TokenReviewBindingSection {
                service_account: binding.service_account.clone(),
                scopes: binding
                    .scopes
                    .iter()
                    .map(|scope| scope.as_str().to_string())
                    .collect(),
                tenant_id: match &binding.tenants {
                    TenantAccess::One(tenant) => Some(tenant.clone()),
                    TenantAccess::All => None,
                },
                all_tenants: matches!(binding.tenants, TenantAccess::All).then_some(true),
            })
            .collect(),
    }
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_standalone_setup() {
        let settings = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(settings.store.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.store.commit.interval, Duration::from_millis(500));
        assert_eq!(settings.limits, IngestLimits::default());
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(settings.work, WorkLimits::default());
    }

    #[test]
    fn work_limits_come_from_the_server_section_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nmax_concurrent_summaries = 2\nmax_concurrent_ingest_parses = 3\nbusy_wait_ms = 10\n",
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path),
            max_concurrent_summaries: Some(5),
            ..Default::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.work.max_concurrent_summaries, 5);
        assert_eq!(settings.work.max_concurrent_ingest_parses, 3);
        assert_eq!(settings.work.permit_wait, Duration::from_millis(10));
        let printed = settings.to_file_config().server;
        assert_eq!(printed.max_concurrent_ingest_parses, Some(3));
        let zero = SettingsArgs {
            max_concurrent_ingest_parses: Some(0),
            ..Default::default()
        };
        assert!(
            Settings::resolve(&zero)
                .unwrap_err()
                .to_string()
                .contains("max_concurrent_ingest_parses")
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"0.0.0.0:9000\"\n[storage]\ndata_dir = \"/var/lib/a\"\ncommit_interval_ms = 250\n[log]\nformat = \"json\"\n").unwrap();
        let args = SettingsArgs {
            config: Some(path),
            commit_interval_ms: Some(100),
            ..Default::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.store.data_dir, PathBuf::from("/var/lib/a"));
        assert_eq!(settings.store.commit.interval, Duration::from_millis(100));
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let cases = [
            (
                SettingsArgs {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                SettingsArgs {
                    commit_interval_ms: Some(0),
                    ..Default::default()
                },
                "commit_interval_ms",
            ),
            (
                SettingsArgs {
                    index_threads: Some(4),
                    index_memory_mb: Some(20),
                    ..Default::default()
                },
                "index_memory_mb",
            ),
            (
                SettingsArgs {
                    log_format: Some("xml".into()),
                    ..Default::default()
                },
                "log_format",
            ),
            (
                SettingsArgs {
                    log_level: Some("info,[".into()),
                    ..Default::default()
                },
                "log_level",
            ),
        ];
        for (args, key) in cases {
            let error = Settings::resolve(&args).unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn operator_namespaces_are_checked_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[operator]\nnamespaces = [\"team-a\"]\n").unwrap();
        let from_file = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&from_file).unwrap();
        assert_eq!(settings.operator.namespaces, ["team-a"]);
        let reloaded = toml::to_string(&settings.to_file_config()).unwrap();
        assert!(reloaded.contains("namespaces = [\"team-a\"]"), "{reloaded}");
        let mut flag = from_file.clone();
        flag.kubernetes.operator_namespaces =
            Some(vec!["team-b".into(), " team-c".into(), "team-b".into()]);
        let settings = Settings::resolve(&flag).unwrap();
        assert_eq!(settings.operator.namespaces, ["team-b", "team-c"]);
        for bad in ["Team_B", "", "-a", "a.b"] {
            flag.kubernetes.operator_namespaces = Some(vec![bad.into()]);
            let error = Settings::resolve(&flag).unwrap_err().to_string();
            assert!(error.contains("operator.namespaces"), "{bad}: {error}");
        }
        let defaults = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert!(defaults.operator.namespaces.is_empty());
    }

    #[test]
    fn unknown_file_keys_are_errors_and_the_printed_config_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\ncommit_intervall_ms = 5\n").unwrap();
        let args = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(
            Settings::resolve(&args)
                .unwrap_err()
                .to_string()
                .contains("commit_intervall_ms")
        );
        let printed = toml::to_string(
            &Settings::resolve(&SettingsArgs::default())
                .unwrap()
                .to_file_config(),
        )
        .unwrap();
        std::fs::write(&path, printed).unwrap();
        assert!(Settings::resolve(&args).is_ok());
    }

    #[test]
    fn the_file_root_defaults_beside_the_data_dir_and_is_unset_for_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let standalone = SettingsArgs {
            data_dir: Some(data.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&standalone).unwrap();
        assert_eq!(settings.export.file_root, Some(dir.path().join("exports")));
        assert_eq!(
            settings.export.credentials_path_prefixes,
            ["tenants/{tenant_id}/"]
        );
        let operator = SettingsArgs {
            data_dir: Some(data.clone()),
            kubernetes: KubernetesArgs {
                operator: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(Settings::resolve(&operator).unwrap().export.file_root, None);
        let explicit = SettingsArgs {
            export_file_root: Some(dir.path().join("out")),
            ..operator.clone()
        };
        assert_eq!(
            Settings::resolve(&explicit).unwrap().export.file_root,
            Some(dir.path().join("out"))
        );
        let disabled = SettingsArgs {
            export_file_root: Some(PathBuf::new()),
            ..standalone
        };
        assert_eq!(Settings::resolve(&disabled).unwrap().export.file_root, None);
    }

    #[test]
    fn the_file_root_may_not_overlap_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("alias")).unwrap();
        for root in [
            data.join("exports"),
            dir.path().to_path_buf(),
            data.clone(),
            dir.path().join("alias/sub"),
            dir.path().join("other/../data/x"),
        ] {
            let args = SettingsArgs {
                data_dir: Some(data.clone()),
                export_file_root: Some(root.clone()),
                ..Default::default()
            };
            let error = Settings::resolve(&args).unwrap_err().to_string();
            assert!(error.contains("export.file_root"), "{root:?}: {error}");
        }
    }

    #[test]
    fn credentials_prefixes_are_checked_and_round_trip() {
        let args = SettingsArgs {
            export_credentials_path_prefixes: Some(vec![
                "tenants/{tenant_id}/".into(),
                "infra/aws/audit-export-writer".into(),
            ]),
            ..Default::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.export.credentials_path_prefixes.len(), 2);
        let printed = toml::to_string(&settings.to_file_config()).unwrap();
        assert!(
            printed.contains("infra/aws/audit-export-writer"),
            "{printed}"
        );
        let bad = SettingsArgs {
            export_credentials_path_prefixes: Some(vec!["/abs/".into()]),
            ..Default::default()
        };
        let error = Settings::resolve(&bad).unwrap_err().to_string();
        assert!(error.contains("credentials_path_prefixes"), "{error}");
    }

    #[test]
    fn the_shipped_config_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scaivault-audit.toml");
        let args = SettingsArgs {
            config: Some(path),
            ..Default::default()
        };
        let from_file = Settings::resolve(&args).unwrap().to_file_config();
        let defaults = Settings::resolve(&SettingsArgs::default())
            .unwrap()
            .to_file_config();
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn a_jwks_needs_an_audience_unless_any_audience_is_allowed() {
        let jwks = || SettingsArgs {
            jwks_url: Some("file:///etc/jwks.json".into()),
            ..Default::default()
        };
        let error = Settings::resolve(&jwks()).unwrap_err().to_string();
        assert!(error.contains("jwt_audience"), "{error}");
        assert!(error.contains("jwt_allow_any_audience"), "{error}");
        let allowed = Settings::resolve(&SettingsArgs {
            jwt_allow_any_audience: Some(true),
            ..jwks()
        })
        .unwrap();
        assert_eq!(allowed.jwt.audience, None);
        let with_audience = Settings::resolve(&SettingsArgs {
            jwt_audience: Some("scaivault-audit".into()),
            jwks_refresh_seconds: Some(60),
            ..jwks()
        })
        .unwrap();
        assert_eq!(with_audience.jwt.refresh_interval, Duration::from_secs(60));
        let error = Settings::resolve(&SettingsArgs {
            jwt_audience: Some("scaivault-audit".into()),
            jwks_refresh_seconds: Some(0),
            ..jwks()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("jwks_refresh_seconds"), "{error}");
    }
}
