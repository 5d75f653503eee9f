//! What the controller needs from the export engine, as a trait: the controller runs the real
//! [`ExportEngine`], its tests a scripted fake.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::export::engine::{ExportEngine, ExportOutcome, ProgressReporter};
use crate::export::job::{Checkpoint, ExportFailure, ExportSpec};

/// Runs export jobs (see [`ExportEngine`]).
#[async_trait]
pub trait Exporter: Send + Sync + 'static {
    /// Refuses a spec outside this installation's confinement (credentials prefixes, file
    /// root) before anything is estimated, recorded or fetched.
    fn confine(&self, spec: &ExportSpec) -> Result<(), ExportFailure>;
    /// Events the export would write now.
    async fn estimate(&self, spec: &ExportSpec) -> Result<u64, ExportFailure>;
    /// A checkpoint for a job starting now (fixes its snapshot).
    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure>;
    /// Runs (or resumes) a job until it completes, fails or `cancel` fires.
    async fn run(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure>;
    /// Removes the incomplete uploads of a job that will not finish.
    async fn abort(&self, export_id: &str, spec: &ExportSpec) -> Result<(), ExportFailure>;
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

    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
        ExportEngine::start_checkpoint(self).await
    }

    async fn run(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        ExportEngine::run(self, export_id, spec, checkpoint, progress, cancel).await
    }

    async fn abort(&self, export_id: &str, spec: &ExportSpec) -> Result<(), ExportFailure> {
        ExportEngine::abort(self, export_id, spec).await
    }
}
