//! `[retention]`: how long each tenant's events stay in the hot store, legal holds, and how
//! often the sweep that deletes expired events runs (docs/lifecycle.md).
//!
//! ```toml
//! [retention]
//! default_days = 2557            # 7 years (SPEC §7)
//! sweep_interval_seconds = 3600
//!
//! [retention.tenants.tnt_acme]
//! days = 30
//!
//! [retention.tenants.tnt_litigation]
//! legal_hold = true              # keeps everything, whatever its age
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default retention: seven years of days (SPEC §7).
pub const DEFAULT_RETENTION_DAYS: u32 = 2557;
/// Longest retention that can be configured: one hundred years.
pub const MAX_RETENTION_DAYS: u32 = 36_500;
/// Default seconds between two sweeps.
pub const DEFAULT_SWEEP_INTERVAL_SECONDS: u64 = 3600;
/// Longest interval between two sweeps: one day.
pub const MAX_SWEEP_INTERVAL_SECONDS: u64 = 86_400;
/// Most tenants with their own `[retention.tenants.*]` table.
pub const MAX_TENANT_OVERRIDES: usize = 10_000;

/// `[retention]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Days an event stays in the hot store unless its tenant says otherwise (1..=36500).
    #[arg(
        id = "retention.default_days",
        long = "retention-default-days",
        env = "SCAIVAULT_AUDIT_RETENTION_DEFAULT_DAYS",
        value_name = "DAYS"
    )]
    pub default_days: Option<u32>,
    /// Seconds between two retention sweeps (1..=86400); one also runs at every start.
    #[arg(
        id = "retention.sweep_interval_seconds",
        long = "retention-sweep-interval-seconds",
        env = "SCAIVAULT_AUDIT_RETENTION_SWEEP_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub sweep_interval_seconds: Option<u64>,
    /// `[retention.tenants.<tenant_id>]`: per-tenant overrides, in the file only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantRetentionSection>,
    /// `[retention.cold_storage]`: where expiring events are exported before they are deleted,
    /// in the file only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_storage: Option<ColdStorage>,
}

/// `[retention.cold_storage]`: a destination of the same shape as an export's (docs/exports.md).
/// Each sweep exports every tenant's expiring events there (JSONL, gzip, signed manifest) under
/// `PREFIX<tenant_id>/`, and deletes them only once that export completed with the counts it
/// expects. Checked in full (bucket, prefix, credentials path, tenant confinement) by the export
/// code at start and before every export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdStorage {
    /// `s3`, `gcs`, `azure_blob` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// ScaiVault secret path of the destination credentials (optional only for `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_path: Option<String>,
}

/// `[retention.tenants.<tenant_id>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRetentionSection {
    /// Days this tenant's events stay (default: `[retention] default_days`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// Keep everything regardless of age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<bool>,
}

impl RetentionSection {
    /// This section over `lower`, key by key; the tenant tables as a whole (a table given
    /// in code replaces the file's).
    pub fn over(self, lower: Self) -> Self {
        RetentionSection {
            default_days: self.default_days.or(lower.default_days),
            sweep_interval_seconds: self.sweep_interval_seconds.or(lower.sweep_interval_seconds),
            tenants: if self.tenants.is_empty() {
                lower.tenants
            } else {
                self.tenants
            },
            cold_storage: self.cold_storage.or(lower.cold_storage),
        }
    }

    /// Defaults filled in and every value checked.
    pub fn resolve(&self) -> Result<RetentionSettings, ConfigError> {
        let default_days = self.default_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        check_days(
            "retention.default_days (SCAIVAULT_AUDIT_RETENTION_DEFAULT_DAYS)",
            default_days,
        )?;
        let seconds = self
            .sweep_interval_seconds
            .unwrap_or(DEFAULT_SWEEP_INTERVAL_SECONDS);
        if !(1..=MAX_SWEEP_INTERVAL_SECONDS).contains(&seconds) {
            return Err(invalid(
                "retention.sweep_interval_seconds (SCAIVAULT_AUDIT_RETENTION_SWEEP_INTERVAL_SECONDS)",
                &format!("must be between 1 and {MAX_SWEEP_INTERVAL_SECONDS}"),
            ));
        }
        if self.tenants.len() > MAX_TENANT_OVERRIDES {
            return Err(invalid(
                "retention.tenants",
                &format!("at most {MAX_TENANT_OVERRIDES} tenants"),
            ));
        }
        let mut tenants = BTreeMap::new();
        for (tenant, section) in &self.tenants {
            crate::event::check_tenant_id(tenant).map_err(|message| {
                invalid(
                    "retention.tenants",
                    &format!("tenant id '{tenant}' {message}"),
                )
            })?;
            let days = section.days.unwrap_or(default_days);
            check_days("retention.tenants.<tenant_id>.days", days)
                .map_err(|error| invalid("retention.tenants", &format!("{tenant}: {error}")))?;
            let policy = TenantRetention {
                days,
                legal_hold: section.legal_hold.unwrap_or(false),
            };
            tenants.insert(tenant.clone(), (policy, section.clone()));
        }
        if let Some(cold) = &self.cold_storage
            && (cold.kind.is_empty() || cold.bucket.is_empty())
        {
            return Err(invalid(
                "retention.cold_storage",
                "needs a type (s3, gcs, azure_blob or file) and a bucket",
            ));
        }
        Ok(RetentionSettings {
            default_days,
            sweep_interval: Duration::from_secs(seconds),
            tenants,
            cold_storage: self.cold_storage.clone(),
        })
    }
}

