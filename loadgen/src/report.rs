//! The result of a run: every figure, as JSON (`--json`) and as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::{LatencySummary, PercentilePoint};
use crate::options::{Objective, Slo, Spread};
use crate::tickets::{TicketPlan, TicketTally};

/// Everything a run measured. Latencies are in microseconds, memory in KiB, times in
/// seconds. Every field is always present in the JSON (`null` or zero when it does not
/// apply), so that scripts need no special cases.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Version of corelay-loadgen that produced the report.
    pub loadgen_version: String,
    /// Name of the run in plots.
    pub label: String,
    /// `relay`, `fanout`, `connect`, `idle`, `soak` or `matchmake`.
    pub scenario: String,
    /// `native` or `socketio`.
    pub protocol: String,
    /// Server URL; several, comma-separated, for a cluster (`settings.nodes`).
    pub url: String,
    /// Start of the run, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// The settings the run used.
    pub settings: Settings,
    /// Connection counts.
    pub connections: Connections,
    /// Message counts (measured window only).
    pub messages: Messages,
    /// Relay latency, intended send time -> arrival (coordinated-omission corrected).
    pub latency: LatencySummary,
    /// `latency` of the deliveries whose sender is on the receiver's node (all of them with
    /// one node; zero count in reports written before it existed).
    #[serde(default)]
    pub latency_same_node: LatencySummary,
    /// `latency` of the deliveries whose sender is on another node than the receiver.
    #[serde(default)]
    pub latency_cross_node: LatencySummary,
    /// Relay latency, actual send time -> arrival.
    pub latency_uncorrected: LatencySummary,
    /// Fan-out: intended send time -> arrival at the last member of the room.
    pub last_member: LatencySummary,
    /// How late the generator sent versus the schedule.
    pub pacing_lag: LatencySummary,
    /// Connect: intended start -> connection ready (corrected).
    pub handshake: LatencySummary,
    /// Connect: actual start -> connection ready.
    pub handshake_uncorrected: LatencySummary,
    /// Which histogram `distribution`, `--hgrm`, `--plot` and `--slo` use: `latency`
    /// (relay, fanout, soak) or `handshake` (connect, idle).
    pub distribution_of: String,
    /// Percentile distribution of that histogram (HdrHistogram's iteration, 5 ticks per
    /// half distance): the data behind `--hgrm` and `--plot`.
    pub distribution: Vec<PercentilePoint>,
    /// Server process figures (with `--server-pid`).
    pub server: Option<ServerReport>,
    /// `matchmake`: the tickets, time to match and matches (`null` in other scenarios,
    /// and in reports written before it existed).
    #[serde(default)]
    pub matchmaking: Option<MatchmakingReport>,
    /// The generator's own cost.
    pub generator: GeneratorReport,
    /// One row per progress interval.
    pub intervals: Vec<IntervalRow>,
    /// SLO verdict (with `--slo`).
    pub slo: Option<SloOutcome>,
    /// Things that make the figures doubtful (generator saturated, late sends...).
    pub warnings: Vec<String>,
}

/// The settings of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Clients (connections).
    pub clients: usize,
    /// Members per room (0: no rooms, or rooms made by matches in `matchmake`).
    pub room_size: usize,
    /// Number of rooms (`matchmake`: the matches).
    pub rooms: usize,
    /// Number of sending clients (`matchmake`: the matched ones).
    pub senders: usize,
    /// Messages per second per sender.
    pub rate: f64,
    /// Payload bytes.
    pub payload: usize,
    /// Measured window, s.
    pub duration_s: f64,
    /// Warm-up before it, s.
    pub warmup_s: f64,
    /// Load threads.
    pub threads: usize,
    /// CPUs the threads were pinned to.
    pub cpus: Option<Vec<usize>>,
    /// Connections per second (connect, idle).
    pub connect_rate: f64,
    /// Progress interval, s.
    pub interval_s: f64,
    /// Longest wait for in-flight messages after the last send, s.
    pub drain_limit_s: f64,
    /// Nodes: the URLs of `url` (1 in reports written before it existed).
    #[serde(default = "one")]
    pub nodes: usize,
    /// How the clients were placed on the nodes (meaningful with several).
    #[serde(default)]
    pub spread: Spread,
}

fn one() -> usize {
    1
}

