//! `[log]`: the log filter and format.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[log]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Log filter: a level (`info`) or tracing directives (`info,scaivault_audit=debug`).
    #[arg(
        id = "log.level",
        long = "log-level",
        env = "LOG_LEVEL",
        value_name = "FILTER"
    )]
    pub level: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(
        id = "log.format",
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub format: Option<String>,
}

super::layered!(LogSection { level, format });

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The name in settings.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The resolved `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

impl LogSection {
    /// Defaults filled in; the filter is parsed as `telemetry` will.
    pub fn resolve(&self) -> Result<LogSettings, ConfigError> {
        let level = self.level.clone().unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&level)
            .map_err(|error| invalid("log_level (LOG_LEVEL)", &format!("'{level}': {error}")))?;
        let format = match self.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format (LOG_FORMAT)",
                    &format!("'{other}' is not text or json"),
                ));
            }
        };
        Ok(LogSettings { level, format })
    }
}

impl LogSettings {
    /// The effective section.
    pub fn to_section(&self) -> LogSection {
        LogSection {
            level: Some(self.level.clone()),
            format: Some(self.format.as_str().to_string()),
        }
    }
}
