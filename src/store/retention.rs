//! Retention in the store: finding a tenant's expired events, and the retention anchors that
//! keep the hash chain verifiable once they are gone (docs/lifecycle.md, docs/integrity.md).
//!
//! An expiry is `(tenant, cutoff, seq_bound)`: the tenant's live events with a timestamp before
//! `cutoff` and an ingest sequence number below `seq_bound`. The bound makes the set fixed: the
//! sweep counts it, records that count durably (its audit event), and only then asks the index
//! stage to delete exactly that set, whatever arrives in between.
//!
//! Cheap at scale: a segment whose oldest timestamp is at or after the cut-off (its timestamp
//! column's minimum, no document read) holds nothing to expire and is not walked; the others
//! are walked through the tenant's postings and two fast columns. The delete itself is one
//! Tantivy delete query applied at the next commit: a segment whose every document goes is
//! dropped whole by that commit (and its files removed), a boundary segment keeps its bytes
//! until a merge rewrites it (the merge policy merges segments with many deletes early).
//!
//! ## Anchors
//!
//! Deleting events cuts the hash chain: the first kept event follows a `chain_hash` that no
//! longer exists. Before deleting, the index stage records durably, per tenant, the chain link
//! (`chain_seq`, `chain_hash`) of every deleted event whose successor in the chain is kept (in
//! the usual case, time-ordered arrival, just one: the newest deleted event), and of the
//! tenant's newest deleted event. Verification continues the chain from an anchor across
//! a gap that ends right after it; head recovery starts from the newest anchor when every
//! event of a tenant is gone. Anchors below the tenant's oldest kept event are obsolete and
//! pruned.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::query::{BooleanQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Searcher, SegmentReader, TERMINATED};

use super::chain::{self, SequencedDoc};
use super::schema::{Fields, fast};
use crate::integrity::chain::{ChainLink, parse_hash};

/// The anchors file, in the integrity directory.
pub const ANCHORS_FILE: &str = "retention-anchors.json";
/// Version of the anchors file's format.
const ANCHORS_VERSION: u32 = 1;

/// Errors reading or writing the anchors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a retention anchors file: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One expiry: what the sweep decided for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub tenant: String,
    /// Events with an older timestamp (microseconds) expire.
    pub cutoff_us: i64,
    /// Only events with a lower ingest sequence number are considered.
    pub seq_bound: u64,
}

/// The expired events of one tenant in a searcher, and what is needed to anchor the chain.
#[derive(Debug, Default)]
pub struct ExpiredSet {
    /// The expired documents, in sequence order.
    pub docs: Vec<SequencedDoc>,
    /// Expired documents whose chain successor is (or may be) kept: their links are anchors.
    pub anchor_docs: Vec<SequencedDoc>,
    /// The tenant's kept document with the lowest sequence number, if any.
    pub oldest_kept: Option<SequencedDoc>,
    /// The oldest timestamp (microseconds) of the expired documents.
    pub oldest_us: Option<i64>,
}

