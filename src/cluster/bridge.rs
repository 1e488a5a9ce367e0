//! The cluster bridge: one thread per node between the shards and Redis pub/sub, carrying
//! rooms across nodes (`relay/nodes.rs` is the rooms' side).
//!
//! To the shards the bridge is one more end of the mesh (its id is the number of shards):
//! rooms' homes send it what to publish and which rooms to follow over the same lock-free
//! queues and doorbells as between shards, and it hands each room's home what the other
//! nodes published. It runs a Tokio runtime of its own with three tasks, so that no shard
//! ever waits on Redis:
//!
//! - the **publisher** sends envelopes ([`super::envelope`]) on one connection, in order, in
//!   pipelines of what has queued up meanwhile: one `PUBLISH` per broadcast, on the room's
//!   channel `corelay:room:{<room>}`;
//! - the **follower** holds the subscriber connection: it subscribes to a room's channel
//!   when the room gains its first member on this node and unsubscribes when it loses its
//!   last (interest routing), then publishes a hello so that the other nodes say who they
//!   have in the room. When the connection drops it connects again with a backoff,
//!   subscribes to every followed room and says hello again;
//! - the **loop** moves messages between the mesh and those two, drops the node's own
//!   publications (Redis sends them back), and tells the shards when a node's lease ends.
//!
//! Backpressure: the loop takes from the shards only what the publisher's queue has room
//! for, so a slow Redis slows the shards' mesh (which stops reading clients past its
//! backlog) rather than growing memory. While Redis is unreachable the publisher drops what
//! it is given (counted), so that the node's own rooms go on at full speed.
//!
//! **History on** (`[resume]`): a room's broadcasts are not published but appended to the
//! room's stream `corelay:history:{<room>}` by a script ([`APPEND`]) that numbers each one
//! above the stream's last, trims the stream, and publishes it numbered
//! ([`envelope::NUMBERED`]), all in one step: Redis's order is the room's order on every
//! node, and a number names the same message everywhere. Every node, the publishing one
//! included, delivers a broadcast when it hears it back, so the loop hands the home its own
//! broadcasts back by token ([`MeshMsg::Appended`]). The loop keeps the last number heard
//! per room and drops anything not above it. After the follower subscribed to a room again
//! (Redis came back), the loop reads what the stream holds past that number before it
//! takes anything newer, so the room's members here miss nothing that Redis numbered
//! meanwhile. Appends wait for the room's subscription (or their echo would be lost); while
//! Redis is away they fail at once and the home numbers them itself.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::envelope::{self, Content, Envelope};
use super::queues::{self, QueuesPort};
use super::sessions::{self, SessionOp};
use super::{ClusterStatus, Target};
use crate::matchmaking::MatchmakingConfig;
use crate::relay::{home_shard, Broadcast, ClusterMsg, MeshMsg, NOBODY};
use crate::shard::mesh::{Mesh, ShardMsg};

/// The Redis channel of room key `room`. The braces make the room name the hash tag, so
/// that on Redis Cluster a room's channel (and later its stream) live on one shard.
pub fn channel(room: &str) -> String {
    format!("corelay:room:{{{room}}}")
}

/// The Redis stream of room key `room`'s history (history on), in its channel's slot.
pub fn history(room: &str) -> String {
    format!("corelay:history:{{{room}}}")
}

/// The script that appends a broadcast to its room's stream and publishes it, numbered.
///
/// `KEYS[1]` the stream; `ARGV`: the channel, the token and envelope
/// ([`envelope::for_stream`]), the least number to give minus one (the home's last: its
/// numbers never go back, even into a stream Redis lost), the stream's length bound, its
/// time to live in ms, and `PUBLISH` or `SPUBLISH`. The entry's id is `<number>-1`, so
/// that a replay reads from a number with `XRANGE`. Returns the number.
pub const APPEND: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = tonumber(ARGV[3]) + 1
if last[1] then
  local at = tonumber(string.match(last[1][1], '^(%d+)'))
  if at >= n then n = at + 1 end
end
local m = string.char(2) .. struct.pack('<I4I4', n % 4294967296, math.floor(n / 4294967296)) .. ARGV[2]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], string.format('%.0f', n) .. '-1', 'm', m)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[6], ARGV[1], m)
return n
";

/// How much of each room's history its stream keeps (history on): `[resume]`'s message
/// bound, and its window as the stream's time to live once the room falls silent.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Entries kept, about (`MAXLEN ~`).
    pub messages: usize,
    /// The stream goes this long after the room's last message.
    pub ttl: Duration,
}

/// The room key of a channel named by [`channel`].
pub fn room_of(channel: &[u8]) -> Option<String> {
    let key = channel
        .strip_prefix(b"corelay:room:{")?
        .strip_suffix(b"}")?;
    String::from_utf8(key.to_vec()).ok()
}

/// Envelopes waiting for the publisher, at most: past it the loop stops taking from the
/// shards (whose mesh backlog then holds their clients back).
const PUBLISH_QUEUE: usize = 16_384;

/// Most envelopes in one pipeline.
const PIPELINE: usize = 512;

/// Messages heard from Redis waiting for the loop.
const HEARD_QUEUE: usize = 16_384;

/// Longest wait between two tries to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Longest a connect or a round trip may take before Redis counts as unreachable.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the loop looks at the live nodes when nothing else wakes it.
const TICK: Duration = Duration::from_millis(200);

