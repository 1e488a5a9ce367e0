//! Rooms, membership and fan-out: one [`Relay`] per shard, sans-IO.
//!
//! Each room has one home shard ([`home_shard`]) that holds its member count as one entry per
//! shard, never per remote member. Every shard keeps the list of its own members of each
//! room. A message from a member is delivered at once to the other members on the sender's
//! shard and crosses to each other shard that has members exactly once (through the home
//! shard when the sender is elsewhere). Paths are fixed per (sender, receiver) pair and
//! every hop is FIFO, so each receiver sees one sender's messages in the order sent.
//!
//! The home shard decides every join, so that a room never grows past `max_room_members`
//! however many shards its joiners are on: a player becomes a member (and starts receiving
//! the room's messages) only once the home has counted it. What the player sends to the
//! room meanwhile is held and relayed then, in order; a refused join drops it.
//!
//! A message whose largest encoding exceeds a recipient's outbound budget is refused to its
//! sender before it reaches any outbox ([`Broadcast::max_frame_len`]): queued, it would
//! close every recipient at once as a slow consumer.
//!
//! With history on (`[resume]`, [`HistoryLimits`]) the room's home also numbers every
//! broadcast to the room (messages and notices alike) and keeps the last ones in a bounded
//! ring. Then a message from a member on another shard is not delivered locally first: it
//! goes to the home, which numbers it and sends it to every shard with members, its origin
//! included. So every member receives the room's messages in the order of their numbers (one
//! order for the whole room, whichever shards the senders are on), and a native session that
//! resumes ([`Relay::resume`]) can be given exactly the numbers it missed. The cost is one
//! mesh hop for members on the sender's shard when the room's home is another shard.
//!
//! A native session whose connection drops stays a member of its rooms for the window
//! ([`Relay::release`]): the rooms are told it is away, deliveries to it are skipped (the
//! ring keeps them), and when the window ends it leaves as a disconnected member would.
//!
//! The relay never touches a socket or an executor: it pushes frames into [`Outbox`]es and
//! collects [`MeshMsg`]s for the shard runtime to carry ([`Relay::drain_mesh`]).

mod admin;
mod admin_ui;
mod broadcast;
mod failover;
mod matching;
mod nodes;
mod outbox;
mod recovery;
mod rooms;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use admin::{
    AdminMember, AdminMsg, AdminRoom, AdminRoomHome, RoomsFilter, MAX_ROOMS_PAGE, MEMBERS_LISTED,
    ROOMS_PAGE,
};
pub use admin_ui::{
    iso8601, AdminCommand, AdminUiMsg, AdminUiShared, ListedSocket, DISCONNECT_TIMER, STATS_TIMER,
};
pub use broadcast::{
    native_frame, parse_sio_offset, room_key, room_tag, sc_error, sio_offset, sio_polling_text,
    sio_ws_frames, split_room_key, text_frame, Body, Broadcast, PlayerId, PlayerName, Reply, Wire,
    EVENT_ENVELOPE,
};
pub use failover::{node_of_secret, secret_hash, SessionRecord};
pub use matching::{
    ClusterMatch, MatchJoined, MatchRoom, MatchedPlayer, QueueRequest, QueuesMsg, TicketNews,
    TicketRequest,
};
use matching::{Held, Matching};
pub use nodes::{crosses, ClusterMsg, NOBODY};
pub use outbox::{Drained, Outbox, OutboxLimits, PushError, ReadyQueue};
pub use recovery::{
    parse_sio_pid, sio_pid, Moved, RecoverRequest, Recovery, RecoveryTicket, Waker,
};
use recovery::{Pending, SioLog};
use rooms::Listing;
pub use rooms::{
    new_code, normalize_code, ListFilter, ListedRoom, RoomOptions, CODE_PREFIX, LIST_PAGE,
    MAX_EMPTY_TTL_MS, MAX_LIST_PAGE,
};

use crate::auth::Identity;
use crate::hooks::{Hooks, Message};
use crate::proto::native::{ErrorCode, LeaveReason, ServerFrame};
use crate::stats::{add, new_latency_histogram, Refusal, ShardStats};

/// Index of a shard, 0..shards.
pub type ShardId = usize;

/// The home shard of a room: FNV-1a of its name, so every shard computes the same answer
/// without coordination (std's hasher is randomly seeded per process... and per thread).
pub fn home_shard(room: &str, shards: usize) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as ShardId
}

/// Whether `name` is a valid room or event name: 1..=`max` bytes, no control characters
/// (they separate namespaces in room keys and have no place in names).
pub fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

/// Limits the relay enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Longest room or event name, in bytes.
    pub max_name_len: usize,
    /// Most rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// Most members of one room (config `max_room_members`). Every member is told of every
    /// join and leave, so this bounds what one small join frame makes the server send.
    pub max_room_members: usize,
    /// Largest message accepted, in bytes of its largest encoding
    /// ([`Broadcast::max_frame_len`]): a recipient's outbound budget (config
    /// `outbound_queue_bytes`), since a bigger frame can never be queued and would close
    /// every recipient as a slow consumer.
    pub max_message_bytes: usize,
    /// What each room keeps for sessions to resume; `None` when resume is off.
    pub history: Option<HistoryLimits>,
    /// Largest room state and metadata a host may set (`[rooms]`).
    pub rooms: crate::config::RoomsConfig,
}

/// How much of its history a room keeps for replay (config `[resume]`). All three bound it:
/// a message leaves the ring when it is older than `window`, or to make room under
/// `messages` or `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Most messages kept per room (`resume.window_messages`).
    pub messages: usize,
    /// Most bytes kept per room, as each message's largest encoding (`resume.window_bytes`).
    pub bytes: usize,
    /// Oldest message kept, and how long a dropped session may be resumed
    /// (`resume.window_ms`).
    pub window: Duration,
    /// Socket.IO sessions are recoverable and their events carry offsets
    /// (`resume.socketio`).
    pub socketio: bool,
}

impl RelayLimits {
    /// The limits `config` sets.
    pub fn of(config: &crate::config::Config) -> RelayLimits {
        RelayLimits {
            max_name_len: config.max_name_len,
            max_rooms_per_connection: config.max_rooms_per_connection,
            max_room_members: config.max_room_members,
            max_message_bytes: config.outbound_queue_bytes,
            rooms: config.rooms,
            history: config.resume.enabled().then(|| HistoryLimits {
                messages: config.resume.window_messages,
                bytes: config.resume.window_bytes,
                window: Duration::from_millis(config.resume.window_ms),
                socketio: config.resume.socketio,
            }),
        }
    }
}

/// What crosses between shards. `Send` by construction: only owned data and `Arc`s.
#[derive(Debug)]
pub enum MeshMsg {
    /// origin -> home: a player asks to join (the origin holds its requests until answered).
    Join {
        /// Room.
        room: String,
        /// Joining player.
        player: PlayerId,
        /// Its name, for the room's notice.
        name: PlayerName,
        /// Its public metadata and the options of a creation, when there are any (boxed:
        /// most joins have neither, and every mesh slot is as large as the largest message).
        extra: Option<Box<JoinExtra>>,
    },
    /// home -> origin: the join is counted; the player is a member from now on.
    Joined {
        /// Room.
        room: String,
        /// Player to admit.
        player: PlayerId,
        /// What the home answered (boxed, as `Join.extra`).
        counted: Box<Counted>,
    },
    /// home -> origin: the join was not counted: the room is full (`max_room_members`) or
    /// locked by its host.
    Refused {
        /// Room.
        room: String,
        /// Player to answer.
        player: PlayerId,
        /// Why.
        code: ErrorCode,
    },
    /// origin -> home: a player left (or disconnected).
    Leave {
        /// Room.
        room: String,
        /// Who.
        player: PlayerId,
        /// Its name, for the room's notice.
        name: PlayerName,
        /// Why.
        reason: LeaveReason,
    },
    /// origin -> home: a broadcast to relay to the room's other shards.
    Relay(Arc<Broadcast>),
    /// home -> member shard: deliver to local members.
    Deliver(Arc<Broadcast>),
    /// origin -> home: a member's connection dropped; tell the room it is away.
    Away {
        /// Room.
        room: String,
        /// Who.
        player: PlayerId,
        /// Its name, for the room's notice.
        name: PlayerName,
    },
    /// origin -> home: a member resumed its session; it wants what the room numbered after
    /// `after`.
    Resume {
        /// Room.
        room: String,
        /// Who.
        player: PlayerId,
        /// Its name, for the room's notice.
        name: PlayerName,
        /// The last number it received.
        after: u64,
        /// The shard that held the session before (a recovered socket.io session moves to
        /// the shard its client reconnected to): its place in the count moves here.
        moved_from: Option<u16>,
        /// Whether to replay and tell the room it is back (not when the connection that
        /// recovered it is gone already: it stays away).
        replay: bool,
    },
    /// new shard -> every other shard: a socket.io client reconnected there with a pid;
    /// whoever holds the session hands it over.
    Recover(Box<RecoverRequest>),
    /// member's shard -> home: a host action (docs/ROOMS.md).
    HostAction {
        /// Room.
        room: String,
        /// Who asks.
        player: PlayerId,
        /// Its request id.
        req: Option<u64>,
        /// What it asks for (boxed: it holds a string, and every mesh slot is as large as
        /// the largest message).
        action: Box<crate::proto::native::HostAction>,
    },
    /// home -> member's shard: how the host action went.
    HostDone {
        /// Room.
        room: String,
        /// Who asked.
        player: PlayerId,
        /// Its request id.
        req: Option<u64>,
        /// Done, or why not.
        result: Result<(), ErrorCode>,
    },
    /// asker's shard -> every shard: list your homed public rooms.
    List {
        /// Who asks.
        player: PlayerId,
        /// Its request.
        req: u64,
        /// What to list.
        filter: Box<ListFilter>,
    },
    /// answer to `List`.
    ListAnswer {
        /// Who asked.
        player: PlayerId,
        /// Its request.
        req: u64,
        /// Up to a page's worth past the asked page, by name.
        rooms: Vec<ListedRoom>,
    },
    /// home -> member's shard: the host removed this member.
    Kick {
        /// Room.
        room: String,
        /// The member.
        player: PlayerId,
    },
    /// player's shard -> queue's shard: a matchmaking ticket.
    Queue(Box<QueueRequest>),
    /// player's shard -> queue's shard: cancel the player's ticket (`ticket`, or whichever
    /// it holds when 0).
    Cancel {
        /// Who asks.
        player: PlayerId,
        /// Its request id.
        req: Option<u64>,
        /// The ticket.
        ticket: u64,
    },
    /// player's shard -> queue's shard: the player is gone; withdraw its ticket.
    Withdraw {
        /// Who.
        player: PlayerId,
    },
    /// queue's shard -> player's shard: news of the player's ticket.
    Ticket(PlayerId, Box<TicketNews>),
    /// queue's shard -> the room's home: make a match's room.
    MatchRoom(Box<MatchRoom>),
    /// room's home -> a shard with players of the match: they are members now.
    MatchJoined(Box<MatchJoined>),
    /// Matchmaking with the cluster's queues in Redis, through the bridge's end of the mesh
    /// (`relay/matching.rs`; boxed: rare).
    Queues(Box<QueuesMsg>),
    /// answer to `Recover`: the session (`None` from shards that do not hold it, or refuse).
    Recovered {
        /// The session's player.
        player: PlayerId,
        /// The session, taken out of the old shard's rooms.
        moved: Option<Box<Moved>>,
    },
    /// The operator's dashboard: its scatter-gathers and actions (`relay/admin.rs`; boxed,
    /// as they are rare and every mesh slot is as large as the largest message).
    Admin(Box<AdminMsg>),
    /// The official Socket.IO Admin UI's lists, changes and commands (`relay/admin_ui.rs`;
    /// boxed, as they are rare and every mesh slot is as large as the largest message).
    AdminUi(Box<AdminUiMsg>),
    /// room's home -> the cluster bridge: a broadcast made on this node, for the room's
    /// members on others (`relay/nodes.rs`).
    Publish {
        /// The broadcast, shared with this node's deliveries.
        bcast: Arc<Broadcast>,
        /// The room's members on this node.
        members: u32,
        /// When the member a join or back notice names joined (ms since the epoch).
        joined: u64,
    },
    /// room's home -> the cluster bridge (history on): a broadcast made on this node, to
    /// append to the room's stream; the home delivers it when it hears it back numbered.
    Append {
        /// The broadcast (the home keeps it by `token`).
        bcast: Arc<Broadcast>,
        /// The room's members on this node.
        members: u32,
        /// The home's handle on it (0: nothing waits for it).
        token: u64,
        /// The room's last number here: the stream numbers it above.
        floor: u64,
        /// When the member a join or back notice names joined (ms since the epoch).
        joined: u64,
    },
    /// the cluster bridge -> room's home: this node's broadcast `token` has number `seq`
    /// in its room's stream (0: it did not reach the stream; the home numbers it).
    Appended {
        /// The home's handle on it.
        token: u64,
        /// Its number.
        seq: u64,
    },
    /// the cluster bridge -> room's home: a broadcast another node published (numbered,
    /// with history on).
    FromNode {
        /// The publishing node's incarnation.
        node: u64,
        /// The room's members there.
        members: u32,
        /// When the member a join or back notice names joined (ms since the epoch).
        joined: u64,
        /// The broadcast, to count and deliver here.
        bcast: Box<Broadcast>,
    },
    /// The rest of the cluster's business (boxed: rare).
    Cluster(Box<ClusterMsg>),
    /// home -> origin: what a resuming member missed, in order. Deliveries after this one
    /// on the same path are newer, so the origin delivers to the member again from here.
    Replay {
        /// Room.
        room: String,
        /// Who.
        player: PlayerId,
        /// Member count now.
        members: u32,
        /// Some of what it missed is no longer kept.
        gap: bool,
        /// The broadcasts it missed that the room still keeps, oldest first.
        missed: Vec<Arc<Broadcast>>,
    },
}

