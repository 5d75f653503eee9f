//! Export schedules shared among the replicas of a cluster outside Kubernetes (docs/cluster.md,
//! "Coordination"): the schedule records live in a JetStream key-value bucket
//! ([`KvSchedules`], one key per schedule id), and the one
//! [`crate::export::schedule::scheduler::Scheduler`] of the standalone mode runs them on the
//! replica that holds the role lease `role.export_scheduler` ([`SCHEDULER_ROLE`]).
//!
//! ```text
//! POST/GET/DELETE on any replica ─▶ the bucket (create; GET reads the key; list: the watch)
//! every replica: a watch of the bucket keeps its view current (a deletion stops a run)
//! the role holder: due schedules run as standalone; every record write is a compare-and-set
//!     on the record's revision, made only while the role is held; the role is confirmed
//!     right before each run's manifest
//! holder dies ─▶ the role lapses after one TTL ─▶ another replica takes it, reloads the
//!     records and resumes the current run from its checkpoint (same window, snapshot, export id)
//! ```
//!
//! **Why one role rather than a lease per schedule** (as export jobs have): the scheduler's
//! state is one loop over all schedules sharing one concurrency limit, and its runs are short
//! and periodic; one role keeps that loop whole and unchanged (a second, per-schedule scheduler
//! would duplicate it), costs one lease renewal instead of one per schedule, and moves every
//! schedule of a dead replica at once. Per-schedule leases would only spread the runs over the
//! replicas, which the periodic runs of a tenant's trail do not need.
//!
//! Exactly once across a takeover: a run's window, snapshot and export id are recorded before
//! anything is written, the new holder resumes the run only once its index holds the run's
//! snapshot (every replica assigns the same sequence numbers), and the engine resumes as after
//! a restart (parts after the last checkpointed one, a part uploaded but not checkpointed
//! written again under the same key with the same records, a manifest already written
//! completing the run without another write). A new run's snapshot is never older than the
//! previous run's, so the late sets of consecutive runs never overlap.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::export::schedule::ScheduleRecord;
use crate::export::schedule::store::{Change, ScheduleStore, StoreError, Stored};

/// The role's name (lease key `role.export_scheduler`).
pub const SCHEDULER_ROLE: &str = "export_scheduler";
/// How long one key-value request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest value of the schedules bucket.
const MAX_VALUE_BYTES: i32 = 1 << 20;
/// Largest schedule record this service writes (the current run's checkpoint lists its parts),
/// below NATS' default `max_payload` of 1 MB.
const MAX_RECORD_BYTES: usize = 768 << 10;

/// Failure opening the schedules bucket.
#[derive(Debug, thiserror::Error)]
#[error("JetStream key-value bucket {bucket}: {message}")]
pub struct SchedulesBucketError {
    bucket: String,
    message: String,
}

/// The schedules bucket: one key per schedule id, its value the record (spec and state) as
/// JSON.
#[derive(Clone)]
pub struct KvSchedules {
    kv: kv::Store,
}

impl KvSchedules {
    /// Opens the bucket `bucket`, creating it (file storage, `replicas` replicas, one value per
    /// key) if missing.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<KvSchedules, SchedulesBucketError> {
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "scaivault-audit export schedules".into(),
            history: 1,
            max_value_size: MAX_VALUE_BYTES,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = super::kv::open_or_create(context, config)
            .await
            .map_err(|message| SchedulesBucketError {
                bucket: bucket.to_string(),
                message,
            })?;
        Ok(KvSchedules { kv })
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

async fn timed<T, E: std::error::Error>(
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, StoreError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| unavailable("the schedules bucket did not answer in time"))
}

