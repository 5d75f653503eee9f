//! The retention sweep: at a fixed interval (and once at start), every tenant not on legal
//! hold loses its events older than its retention (`[retention]`, docs/lifecycle.md).
//!
//! Per tenant, in this order:
//!
//! 1. the expired set is fixed: the tenant's committed events older than the cut-off with an
//!    ingest sequence number below the committed position (later arrivals are not touched);
//! 2. a `retention_sweep` event recording how many events go and the cut-off is stored in the
//!    tenant's trail through the normal durable ingest path (chained like any event), so no
//!    deletion ever happens without its record;
//! 3. the store's single writer records the chain anchors durably, deletes exactly that set and
//!    commits ([`crate::store::retention`]).
//!
//! With a cold tier (`[retention.cold_storage]`), step 1 is followed by an export of exactly
//! that set (the export engine, JSONL+gzip, signed manifest, the same tenant confinement as
//! every export) under `PREFIX<tenant_id>/<cut-off>-<bound>/`, and nothing happens next unless
//! it completed with the record count of the set: a failed cold export blocks the deletion,
//! counts in `retention_cold_export_failures_total`, logs an error, and the next sweep retries.
//!
//! A crash between 2 and 3 leaves the events in place and the record stored: the next sweep
//! (at the next start) deletes them and records its own event. Nothing kept is ever deleted:
//! the set is bounded by the cut-off and the sequence bound.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::config::retention::ColdStorage;
use crate::event::{Action, AuditEvent, IdentityType};
use crate::export::engine::{ExportEngine, ProgressReporter};
use crate::export::format::{Compression, ExportFormat};
use crate::export::job::{Checkpoint, DestinationType, ExportFailure, ExportSpec};
use crate::export::request::{DestinationRequest, ExportRequest};
use crate::store::retention::{self, Expiry};
use crate::store::{PreparedEvent, Store, WriteError};

/// The identity the sweep's events are recorded under.
pub const SWEEP_IDENTITY: &str = "system:retention";

/// Errors of one sweep (the next one retries).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("failed to read the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("failed to store the sweep's event or delete: {0}")]
    Write(#[from] WriteError),
    #[error("the sweep's index scan did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the cold-tier export of {tenant} failed, nothing was deleted: {message}")]
    Cold { tenant: String, message: String },
}

/// Metrics of the retention sweep.
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    /// Sweeps completed.
    pub sweeps: Counter,
    /// Sweeps that failed (the next one retries).
    pub failures: Counter,
    /// Events deleted because their retention passed.
    pub deleted: Counter,
    /// Cold-tier exports that failed (their events were not deleted).
    pub cold_failures: Counter,
    /// Events exported to the cold tier.
    pub cold_exported: Counter,
}

impl RetentionMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RetentionMetrics::default();
        registry.register(
            "retention_sweeps",
            "Retention sweeps completed",
            metrics.sweeps.clone(),
        );
        registry.register(
            "retention_sweep_failures",
            "Retention sweeps that failed (retried at the next interval)",
            metrics.failures.clone(),
        );
        registry.register(
            "retention_deleted_events",
            "Events deleted because their tenant's retention passed",
            metrics.deleted.clone(),
        );
        registry.register(
            "retention_cold_export_failures",
            "Cold-tier exports that failed; their events stay in the hot store until one succeeds",
            metrics.cold_failures.clone(),
        );
        registry.register(
            "retention_cold_exported_events",
            "Events exported to the cold tier before their deletion",
            metrics.cold_exported.clone(),
        );
        metrics
    }
}

/// What one tenant's part of a sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSweep {
    pub tenant: String,
    pub cutoff_us: i64,
    pub removed: u64,
}

/// The cold tier: where the export engine writes expiring events before they are deleted.
#[derive(Clone)]
pub struct ColdTier {
    engine: ExportEngine,
    storage: ColdStorage,
}

impl ColdTier {
    /// The cold tier of `storage`, written by `engine`. Fails when the destination is not a
    /// valid export destination; the tenant confinement (`[export]` policy) is checked before
    /// every export, per tenant, as for any export.
    pub fn new(engine: ExportEngine, storage: ColdStorage) -> Result<ColdTier, String> {
        let tier = ColdTier { engine, storage };
        let sample = Expiry {
            tenant: "tnt_check".into(),
            cutoff_us: 1,
            seq_bound: 0,
        };
        tier.spec(&sample, 0)?;
        Ok(tier)
    }

