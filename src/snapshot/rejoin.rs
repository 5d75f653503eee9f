//! A cluster replica joining the replicated log at start (docs/cluster.md, "New and rebuilt
//! replicas"): before its store opens, the replica compares where its index continues with
//! the oldest record the stream still holds, and restores an index snapshot when records it
//! never indexed are gone.
//!
//! ```text
//!   local store           stream window [oldest, last]          what happens
//!   ───────────────────   ───────────────────────────────────   ──────────────────────────────
//!   continues at n ≥ oldest                                     consume from n (no restore)
//!   empty                 a snapshot covers the window          restore it, consume after it
//!   empty                 oldest = 1 (nothing expired yet),     consume from 1
//!                         no snapshot
//!   continues at n < oldest  a snapshot covers the window       restore it over the stale store
//!   empty or n < oldest   no snapshot covers the window         refuse to start; nothing changed
//!   embedded store (WAL)                                        untouched; the store refuses it
//! ```
//!
//! A snapshot *covers* the window when it continues at a position inside it (`oldest ≤ next ≤
//! last + 1`): nothing between the snapshot and the stream is missing, and a snapshot beyond
//! the stream's end is from another stream (one deleted and created again). Of the covering
//! snapshots the one furthest along the log is restored (upload times do not order positions
//! across replicas); if its download fails (damaged, or pruned meanwhile) the next is tried.
//! A stale store is replaced only after a snapshot was downloaded and verified whole
//! ([`super::restore`]): without a usable snapshot nothing in the data directory changes.

use std::fmt;
use std::path::Path;

use super::manifest::{self, INDEX_META};
use super::remote::{DestinationOpener, SnapshotTarget};
use super::restore::{self, RestoreMode, RestoreOutcome};
use super::service::SnapshotMetrics;
use super::{SnapshotError, exists, io};
use crate::store::schema::SCHEMA_VERSION;
use crate::store::writer::CommitPayload;

/// Most manifests read when looking for a covering snapshot (the newest ones).
const MAX_MANIFESTS: usize = 64;
/// Most covering snapshots tried before the start fails.
const MAX_ATTEMPTS: usize = 3;

/// The records a replicated log holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogWindow {
    /// The first record still held (JetStream's `first_seq`: 0 for a stream never written,
    /// `last + 1` for one whose records all expired).
    pub first: u64,
    /// The last record ever appended (JetStream's `last_seq`).
    pub last: u64,
}

impl LogWindow {
    /// The oldest position a replica can still read (positions start at 1).
    pub fn oldest(&self) -> u64 {
        self.first.max(1)
    }

    /// Whether a store or snapshot that continues at `next` can follow this log without a
    /// gap (and is not ahead of it).
    pub fn admits(&self, next: u64) -> bool {
        manifest::covers(next, self.oldest()) && next <= self.last.saturating_add(1)
    }
}

/// What a data directory holds, as far as joining the log is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStore {
    /// No store, an unfinished restore, or an index that never committed an event.
    Empty,
    /// A replica's store: the log continues at `next` (its commit's `log_position` + 1).
    Replica { next: u64 },
    /// A store the embedded mode wrote: never replaced (the clustered store refuses it).
    Embedded,
}

/// A complete snapshot of a cluster replica at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Where the log continues after it (its `log_position` + 1).
    pub next: u64,
}

/// What the start does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Open the store as it is and consume from where it continues (or from the start).
    Continue,
    /// Restore one of these snapshots (best first; the next when one fails), then consume
    /// after it.
    Restore(Vec<Candidate>),
    /// Records the replica never indexed are gone and no snapshot covers the window.
    Refuse,
}

/// Whether a replica whose data directory holds `local` must look at the snapshots.
pub fn needs_snapshot(local: LocalStore, window: LogWindow) -> bool {
    match local {
        LocalStore::Embedded => false,
        LocalStore::Empty => true,
        LocalStore::Replica { next } => manifest::needs_restore(Some(next), window.oldest()),
    }
}

