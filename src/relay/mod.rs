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
//! The relay never touches a socket or an executor: it pushes frames into [`Outbox`]es and
//! collects [`MeshMsg`]s for the shard runtime to carry ([`Relay::drain_mesh`]).

mod broadcast;
mod outbox;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

pub use broadcast::{
    native_frame, room_key, sio_polling_text, sio_ws_frames, split_room_key, Body, Broadcast,
    PlayerId, PlayerName, Reply, Wire, EVENT_ENVELOPE,
};
pub use outbox::{Drained, Outbox, OutboxLimits, PushError, ReadyQueue};

use crate::proto::native::{ErrorCode, LeaveReason};
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
}

impl RelayLimits {
    /// The limits `config` sets.
    pub fn of(config: &crate::config::Config) -> RelayLimits {
        RelayLimits {
            max_name_len: config.max_name_len,
            max_rooms_per_connection: config.max_rooms_per_connection,
            max_room_members: config.max_room_members,
            max_message_bytes: config.outbound_queue_bytes,
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
    },
    /// home -> origin: the join is counted; the player is a member from now on.
    Joined {
        /// Room.
        room: String,
        /// Player to admit.
        player: PlayerId,
        /// Count after the join.
        members: u32,
    },
    /// home -> origin: the room is full (`max_room_members`); the join was not counted.
    Refused {
        /// Room.
        room: String,
        /// Player to answer.
        player: PlayerId,
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
}

#[derive(Debug)]
struct Member {
    player: PlayerId,
    wire: Wire,
    outbox: Rc<Outbox>,
}

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
}

/// A request of a joining player, answered when the home answers the join.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Join(u64),
    Leave(u64),
}

/// A room homed on this shard: how many members each shard has.
#[derive(Debug)]
struct HomeRoom {
    per_shard: Vec<u32>,
    total: u32,
}

