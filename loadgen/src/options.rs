//! A run's validated settings, and the SLO spec.
//!
//! The binary turns its command line into [`Options`] (`main.rs`); tests build them with
//! [`Options::new`] and set fields. [`Options::validate`] checks everything once and
//! resolves the URL, so that the run itself never meets a bad setting.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::header;
use crate::tickets::TicketPlan;
use crate::transport::Endpoint;
use crate::Error;

/// What the run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Clients in rooms of `room_size`, every client sends to its room.
    Relay,
    /// One sender per room, big rooms; also latency to the last member.
    Fanout,
    /// A connection storm at `connect_rate`: handshake latency and failures.
    Connect,
    /// Hold connections open; server memory per connection.
    Idle,
    /// Relay for a long time with a progress line every `interval`; memory drift.
    Soak,
    /// Queue every client for matchmaking (time to match), then play the matched rooms.
    Matchmake,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Relay => "relay",
            Self::Fanout => "fanout",
            Self::Connect => "connect",
            Self::Idle => "idle",
            Self::Soak => "soak",
            Self::Matchmake => "matchmake",
        })
    }
}

/// Wire protocol of the clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// corelay's native protocol (`ws://host:port/ws`), through `corelay::client`.
    Native,
    /// Socket.IO v4 over a WebSocket (`ws://host:port/socket.io/`).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
    /// SocketCluster (`ws://host:port/socketcluster/`): a room is a channel, subscribed to
    /// and published to.
    #[value(name = "socketcluster")]
    #[serde(rename = "socketcluster")]
    SocketCluster,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::SocketIo => "socketio",
            Self::SocketCluster => "socketcluster",
        })
    }
}

impl Protocol {
    /// The URL path used when `--url` gives none.
    pub fn default_path(self) -> &'static str {
        match self {
            Self::Native => "/ws",
            Self::SocketIo => "/socket.io/",
            Self::SocketCluster => corelay::proto::socketcluster::DEFAULT_PATH,
        }
    }

    /// The smallest payload: the timing header, binary or as hex text.
    pub fn min_payload(self) -> usize {
        match self {
            Self::Native => header::BINARY_LEN,
            Self::SocketIo | Self::SocketCluster => header::TEXT_LEN,
        }
    }

    /// Does a message reach its sender too? A SocketCluster publish goes to every
    /// subscriber of the channel, the publisher included (with corelay as with
    /// `socketcluster-server`): that copy is a delivery the server makes, so it is owed,
    /// timed and counted like the others. The relay convention of the other protocols sends
    /// to the *other* members only.
    pub fn delivers_to_sender(self) -> bool {
        self == Self::SocketCluster
    }
}

/// How the clients are placed on the nodes when `--url` names several (one per node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Consecutive clients on consecutive nodes, round-robin: consecutive members of a room
    /// are on different nodes, so every room of at least as many members as nodes spans
    /// every node and most deliveries cross nodes.
    #[default]
    Members,
    /// Every member of a room on one node, rooms round-robin over the nodes: no delivery
    /// needs to cross nodes, which a cluster that routes by interest can exploit.
    Rooms,
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Members => "members",
            Self::Rooms => "rooms",
        })
    }
}

impl Spread {
    /// The node (an index into the URLs) of client `index`, whose room is `room`, among
    /// `nodes` nodes. A pure function of the run's settings, so that a receiver tells a
    /// same-node delivery from a cross-node one by the sender's index alone.
    pub fn node_of(self, nodes: usize, index: usize, room: Option<usize>) -> usize {
        if nodes <= 1 {
            return 0;
        }
        match (self, room) {
            (Self::Rooms, Some(room)) => room % nodes,
            // A client in no room has no room to follow: round-robin like `members`.
            _ => index % nodes,
        }
    }
}

/// How progress is shown while the run goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing (library use, tests).
    Off,
    /// One line rewritten in place with `\r` (a terminal).
    Overwrite,
    /// One new line per update (logs, pipes).
    Lines,
}

