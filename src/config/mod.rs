//! Configuration: one TOML file, environment variables and flags, resolved once into
//! [`Settings`]. Precedence: flag > environment > file > default.
//!
//! One module per TOML section ([`server`], [`storage`], [`auth`], [`export`], [`logging`] for
//! `[log]`, [`operator`], [`audit_of_audit`], [`integrity`], [`retention`], [`snapshots`]). Each has one struct that is both
//! the section's flags (clap, with their environment variables) and its TOML table (serde),
//! every key optional; the flag and environment layer is laid over the file's key by key, then
//! the section resolves itself into its typed settings, with its defaults and checks beside it.
//! `check-config` prints the
//! effective settings in the file's shape with each value's source ([`Settings::describe`]).
//!
//! Every setting has a flag, an environment variable and a TOML key; the table in the README
//! and `config/scaivault-audit.toml` list them all. ScaiVault's own names are used where they
//! exist (`BIND_ADDRESS`, `LOG_LEVEL`, `LOG_FORMAT`); the rest are `SCAIVAULT_AUDIT_*`.
//!
//! This module depends on no other part of the service: the limits, store, JWKS and endpoint
//! types it produces are plain configuration types the other modules use.

pub mod audit_of_audit;
pub mod auth;
pub mod export;
pub mod integrity;
pub mod logging;
pub mod operator;
mod report;
pub mod retention;
pub mod server;
pub mod snapshots;
pub mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

pub use audit_of_audit::{AuditOfAuditSection, AuditOfAuditSettings};
pub use auth::{
    AuthSection, JwksSource, JwtSettings, RateLimits, TokenReviewBinding, TokenReviewConfig,
};
pub use export::{EndpointPolicy, ExportSection, ExportSettings};
pub use integrity::{IntegritySection, IntegritySettings};
pub use logging::{LogFormat, LogSection};
pub use operator::{DEFAULT_LEASE_NAME, OperatorSection, OperatorSettings};
pub use retention::{RetentionSection, RetentionSettings, TenantRetention};
pub use server::{IngestLimits, ServerSection, WorkLimits};
pub use snapshots::{SnapshotSettings, SnapshotsSection};
pub use storage::{CommitPolicy, StorageSection, StoreConfig};

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

/// `impl $section { fn over(self, lower) }`: every key of `self` that is set, else `lower`'s.
/// Listing every field here is checked by the compiler (a struct literal needs them all).
macro_rules! layered {
    ($section:ident { $($field:ident),* $(,)? }) => {
        impl $section {
            /// This section over `lower`, key by key (flags/environment over the file).
            pub fn over(self, lower: Self) -> Self {
                $section {
                    $($field: self.$field.or(lower.$field),)*
                }
            }
        }
    };
}
pub(crate) use layered;

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// Every section: the shape of the TOML file, of `check-config`'s output, and (flattened) of
/// the flags. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sections {
    #[command(flatten)]
    pub server: ServerSection,
    #[command(flatten)]
    pub storage: StorageSection,
    #[command(flatten)]
    pub auth: AuthSection,
    #[command(flatten)]
    pub export: ExportSection,
    #[command(flatten)]
    pub log: LogSection,
    #[command(flatten)]
    pub operator: OperatorSection,
    #[command(flatten)]
    pub audit_of_audit: AuditOfAuditSection,
    #[command(flatten)]
    pub integrity: IntegritySection,
    #[command(flatten)]
    pub retention: RetentionSection,
    #[command(flatten)]
    pub snapshots: SnapshotsSection,
}

impl Sections {
    /// `self` over `lower`, key by key.
    fn over(self, lower: Sections) -> Sections {
        Sections {
            server: self.server.over(lower.server),
            storage: self.storage.over(lower.storage),
            auth: self.auth.over(lower.auth),
            export: self.export.over(lower.export),
            log: self.log.over(lower.log),
            operator: self.operator.over(lower.operator),
            audit_of_audit: self.audit_of_audit.over(lower.audit_of_audit),
            integrity: self.integrity.over(lower.integrity),
            retention: self.retention.over(lower.retention),
            snapshots: self.snapshots.over(lower.snapshots),
        }
    }
}

/// The flags as clap sees them.
#[derive(Debug, Clone, Default, Args)]
struct Flags {
    /// TOML configuration file.
    #[arg(
        id = "config",
        long = "config",
        env = "SCAIVAULT_AUDIT_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    sections: Sections,
}