/// Connection counts over the whole run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Connections {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections that completed the handshake (and the join, when there is one).
    pub established: u64,
    /// `established` on each node, in the order of the URLs.
    #[serde(default)]
    pub established_per_node: Vec<u64>,
    /// Attempts that failed.
    pub failed: u64,
    /// Failed attempts by reason.
    pub failures: BTreeMap<String, u64>,
    /// Established connections that broke before the end of the run.
    pub dropped: u64,
    /// Broken connections by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Message counts of the measured window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Messages {
    /// Messages sent.
    pub sent: u64,
    /// Deliveries owed: per message sent, the other room members connected at the time.
    pub expected: u64,
    /// Unique deliveries.
    pub delivered: u64,
    /// `expected - delivered` after the drain.
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// First copies received after a later message of the same sender.
    pub out_of_order: u64,
    /// Arrivals too old to check for duplicates (counted as delivered and out of order).
    pub stale: u64,
    /// Load messages received in all (warm-up, window and drain).
    pub received_total: u64,
    /// Sends per second over the window.
    pub sent_per_s: f64,
    /// Unique deliveries per second over the window.
    pub delivered_per_s: f64,
    /// Time spent waiting for in-flight messages after the last send, s.
    pub drain_s: f64,
    /// Fan-out: messages that reached every member.
    pub fanout_complete: u64,
    /// Fan-out: messages that missed at least one member.
    pub fanout_incomplete: u64,
}

/// The matching phase of a `matchmake` run: from the first ticket's due time until every
/// ticket has an outcome (or was given up on at `--match-timeout`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatchmakingReport {
    /// How the tickets were made and paced.
    pub plan: TicketPlan,
    /// The generator's bound on one ticket's wait, s.
    pub match_timeout_s: f64,
    /// What came of the tickets.
    pub tickets: TicketTally,
    /// Ticket due time -> `Matched` arrival, µs (coordinated-omission corrected: a late
    /// queue request counts against the match).
    pub time_to_match: LatencySummary,
    /// Matches (distinct rooms the generator's players were matched into).
    pub matches: u64,
    /// Matched tickets per match.
    pub players_per_match: f64,
    /// First ticket's due time -> last match, s.
    pub span_s: f64,
    /// `matches / span_s`: the server's matching rate under this arrival rate (with tickets
    /// paced, at most what arrives; one pair that waits long for a partner stretches the
    /// span).
    pub matches_per_s: f64,
    /// Matches in the busiest `--interval` (counted from the first ticket's due time), per
    /// second.
    #[serde(default)]
    pub peak_matches_per_s: f64,
    /// With `--server-pid`: the server's CPU seconds over the matching phase (from the
    /// first ticket's due time to the start of the play).
    pub server_cpu_s: Option<f64>,
    /// Length of the matching phase over which `server_cpu_s` counts, s.
    pub phase_s: f64,
}

/// The server process over the measured window (from `/proc/PID`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerReport {
    /// Process id.
    pub pid: u32,
    /// CPU seconds (user + system) used in the window.
    pub cpu_s: f64,
    /// `cpu_s` / window length: 1.0 is one core busy.
    pub cpu_cores: f64,
    /// Unique deliveries per server CPU-second.
    pub deliveries_per_cpu_s: f64,
    /// VmRSS at the start of the window (before connecting, in `idle`), KiB.
    pub rss_start_kib: u64,
    /// VmRSS at the end of the window, KiB.
    pub rss_end_kib: u64,
    /// Largest VmRSS sampled during the window, KiB.
    pub rss_peak_kib: u64,
    /// VmHWM (peak since the server started) at the end, KiB.
    pub hwm_kib: u64,
    /// `rss_end - rss_start`, KiB (memory drift in `soak`).
    pub rss_growth_kib: i64,
    /// `idle`: RSS growth per established connection, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// VmRSS samples, one per progress interval.
    pub samples: Vec<RssSample>,
}

/// One server memory sample.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the start of the window.
    pub t_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// The load generator's own cost over the measured window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GeneratorReport {
    /// CPU seconds used.
    pub cpu_s: f64,
    /// Cores it could use (threads, at most the CPUs it may run on).
    pub cores: usize,
    /// `cpu_s / (window * cores)`: near 1.0 means the generator may be the bottleneck.
    pub utilization: f64,
}

/// Progress of one interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntervalRow {
    /// Seconds since the start of the load (warm-up included).
    pub t_s: f64,
    /// Messages sent so far (measured window).
    pub sent: u64,
    /// Deliveries owed so far.
    pub expected: u64,
    /// Unique deliveries so far.
    pub delivered: u64,
    /// Median latency in this interval, µs.
    pub p50_us: u64,
    /// 99th percentile latency in this interval, µs.
    pub p99_us: u64,
    /// Largest latency in this interval, µs.
    pub max_us: u64,
    /// Server VmRSS now, KiB.
    pub server_rss_kib: Option<u64>,
}

/// The verdict of `--slo`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SloOutcome {
    /// The spec as given.
    pub spec: String,
    /// True when every objective was met.
    pub passed: bool,
    /// One message per missed objective.
    pub failures: Vec<String>,
}

