//! `scaivault-audit serve`: wires the library's parts into the running service (store,
//! authentication, checkpoints, export runner, operator, HTTP server) and stops them in order.

use std::sync::Arc;

use anyhow::Context;
use scaivault_audit::api::tls::ReloadableCert;
use scaivault_audit::auth::jwt::JwtVerifier;
use scaivault_audit::auth::token_review::TokenReviewer;
use scaivault_audit::auth::{Authenticator, BootstrapToken, StaticTokens};
use scaivault_audit::cluster::exports::{ClusterExportSettings, ClusterExports};
use scaivault_audit::cluster::lease::{LeaseBucket, RoleLease};
use scaivault_audit::cluster::lease_metrics::LeaseMetrics;
use scaivault_audit::cluster::manifest_links::KvManifestLinks;
use scaivault_audit::cluster::schedules::{KvSchedules, SCHEDULER_ROLE};
use scaivault_audit::cluster::snapshotter::SNAPSHOTTER_ROLE;
use scaivault_audit::cluster::sweeps::{KvSweeps, SWEEPER_ROLE};
use scaivault_audit::config::auth::JwksSource;
use scaivault_audit::config::{ClusterSettings, Settings, SettingsArgs};
use scaivault_audit::export::credentials::{CredentialSource, ScaiVaultClient};
use scaivault_audit::export::engine::{EngineConfig, ExportEngine, RetryPolicy};
use scaivault_audit::export::manifest::{ExportIntegrity, ManifestLinkStore, ManifestLinks};
use scaivault_audit::export::metrics::ExportMetrics;
use scaivault_audit::export::policy::ExportPolicy;
use scaivault_audit::export::runner::{LocalRunner, RunnerMetrics};
use scaivault_audit::export::schedule::files::ScheduleFiles;
use scaivault_audit::export::schedule::scheduler::{ScheduleMetrics, Scheduler, SchedulerSettings};
use scaivault_audit::export::schedule::store::ScheduleStore;
use scaivault_audit::integrity::checkpoint::CheckpointLog;
use scaivault_audit::integrity::checkpointer::{self, CheckpointMetrics, Checkpointer};
use scaivault_audit::query::cursor::CursorCodec;
use scaivault_audit::retention::{ColdTier, RetentionMetrics, Sweeper};
use scaivault_audit::snapshot::rejoin::{SnapshotSource, rejoin};
use scaivault_audit::snapshot::remote::DestinationOpener;
use scaivault_audit::snapshot::{SnapshotMetrics, Snapshotter, service};
use scaivault_audit::state::{AppState, ExportHandles};
use scaivault_audit::store::log::Replicated;
use scaivault_audit::store::{Store, StoreMetrics};
use scaivault_audit::{api, operator, reload, telemetry};
use tokio_util::sync::CancellationToken;

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(args: SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    telemetry::init_logging(&settings.log_level, settings.log_format)
        .map_err(anyhow::Error::msg)?;
    // Before any work: the clustered mode's shared cursor key must be configured and valid.
    let shared_cursors = shared_cursor_codec(&settings)?;
    let mut registry = telemetry::new_registry();
    telemetry::register_build_info(&mut registry);
    // First of all: an empty data directory may be restored from an index snapshot; in a
    // cluster, also one whose records the stream no longer holds.
    let snapshot_metrics = SnapshotMetrics::register(&mut registry);
    let snapshot_opener = DestinationOpener::from_settings(&settings)?;
    let (replicated, jetstream) = match &settings.cluster {
        Some(cluster) => {
            let (replicated, context) = join_cluster(
                &settings,
                cluster,
                snapshot_opener.as_ref(),
                &snapshot_metrics,
            )
            .await?;
            (Some(replicated), Some(context))
        }
        None => {
            if let Some(opener) = &snapshot_opener
                && settings.snapshots.restore_on_start
            {
                service::restore_at_start(opener, &settings.store.data_dir, &snapshot_metrics)
                    .await
                    .context("failed to restore the data directory from an index snapshot")?;
            }
            (None, None)
        }
    };
    // Before the store: a missing or broken key ring stops the start before anything else.
    let checkpoint_log = Arc::new(
        checkpointer::open(&settings.integrity)
            .context("failed to open the integrity key ring and checkpoint log")?,
    );
    let store = open_store(&settings, StoreMetrics::register(&mut registry), replicated)?;
    let cluster = operator::connect(&settings)
        .await
        .context("failed to connect to the Kubernetes API")?;
    let (authenticator, bootstrap) = authenticator(&settings, cluster.as_ref()).await?;
    let authenticator = authenticator.with_failed_auth_limit(settings.failed_auth_per_minute);
    let cursors = match shared_cursors {
        Some(codec) => codec,
        None => CursorCodec::load_or_create(&settings.store.data_dir)
            .context("failed to load the cursor key")?,
    };
    let checkpoints = Checkpointer::new(
        store.clone(),
        checkpoint_log.clone(),
        CheckpointMetrics::register(&mut registry),
    );
    let manifest_links = manifest_link_store(&settings, jetstream.as_ref()).await?;
    let runner = export_runner(
        &settings,
        &store,
        &checkpoint_log,
        manifest_links,
        &mut registry,
    )?;
    let operator_metrics = operator::metrics::OperatorMetrics::register(&mut registry);
    let retention = Arc::new(settings.retention.clone());
    let mut sweeper = Sweeper::new(
        store.clone(),
        retention.clone(),
        RetentionMetrics::register(&mut registry),
    );
    if let Some(storage) = &settings.retention.cold_storage {
        let cold = ColdTier::new(runner.engine().clone(), storage.clone())
            .map_err(anyhow::Error::msg)
            .context("invalid [retention.cold_storage]")?;
        sweeper = sweeper.with_cold_tier(cold);
    }
    // In a cluster: one lease bucket for the export jobs' runners and the cluster-wide roles.
    let lease_metrics = LeaseMetrics::register(&mut registry);
    let leases = match (&settings.cluster, &jetstream) {
        (Some(cluster), Some(context)) => Some(
            LeaseBucket::open(
                context,
                &cluster.leases_bucket,
                cluster.lease_ttl,
                cluster.replicas,
                &cluster.replica_id,
            )
            .await
            .context("failed to open the cluster's lease bucket")?
            .with_metrics(lease_metrics),
        ),
        _ => None,
    };
    let sweep_shutdown = tokio_util::sync::CancellationToken::new();
    let mut sweeper_role_task = None;
    if let (Some(cluster), Some(context), Some(leases)) = (&settings.cluster, &jetstream, &leases) {
        let (role, task) = RoleLease::spawn(leases.clone(), SWEEPER_ROLE, sweep_shutdown.clone());
        let sweeps = KvSweeps::open(context, &cluster.sweeps_bucket, cluster.replicas, role)
            .await
            .map_err(anyhow::Error::msg)?;
        sweeper = sweeper.with_coordination(Arc::new(sweeps));
        sweeper_role_task = Some(task);
    }
    // Reads of audit data are recorded through the store like any other event.
    let (audit_recorder, audit_writer) = api::audit_trail::start(
        store.clone(),
        settings.audit_of_audit,
        api::audit_trail::AuditTrailMetrics::register(&mut registry),
    );
    // In Kubernetes, exports are AuditExport resources run by the lease holder; in the
    // clustered mode outside it, records in JetStream's key-value store run by the holder of
    // each job's lease.
    let operator_cluster = cluster.as_ref().filter(|_| settings.operator.enabled);
    let shared_exports = match operator_cluster {
        Some(_) => None,
        None => cluster_exports(
            &settings,
            jetstream.as_ref(),
            leases.as_ref(),
            runner.engine(),
        )
        .await
        .context("failed to open the cluster's export coordination")?,
    };
    let exports = ExportHandles {
        engine: runner.engine().clone(),
        registry: match operator_cluster {
            Some(cluster) => Arc::new(
                operator::registry::KubeRegistry::new(
                    cluster.client.clone(),
                    &cluster.namespace,
                    cluster.signer.clone(),
                )
                .watching(&settings.operator.namespaces),
            ),
            None => match &shared_exports {
                Some(shared) => Arc::new(shared.clone()),
                None => Arc::new(runner.clone()),
            },
        },
    };
    // Continuous exports run in this process standalone, as AuditExportSchedules in a cluster
    // (see docs/lifecycle.md); both count their runs in the same metrics.
    let schedule_metrics = ScheduleMetrics::register(&mut registry);
    let schedule_shutdown = tokio_util::sync::CancellationToken::new();
    let (scheduler, scheduler_role_task) = match operator_cluster {
        Some(_) => (None, None),
        None => {
            let (store, role, role_task) = schedule_store(
                &settings,
                jetstream.as_ref(),
                leases.as_ref(),
                &schedule_shutdown,
            )
            .await?;
            let scheduler = Scheduler::open(
                runner.engine().clone(),
                store,
                SchedulerSettings {
                    max_concurrent: settings.export.max_concurrent_jobs,
                    min_interval_seconds: settings.export.schedule_min_interval_seconds,
                    metrics: schedule_metrics.clone(),
                    role,
                    ..SchedulerSettings::default()
                },
            )
            .await
            .context("failed to load the export schedules")?;
            (Some(scheduler), role_task)
        }
    };
    let mut state = AppState::new(
        store.clone(),
        authenticator,
        cursors,
        registry,
        settings.limits,
        settings.rate_limits,
        exports,
    )
    .with_work_limits(&settings.work)
    .with_audit_trail(audit_recorder)
    .with_checkpoints(checkpoint_log)
    .with_retention(retention);
    if let Some(scheduler) = &scheduler {
        state = state.with_schedules(scheduler.clone());
    }
    if let Some(cluster) = operator_cluster {
        let namespaces = operator::watched_namespaces(&cluster.namespace, &settings.operator);
        state = state.with_cluster_schedules(operator::schedule_registry::KubeSchedules::new(
            &cluster.client,
            &namespaces,
        ));
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("failed to listen on {}", settings.listen))?;
    let (tls, certificate) = match &settings.tls {
        Some((cert, key)) => {
            let (acceptor, certificate) = api::tls::reloadable_acceptor(cert, key)?;
            (Some(acceptor), Some(certificate))
        }
        None => (None, None),
    };
    let reload_shutdown = tokio_util::sync::CancellationToken::new();
    let reloaders = watch_files(
        &settings,
        &state.auth,
        certificate.as_ref(),
        &reload_shutdown,
    );
    announce(
        &listener,
        tls.is_some(),
        bootstrap.as_ref(),
        &settings.store.data_dir,
    )?;
    ignore_file_size_signal();
    tracing::info!(data_dir = %settings.store.data_dir.display(), "scaivault-audit started");
    let operator_shutdown = tokio_util::sync::CancellationToken::new();
    let checkpoint_shutdown = tokio_util::sync::CancellationToken::new();
    let checkpoint_task = checkpoints.clone().spawn(
        settings.integrity.checkpoint_interval,
        checkpoint_shutdown.clone(),
    );
    let sweep_task = sweeper.spawn(sweep_shutdown.clone());
    let snapshot_shutdown = tokio_util::sync::CancellationToken::new();
    let mut snapshotter_role_task = None;
    let snapshot_task = match (&snapshot_opener, settings.snapshots.interval) {
        (Some(opener), Some(interval)) => {
            let mut snapshotter = Snapshotter::new(
                store.clone(),
                settings.store.data_dir.clone(),
                opener.clone(),
                interval,
                settings.snapshots.keep as usize,
                snapshot_metrics,
            );
            // In a cluster one replica uploads: only those that snapshot compete for the role.
            if let Some(leases) = &leases {
                let (role, task) =
                    RoleLease::spawn(leases.clone(), SNAPSHOTTER_ROLE, snapshot_shutdown.clone());
                snapshotter = snapshotter.as_cluster_uploader(Arc::new(role));
                snapshotter_role_task = Some(task);
            }
            Some(snapshotter.spawn(snapshot_shutdown.clone()))
        }
        _ => None,
    };
    let operator_task = match operator_cluster {
        Some(cluster) => Some(operator::spawn(
            cluster,
            store.clone(),
            runner.engine().clone(),
            &settings.operator,
            operator::schedule_controller::ScheduleSettings {
                min_interval_seconds: settings.export.schedule_min_interval_seconds,
                max_concurrent_runs: settings.export.max_concurrent_jobs,
                metrics: schedule_metrics,
                ..operator::schedule_controller::ScheduleSettings::default()
            },
            operator_metrics,
            operator_shutdown.clone(),
        )),
        None => {
            if shared_exports.is_none() {
                resume_exports_when_ready(&store, &runner);
            }
            None
        }
    };
    let shared_exports_task = shared_exports
        .as_ref()
        .map(|shared| shared.spawn(operator_shutdown.clone()));
    let scheduler_task = scheduler.as_ref().map(Scheduler::spawn);
    api::serve(listener, api::routes(state), tls, shutdown_signal()).await;
    reload_shutdown.cancel();
    for reloader in reloaders {
        let _ = reloader.await;
    }
    // No request is in flight any more: store the recorded reads before the store stops.
    audit_writer.shutdown().await;
    tracing::info!("shutting down: stopping exports, final commit");
    operator_shutdown.cancel();
    if let Some(task) = operator_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the operator task failed");
    }
    if let Some(scheduler) = &scheduler {
        scheduler.shutdown().await;
    }
    if let Some(task) = scheduler_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the export schedule task failed");
    }
    schedule_shutdown.cancel();
    if let Some(task) = scheduler_role_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the export scheduler role task failed");
    }
    if let Some(task) = shared_exports_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the cluster export task failed");
    }
    runner.shutdown().await;
    sweep_shutdown.cancel();
    if let Err(error) = sweep_task.await {
        tracing::error!(%error, "the retention sweep task failed");
    }
    if let Some(task) = sweeper_role_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the retention sweeper role task failed");
    }
    snapshot_shutdown.cancel();
    if let Some(task) = snapshot_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the snapshot task failed");
    }
    if let Some(task) = snapshotter_role_task
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the snapshotter role task failed");
    }
    checkpoint_shutdown.cancel();
    if let Err(error) = checkpoint_task.await {
        tracing::error!(%error, "the checkpoint task failed");
    }
    store.shutdown().await;
    // After the final commit: the last checkpoint covers every event stored before the stop.
    let written = checkpoints.checkpoint_now().await;
    tracing::info!(written, "final checkpoints written");
    Ok(())
}

