//! The controller's entries in the audit log: `export_created` for every export accepted from
//! a resource the service did not create (REST-created exports are recorded by the API before
//! their resource exists).
//!
//! The event id is derived from the export id (`export_created:EXPORT_ID`) and stored with
//! deduplication, so a reconcile that is retried, or repeated by the next leader, records it
//! once.

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::job::ExportSpec;
use crate::store::{PreparedEvent, Store};

/// Where the controller appends audit events (the store; a fake in tests).
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends `event` durably; an event whose id is already stored is acknowledged, not
    /// stored again.
    async fn append(&self, event: AuditEvent) -> Result<(), String>;
}

#[async_trait]
impl AuditLog for Store {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        self.ingest(vec![PreparedEvent::new(event, true)])
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// The id of an export's `export_created` event recorded by the controller.
pub fn export_created_id(export_id: &str) -> String {
    format!("export_created:{export_id}")
}

/// The `export_created` event of an export accepted from a resource; `actor` is
/// `kubernetes:NAMESPACE/NAME` (the resource's author is not known to the service).
pub fn export_created(
    export_id: &str,
    spec: &ExportSpec,
    estimated_records: u64,
    actor: &str,
    now: Timestamp,
) -> AuditEvent {
    let mut extra = spec.export_created_details(export_id, estimated_records);
    extra.insert("created_through".into(), json!("AuditExport"));
    AuditEvent {
        id: export_created_id(export_id),
        tenant_id: spec.tenant_id.clone(),
        timestamp_us: now.as_microsecond(),
        action: Action::ExportCreated,
        secret_path: spec.destination.credentials_path.clone(),
        identity_type: IdentityType::System,
        identity_id: actor.to_string(),
        source_ip: None,
        user_agent: None,
        success: true,
        duration_ms: None,
        request_id: None,
        extra_data: extra,
    }
}