impl Slo {
    /// Checks the objectives against the run's main histogram and its loss.
    /// `loss` and `loss_base` are lost/expected deliveries, or failed/attempted
    /// connections for `connect` and `idle`.
    pub fn evaluate(&self, h: &Histogram<u64>, loss: u64, loss_base: u64) -> SloOutcome {
        let mut failures = Vec::new();
        for objective in &self.objectives {
            match *objective {
                Objective::Percentile {
                    percentile,
                    limit_us,
                } => {
                    if h.is_empty() {
                        failures.push(format!("p{percentile}: nothing was measured"));
                        continue;
                    }
                    let v = h.value_at_quantile(percentile / 100.0);
                    if v as f64 > limit_us {
                        failures.push(format!(
                            "p{percentile} = {} > {}",
                            format_us(v as f64),
                            format_us(limit_us)
                        ));
                    }
                }
                Objective::Max { limit_us } => {
                    if h.is_empty() {
                        failures.push("max: nothing was measured".into());
                    } else if h.max() as f64 > limit_us {
                        failures.push(format!(
                            "max = {} > {}",
                            format_us(h.max() as f64),
                            format_us(limit_us)
                        ));
                    }
                }
                Objective::LossCount(limit) => {
                    if loss > limit {
                        failures.push(format!("loss = {loss} > {limit}"));
                    }
                }
                Objective::LossFraction(limit) => {
                    let fraction = if loss_base == 0 {
                        0.0
                    } else {
                        loss as f64 / loss_base as f64
                    };
                    if fraction > limit {
                        failures.push(format!(
                            "loss = {:.4}% > {:.4}%",
                            fraction * 100.0,
                            limit * 100.0
                        ));
                    }
                }
            }
        }
        SloOutcome {
            spec: self.spec.clone(),
            passed: failures.is_empty(),
            failures,
        }
    }
}

