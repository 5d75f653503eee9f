//! Where the schedules are kept, behind one interface ([`ScheduleStore`]) with two
//! implementations, so that one [`super::scheduler::Scheduler`] runs them in both modes:
//!
//! - [`ScheduleFiles`]: the data directory of a standalone process (the only writer);
//! - `crate::cluster::schedules::KvSchedules`: a JetStream key-value bucket shared by the
//!   replicas of a cluster outside Kubernetes (docs/cluster.md "Coordination").
//!
//! Every record carries its store revision. A write names the revision it changes and is
//! refused with [`StoreError::Conflict`] when the record was written since (in the bucket that
//! is JetStream's compare-and-set; the files have a single writer and ignore it), so a runner
//! that lost its role cannot overwrite newer state.

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::ScheduleRecord;
use super::files::{FilesError, ScheduleFiles};

/// A schedule and the store revision it was read or written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: ScheduleRecord,
    pub revision: u64,
}

/// A change another process made to the store.
// One short-lived message per change, moved once through a channel: boxing the record buys
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Stored),
    Removed { schedule_id: String, revision: u64 },
}

/// Why the store did not answer or refused a write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The record was written since the revision the write expected.
    #[error("export schedule {schedule_id} was changed elsewhere")]
    Conflict { schedule_id: String },
    /// The record is larger than the store keeps.
    #[error("export schedule {schedule_id} is too large to record ({size} bytes, at most {limit})")]
    TooLarge {
        schedule_id: String,
        size: usize,
        limit: usize,
    },
    /// The shared store cannot be reached (no quorum, NATS unreachable, timeout).
    #[error("export schedules unavailable: {0}")]
    Unavailable(String),
}

/// Where the schedules are kept.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Whether other processes write the store too (then reads go to the store, and
    /// [`ScheduleStore::watch`] follows their changes).
    fn is_shared(&self) -> bool;

    /// Every schedule now, by id.
    async fn load_all(&self) -> Result<Vec<Stored>, StoreError>;

    /// The schedule `schedule_id` as stored now.
    async fn read(&self, schedule_id: &str) -> Result<Option<Stored>, StoreError>;

    /// Records a new schedule; returns its revision.
    async fn create(&self, record: &ScheduleRecord) -> Result<u64, StoreError>;

    /// Replaces the schedule written at `revision`; returns the new revision, or
    /// [`StoreError::Conflict`] when it was written (or removed) since.
    async fn update(&self, record: &ScheduleRecord, revision: u64) -> Result<u64, StoreError>;

    /// Removes the schedule (gone already is fine).
    async fn remove(&self, schedule_id: &str) -> Result<(), StoreError>;

    /// Every record as stored now, then every change, until the stream fails (then watch
    /// again); `None` when nobody else writes the store.
    async fn watch(
        &self,
    ) -> Result<Option<BoxStream<'static, Result<Change, StoreError>>>, StoreError>;
}

/// The files are the only copy and this process their only writer: a revision counts the
/// writes of this process (revisions are not compared).
#[async_trait]
impl ScheduleStore for ScheduleFiles {
    fn is_shared(&self) -> bool {
        false
    }

    async fn load_all(&self) -> Result<Vec<Stored>, StoreError> {
        let files = self.clone();
        let records = tokio::task::spawn_blocking(move || files.load_all())
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(records
            .into_iter()
            .map(|record| Stored {
                record,
                revision: 1,
            })
            .collect())
    }

    async fn read(&self, schedule_id: &str) -> Result<Option<Stored>, StoreError> {
        let found = self.load_blocking(schedule_id).await?;
        Ok(found.map(|record| Stored {
            record,
            revision: 1,
        }))
    }

    async fn create(&self, record: &ScheduleRecord) -> Result<u64, StoreError> {
        self.save_blocking(record).await?;
        Ok(1)
    }

    async fn update(&self, record: &ScheduleRecord, revision: u64) -> Result<u64, StoreError> {
        self.save_blocking(record).await?;
        Ok(revision.saturating_add(1))
    }

    async fn remove(&self, schedule_id: &str) -> Result<(), StoreError> {
        let files = self.clone();
        let schedule_id = schedule_id.to_string();
        tokio::task::spawn_blocking(move || files.remove(&schedule_id))
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))??;
        Ok(())
    }

    async fn watch(
        &self,
    ) -> Result<Option<BoxStream<'static, Result<Change, StoreError>>>, StoreError> {
        Ok(None)
    }
}

impl ScheduleFiles {
    async fn save_blocking(&self, record: &ScheduleRecord) -> Result<(), StoreError> {
        let files = self.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || files.save(&record))
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))??;
        Ok(())
    }

    async fn load_blocking(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let files = self.clone();
        let schedule_id = schedule_id.to_string();
        tokio::task::spawn_blocking(move || files.load(&schedule_id))
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))
    }
}
