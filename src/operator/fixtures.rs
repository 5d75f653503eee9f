//! Test fixtures: AuditExport builders, a scripted exporter and a mock API server that
//! checks each request the controller makes (kube-rs's controller-rs `ApiServerVerifier`
//! pattern, on tower-test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::audit::AuditLog;
use super::controller::{ControllerSettings, Ctx};
use super::crd::{
    AuditExport, AuditExportSpec, AuditExportStatus, DestinationKind, ExportDestination,
    ExportFileFormat,
};
use super::exporter::Exporter;
use super::metrics::OperatorMetrics;
use super::progress::ProgressFiles;
use super::trust::{AnnotationSigner, SIGNATURE_ANNOTATION, Signed};
use super::{CANCEL_ANNOTATION, EXPORT_ID_ANNOTATION, FINALIZER, REQUESTED_BY_ANNOTATION};
use crate::event::AuditEvent;
use crate::export::engine::{ExportOutcome, ProgressReporter};
use crate::export::job::{Checkpoint, ExportFailure, ExportSpec, FileEntry};
use crate::export::supervisor::JobEngine;

pub type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The time every test sees.
pub const NOW: i64 = 1_790_000_000;

pub fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

impl AuditExport {
    /// `default/test`, generation 1, a valid file export, no finalizer yet.
    pub fn test() -> Self {
        let mut export = AuditExport::new(
            "test",
            AuditExportSpec {
                tenant_id: "tnt_acme".into(),
                from: "2026-01-01T00:00:00Z".into(),
                to: "2026-02-01T00:00:00Z".into(),
                format: ExportFileFormat::Jsonl,
                compression: None,
                filters: None,
                destination: ExportDestination {
                    kind: DestinationKind::File,
                    bucket: "audit-exports".into(),
                    prefix: Some("2026-01/".into()),
                    credentials_path: None,
                },
                max_records_per_file: Some(2),
            },
        );
        export.meta_mut().namespace = Some("default".into());
        export.meta_mut().uid = Some("uid-1".into());
        export.meta_mut().generation = Some(1);
        export.meta_mut().resource_version = Some("100".into());
        export
    }

    pub fn finalized(mut self) -> Self {
        self.finalizers_mut().push(FINALIZER.into());
        self
    }

    pub fn with_status(mut self, status: AuditExportStatus) -> Self {
        self.status = Some(status);
        self
    }

    pub fn cancel_requested(mut self) -> Self {
        self.annotations_mut()
            .insert(CANCEL_ANNOTATION.into(), "true".into());
        self
    }

    pub fn deleting(mut self) -> Self {
        self.meta_mut().deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        self
    }

    pub fn invalid(mut self) -> Self {
        self.spec.to = "2025-01-01T00:00:00Z".into();
        self
    }

    /// The annotations the REST API writes, signed with [`test_signer`].
    pub fn rest_created(self, export_id: &str, requested_by: &str) -> Self {
        let signature = test_signer()
            .sign(&Signed {
                namespace: "default",
                name: "test",
                export_id,
                requested_by,
                spec: &self.spec,
            })
            .unwrap();
        self.with_annotations(export_id, requested_by, &signature)
    }

    pub fn with_annotations(
        mut self,
        export_id: &str,
        requested_by: &str,
        signature: &str,
    ) -> Self {
        let annotations = self.annotations_mut();
        annotations.insert(EXPORT_ID_ANNOTATION.into(), export_id.into());
        annotations.insert(REQUESTED_BY_ANNOTATION.into(), requested_by.into());
        if !signature.is_empty() {
            annotations.insert(SIGNATURE_ANNOTATION.into(), signature.into());
        }
        self
    }
}

/// The annotation key of every test context.
pub fn test_signer() -> AnnotationSigner {
    AnnotationSigner::new([42; 32])
}

/// An audit log that keeps what it was given.
#[derive(Default)]
pub struct FakeAudit {
    pub events: Mutex<Vec<AuditEvent>>,
}

impl FakeAudit {
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().clone()
    }
}

#[async_trait]
impl AuditLog for FakeAudit {
    async fn append(&self, event: AuditEvent) -> Result<(), String> {
        self.events.lock().push(event);
        Ok(())
    }
}

/// What the scripted exporter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Estimate,
    Run { resumed_after_files: usize },
    Abort(String),
}

/// How the scripted exporter's `run` ends.
#[derive(Debug, Clone)]
pub enum Script {
    /// Uploads `parts` parts of 2 records each (one checkpoint per part), then completes.
    Complete { parts: usize },
    /// Uploads one part, then fails.
    Fail(ExportFailure),
    /// Uploads one part, then waits for cancellation.
    Hang,
}

