//! Logging (tracing) and the Prometheus registry.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Prefix of every metric name.
pub const METRICS_PREFIX: &str = "scaivault_audit";

/// Installs the global tracing subscriber: logs go to stderr, stdout stays for command output.
/// Text lines are coloured only when stderr is a terminal (never in a file, a pipe or a
/// container's log), and never when `NO_COLOR` is set.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|error| error.to_string())?;
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|error| error.to_string())?;
    if format == LogFormat::Json {
        JSON_OUTPUT.store(true, Ordering::Relaxed);
        // A panic message would be the one plain-text line on stderr: log it as JSON too.
        std::panic::set_hook(Box::new(|info| {
            tracing::error!(panic = %info, "the process panicked");
        }));
    }
    Ok(())
}

/// Set once JSON logging is installed: every line the process writes is then JSON.
static JSON_OUTPUT: AtomicBool = AtomicBool::new(false);

/// Whether output lines must be JSON: JSON logging is installed, or `LOG_FORMAT=json` is in
/// the environment (for errors before the settings are resolved).
pub fn json_output() -> bool {
    JSON_OUTPUT.load(Ordering::Relaxed)
        || std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json")
}

/// One output line outside the log (the start-up announcement on stdout, the final error on
/// stderr): `message` as is, or, in JSON mode ([`json_output`]), a JSON object shaped like the
/// JSON log lines (`timestamp`, `level`, `message`, `target`) plus `fields`.
pub fn output_line(level: &str, target: &str, message: &str, fields: &[(&str, &str)]) -> String {
    if !json_output() {
        return message.to_string();
    }
    let mut line = serde_json::Map::new();
    line.insert(
        "timestamp".into(),
        crate::timestamp::format_micros(crate::timestamp::now_micros()).into(),
    );
    line.insert("level".into(), level.into());
    line.insert("message".into(), message.into());
    line.insert("target".into(), target.into());
    for (name, value) in fields {
        line.insert((*name).into(), (*value).into());
    }
    serde_json::Value::Object(line).to_string()
}

/// Whether text log lines carry ANSI colour: on a terminal, unless `NO_COLOR` (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, false));
        assert!(!use_colour(false, false));
        assert!(!use_colour(true, true));
        assert!(!use_colour(false, true));
    }
}
