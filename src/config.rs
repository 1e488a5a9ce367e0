//! One [`Config`], built in one place: defaults < TOML file < `CORELAY_*` environment
//! variables < command-line flags. Every limit the server enforces is a field here with its
//! default and the reason for it; `tuning/README.md` says which an operator may change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::auth::{AuthConfig, Expiry};
pub use crate::matchmaking::{MatchmakingConfig, QueueConfig};
pub use crate::socketcluster::SocketClusterConfig;
pub use crate::socketio::admin_ui::{AdminUiConfig, AdminUiMode};

/// The server's settings. Field names are also the TOML keys and, upper-cased after
/// `CORELAY_`, the environment variables. A table's keys (`[auth]` `required`) are
/// `CORELAY_<TABLE>_<KEY>` (`CORELAY_AUTH_REQUIRED`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT). Default `0.0.0.0:7700`.
    pub listen: SocketAddr,
    /// Number of shards; 0 means one per available CPU.
    pub shards: usize,
    /// CPUs to pin shards to, in order (`"0-3,6"` or `[0, 1]`); empty means the CPUs this
    /// process may run on. Shard i runs on `cpus[i % len]`.
    #[serde(deserialize_with = "cpu_list")]
    pub cpus: Vec<usize>,
    /// Largest WebSocket message or frame accepted, in bytes (larger: close 1009). 64 KiB is
    /// far above any game message and bounds the memory one peer can make us hold.
    pub max_message_size: usize,
    /// Largest HTTP request head, in bytes (larger: 400).
    pub max_head_size: usize,
    /// Time allowed from accept to a complete upgrade (and, on `/ws`, to `Hello`), in ms.
    pub handshake_timeout_ms: u64,
    /// Interval between server pings on idle connections, in ms.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for `ping_interval_ms +
    /// ping_timeout_ms` is closed with 1008.
    pub ping_timeout_ms: u64,
    /// Most frames queued for one connection before it counts as a slow consumer.
    pub outbound_queue_frames: usize,
    /// Most bytes queued for one connection before it counts as a slow consumer. Also the
    /// largest message the relay accepts (in its largest encoding; larger: `too_big`), since
    /// a bigger one could be queued to no recipient.
    pub outbound_queue_bytes: usize,
    /// After a slow consumer's queue overflows, time given to its close frame before the
    /// socket is shut, in ms.
    pub slow_consumer_grace_ms: u64,
    /// Longest room or event name, in bytes.
    pub max_name_len: usize,
    /// Most rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// Capacity of each cross-shard queue (one per ordered pair of shards), in messages;
    /// when full, the sending shard buffers locally instead of dropping.
    pub mesh_queue: usize,
    /// Most messages a shard keeps in its local backlog for other shards (when their queues
    /// are full) before it stops reading its own clients until the backlog drains.
    pub mesh_backlog: usize,
    /// Entries of each shard's io_uring submission queue (its completion queue has four
    /// times as many): the most sends one turn submits before an extra kernel entry.
    pub ring_entries: u32,
    /// Provided receive buffers per shard (a power of two), shared by all its connections.
    pub recv_buffers: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_size: u32,
    /// Once a shard with nothing to do goes to sleep, arrivals within this many µs of the
    /// sleep's start are collected and handled in one turn (one wake-up per batch instead of
    /// per packet; io_uring's minimum wait). Adds at most this much latency to a message;
    /// one that arrives after a longer quiet wakes the shard at once. 0 wakes at every
    /// arrival (lowest latency, most CPU).
    pub batch_wait_us: u64,
    /// Completions that end the batch wait early.
    pub batch_wait_count: u32,
    /// Holds a connection's output for this long (µs) after the first frame is queued, so
    /// that a high-rate room's messages to one member leave in one write (as Centrifugo's
    /// client write delay does). 0, the default, writes at the end of every turn.
    pub flush_delay_us: u64,
    /// Let `corelay serve` back its memory with transparent huge pages. Off by default: the
    /// kernel zeroes a 2 MiB page inside the fault that first touches it, which stops a
    /// shard for milliseconds whenever memory grows (rooms' replay rings filling doubled
    /// p99 in docs/BENCHMARKS.md); the TLB savings matter less to a relay than the stall.
    pub huge_pages: bool,
    /// At the end of a drain, time given to close frames and queued output to go out
    /// before exit, in ms.
    pub shutdown_grace_ms: u64,
    /// On SIGINT/SIGTERM, how long the server still accepts new connections while
    /// `/readyz` already answers 503, in ms, so that a load balancer notices before
    /// connections are refused (docs/OPERATIONS.md, "Drain").
    pub drain_accept_ms: u64,
    /// How long clients told to go (native `Draining`) may stay before the rest are closed,
    /// in ms; the server exits as soon as the last one leaves. A second signal closes them
    /// at once.
    pub drain_timeout_ms: u64,
    /// The most a native client is told to wait before it reconnects (`Draining`), in ms;
    /// each is told a random time below it, so that they do not all come back at once.
    pub drain_reconnect_ms: u32,
    /// Period at which each shard publishes its latency histogram for readers, in ms.
    pub stats_publish_ms: u64,
    /// Microseconds a shard spins before it sleeps when idle, while its recent sleeps were
    /// this short or shorter. 0 (the default) sleeps at once; a few hundred keep a busy core
    /// awake between arrivals, trading CPU for latency (busy polling, see
    /// tuning/README.md). A shard that mostly sleeps long never spins.
    pub spin_before_park_us: u64,
    /// Path of the Engine.IO / Socket.IO endpoint.
    pub socketio_path: String,
    /// Engine.IO `pingInterval`: the server pings every this many ms.
    pub engineio_ping_interval_ms: u64,
    /// Engine.IO `pingTimeout`: a session whose pong does not come back in this many ms
    /// is closed.
    pub engineio_ping_timeout_ms: u64,
    /// Engine.IO `maxPayload`: largest long-polling body or WebSocket message, in bytes.
    pub engineio_max_payload: usize,
    /// Engine.IO `upgradeTimeout`: a WebSocket opened to upgrade a polling session that has
    /// not completed the upgrade in this many ms is closed (the session goes on polling).
    pub engineio_upgrade_timeout_ms: u64,
    /// Socket.IO `connectTimeout`: a session that joins no namespace in this many ms is
    /// closed.
    pub socketio_connect_timeout_ms: u64,
    /// Browser origins (`https://game.example`) allowed on the Engine.IO endpoint and for
    /// WebSocket upgrades. Empty (the default): no CORS headers at all, and upgrades from
    /// any origin. `"*"`: `Access-Control-Allow-Origin: *`, never with credentials. A list:
    /// a listed origin is echoed with credentials, and a WebSocket upgrade whose `Origin`
    /// is not listed gets `403` (one without `Origin`, from no browser, passes).
    pub cors_origins: Vec<String>,
    /// Namespaces besides `/` that socket.io clients may connect to (with no behaviour of
    /// their own unless application code adds it).
    pub socketio_namespaces: Vec<String>,
    /// Most connections open at once on the server; past it new ones get `503` and are
    /// closed before their request is read.
    pub max_connections: usize,
    /// Most connections open at once from one source address (an IPv6 /64 counts as one).
    pub max_connections_per_ip: usize,
    /// Most Engine.IO sessions alive at once on the server (a long-polling session holds no
    /// socket between polls, so the connection caps do not bound them).
    pub engineio_max_sessions: usize,
    /// Most Engine.IO sessions alive at once from one source address.
    pub engineio_max_sessions_per_ip: usize,
    /// New Engine.IO sessions one source address may open per second, per shard (bursts of
    /// as many).
    pub engineio_handshake_rate: u32,
    /// Most members of one room; a join past it is refused (`room_full`).
    pub max_room_members: usize,
    /// A Socket.IO packet's binary attachments must all arrive within this many ms of the
    /// packet that announces them, or the session ends.
    pub socketio_attachment_timeout_ms: u64,
    /// A server-to-client Socket.IO ack that is not answered within this many ms is given
    /// up: its callback gets a timeout error and is freed.
    pub socketio_ack_timeout_ms: u64,
    /// A connection whose pending output makes no progress for this many ms is closed (a
    /// peer that stopped reading).
    pub write_timeout_ms: u64,
    /// `[rate_limits]`: token buckets per connection (messages, bytes, joins per second),
    /// one profile per protocol and named profiles picked by a token's `tier` claim.
    pub rate_limits: RateLimits,
    /// `[auth]`: JWT authentication of players (docs/AUTH.md).
    pub auth: AuthConfig,
    /// `[log]`: what `corelay serve` writes to stderr, and how (docs/OPERATIONS.md,
    /// "Logs"). The library never installs a logger; an embedding application does.
    pub log: LogConfig,
    /// `[cluster]`: several nodes through Redis (docs/SCALING.md); off by default.
    pub cluster: crate::cluster::ClusterConfig,
    /// `[resume]`: how long a dropped native session waits to be resumed and how much of
    /// each room's history is kept to replay to it (docs/SESSIONS.md).
    pub resume: ResumeConfig,
    /// `[matchmaking]`: the queues and the matchmaker's limits (docs/ROOMS.md). A queue
    /// named `default` exists without any of it.
    pub matchmaking: MatchmakingConfig,
    /// `[rooms]`: what a room's host may store in it (docs/ROOMS.md).
    pub rooms: RoomsConfig,
    /// `[admin]`: the operator's dashboard at `/admin` (docs/OPERATIONS.md, "Dashboard").
    pub admin: AdminConfig,
    /// `[admin_ui]`: the official Socket.IO Admin UI's namespace (docs/ADMIN_UI.md).
    pub admin_ui: AdminUiConfig,
    /// `[socketcluster]`: the SocketCluster endpoint (docs/SOCKETCLUSTER.md).
    pub socketcluster: SocketClusterConfig,
}

