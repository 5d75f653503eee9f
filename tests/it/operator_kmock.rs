//! The operator against the Kubernetes emulator (`scripts/kmock.sh start`, kmock 0.8 +
//! `tests/k8s_emulator.py`): the real binary in `serve --operator` mode with `KUBECONFIG` on the
//! emulator, so exports run on the real engine over a real store; AuditExports applied with the
//! real kubectl (`scripts/k8s-tools.sh install`); the REST API and the resources seeing the same
//! exports; ServiceAccount tokens through TokenReview; and leader election between two
//! candidates. Every test runs in its own namespace (its own Lease), labelled
//! `audit.scailabs.ai/tenant: tnt_acme`. Ignored by plain `cargo test`; run with
//! `--include-ignored` (scripts/test.sh does), fails loudly when the emulator or kubectl is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::export::*;
use crate::harness::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client, Config, ResourceExt};
use reqwest::StatusCode;
use scaivault_audit::operator::crd::ExportJobPhase;
use scaivault_audit::operator::leader::{self, LeaseSettings};
use scaivault_audit::operator::metrics::OperatorMetrics;
use scaivault_audit::operator::registry::TENANT_LABEL;
use scaivault_audit::operator::trust::NAMESPACE_TENANT_LABEL;
use scaivault_audit::operator::{
    AuditExport, CANCEL_ANNOTATION, EXPORT_ID_ANNOTATION, FINALIZER, REQUESTED_BY_ANNOTATION,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const FROM: &str = "2020-01-01T00:00:00Z";
const TO: &str = "2100-01-01T00:00:00Z";
/// Keys of the tokens `scripts/kmock.sh` gives the emulator's TokenReview; [`sa_token`] makes
/// the bearer token: the server only reviews JWTs issued by the cluster (real ServiceAccount
/// tokens are).
const SA_TOKEN: &str = "kmock.sa-token.reporting";
const OTHER_AUDIENCE_TOKEN: &str = "kmock.other-audience.reporting";
const UNBOUND_SA_TOKEN: &str = "kmock.sa-token.unbound";

/// A JWT-shaped token from the cluster's default issuer standing for the emulator's `key`.
fn sa_token(key: &str) -> String {
    use base64::Engine;
    let b64 = |value: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string().as_bytes())
    };
    format!(
        "{}.{}.a21vY2s",
        b64(json!({"alg": "RS256", "kid": "kmock"})),
        b64(
            json!({"iss": scaivault_audit::auth::token_review::DEFAULT_ISSUER, "kmock_token": key})
        )
    )
}
/// Known to the emulator, but not JWT-shaped: never sent to TokenReview.
const OPAQUE_SA_TOKEN: &str = "kmock-test-sa-token";

fn emulator() -> (String, PathBuf) {
    let url = std::env::var("SCAIVAULT_TEST_KMOCK_URL").unwrap_or_else(|_| {
        panic!("the Kubernetes emulator is not running: run `scripts/kmock.sh start` and `source .tools/kmock.env`")
    });
    let kubeconfig = std::env::var("SCAIVAULT_TEST_KMOCK_KUBECONFIG")
        .expect("SCAIVAULT_TEST_KMOCK_KUBECONFIG (source .tools/kmock.env)");
    (url, PathBuf::from(kubeconfig))
}

fn kube_client(namespace: &str) -> Client {
    let (url, _) = emulator();
    let mut config = Config::new(url.parse().unwrap());
    config.default_namespace = namespace.into();
    Client::try_from(config).unwrap()
}

fn kubectl() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    assert!(
        path.is_file(),
        "kubectl 1.35 is missing: run `scripts/k8s-tools.sh install`"
    );
    path
}

/// A namespace of its own per test (and per run: the emulator outlives test runs).
fn namespace(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), fastrand::u32(..))
}

async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `scaivault-audit serve --operator` on the emulator in `namespace`: a static partner-admin
/// token (`admin`) with every scope, and TokenReview binding `scaivault/reporting` to
/// `audit:read` on [`TENANT`].
struct OperatorServer {
    server: Server,
    admin: String,
    dir: TestDir,
}

/// Creates the Namespace `name` labelled `audit.scailabs.ai/tenant: tenants` (as a cluster
/// administrator would), unless it exists.
async fn labelled_namespace(name: &str, tenants: &str) {
    let namespaces: Api<Namespace> = Api::all(kube_client(name));
    if namespaces.get_opt(name).await.unwrap().is_some() {
        return;
    }
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {NAMESPACE_TENANT_LABEL: tenants}},
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

impl OperatorServer {
    /// The server, in `namespace` labelled for [`TENANT`].
    async fn start(namespace: &str) -> OperatorServer {
        Self::start_watching(namespace, &[]).await
    }

    /// [`Self::start`], also running the AuditExports of `more` (`[operator] namespaces`).
    async fn start_watching(namespace: &str, more: &[&str]) -> OperatorServer {
        Self::start_in(TestDir::new(), namespace, more, &[]).await
    }

    /// [`Self::start_watching`] on the data of `dir` (a restart), with `extra` arguments.
    async fn start_in(
        dir: TestDir,
        namespace: &str,
        more: &[&str],
        extra: &[&str],
    ) -> OperatorServer {
        labelled_namespace(namespace, TENANT).await;
        let (_, kubeconfig) = emulator();
        let admin = StaticToken::new(
            "admin",
            &["audit:read", "audit:write", "audit:export"],
            None,
        );
        let tokens = dir.root().join("tokens.toml");
        write_tokens_file(&tokens, &[&admin]);
        let config = dir.root().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[operator]
enabled = true
namespace = "{namespace}"
namespaces = {more:?}

[export]
max_concurrent_jobs = 1

[auth]
tokens_file = "{}"

[auth.token_review]
enabled = true
audience = "scaivault-audit"

[[auth.token_review.bindings]]
service_account = "scaivault/reporting"
scopes = ["audit:read"]
tenant_id = "{TENANT}"
"#,
                tokens.display()
            ),
        )
        .unwrap();
        let config_arg = config.to_str().unwrap().to_owned();
        let mut args = vec!["--config", config_arg.as_str()];
        args.extend_from_slice(FAST_COMMITS);
        args.extend_from_slice(extra);
        let server = Server::start_with_env(
            &dir.data_dir(),
            &args,
            &[
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("HOSTNAME", OsStr::new(&format!("replica-{namespace}"))),
            ],
        )
        .await;
        OperatorServer {
            server,
            admin: admin.secret,
            dir,
        }
    }

    fn base(&self) -> &str {
        self.server.base_url()
    }
}

