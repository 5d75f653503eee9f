//! `[cluster]`: the clustered mode on NATS JetStream (docs/cluster.md). Without `nats_url` the
//! service runs embedded (its own WAL) and every other key of this section is ignored.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default JetStream stream name.
pub const DEFAULT_STREAM: &str = "SCAIVAULT_AUDIT";
/// Default subject the events are published to.
pub const DEFAULT_SUBJECT: &str = "scaivault.audit.events";
/// Default stream replicas: a quorum of 2 survives one NATS node.
pub const DEFAULT_REPLICAS: u64 = 3;
/// Default window the stream keeps: 7 days.
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 7 * 24 * 3600;
/// Shortest window the stream may keep (JetStream also needs it to be at least the duplicate
/// window). Short windows are for tests and drills: a replica away for longer than the window
/// must restore an index snapshot (docs/cluster.md).
pub const MIN_MAX_AGE_SECONDS: u64 = 10;
/// Default bound of the stream's size: 16 GiB (then ingest answers 503, never drops).
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// Default deadline of one publish, from the request to JetStream's acknowledgement.
pub const DEFAULT_PUBLISH_TIMEOUT_MS: u64 = 2000;
/// Default JetStream duplicate window (NATS' own default).
pub const DEFAULT_DUPLICATE_WINDOW_SECONDS: u64 = 120;
/// Default lag (stream messages not yet committed here) above which a replica is not ready.
pub const DEFAULT_MAX_LAG_MESSAGES: u64 = 10_000;
/// Default TTL of the coordination leases (a dead runner's jobs move after about this long).
pub const DEFAULT_LEASE_TTL_SECONDS: u64 = 15;
/// Default key-value bucket of the coordination leases.
pub const DEFAULT_LEASES_BUCKET: &str = "SCAIVAULT_AUDIT_LEASES";
/// Default key-value bucket of the shared export job records.
pub const DEFAULT_EXPORTS_BUCKET: &str = "SCAIVAULT_AUDIT_EXPORTS";
/// Default key-value bucket of the retention sweeper's published expiries.
pub const DEFAULT_SWEEPS_BUCKET: &str = "SCAIVAULT_AUDIT_SWEEPS";
/// Default key-value bucket of the newest export manifest per destination family.
pub const DEFAULT_MANIFEST_LINKS_BUCKET: &str = "SCAIVAULT_AUDIT_MANIFEST_LINKS";
/// Default key-value bucket of the shared export schedules.
pub const DEFAULT_SCHEDULES_BUCKET: &str = "SCAIVAULT_AUDIT_SCHEDULES";

