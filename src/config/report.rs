//! `check-config`'s output: the effective settings as TOML (the file's shape, so it reloads),
//! each value followed by a comment naming its source, unset settings as comments, secrets
//! redacted.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::Args;
use serde_json::{Map, Value};

use super::{Sections, Settings, Source};

/// Settings whose values are URLs that may carry a password (`https://user:pass@host`).
const URL_KEYS: [&str; 3] = ["auth.jwks_url", "export.scaivault_url", "cluster.nats_url"];

impl Settings {
    /// The effective settings as TOML with each value's source: `flag --NAME`, `env NAME`,
    /// `file` or `default`. Passwords in URLs are replaced by `REDACTED`; no setting holds a
    /// token or key itself (those are files).
    pub fn describe(&self) -> String {
        let names = flag_and_env_names();
        let mut out = String::from(
            "# Effective settings (precedence: flag > environment > file > default); each value\n\
             # is followed by its source.\n",
        );
        if let Some(path) = &self.origins.config_file {
            let _ = writeln!(out, "# Config file: {}", path.display());
        }
        let effective = serde_json::to_value(self.to_file_config()).unwrap_or_default();
        if let Value::Object(sections) = effective {
            for (name, section) in &sections {
                if let Value::Object(table) = section {
                    self.write_table(&mut out, name, table, &names);
                }
            }
        }
        out
    }

    fn write_table(
        &self,
        out: &mut String,
        path: &str,
        table: &Map<String, Value>,
        names: &BTreeMap<String, (String, String)>,
    ) {
        let _ = writeln!(out, "\n[{path}]");
        for (key, value) in table {
            let full = format!("{path}.{key}");
            let source = describe_source(self.origins.source(&full), &full, names);
            match value {
                Value::Object(_) => {}
                Value::Array(items) if items.iter().any(Value::is_object) => {}
                Value::Null => {
                    let _ = writeln!(out, "# {key} is not set ({source})");
                }
                value => {
                    let value = match value {
                        Value::String(text) if URL_KEYS.contains(&full.as_str()) => {
                            Value::String(redact_url(text))
                        }
                        other => other.clone(),
                    };
                    let _ = writeln!(out, "{key} = {}  # {source}", inline(&value));
                }
            }
        }
        for (key, value) in table {
            let full = format!("{path}.{key}");
            match value {
                Value::Object(inner) => self.write_table(out, &full, inner, names),
                Value::Array(items) if items.iter().any(Value::is_object) => {
                    let source = describe_source(self.origins.source(&full), &full, names);
                    for item in items.iter().filter_map(Value::as_object) {
                        let _ = writeln!(out, "\n[[{full}]]  # {source}");
                        for (key, value) in item.iter().filter(|(_, value)| !value.is_null()) {
                            let _ = writeln!(out, "{key} = {}", inline(value));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// `flag --listen`, `env BIND_ADDRESS`, `file` or `default`.
fn describe_source(
    source: Source,
    key: &str,
    names: &BTreeMap<String, (String, String)>,
) -> String {
    let (flag, env) = names.get(key).cloned().unwrap_or_default();
    match source {
        Source::Flag if !flag.is_empty() => format!("flag --{flag}"),
        Source::Env if !env.is_empty() => format!("env {env}"),
        Source::Flag => "flag".to_string(),
        Source::Env => "env".to_string(),
        Source::File => "file".to_string(),
        Source::Default => "default".to_string(),
    }
}

/// Setting key (the clap id, `server.listen`) → (long flag, environment variable).
fn flag_and_env_names() -> BTreeMap<String, (String, String)> {
    let command = Sections::augment_args(clap::Command::new("settings"));
    command
        .get_arguments()
        .map(|arg| {
            let flag = arg.get_long().unwrap_or_default().to_string();
            let env = arg
                .get_env()
                .map(|env| env.to_string_lossy().into_owned())
                .unwrap_or_default();
            (arg.get_id().as_str().to_string(), (flag, env))
        })
        .collect()
}

/// A value as an inline TOML value (strings with JSON escapes, which TOML shares).
fn inline(value: &Value) -> String {
    match value {
        Value::String(text) => serde_json::to_string(text).unwrap_or_default(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| format!("{key} = {}", inline(value)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// `text` with the password of its URL (each of a comma-separated list), if any, replaced.
fn redact_url(text: &str) -> String {
    if text.contains(',') {
        return text
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => text.to_string(),
    }
}

/// The dotted keys of every set leaf of `value` (`server.listen`); arrays are leaves.
pub(super) fn leaf_keys(value: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    collect_keys(value, "", &mut keys);
    keys
}

fn collect_keys(value: &Value, prefix: &str, keys: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_keys(value, &path, keys);
            }
        }
        Value::Null => {}
        _ => keys.push(prefix.to_string()),
    }
}
