//! Token buckets keyed by anything hashable, refilling continuously at `per_minute` tokens per
//! minute up to `per_minute`: the mechanism behind the per-identity rate limits
//! (`api::rate_limit`) and the per-address failed-authentication limit (`auth::failures`).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets are swept of full (idle) entries once the map grows past this.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One bucket per key, all with the same rate; 0 per minute disables them (callers check
/// [`TokenBuckets::is_disabled`]).
#[derive(Debug)]
pub struct TokenBuckets<K> {
    per_minute: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// The outcome of [`TokenBuckets::spend`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    /// A token was available and taken.
    pub allowed: bool,
    /// Tokens left afterwards.
    pub tokens: f64,
}

/// A bucket's state as the `X-RateLimit-*` headers describe it ([`TokenBuckets::budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Capacity (per minute).
    pub limit: u32,
    /// Whole tokens left.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub seconds_to_full: u64,
}

impl<K: Eq + Hash> TokenBuckets<K> {
    pub fn new(per_minute: u32) -> Self {
        TokenBuckets {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The rate (and capacity); 0 means unlimited.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    pub fn is_disabled(&self) -> bool {
        self.per_minute == 0
    }

    /// Takes one token from `key`'s bucket (a new bucket starts full) if one is available.
    pub fn spend(&self, key: K, now: Instant) -> Spent {
        let capacity = self.capacity();
        let mut buckets = self.buckets.lock();
        if buckets.len() > SWEEP_THRESHOLD {
            buckets.retain(|_, bucket| self.refilled(bucket, now) < capacity);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        Spent {
            allowed,
            tokens: bucket.tokens,
        }
    }

    /// Tokens in `key`'s bucket at `now`, without taking any (`None`: no bucket yet, i.e. full).
    pub fn peek(&self, key: &K, now: Instant) -> Option<f64> {
        let buckets = self.buckets.lock();
        buckets.get(key).map(|bucket| self.refilled(bucket, now))
    }

    /// The state of `key`'s bucket at `now` without taking a token (`None` when disabled):
    /// what the `X-RateLimit-*` headers of an answer that spends nothing describe.
    pub fn budget(&self, key: &K, now: Instant) -> Option<Budget> {
        if self.is_disabled() {
            return None;
        }
        let tokens = self.peek(key, now).unwrap_or_else(|| self.capacity());
        Some(Budget {
            limit: self.per_minute,
            remaining: tokens.floor() as u32,
            seconds_to_full: self.seconds_until(tokens, self.capacity()).ceil() as u64,
        })
    }

    /// Seconds until a bucket holding `tokens` holds `target`.
    pub fn seconds_until(&self, tokens: f64, target: f64) -> f64 {
        ((target - tokens) / (self.capacity() / 60.0)).max(0.0)
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.capacity() / 60.0).min(self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_starts_full_empties_and_refills_at_its_rate() {
        let buckets = TokenBuckets::new(60);
        let start = Instant::now();
        assert_eq!(buckets.peek(&"a", start), None);
        for _ in 0..60 {
            assert!(buckets.spend("a", start).allowed);
        }
        let refused = buckets.spend("a", start);
        assert!(!refused.allowed);
        assert_eq!(buckets.seconds_until(refused.tokens, 1.0), 1.0);
        assert_eq!(
            buckets.peek(&"a", start + Duration::from_secs(30)),
            Some(30.0)
        );
        assert!(buckets.spend("b", start).allowed, "keys are independent");
    }
}