/// The bridge of a node, running until [`Bridge::stop`].
#[derive(Debug)]
pub struct Bridge {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    bell: Arc<crate::shard::mesh::Doorbell>,
}

impl Bridge {
    /// Starts the bridge of node `node` (its incarnation) with `shards` shards, on `mesh`
    /// (its end of the shards' mesh), publishing and following on `url`. A node whose
    /// lease is out of the live list for `lease` (`[cluster] lease_ms`) is gone. With
    /// `history`, rooms' broadcasts go through their streams. With `matchmaking`, the
    /// queues are the cluster's and run here too ([`super::queues`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        url: &str,
        cluster: bool,
        node: u64,
        shards: usize,
        lease: Duration,
        history: Option<StreamLimits>,
        mesh: Mesh,
        status: Arc<ClusterStatus>,
        matchmaking: Option<MatchmakingConfig>,
    ) -> std::io::Result<Bridge> {
        let target = Target::open(url, cluster).map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bell = Arc::clone(mesh.doorbell());
        let stopping = Arc::clone(&stop);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("corelay-bridge".into())
            .spawn(move || {
                let bridge = Loop {
                    node,
                    shards,
                    lease,
                    history,
                    streams: HashMap::new(),
                    following: false,
                    io: None,
                    mesh,
                    status,
                    stop: stopping,
                    matchmaking,
                    queues: None,
                };
                runtime.block_on(bridge.run(target));
            })?;
        Ok(Bridge {
            thread: Some(thread),
            stop,
            bell,
        })
    }

    /// The shards have stopped: publishes what they left (for at most 2 s)
    /// and ends.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        self.bell.ring_always();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bridge's doorbell, for Tokio to watch its eventfd (which it keeps open).
struct BellFd(Arc<crate::shard::mesh::Doorbell>);

impl AsRawFd for BellFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}

struct Loop {
    node: u64,
    shards: usize,
    lease: Duration,
    history: Option<StreamLimits>,
    /// The followed rooms' streams (history on).
    streams: HashMap<String, Followed>,
    /// The follower holds a connection (it said `Subscribed` since its last `Down`).
    following: bool,
    /// Where stream reads go, and what they answer on (set by `run`).
    io: Option<Io>,
    mesh: Mesh,
    status: Arc<ClusterStatus>,
    stop: Arc<AtomicBool>,
    /// The cluster's matchmaking queues, started with the loop.
    matchmaking: Option<MatchmakingConfig>,
    queues: Option<QueuesPort>,
}

/// What the publisher sends: a publication, or (history on) an append to the room's stream.
#[derive(Debug)]
struct Out {
    room: String,
    payload: Vec<u8>,
    /// An append's token and floor ([`APPEND`]).
    append: Option<(u64, u64)>,
}

/// The loop's handles on Redis besides its queues: for stream reads and session records.
struct Io {
    target: Target,
    heard: mpsc::Sender<Heard>,
    sessions: mpsc::UnboundedSender<SessionOp>,
}

/// What the follower (or a read of a stream) tells the loop.
#[derive(Debug)]
enum Heard {
    Msg(redis::Msg),
    /// The room's channel is subscribed (for the first time, or again).
    Subscribed(String),
    /// The subscriber connection is gone: nothing is followed until `Subscribed` again.
    Down,
    /// What the room's stream holds past the number the loop asked from (history on), for
    /// the read of that generation.
    Filled(String, u64, Vec<Bytes>),
    /// A read for a member's replay: what the room's stream holds past its number (`None`:
    /// the read failed).
    Read(String, Reading, Option<Vec<Bytes>>),
}

/// A member's replay that waits for a read of its room's stream.
#[derive(Debug, Clone, Copy)]
struct Reading {
    player: crate::relay::PlayerId,
    shard: usize,
    after: u64,
}

/// A followed room's stream, as the loop sees it (history on).
#[derive(Debug, Default)]
struct Followed {
    /// Subscribed, and caught up with the stream: appends go out.
    up: bool,
    /// The last number heard.
    last: u64,
    /// Appends waiting for the subscription.
    held: Vec<Out>,
    /// Reading the stream after a resubscription: what is heard meanwhile waits here.
    filling: Option<Vec<Bytes>>,
    /// The generation of the last read started; an older one's answer is stale.
    fill: u64,
    /// Replays that wait for the room to be caught up before their read.
    reads: Vec<Reading>,
}

