//! Files re-read under a running server (issue 15): the TLS certificate and key (swapped the way
//! Kubernetes swaps a mounted Secret: a new directory, one rename of `..data`), the tokens file
//! and the JWKS file. A new version is used without a restart, an open keep-alive connection
//! keeps working, and a broken new version keeps the previous one and logs an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::jwt_auth::{claims, fixture, sign};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use serde_json::Value;

/// Long enough for a few polls of the server (every 2 s), short enough to fail clearly.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + RELOAD_DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server's stderr log has a line containing every one of `needles`.
async fn wait_for_log(path: &Path, needles: &[&str]) -> String {
    eventually(&format!("a log line with {needles:?}"), async || {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        log.lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_owned)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A CA and server certificates for 127.0.0.1 it signs.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { params, key, pem }
    }

    /// (certificate PEM, key PEM, certificate DER) of a new server certificate.
    fn issue(&self) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A directory laid out like a mounted Secret: `tls.crt` → `..data/tls.crt` → a versioned
/// directory; [`SecretMount::publish`] swaps versions the way the kubelet does.
struct SecretMount {
    root: PathBuf,
    version: u32,
}

impl SecretMount {
    fn new(root: PathBuf, cert: &str, key: &str) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        let mut mount = SecretMount { root, version: 0 };
        mount.publish(cert, key);
        symlink("..data/tls.crt", mount.root.join("tls.crt")).unwrap();
        symlink("..data/tls.key", mount.root.join("tls.key")).unwrap();
        mount
    }

    fn publish(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let name = format!("..2026_12_03_{:02}", self.version);
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        let temporary = self.root.join("..data_tmp");
        symlink(&name, &temporary).unwrap();
        std::fs::rename(&temporary, self.root.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.root.join("tls.key")
    }
}

/// `serve` over TLS; stderr goes to `stderr_log`. Returns the child and the https base URL.
fn start_tls(dir: &Path, mount: &SecretMount, stderr_log: &Path) -> (Child, String) {
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert-file")
        .arg(mount.cert())
        .arg("--tls-key-file")
        .arg(mount.key())
        .env_remove("TLS_CERT_FILE")
        .env_remove("TLS_KEY_FILE")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(stderr_log).unwrap()))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a listening line").unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let address = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    (child, address)
}

