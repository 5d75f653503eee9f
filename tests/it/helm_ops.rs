//! The chart's operations features (issue 15): the opt-in PrometheusRule and Grafana dashboard
//! refer only to metrics docs/metrics.md lists (which tests/it/metrics.rs holds to the real
//! `/metrics`), the NetworkPolicy lets Prometheus in when the ServiceMonitor is on, the pod's
//! checksum annotation follows the Secret the chart renders, and the CRD can be a chart
//! resource (`crds.enabled`, `crds.keep`). Needs helm and kubectl like tests/it/helm_chart.rs.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::helm_chart::{
    CHART, Case, NAMESPACE, RELEASE, Rendered, cases, describe, render, root, run, text, tools,
    yaml_to_json,
};

/// The alerts the rule must carry.
const ALERTS: [&str; 8] = [
    "ScaiVaultAuditPodNotReady",
    "ScaiVaultAuditIngestUnavailable",
    "ScaiVaultAuditWalWriteErrors",
    "ScaiVaultAuditIndexCommitErrors",
    "ScaiVaultAuditExportFailed",
    "ScaiVaultAuditDataVolumeFillingUp",
    "ScaiVaultAuditReplayRunningLong",
    "ScaiVaultAuditColdTierExportFailing",
];

/// PromQL words that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "label_values",
    "absent",
    "time",
    "clamp_min",
    "clamp_max",
];

/// Every metric name in docs/metrics.md's tables (ours and those from other exporters).
fn documented_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cell = line.split('|').nth(1)?.trim();
            let name = cell.strip_prefix('`')?.strip_suffix('`')?;
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then(|| name.to_string())
        })
        .collect()
}

/// The metric names an expression selects: identifiers outside label matchers, ranges, quoted
/// strings and `by (…)`-style label lists that are not PromQL functions or keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let mut plain = String::new();
    let (mut depth_brace, mut depth_bracket, mut quoted) = (0, 0, false);
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => plain.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']' | '"') {
            plain.push(' ');
        }
    }
    let plain = without_label_lists(&plain);
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
        .filter(|word| !PROMQL_WORDS.contains(word))
        .map(str::to_string)
        .collect()
}

/// `plain` without the parenthesised label lists after `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right`.
fn without_label_lists(plain: &str) -> String {
    const KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut out = String::new();
    let mut rest = plain;
    while !rest.is_empty() {
        let word_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len())
            .max(1);
        let (word, after) = rest.split_at(word_end);
        out.push_str(word);
        rest = after;
        if KEYWORDS.contains(&word) && rest.trim_start().starts_with('(') {
            let close = rest.find(')').map_or(rest.len(), |at| at + 1);
            out.push(' ');
            rest = &rest[close..];
        }
    }
    out
}

/// Checks that `expr` selects at least one metric and only documented ones (a histogram's
/// `_bucket`, `_sum` and `_count` series count as the histogram).
fn check_expr(documented: &BTreeSet<String>, what: &str, expr: &str) -> Vec<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no metric in {expr}");
    for name in &names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| documented.contains(*base));
        assert!(
            documented.contains(name) || base.is_some(),
            "{what}: {name} is not in docs/metrics.md ({expr})"
        );
    }
    names
}

fn monitoring_case() -> Case {
    cases()
        .into_iter()
        .find(|case| case.name == "service-monitor-values.yaml")
        .expect("ci/service-monitor-values.yaml")
}

fn is_duration(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["s", "m", "h"].contains(&&text[digits.len()..])
}

