//! Per-shard statistics, kept without locks and merged on demand.
//!
//! Counters are atomics with a single writer (their shard) and relaxed ordering: a reader
//! on another thread may see a slightly stale value, never a torn one. The relay-latency
//! histogram lives in its shard and is published every stats tick into a one-slot mailbox
//! that readers copy from; the shard only tries its lock (a reader holding it delays the
//! publication by a tick, never the shard), so latency figures are at most a tick or two
//! (`stats_publish_ms`) old, and two readers at once (a scrape and the dashboard) both see
//! it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::proto::native::ErrorCode;

/// Why a connection closed, for the `closes` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// The peer closed (close frame or EOF).
    Peer,
    /// The server shut down (1001).
    Shutdown,
    /// RFC 6455 violation (1002).
    Protocol,
    /// Text frame on the binary-only endpoint (1003).
    Unsupported,
    /// Invalid frame or UTF-8 (1007).
    Invalid,
    /// Message over the size limit (1009).
    TooBig,
    /// Outbound queue overflowed (1008).
    SlowConsumer,
    /// The peer stopped answering pings (1008).
    Idle,
    /// Handshake not completed in time.
    HandshakeTimeout,
    /// Malformed HTTP, bad upgrade, unknown path (400/404).
    BadRequest,
    /// Socket error.
    Io,
    /// The connection kept exceeding its rate limits for `rate_limits.sustained_ms`
    /// (1008 `rate limited`; Socket.IO: the session ended).
    RateLimited,
    /// No valid token when one is required, or the token expired (1008; Socket.IO: the
    /// session's namespace refused or disconnected).
    Unauthorized,
    /// The handshake hook refused the player (1008 `forbidden`).
    Forbidden,
    /// An operator kicked the player from the admin dashboard (native: 1008 `kicked`;
    /// Socket.IO: a DISCONNECT, then the session ends).
    Kicked,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 15] = [
        CloseReason::Peer,
        CloseReason::Shutdown,
        CloseReason::Protocol,
        CloseReason::Unsupported,
        CloseReason::Invalid,
        CloseReason::TooBig,
        CloseReason::SlowConsumer,
        CloseReason::Idle,
        CloseReason::HandshakeTimeout,
        CloseReason::BadRequest,
        CloseReason::Io,
        CloseReason::RateLimited,
        CloseReason::Unauthorized,
        CloseReason::Forbidden,
        CloseReason::Kicked,
    ];

    /// Stable name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Protocol => "protocol",
            CloseReason::Unsupported => "unsupported",
            CloseReason::Invalid => "invalid",
            CloseReason::TooBig => "too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Idle => "idle",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::BadRequest => "bad_request",
            CloseReason::Io => "io",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Forbidden => "forbidden",
            CloseReason::Kicked => "kicked",
        }
    }
}

/// Why a request was refused while its connection went on (or before it began), for the
/// `refused` counters: one per limit, so an operator sees which one triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Refusal {
    /// A connection past `max_connections` (503 before the request is read).
    Connections,
    /// A connection past `max_connections_per_ip`.
    ConnectionsPerIp,
    /// An Engine.IO session past `engineio_max_sessions` (503).
    Sessions,
    /// An Engine.IO session past `engineio_max_sessions_per_ip` (503).
    SessionsPerIp,
    /// An Engine.IO handshake past `engineio_handshake_rate` (503).
    HandshakeRate,
    /// A WebSocket upgrade from an origin outside `cors_origins` (403).
    Origin,
    /// A relayed event under a name that client libraries or the server reserve.
    ReservedName,
    /// A message larger than a recipient's outbound budget (`outbound_queue_bytes`).
    TooBigForRecipients,
    /// A join to a room at `max_room_members`.
    RoomFull,
    /// A join to a room its host locked.
    RoomLocked,
    /// A host action (lock, kick, metadata, state) from a member that is not the host.
    NotHost,
    /// A message past the connection's messages-per-second bucket (`rate_limits`).
    RateLimitedMessages,
    /// A message past the connection's bytes-per-second bucket.
    RateLimitedBytes,
    /// A join past the connection's joins-per-second bucket.
    RateLimitedJoins,
    /// A token refused (missing when required, bad, expired) at connect or refresh.
    Token,
    /// A handshake, join or message refused by an authorization hook or an
    /// `[[auth.rooms]]` rule (docs/AUTH.md, "Authorization").
    Forbidden,
}

