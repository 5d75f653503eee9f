//! Prometheus metrics of the controller (names get the registry's `scaivault_audit_` prefix
//! and the `operator_` sub-prefix).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::crd::ExportJobPhase;

/// Outcome of one reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum ReconcileResult {
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: ReconcileResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The failed step ([`super::controller::Error::metric_label`]).
    pub error: &'static str,
}

/// Job phase label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum PhaseLabel {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: PhaseLabel,
}

/// Handles to every controller metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub job_transitions: Family<PhaseLabels, Counter>,
    pub running_jobs: Gauge,
    pub leader: Gauge,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            job_transitions: Family::default(),
            running_jobs: Gauge::default(),
            leader: Gauge::default(),
        }
    }
}

impl OperatorMetrics {
    /// Creates the metrics and registers them under `operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = OperatorMetrics::default();
        metrics.start_at_zero();
        let registry = registry.sub_registry_with_prefix("operator");
        registry.register(
            "reconciles",
            "AuditExport reconciles by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed AuditExport reconciles by failed step",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one AuditExport reconcile took",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "export_jobs",
            "Export jobs entering each phase",
            metrics.job_transitions.clone(),
        );
        registry.register(
            "running_export_jobs",
            "Export jobs running in this process",
            metrics.running_jobs.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the operator lease and runs export jobs",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Creates every labelled series at zero, so that they are scraped (and `increase()` sees
    /// the first event) before anything happened.
    fn start_at_zero(&self) {
        for result in [ReconcileResult::Ok, ReconcileResult::Error] {
            let _ = self.reconciles.get_or_create(&ResultLabels { result });
        }
        for error in super::controller::ERROR_LABELS {
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels { error });
        }
        for phase in [
            PhaseLabel::Pending,
            PhaseLabel::Running,
            PhaseLabel::Completed,
            PhaseLabel::Failed,
            PhaseLabel::Cancelled,
        ] {
            let _ = self.job_transitions.get_or_create(&PhaseLabels { phase });
        }
    }

    pub fn observe_reconcile(&self, result: ReconcileResult, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    pub fn job_phase(&self, phase: ExportJobPhase) {
        let phase = match phase {
            ExportJobPhase::Pending => PhaseLabel::Pending,
            ExportJobPhase::Running => PhaseLabel::Running,
            ExportJobPhase::Completed => PhaseLabel::Completed,
            ExportJobPhase::Failed => PhaseLabel::Failed,
            ExportJobPhase::Cancelled => PhaseLabel::Cancelled,
        };
        self.job_transitions
            .get_or_create(&PhaseLabels { phase })
            .inc();
    }
}
