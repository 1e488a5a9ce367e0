//! The matchmaking tickets of a `matchmake` run: when each is due, what it asks for, and
//! what came of it.
//!
//! Ticket `i` belongs to client `i`. Like the send [`Schedule`](crate::schedule::Schedule),
//! the plan is open loop and knows no clock: ticket `i` is due at `origin + i / rate` (all
//! at `origin` when no rate is given), whatever the server answered to the tickets before
//! it, and time to match counts from that due time. Skills and regions are drawn from a
//! seeded hash of the ticket's number rather than from one random stream, so a run
//! repeats exactly whichever thread queues which ticket, and in whatever order.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The range skills are drawn from, uniformly: `--skill-spread LO..HI`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkillSpread {
    /// Lowest skill.
    pub min: f64,
    /// Highest skill (a draw is below it, or equal when `min == max`).
    pub max: f64,
}

impl Default for SkillSpread {
    /// 0..1000: an Elo-like scale on which the `default` queue's widest window (1,000)
    /// means "anyone".
    fn default() -> Self {
        Self {
            min: 0.0,
            max: 1000.0,
        }
    }
}

impl FromStr for SkillSpread {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (min, max) = text
            .split_once("..")
            .ok_or_else(|| format!("`{text}`: expected LO..HI, e.g. 0..1000"))?;
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{s}` is not a finite number"))
        };
        let spread = Self {
            min: number(min)?,
            max: number(max)?,
        };
        if spread.min > spread.max {
            return Err(format!("`{text}`: LO is above HI"));
        }
        Ok(spread)
    }
}

impl fmt::Display for SkillSpread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// How a run's tickets are made and paced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TicketPlan {
    /// The queue every ticket goes to.
    pub queue: String,
    /// Tickets per second; 0: all due at once.
    pub rate: f64,
    /// Skills are uniform in this range.
    pub skill: SkillSpread,
    /// Regions, one picked per ticket; empty: tickets name none.
    pub regions: Vec<String>,
    /// Seed of the skills and regions.
    pub seed: u64,
}

impl Default for TicketPlan {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            rate: 0.0,
            skill: SkillSpread::default(),
            regions: Vec::new(),
            seed: 1,
        }
    }
}

/// What one ticket asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    /// The queue.
    pub queue: String,
    /// The player's skill.
    pub skill: f64,
    /// Its region, if it names one.
    pub region: Option<String>,
}

impl TicketPlan {
    /// When ticket `index` is due, for tickets paced from `origin_ns`.
    pub fn due_ns(&self, origin_ns: u64, index: usize) -> u64 {
        if self.rate > 0.0 {
            origin_ns + (index as f64 * 1e9 / self.rate) as u64
        } else {
            origin_ns
        }
    }

    /// Ticket `index`.
    pub fn ticket(&self, index: usize) -> Ticket {
        let draw = |stream: u64| unit(mix(self.seed, 2 * index as u64 + stream));
        let skill = self.skill.min + (self.skill.max - self.skill.min) * draw(0);
        let region = (!self.regions.is_empty()).then(|| {
            let i = (draw(1) * self.regions.len() as f64) as usize;
            self.regions[i.min(self.regions.len() - 1)].clone()
        });
        Ticket {
            queue: self.queue.clone(),
            skill,
            region,
        }
    }
}

/// splitmix64 of `seed` and `n`: independent, well-spread bits for every (seed, n).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of `bits` as a number in `[0, 1)`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How a ticket ended, as the server told it (native `Matched`/`Unqueued`, Socket.IO
/// `mm:matched`, `mm:timeout`, `mm:cancelled`, or an error answer to the queue request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketOutcome {
    /// Matched: the player is a member of `room` already.
    Matched {
        /// The match's room.
        room: String,
        /// Players of the match, this one included.
        players: usize,
    },
    /// It waited its queue's `timeout_s`.
    TimedOut,
    /// The queue request was refused (its error name), or the queue refused the ticket
    /// later (`refused`).
    Refused(String),
    /// Taken out of its queue by a party member's cancel or disconnect (the reason).
    Withdrawn(String),
}

/// The tickets of a run (or of one thread's part of it, before merging).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketTally {
    /// Tickets queued (asked for).
    pub queued: u64,
    /// Tickets matched: their player is in the match's room.
    pub matched: u64,
    /// Tickets the server timed out.
    pub timed_out: u64,
    /// Tickets refused, at the request or later.
    pub refused: u64,
    /// Tickets withdrawn by the server (a party member's cancel or disconnect).
    pub withdrawn: u64,
    /// Tickets with no outcome by the generator's bound (`--match-timeout`), or whose
    /// connection broke first.
    pub unanswered: u64,
    /// Refusals and withdrawals by reason.
    pub reasons: BTreeMap<String, u64>,
}

impl TicketTally {
    /// Counts one ticket's outcome.
    pub fn record(&mut self, outcome: &TicketOutcome) {
        match outcome {
            TicketOutcome::Matched { .. } => self.matched += 1,
            TicketOutcome::TimedOut => self.timed_out += 1,
            TicketOutcome::Refused(why) => {
                self.refused += 1;
                *self.reasons.entry(why.clone()).or_default() += 1;
            }
            TicketOutcome::Withdrawn(why) => {
                self.withdrawn += 1;
                *self.reasons.entry(why.clone()).or_default() += 1;
            }
        }
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &TicketTally) {
        self.queued += other.queued;
        self.matched += other.matched;
        self.timed_out += other.timed_out;
        self.refused += other.refused;
        self.withdrawn += other.withdrawn;
        self.unanswered += other.unanswered;
        for (why, n) in &other.reasons {
            *self.reasons.entry(why.clone()).or_default() += n;
        }
    }

    /// Tickets with an outcome or given up on: every queued one once the phase is over.
    pub fn resolved(&self) -> u64 {
        self.matched + self.timed_out + self.refused + self.withdrawn + self.unanswered
    }
}

/// Events per second in the busiest `interval` of `times_ns`, intervals counted from
/// `origin_ns`: unlike a rate over the whole span, one late event does not dilute it.
pub fn busiest_rate(times_ns: &[u64], origin_ns: u64, interval: Duration) -> f64 {
    let interval_ns = interval.as_nanos().max(1) as u64;
    let mut per_interval: BTreeMap<u64, u64> = BTreeMap::new();
    for at in times_ns {
        *per_interval
            .entry(at.saturating_sub(origin_ns) / interval_ns)
            .or_default() += 1;
    }
    let busiest = per_interval.values().copied().max().unwrap_or(0);
    busiest as f64 * 1e9 / interval_ns as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_due_at_their_rate_or_all_at_once() {
        let mut plan = TicketPlan {
            rate: 500.0,
            ..TicketPlan::default()
        };
        assert_eq!(plan.due_ns(7, 0), 7);
        assert_eq!(plan.due_ns(7, 1000), 7 + 2_000_000_000);
        plan.rate = 0.0;
        assert_eq!(plan.due_ns(7, 1000), 7);
    }

    #[test]
    fn skills_and_regions_repeat_with_the_seed_and_cover_the_spread() {
        let plan = TicketPlan {
            skill: "100..300".parse().unwrap(),
            regions: vec!["eu".into(), "us".into()],
            seed: 42,
            ..TicketPlan::default()
        };
        let tickets: Vec<Ticket> = (0..10_000).map(|i| plan.ticket(i)).collect();
        assert_eq!(tickets[1234], plan.ticket(1234));
        assert!(tickets.iter().all(|t| (100.0..300.0).contains(&t.skill)));
        // Uniform: each fifth of the range holds about a fifth of the draws.
        for fifth in 0..5 {
            let lo = 100.0 + 40.0 * f64::from(fifth);
            let n = tickets
                .iter()
                .filter(|t| (lo..lo + 40.0).contains(&t.skill))
                .count();
            assert!((1800..2200).contains(&n), "fifth {fifth}: {n}");
        }
        let eu = tickets
            .iter()
            .filter(|t| t.region.as_deref() == Some("eu"))
            .count();
        assert!((4800..5200).contains(&eu), "{eu}");
        assert!(tickets.iter().all(|t| t.region.is_some()));
        let other = TicketPlan { seed: 43, ..plan };
        assert_ne!(other.ticket(1234).skill, tickets[1234].skill);
    }

    #[test]
    fn a_plan_without_regions_names_none() {
        let plan = TicketPlan::default();
        assert_eq!(plan.ticket(3).region, None);
        assert_eq!(plan.ticket(3).queue, "default");
    }

    #[test]
    fn skill_spreads_parse() {
        assert_eq!(
            "-50..50".parse::<SkillSpread>(),
            Ok(SkillSpread {
                min: -50.0,
                max: 50.0
            })
        );
        assert_eq!("7..7".parse::<SkillSpread>().map(|s| s.max), Ok(7.0));
        for bad in ["", "100", "5..1", "a..b", "0..inf", "1..x"] {
            assert!(
                bad.parse::<SkillSpread>().is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn the_busiest_interval_is_not_diluted_by_a_late_event() {
        let s = 1_000_000_000;
        // Three in the first second, one in the second, one ten seconds later.
        let times = [0, s / 2, s - 1, s, 11 * s].map(|t| t + 5);
        assert_eq!(busiest_rate(&times, 5, Duration::from_secs(1)), 3.0);
        assert_eq!(busiest_rate(&times, 5, Duration::from_millis(500)), 4.0);
        assert_eq!(busiest_rate(&[], 0, Duration::from_secs(1)), 0.0);
    }

    #[test]
    fn the_tally_counts_every_outcome_once() {
        let mut a = TicketTally {
            queued: 5,
            unanswered: 1,
            ..TicketTally::default()
        };
        for outcome in [
            TicketOutcome::Matched {
                room: "#abc".into(),
                players: 2,
            },
            TicketOutcome::TimedOut,
            TicketOutcome::Refused("queue_full".into()),
            TicketOutcome::Withdrawn("disconnected".into()),
        ] {
            a.record(&outcome);
        }
        assert_eq!(a.resolved(), 5);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.queued, 10);
        assert_eq!(b.resolved(), 10);
        assert_eq!(b.reasons.get("queue_full"), Some(&2));
    }
}