/// A latency for people: `812µs`, `1.24ms`, `3.10s`.
pub fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 10_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    /// The final table shown after a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let s = &self.settings;
        let _ = writeln!(
            t,
            "corelay-loadgen {} | {} | {}",
            self.scenario, self.protocol, self.url
        );
        let rooms = if s.room_size > 0 {
            format!(", {} rooms of {}", s.rooms, s.room_size)
        } else if self.matchmaking.is_some() {
            format!(", {} matched rooms", s.rooms)
        } else {
            String::new()
        };
        let load = if s.senders > 0 {
            format!(
                ", {} senders at {}/s, {} B payload",
                s.senders, s.rate, s.payload
            )
        } else if s.connect_rate > 0.0 {
            format!(", connecting at {}/s", s.connect_rate)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "{} clients{rooms}{load}, {:.1} s measured after {:.1} s warm-up, {} thread(s)",
            s.clients, s.duration_s, s.warmup_s, s.threads
        );
        if s.nodes > 1 {
            let _ = writeln!(
                t,
                "{} nodes, spread {}: {}",
                s.nodes,
                s.spread,
                match s.spread {
                    Spread::Members => "consecutive members of a room on different nodes",
                    Spread::Rooms => "every room on one node, rooms round-robin",
                }
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "latency", "p50", "p90", "p99", "p99.9", "p99.99", "max", "count"
        );
        let no_match = LatencySummary::default();
        let time_to_match = self
            .matchmaking
            .as_ref()
            .map_or(&no_match, |m| &m.time_to_match);
        // With several nodes, the deliveries within a node and across nodes, apart.
        let (same, cross) = if s.nodes > 1 {
            (&self.latency_same_node, &self.latency_cross_node)
        } else {
            (&no_match, &no_match)
        };
        let rows = [
            ("time to match", time_to_match),
            ("intended -> arrival", &self.latency),
            ("  same node", same),
            ("  cross node", cross),
            ("sent -> arrival", &self.latency_uncorrected),
            ("last member (fanout)", &self.last_member),
            ("handshake", &self.handshake),
            ("handshake (uncorrected)", &self.handshake_uncorrected),
            ("pacing lag", &self.pacing_lag),
        ];
        for (name, l) in rows {
            if l.count == 0 {
                continue;
            }
            let _ = writeln!(
                t,
                "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                name,
                format_us(l.p50_us as f64),
                format_us(l.p90_us as f64),
                format_us(l.p99_us as f64),
                format_us(l.p999_us as f64),
                format_us(l.p9999_us as f64),
                format_us(l.max_us as f64),
                l.count
            );
        }
        let _ = writeln!(t);
        if let Some(mm) = &self.matchmaking {
            let k = &mm.tickets;
            let _ = write!(
                t,
                "tickets      queued {} to {}, matched {}, timed out {}, refused {}, withdrawn {}, unanswered {}",
                k.queued, mm.plan.queue, k.matched, k.timed_out, k.refused, k.withdrawn, k.unanswered
            );
            for (why, n) in &k.reasons {
                let _ = write!(t, "; {why}: {n}");
            }
            let _ = writeln!(t);
            let _ = write!(
                t,
                "matches      {} of {:.2} players, {:.0}/s over {:.2} s (first due ticket -> last match), {:.0}/s at the busiest",
                mm.matches, mm.players_per_match, mm.matches_per_s, mm.span_s, mm.peak_matches_per_s
            );
            if let Some(cpu) = mm.server_cpu_s {
                let _ = write!(
                    t,
                    "; server {cpu:.2} CPU-s over the {:.2} s phase ({:.0}% of a core)",
                    mm.phase_s,
                    if mm.phase_s > 0.0 {
                        cpu / mm.phase_s * 100.0
                    } else {
                        0.0
                    }
                );
            }
            let _ = writeln!(t);
        }
        let m = &self.messages;
        if m.sent > 0 || m.expected > 0 {
            let _ = writeln!(
                t,
                "messages     sent {} ({:.0}/s), expected {}, delivered {} ({:.0}/s), lost {}, duplicated {}, out of order {}{}",
                m.sent,
                m.sent_per_s,
                m.expected,
                m.delivered,
                m.delivered_per_s,
                m.lost,
                m.duplicated,
                m.out_of_order,
                if m.stale > 0 { format!(" ({} too old to check)", m.stale) } else { String::new() }
            );
            if m.fanout_complete + m.fanout_incomplete > 0 {
                let _ = writeln!(
                    t,
                    "fanout       {} messages reached every member, {} missed someone",
                    m.fanout_complete, m.fanout_incomplete
                );
            }
            let _ = writeln!(t, "drain        {:.2} s", m.drain_s);
        }
        let c = &self.connections;
        let _ = write!(
            t,
            "connections  attempted {}, established {}",
            c.attempted, c.established
        );
        if c.established_per_node.len() > 1 {
            let per: Vec<String> = c.established_per_node.iter().map(u64::to_string).collect();
            let _ = write!(t, " ({} per node)", per.join("/"));
        }
        let _ = write!(t, ", failed {}", c.failed);
        for (reason, n) in &c.failures {
            let _ = write!(t, "; {reason}: {n}");
        }
        if c.dropped > 0 {
            let _ = write!(t, "; dropped during the run {}", c.dropped);
            for (reason, n) in &c.drops {
                let _ = write!(t, "; {reason}: {n}");
            }
        }
        let _ = writeln!(t);
        if let Some(sv) = &self.server {
            let _ = write!(
                t,
                "server       pid {}: {:.2} CPU-s ({:.0}% of a core)",
                sv.pid,
                sv.cpu_s,
                sv.cpu_cores * 100.0,
            );
            if m.delivered > 0 {
                let _ = write!(t, ", {:.0} deliveries per CPU-s", sv.deliveries_per_cpu_s);
            }
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "server rss   {} -> {} ({:+} KiB), peak sampled {}, VmHWM {}",
                mib(sv.rss_start_kib),
                mib(sv.rss_end_kib),
                sv.rss_growth_kib,
                mib(sv.rss_peak_kib),
                mib(sv.hwm_kib)
            );
            if let Some(per) = sv.rss_per_connection_bytes {
                let _ = writeln!(t, "server rss   {per:.0} bytes per connection");
            }
        }
        let g = &self.generator;
        let _ = writeln!(
            t,
            "generator    {:.2} CPU-s on {} core(s), {:.0}% busy",
            g.cpu_s,
            g.cores,
            g.utilization * 100.0
        );
        for w in &self.warnings {
            let _ = writeln!(t, "WARNING      {w}");
        }
        if let Some(slo) = &self.slo {
            if slo.passed {
                let _ = writeln!(t, "SLO          {}: met", slo.spec);
            } else {
                let _ = writeln!(
                    t,
                    "SLO          {}: MISSED: {}",
                    slo.spec,
                    slo.failures.join("; ")
                );
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram;

    #[test]
    fn slo_verdicts() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let slo: Slo = "p50=1ms,p99=900us,loss=0".parse().unwrap();
        let out = slo.evaluate(&h, 0, 100);
        assert!(!out.passed);
        assert_eq!(out.failures.len(), 1);
        assert!(out.failures[0].starts_with("p99 = "), "{:?}", out.failures);

        let slo: Slo = "max=2ms,loss=1%".parse().unwrap();
        assert!(slo.evaluate(&h, 1, 100).passed);
        assert!(!slo.evaluate(&h, 2, 100).passed);

        let slo: Slo = "p99=1s".parse().unwrap();
        assert!(!slo.evaluate(&histogram(), 0, 0).passed);
    }

    #[test]
    fn latency_formatting() {
        assert_eq!(format_us(812.0), "812µs");
        assert_eq!(format_us(1240.0), "1.24ms");
        assert_eq!(format_us(12_400.0), "12.4ms");
        assert_eq!(format_us(3_100_000.0), "3.10s");
    }
}
