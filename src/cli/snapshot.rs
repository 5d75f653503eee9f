//! `scaivault-audit snapshot create|restore|list`: index snapshots at the `[snapshots]`
//! destination (docs/snapshots.md), offline. `create` opens the stopped store of the data
//! directory (its WAL replayed and committed first) and uploads a snapshot; `restore` places
//! the newest (or a chosen) snapshot into a data directory that holds no store; `list` prints
//! the complete snapshots, newest first. The running service takes its own snapshots every
//! `[snapshots] interval_seconds` (a second process cannot open a data directory in use).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use scaivault_audit::config::{Settings, SettingsArgs};
use scaivault_audit::snapshot::remote::DestinationOpener;
use scaivault_audit::snapshot::restore::{self, RestoreMode};
use scaivault_audit::snapshot::service::snapshot_once;
use scaivault_audit::store::schema::SCHEMA_VERSION;
use scaivault_audit::store::{Store, StoreMetrics};

use super::UsageError;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot the stopped store of the data directory to the [snapshots] destination.
    Create(SettingsArgs),
    /// Restore the newest complete snapshot (or --snapshot ID) into a data directory without
    /// a store (default: the configured data directory).
    Restore(RestoreArgs),
    /// List the complete snapshots at the [snapshots] destination, newest first.
    List(SettingsArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The data directory to restore into (must hold no store).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// The snapshot to restore (default: the newest complete one).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Runs the subcommand.
pub async fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create(args) => create(&args).await,
        SnapshotCommand::Restore(args) => restore(&args).await,
        SnapshotCommand::List(args) => list(&args).await,
    }
}

fn opener(settings: &Settings) -> anyhow::Result<DestinationOpener> {
    DestinationOpener::from_settings(settings)?.ok_or_else(|| {
        UsageError(
            "no snapshot destination: set [snapshots] type and bucket (or --snapshots-type and \
             --snapshots-bucket)"
                .into(),
        )
        .into()
    })
}

async fn create(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let opener = opener(&settings)?;
    let target = opener.open().await?;
    let data_dir = &settings.store.data_dir;
    if restore::holds_no_store(data_dir)? {
        anyhow::bail!("{} holds no store to snapshot", data_dir.display());
    }
    let store = Store::open(&settings.store, StoreMetrics::unregistered())
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    store
        .wait_ready(Duration::from_secs(3600))
        .await
        .map_err(anyhow::Error::msg)?;
    store.flush().await?;
    let taken = snapshot_once(&store, data_dir, &target, settings.snapshots.keep as usize).await;
    store.shutdown().await;
    let (manifest, bytes) = taken?;
    println!(
        "snapshot {} uploaded to {}: position {}, {} files, {bytes} bytes",
        manifest.id,
        opener.location(),
        manifest.position,
        manifest.files.len()
    );
    Ok(())
}

async fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.settings)?;
    let opener = opener(&settings)?;
    let target = opener.open().await?;
    let to = args.to.clone().unwrap_or(settings.store.data_dir.clone());
    let restored = restore::restore(
        &target,
        &to,
        args.snapshot.as_deref(),
        RestoreMode::IntoEmpty,
    )
    .await?;
    let Some(outcome) = restored else {
        anyhow::bail!("no complete snapshot at {}", opener.location());
    };
    println!(
        "snapshot {} restored into {}: position {}, {} files, {} bytes",
        outcome.id,
        to.display(),
        outcome.position,
        outcome.files,
        outcome.bytes
    );
    Ok(())
}

async fn list(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let target = opener(&settings)?.open().await?;
    for id in target.complete_ids().await? {
        match target.manifest(&id, SCHEMA_VERSION).await {
            Ok(manifest) => println!(
                "{id}  {}  position {}  {} files  {} bytes",
                manifest.created_at,
                manifest.position,
                manifest.files.len(),
                manifest.total_bytes()
            ),
            Err(error) => println!("{id}  unusable: {error}"),
        }
    }
    Ok(())
}