#[derive(Debug)]
struct Member {
    player: PlayerId,
    wire: Wire,
    outbox: Rc<Outbox>,
    /// Its session is detached (or resuming and waiting for the home's replay): deliveries
    /// skip it, the room's ring keeps them.
    away: bool,
    /// The room's number of the notice of its join (history on): what came before was
    /// never its to receive, so a replay starts after it. In a room numbered by its stream
    /// ([`SINCE_UNKNOWN`]) the number before the first broadcast it was given.
    since: u64,
}

/// A member's `since` in a room whose stream numbers it (`[cluster]` with history): not
/// known until the first broadcast after its join reaches its shard.
const SINCE_UNKNOWN: u64 = u64::MAX;

/// Members of a room on one shard up to which a member is found by a scan of `members`
/// (32 members of 24 bytes: a few cache lines); past it the room keeps an index
/// (`LocalRoom::slots`), dropped again once the room is down to half of this. A game room
/// is small, and an index would cost it more than its members do (a table of 16 buckets
/// for 10 members: about 30 bytes per idle connection).
const SCANNED_ROOM: usize = 32;

/// A room on this shard: its members here, and this shard's joins that the room's home (on
/// another shard) has not answered yet.
#[derive(Debug, Default)]
struct LocalRoom {
    /// In no particular order: a leaving member's place goes to the last one.
    members: Vec<Member>,
    /// Where each member sits in `members`, so that a leave, a disconnect or a rewire costs
    /// O(1) instead of a scan of the room; empty (and unallocated) while the room has at
    /// most [`SCANNED_ROOM`] members here.
    slots: HashMap<PlayerId, usize>,
    /// Joins waiting for the home's answer; never on the home shard itself.
    joining: HashMap<PlayerId, Joining>,
    /// Room-wide member count, as last heard from the home shard.
    total: u32,
    /// The room's host, as last heard from the home shard.
    host: Option<PlayerName>,
}

impl LocalRoom {
    fn add(&mut self, member: Member) {
        if !self.slots.is_empty() {
            self.slots.insert(member.player, self.members.len());
        }
        self.members.push(member);
        if self.slots.is_empty() && self.members.len() > SCANNED_ROOM {
            self.slots = self
                .members
                .iter()
                .enumerate()
                .map(|(slot, m)| (m.player, slot))
                .collect();
        }
    }

    /// Where `player` sits in `members`, if it is a member.
    fn slot(&self, player: PlayerId) -> Option<usize> {
        if self.slots.is_empty() {
            self.members.iter().position(|m| m.player == player)
        } else {
            self.slots.get(&player).copied()
        }
    }

    fn contains(&self, player: PlayerId) -> bool {
        self.slot(player).is_some()
    }

    fn remove(&mut self, player: PlayerId) {
        let Some(slot) = self.slot(player) else {
            return;
        };
        self.members.swap_remove(slot);
        if self.slots.is_empty() {
            return;
        }
        if self.members.len() <= SCANNED_ROOM / 2 {
            // Small again: the scan does, and the table's memory goes back.
            self.slots = HashMap::new();
            return;
        }
        self.slots.remove(&player);
        if let Some(moved) = self.members.get(slot) {
            self.slots.insert(moved.player, slot);
        }
    }

    fn member_mut(&mut self, player: PlayerId) -> Option<&mut Member> {
        let slot = self.slot(player)?;
        self.members.get_mut(slot)
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.joining.is_empty()
    }
}

/// What a join carries besides its player, when it carries anything.
#[derive(Debug, Default)]
pub struct JoinExtra {
    /// The player's public metadata, for join answers.
    pub meta: Option<Arc<str>>,
    /// Create the room with these options (`room:create`): refused if it exists.
    pub create: Option<Box<RoomOptions>>,
    /// A session restored from another node rejoins (`relay/failover.rs`): the number
    /// its replay starts after, and whether to replay now.
    pub resume: Option<(u64, bool)>,
}

impl JoinExtra {
    /// `None` when there is nothing to carry.
    fn of(meta: Option<Arc<str>>, create: Option<Box<RoomOptions>>) -> Option<Box<JoinExtra>> {
        (meta.is_some() || create.is_some()).then(|| {
            Box::new(JoinExtra {
                meta,
                create,
                resume: None,
            })
        })
    }
}

/// What the home answered a counted join with.
#[derive(Debug)]
pub struct Counted {
    /// Count after the join.
    pub members: u32,
    /// The number of the room's notice of the join.
    pub since: u64,
    /// The room's host.
    pub host: PlayerName,
    /// The room's state, if its host set one.
    pub state: Option<Arc<str>>,
    /// Its longest-present members, the joiner included.
    pub roster: Roster,
}

/// Most members a join answer lists: the longest-present ones. A game room is far smaller;
/// a 10,000-member room would make every join answer hundreds of kilobytes. Only rooms made
/// by `room:create` list them.
pub const ROSTER_MAX: usize = 100;

/// A member as a join answer lists it: its player id and its public metadata (the `meta`
/// claim of its token, a JSON object's text), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// The player id others see.
    pub id: PlayerName,
    /// Its public metadata.
    pub meta: Option<Arc<str>>,
}

/// The members a join answer lists, longest-present first, at most [`ROSTER_MAX`].
pub type Roster = Arc<[RosterEntry]>;

/// A join sent to the room's home and not answered yet. Until the home counts it the player
/// is not a member: it receives nothing from the room, so a refused joiner never sees the
/// room's messages.
#[derive(Debug, Default)]
struct Joining {
    /// Requests to answer once the home has answered, in the order they came.
    answers: Vec<Answer>,
    /// What the player sent to the room meanwhile, relayed in order once the join is
    /// counted (clients may send right after their join without waiting for its answer).
    held: Vec<Arc<Broadcast>>,
    /// Sum of the held broadcasts' [`Broadcast::max_frame_len`].
    held_bytes: usize,
    /// The player left or disconnected meanwhile. The home is told once it has answered,
    /// and only if it counted the join: its count never drops for a join it refused.
    leaving: Option<LeaveReason>,
    /// The player's name, for that notice (the player may be gone by then).
    name: PlayerName,
    /// A restored session rejoining: a member away until its replay.
    resumed: bool,
}

/// A request of a joining player, answered when the home answers the join.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Join(u64),
    Create(u64),
    Leave(u64),
}

/// A room homed on this shard: how many members each shard has.
#[derive(Debug)]
struct HomeRoom {
    per_shard: Vec<u32>,
    total: u32,
    /// Every member, in the order they joined: the first is the host (the longest-present
    /// member, docs/ROOMS.md). O(members) to leave; game rooms are small, and a room of
    /// `max_room_members` costs a scan of that many entries per leave.
    members: Vec<HomeMember>,
    /// Its host locked it: joins are refused.
    locked: bool,
    /// The state its host last set (JSON text), handed to joiners and to a new host.
    state: Option<Arc<str>>,
    /// The public metadata its host last set (a JSON object's text).
    metadata: Option<Arc<str>>,
    /// Options it was created with (`room:create`); `None` for a room made by a join.
    options: Option<Box<RoomOptions>>,
    /// Empty, it is kept until then (`empty_ttl_ms`), so that players can come back.
    empty_until: Option<Instant>,
    /// The number given to the room's last broadcast (history on).
    seq: u64,
    /// The last broadcasts, oldest first, within [`HistoryLimits`].
    kept: VecDeque<Kept>,
    /// Sum of `kept`'s sizes.
    kept_bytes: usize,
    /// Messages broadcast to the room (members' and the application's, not notices), for
    /// the dashboard's rates: one add at a lookup the home makes for every broadcast.
    messages: u64,
    /// The room is followed across nodes (`[cluster]`, it has members here).
    shared: bool,
    /// Its members on other nodes, as far as known (`relay/nodes.rs`).
    remote: Vec<nodes::RemoteMembers>,
    /// The host its members here were last told of.
    told_host: Option<PlayerName>,
}

/// A member as its room's home knows it.
#[derive(Debug)]
struct HomeMember {
    player: PlayerId,
    name: PlayerName,
    shard: ShardId,
    /// When it joined (ms since the Unix epoch): across nodes, the member present longest
    /// is the host (`relay/nodes.rs`).
    joined: u64,
    /// Its public metadata, for join answers.
    meta: Option<Arc<str>>,
}

/// A broadcast a room keeps for replay.
#[derive(Debug)]
struct Kept {
    /// When the home numbered it.
    at: Instant,
    /// Its largest encoding, as counted against `HistoryLimits::bytes`.
    size: usize,
    bcast: Arc<Broadcast>,
}

#[derive(Debug)]
struct Player {
    /// Who it is: the id others see (`identity.player`: `from`, membership notices), and
    /// its claims as of connect or its last refresh (for the delivery hook, and handed back
    /// to a connection that resumes its session).
    identity: Identity,
    wire: Wire,
    outbox: Rc<Outbox>,
    /// Rooms the player is in or joining (at most `max_rooms_per_connection`).
    rooms: Vec<String>,
    /// A session that may be resumed (native) or recovered (socket.io); boxed, since
    /// without history players have none.
    session: Option<Box<Session>>,
    /// The matchmaking ticket it holds (boxed: most players hold none).
    ticket: Option<Box<Held>>,
}

impl Player {
    /// A session taken back on a new connection (`wire`, `outbox`): resumable with
    /// `secret`, and for Socket.IO with its delivery log; no ticket (it was withdrawn when
    /// the old connection dropped).
    fn restored(
        identity: Identity,
        (wire, outbox): (Wire, Rc<Outbox>),
        rooms: Vec<String>,
        secret: Box<str>,
        log: Option<Box<SioLog>>,
    ) -> Player {
        Player {
            identity,
            wire,
            outbox,
            rooms,
            session: Some(Box::new(Session {
                secret,
                away_until: None,
                log,
            })),
            ticket: None,
        }
    }

    /// Room slots (`max_rooms_per_connection`) taken: its rooms, and the room a waiting
    /// ticket will be matched into.
    fn slots_taken(&self) -> usize {
        self.rooms.len() + usize::from(self.ticket.is_some())
    }
}