/// The key that seals query cursors in the clustered mode: the configured
/// `[cluster] cursor_key_file`, shared by every replica so that a cursor from one continues on
/// another behind a load-balancing Service (docs/cluster.md). `None` embedded, where the data
/// directory's own `cursor.key` serves.
fn shared_cursor_codec(settings: &Settings) -> anyhow::Result<Option<CursorCodec>> {
    match &settings.cluster {
        None => Ok(None),
        Some(cluster) => {
            let Some(path) = &cluster.cursor_key_file else {
                anyhow::bail!(
                    "the clustered mode needs [cluster] cursor_key_file (--cursor-key-file, SCAIVAULT_AUDIT_CURSOR_KEY_FILE): \
                     one key file shared by every replica, so that a query cursor from one replica continues on another \
                     (create it with `openssl rand -hex 32`, docs/cluster.md)"
                );
            };
            Ok(Some(CursorCodec::from_key_file(path)?))
        }
    }
}

/// The embedded store, or (with `[cluster] nats_url`, `replicated` from [`join_cluster`]) one
/// replica following the JetStream log.
fn open_store(
    settings: &Settings,
    metrics: StoreMetrics,
    replicated: Option<Replicated>,
) -> anyhow::Result<Store> {
    Ok(match replicated {
        Some(replicated) => Store::open_replicated(&settings.store, metrics, replicated)?,
        None => Store::open(&settings.store, metrics)?,
    })
}