/// Everything a run needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// What to run.
    pub scenario: Scenario,
    /// Client protocol.
    pub protocol: Protocol,
    /// Server URL: `ws://127.0.0.1:7700/ws` (native), `ws://127.0.0.1:3000/socket.io/`,
    /// `ws://127.0.0.1:7700/socketcluster/`; or
    /// several, comma-separated, one per node of a cluster (see [`Options::spread`]).
    pub url: String,
    /// With several URLs: which clients go to which node.
    pub spread: Spread,
    /// Number of clients (connections).
    pub clients: usize,
    /// Members per room; 0 in `connect`/`idle` means no room is joined.
    pub room_size: usize,
    /// Messages per second per sending client.
    pub rate: f64,
    /// Payload size in bytes (at least the timing header: 24 native, 48 socket.io and
    /// SocketCluster).
    pub payload: usize,
    /// Length of the measured window. For `connect`, zero means "until every connection
    /// has been attempted" (`clients / connect_rate`).
    pub duration: Duration,
    /// Time before the measured window whose results are discarded.
    pub warmup: Duration,
    /// Number of glommio executors (threads).
    pub threads: usize,
    /// CPUs to pin the executors to, round-robin; `None` leaves them unbound.
    pub cpus: Option<Vec<usize>>,
    /// How long a load thread spins after its last work (a send, an arrival) before it
    /// sleeps (0: sleep at once).
    pub spin: Duration,
    /// Connections per second in `connect` (and in `idle` when set above zero).
    pub connect_rate: f64,
    /// Progress interval: every line in `soak`, the interval percentiles elsewhere.
    pub interval: Duration,
    /// Server process to watch in `/proc` (CPU, memory).
    pub server_pid: Option<u32>,
    /// How long to wait for in-flight messages after the last send.
    pub drain: Duration,
    /// Limit for one connect or join.
    pub connect_timeout: Duration,
    /// Spread client source addresses over 127.0.0.1-250 when the server is on loopback.
    pub spread_source_addresses: bool,
    /// Progress display.
    pub progress: ProgressMode,
    /// Name of the run in plots; defaults to a summary of the settings.
    pub label: Option<String>,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// JWT every client presents (native `Hello.token`, Socket.IO CONNECT `{token}`,
    /// SocketCluster `#handshake` `authToken`), for
    /// servers with `[auth]` (docs/AUTH.md); all clients share its `sub`, which the server
    /// allows.
    pub token: Option<String>,
    /// Objectives to check at the end (`--slo`).
    pub slo: Option<Slo>,
    /// `matchmake`: the tickets (queue, pace, skills, regions).
    pub tickets: TicketPlan,
    /// `matchmake`: the longest the generator waits for a ticket's outcome, from its due
    /// time; a ticket still waiting then counts as unanswered. Every run ends by itself.
    pub match_timeout: Duration,
}

impl Options {
    /// Defaults for `scenario` (documented in loadgen/README.md).
    pub fn new(scenario: Scenario, protocol: Protocol, url: impl Into<String>) -> Self {
        let (clients, room_size, warmup, duration) = match scenario {
            Scenario::Relay => (100, 10, 2.0, 10.0),
            Scenario::Fanout => (1000, 100, 2.0, 10.0),
            Scenario::Connect => (1000, 0, 0.0, 0.0),
            Scenario::Idle => (1000, 0, 0.0, 10.0),
            Scenario::Soak => (100, 10, 10.0, 600.0),
            // Rooms come from the matches; a second of play is enough to leave out the
            // first messages of every room.
            Scenario::Matchmake => (1000, 0, 1.0, 10.0),
        };
        Self {
            scenario,
            protocol,
            url: url.into(),
            spread: Spread::Members,
            clients,
            room_size,
            rate: 10.0,
            payload: 64,
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(warmup),
            threads: 1,
            cpus: None,
            spin: Duration::ZERO,
            connect_rate: if scenario == Scenario::Connect {
                1000.0
            } else {
                0.0
            },
            interval: Duration::from_secs(if scenario == Scenario::Soak { 10 } else { 1 }),
            server_pid: None,
            drain: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            spread_source_addresses: true,
            progress: ProgressMode::Off,
            label: None,
            max_message_size: 1 << 20,
            token: None,
            slo: None,
            tickets: TicketPlan::default(),
            // Past the `default` queue's 60 s timeout, so that the server's own timeout is
            // what a run normally sees.
            match_timeout: Duration::from_secs(65),
        }
    }