impl Loop {
    async fn run(mut self, target: Target) {
        let watched = BellFd(Arc::clone(self.mesh.doorbell()));
        // SAFETY: the eventfd belongs to the doorbell the wrapper holds, so it stays open
        // and the same for as long as the `AsyncFd` lives, and `as_raw_fd` always names it.
        let bell = match unsafe { AsyncFd::register_with_interest(watched, Interest::READABLE) } {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cluster: the bridge cannot watch its doorbell");
                return;
            }
        };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (follow_tx, follow_rx) = mpsc::unbounded_channel();
        let (heard_tx, mut heard_rx) = mpsc::channel(HEARD_QUEUE);
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel();
        let (sessions_tx, sessions_rx) = mpsc::unbounded_channel();
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<(usize, MeshMsg)>();
        self.io = Some(Io {
            target: target.clone(),
            heard: heard_tx.clone(),
            sessions: sessions_tx,
        });
        let sessions = self.history.map(|limits| {
            tokio::spawn(sessions::keep(
                target.clone(),
                self.node,
                self.lease + limits.ttl,
                sessions_rx,
                answers_tx,
                Arc::clone(&self.status),
            ))
        });
        let publisher = tokio::spawn(publish(
            target.clone(),
            publish_rx,
            failed_tx,
            self.history,
            Arc::clone(&self.status),
        ));
        self.queues = self.matchmaking.take().map(|config| {
            QueuesPort::start(
                &target,
                self.node,
                self.shards,
                self.lease,
                &config,
                Arc::clone(&self.status),
            )
        });
        let follower = tokio::spawn(follow(
            target.clone(),
            self.node,
            follow_rx,
            heard_tx.clone(),
            publish_tx.clone(),
            Arc::clone(&self.status),
        ));
        let mut inbound = Vec::new();
        let mut seen: HashMap<u64, Instant> = HashMap::new();
        let mut next_look = Instant::now();
        let mut next_refresh = Instant::now();
        loop {
            let room = publish_tx.capacity();
            if room > 0 {
                self.mesh.receive(&mut inbound, room.div_ceil(self.shards));
            }
            for (_, msg) in inbound.drain(..) {
                if let ShardMsg::Relay(msg) = msg {
                    self.carry(msg, &publish_tx, &follow_tx);
                }
            }
            while let Ok((room, token)) = failed_rx.try_recv() {
                self.not_appended(&room, token);
            }
            while let Ok((shard, msg)) = answers_rx.try_recv() {
                self.mesh.send(shard, ShardMsg::Relay(msg));
            }
            while !self.mesh.congested() {
                match heard_rx.try_recv() {
                    Ok(heard) => self.hear(heard, &publish_tx),
                    Err(_) => break,
                }
            }
            while let Some((shard, msg)) = self.queues.as_mut().and_then(QueuesPort::try_next) {
                self.mesh.send(shard, ShardMsg::Relay(msg));
            }
            if Instant::now() >= next_look {
                self.look_at_nodes(&mut seen);
                next_look = Instant::now() + TICK;
                if self.history.is_some() && Instant::now() >= next_refresh {
                    self.session_op(SessionOp::Refresh);
                    next_refresh = Instant::now() + self.lease / 2;
                }
            }
            self.mesh.flush();
            if self.stop.load(Relaxed) {
                break;
            }
            let doorbell = Arc::clone(self.mesh.doorbell());
            doorbell.prepare_to_sleep();
            let hearing = !self.mesh.congested() && !heard_rx.is_empty();
            let answering = self.queues.as_ref().is_some_and(QueuesPort::has_next);
            if self.mesh.has_inbound()
                || hearing
                || answering
                || !failed_rx.is_empty()
                || !answers_rx.is_empty()
                || self.mesh.backlog_can_move()
            {
                doorbell.woke();
                continue;
            }
            let congested = self.mesh.congested();
            tokio::select! {
                ready = bell.readable() => {
                    if let Ok(mut ready) = ready {
                        let mut count = [0u8; 8];
                        // SAFETY: reading 8 bytes into a live buffer from the doorbell's
                        // eventfd, which outlives this loop.
                        unsafe { libc::read(bell.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                        ready.clear_ready();
                    }
                }
                heard = heard_rx.recv(), if !congested => {
                    if let Some(heard) = heard {
                        self.hear(heard, &publish_tx);
                    }
                }
                failed = failed_rx.recv() => {
                    if let Some((room, token)) = failed {
                        self.not_appended(&room, token);
                    }
                }
                answer = answers_rx.recv(), if self.history.is_some() => {
                    if let Some((shard, msg)) = answer {
                        self.mesh.send(shard, ShardMsg::Relay(msg));
                    }
                }
                (shard, msg) = queues::next_for_shards(&mut self.queues) => {
                    self.mesh.send(shard, ShardMsg::Relay(msg));
                }
                () = tokio::time::sleep(TICK) => {}
            }
            doorbell.woke();
        }
        // Stopping: what the shards left goes out (the publisher ends once its queue is
        // empty), within bounds.
        follower.abort();
        if let Some(sessions) = sessions {
            sessions.abort();
        }
        drop(publish_tx);
        let _ = tokio::time::timeout(REDIS_TIMEOUT, publisher).await;
        if let Some(queues) = self.queues.take() {
            queues.finish(REDIS_TIMEOUT).await;
        }
    }

    /// A message of a shard for the bridge.
    fn carry(
        &mut self,
        msg: MeshMsg,
        publish: &mpsc::Sender<Out>,
        follow: &mpsc::UnboundedSender<(String, bool)>,
    ) {
        let out = match msg {
            MeshMsg::Publish {
                bcast,
                members,
                joined,
            } => envelope::encode(self.node, members, joined, &bcast.body).map(|payload| Out {
                room: bcast.room.clone(),
                payload,
                append: None,
            }),
            MeshMsg::Append {
                bcast,
                members,
                token,
                floor,
                joined,
            } => {
                let Some(envelope) = envelope::encode(self.node, members, joined, &bcast.body)
                else {
                    self.not_appended(&bcast.room, token);
                    return;
                };
                let out = Out {
                    room: bcast.room.clone(),
                    payload: envelope::for_stream(token, &envelope),
                    append: Some((token, floor)),
                };
                self.append(out, publish);
                return;
            }
            MeshMsg::Cluster(msg) => match *msg {
                ClusterMsg::Interest { room, on } => {
                    if self.history.is_some() {
                        if on {
                            self.streams.entry(room.clone()).or_default();
                        } else if let Some(gone) = self.streams.remove(&room) {
                            for out in gone.held {
                                self.fail(&out);
                            }
                        }
                    }
                    let _ = follow.send((room, on));
                    None
                }
                ClusterMsg::Presence { room, presence, .. } => Some(Out {
                    payload: envelope::encode_presence(self.node, &presence),
                    room,
                    append: None,
                }),
                ClusterMsg::Action { room, action, .. } => Some(Out {
                    payload: envelope::encode_action(self.node, &action),
                    room,
                    append: None,
                }),
                ClusterMsg::SaveSession { player, record } => {
                    let json = record.and_then(|r| serde_json::to_string(&r).ok());
                    self.session_op(SessionOp::Save(player, json));
                    None
                }
                ClusterMsg::Claim {
                    player,
                    secret,
                    shard,
                } => {
                    match crate::relay::node_of_secret(&secret).filter(|&n| n != self.node) {
                        Some(from) => self.session_op(SessionOp::Claim {
                            player,
                            secret,
                            from,
                            shard,
                        }),
                        None => self.mesh.send(
                            shard,
                            ShardMsg::Relay(MeshMsg::Cluster(Box::new(ClusterMsg::Claimed {
                                player,
                                record: None,
                            }))),
                        ),
                    }
                    None
                }
                ClusterMsg::ReadStream {
                    room,
                    player,
                    shard,
                    after,
                } => {
                    let reading = Reading {
                        player,
                        shard,
                        after,
                    };
                    match self.streams.get_mut(&room) {
                        Some(f) if f.up => self.read(&room, reading),
                        Some(f) if self.following => f.reads.push(reading),
                        _ => self.stream_read(room, reading, None),
                    }
                    None
                }
                _ => None,
            },
            MeshMsg::Queues(msg) => {
                if let Some(queues) = &self.queues {
                    queues.carry(*msg);
                }
                None
            }
            _ => None,
        };
        if let Some(out) = out {
            // The loop took only what the queue has room for.
            if publish.try_send(out).is_err() {
                self.status.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// An append goes out once its room is subscribed; it fails at once while Redis is
    /// away, so that the home numbers it itself. A room heard before goes on appending
    /// while its subscription is being made again: the echoes lost meanwhile come back
    /// with the read of the stream that follows ([`Heard::Filled`]), and if Redis is
    /// really gone the publisher fails them.
    fn append(&mut self, out: Out, publish: &mpsc::Sender<Out>) {
        let following = self.following;
        match self.streams.get_mut(&out.room) {
            Some(f) if f.up || f.last > 0 => {
                if let Err(e) = publish.try_send(out) {
                    self.fail(&e.into_inner());
                }
            }
            Some(f) if following => f.held.push(out),
            _ => self.fail(&out),
        }
    }

    /// Tells an append's home that it did not reach the stream.
    fn fail(&mut self, out: &Out) {
        if let Some((token, _)) = out.append {
            self.not_appended(&out.room, token);
        } else {
            self.status.dropped.fetch_add(1, Relaxed);
        }
    }

    fn not_appended(&mut self, room: &str, token: u64) {
        self.status.dropped.fetch_add(1, Relaxed);
        let home = home_shard(room, self.shards);
        self.mesh
            .send(home, ShardMsg::Relay(MeshMsg::Appended { token, seq: 0 }));
    }

    /// The room is subscribed and caught up: its held appends go out.
    fn release(&mut self, room: &str, publish: &mpsc::Sender<Out>) {
        let Some(f) = self.streams.get_mut(room) else {
            return;
        };
        f.up = true;
        let held = std::mem::take(&mut f.held);
        let reads = std::mem::take(&mut f.reads);
        for out in held {
            if let Err(e) = publish.try_send(out) {
                self.fail(&e.into_inner());
            }
        }
        for reading in reads {
            self.read(room, reading);
        }
    }

    /// Reads what `room`'s stream holds for a member's replay; the answer comes back as
    /// [`Heard::Read`].
    fn read(&self, room: &str, reading: Reading) {
        let (Some(io), Some(limits)) = (&self.io, self.history) else {
            return;
        };
        let (target, heard, room) = (io.target.clone(), io.heard.clone(), room.to_owned());
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                REDIS_TIMEOUT,
                read_stream(&target, &room, reading.after, limits.messages),
            )
            .await;
            let entries = match read {
                Ok(Ok(entries)) => Some(entries),
                _ => None,
            };
            let _ = heard.send(Heard::Read(room, reading, entries)).await;
        });
    }

    fn session_op(&self, op: SessionOp) {
        if let Some(io) = &self.io {
            let _ = io.sessions.send(op);
        }
    }

    /// A member's replay read: the broadcasts, decoded, to the room's home.
    fn stream_read(&mut self, room: String, reading: Reading, entries: Option<Vec<Bytes>>) {
        let read = entries.is_some();
        let now = Instant::now();
        let entries = entries
            .unwrap_or_default()
            .into_iter()
            .filter_map(|bytes| {
                let (seq, _, inner) = envelope::numbered(&bytes)?;
                let Envelope {
                    content: Content::Broadcast(body),
                    ..
                } = envelope::decode(&inner)?
                else {
                    return None;
                };
                let mut bcast = Broadcast::new(room.clone(), NOBODY, body, now);
                bcast.seq = seq;
                Some(bcast)
            })
            .collect();
        let home = home_shard(&room, self.shards);
        let msg = ClusterMsg::StreamRead {
            room,
            player: reading.player,
            shard: reading.shard,
            after: reading.after,
            read,
            entries,
        };
        self.mesh
            .send(home, ShardMsg::Relay(MeshMsg::Cluster(Box::new(msg))));
    }

    /// What the follower (or a stream's read) says.
    fn hear(&mut self, heard: Heard, publish: &mpsc::Sender<Out>) {
        match heard {
            Heard::Msg(msg) => self.heard(&msg),
            Heard::Subscribed(room) => {
                self.following = true;
                let (Some(limits), Some(f)) = (self.history, self.streams.get_mut(&room)) else {
                    return;
                };
                if f.last == 0 && f.filling.is_none() {
                    // Followed for the first time: nothing heard here yet to catch up on.
                    self.release(&room, publish);
                    return;
                }
                // Subscribed again: read the stream past the last number heard before
                // taking anything newer (what is heard meanwhile waits). A read still on
                // its way from an earlier subscription is superseded.
                f.filling.get_or_insert_default();
                f.fill += 1;
                let (fill, after) = (f.fill, f.last);
                let Some(io) = &self.io else {
                    return;
                };
                let (target, heard) = (io.target.clone(), io.heard.clone());
                tokio::spawn(async move {
                    let read = tokio::time::timeout(
                        REDIS_TIMEOUT,
                        read_stream(&target, &room, after, limits.messages),
                    )
                    .await;
                    let entries = match read {
                        Ok(Ok(entries)) => entries,
                        Ok(Err(e)) => {
                            tracing::warn!(%room, error = %e, "cluster: a room's stream could not be read; its members may miss messages");
                            Vec::new()
                        }
                        Err(_) => Vec::new(),
                    };
                    let _ = heard.send(Heard::Filled(room, fill, entries)).await;
                });
            }
            Heard::Read(room, reading, entries) => self.stream_read(room, reading, entries),
            Heard::Filled(room, fill, entries) => {
                let current = self
                    .streams
                    .get(&room)
                    .is_some_and(|f| f.fill == fill && f.filling.is_some());
                if !current {
                    return;
                }
                for bytes in entries {
                    self.heard_numbered(&room, bytes);
                }
                let waiting = self
                    .streams
                    .get_mut(&room)
                    .and_then(|f| f.filling.take())
                    .unwrap_or_default();
                for bytes in waiting {
                    self.heard_numbered(&room, bytes);
                }
                if self.following {
                    self.release(&room, publish);
                }
            }
            Heard::Down => {
                self.following = false;
                let rooms: Vec<String> = self.streams.keys().cloned().collect();
                for room in rooms {
                    let Some(f) = self.streams.get_mut(&room) else {
                        continue;
                    };
                    // What waits for a read stays waiting: the read after the next
                    // subscription comes first.
                    f.up = false;
                    let held = std::mem::take(&mut f.held);
                    let reads = std::mem::take(&mut f.reads);
                    for out in held {
                        self.fail(&out);
                    }
                    for reading in reads {
                        self.stream_read(room.clone(), reading, None);
                    }
                }
            }
        }
    }

    /// A numbered broadcast of `room` (history on): dropped unless above the last number
    /// heard; this node's own goes back to its home by token, another's is delivered.
    fn heard_numbered(&mut self, room: &str, bytes: Bytes) {
        let Some((seq, token, inner)) = envelope::numbered(&bytes) else {
            self.status.refused.fetch_add(1, Relaxed);
            return;
        };
        let Some(f) = self.streams.get_mut(room) else {
            // Followed no more.
            return;
        };
        if seq <= f.last {
            return;
        }
        f.last = seq;
        let home = home_shard(room, self.shards);
        if envelope::node_of(&inner) == Some(self.node) {
            self.mesh
                .send(home, ShardMsg::Relay(MeshMsg::Appended { token, seq }));
            return;
        }
        self.pass_on(room.to_owned(), &inner, seq);
    }

    /// A message heard on a room's channel: to the room's home, unless it is this node's
    /// own.
    fn heard(&mut self, msg: &redis::Msg) {
        let name = msg.get_channel_name().as_bytes();
        if sessions::node_of_channel(name) == Some(self.node) {
            // One of this node's sessions was restored on another node.
            if let Ok(player) = <[u8; 8]>::try_from(msg.get_payload_bytes()) {
                let player = u64::from_le_bytes(player);
                let shard = crate::shard::PlayerIds::shard_of(player).min(self.shards - 1);
                let taken = MeshMsg::Cluster(Box::new(ClusterMsg::Taken(player)));
                self.mesh.send(shard, ShardMsg::Relay(taken));
            }
            return;
        }
        let Some(room) = room_of(name) else {
            return;
        };
        let bytes = msg.get_payload_bytes();
        if bytes.first() == Some(&envelope::NUMBERED) {
            let bytes = Bytes::copy_from_slice(bytes);
            match self.streams.get_mut(&room).and_then(|f| f.filling.as_mut()) {
                Some(waiting) => waiting.push(bytes),
                None => self.heard_numbered(&room, bytes),
            }
            return;
        }
        if envelope::node_of(bytes) == Some(self.node) {
            return;
        }
        self.pass_on(room, &Bytes::copy_from_slice(bytes), 0);
    }

    /// Another node's envelope `bytes` on `room`'s channel, to the room's home; `seq` is
    /// its number in the room's stream (0: not numbered).
    fn pass_on(&mut self, room: String, bytes: &Bytes, seq: u64) {
        let Some(Envelope {
            node,
            members,
            joined,
            content,
        }) = envelope::decode(bytes)
        else {
            self.status.refused.fetch_add(1, Relaxed);
            tracing::warn!(%room, len = bytes.len(), "cluster: not an envelope, dropped");
            return;
        };
        self.status.received.fetch_add(1, Relaxed);
        let home = home_shard(&room, self.shards);
        let msg = match content {
            Content::Broadcast(body) => {
                // Nobody here is excluded: the sender is on the publishing node.
                let mut bcast = Broadcast::new(room, NOBODY, body, Instant::now());
                bcast.seq = seq;
                MeshMsg::FromNode {
                    node,
                    members,
                    joined,
                    bcast: Box::new(bcast),
                }
            }
            Content::Hello => MeshMsg::Cluster(Box::new(ClusterMsg::Hello { room })),
            Content::Presence(presence) => MeshMsg::Cluster(Box::new(ClusterMsg::Presence {
                room,
                node,
                presence,
            })),
            Content::Action(action) => {
                MeshMsg::Cluster(Box::new(ClusterMsg::Action { room, node, action }))
            }
        };
        self.mesh.send(home, ShardMsg::Relay(msg));
    }

    /// Tells every shard of the nodes whose lease has been out of the live list for
    /// `lease`. Half a lease would do for a node killed; a whole one also spares nodes
    /// that are merely late to write their lease again into a Redis that restarted empty.
    fn look_at_nodes(&mut self, seen: &mut HashMap<u64, Instant>) {
        if !self.status.redis_up() {
            return;
        }
        let now = Instant::now();
        for info in self.status.listed() {
            if info.incarnation != 0 && info.incarnation != self.node {
                seen.insert(info.incarnation, now);
            }
        }
        let gone: Vec<u64> = seen
            .iter()
            .filter(|(_, &at)| now.duration_since(at) > self.lease)
            .map(|(&node, _)| node)
            .collect();
        for node in gone {
            seen.remove(&node);
            self.status.nodes_gone.fetch_add(1, Relaxed);
            tracing::info!(
                node = format_args!("{node:016x}"),
                "cluster: a node is gone; its members leave their rooms"
            );
            for shard in 0..self.shards {
                self.mesh.send(
                    shard,
                    ShardMsg::Relay(MeshMsg::Cluster(Box::new(ClusterMsg::NodeGone(node)))),
                );
            }
        }
    }
}

/// A connection to publish on.
pub(super) enum Publishing {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Publishing {
    pub(super) async fn open(target: &Target) -> redis::RedisResult<Publishing> {
        match target {
            Target::Single(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Publishing::Single),
            Target::Cluster { client, .. } => {
                client.get_async_connection().await.map(Publishing::Cluster)
            }
        }
    }