/// Flags (and their environment variables) shared by `serve`, `check-config` and `import`.
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs {
    /// The TOML file.
    pub config: Option<PathBuf>,
    /// The settings given as flags or environment variables.
    pub sections: Sections,
    /// Flag or environment, by setting key (`server.listen`), as clap parsed them. Keys set
    /// in `sections` but missing here (built in code) count as flags.
    origins: BTreeMap<String, Source>,
}

impl SettingsArgs {
    fn record_origins(&mut self, matches: &ArgMatches) {
        for id in matches.ids() {
            let source = match matches.value_source(id.as_str()) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Source::Env,
                _ => continue,
            };
            self.origins.insert(id.as_str().to_string(), source);
        }
    }
}

impl FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = Flags::from_arg_matches(matches)?;
        let mut args = SettingsArgs {
            config: flags.config,
            sections: flags.sections,
            origins: BTreeMap::new(),
        };
        args.record_origins(matches);
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let mut flags = Flags {
            config: self.config.take(),
            sections: std::mem::take(&mut self.sections),
        };
        flags.update_from_arg_matches(matches)?;
        self.config = flags.config;
        self.sections = flags.sections;
        self.record_origins(matches);
        Ok(())
    }
}

impl Args for SettingsArgs {
    fn group_id() -> Option<clap::Id> {
        Flags::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        Flags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Flags::augment_args_for_update(cmd)
    }
}

/// The validated configuration the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: std::net::SocketAddr,
    /// Certificate chain and key files, when the API serves HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub store: StoreConfig,
    pub limits: IngestLimits,
    pub tokens_file: Option<PathBuf>,
    /// The JWKS location as configured, and parsed.
    pub jwks_url: Option<String>,
    pub jwks: Option<JwksSource>,
    pub jwt: JwtSettings,
    pub rate_limits: RateLimits,
    pub export: ExportSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    pub operator: OperatorSettings,
    /// Whether reads of audit data are recorded (`[audit_of_audit]`).
    pub audit_of_audit: AuditOfAuditSettings,
    /// `None`: Kubernetes ServiceAccount tokens are not accepted.
    pub token_review: Option<TokenReviewConfig>,
    pub work: WorkLimits,
    /// JWTs for any audience are accepted although a JWKS is configured without audience.
    pub jwt_allow_any_audience: bool,
    /// Failed authentications per minute per client address (0 = unlimited).
    pub failed_auth_per_minute: u32,
    /// The signing keys and the checkpoint interval.
    pub integrity: IntegritySettings,
    /// How long each tenant's events are kept, and how often expired ones are swept.
    pub retention: RetentionSettings,
    /// Index snapshots in object storage (`[snapshots]`).
    pub snapshots: SnapshotSettings,
    /// Where each setting came from.
    pub origins: Origins,
}

/// Where the settings came from, for `check-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// The TOML file, if any.
    pub config_file: Option<PathBuf>,
    /// Flag, environment or file, by setting key (`server.listen`, `auth.token_review.enabled`);
    /// a key not listed has its default.
    pub given: BTreeMap<String, Source>,
}

impl Origins {
    /// The source of the setting `key`.
    pub fn source(&self, key: &str) -> Source {
        self.given.get(key).copied().unwrap_or(Source::Default)
    }
}

impl Settings {
    /// Resolves flags/environment over the file over defaults, and validates the result.
    pub fn resolve(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let (file, file_keys) = match &args.config {
            Some(path) => load_file(path)?,
            None => (Sections::default(), Vec::new()),
        };
        let given = args.sections.clone().over(file);
        let store = given.storage.resolve()?;
        let server = given.server.resolve()?;
        let auth = given.auth.resolve()?;
        let log = given.log.resolve()?;
        let operator_section = &given.operator;
        let kubernetes = operator::in_cluster() || operator_section.enabled.unwrap_or(false);
        let export = given.export.resolve(&store.data_dir, kubernetes)?;
        let operator = operator_section.resolve(export.max_concurrent_jobs)?;
        let integrity = given.integrity.resolve(&store.data_dir)?;
        let retention = given.retention.resolve()?;
        let snapshots = given.snapshots.resolve()?;
        Ok(Settings {
            listen: server.listen,
            tls: server.tls,
            store,
            limits: server.limits,
            tokens_file: auth.tokens_file,
            jwks_url: auth.jwks_url,
            jwks: auth.jwks,
            jwt: auth.jwt,
            rate_limits: auth.rate_limits,
            export,
            log_level: log.level,
            log_format: log.format,
            operator,
            audit_of_audit: given.audit_of_audit.resolve(),
            token_review: auth.token_review,
            work: server.work,
            jwt_allow_any_audience: auth.jwt_allow_any_audience,
            failed_auth_per_minute: auth.failed_auth_per_minute,
            integrity,
            retention,
            snapshots,
            origins: args.origins(file_keys),
        })
    }

