//! Export test helpers: the REST calls, a fake ScaiVault secrets API, a TCP proxy that can cut
//! a destination off, and readers of the objects in the emulated buckets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Reply, send};

/// How long a test waits for an export to finish.
pub const EXPORT_DEADLINE: Duration = Duration::from_secs(120);

/// The `file` export root the harness gives the server (`TestDir::root()/exports`).
pub fn file_root(dir: &super::TestDir) -> PathBuf {
    dir.root().join(super::FILE_ROOT_NAME)
}

/// Creates the bucket directory `bucket` under the file root and returns its path.
pub fn file_bucket(dir: &super::TestDir, bucket: &str) -> PathBuf {
    let path = file_root(dir).join(bucket);
    std::fs::create_dir_all(&path).expect("create the bucket directory");
    path
}

/// The bucket of a directory made by [`file_bucket`] (its name: buckets are one level deep).
pub fn bucket_name(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .expect("a bucket directory name")
        .to_string()
}

pub async fn post_export(client: &Client, base: &str, token: &str, body: &Value) -> Reply {
    send(
        client
            .post(format!("{base}/v1/audit/export"))
            .bearer_auth(token)
            .header("X-Tenant-ID", super::TENANT)
            .json(body),
    )
    .await
}

pub async fn get_export(client: &Client, base: &str, token: &str, id: &str) -> Reply {
    send(
        client
            .get(format!("{base}/v1/audit/exports/{id}"))
            .bearer_auth(token)
            .header("X-Tenant-ID", super::TENANT),
    )
    .await
}

/// Starts an export and returns its id (asserting 202).
pub async fn start_export(client: &Client, base: &str, token: &str, body: &Value) -> String {
    let (status, _, reply) = post_export(client, base, token, body).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "POST /v1/audit/export: {reply}"
    );
    assert_eq!(reply["status"], "pending", "{reply}");
    reply["export_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no export_id: {reply}"))
        .to_string()
}