    pub(super) async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Publishing::Single(con) => cmd.query_async(con).await,
            Publishing::Cluster(con) => cmd.query_async(con).await,
        }
    }

    /// Runs `pipe` (its keys in one slot on a Redis Cluster).
    pub(super) async fn pipeline(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Publishing::Single(con) => pipe.query_async(con).await,
            Publishing::Cluster(con) => pipe.query_async(con).await,
        }
    }

    /// On a Redis Cluster: channels are sharded (`SPUBLISH`).
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Publishing::Cluster(_))
    }

    /// Adds `out` to `pipe`: a publication, or an append to its room's stream by the
    /// loaded [`APPEND`] script.
    fn add(pipe: &mut redis::Pipeline, out: &Out, stream: Option<&Appending>, sharded: bool) {
        let publish = if sharded { "SPUBLISH" } else { "PUBLISH" };
        match (out.append, stream) {
            (Some((_, floor)), Some(a)) => pipe
                .cmd("EVALSHA")
                .arg(&a.sha)
                .arg(1)
                .arg(history(&out.room))
                .arg(channel(&out.room))
                .arg(&out.payload)
                .arg(floor)
                .arg(a.limits.messages)
                .arg(a.limits.ttl.as_millis() as u64)
                .arg(publish),
            _ => pipe.cmd(publish).arg(channel(&out.room)).arg(&out.payload),
        }
        .ignore();
    }

    /// Publishes `batch` in order per room: one pipeline on one server, or on a Redis
    /// Cluster one pipeline per room (a pipeline stays within a slot), all at once.
    async fn send(&mut self, batch: &[Out], stream: Option<&Appending>) -> redis::RedisResult<()> {
        match self {
            Publishing::Single(con) => {
                let mut pipe = redis::pipe();
                for out in batch {
                    Publishing::add(&mut pipe, out, stream, false);
                }
                pipe.query_async::<()>(con).await
            }
            Publishing::Cluster(con) => {
                let mut by_room: HashMap<&str, redis::Pipeline> = HashMap::new();
                for out in batch {
                    let pipe = by_room.entry(&out.room).or_insert_with(redis::pipe);
                    Publishing::add(pipe, out, stream, true);
                }
                let mut sent = tokio::task::JoinSet::new();
                for (_, pipe) in by_room {
                    let mut con = con.clone();
                    sent.spawn(async move { pipe.query_async::<()>(&mut con).await });
                }
                let mut result = Ok(());
                while let Some(done) = sent.join_next().await {
                    if let Ok(Err(e)) = done {
                        result = Err(e);
                    }
                }
                result
            }
        }
    }
}

