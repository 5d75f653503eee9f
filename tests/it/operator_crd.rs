//! The AuditExport CRD: generated from the Rust types, committed in `crds/`, and the samples in
//! `config/samples/` valid against it (and against the controller's own validation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use scaivault_audit::operator::{AuditExport, convert, crd_yaml};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema() -> Value {
    let crd = serde_json::to_value(AuditExport::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crd_has_the_agreed_shape() {
    let crd = AuditExport::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("auditexports.audit.scailabs.ai")
    );
    assert_eq!(crd.spec.group, "audit.scailabs.ai");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["aex".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|column| (column.name.as_str(), column.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Phase", ".status.phase"),
            ("Tenant", ".spec.tenantId"),
            ("Destination", ".spec.destination.type"),
            ("Records", ".status.recordCount"),
            ("Age", ".metadata.creationTimestamp"),
            ("Export ID", ".status.exportId"),
            (
                "Message",
                ".status.conditions[?(@.type==\"Ready\")].message"
            )
        ]
    );
    let schema = schema();
    let spec = &schema["properties"]["spec"];
    for field in [
        "from",
        "to",
        "format",
        "compression",
        "filters",
        "destination",
        "tenantId",
        "maxRecordsPerFile",
    ] {
        assert!(spec["properties"][field].is_object(), "spec.{field}");
        assert!(
            spec["properties"][field]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "spec.{field} needs a description (kubectl explain)"
        );
    }
    let status = &schema["properties"]["status"]["properties"];
    for field in [
        "phase",
        "exportId",
        "estimatedRecords",
        "recordCount",
        "files",
        "startedAt",
        "completedAt",
        "error",
        "conditions",
        "observedGeneration",
        "checkpoint",
    ] {
        assert!(status[field].is_object(), "status.{field}");
    }
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
}

#[test]
fn crd_carries_the_cel_rules() {
    let schema = schema();
    let rules = |value: &Value| -> Vec<String> {
        value["x-kubernetes-validations"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| r["rule"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = rules(&schema);
    assert!(
        root.iter().any(|r| r.contains("self.spec == oldSelf.spec")),
        "{root:?}"
    );
    let spec = rules(&schema["properties"]["spec"]);
    assert!(
        spec.iter()
            .any(|r| r.contains("timestamp(self.from) < timestamp(self.to)")),
        "{spec:?}"
    );
    let destination = rules(&schema["properties"]["spec"]["properties"]["destination"]);
    assert!(
        destination
            .iter()
            .any(|r| r.contains("has(self.credentialsPath)")),
        "{destination:?}"
    );
    assert_eq!(destination.len(), 4, "{destination:?}");
}

#[test]
fn committed_crd_is_current() {
    let path = repo("crds/auditexport.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == crd_yaml().unwrap(),
        "{} is stale: run `cargo run -- crdgen` and commit the result",
        path.display()
    );
}

#[test]
fn samples_validate_against_the_crd_schema_and_the_controller() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(repo("config/samples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let document: Value = serde_saphyr::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let resource: AuditExport = serde_json::from_value(document).unwrap();
        let spec = convert::export_spec(&resource.spec)
            .unwrap_or_else(|errors| panic!("{}: {errors:?}", path.display()));
        seen.push(spec.destination.kind.as_str());
    }
    seen.sort_unstable();
    assert_eq!(seen, ["azure_blob", "gcs", "s3"]);
}

#[test]
fn schema_rejects_what_it_can() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let sample: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("config/samples/auditexport-s3.yaml")).unwrap(),
    )
    .unwrap();
    let cases: [(&str, Value); 4] = [
        ("/spec/format", serde_json::json!("xml")),
        ("/spec/destination/type", serde_json::json!("ftp")),
        ("/spec/tenantId", serde_json::json!("tnt acme")),
        ("/spec/maxRecordsPerFile", serde_json::json!(0)),
    ];
    for (pointer, value) in cases {
        let mut document = sample.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        document.pointer_mut(parent).unwrap()[key] = value;
        assert!(
            !validator.is_valid(&document),
            "{pointer} should be rejected"
        );
    }
}

#[test]
fn resource_spec_round_trips_through_the_rest_model() {
    let text = std::fs::read_to_string(repo("config/samples/auditexport-s3.yaml")).unwrap();
    let resource: AuditExport = serde_saphyr::from_str(&text).unwrap();
    let spec = convert::export_spec(&resource.spec).unwrap();
    let back = convert::resource_spec(&spec);
    assert_eq!(convert::export_spec(&back).unwrap(), spec);
    assert_eq!(
        spec.filters.get("path_prefix").map(String::as_str),
        Some("environments/production/")
    );
}

#[test]
fn committed_schedule_crd_is_current() {
    let path = repo("crds/auditexportschedule.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == scaivault_audit::operator::schedule_crd_yaml().unwrap(),
        "{} is stale: run `cargo run -- crdgen` and commit the result",
        path.display()
    );
}

#[test]
fn schedule_crd_keeps_its_history_bounded_and_its_spec_fixed_once_started() {
    use scaivault_audit::operator::schedule_crd::AuditExportSchedule;
    let crd = serde_json::to_value(AuditExportSchedule::crd()).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        "auditexportschedules.audit.scailabs.ai"
    );
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(
        status["lastRuns"]["maxItems"].as_f64(),
        Some(20.0),
        "{status}"
    );
    for member in ["completeThrough", "nextRunAt", "currentRun", "conditions"] {
        assert!(status.get(member).is_some(), "{member}: {status}");
    }
    let rules = schema["x-kubernetes-validations"].to_string();
    assert!(rules.contains("self.spec == oldSelf.spec"), "{rules}");
    let spec = &schema["properties"]["spec"];
    assert_eq!(
        spec["properties"]["delaySeconds"]["maximum"].as_f64(),
        Some(86_400.0)
    );
}