fn check_days(key: &'static str, days: u32) -> Result<(), ConfigError> {
    if (1..=MAX_RETENTION_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(invalid(
            key,
            &format!("must be between 1 and {MAX_RETENTION_DAYS} days"),
        ))
    }
}

/// One tenant's effective retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantRetention {
    /// Days an event stays.
    pub days: u32,
    /// Nothing of the tenant is deleted while this holds.
    pub legal_hold: bool,
}

impl TenantRetention {
    /// The cut-off at `now_us` (microseconds since the epoch): events with an older
    /// timestamp are expired. `None` under a legal hold.
    pub fn cutoff_us(&self, now_us: i64) -> Option<i64> {
        if self.legal_hold {
            return None;
        }
        let age_us = i64::from(self.days).saturating_mul(86_400_000_000);
        Some(now_us.saturating_sub(age_us))
    }
}

/// The resolved `[retention]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    pub default_days: u32,
    pub sweep_interval: Duration,
    /// The tenants with their own table: their effective retention, and the table as given
    /// (for `check-config`).
    tenants: BTreeMap<String, (TenantRetention, TenantRetentionSection)>,
    /// Where expiring events are exported before they are deleted, if anywhere.
    pub cold_storage: Option<ColdStorage>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            default_days: DEFAULT_RETENTION_DAYS,
            sweep_interval: Duration::from_secs(DEFAULT_SWEEP_INTERVAL_SECONDS),
            tenants: BTreeMap::new(),
            cold_storage: None,
        }
    }
}

impl RetentionSettings {
    /// `tenant`'s effective retention (its own table's, else the default).
    pub fn for_tenant(&self, tenant: &str) -> TenantRetention {
        self.tenants
            .get(tenant)
            .map_or(self.default_policy(), |(policy, _)| *policy)
    }

    /// Whether `tenant` has its own `[retention.tenants.*]` table.
    pub fn has_own(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// The retention of every tenant without its own table.
    pub fn default_policy(&self) -> TenantRetention {
        TenantRetention {
            days: self.default_days,
            legal_hold: false,
        }
    }

    /// The effective section, every key set.
    pub fn to_section(&self) -> RetentionSection {
        RetentionSection {
            default_days: Some(self.default_days),
            sweep_interval_seconds: Some(self.sweep_interval.as_secs()),
            tenants: self
                .tenants
                .iter()
                .map(|(tenant, (_, section))| (tenant.clone(), section.clone()))
                .collect(),
            cold_storage: self.cold_storage.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_seven_years_swept_hourly() {
        let settings = RetentionSection::default().resolve().unwrap();
        assert_eq!(settings.default_days, 2557);
        assert_eq!(settings.sweep_interval, Duration::from_secs(3600));
        let policy = settings.for_tenant("tnt_any");
        assert_eq!((policy.days, policy.legal_hold), (2557, false));
        assert_eq!(settings.to_section().resolve().unwrap(), settings);
    }

    #[test]
    fn tenants_override_days_and_hold() {
        let section: RetentionSection = toml::from_str(
            "default_days = 90\n[tenants.tnt_a]\ndays = 30\n[tenants.tnt_b]\nlegal_hold = true\n",
        )
        .unwrap();
        let settings = section.resolve().unwrap();
        assert_eq!(settings.for_tenant("tnt_a").days, 30);
        let held = settings.for_tenant("tnt_b");
        assert_eq!((held.days, held.legal_hold), (90, true));
        assert_eq!(held.cutoff_us(1_000_000_000_000_000), None);
        let now = 100 * 86_400_000_000;
        assert_eq!(
            settings.for_tenant("tnt_a").cutoff_us(now),
            Some(70 * 86_400_000_000)
        );
        assert_eq!(settings.for_tenant("tnt_c").days, 90);
        assert_eq!(settings.to_section().resolve().unwrap(), settings);
    }

    #[test]
    fn bounds_and_tenant_ids_are_checked() {
        let bad = [
            "default_days = 0\n",
            "default_days = 36501\n",
            "sweep_interval_seconds = 0\n",
            "sweep_interval_seconds = 86401\n",
            "[tenants.\"a b\"]\ndays = 3\n",
            "[tenants.tnt_a]\ndays = 0\n",
        ];
        for text in bad {
            let section: RetentionSection = toml::from_str(text).unwrap();
            let error = section.resolve().unwrap_err().to_string();
            assert!(error.contains("retention."), "{text}: {error}");
        }
        assert!(toml::from_str::<RetentionSection>("[tenants.tnt_a]\nweeks = 3\n").is_err());
    }
}
