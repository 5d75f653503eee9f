//! `GET /v1/audit/openapi.json` (SPEC §3.7): the API's OpenAPI 3.1 document, no auth.
//!
//! The document lives in `docs/openapi.json` and is embedded at build time; the black-box test
//! `tests/it/openapi.rs` validates real responses against it, so it cannot drift from the server.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

/// The OpenAPI document, exactly as in `docs/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub fn routes() -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "audit" / "openapi.json")
        .and(warp::get())
        .map(document)
        .boxed()
}

fn document() -> Response {
    let mut response = Response::new(DOCUMENT.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const PATHS: &[(&str, &str)] = &[
        ("/v1/audit/events", "post"),
        ("/v1/audit/logs", "get"),
        ("/v1/audit/secrets/{path}", "get"),
        ("/v1/audit/identities/{identity_id}", "get"),
        ("/v1/audit/summary", "get"),
        ("/v1/health", "get"),
        ("/v1/health/ready", "get"),
        ("/metrics", "get"),
        ("/v1/audit/openapi.json", "get"),
        ("/v1/audit/export", "post"),
        ("/v1/audit/exports", "get"),
        ("/v1/audit/exports/{export_id}", "get"),
        ("/v1/audit/exports/{export_id}", "delete"),
        ("/v1/audit/export-schedules", "post"),
        ("/v1/audit/export-schedules", "get"),
        ("/v1/audit/export-schedules/{schedule_id}", "get"),
        ("/v1/audit/export-schedules/{schedule_id}", "delete"),
        ("/v1/audit/integrity/checkpoints", "get"),
        ("/v1/audit/integrity/keys", "get"),
        ("/v1/audit/retention", "get"),
    ];

    fn parsed() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is valid JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_path() {
        let document = parsed();
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|version| version.starts_with("3.1.")),
            "openapi version: {}",
            document["openapi"]
        );
        let paths = document["paths"].as_object().expect("paths object");
        for (path, method) in PATHS {
            assert!(
                paths
                    .get(*path)
                    .is_some_and(|item| item[*method].is_object()),
                "{} {path} is not documented",
                method.to_uppercase()
            );
        }
        let distinct: std::collections::BTreeSet<&str> =
            PATHS.iter().map(|(path, _)| *path).collect();
        assert_eq!(paths.len(), distinct.len(), "undocumented extra paths");
        assert_eq!(
            document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_local_reference_resolves() {
        let document = parsed();
        let mut pending = vec![&document];
        let mut references = 0;
        while let Some(value) = pending.pop() {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local reference");
                        assert!(
                            document.pointer(pointer).is_some(),
                            "dangling reference {target}"
                        );
                        references += 1;
                    }
                    pending.extend(map.values());
                }
                Value::Array(items) => pending.extend(items),
                _ => {}
            }
        }
        assert!(references > 0);
    }

    #[tokio::test]
    async fn served_without_auth_as_json() {
        let response = warp::test::request()
            .method("GET")
            .path("/v1/audit/openapi.json")
            .reply(&routes())
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.body().as_ref(), DOCUMENT.as_bytes());
    }
}