    /// Does the scenario send messages?
    pub fn sends(&self) -> bool {
        matches!(
            self.scenario,
            Scenario::Relay | Scenario::Fanout | Scenario::Soak | Scenario::Matchmake
        )
    }

    /// Number of rooms (0 when no room is joined).
    pub fn rooms(&self) -> usize {
        if self.room_size == 0 {
            0
        } else {
            self.clients.div_ceil(self.room_size)
        }
    }

    /// Room of client `index`, if it joins one. Rooms are consecutive blocks of clients.
    pub fn room_of(&self, index: usize) -> Option<usize> {
        (self.room_size > 0).then(|| index / self.room_size)
    }

    /// The URLs, one per node: `url` split at commas.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Number of nodes (URLs), at least 1.
    pub fn nodes(&self) -> usize {
        self.urls().len().max(1)
    }

    /// The node (index into [`Options::urls`]) client `index` connects to.
    pub fn node_of(&self, index: usize) -> usize {
        self.spread
            .node_of(self.nodes(), index, self.room_of(index))
    }

    /// Does client `index` send? (In `fanout` only the first member of each room; in
    /// `matchmake` every client whose ticket matched.)
    pub fn is_sender(&self, index: usize) -> bool {
        match self.scenario {
            Scenario::Relay | Scenario::Soak | Scenario::Matchmake => true,
            Scenario::Fanout => self.room_size > 0 && index % self.room_size == 0,
            Scenario::Connect | Scenario::Idle => false,
        }
    }

    /// Number of sending clients.
    pub fn senders(&self) -> usize {
        (0..self.clients).filter(|&i| self.is_sender(i)).count()
    }

    /// Position of sender `index` among the senders (its slot in the schedule).
    pub fn sender_slot(&self, index: usize) -> usize {
        match self.scenario {
            Scenario::Fanout => index / self.room_size.max(1),
            _ => index,
        }
    }

    /// The length of the measured window for this run.
    pub fn window(&self) -> Duration {
        if self.scenario == Scenario::Connect && self.duration.is_zero() {
            Duration::from_secs_f64(self.clients as f64 / self.connect_rate)
        } else {
            self.duration
        }
    }

    /// File descriptors the run needs: one per client plus a margin for the executors'
    /// rings, eventfds and timers, stdio and /proc reads.
    pub fn fds_needed(&self) -> u64 {
        self.clients as u64 + 64 + 16 * self.threads as u64
    }

