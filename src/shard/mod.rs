//! The thread-per-core runtime: one shard per core, each a glommio executor pinned to its
//! CPU, owning its listener, connections, rooms and buffers.
//!
//! The runtime knows no protocol. It accepts sockets, moves bytes between them and the
//! shard's io_uring ([`ring`]), keeps one timer wheel for every deadline of the shard, and
//! carries messages between shards ([`mesh`]). What the bytes mean is up to the
//! [`Endpoint`]s registered with it (the HTTP front, which routes each request by path to the
//! native protocol, Engine.IO or echo), whose [`Connection`] handlers it calls with input and `now` and which answer with a
//! [`Step`] and their next deadline.
//!
//! One turn of a shard (`driver`): handle every completion that arrived (input first),
//! then every message from other shards, then due timers; then flush every connection with
//! pending output in one batch of sends, carry what the relay queued for other shards, and
//! enter the kernel once to submit it all and to wait for the next batch.
//!
//! A [`Shard`] is `!Send` (`Rc`, `RefCell`): the types say that everything in it belongs to
//! one thread.
//!
//! # A shard that panics
//!
//! A panic on a shard (a bug in corelay, or application code such as a Socket.IO handler
//! that panics) leaves that shard's state half updated, so the shard is not resumed. Nor is
//! it left dead while the others serve on: its rooms would stop answering and handoffs to
//! it would vanish. The whole server stops instead: the failed shard's driver is dropped
//! while unwinding, which cuts its sockets (its clients see the connection end with no
//! close frame), [`Control`] records the failure and asks every other shard to drain as in
//! a shutdown (close 1001, `shutdown_grace_ms`), and [`crate::Server::join`] returns
//! [`crate::ServerError::ShardFailed`], so `corelay serve` exits with status 1 and a
//! supervisor restarts it (tuning/README.md, "The systemd unit"). This needs panics to
//! unwind, as every profile of this crate builds them; with `panic = "abort"` the process
//! aborts instead, which is never half alive either.
//!
//! The driver is the shard executor's only task, and it sleeps in its own ring, not in
//! glommio's reactor. Handlers (the endpoints', and application code under
//! [`crate::socketio`]) are called synchronously from it and must not block; glommio tasks
//! spawned on a shard are not driven (glommio's timers and IO would wait for the driver).

pub(crate) mod driver;
pub mod mesh;
pub mod ring;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::Config;
use crate::relay::{Outbox, OutboxLimits, PlayerId, ReadyQueue, Relay, ShardId};
use crate::stats::{ShardStats, StatsRegistry};
use crate::timer::TimerWheel;

use self::mesh::Doorbell;

/// State shared by all shards and the thread that started them.
#[derive(Debug)]
pub struct Control {
    shutdown: AtomicBool,
    doorbells: Vec<Arc<Doorbell>>,
    /// The first shard that failed, and why; set once.
    failure: OnceLock<(ShardId, String)>,
}

impl Control {
    /// Control of the shards woken by `doorbells`.
    pub(crate) fn new(doorbells: Vec<Arc<Doorbell>>) -> Control {
        Control {
            shutdown: AtomicBool::new(false),
            doorbells,
            failure: OnceLock::new(),
        }
    }

    /// Asks every shard to drain and stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for bell in &self.doorbells {
            bell.ring_always();
        }
    }

    /// Whether shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Shard `shard` failed (a panic, `why`) and is gone: records the first failure and
    /// stops every other shard, so the server is never left half alive.
    pub(crate) fn fail(&self, shard: ShardId, why: String) {
        let _ = self.failure.set((shard, why));
        self.request_shutdown();
    }

    /// The first shard failure, if any: the shard and its panic message. A failed server
    /// stops by itself; [`crate::Server::join`] then reports this failure.
    pub fn failure(&self) -> Option<(ShardId, &str)> {
        self.failure
            .get()
            .map(|(shard, why)| (*shard, why.as_str()))
    }
}

/// Identifies a connection on its shard: slot in the low 32 bits, the slot's generation
/// above, so an id never names a later connection that reuses the slot.
pub type ConnId = u64;

/// Index of an endpoint in the shard's table; 0 is the one accepted connections start in.
pub type EndpointId = u16;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKey {
    /// A connection's deadline, with the sequence number of the entry (an entry whose
    /// number the connection no longer holds is stale and ignored).
    Conn(ConnId, u32),
    /// An endpoint's own timer (e.g. an Engine.IO session's heartbeat), with its key.
    Endpoint(EndpointId, u64),
    /// The runtime's periodic work (stats publication).
    Tick,
    /// Accepting again after running out of file descriptors.
    Accept,
    /// The matchmaking's next deadline (`Relay::poll_matchmaking`).
    Matchmaking,
    /// Checking that a connection's pending output still moves (`write_timeout_ms`); at
    /// most one per connection is pending.
    Write(ConnId),
}

