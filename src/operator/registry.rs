//! The REST API's exports in a cluster: one AuditExport resource per export.
//!
//! `POST /v1/audit/export` creates a resource named after the export id (`exp_…` with `-` for
//! `_`) that records the tenant (`spec.tenantId`), the requester and the id (annotations,
//! signed: see [`super::trust`]), then writes its `Pending` status. Resources applied with kubectl get their id from the
//! controller (`status.exportId`) and appear in the listing with the same status.
//! `DELETE /v1/audit/exports/{id}` annotates the resource; the controller cancels the job.

use std::collections::BTreeMap;

use async_trait::async_trait;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::crd::{AuditExport, ExportJobPhase};
use super::status;
use super::trust::{self, AnnotationSigner, Origin, SIGNATURE_ANNOTATION, Signed};
use super::{
    CANCEL_ANNOTATION, EXPORT_ID_ANNOTATION, REQUESTED_BY_ANNOTATION, controller, convert,
};
use crate::export::registry::{ExportList, ExportRecord, ExportRegistry, RegistryError};

/// Label with the tenant, so tenants can be selected with `kubectl get aex -l`.
pub const TENANT_LABEL: &str = "audit.scailabs.ai/tenant";

/// [`ExportRegistry`] over the AuditExport resources of the watched namespaces; it creates
/// resources in the operator namespace.
#[derive(Clone)]
pub struct KubeRegistry {
    api: Api<AuditExport>,
    client: Client,
    namespace: String,
    /// Every namespace the operator runs AuditExports of (the operator namespace first).
    watched: Vec<String>,
    signer: AnnotationSigner,
}

impl KubeRegistry {
    pub fn new(client: Client, namespace: &str, signer: AnnotationSigner) -> Self {
        KubeRegistry {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            watched: vec![namespace.to_string()],
            signer,
        }
    }

    /// Also lists the AuditExports of `namespaces` (`[operator] namespaces`).
    pub fn watching(mut self, namespaces: &[String]) -> Self {
        for namespace in namespaces {
            if !self.watched.contains(namespace) {
                self.watched.push(namespace.clone());
            }
        }
        self
    }

    /// The resources of every watched namespace.
    async fn list_all(&self) -> Result<Vec<AuditExport>, RegistryError> {
        let mut all = Vec::new();
        for namespace in &self.watched {
            let api: Api<AuditExport> = Api::namespaced(self.client.clone(), namespace);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(unavailable)?;
            all.extend(list.items);
        }
        Ok(all)
    }

    /// The resource name of a REST-created export.
    pub fn resource_name(export_id: &str) -> String {
        export_id.replace('_', "-")
    }

    async fn find(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<AuditExport>, RegistryError> {
        // REST-created exports are found by name; kubectl-created ones by their status.
        let by_name = self
            .api
            .get_opt(&Self::resource_name(export_id))
            .await
            .map_err(unavailable)?;
        if let Some(object) = by_name
            .filter(|object| export_id_of(object, &self.signer).as_deref() == Some(export_id))
        {
            return Ok((object.spec.tenant_id == tenant).then_some(object));
        }
        let all = self.list_all().await?;
        Ok(all.into_iter().find(|object| {
            object.spec.tenant_id == tenant
                && export_id_of(object, &self.signer).as_deref() == Some(export_id)
        }))
    }

    fn record_of(&self, object: &AuditExport) -> Option<ExportRecord> {
        record_of(object, &self.signer)
    }
}

/// The export id of a resource: its status, else the (signed) annotation of a REST-created one.
fn export_id_of(object: &AuditExport, signer: &AnnotationSigner) -> Option<String> {
    let from_status = object
        .status
        .as_ref()
        .and_then(|status| status.export_id.clone());
    from_status.or_else(|| match trust::origin(object, signer) {
        Origin::Service { export_id, .. } => Some(export_id),
        Origin::Namespace => None,
    })
}

/// The REST view of a resource; `None` for resources without an id yet or with an invalid
/// spec (they are not exports the API could describe). The requester is the signed
/// `requested-by` annotation of a REST-created resource, else `kubernetes:NAMESPACE/NAME`.
pub fn record_of(object: &AuditExport, signer: &AnnotationSigner) -> Option<ExportRecord> {
    let export_id = export_id_of(object, signer)?;
    let spec = convert::export_spec(&object.spec).ok()?;
    let requested_by = match trust::origin(object, signer) {
        Origin::Service { requested_by, .. } => requested_by,
        Origin::Namespace => trust::resource_actor(object),
    };
    let created_at = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|time| status::rfc3339(time.0))
        .unwrap_or_default();
    Some(ExportRecord {
        export_id,
        spec,
        requested_by,
        status: convert::export_status(object.status.as_ref(), created_at),
    })
}

