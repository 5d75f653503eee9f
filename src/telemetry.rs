//! Logging (tracing) and the Prometheus registry.

use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Prefix of every metric name.
pub const METRICS_PREFIX: &str = "scaivault_audit";

/// Installs the global tracing subscriber: logs go to stderr, stdout stays for command output.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|error| error.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|error| error.to_string())
}

/// A new registry whose metric names start with `scaivault_audit_`.
pub fn new_registry() -> Registry {
    Registry::with_prefix(METRICS_PREFIX)
}
