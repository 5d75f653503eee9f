//! The one writer of AuditExport status: a task of the leader's controller context, fed through
//! a channel by the controller (its decisions) and by the export jobs (through
//! [`super::jobs::ResourceJobs`]). Writes are server-side applies of the whole `/status` under
//! the operator's field manager, in the order they were sent, each followed by its Kubernetes
//! Event, so a resource's history reads the same in its status and its events.
//!
//! Both wait for their write. The controller gets the error (its reconcile is retried with
//! backoff); a job's write is retried here (1, 2, 4, 8 s apart) and then given up (logged): the
//! job goes on and its next write catches up. A resource that is gone (404) is not retried.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::FIELD_MANAGER;
use super::crd::{AuditExport, AuditExportStatus};

/// A job's status write is tried this many times.
const STATUS_ATTEMPTS: usize = 5;
/// Writes waiting for the writer; senders wait when it is full.
const QUEUE: usize = 256;

/// The resource a write is about.
#[derive(Clone)]
pub struct Target {
    /// The resource's namespace.
    pub api: Api<AuditExport>,
    pub name: String,
    /// What its Events refer to.
    pub reference: ObjectReference,
}

impl Target {
    /// `object`, in the namespace of `api`.
    pub fn new(api: &Api<AuditExport>, object: &AuditExport) -> Self {
        Target {
            api: api.clone(),
            name: object.name_any(),
            reference: object.object_ref(&()),
        }
    }
}

/// A Kubernetes Event to publish about a resource.
#[derive(Debug, Clone)]
pub struct Note {
    pub type_: EventType,
    /// One of [`super::status::reasons`].
    pub reason: &'static str,
    pub note: String,
}

impl Note {
    /// A `Normal` event.
    pub fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Note {
            type_: EventType::Normal,
            reason,
            note: note.into(),
        }
    }

    /// A `Warning` event.
    pub fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Note {
            type_: EventType::Warning,
            reason,
            note: note.into(),
        }
    }
}

struct Write {
    target: Target,
    status: Option<AuditExportStatus>,
    note: Option<Note>,
    /// A job's write (retried, its Event published even when it failed); else the
    /// controller's (tried once).
    retried: bool,
    reply: oneshot::Sender<Result<(), kube::Error>>,
}

/// The sending side of the status writer; cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    sender: mpsc::Sender<Write>,
    stop: CancellationToken,
}

impl StatusWriter {
    /// Starts the writer task; it ends when [`Self::stop`] is called or every sender is gone.
    pub fn spawn(recorder: Recorder) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        tokio::spawn(run(receiver, recorder, stop.clone()));
        StatusWriter { sender, stop }
    }

    /// Writes `status` (once), then publishes `note`; the error is the write's.
    pub async fn apply(
        &self,
        target: Target,
        status: AuditExportStatus,
        note: Option<Note>,
    ) -> Result<(), kube::Error> {
        self.send_and_wait(target, Some(status), note, false).await
    }

    /// Publishes `note` after every write sent before it.
    pub async fn publish(&self, target: Target, note: Note) {
        // Without a status there is nothing that can fail.
        let _ = self.send_and_wait(target, None, Some(note), false).await;
    }

    /// Writes a job's `status` (retried) and then publishes `note`; waits until both are done,
    /// so a job ends only once its last status is written (a reconcile after it sees it).
    /// A write that failed for good is logged by the writer.
    pub async fn submit(&self, target: Target, status: AuditExportStatus, note: Option<Note>) {
        if let Err(error) = self.send_and_wait(target, Some(status), note, true).await {
            tracing::debug!(%error, "a job's status was not written");
        }
    }

    /// Stops the writer: queued writes are dropped, a retry in progress ends (lost leadership,
    /// shutdown: the next leader writes).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn send_and_wait(
        &self,
        target: Target,
        status: Option<AuditExportStatus>,
        note: Option<Note>,
        retried: bool,
    ) -> Result<(), kube::Error> {
        let (reply, answer) = oneshot::channel();
        let write = Write {
            target,
            status,
            note,
            retried,
            reply,
        };
        let stopped = || kube::Error::Service("the status writer has stopped".into());
        self.sender.send(write).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(mut receiver: mpsc::Receiver<Write>, recorder: Recorder, stop: CancellationToken) {
    loop {
        let write = tokio::select! {
            write = receiver.recv() => match write {
                Some(write) => write,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let retried = write.retried;
        let result = match &write.status {
            None => Ok(()),
            Some(status) if retried => patch_retried(&write.target, status, &stop).await,
            Some(status) => patch_status(&write.target.api, &write.target.name, status).await,
        };
        // A job's event goes out even when its status could not be written.
        if let Some(note) = &write.note
            && (result.is_ok() || retried)
        {
            publish(&recorder, &write.target.reference, note).await;
        }
        let _ = write.reply.send(result);
    }
}

/// A job's write: retried with backoff, a missing resource is not an error, `stop` ends it.
async fn patch_retried(
    target: &Target,
    status: &AuditExportStatus,
    stop: &CancellationToken,
) -> Result<(), kube::Error> {
    let attempt = || patch_status(&target.api, &target.name, status);
    let retried = attempt
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(1))
                .with_max_times(STATUS_ATTEMPTS - 1),
        )
        .when(|error| !is_not_found(error))
        .notify(|error, delay| {
            tracing::debug!(%error, ?delay, name = %target.name, "status write failed; retrying");
        });
    let result = tokio::select! {
        result = retried => result,
        () = stop.cancelled() => return Ok(()),
    };
    match result {
        Err(error) if !is_not_found(&error) => {
            tracing::warn!(%error, name = %target.name, "failed to write export status");
            Err(error)
        }
        _ => Ok(()),
    }
}

/// Whether `error` is the API server's 404.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// Server-side apply of a resource's whole status (the operator owns every status field); the
/// same for `AuditExport` and `AuditExportSchedule`.
pub async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Publishes a Kubernetes Event; failures are logged, never fatal.
async fn publish(recorder: &Recorder, reference: &ObjectReference, note: &Note) {
    let event = Event {
        type_: note.type_,
        reason: note.reason.to_string(),
        note: Some(note.note.clone()),
        action: "Export".to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason = note.reason, "failed to publish a Kubernetes event");
    }
}