#[test]
fn the_promql_reader_finds_metrics_and_skips_labels() {
    let expr = r#"histogram_quantile(0.99, sum by (le, endpoint) (rate(a_seconds_bucket{job="x", le=~"y"}[$__rate_interval]))) > on (pod) b_total"#;
    assert_eq!(metric_names(expr), ["a_seconds_bucket", "b_total"]);
    let expr = r#"max by (namespace, pod) (kube_pod_status_ready{condition="true"}) == 0"#;
    assert_eq!(metric_names(expr), ["kube_pod_status_ready"]);
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_prometheus_rule_alerts_on_documented_metrics() {
    let tools = tools();
    let documented = documented_metrics();
    assert!(documented.contains("scaivault_audit_http_requests_total"));
    let rendered = render(&tools, &monitoring_case());
    let rule = rendered.one("PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let spec = rule["spec"].as_object().unwrap();
    assert_eq!(spec.keys().collect::<Vec<_>>(), ["groups"]);
    let mut alerts = Vec::new();
    for group in spec["groups"].as_array().unwrap() {
        assert!(group["name"].is_string());
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            for key in rule.as_object().unwrap().keys() {
                assert!(
                    ["alert", "expr", "for", "labels", "annotations"].contains(&key.as_str()),
                    "{alert}: unexpected field {key}"
                );
            }
            let expr = rule["expr"].as_str().unwrap();
            check_expr(&documented, alert, expr);
            if let Some(wait) = rule.get("for") {
                assert!(is_duration(wait.as_str().unwrap()), "{alert}: for");
            }
            let severity = rule["labels"]["severity"].as_str().unwrap();
            assert!(["critical", "warning"].contains(&severity), "{alert}");
            for key in ["summary", "description"] {
                let text = rule["annotations"][key].as_str().unwrap();
                assert!(!text.is_empty(), "{alert}: {key}");
                // Prometheus templates, not Helm leftovers.
                assert!(!text.contains("{{ ."), "{alert}: {key} {text}");
            }
            if expr.contains("scaivault_audit_") {
                let selector = format!(r#"job="{RELEASE}", namespace="{NAMESPACE}""#);
                assert!(
                    expr.contains(&selector),
                    "{alert}: scoped to the release: {expr}"
                );
            }
            alerts.push(alert.to_string());
        }
    }
    alerts.sort();
    let mut expected = ALERTS.map(String::from).to_vec();
    expected.sort();
    assert_eq!(alerts, expected);
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_grafana_dashboard_shows_documented_metrics() {
    let tools = tools();
    let documented = documented_metrics();
    let rendered = render(&tools, &monitoring_case());
    let dashboards: Vec<&Value> = rendered
        .all("ConfigMap")
        .into_iter()
        .filter(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
    let map = dashboards[0];
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Security");
    let json = map["data"]["scaivault-audit.json"].as_str().unwrap();
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "scaivault-audit");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| variable["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "job"]);
    let mut shown = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: unique id"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            shown.extend(check_expr(&documented, title, expr));
            if expr.contains("scaivault_audit_") {
                assert!(expr.contains(r#"job="$job""#), "{title}: {expr}");
            }
        }
    }
    // Ingest rate and latency, query latency, exports, errors and disk.
    for wanted in [
        "scaivault_audit_events_ingested_total",
        "scaivault_audit_ingest_batch_duration_seconds_bucket",
        "scaivault_audit_query_duration_seconds_bucket",
        "scaivault_audit_export_runs_total",
        "scaivault_audit_http_errors_total",
        "scaivault_audit_wal_write_errors_total",
        "kubelet_volume_stats_available_bytes",
    ] {
        assert!(shown.contains(wanted), "the dashboard shows no {wanted}");
    }
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn monitoring_is_opt_in_and_the_network_policy_lets_prometheus_in() {
    let tools = tools();
    let defaults = render(&tools, &cases().remove(0));
    assert!(defaults.all("PrometheusRule").is_empty());
    assert!(defaults.all("ServiceMonitor").is_empty());
    assert_eq!(
        defaults.all("ConfigMap").len(),
        1,
        "no dashboard by default"
    );
    let from_monitoring = |rendered: &Rendered| {
        let policy = rendered.one("NetworkPolicy");
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
            .any(|peer| {
                peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "monitoring"
            })
    };
    assert!(!from_monitoring(&defaults));
    let monitored = render(&tools, &monitoring_case());
    assert!(from_monitoring(&monitored), "{}", monitored.yaml);
}

/// The pod's `checksum/secret` annotation with `--set` values on top of the defaults.
fn secret_checksum(set: &str) -> String {
    let tools = tools();
    let output = run(Command::new(&tools.helm)
        .current_dir(root())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(["--show-only", "templates/statefulset.yaml", "--set", set]));
    assert!(output.status.success(), "{}", describe(&output));
    let yaml = text(&output.stdout);
    yaml.lines()
        .find_map(|line| line.trim().strip_prefix("checksum/secret: "))
        .unwrap_or_else(|| panic!("no checksum/secret in {yaml}"))
        .to_string()
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_checksum_annotation_follows_the_rendered_secret() {
    // Without the admin token, whose random value (at `helm template`, where no Secret can be
    // looked up) would change the rendered Secret every time.
    let url = "auth.adminToken.enabled=false,scaivault.url=https://scaivault.example";
    let first = secret_checksum(&format!("{url},scaivault.token=first"));
    assert_eq!(
        first,
        secret_checksum(&format!("{url},scaivault.token=first"))
    );
    assert_ne!(
        first,
        secret_checksum(&format!("{url},scaivault.token=second"))
    );
    let tokens = "auth.adminToken.enabled=false,auth.staticTokens.tokensToml=# no tokens yet";
    assert_ne!(first, secret_checksum(tokens));
}

/// `helm template` of the CRD template alone, with `--set` values.
fn templated_crd(set: &str) -> Vec<Value> {
    let tools = tools();
    let output = run(Command::new(&tools.helm)
        .current_dir(root())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(["--show-only", "templates/crds.yaml", "--set", set]));
    if !output.status.success() {
        // helm fails --show-only for a template that renders nothing.
        let error = text(&output.stderr);
        assert!(error.contains("could not find template"), "{error}");
        return Vec::new();
    }
    yaml_to_json(&tools, &text(&output.stdout))
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_crd_can_be_a_kept_chart_resource() {
    let tools = tools();
    let shipped =
        std::fs::read_to_string(root().join(CHART).join("crds/auditexport.yaml")).unwrap();
    let shipped = yaml_to_json(&tools, &shipped).remove(0);
    assert!(templated_crd("crds.enabled=false").is_empty());
    let kept = templated_crd("crds.enabled=true").remove(0);
    assert_eq!(
        kept["spec"], shipped["spec"],
        "the template is the generated CRD"
    );
    assert_eq!(kept["metadata"]["name"], shipped["metadata"]["name"]);
    let annotations = &kept["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/resource-policy"], "keep");
    let labels = &kept["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    let dropped = templated_crd("crds.enabled=true,crds.keep=false").remove(0);
    assert!(dropped["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    // The AuditExportSchedule CRD comes with it, kept the same way.
    let schedules =
        std::fs::read_to_string(root().join(CHART).join("crds/auditexportschedule.yaml")).unwrap();
    let schedules = yaml_to_json(&tools, &schedules).remove(0);
    let both = templated_crd("crds.enabled=true");
    assert_eq!(both.len(), 2);
    assert_eq!(both[1]["spec"], schedules["spec"]);
    assert_eq!(
        both[1]["metadata"]["name"],
        "auditexportschedules.audit.scailabs.ai"
    );
    assert_eq!(
        both[1]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dropped = templated_crd("crds.enabled=true,crds.keep=false");
    assert!(dropped[1]["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
}

/// `helm template` with `--set-json` values, as objects.
fn render_with(set_json: &[&str]) -> Rendered {
    let tools = tools();
    let mut command = Command::new(&tools.helm);
    command
        .current_dir(root())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE]);
    for value in set_json {
        command.args(["--set-json", value]);
    }
    let output = run(&mut command);
    assert!(output.status.success(), "{}", describe(&output));
    let yaml = text(&output.stdout);
    let objects = yaml_to_json(&tools, &yaml);
    Rendered::new("set-json", yaml, objects)
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn helm_test_checks_health_the_openapi_document_and_an_authenticated_query() {
    let check = |rendered: &Rendered, authenticated: bool| {
        let pods = rendered.all("Pod");
        assert_eq!(pods.len(), 1, "one test pod");
        let pod = pods[0];
        assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        let container = &pod["spec"]["containers"][0];
        let script = container["command"][2].as_str().unwrap();
        for path in ["/v1/health", "/v1/audit/openapi.json", "/v1/audit/logs"] {
            assert!(script.contains(path), "{path} in {script}");
        }
        let env = container["env"].as_array().unwrap();
        let base = env.iter().find(|var| var["name"] == "BASE").unwrap();
        assert_eq!(
            base["value"],
            format!("http://{RELEASE}.{NAMESPACE}.svc:8080"),
            "the client Service"
        );
        let token = env.iter().find(|var| var["name"] == "TOKEN");
        assert_eq!(token.is_some(), authenticated);
        if let Some(token) = token {
            let secret = &token["valueFrom"]["secretKeyRef"];
            assert_eq!(secret["name"], format!("{RELEASE}-admin-token"));
            assert_eq!(secret["key"], "token");
        }
    };
    check(&render_with(&[]), true);
    check(
        &render_with(&[r#"auth={"adminToken":{"enabled":false}}"#]),
        false,
    );
}

#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn extra_env_from_init_containers_sidecars_and_ipv6_listen_reach_the_pod() {
    let rendered = render_with(&[
        r#"extraEnvFrom=[{"secretRef":{"name":"audit-env"}}]"#,
        r#"initContainers=[{"name":"wait","image":"busybox"}]"#,
        r#"sidecars=[{"name":"shipper","image":"fluent-bit"}]"#,
        r#"listenAddress="::""#,
    ]);
    let spec = rendered.pod_spec();
    assert_eq!(spec["initContainers"][0]["name"], "wait");
    let containers = spec["containers"].as_array().unwrap();
    let names: Vec<&Value> = containers.iter().map(|c| &c["name"]).collect();
    assert_eq!(names, ["scaivault-audit", "shipper"]);
    let service = &containers[0];
    assert_eq!(service["envFrom"][0]["secretRef"]["name"], "audit-env");
    let bind = service["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == "BIND_ADDRESS")
        .unwrap();
    assert_eq!(bind["value"], "[::]:8080");
    let defaults = render_with(&[]);
    let bind = defaults.pod_spec()["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == "BIND_ADDRESS")
        .unwrap()
        .clone();
    assert_eq!(bind["value"], "0.0.0.0:8080");
    assert!(defaults.pod_spec().get("initContainers").is_none());
}

// ---------------------------------------------------------------------------------------------
// the chart README, generated from the values' comments
// ---------------------------------------------------------------------------------------------

const README_HEAD: &str = "# scaivault-audit Helm chart

<!-- Generated from values.yaml by tests/it/helm_ops.rs (the_chart_readme_is_generated_from_the_values):
     edit the `# --` comments in values.yaml, then run
     UPDATE_CHART_README=1 cargo test --test it the_chart_readme_is_generated -->

Audit-log service of the ScaiVault secrets manager: durable ingest, search, the ScaiVault audit
REST API, and AuditExport resources exported to object storage. The full guide is
[docs/deployment.md](../../docs/deployment.md); metrics are listed in
[docs/metrics.md](../../docs/metrics.md), error codes in
[docs/troubleshooting.md](../../docs/troubleshooting.md).

```sh
helm install scaivault-audit charts/scaivault-audit -n scaivault-audit --create-namespace
helm test scaivault-audit -n scaivault-audit
# CRDs are never upgraded by Helm from crds/: before each upgrade
helm show crds charts/scaivault-audit | kubectl apply --server-side -f -
```

## Values

| Key | Default | Description |
|---|---|---|
";

/// One documented value: its dotted key, default and description.
struct DocumentedValue {
    key: String,
    default: String,
    description: String,
}

/// The values with a `# --` comment, in file order. A key's path comes from the indentation;
/// lines inside lists are not keys.
fn documented_values(values: &str) -> Vec<DocumentedValue> {
    let mut documented = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut comment: Option<String> = None;
    let mut list_indent: Option<usize> = None;
    for line in values.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            comment = None;
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            let text = text.strip_prefix(' ').unwrap_or(text);
            match (&mut comment, text.strip_prefix("-- ")) {
                (_, Some(start)) => comment = Some(start.to_string()),
                (Some(doc), None) => {
                    doc.push(' ');
                    doc.push_str(text.trim());
                }
                (None, None) => {}
            }
            continue;
        }
        if list_indent.is_some_and(|owner| indent > owner) || trimmed.starts_with("- ") {
            continue;
        }
        list_indent = None;
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        path.retain(|(depth, _)| *depth < indent);
        path.push((indent, key.to_string()));
        let value = value.trim();
        if value.is_empty() {
            list_indent = Some(indent);
            // A nested map: its keys are deeper, so only lists stay skipped.
            if values_block_is_map(values, line) {
                list_indent = None;
            }
        }
        if let Some(description) = comment.take() {
            let key: Vec<&str> = path.iter().map(|(_, key)| key.as_str()).collect();
            documented.push(DocumentedValue {
                key: key.join("."),
                default: if value.is_empty() {
                    "see values.yaml".into()
                } else {
                    format!("`{value}`")
                },
                description,
            });
        }
    }
    documented
}

/// Whether the block after `line` (a key with no inline value) is a map rather than a list.
fn values_block_is_map(values: &str, line: &str) -> bool {
    let mut after = values
        .split_once(line)
        .map(|(_, rest)| rest.lines())
        .into_iter()
        .flatten();
    after
        .find(|next| {
            let next = next.trim();
            !next.is_empty() && !next.starts_with('#')
        })
        .is_some_and(|next| !next.trim().starts_with("- "))
}

fn chart_readme() -> String {
    let values = std::fs::read_to_string(root().join(CHART).join("values.yaml")).unwrap();
    let mut readme = README_HEAD.to_string();
    for value in documented_values(&values) {
        let description = value.description.replace('|', "\\|");
        let default = value.default.replace('|', "\\|");
        readme.push_str(&format!(
            "| `{}` | {default} | {description} |\n",
            value.key
        ));
    }
    readme
}

#[test]
fn the_chart_readme_is_generated_from_the_values() {
    let path = root().join(CHART).join("README.md");
    let generated = chart_readme();
    if std::env::var_os("UPDATE_CHART_README").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run UPDATE_CHART_README=1 cargo test --test it the_chart_readme_is_generated",
        path.display()
    );
    for key in [
        "`replicaCount`",
        "`serviceMonitor.prometheusNamespace`",
        "`crds.enabled`",
        "`auth.adminToken.enabled`",
        "`persistence.retentionPolicy`",
    ] {
        assert!(
            generated.contains(&format!("| {key} |")),
            "{key} in the README"
        );
    }
}

/// The in-cluster client example is valid Kubernetes (strict schemas of the chart's oldest and
/// newest versions) and wires the projected token the way the service expects.
#[test]
#[ignore = "needs scripts/k8s-tools.sh"]
fn the_in_cluster_client_sample_is_valid_and_uses_a_projected_token() {
    let tools = tools();
    let path = root().join("config/samples/clients/in-cluster-query.yaml");
    for version in ["1.29.0", "1.35.0"] {
        let output = run(Command::new(&tools.validate)
            .args(["--strict", "--kubernetes-version", version])
            .arg(&path));
        assert!(output.status.success(), "{}", describe(&output));
    }
    let objects = yaml_to_json(&tools, &std::fs::read_to_string(&path).unwrap());
    let kinds: Vec<&Value> = objects.iter().map(|object| &object["kind"]).collect();
    assert_eq!(kinds, ["ServiceAccount", "Job"]);
    let pod = &objects[1]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], objects[0]["metadata"]["name"]);
    let source = &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(source["audience"], "scaivault-audit");
    let mount = &pod["containers"][0]["volumeMounts"][0];
    let token = format!(
        "{}/{}",
        mount["mountPath"].as_str().unwrap(),
        source["path"].as_str().unwrap()
    );
    let script = pod["containers"][0]["command"][2].as_str().unwrap();
    assert!(script.contains(&format!("$(cat {token})")), "{script}");
    assert!(script.contains("/v1/audit/logs"));
}
