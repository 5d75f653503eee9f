//! `[export]`: where export credentials come from, how export jobs run, and what exports may
//! reach (destination endpoints, the `file` root, credentials paths).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::Args;
use clap::builder::TypedValueParser;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};
use crate::export::schedule::{DEFAULT_MIN_INTERVAL_SECONDS, MAX_MIN_INTERVAL_SECONDS};

/// Placeholder of `credentials_path_prefixes`, replaced by the export's tenant id.
pub const TENANT_PLACEHOLDER: &str = "{tenant_id}";

/// The default of `credentials_path_prefixes`: each tenant reads only its own subtree.
pub const DEFAULT_CREDENTIALS_PATH_PREFIX: &str = "tenants/{tenant_id}/";

/// `[export]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSection {
    /// ScaiVault base URL, for reading export destination credentials.
    #[arg(
        id = "export.scaivault_url",
        long = "scaivault-url",
        env = "SCAIVAULT_URL",
        value_name = "URL"
    )]
    pub scaivault_url: Option<String>,
    /// File holding the service's ScaiVault token (re-read when it changes).
    #[arg(
        id = "export.scaivault_token_file",
        long = "scaivault-token-file",
        env = "SCAIVAULT_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub scaivault_token_file: Option<PathBuf>,
    /// Development credentials backend: `DIR/<secret path>.json` documents instead of ScaiVault.
    #[arg(
        id = "export.credentials_dir",
        long = "credentials-dir",
        env = "SCAIVAULT_AUDIT_CREDENTIALS_DIR",
        value_name = "DIR"
    )]
    pub credentials_dir: Option<PathBuf>,
    /// Export jobs running at once.
    #[arg(
        id = "export.max_concurrent_jobs",
        long = "export-max-concurrent-jobs",
        env = "SCAIVAULT_AUDIT_EXPORT_MAX_CONCURRENT_JOBS",
        value_name = "N"
    )]
    pub max_concurrent_jobs: Option<u64>,
    /// How long an export keeps retrying transient failures before it fails (seconds).
    #[arg(
        id = "export.retry_max_seconds",
        long = "export-retry-max-seconds",
        env = "SCAIVAULT_AUDIT_EXPORT_RETRY_MAX_SECONDS",
        value_name = "SECONDS"
    )]
    pub retry_max_seconds: Option<u64>,
    /// Let exports connect to loopback, link-local, private and other non-public endpoints
    /// (development and emulators only).
    #[arg(
        id = "export.allow_private_endpoints",
        long = "export-allow-private-endpoints",
        env = "SCAIVAULT_AUDIT_EXPORT_ALLOW_PRIVATE_ENDPOINTS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_private_endpoints: Option<bool>,
    /// Destination hosts exports may reach even when they resolve to non-public addresses
    /// (comma-separated names or IP literals).
    #[arg(
        id = "export.endpoint_allowlist",
        long = "export-endpoint-allowlist",
        env = "SCAIVAULT_AUDIT_EXPORT_ENDPOINT_ALLOWLIST",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub endpoint_allowlist: Option<Vec<String>>,
    /// Directory holding every `file` export destination (`bucket` is a sub-directory of it);
    /// empty disables them. Default: `exports` beside the data directory; unset in Kubernetes.
    #[arg(
        id = "export.file_root",
        long = "export-file-root",
        env = "SCAIVAULT_AUDIT_EXPORT_FILE_ROOT",
        value_name = "DIR",
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    pub file_root: Option<PathBuf>,
    /// ScaiVault path prefixes export credentials may be read from, comma-separated;
    /// `{tenant_id}` is replaced by the export's tenant (default `tenants/{tenant_id}/`).
    #[arg(
        id = "export.credentials_path_prefixes",
        long = "export-credentials-path-prefixes",
        env = "SCAIVAULT_AUDIT_EXPORT_CREDENTIALS_PATH_PREFIXES",
        value_name = "PREFIXES",
        value_delimiter = ','
    )]
    pub credentials_path_prefixes: Option<Vec<String>>,
    /// The shortest interval between two runs of an export schedule a tenant may ask for
    /// (seconds, 1 to 86400; default 60).
    #[arg(
        id = "export.schedule_min_interval_seconds",
        long = "export-schedule-min-interval-seconds",
        env = "SCAIVAULT_AUDIT_EXPORT_SCHEDULE_MIN_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub schedule_min_interval_seconds: Option<u64>,
}

super::layered!(ExportSection {
    scaivault_url,
    scaivault_token_file,
    credentials_dir,
    max_concurrent_jobs,
    retry_max_seconds,
    allow_private_endpoints,
    endpoint_allowlist,
    file_root,
    credentials_path_prefixes,
    schedule_min_interval_seconds,
});

/// Which endpoints exports may reach: `[export] allow_private_endpoints` and
/// `[export] endpoint_allowlist` (checked by `export::sink::endpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Every address is allowed (development, emulators).
    pub allow_private: bool,
    /// Hosts (names or IP literals, compared case-insensitively) allowed whatever they
    /// resolve to.
    pub allowlist: Vec<String>,
}

/// Where export credentials come from, and how export jobs run: the resolved `[export]`.
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
    /// The shortest interval between two runs of an export schedule, seconds.
    pub schedule_min_interval_seconds: u64,
}

impl ExportSettings {
    pub const DEFAULT_MAX_CONCURRENT_JOBS: u64 = 2;
    pub const DEFAULT_RETRY_MAX_SECONDS: u64 = 900;

