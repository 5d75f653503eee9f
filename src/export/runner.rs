//! The standalone job runner: exports run in-process under the [`Supervisor`], and every job
//! (spec, status, checkpoint) is a JSON file in the data directory ([`JobFiles`], the
//! supervisor's [`JobStore`]), rewritten atomically on each change. After a restart, pending
//! and running jobs continue from their checkpoint.
//!
//! Only `exp_*.json` files are jobs; anything else in the directory is ignored, and a job file
//! that cannot be read is renamed `*.corrupt` (logged and counted) so that no file there can
//! stop the service from starting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::engine::ExportEngine;
use super::job::{Checkpoint, ExportFailure, ExportPhase};
use super::registry::{ExportList, ExportRecord, ExportRegistry, RegistryError};
use super::supervisor::{Job, JobStore, Outcome, StopReason, Supervisor, SupervisorSettings};
use crate::timestamp;

/// How long `cancel` waits for a running job to stop before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Name prefix and suffix of job files.
const JOB_FILE_PREFIX: &str = "exp_";
const JOB_FILE_SUFFIX: &str = ".json";

/// Suffix given to a job file that could not be read.
const CORRUPT_SUFFIX: &str = ".corrupt";

/// Failures opening the job directory.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("export job directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("export job file {file} is unreadable: {reason}")]
    Corrupt { file: String, reason: String },
}

/// Metrics of the standalone runner.
#[derive(Clone, Default)]
pub struct RunnerMetrics {
    /// Job files renamed `*.corrupt` because they could not be read.
    pub corrupt_job_files: Counter,
}

impl RunnerMetrics {
    /// Creates the metrics and registers them (names get the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RunnerMetrics::default();
        registry.register(
            "export_job_files_corrupt",
            "Export job files that could not be read and were moved aside as *.corrupt",
            metrics.corrupt_job_files.clone(),
        );
        metrics
    }
}

/// Runs exports in this process.
#[derive(Clone)]
pub struct LocalRunner {
    engine: ExportEngine,
    files: Arc<JobFiles>,
    supervisor: Supervisor,
}

impl LocalRunner {
    /// Opens (creating if needed) the job directory `jobs_dir` and loads every job in it
    /// (`exp_*.json`; unreadable ones are moved aside, see the module docs).
    pub fn open(
        engine: ExportEngine,
        jobs_dir: &Path,
        max_concurrent: usize,
        metrics: RunnerMetrics,
    ) -> Result<Self, RunnerError> {
        let files = Arc::new(JobFiles::open(jobs_dir, &metrics)?);
        let supervisor = Supervisor::new(
            Arc::new(engine.clone()),
            files.clone(),
            SupervisorSettings {
                max_concurrent,
                abort_failed: true,
                running: None,
            },
        );
        Ok(LocalRunner {
            engine,
            files,
            supervisor,
        })
    }

    /// The engine jobs run on.
    pub fn engine(&self) -> &ExportEngine {
        &self.engine
    }

    /// Starts every pending or running job (after a restart).
    pub fn resume(&self) {
        self.supervisor.resume();
    }

    /// Stops running jobs without marking them cancelled: they continue after a restart.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }
}

/// The job files of the data directory: the standalone [`JobStore`] and the REST API's view.
pub struct JobFiles {
    dir: PathBuf,
    records: RwLock<BTreeMap<String, ExportRecord>>,
}

