//! Keyset search: the top events of a query ordered by (timestamp, sequence).
//!
//! Tantivy's `TopDocs` orders by one fast field; keyset paging needs the pair, with the
//! sequence number breaking timestamp ties, so this collector packs both into one `u128`
//! rank and keeps the best `limit + 1` (the extra one tells whether another page exists).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::Query;
use tantivy::schema::Value;
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader, TantivyDocument};

use super::schema::{Fields, fast};
use super::source::SourceColumns;
use crate::event::AuditEvent;

/// A position in the total order of events: timestamp, then ingest sequence.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SortKey {
    pub timestamp_us: i64,
    pub seq: u64,
}

/// Page direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    NewestFirst,
    OldestFirst,
}

impl SortKey {
    /// Larger rank = earlier in the page for `direction`.
    fn rank(self, direction: Direction) -> u128 {
        // Flipping the sign bit makes the i64 order agree with the unsigned order.
        let timestamp_bits = (self.timestamp_us as u64) ^ (1 << 63);
        let ascending = (u128::from(timestamp_bits) << 64) | u128::from(self.seq);
        match direction {
            Direction::NewestFirst => ascending,
            Direction::OldestFirst => !ascending,
        }
    }
}

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("failed to search the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("stored event {seq} cannot be decoded: {source}")]
    Decode {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// One page of events.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<(SortKey, AuditEvent)>,
    /// Whether more events follow the last one of this page.
    pub has_more: bool,
}

/// Runs `query` and returns up to `limit` events strictly after `after` in `direction`.
pub fn top_by_time(
    searcher: &Searcher,
    fields: &Fields,
    query: &dyn Query,
    direction: Direction,
    after: Option<SortKey>,
    limit: usize,
) -> Result<Page, SearchError> {
    let (hits, has_more) = top_hits(searcher, query, direction, after, limit)?;
    let addresses: Vec<DocAddress> = hits.iter().map(|(_, address)| *address).collect();
    let sources = load_sources(searcher, fields, &addresses)?;
    let mut events = Vec::with_capacity(hits.len());
    for ((key, _), source) in hits.into_iter().zip(sources) {
        events.push((key, decode_event(&source, key.seq)?));
    }
    Ok(Page { events, has_more })
}

/// The positions and addresses of up to `limit` events strictly after `after`, and whether
/// more follow; nothing is loaded from the document store.
pub fn top_hits(
    searcher: &Searcher,
    query: &dyn Query,
    direction: Direction,
    after: Option<SortKey>,
    limit: usize,
) -> Result<(Vec<(SortKey, DocAddress)>, bool), SearchError> {
    let collector = TopByTime {
        keep: limit + 1,
        direction,
        below_rank: after.map(|key| key.rank(direction)),
    };
    let mut hits = searcher.search(query, &collector)?;
    let has_more = hits.len() > limit;
    hits.truncate(limit);
    Ok((
        hits.into_iter().map(|hit| (hit.key, hit.address)).collect(),
        has_more,
    ))
}

/// Loads the stored event of a document.
pub fn load_event(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
    seq: u64,
) -> Result<AuditEvent, SearchError> {
    let source = load_source(searcher, fields, address)?;
    decode_event(&source, seq)
}

/// The stored storage-JSON of a document.
pub fn load_source(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
) -> Result<Vec<u8>, SearchError> {
    let document: TantivyDocument = searcher.doc(address)?;
    let stored = document
        .get_first(fields.source)
        .and_then(|value| value.as_bytes())
        .unwrap_or_default();
    let columns = SourceColumns::of_segment(searcher.segment_reader(address.segment_ord))?;
    Ok(columns.restore(address.doc_id, stored)?)
}

/// The storage JSON of several documents, in the order given; each segment's columns restore
/// their documents together (see [`SourceColumns::restore_many`]).
pub fn load_sources(
    searcher: &Searcher,
    fields: &Fields,
    addresses: &[DocAddress],
) -> Result<Vec<Vec<u8>>, SearchError> {
    let mut stored = Vec::with_capacity(addresses.len());
    for address in addresses {
        let document: TantivyDocument = searcher.doc(*address)?;
        let source = document
            .get_first(fields.source)
            .and_then(|value| value.as_bytes());
        stored.push(source.unwrap_or_default().to_vec());
    }
    let mut sources = vec![Vec::new(); addresses.len()];
    let mut segments: Vec<SegmentOrdinal> = addresses.iter().map(|a| a.segment_ord).collect();
    segments.sort_unstable();
    segments.dedup();
    for segment in segments {
        let (positions, docs): (Vec<usize>, Vec<(DocId, &[u8])>) = addresses
            .iter()
            .enumerate()
            .filter(|(_, address)| address.segment_ord == segment)
            .map(|(at, address)| (at, (address.doc_id, stored[at].as_slice())))
            .unzip();
        let columns = SourceColumns::of_segment(searcher.segment_reader(segment))?;
        for (at, source) in positions.into_iter().zip(columns.restore_many(&docs)?) {
            sources[at] = source;
        }
    }
    Ok(sources)
}

/// Decodes a stored event (`seq` names it in the error).
pub fn decode_event(source: &[u8], seq: u64) -> Result<AuditEvent, SearchError> {
    serde_json::from_slice(source).map_err(|source| SearchError::Decode { seq, source })
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    rank: u128,
    key: SortKey,
    address: DocAddress,
}

struct TopByTime {
    keep: usize,
    direction: Direction,
    /// Only documents ranked strictly below this (i.e. after the cursor) qualify.
    below_rank: Option<u128>,
}

impl Collector for TopByTime {
    type Fruit = Vec<Hit>;
    type Child = SegmentTopByTime;

    fn for_segment(
        &self,
        segment_ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentTopByTime> {
        let fast_fields = segment.fast_fields();
        Ok(SegmentTopByTime {
            segment_ord,
            timestamps: fast_fields.i64(fast::TIMESTAMP)?,
            seqs: fast_fields.u64(fast::SEQ)?,
            keep: self.keep,
            direction: self.direction,
            below_rank: self.below_rank,
            heap: BinaryHeap::with_capacity(self.keep + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, segment_fruits: Vec<Vec<Hit>>) -> tantivy::Result<Vec<Hit>> {
        let mut all: Vec<Hit> = segment_fruits.into_iter().flatten().collect();
        all.sort_unstable_by_key(|hit| Reverse(hit.rank));
        all.truncate(self.keep);
        Ok(all)
    }
}

struct SegmentTopByTime {
    segment_ord: SegmentOrdinal,
    timestamps: Column<i64>,
    seqs: Column<u64>,
    keep: usize,
    direction: Direction,
    below_rank: Option<u128>,
    /// Min-heap of the best ranks seen so far.
    heap: BinaryHeap<Reverse<(u128, DocId)>>,
}

impl SegmentCollector for SegmentTopByTime {
    type Fruit = Vec<Hit>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let (Some(timestamp_us), Some(seq)) = (self.timestamps.first(doc), self.seqs.first(doc))
        else {
            return;
        };
        let rank = SortKey { timestamp_us, seq }.rank(self.direction);
        if self.below_rank.is_some_and(|limit| rank >= limit) {
            return;
        }
        if self.heap.len() < self.keep {
            self.heap.push(Reverse((rank, doc)));
        } else if self
            .heap
            .peek()
            .is_some_and(|Reverse((worst, _))| rank > *worst)
        {
            self.heap.pop();
            self.heap.push(Reverse((rank, doc)));
        }
    }

    fn harvest(self) -> Vec<Hit> {
        let segment_ord = self.segment_ord;
        let timestamps = self.timestamps;
        let seqs = self.seqs;
        self.heap
            .into_iter()
            .map(|Reverse((rank, doc))| Hit {
                rank,
                key: SortKey {
                    timestamp_us: timestamps.first(doc).unwrap_or_default(),
                    seq: seqs.first(doc).unwrap_or_default(),
                },
                address: DocAddress::new(segment_ord, doc),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_by_timestamp_then_seq_in_both_directions() {
        let keys = [
            SortKey {
                timestamp_us: -5,
                seq: 9,
            },
            SortKey {
                timestamp_us: 0,
                seq: 1,
            },
            SortKey {
                timestamp_us: 0,
                seq: 2,
            },
            SortKey {
                timestamp_us: i64::MAX,
                seq: 0,
            },
        ];
        for pair in keys.windows(2) {
            assert!(pair[0].rank(Direction::NewestFirst) < pair[1].rank(Direction::NewestFirst));
            assert!(pair[0].rank(Direction::OldestFirst) > pair[1].rank(Direction::OldestFirst));
        }
    }
}
