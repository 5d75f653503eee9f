//! `GET /metrics` against docs/metrics.md: after some traffic, every metric family the server
//! exposes is documented with its type, and every documented `scaivault_audit_*` metric is
//! exposed; the labelled series the traffic produced carry route templates, never raw paths.

use std::collections::BTreeMap;

use crate::harness::*;
use reqwest::StatusCode;

/// The documented metrics: name (as queried: counters end in `_total`) → type.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    text.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("scaivault_audit_")
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

/// The exposed metric families: name (counters with `_total`) → type, from `# TYPE` lines.
fn exposed(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (words.next()?, words.next()?);
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            Some((name, kind.to_string()))
        })
        .collect()
}

async fn scrape(base: &str) -> String {
    let (status, _, body) = send(client().get(format!("{base}/metrics"))).await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().expect("metrics are text").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_metrics_md_and_the_scrape_agree_both_ways() {
    let dir = TestDir::new();
    let server = Server::start(&dir.data_dir(), AUDIT_OF_AUDIT_OFF).await;
    let (base, token) = (server.base_url(), server.token());
    let client = client();
    let events: Vec<_> = (0..3).map(event).collect();
    ingest_ok(&client, base, token, &events).await;
    let logs = get_as(&client, base, "/v1/audit/logs", Some(token), Some(TENANT)).await;
    assert_eq!(logs.0, StatusCode::OK, "{}", logs.2);
    let refused = get_as(&client, base, "/v1/audit/logs", None, None).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    let secret = "/v1/audit/secrets/db/prod/a-raw-path";
    let trail = get_as(&client, base, secret, Some(token), Some(TENANT)).await;
    assert_eq!(trail.0, StatusCode::OK, "{}", trail.2);
    let unknown = get_as(&client, base, "/no/such/route", None, None).await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);

    let exposition = scrape(base).await;
    let (documented, exposed) = (documented(), exposed(&exposition));
    assert!(exposed.len() > 20, "{exposition}");
    let undocumented: Vec<_> = exposed
        .iter()
        .filter(|(name, kind)| documented.get(*name) != Some(kind))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in docs/metrics.md (or with another type): {undocumented:?}"
    );
    let missing: Vec<_> = documented
        .keys()
        .filter(|name| !exposed.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "in docs/metrics.md but not exposed: {missing:?}"
    );

    for series in [
        r#"scaivault_audit_http_requests_total{method="POST",route="/v1/audit/events",status_class="2xx"} 1"#,
        r#"scaivault_audit_http_requests_total{method="GET",route="/v1/audit/secrets/{path}",status_class="2xx"} 1"#,
        r#"scaivault_audit_http_requests_total{method="GET",route="other",status_class="4xx"} 1"#,
        r#"scaivault_audit_auth_refusals_total{reason="authentication_required"} 1"#,
        r#"scaivault_audit_http_errors_total{route="/v1/audit/logs",code="authentication_required"} 1"#,
        r#"scaivault_audit_query_duration_seconds_count{endpoint="logs"} 1"#,
        r#"scaivault_audit_query_duration_seconds_count{endpoint="secret_trail"} 1"#,
        r#"scaivault_audit_wal_replay_in_progress 0"#,
    ] {
        assert!(
            exposition.lines().any(|line| line == series),
            "{series} not in:\n{exposition}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    let build_info = format!(r#"scaivault_audit_build_info{{version="{version}"}} 1"#);
    assert!(exposition.lines().any(|line| line == build_info));
    let ingested = exposition
        .lines()
        .find_map(|line| line.strip_prefix("scaivault_audit_ingest_bytes_total "))
        .and_then(|value| value.parse::<f64>().ok())
        .expect("ingest_bytes_total");
    assert!(ingested > 100.0, "ingest_bytes_total = {ingested}");
    assert!(!exposition.contains("a-raw-path") && !exposition.contains("/no/such"));
}