impl JobFiles {
    /// Opens (creating if needed) `dir` and loads every job file in it.
    pub fn open(dir: &Path, metrics: &RunnerMetrics) -> Result<Self, RunnerError> {
        let io = |source| RunnerError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if !is_job_file(&path) {
                continue;
            }
            match read_record(&path) {
                Ok(record) => {
                    records.insert(record.export_id.clone(), record);
                }
                Err(error) => move_aside(&path, &error, metrics),
            }
        }
        Ok(JobFiles {
            dir: dir.to_path_buf(),
            records: RwLock::new(records),
        })
    }

    /// Writes a new job's file, then keeps its record.
    fn insert(&self, record: &ExportRecord) -> std::io::Result<()> {
        write_record(&self.dir, record)?;
        self.records
            .write()
            .insert(record.export_id.clone(), record.clone());
        Ok(())
    }

    fn get(&self, export_id: &str) -> Option<ExportRecord> {
        self.records.read().get(export_id).cloned()
    }

    /// Applies `change` to the record and persists it; `None` when the record is missing or
    /// could not be written (logged).
    fn update(
        &self,
        export_id: &str,
        change: impl FnOnce(&mut ExportRecord),
    ) -> Option<ExportRecord> {
        let mut records = self.records.write();
        let record = records.get_mut(export_id)?;
        let mut changed = record.clone();
        change(&mut changed);
        if let Err(error) = write_record(&self.dir, &changed) {
            tracing::error!(export_id, %error, "could not persist the export record");
            return None;
        }
        *record = changed.clone();
        Some(changed)
    }
}

/// The job of a record (its key is the export id).
pub fn job_of(record: &ExportRecord) -> Job {
    Job {
        key: record.export_id.clone(),
        export_id: record.export_id.clone(),
        spec: record.spec.clone(),
        checkpoint: record.status.checkpoint.clone(),
    }
}

#[async_trait]
impl JobStore for JobFiles {
    async fn running(
        &self,
        job: &Job,
        checkpoint: &Checkpoint,
        _resumed: bool,
    ) -> Result<(), ExportFailure> {
        let updated = self.update(&job.key, |record| mark_running(record, checkpoint));
        match updated {
            Some(_) => Ok(()),
            None => Err(ExportFailure::new(
                "internal_error",
                "the export record vanished",
            )),
        }
    }

    async fn progress(&self, job: &Job, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        let updated = self.update(&job.key, |record| record_progress(record, checkpoint));
        match updated {
            Some(_) => Ok(()),
            None => Err(ExportFailure::new(
                "internal_error",
                "the export's progress could not be saved",
            )),
        }
    }

    async fn finished(&self, job: &Job, outcome: Outcome) {
        self.update(&job.key, |record| record_outcome(record, outcome));
    }

    fn resumable(&self) -> Vec<Job> {
        self.records
            .read()
            .values()
            .filter(|record| !record.status.phase.is_terminal())
            .map(job_of)
            .collect()
    }
}

/// A record as its job starts running from `checkpoint` (kept when it had one).
pub fn mark_running(record: &mut ExportRecord, checkpoint: &Checkpoint) {
    record.status.phase = ExportPhase::Running;
    record.status.started_at.get_or_insert_with(now);
    if record.status.checkpoint.is_none() {
        record.status.checkpoint = Some(checkpoint.clone());
    }
}

/// A record after a part was uploaded: `checkpoint` and what it counts.
pub fn record_progress(record: &mut ExportRecord, checkpoint: &Checkpoint) {
    record.status.record_count = checkpoint.records();
    record.status.files = checkpoint.files.clone();
    record.status.checkpoint = Some(checkpoint.clone());
}

/// A record as its job ended with `outcome`.
pub fn record_outcome(record: &mut ExportRecord, outcome: Outcome) {
    match outcome {
        Outcome::Completed(outcome) => {
            record.status.phase = ExportPhase::Completed;
            record.status.record_count = outcome.record_count;
            record.status.files = outcome.files;
            record.status.completed_at = Some(outcome.completed_at);
            record.status.error = None;
        }
        Outcome::Failed(failure) => {
            record.status.phase = ExportPhase::Failed;
            record.status.completed_at = Some(now());
            record.status.error = Some(failure);
        }
        Outcome::Cancelled => {
            record.status.phase = ExportPhase::Cancelled;
            record.status.completed_at = Some(now());
            record.status.error = None;
        }
    }
}

fn record_path(dir: &Path, export_id: &str) -> PathBuf {
    dir.join(format!("{export_id}.json"))
}