/// Finds `expiry`'s documents in `searcher`.
pub fn expired_set(
    searcher: &Searcher,
    fields: &Fields,
    expiry: &Expiry,
) -> tantivy::Result<ExpiredSet> {
    let term = tantivy::Term::from_field_text(fields.tenant, &expiry.tenant);
    let mut set = ExpiredSet::default();
    let mut kept: Vec<u64> = Vec::new();
    // Sequence ranges of segments holding nothing expired: any of the tenant's events there is kept.
    let mut newer_ranges: Vec<(u64, u64, u32)> = Vec::new();
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let ordinal = ordinal as u32;
        let timestamps = segment.fast_fields().i64(fast::TIMESTAMP)?;
        let seqs = segment.fast_fields().u64(fast::SEQ)?;
        if segment.num_docs() == 0 {
            continue;
        }
        if timestamps.min_value() >= expiry.cutoff_us {
            newer_ranges.push((seqs.min_value(), seqs.max_value(), ordinal));
            continue;
        }
        let inverted = segment.inverted_index(fields.tenant)?;
        let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic)? else {
            continue;
        };
        let alive = segment.alive_bitset();
        let mut doc = postings.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|bits| bits.is_alive(doc))
                && let (Some(seq), Some(timestamp)) = (seqs.first(doc), timestamps.first(doc))
            {
                let at = SequencedDoc {
                    seq,
                    segment: ordinal,
                    doc,
                };
                if timestamp < expiry.cutoff_us && seq < expiry.seq_bound {
                    set.docs.push(at);
                    set.oldest_us = Some(set.oldest_us.map_or(timestamp, |old| old.min(timestamp)));
                } else {
                    kept.push(seq);
                    if set.oldest_kept.is_none_or(|oldest| seq < oldest.seq) {
                        set.oldest_kept = Some(at);
                    }
                }
            }
            doc = postings.advance();
        }
    }
    if set.docs.is_empty() {
        return Ok(set);
    }
    set.docs.sort_unstable();
    kept.sort_unstable();
    set.anchor_docs = anchor_docs(&set.docs, &kept, &newer_ranges);
    oldest_kept_in_newer(searcher, &term, &newer_ranges, &mut set)?;
    Ok(set)
}

/// The expired docs whose chain successor may be kept: a kept event of the tenant, or any
/// event of a newer segment (conservative: an extra anchor costs 40 bytes, a missing one
/// breaks verification), lies between it and the next expired doc; and the last one.
fn anchor_docs(
    expired: &[SequencedDoc],
    kept: &[u64],
    newer_ranges: &[(u64, u64, u32)],
) -> Vec<SequencedDoc> {
    let mut anchors = Vec::new();
    for (index, at) in expired.iter().enumerate() {
        let Some(next) = expired.get(index + 1) else {
            anchors.push(*at);
            break;
        };
        let kept_between = {
            let from = kept.partition_point(|&seq| seq <= at.seq);
            kept.get(from).is_some_and(|&seq| seq < next.seq)
        };
        let newer_between = newer_ranges
            .iter()
            .any(|&(min, max, _)| max > at.seq && min < next.seq);
        if kept_between || newer_between {
            anchors.push(*at);
        }
    }
    anchors
}

/// Lowers `set.oldest_kept` to the tenant's oldest event in a newer segment, walking only
/// the segments that may hold an older one.
fn oldest_kept_in_newer(
    searcher: &Searcher,
    term: &tantivy::Term,
    newer_ranges: &[(u64, u64, u32)],
    set: &mut ExpiredSet,
) -> tantivy::Result<()> {
    for &(min, _, ordinal) in newer_ranges {
        if set.oldest_kept.is_some_and(|oldest| oldest.seq <= min) {
            continue;
        }
        let segment = searcher.segment_reader(ordinal);
        if let Some((seq, doc)) = oldest_of_tenant(segment, term)?
            && set.oldest_kept.is_none_or(|oldest| seq < oldest.seq)
        {
            set.oldest_kept = Some(SequencedDoc {
                seq,
                segment: ordinal,
                doc,
            });
        }
    }
    Ok(())
}

fn oldest_of_tenant(
    segment: &SegmentReader,
    term: &tantivy::Term,
) -> tantivy::Result<Option<(u64, DocId)>> {
    let seqs = segment.fast_fields().u64(fast::SEQ)?;
    let inverted = segment.inverted_index(term.field())?;
    let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? else {
        return Ok(None);
    };
    let alive = segment.alive_bitset();
    let mut best: Option<(u64, DocId)> = None;
    let mut doc = postings.doc();
    while doc != TERMINATED {
        if alive.is_none_or(|bits| bits.is_alive(doc))
            && let Some(seq) = seqs.first(doc)
            && best.is_none_or(|(top, _)| seq < top)
        {
            best = Some((seq, doc));
        }
        doc = postings.advance();
    }
    Ok(best)
}

