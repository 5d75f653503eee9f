//! The export engine: one job from snapshot to manifest.
//!
//! ```text
//! snapshot (seq < committed) ─▶ pages in (timestamp, seq) order ─▶ PartEncoder ─▶ spool file
//!     ─▶ Sink::upload_file ─▶ checkpoint (persisted by the caller) ─▶ … ─▶ manifest.json
//! ```
//! A part is encoded on a blocking thread into a spool file, then uploaded; the checkpoint
//! records the sort position of its last event, so a restarted job continues with the next part
//! and neither repeats nor skips a record. Transient failures (destination or ScaiVault away) are
//! retried with capped exponential backoff (backon); permanent ones fail the job with an actionable code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use serde_json::json;
use tantivy::collector::Count;
use tokio_util::sync::CancellationToken;

use super::credentials::{CredentialSource, DestinationCredentials};
use super::format::{self, PartEncoder};
use super::job::{
    Checkpoint, DestinationType, ExportFailure, ExportSpec, FileEntry, LateSummary, RecordBound,
};
use super::manifest::{self, ExportIntegrity, ManifestLink, ManifestParts};
use super::metrics::{ExportMetrics, RunOutcome};
use super::policy::ExportPolicy;
use super::sink::endpoint::EndpointPolicy;
use super::sink::{self, Sink, SinkContext, SinkError, SmallObject};
use crate::integrity::chain::ChainLink;
use crate::query::{self, LogFilters};
use crate::store::Store;
use crate::store::search::{self, Direction, SortKey};
use crate::timestamp;

/// Events fetched per index query while encoding a part.
const PAGE_EVENTS: usize = 20_000;

/// Name of the claim object that marks a prefix as one export's (next to its files).
pub const CLAIM_NAME: &str = ".scaivault-export";
/// Manifests written at most for one export when other exports of its destination family keep
/// recording theirs in between (each attempt links to the newest).
const LINK_ATTEMPTS: usize = 5;

/// Retry schedule of transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Give up (and fail the job) once retrying has taken this long.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    /// The delays before each retry of a step that started failing at `started`: doubling from
    /// `initial_delay` up to `max_delay`, each jittered down to between half and all of itself,
    /// until the next one would end past `max_elapsed`. (backon's jitter adds up to 100%, so it
    /// is given half delays: `d/2 * (1 + r)` is `d * (0.5 + r/2)`.)
    fn delays(self, started: Instant) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_delay / 2)
            .with_max_delay(self.max_delay / 2)
            .with_jitter()
            .without_max_times()
            .build()
            .take_while(move |delay| started.elapsed() + *delay <= self.max_elapsed)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(15 * 60),
        }
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where part files wait for upload (destinations other than `file`).
    pub spool_dir: PathBuf,
    pub retry: RetryPolicy,
    /// Which destination endpoints jobs may connect to.
    pub endpoints: EndpointPolicy,
    /// Tenant confinement, checked before a job fetches credentials or opens its destination.
    pub policy: ExportPolicy,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    pub files: Vec<FileEntry>,
    pub record_count: u64,
    pub completed_at: String,
}

/// Told the checkpoint after every uploaded part (the job supervisor records it); an error
/// stops the job.
#[async_trait]
pub trait ProgressReporter: Send + Sync {
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ExportFailure>;
    /// Fencing right before the manifest is written (the irreversible step): an error stops
    /// the job without a manifest. In a cluster it confirms the job's lease.
    async fn before_manifest(&self) -> Result<(), ExportFailure> {
        Ok(())
    }
}

/// Runs export jobs against the store.
#[derive(Clone)]
pub struct ExportEngine {
    store: Store,
    credentials: CredentialSource,
    config: Arc<EngineConfig>,
    /// Signs manifests and links them per destination family (unsigned without it).
    integrity: Option<Arc<ExportIntegrity>>,
    metrics: ExportMetrics,
    /// Unit tests: the sink every job writes to, whatever its destination.
    #[cfg(test)]
    test_sink: Option<Arc<dyn Sink>>,
}

