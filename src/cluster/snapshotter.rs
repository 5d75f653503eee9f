//! The cluster's single index snapshot uploader (docs/cluster.md, "New and rebuilt
//! replicas"): among the replicas with periodic snapshots (`[snapshots] interval_seconds`),
//! only the holder of the role lease `role.snapshotter` uploads, once per interval, and it
//! prunes the snapshots of every replica ([`crate::snapshot::SnapshotTarget::prune`]), so those
//! a former holder left beyond the retention count go too. The lease is confirmed (renewed)
//! before each upload and again before the pruning; when the holder dies, its lease lapses
//! after one TTL and another replica takes the role at its next attempt.

use super::lease::RoleLease;
use crate::snapshot::service::UploadGate;

/// The role's name (lease key `role.snapshotter`).
pub const SNAPSHOTTER_ROLE: &str = "snapshotter";

#[async_trait::async_trait]
impl UploadGate for RoleLease {
    async fn may_upload(&self) -> bool {
        self.confirm().await
    }
}
