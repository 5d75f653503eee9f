//! Attacks on authentication, tried against the real binary (issue 10): the bootstrap token
//! never reaches a log; JWTs minted for other audiences are refused and a JWKS without an
//! audience is a startup error; a key removed from the JWKS stops working; an unreachable
//! JWKS leaves the process up but unready; TokenReview only sees the cluster's tokens, each
//! refused one once, and an address that keeps failing is answered 429.
//!
//! The JWKS and the Kubernetes API are loopback stubs served by the test itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};
use warp::Filter;

const AUDIENCE: &str = "scaivault-audit";
const POLL: Duration = Duration::from_millis(100);
const POLL_DEADLINE: Duration = Duration::from_secs(30);
/// The cluster's ServiceAccount token issuer (the server's default).
const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

/// An RS256 ScaiKey token (key `rsa-1`) reading [`TENANT`] for `audience` (none if `None`).
fn scaikey_token(audience: Option<&str>) -> String {
    let now = unix_now();
    let mut claims = json!({"sub": "user:alice@acme.example", "scope": "audit:read",
        "tenant_id": TENANT, "iss": "https://scaikey.example", "iat": now, "exp": now + 600});
    if let Some(audience) = audience {
        claims["aud"] = json!(audience);
    }
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    encode(&header, &claims, &key).unwrap()
}

/// A JWT-shaped token with issuer `iss` and an unsigned payload naming `name` (what a
/// ServiceAccount token looks like to the server before TokenReview).
fn sa_like_token(iss: &str, name: &str) -> String {
    let b64 = |value: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string().as_bytes())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(json!({"alg": "RS256", "kid": "k8s"})),
        b64(json!({"iss": iss, "sub": format!("system:serviceaccount:scaivault:{name}")}))
    )
}

async fn read_logs(server: &Server, token: &str) -> Reply {
    get_as(
        &client(),
        server.base_url(),
        "/v1/audit/logs?limit=1",
        Some(token),
        None,
    )
    .await
}