fn unavailable(error: kube::Error) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

#[async_trait]
impl ExportRegistry for KubeRegistry {
    async fn create(&self, record: ExportRecord) -> Result<ExportRecord, RegistryError> {
        let name = Self::resource_name(&record.export_id);
        let spec = convert::resource_spec(&record.spec);
        let signature = self
            .signer
            .sign(&Signed {
                namespace: &self.namespace,
                name: &name,
                export_id: &record.export_id,
                requested_by: &record.requested_by,
                spec: &spec,
            })
            .ok_or_else(|| RegistryError::Unavailable("failed to sign the resource".into()))?;
        let mut object = AuditExport::new(&name, spec);
        object.metadata.annotations = Some(BTreeMap::from([
            (EXPORT_ID_ANNOTATION.to_string(), record.export_id.clone()),
            (
                REQUESTED_BY_ANNOTATION.to_string(),
                record.requested_by.clone(),
            ),
            (SIGNATURE_ANNOTATION.to_string(), signature),
        ]));
        if crate::event::check_tenant_id(&record.spec.tenant_id).is_ok()
            && record.spec.tenant_id.len() <= 63
        {
            object.metadata.labels = Some(BTreeMap::from([(
                TENANT_LABEL.to_string(),
                record.spec.tenant_id.clone(),
            )]));
        }
        let created = self
            .api
            .create(&PostParams::default(), &object)
            .await
            .map_err(unavailable)?;
        // Pending with the id and estimate right away, so GET shows them before the
        // controller picks the resource up.
        let mut pending = created.status.clone().unwrap_or_default();
        pending.export_id = Some(record.export_id.clone());
        pending.estimated_records = Some(record.status.estimated_records);
        status::set_phase(
            &mut pending,
            ExportJobPhase::Pending,
            created.metadata.generation,
            k8s_openapi::jiff::Timestamp::now(),
        );
        controller::patch_status(&self.api, &name, &pending)
            .await
            .map_err(|error| RegistryError::Unavailable(error.to_string()))?;
        Ok(record)
    }

    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        Ok(self
            .find(tenant, export_id)
            .await?
            .as_ref()
            .and_then(|object| self.record_of(object)))
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError> {
        let all = self.list_all().await?;
        let mut records: Vec<ExportRecord> = all
            .iter()
            .filter(|object| object.spec.tenant_id == tenant)
            .filter_map(|object| self.record_of(object))
            .filter(|record| after.is_none_or(|after| record.export_id.as_str() < after))
            .collect();
        // Ids are ULIDs: descending id order is newest first.
        records.sort_by(|a, b| b.export_id.cmp(&a.export_id));
        let more = records.len() > limit;
        records.truncate(limit);
        let next_after = if more {
            records.last().map(|record| record.export_id.clone())
        } else {
            None
        };
        Ok(ExportList {
            exports: records,
            next_after,
        })
    }

    async fn cancel(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        let Some(object) = self.find(tenant, export_id).await? else {
            return Ok(None);
        };
        let Some(record) = self.record_of(&object) else {
            return Ok(None);
        };
        if record.status.phase.is_terminal() {
            return Err(RegistryError::Finished(export_id.to_string()));
        }
        let patch = json!({"metadata": {"annotations": {CANCEL_ANNOTATION: "true"}}});
        let namespace = object.namespace().unwrap_or_else(|| self.namespace.clone());
        let api: Api<AuditExport> = Api::namespaced(self.client.clone(), &namespace);
        let patched = api
            .patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(unavailable)?;
        Ok(self.record_of(&patched).or(Some(record)))
    }
}