    /// The effective settings in the TOML file's shape, every key set.
    pub fn to_file_config(&self) -> Sections {
        Sections {
            server: server::ServerSettings {
                listen: self.listen,
                tls: self.tls.clone(),
                limits: self.limits,
                work: self.work,
            }
            .to_section(),
            storage: self.store.to_section(),
            auth: auth::AuthSettings {
                tokens_file: self.tokens_file.clone(),
                jwks_url: self.jwks_url.clone(),
                jwks: self.jwks.clone(),
                jwt: self.jwt.clone(),
                jwt_allow_any_audience: self.jwt_allow_any_audience,
                rate_limits: self.rate_limits,
                failed_auth_per_minute: self.failed_auth_per_minute,
                token_review: self.token_review.clone(),
            }
            .to_section(),
            export: self.export.to_section(),
            log: logging::LogSettings {
                level: self.log_level.clone(),
                format: self.log_format,
            }
            .to_section(),
            operator: self.operator.to_section(),
            audit_of_audit: self.audit_of_audit.to_section(),
            integrity: self.integrity.to_section(),
            retention: self.retention.to_section(),
            snapshots: self.snapshots.to_section(),
        }
    }
}

impl SettingsArgs {
    /// Where each given setting came from: flags and environment first, then the file's keys.
    fn origins(&self, file_keys: Vec<String>) -> Origins {
        let mut given: BTreeMap<String, Source> = file_keys
            .into_iter()
            .map(|key| (key, Source::File))
            .collect();
        let in_code = serde_json::to_value(&self.sections)
            .map(|value| report::leaf_keys(&value))
            .unwrap_or_default();
        for key in in_code {
            given.insert(key, Source::Flag);
        }
        given.extend(self.origins.clone());
        Origins {
            config_file: self.config.clone(),
            given,
        }
    }
}

