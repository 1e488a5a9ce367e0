//! Rate limits per connection: token buckets for messages, payload bytes and joins, and
//! the rule that closes a connection which keeps being refused. Sans-IO: each check takes
//! the turn's `now`, costs a few float operations, allocates nothing and makes no syscall.
//!
//! A connection's buckets live in one [`Buckets`], boxed by the session that owns it (one
//! pointer in the session; none at all when its profile limits nothing). Every connection
//! of a limited profile holds one, idle or not, so it is kept to 80 bytes (an allocator
//! size class): rates and tokens are `f32` (rates up to 2^24 per second are exact, and a
//! token more or less on a burst of millions of bytes changes no decision a client can
//! see), the sustained time is whole milliseconds, and a refused streak is its start and an
//! offset.

use std::time::{Duration, Instant};

use crate::config::RateProfile;
use crate::proto::native::ErrorCode;
use crate::stats::Refusal;

/// A refused streak ends after this long without a refusal: a client within its limits
/// is never refused, and one that waits a second after a refusal has backed off (every
/// bucket of at least one token per second has refilled a token by then). Without a gap
/// rule, a client sending at twice its rate would pass every other message and never
/// count as persistent.
const STREAK_GAP: Duration = Duration::from_secs(1);

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Messages per second.
    Messages,
    /// Payload bytes per second.
    Bytes,
    /// Joins per second.
    Joins,
}

impl Limit {
    /// The stats counter of a refusal by this bucket.
    pub fn refusal(self) -> Refusal {
        match self {
            Limit::Messages => Refusal::RateLimitedMessages,
            Limit::Bytes => Refusal::RateLimitedBytes,
            Limit::Joins => Refusal::RateLimitedJoins,
        }
    }

    /// The error the client gets (the same code for every bucket: the client's answer,
    /// slowing down, is the same).
    pub fn code(self) -> ErrorCode {
        ErrorCode::RateLimited
    }
}

/// A refusal: the request is not carried out. When `close` is set the connection has been
/// refused for the profile's sustained time and must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// The bucket that was empty.
    pub limit: Limit,
    /// The connection kept exceeding its limits: close it.
    pub close: bool,
}

/// One token bucket: `rate` tokens per second up to `burst`; a rate of 0 never refuses.
/// Stored as `f32` (the size of [`Buckets`]); the arithmetic is done in `f64`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f32,
    burst: f32,
    tokens: f32,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Bucket {
        // `as` rounds to the nearest `f32`: exact for every rate and burst up to 2^24.
        let burst = burst as f32;
        // A new connection starts with a full burst: its first messages are never refused.
        Bucket {
            rate: rate as f32,
            burst,
            tokens: burst,
        }
    }

    fn limits(&self) -> bool {
        self.rate > 0.0
    }

    fn refill(&mut self, seconds: f64) {
        let tokens = f64::from(self.tokens) + seconds * f64::from(self.rate);
        self.tokens = tokens.min(f64::from(self.burst)) as f32;
    }

    fn has(&self, cost: f64) -> bool {
        !self.limits() || f64::from(self.tokens) >= cost
    }

    fn take(&mut self, cost: f64) {
        if self.limits() {
            self.tokens = (f64::from(self.tokens) - cost) as f32;
        }
    }
}

/// The buckets of one connection.
#[derive(Debug)]
pub struct Buckets {
    messages: Bucket,
    bytes: Bucket,
    joins: Bucket,
    /// How long a streak of refusals may last before the connection is closed, in ms.
    sustained_ms: u32,
    /// Seconds from `streak`'s start to its latest refusal.
    streak_last: f32,
    /// When the buckets were last refilled.
    refilled: Instant,
    /// The first refusal of the current streak, if one is going on.
    streak: Option<Instant>,
}

impl Buckets {
    /// The buckets of `profile`, full at `now`; `None` when the profile limits nothing
    /// (then the session keeps no state and checks nothing). A connection refused for
    /// `sustained` is to be closed.
    pub fn new(profile: &RateProfile, sustained: Duration, now: Instant) -> Option<Box<Buckets>> {
        let buckets = Buckets {
            messages: Bucket::new(profile.messages_per_s, profile.messages_burst),
            bytes: Bucket::new(profile.bytes_per_s, profile.bytes_burst),
            joins: Bucket::new(profile.joins_per_s, profile.joins_burst),
            // Beyond 49 days is as good as never.
            sustained_ms: u32::try_from(sustained.as_millis()).unwrap_or(u32::MAX),
            streak_last: 0.0,
            refilled: now,
            streak: None,
        };
        let limits = [buckets.messages, buckets.bytes, buckets.joins]
            .iter()
            .any(Bucket::limits);
        limits.then(|| Box::new(buckets))
    }

    fn refill(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.messages.refill(seconds);
        self.bytes.refill(seconds);
        self.joins.refill(seconds);
    }

    /// Takes one message of `bytes` payload bytes at `now`, or refuses it (taking nothing).
    pub fn message(&mut self, bytes: usize, now: Instant) -> Result<(), Exceeded> {
        self.refill(now);
        let cost = bytes as f64;
        if !self.messages.has(1.0) {
            return Err(self.refused(Limit::Messages, now));
        }
        if !self.bytes.has(cost) {
            return Err(self.refused(Limit::Bytes, now));
        }
        self.messages.take(1.0);
        self.bytes.take(cost);
        Ok(())
    }