/// The decision, from the local store, the stream's window and the complete snapshots of
/// cluster replicas at the destination (`candidates`, any order).
pub fn plan(local: LocalStore, window: LogWindow, candidates: &[Candidate]) -> Plan {
    if !needs_snapshot(local, window) {
        return Plan::Continue;
    }
    let mut usable: Vec<Candidate> = candidates
        .iter()
        .filter(|candidate| window.admits(candidate.next))
        .cloned()
        .collect();
    // Furthest along the log first; of equal positions the newest.
    usable.sort_by(|a, b| b.next.cmp(&a.next).then_with(|| b.id.cmp(&a.id)));
    if !usable.is_empty() {
        return Plan::Restore(usable);
    }
    if local == LocalStore::Empty && window.oldest() <= 1 {
        // The stream still holds every record: read it from the start.
        return Plan::Continue;
    }
    Plan::Refuse
}

/// What `data_dir` holds (blocking, small reads).
pub fn read_local(data_dir: &Path) -> Result<LocalStore, SnapshotError> {
    if exists(&restore::marker_path(data_dir))? {
        return Ok(LocalStore::Empty);
    }
    if restore::has_wal(data_dir) {
        return Ok(LocalStore::Embedded);
    }
    let meta = data_dir.join(INDEX_META);
    let bytes = match std::fs::read(&meta) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LocalStore::Empty);
        }
        Err(error) => return Err(io("read", &meta)(error)),
    };
    let payload = commit_payload(&bytes).map_err(SnapshotError::Payload)?;
    Ok(match payload.log_position {
        Some(position) => LocalStore::Replica {
            next: position.saturating_add(1),
        },
        None if payload.next_seq == 0 => LocalStore::Empty,
        None => LocalStore::Embedded,
    })
}

/// The commit payload of an index `meta.json`.
fn commit_payload(meta_json: &[u8]) -> Result<CommitPayload, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        payload: Option<String>,
    }
    let meta: Meta = serde_json::from_slice(meta_json)?;
    CommitPayload::parse(meta.payload.as_deref())
}

/// Why the snapshots could not help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotsSeen {
    /// `[snapshots]` names no destination.
    NotConfigured,
    /// `[snapshots] restore_on_start = false`.
    RestoreOff(String),
    /// The destination holds no complete snapshot of a cluster replica.
    None(String),
    /// The furthest snapshot continues before the window (or beyond the stream's end).
    NoneCovers {
        destination: String,
        id: String,
        next: u64,
    },
}

/// A replica that cannot join the log without losing events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Where the local store continues (`None`: empty data directory).
    pub local_next: Option<u64>,
    pub window: LogWindow,
    pub snapshots: SnapshotsSeen,
    pub data_dir: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = self.window.oldest();
        match self.local_next {
            Some(next) => write!(
                f,
                "this replica's index continues at stream position {next}, but the stream holds \
                 positions {oldest}..={} only: records {next}..={} expired before this replica \
                 indexed them",
                self.window.last,
                oldest.saturating_sub(1)
            )?,
            None => write!(
                f,
                "the data directory holds no store, and the stream holds positions {oldest}..={} \
                 only: records 1..={} expired",
                self.window.last,
                oldest.saturating_sub(1)
            )?,
        }
        match &self.snapshots {
            SnapshotsSeen::NotConfigured => {
                write!(f, "; no snapshot destination is configured ([snapshots])")?
            }
            SnapshotsSeen::RestoreOff(destination) => write!(
                f,
                "; [snapshots] restore_on_start is off (destination {destination})"
            )?,
            SnapshotsSeen::None(destination) => write!(
                f,
                "; the snapshot destination {destination} holds no snapshot of a cluster replica"
            )?,
            SnapshotsSeen::NoneCovers {
                destination,
                id,
                next,
            } => write!(
                f,
                "; no snapshot at {destination} covers that window (the furthest, {id}, \
                 continues at position {next})"
            )?,
        }
        write!(
            f,
            ". Nothing in {} was changed. To bring this replica back, let a healthy replica \
             upload a snapshot to the destination every replica shares ([snapshots], \
             interval_seconds) and start this one again with that destination; or raise the \
             stream's max_age so that the window outlasts a replica's absence",
            self.data_dir
        )
    }
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    #[error("{0}")]
    Gap(Box<Gap>),
    #[error(
        "the index snapshot needed to rejoin the stream could not be read from {destination} (nothing in the data directory was changed): {source}"
    )]
    Destination {
        destination: String,
        #[source]
        source: SnapshotError,
    },
    #[error("restoring an index snapshot failed (nothing in the data directory was changed): {0}")]
    Restore(#[source] SnapshotError),
    #[error(transparent)]
    Local(#[from] SnapshotError),
}

/// Where the snapshots to rejoin from come from.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotSource<'a> {
    /// `[snapshots]` names no destination.
    NotConfigured,
    /// A destination, and whether `restore_on_start` is on.
    Destination {
        opener: &'a DestinationOpener,
        restore_on_start: bool,
    },
}