async fn list_exports(server: &OperatorServer, tenant: &str) -> Vec<Value> {
    let (status, _, body) = get_as(
        &client(),
        server.base(),
        "/v1/audit/exports",
        Some(&server.admin),
        Some(tenant),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["exports"].as_array().unwrap().clone()
}

/// The REST view and the resource's status describe the same files and counts.
fn assert_same_status(rest: &Value, object: &AuditExport) {
    let status = object.status.as_ref().expect("status");
    assert_eq!(rest["export_id"], json!(status.export_id), "{rest}");
    // The REST API shows 0 where the resource has no count yet.
    assert_eq!(
        rest["record_count"],
        json!(status.record_count.unwrap_or(0)),
        "{rest}"
    );
    let phase = match status.phase.expect("phase") {
        ExportJobPhase::Pending => "pending",
        ExportJobPhase::Running => "running",
        ExportJobPhase::Completed => "completed",
        ExportJobPhase::Failed => "failed",
        ExportJobPhase::Cancelled => "cancelled",
    };
    assert_eq!(rest["status"], phase, "{rest}");
    let files: Vec<Value> = status
        .files
        .iter()
        .map(|file| {
            json!({"key": file.key, "size_bytes": file.size_bytes, "records": file.records,
                   "sha256": file.sha256})
        })
        .collect();
    assert_eq!(rest["files"], json!(files), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn a_rest_export_becomes_a_resource_and_the_real_engine_writes_parts_and_manifest() {
    let ns = namespace("rest");
    let server = OperatorServer::start(&ns).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let events: Vec<Value> = (0..250).map(event).collect();
    let ids = ingest_ok(&client, base, admin, &events).await;
    let logs = wait_until_visible(
        &client,
        base,
        admin,
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    // The reads waiting for them were recorded too (`audit_read`, without a secret path, so the
    // export's path filter leaves them out): the expectation is the ingested events alone.
    let logs: Vec<Value> = logs
        .into_iter()
        .filter(|log| ids.iter().any(|id| log["id"] == json!(id)))
        .collect();
    assert_eq!(logs.len(), ids.len());
    let out = file_bucket(&server.dir, "out");
    // The filter leaves out the service's own `export_created` event.
    let body = json!({
        "from": FROM, "to": TO, "format": "jsonl", "max_records_per_file": 100,
        "filters": {"path_prefix": "environments/production/"},
        "destination": {"type": "file", "bucket": bucket_name(&out), "prefix": "acme/"},
    });
    let export_id = start_export(&client, base, admin, &body).await;

    // The export is an AuditExport named after its id, recording tenant and requester.
    let api: Api<AuditExport> = Api::namespaced(kube_client(&ns), &ns);
    let name = export_id.replace('_', "-");
    let created = api.get(&name).await.unwrap();
    assert_eq!(created.spec.tenant_id, TENANT);
    assert_eq!(
        created.labels().get(TENANT_LABEL).map(String::as_str),
        Some(TENANT)
    );
    let annotations = created.annotations();
    assert_eq!(annotations[EXPORT_ID_ANNOTATION], export_id);
    assert_eq!(annotations[REQUESTED_BY_ANNOTATION], "sa:admin");

    let rest = wait_finished(&client, base, admin, &export_id).await;
    assert_eq!(rest["status"], "completed", "{rest}");
    let object = api.get(&name).await.unwrap();
    assert_eq!(
        object.status.as_ref().unwrap().phase,
        Some(ExportJobPhase::Completed)
    );
    assert!(object.finalizers().contains(&FINALIZER.to_string()));
    assert_same_status(&rest, &object);
    let listed = list_exports(&server, TENANT).await;
    let entry = listed
        .iter()
        .find(|entry| entry["export_id"] == json!(export_id))
        .unwrap_or_else(|| panic!("{export_id} not listed: {listed:?}"));
    assert_same_status(entry, &object);
    assert!(
        list_exports(&server, OTHER_TENANT)
            .await
            .iter()
            .all(|entry| entry["export_id"] != json!(export_id))
    );

    // The real engine wrote exactly the ingested events, in order, in parts of 100.
    assert_eq!(rest["record_count"], 250);
    let keys: Vec<&str> = rest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "acme/part-0001.jsonl",
            "acme/part-0002.jsonl",
            "acme/part-0003.jsonl"
        ]
    );
    let written = read_parts(&rest, |key| {
        let path = out.as_path().join(&key);
        async move { std::fs::read(path).ok() }
    })
    .await;
    assert_eq!(without_chain(&written), expected_jsonl(&ascending(logs)));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.as_path().join("acme/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["export_id"], json!(export_id));
    // The resource's status keeps each file's key, size, records and hash; the manifest adds
    // the first and last event of each part.
    let mut manifest_files = manifest["files"].clone();
    for file in manifest_files.as_array_mut().unwrap() {
        let file = file.as_object_mut().unwrap();
        assert!(file.remove("first_event").is_some() && file.remove("last_event").is_some());
    }
    assert_eq!(manifest_files, rest["files"]);
    assert_eq!(manifest["record_count"], 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn a_kubectl_export_is_listed_for_its_tenant_only_and_delete_releases_the_finalizer() {
    let ns = namespace("kubectl");
    let server = OperatorServer::start(&ns).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let ids = ingest_ok(
        &client,
        base,
        admin,
        &(0..30).map(event).collect::<Vec<_>>(),
    )
    .await;
    wait_until_visible(
        &client,
        base,
        admin,
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    let out = file_bucket(&server.dir, "out");
    let name = "from-kubectl";
    let manifest = out.as_path().join("export.yaml");
    std::fs::write(&manifest, format!(
        "apiVersion: audit.scailabs.ai/v1alpha1\nkind: AuditExport\nmetadata:\n  name: {name}\nspec:\n  tenantId: {TENANT}\n  from: \"{FROM}\"\n  to: \"{TO}\"\n  format: jsonl\n  filters:\n    pathPrefix: environments/production/\n  destination:\n    type: file\n    bucket: {}\n    prefix: out/\n",
        bucket_name(&out)
    )).unwrap();
    kubectl_ok(&["apply", "--validate=false", "-n", &ns, "-f"], &manifest);
    // What docs/operator.md tells users to run: it returns once the export completed.
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Ready",
            &format!("auditexport/{name}"),
            "-n",
            &ns,
            "--timeout=120s",
        ],
        Path::new(""),
    );

    let api: Api<AuditExport> = Api::namespaced(kube_client(&ns), &ns);
    let done = poll("phase Completed", async || {
        let object = api.get(name).await.ok()?;
        let phase = object.status.as_ref()?.phase?;
        (phase == ExportJobPhase::Completed).then_some(object)
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.record_count, Some(30));
    let export_id = status.export_id.clone().unwrap();
    assert!(export_id.starts_with("exp_"), "{export_id}");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Completed")
    );

    // REST reads come from the replica's watch cache: it shows Completed a moment later.
    let entry = poll("the REST listing to show it completed", async || {
        list_exports(&server, TENANT)
            .await
            .into_iter()
            .find(|entry| entry["export_id"] == json!(export_id) && entry["status"] == "completed")
    })
    .await;
    let entry = &entry;
    assert_same_status(entry, &done);
    assert_eq!(
        entry["requested_by"],
        json!(format!("kubernetes:{ns}/{name}"))
    );
    let (code, _, single) = get_export(&client, base, admin, &export_id).await;
    assert_eq!(code, StatusCode::OK, "{single}");
    assert_same_status(&single, &done);
    assert!(
        list_exports(&server, OTHER_TENANT)
            .await
            .iter()
            .all(|entry| entry["export_id"] != json!(export_id)),
        "another tenant sees the export"
    );
    let other = get_as(
        &client,
        base,
        &format!("/v1/audit/exports/{export_id}"),
        Some(admin),
        Some(OTHER_TENANT),
    )
    .await;
    assert_eq!(other.0, StatusCode::NOT_FOUND, "{}", other.2);
    let written = read_parts(entry, |key| {
        let path = out.as_path().join(&key);
        async move { std::fs::read(path).ok() }
    })
    .await;
    assert_eq!(written.iter().filter(|b| **b == b'\n').count(), 30);

    kubectl_ok(
        &["delete", "auditexport", name, "-n", &ns, "--wait=false"],
        Path::new(""),
    );
    poll(
        "the finalizer to be released and the object gone",
        async || matches!(api.get_opt(name).await, Ok(None)).then_some(()),
    )
    .await;
    // A completed export's files stay.
    assert!(out.as_path().join("out/manifest.json").is_file());
}

/// An AuditExport naming another tenant's credentials ends Failed with `tenant_access_denied`
/// before any credentials are read (none are configured: a fetch would have failed with
/// `credentials_not_configured`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn a_resource_with_a_foreign_credentials_path_fails_before_anything_is_fetched() {
    let ns = namespace("confined");
    let server = OperatorServer::start(&ns).await;
    let manifest = server.dir.root().join("foreign.yaml");
    std::fs::write(&manifest, format!(
        "apiVersion: audit.scailabs.ai/v1alpha1\nkind: AuditExport\nmetadata:\n  name: foreign\nspec:\n  tenantId: {TENANT}\n  from: \"{FROM}\"\n  to: \"{TO}\"\n  format: jsonl\n  destination:\n    type: s3\n    bucket: acme-audit\n    credentialsPath: tenants/{OTHER_TENANT}/aws/writer\n",
    )).unwrap();
    kubectl_ok(&["apply", "--validate=false", "-n", &ns, "-f"], &manifest);
    let api: Api<AuditExport> = Api::namespaced(kube_client(&ns), &ns);
    let failed = poll("phase Failed", async || {
        let object = api.get("foreign").await.ok()?;
        let status = object.status?;
        (status.phase? == ExportJobPhase::Failed).then_some(status)
    })
    .await;
    // Refused before anything was estimated or recorded: no export id, its own reason.
    assert_eq!(failed.export_id, None);
    let condition = failed
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "DestinationNotAllowed")
    );
    let error = failed.error.unwrap();
    assert_eq!(error.code, "tenant_access_denied", "{}", error.message);
    assert!(
        error.message.contains("credentials_path"),
        "{}",
        error.message
    );
}

/// Runs kubectl on the emulator; `file` (when not empty) is appended.
fn kubectl_ok(args: &[&str], file: &Path) {
    let (_, kubeconfig) = emulator();
    let mut command = std::process::Command::new(kubectl());
    command.arg("--kubeconfig").arg(&kubeconfig).args(args);
    if !file.as_os_str().is_empty() {
        command.arg(file);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn rest_delete_annotates_a_pending_export_and_the_leader_cancels_it() {
    let ns = namespace("cancel");
    let client_k8s = kube_client(&ns);
    // Someone else holds the lease: exports stay Pending until it is released.
    let leases: Api<Lease> = Api::namespaced(client_k8s.clone(), &ns);
    let blocker = Lease {
        metadata: ObjectMeta {
            name: Some(scaivault_audit::config::DEFAULT_LEASE_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("another-replica".into()),
            lease_duration_seconds: Some(3600),
            ..LeaseSpec::default()
        }),
    };
    leases
        .create(&PostParams::default(), &blocker)
        .await
        .unwrap();
    let server = OperatorServer::start(&ns).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let out = file_bucket(&server.dir, "out");
    let body = json!({"from": FROM, "to": TO, "format": "jsonl",
        "destination": {"type": "file", "bucket": bucket_name(&out), "prefix": "c/"}});
    let export_id = start_export(&client, base, admin, &body).await;
    let api: Api<AuditExport> = Api::namespaced(client_k8s, &ns);
    let name = export_id.replace('_', "-");
    // Only the leader's controller writes status; the REST API shows the created resource.
    let created = api.get(&name).await.unwrap();
    assert_eq!(created.status, None);
    let (code, _, pending) = get_export(&client, base, admin, &export_id).await;
    assert_eq!(code, StatusCode::OK, "{pending}");
    assert_eq!(pending["status"], "pending", "{pending}");

    let deleted = send(
        client
            .delete(format!("{base}/v1/audit/exports/{export_id}"))
            .bearer_auth(admin)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.2);
    let annotated = api.get(&name).await.unwrap();
    assert_eq!(
        annotated
            .annotations()
            .get(CANCEL_ANNOTATION)
            .map(String::as_str),
        Some("true")
    );

    // The lease is released: this server leads and its controller cancels the export.
    let mut lease = leases
        .get(scaivault_audit::config::DEFAULT_LEASE_NAME)
        .await
        .unwrap();
    lease.spec.as_mut().unwrap().holder_identity = None;
    leases
        .replace(
            scaivault_audit::config::DEFAULT_LEASE_NAME,
            &PostParams::default(),
            &lease,
        )
        .await
        .unwrap();
    let rest = wait_finished(&client, base, admin, &export_id).await;
    assert_eq!(rest["status"], "cancelled", "{rest}");
    let object = api.get(&name).await.unwrap();
    assert_same_status(&rest, &object);
    assert!(
        !out.as_path().join("c/manifest.json").try_exists().unwrap(),
        "a cancelled export has no manifest"
    );
    // Cancelling a finished export is refused.
    let again = send(
        client
            .delete(format!("{base}/v1/audit/exports/{export_id}"))
            .bearer_auth(admin)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    assert_eq!(again.0, StatusCode::CONFLICT, "{}", again.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn service_account_tokens_are_verified_with_token_review_and_bound_to_their_tenant() {
    let ns = namespace("tokenreview");
    let server = OperatorServer::start(&ns).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let ids = ingest_ok(&client, base, admin, &(0..5).map(event).collect::<Vec<_>>()).await;
    wait_until_visible(
        &client,
        base,
        admin,
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;

    // The bound ServiceAccount reads its tenant (no X-Tenant-ID needed) ...
    let sa = sa_token(SA_TOKEN);
    let (status, _, body) = get_logs(&client, base, &sa, None, "limit=100").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen: Vec<&str> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|log| log["id"].as_str())
        .collect();
    assert!(ids.iter().all(|id| seen.contains(&id.as_str())), "{body}");
    // ... and nothing else: not another tenant, not a scope it was not bound to.
    let other = get_logs(&client, base, &sa, Some(OTHER_TENANT), "limit=1").await;
    assert_error(&other, StatusCode::FORBIDDEN, "tenant_access_denied");
    let ingest = post_events(&client, base, &sa, json!({"events": [event(99)]})).await;
    assert_error(&ingest, StatusCode::FORBIDDEN, "insufficient_scope");
    let export = post_export(
        &client,
        base,
        &sa,
        &json!({"from": FROM, "to": TO, "format": "jsonl",
                "destination": {"type": "file", "bucket": "audit", "prefix": "x/"}}),
    )
    .await;
    assert_error(&export, StatusCode::FORBIDDEN, "insufficient_scope");

    // Another audience, an unbound ServiceAccount, an unknown token, an opaque token: 401.
    for token in [
        sa_token(OTHER_AUDIENCE_TOKEN),
        sa_token(UNBOUND_SA_TOKEN),
        sa_token("kmock.no-such.token"),
        OPAQUE_SA_TOKEN.to_string(),
    ] {
        let reply = get_logs(&client, base, &token, None, "limit=1").await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
    }
}

/// A leader-election candidate whose `lead` flags when it leads.
struct Candidate {
    leading: Arc<AtomicBool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(ns: &str, lease: &str, identity: &str) -> Candidate {
    let api: Api<Lease> = Api::namespaced(kube_client(ns), ns);
    let settings = LeaseSettings {
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(200),
        ..LeaseSettings::new(ns, lease, identity)
    };
    let leading = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (leading, shutdown) = (leading.clone(), shutdown.clone());
        async move {
            leader::run(
                api,
                settings,
                OperatorMetrics::default(),
                shutdown,
                move |token| {
                    let leading = leading.clone();
                    async move {
                        leading.store(true, Ordering::SeqCst);
                        token.cancelled().await;
                        leading.store(false, Ordering::SeqCst);
                    }
                },
            )
            .await;
        }
    });
    Candidate {
        leading,
        shutdown,
        task,
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get(name)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|holder| !holder.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn one_of_two_candidates_leads_and_the_other_takes_over_within_the_lease_duration() {
    let ns = namespace("leader");
    let lease = "election";
    let leases: Api<Lease> = Api::namespaced(kube_client(&ns), &ns);
    let a = candidate(&ns, lease, "replica-a");
    let b = candidate(&ns, lease, "replica-b");
    let both = [&a, &b];
    let first = poll("a leader", async || {
        both.iter().position(|c| c.leading.load(Ordering::SeqCst))
    })
    .await;
    // For several renewals, exactly one leads and the lease names it.
    let names = ["replica-a", "replica-b"];
    for _ in 0..15 {
        let leaders: Vec<bool> = both
            .iter()
            .map(|c| c.leading.load(Ordering::SeqCst))
            .collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        assert!(leaders[first]);
        assert_eq!(holder(&leases, lease).await.as_deref(), Some(names[first]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leader shuts down (releasing the lease): the other leads within the lease duration.
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    let stopped_at = tokio::time::Instant::now();
    leader.shutdown.cancel();
    tokio::time::timeout(DEADLINE, leader.task)
        .await
        .unwrap()
        .unwrap();
    assert!(!leader.leading.load(Ordering::SeqCst));
    poll("the follower to lead", async || {
        follower.leading.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "takeover after a release took {:?}",
        stopped_at.elapsed()
    );
    let new_holder = names[1 - first];
    assert_eq!(holder(&leases, lease).await.as_deref(), Some(new_holder));

    // The new leader dies without releasing: a fresh candidate waits for the lease to expire
    // (2 s unchanged), then takes over.
    follower.task.abort();
    let crashed_at = tokio::time::Instant::now();
    let c = candidate(&ns, lease, "replica-c");
    poll("the fresh candidate to lead", async || {
        c.leading.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let waited = crashed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "takeover after a crash took {waited:?}"
    );
    assert_eq!(holder(&leases, lease).await.as_deref(), Some("replica-c"));
    c.shutdown.cancel();
    tokio::time::timeout(DEADLINE, c.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder(&leases, lease).await, None, "released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn a_revoked_service_account_token_is_refused_once_its_cached_review_expires() {
    use k8s_openapi::api::core::v1::Secret;
    use scaivault_audit::auth::token_review::CACHE_TTL;
    let ns = namespace("revoke");
    let server = OperatorServer::start(&ns).await;
    let (client, base) = (client(), server.base());
    // A token the emulator accepts while the Secret kmock-tokens/NAME exists.
    let name = format!("revocable-{}", fastrand::u64(..));
    let token = sa_token(&format!("kmock.secret.{name}"));
    let secrets: Api<Secret> = Api::namespaced(kube_client("kmock-tokens"), "kmock-tokens");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"username": "system:serviceaccount:scaivault:reporting",
                       "audiences": "scaivault-audit"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let reviewed_at = tokio::time::Instant::now();
    let (status, _, body) = get_logs(&client, base, &token, None, "limit=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    secrets
        .delete(&name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    // Within the cache TTL the positive review is reused ...
    let (status, _, body) = get_logs(&client, base, &token, None, "limit=1").await;
    assert_eq!(status, StatusCode::OK, "cached review: {body}");
    // ... but not beyond it: the token is reviewed again and refused.
    tokio::time::sleep_until(reviewed_at + CACHE_TTL + Duration::from_secs(1)).await;
    let reply = get_logs(&client, base, &token, None, "limit=1").await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/k8s-tools.sh"]
async fn a_resource_naming_a_tenant_its_namespace_does_not_allow_fails_and_writes_nothing() {
    // The operator namespace allows only TENANT; a second watched namespace allows two tenants.
    let ns = namespace("tenancy");
    let team = format!("{ns}-team");
    labelled_namespace(&team, &format!("tnt_x.{TENANT}")).await;
    let server = OperatorServer::start_watching(&ns, &[&team]).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let ids = ingest_ok(
        &client,
        base,
        admin,
        &(0..10)
            .map(|i| event_for_tenant(i, Some(OTHER_TENANT)))
            .chain((10..15).map(event))
            .collect::<Vec<_>>(),
    )
    .await;
    for (tenant, ids) in [(OTHER_TENANT, &ids[..10]), (TENANT, &ids[10..])] {
        wait_until_visible(
            &client,
            base,
            admin,
            Some(tenant),
            ids,
            RESTART_VISIBILITY_DEADLINE,
        )
        .await;
    }
    let manifests = tempfile::tempdir().unwrap();
    let out = file_bucket(&server.dir, "tenancy-out");
    // The filter leaves out the controller's own `export_created` event.
    let apply = |ns: &str, name: &str, tenant: &str, annotations: &str| {
        let manifest = manifests.path().join(format!("{name}.yaml"));
        std::fs::write(&manifest, format!(
            "apiVersion: audit.scailabs.ai/v1alpha1\nkind: AuditExport\nmetadata:\n  name: {name}\n  annotations: {annotations}\nspec:\n  tenantId: {tenant}\n  from: \"{FROM}\"\n  to: \"{TO}\"\n  format: jsonl\n  filters:\n    pathPrefix: environments/production/\n  destination:\n    type: file\n    bucket: {}\n    prefix: {name}/\n",
            bucket_name(&out)
        )).unwrap();
        kubectl_ok(&["apply", "--validate=false", "-n", ns, "-f"], &manifest);
    };
    let finished = |ns: &str, name: &'static str| {
        let api: Api<AuditExport> = Api::namespaced(kube_client(ns), ns);
        async move {
            poll("a finished phase", async || {
                let object = api.get(name).await.ok()?;
                let phase = object.status.as_ref()?.phase?;
                matches!(phase, ExportJobPhase::Completed | ExportJobPhase::Failed)
                    .then_some(object)
            })
            .await
        }
    };

    // Another tenant: Failed/TenantNotAllowed, the message names the label, nothing written.
    apply(&ns, "foreign", OTHER_TENANT, "{}");
    let refused = finished(&ns, "foreign").await;
    let status = refused.status.clone().unwrap();
    assert_eq!(status.phase, Some(ExportJobPhase::Failed));
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "TenantNotAllowed")
    );
    assert!(
        failed.message.contains(NAMESPACE_TENANT_LABEL),
        "{}",
        failed.message
    );
    assert_eq!(status.export_id, None);
    assert_eq!(status.record_count, None);
    assert!(
        !out.join("foreign").try_exists().unwrap(),
        "nothing written for a refused export"
    );

    // A tenant the second namespace's label lists, with forged annotations: they are ignored (a
    // fresh id, the resource as requester); it completes and its export_created event is in the
    // audit log.
    let forged = "exp_01forged0000000000000000";
    apply(
        &team,
        "allowed",
        TENANT,
        &format!("{{{EXPORT_ID_ANNOTATION}: {forged}, {REQUESTED_BY_ANNOTATION}: \"user:ceo\"}}"),
    );
    let done = finished(&team, "allowed").await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Some(ExportJobPhase::Completed), "{status:?}");
    assert_eq!(status.record_count, Some(5));
    let export_id = status.export_id.unwrap();
    assert_ne!(export_id, forged);
    // REST reads come from the replica's watch cache: it has the export a moment later.
    let rest = poll("the export in the REST API", async || {
        let (code, _, rest) = get_export(&client, base, admin, &export_id).await;
        (code == StatusCode::OK).then_some(rest)
    })
    .await;
    let actor = format!("kubernetes:{team}/allowed");
    assert_eq!(rest["requested_by"], json!(actor));
    let created = poll("the export_created event", async || {
        let (_, _, body) = get_logs(
            &client,
            base,
            admin,
            Some(TENANT),
            "action=export_created&limit=100",
        )
        .await;
        body["logs"]
            .as_array()?
            .iter()
            .find(|log| log["extra_data"]["export_id"] == json!(export_id))
            .cloned()
    })
    .await;
    assert_eq!(created["identity_id"], json!(actor), "{created}");
    // The refused export left no trace in the other tenant's audit log.
    let (code, _, other) = get_logs(
        &client,
        base,
        admin,
        Some(OTHER_TENANT),
        "action=export_created&limit=100",
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{other}");
    assert_eq!(other["logs"], json!([]), "{other}");
}

/// Validates `reply` as `method path` of the OpenAPI document, and returns its body.
fn documented(doc: &crate::openapi::Document, path: &str, method: &str, reply: Reply) -> Value {
    doc.check(path, method, &reply);
    reply.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh"]
async fn operator_mode_export_answers_match_the_openapi_document_in_every_phase() {
    let doc = crate::openapi::Document::load();
    let ns = namespace("openapi");
    let client_k8s = kube_client(&ns);
    // Another replica leads at first, so the first export is seen pending, then cancelled.
    let leases: Api<Lease> = Api::namespaced(client_k8s, &ns);
    let blocker = Lease {
        metadata: ObjectMeta {
            name: Some(scaivault_audit::config::DEFAULT_LEASE_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("another-replica".into()),
            lease_duration_seconds: Some(3600),
            ..LeaseSpec::default()
        }),
    };
    leases
        .create(&PostParams::default(), &blocker)
        .await
        .unwrap();
    let server = OperatorServer::start(&ns).await;
    let (client, base, admin) = (client(), server.base(), server.admin.as_str());
    let ids = ingest_ok(&client, base, admin, &[event(1), event(2)]).await;
    wait_until_visible(
        &client,
        base,
        admin,
        Some(TENANT),
        &ids,
        RESTART_VISIBILITY_DEADLINE,
    )
    .await;
    let out = file_bucket(&server.dir, "out");
    let export = |bucket: String, prefix: &str| {
        json!({"from": FROM, "to": TO, "format": "jsonl",
               "filters": {"path_prefix": "environments/production/"},
               "destination": {"type": "file", "bucket": bucket, "prefix": prefix}})
    };
    let one = "/v1/audit/exports/{export_id}";
    let post = async |body: &Value| {
        let reply = post_export(&client, base, admin, body).await;
        assert_eq!(reply.0, StatusCode::ACCEPTED, "{}", reply.2);
        let body = documented(&doc, "/v1/audit/export", "post", reply);
        body["export_id"].as_str().unwrap().to_owned()
    };
    let finished = async |id: &str| {
        wait_finished(&client, base, admin, id).await;
        documented(&doc, one, "get", get_export(&client, base, admin, id).await)
    };

    let cancelled = post(&export(bucket_name(&out), "c/")).await;
    let pending = documented(
        &doc,
        one,
        "get",
        get_export(&client, base, admin, &cancelled).await,
    );
    assert_eq!(pending["status"], "pending", "{pending}");
    let deleted = send(
        client
            .delete(format!("{base}/v1/audit/exports/{cancelled}"))
            .bearer_auth(admin)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    documented(&doc, one, "delete", deleted);
    let mut lease = leases
        .get(scaivault_audit::config::DEFAULT_LEASE_NAME)
        .await
        .unwrap();
    lease.spec.as_mut().unwrap().holder_identity = None;
    leases
        .replace(
            scaivault_audit::config::DEFAULT_LEASE_NAME,
            &PostParams::default(),
            &lease,
        )
        .await
        .unwrap();
    let body = finished(&cancelled).await;
    assert_eq!(body["status"], "cancelled", "{body}");
    assert!(body["completed_at"].is_string(), "{body}");

    let completed = post(&export(bucket_name(&out), "ok/")).await;
    let body = finished(&completed).await;
    assert_eq!(body["status"], "completed", "{body}");
    assert!(body["started_at"].is_string(), "{body}");

    // No credentials backend is configured: the job fails when it runs.
    let mut s3 = export(String::new(), "f/");
    s3["destination"] =
        json!({"type": "s3", "bucket": "acme-audit", "credentials_path": "infra/aws/writer"});
    let failed = post(&s3).await;
    let body = finished(&failed).await;
    assert_eq!(body["status"], "failed", "{body}");
    assert!(body["completed_at"].is_string(), "{body}");

    let listed = send(
        client
            .get(format!("{base}/v1/audit/exports"))
            .bearer_auth(admin)
            .header("X-Tenant-ID", TENANT),
    )
    .await;
    let listed = documented(&doc, "/v1/audit/exports", "get", listed);
    assert_eq!(
        listed["exports"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
}

// ---------------------------------------------------------------------------------------------
// AuditExportSchedule: continuous exports run by the operator
// ---------------------------------------------------------------------------------------------

/// RFC 3339 (UTC, microseconds) of now minus `seconds_ago`.
fn ago(seconds_ago: f64) -> String {
    let now = jiff::Timestamp::now().as_microsecond();
    let micros = now - (seconds_ago * 1e6) as i64;
    jiff::Timestamp::from_microsecond(micros)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Ingests events of [`TENANT`] `ages` seconds old (and one of [`OTHER_TENANT`]); returns the
/// ids a schedule starting at `start` must deliver.
async fn ingest_aged(
    server: &OperatorServer,
    counter: &mut u64,
    ages: &[f64],
    start: &str,
) -> Vec<String> {
    let mut events = Vec::new();
    for age in ages {
        *counter += 1;
        let mut event = event_for_tenant(*counter, Some(TENANT));
        event["timestamp"] = json!(ago(*age));
        events.push(event);
    }
    *counter += 1;
    events.push(event_for_tenant(*counter, Some(OTHER_TENANT)));
    let ids = ingest_ok(&client(), server.base(), &server.admin, &events).await;
    ids.into_iter()
        .zip(&events)
        .take(ages.len())
        .filter(|(_, event)| event["timestamp"].as_str().unwrap() >= start)
        .map(|(id, _)| id)
        .collect()
}

/// Ingests current and late events (and some older than the schedule) every 300 ms.
async fn ingest_for(
    server: &OperatorServer,
    counter: &mut u64,
    expected: &mut Vec<String>,
    duration: Duration,
    start: &str,
) {
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        let ages = [0.0, 0.2, 12.0, 25.0, 7200.0];
        expected.extend(ingest_aged(server, counter, &ages, start).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every `manifest.json` of the bucket under `prefix`, keyed by export id (run order).
async fn schedule_manifests(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
) -> std::collections::BTreeMap<String, Value> {
    let mut manifests = std::collections::BTreeMap::new();
    for key in s3_keys(endpoint, bucket, prefix).await {
        if key.ends_with("/manifest.json") {
            let bytes = s3_get(endpoint, bucket, &key).await.unwrap();
            let manifest: Value = serde_json::from_slice(&bytes).unwrap();
            manifests.insert(
                manifest["export_id"].as_str().unwrap().to_string(),
                manifest,
            );
        }
    }
    manifests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/kmock.sh and scripts/emulators.sh"]
async fn an_audit_export_schedule_delivers_every_event_once_across_a_restart_and_a_failing_bucket()
{
    use scaivault_audit::operator::schedule_controller::SCHEDULE_FINALIZER;
    use scaivault_audit::operator::schedule_crd::AuditExportSchedule;
    let endpoint = emulator_env("SCAIVAULT_TEST_S3_ENDPOINT");
    let ns = namespace("schedule");
    // The export's credentials come from ScaiVault; the bucket does not exist yet.
    let vault = FakeScaiVault::start("vault-token-schedules").await;
    let credentials = "tenants/tnt_acme/aws/audit-writer";
    vault.put(
        credentials,
        json!({"access_key_id": "AKIATESTEXPORTWRITER", "secret_access_key": "s3-secret-schedules",
               "region": "us-east-1", "endpoint_url": endpoint}),
    );
    let bucket = format!("continuous-{}", fastrand::u32(..));
    let dir = TestDir::new();
    let token_file = dir.root().join("scaivault-token");
    std::fs::write(&token_file, "vault-token-schedules\n").unwrap();
    let token_arg = token_file.display().to_string();
    let extra = [
        "--scaivault-url",
        vault.url.as_str(),
        "--scaivault-token-file",
        token_arg.as_str(),
        "--export-allow-private-endpoints",
        // Runs every 2 s (the default minimum interval is 60 s).
        "--export-schedule-min-interval-seconds",
        "1",
        // Reads add no audit_read events to the tenant.
        "--audit-of-audit-enabled",
        "false",
    ];
    let mut server = OperatorServer::start_in(dir, &ns, &[], &extra).await;
    let mut counter = 0;
    let mut expected = Vec::new();
    let start = ago(60.0);
    let before_start = ingest_aged(&server, &mut counter, &[65.0, 3600.0], &start).await;
    assert!(before_start.is_empty());
    expected.extend(ingest_aged(&server, &mut counter, &[30.0, 1.0], &start).await);

    let api: Api<AuditExportSchedule> = Api::namespaced(kube_client(&ns), &ns);
    let name = "continuous";
    let resource: AuditExportSchedule = serde_json::from_value(json!({
        "apiVersion": "audit.scailabs.ai/v1alpha1", "kind": "AuditExportSchedule",
        "metadata": {"name": name},
        "spec": {"tenantId": TENANT, "schedule": "*/2 * * * * *", "delaySeconds": 1,
                 "start": start, "format": "jsonl",
                 // Leaves out the controller's own export_created event.
                 "filters": {"pathPrefix": "environments/production/"},
                 "destination": {"type": "s3", "bucket": bucket, "prefix": "acme/",
                                 "credentialsPath": credentials}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &resource).await.unwrap();

    // The bucket is missing: the first run fails, the watermark stays at the start.
    let failing = poll("the first run to fail", async || {
        let status = api.get(name).await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(status)
    })
    .await;
    let ready = &failing.conditions[0];
    assert_eq!(ready.reason, "destination_not_found", "{failing:?}");
    assert!(ready.message.contains("retrying at"), "{}", ready.message);
    assert_eq!(failing.complete_through.as_deref(), Some(start.as_str()));
    assert_eq!(failing.runs_completed, 0);
    let schedule_id = failing.schedule_id.clone().unwrap();
    ingest_for(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(2),
        &start,
    )
    .await;
    let still = api.get(name).await.unwrap().status.unwrap();
    assert_eq!(still.complete_through.as_deref(), Some(start.as_str()));
    assert!(still.failure.is_some_and(|failure| failure.attempts >= 1));

    // The bucket appears: the retry succeeds, runs follow every 2 s while events arrive.
    s3_client(&endpoint)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    ingest_for(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(4),
        &start,
    )
    .await;
    let recovered = poll("two runs after the recovery", async || {
        let status = api.get(name).await.ok()?.status?;
        (status.runs_completed >= 2).then_some(status)
    })
    .await;
    assert_eq!(recovered.conditions[0].status, "True", "{recovered:?}");
    assert!(recovered.complete_through.as_deref() > Some(start.as_str()));

    // The REST API lists the tenant's schedule from the cluster (and not for another tenant);
    // creating one over REST points to kubectl.
    let listed = poll("the schedule in the REST listing", async || {
        let (code, _, body) = get_as(
            &client(),
            server.base(),
            "/v1/audit/export-schedules",
            Some(&server.admin),
            Some(TENANT),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body["schedules"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(listed["schedule_id"], json!(schedule_id));
    assert_eq!(
        listed["resource"],
        json!({"kind": "AuditExportSchedule", "namespace": ns, "name": name})
    );
    assert_eq!(
        listed["created_by"],
        json!(format!("kubernetes:{ns}/{name}"))
    );
    let (code, _, one) = get_as(
        &client(),
        server.base(),
        &format!("/v1/audit/export-schedules/{schedule_id}"),
        Some(&server.admin),
        Some(TENANT),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{one}");
    assert!(one["status"]["runs_completed"].as_u64() >= Some(2), "{one}");
    let foreign = get_as(
        &client(),
        server.base(),
        &format!("/v1/audit/export-schedules/{schedule_id}"),
        Some(&server.admin),
        Some(OTHER_TENANT),
    )
    .await;
    assert_error(&foreign, StatusCode::NOT_FOUND, "schedule_not_found");
    let (code, _, others) = get_as(
        &client(),
        server.base(),
        "/v1/audit/export-schedules",
        Some(&server.admin),
        Some(OTHER_TENANT),
    )
    .await;
    assert_eq!((code, &others["schedules"]), (StatusCode::OK, &json!([])));
    let post = send(
        client()
            .post(format!("{}/v1/audit/export-schedules", server.base()))
            .bearer_auth(&server.admin)
            .header("X-Tenant-ID", TENANT)
            .json(&json!({"schedule": "@hourly"})),
    )
    .await;
    assert_error(&post, StatusCode::CONFLICT, "schedules_not_available");

    // The operator restarts between runs (ticks are missed meanwhile): the next leader
    // continues from the status.
    let before = api.get(name).await.unwrap().status.unwrap();
    let OperatorServer {
        server: mut process,
        dir,
        ..
    } = server;
    process.terminate().await;
    drop(process);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server = OperatorServer::start_in(dir, &ns, &[], &extra).await;
    ingest_for(
        &server,
        &mut counter,
        &mut expected,
        Duration::from_secs(3),
        &start,
    )
    .await;
    let after = poll("runs after the restart", async || {
        let status = api.get(name).await.ok()?.status?;
        (status.runs_completed > before.runs_completed + 1).then_some(status)
    })
    .await;
    assert!(after.complete_through > before.complete_through);

    // The last events, then a run whose window (and snapshot) covers them.
    expected.extend(ingest_aged(&server, &mut counter, &[0.0, 20.0], &start).await);
    let last_ingest = ago(0.0);
    let done = poll("a run past the last events", async || {
        let status = api.get(name).await.ok()?.status?;
        let last = status.last_runs.last()?;
        (last.to.as_str() > last_ingest.as_str()).then_some(status)
    })
    .await;
    assert!(
        done.complete_through.as_deref() > Some(last_ingest.as_str()),
        "{done:?}"
    );
    assert!(!done.last_runs.is_empty() && done.last_runs.len() <= 20);
    assert_eq!(done.conditions[0].status, "True");
    assert!(done.next_run_at.is_some());

    // Deleting the resource stops it (the finalizer is released); nothing more is written.
    let object = api.get(name).await.unwrap();
    assert!(
        object
            .finalizers()
            .contains(&SCHEDULE_FINALIZER.to_string())
    );
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    poll("the schedule to be gone", async || {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
    let manifests = schedule_manifests(&endpoint, &bucket, "acme/").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        schedule_manifests(&endpoint, &bucket, "acme/").await.len(),
        manifests.len()
    );
    assert_eq!(s3_open_uploads(&endpoint, &bucket, "acme/").await, 0);

    // The union of every run's files: exactly the tenant's events since the start.
    assert!(
        manifests.len() as u64 >= done.runs_completed,
        "{} manifests",
        manifests.len()
    );
    let mut delivered = Vec::new();
    let mut late_total = 0;
    let mut previous_to: Option<String> = None;
    for (export_id, manifest) in &manifests {
        assert!(
            export_id.starts_with(&format!("{schedule_id}_r")),
            "{export_id}"
        );
        if let Some(to) = &previous_to {
            assert_eq!(
                manifest["from"].as_str(),
                Some(to.as_str()),
                "consecutive windows"
            );
        }
        previous_to = manifest["to"].as_str().map(str::to_string);
        let mut records = Vec::new();
        for file in manifest["files"].as_array().unwrap() {
            let bytes = s3_get(&endpoint, &bucket, file["key"].as_str().unwrap())
                .await
                .unwrap();
            assert_eq!(
                crate::harness::export::sha256_hex(&bytes),
                file["sha256"],
                "{export_id}"
            );
            for line in bytes
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.is_empty())
            {
                records.push(serde_json::from_slice::<Value>(line).unwrap());
            }
        }
        assert_eq!(
            records.len() as u64,
            manifest["record_count"].as_u64().unwrap()
        );
        let from = manifest["from"].as_str().unwrap();
        let late = records
            .iter()
            .filter(|record| record["timestamp"].as_str().unwrap() < from)
            .count();
        match manifest.get("late") {
            Some(summary) => assert_eq!(summary["count"], json!(late), "{export_id}"),
            None => assert_eq!(late, 0, "the first run has no late events"),
        }
        late_total += late;
        // Another tenant's event would show up as `extra` below.
        for record in &records {
            delivered.push(record["id"].as_str().unwrap().to_string());
        }
    }
    assert!(
        late_total > 5,
        "late events were delivered as such: {late_total}"
    );
    let unique: std::collections::BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event was delivered twice"
    );
    let expected: std::collections::BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<_> = expected.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}
