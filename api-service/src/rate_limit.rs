//! A per-client token bucket for public writes (events), off unless configured.
//!
//! Clients are told apart by their address; behind a proxy, by the address the proxy appends to
//! `X-Forwarded-For`, and only for requests that come from a proxy named in `--trusted-proxies`
//! (anyone else could write any address there); IPv6 clients by their /64. The table of buckets
//! stays bounded: full buckets carry no state worth keeping and are dropped when it grows, and
//! it is cleared if that is not enough.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::error::ApiError;

/// Buckets kept before full ones are swept out.
const MAX_TRACKED_CLIENTS: usize = 100_000;

#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<Limits>>,
}

struct Limits {
    per_second: f64,
    burst: f64,
    trusted_proxies: Vec<IpAddr>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_second` 0 turns the limit off; `burst` 0 means one second's worth.
    pub fn new(per_second: f64, burst: u32, trusted_proxies: Vec<IpAddr>) -> Self {
        let inner = (per_second > 0.0).then(|| {
            let burst = if burst == 0 { per_second.ceil() } else { f64::from(burst) };
            Arc::new(Limits { per_second, burst, trusted_proxies, buckets: Mutex::new(HashMap::new()) })
        });
        RateLimiter { inner }
    }

    /// Takes a token for the client of a request from `peer` whose last `X-Forwarded-For` value
    /// is `forwarded_for`, or refuses it.
    pub fn check(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Result<(), ApiError> {
        let Some(limits) = &self.inner else { return Ok(()) };
        let Some(peer) = peer else { return Ok(()) };
        let client = match forwarded_for.filter(|_| limits.trusted_proxies.contains(&peer)) {
            Some(forwarded) => last_forwarded(forwarded).unwrap_or(peer),
            None => peer,
        };
        let client = network_of(client);
        let now = Instant::now();
        let mut buckets = limits.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| limits.refill(*bucket, now).tokens < limits.burst);
            // Still nearly full (a flood of addresses all mid-burst): start over rather than grow;
            // memory stays bounded and the sweep stays rare.
            if buckets.len() >= MAX_TRACKED_CLIENTS * 9 / 10 {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: limits.burst, updated: now });
        *bucket = limits.refill(*bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::RateLimited)
        }
    }
}

impl Limits {
    fn refill(&self, bucket: Bucket, now: Instant) -> Bucket {
        let earned = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.per_second;
        Bucket { tokens: (bucket.tokens + earned).min(self.burst), updated: now }
    }
}

/// IPv6 clients by their /64 (one host usually holds a whole one), IPv4 by address.
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The last address in an `X-Forwarded-For` value: the one the trusted proxy itself appended.
fn last_forwarded(value: &str) -> Option<IpAddr> {
    value.rsplit(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_unaffected() {
        let limiter = RateLimiter::new(1.0, 3, vec![]);
        let (a, b) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        for _ in 0..3 {
            assert!(limiter.check(a, None).is_ok());
        }
        assert!(limiter.check(a, None).is_err());
        assert!(limiter.check(b, None).is_ok());
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let limiter = RateLimiter::new(1.0, 1, vec![proxy]);
        assert!(limiter.check(Some(proxy), Some("1.2.3.4, 5.6.7.8")).is_ok());
        assert!(limiter.check(Some(proxy), Some("1.2.3.4, 5.6.7.9")).is_ok(), "another client behind the proxy");
        let untrusted: IpAddr = "10.0.0.10".parse().unwrap();
        assert!(limiter.check(Some(untrusted), Some("5.6.7.8")).is_ok());
        assert!(limiter.check(Some(untrusted), Some("5.6.7.9")).is_err(), "a spoofed header does not help");
        assert!(RateLimiter::new(0.0, 0, vec![]).check(Some(untrusted), None).is_ok(), "off by default");
    }
}