/// Every tenant with a live event in `searcher` (one pass over each segment's tenant terms).
pub fn tenants(searcher: &Searcher, fields: &Fields) -> tantivy::Result<Vec<String>> {
    let mut tenants = std::collections::BTreeSet::new();
    for segment in searcher.segment_readers() {
        if segment.num_docs() == 0 {
            continue;
        }
        let inverted = segment.inverted_index(fields.tenant)?;
        let mut terms = inverted.terms().stream()?;
        while terms.advance() {
            tenants.insert(String::from_utf8_lossy(terms.key()).into_owned());
        }
    }
    Ok(tenants.into_iter().collect())
}

/// The query matching exactly `expiry`'s events (applied by the index writer at commit).
pub fn delete_query(fields: &Fields, expiry: &Expiry) -> BooleanQuery {
    use std::ops::Bound;
    let tenant = tantivy::Term::from_field_text(fields.tenant, &expiry.tenant);
    let before = RangeQuery::new(
        Bound::Unbounded,
        Bound::Excluded(tantivy::Term::from_field_i64(
            fields.timestamp,
            expiry.cutoff_us,
        )),
    );
    let below = RangeQuery::new(
        Bound::Unbounded,
        Bound::Excluded(tantivy::Term::from_field_u64(fields.seq, expiry.seq_bound)),
    );
    BooleanQuery::intersection(vec![
        Box::new(TermQuery::new(tenant, IndexRecordOption::Basic)) as Box<dyn Query>,
        Box::new(before),
        Box::new(below),
    ])
}

/// The chain link of `at`.
pub fn link_of(searcher: &Searcher, at: SequencedDoc) -> tantivy::Result<Option<ChainLink>> {
    chain::link_of(searcher.segment_reader(at.segment), at.doc)
}

/// One anchor as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredAnchor {
    chain_seq: u64,
    chain_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AnchorsFile {
    version: u32,
    tenants: BTreeMap<String, Vec<StoredAnchor>>,
}

/// Every tenant's retention anchors: `chain_seq` → `chain_hash` of deleted events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionAnchors {
    tenants: BTreeMap<String, BTreeMap<u64, [u8; 32]>>,
}

impl RetentionAnchors {
    /// The anchors file of an integrity directory.
    pub fn path_in(integrity_dir: &Path) -> PathBuf {
        integrity_dir.join(ANCHORS_FILE)
    }