/// One core's share of the server, as connection handlers see it: configuration, counters,
/// rooms, timers. Lives on its thread only.
pub struct Shard {
    /// This shard's index.
    pub id: ShardId,
    /// Number of shards.
    pub shards: usize,
    /// The server configuration.
    pub config: Arc<Config>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Rooms and fan-out. What it queues for other shards is carried by the runtime at the
    /// end of the turn.
    pub relay: RefCell<Relay>,
    /// Queues that became ready to send, or whose waiter must be woken.
    pub(crate) ready: Rc<ReadyQueue>,
    pub(crate) timers: RefCell<TimerWheel<TimerKey>>,
    /// Every shard's stats (this one's among them), for the operator's endpoints.
    pub registry: StatsRegistry,
    control: Arc<Control>,
    players: PlayerIds,
}

impl Shard {
    pub(crate) fn new(
        id: ShardId,
        shards: usize,
        config: Arc<Config>,
        stats: Arc<ShardStats>,
        relay: Relay,
        control: Arc<Control>,
    ) -> Shard {
        Shard {
            id,
            shards,
            config,
            stats,
            relay: RefCell::new(relay),
            ready: Rc::new(ReadyQueue::default()),
            timers: RefCell::new(TimerWheel::new(Instant::now())),
            registry: StatsRegistry::default(),
            control,
            players: PlayerIds::new(id),
        }
    }

    /// This shard with `registry`, every shard's stats.
    pub(crate) fn with_registry(mut self, registry: StatsRegistry) -> Shard {
        self.registry = registry;
        self
    }

    /// A fresh player id, unique across shards and across restarts (see [`PlayerIds`]).
    pub fn next_player_id(&self) -> PlayerId {
        self.players.next(unix_micros(SystemTime::now()))
    }

    /// Limits of a new connection's outbound queue.
    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            frames: self.config.outbound_queue_frames,
            bytes: self.config.outbound_queue_bytes,
        }
    }

    /// Whether the server is draining.
    pub fn shutting_down(&self) -> bool {
        self.control.shutting_down()
    }

    /// The server's control: shutdown and drain.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Schedules an endpoint timer: the endpoint's [`Endpoint::on_timer`] is called with
    /// `key` at `at` (or soon after). Timers are not cancelled: an endpoint checks when
    /// called whether the deadline still holds.
    pub fn set_timer(&self, endpoint: EndpointId, key: u64, at: Instant) {
        self.timers
            .borrow_mut()
            .insert(at, TimerKey::Endpoint(endpoint, key));
    }

    /// Makes `queue` wake connection `conn` (its [`Connection::on_wake`]) whenever it has
    /// something queued, until `stop_waking` is called.
    pub fn wake_on(&self, queue: &Outbox, conn: ConnId) {
        queue.notify_to(Some((Rc::clone(&self.ready), wake_token(conn))));
    }

    /// Undoes [`Shard::wake_on`].
    pub fn stop_waking(&self, queue: &Outbox) {
        queue.notify_to(None);
    }
}

/// Bits of a player id that hold the shard number (the top ones).
const SHARD_BITS: u32 = 10;

/// Bits of a player id that hold its allocation time, in microseconds since the Unix
/// epoch: 54 bits last until the year 2541.
const TIME_BITS: u32 = 64 - SHARD_BITS;

/// Most shards a server runs: a shard's number must fit in the 10 bits of a player id that
/// hold it (glommio pins shards to CPUs, and Linux's affinity mask holds at most 1024).
pub const MAX_SHARDS: usize = 1 << SHARD_BITS;