    /// Checks every setting and resolves the URLs: one endpoint per node, in the order
    /// given.
    pub fn validate(&self) -> Result<Vec<Endpoint>, Error> {
        let invalid = |m: String| Err(Error::InvalidOptions(m));
        if self.clients == 0 {
            return invalid("--clients must be at least 1".into());
        }
        if self.threads == 0 {
            return invalid("--threads must be at least 1".into());
        }
        if self.scenario == Scenario::Matchmake {
            if self.protocol == Protocol::SocketCluster {
                return invalid(
                    "matchmake needs --protocol native or socketio: corelay's matchmaking is \
                     not spoken over socketcluster"
                        .into(),
                );
            }
            self.validate_tickets()?;
        } else if self.sends() && self.room_size < 2 {
            return invalid("--room-size must be at least 2 for a scenario that sends".into());
        }
        if self.sends() {
            if !(self.rate.is_finite() && self.rate > 0.0) {
                return invalid(format!(
                    "--rate must be a positive number, not {}",
                    self.rate
                ));
            }
            if self.duration.is_zero() {
                return invalid("--duration must be above zero".into());
            }
            let min = self.protocol.min_payload();
            if self.payload < min {
                return invalid(format!(
                    "--payload must be at least {min} bytes for {} (the timing header)",
                    self.protocol
                ));
            }
            if self.payload > self.max_message_size / 2 {
                return invalid(format!("--payload {} is too large", self.payload));
            }
        }
        if self.scenario == Scenario::Connect
            && !(self.connect_rate.is_finite() && self.connect_rate > 0.0)
        {
            return invalid("--connect-rate must be a positive number".into());
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return invalid("--connect-rate must not be negative".into());
        }
        if self.interval.is_zero() {
            return invalid("--interval must be above zero".into());
        }
        if let Some(cpus) = &self.cpus {
            if cpus.is_empty() {
                return invalid("--cpus needs at least one CPU".into());
            }
        }
        if self.urls().is_empty() {
            return invalid("--url names no server".into());
        }
        // The server makes matchmake's rooms after the clients have connected, so a client's
        // node cannot follow its room.
        if self.scenario == Scenario::Matchmake && self.nodes() > 1 && self.spread == Spread::Rooms
        {
            return invalid(
                "--spread rooms does not apply to matchmake: its rooms are made after connecting"
                    .into(),
            );
        }
        let (soft, _hard) = crate::procfs::fd_limits().map_err(Error::Io)?;
        if self.fds_needed() > soft {
            return Err(Error::FdLimit {
                needed: self.fds_needed(),
                limit: soft,
            });
        }
        self.urls()
            .into_iter()
            .map(|url| self.endpoint(url))
            .collect()
    }

    /// The `matchmake` settings: rooms come from the server's matches, tickets need a
    /// queue, a pace and a bound.
    fn validate_tickets(&self) -> Result<(), Error> {
        let invalid = |m: &str| Err(Error::InvalidOptions(m.into()));
        let plan = &self.tickets;
        if self.room_size != 0 {
            return invalid(
                "--room-size does not apply to matchmake: the server's matches make the rooms",
            );
        }
        if plan.queue.is_empty() {
            return invalid("--queue must name a queue");
        }
        if !(plan.rate.is_finite() && plan.rate >= 0.0) {
            return invalid("--queue-rate must be a number of tickets per second (0: all at once)");
        }
        if !(plan.skill.min.is_finite() && plan.skill.max.is_finite())
            || plan.skill.min > plan.skill.max
        {
            return invalid("--skill-spread must be LO..HI with finite LO <= HI");
        }
        if plan.regions.iter().any(String::is_empty) {
            return invalid("--regions must not hold an empty name");
        }
        if self.match_timeout.is_zero() {
            return invalid("--match-timeout must be above zero");
        }
        Ok(())
    }

    /// Parses and resolves one URL.
    fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        let bad = |why: &str| Error::InvalidOptions(format!("--url {url}: {why}"));
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| bad("only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path == "/" {
            self.protocol.default_path()
        } else {
            path
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("host has no address"))?;
        Ok(Endpoint {
            protocol: self.protocol,
            url: url.to_string(),
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            max_message_size: self.max_message_size,
            token: self.token.clone(),
        })
    }

    /// Source address for client `index`: 127.0.0.(1 + index % 250) when the server is on
    /// IPv4 loopback, so that each source address needs only 1/250 of the ephemeral ports.
    pub fn source_address(&self, endpoint: &Endpoint, index: usize) -> Option<IpAddr> {
        if !self.spread_source_addresses {
            return None;
        }
        match endpoint.addr.ip() {
            IpAddr::V4(v4) if v4.is_loopback() => Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (index % 250) as u8,
            ))),
            _ => None,
        }
    }

    /// The run's label for plots and tables.
    pub fn label(&self) -> String {
        if let Some(label) = &self.label {
            return label.clone();
        }
        let label = self.settings_label();
        match self.nodes() {
            1 => label,
            n => format!("{label} on {n} nodes, spread {}", self.spread),
        }
    }

    fn settings_label(&self) -> String {
        match self.scenario {
            Scenario::Connect | Scenario::Idle => {
                format!(
                    "{} {} {} clients",
                    self.scenario, self.protocol, self.clients
                )
            }
            Scenario::Matchmake => {
                let pace = if self.tickets.rate > 0.0 {
                    format!("{}/s", self.tickets.rate)
                } else {
                    "at once".into()
                };
                format!(
                    "{} {} {} tickets {} to {}, play @{}/s {}B",
                    self.scenario,
                    self.protocol,
                    self.clients,
                    pace,
                    self.tickets.queue,
                    self.rate,
                    self.payload
                )
            }
            _ => format!(
                "{} {} {}x{} @{}/s {}B",
                self.scenario, self.protocol, self.clients, self.room_size, self.rate, self.payload
            ),
        }
    }
}

