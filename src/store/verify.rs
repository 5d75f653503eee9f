//! `verify --data-dir`: recomputes every tenant's hash chain from the events a stopped store
//! holds and checks it against the stored links and the signed checkpoints.
//!
//! Two checks, for two attackers with disk access:
//!
//! * **Local links.** Each event's stored `chain_hash` must equal SHA-256(the previous stored
//!   hash ‖ the event's canonical bytes), and `chain_seq` must count up by one. An event edited
//!   in place, deleted, inserted or moved breaks this at the exact position, which is reported.
//! * **Checkpoints.** An attacker who also rewrites every following `chain_hash` passes the
//!   first check, but not the second: the chain recomputed from the events' content alone must
//!   reach each signed checkpoint's `chain_head` at its `event_count`, and checkpoints must be
//!   signed by a trusted key and link to each other.
//!
//! Only committed events are checked: after a crash, the WAL's acknowledged tail is committed
//! (and chained) at the next start.
//!
//! Events deleted by retention leave gaps; each gap that ends right after a recorded retention
//! anchor (the link of the newest deleted event before it, `integrity/retention-anchors.json`,
//! [`super::retention`]) is crossed from that anchor, both by the stored and the recomputed
//! chain. A checkpoint at a deleted position is checked against the anchor there when there is
//! one, and otherwise counted as expired (`checkpoints_expired`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use tantivy::{Index, TantivyDocument};

use super::StoreError;
use super::chain::{self, ChainColumns};
use super::migrate;
use super::retention::RetentionAnchors;
use super::schema::{self, Fields};
use super::source::SourceColumns;
use super::writer::CommitPayload;
use crate::event::AuditEvent;
use crate::integrity::canonical;
use crate::integrity::chain::ChainLink;
use crate::integrity::checkpoint::{self, checkpoint_hash};
use crate::integrity::keys::PublicKeys;

/// Most problems listed per tenant (the count is always exact).
const MAX_PROBLEMS_PER_TENANT: usize = 50;

/// One thing that does not hold, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub tenant_id: String,
    /// The position in the tenant's chain (`chain_seq`) where it shows, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    pub message: String,
}

/// What `verify --data-dir` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreReport {
    pub events: u64,
    pub tenants: usize,
    pub checkpoints: usize,
    /// Checkpoints at positions deleted by retention (not recomputable; their signatures and
    /// their chain are still checked).
    pub checkpoints_expired: usize,
    /// Gaps crossed from a retention anchor.
    pub retention_gaps: usize,
    /// Problems beyond the per-tenant listing limit, counted only.
    pub unlisted_problems: u64,
    pub problems: Vec<Problem>,
}

impl StoreReport {
    /// Whether everything holds.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.unlisted_problems == 0
    }
}

/// Per tenant: the stored chain as read, and the chain recomputed from content alone.
#[derive(Default)]
struct TenantWalk {
    stored: ChainLink,
    recomputed: ChainLink,
    /// Recomputed heads at the positions the checkpoints name.
    at_checkpoints: HashMap<u64, [u8; 32]>,
    problems: usize,
}

/// Verifies the stopped store in `data_dir` against the checkpoints, trusting `keys`.
pub fn verify_data_dir(data_dir: &Path, keys: &PublicKeys) -> Result<StoreReport, StoreError> {
    let _lock = super::lock_data_dir(data_dir)?;
    let index = Index::open_in_dir(data_dir.join("index"))?;
    let payload = CommitPayload::parse(index.load_metas()?.payload.as_deref())
        .map_err(StoreError::Payload)?;
    if migrate::needs_rebuild(&index, &payload)? {
        return Err(StoreError::Index(tantivy::TantivyError::InvalidArgument(
            "the index was written by an older version; start the service once to upgrade it, \
             then verify"
                .to_owned(),
        )));
    }
    let (_, fields) = schema::build_schema();
    let checkpoints = checkpoint::read_log(&data_dir.join("integrity")).map_err(|error| {
        StoreError::Index(tantivy::TantivyError::InternalError(error.to_string()))
    })?;
    let mut report = StoreReport {
        checkpoints: checkpoints.len(),
        ..StoreReport::default()
    };
    let anchors = RetentionAnchors::load(&RetentionAnchors::path_in(&data_dir.join("integrity")))?;
    let wanted = positions_named(&checkpoints);
    let mut walks: HashMap<String, TenantWalk> = HashMap::new();
    let known = Known {
        fields: &fields,
        wanted: &wanted,
        anchors: &anchors,
    };
    walk_events(&index, &known, &mut walks, &mut report)?;
    report.tenants = walks.len();
    check_checkpoints(&checkpoints, keys, &walks, &anchors, &mut report);
    Ok(report)
}