/// One shard's player ids: the shard number in the top 10 bits, below it a microsecond
/// count that starts from the wall clock and never goes back.
///
/// Ids are unique without any coordination, between shards and between processes:
///
/// - Between shards of a process: the shard numbers differ.
/// - Within a shard: each id takes `max(previous + 1, now)`, so ids only increase, even if
///   the clock stalls or steps back.
/// - Across restarts: an id is never below the wall clock (in microseconds) at which it was
///   given, and exceeds it only while a shard gives ids faster than one per microsecond.
///   Each id costs a connection handshake (accept, HTTP upgrade, `Hello` or an Engine.IO
///   handshake) on the shard's one thread, which takes longer than a microsecond, so the
///   count does not run ahead of the clock (and a burst that did would fall back to it at
///   once). A process started later reads a later clock, so every id it gives is above
///   every id its predecessors gave. That holds unless the wall clock is set back across a
///   restart by more than the restart took (NTP slews small corrections instead of
///   stepping; a clock set back by hand can repeat old ids).
///
/// Id 0 is never given (it stands for the server itself as a sender): the count starts at
/// the clock, far above 0.
#[derive(Debug)]
pub struct PlayerIds {
    shard: u64,
    last: Cell<u64>,
}

impl PlayerIds {
    /// The ids of shard `shard` (below [`MAX_SHARDS`]).
    pub fn new(shard: ShardId) -> PlayerIds {
        debug_assert!(shard < MAX_SHARDS, "the server refuses more shards");
        PlayerIds {
            shard: shard as u64 & (MAX_SHARDS as u64 - 1),
            last: Cell::new(0),
        }
    }

    /// The next id, given the wall clock in microseconds since the Unix epoch.
    pub fn next(&self, now_micros: u64) -> PlayerId {
        let time_mask = (1u64 << TIME_BITS) - 1;
        let t = (self.last.get() + 1).max(now_micros) & time_mask;
        self.last.set(t);
        (self.shard << TIME_BITS) | t
    }

    /// The shard that gave `id`.
    pub fn shard_of(id: PlayerId) -> ShardId {
        (id >> TIME_BITS) as ShardId
    }
}

/// Microseconds since the Unix epoch (0 for a clock set before it: ids then still
/// increase, from the previous one).
fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The ready-queue token that asks the runtime to send what a connection's own queue holds.
pub(crate) fn transmit_token(conn: ConnId) -> u64 {
    conn
}

/// The ready-queue token that asks the runtime to call a connection's `on_wake`.
pub(crate) fn wake_token(conn: ConnId) -> u64 {
    conn | 1 << 63
}

/// What a handler lends from the runtime for one call: the clock, its connection's id and
/// outbound queue, the shard, and its deadline.
pub struct Cx<'a> {
    /// The time of this turn.
    pub now: Instant,
    /// This connection.
    pub id: ConnId,
    /// The peer's source address, as admission counts it.
    pub peer: crate::admission::PeerKey,
    /// This connection's outbound queue: what is pushed here is sent at the end of the turn.
    pub out: &'a Rc<Outbox>,
    /// The shard.
    pub shard: &'a Rc<Shard>,
    pub(crate) deadline: &'a mut Option<Instant>,
}

impl Cx<'_> {
    /// Asks for [`Connection::on_timeout`] at `at` (replacing any earlier request); `None`
    /// for no timeout.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        *self.deadline = at;
    }

    /// The deadline asked for.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline
    }
}

/// Why a connection ended, as the runtime tells its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The handler asked for it (a [`Step::Close`]).
    Handler,
    /// The peer closed its side or reset the connection.
    Peer,
    /// Writing failed.
    Io,
    /// The outbound queue overflowed, or its output made no progress for
    /// `write_timeout_ms`: a slow consumer.
    SlowConsumer,
    /// The socket moved to another shard.
    HandedOff,
}

/// What the runtime should do after a handler call.
pub enum Step {
    /// Keep going.
    Continue,
    /// Keep going, and call [`Connection::on_written`] once everything queued so far has
    /// been written to the socket. If the connection ends first, `on_close` comes instead
    /// (with [`Ended::Io`] or [`Ended::SlowConsumer`] when the write failed or stalled), and
    /// then not all of it was written. Until then an EOF from the peer does not end the
    /// connection: the handler decides after the write.
    AwaitWrite,
    /// Replace this connection's handler (after an upgrade) and feed it `read`, bytes
    /// that arrived past what the old handler consumed.
    Upgrade(Box<dyn Connection>, Vec<u8>),
    /// End the connection: send what is queued (the queue's close frame last), then, with
    /// `linger`, half-close and read until the peer closes too (so it reads everything
    /// rather than a reset), else shut the socket at once.
    Close {
        /// Wait for the peer's FIN (bounded).
        linger: bool,
    },
    /// Pass the socket to shard `shard` (the Engine.IO session it names lives there), where
    /// it starts over at the front (endpoint 0), as if accepted there, with the bytes read
    /// so far.
    Handoff {
        /// The shard.
        shard: ShardId,
        /// Everything read from the socket so far.
        read: Vec<u8>,
    },
}

