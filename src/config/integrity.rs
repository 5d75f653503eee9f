//! `[integrity]`: the key ring that signs checkpoints and export manifests, and how often the
//! service checkpoints every tenant's chain (docs/integrity.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default seconds between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECONDS: u64 = 60;
/// Longest interval between checkpoints: one hour, as CloudTrail's digests.
pub const MAX_CHECKPOINT_INTERVAL_SECONDS: u64 = 3600;

/// `[integrity]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegritySection {
    /// Directory of the signing key ring (`keyring.json` and the active key's `KID.pem`).
    /// Default: `DATA_DIR/integrity/keys`, created with a new ring at the first start; any other
    /// directory (e.g. a mounted Kubernetes Secret) must already hold a ring.
    #[arg(
        id = "integrity.keys_dir",
        long = "integrity-keys-dir",
        env = "SCAIVAULT_AUDIT_INTEGRITY_KEYS_DIR",
        value_name = "DIR"
    )]
    pub keys_dir: Option<PathBuf>,
    /// Seconds between signed checkpoints of every tenant whose chain moved (1..=3600).
    #[arg(
        id = "integrity.checkpoint_interval_seconds",
        long = "integrity-checkpoint-interval-seconds",
        env = "SCAIVAULT_AUDIT_INTEGRITY_CHECKPOINT_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub checkpoint_interval_seconds: Option<u64>,
}

super::layered!(IntegritySection {
    keys_dir,
    checkpoint_interval_seconds,
});

/// The resolved `[integrity]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegritySettings {
    /// Where the key ring is.
    pub keys_dir: PathBuf,
    /// `keys_dir` is the data directory's own: a missing ring is created (an explicitly
    /// configured directory must hold one).
    pub create_keys: bool,
    /// The checkpoint log's directory: `DATA_DIR/integrity`.
    pub dir: PathBuf,
    pub checkpoint_interval: Duration,
}

impl IntegritySettings {
    /// The integrity directory of a data directory (`DATA_DIR/integrity`).
    pub fn dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("integrity")
    }

    /// The default key ring directory of a data directory (`DATA_DIR/integrity/keys`).
    pub fn default_keys_dir(data_dir: &Path) -> PathBuf {
        Self::dir_of(data_dir).join("keys")
    }

    /// The effective section, every key set.
    pub fn to_section(&self) -> IntegritySection {
        IntegritySection {
            keys_dir: Some(self.keys_dir.clone()),
            checkpoint_interval_seconds: Some(self.checkpoint_interval.as_secs()),
        }
    }
}

impl IntegritySection {
    /// Defaults filled in (relative to `data_dir`) and every value checked.
    pub fn resolve(&self, data_dir: &Path) -> Result<IntegritySettings, ConfigError> {
        let default_keys_dir = IntegritySettings::default_keys_dir(data_dir);
        let keys_dir = match &self.keys_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(invalid(
                    "integrity.keys_dir (SCAIVAULT_AUDIT_INTEGRITY_KEYS_DIR)",
                    "must not be empty",
                ));
            }
            Some(dir) => dir.clone(),
            None => default_keys_dir.clone(),
        };
        let seconds = self
            .checkpoint_interval_seconds
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_SECONDS);
        if !(1..=MAX_CHECKPOINT_INTERVAL_SECONDS).contains(&seconds) {
            return Err(invalid(
                "integrity.checkpoint_interval_seconds (SCAIVAULT_AUDIT_INTEGRITY_CHECKPOINT_INTERVAL_SECONDS)",
                &format!("must be between 1 and {MAX_CHECKPOINT_INTERVAL_SECONDS}"),
            ));
        }
        Ok(IntegritySettings {
            // The default spelled out (e.g. check-config's output fed back) is still the default.
            create_keys: keys_dir == default_keys_dir,
            keys_dir,
            dir: IntegritySettings::dir_of(data_dir),
            checkpoint_interval: Duration::from_secs(seconds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_default_into_the_data_dir_and_are_created_only_there() {
        let data = Path::new("/var/lib/audit");
        let defaults = IntegritySection::default().resolve(data).unwrap();
        assert_eq!(defaults.keys_dir, data.join("integrity/keys"));
        assert_eq!(defaults.dir, data.join("integrity"));
        assert!(defaults.create_keys);
        assert_eq!(defaults.checkpoint_interval, Duration::from_secs(60));
        // The default written out (check-config's output reloaded) is still created.
        let spelled = defaults.to_section().resolve(data).unwrap();
        assert_eq!(spelled, defaults);
        let mounted = IntegritySection {
            keys_dir: Some("/etc/scaivault-audit/integrity".into()),
            ..Default::default()
        }
        .resolve(data)
        .unwrap();
        assert!(!mounted.create_keys);
        assert_eq!(mounted.dir, data.join("integrity"));
    }

    #[test]
    fn the_interval_is_bounded_and_the_dir_not_empty() {
        let data = Path::new("data");
        for (seconds, ok) in [(0, false), (1, true), (3600, true), (3601, false)] {
            let section = IntegritySection {
                checkpoint_interval_seconds: Some(seconds),
                ..Default::default()
            };
            match section.resolve(data) {
                Ok(settings) => {
                    assert!(ok, "{seconds}");
                    assert_eq!(settings.checkpoint_interval.as_secs(), seconds);
                }
                Err(error) => {
                    assert!(!ok, "{seconds}");
                    assert!(
                        error.to_string().contains("checkpoint_interval_seconds"),
                        "{error}"
                    );
                }
            }
        }
        let empty = IntegritySection {
            keys_dir: Some(PathBuf::new()),
            ..Default::default()
        };
        let error = empty.resolve(data).unwrap_err().to_string();
        assert!(error.contains("integrity.keys_dir"), "{error}");
    }
}