pub struct FakeExporter {
    pub script: Script,
    pub calls: Mutex<Vec<Call>>,
    /// The default confinement: credentials under `tenants/{tenant_id}/`, `file` destinations
    /// under a root that need not exist (nothing is written there).
    pub policy: crate::export::policy::ExportPolicy,
}

impl FakeExporter {
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(FakeExporter {
            script,
            calls: Mutex::new(Vec::new()),
            policy: crate::export::policy::ExportPolicy::new(
                Some(std::env::temp_dir().join("scaivault-audit-fixture-file-root")),
                vec![crate::export::policy::DEFAULT_CREDENTIALS_PATH_PREFIX.to_string()],
            ),
        })
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
}

pub fn part(number: usize) -> FileEntry {
    FileEntry {
        key: format!("2026-01/part-{number:04}.jsonl"),
        size_bytes: 100,
        records: 2,
        sha256: format!("{number:064x}"),
        first_event: None,
        last_event: None,
    }
}

#[async_trait]
impl Exporter for FakeExporter {
    fn confine(&self, spec: &ExportSpec) -> Result<(), ExportFailure> {
        self.policy
            .check(spec)
            .map_err(|refusal| refusal.to_failure())
    }

    async fn estimate(&self, _spec: &ExportSpec) -> Result<u64, ExportFailure> {
        self.calls.lock().push(Call::Estimate);
        Ok(4)
    }

    async fn late_summary(
        &self,
        spec: &ExportSpec,
        snapshot_seq: u64,
    ) -> Result<Option<crate::export::job::LateSummary>, ExportFailure> {
        // One late event for every run after the first.
        Ok(spec
            .late
            .as_ref()
            .map(|late| crate::export::job::LateSummary {
                count: 1,
                since_seq: late.since_seq.min(snapshot_seq),
                first_event: None,
                last_event: None,
            }))
    }
}

#[async_trait]
impl JobEngine for FakeExporter {
    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
        Ok(Checkpoint::start(42))
    }

    async fn run(
        &self,
        _export_id: &str,
        _spec: &ExportSpec,
        mut checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        self.calls.lock().push(Call::Run {
            resumed_after_files: checkpoint.files.len(),
        });
        let parts = match &self.script {
            Script::Complete { parts } => *parts,
            Script::Fail(_) | Script::Hang => 1,
        };
        while checkpoint.files.len() < parts {
            let number = checkpoint.files.len() + 1;
            checkpoint.files.push(part(number));
            checkpoint.after = Some(crate::store::search::SortKey {
                timestamp_us: number as i64,
                seq: number as u64,
            });
            progress.checkpoint(&checkpoint).await?;
        }
        match &self.script {
            Script::Complete { .. } => Ok(ExportOutcome {
                completed_at: "2026-09-21T14:13:20.000000Z".into(),
                record_count: checkpoint.records(),
                files: checkpoint.files,
            }),
            Script::Fail(failure) => Err(failure.clone()),
            Script::Hang => {
                cancel.cancelled().await;
                Err(ExportFailure::new("cancelled", "the export was cancelled"))
            }
        }
    }

    async fn abort(&self, export_id: &str, _spec: &ExportSpec) -> Result<(), ExportFailure> {
        self.calls.lock().push(Call::Abort(export_id.to_string()));
        Ok(())
    }
}

/// A controller context on a mock API server.
pub fn test_context(exporter: Arc<FakeExporter>) -> (Arc<Ctx>, ApiServer) {
    let (ctx, server, _) = audited_context(exporter);
    (ctx, server)
}

/// A mock API server and the services of a controller context on it.
pub fn mock_services(
    exporter: Arc<FakeExporter>,
) -> (Client, super::Services, ApiServer, Arc<FakeAudit>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let audit = Arc::new(FakeAudit::default());
    let data_dir = tempfile::tempdir().unwrap();
    let services = super::Services {
        exporter,
        audit: audit.clone(),
        signer: test_signer(),
        progress: ProgressFiles::in_data_dir(data_dir.path()),
    };
    let server = ApiServer {
        handle,
        _data_dir: data_dir,
    };
    (client, services, server, audit)
}

/// [`test_context`], with the audit log the controller records in.
pub fn audited_context(exporter: Arc<FakeExporter>) -> (Arc<Ctx>, ApiServer, Arc<FakeAudit>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let audit = Arc::new(FakeAudit::default());
    let data_dir = tempfile::tempdir().unwrap();
    let services = super::Services {
        exporter,
        audit: audit.clone(),
        signer: test_signer(),
        progress: ProgressFiles::in_data_dir(data_dir.path()),
    };
    let ctx = Ctx::new(
        client,
        &services,
        &ControllerSettings::default(),
        OperatorMetrics::default(),
        Arc::new(now),
    );
    (
        ctx,
        ApiServer {
            handle,
            _data_dir: data_dir,
        },
        audit,
    )
}

