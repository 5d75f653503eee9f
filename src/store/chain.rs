//! The hash chain as the index keeps it: every document has its `chain_seq` (position in its
//! tenant's chain) and `chain_hash`, computed by the index stage in sequence order (see
//! [`crate::integrity::chain`]), in fast-field columns ([`ChainColumns`]): the hash as four
//! big-endian 64-bit words. Kept in the document store instead, each hash's 32 random bytes
//! also broke zstd's matches between the sources around it (42 bytes/event there against 32
//! plus the sequence here; docs/benchmarks.md). Nothing else is needed to resume a chain: at
//! open, each tenant's head is its committed document with the highest `chain_seq`, and the
//! WAL replay that follows recomputes exactly the links a crash lost.

use std::collections::HashMap;

use tantivy::columnar::Column;
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocId, Searcher, SegmentReader, TantivyDocument};

use super::schema::{Fields, fast};
use crate::integrity::chain::{ChainLink, HASH_BYTES};

/// Bytes of a chain hash per column word.
const WORD_BYTES: usize = HASH_BYTES / 4;

/// A chain hash as the four column words that keep it (big-endian).
pub fn hash_words(hash: &[u8; HASH_BYTES]) -> [u64; 4] {
    std::array::from_fn(|word| {
        let start = word * WORD_BYTES;
        let mut bytes = [0; WORD_BYTES];
        bytes.copy_from_slice(&hash[start..start + WORD_BYTES]);
        u64::from_be_bytes(bytes)
    })
}

/// The chain hash the four column words `words` keep.
fn hash_of_words(words: [u64; 4]) -> [u8; HASH_BYTES] {
    let mut hash = [0; HASH_BYTES];
    for (chunk, word) in hash.chunks_exact_mut(WORD_BYTES).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    hash
}

/// One segment's chain columns: every document's link, read without its stored document.
pub struct ChainColumns {
    seq: Column<u64>,
    hash: [Column<u64>; 4],
}

impl ChainColumns {
    /// The chain columns of `segment`.
    pub fn open(segment: &SegmentReader) -> tantivy::Result<ChainColumns> {
        let columns = segment.fast_fields();
        let [first, second, third, fourth] = fast::CHAIN_HASH;
        Ok(ChainColumns {
            seq: columns.u64(fast::CHAIN_SEQ)?,
            hash: [
                columns.u64(first)?,
                columns.u64(second)?,
                columns.u64(third)?,
                columns.u64(fourth)?,
            ],
        })
    }

    /// The link of `doc`, if it has one.
    pub fn link(&self, doc: DocId) -> Option<ChainLink> {
        let seq = self.seq.first(doc)?;
        let [first, second, third, fourth] = &self.hash;
        let words = [
            first.first(doc)?,
            second.first(doc)?,
            third.first(doc)?,
            fourth.first(doc)?,
        ];
        Some(ChainLink {
            seq,
            hash: hash_of_words(words),
        })
    }
}

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

/// The chain link of document `doc` of `segment`, if it has one.
pub fn link_of(segment: &SegmentReader, doc: DocId) -> tantivy::Result<Option<ChainLink>> {
    Ok(ChainColumns::open(segment)?.link(doc))
}

/// The chain link `document` stores in the fields `chain_seq` and `chain_hash` (those of an
/// index of version 3, which kept them in the document store), if it has one.
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
/// `chain_seq`. One pass over the tenant postings and the sequence column, then one link per
/// tenant.
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
        if let Some(link) = link_of(searcher.segment_reader(ordinal as u32), doc)? {
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
/// the tenant's postings and the sequence column, then one link.
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
    Ok(link_of(searcher.segment_reader(ordinal as u32), doc)?.unwrap_or(ChainLink::GENESIS))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_words_keep_the_hash_bytes_in_order() {
        let hash: [u8; HASH_BYTES] = std::array::from_fn(|at| at as u8 * 7 + 3);
        let words = hash_words(&hash);
        assert_eq!(
            words[0],
            u64::from_be_bytes([3, 10, 17, 24, 31, 38, 45, 52])
        );
        assert_eq!(hash_of_words(words), hash);
    }
}
