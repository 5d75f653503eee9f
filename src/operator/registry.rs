//! The REST API's exports in a cluster: one AuditExport resource per export.
//!
//! `POST /v1/audit/export` creates a resource named after the export id (`exp_…` with `-` for
//! `_`) that records the tenant (`spec.tenantId`), the requester, the id and the estimate
//! (annotations; all but the estimate signed: see [`super::trust`]). It writes no status: the
//! leader's controller accepts the resource (`Pending`) and reports its job. Resources applied
//! with kubectl get their id from the controller (`status.exportId`) and appear in the listing
//! with the same status. `DELETE /v1/audit/exports/{id}` annotates the resource; the controller
//! cancels the job.
//!
//! Reads (`GET /v1/audit/exports[/{id}]`) are served from a [`reflector`] cache of the
//! AuditExports of every watched namespace, which every replica keeps (one watch per
//! namespace), not from a LIST per request. Until each cache has its first full list, reads
//! wait up to [`READY_WAIT`] and then answer that exports are unavailable (503). A replica
//! sees the resource it created before it answers the POST (up to [`SYNC_WAIT`]), so its next
//! read finds it; another replica sees it as soon as its watch delivers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::crd::AuditExport;
use super::status;
use super::trust::{self, AnnotationSigner, Origin, SIGNATURE_ANNOTATION, Signed};
use super::{
    CANCEL_ANNOTATION, ESTIMATED_RECORDS_ANNOTATION, EXPORT_ID_ANNOTATION, REQUESTED_BY_ANNOTATION,
    convert,
};
use crate::export::registry::{ExportList, ExportRecord, ExportRegistry, RegistryError};

/// Label with the tenant, so tenants can be selected with `kubectl get aex -l`.
pub const TENANT_LABEL: &str = "audit.scailabs.ai/tenant";
/// How long a read waits for the caches' first full list before answering 503.
pub const READY_WAIT: Duration = Duration::from_secs(5);
/// How long `create` waits for the cache to show the resource it created.
pub const SYNC_WAIT: Duration = Duration::from_secs(5);

/// The cached AuditExports of one namespace.
#[derive(Clone)]
struct Cache {
    namespace: String,
    store: Store<AuditExport>,
    /// Bumped after every watch event the store has applied.
    applied: watch::Receiver<u64>,
}