impl Refusal {
    /// Every refusal, in counter order.
    pub const ALL: [Refusal; 16] = [
        Refusal::Connections,
        Refusal::ConnectionsPerIp,
        Refusal::Sessions,
        Refusal::SessionsPerIp,
        Refusal::HandshakeRate,
        Refusal::Origin,
        Refusal::ReservedName,
        Refusal::TooBigForRecipients,
        Refusal::RoomFull,
        Refusal::RoomLocked,
        Refusal::NotHost,
        Refusal::RateLimitedMessages,
        Refusal::RateLimitedBytes,
        Refusal::RateLimitedJoins,
        Refusal::Token,
        Refusal::Forbidden,
    ];

    /// Stable name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::Sessions => "sessions",
            Refusal::SessionsPerIp => "sessions_per_ip",
            Refusal::HandshakeRate => "handshake_rate",
            Refusal::Origin => "origin",
            Refusal::ReservedName => "reserved_name",
            Refusal::TooBigForRecipients => "too_big_for_recipients",
            Refusal::RoomFull => "room_full",
            Refusal::RoomLocked => "room_locked",
            Refusal::NotHost => "not_host",
            Refusal::RateLimitedMessages => "rate_limited_messages",
            Refusal::RateLimitedBytes => "rate_limited_bytes",
            Refusal::RateLimitedJoins => "rate_limited_joins",
            Refusal::Token => "token",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// Relay latency is recorded in microseconds up to 60 s with 3 significant digits: enough
/// to tell 10 µs from 11 µs and still fit one histogram in ~40 KiB per shard.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One shard's counters. Written by its shard only.
#[derive(Debug)]
pub struct ShardStats {
    /// Open connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Rooms homed on this shard.
    pub rooms: AtomicU64,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Messages queued to clients (one per recipient).
    pub messages_out: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Messages carried over the mesh from this shard.
    pub mesh_out: AtomicU64,
    /// Accept errors (e.g. out of file descriptors); accepting goes on.
    pub accept_errors: AtomicU64,
    /// Connections handed to the shard that owns their Engine.IO session.
    pub handoffs: AtomicU64,
    /// Messages for other shards waiting in this shard's local backlog because their queue
    /// was full (a gauge, updated every stats tick).
    pub mesh_backlog: AtomicU64,
    /// Kernel entries of the shard's ring (submit, collect, sleep), for efficiency figures.
    pub ring_enters: AtomicU64,
    /// Socket writes (send operations); deliveries per write says how much coalescing
    /// saves.
    pub writes: AtomicU64,
    /// Input held back because the cross-shard backlog was full (backpressure).
    pub mesh_stalls: AtomicU64,
    /// Server-to-client acks given up after `socketio_ack_timeout_ms`.
    pub ack_timeouts: AtomicU64,
    /// Messages kept in the replay rings of rooms homed on this shard (a gauge; `[resume]`).
    pub history_messages: AtomicU64,
    /// Bytes those messages take, counted as each one's largest encoding (a gauge).
    pub history_bytes: AtomicU64,
    /// Native sessions whose connection dropped and that wait to be resumed (a gauge).
    pub sessions_away: AtomicU64,
    /// Sessions taken back by `Resume`.
    pub resumes: AtomicU64,
    /// `Resume` frames refused (`cannot_resume`: expired, unknown or wrong secret).
    pub resumes_refused: AtomicU64,
    /// Rooms of resumed sessions whose replay missed messages the window no longer held.
    pub resume_gaps: AtomicU64,
    /// Players whose matchmaking ticket entered a queue homed on this shard.
    pub tickets: AtomicU64,
    /// Matches formed by queues homed on this shard.
    pub matches: AtomicU64,
    /// Members of the rooms homed on this shard, across shards (a gauge).
    pub room_members: AtomicU64,
    /// Native connections open (a gauge).
    pub native_connections: AtomicU64,
    /// Engine.IO sessions on long-polling (a gauge; an upgrade moves one to WebSocket).
    pub engineio_polling: AtomicU64,
    /// Engine.IO sessions on WebSocket (a gauge).
    pub engineio_websocket: AtomicU64,
    /// Engine.IO sessions upgraded from long-polling to WebSocket.
    pub upgrades: AtomicU64,
    /// When the shard last turned (ms since the Unix epoch; 0: not started), stamped every
    /// stats tick.
    alive_at: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    /// Errors answered to clients, by [`ErrorCode`] number.
    errors: [AtomicU64; ERROR_SLOTS],
    refused: [AtomicU64; Refusal::ALL.len()],
    /// The last histogram the shard published. A reader holds the lock for a copy; the
    /// shard only tries it, and publishes on its next tick when a reader has it: the shard
    /// never waits for a reader.
    latency: std::sync::Mutex<Option<Histogram<u64>>>,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rooms: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            mesh_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            mesh_backlog: AtomicU64::new(0),
            ring_enters: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            mesh_stalls: AtomicU64::new(0),
            ack_timeouts: AtomicU64::new(0),
            history_messages: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            sessions_away: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resumes_refused: AtomicU64::new(0),
            resume_gaps: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            room_members: AtomicU64::new(0),
            native_connections: AtomicU64::new(0),
            engineio_polling: AtomicU64::new(0),
            engineio_websocket: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            alive_at: AtomicU64::new(0),
            closes: Default::default(),
            errors: Default::default(),
            refused: Default::default(),
            latency: std::sync::Mutex::new(None),
        }
    }
}

