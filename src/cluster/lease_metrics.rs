//! Metrics of the coordination leases (docs/metrics.md, "Cluster coordination"): which
//! cluster-wide roles this replica holds, and how often it took and lost leases. Registered in
//! both modes; they stay at zero in the embedded mode, which has no leases.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::snapshotter::SNAPSHOTTER_ROLE;
use super::sweeps::SWEEPER_ROLE;

/// The cluster-wide roles (label values of `cluster_role_held`).
const ROLES: [&str; 2] = [SWEEPER_ROLE, SNAPSHOTTER_ROLE];
/// The label value of export job leases.
const EXPORT_JOB: &str = "export_job";
/// The label value of any other lease.
const OTHER: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LeaseLabels {
    /// A role's name, `export_job`, or `other`.
    lease: &'static str,
}

/// The lease metrics; cheap to clone. Unregistered by default.
#[derive(Debug, Clone, Default)]
pub struct LeaseMetrics {
    role_held: Family<RoleLabels, Gauge>,
    acquisitions: Family<LeaseLabels, Counter>,
    losses: Family<LeaseLabels, Counter>,
}

impl LeaseMetrics {
    /// Creates the metrics, every known series at zero, and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = LeaseMetrics::default();
        for role in ROLES {
            let _ = metrics.role_held.get_or_create(&RoleLabels { role });
        }
        for lease in ROLES.into_iter().chain([EXPORT_JOB]) {
            let _ = metrics.acquisitions.get_or_create(&LeaseLabels { lease });
            let _ = metrics.losses.get_or_create(&LeaseLabels { lease });
        }
        registry.register(
            "cluster_role_held",
            "1 while this replica holds the cluster-wide role (clustered mode; 0 embedded)",
            metrics.role_held.clone(),
        );
        registry.register(
            "cluster_lease_acquisitions",
            "Coordination leases this replica took, by role or export_job",
            metrics.acquisitions.clone(),
        );
        registry.register(
            "cluster_lease_losses",
            "Coordination leases this replica lost while holding them (taken over, or not renewed within the TTL), by role or export_job; a release is no loss",
            metrics.losses.clone(),
        );
        metrics
    }

    /// A lease of `key` was taken.
    pub(super) fn acquired(&self, key: &str) {
        let lease = lease_label(key);
        self.acquisitions
            .get_or_create(&LeaseLabels { lease })
            .inc();
    }

    /// A held lease of `key` was lost.
    pub(super) fn lost(&self, key: &str) {
        let lease = lease_label(key);
        self.losses.get_or_create(&LeaseLabels { lease }).inc();
    }

    /// Whether this replica holds the role `name` now.
    pub(super) fn role_held(&self, name: &str, held: bool) {
        let role = role_label(name);
        self.role_held
            .get_or_create(&RoleLabels { role })
            .set(i64::from(held));
    }
}

/// The label of a role's name: a known role, or `other`.
fn role_label(name: &str) -> &'static str {
    ROLES
        .into_iter()
        .find(|role| *role == name)
        .unwrap_or(OTHER)
}

/// The label of a lease key: `role.<name>` → the role's, `export.<id>` → `export_job`.
fn lease_label(key: &str) -> &'static str {
    if let Some(name) = key.strip_prefix("role.") {
        return role_label(name);
    }
    if key.starts_with("export.") {
        return EXPORT_JOB;
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_a_fixed_set() {
        assert_eq!(lease_label("role.snapshotter"), "snapshotter");
        assert_eq!(lease_label("role.retention_sweeper"), "retention_sweeper");
        assert_eq!(lease_label("role.made_up"), "other");
        assert_eq!(lease_label("export.01JZ"), "export_job");
        assert_eq!(lease_label("job"), "other");
        assert_eq!(role_label("snapshotter"), "snapshotter");
        assert_eq!(role_label("tenant-x"), "other");
    }

    #[test]
    fn every_known_series_exists_from_the_start() {
        let mut registry = Registry::with_prefix("t");
        let metrics = LeaseMetrics::register(&mut registry);
        metrics.acquired("role.snapshotter");
        metrics.role_held("snapshotter", true);
        metrics.lost("export.x");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for series in [
            r#"t_cluster_role_held{role="snapshotter"} 1"#,
            r#"t_cluster_role_held{role="retention_sweeper"} 0"#,
            r#"t_cluster_lease_acquisitions_total{lease="snapshotter"} 1"#,
            r#"t_cluster_lease_acquisitions_total{lease="export_job"} 0"#,
            r#"t_cluster_lease_losses_total{lease="export_job"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