/// Polls until `check(status)` holds.
pub async fn wait_export(
    client: &Client,
    base: &str,
    token: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (status, _, body) = get_export(client, base, token, id).await;
        assert_eq!(status, StatusCode::OK, "GET export {id}: {body}");
        if check(&body) {
            return body;
        }
        assert!(
            started.elapsed() < EXPORT_DEADLINE,
            "export {id} not {what} after {EXPORT_DEADLINE:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until the export is completed, failed or cancelled.
pub async fn wait_finished(client: &Client, base: &str, token: &str, id: &str) -> Value {
    wait_export(client, base, token, id, "finished", |body| {
        matches!(
            body["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
    })
    .await
}

/// The exact JSONL an export of `logs` (ascending) must contain.
pub fn expected_jsonl(logs: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for log in logs {
        out.extend_from_slice(serde_json::to_string(log).expect("encode").as_bytes());
        out.push(b'\n');
    }
    out
}

/// Exported JSONL without the chain members (`chain_seq`, `chain_hash`), which every record
/// must carry: what [`expected_jsonl`] of the API's logs is compared with.
pub fn without_chain(jsonl: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in jsonl
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        let mut record: serde_json::Map<String, Value> =
            serde_json::from_slice(line).expect("a JSON record");
        let seq = record.remove("chain_seq");
        let hash = record.remove("chain_hash");
        assert!(
            seq.as_ref().is_some_and(Value::is_u64)
                && hash
                    .as_ref()
                    .and_then(Value::as_str)
                    .is_some_and(|hash| hash.len() == 64),
            "a record without its chain link: {}",
            String::from_utf8_lossy(line)
        );
        out.extend_from_slice(serde_json::to_string(&record).expect("encode").as_bytes());
        out.push(b'\n');
    }
    out
}

/// The logs of the API listing (newest first) in export order: oldest first.
pub fn ascending(mut logs: Vec<Value>) -> Vec<Value> {
    logs.reverse();
    logs
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks every part against its `files` entry and returns the concatenated contents.
pub async fn read_parts<F, Fut>(status: &Value, mut read: F) -> Vec<u8>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<u8>>>,
{
    let mut all = Vec::new();
    for file in status["files"].as_array().expect("files") {
        let key = file["key"].as_str().expect("key").to_string();
        let bytes = read(key.clone())
            .await
            .unwrap_or_else(|| panic!("part {key} is missing"));
        assert_eq!(file["size_bytes"], json!(bytes.len()), "size of {key}");
        assert_eq!(file["sha256"], json!(sha256_hex(&bytes)), "sha256 of {key}");
        all.extend_from_slice(&bytes);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Fake ScaiVault
// ---------------------------------------------------------------------------------------------

/// A local server following ScaiVault's `GET /v1/secrets/{path}` with bearer auth; secrets and
/// injected errors can be changed while it runs.
#[derive(Clone)]
pub struct FakeScaiVault {
    pub url: String,
    pub token: Arc<Mutex<String>>,
    secrets: Arc<Mutex<HashMap<String, Value>>>,
    failures: Arc<Mutex<HashMap<String, (u16, String)>>>,
    pub requests: Arc<AtomicUsize>,
}

impl FakeScaiVault {
    pub async fn start(token: &str) -> FakeScaiVault {
        use warp::Filter;
        let vault = FakeScaiVault {
            url: String::new(),
            token: Arc::new(Mutex::new(token.to_string())),
            secrets: Arc::default(),
            failures: Arc::default(),
            requests: Arc::default(),
        };
        let handler = vault.clone();
        let route = warp::path("v1")
            .and(warp::path("secrets"))
            .and(warp::path::tail())
            .and(warp::get())
            .and(warp::header::optional::<String>("authorization"))
            .map(move |tail: warp::path::Tail, auth: Option<String>| {
                handler.answer(tail.as_str(), auth.as_deref())
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        FakeScaiVault {
            url: format!("http://{addr}"),
            ..vault
        }
    }

    pub fn put(&self, path: &str, data: Value) {
        self.secrets.lock().unwrap().insert(path.to_string(), data);
    }

    /// Makes `path` answer `status` with error `code` until cleared.
    pub fn fail(&self, path: &str, status: u16, code: &str) {
        self.failures
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, code.to_string()));
    }

    pub fn clear_failure(&self, path: &str) {
        self.failures.lock().unwrap().remove(path);
    }

    fn answer(&self, path: &str, auth: Option<&str>) -> warp::reply::Response {
        use warp::Reply as _;
        self.requests.fetch_add(1, Ordering::SeqCst);
        let envelope = |status: u16, code: &str, message: &str| {
            warp::reply::with_status(
                warp::reply::json(&json!({"error": {"code": code, "message": message,
                    "request_id": "req_fake"}})),
                warp::http::StatusCode::from_u16(status).expect("status"),
            )
            .into_response()
        };
        let expected = format!("Bearer {}", self.token.lock().unwrap());
        if auth != Some(expected.as_str()) {
            return envelope(401, "token_invalid", "Signature failed");
        }
        if let Some((status, code)) = self.failures.lock().unwrap().get(path).cloned() {
            return envelope(status, &code, "injected failure");
        }
        match self.secrets.lock().unwrap().get(path) {
            Some(data) => warp::reply::json(&json!({
                "path": path, "version": 3, "secret_type": "json", "data": data,
                "metadata": {"description": "export writer"},
            }))
            .into_response(),
            None => envelope(
                404,
                "secret_not_found",
                &format!("Secret '{path}' not found"),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can cut the destination off
// ---------------------------------------------------------------------------------------------

/// Forwards connections to `target`. `cut()` drops every connection and refuses new ones until
/// `restore()`; `cut_after(bytes)` does so once that many request bytes went through.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Proxy {
            addr: listener.local_addr().expect("addr"),
            connections: Arc::default(),
            down: Arc::default(),
            budget: Arc::new(AtomicU64::new(u64::MAX)),
            generation: Arc::default(),
        };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                if state.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let state = state.clone();
                tokio::spawn(async move { state.forward(client, target).await });
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
    }

    async fn forward(&self, mut client: TcpStream, target: SocketAddr) {
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            return;
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let requests = async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let left = self
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |budget| {
                        Some(budget.saturating_sub(n as u64))
                    })
                    .unwrap_or(0);
                if left <= n as u64 {
                    self.cut();
                    return;
                }
                if upstream_write.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        };
        let responses = tokio::io::copy(&mut upstream_read, &mut client_write);
        let watchdog = async {
            while self.generation.load(Ordering::SeqCst) == generation {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            () = requests => {}
            _ = responses => {}
            () = watchdog => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Emulators
// ---------------------------------------------------------------------------------------------

/// A setting written by `scripts/emulators.sh start`; a missing one fails the test loudly.
pub fn emulator_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the object-store emulators. Run \
             `scripts/emulators.sh start && source .tools/emulators.env` (scripts/test.sh does)"
        )
    })
}

pub fn endpoint_addr(url: &str) -> SocketAddr {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("authority");
    authority.parse().expect("endpoint is ip:port")
}

/// Reads an S3 object with the AWS SDK (the reference client), `None` when missing.
pub async fn s3_get(endpoint: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let client = s3_client(endpoint);
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(output) => Some(output.body.collect().await.expect("body").to_vec()),
        Err(error) => {
            let service = error.into_service_error();
            assert!(service.is_no_such_key(), "S3 GET {key}: {service:?}");
            None
        }
    }
}

/// Keys under `prefix` in an S3 bucket.
pub async fn s3_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let client = s3_client(endpoint);
    let listing = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    let mut keys: Vec<String> = listing
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// Multipart uploads still open under `prefix`.
pub async fn s3_open_uploads(endpoint: &str, bucket: &str, prefix: &str) -> usize {
    let client = s3_client(endpoint);
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list uploads")
        .uploads()
        .len()
}

pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Reads a GCS object through fake-gcs-server's JSON API.
pub async fn gcs_get(endpoint: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let key = super::percent_encode(key);
    let response = reqwest::get(format!(
        "{endpoint}/storage/v1/b/{bucket}/o/{key}?alt=media"
    ))
    .await
    .expect("GCS GET");
    match response.status() {
        StatusCode::OK => Some(response.bytes().await.expect("body").to_vec()),
        StatusCode::NOT_FOUND => None,
        other => panic!("GCS GET {key}: {other}"),
    }
}

/// Reads an Azure blob with an account SAS signed here (independently of the service's code).
pub async fn azure_get(
    endpoint: &str,
    account: &str,
    key_b64: &str,
    path: &str,
) -> Option<Vec<u8>> {
    let sas = account_sas(account, key_b64);
    let response = reqwest::Client::new()
        .get(format!("{endpoint}/{path}?{sas}"))
        .header("x-ms-version", "2025-01-05")
        .send()
        .await
        .expect("Azure GET");
    match response.status() {
        StatusCode::OK => Some(response.bytes().await.expect("body").to_vec()),
        StatusCode::NOT_FOUND => None,
        other => panic!(
            "Azure GET {path}: {other} {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

fn account_sas(account: &str, key_b64: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .expect("account key");
    let (version, services, types, permissions, expiry) =
        ("2025-01-05", "b", "sco", "rl", "2099-01-01T00:00:00Z");
    let to_sign =
        format!("{account}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n\n{version}\n\n");
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", services)
        .append_pair("srt", types)
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("sig", &signature)
        .finish()
}

/// A GCS service-account key file with a real RSA key (fake-gcs-server does not check tokens;
/// the client signs its self-signed JWT with it).
pub fn gcs_service_account() -> Value {
    let pem_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/rsa.pem");
    let private_key = std::fs::read_to_string(pem_path).expect("RSA fixture");
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "0123456789abcdef",
        "private_key": private_key,
        "client_email": "audit-export@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
}

/// Writes a development secret document `DIR/<path>.json`.
pub fn write_dev_secret(dir: &Path, path: &str, data: Value) -> PathBuf {
    let file = dir.join(format!("{path}.json"));
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &file,
        serde_json::to_vec(
            &json!({"path": path, "version": 1, "secret_type": "json", "data": data}),
        )
        .expect("encode"),
    )
    .expect("write secret");
    file
}