/// Milliseconds since the Unix epoch: the one clock every shard's thread shares, for the
/// shards' last-turn stamps.
pub fn unix_ms(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Slots of the errors counters: one past the largest [`ErrorCode`] number.
const ERROR_SLOTS: usize = 32;

/// Takes from a single-writer gauge.
#[inline]
pub fn sub(gauge: &AtomicU64, n: u64) {
    gauge.fetch_sub(n, Relaxed);
}

/// Adds to a single-writer counter.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// Sets a single-writer gauge.
#[inline]
pub fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Relaxed);
}

impl ShardStats {
    /// Counts a closed connection.
    pub fn count_close(&self, reason: CloseReason) {
        add(&self.closes[reason as usize], 1);
    }

    /// Closes counted for `reason` on this shard.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason as usize].load(Relaxed)
    }

    /// Counts a refusal.
    pub fn count_refusal(&self, why: Refusal) {
        add(&self.refused[why as usize], 1);
    }

    /// Counts an error answered to a client.
    pub fn count_error(&self, code: ErrorCode) {
        if let Some(slot) = self.errors.get(code as usize) {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// Errors answered with `code` on this shard.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors
            .get(code as usize)
            .map_or(0, |s| s.load(Relaxed))
    }

    /// Refusals counted for `why` on this shard.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    /// Stamps the shard's last turn (ms since the Unix epoch).
    pub fn set_alive(&self, unix_ms: u64) {
        self.alive_at.store(unix_ms, Relaxed);
    }

    /// The shard's last turn (ms since the Unix epoch); 0 before it started.
    pub fn alive_at(&self) -> u64 {
        self.alive_at.load(Relaxed)
    }

    /// Publishes the shard's latest latency histogram, replacing the previous one.
    pub fn publish_latency(&self, histogram: Histogram<u64>) {
        if let Ok(mut last) = self.latency.try_lock() {
            *last = Some(histogram);
        }
    }

    /// The latency histogram the shard published last.
    pub(crate) fn latency_snapshot(&self) -> Option<Histogram<u64>> {
        // Concurrent readers (a scrape and the dashboard) each get a copy: none takes it
        // away from the other.
        self.latency.lock().ok()?.clone()
    }
}