/// `[cluster]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS server URLs, comma-separated (`nats://h1:4222,nats://h2:4222`). Setting it switches
    /// the log from the local WAL to JetStream (docs/cluster.md).
    #[arg(
        id = "cluster.nats_url",
        long = "nats-url",
        env = "SCAIVAULT_AUDIT_NATS_URL",
        value_name = "URLS"
    )]
    pub nats_url: Option<String>,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(
        id = "cluster.credentials_file",
        long = "nats-credentials-file",
        env = "SCAIVAULT_AUDIT_NATS_CREDENTIALS_FILE",
        value_name = "FILE"
    )]
    pub credentials_file: Option<PathBuf>,
    /// CA certificates (PEM) that verify the NATS servers; setting it requires TLS.
    #[arg(
        id = "cluster.tls_ca_file",
        long = "nats-tls-ca-file",
        env = "SCAIVAULT_AUDIT_NATS_TLS_CA_FILE",
        value_name = "FILE"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for NATS mutual TLS (with `tls_key_file`).
    #[arg(
        id = "cluster.tls_cert_file",
        long = "nats-tls-cert-file",
        env = "SCAIVAULT_AUDIT_NATS_TLS_CERT_FILE",
        value_name = "FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for NATS mutual TLS (with `tls_cert_file`).
    #[arg(
        id = "cluster.tls_key_file",
        long = "nats-tls-key-file",
        env = "SCAIVAULT_AUDIT_NATS_TLS_KEY_FILE",
        value_name = "FILE"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// JetStream stream holding the events (created if missing).
    #[arg(
        id = "cluster.stream",
        long = "nats-stream",
        env = "SCAIVAULT_AUDIT_NATS_STREAM",
        value_name = "NAME"
    )]
    pub stream: Option<String>,
    /// Subject the events are published to (the stream's only subject).
    #[arg(
        id = "cluster.subject",
        long = "nats-subject",
        env = "SCAIVAULT_AUDIT_NATS_SUBJECT",
        value_name = "SUBJECT"
    )]
    pub subject: Option<String>,
    /// Stream replicas (1..=5); an existing stream with fewer stops the start.
    #[arg(
        id = "cluster.replicas",
        long = "nats-replicas",
        env = "SCAIVAULT_AUDIT_NATS_REPLICAS",
        value_name = "N"
    )]
    pub replicas: Option<u64>,
    /// Seconds the stream keeps events (its window for replicas that fall behind; at least 10
    /// and at least the duplicate window).
    #[arg(
        id = "cluster.max_age_seconds",
        long = "nats-max-age-seconds",
        env = "SCAIVAULT_AUDIT_NATS_MAX_AGE_SECONDS",
        value_name = "SECONDS"
    )]
    pub max_age_seconds: Option<u64>,
    /// Bytes the stream may hold; when full, ingest answers 503 (`discard: new`).
    #[arg(
        id = "cluster.max_bytes",
        long = "nats-max-bytes",
        env = "SCAIVAULT_AUDIT_NATS_MAX_BYTES",
        value_name = "BYTES"
    )]
    pub max_bytes: Option<u64>,
    /// Milliseconds an ingest request waits for JetStream's acknowledgement before 503.
    #[arg(
        id = "cluster.publish_timeout_ms",
        long = "nats-publish-timeout-ms",
        env = "SCAIVAULT_AUDIT_NATS_PUBLISH_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub publish_timeout_ms: Option<u64>,
    /// Seconds JetStream remembers a request's message id (a retried request is stored once).
    #[arg(
        id = "cluster.duplicate_window_seconds",
        long = "nats-duplicate-window-seconds",
        env = "SCAIVAULT_AUDIT_NATS_DUPLICATE_WINDOW_SECONDS",
        value_name = "SECONDS"
    )]
    pub duplicate_window_seconds: Option<u64>,
    /// Stream messages this replica may be behind before it reports not ready.
    #[arg(
        id = "cluster.max_lag_messages",
        long = "cluster-max-lag-messages",
        env = "SCAIVAULT_AUDIT_CLUSTER_MAX_LAG_MESSAGES",
        value_name = "N"
    )]
    pub max_lag_messages: Option<u64>,
    /// This replica's stable id: names its durable consumer. Default: the host (pod) name.
    #[arg(
        id = "cluster.replica_id",
        long = "replica-id",
        env = "SCAIVAULT_AUDIT_REPLICA_ID",
        value_name = "ID"
    )]
    pub replica_id: Option<String>,
    /// Key file that seals query cursors, the same on every replica (a mounted Kubernetes
    /// Secret): one key of 64 hex digits a line, the first signs, every one is accepted.
    /// Required by `serve` in the clustered mode, so that a cursor from one replica continues
    /// on another.
    #[arg(
        id = "cluster.cursor_key_file",
        long = "cursor-key-file",
        env = "SCAIVAULT_AUDIT_CURSOR_KEY_FILE",
        value_name = "FILE"
    )]
    pub cursor_key_file: Option<PathBuf>,
    /// Seconds a coordination lease (an export job's runner, a cluster-wide role) lives
    /// without renewal: how long a dead replica's work waits before another takes it.
    #[arg(
        id = "cluster.lease_ttl_seconds",
        long = "cluster-lease-ttl-seconds",
        env = "SCAIVAULT_AUDIT_CLUSTER_LEASE_TTL_SECONDS",
        value_name = "SECONDS"
    )]
    pub lease_ttl_seconds: Option<u64>,
    /// JetStream key-value bucket of the coordination leases (created if missing).
    #[arg(
        id = "cluster.leases_bucket",
        long = "cluster-leases-bucket",
        env = "SCAIVAULT_AUDIT_CLUSTER_LEASES_BUCKET",
        value_name = "NAME"
    )]
    pub leases_bucket: Option<String>,
    /// JetStream key-value bucket of the shared export job records (created if missing).
    #[arg(
        id = "cluster.exports_bucket",
        long = "cluster-exports-bucket",
        env = "SCAIVAULT_AUDIT_CLUSTER_EXPORTS_BUCKET",
        value_name = "NAME"
    )]
    pub exports_bucket: Option<String>,
    /// JetStream key-value bucket where the retention sweeper publishes each tenant's newest
    /// expiry for the other replicas (created if missing).
    #[arg(
        id = "cluster.sweeps_bucket",
        long = "cluster-sweeps-bucket",
        env = "SCAIVAULT_AUDIT_CLUSTER_SWEEPS_BUCKET",
        value_name = "NAME"
    )]
    pub sweeps_bucket: Option<String>,
    /// JetStream key-value bucket of the newest export manifest per destination family, so
    /// that manifests chain across replicas (created if missing).
    #[arg(
        id = "cluster.manifest_links_bucket",
        long = "cluster-manifest-links-bucket",
        env = "SCAIVAULT_AUDIT_CLUSTER_MANIFEST_LINKS_BUCKET",
        value_name = "NAME"
    )]
    pub manifest_links_bucket: Option<String>,
    /// JetStream key-value bucket of the shared export schedules (created if missing).
    #[arg(
        id = "cluster.schedules_bucket",
        long = "cluster-schedules-bucket",
        env = "SCAIVAULT_AUDIT_CLUSTER_SCHEDULES_BUCKET",
        value_name = "NAME"
    )]
    pub schedules_bucket: Option<String>,
}