/// A latency or loss objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// The given percentile (0-100) must be at most `limit_us`.
    Percentile {
        /// The percentile, e.g. 99.9.
        percentile: f64,
        /// Largest acceptable value, µs.
        limit_us: f64,
    },
    /// The largest value must be at most `limit_us`.
    Max {
        /// Largest acceptable value, µs.
        limit_us: f64,
    },
    /// At most this many lost deliveries (failed connections in `connect`/`idle`).
    LossCount(u64),
    /// At most this fraction (0-1) of the expected deliveries lost.
    LossFraction(f64),
}

/// A service-level objective: `p99=2ms,p99.9=5ms,max=20ms,loss=0` (`loss=0.1%` for a
/// fraction). Durations take `ns`, `us`/`µs`, `ms` or `s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// The spec as given.
    pub spec: String,
    /// Its objectives.
    pub objectives: Vec<Objective>,
}

impl std::str::FromStr for Slo {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut objectives = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            let objective = if key == "loss" {
                if let Some(pct) = value.strip_suffix('%') {
                    let f: f64 = pct
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{part}`: bad percentage"))?;
                    if !(0.0..=100.0).contains(&f) {
                        return Err(format!("`{part}`: percentage out of range"));
                    }
                    Objective::LossFraction(f / 100.0)
                } else {
                    Objective::LossCount(
                        value
                            .parse()
                            .map_err(|_| format!("`{part}`: loss is a count or a percentage"))?,
                    )
                }
            } else if key == "max" {
                Objective::Max {
                    limit_us: parse_duration_us(value).map_err(|e| format!("`{part}`: {e}"))?,
                }
            } else if let Some(p) = key.strip_prefix('p') {
                let percentile: f64 = p.parse().map_err(|_| format!("`{part}`: bad percentile"))?;
                if !(0.0..=100.0).contains(&percentile) {
                    return Err(format!("`{part}`: percentile out of range"));
                }
                Objective::Percentile {
                    percentile,
                    limit_us: parse_duration_us(value).map_err(|e| format!("`{part}`: {e}"))?,
                }
            } else {
                return Err(format!("`{part}`: unknown key (use pNN, max or loss)"));
            };
            objectives.push(objective);
        }
        if objectives.is_empty() {
            return Err("empty SLO".into());
        }
        Ok(Self {
            spec: spec.to_string(),
            objectives,
        })
    }
}

/// `2ms`, `500us`, `1.5s`, `800ns` -> microseconds.
pub fn parse_duration_us(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit (ns, us, ms, s)"))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad number `{number}`"))?;
    let scale = match unit.trim() {
        "ns" => 1e-3,
        "us" | "µs" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        other => return Err(format!("unknown unit `{other}` (ns, us, ms, s)")),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_parses_percentiles_max_and_loss() {
        let slo: Slo = "p99=2ms, p99.9=5ms,max=1s,loss=0".parse().unwrap();
        assert_eq!(
            slo.objectives,
            vec![
                Objective::Percentile {
                    percentile: 99.0,
                    limit_us: 2000.0
                },
                Objective::Percentile {
                    percentile: 99.9,
                    limit_us: 5000.0
                },
                Objective::Max { limit_us: 1e6 },
                Objective::LossCount(0),
            ]
        );
        let slo: Slo = "P50=800us,loss=0.5%".parse().unwrap();
        assert_eq!(
            slo.objectives,
            vec![
                Objective::Percentile {
                    percentile: 50.0,
                    limit_us: 800.0
                },
                Objective::LossFraction(0.005),
            ]
        );
        let slo: Slo = "p99=250µs,p90=1500ns".parse().unwrap();
        assert_eq!(
            slo.objectives[1],
            Objective::Percentile {
                percentile: 90.0,
                limit_us: 1.5
            }
        );
    }

    #[test]
    fn slo_rejects_nonsense() {
        for bad in [
            "",
            "p99",
            "p99=2",
            "p99=2 parsecs",
            "p101=1ms",
            "q99=1ms",
            "loss=-1",
            "loss=lots",
            "loss=200%",
            "pxx=1ms",
        ] {
            assert!(bad.parse::<Slo>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn rooms_and_senders() {
        let mut o = Options::new(Scenario::Relay, Protocol::Native, "ws://127.0.0.1:1/ws");
        o.clients = 23;
        o.room_size = 5;
        assert_eq!(o.rooms(), 5);
        assert_eq!(o.room_of(22), Some(4));
        assert_eq!(o.senders(), 23);
        o.scenario = Scenario::Fanout;
        assert_eq!(o.senders(), 5);
        assert!(o.is_sender(20) && !o.is_sender(21));
        assert_eq!(o.sender_slot(20), 4);
    }

    #[test]
    fn url_resolution_and_source_addresses() {
        let o = Options::new(Scenario::Relay, Protocol::SocketIo, "ws://127.0.0.1:3000");
        let e = o.validate().unwrap();
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.path, "/socket.io/");
        assert_eq!(e.host, "127.0.0.1:3000");
        assert_eq!(o.source_address(e, 0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(o.source_address(e, 251), Some("127.0.0.2".parse().unwrap()));
        let o = Options::new(Scenario::Relay, Protocol::Native, "http://x/ws");
        assert!(o.validate().is_err());
    }

    #[test]
    fn several_urls_are_one_endpoint_per_node_in_order() {
        let mut o = Options::new(
            Scenario::Relay,
            Protocol::Native,
            "ws://127.0.0.1:7701/ws, ws://127.0.0.1:7702/ws,ws://127.0.0.1:7703,",
        );
        assert_eq!(o.nodes(), 3);
        let e = o.validate().unwrap();
        let ports: Vec<u16> = e.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [7701, 7702, 7703]);
        assert_eq!(e[1].url, "ws://127.0.0.1:7702/ws");
        assert_eq!(e[2].path, "/ws");
        assert!(
            o.label().ends_with("on 3 nodes, spread members"),
            "{}",
            o.label()
        );
        o.url = "ws://127.0.0.1:7701/ws,http://x/ws".into();
        assert!(o.validate().is_err());
        o.url = " , ".into();
        assert!(o.validate().is_err());
    }

    #[test]
    fn one_url_is_one_node_whatever_the_spread() {
        let mut o = Options::new(Scenario::Relay, Protocol::Native, "ws://127.0.0.1:1/ws");
        o.clients = 30;
        for spread in [Spread::Members, Spread::Rooms] {
            o.spread = spread;
            assert!((0..30).all(|i| o.node_of(i) == 0));
        }
        assert!(!o.label().contains("nodes"));
    }

    #[test]
    fn members_spread_puts_consecutive_members_on_different_nodes() {
        let mut o = Options::new(Scenario::Relay, Protocol::Native, "ws://a:1,ws://b:2");
        o.clients = 40;
        o.room_size = 10;
        let nodes: Vec<usize> = (0..10).map(|i| o.node_of(i)).collect();
        assert_eq!(nodes, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        // Three nodes, rooms of 10: every room spans all three, and over the rooms every
        // node has as many clients as the others.
        o.url = "ws://a:1,ws://b:2,ws://c:3".into();
        o.clients = 30;
        let mut per_node = [0; 3];
        for room in 0..3 {
            let mut seen = [false; 3];
            for i in room * 10..room * 10 + 10 {
                seen[o.node_of(i)] = true;
                per_node[o.node_of(i)] += 1;
                assert_ne!(o.node_of(i), o.node_of(i + 1), "members {i} and {}", i + 1);
            }
            assert_eq!(seen, [true; 3], "room {room}");
        }
        assert_eq!(per_node, [10, 10, 10]);
    }

    #[test]
    fn rooms_spread_keeps_each_room_on_one_node_and_deals_rooms_round_robin() {
        let mut o = Options::new(
            Scenario::Relay,
            Protocol::Native,
            "ws://a:1,ws://b:2,ws://c:3",
        );
        o.spread = Spread::Rooms;
        o.clients = 47;
        o.room_size = 5;
        for i in 0..o.clients {
            let room = o.room_of(i).unwrap();
            assert_eq!(o.node_of(i), room % 3, "client {i} of room {room}");
        }
        // A run without rooms (idle, connect) deals the clients round-robin.
        o.scenario = Scenario::Idle;
        o.room_size = 0;
        let nodes: Vec<usize> = (0..5).map(|i| o.node_of(i)).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1]);
        // matchmake's rooms are the server's, made after connecting: refused.
        let mut m = Options::new(
            Scenario::Matchmake,
            Protocol::Native,
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws",
        );
        m.spread = Spread::Rooms;
        assert!(m.validate().is_err());
        m.spread = Spread::Members;
        assert!(m.validate().is_ok());
    }

    #[test]
    fn payload_must_hold_the_header() {
        let mut o = Options::new(Scenario::Relay, Protocol::SocketIo, "ws://127.0.0.1:3000");
        o.payload = 40;
        assert!(o.validate().is_err());
        o.protocol = Protocol::SocketCluster;
        assert!(o.validate().is_err());
        o.protocol = Protocol::Native;
        assert!(o.validate().is_ok());
    }

    #[test]
    fn socketcluster_has_its_path_and_no_matchmaking() {
        let o = Options::new(
            Scenario::Relay,
            Protocol::SocketCluster,
            "ws://127.0.0.1:7700",
        );
        assert_eq!(o.validate().unwrap()[0].path, "/socketcluster/");
        assert!(o.label().contains("relay socketcluster"), "{}", o.label());
        assert!(Protocol::SocketCluster.delivers_to_sender());
        assert!(!Protocol::Native.delivers_to_sender() && !Protocol::SocketIo.delivers_to_sender());
        let m = Options::new(
            Scenario::Matchmake,
            Protocol::SocketCluster,
            "ws://127.0.0.1:7700",
        );
        assert!(m.validate().is_err());
    }

    #[test]
    fn matchmake_takes_its_rooms_from_the_matches_and_checks_its_tickets() {
        let mut o = Options::new(Scenario::Matchmake, Protocol::Native, "ws://127.0.0.1:1/ws");
        assert!(o.validate().is_ok());
        assert!(o.sends() && o.is_sender(7) && o.rooms() == 0);
        o.room_size = 2;
        assert!(o.validate().is_err());
        o.room_size = 0;
        o.tickets.rate = -1.0;
        assert!(o.validate().is_err());
        o.tickets.rate = 0.0;
        o.tickets.queue.clear();
        assert!(o.validate().is_err());
        o.tickets.queue = "ranked".into();
        o.match_timeout = Duration::ZERO;
        assert!(o.validate().is_err());
    }

    #[test]
    fn too_many_clients_for_the_fd_limit_fail_early() {
        let (soft, _) = crate::procfs::fd_limits().unwrap();
        let mut o = Options::new(Scenario::Idle, Protocol::Native, "ws://127.0.0.1:1/ws");
        o.clients = soft as usize;
        match o.validate() {
            Err(Error::FdLimit { needed, limit }) => {
                assert_eq!(limit, soft);
                assert!(needed > soft);
            }
            other => panic!("expected an fd limit error, got {other:?}"),
        }
    }
}