/// Writes the record durably: temporary file, fsync, rename, fsync of the directory.
fn write_record(dir: &Path, record: &ExportRecord) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::durable_file::replace(&record_path(dir, &record.export_id), &body)
}

/// `exp_*.json`: what [`write_record`] writes (temporary `.json.tmp` files are not jobs).
fn is_job_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| {
            name.starts_with(JOB_FILE_PREFIX)
                && name.ends_with(JOB_FILE_SUFFIX)
                && name.len() > JOB_FILE_PREFIX.len() + JOB_FILE_SUFFIX.len()
        })
}

/// Reads a job file; its export id must match its name (a copied or renamed file is not a job).
fn read_record(path: &Path) -> Result<ExportRecord, RunnerError> {
    let corrupt = |reason: String| RunnerError::Corrupt {
        file: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|error| corrupt(error.to_string()))?;
    let record: ExportRecord =
        serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    let named = path.file_stem().and_then(|stem| stem.to_str());
    if named != Some(record.export_id.as_str()) {
        return Err(corrupt(format!(
            "it holds export {} but is not named after it",
            record.export_id
        )));
    }
    Ok(record)
}

/// Renames an unreadable job file `*.corrupt` (kept for inspection), logging and counting it.
fn move_aside(path: &Path, error: &RunnerError, metrics: &RunnerMetrics) {
    metrics.corrupt_job_files.inc();
    let mut aside = path.as_os_str().to_os_string();
    aside.push(CORRUPT_SUFFIX);
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::error!(
            %error,
            moved_to = %Path::new(&aside).display(),
            "export job file unreadable: moved aside, the job is not resumed"
        ),
        Err(rename) => tracing::error!(
            %error,
            %rename,
            "export job file unreadable and could not be moved aside: ignored"
        ),
    }
}

fn now() -> String {
    timestamp::format_micros(jiff::Timestamp::now().as_microsecond())
}

#[async_trait]
impl ExportRegistry for LocalRunner {
    async fn create(&self, record: ExportRecord) -> Result<ExportRecord, RegistryError> {
        self.files
            .insert(&record)
            .map_err(|error| RegistryError::Unavailable(error.to_string()))?;
        self.supervisor.spawn(job_of(&record));
        Ok(record)
    }

    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        Ok(self
            .files
            .get(export_id)
            .filter(|record| record.spec.tenant_id == tenant))
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError> {
        Ok(super::registry::page(
            &self.files.records.read(),
            tenant,
            after,
            limit,
        ))
    }

    /// Stops the job and waits (at most [`CANCEL_WAIT`]) until it recorded `Cancelled`; a job
    /// that runs nowhere yet (the store still replays) is marked cancelled at once.
    async fn cancel(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        let Some(record) = self.get(tenant, export_id).await? else {
            return Ok(None);
        };
        if record.status.phase.is_terminal() {
            return Err(RegistryError::Finished(export_id.to_string()));
        }
        if self.supervisor.is_running(export_id) {
            self.supervisor
                .stop_and_wait(export_id, StopReason::Cancel, CANCEL_WAIT)
                .await;
        } else {
            let job = job_of(&record);
            if job.checkpoint.is_some()
                && let Err(failure) = self.engine.abort(export_id, &job.spec).await
            {
                tracing::warn!(
                    export_id,
                    code = failure.code,
                    "cleanup after the export failed"
                );
            }
            self.files.finished(&job, Outcome::Cancelled).await;
        }
        self.get(tenant, export_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exp_json_files_are_jobs() {
        for name in ["exp_01jz.json", "exp_bad.json"] {
            assert!(is_job_file(Path::new(name)), "{name}");
        }
        for name in [
            "manifest.json",
            "exp_.json",
            "exp_01jz.json.tmp",
            "exp_01jz.json.corrupt",
            "exp_01jz",
            ".scaivault-export",
        ] {
            assert!(!is_job_file(Path::new(name)), "{name}");
        }
    }
}