/// `[admin]`: who may open the dashboard at `/admin` and act from it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The operator's token (`CORELAY_ADMIN_TOKEN`), sent as `Authorization: Bearer` or
    /// typed into the dashboard's login form. Unset (the default), the dashboard and every
    /// admin action answer 404. Never a player's JWT: it can kick players and drain the
    /// server.
    #[serde(deserialize_with = "token_text")]
    pub token: Option<String>,
}

/// A token given in the environment or a flag is read as a TOML scalar first
/// ([`scalar`]): one of digits only arrives as an integer, and is still the token.
fn token_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Digits(i64),
    }
    Ok(match Option::<Text>::deserialize(d)? {
        Some(Text::Text(t)) => Some(t),
        Some(Text::Digits(n)) => Some(n.to_string()),
        None => None,
    })
}

/// Shortest admin token accepted: 16 characters of a random token are beyond guessing
/// over the network, and anything shorter is likely a word someone chose.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl std::fmt::Debug for AdminConfig {
    // The token stays out of logs and panic messages that print the configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// `[rooms]`: bounds of what a room's host keeps in it at the room's home shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Largest room state (`room:set_state`), in bytes of its JSON text. Every joiner and
    /// every new host gets it in one frame, so it must fit a recipient's outbound queue
    /// (checked at start).
    pub max_state_bytes: usize,
    /// Largest room metadata (`room:set_metadata`), in bytes of its JSON text.
    pub max_metadata_bytes: usize,
}