    /// The export of `expiry`'s events (from `oldest_us`).
    fn spec(&self, expiry: &Expiry, oldest_us: i64) -> Result<ExportSpec, String> {
        let stamp = crate::timestamp::format_micros(expiry.cutoff_us).replace(':', "");
        let destination = DestinationRequest {
            kind: DestinationType::parse(&self.storage.kind),
            bucket: self.storage.bucket.clone(),
            prefix: format!(
                "{}{}/{stamp}-{}/",
                self.storage.prefix, expiry.tenant, expiry.seq_bound
            ),
            credentials_path: self.storage.credentials_path.clone(),
            problems: Default::default(),
        };
        let request = ExportRequest {
            tenant_id: expiry.tenant.clone(),
            from: Some(crate::timestamp::format_micros(oldest_us)),
            to: Some(crate::timestamp::format_micros(expiry.cutoff_us)),
            format: Some(ExportFormat::Jsonl),
            compression: Some(Compression::Gzip),
            destination: Some(destination),
            ..ExportRequest::default()
        };
        request.validate().map_err(|errors| {
            let problems: Vec<String> = errors
                .0
                .iter()
                .map(|(field, problem)| format!("{field} {problem}"))
                .collect();
            format!(
                "[retention.cold_storage] is not a valid destination: {}",
                problems.join("; ")
            )
        })
    }

    /// Exports `expiry`'s `count` events and checks the manifest's record count.
    async fn export(&self, expiry: &Expiry, oldest_us: i64, count: u64) -> Result<(), String> {
        let spec = self.spec(expiry, oldest_us)?;
        let export_id = format!(
            "cold_{}_{}_{}",
            expiry.tenant, expiry.cutoff_us, expiry.seq_bound
        );
        let checkpoint = Checkpoint::start(expiry.seq_bound);
        let cancel = CancellationToken::new();
        let outcome = self
            .engine
            .run(&export_id, &spec, checkpoint, &NoProgress, &cancel)
            .await
            .map_err(|failure| failure.to_string())?;
        if outcome.record_count != count {
            return Err(format!(
                "the manifest counts {} records, the sweep expected {count}",
                outcome.record_count
            ));
        }
        Ok(())
    }
}

/// Cold exports are not resumed part by part: a failed one is run again whole.
struct NoProgress;

#[async_trait::async_trait]
impl ProgressReporter for NoProgress {
    async fn checkpoint(&self, _checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        Ok(())
    }
}

/// How the sweep is shared among the replicas of a cluster (docs/cluster.md): one replica,
/// the holder of the sweeper role, decides each expiry, exports the cold tier and records the
/// sweep's event; it then publishes the expiry, and every other replica deletes exactly that
/// set from its own index (the same set everywhere: the replicas assign the same sequence
/// numbers). Embedded, there is no coordination and the one process does it all.
#[async_trait::async_trait]
pub trait SweepCoordination: Send + Sync {
    /// Whether this replica is the sweeper now.
    fn is_sweeper(&self) -> bool;
    /// Fencing right before a sweep's event is recorded: still the sweeper.
    async fn confirm(&self) -> bool;
    /// Publishes `expiry` (its event is stored, its set deleted here) for the other replicas.
    async fn publish(&self, expiry: &Expiry) -> Result<(), String>;
    /// The newest expiry the sweeper published per tenant.
    async fn published(&self) -> Result<Vec<Expiry>, String>;
}

/// Runs sweeps over one store.
#[derive(Clone)]
pub struct Sweeper {
    store: Store,
    settings: Arc<RetentionSettings>,
    metrics: RetentionMetrics,
    cold: Option<ColdTier>,
    coordination: Option<Arc<dyn SweepCoordination>>,
    /// The published expiries this replica applied, per tenant (a follower applies each once).
    applied: Arc<parking_lot::Mutex<std::collections::HashMap<String, Expiry>>>,
}