/// Connects this replica to the JetStream stream and, before its store opens, restores an
/// index snapshot when its data directory is empty or behind the stream's window
/// ([`rejoin`]); refuses to start, changing nothing, when records it never indexed are gone
/// and no snapshot covers them. Also returns the JetStream context coordination uses.
async fn join_cluster(
    settings: &Settings,
    cluster: &ClusterSettings,
    opener: Option<&DestinationOpener>,
    metrics: &SnapshotMetrics,
) -> anyhow::Result<(Replicated, async_nats::jetstream::Context)> {
    let (log, mut source) = scaivault_audit::cluster::connect(cluster).await?;
    let context = log.jetstream();
    tracing::info!(
        replica_id = %cluster.replica_id,
        stream = %cluster.stream,
        "clustered mode: ingest goes to the JetStream stream (docs/cluster.md)"
    );
    let window = source.window().await?;
    let snapshots = match opener {
        Some(opener) => SnapshotSource::Destination {
            opener,
            restore_on_start: settings.snapshots.restore_on_start,
        },
        None => SnapshotSource::NotConfigured,
    };
    rejoin(snapshots, &settings.store.data_dir, window, metrics)
        .await
        .with_context(|| {
            format!(
                "replica {} cannot join JetStream stream {}",
                cluster.replica_id, cluster.stream
            )
        })?;
    let replicated = Replicated {
        log: log.into_event_log(),
        source: Box::new(source),
        max_lag: cluster.max_lag_messages,
    };
    Ok((replicated, context))
}

