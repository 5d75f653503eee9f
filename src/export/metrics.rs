//! Prometheus metrics of export jobs, by destination type (and outcome), in both modes: the
//! standalone runner and the operator run jobs on the same [`super::engine::ExportEngine`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::job::DestinationType;

/// How a job run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Completed,
    Failed,
    Cancelled,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub destination: &'static str,
    pub outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.1 s … ~27 min.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// Handles to every export metric; cheap to clone. Unregistered by default.
#[derive(Debug, Clone)]
pub struct ExportMetrics {
    pub runs: Family<OutcomeLabels, Counter>,
    pub run_duration: Family<OutcomeLabels, Histogram>,
    pub records: Family<DestinationLabels, Counter>,
    pub bytes: Family<DestinationLabels, Counter>,
    pub parts: Family<DestinationLabels, Counter>,
    pub retries: Family<DestinationLabels, Counter>,
}

impl Default for ExportMetrics {
    fn default() -> Self {
        ExportMetrics {
            runs: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            records: Family::default(),
            bytes: Family::default(),
            parts: Family::default(),
            retries: Family::default(),
        }
    }
}

impl ExportMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ExportMetrics::default();
        metrics.start_at_zero();
        registry.register(
            "export_runs",
            "Export job runs that ended, by destination type and outcome (completed, failed, cancelled; a run stopped by a shutdown counts as cancelled and resumes at the next start)",
            metrics.runs.clone(),
        );
        registry.register(
            "export_run_duration_seconds",
            "Time one export job run took, by destination type and outcome",
            metrics.run_duration.clone(),
        );
        registry.register(
            "export_records",
            "Records written to export destinations",
            metrics.records.clone(),
        );
        registry.register(
            "export_bytes",
            "Bytes of part files uploaded to export destinations",
            metrics.bytes.clone(),
        );
        registry.register(
            "export_parts",
            "Part files uploaded to export destinations",
            metrics.parts.clone(),
        );
        registry.register(
            "export_retries",
            "Export steps retried after a transient failure",
            metrics.retries.clone(),
        );
        metrics
    }

    /// Creates every labelled series at zero, so that they are scraped (and `increase()` sees
    /// the first failure) before any job ran.
    fn start_at_zero(&self) {
        let destinations = [
            DestinationType::S3,
            DestinationType::Gcs,
            DestinationType::AzureBlob,
            DestinationType::File,
        ];
        let outcomes = [
            RunOutcome::Completed,
            RunOutcome::Failed,
            RunOutcome::Cancelled,
        ];
        for destination in destinations.map(DestinationType::as_str) {
            let labels = DestinationLabels { destination };
            for family in [&self.records, &self.bytes, &self.parts, &self.retries] {
                let _ = family.get_or_create(&labels);
            }
            for outcome in outcomes.map(RunOutcome::as_str) {
                let labels = OutcomeLabels {
                    destination,
                    outcome,
                };
                let _ = self.runs.get_or_create(&labels);
                let _ = self.run_duration.get_or_create(&labels);
            }
        }
    }

    /// One uploaded part of `records` records and `bytes` bytes.
    pub fn part(&self, destination: DestinationType, records: u64, bytes: u64) {
        let labels = DestinationLabels {
            destination: destination.as_str(),
        };
        self.parts.get_or_create(&labels).inc();
        self.records.get_or_create(&labels).inc_by(records);
        self.bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// One retried step.
    pub fn retry(&self, destination: DestinationType) {
        let labels = DestinationLabels {
            destination: destination.as_str(),
        };
        self.retries.get_or_create(&labels).inc();
    }

    /// One finished run.
    pub fn run(&self, destination: DestinationType, outcome: RunOutcome, took: Duration) {
        let labels = OutcomeLabels {
            destination: destination.as_str(),
            outcome: outcome.as_str(),
        };
        self.runs.get_or_create(&labels).inc();
        self.run_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}