impl Sweeper {
    pub fn new(store: Store, settings: Arc<RetentionSettings>, metrics: RetentionMetrics) -> Self {
        Sweeper {
            store,
            settings,
            metrics,
            cold: None,
            coordination: None,
            applied: Arc::default(),
        }
    }

    /// The sweeper of one replica in a cluster: it sweeps while it holds the role, and
    /// otherwise applies the expiries the role's holder published.
    pub fn with_coordination(mut self, coordination: Arc<dyn SweepCoordination>) -> Self {
        self.coordination = Some(coordination);
        self
    }

    /// One round: a sweep on the sweeper (the only process, embedded), else the published
    /// expiries applied.
    pub async fn round(&self, now_us: i64) -> Result<(), SweepError> {
        match &self.coordination {
            Some(coordination) if !coordination.is_sweeper() => {
                self.follow(coordination.as_ref()).await
            }
            _ => self.sweep(now_us).await.map(|_| ()),
        }
    }

    /// Applies every published expiry not applied here yet whose sweep event this replica has
    /// indexed (everything below its bound is then indexed too).
    async fn follow(&self, coordination: &dyn SweepCoordination) -> Result<(), SweepError> {
        let published = match coordination.published().await {
            Ok(published) => published,
            Err(message) => {
                tracing::warn!(%message, "cannot read the published retention sweeps; retrying at the next interval");
                return Ok(());
            }
        };
        for expiry in published {
            let done = self.applied.lock().get(&expiry.tenant) == Some(&expiry);
            if done || expiry.seq_bound > self.store.committed_seq() {
                continue;
            }
            let removed = self.store.expire(expiry.clone()).await?;
            self.metrics.deleted.inc_by(removed);
            if removed > 0 {
                tracing::info!(tenant = %expiry.tenant, removed, cutoff = %crate::timestamp::format_micros(expiry.cutoff_us), "expired events removed as the sweeper recorded");
            }
            self.applied.lock().insert(expiry.tenant.clone(), expiry);
        }
        self.metrics.sweeps.inc();
        Ok(())
    }

    /// The sweeper exporting expiring events to `cold` before deleting them.
    pub fn with_cold_tier(mut self, cold: ColdTier) -> Self {
        self.cold = Some(cold);
        self
    }