impl RoomsConfig {
    /// The defaults, as a constant.
    pub const DEFAULT: RoomsConfig = RoomsConfig {
        // 64 KiB: a whole board, deck or scoreboard as JSON, and still a small part of the
        // 1 MiB outbound queue a joiner gets it through.
        max_state_bytes: 64 * 1024,
        // 4 KiB: a room's public description (mode, map, tags), read by room listings that
        // return many rooms at once.
        max_metadata_bytes: 4 * 1024,
    };
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig::DEFAULT
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            shards: 0,
            cpus: Vec::new(),
            max_message_size: 64 * 1024,
            max_head_size: 8 * 1024,
            handshake_timeout_ms: 5_000,
            ping_interval_ms: 15_000,
            ping_timeout_ms: 10_000,
            // 4096 frames or 1 MiB: seconds of traffic for a game client, a few ms of a
            // loaded server's fan-out; past that the client is not keeping up.
            outbound_queue_frames: 4096,
            outbound_queue_bytes: 1 << 20,
            slow_consumer_grace_ms: 1_000,
            max_name_len: 128,
            max_rooms_per_connection: 64,
            mesh_queue: 4096,
            // 64 Ki messages: a few ms of a loaded shard's cross-shard traffic.
            mesh_backlog: 65_536,
            // 4096 sends per kernel entry; rings are accounted to the memory cgroup, not to
            // the locked-memory limit.
            ring_entries: 4096,
            // 64 x 16 KiB = 1 MiB per shard. Receives fill buffers incrementally, so this
            // holds a turn's arrivals from thousands of connections (hundreds of game
            // messages per buffer); a buffer goes back to the kernel as soon as the turn
            // has copied it out.
            recv_buffers: 64,
            recv_buffer_size: 16 * 1024,
            // 200 µs: at 20-40 msg/s per client this halves the CPU per delivery (a fifth
            // less at 10; one wake-up per batch instead of per message) and keeps p99 under 1 ms
            // (docs/BENCHMARKS.md); an idle shard still wakes at the first arrival.
            batch_wait_us: 200,
            batch_wait_count: 64,
            flush_delay_us: 0,
            huge_pages: false,
            shutdown_grace_ms: 1_000,
            // 0: a server without a load balancer in front has nobody to wait for.
            drain_accept_ms: 0,
            // 10 s: a match in progress gets time to reach a pause and move; a stop
            // (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds) must
            // allow this plus `drain_accept_ms` and `shutdown_grace_ms`.
            drain_timeout_ms: 10_000,
            // 5 s: 10,000 players coming back spread over 5 s is 2,000 handshakes a second.
            drain_reconnect_ms: 5_000,
            stats_publish_ms: 500,
            spin_before_park_us: 0,
            socketio_path: "/socket.io/".to_owned(),
            // socket.io's own defaults, so that clients behave as they do elsewhere.
            engineio_ping_interval_ms: 25_000,
            engineio_ping_timeout_ms: 20_000,
            engineio_max_payload: 1_000_000,
            engineio_upgrade_timeout_ms: 10_000,
            socketio_connect_timeout_ms: 45_000,
            // No CORS headers, as socket.io without its `cors` option: a browser page of
            // another origin may not read the answers unless the operator lists it.
            cors_origins: Vec::new(),
            socketio_namespaces: Vec::new(),
            // The descriptor limit of a tuned host (tuning/limits.conf) is higher; this bounds
            // what one server promises before the kernel refuses.
            max_connections: 100_000,
            // A household, an office or a LAN party behind one NAT stays far below; one
            // host that opens more is attacking.
            max_connections_per_ip: 1_000,
            engineio_max_sessions: 100_000,
            engineio_max_sessions_per_ip: 1_000,
            // Clients open one session per connect or reconnect; 100 per second is a whole
            // NAT of players reconnecting at once.
            engineio_handshake_rate: 100,
            // Match rooms hold tens; a lobby of 10,000 still fans out a notice per join in
            // a few ms.
            max_room_members: 10_000,
            // Official clients send attachments right after their packet.
            socketio_attachment_timeout_ms: 10_000,
            socketio_ack_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            rate_limits: RateLimits::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            resume: ResumeConfig::default(),
            matchmaking: MatchmakingConfig::default(),
            rooms: RoomsConfig::default(),
            admin: AdminConfig::default(),
            admin_ui: AdminUiConfig::default(),
            socketcluster: SocketClusterConfig::default(),
        }
    }
}

/// `[resume]`: session resume with exact replay (docs/SESSIONS.md). Each room keeps its
/// last messages, numbered at its home shard, in a ring bounded three ways; a native
/// session whose connection drops stays a member of its rooms for `window_ms`, and a
/// reconnect within it gets back its player id, its rooms and what it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// How long a dropped session may be resumed, and how old a room's oldest kept
    /// message may be, in ms. 0 turns resume off (sessions end when their connection
    /// does, and rooms keep no history).
    pub window_ms: u64,
    /// Most messages a room keeps for replay.
    pub window_messages: usize,
    /// Most bytes a room keeps for replay, counted as each message's largest encoding.
    pub window_bytes: usize,
    /// Socket.IO connection state recovery (socket.io 4.6+): the CONNECT answer carries a
    /// `pid`, every room event the room's offset as its last argument, and a client that
    /// sends both back within the window gets its socket back. Off, socket.io sessions end
    /// with their connection and events carry no offset (for clients that cannot take the
    /// extra argument); native sessions resume either way.
    pub socketio: bool,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            // Two minutes: socket.io's connection state recovery default
            // (`maxDisconnectionDuration`), long enough for a phone to change networks.
            window_ms: 120_000,
            // 1,000 messages: two minutes of a room at 8 msg/s, or 8 s at 120; a replay
            // stays under the outbound queue's 4,096 frames, so it never closes the
            // resuming client as a slow consumer.
            window_messages: 1_000,
            // 1 MiB, the default `outbound_queue_bytes`: a room's whole replay fits the
            // resuming client's outbound queue at once.
            window_bytes: 1 << 20,
            // As socket.io's `connectionStateRecovery` when enabled; here on with the rest.
            socketio: true,
        }
    }
}

impl ResumeConfig {
    /// Whether sessions may be resumed (and rooms keep history).
    pub fn enabled(&self) -> bool {
        self.window_ms > 0 && self.window_messages > 0 && self.window_bytes > 0
    }

    /// Whether socket.io sessions may be recovered (and room events carry offsets).
    pub fn socketio_enabled(&self) -> bool {
        self.enabled() && self.socketio
    }
}

/// `[log]`: the log `corelay serve` writes to stderr (docs/OPERATIONS.md, "Logs").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Which events are written: a level (`error`, `warn`, `info`, `debug`, `trace` or
    /// `off`), optionally with `target=level` directives for parts of the server
    /// (`"info,corelay::shard=debug"`). `RUST_LOG`, when set, replaces it (and may use the
    /// whole `tracing-subscriber` filter syntax).
    pub level: String,
    /// `text`: one line per event for people; `json`: one JSON object per line for a log
    /// pipeline.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            // Start, stop and warnings; connection opens and closes are `debug`: one line
            // per connection is too many for a busy server's everyday log.
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event: time, level, where, message and fields.
    Text,
    /// One JSON object per line, the event's fields at the top level beside `timestamp`,
    /// `level`, `target` and `message`.
    Json,
}