#[derive(Debug)]
struct Player {
    /// The id others see (`from`, membership notices).
    name: PlayerName,
    wire: Wire,
    outbox: Rc<Outbox>,
    /// Rooms the player is in or joining (at most `max_rooms_per_connection`).
    rooms: Vec<String>,
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
    stats: Arc<ShardStats>,
    latency: Histogram<u64>,
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
            stats,
            latency: new_latency_histogram(),
        }
    }

    /// Registers a connected player, known to others as `name`.
    pub fn connect(&mut self, player: PlayerId, name: PlayerName, wire: Wire, outbox: Rc<Outbox>) {
        self.players.insert(
            player,
            Player {
                name,
                wire,
                outbox,
                rooms: Vec::new(),
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
        self.check_name(room)?;
        let p = self
            .players
            .get_mut(&player)
            .ok_or(ErrorCode::NotWelcomed)?;
        if let Some(local) = self.rooms.get_mut(room) {
            if local.contains(player) {
                // Already in: answer with the last count this shard heard of, change nothing.
                let members = local.total;
                self.reply(player, req, |req| Reply::Joined {
                    req,
                    room: room.to_owned(),
                    members,
                });
                return Ok(());
            }
            if let Some(joining) = local.joining.get_mut(&player) {
                // Already joining: answered with the same outcome. A join after a leave that
                // is still waiting too takes the leave back, with nothing sent to the home.
                if joining.leaving.is_some() {
                    if p.rooms.len() >= self.limits.max_rooms_per_connection {
                        return Err(ErrorCode::TooManyRooms);
                    }
                    joining.leaving = None;
                    p.rooms.push(room.to_owned());
                }
                joining.answers.extend(req.map(Answer::Join));
                return Ok(());
            }
        }
        if p.rooms.len() >= self.limits.max_rooms_per_connection {
            return Err(ErrorCode::TooManyRooms);
        }
        let home = home_shard(room, self.shards);
        let (wire, outbox, name) = (p.wire, Rc::clone(&p.outbox), Arc::clone(&p.name));
        if home == self.shard {
            let members = self.home_count(self.shard, room)?;
            if let Some(p) = self.players.get_mut(&player) {
                p.rooms.push(room.to_owned());
            }
            let local = self.rooms.entry(room.to_owned()).or_default();
            local.add(Member {
                player,
                wire,
                outbox,
            });
            local.total = members;
            self.reply(player, req, |req| Reply::Joined {
                req,
                room: room.to_owned(),
                members,
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
            answers: req.map(Answer::Join).into_iter().collect(),
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
            },
        );
        Ok(())
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

    /// Forgets a disconnected player and tells its rooms.
    pub fn disconnect(&mut self, player: PlayerId, now: Instant) {
        let rooms = self
            .players
            .get_mut(&player)
            .map(|p| std::mem::take(&mut p.rooms))
            .unwrap_or_default();
        for room in rooms {
            if self.is_member(player, &room) {
                self.remove_member(player, &room, LeaveReason::Disconnected, now);
            } else if let Some(joining) = self
                .rooms
                .get_mut(&room)
                .and_then(|r| r.joining.get_mut(&player))
            {
                joining.leaving = Some(LeaveReason::Disconnected);
            }
        }
        self.players.remove(&player);
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
        let name = Arc::clone(&p.name);
        if let Some(local) = self.rooms.get_mut(room) {
            local.remove(player);
            if local.is_empty() {
                self.rooms.remove(room);
            }
        }
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
        self.deliver_local(&bcast, now);
        let home = home_shard(&bcast.room, self.shards);
        if home == self.shard {
            self.forward_from_home(&bcast, None);
        } else {
            self.send_mesh(home, MeshMsg::Relay(bcast));
        }
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
    }

    /// Handles a message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Join { room, player, name } => match self.home_count(from, &room) {
                Ok(members) => {
                    // The answer goes before the notice and before any later message of the
                    // room, on the same FIFO path: the origin admits the player first.
                    self.send_mesh(
                        from,
                        MeshMsg::Joined {
                            room: room.clone(),
                            player,
                            members,
                        },
                    );
                    self.notify_joined(&room, player, name, members, now);
                }
                Err(_) => self.send_mesh(from, MeshMsg::Refused { room, player }),
            },
            MeshMsg::Joined {
                room,
                player,
                members,
            } => self.admit(from, &room, player, Ok(members), now),
            MeshMsg::Refused { room, player } => {
                self.admit(from, &room, player, Err(ErrorCode::RoomFull), now)
            }
            MeshMsg::Leave {
                room,
                player,
                name,
                reason,
            } => self.home_leave(from, &room, player, name, reason, now),
            MeshMsg::Relay(bcast) => {
                self.deliver_local(&bcast, now);
                self.forward_from_home(&bcast, Some(from));
            }
            MeshMsg::Deliver(bcast) => self.deliver_local(&bcast, now),
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
        outcome: Result<u32, ErrorCode>,
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
        if let Ok(members) = outcome {
            local.total = members;
            if joining.leaving.is_none() {
                // A player that disconnected has `leaving` set, so it is still connected.
                if let Some(p) = self.players.get(&player) {
                    local.add(Member {
                        player,
                        wire: p.wire,
                        outbox: Rc::clone(&p.outbox),
                    });
                }
            }
        }
        if local.is_empty() {
            self.rooms.remove(room);
        }
        if outcome.is_err() && joining.leaving.is_none() {
            if let Some(p) = self.players.get_mut(&player) {
                p.rooms.retain(|r| r != room);
            }
        }
        for answer in joining.answers {
            self.reply_now(
                player,
                match (answer, outcome) {
                    (Answer::Join(req), Ok(members)) => Reply::Joined {
                        req,
                        room: room.to_owned(),
                        members,
                    },
                    (Answer::Join(req), Err(code)) => Reply::Error {
                        req,
                        code,
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

    /// On the home shard: counts a join from shard `origin`, or refuses it (counted) when
    /// the room is full.
    fn home_count(&mut self, origin: ShardId, room: &str) -> Result<u32, ErrorCode> {
        let shards = self.shards;
        if self.homes.get(room).map_or(0, |h| h.total as usize) >= self.limits.max_room_members {
            self.stats.count_refusal(Refusal::RoomFull);
            return Err(ErrorCode::RoomFull);
        }
        let home = self
            .homes
            .entry(room.to_owned())
            .or_insert_with(|| HomeRoom {
                per_shard: vec![0; shards],
                total: 0,
            });
        if home.total == 0 {
            add(&self.stats.rooms, 1);
        }
        home.per_shard[origin] += 1;
        home.total += 1;
        Ok(home.total)
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
        let bcast = Arc::new(Broadcast::new(
            room.to_owned(),
            player,
            Body::MemberJoined {
                player: name,
                members,
            },
            now,
        ));
        self.deliver_local(&bcast, now);
        self.forward_from_home(&bcast, None);
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
        home.total = home.total.saturating_sub(1);
        let members = home.total;
        if members == 0 {
            self.homes.remove(room);
            self.stats
                .rooms
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let bcast = Arc::new(Broadcast::new(
            room.to_owned(),
            player,
            Body::MemberLeft {
                player: name,
                members,
                reason,
            },
            now,
        ));
        self.deliver_local(&bcast, now);
        self.forward_from_home(&bcast, None);
    }

    /// On the home shard: sends `bcast` once to every other shard with members, except the
    /// shard it came from (which delivered locally already).
    fn forward_from_home(&mut self, bcast: &Arc<Broadcast>, came_from: Option<ShardId>) {
        let Some(home) = self.homes.get(&bcast.room) else {
            return;
        };
        for (shard, &count) in home.per_shard.iter().enumerate() {
            if count > 0 && shard != self.shard && Some(shard) != came_from {
                self.mesh.push((shard, MeshMsg::Deliver(Arc::clone(bcast))));
            }
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
        if let Body::MemberJoined { members, .. } | Body::MemberLeft { members, .. } = bcast.body {
            room.total = members;
        }
        let mut delivered = 0;
        for m in &room.members {
            if m.player == bcast.exclude {
                continue;
            }
            // A full outbox closes its own connection (slow consumer); the room goes on.
            if m.outbox.push(bcast.frame(m.wire)).is_ok() {
                delivered += 1;
            }
        }
        if delivered > 0 {
            add(&self.stats.messages_out, delivered);
            if let Body::Event { .. } | Body::Nested { .. } = bcast.body {
                let micros = now.saturating_duration_since(bcast.received_at).as_micros() as u64;
                self.latency.saturating_record(micros.max(1));
            }
        }
    }

    /// Answers request `req` of `player`, if there is one and the player is still here.
    fn reply(&self, player: PlayerId, req: Option<u64>, make: impl FnOnce(u64) -> Reply) {
        if let Some(req) = req {
            self.reply_now(player, make(req));
        }
    }

    fn reply_now(&self, player: PlayerId, reply: Reply) {
        if let Some(p) = self.players.get(&player) {
            // A full outbox closes its own connection; there is nobody else to tell.
            let _ = p.outbox.push(reply.frame(p.wire));
        }
    }

    fn send_mesh(&mut self, to: ShardId, msg: MeshMsg) {
        self.mesh.push((to, msg));
    }
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
    };

    fn relays(shards: usize) -> Vec<Relay> {
        let stats = Arc::new(ShardStats::default());
        (0..shards)
            .map(|i| Relay::new(i, shards, LIMITS, Arc::clone(&stats)))
            .collect()
    }

    fn outbox() -> Rc<Outbox> {
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
    fn settle(relays: &mut [Relay]) {
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

    fn frames(outbox: &Outbox) -> Vec<ServerFrame> {
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

    #[test]
    fn a_join_past_max_room_members_is_refused_on_the_home_shard() {
        let mut r = relays(1);
        let now = Instant::now();
        let boxes: Vec<_> = (0..4).map(|_| outbox()).collect();
        for (i, b) in boxes.iter().enumerate() {
            r[0].connect(
                i as PlayerId,
                name(i as PlayerId),
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
        r[0].connect(0, name(0), Wire::Native, Rc::clone(&boxes[0]));
        for p in 1..5 {
            r[1].connect(p, name(p), Wire::Native, Rc::clone(&boxes[p as usize]));
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
        r[0].connect(0, name(0), Wire::Native, Rc::clone(&a));
        r[1].connect(1, name(1), Wire::Native, Rc::clone(&b));
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
        r[1].connect(1, name(1), Wire::Native, outbox());
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
        r[0].connect(0, name(0), Wire::Native, Rc::clone(&watcher));
        r[0].join(0, None, &room, now).unwrap();
        // Accepted then left: the home counts the join, then the leave.
        let b = outbox();
        r[1].connect(1, name(1), Wire::Native, Rc::clone(&b));
        r[1].join(1, Some(1), &room, now).unwrap();
        r[1].leave(1, Some(2), &room, now).unwrap();
        // Disconnected while joining.
        r[1].connect(2, name(2), Wire::Native, outbox());
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
            r[0].connect(p, name(p), Wire::Native, outbox());
            r[0].join(p, None, &room, now).unwrap();
        }
        let b = outbox();
        r[1].connect(9, name(9), Wire::Native, Rc::clone(&b));
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
                    name(i as PlayerId),
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
    fn a_message_over_the_budget_is_refused_before_any_outbox() {
        let mut r = relays(2);
        let now = Instant::now();
        let room = room_homed_on(1, 2);
        let (a, b) = (outbox(), outbox());
        r[0].connect(0, name(0), Wire::Native, Rc::clone(&a));
        r[0].connect(1, name(1), Wire::SioPolling, Rc::clone(&b));
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
}
