//! The real controller (leader election, watcher, finalizer, status) against the Kubernetes
//! emulator (`scripts/kmock.sh start`), with an AuditExport applied by the real kubectl
//! (`scripts/k8s-tools.sh install`). Fails loudly when either is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::{Api, Client, Config, ResourceExt};
use scaivault_audit::config::OperatorSettings;
use scaivault_audit::export::engine::{ExportOutcome, ProgressSink};
use scaivault_audit::export::job::{Checkpoint, ExportFailure, ExportSpec, FileEntry};
use scaivault_audit::operator::crd::ExportJobPhase;
use scaivault_audit::operator::exporter::Exporter;
use scaivault_audit::operator::metrics::OperatorMetrics;
use scaivault_audit::operator::{AuditExport, FINALIZER};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

fn emulator() -> (String, PathBuf) {
    let url = std::env::var("SCAIVAULT_TEST_KMOCK_URL").unwrap_or_else(|_| {
        panic!("the Kubernetes emulator is not running: run `scripts/kmock.sh start` and `source .tools/kmock.env`")
    });
    let kubeconfig = std::env::var("SCAIVAULT_TEST_KMOCK_KUBECONFIG")
        .expect("SCAIVAULT_TEST_KMOCK_KUBECONFIG (source .tools/kmock.env)");
    (url, PathBuf::from(kubeconfig))
}

fn kubectl() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    assert!(
        path.is_file(),
        "kubectl 1.35 is missing: run `scripts/k8s-tools.sh install`"
    );
    path
}

/// Writes `parts` small part files into a `file` destination, one checkpoint per part.
struct DirectoryExporter;

#[async_trait]
impl Exporter for DirectoryExporter {
    async fn estimate(&self, _spec: &ExportSpec) -> Result<u64, ExportFailure> {
        Ok(3)
    }
    async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
        Ok(Checkpoint::start(1))
    }
    async fn run(
        &self,
        _id: &str,
        spec: &ExportSpec,
        mut checkpoint: Checkpoint,
        progress: &dyn ProgressSink,
        _cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        for number in checkpoint.files.len() + 1..=3 {
            let key = spec.part_key(number);
            let path = Path::new(&spec.destination.bucket).join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "{}\n").unwrap();
            checkpoint.files.push(FileEntry {
                key,
                size_bytes: 3,
                records: 1,
                sha256: "00".repeat(32),
            });
            progress.checkpoint(&checkpoint).await?;
        }
        Ok(ExportOutcome {
            record_count: checkpoint.records(),
            files: checkpoint.files,
            completed_at: "2026-01-01T00:00:00Z".into(),
        })
    }
    async fn abort(&self, _id: &str, _spec: &ExportSpec) -> Result<(), ExportFailure> {
        Ok(())
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_runs_to_completion_and_delete_releases_the_finalizer() {
    let (url, kubeconfig) = emulator();
    let kubectl = kubectl();
    let mut config = Config::new(url.parse().unwrap());
    config.default_namespace = "default".into();
    let client = Client::try_from(config).unwrap();
    let name = format!("it-{}", std::process::id());
    let destination = tempfile::tempdir().unwrap();

    let shutdown = CancellationToken::new();
    let settings = OperatorSettings {
        enabled: true,
        namespace: Some("default".into()),
        max_concurrent_exports: 1,
        lease_name: format!("lease-{name}"),
        identity: "test-replica".into(),
    };
    let operator = tokio::spawn({
        let (client, shutdown) = (client.clone(), shutdown.clone());
        async move {
            scaivault_audit::operator::run(
                client,
                Arc::new(DirectoryExporter),
                &settings,
                OperatorMetrics::default(),
                shutdown,
            )
            .await;
        }
    });

    let manifest = destination.path().join("export.yaml");
    std::fs::write(&manifest, format!(
        "apiVersion: audit.scailabs.ai/v1alpha1\nkind: AuditExport\nmetadata:\n  name: {name}\nspec:\n  tenantId: tnt_acme\n  from: \"2026-01-01T00:00:00Z\"\n  to: \"2026-02-01T00:00:00Z\"\n  format: jsonl\n  destination:\n    type: file\n    bucket: {}\n    prefix: out/\n",
        destination.path().display()
    )).unwrap();
    // --validate=false: the emulator serves no OpenAPI document to validate against.
    let applied = std::process::Command::new(&kubectl)
        .args(["--kubeconfig"])
        .arg(&kubeconfig)
        .args(["apply", "--validate=false", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let api: Api<AuditExport> = Api::namespaced(client.clone(), "default");
    let done = poll("phase Completed", async || {
        let object = api.get(&name).await.ok()?;
        let phase = object.status.as_ref()?.phase?;
        (phase == ExportJobPhase::Completed).then_some(object)
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.record_count, Some(3));
    assert_eq!(status.files.len(), 3);
    assert!(status.export_id.unwrap().starts_with("exp_"));
    assert!(done.finalizers().contains(&FINALIZER.to_string()));
    for file in &status.files {
        assert!(
            destination.path().join(&file.key).is_file(),
            "{} missing",
            file.key
        );
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Completed")
    );

    let deleted = std::process::Command::new(&kubectl)
        .args(["--kubeconfig"])
        .arg(&kubeconfig)
        .args(["delete", "auditexport", &name, "--wait=false"])
        .output()
        .unwrap();
    assert!(
        deleted.status.success(),
        "kubectl delete: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    poll(
        "the finalizer to be released and the object gone",
        async || matches!(api.get_opt(&name).await, Ok(None)).then_some(()),
    )
    .await;

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, operator)
        .await
        .unwrap()
        .unwrap();
}
