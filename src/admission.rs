//! Admission: the counts and rates that decide whether a new connection or session is let
//! in, per source address and for the whole server. Sans-IO; the runtime and the endpoints
//! call it with a [`PeerKey`] and `now`.
//!
//! Counts shared by every shard ([`Occupancy`]) are atomics, so admission needs no lock and
//! no message between shards. Per-address counts live in a fixed table of hashed buckets
//! rather than a map: its memory is bounded whatever the number of addresses, and nothing
//! must be forgotten when an address goes away. Two addresses that share a bucket share its
//! cap, which only ever refuses early (with 65,536 buckets and a keyed hash, rarely, and not
//! in a way an attacker can aim at someone else). Rates ([`RateLimiter`]) are per shard:
//! token buckets in the same kind of table, without atomics.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// A source address as admission counts it: an IPv4 address, or the /64 prefix of an IPv6
/// one (one host usually holds a whole /64, so counting single IPv6 addresses would let it
/// open a cap's worth from each of 2^64 of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(u64);

impl PeerKey {
    /// The key of `ip`; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn of(ip: IpAddr) -> PeerKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            // IPv4 addresses sit under a prefix (ffff:ffff::/32) that no unicast IPv6
            // host has, so the two never share a key.
            IpAddr::V4(v4) => PeerKey(0xffff_ffff_0000_0000 | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => PeerKey((u128::from(v6) >> 64) as u64),
        }
    }

    /// The key of a peer whose address is unknown (a socket that is not TCP/IP): all such
    /// peers share it.
    pub fn unknown() -> PeerKey {
        PeerKey(0)
    }
}

/// The address as far as the key holds it: an IPv4 address whole, an IPv6 one as its /64
/// (`2001:db8:1:2::/64`), nothing for an unknown peer.
impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            k if k >> 32 == 0xffff_ffff => {
                write!(f, "{}", std::net::Ipv4Addr::from((k & 0xffff_ffff) as u32))
            }
            k => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(k) << 64)),
        }
    }
}

/// Buckets of the per-address tables: a power of two.
const BUCKETS: usize = 1 << 16;

/// How many of something (connections, sessions) are open, in total and per source address,
/// shared by every shard, with caps on both.
#[derive(Debug)]
pub struct Occupancy {
    total: AtomicU64,
    per_peer: Box<[AtomicU32]>,
    hasher: RandomState,
    max_total: u64,
    max_per_peer: u32,
}

/// Why [`Occupancy::enter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The server-wide cap is reached.
    Total,
    /// The source address's cap is reached.
    Peer,
}

impl Occupancy {
    /// An empty occupancy with caps `max_total` and `max_per_peer`.
    pub fn new(max_total: usize, max_per_peer: usize) -> Occupancy {
        Occupancy {
            total: AtomicU64::new(0),
            per_peer: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
            max_total: max_total as u64,
            max_per_peer: u32::try_from(max_per_peer).unwrap_or(u32::MAX),
        }
    }

    fn bucket(&self, peer: PeerKey) -> &AtomicU32 {
        let h = self.hasher.hash_one(peer) as usize;
        &self.per_peer[h & (BUCKETS - 1)]
    }

    /// Counts one more for `peer` if neither cap is reached; each `Ok` must be matched by
    /// one [`Occupancy::leave`].
    pub fn enter(&self, peer: PeerKey) -> Result<(), Full> {
        let bucket = self.bucket(peer);
        if bucket
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_per_peer).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Full::Peer);
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            })
            .is_err()
        {
            bucket.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Total);
        }
        Ok(())
    }

    /// Counts one less for `peer` (after an `Ok` from [`Occupancy::enter`]). Saturates at
    /// zero: a leave counted twice by mistake must not wrap a count and lock an address
    /// out for good.
    pub fn leave(&self, peer: PeerKey) {
        let less = |n: u32| Some(n.saturating_sub(1));
        let _ = self
            .bucket(peer)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, less);
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// How many are in, server-wide.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }
}

/// Token buckets per source address, for one shard: `rate` per second with a burst of
/// `burst`. Buckets are hashed like [`Occupancy`]'s, fewer of them (a shard sees a share
/// of the addresses), and refilled lazily when asked.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Box<[(f32, Option<Instant>)]>,
    hasher: RandomState,
    rate: f32,
    burst: f32,
}

/// Buckets of a shard's rate table.
const RATE_BUCKETS: usize = 1 << 12;

impl RateLimiter {
    /// A limiter of `rate` per second with bursts of up to `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            buckets: vec![(0.0, None); RATE_BUCKETS].into_boxed_slice(),
            hasher: RandomState::new(),
            rate: rate as f32,
            burst: burst.max(1.0) as f32,
        }
    }

    /// Takes one token of `peer`'s bucket at `now`; `false` when it is empty.
    pub fn allow(&mut self, peer: PeerKey, now: Instant) -> bool {
        let h = self.hasher.hash_one(peer) as usize;
        let (tokens, at) = &mut self.buckets[h & (RATE_BUCKETS - 1)];
        let refill = at.map_or(self.burst, |t| {
            now.saturating_duration_since(t).as_secs_f32() * self.rate
        });
        *tokens = (*tokens + refill).min(self.burst);
        *at = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> PeerKey {
        PeerKey::of(s.parse().unwrap())
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_unmap_ipv4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_ne!(ip("10.0.0.1"), ip("10.0.0.2"));
    }

    #[test]
    fn a_key_shows_the_address_it_holds() {
        assert_eq!(ip("::ffff:127.0.0.1").to_string(), "127.0.0.1");
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(PeerKey::unknown().to_string(), "");
    }

    #[test]
    fn occupancy_caps_each_peer_and_the_total() {
        let o = Occupancy::new(3, 2);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(o.enter(a), Ok(()));
        assert_eq!(o.enter(a), Ok(()));
        assert_eq!(o.enter(a), Err(Full::Peer));
        assert_eq!(o.enter(b), Ok(()));
        // The total is reached; the refused entry takes nothing from b's count.
        let c = ip("10.0.0.3");
        assert_eq!(o.enter(c), Err(Full::Total));
        o.leave(a);
        assert_eq!(o.enter(c), Ok(()));
        assert_eq!(o.total(), 3);
        o.leave(b);
        assert_eq!(o.enter(b), Ok(()));
        // A leave too many does not wrap.
        let o = Occupancy::new(1, 1);
        o.leave(a);
        assert_eq!(o.total(), 0);
        assert_eq!(o.enter(a), Ok(()));
        assert_eq!(o.enter(a), Err(Full::Peer));
    }

    #[test]
    fn rates_refill_over_time_up_to_the_burst() {
        let mut r = RateLimiter::new(10.0, 2.0);
        let p = ip("10.0.0.1");
        let t0 = Instant::now();
        assert!(r.allow(p, t0));
        assert!(r.allow(p, t0));
        assert!(!r.allow(p, t0));
        // 10 per second: one more after 100 ms, and never more than the burst.
        assert!(r.allow(p, t0 + Duration::from_millis(100)));
        assert!(!r.allow(p, t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert!(r.allow(p, later) && r.allow(p, later) && !r.allow(p, later));
        // Another peer has its own bucket.
        assert!(r.allow(ip("10.0.0.2"), t0));
    }
}
