//! The Prometheus exposition of the server's counters (`GET /metrics`, docs/OPERATIONS.md).
//!
//! The shards count in their own [`ShardStats`], lock-free and unshared on the hot path; a
//! scrape reads every shard's atomics once and encodes them here, in the Prometheus text
//! format 0.0.4 (`prometheus-client`'s encoder). Per-shard values carry a `shard` label, so
//! that one hot or stuck shard shows; sums across shards are the dashboard's job.
//!
//! Sans-IO: the process figures (CPU, memory) are read by the caller and handed in.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::proto::native::ErrorCode;
use crate::stats::{CloseReason, Refusal, ShardStats, StatsRegistry};

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the relay-latency histogram's buckets, in microseconds: from what a
/// delivery on one core costs (tens of µs) to what a stalled shard shows (a second).
const LATENCY_BUCKETS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// What the process uses, as the caller read it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    /// CPU time, user and system.
    pub cpu: Duration,
    /// Resident memory in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// One scrape's values, read once from every shard.
#[derive(Debug)]
struct Scrape {
    shards: Vec<ShardValues>,
    latency: Option<Histogram<u64>>,
    process: Process,
    version: &'static str,
    /// `[cluster]`: Redis reached, the live nodes, and the bridge's counts
    /// ([`crate::cluster::ClusterStatus::traffic`]).
    cluster: Option<(bool, u64, [u64; 6])>,
    /// `[cluster]` with its queues: the cluster queues' counts
    /// ([`crate::cluster::ClusterStatus::matchmaking`]).
    queues: Option<[u64; 4]>,
}

/// A per-shard metric: its name, its help, and the counter of [`ShardStats`] it reads.
type PerShard = (&'static str, &'static str, fn(&ShardStats) -> &AtomicU64);

/// The per-shard gauges.
const GAUGES: &[PerShard] = &[
    ("connections", "Open connections.", |s| &s.connections),
    ("rooms", "Rooms homed on the shard.", |s| &s.rooms),
    (
        "room_members",
        "Members of the rooms homed on the shard, wherever they are connected.",
        |s| &s.room_members,
    ),
    (
        "mesh_backlog",
        "Messages for other shards waiting because their queue was full.",
        |s| &s.mesh_backlog,
    ),
    (
        "history_messages",
        "Messages kept in the replay rings of the shard's rooms.",
        |s| &s.history_messages,
    ),
    (
        "history_bytes",
        "Bytes those messages take (each at its largest encoding).",
        |s| &s.history_bytes,
    ),
    (
        "sessions_away",
        "Sessions whose connection dropped, waiting to be resumed.",
        |s| &s.sessions_away,
    ),
];

/// The per-shard counters (`_total` is added by the encoder).
const COUNTERS: &[PerShard] = &[
    ("accepted", "Connections accepted.", |s| &s.accepted),
    ("messages_in", "Messages received from clients.", |s| {
        &s.messages_in
    }),
    (
        "deliveries",
        "Messages queued to clients, one per recipient.",
        |s| &s.messages_out,
    ),
    ("bytes_in", "Bytes read from sockets.", |s| &s.bytes_in),
    ("bytes_out", "Bytes written to sockets.", |s| &s.bytes_out),
    ("socket_writes", "Socket send operations.", |s| &s.writes),
    ("mesh_messages", "Messages sent to other shards.", |s| {
        &s.mesh_out
    }),
    (
        "mesh_stalls",
        "Input held back because the cross-shard backlog was full.",
        |s| &s.mesh_stalls,
    ),
    ("accept_errors", "Accept errors.", |s| &s.accept_errors),
    (
        "handoffs",
        "Connections handed to the shard of their Engine.IO session.",
        |s| &s.handoffs,
    ),
    ("ring_enters", "io_uring kernel entries.", |s| {
        &s.ring_enters
    }),
    (
        "engineio_upgrades",
        "Engine.IO sessions upgraded from long-polling to WebSocket.",
        |s| &s.upgrades,
    ),
    (
        "ack_timeouts",
        "Server-to-client Socket.IO acks given up.",
        |s| &s.ack_timeouts,
    ),
    ("resumes", "Sessions taken back by a resume.", |s| {
        &s.resumes
    }),
    (
        "resumes_refused",
        "Resumes refused (expired, unknown, wrong secret).",
        |s| &s.resumes_refused,
    ),
    (
        "resume_gaps",
        "Resumed rooms whose replay missed messages no longer kept.",
        |s| &s.resume_gaps,
    ),
    (
        "matchmaking_tickets",
        "Players whose matchmaking ticket entered a queue homed on the shard.",
        |s| &s.tickets,
    ),
    (
        "matches",
        "Matches formed by queues homed on the shard.",
        |s| &s.matches,
    ),
];

