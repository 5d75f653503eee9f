//! Producer-id deduplication: an id already stored is never stored twice, across restarts too.
//!
//! Checking every incoming id against the index would cost a term lookup per segment per event,
//! so a Bloom filter over every stored id answers "certainly new" for almost all of them. Only
//! a "maybe" (a real duplicate, or a ~1% false positive) pays for the exact check: the ids
//! written to the WAL but not yet visible in the index (`pending`), then the index itself.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use tantivy::IndexReader;

use super::schema::fast;

/// Bits per expected id; with 7 probes this gives about a 1% false-positive rate.
const BITS_PER_ID: usize = 10;
const PROBES: u64 = 7;
const MIN_CAPACITY: usize = 1 << 20;

/// A fixed-size Bloom filter over strings.
#[derive(Debug)]
pub struct BloomFilter {
    bits: Vec<u64>,
    bit_count: u64,
    inserted: usize,
    capacity: usize,
    hasher: std::hash::RandomState,
}

impl BloomFilter {
    /// A filter sized for `capacity` ids at about 1% false positives.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(MIN_CAPACITY);
        let words = (capacity * BITS_PER_ID).div_ceil(64);
        BloomFilter {
            bits: vec![0; words],
            bit_count: (words * 64) as u64,
            inserted: 0,
            capacity,
            hasher: std::hash::RandomState::new(),
        }
    }

    fn probes(&self, id: &str) -> impl Iterator<Item = u64> + use<> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(id.as_bytes());
        let first = hasher.finish();
        // A second, independent-enough hash by rotating and mixing (Kirsch–Mitzenmacher).
        let second = first.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bit_count = self.bit_count;
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(second)) % bit_count)
    }

    pub fn insert(&mut self, id: &str) {
        for bit in self.probes(id) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }

    /// False means certainly never inserted.
    pub fn may_contain(&self, id: &str) -> bool {
        self.probes(id)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// True once more ids were inserted than the filter was sized for.
    pub fn is_overfull(&self) -> bool {
        self.inserted > self.capacity
    }
}

/// The WAL stage's view of which ids are stored.
pub struct Deduplicator {
    filter: BloomFilter,
    /// Ids in the WAL that the index reader may not show yet, with their sequence numbers.
    pending: HashMap<String, u64>,
    pending_order: VecDeque<(u64, String)>,
    reader: IndexReader,
}

impl Deduplicator {
    /// Builds the filter from every id in the index.
    pub fn load(reader: IndexReader) -> tantivy::Result<Self> {
        reader.reload()?;
        let mut dedup = Deduplicator {
            filter: BloomFilter::with_capacity(0),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            reader,
        };
        dedup.rebuild_filter()?;
        Ok(dedup)
    }

    /// Whether `id` is already stored (in the index or pending in the WAL).
    pub fn is_stored(&self, id: &str) -> tantivy::Result<bool> {
        if !self.filter.may_contain(id) {
            return Ok(false);
        }
        if self.pending.contains_key(id) {
            return Ok(true);
        }
        self.in_index(id)
    }

    /// Remembers an id just written with sequence number `seq`.
    pub fn record(&mut self, id: &str, seq: u64) {
        self.filter.insert(id);
        self.pending.insert(id.to_string(), seq);
        self.pending_order.push_back((seq, id.to_string()));
    }

    /// Forgets ids recorded from `first_seq` on (their WAL write failed).
    pub fn forget_from(&mut self, first_seq: u64) {
        while self
            .pending_order
            .back()
            .is_some_and(|(seq, _)| *seq >= first_seq)
        {
            if let Some((_, id)) = self.pending_order.pop_back() {
                self.pending.remove(&id);
            }
        }
        // The filter keeps those bits: a false positive costs one exact lookup, nothing more.
    }

    /// Called after the index committed everything below `committed_seq`.
    pub fn on_commit(&mut self, committed_seq: u64) -> tantivy::Result<()> {
        self.reader.reload()?;
        while self
            .pending_order
            .front()
            .is_some_and(|(seq, _)| *seq < committed_seq)
        {
            if let Some((_, id)) = self.pending_order.pop_front() {
                self.pending.remove(&id);
            }
        }
        if self.filter.is_overfull() {
            self.rebuild_filter()?;
        }
        Ok(())
    }

    fn in_index(&self, id: &str) -> tantivy::Result<bool> {
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let Some(ids) = segment.fast_fields().str(fast::ID)? else {
                continue;
            };
            if ids.dictionary().term_ord(id)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn rebuild_filter(&mut self) -> tantivy::Result<()> {
        let searcher = self.reader.searcher();
        let stored = searcher.num_docs() as usize + self.pending.len();
        let mut filter = BloomFilter::with_capacity(stored * 2);
        for segment in searcher.segment_readers() {
            let Some(ids) = segment.fast_fields().str(fast::ID)? else {
                continue;
            };
            let mut terms = ids.dictionary().stream()?;
            while terms.advance() {
                filter.insert(&String::from_utf8_lossy(terms.key()));
            }
        }
        for id in self.pending.keys() {
            filter.insert(id);
        }
        self.filter = filter;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut filter = BloomFilter::with_capacity(100_000);
        for i in 0..100_000 {
            filter.insert(&format!("log_{i}"));
        }
        assert!((0..100_000).all(|i| filter.may_contain(&format!("log_{i}"))));
        let false_positives = (0..100_000)
            .filter(|i| filter.may_contain(&format!("other_{i}")))
            .count();
        // Sized for 1M (the minimum), so far below 1% here.
        assert!(false_positives < 1_000, "{false_positives}");
    }

    #[test]
    fn overfull_is_reported() {
        let mut filter = BloomFilter::with_capacity(0);
        assert!(!filter.is_overfull());
        for i in 0..=MIN_CAPACITY {
            filter.insert(&i.to_string());
        }
        assert!(filter.is_overfull());
    }
}
