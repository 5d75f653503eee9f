//! What the controller needs from the export engine, as a trait: the controller runs the real
//! [`ExportEngine`], its tests a scripted fake.

use async_trait::async_trait;

use crate::export::engine::ExportEngine;
use crate::export::job::{ExportFailure, ExportSpec, LateSummary};
use crate::export::supervisor::JobEngine;

/// What the controller asks before a job starts; the job itself runs through [`JobEngine`]
/// (see [`ExportEngine`]).
#[async_trait]
pub trait Exporter: JobEngine {
    /// Refuses a spec outside this installation's confinement (credentials prefixes, file
    /// root) before anything is estimated, recorded or fetched.
    fn confine(&self, spec: &ExportSpec) -> Result<(), ExportFailure>;
    /// Events the export would write now.
    async fn estimate(&self, spec: &ExportSpec) -> Result<u64, ExportFailure>;
    /// The late events of a scheduled run (`spec.late`) at its snapshot (`None` for other
    /// exports): counted for the `AuditExportSchedule`'s `lastRuns`.
    async fn late_summary(
        &self,
        spec: &ExportSpec,
        snapshot_seq: u64,
    ) -> Result<Option<LateSummary>, ExportFailure>;
}

#[async_trait]
impl Exporter for ExportEngine {
    fn confine(&self, spec: &ExportSpec) -> Result<(), ExportFailure> {
        self.policy()
            .check(spec)
            .map_err(|refusal| refusal.to_failure())
    }

    async fn estimate(&self, spec: &ExportSpec) -> Result<u64, ExportFailure> {
        ExportEngine::estimate(self, spec).await
    }

    async fn late_summary(
        &self,
        spec: &ExportSpec,
        snapshot_seq: u64,
    ) -> Result<Option<LateSummary>, ExportFailure> {
        ExportEngine::late_summary(self, spec, snapshot_seq).await
    }
}
