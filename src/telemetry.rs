//! Logging (tracing) and the Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers `scaivault_audit_build_info{version="…"} 1`.
pub fn register_build_info(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register(
        "build_info",
        "Always 1; the version label is the running build's version",
        info,
    );
}
