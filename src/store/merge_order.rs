//! Merges that keep documents in arrival order.
//!
//! Tantivy's `LogMergePolicy` picks which segments to merge by size; the merged segment lays
//! their documents out in the order the candidate lists them, which says nothing about time.
//! This policy lets `LogMergePolicy` choose and then orders each merge by the segments' first
//! ingest sequence number, so that doc ids keep following arrival, hence (almost) time, in
//! merged segments too: what block pruning in searches and per-day ranges in summaries rely on.
//! Segments where deletes (retention) left more than 30% of the documents dead are merged
//! early, so that the space of expired events is given back.

use std::collections::HashMap;

use parking_lot::Mutex;
use tantivy::index::{SegmentId, SegmentMeta};
use tantivy::merge_policy::{LogMergePolicy, MergeCandidate, MergePolicy};
use tantivy::{Index, SegmentReader};

use super::schema::fast;

/// A segment with a larger share of deleted documents (a retention sweep's boundary segment)
/// has its level merged, which rewrites it without them: expired events leave the disk.
const DELETED_RATIO_BEFORE_MERGE: f32 = 0.3;

/// `LogMergePolicy`'s choices, each merge in arrival order.
#[derive(Debug)]
pub struct ArrivalOrderMergePolicy {
    choice: LogMergePolicy,
    index: Index,
    /// First sequence number of each segment seen (segments never change).
    first_seq: Mutex<HashMap<SegmentId, u64>>,
}

impl ArrivalOrderMergePolicy {
    pub fn new(index: Index) -> Self {
        let mut choice = LogMergePolicy::default();
        choice.set_del_docs_ratio_before_merge(DELETED_RATIO_BEFORE_MERGE);
        ArrivalOrderMergePolicy {
            choice,
            index,
            first_seq: Mutex::new(HashMap::new()),
        }
    }

    /// The smallest sequence number in a segment (0 when it cannot be read: such a segment
    /// just goes first).
    fn first_seq_of(&self, meta: &SegmentMeta) -> u64 {
        let id = meta.id();
        if let Some(seq) = self.first_seq.lock().get(&id) {
            return *seq;
        }
        let segment = self.index.segment(meta.clone());
        let seq = SegmentReader::open(&segment)
            .and_then(|reader| reader.fast_fields().u64(fast::SEQ))
            .map(|column| column.min_value())
            .unwrap_or(0);
        self.first_seq.lock().insert(id, seq);
        seq
    }
}

impl MergePolicy for ArrivalOrderMergePolicy {
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        let mut candidates = self.choice.compute_merge_candidates(segments);
        if candidates.is_empty() {
            return candidates;
        }
        let metas: HashMap<SegmentId, &SegmentMeta> =
            segments.iter().map(|meta| (meta.id(), meta)).collect();
        for candidate in &mut candidates {
            candidate
                .0
                .sort_by_cached_key(|id| metas.get(id).map_or(0, |meta| self.first_seq_of(meta)));
        }
        let mut known = self.first_seq.lock();
        known.retain(|id, _| metas.contains_key(id));
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::{IndexWriter, TantivyDocument};

    /// `count` one-document segments (seq 0, 1, …), their metas in arrival order.
    fn one_document_segments(count: u64) -> (Index, Vec<SegmentMeta>) {
        let (schema, fields) = super::super::schema::build_schema();
        let index = Index::create_in_ram(schema);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.set_merge_policy(Box::new(tantivy::merge_policy::NoMergePolicy));
        for seq in 0..count {
            let mut doc = TantivyDocument::default();
            doc.add_u64(fields.seq, seq);
            writer.add_document(doc).unwrap();
            writer.commit().unwrap();
        }
        let mut metas = index.searchable_segment_metas().unwrap();
        let policy = ArrivalOrderMergePolicy::new(index.clone());
        metas.sort_by_key(|meta| policy.first_seq_of(meta));
        (index, metas)
    }

    #[test]
    fn every_merge_lists_its_segments_in_arrival_order() {
        let (index, mut metas) = one_document_segments(10);
        let policy = ArrivalOrderMergePolicy::new(index);
        // Offered newest first, equal in size: the order Tantivy picks says nothing of time.
        metas.reverse();
        let candidates = policy.compute_merge_candidates(&metas);
        assert!(
            !candidates.is_empty(),
            "LogMergePolicy merges 8+ small segments"
        );
        let first_seq: HashMap<SegmentId, u64> = metas
            .iter()
            .map(|meta| (meta.id(), policy.first_seq_of(meta)))
            .collect();
        for candidate in candidates {
            let seqs: Vec<u64> = candidate.0.iter().map(|id| first_seq[id]).collect();
            assert!(seqs.is_sorted(), "{seqs:?}");
        }
    }

    #[test]
    fn merged_segments_keep_arrival_order() {
        let (schema, fields) = super::super::schema::build_schema();
        let index = Index::create_in_ram(schema);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.set_merge_policy(Box::new(ArrivalOrderMergePolicy::new(index.clone())));
        for seq in 0..40u64 {
            let mut doc = TantivyDocument::default();
            doc.add_u64(fields.seq, seq);
            doc.add_i64(fields.timestamp, seq as i64);
            writer.add_document(doc).unwrap();
            writer.commit().unwrap();
        }
        writer.wait_merging_threads().unwrap();
        let searcher = index.reader().unwrap().searcher();
        assert!(searcher.segment_readers().len() < 40, "nothing merged");
        for segment in searcher.segment_readers() {
            let seqs = segment.fast_fields().u64(fast::SEQ).unwrap();
            let values: Vec<u64> = (0..segment.max_doc())
                .filter_map(|doc| seqs.first(doc))
                .collect();
            assert!(values.is_sorted(), "{values:?}");
        }
    }
}
