//! End to end on a real cluster (kind, k3d, ...): the CRD installed with kubectl, the operator
//! run out of cluster (`serve --operator` with the caller's `KUBECONFIG`), AuditExports applied
//! with kubectl and created through the REST API, run to Completed with their files and
//! manifest written. Ignored by default; run with `KUBECONFIG` pointing at a disposable
//! cluster: `cargo test --test it operator_e2e:: -- --ignored` (docs/operator.md, "End-to-end
//! tests"). Each test uses a namespace of its own and deletes it; the CRD stays installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::export::*;
use crate::harness::*;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(180);
const CRD_NAME: &str = "auditexports.audit.scailabs.ai";

/// The cluster's kubeconfig; panics (does not skip) without one.
fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("KUBECONFIG").unwrap_or_else(|| {
        panic!("KUBECONFIG is not set: these tests need a real cluster (see docs/operator.md, \"End-to-end tests\")")
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "KUBECONFIG={} does not exist",
        path.display()
    );
    path
}

/// `.tools/bin/kubectl` (scripts/k8s-tools.sh install) or `kubectl` on PATH, on the cluster.
fn kubectl_command() -> Command {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    let mut command = Command::new(if local.is_file() {
        local
    } else {
        PathBuf::from("kubectl")
    });
    command.arg("--kubeconfig").arg(kubeconfig());
    command
}

/// Runs kubectl; panics with its stderr when it fails.
fn kubectl(args: &[&str]) -> String {
    let output = kubectl_command()
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run kubectl: {error}"));
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Installs the CRD and waits until the API server serves it.
fn install_crd() {
    kubectl(&["apply", "-f", &repo_file("crds/auditexport.yaml")]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{CRD_NAME}"),
        "--timeout=60s",
    ]);
}

/// A namespace of its own, labelled for tnt_acme, deleted on drop.
struct Namespace(String);

impl Namespace {
    fn create(test: &str) -> Namespace {
        let name = format!("scaivault-e2e-{test}-{}", fastrand::u32(..100_000));
        kubectl(&["create", "namespace", &name]);
        // AuditExports applied here may export tnt_acme (set by a cluster administrator).
        kubectl(&[
            "label",
            "namespace",
            &name,
            "audit.scailabs.ai/tenant=tnt_acme",
        ]);
        Namespace(name)
    }
}

