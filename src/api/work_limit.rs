//! Global bounds on expensive request work (summary aggregation, ingest parsing).
//!
//! Rate limits are per identity; these are per process: whatever tenant sends the work, at
//! most `slots` pieces of one kind run at once. A request waits briefly for a slot, then is
//! refused with 503 `service_unavailable` and `Retry-After` — the service sheds load instead
//! of growing its memory until the kernel kills it for every tenant.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::config::WorkLimits;

/// What a refused client is told to wait before retrying, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// One kind of bounded work.
#[derive(Debug, Clone)]
pub struct WorkGate {
    /// Plural noun for messages and logs ("summaries").
    what: &'static str,
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl WorkGate {
    /// A gate letting `slots` pieces of work run at once, each caller waiting up to `wait`.
    pub fn new(what: &'static str, slots: usize, wait: Duration) -> Self {
        WorkGate {
            what,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
        }
    }

    /// A slot, held until the permit is dropped; 503 with `Retry-After` when none frees up in
    /// time.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // A closed semaphore never happens (nobody closes it); treat it like a timeout.
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(work = self.what, "all slots busy; request refused with 503");
                Err(ApiError::busy(
                    format!(
                        "the service is busy with other {}; retry in {RETRY_AFTER_SECS} s",
                        self.what
                    ),
                    RETRY_AFTER_SECS,
                ))
            }
        }
    }
}

/// The gates of every kind of bounded work; cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkGates {
    pub summaries: WorkGate,
    pub ingest_parses: WorkGate,
    /// Test hook: how long a summary keeps its slot after finishing (zero in production).
    pub summary_hold: Duration,
}

impl WorkGates {
    pub fn new(limits: &WorkLimits) -> Self {
        WorkGates {
            summaries: WorkGate::new(
                "summaries",
                limits.max_concurrent_summaries,
                limits.permit_wait,
            ),
            ingest_parses: WorkGate::new(
                "ingest requests",
                limits.max_concurrent_ingest_parses,
                limits.permit_wait,
            ),
            summary_hold: limits.summary_hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_refuses_after_the_wait_and_frees_on_drop() {
        let gate = WorkGate::new("summaries", 1, Duration::from_millis(20));
        let held = gate.enter().await.unwrap();
        let refused = gate.enter().await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 503);
        assert_eq!(refused.code, "service_unavailable");
        assert_eq!(refused.details.unwrap()["retry_after"], 1);
        drop(held);
        assert!(gate.enter().await.is_ok());
    }
}