/// The [`APPEND`] script as the publisher runs it (history on).
struct Appending {
    sha: String,
    limits: StreamLimits,
}

/// Opens a connection to publish on and, with history on, loads [`APPEND`] (on every
/// master of a Redis Cluster).
async fn open_publishing(
    target: &Target,
    stream: Option<&Appending>,
) -> redis::RedisResult<Publishing> {
    let mut con = Publishing::open(target).await?;
    if stream.is_some() {
        con.query(redis::cmd("SCRIPT").arg("LOAD").arg(APPEND))
            .await?;
    }
    Ok(con)
}

/// The publisher: envelopes out in order, pipelined. An append that may not have reached
/// Redis goes back to the loop (`failed`) for its home to number it; if it did reach
/// Redis after all, its echo finds its token gone and is dropped.
async fn publish(
    target: Target,
    mut queue: mpsc::Receiver<Out>,
    failed: mpsc::UnboundedSender<(String, u64)>,
    history: Option<StreamLimits>,
    status: Arc<ClusterStatus>,
) {
    let stream = history.map(|limits| Appending {
        sha: sha1_hex(APPEND),
        limits,
    });
    let mut con: Option<Publishing> = None;
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut batch = Vec::with_capacity(PIPELINE);
    let fail = |batch: &[Out]| {
        let mut dropped = 0;
        for out in batch {
            match out.append {
                Some((token, _)) => {
                    let _ = failed.send((out.room.clone(), token));
                }
                None => dropped += 1,
            }
        }
        status.dropped.fetch_add(dropped, Relaxed);
    };
    while queue.recv_many(&mut batch, PIPELINE).await > 0 {
        if con.is_none() && Instant::now() >= retry_at {
            let opened = open_publishing(&target, stream.as_ref());
            match tokio::time::timeout(REDIS_TIMEOUT, opened).await {
                Ok(Ok(c)) => {
                    con = Some(c);
                    backoff = Duration::from_millis(100);
                }
                _ => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let Some(c) = con.as_mut() else {
            fail(&batch);
            batch.clear();
            continue;
        };
        match tokio::time::timeout(REDIS_TIMEOUT, c.send(&batch, stream.as_ref())).await {
            Ok(Ok(())) => {
                status.published.fetch_add(batch.len() as u64, Relaxed);
            }
            _ => {
                fail(&batch);
                con = None;
                retry_at = Instant::now() + backoff;
            }
        }
        batch.clear();
    }
}

/// The SHA-1 of `script` in hex, as `EVALSHA` names it.
fn sha1_hex(script: &str) -> String {
    redis::Script::new(script).get_hash().to_owned()
}

/// What room `room`'s stream holds after number `after`, at most `count` entries, oldest
/// first: each a numbered envelope ([`envelope::NUMBERED`]).
pub async fn read_stream(
    target: &Target,
    room: &str,
    after: u64,
    count: usize,
) -> redis::RedisResult<Vec<Bytes>> {
    let mut con = Publishing::open(target).await?;
    let answer = con
        .query(
            redis::cmd("XRANGE")
                .arg(history(room))
                .arg(format!("{}-0", after.saturating_add(1)))
                .arg("+")
                .arg("COUNT")
                .arg(count.max(1)),
        )
        .await?;
    Ok(stream_entries(answer))
}

/// The `m` fields of an `XRANGE` answer, in order; anything else is skipped.
fn stream_entries(answer: redis::Value) -> Vec<Bytes> {
    let redis::Value::Array(entries) = answer else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(mut parts) = entry else {
                return None;
            };
            let redis::Value::Array(fields) = parts.pop()? else {
                return None;
            };
            match fields.into_iter().nth(1)? {
                redis::Value::BulkString(b) => Some(Bytes::from(b)),
                _ => None,
            }
        })
        .collect()
}