/// The shared handles to every shard's stats, readable from any thread.
#[derive(Debug, Clone, Default)]
pub struct StatsRegistry {
    shards: Vec<Arc<ShardStats>>,
    /// What the cluster's membership thread learned (`[cluster]`).
    cluster: Arc<crate::cluster::ClusterStatus>,
}

impl StatsRegistry {
    /// One stats block per shard.
    pub fn new(shards: usize) -> StatsRegistry {
        StatsRegistry {
            shards: (0..shards).map(|_| Arc::default()).collect(),
            cluster: Arc::default(),
        }
    }

    /// The stats block of one shard.
    pub fn shard(&self, i: usize) -> Arc<ShardStats> {
        Arc::clone(&self.shards[i])
    }

    /// The cluster's status, as the membership thread keeps it.
    pub fn cluster(&self) -> &crate::cluster::ClusterStatus {
        &self.cluster
    }

    /// The cluster's status, shared (for the bridge to write).
    pub fn cluster_status(&self) -> Arc<crate::cluster::ClusterStatus> {
        Arc::clone(&self.cluster)
    }

    /// Every shard's stats block, by shard.
    pub fn shards(&self) -> impl Iterator<Item = &ShardStats> {
        self.shards.iter().map(|s| &**s)
    }

    /// Merges every shard into one snapshot.
    pub fn snapshot(&self) -> Stats {
        let mut s = Stats {
            shards: self.shards.len(),
            ..Stats::default()
        };
        let mut latency = new_latency_histogram();
        for shard in &self.shards {
            let l = |c: &AtomicU64| c.load(Relaxed);
            s.connections += l(&shard.connections);
            s.accepted += l(&shard.accepted);
            s.rooms += l(&shard.rooms);
            s.messages_in += l(&shard.messages_in);
            s.messages_out += l(&shard.messages_out);
            s.bytes_in += l(&shard.bytes_in);
            s.bytes_out += l(&shard.bytes_out);
            s.mesh_out += l(&shard.mesh_out);
            s.accept_errors += l(&shard.accept_errors);
            s.handoffs += l(&shard.handoffs);
            s.mesh_backlog += l(&shard.mesh_backlog);
            s.ring_enters += l(&shard.ring_enters);
            s.writes += l(&shard.writes);
            s.mesh_stalls += l(&shard.mesh_stalls);
            s.ack_timeouts += l(&shard.ack_timeouts);
            s.history_messages += l(&shard.history_messages);
            s.history_bytes += l(&shard.history_bytes);
            s.sessions_away += l(&shard.sessions_away);
            s.resumes += l(&shard.resumes);
            s.resumes_refused += l(&shard.resumes_refused);
            s.resume_gaps += l(&shard.resume_gaps);
            s.tickets += l(&shard.tickets);
            s.matches += l(&shard.matches);
            for (i, why) in Refusal::ALL.iter().enumerate() {
                let n = l(&shard.refused[i]);
                if n > 0 {
                    match s.refused.iter_mut().find(|(name, _)| name == why.name()) {
                        Some((_, total)) => *total += n,
                        None => s.refused.push((why.name().to_owned(), n)),
                    }
                }
            }
            for (i, reason) in CloseReason::ALL.iter().enumerate() {
                let n = l(&shard.closes[i]);
                if n > 0 {
                    match s.closes.iter_mut().find(|(name, _)| name == reason.name()) {
                        Some((_, total)) => *total += n,
                        None => s.closes.push((reason.name().to_owned(), n)),
                    }
                }
            }
            if let Some(h) = shard.latency_snapshot() {
                // Histograms built by new_latency_histogram share bounds, so adding works.
                let _ = latency.add(&h);
            }
        }
        s.latency = LatencySummary::from_histogram(&latency);
        s
    }
}

