//! The Helm chart's cluster mode (issue 16): `cluster.enabled` with an external NATS URL or the
//! NATS of `charts/scaivault-audit-cluster` (the official NATS chart as its dependency),
//! replicas >= 2 only in cluster mode, topology spread over nodes and zones, a PodDisruptionBudget
//! that keeps a majority, a Service over the ready replicas, and the NATS settings in the TOML
//! file with their Secrets mounted read-only. Every rendering is validated offline against the
//! Kubernetes schemas, like the other chart tests (tests/it/helm_chart.rs), and needs the same
//! tools (`scripts/k8s-tools.sh install`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::helm_chart::{
    CHART, Case, NAMESPACE, RELEASE, Rendered, Tools, cases, describe, render, root, run, text,
    tools, validate_offline, values_as_json, yaml_to_json,
};

/// The chart that adds the official NATS chart as a dependency.
const CLUSTER_CHART: &str = "charts/scaivault-audit-cluster";
/// The official NATS chart's repository (nats-io/k8s, helm/charts/nats).
const NATS_REPOSITORY: &str = "https://nats-io.github.io/k8s/helm/charts/";
const EXTERNAL_URL: &str = "nats://nats-0.nats.nats.svc:4222,nats://nats-1.nats.nats.svc:4222";

/// `helm template` of the scaivault-audit chart with `--set-json` values and a release name.
fn render_set(release: &str, set_json: &[String]) -> Rendered {
    let tools = tools();
    let output = template(&tools, release, set_json);
    assert!(output.status.success(), "{}", describe(&output));
    let yaml = text(&output.stdout);
    let objects = yaml_to_json(&tools, &yaml);
    Rendered::new(&format!("{release} {set_json:?}"), yaml, objects)
}

fn template(tools: &Tools, release: &str, set_json: &[String]) -> std::process::Output {
    let mut command = Command::new(&tools.helm);
    command
        .current_dir(root())
        .args(["template", release, CHART, "--namespace", NAMESPACE]);
    for value in set_json {
        command.args(["--set-json", value]);
    }
    run(&mut command)
}

/// Cluster mode on an external NATS with `replicas` pods.
fn cluster_values(replicas: u64) -> Vec<String> {
    vec![
        format!("replicaCount={replicas}"),
        "cluster.enabled=true".into(),
        format!("cluster.nats.url={}", json!(EXTERNAL_URL)),
        "integrity.keysSecret=\"audit-integrity-keys\"".into(),
        "cluster.cursorKeySecret=\"audit-cursor-key\"".into(),
    ]
}

fn cluster_section(rendered: &Rendered) -> Option<toml::Table> {
    let config: toml::Table = toml::from_str(&rendered.config_toml()).unwrap();
    config
        .get("cluster")
        .map(|section| section.as_table().unwrap().clone())
}

fn pod_labels(rendered: &Rendered) -> &Value {
    &rendered.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
}

fn selects(labels: &Value, selector: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(key, value)| &labels[key] == value)
}

