//! Where exports are recorded: the REST API talks to an [`ExportRegistry`]. Standalone it is the
//! in-process runner's job directory; in a cluster it is the AuditExport resources.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::job::{ExportSpec, ExportStatus};

/// Page size bounds of `GET /v1/audit/exports`.
pub const DEFAULT_LIST_LIMIT: usize = 50;
pub const MAX_LIST_LIMIT: usize = 500;

/// One export as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// `exp_` followed by a lowercase ULID (time-ordered: newest sorts last).
    pub export_id: String,
    pub spec: ExportSpec,
    /// Identity that created the export (`kubectl` users appear as their resource's creator).
    pub requested_by: String,
    pub status: ExportStatus,
}

/// A page of exports, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportList {
    pub exports: Vec<ExportRecord>,
    /// Export id to continue after (exclusive), when more follow.
    pub next_after: Option<String>,
}

/// Failures of a registry backend.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The export exists but is already completed, failed or cancelled.
    #[error("export {0} has already finished")]
    Finished(String),
    /// The backend is unreachable or rejected the request.
    #[error("export registry unavailable: {0}")]
    Unavailable(String),
}

/// Creates, reads, lists and cancels exports, always within one tenant.
#[async_trait]
pub trait ExportRegistry: Send + Sync {
    /// Records a new pending export and schedules it.
    async fn create(&self, record: ExportRecord) -> Result<ExportRecord, RegistryError>;
    /// The export `export_id` of `tenant`, or `None` (also for another tenant's export).
    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError>;
    /// Exports of `tenant`, newest first, strictly older than `after` when given.
    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError>;
    /// Cancels a pending or running export; `None` when it does not exist for `tenant`.
    async fn cancel(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError>;
}

/// A page of `tenant`'s exports among `records` (keyed by export id), newest first, strictly
/// older than `after` when given.
pub fn page(
    records: &std::collections::BTreeMap<String, ExportRecord>,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
) -> ExportList {
    let mut matching = records
        .values()
        .rev()
        .filter(|record| record.spec.tenant_id == tenant)
        .filter(|record| after.is_none_or(|after| record.export_id.as_str() < after));
    let exports: Vec<ExportRecord> = matching.by_ref().take(limit).cloned().collect();
    let next_after = match matching.next() {
        Some(_) => exports.last().map(|record| record.export_id.clone()),
        None => None,
    };
    ExportList {
        exports,
        next_after,
    }
}

/// A new export id: `exp_` and a lowercase ULID (valid in Kubernetes names once `_` is `-`).
pub fn new_export_id() -> String {
    format!("exp_{}", ulid::Ulid::generate().to_string().to_lowercase())
}