super::layered!(ClusterSection {
    nats_url,
    credentials_file,
    tls_ca_file,
    tls_cert_file,
    tls_key_file,
    stream,
    subject,
    replicas,
    max_age_seconds,
    max_bytes,
    publish_timeout_ms,
    duplicate_window_seconds,
    max_lag_messages,
    replica_id,
    cursor_key_file,
    lease_ttl_seconds,
    leases_bucket,
    exports_bucket,
    sweeps_bucket,
    manifest_links_bucket,
    schedules_bucket,
});

/// The resolved `[cluster]` section (only when `nats_url` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The NATS servers, as given (comma-separated list split).
    pub nats_urls: Vec<String>,
    pub credentials_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub stream: String,
    pub subject: String,
    pub replicas: usize,
    pub max_age: Duration,
    pub max_bytes: u64,
    pub publish_timeout: Duration,
    pub duplicate_window: Duration,
    pub max_lag_messages: u64,
    pub replica_id: String,
    /// The shared cursor key file (`serve` refuses the clustered mode without one).
    pub cursor_key_file: Option<PathBuf>,
    /// TTL of the coordination leases.
    pub lease_ttl: Duration,
    pub leases_bucket: String,
    pub exports_bucket: String,
    pub sweeps_bucket: String,
    pub manifest_links_bucket: String,
    pub schedules_bucket: String,
}

impl ClusterSettings {
    /// The effective section, every key set.
    pub fn to_section(&self) -> ClusterSection {
        ClusterSection {
            nats_url: Some(self.nats_urls.join(",")),
            credentials_file: self.credentials_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_client.as_ref().map(|(cert, _)| cert.clone()),
            tls_key_file: self.tls_client.as_ref().map(|(_, key)| key.clone()),
            stream: Some(self.stream.clone()),
            subject: Some(self.subject.clone()),
            replicas: Some(self.replicas as u64),
            max_age_seconds: Some(self.max_age.as_secs()),
            max_bytes: Some(self.max_bytes),
            publish_timeout_ms: Some(self.publish_timeout.as_millis() as u64),
            duplicate_window_seconds: Some(self.duplicate_window.as_secs()),
            max_lag_messages: Some(self.max_lag_messages),
            replica_id: Some(self.replica_id.clone()),
            cursor_key_file: self.cursor_key_file.clone(),
            lease_ttl_seconds: Some(self.lease_ttl.as_secs()),
            leases_bucket: Some(self.leases_bucket.clone()),
            exports_bucket: Some(self.exports_bucket.clone()),
            sweeps_bucket: Some(self.sweeps_bucket.clone()),
            manifest_links_bucket: Some(self.manifest_links_bucket.clone()),
            schedules_bucket: Some(self.schedules_bucket.clone()),
        }
    }

