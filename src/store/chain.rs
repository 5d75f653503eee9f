//! The hash chain as the index keeps it: every document stores its `chain_seq` (position in
//! its tenant's chain) and `chain_hash`, computed by the index stage in sequence order (see
//! [`crate::integrity::chain`]). Nothing else is needed to resume a chain: at open, each
//! tenant's head is its committed document with the highest `chain_seq`, and the WAL replay
//! that follows recomputes exactly the links a crash lost.

use std::collections::HashMap;

use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocId, Searcher, SegmentReader, TantivyDocument};

use super::schema::{Fields, fast};
use crate::integrity::chain::{ChainLink, HASH_BYTES};

/// One live document, addressed for reading in sequence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SequencedDoc {
    pub seq: u64,
    pub segment: u32,
    pub doc: DocId,
}

/// Every live document of `searcher`, in ingest (sequence) order. Segments written by several
/// indexing threads interleave sequence numbers, so this sorts: 16 bytes per document.
pub fn documents_in_sequence_order(searcher: &Searcher) -> tantivy::Result<Vec<SequencedDoc>> {
    let mut documents = Vec::with_capacity(searcher.num_docs() as usize);
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let seqs = segment.fast_fields().u64(fast::SEQ)?;
        for doc in segment.doc_ids_alive() {
            if let Some(seq) = seqs.first(doc) {
                documents.push(SequencedDoc {
                    seq,
                    segment: ordinal as u32,
                    doc,
                });
            }
        }
    }
    documents.sort_unstable();
    Ok(documents)
}

/// The chain link a stored document carries, if it has one.
pub fn stored_link(fields: &Fields, document: &TantivyDocument) -> Option<ChainLink> {
    link_in(document, fields.chain_seq, fields.chain_hash)
}

/// The chain link `document` stores in the fields `chain_seq` and `chain_hash` (those of its
/// own schema, which may be an older one), if it has one.
pub fn link_in(
    document: &TantivyDocument,
    chain_seq: Field,
    chain_hash: Field,
) -> Option<ChainLink> {
    let seq = document.get_first(chain_seq)?.as_u64()?;
    let hash: [u8; HASH_BYTES] = document
        .get_first(chain_hash)?
        .as_bytes()?
        .try_into()
        .ok()?;
    Some(ChainLink { seq, hash })
}

/// Each tenant's chain head in the committed index: its document with the highest
/// `chain_seq`. One pass over the tenant postings and the sequence column, then one stored
/// document per tenant.
pub fn recover_heads(
    searcher: &Searcher,
    fields: &Fields,
) -> tantivy::Result<HashMap<String, ChainLink>> {
    // tenant -> (seq, segment, doc) of its newest document.
    let mut newest: HashMap<String, (u64, usize, DocId)> = HashMap::new();
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        newest_per_tenant(segment, ordinal, fields, &mut newest)?;
    }
    let mut heads = HashMap::with_capacity(newest.len());
    for (tenant, (_, ordinal, doc)) in newest {
        let store = searcher
            .segment_reader(ordinal as u32)
            .get_store_reader(1)?;
        let document: TantivyDocument = store.get(doc)?;
        if let Some(link) = stored_link(fields, &document) {
            heads.insert(tenant, link);
        }
    }
    Ok(heads)
}

fn newest_per_tenant(
    segment: &SegmentReader,
    ordinal: usize,
    fields: &Fields,
    newest: &mut HashMap<String, (u64, usize, DocId)>,
) -> tantivy::Result<()> {
    let seqs = segment.fast_fields().u64(fast::SEQ)?;
    let inverted = segment.inverted_index(fields.tenant)?;
    let alive = segment.alive_bitset();
    let mut terms = inverted.terms().stream()?;
    while terms.advance() {
        let tenant = String::from_utf8_lossy(terms.key()).into_owned();
        let mut postings =
            inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        if let Some((seq, doc)) = newest_below(&mut postings, &seqs, alive, u64::MAX) {
            let entry = newest.entry(tenant).or_insert((seq, ordinal, doc));
            if seq >= entry.0 {
                *entry = (seq, ordinal, doc);
            }
        }
    }
    Ok(())
}

/// The link of `tenant`'s chain at an export snapshot: its live document with the highest
/// sequence number below `seq_bound`, or [`ChainLink::GENESIS`] when it has none. One pass over
/// the tenant's postings and the sequence column, then one stored document.
pub fn head_before(
    searcher: &Searcher,
    fields: &Fields,
    tenant: &str,
    seq_bound: u64,
) -> tantivy::Result<ChainLink> {
    let term = tantivy::Term::from_field_text(fields.tenant, tenant);
    // (seq, segment ordinal, doc) of the newest document below the bound.
    let mut best: Option<(u64, usize, DocId)> = None;
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let seqs = segment.fast_fields().u64(fast::SEQ)?;
        let alive = segment.alive_bitset();
        let inverted = segment.inverted_index(fields.tenant)?;
        let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic)? else {
            continue;
        };
        if let Some((seq, doc)) = newest_below(&mut postings, &seqs, alive, seq_bound)
            && best.is_none_or(|(top, _, _)| seq > top)
        {
            best = Some((seq, ordinal, doc));
        }
    }
    let Some((_, ordinal, doc)) = best else {
        return Ok(ChainLink::GENESIS);
    };
    let store = searcher
        .segment_reader(ordinal as u32)
        .get_store_reader(1)?;
    let document: TantivyDocument = store.get(doc)?;
    Ok(stored_link(fields, &document).unwrap_or(ChainLink::GENESIS))
}

/// The live document of `postings` with the highest sequence number below `bound`.
fn newest_below(
    postings: &mut tantivy::postings::SegmentPostings,
    seqs: &tantivy::columnar::Column<u64>,
    alive: Option<&tantivy::fastfield::AliveBitSet>,
    bound: u64,
) -> Option<(u64, DocId)> {
    use tantivy::DocSet;
    let mut best: Option<(u64, DocId)> = None;
    let mut doc = postings.doc();
    while doc != tantivy::TERMINATED {
        let live = alive.is_none_or(|bits| bits.is_alive(doc));
        if let (true, Some(seq)) = (live, seqs.first(doc))
            && seq < bound
            && best.is_none_or(|(top, _)| seq > top)
        {
            best = Some((seq, doc));
        }
        doc = postings.advance();
    }
    best
}