/// Before the store opens: restores a covering snapshot into `data_dir` when the replica's
/// store is empty or behind the stream's `window`. `Ok(None)`: nothing restored (the store
/// opens as it is). Fails, changing nothing, when records the replica never indexed are gone
/// and no snapshot covers the window, or when the snapshot cannot be read.
pub async fn rejoin(
    snapshots: SnapshotSource<'_>,
    data_dir: &Path,
    window: LogWindow,
    metrics: &SnapshotMetrics,
) -> Result<Option<RestoreOutcome>, RejoinError> {
    let local = read_local(data_dir)?;
    if !needs_snapshot(local, window) {
        tracing::info!(
            ?local,
            oldest = window.oldest(),
            last = window.last,
            "the replica's index continues inside the stream's window: no restore"
        );
        return Ok(None);
    }
    let gap = |snapshots: SnapshotsSeen| refusal(local, window, data_dir, snapshots);
    let opener = match snapshots {
        SnapshotSource::NotConfigured => {
            return decide_without_snapshots(local, window, gap(SnapshotsSeen::NotConfigured));
        }
        SnapshotSource::Destination {
            opener,
            restore_on_start: false,
        } => {
            let off = gap(SnapshotsSeen::RestoreOff(opener.location()));
            return decide_without_snapshots(local, window, off);
        }
        SnapshotSource::Destination { opener, .. } => opener,
    };
    let destination = opener.location();
    let target = match opener.open().await {
        Ok(target) => target,
        Err(source) => {
            let unreachable = RejoinError::Destination {
                destination,
                source,
            };
            // A replica that can read the whole stream does not need the destination.
            return decide_without_snapshots(local, window, unreachable);
        }
    };
    restore_to_join(&target, &destination, data_dir, window, metrics).await
}

/// The part of [`rejoin`] after the destination is open: lists the complete snapshots of
/// cluster replicas at `target` (`destination` names it in messages), decides, and restores.
pub async fn restore_to_join(
    target: &SnapshotTarget,
    destination: &str,
    data_dir: &Path,
    window: LogWindow,
    metrics: &SnapshotMetrics,
) -> Result<Option<RestoreOutcome>, RejoinError> {
    let local = read_local(data_dir)?;
    let gap = |snapshots: SnapshotsSeen| refusal(local, window, data_dir, snapshots);
    let candidates = match candidates(target).await {
        Ok(candidates) => candidates,
        Err(source) => {
            let unreadable = RejoinError::Destination {
                destination: destination.to_string(),
                source,
            };
            return decide_without_snapshots(local, window, unreadable);
        }
    };
    match plan(local, window, &candidates) {
        Plan::Continue => {
            tracing::info!(
                %destination,
                "no index snapshot to restore; the stream still holds every record: reading it from the start"
            );
            Ok(None)
        }
        Plan::Refuse => {
            let furthest = candidates
                .iter()
                .max_by(|a, b| a.next.cmp(&b.next).then_with(|| a.id.cmp(&b.id)));
            Err(gap(match furthest {
                None => SnapshotsSeen::None(destination.to_string()),
                Some(candidate) => SnapshotsSeen::NoneCovers {
                    destination: destination.to_string(),
                    id: candidate.id.clone(),
                    next: candidate.next,
                },
            }))
        }
        Plan::Restore(usable) => restore_first(target, destination, data_dir, &usable, metrics)
            .await
            .map(Some),
    }
}

/// The refusal of a replica whose data directory holds `local`.
fn refusal(
    local: LocalStore,
    window: LogWindow,
    data_dir: &Path,
    snapshots: SnapshotsSeen,
) -> RejoinError {
    RejoinError::Gap(Box::new(Gap {
        local_next: match local {
            LocalStore::Replica { next } => Some(next),
            _ => None,
        },
        window,
        snapshots,
        data_dir: data_dir.display().to_string(),
    }))
}

/// Without snapshots: a replica continues only if the stream still holds every record.
fn decide_without_snapshots(
    local: LocalStore,
    window: LogWindow,
    refusal: RejoinError,
) -> Result<Option<RestoreOutcome>, RejoinError> {
    match plan(local, window, &[]) {
        Plan::Continue => {
            tracing::info!("the stream still holds every record: reading it from the start");
            Ok(None)
        }
        Plan::Refuse | Plan::Restore(_) => Err(refusal),
    }
}