    /// The section printed when the service runs embedded: the defaults, without a URL (and
    /// without a replica id, which depends on the host).
    pub fn embedded_section() -> ClusterSection {
        ClusterSection {
            stream: Some(DEFAULT_STREAM.into()),
            subject: Some(DEFAULT_SUBJECT.into()),
            replicas: Some(DEFAULT_REPLICAS),
            max_age_seconds: Some(DEFAULT_MAX_AGE_SECONDS),
            max_bytes: Some(DEFAULT_MAX_BYTES),
            publish_timeout_ms: Some(DEFAULT_PUBLISH_TIMEOUT_MS),
            duplicate_window_seconds: Some(DEFAULT_DUPLICATE_WINDOW_SECONDS),
            max_lag_messages: Some(DEFAULT_MAX_LAG_MESSAGES),
            lease_ttl_seconds: Some(DEFAULT_LEASE_TTL_SECONDS),
            leases_bucket: Some(DEFAULT_LEASES_BUCKET.into()),
            exports_bucket: Some(DEFAULT_EXPORTS_BUCKET.into()),
            sweeps_bucket: Some(DEFAULT_SWEEPS_BUCKET.into()),
            manifest_links_bucket: Some(DEFAULT_MANIFEST_LINKS_BUCKET.into()),
            schedules_bucket: Some(DEFAULT_SCHEDULES_BUCKET.into()),
            ..ClusterSection::default()
        }
    }
}

impl ClusterSection {
    /// `None` without `nats_url` (embedded mode); otherwise defaults filled in and every value
    /// checked.
    pub fn resolve(&self) -> Result<Option<ClusterSettings>, ConfigError> {
        let Some(urls) = &self.nats_url else {
            return Ok(None);
        };
        let nats_urls = nats_urls(urls)?;
        let stream = self.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
        if !is_name(&stream) {
            return Err(invalid(
                "cluster.stream",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        let subject = self
            .subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.into());
        if !is_subject(&subject) {
            return Err(invalid(
                "cluster.subject",
                "must be dot-separated tokens of letters, digits, '-' or '_' (no wildcards)",
            ));
        }
        let replicas = self.replicas.unwrap_or(DEFAULT_REPLICAS);
        if !(1..=5).contains(&replicas) {
            return Err(invalid("cluster.replicas", "must be between 1 and 5"));
        }
        let replica_id = match &self.replica_id {
            Some(id) => id.clone(),
            None => default_replica_id(),
        };
        if !is_name(&replica_id) {
            return Err(invalid(
                "cluster.replica_id (SCAIVAULT_AUDIT_REPLICA_ID)",
                "must be 1 to 64 letters, digits, '-' or '_' (it names the replica's durable consumer)",
            ));
        }
        let leases_bucket = bucket_name(
            "cluster.leases_bucket",
            self.leases_bucket.as_deref(),
            DEFAULT_LEASES_BUCKET,
        )?;
        let exports_bucket = bucket_name(
            "cluster.exports_bucket",
            self.exports_bucket.as_deref(),
            DEFAULT_EXPORTS_BUCKET,
        )?;
        let sweeps_bucket = bucket_name(
            "cluster.sweeps_bucket",
            self.sweeps_bucket.as_deref(),
            DEFAULT_SWEEPS_BUCKET,
        )?;
        let manifest_links_bucket = bucket_name(
            "cluster.manifest_links_bucket",
            self.manifest_links_bucket.as_deref(),
            DEFAULT_MANIFEST_LINKS_BUCKET,
        )?;
        let schedules_bucket = bucket_name(
            "cluster.schedules_bucket",
            self.schedules_bucket.as_deref(),
            DEFAULT_SCHEDULES_BUCKET,
        )?;
        let buckets = [
            &leases_bucket,
            &exports_bucket,
            &sweeps_bucket,
            &manifest_links_bucket,
            &schedules_bucket,
        ];
        let distinct: std::collections::BTreeSet<_> = buckets.iter().collect();
        if distinct.len() != buckets.len() {
            return Err(invalid(
                "cluster.exports_bucket",
                "cluster.leases_bucket, cluster.exports_bucket, cluster.sweeps_bucket, \
                 cluster.manifest_links_bucket and cluster.schedules_bucket must differ \
                 (leases expire, records must not)",
            ));
        }
        let tls_client = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "cluster.tls_cert_file",
                    "tls_cert_file and tls_key_file must be set together",
                ));
            }
        };
        Ok(Some(ClusterSettings {
            nats_urls,
            credentials_file: self.credentials_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client,
            stream,
            subject,
            replicas: replicas as usize,
            max_age: Duration::from_secs(self.max_age_seconds()?),
            max_bytes: at_least(
                "cluster.max_bytes",
                self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
                1 << 20,
            )?,
            publish_timeout: Duration::from_millis(bounded(
                "cluster.publish_timeout_ms",
                self.publish_timeout_ms
                    .unwrap_or(DEFAULT_PUBLISH_TIMEOUT_MS),
                100..=60_000,
            )?),
            duplicate_window: Duration::from_secs(bounded(
                "cluster.duplicate_window_seconds",
                self.duplicate_window_seconds
                    .unwrap_or(DEFAULT_DUPLICATE_WINDOW_SECONDS),
                1..=86_400,
            )?),
            max_lag_messages: at_least(
                "cluster.max_lag_messages",
                self.max_lag_messages.unwrap_or(DEFAULT_MAX_LAG_MESSAGES),
                1,
            )?,
            replica_id,
            cursor_key_file: self.cursor_key_file.clone(),
            lease_ttl: Duration::from_secs(bounded(
                "cluster.lease_ttl_seconds",
                self.lease_ttl_seconds.unwrap_or(DEFAULT_LEASE_TTL_SECONDS),
                1..=600,
            )?),
            leases_bucket,
            exports_bucket,
            sweeps_bucket,
            manifest_links_bucket,
            schedules_bucket,
        }))
    }
}

