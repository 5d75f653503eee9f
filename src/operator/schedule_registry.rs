//! The REST API's view of the cluster's continuous exports: `GET /v1/audit/export-schedules`
//! and `GET /v1/audit/export-schedules/{id}` in operator mode list and show the tenant's
//! `AuditExportSchedule` resources, in the same shape as standalone schedules.
//!
//! Only schedules the controller accepted are shown (`status.scheduleId` is set: the spec was
//! valid and the namespace's `audit.scailabs.ai/tenant` label allowed its tenant), so a
//! resource naming a tenant it may not name is never shown to that tenant. Reads come from a
//! [`reflector`] cache per watched namespace (every replica keeps one), as for AuditExports;
//! until each cache has its first full list, reads wait up to [`READY_WAIT`] and then answer
//! 503.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::schedule_convert::{created_by, schedule_record, schedule_spec};
use super::schedule_crd::AuditExportSchedule;
use crate::export::schedule::ScheduleRecord;

/// How long a read waits for the caches' first full list before answering 503.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// Why the schedules cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("export schedules unavailable: {0}")]
pub struct Unavailable(String);

/// A schedule as the REST API shows it: its record and its resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSchedule {
    pub record: ScheduleRecord,
    pub namespace: String,
    pub name: String,
}

/// The reflector tasks; aborted when the last handle is dropped.
#[derive(Default)]
struct Reflectors(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Reflectors {
    fn drop(&mut self) {
        for task in self.0.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// The AuditExportSchedules of the watched namespaces, read-only. Cheap to clone.
#[derive(Clone)]
pub struct KubeSchedules {
    stores: Vec<Store<AuditExportSchedule>>,
    /// Kept for their drop (which stops the watches).
    _reflectors: Arc<Reflectors>,
    ready_wait: Duration,
}

impl KubeSchedules {
    /// Starts one reflector per namespace (call within a Tokio runtime).
    pub fn new(client: &Client, namespaces: &[String]) -> Self {
        let reflectors = Reflectors::default();
        let mut stores = Vec::new();
        for namespace in namespaces {
            let (store, writer) = reflector::store();
            let api: Api<AuditExportSchedule> = Api::namespaced(client.clone(), namespace);
            let events = watcher(api, watcher::Config::default())
                .default_backoff()
                .map_ok(|event| event.modify(|object| object.managed_fields_mut().clear()));
            let namespace = namespace.clone();
            let task = tokio::spawn(async move {
                reflector::reflector(writer, events)
                    .for_each(|event| {
                        if let Err(error) = event {
                            tracing::warn!(%namespace, %error, "AuditExportSchedule watch failed; retrying");
                        }
                        futures::future::ready(())
                    })
                    .await;
            });
            reflectors.0.lock().push(task);
            stores.push(store);
        }
        KubeSchedules {
            stores,
            _reflectors: Arc::new(reflectors),
            ready_wait: READY_WAIT,
        }
    }

    /// The accepted schedules of `tenant`, oldest first.
    pub async fn list(
        &self,
        tenant: &str,
        now_us: i64,
    ) -> Result<Vec<ClusterSchedule>, Unavailable> {
        self.ready().await?;
        let mut found: Vec<ClusterSchedule> = self
            .stores
            .iter()
            .flat_map(|store| store.state_filter(|object| object.spec.tenant_id == tenant))
            .filter_map(|object| cluster_schedule(&object, now_us))
            .collect();
        // Ids are ULIDs of the creation time: ascending is oldest first.
        found.sort_by(|a, b| a.record.spec.schedule_id.cmp(&b.record.spec.schedule_id));
        Ok(found)
    }

    /// The accepted schedule `schedule_id` of `tenant` (`None` also for another tenant's).
    pub async fn get(
        &self,
        tenant: &str,
        schedule_id: &str,
        now_us: i64,
    ) -> Result<Option<ClusterSchedule>, Unavailable> {
        Ok(self
            .list(tenant, now_us)
            .await?
            .into_iter()
            .find(|schedule| schedule.record.spec.schedule_id == schedule_id))
    }

    async fn ready(&self) -> Result<(), Unavailable> {
        let all =
            futures::future::try_join_all(self.stores.iter().map(|store| store.wait_until_ready()));
        match tokio::time::timeout(self.ready_wait, all).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Unavailable(error.to_string())),
            Err(_) => Err(Unavailable(
                "the AuditExportSchedule cache has not finished its first list yet".into(),
            )),
        }
    }
}

/// The REST view of an accepted resource (`None` before the controller accepted it).
pub fn cluster_schedule(object: &AuditExportSchedule, now_us: i64) -> Option<ClusterSchedule> {
    let status = object.status.as_ref()?;
    let schedule_id = status.schedule_id.clone()?;
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let created_at_us = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now_us, |time| time.0.as_microsecond());
    // Accepted already: its cron is not held to today's minimum interval.
    let spec = schedule_spec(
        &object.spec,
        schedule_id,
        &created_by(&namespace, &name),
        0,
        created_at_us,
    )
    .ok()?;
    let record = schedule_record(spec, Some(status), now_us).ok()?;
    Some(ClusterSchedule {
        record,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::operator::crd::{DestinationKind, ExportDestination, ExportFileFormat};
    use crate::operator::schedule_crd::{AuditExportScheduleSpec, AuditExportScheduleStatus};
    use kube::Resource;
    use kube::runtime::watcher::Event;

    fn resource(name: &str, tenant: &str, schedule_id: Option<&str>) -> AuditExportSchedule {
        let mut object = AuditExportSchedule::new(
            name,
            AuditExportScheduleSpec {
                tenant_id: tenant.into(),
                schedule: "*/10 * * * *".into(),
                delay_seconds: None,
                start: Some("2026-12-03T14:00:00Z".into()),
                format: ExportFileFormat::Jsonl,
                compression: None,
                filters: None,
                destination: ExportDestination {
                    kind: DestinationKind::File,
                    bucket: "out".into(),
                    prefix: None,
                    credentials_path: None,
                },
                max_records_per_file: None,
            },
        );
        object.meta_mut().namespace = Some("team-a".into());
        object.status = schedule_id.map(|id| AuditExportScheduleStatus {
            schedule_id: Some(id.into()),
            complete_through: Some("2026-12-03T14:00:00.000000Z".into()),
            next_run_at: Some("2026-12-03T14:10:00.000000Z".into()),
            ..AuditExportScheduleStatus::default()
        });
        object
    }

    #[tokio::test]
    async fn only_the_tenants_accepted_schedules_are_listed() {
        let (store, mut writer) = reflector::store();
        let first = "sch_01jz0000000000000000000001";
        let second = "sch_01jz0000000000000000000002";
        writer.apply_watcher_event(&Event::Init);
        for object in [
            resource("b", "tnt_acme", Some(second)),
            resource("a", "tnt_acme", Some(first)),
            // Not accepted (refused or not reconciled yet): not shown.
            resource("pending", "tnt_acme", None),
            resource(
                "other",
                "tnt_globex",
                Some("sch_01jz0000000000000000000003"),
            ),
        ] {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let schedules = KubeSchedules {
            stores: vec![store],
            _reflectors: Arc::default(),
            ready_wait: Duration::from_millis(100),
        };
        let now = crate::timestamp::parse_rfc3339_micros("2026-12-03T14:05:00Z").unwrap();
        let listed = schedules.list("tnt_acme", now).await.unwrap();
        let ids: Vec<&str> = listed
            .iter()
            .map(|schedule| schedule.record.spec.schedule_id.as_str())
            .collect();
        assert_eq!(ids, [first, second]);
        assert_eq!(listed[0].name, "a");
        assert_eq!(listed[0].namespace, "team-a");
        assert_eq!(listed[0].record.spec.created_by, "kubernetes:team-a/a");
        assert_eq!(listed[0].record.spec.delay_seconds, 300);
        let found = schedules.get("tnt_acme", second, now).await.unwrap();
        assert_eq!(found.map(|schedule| schedule.name), Some("b".into()));
        let foreign = "sch_01jz0000000000000000000003";
        assert!(
            schedules
                .get("tnt_acme", foreign, now)
                .await
                .unwrap()
                .is_none()
        );
    }
}
