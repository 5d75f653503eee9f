//! A three-node NATS JetStream cluster of the test's own (docs/cluster.md): the binary from
//! `$SCAIVAULT_TEST_NATS_SERVER` (scripts/cluster.sh installs it), free loopback ports below
//! the ephemeral range (`cluster::local_ports`),
//! `sync_interval: always`, data and logs in the test directory (printed on failure). Nodes
//! are killed with SIGKILL and restarted with their data.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scaivault_audit::cluster::local_ports::unclaimed_loopback_port;
use serde_json::Value;

/// How long the nodes get to report healthy (they take about 2 s).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);

/// The `nats-server` binary; panics with how to get it.
pub fn nats_server_binary() -> String {
    std::env::var("SCAIVAULT_TEST_NATS_SERVER").unwrap_or_else(|_| {
        panic!(
            "SCAIVAULT_TEST_NATS_SERVER is not set: this test needs nats-server 2.15.1. Run \
             `scripts/cluster.sh start && source .tools/cluster.env` (scripts/test.sh does)"
        )
    })
}

struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three NATS nodes in one cluster.
pub struct NatsCluster {
    binary: String,
    nodes: Vec<Node>,
    root: PathBuf,
}

fn free_port() -> u16 {
    unclaimed_loopback_port().expect("pick a free loopback port")
}

impl NatsCluster {
    /// Starts three nodes under `root/nats/` and waits until every one reports healthy.
    pub async fn start(root: &Path) -> NatsCluster {
        let binary = nats_server_binary();
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::new();
        for (index, (client, monitor, route)) in ports.iter().enumerate() {
            let name = format!("n{}", index + 1);
            let store = root.join("nats").join(&name);
            fs::create_dir_all(&store).expect("create the NATS store directory");
            let config = root.join("nats").join(format!("{name}.conf"));
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: scaivault-audit-it\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                store.display(),
                routes.join(", ")
            );
            fs::write(&config, text).expect("write the NATS config");
            nodes.push(Node {
                name: name.clone(),
                client_port: *client,
                monitor_port: *monitor,
                config,
                log: root.join(format!("nats-{name}.log")),
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            binary,
            nodes,
            root: root.to_path_buf(),
        };
        for index in 0..3 {
            cluster.launch(index);
        }
        for index in 0..3 {
            cluster.wait_healthy(index).await;
        }
        cluster
    }

    fn launch(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the NATS log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the NATS log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary));
        node.child = Some(child);
    }

    /// `nats://…` of every node, comma-separated (the service's `--nats-url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cursor key file every replica on this cluster shares (`--cursor-key-file`): written
    /// once, random, under the test directory.
    pub fn cursor_key_file(&self) -> PathBuf {
        let path = self.root.join("nats").join("cursor.key");
        if !path.try_exists().expect("check the cursor key file") {
            let key: [u8; 32] = rand_bytes();
            fs::write(&path, format!("{}\n", hex::encode(key))).expect("write the cursor key");
        }
        path
    }

    /// SIGKILL node `index` (0-based).
    pub fn kill9(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again with its data and waits until it is healthy.
    pub async fn restart(&mut self, index: usize) {
        assert!(self.nodes[index].child.is_none(), "node {index} still runs");
        self.launch(index);
        self.wait_healthy(index).await;
    }

    /// Waits until node `index` answers `/healthz` with 200.
    pub async fn wait_healthy(&self, index: usize) {
        let node = &self.nodes[index];
        let url = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
        let client = super::client();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            let log = fs::read_to_string(&node.log).unwrap_or_default();
            if let Some(fatal) = log.lines().find(|line| line.contains("[FTL]")) {
                panic!("NATS node {} stopped: {fatal}", node.name);
            }
            assert!(
                started.elapsed() < HEALTHY_DEADLINE,
                "NATS node {} not healthy within {HEALTHY_DEADLINE:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the node leading `stream`, from a running node's `/jsz`.
    pub async fn stream_leader(&self, stream: &str) -> usize {
        self.poll_stream(stream, |entry| {
            let leader = entry.get("cluster")?.get("leader")?.as_str()?;
            self.nodes.iter().position(|node| node.name == leader)
        })
        .await
    }

    /// `(first_seq, last_seq)` of `stream` as a running node's `/jsz` reports it (the
    /// stream's window: records before `first_seq` expired or were deleted).
    pub async fn stream_window(&self, stream: &str) -> (u64, u64) {
        self.poll_stream(stream, |entry| {
            let state = entry.get("state")?;
            Some((
                state.get("first_seq")?.as_u64()?,
                state.get("last_seq")?.as_u64()?,
            ))
        })
        .await
    }

    /// Asks the running nodes' `/jsz` for `stream` until `read` finds what it needs in the
    /// stream's entry, failing after [`HEALTHY_DEADLINE`].
    async fn poll_stream<T>(&self, stream: &str, read: impl Fn(&Value) -> Option<T>) -> T {
        let client = super::client();
        let started = Instant::now();
        loop {
            for node in self.nodes.iter().filter(|node| node.child.is_some()) {
                let url = format!(
                    "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
                    node.monitor_port
                );
                let Ok(response) = client.get(&url).send().await else {
                    continue;
                };
                let Ok(body) = response.json::<Value>().await else {
                    continue;
                };
                if let Some(found) = find_stream(&body, stream).and_then(&read) {
                    return found;
                }
            }
            assert!(
                started.elapsed() < HEALTHY_DEADLINE,
                "no node reports what is asked of stream {stream}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random bytes");
    key
}

/// The entry of the stream named `stream` anywhere in a `/jsz` document.
fn find_stream<'a>(value: &'a Value, stream: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some(stream)
                && (map.contains_key("state") || map.contains_key("cluster"))
            {
                return Some(value);
            }
            map.values().find_map(|value| find_stream(value, stream))
        }
        Value::Array(items) => items.iter().find_map(|value| find_stream(value, stream)),
        _ => None,
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill9(index);
        }
    }
}
