//! Failed authentication per client address: a token bucket of `per_minute` failures per
//! address (IPv6 by /64, so one host cannot rotate through its addresses). While a bucket is
//! empty, every request from the address that presents credentials is answered 429 before
//! any token is checked, so guessing tokens, or making the service forward garbage to the
//! TokenReview API, costs the caller a minute per `per_minute` attempts.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use crate::token_bucket::TokenBuckets;

pub use crate::config::auth::DEFAULT_FAILED_AUTH_PER_MINUTE;

/// Refuses addresses that failed authentication too often.
#[derive(Debug)]
pub struct FailedAuthLimiter {
    /// Failures per minute per address; 0 disables the limiter.
    buckets: TokenBuckets<IpAddr>,
}

impl Default for FailedAuthLimiter {
    /// Disabled.
    fn default() -> Self {
        FailedAuthLimiter::new(0)
    }
}

/// An address over its budget: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: u32,
    pub retry_after_secs: u64,
}

impl FailedAuthLimiter {
    /// A limiter allowing `per_minute` failures per address (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        FailedAuthLimiter {
            buckets: TokenBuckets::new(per_minute),
        }
    }

    /// Fails while `client` has no failure left in its budget.
    pub fn check(&self, client: IpAddr) -> Result<(), Refusal> {
        self.check_at(client, Instant::now())
    }

    /// Counts one failed authentication of `client`.
    pub fn record_failure(&self, client: IpAddr) {
        self.record_at(client, Instant::now());
    }

    /// `client`'s remaining budget of failed authentications (`None` when the limiter is off):
    /// the `X-RateLimit-*` headers of a 401.
    pub fn budget(&self, client: IpAddr) -> Option<crate::token_bucket::Budget> {
        self.buckets.budget(&key(client), Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.buckets.is_disabled() {
            return Ok(());
        }
        match self.buckets.peek(&key(client), now) {
            Some(tokens) if tokens < 1.0 => Err(Refusal {
                limit: self.buckets.per_minute(),
                retry_after_secs: (self.buckets.seconds_until(tokens, 1.0).ceil() as u64).max(1),
            }),
            _ => Ok(()),
        }
    }

    fn record_at(&self, client: IpAddr, now: Instant) {
        if !self.buckets.is_disabled() {
            self.buckets.spend(key(client), now);
        }
    }
}

/// The bucket of an address: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by its /64.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_address_is_refused_after_its_budget_and_recovers() {
        let limiter = FailedAuthLimiter::new(3);
        let start = Instant::now();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(client, start), Ok(()));
            limiter.record_at(client, start);
        }
        let refusal = limiter.check_at(client, start).unwrap_err();
        assert_eq!(refusal.limit, 3);
        assert_eq!(refusal.retry_after_secs, 20);
        assert_eq!(limiter.check_at(other, start), Ok(()));
        assert!(
            limiter
                .check_at(client, start + Duration::from_secs(19))
                .is_err()
        );
        assert_eq!(
            limiter.check_at(client, start + Duration::from_secs(21)),
            Ok(())
        );
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let limiter = FailedAuthLimiter::new(1);
        let start = Instant::now();
        limiter.record_at("2001:db8:1:2::1".parse().unwrap(), start);
        assert!(
            limiter
                .check_at("2001:db8:1:2:ffff::9".parse().unwrap(), start)
                .is_err()
        );
        assert!(
            limiter
                .check_at("2001:db8:1:3::1".parse().unwrap(), start)
                .is_ok()
        );
        limiter.record_at("::ffff:192.0.2.1".parse().unwrap(), start);
        assert!(
            limiter
                .check_at("192.0.2.1".parse().unwrap(), start)
                .is_err()
        );
    }

    #[test]
    fn zero_disables_the_limiter() {
        let limiter = FailedAuthLimiter::new(0);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..100 {
            limiter.record_failure(client);
        }
        assert_eq!(limiter.check(client), Ok(()));
    }
}