async fn readiness(base: &str) -> Option<Reply> {
    try_send(client().get(format!("{base}/v1/health/ready")))
        .await
        .ok()
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most [`POLL_DEADLINE`].
async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// loopback stubs
// ---------------------------------------------------------------------------------------------

/// A JWKS served over HTTP from loopback; the document can be swapped (`None` answers 500).
struct JwksStub {
    url: String,
    document: Arc<Mutex<Option<Value>>>,
    fetches: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl JwksStub {
    async fn start(document: Value) -> JwksStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        JwksStub::serve_on(listener, document)
    }

    fn serve_on(listener: tokio::net::TcpListener, document: Value) -> JwksStub {
        let address = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(Some(document)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let route = {
            let (document, fetches) = (Arc::clone(&document), Arc::clone(&fetches));
            warp::path!("jwks.json").and(warp::get()).map(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                match document.lock().clone() {
                    Some(document) => warp::reply::with_status(
                        warp::reply::json(&document),
                        warp::http::StatusCode::OK,
                    ),
                    None => warp::reply::with_status(
                        warp::reply::json(&json!({})),
                        warp::http::StatusCode::INTERNAL_SERVER_ERROR,
                    ),
                }
            })
        };
        JwksStub {
            url: jwks_url(address),
            document,
            fetches,
            _task: tokio::spawn(warp::serve(route).incoming(listener).run()),
        }
    }

    fn set(&self, document: Value) {
        *self.document.lock() = Some(document);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks_url(address: SocketAddr) -> String {
    format!("http://{address}/jwks.json")
}

/// The TokenReview endpoint of a Kubernetes API on loopback: accepts [`GOOD_SA`]'s token for
/// audience [`AUDIENCE`] and counts every review it is asked for.
struct KubeStub {
    kubeconfig: PathBuf,
    reviews: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

const GOOD_SA: &str = "reporting";

impl KubeStub {
    async fn start(dir: &Path) -> KubeStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let reviews = Arc::new(AtomicUsize::new(0));
        let good = sa_like_token(CLUSTER_ISSUER, GOOD_SA);
        let route = {
            let reviews = Arc::clone(&reviews);
            warp::path!("apis" / "authentication.k8s.io" / "v1" / "tokenreviews")
                .and(warp::post())
                .and(warp::body::json())
                .map(move |review: Value| {
                    reviews.fetch_add(1, Ordering::SeqCst);
                    let status = if review["spec"]["token"] == good.as_str() {
                        json!({"authenticated": true, "audiences": [AUDIENCE],
                               "user": {"username": format!("system:serviceaccount:scaivault:{GOOD_SA}")}})
                    } else {
                        json!({"authenticated": false, "error": "invalid bearer token"})
                    };
                    warp::reply::with_status(
                        warp::reply::json(&json!({"apiVersion": "authentication.k8s.io/v1",
                            "kind": "TokenReview", "metadata": {}, "spec": review["spec"],
                            "status": status})),
                        warp::http::StatusCode::CREATED,
                    )
                })
        };
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: stub\nclusters:\n- name: stub\n  cluster:\n    server: http://{address}\nusers:\n- name: stub\n  user: {{}}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\n    namespace: default\n"
            ),
        )
        .unwrap();
        KubeStub {
            kubeconfig,
            reviews,
            _task: tokio::spawn(warp::serve(route).incoming(listener).run()),
        }
    }

    fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// the bootstrap token
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_bootstrap_token_is_in_no_log_and_token_bootstrap_prints_it() {
    let dir = TestDir::new();
    let args = ["--log-level", "debug"];
    let mut server = Server::start(&dir.data_dir(), &args).await;
    // The harness read it with `scaivault-audit token bootstrap --data-dir`; it works.
    let token = server.token().to_owned();
    assert!(token.starts_with("skt_") && token.len() == 68, "{token}");
    ingest_ok(
        &client(),
        server.base_url(),
        &token,
        &[event_for_tenant(1, Some(TENANT))],
    )
    .await;
    let refused = read_logs(&server, "skt_not_the_token").await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "token_invalid");
    let stdout = std::fs::read_to_string(server.stdout_log()).unwrap();
    assert!(
        stdout.contains("token bootstrap --data-dir"),
        "the first start says how to read the token: {stdout}"
    );
    server.terminate().await;
    // A restart keeps the token and still does not print it.
    let mut server = Server::start(&dir.data_dir(), &args).await;
    assert_eq!(server.bootstrap_token(), Some(token.as_str()));
    let (status, _, body) = read_logs(&server, &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "all-tenant token: {body}");
    server.terminate().await;

    let mut logs = 0;
    for entry in std::fs::read_dir(dir.root()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "log") {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains(&token), "{} holds the token", path.display());
            assert!(
                !text.contains(&token[4..]),
                "{} holds its digits",
                path.display()
            );
            logs += 1;
        }
    }
    assert_eq!(logs, 4, "stdout and stderr of two starts");
    // Without a bootstrap token, the command says so and fails.
    let empty = TestDir::new();
    assert_eq!(read_bootstrap_token(&empty.data_dir()), None);
}