/// Plays the API server: each `expect_*` asserts one request and answers it.
pub struct ApiServer {
    handle: ApiServerHandle,
    /// The controller's data directory (its progress files); removed with the server.
    _data_dir: tempfile::TempDir,
}

pub const PATH: &str = "/apis/audit.scailabs.ai/v1alpha1/namespaces/default/auditexports/test";

/// One request as the mock server saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub content_type: String,
    pub body: Value,
}

impl ApiServer {
    /// The next request the controller sends, and where to answer it.
    pub async fn next(&mut self) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("the controller sent no request in time")
                .expect("the client is gone");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let content_type = request
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (
            Seen {
                method,
                uri,
                content_type,
                body,
            },
            send,
        )
    }

    /// Expects the finalizer to be added with kube-runtime's JSON patch.
    pub async fn expect_finalizer_added(&mut self, object: &AuditExport) -> AuditExport {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(seen.uri, format!("{PATH}?"));
        assert_eq!(seen.content_type, "application/json-patch+json");
        assert_eq!(
            seen.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
            ])
        );
        let reply = object.clone().finalized();
        send.send_response(json_response(&reply));
        reply
    }

    /// Expects the finalizer to be removed.
    pub async fn expect_finalizer_removed(&mut self, object: &AuditExport) {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(seen.uri, format!("{PATH}?"));
        assert_eq!(seen.content_type, "application/json-patch+json");
        let ops = seen.body.as_array().unwrap();
        assert!(
            ops.iter()
                .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "{ops:?}"
        );
        let mut reply = object.clone();
        reply.finalizers_mut().clear();
        send.send_response(json_response(&reply));
    }

    /// Expects a server-side apply of `/status` by the controller; returns the status sent.
    pub async fn expect_status_apply(&mut self, object: &AuditExport) -> Value {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, Method::PATCH, "{seen:?}");
        assert_eq!(
            seen.uri,
            format!("{PATH}/status?&force=true&fieldManager=scaivault-audit-operator")
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(seen.body["apiVersion"], "audit.scailabs.ai/v1alpha1");
        assert_eq!(seen.body["kind"], "AuditExport");
        assert_eq!(
            seen.body.as_object().unwrap().len(),
            3,
            "only apiVersion, kind and status"
        );
        let mut reply = object.clone();
        reply.status = Some(serde_json::from_value(seen.body["status"].clone()).unwrap());
        send.send_response(json_response(&reply));
        seen.body["status"].clone()
    }

    /// Expects a read of the Namespace `default`, answered with `tenant_label` as its
    /// `audit.scailabs.ai/tenant` label (`None`: no label).
    pub async fn expect_namespace(&mut self, tenant_label: Option<&str>) {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, Method::GET, "{seen:?}");
        assert_eq!(seen.uri, "/api/v1/namespaces/default");
        let mut namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "uid": "ns-uid"}});
        if let Some(label) = tenant_label {
            namespace["metadata"]["labels"] = json!({"audit.scailabs.ai/tenant": label});
        }
        send.send_response(json_response(&namespace));
    }

    /// Expects a Kubernetes Event with `reason`; returns it.
    pub async fn expect_event(&mut self, type_: &str, reason: &str) -> Value {
        let (seen, send) = self.next().await;
        assert_eq!(seen.method, Method::POST, "{seen:?}");
        assert_eq!(
            seen.uri,
            "/apis/events.k8s.io/v1/namespaces/default/events?"
        );
        assert_eq!(seen.body["reason"], reason, "{:?}", seen.body);
        assert_eq!(seen.body["type"], type_);
        assert_eq!(seen.body["regarding"]["name"], "test");
        assert_eq!(seen.body["reportingController"], "scaivault-audit-operator");
        send.send_response(json_response(&seen.body));
        seen.body
    }

    /// Asserts the controller sends nothing more.
    pub async fn expect_silence(&mut self) {
        let next =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await;
        assert!(
            next.is_err(),
            "unexpected request: {:?}",
            next.map(|r| r.map(|(req, _)| req.uri().to_string()))
        );
    }
}

pub fn json_response(value: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

/// The conditions of a status body as `type → (status, reason)`.
pub fn conditions(status: &Value) -> BTreeMap<String, (String, String)> {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                (
                    c["status"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}