/// The complete snapshots of cluster replicas at `target` (of the newest [`MAX_MANIFESTS`];
/// unreadable manifests and embedded stores' snapshots are left out).
async fn candidates(target: &SnapshotTarget) -> Result<Vec<Candidate>, SnapshotError> {
    let ids = target.complete_ids().await?;
    let mut candidates = Vec::new();
    for id in ids.into_iter().take(MAX_MANIFESTS) {
        match target.manifest(&id, SCHEMA_VERSION).await {
            Ok(manifest) => match manifest.log_position() {
                Some(position) => candidates.push(Candidate {
                    id,
                    next: position.saturating_add(1),
                }),
                None => tracing::debug!(%id, "an embedded store's snapshot: not for a replica"),
            },
            Err(error) => tracing::warn!(%id, %error, "an index snapshot is not usable"),
        }
    }
    Ok(candidates)
}

/// Restores the first of `usable` that downloads whole (at most [`MAX_ATTEMPTS`]).
async fn restore_first(
    target: &SnapshotTarget,
    destination: &str,
    data_dir: &Path,
    usable: &[Candidate],
    metrics: &SnapshotMetrics,
) -> Result<RestoreOutcome, RejoinError> {
    let mut first_error = None;
    for candidate in usable.iter().take(MAX_ATTEMPTS) {
        let restored = restore::restore(
            target,
            data_dir,
            Some(&candidate.id),
            RestoreMode::ReplaceStale,
        )
        .await;
        match restored {
            Ok(Some(outcome)) => {
                metrics.restored(&outcome);
                tracing::info!(
                    id = %outcome.id,
                    continues_at = outcome.position,
                    files = outcome.files,
                    bytes = outcome.bytes,
                    %destination,
                    "restored the replica's index from a snapshot; consuming the stream after it"
                );
                return Ok(outcome);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(id = %candidate.id, %error, "restoring an index snapshot failed; trying the next");
                let fatal = matches!(
                    error,
                    SnapshotError::Locked(_) | SnapshotError::HasWal(_) | SnapshotError::Io { .. }
                );
                first_error.get_or_insert(error);
                if fatal {
                    break;
                }
            }
        }
    }
    metrics.restore_failed();
    Err(RejoinError::Restore(first_error.unwrap_or_else(|| {
        SnapshotError::NotFound("covering the stream's window".into())
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(first: u64, last: u64) -> LogWindow {
        LogWindow { first, last }
    }

    fn candidate(id: &str, next: u64) -> Candidate {
        Candidate {
            id: id.into(),
            next,
        }
    }

    #[test]
    fn a_store_inside_the_window_continues_without_looking_at_snapshots() {
        let snapshots = [candidate("01B", 90)];
        // Continues exactly at the oldest record: nothing is missing.
        let at_edge = LocalStore::Replica { next: 11 };
        assert!(!needs_snapshot(at_edge, window(11, 40)));
        assert_eq!(plan(at_edge, window(11, 40), &snapshots), Plan::Continue);
        let inside = LocalStore::Replica { next: 30 };
        assert_eq!(plan(inside, window(11, 40), &snapshots), Plan::Continue);
        // Every record it indexed expired, nothing after: still inside.
        let all_expired = LocalStore::Replica { next: 41 };
        assert_eq!(plan(all_expired, window(41, 40), &[]), Plan::Continue);
        // A store the embedded mode wrote is never replaced.
        assert_eq!(
            plan(LocalStore::Embedded, window(50, 60), &snapshots),
            Plan::Continue
        );
    }

    #[test]
    fn a_store_behind_the_window_restores_the_furthest_covering_snapshot() {
        let behind = LocalStore::Replica { next: 10 };
        let snapshots = [
            candidate("01A", 5),  // before the window
            candidate("01B", 11), // exactly at the oldest record
            candidate("01C", 30),
            candidate("01D", 30), // as far, newer
            candidate("01E", 25), // newer upload, but behind 01D (a lagging uploader)
            candidate("01F", 42), // beyond the stream's end: another stream's
        ];
        assert_eq!(
            plan(behind, window(11, 40), &snapshots),
            Plan::Restore(vec![
                candidate("01D", 30),
                candidate("01C", 30),
                candidate("01E", 25),
                candidate("01B", 11),
            ])
        );
        // The stream's end continues at 41: a snapshot there covers.
        assert_eq!(
            plan(behind, window(11, 40), &[candidate("01G", 41)]),
            Plan::Restore(vec![candidate("01G", 41)])
        );
    }

    #[test]
    fn without_a_covering_snapshot_a_replica_behind_is_refused() {
        let behind = LocalStore::Replica { next: 10 };
        assert_eq!(plan(behind, window(11, 40), &[]), Plan::Refuse);
        assert_eq!(
            plan(
                behind,
                window(11, 40),
                &[candidate("01A", 10), candidate("01B", 99)]
            ),
            Plan::Refuse
        );
        // An empty replica too, once the window moved past the first record.
        assert_eq!(plan(LocalStore::Empty, window(2, 40), &[]), Plan::Refuse);
    }

    #[test]
    fn an_empty_replica_restores_when_it_can_and_reads_a_whole_stream_otherwise() {
        // A never-written stream (first_seq 0) and one that still holds record 1.
        for whole in [window(0, 0), window(1, 40)] {
            assert!(needs_snapshot(LocalStore::Empty, whole));
            assert_eq!(plan(LocalStore::Empty, whole, &[]), Plan::Continue);
        }
        assert_eq!(
            plan(LocalStore::Empty, window(1, 40), &[candidate("01A", 20)]),
            Plan::Restore(vec![candidate("01A", 20)])
        );
        // A stream whose every record expired: only a snapshot at its end covers it.
        assert_eq!(
            plan(LocalStore::Empty, window(41, 40), &[candidate("01A", 41)]),
            Plan::Restore(vec![candidate("01A", 41)])
        );
        assert_eq!(
            plan(LocalStore::Empty, window(41, 40), &[candidate("01A", 40)]),
            Plan::Refuse
        );
    }

    #[test]
    fn the_local_store_is_read_from_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(read_local(root).unwrap(), LocalStore::Empty);
        std::fs::create_dir_all(root.join("index")).unwrap();
        let write_meta = |payload: Option<&str>| {
            let meta = match payload {
                Some(payload) => {
                    serde_json::json!({"segments": [], "opstamp": 3, "payload": payload})
                }
                None => serde_json::json!({"segments": [], "opstamp": 0}),
            };
            std::fs::write(root.join(INDEX_META), meta.to_string()).unwrap();
        };
        write_meta(None);
        assert_eq!(read_local(root).unwrap(), LocalStore::Empty);
        write_meta(Some(
            r#"{"next_seq":12,"schema_version":3,"log_position":7}"#,
        ));
        assert_eq!(read_local(root).unwrap(), LocalStore::Replica { next: 8 });
        write_meta(Some(r#"{"next_seq":12,"schema_version":3}"#));
        assert_eq!(read_local(root).unwrap(), LocalStore::Embedded);
        write_meta(Some("not json"));
        assert!(read_local(root).is_err());
        // An unfinished restore holds no store; WAL segments are the embedded mode's.
        std::fs::write(restore::marker_path(root), b"x").unwrap();
        assert_eq!(read_local(root).unwrap(), LocalStore::Empty);
        std::fs::remove_file(restore::marker_path(root)).unwrap();
        std::fs::create_dir_all(root.join("wal")).unwrap();
        std::fs::write(root.join("wal").join("00000000000000000000.wal"), b"x").unwrap();
        assert_eq!(read_local(root).unwrap(), LocalStore::Embedded);
    }

    #[test]
    fn a_refusal_names_the_gap_the_destination_and_the_remedy() {
        let gap = Gap {
            local_next: Some(4),
            window: window(11, 40),
            snapshots: SnapshotsSeen::NoneCovers {
                destination: "s3://audit/prod/".into(),
                id: "01A".into(),
                next: 9,
            },
            data_dir: "/var/lib/audit".into(),
        };
        let text = gap.to_string();
        for part in [
            "continues at stream position 4",
            "positions 11..=40",
            "records 4..=10 expired",
            "s3://audit/prod/",
            "01A",
            "Nothing in /var/lib/audit was changed",
            "upload a snapshot",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let empty = Gap {
            local_next: None,
            snapshots: SnapshotsSeen::NotConfigured,
            ..gap
        };
        let text = empty.to_string();
        assert!(text.contains("holds no store"), "{text}");
        assert!(text.contains("records 1..=10 expired"), "{text}");
        assert!(text.contains("[snapshots]"), "{text}");
    }
}
