//! Service replicas of a test's own NATS cluster that export with credentials from a fake
//! ScaiVault (the clustered mode's coordination tests).

use crate::harness::export::FakeScaiVault;
use crate::harness::nats::NatsCluster;
use crate::harness::*;

/// One replica: its id and its server.
pub struct Replica {
    pub id: &'static str,
    pub server: Server,
}

/// Starts `vault` with `token` and writes the token file the replicas read it from.
pub async fn start_vault(dir: &TestDir, token: &str) -> FakeScaiVault {
    let vault = FakeScaiVault::start(token).await;
    std::fs::write(dir.root().join("scaivault-token"), format!("{token}\n")).unwrap();
    vault
}

/// Starts replica `id` (data in `dir/data-{id}`, kept across restarts) with leases of
/// `lease_ttl_seconds`, fast commits, the audit of the audit off, and `extra` arguments.
pub async fn start_replica(
    nats: &NatsCluster,
    id: &'static str,
    vault: &FakeScaiVault,
    dir: &TestDir,
    lease_ttl_seconds: u64,
    extra: &[&str],
) -> Replica {
    let data_dir = dir.root().join(format!("data-{id}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats.urls(),
        "--replica-id".into(),
        id.into(),
        "--cursor-key-file".into(),
        nats.cursor_key_file().display().to_string(),
        "--nats-max-bytes".into(),
        (256u64 << 20).to_string(),
        "--cluster-lease-ttl-seconds".into(),
        lease_ttl_seconds.to_string(),
        "--scaivault-url".into(),
        vault.url.clone(),
        "--scaivault-token-file".into(),
        dir.root().join("scaivault-token").display().to_string(),
        // The emulator is on loopback.
        "--export-allow-private-endpoints".into(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args.extend(FAST_COMMITS.iter().map(|arg| arg.to_string()));
    args.extend(AUDIT_OF_AUDIT_OFF.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Replica {
        id,
        server: Server::start(&data_dir, &args).await,
    }
}