/// A hello from node `node` on room `room`'s channel.
fn hello(node: u64, room: &str) -> Out {
    Out {
        room: room.to_owned(),
        payload: envelope::encode_hello(node),
        append: None,
    }
}

/// The follower on a Redis Cluster: sharded subscriptions (`SSUBSCRIBE`), each on the
/// master owning the room's slot. The client subscribes again by itself after a
/// reconnection or a slot's move, and every confirmation (ours or those) comes as a push:
/// the hello goes then.
async fn follow_sharded(
    seeds: Vec<String>,
    node: u64,
    mut interest: mpsc::UnboundedReceiver<(String, bool)>,
    heard: mpsc::Sender<Heard>,
    publish: mpsc::Sender<Out>,
    status: Arc<ClusterStatus>,
) {
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
    let client = redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .connection_timeout(REDIS_TIMEOUT)
        .response_timeout(REDIS_TIMEOUT)
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster: bad redis cluster seeds");
            return;
        }
    };
    let mut rooms: HashSet<String> = HashSet::new();
    let mut con: Option<redis::cluster_async::ClusterConnection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry = tokio::time::Instant::now();
    loop {
        if con.is_none() && tokio::time::Instant::now() >= retry {
            let made = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_connection()).await;
            if let Ok(Ok(mut c)) = made {
                let mut ok = c.ssubscribe(sessions::node_channel(node)).await.is_ok();
                for room in &rooms {
                    ok &= c.ssubscribe(channel(room)).await.is_ok();
                }
                if ok {
                    backoff = Duration::from_millis(100);
                    con = Some(c);
                    // The rooms' confirmations come as pushes; with none, the loop still
                    // learns that Redis is there.
                    if rooms.is_empty()
                        && heard.send(Heard::Subscribed(String::new())).await.is_err()
                    {
                        return;
                    }
                }
            }
            if con.is_none() {
                retry = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        status
            .subscriptions
            .store(if con.is_some() { rooms.len() as u64 } else { 0 }, Relaxed);
        tokio::select! {
            change = interest.recv() => {
                let Some((room, on)) = change else { return };
                let changed = if on { rooms.insert(room.clone()) } else { rooms.remove(&room) };
                if let (true, Some(c)) = (changed, con.as_mut()) {
                    let done = if on {
                        c.ssubscribe(channel(&room)).await
                    } else {
                        c.sunsubscribe(channel(&room)).await
                    };
                    if let Err(e) = done {
                        tracing::warn!(%room, error = %e, "cluster: a sharded subscription failed; connecting again");
                        con = None;
                        if heard.send(Heard::Down).await.is_err() {
                            return;
                        }
                    }
                }
            }
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    redis::PushKind::SSubscribe => {
                        let room = push.data.first().and_then(|c| match c {
                            redis::Value::BulkString(b) => room_of(b),
                            _ => None,
                        });
                        if let Some(room) = room.filter(|r| rooms.contains(r)) {
                            let _ = publish.send(hello(node, &room)).await;
                            if heard.send(Heard::Subscribed(room)).await.is_err() {
                                return;
                            }
                        }
                    }
                    redis::PushKind::SMessage => {
                        if let Some(msg) = redis::Msg::from_push_info(push) {
                            if heard.send(Heard::Msg(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    redis::PushKind::Disconnection if heard.send(Heard::Down).await.is_err() => {
                        return;
                    }
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(retry), if con.is_none() => {}
        }
    }
}

/// The follower: the subscriber connection, following the rooms with members here.
async fn follow(
    target: Target,
    node: u64,
    mut interest: mpsc::UnboundedReceiver<(String, bool)>,
    heard: mpsc::Sender<Heard>,
    publish: mpsc::Sender<Out>,
    status: Arc<ClusterStatus>,
) {
    let mut rooms: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut down = false;
    let client = match target {
        Target::Single(client) => client,
        Target::Cluster { seeds, .. } => {
            return follow_sharded(seeds, node, interest, heard, publish, status).await
        }
    };
    loop {
        status.subscriptions.store(0, Relaxed);
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            _ => {
                if !std::mem::replace(&mut down, true) && heard.send(Heard::Down).await.is_err() {
                    return;
                }
                // Keep up with the rooms while Redis is away, then try again.
                let until = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                loop {
                    tokio::select! {
                        change = interest.recv() => match change {
                            Some((room, on)) => {
                                if on { rooms.insert(room); } else { rooms.remove(&room); }
                            }
                            None => return,
                        },
                        () = tokio::time::sleep_until(until) => break,
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        // Every followed room again (after a reconnect), with a hello for each: the other
        // nodes' members may have changed meanwhile.
        // And the node's own channel.
        let mut all: Vec<String> = rooms.iter().map(|r| channel(r)).collect();
        all.push(sessions::node_channel(node));
        let mut subscribed = true;
        for chunk in all.chunks(PIPELINE) {
            if sink.subscribe(chunk).await.is_err() {
                subscribed = false;
                break;
            }
        }
        if !subscribed {
            continue;
        }
        if !rooms.is_empty() {
            tracing::info!(rooms = rooms.len(), "cluster: following rooms again");
        }
        for room in &rooms {
            let _ = publish.send(hello(node, room)).await;
            if heard.send(Heard::Subscribed(room.clone())).await.is_err() {
                return;
            }
        }
        if rooms.is_empty() && heard.send(Heard::Subscribed(String::new())).await.is_err() {
            return;
        }
        status.subscriptions.store(rooms.len() as u64, Relaxed);
        loop {
            tokio::select! {
                change = interest.recv() => {
                    let Some((room, on)) = change else { return };
                    let ok = if on {
                        if rooms.insert(room.clone()) {
                            let ok = sink.subscribe(channel(&room)).await.is_ok();
                            if ok {
                                let _ = publish.send(hello(node, &room)).await;
                                if heard.send(Heard::Subscribed(room)).await.is_err() {
                                    return;
                                }
                            }
                            ok
                        } else {
                            true
                        }
                    } else if rooms.remove(&room) {
                        sink.unsubscribe(channel(&room)).await.is_ok()
                    } else {
                        true
                    };
                    status.subscriptions.store(rooms.len() as u64, Relaxed);
                    if !ok {
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => {
                        if heard.send(Heard::Msg(msg)).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        tracing::warn!("cluster: the subscriber connection dropped; connecting again");
        down = true;
        if heard.send(Heard::Down).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_its_room_as_the_hash_tag_and_back() {
        for room in ["arena-42", "/chat\0lobby", "x{y}"] {
            let c = channel(room);
            assert!(c.starts_with("corelay:room:{"));
            assert_eq!(room_of(c.as_bytes()).as_deref(), Some(room));
        }
        assert_eq!(room_of(b"corelay:node:x"), None);
    }
}