    /// The effective section, every key set.
    pub fn to_section(&self) -> ExportSection {
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
            schedule_min_interval_seconds: Some(self.schedule_min_interval_seconds),
        }
    }
}

impl ExportSection {
    /// Defaults filled in and every value checked. The `file` root's default depends on the
    /// data directory and on whether the service runs in Kubernetes.
    pub fn resolve(
        &self,
        data_dir: &Path,
        kubernetes: bool,
    ) -> Result<ExportSettings, ConfigError> {
        let scaivault_url = self.scaivault_url.clone();
        let scaivault_token_file = self.scaivault_token_file.clone();
        let credentials_dir = self.credentials_dir.clone();
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
        let max_concurrent_jobs = self
            .max_concurrent_jobs
            .unwrap_or(ExportSettings::DEFAULT_MAX_CONCURRENT_JOBS);
        if !(1..=64).contains(&max_concurrent_jobs) {
            return Err(invalid(
                "export.max_concurrent_jobs",
                "must be between 1 and 64",
            ));
        }
        let retry_max_seconds = self
            .retry_max_seconds
            .unwrap_or(ExportSettings::DEFAULT_RETRY_MAX_SECONDS);
        positive("export.retry_max_seconds", retry_max_seconds)?;
        let schedule_min_interval_seconds = self
            .schedule_min_interval_seconds
            .unwrap_or(DEFAULT_MIN_INTERVAL_SECONDS);
        if !(1..=MAX_MIN_INTERVAL_SECONDS).contains(&schedule_min_interval_seconds) {
            return Err(invalid(
                "export.schedule_min_interval_seconds \
                 (SCAIVAULT_AUDIT_EXPORT_SCHEDULE_MIN_INTERVAL_SECONDS)",
                &format!("must be between 1 and {MAX_MIN_INTERVAL_SECONDS}"),
            ));
        }
        Ok(ExportSettings {
            schedule_min_interval_seconds,
            scaivault_url,
            scaivault_token_file,
            credentials_dir,
            max_concurrent_jobs: max_concurrent_jobs as usize,
            retry_max_elapsed: Duration::from_secs(retry_max_seconds),
            endpoints: self.endpoint_policy()?,
            file_root: self.file_root(data_dir, kubernetes)?,
            credentials_path_prefixes: self.credentials_prefixes()?,
        })
    }

    /// `allow_private_endpoints` and `endpoint_allowlist`: off and empty by default;
    /// allowlist entries are host names or IP literals.
    fn endpoint_policy(&self) -> Result<EndpointPolicy, ConfigError> {
        let mut allowlist = Vec::new();
        for entry in self.endpoint_allowlist.iter().flatten() {
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
                    &format!(
                        "'{entry}' is not a host name or IP address (no scheme, port or path)"
                    ),
                ));
            }
            allowlist.push(bare.to_ascii_lowercase());
        }
        Ok(EndpointPolicy {
            allow_private: self.allow_private_endpoints.unwrap_or(false),
            allowlist,
        })
    }

    /// `credentials_path_prefixes`: every entry checked; empty entries are dropped (an empty
    /// list allows no credentials path at all).
    fn credentials_prefixes(&self) -> Result<Vec<String>, ConfigError> {
        let key =
            "export.credentials_path_prefixes (SCAIVAULT_AUDIT_EXPORT_CREDENTIALS_PATH_PREFIXES)";
        let prefixes: Vec<String> = self
            .credentials_path_prefixes
            .clone()
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

    /// `file_root`: explicit (empty disables), else `exports` beside the data directory
    /// standalone and unset in Kubernetes (in a pod, or with the operator on). It may neither
    /// contain nor lie inside the data directory (job files, spool and WAL live there).
    fn file_root(&self, data_dir: &Path, kubernetes: bool) -> Result<Option<PathBuf>, ConfigError> {
        let key = "export.file_root (SCAIVAULT_AUDIT_EXPORT_FILE_ROOT)";
        let root = match self.file_root.clone() {
            Some(root) if root.as_os_str().is_empty() => return Ok(None),
            Some(root) => root,
            None if kubernetes => return Ok(None),
            None => match data_dir.parent() {
                Some(parent) => parent.join("exports"),
                None => return Ok(None),
            },
        };
        let comparable = |path: &Path| {
            comparable_path(path).map_err(|error| {
                invalid(key, &format!("cannot resolve {}: {error}", path.display()))
            })
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
}

/// Checks one entry of `credentials_path_prefixes`: ScaiVault path characters, relative, and
/// no placeholder other than [`TENANT_PLACEHOLDER`].
pub fn check_credentials_prefix(prefix: &str) -> Result<(), String> {
    let bare = prefix.replace(TENANT_PLACEHOLDER, "t");
    if bare.is_empty() {
        return Err("an empty prefix would allow every secret; list the allowed subtrees".into());
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'/');
    if !bare.bytes().all(allowed) {
        return Err(format!(
            "'{prefix}' may only contain a-z 0-9 - _ / and the placeholder {TENANT_PLACEHOLDER}"
        ));
    }
    if bare.starts_with('/') || bare.contains("//") {
        return Err(format!(
            "'{prefix}' must be relative, without empty segments"
        ));
    }
    Ok(())
}

/// `path` made absolute and lexically normalised, with its longest existing ancestor's
/// symbolic links resolved: comparable with another such path even before either exists.
pub fn comparable_path(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut existing = normal.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                let mut resolved = canonical;
                for name in rest.iter().rev() {
                    resolved.push(name);
                }
                return Ok(resolved);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(normal),
            },
        }
    }
}

/// Whether one of the two directories contains the other (or they are the same).
pub fn paths_overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