/// The file's sections, and the keys it sets (`server.listen`).
fn load_file(path: &Path) -> Result<(Sections, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_error = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let sections: Sections =
        toml::from_str(&text).map_err(|error| parse_error(error.to_string()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|error| parse_error(error.to_string()))?;
    let value = serde_json::to_value(&table).map_err(|error| parse_error(error.to_string()))?;
    Ok((sections, report::leaf_keys(&value)))
}

pub(crate) fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

pub(crate) fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with(sections: Sections) -> SettingsArgs {
        SettingsArgs {
            sections,
            ..Default::default()
        }
    }

    fn server(server: ServerSection) -> SettingsArgs {
        with(Sections {
            server,
            ..Default::default()
        })
    }

    fn storage(storage: StorageSection) -> SettingsArgs {
        with(Sections {
            storage,
            ..Default::default()
        })
    }

    fn export(export: ExportSection) -> SettingsArgs {
        with(Sections {
            export,
            ..Default::default()
        })
    }

    fn auth(auth: AuthSection) -> SettingsArgs {
        with(Sections {
            auth,
            ..Default::default()
        })
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_are_the_embedded_standalone_setup() {
        let settings = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(settings.store.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.store.commit.interval, Duration::from_millis(500));
        assert_eq!(settings.limits, IngestLimits::default());
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(settings.work, WorkLimits::default());
        assert_eq!(settings.operator.lease_name, DEFAULT_LEASE_NAME);
        assert!(settings.origins.given.is_empty());
    }

    #[test]
    fn work_limits_come_from_the_server_section_and_are_bounded() {
        let (_dir, path) = file(
            "[server]\nmax_concurrent_summaries = 2\nmax_concurrent_ingest_parses = 3\nbusy_wait_ms = 10\n",
        );
        let args = SettingsArgs {
            config: Some(path),
            ..server(ServerSection {
                max_concurrent_summaries: Some(5),
                ..Default::default()
            })
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.work.max_concurrent_summaries, 5);
        assert_eq!(settings.work.max_concurrent_ingest_parses, 3);
        assert_eq!(settings.work.permit_wait, Duration::from_millis(10));
        let printed = settings.to_file_config().server;
        assert_eq!(printed.max_concurrent_ingest_parses, Some(3));
        let zero = server(ServerSection {
            max_concurrent_ingest_parses: Some(0),
            ..Default::default()
        });
        assert!(
            Settings::resolve(&zero)
                .unwrap_err()
                .to_string()
                .contains("max_concurrent_ingest_parses")
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let (_dir, path) = file(
            "[server]\nlisten = \"0.0.0.0:9000\"\n[storage]\ndata_dir = \"/var/lib/a\"\ncommit_interval_ms = 250\n[log]\nformat = \"json\"\n",
        );
        let args = SettingsArgs {
            config: Some(path),
            ..storage(StorageSection {
                commit_interval_ms: Some(100),
                ..Default::default()
            })
        };
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.store.data_dir, PathBuf::from("/var/lib/a"));
        assert_eq!(settings.store.commit.interval, Duration::from_millis(100));
        assert_eq!(settings.log_format, LogFormat::Json);
        let origins = &settings.origins;
        assert_eq!(origins.source("storage.commit_interval_ms"), Source::Flag);
        assert_eq!(origins.source("storage.data_dir"), Source::File);
        assert_eq!(origins.source("log.format"), Source::File);
        assert_eq!(origins.source("log.level"), Source::Default);
    }

    #[test]
    fn clap_tells_flags_from_environment_and_keeps_every_name() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--operator-lease-name",
            "audit-lease",
            "--token-review",
            "--export-endpoint-allowlist",
            "a.example,b.example",
        ])
        .unwrap();
        let args = &cli.settings;
        assert_eq!(args.sections.server.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(args.origins.get("server.listen"), Some(&Source::Flag));
        assert_eq!(args.sections.auth.token_review.enabled, Some(true));
        let settings = Settings::resolve(args).unwrap();
        assert_eq!(settings.operator.lease_name, "audit-lease");
        assert_eq!(settings.origins.source("operator.lease_name"), Source::Flag);
        assert_eq!(
            settings.export.endpoints.allowlist,
            ["a.example", "b.example"]
        );
        let described = settings.describe();
        assert!(
            described.contains("lease_name = \"audit-lease\"  # flag --operator-lease-name"),
            "{described}"
        );
        // Every setting has a flag and an environment variable.
        let command = Sections::augment_args(clap::Command::new("x"));
        for arg in command.get_arguments() {
            assert!(arg.get_long().is_some(), "{}", arg.get_id());
            assert!(arg.get_env().is_some(), "{}", arg.get_id());
        }
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let cases = [
            (
                server(ServerSection {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                }),
                "listen",
            ),
            (
                storage(StorageSection {
                    commit_interval_ms: Some(0),
                    ..Default::default()
                }),
                "commit_interval_ms",
            ),
            (
                storage(StorageSection {
                    index_threads: Some(4),
                    index_memory_mb: Some(20),
                    ..Default::default()
                }),
                "index_memory_mb",
            ),
            (
                with(Sections {
                    log: LogSection {
                        format: Some("xml".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                "log_format",
            ),
            (
                with(Sections {
                    log: LogSection {
                        level: Some("info,[".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                "log_level",
            ),
            (
                with(Sections {
                    operator: OperatorSection {
                        lease_name: Some("Not_A_Name".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                "operator.lease_name",
            ),
        ];
        for (args, key) in cases {
            let error = Settings::resolve(&args).unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn operator_namespaces_are_checked_and_deduplicated() {
        let (_dir, path) = file("[operator]\nnamespaces = [\"team-a\"]\nlease_name = \"l\"\n");
        let from_file = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&from_file).unwrap();
        assert_eq!(settings.operator.namespaces, ["team-a"]);
        assert_eq!(settings.operator.lease_name, "l");
        let reloaded = toml::to_string(&settings.to_file_config()).unwrap();
        assert!(reloaded.contains("namespaces = [\"team-a\"]"), "{reloaded}");
        let mut flag = from_file.clone();
        flag.sections.operator.namespaces =
            Some(vec!["team-b".into(), " team-c".into(), "team-b".into()]);
        let settings = Settings::resolve(&flag).unwrap();
        assert_eq!(settings.operator.namespaces, ["team-b", "team-c"]);
        for bad in ["Team_B", "", "-a", "a.b"] {
            flag.sections.operator.namespaces = Some(vec![bad.into()]);
            let error = Settings::resolve(&flag).unwrap_err().to_string();
            assert!(error.contains("operator.namespaces"), "{bad}: {error}");
        }
        let defaults = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert!(defaults.operator.namespaces.is_empty());
    }

    #[test]
    fn unknown_file_keys_are_errors_and_the_printed_config_reloads() {
        let (_dir, path) = file("[storage]\ncommit_intervall_ms = 5\n");
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
        let defaults = Settings::resolve(&SettingsArgs::default()).unwrap();
        std::fs::write(&path, toml::to_string(&defaults.to_file_config()).unwrap()).unwrap();
        assert_eq!(
            Settings::resolve(&args).unwrap().to_file_config(),
            defaults.to_file_config()
        );
        // check-config's annotated output is TOML that reloads to the same settings too.
        std::fs::write(&path, defaults.describe()).unwrap();
        assert_eq!(
            Settings::resolve(&args).unwrap().to_file_config(),
            defaults.to_file_config()
        );
    }

    #[test]
    fn the_description_names_sources_redacts_passwords_and_reloads() {
        let (_dir, path) = file(
            "[auth]\njwt_audience = \"audit\"\n[auth.token_review]\nenabled = true\n\
             [[auth.token_review.bindings]]\nservice_account = \"ns/sa\"\nscopes = [\"audit:write\"]\n\
             all_tenants = true\n",
        );
        let args = SettingsArgs {
            config: Some(path.clone()),
            ..auth(AuthSection {
                jwks_url: Some("https://user:s3cret@keys.example/jwks.json".into()),
                ..Default::default()
            })
        };
        let settings = Settings::resolve(&args).unwrap();
        let described = settings.describe();
        assert!(!described.contains("s3cret"), "{described}");
        assert!(
            described.contains(
                "jwks_url = \"https://user:REDACTED@keys.example/jwks.json\"  # flag --jwks-url"
            ),
            "{described}"
        );
        assert!(
            described.contains("jwt_audience = \"audit\"  # file"),
            "{described}"
        );
        assert!(
            described.contains("listen = \"127.0.0.1:8080\"  # default"),
            "{described}"
        );
        assert!(
            described.contains("# tls_cert_file is not set (default)"),
            "{described}"
        );
        assert!(
            described.contains("[[auth.token_review.bindings]]  # file"),
            "{described}"
        );
        let reloaded: Sections = toml::from_str(&described).unwrap();
        assert_eq!(reloaded.auth.token_review.bindings.len(), 1);
        assert_eq!(reloaded.auth.token_review.enabled, Some(true));
    }

    #[test]
    fn the_file_root_defaults_beside_the_data_dir_and_is_unset_for_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let standalone = storage(StorageSection {
            data_dir: Some(data.clone()),
            ..Default::default()
        });
        let settings = Settings::resolve(&standalone).unwrap();
        assert_eq!(settings.export.file_root, Some(dir.path().join("exports")));
        assert_eq!(
            settings.export.credentials_path_prefixes,
            ["tenants/{tenant_id}/"]
        );
        let mut operator = standalone.clone();
        operator.sections.operator.enabled = Some(true);
        assert_eq!(Settings::resolve(&operator).unwrap().export.file_root, None);
        let mut explicit = operator.clone();
        explicit.sections.export.file_root = Some(dir.path().join("out"));
        assert_eq!(
            Settings::resolve(&explicit).unwrap().export.file_root,
            Some(dir.path().join("out"))
        );
        let mut disabled = standalone;
        disabled.sections.export.file_root = Some(PathBuf::new());
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
            let mut args = export(ExportSection {
                file_root: Some(root.clone()),
                ..Default::default()
            });
            args.sections.storage.data_dir = Some(data.clone());
            let error = Settings::resolve(&args).unwrap_err().to_string();
            assert!(error.contains("export.file_root"), "{root:?}: {error}");
        }
    }

    #[test]
    fn credentials_prefixes_are_checked_and_round_trip() {
        let args = export(ExportSection {
            credentials_path_prefixes: Some(vec![
                "tenants/{tenant_id}/".into(),
                "infra/aws/audit-export-writer".into(),
            ]),
            ..Default::default()
        });
        let settings = Settings::resolve(&args).unwrap();
        assert_eq!(settings.export.credentials_path_prefixes.len(), 2);
        let printed = toml::to_string(&settings.to_file_config()).unwrap();
        assert!(
            printed.contains("infra/aws/audit-export-writer"),
            "{printed}"
        );
        let bad = export(ExportSection {
            credentials_path_prefixes: Some(vec!["/abs/".into()]),
            ..Default::default()
        });
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
    fn the_audit_of_audit_is_on_by_default_and_can_be_turned_off() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let defaults = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert!(defaults.audit_of_audit.enabled);
        let described = defaults.describe();
        assert!(
            described.contains("[audit_of_audit]\nenabled = true  # default"),
            "{described}"
        );
        let (_dir, path) = file("[audit_of_audit]\nenabled = false\n");
        let from_file = SettingsArgs {
            config: Some(path),
            ..Default::default()
        };
        let settings = Settings::resolve(&from_file).unwrap();
        assert!(!settings.audit_of_audit.enabled);
        assert_eq!(
            settings.origins.source("audit_of_audit.enabled"),
            Source::File
        );
        let cli = Cli::try_parse_from(["x", "--audit-of-audit-enabled", "false"]).unwrap();
        assert!(
            !Settings::resolve(&cli.settings)
                .unwrap()
                .audit_of_audit
                .enabled
        );
        let command = Sections::augment_args(clap::Command::new("x"));
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == "audit_of_audit.enabled")
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|env| env.to_str()),
            Some("SCAIVAULT_AUDIT_AUDIT_OF_AUDIT_ENABLED")
        );
    }

    #[test]
    fn integrity_settings_follow_the_data_dir_and_layer_like_the_others() {
        let (_dir, path) = file("[integrity]\ncheckpoint_interval_seconds = 5\n");
        let args = SettingsArgs {
            config: Some(path),
            ..storage(StorageSection {
                data_dir: Some("/var/lib/audit".into()),
                ..Default::default()
            })
        };
        let settings = Settings::resolve(&args).unwrap();
        let integrity = &settings.integrity;
        assert_eq!(integrity.checkpoint_interval, Duration::from_secs(5));
        assert_eq!(
            integrity.keys_dir,
            PathBuf::from("/var/lib/audit/integrity/keys")
        );
        assert!(integrity.create_keys);
        assert_eq!(
            settings
                .origins
                .source("integrity.checkpoint_interval_seconds"),
            Source::File
        );
        let mut flag = args.clone();
        flag.sections.integrity.keys_dir = Some("/etc/keys".into());
        let settings = Settings::resolve(&flag).unwrap();
        assert!(!settings.integrity.create_keys);
        let described = settings.describe();
        assert!(
            described.contains("keys_dir = \"/etc/keys\"  # flag --integrity-keys-dir"),
            "{described}"
        );
        flag.sections.integrity.checkpoint_interval_seconds = Some(0);
        let error = Settings::resolve(&flag).unwrap_err().to_string();
        assert!(error.contains("checkpoint_interval_seconds"), "{error}");
    }

    #[test]
    fn a_jwks_needs_an_audience_unless_any_audience_is_allowed() {
        let jwks = || AuthSection {
            jwks_url: Some("file:///etc/jwks.json".into()),
            ..Default::default()
        };
        let error = Settings::resolve(&auth(jwks())).unwrap_err().to_string();
        assert!(error.contains("jwt_audience"), "{error}");
        assert!(error.contains("jwt_allow_any_audience"), "{error}");
        let allowed = Settings::resolve(&auth(AuthSection {
            jwt_allow_any_audience: Some(true),
            ..jwks()
        }))
        .unwrap();
        assert_eq!(allowed.jwt.audience, None);
        let with_audience = Settings::resolve(&auth(AuthSection {
            jwt_audience: Some("scaivault-audit".into()),
            jwks_refresh_seconds: Some(60),
            ..jwks()
        }))
        .unwrap();
        assert_eq!(with_audience.jwt.refresh_interval, Duration::from_secs(60));
        let error = Settings::resolve(&auth(AuthSection {
            jwt_audience: Some("scaivault-audit".into()),
            jwks_refresh_seconds: Some(0),
            ..jwks()
        }))
        .unwrap_err()
        .to_string();
        assert!(error.contains("jwks_refresh_seconds"), "{error}");
    }
}
