//! A fixed-size Bloom filter over strings: "certainly absent" for almost every string never
//! inserted, at 10 bits per string. The WAL stage's deduplication ([`super::dedup`]) and the
//! per-segment `request_id` filters ([`super::timeline`]) use it.

use std::hash::{BuildHasher, Hasher};

/// Bits per expected string; with 7 probes this gives about a 1% false-positive rate.
const BITS_PER_ID: usize = 10;
const PROBES: u64 = 7;

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
    /// A filter sized for `capacity` strings at about 1% false positives.
    pub fn with_capacity(capacity: usize) -> Self {
        let words = (capacity * BITS_PER_ID).div_ceil(64).max(1);
        BloomFilter {
            bits: vec![0; words],
            bit_count: (words * 64) as u64,
            inserted: 0,
            capacity,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The bit of each probe for `id`, as (word, mask).
    fn probes(&self, id: &str) -> impl Iterator<Item = (usize, u64)> + use<> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(id.as_bytes());
        let first = hasher.finish();
        // A second, independent-enough hash by rotating and mixing (Kirsch–Mitzenmacher).
        let second = first.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bit_count = self.bit_count;
        (0..PROBES).map(move |i| {
            let bit = first.wrapping_add(i.wrapping_mul(second)) % bit_count;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    pub fn insert(&mut self, id: &str) {
        for (word, mask) in self.probes(id) {
            if let Some(bits) = self.bits.get_mut(word) {
                *bits |= mask;
            }
        }
        self.inserted += 1;
    }

    /// False means certainly never inserted.
    pub fn may_contain(&self, id: &str) -> bool {
        self.probes(id)
            .all(|(word, mask)| self.bits.get(word).is_some_and(|bits| bits & mask != 0))
    }

    /// True once more strings were inserted than the filter was sized for.
    pub fn is_overfull(&self) -> bool {
        self.inserted > self.capacity
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
        // About 1% at capacity.
        assert!(false_positives < 2_000, "{false_positives}");
        assert!(!filter.is_overfull());
        filter.insert("one more");
        assert!(filter.is_overfull());
    }

    #[test]
    fn an_empty_filter_contains_nothing() {
        let filter = BloomFilter::with_capacity(0);
        assert!(!filter.may_contain(""));
        assert!(!filter.may_contain("req_1"));
    }
}
