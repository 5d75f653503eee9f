//! `[snapshots]`: index snapshots in object storage, taken periodically by the running service
//! and restored into an empty data directory (docs/snapshots.md). Off unless a destination is
//! configured. The section is the same in the embedded mode and in a cluster: each replica's
//! index records its log position, and a snapshot carries it.
//!
//! ```toml
//! [snapshots]
//! type = "s3"                               # s3, gcs, azure_blob or file
//! bucket = "audit-snapshots"
//! prefix = "prod/"                          # objects go under PREFIXsnapshots/
//! credentials_path = "infra/aws/snapshots"  # ScaiVault secret (not for file)
//! interval_seconds = 3600
//! keep = 3
//! restore_on_start = true
//! ```

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default seconds between two snapshots.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 3600;
/// Longest interval between two snapshots: one week.
pub const MAX_INTERVAL_SECONDS: u64 = 7 * 86_400;
/// Default number of complete snapshots kept at the destination.
pub const DEFAULT_KEEP: u32 = 3;
/// Most complete snapshots kept at the destination.
pub const MAX_KEEP: u32 = 1000;
/// Longest prefix (object keys stay far below every store's key limit).
pub const MAX_PREFIX_BYTES: usize = 256;

/// `[snapshots]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotsSection {
    /// Destination type of index snapshots: s3, gcs, azure_blob or file (unset: no snapshots).
    #[arg(
        id = "snapshots.type",
        long = "snapshots-type",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_TYPE",
        value_name = "TYPE"
    )]
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Bucket (GCS bucket, Azure container, directory under `[export] file_root`).
    #[arg(
        id = "snapshots.bucket",
        long = "snapshots-bucket",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_BUCKET",
        value_name = "BUCKET"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix; snapshots go under `PREFIXsnapshots/`.
    #[arg(
        id = "snapshots.prefix",
        long = "snapshots-prefix",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_PREFIX",
        value_name = "PREFIX"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// ScaiVault secret path of the destination credentials (read as for exports).
    #[arg(
        id = "snapshots.credentials_path",
        long = "snapshots-credentials-path",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_CREDENTIALS_PATH",
        value_name = "PATH"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_path: Option<String>,
    /// Seconds between two snapshots of the running service (1..=604800; 0 = none taken by
    /// the service, only restored).
    #[arg(
        id = "snapshots.interval_seconds",
        long = "snapshots-interval-seconds",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// Complete snapshots kept at the destination (1..=1000); older ones are deleted once a
    /// newer one is complete.
    #[arg(
        id = "snapshots.keep",
        long = "snapshots-keep",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_KEEP",
        value_name = "N"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Restore the newest snapshot at start when the data directory holds no store.
    #[arg(
        id = "snapshots.restore_on_start",
        long = "snapshots-restore-on-start",
        env = "SCAIVAULT_AUDIT_SNAPSHOTS_RESTORE_ON_START",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_on_start: Option<bool>,
}

super::layered!(SnapshotsSection {
    kind,
    bucket,
    prefix,
    credentials_path,
    interval_seconds,
    keep,
    restore_on_start,
});

/// Where snapshots go: a destination of the same shape as an export's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDestination {
    /// `s3`, `gcs`, `azure_blob` or `file`.
    pub kind: String,
    pub bucket: String,
    pub prefix: String,
    pub credentials_path: Option<String>,
}

/// The resolved `[snapshots]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// `None`: snapshots are off.
    pub destination: Option<SnapshotDestination>,
    /// `None`: the service takes none (restores only).
    pub interval: Option<Duration>,
    pub keep: u32,
    pub restore_on_start: bool,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            destination: None,
            interval: Some(Duration::from_secs(DEFAULT_INTERVAL_SECONDS)),
            keep: DEFAULT_KEEP,
            restore_on_start: true,
        }
    }
}