/// The failure of a cancelled job.
pub fn cancelled() -> ExportFailure {
    ExportFailure::new("cancelled", "the export was cancelled")
}

fn internal(error: impl std::fmt::Display) -> ExportFailure {
    tracing::error!(%error, "export failed internally");
    ExportFailure::new(
        "internal_error",
        "the export failed inside the audit service; see its log",
    )
}

/// A failure of one step: retry it or give up.
enum StepError {
    Transient(ExportFailure),
    Permanent(ExportFailure),
}

impl StepError {
    fn into_failure(self) -> ExportFailure {
        match self {
            StepError::Transient(failure) | StepError::Permanent(failure) => failure,
        }
    }

    fn failure(&self) -> &ExportFailure {
        match self {
            StepError::Transient(failure) | StepError::Permanent(failure) => failure,
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, StepError::Transient(_))
    }
}

impl From<SinkError> for StepError {
    fn from(error: SinkError) -> Self {
        if error.is_transient() {
            StepError::Transient(error.to_failure())
        } else {
            StepError::Permanent(error.to_failure())
        }
    }
}

/// One encoded part, waiting in its spool file.
struct EncodedPart {
    records: u64,
    size_bytes: u64,
    sha256: String,
    last: Option<SortKey>,
    first_event: Option<RecordBound>,
    last_event: Option<RecordBound>,
}

impl ExportEngine {
    pub fn new(store: Store, credentials: CredentialSource, config: EngineConfig) -> Self {
        ExportEngine {
            store,
            credentials,
            config: Arc::new(config),
            integrity: None,
            metrics: ExportMetrics::default(),
            #[cfg(test)]
            test_sink: None,
        }
    }

    /// This engine, signing manifests with `integrity`'s key ring, embedding its checkpoints
    /// and linking manifests per destination family.
    pub fn with_integrity(mut self, integrity: Arc<ExportIntegrity>) -> Self {
        self.integrity = Some(integrity);
        self
    }