/// What a resumable session keeps while its connection is gone.
#[derive(Debug)]
struct Session {
    /// Proves a `Resume` comes from the session's owner.
    secret: Box<str>,
    /// The connection dropped; the session ends then unless resumed.
    away_until: Option<Instant>,
    /// A socket.io session's namespace and deliveries, to place its client's offset;
    /// native clients report their place per room instead.
    log: Option<Box<SioLog>>,
}

/// A session taken back by [`Relay::resume`].
#[derive(Debug)]
pub struct Resumed {
    /// Who the player is (as the session's last connection knew it).
    pub identity: Identity,
}

/// One shard's rooms and players.
#[derive(Debug)]
pub struct Relay {
    shard: ShardId,
    shards: usize,
    limits: RelayLimits,
    players: HashMap<PlayerId, Player>,
    rooms: HashMap<String, LocalRoom>,
    homes: HashMap<String, HomeRoom>,
    mesh: Vec<(ShardId, MeshMsg)>,
    /// Detached sessions by the time they end; in order, since every one waits the same
    /// window.
    away: VecDeque<(Instant, PlayerId)>,
    stats: Arc<ShardStats>,
    latency: Histogram<u64>,
    /// The server's authorization hooks; the relay runs the delivery hook.
    hooks: Arc<Hooks>,
    /// Socket.IO recoveries this shard asked the others for, by player.
    pending: HashMap<PlayerId, Pending>,
    /// Timers to fire for sessions whose recovery was decided.
    wakeups: Vec<Waker>,
    /// Empty rooms kept for `empty_ttl_ms`, with the time they go (an entry whose room
    /// was joined again meanwhile is stale and skipped).
    emptied: Vec<(Instant, String)>,
    /// Room listings waiting for other shards' answers, by (player, request).
    listings: HashMap<(PlayerId, u64), Listing>,
    /// The matchmaking queues homed here, and their tickets.
    matching: Matching,
    /// The dashboard's requests waiting for other shards, and its kicks of Socket.IO
    /// players for their sessions to end.
    admin: admin::AdminState,
    /// The official Socket.IO Admin UI's view of this shard (`[admin_ui]`); `None`, and
    /// every hook one branch, while it is off.
    admin_ui: Option<Box<admin_ui::AdminUi>>,
    /// This node's incarnation in a cluster (`[cluster]`); `None` for a node alone.
    node: Option<u64>,
    /// Broadcasts of rooms homed here waiting in the bridge for their stream's number
    /// (`[cluster]` with history), by token.
    appending: HashMap<u64, Arc<Broadcast>>,
    /// The last token given.
    last_token: u64,
    /// Native `Resume`s of sessions another node made, waiting for the bridge.
    claims: HashMap<PlayerId, failover::Claiming>,
    /// Rooms followed across nodes keep their history in Redis (`[cluster]
    /// shared_history`).
    shared_history: bool,
}

impl Relay {
    /// The relay of shard `shard` out of `shards`.
    pub fn new(
        shard: ShardId,
        shards: usize,
        limits: RelayLimits,
        stats: Arc<ShardStats>,
    ) -> Relay {
        Relay {
            shard,
            shards,
            limits,
            players: HashMap::new(),
            rooms: HashMap::new(),
            homes: HashMap::new(),
            mesh: Vec::new(),
            away: VecDeque::new(),
            stats,
            latency: new_latency_histogram(),
            hooks: Arc::new(Hooks::new()),
            pending: HashMap::new(),
            wakeups: Vec::new(),
            emptied: Vec::new(),
            listings: HashMap::new(),
            matching: Matching::new(&Default::default(), shard, shards),
            admin: admin::AdminState::default(),
            admin_ui: None,
            node: None,
            appending: HashMap::new(),
            last_token: 0,
            claims: HashMap::new(),
            shared_history: false,
        }
    }

    /// Sets the server's authorization hooks (once per shard, before it serves).
    pub fn set_hooks(&mut self, hooks: Arc<Hooks>) {
        self.hooks = hooks;
    }

    /// The server's authorization hooks.
    pub fn hooks(&self) -> &Arc<Hooks> {
        &self.hooks
    }

    /// Registers a connected player, known to others as `identity.player`.
    pub fn connect(
        &mut self,
        player: PlayerId,
        identity: Identity,
        wire: Wire,
        outbox: Rc<Outbox>,
    ) {
        self.players.insert(
            player,
            Player {
                identity,
                wire,
                outbox,
                rooms: Vec::new(),
                session: None,
                ticket: None,
            },
        );
    }