fn positions_named(checkpoints: &[Value]) -> HashMap<String, HashSet<u64>> {
    let mut wanted: HashMap<String, HashSet<u64>> = HashMap::new();
    for checkpoint in checkpoints {
        if let (Some(tenant), Some(count)) = (
            checkpoint.get("tenant_id").and_then(Value::as_str),
            checkpoint.get("event_count").and_then(Value::as_u64),
        ) {
            wanted.entry(tenant.to_owned()).or_default().insert(count);
        }
    }
    wanted
}

/// What the walk looks things up in.
struct Known<'a> {
    fields: &'a Fields,
    /// Chain positions the checkpoints name, per tenant.
    wanted: &'a HashMap<String, HashSet<u64>>,
    anchors: &'a RetentionAnchors,
}

fn walk_events(
    index: &Index,
    known: &Known<'_>,
    walks: &mut HashMap<String, TenantWalk>,
    report: &mut StoreReport,
) -> Result<(), StoreError> {
    let (fields, wanted) = (known.fields, known.wanted);
    let searcher = index.reader()?.searcher();
    let mut readers = Vec::new();
    for segment in searcher.segment_readers() {
        let store = segment
            .get_store_reader(2)
            .map_err(tantivy::TantivyError::from)?;
        readers.push((
            SourceColumns::open(segment)?,
            store,
            ChainColumns::open(segment)?,
        ));
    }
    let mut bytes = Vec::with_capacity(512);
    for at in chain::documents_in_sequence_order(&searcher)? {
        let (columns, store, links) = &readers[at.segment as usize];
        let document: TantivyDocument = store.get(at.doc)?;
        let source = columns.restore(at.doc, fields.stored_source(&document))?;
        report.events += 1;
        let event: AuditEvent = match serde_json::from_slice(&source) {
            Ok(event) => event,
            Err(error) => {
                report.problems.push(Problem {
                    tenant_id: String::new(),
                    sequence: None,
                    message: format!(
                        "the event at ingest position {} does not decode: {error}",
                        at.seq
                    ),
                });
                continue;
            }
        };
        bytes.clear();
        canonical::write_event(&event, &mut bytes);
        let walk = walks.entry(event.tenant_id.clone()).or_default();
        let found = links.link(at.doc);
        if let Some(anchor) = found
            .filter(|link| link.seq > walk.stored.seq + 1)
            .and_then(|link| known.anchors.at(&event.tenant_id, link.seq - 1))
        {
            // Events before this one were deleted by retention: continue from their anchor.
            walk.stored = anchor;
            walk.recomputed = anchor;
            report.retention_gaps += 1;
        }
        walk.recomputed = walk.recomputed.next(&bytes);
        if wanted
            .get(&event.tenant_id)
            .is_some_and(|positions| positions.contains(&walk.recomputed.seq))
        {
            walk.at_checkpoints
                .insert(walk.recomputed.seq, walk.recomputed.hash);
        }
        if let Some((sequence, message)) =
            local_link_problem(&walk.stored, found.as_ref(), &bytes, &event)
        {
            note(report, walk, &event.tenant_id, Some(sequence), message);
        }
        walk.stored = found.unwrap_or_else(|| walk.stored.next(&bytes));
    }
    Ok(())
}

/// What is wrong with `found`, the stored link of `event`, after the stored link `previous`,
/// and the chain position it concerns.
fn local_link_problem(
    previous: &ChainLink,
    found: Option<&ChainLink>,
    bytes: &[u8],
    event: &AuditEvent,
) -> Option<(u64, String)> {
    let expected = previous.next(bytes);
    let Some(found) = found else {
        let message = format!("event {} carries no chain link", event.id);
        return Some((expected.seq, message));
    };
    let message = if found.seq > expected.seq {
        format!(
            "events #{} to #{} are missing before event {} (deleted)",
            expected.seq,
            found.seq - 1,
            event.id
        )
    } else if found.seq < expected.seq {
        format!(
            "event {} claims position #{} after #{} (inserted, duplicated or reordered)",
            event.id, found.seq, previous.seq
        )
    } else if found.hash != expected.hash {
        format!(
            "event {} does not match its chain_hash (edited, or an event before it was)",
            event.id
        )
    } else {
        return None;
    };
    // A gap is named by its first missing position, anything else by the event's own.
    Some((expected.seq.min(found.seq), message))
}

