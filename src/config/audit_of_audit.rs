//! `[audit_of_audit]`: whether reads of audit data are themselves recorded as audit events
//! (issue 13; PCI DSS 10.2.1.3 asks for every access to audit logs to be logged).

use clap::Args;
use serde::{Deserialize, Serialize};

/// `[audit_of_audit]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditOfAuditSection {
    /// Record every read of audit data (logs, trails, summary, exports) as an `audit_read`
    /// event of the caller's tenant (default: on).
    #[arg(
        id = "audit_of_audit.enabled",
        long = "audit-of-audit-enabled",
        env = "SCAIVAULT_AUDIT_AUDIT_OF_AUDIT_ENABLED",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enabled: Option<bool>,
}

super::layered!(AuditOfAuditSection { enabled });

/// The resolved `[audit_of_audit]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOfAuditSettings {
    /// Reads of audit data are recorded.
    pub enabled: bool,
}

impl Default for AuditOfAuditSettings {
    fn default() -> Self {
        AuditOfAuditSettings { enabled: true }
    }
}

impl AuditOfAuditSection {
    /// Defaults filled in.
    pub fn resolve(&self) -> AuditOfAuditSettings {
        AuditOfAuditSettings {
            enabled: self
                .enabled
                .unwrap_or(AuditOfAuditSettings::default().enabled),
        }
    }
}

impl AuditOfAuditSettings {
    /// The effective section.
    pub fn to_section(self) -> AuditOfAuditSection {
        AuditOfAuditSection {
            enabled: Some(self.enabled),
        }
    }
}