fn tls_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The certificate the server presented on the connection that carried `GET /v1/health`.
async fn presented(client: &reqwest::Client, base: &str) -> Option<Vec<u8>> {
    let response = client.get(format!("{base}/v1/health")).send().await.ok()?;
    assert_eq!(response.status(), StatusCode::OK);
    let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_a_restart_and_open_connections_continue() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let (cert_1, key_1, der_1) = ca.issue();
    let mut mount = SecretMount::new(dir.path().join("tls"), &cert_1, &key_1);
    let stderr_log = dir.path().join("server.stderr.log");
    let (mut child, base) = start_tls(dir.path(), &mount, &stderr_log);

    // A keep-alive connection opened before the renewal.
    let kept = tls_client(&ca.pem);
    let first = eventually("the first HTTPS answer", async || {
        presented(&kept, &base).await
    })
    .await;
    assert_eq!(first, der_1);
    // `healthcheck` pins the configured certificate.
    let listen = base.trim_start_matches("https://").to_owned();
    let healthcheck = |cert: &Path, key: &Path| {
        Command::new(BINARY)
            .args(["healthcheck", "--listen", &listen, "--timeout", "5"])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .env_remove("TLS_CERT_FILE")
            .env_remove("TLS_KEY_FILE")
            .output()
            .unwrap()
    };
    let probe = healthcheck(&mount.cert(), &mount.key());
    assert!(probe.status.success(), "{probe:?}");

    // cert-manager renews: the Secret's files change through the `..data` swap.
    let (cert_2, key_2, der_2) = ca.issue();
    mount.publish(&cert_2, &key_2);
    let renewed = eventually("the renewed certificate on a new connection", async || {
        let fresh = tls_client(&ca.pem);
        presented(&fresh, &base).await.filter(|der| *der == der_2)
    })
    .await;
    assert_eq!(renewed, der_2);
    wait_for_log(&stderr_log, &["reloaded", "TLS certificate"]).await;
    // The connection opened before still works, on its original session.
    for _ in 0..3 {
        assert_eq!(presented(&kept, &base).await, Some(der_1.clone()));
    }
    let probe = healthcheck(&mount.cert(), &mount.key());
    assert!(probe.status.success(), "{probe:?}");
    // A probe expecting another certificate fails.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (cert_3, key_3, _) = ca.issue();
    std::fs::write(other.join("tls.crt"), &cert_3).unwrap();
    std::fs::write(other.join("tls.key"), &key_3).unwrap();
    let probe = healthcheck(&other.join("tls.crt"), &other.join("tls.key"));
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");

    // A broken renewal (a key that does not belong to the certificate, then garbage) is refused:
    // the previous certificate stays.
    mount.publish(&cert_3, &key_2);
    wait_for_log(&stderr_log, &["refused", "TLS certificate"]).await;
    mount.publish("not a certificate", "not a key");
    eventually("the second refusal", async || {
        let log = std::fs::read_to_string(&stderr_log).unwrap();
        (log.matches("refused").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        presented(&tls_client(&ca.pem), &base).await,
        Some(der_2.clone())
    );
    assert_eq!(presented(&kept, &base).await, Some(der_1));
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The tokens file
// ---------------------------------------------------------------------------------------------

/// Replaces `path` the way an editor or a Secret update does: write aside, then rename.
fn replace_file(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn logs_status(client: &reqwest::Client, server: &Server, token: &str) -> StatusCode {
    let url = format!("{}/v1/audit/logs?limit=1", server.base_url());
    send(client.get(url).bearer_auth(token)).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_tokens_file_is_used_without_a_restart_and_a_broken_one_is_refused() {
    let dir = TestDir::new();
    let old = StaticToken::new("old-reader", &["audit:read"], Some(TENANT));
    let new = StaticToken::new("new-reader", &["audit:read"], Some(TENANT));
    let server = start_with_tokens(&dir, "tokens.toml", &[&old], None, AUDIT_OF_AUDIT_OFF).await;
    let tokens = dir.root().join("tokens.toml");
    let client = client();
    assert_eq!(
        logs_status(&client, &server, &old.secret).await,
        StatusCode::OK
    );
    assert_eq!(
        logs_status(&client, &server, &new.secret).await,
        StatusCode::UNAUTHORIZED
    );

    // Rotation: the new token in, the old one out.
    let staged = dir.root().join("staged.toml");
    write_tokens_file(&staged, &[&new]);
    replace_file(&tokens, &std::fs::read_to_string(&staged).unwrap());
    eventually("the new token", async || {
        (logs_status(&client, &server, &new.secret).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        logs_status(&client, &server, &old.secret).await,
        StatusCode::UNAUTHORIZED
    );
    wait_for_log(server.stderr_log(), &["reloaded", "tokens file"]).await;

    // A broken file is refused and logged; the tokens in force stay.
    replace_file(&tokens, "[[tokens]]\nname = \"half-written");
    let line = wait_for_log(server.stderr_log(), &["refused", "tokens file"]).await;
    assert!(line.contains("ERROR"), "{line}");
    assert!(!line.contains(&new.secret), "{line}");
    assert_eq!(
        logs_status(&client, &server, &new.secret).await,
        StatusCode::OK
    );
    assert_eq!(
        logs_status(&client, &server, &old.secret).await,
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------------------------
// The JWKS file
// ---------------------------------------------------------------------------------------------

/// The fixture JWKS with only the keys named in `kids`.
fn jwks_with(kids: &[&str]) -> String {
    let mut jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.retain(|key| kids.contains(&key["kid"].as_str().unwrap()));
    assert_eq!(keys.len(), kids.len());
    jwks.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_jwks_file_takes_effect_without_a_restart_and_a_broken_one_is_refused() {
    let dir = TestDir::new();
    let jwks = dir.root().join("jwks.json");
    std::fs::write(&jwks, jwks_with(&["rsa-1", "ec-1"])).unwrap();
    let source = format!("file://{}", jwks.display());
    // The periodic JWKS refresh (default 300 s) cannot be what removes the key below.
    let args = [
        &["--jwks-url", &source, "--jwt-audience", "scaivault"],
        AUDIT_OF_AUDIT_OFF,
    ]
    .concat();
    let server = Server::start(&dir.data_dir(), &args).await;
    let client = client();
    let rsa = sign("rsa-1", &claims("sa:r", "audit:read", Some(TENANT), 600));
    let ec = sign("ec-1", &claims("sa:e", "audit:read", Some(TENANT), 600));
    assert_eq!(logs_status(&client, &server, &rsa).await, StatusCode::OK);
    assert_eq!(logs_status(&client, &server, &ec).await, StatusCode::OK);

    // ScaiKey retires rsa-1: tokens it signed stop working once the file changes.
    replace_file(&jwks, &jwks_with(&["ec-1"]));
    eventually("rsa-1 refused", async || {
        (logs_status(&client, &server, &rsa).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert_eq!(logs_status(&client, &server, &ec).await, StatusCode::OK);

    replace_file(&jwks, "{\"keys\": [");
    wait_for_log(server.stderr_log(), &["refused", "JWKS file"]).await;
    assert_eq!(logs_status(&client, &server, &ec).await, StatusCode::OK);
}
