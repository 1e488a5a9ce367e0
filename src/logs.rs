//! Logs: the server reports through [`tracing`] events and never installs a subscriber.
//! The `corelay` binary installs one from `[log]` (human-readable or JSON lines on stderr,
//! docs/OPERATIONS.md, "Logs"); an application that embeds the library installs its own,
//! or none, and then every event costs a level check and nothing else.
//!
//! What a peer can cause at will (a refused connection, a slow consumer, a flooder closed
//! for its rate) is a warning an attacker could repeat thousands of times a second, so
//! each shard lets only a few of each kind a second through its [`Throttle`] and sums up
//! the rest in one line per window. Sans-IO: the throttle is given `now` and keeps no
//! clock; the shard asks it before formatting anything, and only when warnings are
//! enabled at all.

use std::time::{Duration, Instant};

/// Warnings of one kind one shard writes per [`WARNING_WINDOW`]; the rest are counted and
/// summed up in one line when the window ends. Five a second names the first addresses of
/// a burst; with one summary a second per kind, a shard under attack writes at most 18
/// lines a second, and a 64-shard server about 1,150: below journald's default rate limit
/// for a service (10,000 per 30 s) only on smaller servers, which is why a larger one
/// should raise it (docs/OPERATIONS.md, "Logs").
pub const WARNINGS_PER_WINDOW: u32 = 5;

/// The window [`WARNINGS_PER_WINDOW`] counts over: a second, the unit a reader of a log
/// thinks in.
pub const WARNING_WINDOW: Duration = Duration::from_secs(1);

/// A warning a peer can cause, throttled per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// A connection refused at accept (`max_connections`, `max_connections_per_ip`).
    Refused,
    /// A connection closed because it did not read what it was sent.
    SlowConsumer,
    /// A connection closed because it kept exceeding its rate limits.
    RateLimited,
}

impl Warning {
    /// Every kind, in the throttle's order.
    pub const ALL: [Warning; 3] = [
        Warning::Refused,
        Warning::SlowConsumer,
        Warning::RateLimited,
    ];

    /// The name a summary line gives the kind (its `warning` field).
    pub fn name(self) -> &'static str {
        match self {
            Warning::Refused => "refused",
            Warning::SlowConsumer => "slow_consumer",
            Warning::RateLimited => "rate_limited",
        }
    }
}

/// What to write for one warning ([`Throttle::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Warnings of its kind that the window which just ended left out: when not 0, write
    /// their summary first.
    pub suppressed: u64,
    /// Write the warning itself.
    pub write: bool,
}

/// One kind's window: it starts with the first warning after the last one ended.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// At most `limit` warnings of each kind per `window`, and a count of the rest.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    kinds: [Window; Warning::ALL.len()],
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WARNINGS_PER_WINDOW, WARNING_WINDOW)
    }
}

impl Throttle {
    /// A throttle that lets `limit` warnings of each kind through per `window`.
    pub fn new(limit: u32, window: Duration) -> Throttle {
        Throttle {
            limit,
            window,
            kinds: [Window::default(); Warning::ALL.len()],
        }
    }

    /// Whether a warning of `kind` at `now` is written, and the summary of the window it
    /// ended, if it ended one with warnings left out.
    pub fn admit(&mut self, kind: Warning, now: Instant) -> Verdict {
        let window = self.window;
        let w = &mut self.kinds[kind as usize];
        let mut suppressed = 0;
        if w.started.is_none_or(|at| now >= at + window) {
            suppressed = std::mem::take(&mut w.suppressed);
            *w = Window {
                started: Some(now),
                written: 0,
                suppressed: 0,
            };
        }
        let write = w.written < self.limit;
        if write {
            w.written += 1;
        } else {
            w.suppressed += 1;
        }
        Verdict { suppressed, write }
    }

    /// The next kind whose window has ended with warnings left out, and how many: write
    /// one summary line for each. Called on a timer (every shard tick), so that the last
    /// window of a burst is summed up even when no warning comes after it.
    pub fn poll_suppressed(&mut self, now: Instant) -> Option<(Warning, u64)> {
        let window = self.window;
        Warning::ALL.into_iter().find_map(|kind| {
            let w = &mut self.kinds[kind as usize];
            let ended = w.started.is_some_and(|at| now >= at + window);
            (ended && w.suppressed > 0).then(|| {
                let n = w.suppressed;
                *w = Window::default();
                (kind, n)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_writes_the_limit_and_sums_up_the_rest_once_its_window_ends() {
        let t0 = Instant::now();
        let mut t = Throttle::new(3, ms(1000));
        let written = (0..100)
            .filter(|i| t.admit(Warning::Refused, t0 + ms(*i)).write)
            .count();
        assert_eq!(written, 3);
        assert_eq!(
            t.poll_suppressed(t0 + ms(999)),
            None,
            "the window is still open"
        );
        assert_eq!(
            t.poll_suppressed(t0 + ms(1000)),
            Some((Warning::Refused, 97))
        );
        assert_eq!(t.poll_suppressed(t0 + ms(1000)), None, "summed up once");
        // The next burst starts a window of its own, with nothing left to report.
        let v = t.admit(Warning::Refused, t0 + ms(5000));
        assert_eq!(
            v,
            Verdict {
                suppressed: 0,
                write: true
            }
        );
    }

    #[test]
    fn a_warning_after_the_window_carries_its_summary_when_no_poll_came() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1, ms(1000));
        assert!(t.admit(Warning::SlowConsumer, t0).write);
        assert!(!t.admit(Warning::SlowConsumer, t0 + ms(10)).write);
        assert!(!t.admit(Warning::SlowConsumer, t0 + ms(20)).write);
        let v = t.admit(Warning::SlowConsumer, t0 + ms(1000));
        assert_eq!(
            v,
            Verdict {
                suppressed: 2,
                write: true
            }
        );
        assert_eq!(t.poll_suppressed(t0 + ms(5000)), None);
    }

    #[test]
    fn kinds_are_throttled_apart() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, ms(1000));
        for _ in 0..10 {
            t.admit(Warning::Refused, t0);
        }
        assert!(
            t.admit(Warning::RateLimited, t0).write,
            "a flood of refusals hides nothing else"
        );
        assert!(!t.admit(Warning::Refused, t0).write);
        let mut summaries = Vec::new();
        while let Some(s) = t.poll_suppressed(t0 + ms(1000)) {
            summaries.push(s);
        }
        assert_eq!(summaries, vec![(Warning::Refused, 9)]);
    }

    #[test]
    fn a_steady_flood_writes_at_most_the_limit_and_one_summary_per_window() {
        // One warning a millisecond for ten seconds, with the shard's tick every 500 ms.
        let t0 = Instant::now();
        let mut t = Throttle::default();
        let (mut lines, mut counted) = (0u64, 0u64);
        for i in 0..10_000u64 {
            let now = t0 + ms(i);
            let v = t.admit(Warning::Refused, now);
            if v.suppressed > 0 {
                lines += 1;
                counted += v.suppressed;
            }
            if v.write {
                lines += 1;
                counted += 1;
            }
            if i % 500 == 0 {
                while let Some((_, n)) = t.poll_suppressed(now) {
                    lines += 1;
                    counted += n;
                }
            }
        }
        while let Some((_, n)) = t.poll_suppressed(t0 + ms(20_000)) {
            lines += 1;
            counted += n;
        }
        assert_eq!(counted, 10_000, "every warning is written or summed up");
        let windows = 10 + 1;
        assert!(
            lines <= windows * (u64::from(WARNINGS_PER_WINDOW) + 1),
            "{lines} lines"
        );
    }
}