/// The reflector tasks; aborted when the last registry handle is dropped.
#[derive(Default)]
struct Reflectors(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Reflectors {
    fn drop(&mut self) {
        for task in self.0.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// [`ExportRegistry`] over the AuditExport resources of the watched namespaces; it creates
/// resources in the operator namespace and reads from its reflector caches.
#[derive(Clone)]
pub struct KubeRegistry {
    api: Api<AuditExport>,
    client: Client,
    namespace: String,
    /// One per watched namespace, the operator namespace first.
    caches: Vec<Cache>,
    signer: AnnotationSigner,
    reflectors: Arc<Reflectors>,
    ready_wait: Duration,
    sync_wait: Duration,
}

impl KubeRegistry {
    /// The registry of `namespace` (where REST-created resources go); starts its cache's
    /// reflector, so it must be called within a Tokio runtime.
    pub fn new(client: Client, namespace: &str, signer: AnnotationSigner) -> Self {
        let registry = KubeRegistry {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            caches: Vec::new(),
            signer,
            reflectors: Arc::default(),
            ready_wait: READY_WAIT,
            sync_wait: SYNC_WAIT,
        };
        registry.watching(&[namespace.to_string()])
    }

    /// Also serves the AuditExports of `namespaces` (`[operator] namespaces`), each through a
    /// reflector of its own.
    pub fn watching(mut self, namespaces: &[String]) -> Self {
        for namespace in namespaces {
            if self
                .caches
                .iter()
                .any(|cache| &cache.namespace == namespace)
            {
                continue;
            }
            let api = Api::namespaced(self.client.clone(), namespace);
            let (cache, task) = spawn_reflector(api, namespace);
            self.reflectors.0.lock().push(task);
            self.caches.push(cache);
        }
        self
    }

    /// The resource name of a REST-created export.
    pub fn resource_name(export_id: &str) -> String {
        export_id.replace('_', "-")
    }

    /// The caches, once every one has had its first full list (else 503).
    async fn ready(&self) -> Result<&[Cache], RegistryError> {
        let all = futures::future::try_join_all(
            self.caches
                .iter()
                .map(|cache| cache.store.wait_until_ready()),
        );
        match tokio::time::timeout(self.ready_wait, all).await {
            Ok(Ok(_)) => Ok(&self.caches),
            Ok(Err(error)) => Err(RegistryError::Unavailable(error.to_string())),
            Err(_) => Err(RegistryError::Unavailable(
                "the AuditExport cache has not finished its first list yet".into(),
            )),
        }
    }

    async fn find(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<Arc<AuditExport>>, RegistryError> {
        let caches = self.ready().await?;
        // REST-created exports are found by name; kubectl-created ones by their status.
        let key = ObjectRef::new(&Self::resource_name(export_id)).within(&self.namespace);
        let by_name = caches
            .first()
            .and_then(|cache| cache.store.get(&key))
            .filter(|object| export_id_of(object, &self.signer).as_deref() == Some(export_id));
        if let Some(object) = by_name {
            return Ok((object.spec.tenant_id == tenant).then_some(object));
        }
        Ok(caches.iter().find_map(|cache| {
            cache.store.find(|object| {
                object.spec.tenant_id == tenant
                    && export_id_of(object, &self.signer).as_deref() == Some(export_id)
            })
        }))
    }

    /// Waits (up to the sync wait) until the operator namespace's cache holds `name`.
    async fn wait_cached(&self, name: &str) {
        let Some(cache) = self.caches.first() else {
            return;
        };
        let key = ObjectRef::new(name).within(&self.namespace);
        let mut applied = cache.applied.clone();
        let arrived = async {
            loop {
                applied.borrow_and_update();
                if cache.store.get(&key).is_some() || applied.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(self.sync_wait, arrived).await.is_err() {
            tracing::warn!(%name, "the created AuditExport is not in the cache yet");
        }
    }

    fn record_of(&self, object: &AuditExport) -> Option<ExportRecord> {
        record_of(object, &self.signer)
    }
}

/// A reflector over the AuditExports of `api`'s namespace: the cache it fills and its task.
/// Watch failures are retried with kube's default backoff; the cache keeps what it had.
fn spawn_reflector(api: Api<AuditExport>, namespace: &str) -> (Cache, JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let (applied_tx, applied) = watch::channel(0u64);
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(|event| event.modify(|object| object.managed_fields_mut().clear()));
    let namespace = namespace.to_string();
    let cache = Cache {
        namespace: namespace.clone(),
        store,
        applied,
    };
    let task = tokio::spawn(async move {
        reflector::reflector(writer, events)
            .for_each(|event| {
                match event {
                    Ok(_) => applied_tx.send_modify(|count| *count = count.wrapping_add(1)),
                    Err(error) => {
                        tracing::warn!(%namespace, %error, "AuditExport watch failed; retrying")
                    }
                }
                futures::future::ready(())
            })
            .await;
    });
    (cache, task)
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
/// `requested-by` annotation of a REST-created resource, else `kubernetes:NAMESPACE/NAME`; until
/// the controller reports an estimate, a REST-created resource shows the REST API's.
pub fn record_of(object: &AuditExport, signer: &AnnotationSigner) -> Option<ExportRecord> {
    let export_id = export_id_of(object, signer)?;
    let spec = convert::export_spec(&object.spec).ok()?;
    let origin = trust::origin(object, signer);
    let created_at = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|time| status::rfc3339(time.0))
        .unwrap_or_default();
    let mut status = convert::export_status(object.status.as_ref(), created_at);
    let reported = object
        .status
        .as_ref()
        .is_some_and(|status| status.estimated_records.is_some());
    let requested_by = match origin {
        Origin::Service { requested_by, .. } => {
            if !reported
                && let Some(estimate) = object
                    .annotations()
                    .get(ESTIMATED_RECORDS_ANNOTATION)
                    .and_then(|text| text.parse().ok())
            {
                status.estimated_records = estimate;
            }
            requested_by
        }
        Origin::Namespace => trust::resource_actor(object),
    };
    Some(ExportRecord {
        export_id,
        spec,
        requested_by,
        status,
    })
}

fn unavailable(error: kube::Error) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

#[async_trait]
impl ExportRegistry for KubeRegistry {
    /// Creates the resource (spec, signed annotations, tenant label) and answers with its REST
    /// view; the controller writes its status.
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
            (
                ESTIMATED_RECORDS_ANNOTATION.to_string(),
                record.status.estimated_records.to_string(),
            ),
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
        // So that this replica's next read finds the export.
        self.wait_cached(&name).await;
        Ok(self.record_of(&created).unwrap_or(record))
    }

    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        Ok(self
            .find(tenant, export_id)
            .await?
            .and_then(|object| self.record_of(&object)))
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError> {
        let caches = self.ready().await?;
        let mut records: Vec<ExportRecord> = caches
            .iter()
            .flat_map(|cache| {
                cache
                    .store
                    .state_filter(|object| object.spec.tenant_id == tenant)
            })
            .filter_map(|object| self.record_of(&object))
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

    /// Annotates the resource; decided on the object the API server returns, so an export
    /// that finished meanwhile is reported finished.
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
        match self.record_of(&patched) {
            Some(fresh) if fresh.status.phase.is_terminal() => {
                Err(RegistryError::Finished(export_id.to_string()))
            }
            fresh => Ok(fresh.or(Some(record))),
        }
    }
}

#[cfg(test)]
impl KubeRegistry {
    /// A registry whose caches the test fills (no reflector runs): one per namespace, the
    /// first being the operator namespace.
    fn with_test_caches(
        client: Client,
        namespaces: &[&str],
        signer: AnnotationSigner,
    ) -> (Self, Vec<TestCache>) {
        let mut caches = Vec::new();
        let mut feeds = Vec::new();
        for namespace in namespaces {
            let (store, writer) = reflector::store();
            let (applied_tx, applied) = watch::channel(0);
            caches.push(Cache {
                namespace: namespace.to_string(),
                store,
                applied,
            });
            feeds.push(TestCache { writer, applied_tx });
        }
        let namespace = namespaces.first().copied().unwrap_or("default");
        let registry = KubeRegistry {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            caches,
            signer,
            reflectors: Arc::default(),
            ready_wait: Duration::from_millis(50),
            sync_wait: Duration::from_secs(5),
        };
        (registry, feeds)
    }
}

/// What a reflector would do to a test cache.
#[cfg(test)]
struct TestCache {
    writer: reflector::store::Writer<AuditExport>,
    applied_tx: watch::Sender<u64>,
}

#[cfg(test)]
impl TestCache {
    fn apply(&mut self, event: watcher::Event<AuditExport>) {
        self.writer.apply_watcher_event(&event);
        self.applied_tx.send_modify(|count| *count += 1);
    }

    /// The first full list: `objects`, and the cache is ready.
    fn list(&mut self, objects: Vec<AuditExport>) {
        self.apply(watcher::Event::Init);
        for object in objects {
            self.apply(watcher::Event::InitApply(object));
        }
        self.apply(watcher::Event::InitDone);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;
    use crate::export::job::{ExportPhase, ExportStatus};
    use crate::operator::crd::{AuditExportStatus, ExportJobPhase};
    use crate::operator::fixtures::test_signer;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const ID_OLD: &str = "exp_01aaaaaaaaaaaaaaaaaaaaaaaa";
    const ID_MID: &str = "exp_01bbbbbbbbbbbbbbbbbbbbbbbb";
    const ID_NEW: &str = "exp_01cccccccccccccccccccccccc";

    fn registry(namespaces: &[&str]) -> (KubeRegistry, Vec<TestCache>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (registry, caches) = KubeRegistry::with_test_caches(client, namespaces, test_signer());
        (registry, caches, handle)
    }

    /// A resource the REST API created for `tenant` in `namespace`.
    fn rest_resource(namespace: &str, export_id: &str, tenant: &str) -> AuditExport {
        let name = KubeRegistry::resource_name(export_id);
        let mut object = AuditExport::test();
        object.spec.tenant_id = tenant.into();
        object.metadata.name = Some(name.clone());
        object.metadata.namespace = Some(namespace.into());
        let signature = test_signer()
            .sign(&Signed {
                namespace,
                name: &name,
                export_id,
                requested_by: "user:alice",
                spec: &object.spec,
            })
            .unwrap();
        object.with_annotations(export_id, "user:alice", &signature)
    }

    /// A resource applied with kubectl, accepted by the controller as `export_id`.
    fn kubectl_resource(namespace: &str, name: &str, export_id: &str) -> AuditExport {
        let mut object = AuditExport::test().with_status(AuditExportStatus {
            phase: Some(ExportJobPhase::Running),
            export_id: Some(export_id.into()),
            estimated_records: Some(9),
            ..AuditExportStatus::default()
        });
        object.metadata.name = Some(name.into());
        object.metadata.namespace = Some(namespace.into());
        object
    }

    fn phase(object: AuditExport, phase: ExportJobPhase) -> AuditExport {
        let mut status = object.status.clone().unwrap_or_default();
        status.phase = Some(phase);
        object.with_status(status)
    }

    fn new_record() -> ExportRecord {
        let spec = convert::export_spec(&AuditExport::test().spec).unwrap();
        ExportRecord {
            export_id: ID_NEW.into(),
            spec,
            requested_by: "user:alice".into(),
            status: ExportStatus {
                phase: ExportPhase::Pending,
                estimated_records: 7,
                record_count: 0,
                files: Vec::new(),
                created_at: "2026-09-21T14:13:20.000000Z".into(),
                started_at: None,
                completed_at: None,
                error: None,
                checkpoint: None,
            },
        }
    }

    /// The next request: method, path and query, JSON body; answered with `reply`.
    async fn answer(handle: &mut Handle, reply: impl FnOnce(&Value) -> Value) -> (Method, String) {
        let (request, send) = tokio::time::timeout(TIMEOUT, handle.next_request())
            .await
            .expect("no request in time")
            .expect("the client is gone");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let response = serde_json::to_vec(&reply(&body)).unwrap();
        send.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from(response))
                .unwrap(),
        );
        (method, uri)
    }

    fn ids(list: &ExportList) -> Vec<&str> {
        list.exports
            .iter()
            .map(|record| record.export_id.as_str())
            .collect()
    }

    /// POST creates the resource and writes no status; the answer and the reads after it come
    /// from what was created (the reads from the cache, with no request to the API server).
    #[tokio::test]
    async fn create_writes_no_status_and_reads_come_from_the_cache() {
        let (registry, mut caches, mut handle) = registry(&["default"]);
        caches[0].list(Vec::new());
        let creating = tokio::spawn({
            let registry = registry.clone();
            async move { registry.create(new_record()).await }
        });
        let mut created = None;
        let (method, uri) = answer(&mut handle, |body| {
            let mut object: AuditExport = serde_json::from_value(body.clone()).unwrap();
            assert!(object.status.is_none(), "{body}");
            object.metadata.namespace = Some("default".into());
            object.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    crate::operator::fixtures::now(),
                ));
            created = Some(object.clone());
            serde_json::to_value(object).unwrap()
        })
        .await;
        assert_eq!(method, Method::POST);
        assert!(
            uri.starts_with("/apis/audit.scailabs.ai/v1alpha1/namespaces/default/auditexports?"),
            "{uri}"
        );
        let created = created.unwrap();
        let annotations = created.annotations();
        assert_eq!(annotations[EXPORT_ID_ANNOTATION], ID_NEW);
        assert_eq!(annotations[ESTIMATED_RECORDS_ANNOTATION], "7");
        assert_eq!(created.labels()[TENANT_LABEL], "tnt_acme");
        // The answer waits until this replica's cache has the resource.
        assert!(!creating.is_finished());
        caches[0].apply(watcher::Event::Apply(created.clone()));
        let record = tokio::time::timeout(TIMEOUT, creating)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.export_id, ID_NEW);
        assert_eq!(record.status.phase, ExportPhase::Pending);
        assert_eq!(record.status.estimated_records, 7);
        assert_eq!(record.requested_by, "user:alice");
        assert_eq!(record.status.created_at, "2026-09-21T14:13:20.000000Z");

        assert_eq!(
            registry.get("tnt_acme", ID_NEW).await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(registry.get("tnt_other", ID_NEW).await.unwrap(), None);
        let listed = registry.list("tnt_acme", None, 10).await.unwrap();
        assert_eq!(listed.exports, vec![record]);
        // The controller's estimate replaces the REST API's.
        let accepted = created.with_status(AuditExportStatus {
            phase: Some(ExportJobPhase::Pending),
            estimated_records: Some(8),
            ..AuditExportStatus::default()
        });
        caches[0].apply(watcher::Event::Apply(accepted));
        let record = registry.get("tnt_acme", ID_NEW).await.unwrap().unwrap();
        assert_eq!(record.status.estimated_records, 8);
        // Nothing else was sent: no status write, no LIST.
        drop(registry);
        assert!(handle.next_request().await.is_none());
    }

    #[tokio::test]
    async fn reads_are_unavailable_until_every_cache_has_listed() {
        let (registry, mut caches, _handle) = registry(&["default", "team"]);
        caches[0].list(vec![rest_resource("default", ID_OLD, "tnt_acme")]);
        assert!(matches!(
            registry.list("tnt_acme", None, 10).await,
            Err(RegistryError::Unavailable(_))
        ));
        assert!(matches!(
            registry.get("tnt_acme", ID_OLD).await,
            Err(RegistryError::Unavailable(_))
        ));
        caches[1].list(Vec::new());
        let listed = registry.list("tnt_acme", None, 10).await.unwrap();
        assert_eq!(ids(&listed), [ID_OLD]);
    }

    /// Every watched namespace, by the resource's tenant, newest first, paged by id; resources
    /// without an id or with an invalid spec are left out.
    #[tokio::test]
    async fn the_listing_spans_the_namespaces_newest_first_in_pages() {
        let (registry, mut caches, _handle) = registry(&["default", "team"]);
        let mut invalid = rest_resource("default", "exp_01dddddddddddddddddddddddd", "tnt_acme");
        invalid.spec.to = "2025-01-01T00:00:00Z".into();
        let mut unaccepted = kubectl_resource("team", "fresh", "unused");
        unaccepted.status = None;
        caches[0].list(vec![
            rest_resource("default", ID_OLD, "tnt_acme"),
            rest_resource("default", "exp_01zzzzzzzzzzzzzzzzzzzzzzzz", "tnt_other"),
            invalid,
        ]);
        caches[1].list(vec![
            kubectl_resource("team", "from-kubectl", ID_NEW),
            rest_resource("team", ID_MID, "tnt_acme"),
            unaccepted,
        ]);
        let first = registry.list("tnt_acme", None, 2).await.unwrap();
        assert_eq!(ids(&first), [ID_NEW, ID_MID]);
        assert_eq!(first.next_after.as_deref(), Some(ID_MID));
        let second = registry.list("tnt_acme", Some(ID_MID), 2).await.unwrap();
        assert_eq!(ids(&second), [ID_OLD]);
        assert_eq!(second.next_after, None);
        let kubectl = registry.get("tnt_acme", ID_NEW).await.unwrap().unwrap();
        assert_eq!(kubectl.requested_by, "kubernetes:team/from-kubectl");
        assert_eq!(kubectl.status.estimated_records, 9);
        // A REST-created resource in another watched namespace keeps its signed requester.
        assert_eq!(
            registry
                .get("tnt_acme", ID_MID)
                .await
                .unwrap()
                .map(|r| r.requested_by),
            Some("user:alice".into())
        );
        assert_eq!(registry.get("tnt_other", ID_OLD).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cancel_annotates_and_refuses_finished_exports() {
        let (registry, mut caches, mut handle) = registry(&["default"]);
        let running = phase(
            rest_resource("default", ID_NEW, "tnt_acme"),
            ExportJobPhase::Running,
        );
        let done = phase(
            rest_resource("default", ID_OLD, "tnt_acme"),
            ExportJobPhase::Completed,
        );
        caches[0].list(vec![running.clone(), done]);
        // Finished in the cache: refused without a request.
        assert!(matches!(
            registry.cancel("tnt_acme", ID_OLD).await,
            Err(RegistryError::Finished(_))
        ));
        assert_eq!(registry.cancel("tnt_other", ID_NEW).await.unwrap(), None);

        let cancelling = tokio::spawn({
            let registry = registry.clone();
            async move { registry.cancel("tnt_acme", ID_NEW).await }
        });
        let (method, uri) = answer(&mut handle, |body| {
            assert_eq!(body["metadata"]["annotations"][CANCEL_ANNOTATION], "true");
            serde_json::to_value(running.clone().cancel_requested()).unwrap()
        })
        .await;
        assert_eq!(method, Method::PATCH);
        assert!(
            uri.contains("/namespaces/default/auditexports/exp-01cccccccccccccccccccccccc"),
            "{uri}"
        );
        let record = cancelling.await.unwrap().unwrap().unwrap();
        assert_eq!(record.status.phase, ExportPhase::Running);

        // Finished meanwhile (the cache is behind): the API server's answer decides.
        let cancelling = tokio::spawn({
            let registry = registry.clone();
            async move { registry.cancel("tnt_acme", ID_NEW).await }
        });
        answer(&mut handle, |_| {
            serde_json::to_value(phase(running.clone(), ExportJobPhase::Completed)).unwrap()
        })
        .await;
        assert!(matches!(
            cancelling.await.unwrap(),
            Err(RegistryError::Finished(_))
        ));
    }
}