impl LogConfig {
    /// What is wrong with `level`, if anything: each comma-separated directive must be a
    /// level or `target=level`. Checked here because the filter would take a misspelt
    /// level for a target's name and quietly log nothing.
    fn problem(&self) -> Option<String> {
        use std::str::FromStr;
        use tracing::level_filters::LevelFilter;
        let is_level = |l: &str| LevelFilter::from_str(l.trim()).is_ok();
        let is_target = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
        };
        if self.level.trim().is_empty() {
            return Some("log.level is empty (use \"off\" for no log)".into());
        }
        self.level.split(',').map(str::trim).find_map(|directive| {
            let ok = match directive.split_once('=') {
                Some((target, level)) => is_target(target.trim()) && is_level(level),
                None => is_level(directive),
            };
            (!ok).then(|| {
                format!(
                    "log.level: `{directive}` is neither a level (error, warn, info, debug, \
                     trace, off) nor `target=level`"
                )
            })
        })
    }
}

/// `[rate_limits]`: what one connection may send, as token buckets with bursts. A request
/// past a bucket is refused (`rate_limited`) and not relayed; a connection refused for
/// `sustained_ms` without backing off is closed. A rate of 0 turns that bucket off.
///
/// In the environment, `CORELAY_RATE_LIMITS_<KEY>` sets a key of this table and
/// `CORELAY_RATE_LIMITS_NATIVE_<KEY>` / `CORELAY_RATE_LIMITS_SOCKETIO_<KEY>` one of a
/// protocol's profile; tiers are set in the TOML file only (their names are free text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// A connection whose requests keep being refused for this many ms (no refusal-free
    /// second in between) is closed: 1008 `rate limited` on `/ws`, the end of the session
    /// on Socket.IO.
    pub sustained_ms: u64,
    /// The profile of native (`/ws`) connections; a key left out keeps its default.
    #[serde(deserialize_with = "native_profile")]
    pub native: RateProfile,
    /// The profile of Socket.IO sessions; a key left out keeps its default.
    #[serde(deserialize_with = "socketio_profile")]
    pub socketio: RateProfile,
    /// The profile of SocketCluster connections (messages: every event, publish and
    /// invoke; joins: subscriptions); a key left out keeps its default.
    #[serde(deserialize_with = "socketcluster_profile")]
    pub socketcluster: RateProfile,
    /// Named profiles (`[rate_limits.tiers.<name>]`), picked by the `tier` claim of a
    /// connection's verified token (never from what the client writes beside it); a key a
    /// tier leaves out is taken from the protocol's profile, and a connection without a
    /// tier, or with one not configured here, gets its protocol's profile.
    pub tiers: BTreeMap<String, TierProfile>,
}

/// The buckets of one connection: a rate per second (0: unlimited) and a burst (the most
/// a connection may spend at once after being quiet) for each of messages, payload bytes
/// and joins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateProfile {
    /// Messages per second (native: `Send` frames; Socket.IO: every event packet).
    pub messages_per_s: f64,
    /// Messages in one burst.
    pub messages_burst: u32,
    /// Bytes per second (native: `Send` payloads; Socket.IO: event packets as received,
    /// their text and binary attachments).
    pub bytes_per_s: f64,
    /// Bytes in one burst; also the largest message a connection may send at all.
    pub bytes_burst: u32,
    /// Joins per second.
    pub joins_per_s: f64,
    /// Joins in one burst.
    pub joins_burst: u32,
}

/// A named profile: each key it sets replaces the protocol's; one it leaves out keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierProfile {
    /// See [`RateProfile::messages_per_s`].
    pub messages_per_s: Option<f64>,
    /// See [`RateProfile::messages_burst`].
    pub messages_burst: Option<u32>,
    /// See [`RateProfile::bytes_per_s`].
    pub bytes_per_s: Option<f64>,
    /// See [`RateProfile::bytes_burst`].
    pub bytes_burst: Option<u32>,
    /// See [`RateProfile::joins_per_s`].
    pub joins_per_s: Option<f64>,
    /// See [`RateProfile::joins_burst`].
    pub joins_burst: Option<u32>,
}

/// Which protocol's profile applies to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The native protocol on `/ws`.
    Native,
    /// Socket.IO (either transport).
    SocketIo,
    /// SocketCluster.
    SocketCluster,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            // Ten seconds of refusals is no burst: the client ignores its errors.
            sustained_ms: 10_000,
            // 240 messages/s is four times a 60 Hz input loop, with two seconds of burst
            // (a client that catches up after a stall); 1 MiB/s is 16 of the largest
            // native messages (`max_message_size`) per second, which the burst must hold.
            // 64 joins at once is `max_rooms_per_connection`: a client that rejoins all
            // its rooms after a reconnect.
            native: RateProfile {
                messages_per_s: 240.0,
                messages_burst: 480,
                bytes_per_s: 1_048_576.0,
                bytes_burst: 1_048_576,
                joins_per_s: 10.0,
                joins_burst: 64,
            },
            // Half the native message rate: a Socket.IO event costs the server several
            // times a native frame (JSON parsing, text framing), and browser clients send
            // less often. The byte burst is `engineio_max_payload`, so any message the
            // transport accepts can pass.
            socketio: RateProfile {
                messages_per_s: 120.0,
                messages_burst: 240,
                bytes_per_s: 1_000_000.0,
                bytes_burst: 1_000_000,
                joins_per_s: 10.0,
                joins_burst: 64,
            },
            // Socket.IO's: a SocketCluster packet costs about what a Socket.IO event does
            // (JSON in a text frame). The byte burst holds any message the endpoint accepts
            // (`max_message_size`).
            socketcluster: RateProfile {
                messages_per_s: 120.0,
                messages_burst: 240,
                bytes_per_s: 1_000_000.0,
                bytes_burst: 1_000_000,
                joins_per_s: 10.0,
                joins_burst: 64,
            },
            tiers: BTreeMap::new(),
        }
    }
}

impl RateProfile {
    /// A profile that limits nothing (every rate 0): for a server whose clients are
    /// trusted, or a load test that floods on purpose.
    pub const UNLIMITED: RateProfile = RateProfile {
        messages_per_s: 0.0,
        messages_burst: 0,
        bytes_per_s: 0.0,
        bytes_burst: 0,
        joins_per_s: 0.0,
        joins_burst: 0,
    };
}