/// A connection's protocol state, driven by the runtime. Every call gets a [`Cx`] and
/// returns what to do next.
pub trait Connection {
    /// The connection starts (after accept, a handoff or an upgrade): set the first
    /// deadline, queue a greeting.
    fn on_open(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Continue
    }

    /// Bytes arrived.
    fn on_data(&mut self, cx: &mut Cx<'_>, data: &[u8]) -> Step;

    /// The deadline set with [`Cx::set_deadline`] has passed.
    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Step;

    /// A queue this connection waits on (see [`Shard::wake_on`]) has something.
    fn on_wake(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Continue
    }

    /// Everything queued before a [`Step::AwaitWrite`] has been written to the socket.
    fn on_written(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Continue
    }

    /// The peer sent its FIN (or the socket failed); no more data will come.
    fn on_eof(&mut self, cx: &mut Cx<'_>) -> Step;

    /// The server is shutting down: say goodbye (the runtime waits `shutdown_grace_ms`).
    fn on_shutdown(&mut self, cx: &mut Cx<'_>) -> Step;

    /// The connection has ended; release what it holds. Called once, last.
    fn on_close(&mut self, cx: &mut Cx<'_>, why: Ended);
}

/// Something registered with the runtime: the HTTP front (id 0), which opens every
/// connection, accepted or handed over by another shard; other endpoints keep timers.
pub trait Endpoint {
    /// A handler for a new socket, asked of the front only; the runtime then calls its
    /// `on_open`, and `on_data` with any bytes already read from the socket (by another
    /// shard, before a handoff).
    fn open(&self, _shard: &Rc<Shard>) -> Option<Box<dyn Connection>> {
        None
    }

    /// What a socket refused at accept (past `max_connections` or
    /// `max_connections_per_ip`) is sent before it is closed, asked of the front only (the
    /// runtime knows no protocol; the HTTP front answers `503`). `None`: closed silently.
    fn refusal(&self) -> Option<Bytes> {
        None
    }

    /// A timer set with [`Shard::set_timer`] came due.
    fn on_timer(&self, _shard: &Rc<Shard>, _key: u64, _now: Instant) {}

    /// The server is shutting down (after every connection was told).
    fn on_shutdown(&self, _shard: &Rc<Shard>) {}
}

/// Builds the endpoints of one shard, on that shard's thread; index = [`EndpointId`].
pub type EndpointFactory = dyn Fn(&Rc<Shard>) -> Vec<Rc<dyn Endpoint>> + Send + Sync;

#[cfg(test)]
mod tests {
    use super::*;

    /// A plausible clock: 2026 in microseconds.
    const NOW: u64 = 1_780_000_000_000_000;

    #[test]
    fn player_ids_increase_when_the_clock_stalls_or_steps_back() {
        let ids = PlayerIds::new(3);
        let a = ids.next(NOW);
        let b = ids.next(NOW);
        let c = ids.next(NOW - 5_000_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(ids.next(NOW + 1_000_000) > c);
        assert!([a, b, c].iter().all(|&id| PlayerIds::shard_of(id) == 3));
    }

    #[test]
    fn a_restarted_shard_gives_ids_above_every_earlier_one() {
        // The first process gives a burst of ids faster than its clock, then stops.
        let first = PlayerIds::new(0);
        let earlier: Vec<PlayerId> = (0..1000).map(|_| first.next(NOW)).collect();
        // Its successor starts 10 ms later (a restart takes longer) with a fresh count.
        let second = PlayerIds::new(0);
        let later = second.next(NOW + 10_000);
        assert!(earlier.iter().all(|&id| id < later));
        assert_ne!(later, 1, "ids no longer restart from 1");
    }

    #[test]
    fn shards_give_distinct_ids_at_the_same_instant() {
        let ids: Vec<PlayerId> = (0..MAX_SHARDS)
            .map(|shard| PlayerIds::new(shard).next(NOW))
            .collect();
        for (shard, &id) in ids.iter().enumerate() {
            assert_eq!(PlayerIds::shard_of(id), shard);
            assert_ne!(id, 0);
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), MAX_SHARDS);
    }

    #[test]
    fn the_clock_before_the_epoch_reads_as_zero() {
        assert_eq!(
            unix_micros(UNIX_EPOCH - std::time::Duration::from_secs(1)),
            0
        );
        assert_eq!(
            unix_micros(UNIX_EPOCH + std::time::Duration::from_micros(7)),
            7
        );
    }
}
