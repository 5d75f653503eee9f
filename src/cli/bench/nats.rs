//! A three-node NATS JetStream cluster of the benchmark's own (`bench ingest --cluster`): the
//! given `nats-server` binary, free loopback ports below the ephemeral range, `sync_interval: always` (as
//! scripts/cluster.sh and docs/cluster.md require), data in the benchmark's temporary directory.
//! Nodes are killed with SIGKILL; every node still running is killed when this is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use scaivault_audit::cluster::local_ports::unclaimed_loopback_port;
use serde_json::Value;

/// How long the nodes get to report healthy (they take about 2 s).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    store: PathBuf,
    child: Option<tokio::process::Child>,
}

/// Three NATS nodes in one cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts three nodes of `binary` under `root` and waits until every one reports healthy.
    pub async fn start(binary: &Path, root: &Path) -> anyhow::Result<NatsCluster> {
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push((
                unclaimed_loopback_port()?,
                unclaimed_loopback_port()?,
                unclaimed_loopback_port()?,
            ));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            http: reqwest::Client::new(),
        };
        for (index, (client, monitor, route)) in ports.into_iter().enumerate() {
            let name = format!("n{}", index + 1);
            let store = root.join(&name);
            std::fs::create_dir_all(&store)?;
            let config = root.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: scaivault-audit-bench\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )?;
            let log = std::fs::File::create(root.join(format!("{name}.log")))?;
            let child = tokio::process::Command::new(binary)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            cluster.nodes.push(Node {
                name,
                client_port: client,
                monitor_port: monitor,
                store,
                child: Some(child),
            });
        }
        for index in 0..3 {
            cluster.wait_healthy(index).await?;
        }
        Ok(cluster)
    }

    async fn wait_healthy(&self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let url = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
        let started = Instant::now();
        while started.elapsed() < HEALTHY_DEADLINE {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "NATS node {} not healthy within {HEALTHY_DEADLINE:?}",
            node.name
        )
    }

    /// `nats://…` of every node, comma-separated (the service's `--nats-url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL node `index`; returns its name.
    pub async fn kill9(&mut self, index: usize) -> anyhow::Result<String> {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            child.kill().await?;
        }
        Ok(node.name.clone())
    }

    /// The index of the node leading `stream`, from a running node's `/jsz`.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let started = Instant::now();
        while started.elapsed() < HEALTHY_DEADLINE {
            for node in self.nodes.iter().filter(|node| node.child.is_some()) {
                let url = format!(
                    "http://127.0.0.1:{}/jsz?accounts=true&streams=true",
                    node.monitor_port
                );
                let Ok(response) = self.http.get(&url).send().await else {
                    continue;
                };
                let Ok(body) = response.json::<Value>().await else {
                    continue;
                };
                if let Some(leader) = find_leader(&body, stream)
                    && let Some(index) = self.nodes.iter().position(|n| n.name == leader)
                {
                    return Ok(index);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no leader of stream {stream} found")
    }

    /// Peak resident set (KiB) of every running node.
    pub fn peak_rss_kib(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter_map(|node| node.child.as_ref()?.id())
            .map(|pid| super::peak_rss_kib(pid).unwrap_or(0))
            .collect()
    }

    /// Bytes in each node's JetStream store.
    pub fn store_bytes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|node| super::dir_bytes(&node.store).unwrap_or(0))
            .collect()
    }
}

/// The `cluster.leader` of the stream named `stream` anywhere in a `/jsz` document.
fn find_leader(value: &Value, stream: &str) -> Option<String> {
    match value {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some(stream)
                && let Some(leader) = map
                    .get("cluster")
                    .and_then(|cluster| cluster.get("leader"))
                    .and_then(Value::as_str)
            {
                return Some(leader.to_string());
            }
            map.values().find_map(|value| find_leader(value, stream))
        }
        Value::Array(items) => items.iter().find_map(|value| find_leader(value, stream)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_found_in_a_jsz_document() {
        let jsz = serde_json::json!({
            "account_details": [{"stream_detail": [
                {"name": "OTHER", "cluster": {"leader": "n1"}},
                {"name": "SCAIVAULT_AUDIT", "cluster": {"leader": "n3", "replicas": []}}
            ]}]
        });
        assert_eq!(find_leader(&jsz, "SCAIVAULT_AUDIT").as_deref(), Some("n3"));
        assert_eq!(find_leader(&jsz, "MISSING"), None);
    }
}