impl TierProfile {
    /// `base` with what this profile sets put over it.
    pub fn over(&self, base: RateProfile) -> RateProfile {
        RateProfile {
            messages_per_s: self.messages_per_s.unwrap_or(base.messages_per_s),
            messages_burst: self.messages_burst.unwrap_or(base.messages_burst),
            bytes_per_s: self.bytes_per_s.unwrap_or(base.bytes_per_s),
            bytes_burst: self.bytes_burst.unwrap_or(base.bytes_burst),
            joins_per_s: self.joins_per_s.unwrap_or(base.joins_per_s),
            joins_burst: self.joins_burst.unwrap_or(base.joins_burst),
        }
    }
}

/// `[rate_limits.native]` over the native defaults: a table that sets one key keeps the
/// others' defaults rather than turning them off.
fn native_profile<'de, D: Deserializer<'de>>(d: D) -> Result<RateProfile, D::Error> {
    Ok(TierProfile::deserialize(d)?.over(RateLimits::default().native))
}

/// `[rate_limits.socketcluster]` over the SocketCluster defaults, as [`native_profile`].
fn socketcluster_profile<'de, D: Deserializer<'de>>(d: D) -> Result<RateProfile, D::Error> {
    Ok(TierProfile::deserialize(d)?.over(RateLimits::default().socketcluster))
}

/// `[rate_limits.socketio]` over the Socket.IO defaults, as [`native_profile`].
fn socketio_profile<'de, D: Deserializer<'de>>(d: D) -> Result<RateProfile, D::Error> {
    Ok(TierProfile::deserialize(d)?.over(RateLimits::default().socketio))
}