    /// Takes one join at `now`, or refuses it.
    pub fn join(&mut self, now: Instant) -> Result<(), Exceeded> {
        self.refill(now);
        if !self.joins.has(1.0) {
            return Err(self.refused(Limit::Joins, now));
        }
        self.joins.take(1.0);
        Ok(())
    }

    /// Counts a refusal in the streak and says whether the connection is to be closed.
    fn refused(&mut self, limit: Limit, now: Instant) -> Exceeded {
        let start = match self.streak {
            Some(start)
                if now.saturating_duration_since(start).as_secs_f64()
                    < f64::from(self.streak_last) + STREAK_GAP.as_secs_f64() =>
            {
                start
            }
            _ => now,
        };
        let length = now.saturating_duration_since(start);
        self.streak = Some(start);
        self.streak_last = length.as_secs_f32();
        Exceeded {
            limit,
            close: length.as_millis() >= u128::from(self.sustained_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(messages: (f64, u32), bytes: (f64, u32), joins: (f64, u32)) -> RateProfile {
        RateProfile {
            messages_per_s: messages.0,
            messages_burst: messages.1,
            bytes_per_s: bytes.0,
            bytes_burst: bytes.1,
            joins_per_s: joins.0,
            joins_burst: joins.1,
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    /// What a limited connection pays besides its pointer (tuning/README.md quotes it).
    #[test]
    fn the_buckets_of_a_connection_stay_small() {
        assert!(
            std::mem::size_of::<Buckets>() <= 80,
            "{}",
            std::mem::size_of::<Buckets>()
        );
    }

    #[test]
    fn a_profile_that_limits_nothing_keeps_no_state() {
        let none = profile((0.0, 0), (0.0, 0), (0.0, 0));
        assert!(Buckets::new(&none, LONG, Instant::now()).is_none());
        let one = profile((0.0, 0), (0.0, 0), (1.0, 1));
        assert!(Buckets::new(&one, LONG, Instant::now()).is_some());
    }

    #[test]
    fn messages_refill_at_their_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Buckets::new(&profile((10.0, 3), (0.0, 0), (0.0, 0)), LONG, t0).unwrap();
        for _ in 0..3 {
            assert_eq!(b.message(100, t0), Ok(()));
        }
        let refused = b.message(1, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Messages);
        assert!(!refused.close);
        // 10 per second: one token 100 ms later, not two.
        assert_eq!(b.message(1, t0 + ms(100)), Ok(()));
        assert!(b.message(1, t0 + ms(100)).is_err());
        // After a long quiet, no more than the burst.
        let later = t0 + ms(60_000);
        for _ in 0..3 {
            assert_eq!(b.message(1, later), Ok(()));
        }
        assert!(b.message(1, later).is_err());
    }

    #[test]
    fn bytes_are_counted_by_payload_and_a_refusal_takes_nothing() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&profile((0.0, 0), (1000.0, 1000), (0.0, 0)), LONG, t0).unwrap();
        assert_eq!(b.message(600, t0), Ok(()));
        assert_eq!(b.message(500, t0).unwrap_err().limit, Limit::Bytes);
        // The refused 500 took nothing: 400 are left.
        assert_eq!(b.message(400, t0), Ok(()));
        assert!(b.message(1, t0).is_err());
        // 1000 bytes/s: 500 more after half a second.
        assert_eq!(b.message(500, t0 + Duration::from_millis(500)), Ok(()));
        // A message larger than the burst never passes.
        assert!(b.message(1001, t0 + LONG).is_err());
    }

    #[test]
    fn a_refused_message_does_not_spend_a_message_token() {
        let t0 = Instant::now();
        let p = profile((10.0, 1), (10.0, 10), (0.0, 0));
        let mut b = Buckets::new(&p, LONG, t0).unwrap();
        assert_eq!(b.message(20, t0).unwrap_err().limit, Limit::Bytes);
        assert_eq!(b.message(5, t0), Ok(()));
    }

    #[test]
    fn joins_have_their_own_bucket() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&profile((1.0, 1), (0.0, 0), (2.0, 2)), LONG, t0).unwrap();
        assert_eq!(b.message(0, t0), Ok(()));
        assert_eq!(b.join(t0), Ok(()));
        assert_eq!(b.join(t0), Ok(()));
        assert_eq!(b.join(t0).unwrap_err().limit, Limit::Joins);
        assert_eq!(b.join(t0 + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn only_a_sustained_streak_of_refusals_closes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let sustained = ms(2_000);
        let p = profile((10.0, 1), (0.0, 0), (0.0, 0));
        let mut b = Buckets::new(&p, sustained, t0).unwrap();
        // A client at twice its rate: every other message passes, the others are refused,
        // and the streak goes on through the passes.
        let mut closed_at = None;
        for i in 0..100u64 {
            let at = t0 + ms(50 * i);
            if let Err(e) = b.message(0, at) {
                if e.close {
                    closed_at = Some(at);
                    break;
                }
            }
        }
        let closed_at = closed_at.expect("a persistent sender is closed");
        assert!(closed_at - t0 >= sustained && closed_at - t0 <= sustained + ms(100));

        // A client that backs off for a second after its refusals starts a new streak.
        let mut b = Buckets::new(&p, sustained, t0).unwrap();
        let mut at = t0;
        for _ in 0..5 {
            assert_eq!(b.message(0, at), Ok(()));
            let refused = b.message(0, at).unwrap_err();
            assert!(!refused.close);
            at += ms(1_500);
        }
    }
}