    /// Whether `player` is a member of `room` (its join counted by the room's home).
    pub fn is_member(&self, player: PlayerId, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.contains(player))
    }

    fn check_name(&self, key: &str) -> Result<(), ErrorCode> {
        // The name checked is the room's: a socket.io namespace's key is `<nsp>\0<room>`
        // (`room_key`, from a namespace that has no control characters), and the NUL in it
        // is the only control character a key may hold. Clients name rooms of the main
        // namespace directly, so their names are checked with `valid_name` before they get
        // here (native `Join`, socket.io `join`): no client can write another namespace's
        // key.
        let (_, name) = split_room_key(key);
        if name.is_empty()
            || name.len() > self.limits.max_name_len
            || name.chars().any(char::is_control)
        {
            Err(ErrorCode::InvalidName)
        } else {
            Ok(())
        }
    }

    /// Adds `player` to `room`. The `Joined` reply (or an `Error` `room_full`) reaches the
    /// player's outbox once the home shard has counted (or refused) the join; joining a room
    /// twice answers again and changes nothing.
    ///
    /// `Err(RoomFull)` comes at once when this shard knows the room is full; when the home
    /// is another shard the refusal may also come later, as an `Error` reply to `req` (with
    /// no `req`, as from [`crate::socketio::Socket::join`], nobody is told and the player is
    /// just not a member).
    pub fn join(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        self.join_with(player, req, room, None, now)
    }

    /// [`Relay::join`], creating the room with `create` (`room:create`): then the home
    /// refuses the join when the room exists (`RoomExists`), and the answer is `Created`.
    fn join_with(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        create: Option<Box<RoomOptions>>,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        self.check_name(room)?;
        let p = self
            .players
            .get_mut(&player)
            .ok_or(ErrorCode::NotWelcomed)?;
        let answer = |req: u64| match create {
            Some(_) => Answer::Create(req),
            None => Answer::Join(req),
        };
        if create.is_some() && self.rooms.contains_key(room) {
            return Err(ErrorCode::RoomExists);
        }
        if let Some(local) = self.rooms.get_mut(room) {
            if local.contains(player) {
                // Already in: answer with the last count this shard heard of, change nothing.
                let members = local.total;
                let host = local
                    .host
                    .clone()
                    .unwrap_or_else(|| Arc::clone(&p.identity.player));
                // The state and the roster live at the home; a member asking again has been
                // given them.
                self.reply(player, req, |req| Reply::Joined {
                    req,
                    room: room.to_owned(),
                    members,
                    host,
                    state: None,
                    roster: Arc::from([]),
                });
                return Ok(());
            }
            if let Some(joining) = local.joining.get_mut(&player) {
                // Already joining: answered with the same outcome. A join after a leave that
                // is still waiting too takes the leave back, with nothing sent to the home.
                if joining.leaving.is_some() {
                    if p.slots_taken() >= self.limits.max_rooms_per_connection {
                        return Err(ErrorCode::TooManyRooms);
                    }
                    joining.leaving = None;
                    p.rooms.push(room.to_owned());
                }
                joining.answers.extend(req.map(Answer::Join));
                return Ok(());
            }
        }
        if p.slots_taken() >= self.limits.max_rooms_per_connection {
            return Err(ErrorCode::TooManyRooms);
        }
        let home = home_shard(room, self.shards);
        let (wire, outbox, name) = (p.wire, Rc::clone(&p.outbox), Arc::clone(&p.identity.player));
        let meta = public_meta(&p.identity);
        if home == self.shard {
            let created = create.is_some();
            let Counted {
                members,
                host,
                state,
                roster,
                ..
            } = self.home_count(self.shard, room, player, &name, meta, create)?;
            if let Some(p) = self.players.get_mut(&player) {
                p.rooms.push(room.to_owned());
            }
            let since = self.next_seq(room);
            let local = self.rooms.entry(room.to_owned()).or_default();
            local.add(Member {
                player,
                wire,
                outbox,
                away: false,
                since,
            });
            local.total = members;
            local.host = Some(Arc::clone(&host));
            self.admin_ui_joined(player, room, now);
            self.save_session(player);
            self.reply(player, req, |req| {
                Self::joined_reply(req, room, created, members, host, state, roster)
            });
            self.notify_joined(room, player, name, members, now);
            return Ok(());
        }
        // The count this shard last heard refuses at once most joins the home would refuse;
        // the home decides the rest. Only while the room has members here: their notices
        // keep the count current, and without them it may be stale.
        if self.rooms.get(room).is_some_and(|r| {
            !r.members.is_empty() && r.total as usize >= self.limits.max_room_members
        }) {
            self.stats.count_refusal(Refusal::RoomFull);
            return Err(ErrorCode::RoomFull);
        }
        if let Some(p) = self.players.get_mut(&player) {
            p.rooms.push(room.to_owned());
        }
        let joining = Joining {
            answers: req.map(answer).into_iter().collect(),
            name: Arc::clone(&name),
            ..Joining::default()
        };
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .joining
            .insert(player, joining);
        self.send_mesh(
            home,
            MeshMsg::Join {
                room: room.to_owned(),
                player,
                name,
                extra: JoinExtra::of(meta, create),
            },
        );
        Ok(())
    }

    /// The answer to a counted join, or to a creation (`Created`, with the room's code).
    fn joined_reply(
        req: u64,
        room: &str,
        created: bool,
        members: u32,
        host: PlayerName,
        state: Option<Arc<str>>,
        roster: Roster,
    ) -> Reply {
        if created {
            Reply::Created {
                req,
                room: room.to_owned(),
                code: room.strip_prefix(CODE_PREFIX).unwrap_or(room).to_owned(),
                host,
            }
        } else {
            Reply::Joined {
                req,
                room: room.to_owned(),
                members,
                host,
                state,
                roster,
            }
        }
    }

    /// Removes `player` from `room` and answers `Left` (after the join's answer, when the
    /// home has not answered the join yet).
    pub fn leave(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if self.is_member(player, room) {
            self.remove_member(player, room, LeaveReason::Left, now);
            self.save_session(player);
            self.reply(player, req, |req| Reply::Left {
                req,
                room: room.to_owned(),
            });
            return Ok(());
        }
        let joining = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.joining.get_mut(&player))
            .filter(|j| j.leaving.is_none())
            .ok_or(ErrorCode::NotMember)?;
        joining.leaving = Some(LeaveReason::Left);
        joining.answers.extend(req.map(Answer::Leave));
        if let Some(p) = self.players.get_mut(&player) {
            p.rooms.retain(|r| r != room);
        }
        Ok(())
    }

    /// Forgets a disconnected player and tells its rooms (and its matchmaking queue).
    pub fn disconnect(&mut self, player: PlayerId, now: Instant) {
        self.disconnect_as(player, LeaveReason::Disconnected, now);
    }

    /// Forgets a player that is gone, telling its rooms why (`Disconnected`, or `Kicked`
    /// by an operator).
    fn disconnect_as(&mut self, player: PlayerId, reason: LeaveReason, now: Instant) {
        self.withdraw_ticket(player, now);
        let rooms = self
            .players
            .get_mut(&player)
            .map(|p| std::mem::take(&mut p.rooms))
            .unwrap_or_default();
        for room in rooms {
            if self.is_member(player, &room) {
                self.remove_member(player, &room, reason, now);
            } else if let Some(joining) = self
                .rooms
                .get_mut(&room)
                .and_then(|r| r.joining.get_mut(&player))
            {
                joining.leaving = Some(reason);
            }
        }
        self.drop_session_record(player);
        self.players.remove(&player);
    }

    /// Whether dropped native sessions may be resumed (history on).
    pub fn keeps_sessions(&self) -> bool {
        self.limits.history.is_some()
    }

    /// Makes `player`'s session resumable with `secret` (history on); its identity is handed
    /// back to the connection that resumes it.
    pub fn open_session(&mut self, player: PlayerId, secret: &str) {
        if self.limits.history.is_none() {
            return;
        }
        if let Some(p) = self.players.get_mut(&player) {
            p.session = Some(Box::new(Session {
                secret: secret.into(),
                away_until: None,
                log: None,
            }));
        }
        self.save_session(player);
    }

    /// Records `player`'s new identity (a refreshed token), for the delivery hook and a later
    /// resume.
    pub fn set_identity(&mut self, player: PlayerId, identity: Identity) {
        if let Some(p) = self.players.get_mut(&player) {
            p.identity = identity;
        }
    }

    /// The connection whose outbox `owned` recognizes ended; nothing happens when another
    /// connection took the player over (its outbox is no longer one of them).
    ///
    /// A connection `lost` (the peer vanished, its socket failed, it fell silent) keeps a
    /// resumable session: it is detached, its rooms are told it is away, and it ends at the
    /// window's end unless resumed ([`Relay::expire`]). Otherwise, or without a session,
    /// the player disconnects.
    pub fn release(
        &mut self,
        player: PlayerId,
        owned: impl Fn(&Rc<Outbox>) -> bool,
        lost: bool,
        now: Instant,
    ) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        if !owned(&p.outbox) {
            return;
        }
        let session = p.session.as_mut();
        match (self.limits.history, session) {
            (Some(limits), Some(session)) if lost && session.away_until.is_none() => {
                let until = now + limits.window;
                session.away_until = Some(until);
                self.away.push_back((until, player));
                add(&self.stats.sessions_away, 1);
                self.detach(player, now);
            }
            (_, session) => {
                if session.is_some_and(|s| s.away_until.is_some()) {
                    self.stats
                        .sessions_away
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.disconnect(player, now);
            }
        }
    }

    /// Marks `player` away in every room it is a member of and tells the rooms; joins not
    /// answered yet are given up, as a disconnect would.
    fn detach(&mut self, player: PlayerId, now: Instant) {
        // A ticket matched while nobody is there to play would hold up the others.
        self.withdraw_ticket(player, now);
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        let name = Arc::clone(&p.identity.player);
        let rooms = p.rooms.clone();
        for room in rooms {
            if let Some(m) = self.rooms.get_mut(&room).and_then(|r| r.member_mut(player)) {
                m.away = true;
                let home = home_shard(&room, self.shards);
                if home == self.shard {
                    let body = Body::MemberAway {
                        player: Arc::clone(&name),
                    };
                    self.home_notice(&room, player, body, now);
                } else {
                    let name = Arc::clone(&name);
                    self.send_mesh(home, MeshMsg::Away { room, player, name });
                }
            } else if let Some(joining) = self
                .rooms
                .get_mut(&room)
                .and_then(|r| r.joining.get_mut(&player))
            {
                joining.leaving = Some(LeaveReason::Disconnected);
                if let Some(p) = self.players.get_mut(&player) {
                    p.rooms.retain(|r| *r != room);
                }
            }
        }
    }

    /// Ends the detached sessions whose window is over at `now`: they leave their rooms as
    /// disconnected members. Call it every so often (the shard does on its stats tick).
    pub fn expire(&mut self, now: Instant) {
        self.expire_rooms(now);
        while let Some(&(until, player)) = self.away.front() {
            if until > now {
                break;
            }
            self.away.pop_front();
            // A session resumed since (and maybe dropped again, with a later end) is not
            // this entry's.
            let still = self
                .players
                .get(&player)
                .and_then(|p| p.session.as_ref())
                .is_some_and(|s| s.away_until == Some(until));
            if still {
                self.stats
                    .sessions_away
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                self.disconnect(player, now);
            }
        }
    }

    /// The next time [`Relay::expire`] has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.away.front().map(|&(until, _)| until)
    }

    /// Takes back session `session` for a new connection (`wire`, `outbox`), if `secret` is
    /// its secret and it has not ended. The old connection, if the server still holds it, is
    /// closed. Deliveries to the player stay off until [`Relay::replay_missed`] has given
    /// each room's replay.
    ///
    /// `Err(CannotResume)` for an unknown session, an ended one and a wrong secret alike,
    /// after the same work, so that the answer does not tell them apart.
    pub fn resume(
        &mut self,
        session: PlayerId,
        secret: &str,
        wire: Wire,
        outbox: Rc<Outbox>,
        now: Instant,
    ) -> Result<Resumed, ErrorCode> {
        let known = self
            .players
            .get(&session)
            .and_then(|p| p.session.as_ref())
            .filter(|s| s.log.is_none())
            .map(|s| &*s.secret);
        // Compared in constant time, against a stand-in when there is no such session.
        let matches = secret_eq(known.unwrap_or("-no-session-"), secret) && known.is_some();
        if !matches {
            add(&self.stats.resumes_refused, 1);
            return Err(ErrorCode::CannotResume);
        }
        let Some(p) = self.players.get_mut(&session) else {
            return Err(ErrorCode::CannotResume);
        };
        let Some(s) = p.session.as_mut() else {
            return Err(ErrorCode::CannotResume);
        };
        let was_away = s.away_until.take().is_some();
        let identity = p.identity.clone();
        if was_away {
            self.stats
                .sessions_away
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            // The old connection is still here (its peer vanished without a word, as a
            // phone changing networks does): it is closed, and the rooms hear it went away.
            p.outbox
                .close(crate::proto::ws::close::POLICY, "session resumed elsewhere");
            self.detach(session, now);
        }
        add(&self.stats.resumes, 1);
        self.rewire(session, wire, outbox);
        Ok(Resumed { identity })
    }

    /// After [`Relay::resume`] (and the `Welcome` the caller queued): answers each room the
    /// player is in with a `Resumed` frame and what the room numbered after the last number
    /// the client saw there (`last_seen`, 0 for a room not listed), before any newer
    /// message, and tells the rooms the player is back.
    pub fn replay_missed(&mut self, player: PlayerId, last_seen: &[(&str, u64)], now: Instant) {
        let Some(p) = self.players.get(&player) else {
            return;
        };
        let name = Arc::clone(&p.identity.player);
        let rooms = p.rooms.clone();
        for room in &rooms {
            let since = self
                .rooms
                .get(room)
                .and_then(|r| r.slot(player).map(|slot| r.members[slot].since))
                .unwrap_or(0);
            let after = last_seen
                .iter()
                .find(|(r, _)| r == room)
                .map_or(0, |&(_, seq)| seq)
                .max(since);
            let home = home_shard(room, self.shards);
            if home == self.shard {
                let (members, gap, missed) = self.missed(room, player, after, now);
                self.replay(room, player, members, gap, &missed);
                let body = Body::MemberBack {
                    player: Arc::clone(&name),
                };
                self.home_notice(room, player, body, now);
            } else {
                self.send_mesh(
                    home,
                    MeshMsg::Resume {
                        room: room.clone(),
                        player,
                        name: Arc::clone(&name),
                        after,
                        moved_from: None,
                        replay: true,
                    },
                );
            }
        }
    }

    /// On the home shard: the room's member count, whether messages numbered after `after`
    /// are missing from the ring, and those the ring keeps that `player` would have received
    /// (not its own), oldest first.
    fn missed(
        &mut self,
        room: &str,
        player: PlayerId,
        after: u64,
        now: Instant,
    ) -> (u32, bool, Vec<Arc<Broadcast>>) {
        let Some(limits) = self.limits.history else {
            return (0, false, Vec::new());
        };
        let Some(home) = self.homes.get_mut(room) else {
            return (0, false, Vec::new());
        };
        Self::trim(home, &limits, now, &self.stats);
        let oldest = home.kept.front().map_or(home.seq + 1, |k| k.bcast.seq);
        let gap = after < home.seq && oldest > after + 1;
        let missed = home
            .kept
            .iter()
            .filter(|k| k.bcast.seq > after && k.bcast.exclude != player)
            .map(|k| Arc::clone(&k.bcast))
            .collect();
        (home.total, gap, missed)
    }

    /// On the player's shard: gives a resuming member its `Resumed` frame and what it
    /// missed, then delivers to it again.
    fn replay(
        &mut self,
        room: &str,
        player: PlayerId,
        members: u32,
        gap: bool,
        missed: &[Arc<Broadcast>],
    ) {
        let Some(p) = self.players.get(&player) else {
            return;
        };
        if gap {
            add(&self.stats.resume_gaps, 1);
        }
        let (wire, outbox) = (p.wire, Rc::clone(&p.outbox));
        if wire == Wire::Native {
            let _ = outbox.push(native_frame(&ServerFrame::Resumed {
                room: room.to_owned(),
                members,
                replayed: missed.len() as u32,
                gap,
            }));
        }
        // Socket.IO has no word for a gap: the client's offsets skip numbers.
        let cap = self.limits.history.map_or(0, |h| h.messages);
        let tag = room_tag(room);
        for bcast in missed {
            // The window fits the outbound queue (config check), so this overflows only
            // when the client's queue was full already; then it is closed, as any slow one.
            let _ = outbox.push(bcast.frame(wire));
            if bcast.offsets && matches!(wire, Wire::SioWs | Wire::SioPolling) {
                Self::log_delivery(&mut self.players, player, tag, bcast.seq, cap);
            }
        }
        add(&self.stats.messages_out, missed.len() as u64);
        if let Some(m) = self.rooms.get_mut(room).and_then(|r| r.member_mut(player)) {
            m.away = false;
        }
    }

    /// O(1) in the room's size: the member's slot is known, and the count is one entry at
    /// the home. The notice that follows costs one push per member (see `deliver_local`).
    fn remove_member(&mut self, player: PlayerId, room: &str, reason: LeaveReason, now: Instant) {
        let Some(p) = self.players.get_mut(&player) else {
            // Every member is a connected player: `disconnect` removes the rooms first.
            return;
        };
        // At most `max_rooms_per_connection` entries.
        p.rooms.retain(|r| r != room);
        let name = Arc::clone(&p.identity.player);
        if let Some(local) = self.rooms.get_mut(room) {
            local.remove(player);
            if local.is_empty() {
                self.rooms.remove(room);
            }
        }
        self.admin_ui_left(player, room, now);
        let home = home_shard(room, self.shards);
        if home == self.shard {
            self.home_leave(self.shard, room, player, name, reason, now);
        } else {
            self.send_mesh(
                home,
                MeshMsg::Leave {
                    room: room.to_owned(),
                    player,
                    name,
                    reason,
                },
            );
        }
    }

    /// Broadcasts a member's message to the rest of `room`. A player whose join the home
    /// has not answered yet has its message held until then (dropped if the room is full).
    ///
    /// `Err(TooBig)` when the message's largest encoding exceeds a recipient's budget
    /// (`max_message_bytes`): nothing was sent.
    pub fn send(
        &mut self,
        player: PlayerId,
        room: &str,
        body: Body,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        let member = self.is_member(player, room);
        let joining = !member
            && self
                .rooms
                .get(room)
                .and_then(|r| r.joining.get(&player))
                .is_some_and(|j| j.leaving.is_none());
        if !member && !joining {
            return Err(ErrorCode::NotMember);
        }
        let bcast = Arc::new(Broadcast::new(room.to_owned(), player, body, now));
        let size = self.check_size(&bcast)?;
        if member {
            self.relay(bcast, now);
            return Ok(());
        }
        let max = self.limits.max_message_bytes;
        let joining = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.joining.get_mut(&player))
            .ok_or(ErrorCode::NotMember)?;
        // What is held is what every recipient would have to queue at once when the join
        // is counted: more than one budget would close them all, so it is refused.
        if joining.held_bytes + size > max {
            return Err(ErrorCode::NotMember);
        }
        joining.held_bytes += size;
        joining.held.push(bcast);
        Ok(())
    }

    /// Emits `body` to `room` (a room key) from the server or an application handler,
    /// skipping `exclude`; membership is not required. Used by the socket.io API.
    ///
    /// `Err(TooBig)` when the message's largest encoding exceeds a recipient's budget
    /// (`max_message_bytes`): nothing was sent.
    pub fn broadcast(
        &mut self,
        exclude: PlayerId,
        room: &str,
        body: Body,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        let bcast = Arc::new(Broadcast::new(room.to_owned(), exclude, body, now));
        self.check_size(&bcast)?;
        self.relay(bcast, now);
        Ok(())
    }

    /// The message's size bound, or `TooBig` (counted) when it exceeds a recipient's budget.
    fn check_size(&self, bcast: &Broadcast) -> Result<usize, ErrorCode> {
        let size = bcast.max_frame_len();
        if size > self.limits.max_message_bytes {
            self.stats.count_refusal(Refusal::TooBigForRecipients);
            return Err(ErrorCode::TooBig);
        }
        Ok(size)
    }

    /// Delivers a checked broadcast here and sends it on to the room's other shards.
    fn relay(&mut self, bcast: Arc<Broadcast>, now: Instant) {
        add(&self.stats.messages_in, 1);
        let home = home_shard(&bcast.room, self.shards);
        if self.limits.history.is_some() {
            // Numbered at the home before anyone receives it (see the module docs).
            if home == self.shard {
                self.home_relay(bcast, None, now);
            } else {
                self.send_mesh(home, MeshMsg::Relay(bcast));
            }
            return;
        }
        self.deliver_local(&bcast, now);
        if home == self.shard {
            self.forward_from_home(&bcast, None);
        } else {
            self.send_mesh(home, MeshMsg::Relay(bcast));
        }
    }

    /// On the home shard: numbers and keeps `bcast` (history on), delivers it here and
    /// sends it on to the other shards with members. `came_from` delivered it already
    /// (history off only: with history, nobody delivers before the home).
    ///
    /// In a room followed across nodes with history on, a broadcast made here goes to the
    /// room's stream instead ([`MeshMsg::Append`]) and is delivered when the bridge hands
    /// it back numbered (`relay/nodes.rs`).
    fn home_relay(&mut self, bcast: Arc<Broadcast>, came_from: Option<ShardId>, now: Instant) {
        let bridge = Some(self.bridge());
        if came_from != bridge && crosses(&bcast.body) && self.streams(&bcast.room) {
            self.append(bcast);
            return;
        }
        // Another node's, numbered by the room's stream.
        let given = (came_from == bridge && bcast.seq > 0).then_some(bcast.seq);
        self.numbered_relay(bcast, given, came_from, now);
    }

    /// [`Relay::home_relay`] once the broadcast's number is known (`given` by the room's
    /// stream; 0 when it did not reach it).
    fn numbered_relay(
        &mut self,
        bcast: Arc<Broadcast>,
        given: Option<u64>,
        came_from: Option<ShardId>,
        now: Instant,
    ) {
        let bcast = self.number(bcast, given, now);
        self.deliver_local(&bcast, now);
        self.forward_from_home(&bcast, came_from);
    }

    /// On the home shard, history on: gives `bcast` the room's next number and keeps it in
    /// the room's ring, dropping what falls out of [`HistoryLimits`]. Unchanged when history
    /// is off or the room has no members (nobody to receive it).
    ///
    /// In a room its stream numbers, the number is the stream's (`given`; one above the
    /// last here if it is not above it, as after Redis was away, or 0: the stream never
    /// had it), and a broadcast that did not go through the stream (a host notice, a node's
    /// members gone) takes no number: it gets the last one and is not kept.
    fn number(
        &mut self,
        bcast: Arc<Broadcast>,
        given: Option<u64>,
        now: Instant,
    ) -> Arc<Broadcast> {
        let Some(limits) = self.limits.history else {
            return bcast;
        };
        let Some(home) = self.homes.get_mut(&bcast.room) else {
            return bcast;
        };
        let streamed = home.shared && self.shared_history;
        let kept = given.is_some() || !streamed;
        home.seq = match given {
            Some(n) if n > home.seq => n,
            None if streamed => home.seq,
            _ => home.seq + 1,
        };
        // The origin let go of its reference when it sent it here; a copy is made only if
        // someone still holds one.
        let owned = Arc::try_unwrap(bcast).unwrap_or_else(|shared| {
            Broadcast::new(
                shared.room.clone(),
                shared.exclude,
                shared.body.clone(),
                shared.received_at,
            )
        });
        let bcast = Arc::new(owned.numbered(home.seq, limits.socketio));
        if !kept {
            return bcast;
        }
        let size = bcast.max_frame_len();
        home.kept.push_back(Kept {
            at: now,
            size,
            bcast: Arc::clone(&bcast),
        });
        home.kept_bytes += size;
        add(&self.stats.history_messages, 1);
        add(&self.stats.history_bytes, size as u64);
        Self::trim(home, &limits, now, &self.stats);
        bcast
    }

    /// Drops from `home`'s ring what is past `limits` at `now`.
    fn trim(home: &mut HomeRoom, limits: &HistoryLimits, now: Instant, stats: &ShardStats) {
        use std::sync::atomic::Ordering::Relaxed;
        while let Some(oldest) = home.kept.front() {
            let old = now.saturating_duration_since(oldest.at) > limits.window;
            if !old && home.kept.len() <= limits.messages && home.kept_bytes <= limits.bytes {
                break;
            }
            home.kept_bytes -= oldest.size;
            stats.history_messages.fetch_sub(1, Relaxed);
            stats.history_bytes.fetch_sub(oldest.size as u64, Relaxed);
            home.kept.pop_front();
        }
    }

    /// On the home shard: the number the room's next broadcast will get (0 without
    /// history).
    fn next_seq(&self, room: &str) -> u64 {
        match (self.limits.history, self.homes.get(room)) {
            (Some(_), Some(home)) if home.shared && self.shared_history => SINCE_UNKNOWN,
            (Some(_), Some(home)) => home.seq + 1,
            _ => 0,
        }
    }

    /// On the home shard: a broadcast of the home's own (a notice), numbered like the rest.
    fn home_notice(&mut self, room: &str, exclude: PlayerId, body: Body, now: Instant) {
        let bcast = Arc::new(Broadcast::new(room.to_owned(), exclude, body, now));
        self.home_relay(bcast, None, now);
    }

    /// Moves a player to another transport (socket.io upgrade from long-polling to
    /// WebSocket): later frames go to `outbox`, encoded for `wire`.
    pub fn rewire(&mut self, player: PlayerId, wire: Wire, outbox: Rc<Outbox>) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        p.wire = wire;
        p.outbox = Rc::clone(&outbox);
        for room in &p.rooms {
            // A room still joining has no member entry yet: its admission reads `p`.
            if let Some(m) = self.rooms.get_mut(room).and_then(|r| r.member_mut(player)) {
                m.wire = wire;
                m.outbox = Rc::clone(&outbox);
            }
        }
        self.admin_ui_rewired(player, wire);
    }

    /// Handles a message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Join {
                room,
                player,
                name,
                extra,
            } => {
                let JoinExtra {
                    meta,
                    create,
                    resume,
                } = extra.map(|e| *e).unwrap_or_default();
                match self.home_count(from, &room, player, &name, meta, create) {
                    Ok(mut counted) => {
                        counted.since = match resume {
                            Some((after, _)) => after,
                            None => self.next_seq(&room),
                        };
                        let members = counted.members;
                        // The answer goes before the notice and before any later message of the
                        // room, on the same FIFO path: the origin admits the player first.
                        self.send_mesh(
                            from,
                            MeshMsg::Joined {
                                room: room.clone(),
                                player,
                                counted: Box::new(counted),
                            },
                        );
                        match resume {
                            // A session restored from another node: no notice until its
                            // replay (`relay/failover.rs`).
                            Some((after, replay)) => {
                                self.counted_back(&room, player, from, after, replay)
                            }
                            None => self.notify_joined(&room, player, name, members, now),
                        }
                    }
                    Err(code) => self.send_mesh(from, MeshMsg::Refused { room, player, code }),
                }
            }
            MeshMsg::Joined {
                room,
                player,
                counted,
            } => self.admit(from, &room, player, Ok(*counted), now),
            MeshMsg::Refused { room, player, code } => {
                self.admit(from, &room, player, Err(code), now)
            }
            MeshMsg::Leave {
                room,
                player,
                name,
                reason,
            } => self.home_leave(from, &room, player, name, reason, now),
            MeshMsg::Relay(bcast) => {
                if self.limits.history.is_some() {
                    self.home_relay(bcast, None, now);
                } else {
                    self.deliver_local(&bcast, now);
                    self.forward_from_home(&bcast, Some(from));
                }
            }
            MeshMsg::Deliver(bcast) => self.deliver_local(&bcast, now),
            MeshMsg::Away { room, player, name } => {
                self.home_notice(&room, player, Body::MemberAway { player: name }, now)
            }
            MeshMsg::Resume {
                room,
                player,
                name,
                after,
                moved_from,
                replay,
            } => {
                if let Some(old) = moved_from {
                    self.move_count(&room, player, usize::from(old), from);
                }
                if !replay {
                    return;
                }
                let (members, gap, missed) = self.missed(&room, player, after, now);
                // The replay goes before the notice and every later message of the room, on
                // the same FIFO path: the origin delivers to the player again from here.
                self.send_mesh(
                    from,
                    MeshMsg::Replay {
                        room: room.clone(),
                        player,
                        members,
                        gap,
                        missed,
                    },
                );
                self.home_notice(&room, player, Body::MemberBack { player: name }, now);
            }
            MeshMsg::Replay {
                room,
                player,
                members,
                gap,
                missed,
            } => self.replay(&room, player, members, gap, &missed),
            MeshMsg::Recover(req) => self.on_recover(from, *req, now),
            MeshMsg::Recovered { player, moved } => self.on_recovered(from, player, moved, now),
            msg @ (MeshMsg::HostAction { .. }
            | MeshMsg::HostDone { .. }
            | MeshMsg::Kick { .. }
            | MeshMsg::List { .. }
            | MeshMsg::ListAnswer { .. }) => self.handle_room_mesh(from, msg, now),
            MeshMsg::Admin(msg) => self.handle_admin_mesh(from, *msg, now),
            msg @ (MeshMsg::Queue(_)
            | MeshMsg::Cancel { .. }
            | MeshMsg::Withdraw { .. }
            | MeshMsg::Ticket(..)
            | MeshMsg::MatchRoom(_)
            | MeshMsg::MatchJoined(_)
            | MeshMsg::Queues(_)) => self.handle_match_mesh(from, msg, now),
            MeshMsg::AdminUi(msg) => self.handle_admin_ui_mesh(from, *msg, now),
            MeshMsg::FromNode {
                node,
                members,
                joined,
                bcast,
            } => self.heard_from_node(node, members, joined, bcast, now),
            MeshMsg::Appended { token, seq } => self.appended(token, seq, now),
            MeshMsg::Cluster(msg) => self.handle_cluster_mesh(from, *msg, now),
            // The bridge's to carry; never sent to a shard.
            MeshMsg::Publish { .. } | MeshMsg::Append { .. } => {}
        }
    }

    /// Takes the messages to carry to other shards, in order.
    pub fn drain_mesh(&mut self) -> std::vec::Drain<'_, (ShardId, MeshMsg)> {
        self.mesh.drain(..)
    }

    /// The latency histogram recorded so far (for publication by the shard).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// On the origin shard: the home (`home`) answered a join with the count after it, or
    /// refused it.
    fn admit(
        &mut self,
        home: ShardId,
        room: &str,
        player: PlayerId,
        outcome: Result<Counted, ErrorCode>,
        now: Instant,
    ) {
        let Some(local) = self.rooms.get_mut(room) else {
            return;
        };
        // Every Join this shard sends leaves a Joining here until answered; an answer with
        // none would be a bug elsewhere, and is ignored rather than trusted.
        let Some(joining) = local.joining.remove(&player) else {
            return;
        };
        let mut admitted = false;
        if let Ok(Counted {
            members,
            since,
            host,
            ..
        }) = &outcome
        {
            let (members, since) = (*members, *since);
            local.total = members;
            local.host = Some(Arc::clone(host));
            if joining.leaving.is_none() {
                // A player that disconnected has `leaving` set, so it is still connected.
                if let Some(p) = self.players.get(&player) {
                    local.add(Member {
                        player,
                        wire: p.wire,
                        outbox: Rc::clone(&p.outbox),
                        away: joining.resumed,
                        since,
                    });
                    admitted = true;
                }
            }
        }
        let outcome = outcome.map(|c| (c.members, c.host, c.state, c.roster));
        if local.is_empty() {
            self.rooms.remove(room);
        }
        if outcome.is_err() && joining.leaving.is_none() {
            if let Some(p) = self.players.get_mut(&player) {
                p.rooms.retain(|r| r != room);
            }
        }
        if admitted {
            self.admin_ui_joined(player, room, now);
            self.save_session(player);
        }
        for answer in joining.answers {
            self.reply_now(
                player,
                match (answer, &outcome) {
                    (
                        Answer::Join(req) | Answer::Create(req),
                        Ok((members, host, state, roster)),
                    ) => {
                        let created = matches!(answer, Answer::Create(_));
                        Self::joined_reply(
                            req,
                            room,
                            created,
                            *members,
                            Arc::clone(host),
                            state.clone(),
                            Arc::clone(roster),
                        )
                    }
                    (Answer::Join(req) | Answer::Create(req), Err(code)) => Reply::Error {
                        req,
                        code: *code,
                        message: "join refused".to_owned(),
                    },
                    (Answer::Leave(req), _) => Reply::Left {
                        req,
                        room: room.to_owned(),
                    },
                },
            );
        }
        if outcome.is_err() {
            return;
        }
        for bcast in joining.held {
            self.relay(bcast, now);
        }
        if let Some(reason) = joining.leaving {
            self.send_mesh(
                home,
                MeshMsg::Leave {
                    room: room.to_owned(),
                    player,
                    name: joining.name,
                    reason,
                },
            );
        }
    }

    /// On the home shard: counts `player`'s join from shard `origin`, or refuses it
    /// (counted) when the room is full. The count after it, and the room's host.
    fn home_count(
        &mut self,
        origin: ShardId,
        room: &str,
        player: PlayerId,
        name: &PlayerName,
        meta: Option<Arc<str>>,
        create: Option<Box<RoomOptions>>,
    ) -> Result<Counted, ErrorCode> {
        let shards = self.shards;
        // A name of a created room (`#<code>`) is only ever made by `room:create`: a join
        // cannot squat a code, and a join of a room that is gone finds nothing.
        if create.is_none() && room.starts_with(CODE_PREFIX) && !self.homes.contains_key(room) {
            return Err(ErrorCode::NotMember);
        }
        if let Some(home) = self.homes.get(room) {
            if create.is_some() {
                return Err(ErrorCode::RoomExists);
            }
            let cap = home
                .options
                .as_ref()
                .map_or(self.limits.max_room_members, |o| o.max_members as usize);
            if home.cluster_total() as usize >= cap {
                self.stats.count_refusal(Refusal::RoomFull);
                return Err(ErrorCode::RoomFull);
            }
            if home.locked {
                self.stats.count_refusal(Refusal::RoomLocked);
                return Err(ErrorCode::RoomLocked);
            }
        }
        let home = self.homes.entry(room.to_owned()).or_insert_with(|| {
            add(&self.stats.rooms, 1);
            HomeRoom {
                per_shard: vec![0; shards],
                total: 0,
                seq: 0,
                kept: VecDeque::new(),
                kept_bytes: 0,
                messages: 0,
                members: Vec::new(),
                locked: false,
                state: None,
                metadata: create.as_ref().and_then(|o| o.metadata.clone()),
                options: create,
                empty_until: None,
                shared: false,
                remote: Vec::new(),
                told_host: None,
            }
        });
        // A room kept empty for its players to come back is theirs again.
        home.empty_until = None;
        home.per_shard[origin] += 1;
        home.total += 1;
        add(&self.stats.room_members, 1);
        home.members.push(HomeMember {
            player,
            name: Arc::clone(name),
            shard: origin,
            joined: nodes::now_ms(),
            meta,
        });
        let host = home
            .host()
            .map_or_else(|| Arc::clone(name), |(host, _)| host);
        // Game rooms (`room:create`) list their players; a room made by a plain join is a
        // channel, possibly a large one, and its answer stays a count.
        let listed = if home.options.is_some() {
            ROSTER_MAX
        } else {
            0
        };
        let roster = home
            .members
            .iter()
            .take(listed)
            .map(|m| RosterEntry {
                id: Arc::clone(&m.name),
                meta: m.meta.clone(),
            })
            .collect();
        if home.told_host.is_none() {
            // Its first member: the host, told so by the join's answer.
            home.told_host = Some(Arc::clone(&host));
        }
        let counted = Counted {
            members: home.cluster_total(),
            since: 0,
            host,
            state: home.state.clone(),
            roster,
        };
        if home.total == 1 {
            self.share_room(room);
        }
        Ok(counted)
    }

    /// On the home shard: tells the room of a counted join.
    fn notify_joined(
        &mut self,
        room: &str,
        player: PlayerId,
        name: PlayerName,
        members: u32,
        now: Instant,
    ) {
        self.home_notice(
            room,
            player,
            Body::MemberJoined {
                player: name,
                members,
            },
            now,
        );
    }

    /// On the home shard: the room is gone (its history with it).
    fn destroy_home(&mut self, room: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        // Closed with members (the operator's): the other nodes forget them.
        self.unshare_room(room, None, Instant::now());
        if let Some(gone) = self.homes.remove(room) {
            self.stats
                .history_messages
                .fetch_sub(gone.kept.len() as u64, Relaxed);
            self.stats
                .history_bytes
                .fetch_sub(gone.kept_bytes as u64, Relaxed);
            self.stats.rooms.fetch_sub(1, Relaxed);
        }
    }

    fn home_leave(
        &mut self,
        origin: ShardId,
        room: &str,
        player: PlayerId,
        name: PlayerName,
        reason: LeaveReason,
        now: Instant,
    ) {
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        home.per_shard[origin] = home.per_shard[origin].saturating_sub(1);
        if home.total > 0 {
            crate::stats::sub(&self.stats.room_members, 1);
        }
        home.total = home.total.saturating_sub(1);
        let members = home.cluster_total();
        let here = home.total;
        let at = home.members.iter().position(|m| m.player == player);
        if let Some(at) = at {
            home.members.remove(at);
        }
        if here == 0 {
            // A room created with `empty_ttl_ms` waits that long for its players.
            let ttl = home
                .options
                .as_ref()
                .map_or(0, |o| o.empty_ttl_ms)
                .min(MAX_EMPTY_TTL_MS);
            // The other nodes' members are told by the notice it would have been here.
            let last = Body::MemberLeft {
                player: Arc::clone(&name),
                members,
                reason,
            };
            self.unshare_room(room, Some(last), now);
            if ttl > 0 {
                let until = now + Duration::from_millis(ttl);
                if let Some(home) = self.homes.get_mut(room) {
                    home.empty_until = Some(until);
                }
                self.emptied.push((until, room.to_owned()));
                return;
            }
            self.destroy_home(room);
            return;
        }
        self.home_notice(
            room,
            player,
            Body::MemberLeft {
                player: name,
                members,
                reason,
            },
            now,
        );
        // The host left: the longest-present member takes over, with the room's state.
        self.host_check(room, now);
    }

    /// On the home shard: sends `bcast` once to every other shard with members, except the
    /// shard it came from (which delivered locally already).
    fn forward_from_home(&mut self, bcast: &Arc<Broadcast>, came_from: Option<ShardId>) {
        let Some(home) = self.homes.get_mut(&bcast.room) else {
            return;
        };
        if let Body::Event { .. } | Body::Nested { .. } | Body::Emit { .. } = bcast.body {
            home.messages += 1;
        }
        for (shard, &count) in home.per_shard.iter().enumerate() {
            if count > 0 && shard != self.shard && Some(shard) != came_from {
                self.mesh.push((shard, MeshMsg::Deliver(Arc::clone(bcast))));
            }
        }
        // Made on this node, in a room followed across nodes: once to the bridge, for the
        // room's members on other nodes (`relay/nodes.rs`). What came from the bridge
        // (another node's) is never published again.
        let bridge = self.shards;
        if home.shared && came_from != Some(bridge) && crosses(&bcast.body) {
            let publish = MeshMsg::Publish {
                bcast: Arc::clone(bcast),
                members: home.total,
                joined: home.joined_for(bcast),
            };
            self.mesh.push((bridge, publish));
        }
    }

    /// Pushes `bcast` to every local member but the excluded one: one clone of a shared
    /// frame per member, each wire's frame encoded once for the whole server (the first
    /// shard to need it encodes it into the `Arc`ed [`Broadcast`]).
    ///
    /// This is also what a membership notice costs: a join or leave is O(1) bookkeeping
    /// (a slot, one count per shard at the home) plus one push per member to tell. That
    /// fan-out is bounded by `max_room_members` per notice, by the rate at which one
    /// connection's frames are read, and by each member's own outbox (a member that cannot
    /// keep up is closed as a slow consumer, never the room).
    fn deliver_local(&mut self, bcast: &Broadcast, now: Instant) {
        let Some(room) = self.rooms.get_mut(&bcast.room) else {
            return;
        };
        match &bcast.body {
            Body::MemberJoined { members, .. } | Body::MemberLeft { members, .. } => {
                room.total = *members;
            }
            Body::Host { player, .. } => room.host = Some(Arc::clone(player)),
            _ => {}
        }
        // Made once per shard for a filtered message, and only when a delivery hook is set:
        // without one, this is one branch on an `Option` per broadcast.
        let filter = self
            .hooks
            .delivery()
            .and_then(|f| Some((f, Message::of(&bcast.room, &bcast.body)?)));
        let mut delivered = 0;
        // Members whose place in a stream-numbered room is known from now on: their
        // session records say so (rare: once per member and room).
        let mut placed = Vec::new();
        // Socket.IO members' logs place the offset their client sends back (recovery on).
        let logged = bcast.offsets.then(|| {
            let cap = self.limits.history.map_or(0, |h| h.messages);
            (room_tag(&bcast.room), cap)
        });
        for m in &mut room.members {
            if m.since == SINCE_UNKNOWN && bcast.seq > 0 {
                m.since = bcast.seq - 1;
                placed.push(m.player);
            }
            if m.player == bcast.exclude || m.away {
                continue;
            }
            if let Some((allow, message)) = &filter {
                // Every member is a connected player (`disconnect` leaves rooms first).
                let keep = self
                    .players
                    .get(&m.player)
                    .is_none_or(|p| allow(&p.identity, message));
                if !keep {
                    continue;
                }
            }
            // A full outbox closes its own connection (slow consumer); the room goes on.
            if m.outbox.push(bcast.frame(m.wire)).is_ok() {
                delivered += 1;
                if let (Some((tag, cap)), Wire::SioWs | Wire::SioPolling) = (logged, m.wire) {
                    Self::log_delivery(&mut self.players, m.player, tag, bcast.seq, cap);
                }
            }
        }
        if delivered > 0 {
            add(&self.stats.messages_out, delivered);
            if let Body::Event { .. } | Body::Nested { .. } = bcast.body {
                let micros = now.saturating_duration_since(bcast.received_at).as_micros() as u64;
                self.latency.saturating_record(micros.max(1));
            }
        }
        for player in placed {
            self.save_session(player);
        }
    }

    /// Answers request `req` of `player`, if there is one and the player is still here.
    fn reply(&self, player: PlayerId, req: Option<u64>, make: impl FnOnce(u64) -> Reply) {
        if let Some(req) = req {
            self.reply_now(player, make(req));
        }
    }

    fn reply_now(&self, player: PlayerId, reply: Reply) {
        if let Reply::Error { code, .. } = reply {
            self.stats.count_error(code);
        }
        if let Some(p) = self.players.get(&player) {
            // A full outbox closes its own connection; there is nobody else to tell.
            let _ = p.outbox.push(reply.frame(p.wire));
        }
    }

    fn send_mesh(&mut self, to: ShardId, msg: MeshMsg) {
        self.mesh.push((to, msg));
    }
}