impl RateLimits {
    /// The profile of a connection on `protocol` whose token's `tier` claim is `tier`: the
    /// named tier over the protocol's profile, or the protocol's profile alone when there
    /// is no claim or no tier of that name (an unknown tier gets the defaults rather than
    /// no limit). Called once per connection, not per message.
    pub fn profile(&self, protocol: Protocol, tier: Option<&str>) -> RateProfile {
        let base = match protocol {
            Protocol::Native => self.native,
            Protocol::SocketIo => self.socketio,
            Protocol::SocketCluster => self.socketcluster,
        };
        match tier.and_then(|name| self.tiers.get(name)) {
            Some(t) => t.over(base),
            None => base,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // Every profile a connection can get: each protocol's, and each tier over each.
        let tiers = self.tiers.keys().flat_map(|name| {
            let table = format!("rate_limits.tiers.{name}");
            [
                (table.clone(), Protocol::Native, Some(name.as_str())),
                (table.clone(), Protocol::SocketIo, Some(name.as_str())),
                (table, Protocol::SocketCluster, Some(name.as_str())),
            ]
        });
        let all = [
            ("rate_limits.native".to_owned(), Protocol::Native, None),
            ("rate_limits.socketio".to_owned(), Protocol::SocketIo, None),
            (
                "rate_limits.socketcluster".to_owned(),
                Protocol::SocketCluster,
                None,
            ),
        ]
        .into_iter()
        .chain(tiers);
        for (table, protocol, tier) in all {
            let p = self.profile(protocol, tier);
            for (key, rate, burst) in [
                ("messages", p.messages_per_s, p.messages_burst),
                ("bytes", p.bytes_per_s, p.bytes_burst),
                ("joins", p.joins_per_s, p.joins_burst),
            ] {
                if !(rate.is_finite() && rate >= 0.0) {
                    return Err(ConfigError::Invalid(format!(
                        "{table}.{key}_per_s must be a number >= 0 (0 turns the limit off)"
                    )));
                }
                // A bucket that never holds a whole token refuses everything.
                if rate > 0.0 && burst == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "{table}.{key}_burst must be positive when {key}_per_s is set"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Why a configuration was refused. The binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: fix the path.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A value has the wrong type or an unknown key was given: fix the named setting.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Largest `ring_entries`: the completion queue has four times as many entries, and the
/// kernel allows at most 65,536.
pub const MAX_RING_ENTRIES: u32 = 16_384;

/// Keys that may be set; used to map `CORELAY_*` variables.
const KEYS: &[&str] = &[
    "listen",
    "shards",
    "cpus",
    "max_message_size",
    "max_head_size",
    "handshake_timeout_ms",
    "ping_interval_ms",
    "ping_timeout_ms",
    "outbound_queue_frames",
    "outbound_queue_bytes",
    "slow_consumer_grace_ms",
    "max_name_len",
    "max_rooms_per_connection",
    "mesh_queue",
    "mesh_backlog",
    "ring_entries",
    "recv_buffers",
    "recv_buffer_size",
    "batch_wait_us",
    "batch_wait_count",
    "flush_delay_us",
    "huge_pages",
    "shutdown_grace_ms",
    "drain_accept_ms",
    "drain_timeout_ms",
    "drain_reconnect_ms",
    "stats_publish_ms",
    "spin_before_park_us",
    "socketio_path",
    "engineio_ping_interval_ms",
    "engineio_ping_timeout_ms",
    "engineio_max_payload",
    "engineio_upgrade_timeout_ms",
    "socketio_connect_timeout_ms",
    "cors_origins",
    "socketio_namespaces",
    "max_connections",
    "max_connections_per_ip",
    "engineio_max_sessions",
    "engineio_max_sessions_per_ip",
    "engineio_handshake_rate",
    "max_room_members",
    "socketio_attachment_timeout_ms",
    "socketio_ack_timeout_ms",
    "write_timeout_ms",
];

/// Tables whose keys may be set from the environment and by flags: `CORELAY_<TABLE>_<KEY>`
/// (the table's path upper-cased with `_` for `.`) or a flag named `table.key` sets `key` in
/// `[table]`. Longest first, so that a name goes to the deepest table it starts with. A key
/// a table does not have is refused when the configuration is read, as in the file.
const TABLES: &[&str] = &[
    "rate_limits.socketcluster",
    "rate_limits.socketio",
    "rate_limits.native",
    "rate_limits",
    // Before any table whose name it starts with (`admin`): `CORELAY_ADMIN_UI_<KEY>` is
    // this table's.
    "admin_ui",
    "auth",
    "log",
    "cluster",
    "resume",
    "matchmaking",
    "rooms",
    "admin",
    "socketcluster",
];

/// Where an environment variable's (lower-cased, after `CORELAY_`) or a flag's value goes:
/// a top-level key (`None`), or a key of the table at a path of [`TABLES`].
fn place(key: &str) -> Option<(Option<&'static str>, String)> {
    if KEYS.contains(&key) {
        return Some((None, key.to_owned()));
    }
    TABLES.iter().find_map(|path| {
        let rest = key
            .strip_prefix(&format!("{}_", path.replace('.', "_")))
            .or_else(|| key.strip_prefix(&format!("{path}.")))?;
        (!rest.is_empty()).then(|| (Some(*path), rest.to_owned()))
    })
}

/// Puts `value` at `key` in the table at `path` (dotted) inside `root`, creating tables on
/// the way; `Err` when something on the path is not a table.
fn insert_at(
    root: &mut toml::Table,
    path: &str,
    key: String,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let mut table = root;
    for part in path.split('.') {
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("{path}: `{part}` is not a table")))?;
    }
    table.insert(key, value);
    Ok(())
}

/// Sets `key` (as [`place`] reads it) in `root` to `value`; `Ok(false)` when no setting or
/// table has that name.
fn set(root: &mut toml::Table, key: &str, value: toml::Value) -> Result<bool, ConfigError> {
    match place(key) {
        Some((None, key)) => {
            root.insert(key, value);
        }
        Some((Some(path), key)) => insert_at(root, path, key, value)?,
        None => return Ok(false),
    }
    Ok(true)
}

impl Config {
    /// Builds the configuration from an optional TOML file, environment variables
    /// (`CORELAY_<KEY>`), and `overrides` (flags, as `key`, `value` pairs of TOML text or
    /// bare strings), each layer winning over the previous one.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("CORELAY_") else {
                continue;
            };
            // Other CORELAY_ variables (of the load generator, of scripts) are not ours.
            set(&mut table, &key.to_ascii_lowercase(), scalar(&value))?;
        }
        for (key, value) in overrides {
            // A flag with no such setting is refused below by `deny_unknown_fields`.
            if !set(&mut table, key, scalar(value))? {
                table.insert((*key).to_owned(), scalar(value));
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_message_size", self.max_message_size),
            ("max_head_size", self.max_head_size),
            ("outbound_queue_frames", self.outbound_queue_frames),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("max_name_len", self.max_name_len),
            ("max_rooms_per_connection", self.max_rooms_per_connection),
            ("mesh_queue", self.mesh_queue),
            ("mesh_backlog", self.mesh_backlog),
            ("ring_entries", self.ring_entries as usize),
            ("recv_buffer_size", self.recv_buffer_size as usize),
            ("engineio_max_payload", self.engineio_max_payload),
            (
                "engineio_upgrade_timeout_ms",
                self.engineio_upgrade_timeout_ms as usize,
            ),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("engineio_max_sessions", self.engineio_max_sessions),
            (
                "engineio_max_sessions_per_ip",
                self.engineio_max_sessions_per_ip,
            ),
            (
                "engineio_handshake_rate",
                self.engineio_handshake_rate as usize,
            ),
            ("max_room_members", self.max_room_members),
            (
                "socketio_attachment_timeout_ms",
                self.socketio_attachment_timeout_ms as usize,
            ),
            (
                "socketio_ack_timeout_ms",
                self.socketio_ack_timeout_ms as usize,
            ),
            ("write_timeout_ms", self.write_timeout_ms as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if self.ring_entries > MAX_RING_ENTRIES {
            return Err(ConfigError::Invalid(format!(
                "ring_entries must be at most {MAX_RING_ENTRIES} (the completion queue, four times as long, meets the kernel's limit of 65536)"
            )));
        }
        if !self.recv_buffers.is_power_of_two() {
            return Err(ConfigError::Invalid(
                "recv_buffers must be a power of two".into(),
            ));
        }
        if !self.socketio_path.starts_with('/') {
            return Err(ConfigError::Invalid(
                "socketio_path must start with /".into(),
            ));
        }
        if self.engineio_ping_interval_ms == 0 || self.engineio_ping_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "engine.io ping timers must be positive".into(),
            ));
        }
        if self.ping_interval_ms == 0 || self.handshake_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "ping_interval_ms and handshake_timeout_ms must be positive".into(),
            ));
        }
        self.rate_limits.validate()?;
        // A replay larger than the resuming client's outbound queue would close it as a
        // slow consumer the moment it came back.
        if self.resume.enabled()
            && (self.resume.window_bytes > self.outbound_queue_bytes
                || self.resume.window_messages > self.outbound_queue_frames)
        {
            return Err(ConfigError::Invalid(
                "resume.window_bytes and resume.window_messages must fit the outbound queue \
                 (outbound_queue_bytes, outbound_queue_frames): a replay larger than it would \
                 close the resuming client"
                    .into(),
            ));
        }
        // A state no joiner could be sent would lock every later joiner out of the game.
        if self.rooms.max_state_bytes + 1024 > self.outbound_queue_bytes {
            return Err(ConfigError::Invalid(
                "rooms.max_state_bytes must leave 1 KiB of the outbound queue \
                 (outbound_queue_bytes): every joiner gets the room's state in one frame"
                    .into(),
            ));
        }
        // Browsers send an origin as scheme://host[:port], nothing more: an entry with a
        // path or a trailing slash would never match, and the pages it was meant for would
        // be refused without a word.
        if let Some(bad) = self.cors_origins.iter().find(|o| !is_origin(o)) {
            return Err(ConfigError::Invalid(format!(
                "cors_origins: `{bad}` is neither \"*\" nor an origin like \"https://game.example\" (scheme://host[:port], no path)"
            )));
        }
        // The key is read now, so that a missing file or a bad PEM stops the start with one
        // line instead of refusing every player later.
        crate::auth::Verifier::new(&self.auth)
            .map_err(|e| ConfigError::Invalid(format!("auth: {e}")))?;
        if let Some(problem) = self.admin_ui.problem() {
            return Err(ConfigError::Invalid(format!("admin_ui.{problem}")));
        }
        if let Some(problem) = self.auth.rooms.iter().find_map(|r| r.problem()) {
            return Err(ConfigError::Invalid(format!("auth: {problem}")));
        }
        if let Some(problem) = self.log.problem() {
            return Err(ConfigError::Invalid(problem));
        }
        if let Some(problem) = self.socketcluster.problem() {
            return Err(ConfigError::Invalid(format!("socketcluster.{problem}")));
        }
        if let Some(problem) = self.cluster.problem() {
            return Err(ConfigError::Invalid(format!("cluster.{problem}")));
        }
        if let Some(token) = &self.admin.token {
            if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
                return Err(ConfigError::Invalid(format!(
                    "admin.token must be at least {MIN_ADMIN_TOKEN_LEN} characters (a random one: it can kick players and drain the server)"
                )));
            }
            if self.auth.jwt_secret.as_ref() == Some(token) {
                return Err(ConfigError::Invalid(
                    "admin.token must not be auth.jwt_secret: whoever can mint player tokens could act as the operator".into(),
                ));
            }
        }
        if let Some(problem) = self
            .matchmaking
            .problem(self.max_name_len, self.max_room_members)
        {
            return Err(ConfigError::Invalid(format!("matchmaking.{problem}")));
        }
        Ok(())
    }

    /// The shard count to run: `shards`, or one per CPU in `cpus`.
    pub fn shard_count(&self, available_cpus: &[usize]) -> usize {
        if self.shards > 0 {
            self.shards
        } else if !self.cpus.is_empty() {
            self.cpus.len()
        } else {
            available_cpus.len().max(1)
        }
    }
}