/// Relay latency percentiles in microseconds (ingress to enqueue on the recipient's shard).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarizes a histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A merged snapshot of every shard.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Number of shards.
    pub shards: usize,
    /// Open connections.
    pub connections: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Rooms with at least one member.
    pub rooms: u64,
    /// Messages received from clients.
    pub messages_in: u64,
    /// Messages queued to recipients.
    pub messages_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Messages that crossed between shards.
    pub mesh_out: u64,
    /// Accept errors.
    pub accept_errors: u64,
    /// Connections handed to another shard (Engine.IO sessions live on one shard).
    pub handoffs: u64,
    /// Cross-shard messages waiting in local backlogs (their queues were full).
    pub mesh_backlog: u64,
    /// Kernel entries of the shards' rings.
    pub ring_enters: u64,
    /// Socket writes.
    pub writes: u64,
    /// Inputs held back by cross-shard backpressure.
    pub mesh_stalls: u64,
    /// Server-to-client acks given up.
    pub ack_timeouts: u64,
    /// Messages kept in the replay rings of rooms homed on this shard (a gauge; `[resume]`).
    pub history_messages: u64,
    /// Bytes those messages take, counted as each one's largest encoding (a gauge).
    pub history_bytes: u64,
    /// Native sessions whose connection dropped and that wait to be resumed (a gauge).
    pub sessions_away: u64,
    /// Sessions taken back by `Resume`.
    pub resumes: u64,
    /// `Resume` frames refused (`cannot_resume`: expired, unknown or wrong secret).
    pub resumes_refused: u64,
    /// Rooms of resumed sessions whose replay missed messages the window no longer held.
    pub resume_gaps: u64,
    /// Players whose matchmaking ticket entered a queue.
    pub tickets: u64,
    /// Matches formed.
    pub matches: u64,
    /// Closed connections by reason (only reasons seen).
    pub closes: Vec<(String, u64)>,
    /// Refused requests by limit (only limits that triggered).
    pub refused: Vec<(String, u64)>,
    /// Server-side relay latency.
    pub latency: LatencySummary,
}

impl Stats {
    /// Closes counted for one reason.
    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes
            .iter()
            .find(|(n, _)| n == reason.name())
            .map_or(0, |(_, c)| *c)
    }

    /// Refusals counted for one limit.
    pub fn refused_for(&self, why: Refusal) -> u64 {
        self.refused
            .iter()
            .find(|(n, _)| n == why.name())
            .map_or(0, |(_, c)| *c)
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conns={} accepted={} accept_errors={} rooms={} in={} out={} bytes_in={} bytes_out={} mesh={} mesh_backlog={} mesh_stalls={} enters={} writes={} latency_us p50={} p99={} p999={} max={}",
            self.connections,
            self.accepted,
            self.accept_errors,
            self.rooms,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.mesh_out,
            self.mesh_backlog,
            self.mesh_stalls,
            self.ring_enters,
            self.writes,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us
        )?;
        if self.ack_timeouts > 0 {
            write!(f, " ack_timeouts={}", self.ack_timeouts)?;
        }
        // Shown once matchmaking is in use, as the other optional counters.
        if self.tickets > 0 {
            write!(f, " tickets={} matches={}", self.tickets, self.matches)?;
        }
        for (reason, n) in &self.closes {
            write!(f, " close.{reason}={n}")?;
        }
        for (why, n) in &self.refused {
            write!(f, " refused.{why}={n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_merges_counters_and_histograms() {
        let reg = StatsRegistry::new(2);
        add(&reg.shard(0).messages_in, 3);
        add(&reg.shard(1).messages_in, 4);
        reg.shard(1).count_close(CloseReason::SlowConsumer);
        reg.shard(0).count_refusal(Refusal::RoomFull);
        reg.shard(1).count_refusal(Refusal::RoomFull);
        let mut h = new_latency_histogram();
        h.record(100).unwrap();
        reg.shard(0).publish_latency(h.clone());
        reg.shard(1).publish_latency(h);
        let s = reg.snapshot();
        assert_eq!(s.messages_in, 7);
        assert_eq!(s.closes_for(CloseReason::SlowConsumer), 1);
        assert_eq!(s.refused_for(Refusal::RoomFull), 2);
        assert!(s.to_string().contains("refused.room_full=2"));
        assert_eq!(s.latency.count, 2);
        // A second read sees the same published histograms.
        assert_eq!(reg.snapshot().latency.count, 2);
    }
}
