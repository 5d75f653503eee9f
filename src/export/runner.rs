//! The standalone job runner: exports run in-process, at most `max_concurrent` at a time, and
//! every job (spec, status, checkpoint) is a JSON file in the data directory, rewritten
//! atomically on each change. After a restart, pending and running jobs continue from their
//! checkpoint.
//!
//! Only `exp_*.json` files are jobs; anything else in the directory is ignored, and a job file
//! that cannot be read is renamed `*.corrupt` (logged and counted) so that no file there can
//! stop the service from starting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{ExportEngine, ProgressSink};
use super::job::{Checkpoint, ExportFailure, ExportPhase};
use super::registry::{ExportList, ExportRecord, ExportRegistry, RegistryError};
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
    inner: Arc<Inner>,
}

struct Inner {
    engine: ExportEngine,
    jobs_dir: PathBuf,
    records: RwLock<BTreeMap<String, ExportRecord>>,
    tokens: Mutex<HashMap<String, CancellationToken>>,
    cancel_requested: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
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
        let io = |source| RunnerError::Io {
            dir: jobs_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(jobs_dir).map_err(io)?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(jobs_dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if !is_job_file(&path) {
                continue;
            }
            match read_record(&path) {
                Ok(record) => {
                    records.insert(record.export_id.clone(), record);
                }
                Err(error) => move_aside(&path, &error, &metrics),
            }
        }
        Ok(LocalRunner {
            inner: Arc::new(Inner {
                engine,
                jobs_dir: jobs_dir.to_path_buf(),
                records: RwLock::new(records),
                tokens: Mutex::default(),
                cancel_requested: Mutex::default(),
                slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The engine jobs run on.
    pub fn engine(&self) -> &ExportEngine {
        &self.inner.engine
    }

    /// Starts every pending or running job (after a restart).
    pub fn resume(&self) {
        let unfinished: Vec<String> = self
            .inner
            .records
            .read()
            .values()
            .filter(|record| !record.status.phase.is_terminal())
            .map(|record| record.export_id.clone())
            .collect();
        for export_id in unfinished {
            tracing::info!(export_id, "resuming export");
            self.spawn(export_id);
        }
    }

    /// Stops running jobs without marking them cancelled: they continue after a restart.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn spawn(&self, export_id: String) {
        let token = self.inner.shutdown.child_token();
        self.inner
            .tokens
            .lock()
            .insert(export_id.clone(), token.clone());
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { run_job(inner, export_id, token).await });
    }
}

async fn run_job(inner: Arc<Inner>, export_id: String, token: CancellationToken) {
    let permit = tokio::select! {
        permit = inner.slots.clone().acquire_owned() => permit.ok(),
        () = token.cancelled() => None,
    };
    let result = match permit {
        Some(_permit) => execute(&inner, &export_id, &token).await,
        None => Err(super::engine::cancelled()),
    };
    inner.tokens.lock().remove(&export_id);
    let user_cancelled = inner.cancel_requested.lock().remove(&export_id);
    match result {
        Ok(outcome) => {
            update(&inner, &export_id, |record| {
                record.status.phase = ExportPhase::Completed;
                record.status.record_count = outcome.record_count;
                record.status.files = outcome.files;
                record.status.completed_at = Some(outcome.completed_at);
                record.status.error = None;
            });
        }
        Err(failure) if failure.code == "cancelled" && !user_cancelled => {
            // Shutdown: the job stays pending/running and resumes after the restart.
        }
        Err(failure) => {
            let cancelled = failure.code == "cancelled";
            let spec = inner.records.read().get(&export_id).map(|r| r.spec.clone());
            if let Some(spec) = spec
                && let Err(cleanup) = inner.engine.abort(&export_id, &spec).await
            {
                tracing::warn!(
                    export_id,
                    code = cleanup.code,
                    "cleanup after the export failed"
                );
            }
            if !cancelled {
                tracing::warn!(
                    export_id,
                    code = failure.code,
                    message = failure.message,
                    "export failed"
                );
            }
            update(&inner, &export_id, |record| {
                record.status.phase = if cancelled {
                    ExportPhase::Cancelled
                } else {
                    ExportPhase::Failed
                };
                record.status.completed_at = Some(now());
                record.status.error = (!cancelled).then_some(failure);
            });
        }
    }
}

async fn execute(
    inner: &Arc<Inner>,
    export_id: &str,
    token: &CancellationToken,
) -> Result<super::engine::ExportOutcome, ExportFailure> {
    let has_checkpoint = inner
        .records
        .read()
        .get(export_id)
        .is_some_and(|record| record.status.checkpoint.is_some());
    let start = if has_checkpoint {
        None
    } else {
        Some(inner.engine.start_checkpoint().await?)
    };
    let Some((spec, checkpoint)) = update(inner, export_id, |record| {
        record.status.phase = ExportPhase::Running;
        record.status.started_at.get_or_insert_with(now);
        if record.status.checkpoint.is_none() {
            record.status.checkpoint = start;
        }
    })
    .and_then(|record| Some((record.spec, record.status.checkpoint?))) else {
        return Err(ExportFailure::new(
            "internal_error",
            "the export record vanished",
        ));
    };
    tracing::info!(
        export_id,
        resumed_parts = checkpoint.files.len(),
        "export running"
    );
    let progress = RecordProgress {
        inner: inner.clone(),
        export_id: export_id.to_string(),
    };
    inner
        .engine
        .run(export_id, &spec, checkpoint, &progress, token)
        .await
}

/// Persists each checkpoint into the job's record.
struct RecordProgress {
    inner: Arc<Inner>,
    export_id: String,
}

#[async_trait]
impl ProgressSink for RecordProgress {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure> {
        let updated = update(&self.inner, &self.export_id, |record| {
            record.status.record_count = checkpoint.records();
            record.status.files = checkpoint.files.clone();
            record.status.checkpoint = Some(checkpoint.clone());
        });
        match updated {
            Some(_) => Ok(()),
            None => Err(ExportFailure::new(
                "internal_error",
                "the export's progress could not be saved",
            )),
        }
    }
}

/// Applies `change` to the record and persists it; `None` when the record is missing or
/// could not be written (logged).
fn update(
    inner: &Inner,
    export_id: &str,
    change: impl FnOnce(&mut ExportRecord),
) -> Option<ExportRecord> {
    let mut records = inner.records.write();
    let record = records.get_mut(export_id)?;
    let mut changed = record.clone();
    change(&mut changed);
    if let Err(error) = write_record(&inner.jobs_dir, &changed) {
        tracing::error!(export_id, %error, "could not persist the export record");
        return None;
    }
    *record = changed.clone();
    Some(changed)
}

fn record_path(dir: &Path, export_id: &str) -> PathBuf {
    dir.join(format!("{export_id}.json"))
}

/// Writes the record durably: temporary file, fsync, rename, fsync of the directory.
fn write_record(dir: &Path, record: &ExportRecord) -> std::io::Result<()> {
    use std::io::Write;
    let path = record_path(dir, &record.export_id);
    let temporary = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()
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
        write_record(&self.inner.jobs_dir, &record)
            .map_err(|error| RegistryError::Unavailable(error.to_string()))?;
        self.inner
            .records
            .write()
            .insert(record.export_id.clone(), record.clone());
        self.spawn(record.export_id.clone());
        Ok(record)
    }

    async fn get(
        &self,
        tenant: &str,
        export_id: &str,
    ) -> Result<Option<ExportRecord>, RegistryError> {
        Ok(self
            .inner
            .records
            .read()
            .get(export_id)
            .filter(|record| record.spec.tenant_id == tenant)
            .cloned())
    }

    async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExportList, RegistryError> {
        let records = self.inner.records.read();
        let mut matching = records
            .values()
            .rev()
            .filter(|record| record.spec.tenant_id == tenant)
            .filter(|record| after.is_none_or(|after| record.export_id.as_str() < after));
        let exports: Vec<ExportRecord> = matching.by_ref().take(limit).cloned().collect();
        let next_after = match matching.next() {
            Some(_) => exports.last().map(|record| record.export_id.clone()),
            None => None,
        };
        Ok(ExportList {
            exports,
            next_after,
        })
    }

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
        self.inner
            .cancel_requested
            .lock()
            .insert(export_id.to_string());
        let token = self.inner.tokens.lock().get(export_id).cloned();
        if let Some(token) = token {
            token.cancel();
        }
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let current = self.get(tenant, export_id).await?;
            match current {
                Some(record) if !record.status.phase.is_terminal() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(Some(record));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return Ok(other),
            }
        }
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