impl Drop for Namespace {
    /// Also after a failure: finalizers left by a stopped operator would block the delete.
    fn drop(&mut self) {
        let names = kubectl_command()
            .args(["get", "auditexports", "-n", &self.0, "-o", "name"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        for name in names.lines().filter(|name| !name.is_empty()) {
            let _ = kubectl_command()
                .args(["patch", name, "-n", &self.0, "--type=merge"])
                .args(["-p", r#"{"metadata":{"finalizers":null}}"#])
                .output();
        }
        let _ = kubectl_command()
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

/// The real binary as the operator of `namespace`, out of cluster; auth by bootstrap token.
async fn operator(dir: &TestDir, namespace: &str) -> Server {
    let kubeconfig = kubeconfig();
    let args = [
        "--operator",
        "--operator-namespace",
        namespace,
        "--commit-interval-ms",
        "200",
    ];
    Server::start_with_env(
        &dir.data_dir(),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("HOSTNAME", OsStr::new(&format!("e2e-{namespace}"))),
        ],
    )
    .await
}

fn resource(namespace: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl(&[
        "get",
        "auditexport",
        name,
        "-n",
        namespace,
        "-o",
        "json",
    ]))
    .unwrap()
}

/// Polls the resource until its phase is terminal; panics unless it is Completed.
async fn wait_completed(namespace: &str, name: &str) -> Value {
    let started = Instant::now();
    loop {
        let object = resource(namespace, name);
        match object["status"]["phase"].as_str() {
            Some("Completed") => return object,
            Some("Failed" | "Cancelled") => panic!("export {name} did not complete: {object}"),
            _ => {}
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{name} not Completed after {DEADLINE:?}: {object}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks each listed file (size, sha256) and returns the concatenated, decompressed lines.
fn read_files(out: &Path, status: &Value, gzip: bool) -> Vec<u8> {
    let mut all = Vec::new();
    for file in status["files"].as_array().unwrap() {
        let key = file["key"].as_str().unwrap();
        let bytes = std::fs::read(out.join(key)).unwrap_or_else(|_| panic!("{key} missing"));
        assert_eq!(file["sizeBytes"], json!(bytes.len()), "{key}");
        assert_eq!(
            file["sha256"],
            json!(crate::harness::export::sha256_hex(&bytes)),
            "{key}"
        );
        if gzip {
            flate2::read::MultiGzDecoder::new(bytes.as_slice())
                .read_to_end(&mut all)
                .unwrap();
        } else {
            all.extend_from_slice(&bytes);
        }
    }
    all
}

async fn ingest(server: &Server, count: u64) -> Vec<Value> {
    let (client, base, token) = (client(), server.base_url(), server.token());
    let ids = ingest_ok(
        &client,
        base,
        token,
        &(0..count).map(event).collect::<Vec<_>>(),
    )
    .await;
    ascending(
        wait_until_visible(
            &client,
            base,
            token,
            Some(TENANT),
            &ids,
            RESTART_VISIBILITY_DEADLINE,
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test --test it operator_e2e:: -- --ignored"]
async fn the_crd_installs_and_is_served_with_its_schema() {
    install_crd();
    let explained = kubectl(&["explain", "auditexport.spec.destination"]);
    assert!(explained.contains("credentialsPath"), "{explained}");
    let ns = Namespace::create("crd");
    // The API server's CEL rules refuse an export whose window is empty.
    let manifest = "apiVersion: audit.scailabs.ai/v1alpha1\nkind: AuditExport\nmetadata:\n  name: empty-window\nspec:\n  tenantId: tnt_acme\n  from: \"2026-02-01T00:00:00Z\"\n  to: \"2026-01-01T00:00:00Z\"\n  format: jsonl\n  destination:\n    type: file\n    bucket: audit\n";
    let dir = TestDir::new();
    let path = dir.root().join("invalid.yaml");
    std::fs::write(&path, manifest).unwrap();
    let refused = kubectl_command()
        .args(["apply", "-n", &ns.0, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "an empty window was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test --test it operator_e2e:: -- --ignored"]
async fn the_s3_sample_with_a_file_destination_completes_with_files_and_manifest() {
    install_crd();
    let ns = Namespace::create("sample");
    let dir = TestDir::new();
    let server = operator(&dir, &ns.0).await;
    let logs = ingest(&server, 300).await;

    // config/samples/auditexport-s3.yaml, with its window widened to the ingested events and
    // a `file` destination (the operator runs on this machine, so it writes here).
    let out = file_bucket(&dir, "out");
    let sample = std::fs::read_to_string(repo_file("config/samples/auditexport-s3.yaml")).unwrap();
    let head = sample.split("  destination:").next().unwrap();
    let manifest = format!(
        "{}  maxRecordsPerFile: 70\n  destination:\n    type: file\n    bucket: {}\n    prefix: scaivault/e2e/\n",
        head.replace("2026-01-01T00:00:00Z", "2020-01-01T00:00:00Z")
            .replace("2026-02-01T00:00:00Z", "2100-01-01T00:00:00Z"),
        bucket_name(&out)
    );
    let path = dir.root().join("sample.yaml");
    std::fs::write(&path, manifest).unwrap();
    kubectl(&["apply", "-n", &ns.0, "-f", path.to_str().unwrap()]);

    let object = wait_completed(&ns.0, "acme-2026-01").await;
    let status = &object["status"];
    // The sample's filters: reads and writes under environments/production/.
    let expected: Vec<Value> = logs
        .into_iter()
        .filter(|log| matches!(log["action"].as_str(), Some("read" | "write")))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(status["recordCount"], json!(expected.len()), "{object}");
    assert_eq!(
        status["files"].as_array().unwrap().len(),
        expected.len().div_ceil(70)
    );
    assert_eq!(
        without_chain(&read_files(&out, status, true)),
        expected_jsonl(&expected)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("scaivault/e2e/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["export_id"], status["exportId"]);
    assert_eq!(manifest["record_count"], status["recordCount"]);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Completed"))
    );

    // Delete while the operator runs: the finalizer is released and the files stay.
    kubectl(&[
        "delete",
        "auditexport",
        "acme-2026-01",
        "-n",
        &ns.0,
        "--timeout=60s",
    ]);
    assert!(out.join("scaivault/e2e/manifest.json").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG=... cargo test --test it operator_e2e:: -- --ignored"]
async fn a_rest_export_creates_a_resource_that_completes() {
    install_crd();
    let ns = Namespace::create("rest");
    let dir = TestDir::new();
    let server = operator(&dir, &ns.0).await;
    let logs = ingest(&server, 120).await;
    let out = file_bucket(&dir, "out");
    let (client, base, token) = (client(), server.base_url(), server.token());
    let body = json!({"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z",
        "format": "jsonl", "max_records_per_file": 50,
        // Leaves out the service's own `export_created` event.
        "filters": {"path_prefix": "environments/production/"},
        "destination": {"type": "file", "bucket": bucket_name(&out), "prefix": "rest/"}});
    let export_id = start_export(&client, base, token, &body).await;
    let name = export_id.replace('_', "-");
    let object = wait_completed(&ns.0, &name).await;
    assert_eq!(
        object["metadata"]["labels"]["audit.scailabs.ai/tenant"],
        TENANT
    );
    assert_eq!(object["status"]["exportId"], json!(export_id));
    let rest = wait_finished(&client, base, token, &export_id).await;
    assert_eq!(rest["status"], "completed", "{rest}");
    assert_eq!(rest["record_count"], object["status"]["recordCount"]);
    assert_eq!(
        without_chain(&read_files(&out, &object["status"], false)),
        expected_jsonl(&logs)
    );
    assert!(out.join("rest/manifest.json").is_file());
    kubectl(&["delete", "auditexport", &name, "-n", &ns.0, "--timeout=60s"]);
}
