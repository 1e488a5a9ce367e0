//! One timer wheel per shard: every deadline of the shard (handshakes, keepalives,
//! Engine.IO heartbeats, lingering closes) in one structure, instead of one executor timer
//! per connection.
//!
//! A hashed wheel of 1 ms slots. Inserting is O(1); advancing visits each slot that time
//! passed over once; cancelling is lazy: an owner that moves its deadline simply inserts
//! the earlier one, and a timer that fires for a deadline its owner no longer holds is
//! ignored (or re-inserted) by the owner. So an idle connection costs one entry, and a busy
//! one (whose keepalive deadline moves with every message) costs no wheel work at all until
//! the old deadline comes round.
//!
//! Sans-IO: time is given, never read.

use std::time::{Duration, Instant};

/// Slots in the wheel: 4,096 slots of 1 ms span 4 s; a deadline further out simply stays
/// in its slot for several rounds.
const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;

/// Resolution of every deadline: 1 ms, finer than any protocol timeout corelay has and
/// coarse enough that an advance rarely visits more than a few slots.
pub const TICK: Duration = Duration::from_millis(1);

/// A hashed timer wheel keyed by `K`. Deadlines round up to the next tick: a timer never
/// fires early.
#[derive(Debug)]
pub struct TimerWheel<K> {
    origin: Instant,
    /// The last tick advanced to; every entry due at or before it has fired.
    tick: u64,
    slots: Vec<Vec<(u64, K)>>,
    occupied: [u64; WORDS],
    len: usize,
}

impl<K> TimerWheel<K> {
    /// An empty wheel whose clock starts at `now`.
    pub fn new(now: Instant) -> TimerWheel<K> {
        TimerWheel {
            origin: now,
            tick: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            len: 0,
        }
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first tick at or after `at`.
    fn tick_of(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        nanos.div_ceil(TICK.as_nanos()) as u64
    }

    /// The last tick at or before `at`.
    fn tick_before(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        (nanos / TICK.as_nanos()) as u64
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos(tick * TICK.as_nanos() as u64)
    }

    /// Schedules `key` at `deadline` (a deadline already past fires at the next advance).
    pub fn insert(&mut self, deadline: Instant, key: K) {
        let due = self.tick_of(deadline).max(self.tick + 1);
        let slot = (due as usize) & (SLOTS - 1);
        self.slots[slot].push((due, key));
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Moves the clock to `now` and appends every key due by then to `fired`, earliest slot
    /// first.
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<K>) {
        // A timer due within the current, unfinished tick waits for it.
        let target = self.tick_before(now);
        if target <= self.tick {
            return;
        }
        if self.len > 0 {
            // Past one round every slot is visited once; entries keep their own due tick.
            let steps = (target - self.tick).min(SLOTS as u64);
            for step in 1..=steps {
                let slot = ((self.tick + step) as usize) & (SLOTS - 1);
                if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                    continue;
                }
                let entries = &mut self.slots[slot];
                let mut i = 0;
                while i < entries.len() {
                    if entries[i].0 <= target {
                        fired.push(entries.swap_remove(i).1);
                        self.len -= 1;
                    } else {
                        i += 1;
                    }
                }
                if entries.is_empty() {
                    self.occupied[slot / 64] &= !(1 << (slot % 64));
                    // A burst of timers may have grown the slot; give it back.
                    if entries.capacity() > 64 {
                        *entries = Vec::new();
                    }
                }
            }
        }
        self.tick = target;
    }

    /// A time at or before the earliest pending deadline (exact unless the earliest
    /// occupied slot only holds timers of a later round), for the shard's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let start = ((self.tick + 1) as usize) & (SLOTS - 1);
        // Scan the occupancy bitmap from `start`, wrapping once.
        for offset in 0..=WORDS {
            let word_index = (start / 64 + offset) % WORDS;
            let mut word = self.occupied[word_index];
            if offset == 0 {
                word &= !0u64 << (start % 64);
            } else if offset == WORDS {
                word &= !(!0u64 << (start % 64));
            }
            if word != 0 {
                let slot = word_index * 64 + word.trailing_zeros() as usize;
                let distance = (slot + SLOTS - start) % SLOTS;
                return Some(self.instant_of(self.tick + 1 + distance as u64));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_fire_in_order_and_never_early() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + ms(30), "c");
        wheel.insert(t0 + ms(10), "a");
        wheel.insert(t0 + ms(20), "b");
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(10)));
        let mut fired = Vec::new();
        wheel.advance(t0 + ms(9), &mut fired);
        assert!(fired.is_empty());
        wheel.advance(t0 + ms(20), &mut fired);
        assert_eq!(fired, vec!["a", "b"]);
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(30)));
        wheel.advance(t0 + ms(31), &mut fired);
        assert_eq!(fired, vec!["a", "b", "c"]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn sub_tick_deadlines_round_up() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + Duration::from_micros(1500), 1);
        let mut fired = Vec::new();
        wheel.advance(t0 + Duration::from_micros(1999), &mut fired);
        assert!(fired.is_empty());
        wheel.advance(t0 + ms(2), &mut fired);
        assert_eq!(fired, vec![1]);
    }

    #[test]
    fn deadlines_beyond_one_round_wait_their_round() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let far = t0 + ms(SLOTS as u64 * 2 + 5);
        wheel.insert(far, "far");
        wheel.insert(t0 + ms(5), "near");
        let mut fired = Vec::new();
        wheel.advance(t0 + ms(SLOTS as u64 + 100), &mut fired);
        assert_eq!(fired, vec!["near"]);
        // The lower bound may be early (same slot, earlier round) but never late.
        assert!(wheel.next_deadline().unwrap() <= far);
        wheel.advance(far - ms(1), &mut fired);
        assert_eq!(fired, vec!["near"]);
        wheel.advance(far, &mut fired);
        assert_eq!(fired, vec!["near", "far"]);
    }

    #[test]
    fn a_long_sleep_fires_everything_due_once() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for i in 0..10_000u64 {
            wheel.insert(t0 + ms(i % 7000), i);
        }
        let mut fired = Vec::new();
        wheel.advance(t0 + ms(60_000), &mut fired);
        fired.sort_unstable();
        assert_eq!(fired, (0..10_000).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadlines_fire_at_the_next_advance() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let mut fired = Vec::new();
        wheel.advance(t0 + ms(50), &mut fired);
        wheel.insert(t0 + ms(10), "late");
        wheel.advance(t0 + ms(51), &mut fired);
        assert_eq!(fired, vec!["late"]);
    }
}