#[derive(Debug)]
struct ShardValues {
    /// [`GAUGES`]' values, in order.
    gauges: Vec<u64>,
    /// [`COUNTERS`]' values, in order.
    counters: Vec<u64>,
    closes: Vec<(&'static str, u64)>,
    refused: Vec<(&'static str, u64)>,
    errors: Vec<(&'static str, u64)>,
    /// Open sessions by (protocol, transport).
    sessions: [(&'static str, &'static str, u64); 3],
}

impl ShardValues {
    fn read(s: &ShardStats) -> ShardValues {
        let l = |c: &AtomicU64| c.load(Relaxed);
        let read = |table: &[PerShard]| table.iter().map(|(_, _, f)| l(f(s))).collect();
        ShardValues {
            gauges: read(GAUGES),
            counters: read(COUNTERS),
            sessions: [
                ("native", "websocket", l(&s.native_connections)),
                ("socketio", "websocket", l(&s.engineio_websocket)),
                ("socketio", "polling", l(&s.engineio_polling)),
            ],
            errors: ErrorCode::ALL
                .iter()
                .map(|&c| (c.name(), s.errors(c)))
                .collect(),
            closes: CloseReason::ALL
                .iter()
                .map(|&r| (r.name(), s.closes(r)))
                .collect(),
            refused: Refusal::ALL
                .iter()
                .map(|&r| (r.name(), s.refusals(r)))
                .collect(),
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shard_label = |i: usize| [("shard", i.to_string())];
        for (k, &(name, help, _)) in GAUGES.iter().enumerate() {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (i, s) in self.shards.iter().enumerate() {
                let labels = shard_label(i);
                ConstGauge::new(s.gauges[k]).encode(m.encode_family(&labels)?)?;
            }
        }
        for (k, &(name, help, _)) in COUNTERS.iter().enumerate() {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, s) in self.shards.iter().enumerate() {
                let labels = shard_label(i);
                ConstCounter::new(s.counters[k]).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "sessions",
            "Open sessions by protocol and transport (a Socket.IO session is one Engine.IO session, whatever its namespaces).",
            None,
            MetricType::Gauge,
        )?;
        for (i, s) in self.shards.iter().enumerate() {
            for &(protocol, transport, n) in &s.sessions {
                let labels = [
                    ("shard", i.to_string()),
                    ("protocol", protocol.to_owned()),
                    ("transport", transport.to_owned()),
                ];
                ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let by_reason = [
            ("closes", "Connections closed, by reason.", "reason", 0),
            (
                "refused",
                "Requests and connections refused, by limit.",
                "reason",
                1,
            ),
            (
                "errors",
                "Errors answered to clients, by code name.",
                "code",
                2,
            ),
        ];
        for (name, help, label, which) in by_reason {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, s) in self.shards.iter().enumerate() {
                let values = [&s.closes, &s.refused, &s.errors][which];
                for &(reason, n) in values {
                    let labels = [("shard", i.to_string()), (label, reason.to_owned())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(h) = &self.latency {
            let mut m = encoder.encode_descriptor(
                "relay_latency_seconds",
                "Time from a message's arrival to its queueing for each recipient.",
                None,
                MetricType::Histogram,
            )?;
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .map(|&us| {
                    let upto = h.count_between(0, us);
                    let in_bucket = upto - below;
                    below = upto;
                    (us as f64 / 1e6, in_bucket)
                })
                .collect();
            let sum = h.mean() * h.len() as f64 / 1e6;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum,
                h.len(),
                &buckets,
                None,
            )?;
        }
        let p = &self.process;
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "CPU time of the process, user and system.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu.as_secs_f64()).encode(m)?;
        let process_gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the process.",
                p.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the process.",
                p.open_fds,
            ),
            (
                "shards",
                "Shards (cores) serving.",
                self.shards.len() as u64,
            ),
        ];
        let cluster = self.cluster.map(|(up, nodes, [followed, ..])| {
            [
                (
                    "cluster_redis_up",
                    "1 while the cluster's Redis answers ([cluster]).",
                    u64::from(up),
                ),
                (
                    "cluster_nodes",
                    "Live nodes of the cluster, this one included, as last read.",
                    nodes,
                ),
                (
                    "cluster_rooms_followed",
                    "Rooms whose Redis channel this node follows: those with members here.",
                    followed,
                ),
            ]
        });
        let process_gauges = process_gauges
            .into_iter()
            .chain(cluster.into_iter().flatten());
        for (name, help, value) in process_gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(m)?;
        }
        if let Some((_, _, [_, published, dropped, received, refused, gone])) = self.cluster {
            let counters = [
                (
                    "cluster_published",
                    "Broadcasts published to the other nodes (one per message, whatever the nodes).",
                    published,
                ),
                (
                    "cluster_dropped",
                    "Broadcasts not published: Redis was unreachable.",
                    dropped,
                ),
                (
                    "cluster_received",
                    "Broadcasts and presence received from other nodes.",
                    received,
                ),
                (
                    "cluster_refused",
                    "Messages on a room's channel that were not corelay envelopes.",
                    refused,
                ),
                (
                    "cluster_nodes_gone",
                    "Nodes whose lease ended (their members left this node's rooms).",
                    gone,
                ),
            ];
            for (name, help, value) in counters {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(m)?;
            }
        }
        if let Some([tickets, matches, malformed, waiting]) = self.queues {
            let counters = [
                (
                    "cluster_matchmaking_tickets",
                    "Players whose ticket this node put in a matchmaking queue in Redis.",
                    tickets,
                ),
                (
                    "cluster_matches",
                    "Matches this node's matching passes claimed.",
                    matches,
                ),
                (
                    "cluster_matchmaking_malformed",
                    "Ticket records and outcomes read from Redis that were malformed, dropped.",
                    malformed,
                ),
            ];
            for (name, help, value) in counters {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(m)?;
            }
            let m = encoder.encode_descriptor(
                "cluster_matchmaking_waiting",
                "Players' matchmaking requests waiting for Redis to answer.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(waiting).encode(m)?;
        }
        let mut m =
            encoder.encode_descriptor("build", "The server's version.", None, MetricType::Info)?;
        m.encode_info(&[("version", self.version)])?;
        Ok(())
    }
}

/// The text answering a scrape: every shard's counters, the relay latency of every shard
/// merged, and `process`.
pub fn encode(registry: &StatsRegistry, process: Process) -> String {
    let mut latency: Option<Histogram<u64>> = None;
    let shards = registry
        .shards()
        .map(|s| {
            if let Some(h) = s.latency_snapshot() {
                match &mut latency {
                    // Histograms made by `new_latency_histogram` share bounds: adding works.
                    Some(all) => {
                        let _ = all.add(&h);
                    }
                    None => latency = Some(h),
                }
            }
            ShardValues::read(s)
        })
        .collect();
    let scrape = Scrape {
        shards,
        // Empty before the first delivery, but there: a dashboard's queries have a series.
        latency: Some(latency.unwrap_or_else(crate::stats::new_latency_histogram)),
        process,
        version: env!("CARGO_PKG_VERSION"),
        cluster: {
            let c = registry.cluster();
            c.enabled().then(|| (c.redis_up(), c.nodes(), c.traffic()))
        },
        queues: {
            let c = registry.cluster();
            c.enabled().then(|| c.matchmaking())
        },
    };
    let mut metrics = Registry::with_prefix("corelay");
    metrics.register_collector(Box::new(scrape));
    let mut text = String::new();
    // Writing into a String cannot fail, and every name here is a valid metric name.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{add, new_latency_histogram};

    #[test]
    fn every_shard_is_labelled_and_the_latency_is_a_histogram_in_seconds() {
        let registry = StatsRegistry::new(2);
        add(&registry.shard(0).messages_in, 7);
        add(&registry.shard(1).messages_in, 5);
        registry.shard(1).count_close(CloseReason::SlowConsumer);
        let mut h = new_latency_histogram();
        h.record(40).unwrap();
        h.record(3_000).unwrap();
        registry.shard(0).publish_latency(h);
        let text = encode(
            &registry,
            Process {
                cpu: Duration::from_millis(1_500),
                resident_bytes: 1 << 20,
                open_fds: 9,
            },
        );
        for line in [
            "# TYPE corelay_messages_in_total counter",
            "corelay_messages_in_total{shard=\"0\"} 7",
            "corelay_messages_in_total{shard=\"1\"} 5",
            "corelay_closes_total{shard=\"1\",reason=\"slow_consumer\"} 1",
            "corelay_relay_latency_seconds_bucket{le=\"2.5e-05\"} 0",
            "corelay_relay_latency_seconds_bucket{le=\"5e-05\"} 1",
            "corelay_relay_latency_seconds_bucket{le=\"0.005\"} 2",
            "corelay_relay_latency_seconds_count 2",
            "corelay_process_cpu_seconds_total 1.5",
            "corelay_process_resident_memory_bytes 1048576",
            "corelay_shards 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.contains("corelay_build_info{version=\""), "{text}");
    }
}
