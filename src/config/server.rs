//! `[server]`: listen address, TLS, ingest limits and the global bounds on expensive work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

/// `[server]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// HTTP listen address (host:port; port 0 picks a free port).
    #[arg(
        id = "server.listen",
        long = "listen",
        env = "BIND_ADDRESS",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key-file the API serves HTTPS.
    #[arg(
        id = "server.tls_cert_file",
        long = "tls-cert-file",
        env = "TLS_CERT_FILE",
        value_name = "FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        id = "server.tls_key_file",
        long = "tls-key-file",
        env = "TLS_KEY_FILE",
        value_name = "FILE"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Largest accepted ingest body in bytes.
    #[arg(
        id = "server.max_body_bytes",
        long = "max-body-bytes",
        env = "SCAIVAULT_AUDIT_MAX_BODY_BYTES",
        value_name = "BYTES"
    )]
    pub max_body_bytes: Option<u64>,
    /// Most events in one ingest request.
    #[arg(
        id = "server.max_batch_events",
        long = "max-batch-events",
        env = "SCAIVAULT_AUDIT_MAX_BATCH_EVENTS",
        value_name = "N"
    )]
    pub max_batch_events: Option<u64>,
    /// Summary aggregations (summary endpoint, trail summaries) running at once, all tenants
    /// together; more wait up to --busy-wait-ms, then get 503.
    #[arg(
        id = "server.max_concurrent_summaries",
        long = "max-concurrent-summaries",
        env = "SCAIVAULT_AUDIT_MAX_CONCURRENT_SUMMARIES",
        value_name = "N"
    )]
    pub max_concurrent_summaries: Option<u64>,
    /// Ingest bodies parsed and validated at once, all tenants together; more wait up to
    /// --busy-wait-ms, then get 503.
    #[arg(
        id = "server.max_concurrent_ingest_parses",
        long = "max-concurrent-ingest-parses",
        env = "SCAIVAULT_AUDIT_MAX_CONCURRENT_INGEST_PARSES",
        value_name = "N"
    )]
    pub max_concurrent_ingest_parses: Option<u64>,
    /// How long a summary or an ingest parse waits for a free slot before the request is
    /// answered 503 with Retry-After (milliseconds).
    #[arg(
        id = "server.busy_wait_ms",
        long = "busy-wait-ms",
        env = "SCAIVAULT_AUDIT_BUSY_WAIT_MS",
        value_name = "MS"
    )]
    pub busy_wait_ms: Option<u64>,
    /// Test hook: every summary keeps its slot this long after finishing (milliseconds). Not a
    /// setting: no TOML key, not printed by `check-config`.
    #[arg(
        id = "server.debug_summary_hold_ms",
        long = "debug-summary-hold-ms",
        env = "SCAIVAULT_AUDIT_DEBUG_SUMMARY_HOLD_MS",
        value_name = "MS",
        hide = true
    )]
    #[serde(skip)]
    pub debug_summary_hold_ms: Option<u64>,
}

super::layered!(ServerSection {
    listen,
    tls_cert_file,
    tls_key_file,
    max_body_bytes,
    max_batch_events,
    max_concurrent_summaries,
    max_concurrent_ingest_parses,
    busy_wait_ms,
    debug_summary_hold_ms,
});

/// Limits of one ingest request (SPEC §3.6: 10,000 events / 16 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
        }
    }
}

/// Global bounds on expensive request work (enforced by `api::work_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    /// Summary aggregations (`/v1/audit/summary` and the trails' summaries) running at once.
    pub max_concurrent_summaries: usize,
    /// Ingest bodies being parsed and validated at once.
    pub max_concurrent_ingest_parses: usize,
    /// How long a request waits for a free slot before it is answered 503.
    pub permit_wait: Duration,
    /// Test hook: a summary keeps its slot this long after finishing.
    pub summary_hold: Duration,
}

impl Default for WorkLimits {
    fn default() -> Self {
        WorkLimits {
            max_concurrent_summaries: 4,
            max_concurrent_ingest_parses: 8,
            permit_wait: Duration::from_secs(2),
            summary_hold: Duration::ZERO,
        }
    }
}

/// The resolved `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Certificate chain and key files, when the API serves HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: IngestLimits,
    pub work: WorkLimits,
}

impl ServerSection {
    /// Defaults filled in and every value checked.
    pub fn resolve(&self) -> Result<ServerSettings, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|error| ConfigError::Invalid {
                key: "listen (BIND_ADDRESS)",
                message: format!("'{listen_text}' is not host:port ({error})"),
            })?;
        let tls = match (self.tls_cert_file.clone(), self.tls_key_file.clone()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls_cert_file/tls_key_file (TLS_CERT_FILE/TLS_KEY_FILE)",
                    "set both or neither",
                ));
            }
        };
        Ok(ServerSettings {
            listen,
            tls,
            limits: self.ingest_limits()?,
            work: self.work_limits()?,
        })
    }

    fn ingest_limits(&self) -> Result<IngestLimits, ConfigError> {
        let defaults = IngestLimits::default();
        let max_body_bytes = self
            .max_body_bytes
            .unwrap_or(defaults.max_body_bytes as u64);
        let max_batch_events = self
            .max_batch_events
            .unwrap_or(defaults.max_batch_events as u64);
        positive("max_body_bytes", max_body_bytes)?;
        positive("max_batch_events", max_batch_events)?;
        Ok(IngestLimits {
            max_body_bytes: max_body_bytes as usize,
            max_batch_events: max_batch_events as usize,
        })
    }

    /// The global bounds on summaries and ingest parsing.
    fn work_limits(&self) -> Result<WorkLimits, ConfigError> {
        let defaults = WorkLimits::default();
        let summaries = self
            .max_concurrent_summaries
            .unwrap_or(defaults.max_concurrent_summaries as u64);
        let parses = self
            .max_concurrent_ingest_parses
            .unwrap_or(defaults.max_concurrent_ingest_parses as u64);
        let wait_ms = self
            .busy_wait_ms
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
            summary_hold: Duration::from_millis(self.debug_summary_hold_ms.unwrap_or(0)),
        })
    }
}

impl ServerSettings {
    /// The effective section, every key set.
    pub fn to_section(&self) -> ServerSection {
        ServerSection {
            listen: Some(self.listen.to_string()),
            tls_cert_file: self.tls.as_ref().map(|(cert, _)| cert.clone()),
            tls_key_file: self.tls.as_ref().map(|(_, key)| key.clone()),
            max_body_bytes: Some(self.limits.max_body_bytes as u64),
            max_batch_events: Some(self.limits.max_batch_events as u64),
            max_concurrent_summaries: Some(self.work.max_concurrent_summaries as u64),
            max_concurrent_ingest_parses: Some(self.work.max_concurrent_ingest_parses as u64),
            busy_wait_ms: Some(self.work.permit_wait.as_millis() as u64),
            debug_summary_hold_ms: None,
        }
    }
}