    /// Reads `path`; a missing file means no anchors (nothing was ever deleted).
    pub fn load(path: &Path) -> Result<RetentionAnchors, AnchorError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RetentionAnchors::default());
            }
            Err(source) => {
                return Err(AnchorError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let invalid = |message: String| AnchorError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: AnchorsFile =
            serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        if file.version != ANCHORS_VERSION {
            return Err(invalid(format!("unknown version {}", file.version)));
        }
        let mut anchors = RetentionAnchors::default();
        for (tenant, list) in file.tenants {
            let links = anchors.tenants.entry(tenant).or_default();
            for anchor in list {
                let hash = parse_hash(&anchor.chain_hash)
                    .ok_or_else(|| invalid(format!("bad hash at #{}", anchor.chain_seq)))?;
                links.insert(anchor.chain_seq, hash);
            }
        }
        Ok(anchors)
    }

    /// Writes the anchors to `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), AnchorError> {
        let io = |action: &'static str| {
            move |source| AnchorError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create the directory of"))?;
        }
        let file = AnchorsFile {
            version: ANCHORS_VERSION,
            tenants: self
                .tenants
                .iter()
                .map(|(tenant, links)| {
                    let list = links
                        .iter()
                        .map(|(seq, hash)| StoredAnchor {
                            chain_seq: *seq,
                            chain_hash: hex::encode(hash),
                        })
                        .collect();
                    (tenant.clone(), list)
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        crate::durable_file::replace(path, &bytes).map_err(io("write"))
    }

    /// The anchor of `tenant` at chain position `seq`, if one was recorded.
    pub fn at(&self, tenant: &str, seq: u64) -> Option<ChainLink> {
        let hash = self.tenants.get(tenant)?.get(&seq)?;
        Some(ChainLink { seq, hash: *hash })
    }

    /// `tenant`'s newest anchor.
    pub fn newest(&self, tenant: &str) -> Option<ChainLink> {
        let (seq, hash) = self.tenants.get(tenant)?.last_key_value()?;
        Some(ChainLink {
            seq: *seq,
            hash: *hash,
        })
    }

    /// Every tenant's newest anchor.
    pub fn newest_per_tenant(&self) -> HashMap<String, ChainLink> {
        self.tenants
            .keys()
            .filter_map(|tenant| Some((tenant.clone(), self.newest(tenant)?)))
            .collect()
    }

    /// Adds `links` for `tenant`, then drops its anchors below `oldest_kept - 1` (their
    /// successors are gone too); with no kept event, only the newest anchor stays.
    pub fn record(&mut self, tenant: &str, links: &[ChainLink], oldest_kept: Option<u64>) {
        let entry = self.tenants.entry(tenant.to_owned()).or_default();
        for link in links {
            entry.insert(link.seq, link.hash);
        }
        let keep_from = match oldest_kept {
            Some(seq) => seq.saturating_sub(1),
            None => entry.last_key_value().map_or(0, |(seq, _)| *seq),
        };
        entry.retain(|seq, _| *seq >= keep_from);
    }

    /// Raises every head in `heads` to its tenant's newest anchor when that is further.
    pub fn raise_heads(&self, heads: &mut HashMap<String, ChainLink>) {
        for (tenant, anchor) in self.newest_per_tenant() {
            let head = heads.entry(tenant).or_insert(anchor);
            if anchor.seq > head.seq {
                *head = anchor;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::{Action, AuditEvent, IdentityType};
    use crate::store::{PreparedEvent, Store, StoreConfig, StoreMetrics};

    fn prepared(tenant: &str, n: u64, timestamp_us: i64) -> PreparedEvent {
        let event = AuditEvent {
            id: format!("evt_{n}"),
            tenant_id: tenant.into(),
            timestamp_us,
            action: Action::Read,
            secret_path: Some("apps/a".into()),
            identity_type: IdentityType::User,
            identity_id: "user:a".into(),
            source_ip: None,
            user_agent: None,
            success: true,
            duration_ms: None,
            request_id: None,
            extra_data: Default::default(),
        };
        PreparedEvent::new(event, true)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_wholly_expired_segment_goes_and_the_chain_is_anchored() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::with_data_dir(dir.path());
        let store = Store::open(&config, StoreMetrics::unregistered()).unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        // Three commits, three segments: all expired, half expired (the boundary), all kept.
        for (first, base) in [(0u64, 0i64), (100, 1_000), (200, 10_000)] {
            let events = (0..100)
                .map(|i| prepared("tnt_a", first + i, base + i as i64))
                .collect();
            store.ingest(events).await.unwrap();
            store.flush().await.unwrap();
        }
        store.ingest(vec![prepared("tnt_b", 999, 0)]).await.unwrap();
        store.flush().await.unwrap();
        let max_doc = |store: &Store| -> u32 {
            let searcher = store.searcher();
            searcher.segment_readers().iter().map(|s| s.max_doc()).sum()
        };
        assert_eq!(max_doc(&store), 301);
        let expiry = Expiry {
            tenant: "tnt_a".into(),
            cutoff_us: 1_050,
            seq_bound: store.committed_seq(),
        };
        let set = expired_set(&store.searcher(), store.fields(), &expiry).unwrap();
        assert_eq!(set.docs.len(), 150);
        assert_eq!(set.anchor_docs.len(), 1, "a prefix needs one anchor");
        assert_eq!(set.oldest_us, Some(0));
        assert_eq!(store.expire(expiry.clone()).await.unwrap(), 150);
        let searcher = store.searcher();
        assert_eq!(searcher.num_docs(), 151);
        assert!(
            max_doc(&store) <= 201,
            "the wholly expired segment was not dropped: {} documents on disk",
            max_doc(&store)
        );
        assert!(
            searcher.segment_readers().iter().all(|s| s.num_docs() > 0),
            "an empty segment was kept"
        );
        // Nothing more to expire, and another tenant is untouched.
        assert_eq!(store.expire(expiry).await.unwrap(), 0);
        let anchors =
            RetentionAnchors::load(&RetentionAnchors::path_in(&dir.path().join("integrity")))
                .unwrap();
        assert_eq!(anchors.newest("tnt_a").map(|link| link.seq), Some(150));
        assert_eq!(anchors.newest("tnt_b"), None);
        store.shutdown().await;
        drop(store);
        // Reopened, the chain continues after the kept events.
        let store = Store::open(&config, StoreMetrics::unregistered()).unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        assert_eq!(store.committed_heads()["tnt_a"].seq, 300);
        store.shutdown().await;
    }

    fn at(seq: u64) -> SequencedDoc {
        SequencedDoc {
            seq,
            segment: 0,
            doc: seq as u32,
        }
    }

    #[test]
    fn a_prefix_needs_one_anchor_and_gaps_one_each() {
        let expired = [at(1), at(2), at(3)];
        assert_eq!(anchor_docs(&expired, &[4, 5], &[]), vec![at(3)]);
        // A kept event between expired ones (a late event, expired after a kept one).
        let found = anchor_docs(&[at(1), at(2), at(4)], &[3, 9], &[]);
        assert_eq!(found, vec![at(2), at(4)]);
        let expired = [at(1), at(2), at(10)];
        assert_eq!(anchor_docs(&expired, &[5], &[]), vec![at(2), at(10)]);
        // A newer segment overlapping 2..10 may hold the tenant's successor of 2.
        assert_eq!(
            anchor_docs(&expired, &[], &[(4, 6, 1)]),
            vec![at(2), at(10)]
        );
        assert_eq!(anchor_docs(&expired, &[], &[(11, 20, 1)]), vec![at(10)]);
    }

    #[test]
    fn anchors_round_trip_prune_and_raise_heads() {
        let dir = tempfile::tempdir().unwrap();
        let path = RetentionAnchors::path_in(&dir.path().join("integrity"));
        assert_eq!(
            RetentionAnchors::load(&path).unwrap(),
            RetentionAnchors::default()
        );
        let link = |seq: u64| ChainLink {
            seq,
            hash: [seq as u8; 32],
        };
        let mut anchors = RetentionAnchors::default();
        anchors.record("a", &[link(3)], Some(4));
        anchors.record("a", &[link(7)], Some(8));
        assert_eq!(anchors.at("a", 3), None, "pruned: #4 is gone too");
        assert_eq!(anchors.at("a", 7), Some(link(7)));
        anchors.record("b", &[link(2), link(5)], None);
        assert_eq!(anchors.newest("b"), Some(link(5)));
        assert_eq!(anchors.at("b", 2), None);
        anchors.save(&path).unwrap();
        assert_eq!(RetentionAnchors::load(&path).unwrap(), anchors);
        let mut heads = HashMap::from([("a".to_owned(), link(9))]);
        anchors.raise_heads(&mut heads);
        assert_eq!(heads["a"], link(9));
        assert_eq!(heads["b"], link(5));
        std::fs::write(&path, b"{\"version\":9,\"tenants\":{}}").unwrap();
        assert!(RetentionAnchors::load(&path).is_err());
    }
}