impl ClusterSection {
    /// The stream's window: at least [`MIN_MAX_AGE_SECONDS`], and no shorter than the
    /// duplicate window (JetStream refuses such a stream, and a retry must find its original
    /// while it is still held).
    fn max_age_seconds(&self) -> Result<u64, ConfigError> {
        let max_age = at_least(
            "cluster.max_age_seconds",
            self.max_age_seconds.unwrap_or(DEFAULT_MAX_AGE_SECONDS),
            MIN_MAX_AGE_SECONDS,
        )?;
        let duplicate_window = self
            .duplicate_window_seconds
            .unwrap_or(DEFAULT_DUPLICATE_WINDOW_SECONDS);
        if max_age < duplicate_window {
            return Err(invalid(
                "cluster.max_age_seconds",
                &format!(
                    "must be at least cluster.duplicate_window_seconds ({duplicate_window}); lower the duplicate window too"
                ),
            ));
        }
        Ok(max_age)
    }
}

/// A key-value bucket name: given (checked) or the default.
fn bucket_name(
    key: &'static str,
    given: Option<&str>,
    default: &str,
) -> Result<String, ConfigError> {
    let name = given.unwrap_or(default);
    if is_name(name) {
        Ok(name.to_string())
    } else {
        Err(invalid(key, "must be 1 to 64 letters, digits, '-' or '_'"))
    }
}

fn nats_urls(list: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(invalid(
            "cluster.nats_url (SCAIVAULT_AUDIT_NATS_URL)",
            "must name at least one NATS server",
        ));
    }
    for url in &urls {
        let parsed = url::Url::parse(url).map_err(|error| {
            invalid(
                "cluster.nats_url (SCAIVAULT_AUDIT_NATS_URL)",
                &format!("{url:?} is not a URL: {error}"),
            )
        })?;
        if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none() {
            return Err(invalid(
                "cluster.nats_url (SCAIVAULT_AUDIT_NATS_URL)",
                &format!("{url:?} must be nats://HOST[:PORT] or tls://HOST[:PORT]"),
            ));
        }
    }
    Ok(urls)
}