/// A player's public metadata: the `meta` claim of its token, when it is a JSON object.
fn public_meta(identity: &Identity) -> Option<Arc<str>> {
    identity
        .claims
        .get("meta")
        .filter(|m| m.is_object())
        .map(|m| Arc::from(m.to_string()))
}

/// A session's secret: 128 random bits in hex, from the thread's CSPRNG (ChaCha seeded by
/// the OS), so that a session cannot be taken by guessing.
pub fn new_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// Whether `given` is the session's secret `known`, in time that depends on the secret's
/// length only (a `Resume` must not learn a secret byte by byte from how fast it is
/// refused).
fn secret_eq(known: &str, given: &str) -> bool {
    crate::auth::constant_time_eq(known.as_bytes(), given.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::native::{access_server, PayloadKind, ServerFrame};
    use bytes::Bytes;

    const LIMITS: RelayLimits = RelayLimits {
        max_name_len: 64,
        max_rooms_per_connection: 8,
        max_room_members: 3,
        max_message_bytes: 4096,
        history: None,
        rooms: crate::config::RoomsConfig::DEFAULT,
    };

    fn relays(shards: usize) -> Vec<Relay> {
        let stats = Arc::new(ShardStats::default());
        (0..shards)
            .map(|i| Relay::new(i, shards, LIMITS, Arc::clone(&stats)))
            .collect()
    }

    pub(super) fn outbox() -> Rc<Outbox> {
        Rc::new(Outbox::new(OutboxLimits {
            frames: 1000,
            bytes: 1 << 20,
        }))
    }

    /// A room name whose home is `shard` of `shards`.
    fn room_homed_on(shard: ShardId, shards: usize) -> String {
        (0..)
            .map(|i| format!("room-{i}"))
            .find(|r| home_shard(r, shards) == shard)
            .expect("some name hashes to every shard")
    }

    /// Carries every mesh message until none is left, as the shard runtimes would.
    pub(super) fn settle(relays: &mut [Relay]) {
        loop {
            let mut moved = Vec::new();
            for (from, relay) in relays.iter_mut().enumerate() {
                moved.extend(relay.drain_mesh().map(|(to, msg)| (from, to, msg)));
            }
            if moved.is_empty() {
                return;
            }
            for (from, to, msg) in moved {
                relays[to].handle_mesh(from, msg, Instant::now());
            }
        }
    }

    pub(super) fn frames(outbox: &Outbox) -> Vec<ServerFrame> {
        let mut raw = Vec::new();
        while let Drained::Frames = outbox.drain(&mut raw) {}
        raw.iter()
            .map(|f| {
                // Server frames are unmasked: a 2-byte header, 4 with a 16-bit length.
                let body = if f[1] == 126 { &f[4..] } else { &f[2..] };
                let archived = access_server(body).expect("a valid server frame");
                rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(archived).expect("owned")
            })
            .collect()
    }

    /// The name of test player `p`, as an anonymous player's.
    fn name(p: PlayerId) -> PlayerName {
        Arc::from(p.to_string())
    }

    /// Test player `p`, anonymous.
    fn who(p: PlayerId) -> Identity {
        Identity::anonymous(p.to_string())
    }

    fn event(from: PlayerId, payload: &[u8]) -> Body {
        Body::Event {
            from: name(from),
            event: "e".into(),
            payload: Bytes::copy_from_slice(payload),
            kind: PayloadKind::Binary,
        }
    }

    fn payloads(frames: &[ServerFrame]) -> Vec<Bytes> {
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Event { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every slot of a mesh queue, and every copy into and out of it, is as large as the
    /// largest message, while the message that crosses most (`Deliver`) is one pointer:
    /// rare messages box what they carry to stay within 64 bytes.
    #[test]
    fn mesh_messages_stay_small() {
        assert!(size_of::<MeshMsg>() <= 64, "{}", size_of::<MeshMsg>());
    }

    #[test]
    fn a_join_past_max_room_members_is_refused_on_the_home_shard() {
        let mut r = relays(1);
        let now = Instant::now();
        let boxes: Vec<_> = (0..4).map(|_| outbox()).collect();
        for (i, b) in boxes.iter().enumerate() {
            r[0].connect(
                i as PlayerId,
                who(i as PlayerId),
                Wire::Native,
                Rc::clone(b),
            );
        }
        for i in 0..3 {
            r[0].join(i, Some(1), "r", now).unwrap();
        }
        assert_eq!(r[0].join(3, Some(1), "r", now), Err(ErrorCode::RoomFull));
        assert!(!r[0].is_member(3, "r"));
        assert_eq!(r[0].stats.refusals(Refusal::RoomFull), 1);
        // The refused player hears nothing of the room; a leave makes room again.
        r[0].send(0, "r", event(0, b"x"), now).unwrap();
        assert!(frames(&boxes[3]).is_empty());
        r[0].leave(1, None, "r", now).unwrap();
        r[0].join(3, Some(2), "r", now).unwrap();
        assert!(matches!(
            frames(&boxes[3])[..],
            [ServerFrame::Joined { members: 3, .. }]
        ));
    }

    #[test]
    fn a_join_from_another_shard_is_decided_by_the_home_and_refused_joiners_see_nothing() {
        let mut r = relays(2);
        let room = room_homed_on(0, 2);
        let now = Instant::now();
        // Two members on shard 1, one on the home.
        let boxes: Vec<_> = (0..5).map(|_| outbox()).collect();
        r[0].connect(0, who(0), Wire::Native, Rc::clone(&boxes[0]));
        for p in 1..5 {
            r[1].connect(p, who(p), Wire::Native, Rc::clone(&boxes[p as usize]));
        }
        r[1].join(1, Some(1), &room, now).unwrap();
        settle(&mut r);
        // The home's join comes first: shard 1 has not heard of it when 2 and 3 ask.
        r[0].join(0, Some(1), &room, now).unwrap();
        r[1].join(2, Some(7), &room, now).unwrap();
        r[1].join(3, Some(8), &room, now).unwrap();
        // While the joins cross, a member on shard 1 sends: joiners are not members yet.
        r[1].send(1, &room, event(1, b"early"), now).unwrap();
        settle(&mut r);
        let two = frames(&boxes[2]);
        let three = frames(&boxes[3]);
        assert!(
            matches!(
                two[..],
                [ServerFrame::Joined {
                    req: 7,
                    members: 3,
                    ..
                }]
            ),
            "{two:?}"
        );
        assert!(
            matches!(
                three[..],
                [ServerFrame::Error { req: 8, code, .. }] if code == ErrorCode::RoomFull as u16
            ),
            "the refused joiner gets the refusal and nothing of the room: {three:?}"
        );
        assert!(r[1].is_member(2, &room) && !r[1].is_member(3, &room));
        assert_eq!(r[0].stats.refusals(Refusal::RoomFull), 1);
        // Shard 1 now knows the room is full and refuses at once.
        assert_eq!(r[1].join(4, Some(9), &room, now), Err(ErrorCode::RoomFull));
        // The home's count stayed exact: one leave, one join fits.
        r[1].disconnect(2, now);
        settle(&mut r);
        r[1].join(4, Some(9), &room, now).unwrap();
        settle(&mut r);
        assert!(r[1].is_member(4, &room));
        assert_eq!(r[0].homes[&room].total, 3);
    }

    #[test]
    fn messages_sent_while_joining_are_relayed_in_order_once_counted() {
        let mut r = relays(2);
        let room = room_homed_on(0, 2);
        let now = Instant::now();
        let (a, b) = (outbox(), outbox());
        r[0].connect(0, who(0), Wire::Native, Rc::clone(&a));
        r[1].connect(1, who(1), Wire::Native, Rc::clone(&b));
        r[0].join(0, Some(1), &room, now).unwrap();
        r[1].join(1, Some(1), &room, now).unwrap();
        assert!(!r[1].is_member(1, &room));
        for i in 0u8..3 {
            r[1].send(1, &room, event(1, &[i]), now).unwrap();
        }
        settle(&mut r);
        let got = payloads(&frames(&a));
        assert_eq!(got, [[0u8], [1], [2]].map(|p| Bytes::copy_from_slice(&p)));
        // What one recipient could not queue at once is not held.
        let mut r = relays(2);
        r[1].connect(1, who(1), Wire::Native, outbox());
        r[1].join(1, Some(1), &room, now).unwrap();
        let big = vec![0u8; LIMITS.max_message_bytes / 2];
        r[1].send(1, &room, event(1, &big), now).unwrap();
        assert_eq!(
            r[1].send(1, &room, event(1, &big), now),
            Err(ErrorCode::NotMember)
        );
    }

    #[test]
    fn a_leave_or_disconnect_while_joining_keeps_the_home_count_exact() {
        let mut r = relays(2);
        let room = room_homed_on(0, 2);
        let now = Instant::now();
        let watcher = outbox();
        r[0].connect(0, who(0), Wire::Native, Rc::clone(&watcher));
        r[0].join(0, None, &room, now).unwrap();
        // Accepted then left: the home counts the join, then the leave.
        let b = outbox();
        r[1].connect(1, who(1), Wire::Native, Rc::clone(&b));
        r[1].join(1, Some(1), &room, now).unwrap();
        r[1].leave(1, Some(2), &room, now).unwrap();
        // Disconnected while joining.
        r[1].connect(2, who(2), Wire::Native, outbox());
        r[1].join(2, Some(1), &room, now).unwrap();
        r[1].disconnect(2, now);
        settle(&mut r);
        assert!(matches!(
            frames(&b)[..],
            [
                ServerFrame::Joined { req: 1, .. },
                ServerFrame::Left { req: 2, .. }
            ]
        ));
        assert_eq!(r[0].homes[&room].total, 1);
        assert!(!r[1].rooms.contains_key(&room), "nothing left behind");
        // Refused then left: the home never counted it, so it is told nothing.
        let mut r = relays(2);
        for p in 0..3 {
            r[0].connect(p, who(p), Wire::Native, outbox());
            r[0].join(p, None, &room, now).unwrap();
        }
        let b = outbox();
        r[1].connect(9, who(9), Wire::Native, Rc::clone(&b));
        r[1].join(9, Some(1), &room, now).unwrap();
        r[1].leave(9, Some(2), &room, now).unwrap();
        settle(&mut r);
        assert!(matches!(
            frames(&b)[..],
            [
                ServerFrame::Error { req: 1, .. },
                ServerFrame::Left { req: 2, .. }
            ]
        ));
        assert_eq!(r[0].homes[&room].total, 3);
    }

    #[test]
    fn leaves_keep_every_other_member_served_whatever_their_slot() {
        // A room small enough to be scanned, one large enough for an index, and one that
        // shrinks back below the index's threshold.
        for (n, leaving) in [
            (10, vec![0, 5, 9]),
            (
                2 * SCANNED_ROOM,
                vec![0, SCANNED_ROOM, 2 * SCANNED_ROOM - 1],
            ),
            (SCANNED_ROOM + 2, (5..SCANNED_ROOM + 2).collect()),
        ] {
            let mut r = relays(1);
            let now = Instant::now();
            let mut limits = LIMITS;
            limits.max_room_members = 100;
            r[0].limits = limits;
            let boxes: Vec<_> = (0..n).map(|_| outbox()).collect();
            for (i, b) in boxes.iter().enumerate() {
                r[0].connect(
                    i as PlayerId,
                    who(i as PlayerId),
                    Wire::Native,
                    Rc::clone(b),
                );
                r[0].join(i as PlayerId, None, "r", now).unwrap();
            }
            assert_eq!(r[0].rooms["r"].slots.is_empty(), n <= SCANNED_ROOM);
            // First, middle and last slots go; a rewired member keeps its place.
            for &p in &leaving {
                r[0].leave(p as PlayerId, None, "r", now).unwrap();
            }
            let rewired = outbox();
            r[0].rewire(3, Wire::Native, Rc::clone(&rewired));
            for b in &boxes {
                frames(b);
            }
            r[0].send(1, "r", event(1, b"m"), now).unwrap();
            for (i, b) in boxes.iter().enumerate() {
                let got = payloads(&frames(b)).len();
                let expected = usize::from(!leaving.contains(&i) && ![1, 3].contains(&i));
                assert_eq!(got, expected, "member {i} of {n}");
            }
            assert_eq!(payloads(&frames(&rewired)).len(), 1);
            let local = &r[0].rooms["r"];
            assert_eq!(local.members.len(), n - leaving.len());
            // Above half the threshold an index that was built stays, and is right.
            assert_eq!(
                local.slots.is_empty(),
                n <= SCANNED_ROOM || local.members.len() <= SCANNED_ROOM / 2
            );
            for (slot, m) in local.members.iter().enumerate() {
                assert_eq!(local.slot(m.player), Some(slot));
                assert!(r[0].is_member(m.player, "r"));
            }
            for &p in &leaving {
                assert!(!r[0].is_member(p as PlayerId, "r"));
            }
        }
    }

    #[test]
    fn the_delivery_hook_filters_each_recipient_on_its_own_shard() {
        let mut r = relays(2);
        let now = Instant::now();
        let room = room_homed_on(0, 2);
        // Players with an even id hear nothing but notices.
        let hooks = Arc::new(
            Hooks::new().on_delivery(|to, _| to.player.parse::<u64>().is_ok_and(|p| p % 2 == 1)),
        );
        for relay in &mut r {
            relay.limits.max_room_members = 4;
        }
        let boxes: Vec<_> = (0..4).map(|_| outbox()).collect();
        for p in 0..4u64 {
            let shard = (p % 2) as usize;
            r[shard].set_hooks(Arc::clone(&hooks));
            r[shard].connect(p, who(p), Wire::Native, Rc::clone(&boxes[p as usize]));
        }
        // 0 and 2 on shard 0, 1 and 3 on shard 1; 3 sends from the far shard.
        for p in 0..3u64 {
            r[(p % 2) as usize].join(p, None, &room, now).unwrap();
        }
        r[1].join(3, None, &room, now).unwrap();
        settle(&mut r);
        for b in &boxes {
            frames(b);
        }
        r[1].send(3, &room, event(3, b"x"), now).unwrap();
        r[0].send(0, &room, event(0, b"y"), now).unwrap();
        settle(&mut r);
        let got: Vec<usize> = boxes.iter().map(|b| payloads(&frames(b)).len()).collect();
        assert_eq!(got, [0, 2, 0, 1], "odd players only, on both shards");
    }

    #[test]
    fn a_message_over_the_budget_is_refused_before_any_outbox() {
        let mut r = relays(2);
        let now = Instant::now();
        let room = room_homed_on(1, 2);
        let (a, b) = (outbox(), outbox());
        r[0].connect(0, who(0), Wire::Native, Rc::clone(&a));
        r[0].connect(1, who(1), Wire::SioPolling, Rc::clone(&b));
        r[0].join(0, None, &room, now).unwrap();
        r[0].join(1, None, &room, now).unwrap();
        settle(&mut r);
        frames(&a);
        let mut raw = Vec::new();
        while let Drained::Frames = b.drain(&mut raw) {}
        // 3/4 of the budget in binary is over it in base64, for a long-polling member.
        let big = vec![7u8; LIMITS.max_message_bytes * 3 / 4];
        assert_eq!(
            r[0].send(0, &room, event(0, &big), now),
            Err(ErrorCode::TooBig)
        );
        let emit = Body::Emit {
            event: "e".into(),
            args: vec![crate::proto::socketio::Arg::Binary(Bytes::from(big))],
        };
        assert_eq!(r[0].broadcast(0, &room, emit, now), Err(ErrorCode::TooBig));
        assert_eq!(r[0].stats.refusals(Refusal::TooBigForRecipients), 2);
        assert_eq!(r[0].drain_mesh().count(), 0, "nothing went to the home");
        assert!(b.is_empty() && b.is_open());
        // A message that fits still goes.
        r[0].send(0, &room, event(0, &[1; 100]), now).unwrap();
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_ring_keeps_its_bounds_and_a_resume_past_them_is_told_of_the_gap() {
        let stats = Arc::new(ShardStats::default());
        let mut limits = LIMITS;
        limits.history = Some(HistoryLimits {
            messages: 5,
            bytes: 1 << 20,
            window: Duration::from_secs(60),
            socketio: true,
        });
        let mut r = Relay::new(0, 1, limits, Arc::clone(&stats));
        let now = Instant::now();
        let (a, b) = (outbox(), outbox());
        r.connect(0, who(0), Wire::Native, Rc::clone(&a));
        r.connect(1, who(1), Wire::Native, Rc::clone(&b));
        r.open_session(1, "s3cret");
        r.join(0, None, "r", now).unwrap();
        r.join(1, None, "r", now).unwrap();
        r.release(1, |o| Rc::ptr_eq(o, &b), true, now);
        for i in 0u8..10 {
            r.send(0, "r", event(0, &[i]), now).unwrap();
        }
        assert_eq!(
            stats
                .history_messages
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
        assert!(frames(&b).is_empty(), "an away member is skipped");
        // A wrong secret changes nothing; the right one resumes.
        let c = outbox();
        assert_eq!(
            r.resume(1, "wrong", Wire::Native, Rc::clone(&c), now).err(),
            Some(ErrorCode::CannotResume)
        );
        r.resume(1, "s3cret", Wire::Native, Rc::clone(&c), now)
            .unwrap();
        r.replay_missed(1, &[("r", 2)], now);
        let got = frames(&c);
        assert!(
            matches!(
                got[0],
                ServerFrame::Resumed {
                    replayed: 5,
                    gap: true,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(
            payloads(&got),
            (5u8..10)
                .map(|i| Bytes::copy_from_slice(&[i]))
                .collect::<Vec<_>>()
        );
        // Past the window, the oldest go too: a resume then replays nothing, with a gap.
        let later = now + Duration::from_secs(61);
        r.release(1, |o| Rc::ptr_eq(o, &c), true, later);
        let d = outbox();
        r.resume(
            1,
            "s3cret",
            Wire::Native,
            Rc::clone(&d),
            later + Duration::from_secs(1),
        )
        .unwrap();
        r.replay_missed(1, &[("r", 9)], later + Duration::from_secs(1));
        assert!(matches!(
            frames(&d)[0],
            ServerFrame::Resumed {
                replayed: 0,
                gap: true,
                ..
            }
        ));
        // And a detached session that nobody resumes ends at its window's end.
        r.release(1, |o| Rc::ptr_eq(o, &d), true, later);
        r.expire(later + Duration::from_secs(60));
        assert!(!r.is_member(1, "r"));
        assert!(matches!(
            frames(&a).last(),
            Some(ServerFrame::MemberLeft {
                reason: LeaveReason::Disconnected,
                ..
            })
        ));
    }

    /// Two players of the built-in queue on shards 0 and 1, queued with skills 0 and 5 and
    /// carried to the queue's shard; returns their outboxes.
    fn two_tickets(r: &mut [Relay], now: Instant) -> [Rc<Outbox>; 2] {
        let boxes = [outbox(), outbox()];
        for (i, b) in boxes.iter().enumerate() {
            let p = i as PlayerId + 1;
            r[i].connect(p, who(p), Wire::Native, Rc::clone(b));
            let ticket = TicketRequest {
                queue: "default".into(),
                skill: 5.0 * i as f64,
                ..TicketRequest::default()
            };
            r[i].queue_ticket(p, Some(p), ticket, now).unwrap();
        }
        settle(r);
        boxes
    }

    /// A player whose connection ends while its match is being made is in the room only
    /// for an instant: the others are told `Matched`, then that it left, disconnected.
    #[test]
    fn a_matched_player_gone_meanwhile_leaves_the_room_as_disconnected() {
        let mut r = relays(2);
        let now = Instant::now();
        let [a, b] = two_tickets(&mut r, now);
        let queue_shard = home_shard("default", 2);
        r[queue_shard].poll_matchmaking(now + Duration::from_secs(1));
        r[1].disconnect(2, now);
        settle(&mut r);
        let got = frames(&a);
        assert!(
            matches!(got[0], ServerFrame::Queued { req: 1, .. }),
            "{got:?}"
        );
        let ServerFrame::Matched { room, players, .. } = &got[1] else {
            panic!("{got:?}");
        };
        let ids: Vec<&str> = players.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert!(
            matches!(&got[2], ServerFrame::MemberLeft { room: r, player, members: 1, reason: LeaveReason::Disconnected, .. } if r == room && player == "2"),
            "{got:?}"
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(r[0].is_member(1, room));
        // The queue's shard forgot both tickets: player 1 may queue again.
        assert_eq!(frames(&b).len(), 1, "player 2 heard only its Queued");
        let again = TicketRequest {
            queue: "default".into(),
            ..TicketRequest::default()
        };
        r[0].queue_ticket(1, None, again, now).unwrap();
    }

    /// A party whose members do not all come fails for those who did at the queue's
    /// timeout; one whose members all come waits as one ticket.
    #[test]
    fn a_party_waits_for_every_member_until_the_queues_timeout() {
        let mut r = relays(2);
        let now = Instant::now();
        let boxes = [outbox(), outbox(), outbox()];
        for (i, b) in boxes.iter().enumerate() {
            let p = i as PlayerId + 1;
            r[i % 2].connect(p, who(p), Wire::Native, Rc::clone(b));
        }
        let party = |members: &[PlayerId]| TicketRequest {
            queue: "default".into(),
            party: members.iter().map(|p| p.to_string()).collect(),
            ..TicketRequest::default()
        };
        // 1 and 2 form a party of the 1v1 queue... which takes parties of up to 2.
        r[0].queue_ticket(1, Some(1), party(&[1, 2]), now).unwrap();
        settle(&mut r);
        let queue_shard = home_shard("default", 2);
        // Not whole: nothing happens before the timeout (60 s), even with another player.
        r[0].queue_ticket(3, Some(3), party(&[]), now).unwrap();
        settle(&mut r);
        r[queue_shard].poll_matchmaking(now + Duration::from_secs(59));
        settle(&mut r);
        let first = frames(&boxes[0]);
        assert_eq!(first.len(), 1, "{first:?}");
        let ServerFrame::Queued { ticket, .. } = first[0] else {
            panic!("{first:?}");
        };
        r[queue_shard].poll_matchmaking(now + Duration::from_secs(61));
        settle(&mut r);
        let ended = frames(&boxes[0]);
        assert!(
            matches!(ended[..], [ServerFrame::Unqueued { ticket: t, reason: crate::proto::native::UnqueueReason::TimedOut, .. }] if t == ticket),
            "{ended:?}"
        );
        // A list that differs from the one the leader's party was formed with is refused
        // where the party forms; the right one completes the party.
        frames(&boxes[2]);
        // The leader comes last: it leads all the same.
        r[1].queue_ticket(2, Some(6), party(&[1, 2]), now).unwrap();
        settle(&mut r);
        r[0].queue_ticket(3, Some(5), party(&[1, 3]), now).unwrap();
        r[0].queue_ticket(1, Some(4), party(&[1, 2]), now).unwrap();
        settle(&mut r);
        let refused = frames(&boxes[2]);
        assert!(
            matches!(refused[..], [ServerFrame::Error { req: 5, code, .. }] if code == ErrorCode::InvalidValue as u16),
            "{refused:?}"
        );
        let (a, b) = (frames(&boxes[0]), frames(&boxes[1]));
        assert!(
            matches!((&a[..], &b[..]), ([ServerFrame::Queued { ticket: x, .. }], [ServerFrame::Queued { ticket: y, .. }]) if x == y),
            "{a:?} {b:?}"
        );
        // Whole, the party of two fills a match of the 1v1 queue alone, its leader first.
        r[queue_shard].poll_matchmaking(now + Duration::from_secs(1));
        settle(&mut r);
        for b in &boxes[..2] {
            let got = frames(b);
            let [ServerFrame::Matched { players, .. }] = &got[..] else {
                panic!("{got:?}");
            };
            let ids: Vec<&str> = players.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(ids, ["1", "2"]);
        }
    }
}
