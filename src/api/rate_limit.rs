//! Per-identity token buckets (SPEC §3.7): audit queries 50/min and exports 5/min by default.
//!
//! A bucket holds up to `limit` tokens and refills continuously at `limit` per minute; each
//! request takes one. Responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` (Unix time when the bucket is full again); an empty bucket answers
//! 429 `rate_limited` with `Retry-After`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use warp::http::{HeaderMap, HeaderValue};

pub use crate::config::RateLimits;
use crate::token_bucket::{Budget, TokenBuckets};

/// What a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Logs, trails and summaries.
    Queries,
    /// Export creation and status.
    Exports,
}

impl Category {
    /// The `reason` label of a refusal (`scaivault_audit_rate_limited_total`).
    pub fn metric_label(self) -> super::metrics::Cause {
        match self {
            Category::Queries => super::metrics::Cause::Queries,
            Category::Exports => super::metrics::Cause::Exports,
        }
    }
}

/// The outcome of taking a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds at which the bucket is full again.
    pub reset_unix: u64,
    /// Seconds until one token is available (only meaningful when refused).
    pub retry_after_secs: u64,
}

impl Decision {
    /// Sets the `X-RateLimit-*` headers (and `Retry-After` when refused).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        if self.limit == 0 {
            return;
        }
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_unix));
        if !self.allowed {
            headers.insert("retry-after", HeaderValue::from(self.retry_after_secs));
        }
    }
}

impl Decision {
    /// The headers of an answer that took no token (401, 403): the bucket as it stands.
    pub fn unspent(budget: Budget) -> Self {
        Decision {
            allowed: true,
            limit: budget.limit,
            remaining: budget.remaining,
            reset_unix: unix_now() + budget.seconds_to_full,
            retry_after_secs: 0,
        }
    }
}

/// Token buckets keyed by identity, one set per category.
#[derive(Debug)]
pub struct RateLimiter {
    queries: TokenBuckets<String>,
    exports: TokenBuckets<String>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(RateLimits::default())
    }
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            queries: TokenBuckets::new(limits.queries_per_minute),
            exports: TokenBuckets::new(limits.exports_per_minute),
        }
    }

    /// Takes one token from `identity`'s bucket for `category`.
    pub fn acquire(&self, identity: &str, category: Category) -> Decision {
        self.acquire_at(identity, category, Instant::now())
    }

    /// `identity`'s bucket for `category` without taking a token (`None` when unlimited).
    pub fn peek(&self, identity: &str, category: Category) -> Option<Decision> {
        let buckets = match category {
            Category::Queries => &self.queries,
            Category::Exports => &self.exports,
        };
        buckets
            .budget(&identity.to_string(), Instant::now())
            .map(Decision::unspent)
    }

    fn acquire_at(&self, identity: &str, category: Category, now: Instant) -> Decision {
        let buckets = match category {
            Category::Queries => &self.queries,
            Category::Exports => &self.exports,
        };
        let limit = buckets.per_minute();
        if buckets.is_disabled() {
            return Decision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_unix: 0,
                retry_after_secs: 0,
            };
        }
        let spent = buckets.spend(identity.to_string(), now);
        let seconds_to_full = buckets.seconds_until(spent.tokens, f64::from(limit));
        let seconds_to_one = buckets.seconds_until(spent.tokens, 1.0);
        Decision {
            allowed: spent.allowed,
            limit,
            remaining: spent.tokens.floor() as u32,
            reset_unix: unix_now() + seconds_to_full.ceil() as u64,
            retry_after_secs: (seconds_to_one.ceil() as u64).max(1),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_then_refills_at_the_configured_rate() {
        let limiter = RateLimiter::new(RateLimits {
            queries_per_minute: 3,
            exports_per_minute: 1,
        });
        let start = Instant::now();
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                limiter
                    .acquire_at("sa:a", Category::Queries, start)
                    .remaining
            })
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = limiter.acquire_at("sa:a", Category::Queries, start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 20);
        // Other identities and categories have their own buckets.
        assert!(limiter.acquire_at("sa:b", Category::Queries, start).allowed);
        assert!(limiter.acquire_at("sa:a", Category::Exports, start).allowed);
        assert!(!limiter.acquire_at("sa:a", Category::Exports, start).allowed);
        // 3 per minute = one token every 20 s.
        assert!(
            !limiter
                .acquire_at("sa:a", Category::Queries, start + Duration::from_secs(19))
                .allowed
        );
        assert!(
            limiter
                .acquire_at("sa:a", Category::Queries, start + Duration::from_secs(41))
                .allowed
        );
    }

    #[test]
    fn zero_disables_limiting_and_headers() {
        let limiter = RateLimiter::new(RateLimits {
            queries_per_minute: 0,
            exports_per_minute: 0,
        });
        let decision = limiter.acquire("sa:a", Category::Queries);
        assert!(decision.allowed);
        let mut headers = HeaderMap::new();
        decision.apply_headers(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn peeking_takes_no_token() {
        let limiter = RateLimiter::new(RateLimits {
            queries_per_minute: 2,
            exports_per_minute: 0,
        });
        let fresh = limiter.peek("sa:a", Category::Queries).unwrap();
        assert_eq!((fresh.limit, fresh.remaining), (2, 2));
        limiter.acquire("sa:a", Category::Queries);
        for _ in 0..3 {
            let seen = limiter.peek("sa:a", Category::Queries).unwrap();
            assert_eq!((seen.limit, seen.remaining), (2, 1));
            assert!(seen.reset_unix >= unix_now());
        }
        assert_eq!(limiter.peek("sa:a", Category::Exports), None);
    }

    #[test]
    fn headers_describe_the_bucket() {
        let limiter = RateLimiter::new(RateLimits {
            queries_per_minute: 1,
            exports_per_minute: 1,
        });
        limiter.acquire("sa:a", Category::Queries);
        let refused = limiter.acquire("sa:a", Category::Queries);
        let mut headers = HeaderMap::new();
        refused.apply_headers(&mut headers);
        assert_eq!(headers["x-ratelimit-limit"], "1");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert!(
            headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 59
        );
        assert!(
            headers["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > unix_now()
        );
    }
}
