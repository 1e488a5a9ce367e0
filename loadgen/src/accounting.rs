//! Exact delivery accounting: sent, expected, delivered, lost, duplicated, out of order.
//!
//! A sender counts, for each message it sends in the measured window, how many other
//! members of its room were connected at that moment (every member, itself included, where
//! the protocol delivers a message to its sender too: SocketCluster): that is the number of
//! deliveries the message is owed. Each receiver keeps one [`SeqWindow`] per sender of its room and
//! classifies every measured arrival as new, new but out of order, or duplicate. After the
//! run has drained, `lost = expected - unique delivered`.

use serde::{Deserialize, Serialize};

/// How many sequence numbers below the highest one seen a [`SeqWindow`] remembers.
///
/// One relay path (sender -> server -> receiver) runs over two TCP connections, so the
/// server would have to reorder a message by more than this many messages from the same
/// sender for the window to forget it: 1024 seqs cost 128 bytes per (receiver, sender) pair,
/// which keeps 100k pairs in ~13 MB.
pub const WINDOW: u32 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// How one arrival relates to what this receiver already got from the same sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First copy, in order (its seq is the highest seen so far).
    New,
    /// First copy, but a later message from the same sender arrived before it.
    OutOfOrder,
    /// A copy of a message already received.
    Duplicate,
    /// Older than the window: counted as delivered and out of order, since whether it is
    /// a duplicate can no longer be told.
    Stale,
}

/// Per (receiver, sender) record of the sequence numbers received.
#[derive(Clone, Debug)]
pub struct SeqWindow {
    /// One more than the highest seq seen; 0 when nothing was seen.
    next: u64,
    /// Bit `seq % WINDOW` is set when `seq` (within the window) was seen.
    bits: [u64; WORDS],
}

impl Default for SeqWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            next: 0,
            bits: [0; WORDS],
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let slot = (seq % u64::from(WINDOW)) as usize;
        (slot / 64, 1u64 << (slot % 64))
    }

    /// Records the arrival of `seq` and says what it was.
    pub fn observe(&mut self, seq: u32) -> Arrival {
        let seq = u64::from(seq);
        if seq >= self.next {
            // Forget the slots that the window slides over (they now stand for the
            // skipped seqs, which have not arrived).
            let gap = seq - self.next;
            if gap >= u64::from(WINDOW) {
                self.bits = [0; WORDS];
            } else {
                for skipped in self.next..seq {
                    let (w, m) = Self::bit(skipped);
                    self.bits[w] &= !m;
                }
            }
            let (w, m) = Self::bit(seq);
            self.bits[w] |= m;
            self.next = seq + 1;
            return Arrival::New;
        }
        if seq + u64::from(WINDOW) < self.next {
            return Arrival::Stale;
        }
        let (w, m) = Self::bit(seq);
        if self.bits[w] & m != 0 {
            Arrival::Duplicate
        } else {
            self.bits[w] |= m;
            Arrival::OutOfOrder
        }
    }
}

/// Message counts of a run (or of one thread's part of it, before merging).
///
/// Only messages whose intended send time falls in the measured window are counted, except
/// `received_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Messages sent.
    pub sent: u64,
    /// Deliveries owed: for each message sent, the room members other than the sender that
    /// were connected when it was sent (with the sender, where the protocol delivers to it:
    /// [`crate::Protocol::delivers_to_sender`]).
    pub expected: u64,
    /// Unique deliveries (first copies).
    pub delivered: u64,
    /// Copies of messages a receiver had already received.
    pub duplicated: u64,
    /// First copies that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// Arrivals too old for the duplicate window (also counted in `delivered` and
    /// `out_of_order`).
    pub stale: u64,
    /// Every load message received, warm-up and drain included.
    pub received_total: u64,
}

impl Tally {
    /// Counts one measured arrival.
    pub fn record(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::New => self.delivered += 1,
            Arrival::OutOfOrder => {
                self.delivered += 1;
                self.out_of_order += 1;
            }
            Arrival::Duplicate => self.duplicated += 1,
            Arrival::Stale => {
                self.delivered += 1;
                self.out_of_order += 1;
                self.stale += 1;
            }
        }
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.received_total += other.received_total;
    }

    /// Deliveries owed but never made.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_all_new() {
        let mut w = SeqWindow::new();
        let mut t = Tally::default();
        for seq in 0..5000 {
            let a = w.observe(seq);
            assert_eq!(a, Arrival::New);
            t.record(a);
        }
        assert_eq!(t.delivered, 5000);
        assert_eq!(t.duplicated + t.out_of_order, 0);
    }

    #[test]
    fn loss_duplicates_and_reordering_are_counted_exactly() {
        let mut w = SeqWindow::new();
        let mut t = Tally {
            expected: 10,
            ..Tally::default()
        };
        // 0..10 owed; 3 and 7 never arrive; 5 arrives after 6; 2 and 6 arrive twice.
        for seq in [0, 1, 2, 2, 4, 6, 5, 6, 8, 9] {
            t.record(w.observe(seq));
        }
        assert_eq!(t.delivered, 8);
        assert_eq!(t.lost(), 2);
        assert_eq!(t.duplicated, 2);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.stale, 0);
    }

    #[test]
    fn a_gap_is_filled_late_without_being_a_duplicate() {
        let mut w = SeqWindow::new();
        assert_eq!(w.observe(10), Arrival::New);
        assert_eq!(w.observe(3), Arrival::OutOfOrder);
        assert_eq!(w.observe(3), Arrival::Duplicate);
        assert_eq!(w.observe(10), Arrival::Duplicate);
        assert_eq!(w.observe(11), Arrival::New);
    }

    #[test]
    fn sliding_forgets_slots_of_skipped_seqs() {
        let mut w = SeqWindow::new();
        assert_eq!(w.observe(5), Arrival::New);
        // Jump by exactly one window: slot of 5 is reused by 5 + WINDOW.
        assert_eq!(w.observe(5 + WINDOW), Arrival::New);
        // 5 + WINDOW - 1 was skipped: its slot must read as not seen.
        assert_eq!(w.observe(4 + WINDOW), Arrival::OutOfOrder);
        // A long jump clears everything.
        assert_eq!(w.observe(10 * WINDOW), Arrival::New);
        assert_eq!(w.observe(10 * WINDOW - 1), Arrival::OutOfOrder);
        assert_eq!(w.observe(5), Arrival::Stale);
    }

    #[test]
    fn merge_adds_every_count() {
        let a = Tally {
            sent: 1,
            expected: 2,
            delivered: 3,
            duplicated: 4,
            out_of_order: 5,
            stale: 6,
            received_total: 7,
        };
        let mut b = a;
        b.merge(&a);
        assert_eq!(
            b,
            Tally {
                sent: 2,
                expected: 4,
                delivered: 6,
                duplicated: 8,
                out_of_order: 10,
                stale: 12,
                received_total: 14,
            }
        );
    }
}