fn note(
    report: &mut StoreReport,
    walk: &mut TenantWalk,
    tenant: &str,
    sequence: Option<u64>,
    message: String,
) {
    walk.problems += 1;
    if walk.problems > MAX_PROBLEMS_PER_TENANT {
        report.unlisted_problems += 1;
        return;
    }
    report.problems.push(Problem {
        tenant_id: tenant.to_owned(),
        sequence,
        message,
    });
}

fn check_checkpoints(
    checkpoints: &[Value],
    keys: &PublicKeys,
    walks: &HashMap<String, TenantWalk>,
    anchors: &RetentionAnchors,
    report: &mut StoreReport,
) {
    // tenant -> (sequence, hash) of its previous checkpoint
    let mut previous: HashMap<String, (u64, String)> = HashMap::new();
    for checkpoint in checkpoints {
        let tenant = checkpoint
            .get("tenant_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let number = |name: &str| checkpoint.get(name).and_then(Value::as_u64).unwrap_or(0);
        let (sequence, count) = (number("sequence"), number("event_count"));
        let mut problem = |message: String| {
            report.problems.push(Problem {
                tenant_id: tenant.clone(),
                sequence: Some(count),
                message: format!("checkpoint {sequence}: {message}"),
            });
        };
        if let Err(error) = checkpoint.as_object().map_or(
            Err(crate::integrity::keys::SignatureError::Missing),
            |object| keys.verify_object(object).map(|_| ()),
        ) {
            problem(format!("not trusted: {error}"));
        }
        let (expected_sequence, expected_link) = match previous.get(&tenant) {
            Some((last, hash)) => (last + 1, Some(hash.clone())),
            None => (1, None),
        };
        let link = checkpoint
            .get("previous_checkpoint_hash")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if sequence != expected_sequence || link != expected_link {
            problem(format!(
                "does not follow checkpoint {} of this tenant (a checkpoint was removed, \
                 inserted or altered)",
                expected_sequence.saturating_sub(1)
            ));
        }
        previous.insert(tenant.clone(), (sequence, checkpoint_hash(checkpoint)));
        let head = checkpoint.get("chain_head").and_then(Value::as_str);
        let recomputed = walks
            .get(&tenant)
            .and_then(|walk| walk.at_checkpoints.get(&count))
            .or(anchors.at(&tenant, count).as_ref().map(|link| &link.hash))
            .map(hex::encode);
        let expired = anchors
            .newest(&tenant)
            .is_some_and(|newest| count <= newest.seq);
        match recomputed {
            None if expired => report.checkpoints_expired += 1,
            None => problem(format!(
                "covers {count} events, but the store holds fewer for this tenant (events deleted)"
            )),
            Some(hash) if Some(hash.as_str()) != head => problem(format!(
                "the chain recomputed from the stored events differs at event #{count} (events \
                 edited, deleted, inserted or reordered at or before #{count})"
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tantivy::query::RangeQuery;
    use tantivy::schema::Value as _;
    use tantivy::{IndexWriter, Term};

    use super::*;
    use crate::event::{Action, IdentityType};
    use crate::integrity::checkpoint::CheckpointLog;
    use crate::integrity::keys::Keyring;
    use crate::store::{PreparedEvent, Store, StoreConfig, StoreMetrics};

    fn event(tenant: &str, i: i64) -> PreparedEvent {
        let event = AuditEvent {
            id: format!("evt_{i}"),
            tenant_id: tenant.into(),
            timestamp_us: 1_767_225_600_000_000 + i,
            action: Action::Read,
            secret_path: Some(format!("apps/{i}")),
            identity_type: IdentityType::User,
            identity_id: "user:a".into(),
            source_ip: None,
            user_agent: None,
            success: true,
            duration_ms: Some(3),
            request_id: None,
            extra_data: Default::default(),
        };
        PreparedEvent::new(event, true)
    }

    /// A stopped store of two tenants (6 and 3 events) with a checkpoint of each.
    async fn store_with_checkpoints(dir: &Path) -> PublicKeys {
        let store = Store::open(
            &StoreConfig::with_data_dir(dir),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        for i in 0..6 {
            let mut batch = vec![event("tnt_a", i)];
            if i % 2 == 0 {
                batch.push(event("tnt_b", i));
            }
            store.ingest(batch).await.unwrap();
        }
        store.flush().await.unwrap();
        let ring = Keyring::load(&dir.join("integrity/keys"), true).unwrap();
        let log = CheckpointLog::open(&dir.join("integrity"), ring.clone()).unwrap();
        assert_eq!(log.checkpoint(store.committed_heads().iter()).unwrap(), 2);
        store.shutdown().await;
        ring.public_keys()
    }

    /// Replaces the document of ingest position `seq` with `edit(document)`, as an attacker
    /// with disk access would, keeping the commit payload.
    /// With `forge`, the stored link is recomputed for the edited content (an attacker who
    /// rewrites the chain; `seq` must then be its tenant's last event).
    fn tamper(dir: &Path, seq: u64, forge: bool, edit: impl Fn(&mut AuditEvent)) {
        let index = Index::open_in_dir(dir.join("index")).unwrap();
        let payload = index.load_metas().unwrap().payload;
        let (_, fields) = schema::build_schema();
        let searcher = index.reader().unwrap().searcher();
        let at = chain::documents_in_sequence_order(&searcher)
            .unwrap()
            .into_iter()
            .find(|at| at.seq == seq)
            .unwrap();
        let segment = searcher.segment_reader(at.segment);
        let document: TantivyDocument = segment.get_store_reader(1).unwrap().get(at.doc).unwrap();
        let columns = SourceColumns::open(segment).unwrap();
        let stored = document
            .get_first(fields.source)
            .unwrap()
            .as_bytes()
            .unwrap()
            .to_vec();
        let source = columns.restore(at.doc, &stored).unwrap();
        let mut event: AuditEvent = serde_json::from_slice(&source).unwrap();
        let mut link = chain::link_of(segment, at.doc).unwrap().unwrap();
        edit(&mut event);
        if forge {
            let mut heads = crate::integrity::chain::ChainHeads::default();
            for earlier in chain::documents_in_sequence_order(&searcher).unwrap() {
                if earlier.seq >= seq {
                    break;
                }
                let reader = searcher.segment_reader(earlier.segment);
                let doc: TantivyDocument = reader
                    .get_store_reader(1)
                    .unwrap()
                    .get(earlier.doc)
                    .unwrap();
                let stored = doc
                    .get_first(fields.source)
                    .unwrap()
                    .as_bytes()
                    .unwrap()
                    .to_vec();
                let source = SourceColumns::open(reader)
                    .unwrap()
                    .restore(earlier.doc, &stored)
                    .unwrap();
                heads.append(&serde_json::from_slice(&source).unwrap());
            }
            link = heads.append(&event);
        }
        let source = serde_json::to_vec(&event).unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let seq_term = |value| Term::from_field_u64(fields.seq, value);
        writer
            .delete_query(Box::new(RangeQuery::new(
                std::ops::Bound::Included(seq_term(seq)),
                std::ops::Bound::Included(seq_term(seq)),
            )))
            .unwrap();
        writer
            .add_document(fields.document(&event, seq, &source, link))
            .unwrap();
        let mut commit = writer.prepare_commit().unwrap();
        if let Some(payload) = payload {
            commit.set_payload(&payload);
        }
        commit.commit().unwrap();
        writer.wait_merging_threads().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_untouched_store_verifies_and_an_edited_event_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let keys = store_with_checkpoints(dir.path()).await;
        let report = verify_data_dir(dir.path(), &keys).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(
            (report.events, report.tenants, report.checkpoints),
            (9, 2, 2)
        );

        // Ingest positions: a0 b0 a1 a2 b2 a3 a4 b4 a5 → seq 3 is tnt_a's event #3.
        tamper(dir.path(), 3, false, |event| event.success = false);
        let report = verify_data_dir(dir.path(), &keys).unwrap();
        assert!(!report.ok());
        let edited = &report.problems[0];
        assert_eq!(
            (edited.tenant_id.as_str(), edited.sequence),
            ("tnt_a", Some(3))
        );
        assert!(
            edited.message.contains("evt_2") && edited.message.contains("edited"),
            "{edited:?}"
        );
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.message.contains("checkpoint 1")),
            "the checkpoint no longer matches: {:?}",
            report.problems
        );
        assert!(
            report
                .problems
                .iter()
                .all(|problem| problem.tenant_id == "tnt_a")
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_rewritten_chain_is_caught_by_the_checkpoints_and_untrusted_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let keys = store_with_checkpoints(dir.path()).await;
        // Edit tnt_b's last event and forge its stored link: only the checkpoint catches it.
        tamper(dir.path(), 7, true, |event| {
            event.identity_id = "user:someone-else".into()
        });
        let report = verify_data_dir(dir.path(), &keys).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let problem = &report.problems[0];
        assert_eq!(
            (problem.tenant_id.as_str(), problem.sequence),
            ("tnt_b", Some(3))
        );
        assert!(problem.message.contains("checkpoint 1"), "{problem:?}");

        let stranger = Keyring::load(&dir.path().join("other-keys"), true).unwrap();
        let report = verify_data_dir(dir.path(), &stranger.public_keys()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("not among the trusted public keys")),
            "{:?}",
            report.problems
        );
    }
}