fn encode(record: &ScheduleRecord) -> Result<Bytes, StoreError> {
    let body = serde_json::to_vec(record).map_err(unavailable)?;
    if body.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge {
            schedule_id: record.spec.schedule_id.clone(),
            size: body.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(Bytes::from(body))
}

/// The change an entry of the bucket is; `None` for a value that does not decode (logged).
fn change_of(entry: &kv::Entry) -> Option<Change> {
    if entry.operation != kv::Operation::Put {
        return Some(Change::Removed {
            schedule_id: entry.key.clone(),
            revision: entry.revision,
        });
    }
    match serde_json::from_slice::<ScheduleRecord>(&entry.value) {
        Ok(record) if record.spec.schedule_id == entry.key => Some(Change::Put(Stored {
            record,
            revision: entry.revision,
        })),
        Ok(_) | Err(_) => {
            tracing::error!(key = %entry.key, "an export schedule record does not decode; ignored");
            None
        }
    }
}

#[async_trait]
impl ScheduleStore for KvSchedules {
    fn is_shared(&self) -> bool {
        true
    }

    async fn load_all(&self) -> Result<Vec<Stored>, StoreError> {
        let read = async {
            let mut keys = self
                .kv
                .keys()
                .await
                .map_err(|error| unavailable(super::describe(&error)))?;
            let mut ids = Vec::new();
            while let Some(key) = keys.next().await {
                ids.push(key.map_err(|error| unavailable(super::describe(&error)))?);
            }
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(stored) = self.read(&id).await? {
                    found.push(stored);
                }
            }
            Ok::<_, StoreError>(found)
        };
        tokio::time::timeout(REQUEST_TIMEOUT * 6, read)
            .await
            .map_err(|_| unavailable("the schedules bucket did not answer in time"))?
    }

    async fn read(&self, schedule_id: &str) -> Result<Option<Stored>, StoreError> {
        if !crate::export::schedule::is_schedule_id(schedule_id) {
            return Ok(None);
        }
        let entry = timed(self.kv.entry(schedule_id))
            .await?
            .map_err(|error| unavailable(super::describe(&error)))?;
        Ok(match entry.as_ref().and_then(change_of) {
            Some(Change::Put(stored)) => Some(stored),
            _ => None,
        })
    }

    async fn create(&self, record: &ScheduleRecord) -> Result<u64, StoreError> {
        let body = encode(record)?;
        timed(self.kv.create(&record.spec.schedule_id, body))
            .await?
            .map_err(|error| unavailable(super::describe(&error)))
    }

    async fn update(&self, record: &ScheduleRecord, revision: u64) -> Result<u64, StoreError> {
        let schedule_id = &record.spec.schedule_id;
        let body = encode(record)?;
        match timed(self.kv.update(schedule_id, body, revision)).await? {
            Ok(revision) => Ok(revision),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict {
                    schedule_id: schedule_id.clone(),
                })
            }
            Err(error) => Err(unavailable(super::describe(&error))),
        }
    }

    async fn remove(&self, schedule_id: &str) -> Result<(), StoreError> {
        timed(self.kv.delete(schedule_id))
            .await?
            .map_err(|error| unavailable(super::describe(&error)))
    }

    async fn watch(
        &self,
    ) -> Result<Option<BoxStream<'static, Result<Change, StoreError>>>, StoreError> {
        let watch = timed(self.kv.watch_with_history(">"))
            .await?
            .map_err(|error| unavailable(super::describe(&error)))?;
        let changes = watch.filter_map(|entry| async move {
            match entry {
                Ok(entry) => change_of(&entry).map(Ok),
                Err(error) => Some(Err(unavailable(super::describe(&error)))),
            }
        });
        Ok(Some(changes.boxed()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::export::schedule::{new_schedule_id, spec_from_body};

    fn record() -> ScheduleRecord {
        let body = serde_json::json!({"schedule": "* * * * *", "format": "jsonl",
            "destination": {"type": "file", "bucket": "out"}});
        let spec = spec_from_body(&body, "tnt_acme", new_schedule_id(), "sa:ci", 1, 0).unwrap();
        ScheduleRecord::new(spec, 0).unwrap()
    }

    async fn next(changes: &mut BoxStream<'static, Result<Change, StoreError>>) -> Change {
        tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change within 5 s")
            .expect("the watch goes on")
            .unwrap()
    }

    #[tokio::test]
    #[ignore = "needs scripts/cluster.sh"]
    async fn a_write_expects_the_revision_it_read_and_every_replica_sees_the_changes() {
        let nats = crate::cluster::lease::tests::nats().await;
        let context = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let a = KvSchedules::open(&context, "SCHEDULES_TEST", 1)
            .await
            .unwrap();
        let b = KvSchedules::open(&context, "SCHEDULES_TEST", 1)
            .await
            .unwrap();
        let mut changes = b.watch().await.unwrap().expect("a shared store is watched");
        let created = record();
        let id = created.spec.schedule_id.clone();
        let first = a.create(&created).await.unwrap();
        let stored = |record: &ScheduleRecord, revision| Stored {
            record: record.clone(),
            revision,
        };
        assert_eq!(b.read(&id).await.unwrap(), Some(stored(&created, first)));

        // Two writers from the same revision: the first wins, the stale one is refused and
        // changes nothing.
        let mut ran = created.clone();
        ran.state.runs_completed = 1;
        let second = a.update(&ran, first).await.unwrap();
        let mut stale = created.clone();
        stale.state.runs_completed = 7;
        assert!(matches!(
            b.update(&stale, first).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(b.read(&id).await.unwrap(), Some(stored(&ran, second)));
        assert_eq!(b.load_all().await.unwrap(), [stored(&ran, second)]);
        assert_eq!(
            next(&mut changes).await,
            Change::Put(stored(&created, first))
        );
        assert_eq!(next(&mut changes).await, Change::Put(stored(&ran, second)));

        // A removal: gone for every reader, later writes refused, the watch tells it.
        b.remove(&id).await.unwrap();
        assert_eq!(a.read(&id).await.unwrap(), None);
        assert!(a.load_all().await.unwrap().is_empty());
        assert!(matches!(
            a.update(&ran, second).await,
            Err(StoreError::Conflict { .. })
        ));
        match next(&mut changes).await {
            Change::Removed {
                schedule_id,
                revision,
            } => assert!(schedule_id == id && revision > second),
            other => panic!("{other:?}"),
        }
        // A watch opened later starts with the current state of every key.
        let mut later = a.watch().await.unwrap().unwrap();
        assert!(matches!(next(&mut later).await, Change::Removed { .. }));

        // A record larger than the store keeps is refused before it is sent.
        let mut large = record();
        large.spec.created_by = "x".repeat(MAX_RECORD_BYTES);
        assert!(matches!(
            a.create(&large).await,
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(a.read("not-a-schedule").await.unwrap(), None);
    }
}