    /// This engine, counting its jobs in `metrics`.
    pub fn with_metrics(mut self, metrics: ExportMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The store exports read from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The confinement rules every export of this engine meets.
    pub fn policy(&self) -> &ExportPolicy {
        &self.config.policy
    }

    /// A checkpoint whose snapshot is every event acknowledged so far (pending events are
    /// committed first).
    pub async fn start_checkpoint(&self) -> Result<Checkpoint, ExportFailure> {
        self.store.flush().await.map_err(|error| {
            tracing::warn!(%error, "commit before an export snapshot failed");
            ExportFailure::new(
                "store_unavailable",
                "the audit store could not commit pending events; the export will retry",
            )
        })?;
        Ok(Checkpoint::start(self.store.committed_seq()))
    }

    /// How many events `spec` matches now (the `estimated_records` of a new export).
    pub async fn estimate(&self, spec: &ExportSpec) -> Result<u64, ExportFailure> {
        let mut filters = spec.log_filters().map_err(invalid_spec)?;
        filters.before_seq = Some(self.store.committed_seq());
        let store = self.store.clone();
        let tenant = spec.tenant_id.clone();
        tokio::task::spawn_blocking(move || {
            let searcher = store.searcher();
            let query = store
                .query(&searcher, &tenant, &filters)
                .map_err(|error| ExportFailure::new("invalid_spec", error.to_string()))?;
            searcher
                .search(query.as_ref(), &Count)
                .map(|count| count as u64)
                .map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    /// Runs (or resumes from `checkpoint`) the export `export_id` to completion.
    pub async fn run(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        let started = Instant::now();
        let result = self
            .run_job(export_id, spec, checkpoint, progress, cancel)
            .await;
        let outcome = match &result {
            Ok(_) => RunOutcome::Completed,
            Err(failure) if failure.code == "cancelled" => RunOutcome::Cancelled,
            Err(_) => RunOutcome::Failed,
        };
        self.metrics
            .run(spec.destination.kind, outcome, started.elapsed());
        result
    }

    async fn run_job(
        &self,
        export_id: &str,
        spec: &ExportSpec,
        mut checkpoint: Checkpoint,
        progress: &dyn ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        // Before anything is fetched or opened: also stops jobs accepted under older rules.
        self.config
            .policy
            .check(spec)
            .map_err(|refusal| refusal.to_failure())?;
        let mut filters = spec.log_filters().map_err(invalid_spec)?;
        filters.before_seq = Some(checkpoint.snapshot_seq);
        let sink = self
            .retry(spec, cancel, || self.open_sink(export_id, spec))
            .await?;
        if let Some(outcome) = self
            .claim(sink.as_ref(), export_id, spec, &checkpoint, cancel)
            .await?
        {
            sink::forget_uploads(&self.config.spool_dir, export_id);
            return Ok(outcome);
        }
        self.discard_incomplete(sink.as_ref(), export_id, spec, cancel)
            .await?;
        let spool_dir = self.spool_dir(sink.as_ref())?;
        loop {
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let number = checkpoint.files.len() + 1;
            let spool_path = spool_dir.join(sink::spool_name(export_id, number));
            let part = self
                .encode_part(spec, &filters, checkpoint.after, &spool_path, cancel)
                .await;
            let part = match part {
                Ok(part) => part,
                Err(failure) => {
                    remove_quietly(&spool_path);
                    return Err(failure);
                }
            };
            if part.records == 0 {
                remove_quietly(&spool_path);
                break;
            }
            let key = spec.part_key(number);
            let content_type = format::content_type(spec.format, spec.compression);
            let uploaded = self
                .retry(spec, cancel, || async {
                    Ok(sink.upload_file(&key, &spool_path, content_type).await?)
                })
                .await;
            remove_quietly(&spool_path);
            uploaded?;
            tracing::info!(
                export_id,
                key,
                records = part.records,
                "export part uploaded"
            );
            self.metrics
                .part(spec.destination.kind, part.records, part.size_bytes);
            checkpoint.files.push(FileEntry {
                key,
                size_bytes: part.size_bytes,
                records: part.records,
                sha256: part.sha256,
                first_event: part.first_event,
                last_event: part.last_event,
            });
            checkpoint.after = part.last;
            progress.checkpoint(&checkpoint).await?;
            if part.records < spec.max_records_per_file {
                break;
            }
        }
        progress.before_manifest().await?;
        let outcome = self
            .write_manifest(sink.as_ref(), export_id, spec, &checkpoint, cancel)
            .await?;
        sink::forget_uploads(&self.config.spool_dir, export_id);
        Ok(outcome)
    }

    /// Removes what an interrupted or cancelled job of `export_id` left behind: its own
    /// incomplete multipart uploads (those in its upload journal) and spool files. Objects
    /// already uploaded stay, and nothing of another export is touched: a job that lost the
    /// claim has nothing to abort.
    pub async fn abort(&self, export_id: &str, spec: &ExportSpec) -> Result<(), ExportFailure> {
        remove_spooled(&self.config.spool_dir, export_id);
        if self.config.policy.check(spec).is_err() {
            // A refused job never fetched credentials nor opened its destination.
            return Ok(());
        }
        let sink = self
            .open_sink(export_id, spec)
            .await
            .map_err(StepError::into_failure)?;
        sink.abort_incomplete(&spec.destination.prefix)
            .await
            .map_err(|error| error.to_failure())?;
        Ok(())
    }

    /// The destination's sink, with credentials read from ScaiVault (or the development
    /// directory).
    async fn open_sink(
        &self,
        export_id: &str,
        spec: &ExportSpec,
    ) -> Result<Arc<dyn Sink>, StepError> {
        #[cfg(test)]
        if let Some(sink) = &self.test_sink {
            return Ok(sink.clone());
        }
        let context = SinkContext {
            export_id: export_id.to_string(),
            endpoints: self.config.endpoints.clone(),
            journal_dir: self.config.spool_dir.clone(),
        };
        if spec.destination.kind == DestinationType::File {
            let dir = self
                .config
                .policy
                .file_directory(&spec.destination.bucket)
                .map_err(|refusal| StepError::Permanent(refusal.to_failure()))?;
            let credentials = DestinationCredentials::FileDirectory(dir);
            return Ok(sink::open(&spec.destination, credentials, &context).await?);
        }
        let credentials = self
            .credentials
            .destination(
                spec.destination.kind,
                spec.destination.credentials_path.as_deref(),
            )
            .await
            .map_err(|error| {
                if error.is_transient() {
                    StepError::Transient(error.to_failure())
                } else {
                    StepError::Permanent(error.to_failure())
                }
            })?;
        Ok(sink::open(&spec.destination, credentials, &context).await?)
    }

    fn spool_dir(&self, sink: &dyn Sink) -> Result<PathBuf, ExportFailure> {
        let dir = match sink.spool_dir() {
            Some(dir) => dir.to_path_buf(),
            None => self.config.spool_dir.clone(),
        };
        std::fs::create_dir_all(&dir).map_err(internal)?;
        Ok(dir)
    }

    /// Makes the prefix this export's with one conditional create of the claim object, or
    /// fails with `destination_conflict` when another export (or anything else) is there.
    /// Returns the outcome when this export already completed (its claim and a manifest are
    /// there). Existence is checked with HEAD requests; the only body read is the claim's,
    /// capped at [`sink::READ_LIMIT_BYTES`].
    async fn claim(
        &self,
        sink: &dyn Sink,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: &Checkpoint,
        cancel: &CancellationToken,
    ) -> Result<Option<ExportOutcome>, ExportFailure> {
        let location = format!("{}/{}", sink.location(), spec.destination.prefix);
        let claim_key = format!("{}{CLAIM_NAME}", spec.destination.prefix);
        match self
            .claim_owner(sink, &claim_key, export_id, spec, cancel)
            .await?
        {
            Owner::Us => return self.resumed(sink, spec, checkpoint, cancel).await,
            Owner::Other(other) => return Err(conflict(&location, export_id, other.as_deref())),
            Owner::Nobody => {}
        }
        // Objects without a claim (another tool, a deleted claim) are never overwritten.
        for key in [spec.manifest_key(), spec.part_key(1)] {
            let found = self
                .retry(spec, cancel, || async { Ok(sink.exists(&key).await?) })
                .await?;
            if found {
                return Err(conflict(&location, export_id, None));
            }
        }
        let body = json!({
            "export_id": export_id,
            "tenant_id": spec.tenant_id,
            "claimed_at": timestamp::format_micros(now_micros()),
        })
        .to_string()
        .into_bytes();
        let created = self
            .retry(spec, cancel, || async {
                Ok(sink
                    .create_new(&claim_key, body.clone(), "application/json")
                    .await?)
            })
            .await?;
        if created {
            return Ok(None);
        }
        // Someone was faster, or an earlier attempt of this very create succeeded.
        match self
            .claim_owner(sink, &claim_key, export_id, spec, cancel)
            .await?
        {
            Owner::Us => Ok(None),
            Owner::Other(other) => Err(conflict(&location, export_id, other.as_deref())),
            Owner::Nobody => Err(conflict(&location, export_id, None)),
        }
    }

    /// Whose the claim object at `claim_key` is.
    async fn claim_owner(
        &self,
        sink: &dyn Sink,
        claim_key: &str,
        export_id: &str,
        spec: &ExportSpec,
        cancel: &CancellationToken,
    ) -> Result<Owner, ExportFailure> {
        let claim = self
            .retry(spec, cancel, || async {
                Ok(sink.read_small(claim_key).await?)
            })
            .await?;
        Ok(match claim {
            SmallObject::Missing => Owner::Nobody,
            SmallObject::TooLarge => Owner::Other(None),
            SmallObject::Body(body) => {
                let claim: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let same_tenant = claim.get("tenant_id").and_then(|id| id.as_str())
                    == Some(spec.tenant_id.as_str());
                match claim.get("export_id").and_then(|id| id.as_str()) {
                    Some(id) if id == export_id => Owner::Us,
                    // Another export of the same tenant may be named; another tenant's not.
                    Some(id) if same_tenant => Owner::Other(Some(id.to_string())),
                    _ => Owner::Other(None),
                }
            }
        })
    }

    /// This export's claim is there: the outcome if its manifest was written (the files are
    /// the checkpoint's, every part was checkpointed before the manifest), else `None`.
    async fn resumed(
        &self,
        sink: &dyn Sink,
        spec: &ExportSpec,
        checkpoint: &Checkpoint,
        cancel: &CancellationToken,
    ) -> Result<Option<ExportOutcome>, ExportFailure> {
        let manifest_key = spec.manifest_key();
        let manifest = self
            .retry(spec, cancel, || async {
                Ok(sink.read_small(&manifest_key).await?)
            })
            .await?;
        let completed_at = match manifest {
            SmallObject::Missing => return Ok(None),
            SmallObject::Body(body) => {
                self.adopt_manifest(spec, &body).await?;
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|manifest| {
                        manifest
                            .get("completed_at")
                            .and_then(|at| at.as_str())
                            .map(str::to_string)
                    })
            }
            SmallObject::TooLarge => None,
        };
        Ok(Some(ExportOutcome {
            files: checkpoint.files.clone(),
            record_count: checkpoint.records(),
            completed_at: completed_at.unwrap_or_else(|| timestamp::format_micros(now_micros())),
        }))
    }

    async fn discard_incomplete(
        &self,
        sink: &dyn Sink,
        export_id: &str,
        spec: &ExportSpec,
        cancel: &CancellationToken,
    ) -> Result<(), ExportFailure> {
        remove_spooled(&self.config.spool_dir, export_id);
        let removed = self
            .retry(spec, cancel, || async {
                Ok(sink.abort_incomplete(&spec.destination.prefix).await?)
            })
            .await?;
        if removed > 0 {
            tracing::info!(
                export_id,
                removed,
                "discarded incomplete uploads of an earlier attempt"
            );
        }
        Ok(())
    }

    /// Encodes up to `max_records_per_file` events after `after` into `path`.
    async fn encode_part(
        &self,
        spec: &ExportSpec,
        filters: &LogFilters,
        after: Option<SortKey>,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<EncodedPart, ExportFailure> {
        let store = self.store.clone();
        let spec = spec.clone();
        let filters = filters.clone();
        let path = path.to_path_buf();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            encode_part_blocking(&store, &spec, &filters, after, &path, &cancel)
        })
        .await
        .map_err(internal)?
    }

    /// Writes the manifest (signed when the engine has a key ring) and records it as its
    /// destination family's newest.
    async fn write_manifest(
        &self,
        sink: &dyn Sink,
        export_id: &str,
        spec: &ExportSpec,
        checkpoint: &Checkpoint,
        cancel: &CancellationToken,
    ) -> Result<ExportOutcome, ExportFailure> {
        let outcome = ExportOutcome {
            files: checkpoint.files.clone(),
            record_count: checkpoint.records(),
            completed_at: timestamp::format_micros(now_micros()),
        };
        let head = self.snapshot_head(spec, checkpoint.snapshot_seq).await?;
        let late = self.late_summary(spec, checkpoint.snapshot_seq).await?;
        let Some(integrity) = self.integrity.clone() else {
            let parts = ManifestParts {
                head,
                checkpoint: None,
                previous: None,
                late,
            };
            let manifest = manifest::manifest_object(export_id, spec, &outcome, &parts);
            self.put_manifest(sink, spec, &manifest, cancel).await?;
            return Ok(outcome);
        };
        let covering = {
            let log = integrity.checkpoints.clone();
            let tenant = spec.tenant_id.clone();
            tokio::task::spawn_blocking(move || log.covering(&tenant, &head))
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let family = manifest::family_key(spec);
        for _ in 0..LINK_ATTEMPTS {
            let current = integrity.links.newest(&family).await.map_err(internal)?;
            let parts = ManifestParts {
                head,
                checkpoint: covering.clone(),
                previous: current.newest,
                late: late.clone(),
            };
            let mut manifest = manifest::manifest_object(export_id, spec, &outcome, &parts);
            integrity.checkpoints.keyring().sign_object(&mut manifest);
            let body = self.put_manifest(sink, spec, &manifest, cancel).await?;
            let link = ManifestLink {
                key: spec.manifest_key(),
                sha256: manifest::manifest_sha256(&body),
            };
            let recorded = integrity
                .links
                .record(&family, current.version, &link)
                .await
                .map_err(internal)?;
            if recorded {
                return Ok(outcome);
            }
            tracing::info!(
                export_id,
                "another manifest of this destination family was recorded meanwhile; \
                 writing this one again, linked to it"
            );
        }
        Err(internal(format!(
            "the manifest links of this destination family kept changing under \
             {LINK_ATTEMPTS} attempts"
        )))
    }

    /// A resumed job whose manifest was written but not recorded as its family's newest (the
    /// process stopped in between) records it now, if the family's newest is still the one
    /// the manifest links to; otherwise the next export of the family would link past it.
    async fn adopt_manifest(&self, spec: &ExportSpec, body: &[u8]) -> Result<(), ExportFailure> {
        let Some(integrity) = &self.integrity else {
            return Ok(());
        };
        let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(());
        };
        let Ok(previous) = serde_json::from_value::<Option<ManifestLink>>(
            manifest
                .get("previous_manifest")
                .cloned()
                .unwrap_or_default(),
        ) else {
            return Ok(());
        };
        let family = manifest::family_key(spec);
        let current = integrity.links.newest(&family).await.map_err(internal)?;
        if current.newest != previous {
            return Ok(());
        }
        let link = ManifestLink {
            key: spec.manifest_key(),
            sha256: manifest::manifest_sha256(body),
        };
        integrity
            .links
            .record(&family, current.version, &link)
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Uploads `manifest` as pretty JSON; returns the bytes written.
    async fn put_manifest(
        &self,
        sink: &dyn Sink,
        spec: &ExportSpec,
        manifest: &serde_json::Map<String, serde_json::Value>,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, ExportFailure> {
        let body = serde_json::to_vec_pretty(manifest).map_err(internal)?;
        self.retry(spec, cancel, || async {
            Ok(sink
                .put_bytes(&spec.manifest_key(), body.clone(), "application/json")
                .await?)
        })
        .await?;
        Ok(body)
    }

    /// The late events of a scheduled run (`spec.late`) at its snapshot: how many, and the
    /// first and last of them; `None` for other exports.
    pub async fn late_summary(
        &self,
        spec: &ExportSpec,
        snapshot_seq: u64,
    ) -> Result<Option<LateSummary>, ExportFailure> {
        let Some(late) = &spec.late else {
            return Ok(None);
        };
        let mut filters = spec.log_filters().map_err(invalid_spec)?;
        // Only what lies before the window: exactly the late events.
        filters.to_us = filters.late.map(|(window_from, _)| window_from);
        filters.before_seq = Some(snapshot_seq);
        let store = self.store.clone();
        let tenant = spec.tenant_id.clone();
        let since_seq = late.since_seq;
        tokio::task::spawn_blocking(move || {
            late_summary_blocking(&store, &tenant, &filters, since_seq)
        })
        .await
        .map_err(internal)?
        .map(Some)
    }

    /// The tenant's chain head at the snapshot (`seq < snapshot_seq`).
    async fn snapshot_head(
        &self,
        spec: &ExportSpec,
        snapshot_seq: u64,
    ) -> Result<ChainLink, ExportFailure> {
        let store = self.store.clone();
        let tenant = spec.tenant_id.clone();
        tokio::task::spawn_blocking(move || {
            crate::store::chain::head_before(
                &store.searcher(),
                store.fields(),
                &tenant,
                snapshot_seq,
            )
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    /// Runs `step` until it succeeds, fails permanently, is cancelled (which also interrupts
    /// a backoff sleep), or retrying would take longer than the policy allows.
    async fn retry<T, F, Fut>(
        &self,
        spec: &ExportSpec,
        cancel: &CancellationToken,
        mut step: F,
    ) -> Result<T, ExportFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let retried = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            step()
        })
        .retry(self.config.retry.delays(started))
        .when(StepError::is_transient)
        .notify(|error, _| {
            let failure = error.failure();
            self.metrics.retry(spec.destination.kind);
            tracing::warn!(
                code = failure.code,
                message = failure.message,
                attempts = attempts.load(Ordering::Relaxed),
                "export step failed; retrying"
            );
        });
        let outcome = tokio::select! {
            outcome = retried => outcome,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        match outcome {
            Ok(value) => Ok(value),
            Err(StepError::Permanent(failure)) => Err(failure),
            Err(StepError::Transient(failure)) => Err(ExportFailure::new(
                &failure.code,
                format!(
                    "{} (gave up after {} attempts over {} s)",
                    failure.message,
                    attempts.load(Ordering::Relaxed),
                    started.elapsed().as_secs()
                ),
            )),
        }
    }
}

/// Pages of events in flight between the reader and the encoder thread.
const PAGES_IN_FLIGHT: usize = 2;

/// A stored event on its way to the encoder: sequence number, storage JSON and chain link.
type Stored = (u64, Vec<u8>, Option<ChainLink>);

/// Encodes a part on two threads: this one reads the index (query, stored documents), a
/// scoped one decodes and encodes (JSON in, JSON/CSV out, gzip, SHA-256, file writes).
fn encode_part_blocking(
    store: &Store,
    spec: &ExportSpec,
    filters: &LogFilters,
    after: Option<SortKey>,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<EncodedPart, ExportFailure> {
    let file = std::fs::File::create(path).map_err(internal)?;
    let mut encoder = PartEncoder::new(spec.format, spec.compression, file).map_err(internal)?;
    let (pages, received) = std::sync::mpsc::sync_channel::<Vec<Stored>>(PAGES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<_, ExportFailure> {
            let mut bounds: Option<(RecordBound, RecordBound)> = None;
            for page in received {
                for (seq, source, link) in &page {
                    let event = search::decode_event(source, *seq).map_err(internal)?;
                    let link = link
                        .ok_or_else(|| internal(format!("stored event {seq} has no chain link")))?;
                    encoder.write_event(&event, &link).map_err(internal)?;
                    let bound = RecordBound {
                        id: event.id.clone(),
                        timestamp: timestamp::format_micros(event.timestamp_us),
                    };
                    match &mut bounds {
                        Some((_, last)) => *last = bound,
                        None => bounds = Some((bound.clone(), bound)),
                    }
                }
            }
            let (file, stats) = encoder.finish().map_err(internal)?;
            Ok((file, stats, bounds))
        });
        let read = read_part(store, spec, filters, after, cancel, &pages);
        drop(pages);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(internal("the export encoder thread panicked")));
        let last = read?;
        let (file, stats, bounds) = written?;
        file.sync_all().map_err(internal)?;
        let (first_event, last_event) = bounds.unzip();
        Ok(EncodedPart {
            records: stats.records,
            size_bytes: stats.size_bytes,
            sha256: stats.sha256,
            last,
            first_event,
            last_event,
        })
    })
}

/// Sends up to `max_records_per_file` events after `after` to `pages`, page by page; returns
/// the sort position of the last one.
fn read_part(
    store: &Store,
    spec: &ExportSpec,
    filters: &LogFilters,
    mut after: Option<SortKey>,
    cancel: &CancellationToken,
    pages: &std::sync::mpsc::SyncSender<Vec<Stored>>,
) -> Result<Option<SortKey>, ExportFailure> {
    let searcher = store.searcher();
    let fields = store.fields();
    let mut remaining = spec.max_records_per_file;
    while remaining > 0 {
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let narrowed = query::narrow_to_cursor(filters.clone(), Direction::OldestFirst, after);
        let plan = store
            .search_plan(&searcher, &spec.tenant_id, &narrowed)
            .map_err(|error| ExportFailure::new("invalid_spec", error.to_string()))?;
        let limit = remaining.min(PAGE_EVENTS as u64) as usize;
        let (hits, has_more) = search::top_hits(
            &searcher,
            store.timelines(),
            &plan,
            Direction::OldestFirst,
            after,
            limit,
        )
        .map_err(internal)?;
        remaining -= hits.len() as u64;
        let addresses: Vec<_> = hits.iter().map(|(_, address)| *address).collect();
        let sources =
            search::load_chained_sources(&searcher, fields, &addresses).map_err(internal)?;
        after = hits.last().map(|(key, _)| *key).or(after);
        let page: Vec<Stored> = hits
            .iter()
            .zip(sources)
            .map(|((key, _), (source, link))| (key.seq, source, link))
            .collect();
        if pages.send(page).is_err() {
            // The encoder stopped on an error of its own, which join() reports.
            break;
        }
        if !has_more {
            break;
        }
    }
    Ok(after)
}

/// Counts the events `filters` match and finds the first and last of them.
fn late_summary_blocking(
    store: &Store,
    tenant: &str,
    filters: &LogFilters,
    since_seq: u64,
) -> Result<LateSummary, ExportFailure> {
    let searcher = store.searcher();
    let fields = store.fields();
    let bad_spec = |error: query::QueryError| ExportFailure::new("invalid_spec", error.to_string());
    let query = store.query(&searcher, tenant, filters).map_err(bad_spec)?;
    let count = searcher.search(query.as_ref(), &Count).map_err(internal)? as u64;
    let plan = store
        .search_plan(&searcher, tenant, filters)
        .map_err(bad_spec)?;
    let bound = |direction| -> Result<Option<RecordBound>, ExportFailure> {
        let page = search::top_by_time(
            &searcher,
            store.timelines(),
            fields,
            &plan,
            direction,
            None,
            1,
        )
        .map_err(internal)?;
        Ok(page
            .events
            .into_iter()
            .next()
            .map(|(_, event)| RecordBound {
                id: event.id,
                timestamp: timestamp::format_micros(event.timestamp_us),
            }))
    };
    Ok(LateSummary {
        count,
        since_seq,
        first_event: bound(Direction::OldestFirst)?,
        last_event: bound(Direction::NewestFirst)?,
    })
}

/// Who holds a prefix's claim object.
enum Owner {
    Us,
    /// Another export: its id when it is the same tenant's.
    Other(Option<String>),
    Nobody,
}

/// The failure of an export whose prefix holds objects of another export or client. The
/// message never names the other export (it may be another tenant's); the log does.
fn conflict(location: &str, export_id: &str, other: Option<&str>) -> ExportFailure {
    tracing::warn!(
        export_id,
        location,
        other_export = other.unwrap_or("-"),
        "destination prefix is taken"
    );
    let owner = "objects of another export";
    ExportFailure::new(
        "destination_conflict",
        format!(
            "{location} already holds {owner}; choose another prefix (an export never \
             overwrites another export's files)"
        ),
    )
}

fn invalid_spec(errors: crate::event::FieldErrors) -> ExportFailure {
    let detail = errors
        .0
        .iter()
        .map(|(field, problem)| format!("{field} {problem}"))
        .collect::<Vec<_>>()
        .join("; ");
    ExportFailure::new("invalid_spec", detail)
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn remove_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove a spool file");
    }
}

/// Removes the spool files of `export_id` in `dir`.
fn remove_spooled(dir: &Path, export_id: &str) {
    let own = sink::spool_prefix(export_id);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&own) {
            remove_quietly(&entry.path());
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
