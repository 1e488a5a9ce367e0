//! The open-loop send schedule.
//!
//! Every sender sends at a fixed rate whatever the server does: message `k` of sender `i`
//! is due at `start + offset(i) + k * period`. The offsets spread the senders evenly over
//! one period, so that `n` senders at `r` msg/s produce a smooth `n * r` msg/s rather than
//! `n` messages at once every `1/r` s. Latency is then measured from the due ("intended")
//! time, which corrects for coordinated omission: a stalled server delays the sends that
//! should have happened during the stall, and their wait counts against it.
//!
//! All times are nanoseconds since the run epoch; this module knows no clock.

/// One sender group's schedule: `senders` senders, each at `rate` messages per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Interval between two messages of one sender, in ns.
    pub period_ns: u64,
    /// Number of senders sharing the period.
    pub senders: u64,
    /// When the first sender's first message is due (ns since the epoch).
    pub start_ns: u64,
    /// No message is due at or after this time (ns since the epoch).
    pub end_ns: u64,
}

impl Schedule {
    /// A schedule for `senders` senders at `rate` msg/s each, due from `start_ns` to
    /// `end_ns` (exclusive). `rate` must be positive and finite.
    pub fn new(rate: f64, senders: u64, start_ns: u64, end_ns: u64) -> Self {
        // At least 1 ns so that a silly rate cannot divide by zero later.
        let period_ns = ((1e9 / rate).round() as u64).max(1);
        Self {
            period_ns,
            senders: senders.max(1),
            start_ns,
            end_ns,
        }
    }

    /// Offset of sender `index` (0-based within the group) inside one period.
    pub fn offset_ns(&self, index: u64) -> u64 {
        ((u128::from(index % self.senders) * u128::from(self.period_ns)) / u128::from(self.senders))
            as u64
    }

    /// When message `seq` of sender `index` is due.
    pub fn intended_ns(&self, index: u64, seq: u64) -> u64 {
        self.start_ns + self.offset_ns(index) + seq * self.period_ns
    }

    /// How many messages sender `index` sends in all (those due before `end_ns`).
    pub fn messages_for(&self, index: u64) -> u64 {
        let first = self.start_ns + self.offset_ns(index);
        if first >= self.end_ns {
            return 0;
        }
        (self.end_ns - first).div_ceil(self.period_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_evenly_over_one_period() {
        // 4 senders at 10 msg/s: period 100 ms, one sender every 25 ms.
        let s = Schedule::new(10.0, 4, 0, 1_000_000_000);
        assert_eq!(s.period_ns, 100_000_000);
        let offsets: Vec<u64> = (0..4).map(|i| s.offset_ns(i)).collect();
        assert_eq!(offsets, [0, 25_000_000, 50_000_000, 75_000_000]);
        // All sends of all senders, sorted, are exactly 25 ms apart.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|i| (0..s.messages_for(i)).map(move |k| s.intended_ns(i, k)))
            .collect();
        all.sort_unstable();
        assert_eq!(all.len(), 40);
        assert!(all.windows(2).all(|w| w[1] - w[0] == 25_000_000));
    }

    #[test]
    fn intended_times_start_at_start_and_stay_before_end() {
        let start = 5_000_000_000;
        let end = start + 2_000_000_000;
        let s = Schedule::new(20.0, 3, start, end);
        for i in 0..3 {
            let n = s.messages_for(i);
            assert_eq!(n, 40);
            assert!(s.intended_ns(i, 0) >= start);
            assert!(s.intended_ns(i, n - 1) < end);
            assert!(s.intended_ns(i, n) >= end);
        }
        assert_eq!(s.intended_ns(0, 0), start);
    }

    #[test]
    fn uneven_division_counts_exactly_the_due_messages() {
        // 7 senders at 3 msg/s: neither the period nor the offsets are whole numbers.
        let s = Schedule::new(3.0, 7, 1_000, 1_000_000_000);
        for i in 0..7 {
            let brute = (0..100).filter(|&k| s.intended_ns(i, k) < s.end_ns).count() as u64;
            assert_eq!(s.messages_for(i), brute);
        }
        let empty = Schedule::new(1.0, 2, 10, 10);
        assert_eq!(empty.messages_for(0), 0);
    }
}