/// Whether `text` is `*` or an origin as browsers send it: `http(s)://host[:port]`.
fn is_origin(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    host.is_some_and(|h| {
        !h.is_empty() && !h.contains(['/', '?', '#', ' ', ',']) && !h.ends_with(':')
    })
}

/// A value given as text (environment, flag): a TOML scalar if it parses as one (numbers,
/// booleans, arrays), else the string itself.
fn scalar(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// Parses `"0-3,6"` into `[0, 1, 2, 3, 6]`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad cpu `{s}` in `{text}`"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("bad cpu range `{part}`"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    Ok(cpus)
}

fn cpu_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Cpus {
        List(Vec<usize>),
        Text(String),
        One(usize),
    }
    match Cpus::deserialize(d)? {
        Cpus::List(v) => Ok(v),
        Cpus::One(c) => Ok(vec![c]),
        Cpus::Text(t) => parse_cpu_list(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_flags_last() {
        let dir = std::env::temp_dir().join(format!("corelay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "shards = 3\nmax_message_size = 1000\ncpus = \"0-1\"\n",
        )
        .unwrap();
        let env = vec![
            ("CORELAY_SHARDS".to_owned(), "5".to_owned()),
            ("CORELAY_LISTEN".to_owned(), "127.0.0.1:9000".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(Some(&file), env, &[("listen", "127.0.0.1:9100".into())]).unwrap();
        assert_eq!(c.shards, 5);
        assert_eq!(c.max_message_size, 1000);
        assert_eq!(c.cpus, vec![0, 1]);
        assert_eq!(c.listen, "127.0.0.1:9100".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("corelay-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "shardz = 3\n").unwrap();
        assert!(Config::load(Some(&file), vec![], &[]).is_err());
        assert!(Config::load(None, vec![], &[("shards", "many".into())]).is_err());
        assert!(Config::load(None, vec![], &[("max_message_size", "0".into())]).is_err());
        assert!(Config::load(None, vec![], &[("ring_entries", "16384".into())]).is_ok());
        assert!(Config::load(None, vec![], &[("ring_entries", "16385".into())]).is_err());
        assert!(Config::load(Some(Path::new("/nonexistent/x.toml")), vec![], &[]).is_err());
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let load = |v: &str| Config::load(None, vec![], &[("cors_origins", v.into())]);
        assert!(load(r#"["*"]"#).is_ok());
        assert!(load(r#"["https://game.example", "http://localhost:8080"]"#).is_ok());
        assert!(load("[]").is_ok());
        for bad in [
            r#"["https://game.example/"]"#,
            r#"["game.example"]"#,
            r#"["https://"]"#,
            r#"["https://a.example/path"]"#,
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_comes_from_its_table_and_environment_and_must_fit_the_outbound_queue() {
        let c = Config::default();
        assert!(
            c.resume.enabled(),
            "on by default, with socket.io's two minutes"
        );
        assert_eq!(c.resume.window_ms, 120_000);
        let env = [
            ("CORELAY_RESUME_WINDOW_MS".to_owned(), "5000".to_owned()),
            ("CORELAY_RESUME_WINDOW_MESSAGES".to_owned(), "10".to_owned()),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!((c.resume.window_ms, c.resume.window_messages), (5000, 10));
        let env = [("CORELAY_RESUME_WINDOW_MS".to_owned(), "0".to_owned())];
        assert!(!Config::load(None, env, &[]).unwrap().resume.enabled());
        let env = [(
            "CORELAY_RESUME_WINDOW_BYTES".to_owned(),
            "2000000".to_owned(),
        )];
        assert!(Config::load(None, env, &[]).is_err());
    }

    #[test]
    fn rate_limits_come_from_tables_and_their_environment_variables() {
        let dir = std::env::temp_dir().join(format!("corelay-config-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[rate_limits]\nsustained_ms = 500\n[rate_limits.native]\nmessages_per_s = 5\n\
             [rate_limits.tiers.pro]\nmessages_per_s = 50\njoins_burst = 3\n",
        )
        .unwrap();
        let env = vec![
            (
                "CORELAY_RATE_LIMITS_NATIVE_MESSAGES_BURST".to_owned(),
                "7".to_owned(),
            ),
            (
                "CORELAY_RATE_LIMITS_SOCKETIO_BYTES_PER_S".to_owned(),
                "0".to_owned(),
            ),
            (
                "CORELAY_RATE_LIMITS_SUSTAINED_MS".to_owned(),
                "900".to_owned(),
            ),
            ("CORELAY_SHARDS".to_owned(), "2".to_owned()),
        ];
        let c = Config::load(Some(&file), env, &[]).unwrap();
        let r = &c.rate_limits;
        assert_eq!(c.shards, 2, "flat keys still work");
        assert_eq!(r.sustained_ms, 900);
        assert_eq!((r.native.messages_per_s, r.native.messages_burst), (5.0, 7));
        // Keys not set keep their defaults, per protocol.
        assert_eq!(
            r.native.joins_burst,
            RateLimits::default().native.joins_burst
        );
        assert_eq!(r.socketio.bytes_per_s, 0.0);
        assert_eq!(
            r.socketio.messages_per_s,
            RateLimits::default().socketio.messages_per_s
        );
        // A tier overrides what it names over each protocol's profile.
        let pro = r.profile(Protocol::Native, Some("pro"));
        assert_eq!(
            (pro.messages_per_s, pro.messages_burst, pro.joins_burst),
            (50.0, 7, 3)
        );
        let pro_sio = r.profile(Protocol::SocketIo, Some("pro"));
        assert_eq!((pro_sio.messages_per_s, pro_sio.bytes_per_s), (50.0, 0.0));
        // No claim, or a tier nobody configured: the protocol's profile.
        assert_eq!(r.profile(Protocol::Native, None), r.native);
        assert_eq!(r.profile(Protocol::Native, Some("gold")), r.native);
        // An unknown key under a table is an error, as in the file.
        let typo = vec![(
            "CORELAY_RATE_LIMITS_NATIVE_MESAGES_PER_S".to_owned(),
            "1".to_owned(),
        )];
        assert!(Config::load(None, typo, &[]).is_err());
    }

    #[test]
    fn rate_limits_refuse_buckets_that_can_never_pass() {
        let load = |toml: &str| {
            let dir =
                std::env::temp_dir().join(format!("corelay-config-rl-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{}.toml", toml.len()));
            std::fs::write(&file, toml).unwrap();
            Config::load(Some(&file), vec![], &[])
        };
        assert!(load("[rate_limits.native]\nmessages_per_s = 1\nmessages_burst = 0\n").is_err());
        assert!(load("[rate_limits.native]\nmessages_per_s = 0\nmessages_burst = 0\n").is_ok());
        assert!(load("[rate_limits.socketio]\njoins_per_s = -1\n").is_err());
        assert!(load("[rate_limits.tiers.free]\nbytes_burst = 0\n").is_err());
    }

    #[test]
    fn tables_are_set_from_files_variables_and_flags() {
        let dir = std::env::temp_dir().join(format!("corelay-config-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "shards = 2\n[auth]\nleeway_s = 5\nissuer = \"a\"\n").unwrap();
        let env = vec![
            ("CORELAY_AUTH_REQUIRED".to_owned(), "true".to_owned()),
            ("CORELAY_AUTH_JWT_SECRET".to_owned(), "k".to_owned()),
            ("CORELAY_AUTH_ISSUER".to_owned(), "b".to_owned()),
            ("CORELAY_SHARDS".to_owned(), "3".to_owned()),
        ];
        let c = Config::load(Some(&file), env, &[("auth.expiry", "ignore".into())]).unwrap();
        assert_eq!(c.shards, 3);
        assert!(c.auth.required);
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("k"));
        assert_eq!(c.auth.issuer.as_deref(), Some("b"));
        assert_eq!(c.auth.leeway_s, 5);
        assert_eq!(c.auth.expiry, Expiry::Ignore);
        // One line for what is wrong, at load.
        let bad = |k: &str, v: &str| {
            Config::load(None, vec![], &[(k, v.into())])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("auth.required", "true").contains("jwt_secret"));
        assert!(bad("auth.jwt_public_key_file", "/nonexistent.pem").contains("cannot read"));
        assert!(
            bad("auth.expiry", "sometimes").contains("expiry")
                || bad("auth.expiry", "sometimes").contains("variant")
        );
        assert!(Config::load(None, vec![], &[("auth.nope", "1".into())]).is_err());
    }

    #[test]
    fn log_comes_from_its_table_variables_and_flags_and_refuses_misspelt_levels() {
        let c = Config::default();
        assert_eq!(
            (c.log.level.as_str(), c.log.format),
            ("info", LogFormat::Text)
        );
        let dir = std::env::temp_dir().join(format!("corelay-config-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[log]\nlevel = \"debug\"\nformat = \"json\"\n").unwrap();
        let c = Config::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!(
            (c.log.level.as_str(), c.log.format),
            ("debug", LogFormat::Json)
        );
        let env = vec![
            (
                "CORELAY_LOG_LEVEL".to_owned(),
                "warn,corelay::shard=debug".to_owned(),
            ),
            ("CORELAY_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        let c = Config::load(None, env, &[("log.format", "text".into())]).unwrap();
        assert_eq!(c.log.level, "warn,corelay::shard=debug");
        assert_eq!(c.log.format, LogFormat::Text, "flags win");
        let bad = |k: &str, v: &str| Config::load(None, vec![], &[(k, v.into())]).is_err();
        for level in ["verbose", "", "info,corelay=loud", "=debug", "a b=info"] {
            assert!(bad("log.level", level), "{level:?}");
        }
        for level in ["off", "TRACE", "error,corelay::net=trace"] {
            assert!(!bad("log.level", level), "{level:?}");
        }
        assert!(bad("log.format", "xml"));
        assert!(bad("log.colour", "true"));
    }

    #[test]
    fn the_admin_token_comes_from_its_variable_and_is_never_printed() {
        let token = "0123456789abcdef-admin";
        let env = [("CORELAY_ADMIN_TOKEN".to_owned(), token.to_owned())];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some(token));
        assert!(!format!("{c:?}").contains(token));
        let c = Config::load(None, vec![], &[("admin.token", token.into())]).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some(token));
        assert_eq!(Config::default().admin.token, None, "off unless set");
        let short = Config::load(None, vec![], &[("admin.token", "secret".into())]);
        assert!(short.unwrap_err().to_string().contains("admin.token"));
        let digits = [(
            "CORELAY_ADMIN_TOKEN".to_owned(),
            "1234567890123456".to_owned(),
        )];
        let c = Config::load(None, digits, &[]).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("1234567890123456"));
        let shared = Config::load(
            None,
            vec![],
            &[
                ("admin.token", token.into()),
                ("auth.jwt_secret", token.into()),
            ],
        );
        assert!(shared.unwrap_err().to_string().contains("jwt_secret"));
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