/// Where the export schedules live and who runs them: standalone, the data directory's files
/// and this process; in the clustered mode outside Kubernetes, a JetStream key-value bucket
/// shared by the replicas and run by the holder of the scheduler role (docs/cluster.md
/// "Coordination"), whose task is returned.
async fn schedule_store(
    settings: &Settings,
    jetstream: Option<&async_nats::jetstream::Context>,
    leases: Option<&LeaseBucket>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(
    Arc<dyn ScheduleStore>,
    RoleLease,
    Option<tokio::task::JoinHandle<()>>,
)> {
    if let (Some(cluster), Some(context), Some(leases)) = (&settings.cluster, jetstream, leases) {
        let store = KvSchedules::open(context, &cluster.schedules_bucket, cluster.replicas)
            .await
            .context("failed to open the cluster's export schedules")?;
        let (role, task) = RoleLease::spawn(leases.clone(), SCHEDULER_ROLE, shutdown.clone());
        tracing::info!(
            bucket = %cluster.schedules_bucket,
            "export schedules are shared among the replicas (JetStream key-value)"
        );
        return Ok((Arc::new(store), role, Some(task)));
    }
    let files = ScheduleFiles::open(&settings.store.data_dir.join("exports").join("schedules"))?;
    Ok((Arc::new(files), RoleLease::always(SCHEDULER_ROLE), None))
}

/// Export jobs shared among the replicas through JetStream's key-value store (clustered mode
/// outside Kubernetes, docs/cluster.md "Coordination").
async fn cluster_exports(
    settings: &Settings,
    jetstream: Option<&async_nats::jetstream::Context>,
    leases: Option<&LeaseBucket>,
    engine: &ExportEngine,
) -> anyhow::Result<Option<ClusterExports>> {
    let (Some(cluster), Some(context), Some(leases)) = (&settings.cluster, jetstream, leases)
    else {
        return Ok(None);
    };
    let leases = leases.clone();
    let exports = ClusterExports::open(
        context,
        &ClusterExportSettings {
            bucket: cluster.exports_bucket.clone(),
            replicas: cluster.replicas,
            max_concurrent: settings.export.max_concurrent_jobs,
        },
        engine.clone(),
        leases,
    )
    .await?;
    tracing::info!(
        bucket = %cluster.exports_bucket,
        lease_ttl = ?cluster.lease_ttl,
        "export jobs are shared among the replicas (JetStream key-value)"
    );
    Ok(Some(exports))
}

/// Watches the TLS certificate and key, the tokens file and a JWKS file, and swaps a changed
/// version in without a restart ([`reload`]); a broken one keeps the previous in force.
fn watch_files(
    settings: &Settings,
    auth: &Authenticator,
    certificate: Option<&Arc<ReloadableCert>>,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(certificate) = certificate {
        let paths = certificate
            .files()
            .map(std::path::Path::to_path_buf)
            .to_vec();
        let certificate = Arc::clone(certificate);
        tasks.push(watch("TLS certificate and key", paths).spawn(
            shutdown.clone(),
            move |contents| {
                certificate
                    .replace(&contents[0], &contents[1])
                    .map_err(|error| error.to_string())
            },
        ));
    }
    if let Some(path) = &settings.tokens_file {
        let tokens = auth.static_tokens();
        tasks.push(watch("tokens file", vec![path.clone()]).spawn(
            shutdown.clone(),
            move |contents| {
                let text = std::str::from_utf8(&contents[0]).map_err(|error| error.to_string())?;
                *tokens.write() = StaticTokens::parse(text)?;
                Ok(())
            },
        ));
    }
    if let (Some(JwksSource::File(path)), Some(verifier)) = (&settings.jwks, auth.jwt()) {
        tasks.push(watch("JWKS file", vec![path.clone()]).spawn(
            shutdown.clone(),
            move |contents| {
                verifier
                    .replace_from_document(&contents[0])
                    .map_err(|error| error.to_string())
            },
        ));
    }
    tasks
}

/// A watch of `paths` starting from their current contents (what was just loaded).
fn watch(what: &'static str, paths: Vec<std::path::PathBuf>) -> reload::Watch {
    let current: Result<Vec<Vec<u8>>, _> = paths.iter().map(std::fs::read).collect();
    let watch = reload::Watch::new(what, paths);
    match current {
        Ok(contents) => watch.with_applied(&contents),
        Err(_) => watch,
    }
}

/// The in-process export runner over the data directory's job files.
fn export_runner(
    settings: &Settings,
    store: &Store,
    checkpoint_log: &Arc<CheckpointLog>,
    manifest_links: Arc<dyn ManifestLinkStore>,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<LocalRunner> {
    let export = &settings.export;
    let credentials = match (&export.scaivault_url, &export.scaivault_token_file) {
        (Some(url), Some(token_file)) => CredentialSource::ScaiVault(
            ScaiVaultClient::new(url, token_file.clone()).map_err(anyhow::Error::msg)?,
        ),
        _ => match &export.credentials_dir {
            Some(dir) => CredentialSource::Directory(dir.clone()),
            None => CredentialSource::Unconfigured,
        },
    };
    let exports_dir = settings.store.data_dir.join("exports");
    let engine = ExportEngine::new(
        store.clone(),
        credentials,
        EngineConfig {
            spool_dir: exports_dir.join("spool"),
            retry: RetryPolicy {
                max_elapsed: export.retry_max_elapsed,
                ..RetryPolicy::default()
            },
            endpoints: export.endpoints.clone(),
            policy: export_policy(settings)?,
        },
    )
    .with_integrity(Arc::new(ExportIntegrity {
        checkpoints: checkpoint_log.clone(),
        links: manifest_links,
    }))
    .with_metrics(ExportMetrics::register(registry));
    Ok(LocalRunner::open(
        engine,
        &exports_dir.join("jobs"),
        export.max_concurrent_jobs,
        RunnerMetrics::register(registry),
    )?)
}

/// Where the newest export manifest of each destination family is kept: beside the
/// checkpoints in the data directory, or in a cluster's key-value bucket so that manifests
/// chain across replicas (docs/cluster.md "Coordination").
async fn manifest_link_store(
    settings: &Settings,
    jetstream: Option<&async_nats::jetstream::Context>,
) -> anyhow::Result<Arc<dyn ManifestLinkStore>> {
    Ok(match (&settings.cluster, jetstream) {
        (Some(cluster), Some(context)) => Arc::new(
            KvManifestLinks::open(context, &cluster.manifest_links_bucket, cluster.replicas)
                .await
                .context("failed to open the cluster's manifest links")?,
        ),
        _ => Arc::new(ManifestLinks::open(&settings.integrity.dir)?),
    })
}

/// The export confinement rules, with the `file` root created and resolved. A configured root
/// that cannot be created stops the start; the standalone default only disables `file`.
fn export_policy(settings: &Settings) -> anyhow::Result<ExportPolicy> {
    let export = &settings.export;
    let prefixes = export.credentials_path_prefixes.clone();
    let Some(root) = &export.file_root else {
        tracing::info!("file export destinations are disabled ([export] file_root is not set)");
        return Ok(ExportPolicy::new(None, prefixes));
    };
    let default_root = settings
        .store
        .data_dir
        .parent()
        .map(|dir| dir.join("exports"));
    let resolved = std::fs::create_dir_all(root).and_then(|()| root.canonicalize());
    match resolved {
        Ok(root) => {
            tracing::info!(file_root = %root.display(), "file export destinations live under the file root");
            Ok(ExportPolicy::new(Some(root), prefixes))
        }
        Err(error) if default_root.as_deref() == Some(root.as_path()) => {
            tracing::warn!(
                file_root = %root.display(),
                %error,
                "the default file export root cannot be created: file destinations are disabled"
            );
            Ok(ExportPolicy::new(None, prefixes))
        }
        Err(error) => Err(anyhow::anyhow!(
            "export.file_root {} cannot be created: {error}",
            root.display()
        )),
    }
}

/// Resumes unfinished exports once the store has replayed its WAL (their snapshots must see
/// every acknowledged event).
fn resume_exports_when_ready(store: &Store, runner: &LocalRunner) {
    let store = store.clone();
    let runner = runner.clone();
    tokio::spawn(async move {
        if scaivault_audit::export::supervisor::wait_for_store(&store, "exports").await {
            runner.resume();
        }
    });
}

/// JWTs and/or static tokens when configured; otherwise the bootstrap token of the data
/// directory (the first standalone start).
async fn authenticator(
    settings: &Settings,
    cluster: Option<&operator::Cluster>,
) -> anyhow::Result<(Authenticator, Option<BootstrapToken>)> {
    let jwt = match &settings.jwks {
        Some(source) => Some(JwtVerifier::start(source.clone(), (&settings.jwt).into()).await?),
        None => None,
    };
    let token_review = match (&settings.token_review, cluster) {
        (Some(review), Some(cluster)) => {
            Some(TokenReviewer::new(cluster.client.clone(), review.into()))
        }
        _ => None,
    };
    if settings.tokens_file.is_some() || jwt.is_some() || token_review.is_some() {
        let tokens = match &settings.tokens_file {
            Some(path) => StaticTokens::load(path)?,
            None => StaticTokens::default(),
        };
        let authenticator = Authenticator::new(tokens, jwt);
        return Ok((
            match token_review {
                Some(reviewer) => authenticator.with_token_review(reviewer),
                None => authenticator,
            },
            None,
        ));
    }
    let bootstrap = BootstrapToken::load_or_create(&settings.store.data_dir)?;
    let mut tokens = StaticTokens::default();
    tokens.insert(&bootstrap.token, BootstrapToken::principal());
    Ok((Authenticator::new(tokens, None), Some(bootstrap)))
}

/// Prints where the service listens and where the bootstrap token is (stdout; JSON lines with
/// `LOG_FORMAT=json`). The token itself is never printed: logs are collected and kept where
/// tokens must not be.
fn announce(
    listener: &tokio::net::TcpListener,
    tls: bool,
    bootstrap: Option<&BootstrapToken>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Write;
    const TARGET: &str = "scaivault_audit::serve";
    let mut out = std::io::stdout().lock();
    let scheme = if tls { "https" } else { "http" };
    let address = listener.local_addr()?.to_string();
    let message = format!("listening on {scheme}://{address}");
    let fields = [("address", address.as_str()), ("scheme", scheme)];
    writeln!(
        out,
        "{}",
        telemetry::output_line("INFO", TARGET, &message, &fields)
    )?;
    if let Some(token) = bootstrap {
        let state = if token.created { "generated" } else { "kept" };
        let message = format!(
            "bootstrap token {state} in {}; print it with: scaivault-audit token bootstrap --data-dir {}",
            token.path.display(),
            data_dir.display()
        );
        writeln!(
            out,
            "{}",
            telemetry::output_line("INFO", TARGET, &message, &[])
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Under a file-size limit, writes should fail with EFBIG (answered 503), not kill the process.
fn ignore_file_size_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::from_raw(25)) {
        Ok(mut stream) => {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    tracing::warn!("file size limit reached (SIGXFSZ)");
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot handle SIGXFSZ"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}