    /// Sweeps once as of `now_us`; returns the tenants that lost events.
    pub async fn sweep(&self, now_us: i64) -> Result<Vec<TenantSweep>, SweepError> {
        let store = self.store.clone();
        let tenants = tokio::task::spawn_blocking(move || {
            retention::tenants(&store.searcher(), store.fields())
        })
        .await??;
        let mut swept = Vec::new();
        let mut failed = None;
        for tenant in tenants {
            let policy = self.settings.for_tenant(&tenant);
            let Some(cutoff_us) = policy.cutoff_us(now_us) else {
                continue;
            };
            let expiry = Expiry {
                tenant,
                cutoff_us,
                seq_bound: self.store.committed_seq(),
            };
            let removed = match self.expire(expiry.clone(), policy.days, now_us).await {
                Ok(removed) => removed,
                // One tenant's failed cold export does not hold back the others.
                Err(error @ SweepError::Cold { .. }) => {
                    failed = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            if removed > 0 {
                self.metrics.deleted.inc_by(removed);
                swept.push(TenantSweep {
                    tenant: expiry.tenant,
                    cutoff_us,
                    removed,
                });
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        self.metrics.sweeps.inc();
        Ok(swept)
    }

    /// Counts `expiry`'s set, records the sweep's event, then deletes the set.
    async fn expire(&self, expiry: Expiry, days: u32, now_us: i64) -> Result<u64, SweepError> {
        let store = self.store.clone();
        let planned = expiry.clone();
        let (count, oldest_us) = tokio::task::spawn_blocking(move || {
            // The searcher is taken after the bound was read: it holds every event below it.
            retention::expired_set(&store.searcher(), store.fields(), &planned)
                .map(|set| (set.docs.len() as u64, set.oldest_us))
        })
        .await??;
        let (true, Some(oldest_us)) = (count > 0, oldest_us) else {
            return Ok(0);
        };
        if let Some(cold) = &self.cold {
            if let Err(message) = cold.export(&expiry, oldest_us, count).await {
                self.metrics.cold_failures.inc();
                tracing::error!(tenant = %expiry.tenant, count, %message, "cold-tier export failed: expired events are kept in the hot store until it succeeds");
                return Err(SweepError::Cold {
                    tenant: expiry.tenant,
                    message,
                });
            }
            self.metrics.cold_exported.inc_by(count);
        }
        if let Some(coordination) = &self.coordination
            && !coordination.confirm().await
        {
            tracing::info!(tenant = %expiry.tenant, "no longer the sweeper: nothing recorded, nothing deleted");
            return Ok(0);
        }
        let event = sweep_event(&expiry, count, days, now_us);
        self.store
            .ingest(vec![PreparedEvent::new(event, true)])
            .await?;
        let removed = self.store.expire(expiry.clone()).await?;
        if let Some(coordination) = &self.coordination
            && let Err(message) = coordination.publish(&expiry).await
        {
            // The other replicas keep the set until the next sweep publishes a later expiry.
            tracing::warn!(tenant = %expiry.tenant, %message, "the sweep could not be published to the other replicas");
        }
        if removed != count {
            tracing::warn!(tenant = %expiry.tenant, count, removed, "a retention sweep removed another number of events than it recorded");
        }
        tracing::info!(
            tenant = %expiry.tenant,
            removed,
            cutoff = %crate::timestamp::format_micros(expiry.cutoff_us),
            "expired events removed"
        );
        Ok(removed)
    }

    /// Sweeps once the store is ready, then every interval, until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            if self
                .store
                .wait_ready(Duration::from_secs(u64::MAX >> 20))
                .await
                .is_err()
            {
                return;
            }
            let mut ticks = tokio::time::interval(self.settings.sweep_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = self.round(crate::timestamp::now_micros()).await {
                    self.metrics.failures.inc();
                    tracing::error!(%error, "retention sweep failed; the next one retries");
                }
            }
        })
    }
}

/// The `retention_sweep` event of `expiry`. Its id is derived from the expiry, so a sweep
/// repeated after a crash with the same set is not recorded twice.
fn sweep_event(expiry: &Expiry, removed: u64, days: u32, now_us: i64) -> AuditEvent {
    let mut extra = Map::new();
    extra.insert("removed".into(), Value::from(removed));
    extra.insert(
        "cutoff".into(),
        Value::from(crate::timestamp::format_micros(expiry.cutoff_us)),
    );
    extra.insert("retention_days".into(), Value::from(days));
    AuditEvent {
        id: format!("retention_sweep:{}:{}", expiry.cutoff_us, expiry.seq_bound),
        tenant_id: expiry.tenant.clone(),
        timestamp_us: now_us,
        action: Action::RetentionSweep,
        secret_path: None,
        identity_type: IdentityType::System,
        identity_id: SWEEP_IDENTITY.to_owned(),
        source_ip: None,
        user_agent: None,
        success: true,
        duration_ms: None,
        request_id: None,
        extra_data: extra,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::store::{StoreConfig, StoreMetrics};

    /// Coordination between stores of one test: who is the sweeper, and what was published.
    struct Shared {
        sweeper: AtomicBool,
        published: Arc<parking_lot::Mutex<Vec<Expiry>>>,
    }

    #[async_trait::async_trait]
    impl SweepCoordination for Shared {
        fn is_sweeper(&self) -> bool {
            self.sweeper.load(Ordering::SeqCst)
        }

        async fn confirm(&self) -> bool {
            self.is_sweeper()
        }

        async fn publish(&self, expiry: &Expiry) -> Result<(), String> {
            let mut published = self.published.lock();
            published.retain(|old| old.tenant != expiry.tenant);
            published.push(expiry.clone());
            Ok(())
        }

        async fn published(&self) -> Result<Vec<Expiry>, String> {
            Ok(self.published.lock().clone())
        }
    }

    fn old_event(n: u64) -> PreparedEvent {
        PreparedEvent::new(
            AuditEvent {
                id: format!("evt_{n}"),
                tenant_id: "tnt_a".into(),
                timestamp_us: n as i64,
                action: Action::Read,
                secret_path: Some("apps/a".into()),
                identity_type: IdentityType::User,
                identity_id: "user:a".into(),
                source_ip: None,
                user_agent: None,
                success: true,
                duration_ms: None,
                request_id: None,
                extra_data: Map::new(),
            },
            true,
        )
    }

    async fn replica(
        dir: &std::path::Path,
        sweeper: bool,
        published: &Arc<parking_lot::Mutex<Vec<Expiry>>>,
    ) -> (Store, Sweeper) {
        let store = Store::open(
            &StoreConfig::with_data_dir(dir),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        let coordination = Arc::new(Shared {
            sweeper: AtomicBool::new(sweeper),
            published: published.clone(),
        });
        let sweeper = Sweeper::new(
            store.clone(),
            Arc::new(RetentionSettings::default()),
            RetentionMetrics::default(),
        )
        .with_coordination(coordination);
        (store, sweeper)
    }

    async fn ingest(store: &Store, range: std::ops::Range<u64>) {
        store.ingest(range.map(old_event).collect()).await.unwrap();
        store.flush().await.unwrap();
    }

    /// `retention_sweep` events and all events in `store`.
    fn counts(store: &Store) -> (usize, u64) {
        let searcher = store.searcher();
        let query = tantivy::query::TermQuery::new(
            tantivy::Term::from_field_u64(store.fields().action, Action::RetentionSweep.ordinal()),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let recorded = searcher.search(&query, &tantivy::collector::Count).unwrap();
        (recorded, searcher.num_docs())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_replica_records_the_sweep_and_the_others_delete_the_same_set() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let published = Arc::default();
        let (store_a, sweeper_a) = replica(dir_a.path(), true, &published).await;
        let (store_b, sweeper_b) = replica(dir_b.path(), false, &published).await;
        // The same events in the same order on both (what the replicated log gives them), but
        // b has only indexed half of them yet.
        ingest(&store_a, 0..100).await;
        ingest(&store_b, 0..50).await;
        let now = crate::timestamp::now_micros();

        // b follows: nothing published yet, nothing deleted, nothing recorded.
        sweeper_b.round(now).await.unwrap();
        assert_eq!(counts(&store_b), (0, 50));
        // a sweeps: one event recorded, the set deleted, the expiry published.
        sweeper_a.round(now).await.unwrap();
        assert_eq!(counts(&store_a), (1, 1));
        assert_eq!(published.lock().len(), 1);
        // b has not indexed everything below the bound: it waits.
        sweeper_b.round(now).await.unwrap();
        assert_eq!(counts(&store_b), (0, 50));
        // Caught up, b deletes exactly the published set, records nothing, and does it once.
        ingest(&store_b, 50..100).await;
        sweeper_b.round(now).await.unwrap();
        assert_eq!(counts(&store_b), (0, 0));
        ingest(&store_b, 100..110).await;
        sweeper_b.round(now).await.unwrap();
        assert_eq!(
            counts(&store_b),
            (0, 10),
            "a later arrival is not in the set"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_sweeper_that_lost_its_role_records_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let published = Arc::default();
        let store = Store::open(
            &StoreConfig::with_data_dir(dir.path()),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        ingest(&store, 0..20).await;
        // `is_sweeper` said yes when the round started, `confirm` says no before the event.
        struct Lapsed(Arc<parking_lot::Mutex<Vec<Expiry>>>);
        #[async_trait::async_trait]
        impl SweepCoordination for Lapsed {
            fn is_sweeper(&self) -> bool {
                true
            }
            async fn confirm(&self) -> bool {
                false
            }
            async fn publish(&self, expiry: &Expiry) -> Result<(), String> {
                self.0.lock().push(expiry.clone());
                Ok(())
            }
            async fn published(&self) -> Result<Vec<Expiry>, String> {
                Ok(Vec::new())
            }
        }
        let sweeper = Sweeper::new(
            store.clone(),
            Arc::new(RetentionSettings::default()),
            RetentionMetrics::default(),
        )
        .with_coordination(Arc::new(Lapsed(Arc::clone(&published))));
        sweeper.round(crate::timestamp::now_micros()).await.unwrap();
        assert_eq!(counts(&store), (0, 20));
        assert!(published.lock().is_empty());
    }
}
