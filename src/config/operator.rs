//! `[operator]`: the AuditExport controller, its namespaces and its leader-election Lease.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default lease of the operator's leader election.
pub const DEFAULT_LEASE_NAME: &str = "scaivault-audit-operator";

/// `[operator]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorSection {
    /// Run the AuditExport operator (default: on when running inside a cluster).
    #[arg(
        id = "operator.enabled",
        long = "operator",
        env = "SCAIVAULT_AUDIT_OPERATOR",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enabled: Option<bool>,
    /// Namespace whose AuditExports the operator runs and the REST API creates (default: the
    /// client's namespace, i.e. the pod's).
    #[arg(
        id = "operator.namespace",
        long = "operator-namespace",
        env = "SCAIVAULT_AUDIT_OPERATOR_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
    /// Lease (in the operator namespace) through which the replicas elect the one that runs
    /// exports.
    #[arg(
        id = "operator.lease_name",
        long = "operator-lease-name",
        env = "SCAIVAULT_AUDIT_OPERATOR_LEASE_NAME",
        value_name = "NAME"
    )]
    pub lease_name: Option<String>,
    /// Namespaces whose AuditExports the operator runs, comma-separated (default: the operator
    /// namespace; that namespace is always watched, REST-created exports live there).
    #[arg(
        id = "operator.namespaces",
        long = "operator-namespaces",
        env = "SCAIVAULT_AUDIT_OPERATOR_NAMESPACES",
        value_name = "NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Option<Vec<String>>,
}

super::layered!(OperatorSection {
    enabled,
    namespace,
    lease_name,
    namespaces,
});

/// The operator's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    pub enabled: bool,
    /// `None`: the Kubernetes client's default namespace.
    pub namespace: Option<String>,
    /// `[export] max_concurrent_jobs`, the same limit as the standalone runner's.
    pub max_concurrent_exports: usize,
    pub lease_name: String,
    /// This replica's lease identity: the pod name (`HOSTNAME`).
    pub identity: String,
    /// Further namespaces whose AuditExports the controller runs (besides `namespace`).
    pub namespaces: Vec<String>,
}

/// Whether the process runs in a Kubernetes pod (the API server's service is in the env).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

impl OperatorSection {
    /// Defaults filled in and every value checked; the operator runs at most
    /// `max_concurrent_exports` jobs.
    pub fn resolve(&self, max_concurrent_exports: usize) -> Result<OperatorSettings, ConfigError> {
        let identity = std::env::var("HOSTNAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("scaivault-audit-{}", std::process::id()));
        let lease_name = self
            .lease_name
            .clone()
            .unwrap_or_else(|| DEFAULT_LEASE_NAME.into());
        if !is_dns_subdomain(&lease_name) {
            return Err(invalid(
                "operator.lease_name (SCAIVAULT_AUDIT_OPERATOR_LEASE_NAME)",
                &format!("'{lease_name}' is not a Kubernetes object name (RFC 1123 subdomain)"),
            ));
        }
        Ok(OperatorSettings {
            enabled: self.enabled.unwrap_or_else(in_cluster),
            namespace: self.namespace.clone(),
            max_concurrent_exports,
            lease_name,
            identity,
            namespaces: self.checked_namespaces()?,
        })
    }

    /// `namespaces`: DNS labels (RFC 1123), without duplicates, in the given order.
    fn checked_namespaces(&self) -> Result<Vec<String>, ConfigError> {
        let given = self.namespaces.as_deref().unwrap_or_default();
        let mut namespaces: Vec<String> = Vec::with_capacity(given.len());
        for namespace in given.iter().map(|name| name.trim()) {
            if !is_dns_label(namespace) {
                return Err(invalid(
                    "operator.namespaces",
                    &format!("'{namespace}' is not a namespace name (RFC 1123 label)"),
                ));
            }
            if !namespaces.iter().any(|known| known == namespace) {
                namespaces.push(namespace.to_string());
            }
        }
        Ok(namespaces)
    }
}

impl OperatorSettings {
    /// The effective section, every key set (`namespaces` only when there are any).
    pub fn to_section(&self) -> OperatorSection {
        OperatorSection {
            enabled: Some(self.enabled),
            namespace: self.namespace.clone(),
            lease_name: Some(self.lease_name.clone()),
            namespaces: Some(self.namespaces.clone()).filter(|list| !list.is_empty()),
        }
    }
}

/// An RFC 1123 label: 1 to 63 of a-z 0-9 -, not starting or ending with -.
fn is_dns_label(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(allowed)
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An RFC 1123 subdomain (most Kubernetes object names): dot-separated labels, at most 253.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}
