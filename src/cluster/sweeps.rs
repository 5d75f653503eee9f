//! The retention sweep shared among the replicas of a cluster ([`SweepCoordination`]): the
//! holder of the role lease `role.retention_sweeper` sweeps (decides each tenant's expiry,
//! exports the cold tier, records the one `retention_sweep` event) and publishes each expiry in
//! a key-value bucket, one key per tenant; every other replica deletes exactly the published
//! sets from its own index once it has indexed the sweep's event. A tenant's trail shows one
//! `retention_sweep` event per sweep, whatever the number of replicas.
//!
//! A later expiry of a tenant covers every earlier one (a later cut-off and a higher sequence
//! bound), so a replica that missed one (it was down) loses nothing by seeing only the newest.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::lease::RoleLease;
use crate::retention::SweepCoordination;
use crate::store::retention::Expiry;

/// The role's name (lease key `role.retention_sweeper`).
pub const SWEEPER_ROLE: &str = "retention_sweeper";
/// How long one key-value request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An expiry as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Published {
    tenant: String,
    cutoff_us: i64,
    seq_bound: u64,
}

/// The sweeper role and the bucket of published expiries.
pub struct KvSweeps {
    role: RoleLease,
    kv: kv::Store,
}

impl KvSweeps {
    /// Opens (creating if missing) the bucket `bucket` of published expiries.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        role: RoleLease,
    ) -> Result<KvSweeps, String> {
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "scaivault-audit: the newest retention expiry per tenant".into(),
            history: 1,
            max_value_size: 4096,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = super::kv::open_or_create(context, config)
            .await
            .map_err(|message| format!("JetStream key-value bucket {bucket}: {message}"))?;
        Ok(KvSweeps { role, kv })
    }
}

/// The key of a tenant's expiry (tenant ids are hex-encoded: any byte is safe).
fn key_of(tenant: &str) -> String {
    format!("retention.{}", hex::encode(tenant))
}

#[async_trait]
impl SweepCoordination for KvSweeps {
    fn is_sweeper(&self) -> bool {
        self.role.is_held()
    }

    async fn confirm(&self) -> bool {
        self.role.confirm().await
    }

    async fn publish(&self, expiry: &Expiry) -> Result<(), String> {
        let value = Published {
            tenant: expiry.tenant.clone(),
            cutoff_us: expiry.cutoff_us,
            seq_bound: expiry.seq_bound,
        };
        let body = Bytes::from(serde_json::to_vec(&value).map_err(|error| error.to_string())?);
        let put = self.kv.put(key_of(&expiry.tenant), body);
        match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(super::describe(&error)),
            Err(_) => Err("no answer in time".into()),
        }
    }

    async fn published(&self) -> Result<Vec<Expiry>, String> {
        let read = async {
            let mut keys = self
                .kv
                .keys()
                .await
                .map_err(|error| super::describe(&error))?;
            let mut found = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|error| super::describe(&error))?;
                let Some(value) = self
                    .kv
                    .get(key.as_str())
                    .await
                    .map_err(|error| super::describe(&error))?
                else {
                    continue;
                };
                match serde_json::from_slice::<Published>(&value) {
                    Ok(value) if key == key_of(&value.tenant) => found.push(Expiry {
                        tenant: value.tenant,
                        cutoff_us: value.cutoff_us,
                        seq_bound: value.seq_bound,
                    }),
                    _ => {
                        tracing::warn!(%key, "a published retention expiry does not decode; ignored")
                    }
                }
            }
            Ok::<_, String>(found)
        };
        tokio::time::timeout(REQUEST_TIMEOUT * 6, read)
            .await
            .map_err(|_| "no answer in time".to_string())?
    }
}