/// What every cluster-mode rendering with `replicas` pods promises: each pod keeps its own
/// claim, the budget keeps a majority, the pods spread over nodes and zones, the client Service
/// balances over the ready pods only, and the replica id is left to the pod name.
fn check_cluster_rendering(rendered: &Rendered, replicas: u64) {
    let statefulset = rendered.one("StatefulSet");
    assert_eq!(statefulset["spec"]["replicas"], replicas);
    let claims = statefulset["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap();
    assert_eq!(claims.len(), 1, "one claim per pod, from the template");
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert!(rendered.has_mount("data"));

    let budget = rendered.one("PodDisruptionBudget");
    assert_eq!(
        budget["spec"]["minAvailable"],
        replicas / 2 + 1,
        "a majority of {replicas}: {budget}"
    );
    assert!(budget["spec"]["maxUnavailable"].is_null(), "{budget}");
    assert!(selects(pod_labels(rendered), &budget["spec"]["selector"]));

    let spread = rendered.pod_spec()["topologySpreadConstraints"]
        .as_array()
        .unwrap_or_else(|| panic!("no spread constraints: {}", rendered.pod_spec()));
    let by_key = |key: &str| {
        spread
            .iter()
            .find(|constraint| constraint["topologyKey"] == key)
            .unwrap_or_else(|| panic!("no constraint on {key}: {spread:?}"))
    };
    let nodes = by_key("kubernetes.io/hostname");
    assert_eq!(nodes["whenUnsatisfiable"], "DoNotSchedule");
    let zones = by_key("topology.kubernetes.io/zone");
    assert_eq!(zones["whenUnsatisfiable"], "ScheduleAnyway");
    for constraint in [nodes, zones] {
        assert_eq!(constraint["maxSkew"], 1);
        assert!(selects(pod_labels(rendered), &constraint["labelSelector"]));
    }

    // Ingest and reads go through the client Service to any ready pod: it selects every pod of
    // the StatefulSet (not one ordinal), publishes no unready address and pins no client.
    let client = rendered
        .all("Service")
        .into_iter()
        .find(|service| service["spec"]["clusterIP"] != "None")
        .unwrap();
    let selector = client["spec"]["selector"].as_object().unwrap();
    assert!(!selector.contains_key("statefulset.kubernetes.io/pod-name"));
    assert!(selects(
        pod_labels(rendered),
        &json!({"matchLabels": selector})
    ));
    assert_ne!(client["spec"]["publishNotReadyAddresses"], true);
    assert_ne!(client["spec"]["sessionAffinity"], "ClientIP");
    let readiness = &rendered.container()["readinessProbe"]["httpGet"];
    assert_eq!(
        readiness["path"], "/v1/health/ready",
        "readiness reflects the replica's lag"
    );

    // The replica id (the durable consumer's name) is the service's default, the pod name
    // (HOSTNAME), which stays with the ordinal and so with the claim.
    let env = rendered.container()["env"].as_array().unwrap();
    assert!(
        !env.iter().any(|var| var["name"] == "HOSTNAME"),
        "the kubelet sets HOSTNAME to the pod name"
    );
    let cluster = cluster_section(rendered).expect("a [cluster] section");
    assert!(cluster.get("replica_id").is_none(), "{cluster:?}");
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn cluster_mode_renders_and_validates_for_several_replica_counts() {
    let tools = tools();
    for replicas in [2, 3, 4, 5, 7] {
        let rendered = render_set(RELEASE, &cluster_values(replicas));
        validate_offline(&tools, &rendered);
        check_cluster_rendering(&rendered, replicas);
        let cluster = cluster_section(&rendered).unwrap();
        assert_eq!(
            cluster.get("nats_url").and_then(|url| url.as_str()),
            Some(EXTERNAL_URL)
        );
        // No credentials or TLS files without their Secrets; the stream settings and the lag
        // limit are the service's defaults.
        for key in [
            "credentials_file",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
        ] {
            assert!(cluster.get(key).is_none(), "{key}: {cluster:?}");
        }
        assert_eq!(cluster["stream"].as_str(), Some("SCAIVAULT_AUDIT"));
        assert_eq!(cluster["subject"].as_str(), Some("scaivault.audit.events"));
        for (key, value) in [
            ("replicas", 3),
            ("max_age_seconds", 7 * 24 * 3600),
            ("max_bytes", 16 << 30),
            ("publish_timeout_ms", 2000),
            ("duplicate_window_seconds", 120),
            ("max_lag_messages", 10_000),
        ] {
            assert_eq!(cluster[key].as_integer(), Some(value), "{key}");
        }
        // The lease settings' defaults are the service's.
        use scaivault_audit::config::cluster as service;
        assert_eq!(
            cluster["lease_ttl_seconds"].as_integer(),
            Some(service::DEFAULT_LEASE_TTL_SECONDS as i64)
        );
        for (key, default) in [
            ("leases_bucket", service::DEFAULT_LEASES_BUCKET),
            ("exports_bucket", service::DEFAULT_EXPORTS_BUCKET),
            ("sweeps_bucket", service::DEFAULT_SWEEPS_BUCKET),
            (
                "manifest_links_bucket",
                service::DEFAULT_MANIFEST_LINKS_BUCKET,
            ),
            ("schedules_bucket", service::DEFAULT_SCHEDULES_BUCKET),
        ] {
            assert_eq!(cluster[key].as_str(), Some(default), "{key}");
        }
    }
    // replicaCount 1 (and 0) in cluster mode are fine too: a replica set being built up.
    for replicas in [0, 1] {
        let rendered = render_set(RELEASE, &cluster_values(replicas));
        validate_offline(&tools, &rendered);
        assert_eq!(
            rendered.one("PodDisruptionBudget")["spec"]["minAvailable"],
            replicas / 2 + 1
        );
    }
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn more_than_one_replica_is_refused_without_cluster_mode() {
    let tools = tools();
    for replicas in [2, 3, 10] {
        let output = template(&tools, RELEASE, &[format!("replicaCount={replicas}")]);
        assert!(!output.status.success(), "{}", describe(&output));
        let stderr = text(&output.stderr);
        let message = format!(
            "replicaCount {replicas} needs cluster.enabled: without cluster mode each pod keeps \
             its own WAL and index and pods do not replicate, so a second pod would split the \
             audit log"
        );
        assert!(stderr.contains(&message), "{stderr}");
    }
    // One pod without cluster mode: no [cluster] section, no spread constraints, the single-pod
    // budget, as before.
    let rendered = render_set(RELEASE, &["replicaCount=1".to_string()]);
    assert!(cluster_section(&rendered).is_none());
    assert!(rendered.pod_spec()["topologySpreadConstraints"].is_null());
    assert_eq!(
        rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
}

/// The ci/ cluster files: NATS credentials and TLS files are mounted read-only from their
/// Secrets at the paths the [cluster] section names, the spread modes and the lag limit come
/// from the values, and a restricted egress lets the pods reach the NATS client ports.
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_cluster_values_files_carry_the_nats_settings_into_the_pod() {
    let tools = tools();
    let case = |file: &str| {
        cases()
            .into_iter()
            .find(|case| case.name == file)
            .unwrap_or_else(|| panic!("ci/{file}"))
    };

    let rendered = render(&tools, &case("cluster-external-values.yaml"));
    check_cluster_rendering(&rendered, 3);
    let cluster = cluster_section(&rendered).unwrap();
    let string = |key: &str| cluster[key].as_str().unwrap().to_string();
    assert_eq!(
        string("nats_url"),
        "tls://nats-0.nats.nats.svc:4222,tls://nats-1.nats.nats.svc:4222,\
         tls://nats-2.nats.nats.svc:4222"
    );
    for (key, value) in [
        ("max_lag_messages", 50_000),
        ("max_age_seconds", 14 * 24 * 3600),
        ("max_bytes", 100 << 30),
        ("publish_timeout_ms", 1500),
    ] {
        assert_eq!(cluster[key].as_integer(), Some(value), "{key}");
    }
    for (key, volume, secret, item_key) in [
        (
            "credentials_file",
            "nats-credentials",
            "scaivault-audit-nats-creds",
            "audit.creds",
        ),
        ("tls_ca_file", "nats-ca", "nats-ca", "ca.crt"),
        (
            "tls_cert_file",
            "nats-client-tls",
            "scaivault-audit-nats-client-tls",
            "tls.crt",
        ),
        (
            "tls_key_file",
            "nats-client-tls",
            "scaivault-audit-nats-client-tls",
            "tls.key",
        ),
        (
            "cursor_key_file",
            "cursor-key",
            "audit-cursor-key",
            "cursor.key",
        ),
    ] {
        let path = PathBuf::from(string(key));
        let mount = rendered.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|mount| mount["name"] == volume)
            .unwrap_or_else(|| panic!("{volume} is mounted"));
        assert_eq!(mount["readOnly"], true, "{volume}");
        assert_eq!(
            path.parent().unwrap().to_str(),
            mount["mountPath"].as_str(),
            "{key} lies in the {volume} mount"
        );
        let source = rendered.pod_spec()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|candidate| candidate["name"] == volume)
            .unwrap()["secret"]
            .clone();
        assert_eq!(source["secretName"], secret, "{volume}");
        let file = path.file_name().unwrap().to_str().unwrap();
        let items = source["items"].as_array().unwrap();
        assert!(
            items
                .iter()
                .any(|item| item["key"] == item_key && item["path"] == file),
            "{key}: {items:?}"
        );
    }
    let policy = rendered.one("NetworkPolicy");
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert!(
        egress.contains(&json!({"ports": [{"port": 4222, "protocol": "TCP"}]})),
        "the NATS client port: {egress:?}"
    );

    let rendered = render(&tools, &case("cluster-five-replicas-values.yaml"));
    assert_eq!(rendered.one("StatefulSet")["spec"]["replicas"], 5);
    assert_eq!(
        rendered.one("PodDisruptionBudget")["spec"]["minAvailable"],
        3
    );
    let spread = rendered.pod_spec()["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    let modes: Vec<(&str, &str)> = spread
        .iter()
        .map(|constraint| {
            (
                constraint["topologyKey"].as_str().unwrap(),
                constraint["whenUnsatisfiable"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("kubernetes.io/hostname", "ScheduleAnyway"),
            ("topology.kubernetes.io/zone", "DoNotSchedule")
        ]
    );
    // Without a restricted egress the policy has no egress section at all.
    assert!(rendered.one("NetworkPolicy")["spec"]["egress"].is_null());

    let rendered = render(&tools, &case("cluster-bundled-values.yaml"));
    check_cluster_rendering(&rendered, 2);
    assert_eq!(
        cluster_section(&rendered).unwrap()["nats_url"].as_str(),
        Some("nats://scaivault-audit-nats.audit-system.svc:4222")
    );
}

/// The coordination settings (`cluster.leaseTtlSeconds`, `cluster.buckets.*`) reach the
/// `[cluster]` section, which the service itself accepts; out-of-range TTLs, bad bucket names
/// and two buckets of one name are refused before anything is installed.
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_lease_settings_reach_the_cluster_section_and_bad_ones_are_refused() {
    let tools = tools();
    let mut values = cluster_values(3);
    values.push("cluster.leaseTtlSeconds=40".into());
    values.push(
        r#"cluster.buckets={"leases": "AUDIT_B_LEASES", "exports": "AUDIT_B_EXPORTS", "sweeps": "AUDIT_B_SWEEPS", "manifestLinks": "AUDIT_B_LINKS", "schedules": "AUDIT_B_SCHEDULES"}"#
            .into(),
    );
    let rendered = render_set(RELEASE, &values);
    validate_offline(&tools, &rendered);
    let mut cluster = cluster_section(&rendered).unwrap();
    // The pod name in a pod (HOSTNAME), where the chart leaves the replica id to the service.
    cluster.insert("replica_id".into(), "scaivault-audit-0".into());
    let section: scaivault_audit::config::cluster::ClusterSection = toml::Value::Table(cluster)
        .try_into()
        .expect("the service reads [cluster]");
    let settings = section.resolve().expect("valid").expect("cluster mode");
    assert_eq!(settings.lease_ttl, std::time::Duration::from_secs(40));
    assert_eq!(settings.leases_bucket, "AUDIT_B_LEASES");
    assert_eq!(settings.exports_bucket, "AUDIT_B_EXPORTS");
    assert_eq!(settings.sweeps_bucket, "AUDIT_B_SWEEPS");
    assert_eq!(settings.manifest_links_bucket, "AUDIT_B_LINKS");
    assert_eq!(settings.schedules_bucket, "AUDIT_B_SCHEDULES");

    for (value, expected) in [
        ("cluster.leaseTtlSeconds=0", "leaseTtlSeconds"),
        ("cluster.leaseTtlSeconds=601", "leaseTtlSeconds"),
        (r#"cluster.buckets.leases="a.b""#, "leases"),
        (r#"cluster.buckets.sweeps="""#, "sweeps"),
        (
            r#"cluster.buckets.exports="SCAIVAULT_AUDIT_LEASES""#,
            "cluster.buckets.leases, exports, sweeps, manifestLinks and schedules must be different",
        ),
        (
            r#"cluster.buckets.schedules="SCAIVAULT_AUDIT_MANIFEST_LINKS""#,
            "must be different JetStream key-value buckets",
        ),
    ] {
        let mut values = cluster_values(3);
        values.push(value.to_string());
        let output = template(&tools, RELEASE, &values);
        assert!(!output.status.success(), "{value}: {}", describe(&output));
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{value}: {stderr}");
    }
}

/// Own constraints (topologySpreadConstraints) replace the chart's; "" switches one off; an
/// explicit minAvailable wins over the majority.
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn spread_and_budget_can_be_overridden() {
    let tools = tools();
    let own = json!([{"maxSkew": 2, "topologyKey": "example.com/rack",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "scaivault-audit"}}}]);
    let mut values = cluster_values(3);
    values.push(format!("topologySpreadConstraints={own}"));
    values.push("podDisruptionBudget.minAvailable=3".into());
    let rendered = render_set(RELEASE, &values);
    validate_offline(&tools, &rendered);
    assert_eq!(rendered.pod_spec()["topologySpreadConstraints"], own);
    assert_eq!(
        rendered.one("PodDisruptionBudget")["spec"]["minAvailable"],
        3
    );

    let mut values = cluster_values(3);
    values.push("cluster.topologySpread.zones=\"\"".into());
    let rendered = render_set(RELEASE, &values);
    let spread = rendered.pod_spec()["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    assert_eq!(spread.len(), 1, "{spread:?}");
    assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");

    let mut values = cluster_values(3);
    values.push("cluster.topologySpread={\"nodes\": \"\", \"zones\": \"\"}".into());
    let rendered = render_set(RELEASE, &values);
    assert!(rendered.pod_spec()["topologySpreadConstraints"].is_null());
}

/// The bundled NATS's client Service is named like the official chart names it: "<release>-nats",
/// or the release name when that already contains "nats".
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_bundled_nats_url_follows_the_nats_chart_naming() {
    for (release, url) in [
        ("audit", "nats://audit-nats.audit-system.svc:4222"),
        ("audit-nats", "nats://audit-nats.audit-system.svc:4222"),
        (
            "nats-for-audit",
            "nats://nats-for-audit.audit-system.svc:4222",
        ),
    ] {
        let values = vec![
            "replicaCount=3".to_string(),
            "cluster.enabled=true".into(),
            "cluster.nats.bundled=true".into(),
            "integrity.keysSecret=\"audit-integrity-keys\"".into(),
            "cluster.cursorKeySecret=\"audit-cursor-key\"".into(),
        ];
        let rendered = render_set(release, &values);
        assert_eq!(
            cluster_section(&rendered).unwrap()["nats_url"].as_str(),
            Some(url),
            "release {release}"
        );
    }
    let values = vec![
        "cluster.enabled=true".to_string(),
        "cluster.nats.bundled=true".into(),
        "cluster.nats.bundledPort=14222".into(),
        "integrity.keysSecret=\"audit-integrity-keys\"".into(),
        "cluster.cursorKeySecret=\"audit-cursor-key\"".into(),
    ];
    let rendered = render_set("audit", &values);
    assert_eq!(
        cluster_section(&rendered).unwrap()["nats_url"].as_str(),
        Some("nats://audit-nats.audit-system.svc:14222")
    );
}

/// A top-level `key: value` of a Chart.yaml, or the list under `dependencies:` as
/// (name, version, repository, condition) tuples; the file is small and flat enough to read by
/// lines.
fn chart_yaml(path: &str) -> (String, Vec<[String; 4]>) {
    let chart = std::fs::read_to_string(root().join(path).join("Chart.yaml")).unwrap();
    let version = chart
        .lines()
        .find_map(|line| line.strip_prefix("version:"))
        .unwrap()
        .trim()
        .to_string();
    let mut dependencies: Vec<[String; 4]> = Vec::new();
    let mut inside = false;
    for line in chart.lines() {
        if line.starts_with("dependencies:") {
            inside = true;
            continue;
        }
        if !inside || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            break;
        }
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        if line.trim_start().starts_with("- ") {
            dependencies.push(Default::default());
        }
        let value = value.trim().trim_matches('"').to_string();
        let entry = dependencies.last_mut().unwrap();
        match key {
            "name" => entry[0] = value,
            "version" => entry[1] = value,
            "repository" => entry[2] = value,
            "condition" => entry[3] = value,
            other => panic!("unexpected dependency field {other}"),
        }
    }
    (version, dependencies)
}

/// charts/scaivault-audit-cluster: the official NATS chart from its own repository (a 1.x
/// version, switched by nats.enabled) and this repository's chart, with values that run NATS as
/// the issue needs it (JetStream on file storage, 3 servers, `sync_interval: always`, one per
/// node) and scaivault-audit in cluster mode on it. The official chart cannot be fetched here
/// (no network but package registries, and no registry ships it), so the NATS side is checked
/// by its values; the scaivault-audit side is rendered with exactly the values the umbrella
/// passes it and validated.
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_cluster_chart_declares_the_official_nats_chart_with_durable_settings() {
    let tools = tools();
    let (main_version, main_dependencies) = chart_yaml(CHART);
    assert!(
        main_dependencies.is_empty(),
        "the scaivault-audit chart renders without `helm dependency build`"
    );
    let (version, dependencies) = chart_yaml(CLUSTER_CHART);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        dependencies,
        [
            [
                "scaivault-audit".to_string(),
                main_version,
                "file://../scaivault-audit".into(),
                String::new()
            ],
            [
                "nats".to_string(),
                "^1.3.13".into(),
                NATS_REPOSITORY.into(),
                "nats.enabled".into()
            ],
        ]
    );

    let values = values_as_json(&tools, &root().join(CLUSTER_CHART).join("values.yaml"));
    let nats = &values["nats"];
    assert_eq!(nats["enabled"], true);
    assert_eq!(nats["config"]["cluster"]["enabled"], true);
    assert_eq!(nats["config"]["cluster"]["replicas"], 3);
    let jetstream = &nats["config"]["jetstream"];
    assert_eq!(jetstream["enabled"], true);
    assert_eq!(jetstream["fileStore"]["enabled"], true);
    assert_eq!(jetstream["merge"]["sync_interval"], "always");
    assert_eq!(
        nats["podTemplate"]["topologySpreadConstraints"]["kubernetes.io/hostname"]["whenUnsatisfiable"],
        "DoNotSchedule"
    );

    // The scaivault-audit part, as the umbrella passes it (subchart values are the section under
    // the chart's name).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scaivault-audit-values.json");
    std::fs::write(&file, values["scaivault-audit"].to_string()).unwrap();
    let case = Case {
        name: "charts/scaivault-audit-cluster values".into(),
        values: Some(file),
    };
    let rendered = render(&tools, &case);
    validate_offline(&tools, &rendered);
    check_cluster_rendering(&rendered, 3);
    assert_eq!(
        cluster_section(&rendered).unwrap()["nats_url"].as_str(),
        Some("nats://scaivault-audit-nats.audit-system.svc:4222")
    );
}
