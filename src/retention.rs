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
use crate::event::{Action, AuditEvent, IdentityType};
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

/// Runs sweeps over one store.
#[derive(Clone)]
pub struct Sweeper {
    store: Store,
    settings: Arc<RetentionSettings>,
    metrics: RetentionMetrics,
}

impl Sweeper {
    pub fn new(store: Store, settings: Arc<RetentionSettings>, metrics: RetentionMetrics) -> Self {
        Sweeper {
            store,
            settings,
            metrics,
        }
    }

    /// Sweeps once as of `now_us`; returns the tenants that lost events.
    pub async fn sweep(&self, now_us: i64) -> Result<Vec<TenantSweep>, SweepError> {
        let store = self.store.clone();
        let tenants = tokio::task::spawn_blocking(move || {
            retention::tenants(&store.searcher(), store.fields())
        })
        .await??;
        let mut swept = Vec::new();
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
            let removed = self.expire(expiry.clone(), policy.days, now_us).await?;
            if removed > 0 {
                self.metrics.deleted.inc_by(removed);
                swept.push(TenantSweep {
                    tenant: expiry.tenant,
                    cutoff_us,
                    removed,
                });
            }
        }
        self.metrics.sweeps.inc();
        Ok(swept)
    }

    /// Counts `expiry`'s set, records the sweep's event, then deletes the set.
    async fn expire(&self, expiry: Expiry, days: u32, now_us: i64) -> Result<u64, SweepError> {
        let store = self.store.clone();
        let planned = expiry.clone();
        let count = tokio::task::spawn_blocking(move || {
            // The searcher is taken after the bound was read: it holds every event below it.
            retention::expired_set(&store.searcher(), store.fields(), &planned)
                .map(|set| set.docs.len() as u64)
        })
        .await??;
        if count == 0 {
            return Ok(0);
        }
        let event = sweep_event(&expiry, count, days, now_us);
        self.store
            .ingest(vec![PreparedEvent::new(event, true)])
            .await?;
        let removed = self.store.expire(expiry.clone()).await?;
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
                if let Err(error) = self.sweep(crate::timestamp::now_micros()).await {
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