/// The host (pod) name: `HOSTNAME`, else `/etc/hostname`, else `replica`.
fn default_replica_id() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_file = || std::fs::read_to_string("/etc/hostname").ok();
    let name = from_env
        .or_else(from_file)
        .map(|name| name.trim().to_string())
        .unwrap_or_default();
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "replica".into()
    } else {
        cleaned
    }
}

/// A JetStream stream or consumer name we accept.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 128
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<u64, ConfigError> {
    if value < min {
        Err(invalid(key, &format!("must be at least {min}")))
    } else {
        Ok(value)
    }
}

fn bounded(
    key: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            &format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> ClusterSection {
        ClusterSection {
            nats_url: Some(url.into()),
            replica_id: Some("r1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn without_a_url_the_service_stays_embedded() {
        let other_keys = ClusterSection {
            replicas: Some(0),
            ..Default::default()
        };
        assert_eq!(other_keys.resolve().unwrap(), None);
    }

    #[test]
    fn defaults_and_the_url_list() {
        let settings = section(" nats://a:4222, tls://b:4223 ,")
            .resolve()
            .unwrap()
            .unwrap();
        assert_eq!(settings.nats_urls, ["nats://a:4222", "tls://b:4223"]);
        assert_eq!(settings.stream, DEFAULT_STREAM);
        assert_eq!(settings.subject, DEFAULT_SUBJECT);
        assert_eq!(settings.replicas, 3);
        assert_eq!(settings.max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(settings.publish_timeout, Duration::from_secs(2));
        assert_eq!(settings.replica_id, "r1");
        assert_eq!(settings.schedules_bucket, DEFAULT_SCHEDULES_BUCKET);
        let printed = settings.to_section();
        assert_eq!(printed.clone().resolve().unwrap().unwrap(), settings);
        assert_eq!(
            printed.nats_url.as_deref(),
            Some("nats://a:4222,tls://b:4223")
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (section(""), "cluster.nats_url"),
            (section("http://a:4222"), "cluster.nats_url"),
            (section("nats://"), "cluster.nats_url"),
            (
                ClusterSection {
                    replicas: Some(7),
                    ..section("nats://a")
                },
                "cluster.replicas",
            ),
            (
                ClusterSection {
                    stream: Some("a.b".into()),
                    ..section("nats://a")
                },
                "cluster.stream",
            ),
            (
                ClusterSection {
                    subject: Some("a.*".into()),
                    ..section("nats://a")
                },
                "cluster.subject",
            ),
            (
                ClusterSection {
                    replica_id: Some("pod.1".into()),
                    ..section("nats://a")
                },
                "cluster.replica_id",
            ),
            (
                ClusterSection {
                    publish_timeout_ms: Some(10),
                    ..section("nats://a")
                },
                "cluster.publish_timeout_ms",
            ),
            (
                ClusterSection {
                    tls_cert_file: Some("c.pem".into()),
                    ..section("nats://a")
                },
                "cluster.tls_cert_file",
            ),
            (
                ClusterSection {
                    schedules_bucket: Some(DEFAULT_LEASES_BUCKET.into()),
                    ..section("nats://a")
                },
                "cluster.schedules_bucket must differ",
            ),
            (
                ClusterSection {
                    max_lag_messages: Some(0),
                    ..section("nats://a")
                },
                "cluster.max_lag_messages",
            ),
            (
                ClusterSection {
                    max_age_seconds: Some(9),
                    duplicate_window_seconds: Some(5),
                    ..section("nats://a")
                },
                "at least 10",
            ),
            (
                ClusterSection {
                    max_age_seconds: Some(60),
                    ..section("nats://a")
                },
                "at least cluster.duplicate_window_seconds (120)",
            ),
        ];
        for (section, key) in cases {
            let error = section.resolve().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn a_short_window_for_drills_needs_a_short_duplicate_window() {
        let settings = ClusterSection {
            max_age_seconds: Some(10),
            duplicate_window_seconds: Some(5),
            ..section("nats://a")
        }
        .resolve()
        .unwrap()
        .unwrap();
        assert_eq!(settings.max_age, Duration::from_secs(10));
        assert_eq!(settings.duplicate_window, Duration::from_secs(5));
    }

    #[test]
    fn the_default_replica_id_is_a_valid_consumer_name() {
        assert!(is_name(&default_replica_id()));
    }
}