// ---------------------------------------------------------------------------------------------
// JWT audience
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_without_audience_is_a_startup_error_unless_any_audience_is_allowed() {
    let dir = TestDir::new();
    let jwks = format!("file://{}", fixture("jwks.json").display());
    let data_dir = dir.data_dir();
    let data = data_dir.to_str().unwrap();
    let output = run_to_exit(&[
        "serve",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--jwks-url",
        &jwks,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without an audience");
    for setting in ["jwt_audience", "--jwt-audience", "jwt_allow_any_audience"] {
        assert!(stderr.contains(setting), "{setting} in: {stderr}");
    }

    // The explicit opt-out accepts tokens of any (or no) audience.
    let server = Server::start(
        &data_dir,
        &["--jwks-url", &jwks, "--jwt-allow-any-audience"],
    )
    .await;
    for audience in [Some("scaikey-console"), None] {
        let (status, _, body) = read_logs(&server, &scaikey_token(audience)).await;
        assert_eq!(status, StatusCode::OK, "{audience:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_for_another_audience_is_refused() {
    let dir = TestDir::new();
    let jwks = format!("file://{}", fixture("jwks.json").display());
    let server = Server::start(
        &dir.data_dir(),
        &["--jwks-url", &jwks, "--jwt-audience", AUDIENCE],
    )
    .await;
    let (status, _, body) = read_logs(&server, &scaikey_token(Some(AUDIENCE))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for audience in [Some("scaikey-console"), Some("scaivault"), None] {
        let reply = read_logs(&server, &scaikey_token(audience)).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS refresh and availability
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_key_removed_from_the_jwks_stops_working_within_the_refresh_interval() {
    let dir = TestDir::new();
    let stub = JwksStub::start(fixture_json("jwks.json")).await;
    let server = Server::start(
        &dir.data_dir(),
        &[
            "--jwks-url",
            &stub.url,
            "--jwt-audience",
            AUDIENCE,
            "--jwks-refresh-seconds",
            "1",
        ],
    )
    .await;
    let token = scaikey_token(Some(AUDIENCE));
    let (status, _, body) = read_logs(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // ScaiKey rotates rsa-1 out: the published set now holds only rsa-2.
    let fetched_before = stub.fetches();
    stub.set(fixture_json("jwks-rsa-2.json"));
    let removed_at = Instant::now();
    poll("the removed key to stop verifying", async || {
        let reply = read_logs(&server, &token).await;
        (reply.0 == StatusCode::UNAUTHORIZED).then_some(reply)
    })
    .await;
    assert!(
        removed_at.elapsed() < Duration::from_secs(10),
        "took {:?}",
        removed_at.elapsed()
    );
    assert!(stub.fetches() > fetched_before, "re-fetched periodically");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_jwks_leaves_the_process_up_and_unready_until_it_loads() {
    let dir = TestDir::new();
    // A loopback port with nothing listening (yet), outside the ephemeral range so that no
    // outgoing connection takes it before the JWKS listener does.
    let port = scaivault_audit::cluster::local_ports::unclaimed_loopback_port().unwrap();
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let url = jwks_url(address);
    let mut server = Server::start_listening(
        &dir.data_dir(),
        &[
            "--jwks-url",
            &url,
            "--jwt-audience",
            AUDIENCE,
            "--jwks-refresh-seconds",
            "1",
        ],
    )
    .await;
    let base = server.base_url().to_owned();
    let (status, _, body) = readiness(&base).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["auth"], "starting", "{body}");
    assert!(
        body["errors"]["auth"].as_str().unwrap().contains("JWKS"),
        "{body}"
    );
    let token = scaikey_token(Some(AUDIENCE));
    let reply = read_logs(&server, &token).await;
    assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    server.assert_running();

    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let stub = JwksStub::serve_on(listener, fixture_json("jwks.json"));
    poll("readiness once the JWKS is served", async || {
        let reply = readiness(&base).await?;
        (reply.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(stub.fetches() >= 1);
    let (status, _, body) = read_logs(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.assert_running();
}

// ---------------------------------------------------------------------------------------------
// TokenReview and failed authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn token_review_sees_only_cluster_tokens_once_and_failing_addresses_get_429() {
    let dir = TestDir::new();
    let kube = KubeStub::start(dir.root()).await;
    let config = dir.root().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.token_review]\nenabled = true\naudience = \"{AUDIENCE}\"\n\n\
             [[auth.token_review.bindings]]\nservice_account = \"scaivault/{GOOD_SA}\"\n\
             scopes = [\"audit:read\"]\ntenant_id = \"{TENANT}\"\n"
        ),
    )
    .unwrap();
    let server = Server::start_with_env(
        &dir.data_dir(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--operator",
            "false",
            "--failed-auth-per-minute",
            "3",
        ],
        &[("KUBECONFIG", kube.kubeconfig.as_os_str())],
    )
    .await;

    // A JWT from another issuer is never forwarded to the Kubernetes API.
    let foreign = sa_like_token("https://scaikey.example", GOOD_SA);
    let reply = read_logs(&server, &foreign).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
    assert_eq!(kube.reviews(), 0, "a foreign issuer's token was reviewed");

    // The cluster's tokens are: a good one is accepted ...
    let good = sa_like_token(CLUSTER_ISSUER, GOOD_SA);
    let (status, _, body) = read_logs(&server, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kube.reviews(), 1);
    // ... and a refused one is reviewed once, then refused from the cache.
    let forged = sa_like_token(CLUSTER_ISSUER, "forged");
    for _ in 0..2 {
        let reply = read_logs(&server, &forged).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "token_invalid");
    }
    assert_eq!(kube.reviews(), 2, "the refusal was not cached");

    // Three failures from this address: everything it sends with credentials is now 429,
    // before any token is checked, until its budget refills.
    for token in [forged.as_str(), good.as_str(), "skt_guess"] {
        let reply = read_logs(&server, token).await;
        assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry_after = header_u64(&reply.1, "retry-after").expect("Retry-After");
        assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    }
    assert_eq!(kube.reviews(), 2, "a rate-limited request was reviewed");
    let (status, _, _) = readiness(server.base_url()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "no credentials, no limit");
}