impl SnapshotsSection {
    /// Defaults filled in and every value checked.
    pub fn resolve(&self) -> Result<SnapshotSettings, ConfigError> {
        let seconds = self.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECONDS);
        if seconds > MAX_INTERVAL_SECONDS {
            return Err(invalid(
                "snapshots.interval_seconds (SCAIVAULT_AUDIT_SNAPSHOTS_INTERVAL_SECONDS)",
                &format!("must be between 0 and {MAX_INTERVAL_SECONDS}"),
            ));
        }
        let keep = self.keep.unwrap_or(DEFAULT_KEEP);
        if !(1..=MAX_KEEP).contains(&keep) {
            return Err(invalid(
                "snapshots.keep (SCAIVAULT_AUDIT_SNAPSHOTS_KEEP)",
                &format!("must be between 1 and {MAX_KEEP}"),
            ));
        }
        Ok(SnapshotSettings {
            destination: self.destination()?,
            interval: (seconds > 0).then(|| Duration::from_secs(seconds)),
            keep,
            restore_on_start: self.restore_on_start.unwrap_or(true),
        })
    }

    fn destination(&self) -> Result<Option<SnapshotDestination>, ConfigError> {
        const KEY: &str = "snapshots (SCAIVAULT_AUDIT_SNAPSHOTS_*)";
        let Some(kind) = self.kind.clone().filter(|kind| !kind.is_empty()) else {
            if self.bucket.is_some() || self.credentials_path.is_some() {
                return Err(invalid(KEY, "a bucket is set but no type"));
            }
            return Ok(None);
        };
        if !["s3", "gcs", "azure_blob", "file"].contains(&kind.as_str()) {
            return Err(invalid(
                "snapshots.type (SCAIVAULT_AUDIT_SNAPSHOTS_TYPE)",
                &format!("'{kind}' is not s3, gcs, azure_blob or file"),
            ));
        }
        let bucket = self.bucket.clone().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid(KEY, "needs a bucket"));
        }
        let prefix = self.prefix.clone().unwrap_or_default();
        let prefix_ok = prefix.len() <= MAX_PREFIX_BYTES
            && !prefix.starts_with('/')
            && !prefix.split('/').any(|part| part == "..")
            && !prefix.chars().any(char::is_control);
        if !prefix_ok {
            return Err(invalid(
                "snapshots.prefix (SCAIVAULT_AUDIT_SNAPSHOTS_PREFIX)",
                &format!(
                    "at most {MAX_PREFIX_BYTES} bytes, relative, no '..' and no control characters"
                ),
            ));
        }
        let credentials_path = self
            .credentials_path
            .clone()
            .filter(|path| !path.is_empty());
        if kind != "file" && credentials_path.is_none() {
            return Err(invalid(
                "snapshots.credentials_path (SCAIVAULT_AUDIT_SNAPSHOTS_CREDENTIALS_PATH)",
                &format!("is required for a {kind} destination"),
            ));
        }
        Ok(Some(SnapshotDestination {
            kind,
            bucket,
            prefix,
            credentials_path,
        }))
    }
}

impl SnapshotSettings {
    /// The effective section, every key set (the destination's only when configured).
    pub fn to_section(&self) -> SnapshotsSection {
        let destination = self.destination.as_ref();
        SnapshotsSection {
            kind: destination.map(|d| d.kind.clone()),
            bucket: destination.map(|d| d.bucket.clone()),
            prefix: destination.map(|d| d.prefix.clone()),
            credentials_path: destination.and_then(|d| d.credentials_path.clone()),
            interval_seconds: Some(self.interval.map_or(0, |interval| interval.as_secs())),
            keep: Some(self.keep),
            restore_on_start: Some(self.restore_on_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_round_trips() {
        let settings = SnapshotsSection::default().resolve().unwrap();
        assert_eq!(settings, SnapshotSettings::default());
        assert_eq!(settings.destination, None);
        assert_eq!(settings.to_section().resolve().unwrap(), settings);
        let section: SnapshotsSection = toml::from_str(
            "type = \"s3\"\nbucket = \"b\"\nprefix = \"p/\"\ncredentials_path = \"infra/s3\"\n\
             interval_seconds = 0\nkeep = 2\n",
        )
        .unwrap();
        let settings = section.resolve().unwrap();
        assert_eq!(settings.interval, None);
        assert_eq!(settings.keep, 2);
        assert_eq!(settings.destination.as_ref().unwrap().prefix, "p/");
        assert_eq!(settings.to_section().resolve().unwrap(), settings);
    }

    #[test]
    fn bounds_and_destinations_are_checked() {
        let bad = [
            "keep = 0\n",
            "keep = 1001\n",
            "interval_seconds = 604801\n",
            "type = \"ftp\"\nbucket = \"b\"\n",
            "type = \"s3\"\n",
            "type = \"s3\"\nbucket = \"b\"\n",
            "bucket = \"b\"\n",
            "type = \"file\"\nbucket = \"b\"\nprefix = \"../up/\"\n",
            "type = \"file\"\nbucket = \"b\"\nprefix = \"/abs/\"\n",
        ];
        for text in bad {
            let section: SnapshotsSection = toml::from_str(text).unwrap();
            let error = section.resolve().unwrap_err().to_string();
            assert!(error.contains("snapshots"), "{text}: {error}");
        }
        let file: SnapshotsSection = toml::from_str("type = \"file\"\nbucket = \"b\"\n").unwrap();
        assert!(file.resolve().unwrap().destination.is_some());
        assert!(toml::from_str::<SnapshotsSection>("every = 3\n").is_err());
    }
}
