//! Rooms, membership and fan-out: one [`Relay`] per shard, sans-IO.
//!
//! Each room has one home shard ([`home_shard`]) that holds its member count as one entry per
//! shard, never per remote member. Every shard keeps the list of its own members of each
//! room. A message from a member is delivered at once to the other members on the sender's
//! shard and crosses to each other shard that has members exactly once (through the home
//! shard when the sender is elsewhere). Paths are fixed per (sender, receiver) pair and
//! every hop is FIFO, so each receiver sees one sender's messages in the order sent.
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
    PlayerId, Reply, Wire,
};
pub use outbox::{Drained, Outbox, OutboxLimits, PushError, ReadyQueue};

use crate::proto::native::{ErrorCode, LeaveReason};
use crate::stats::{add, new_latency_histogram, ShardStats};

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
}

/// What crosses between shards. `Send` by construction: only owned data and `Arc`s.
#[derive(Debug)]
pub enum MeshMsg {
    /// origin -> home: a player joined on the origin shard.
    Join {
        /// Room.
        room: String,
        /// Joining player.
        player: PlayerId,
        /// Request to answer, if any.
        req: Option<u64>,
    },
    /// home -> origin: the join is registered.
    Joined {
        /// Room.
        room: String,
        /// Player to answer.
        player: PlayerId,
        /// Request id.
        req: Option<u64>,
        /// Count after the join.
        members: u32,
    },
    /// origin -> home: a player left (or disconnected).
    Leave {
        /// Room.
        room: String,
        /// Who.
        player: PlayerId,
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

/// Members of a room on this shard.
#[derive(Debug, Default)]
struct LocalRoom {
    members: Vec<Member>,
    /// Room-wide member count, as last heard from the home shard.
    total: u32,
}

/// A room homed on this shard: how many members each shard has.
#[derive(Debug)]
struct HomeRoom {
    per_shard: Vec<u32>,
    total: u32,
}

#[derive(Debug)]
struct Player {
    wire: Wire,
    outbox: Rc<Outbox>,
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

    /// Registers a connected player.
    pub fn connect(&mut self, player: PlayerId, wire: Wire, outbox: Rc<Outbox>) {
        self.players.insert(
            player,
            Player {
                wire,
                outbox,
                rooms: Vec::new(),
            },
        );
    }

    /// Whether `player` is in `room`.
    pub fn is_member(&self, player: PlayerId, room: &str) -> bool {
        self.players
            .get(&player)
            .is_some_and(|p| p.rooms.iter().any(|r| r == room))
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

    /// Adds `player` to `room`. The `Joined` reply reaches the player's outbox once the home
    /// shard has counted the join; joining a room twice answers again and changes nothing.
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
        if p.rooms.iter().any(|r| r == room) {
            // Already in: answer with the last count this shard heard of, change nothing.
            let members = self.rooms.get(room).map_or(0, |r| r.total);
            self.reply(player, req, |req| Reply::Joined {
                req,
                room: room.to_owned(),
                members,
            });
            return Ok(());
        }
        if p.rooms.len() >= self.limits.max_rooms_per_connection {
            return Err(ErrorCode::TooManyRooms);
        }
        p.rooms.push(room.to_owned());
        let member = Member {
            player,
            wire: p.wire,
            outbox: Rc::clone(&p.outbox),
        };
        self.rooms
            .entry(room.to_owned())
            .or_default()
            .members
            .push(member);
        let home = home_shard(room, self.shards);
        if home == self.shard {
            self.home_join(self.shard, room, player, req, now);
        } else {
            self.send_mesh(
                home,
                MeshMsg::Join {
                    room: room.to_owned(),
                    player,
                    req,
                },
            );
        }
        Ok(())
    }

    /// Removes `player` from `room` and answers `Left`.
    pub fn leave(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if !self.is_member(player, room) {
            return Err(ErrorCode::NotMember);
        }
        self.remove_member(player, room, LeaveReason::Left, now);
        self.reply(player, req, |req| Reply::Left {
            req,
            room: room.to_owned(),
        });
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
            self.remove_member(player, &room, LeaveReason::Disconnected, now);
        }
        self.players.remove(&player);
    }

    fn remove_member(&mut self, player: PlayerId, room: &str, reason: LeaveReason, now: Instant) {
        if let Some(p) = self.players.get_mut(&player) {
            p.rooms.retain(|r| r != room);
        }
        if let Some(local) = self.rooms.get_mut(room) {
            local.members.retain(|m| m.player != player);
            if local.members.is_empty() {
                self.rooms.remove(room);
            }
        }
        let home = home_shard(room, self.shards);
        if home == self.shard {
            self.home_leave(self.shard, room, player, reason, now);
        } else {
            self.send_mesh(
                home,
                MeshMsg::Leave {
                    room: room.to_owned(),
                    player,
                    reason,
                },
            );
        }
    }

    /// Broadcasts a member's message to the rest of `room`.
    pub fn send(
        &mut self,
        player: PlayerId,
        room: &str,
        body: Body,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if !self.is_member(player, room) {
            return Err(ErrorCode::NotMember);
        }
        self.broadcast(player, room, body, now);
        Ok(())
    }

    /// Emits `body` to `room` (a room key) from the server or an application handler,
    /// skipping `exclude`; membership is not required. Used by the socket.io API.
    pub fn broadcast(&mut self, exclude: PlayerId, room: &str, body: Body, now: Instant) {
        add(&self.stats.messages_in, 1);
        let bcast = Arc::new(Broadcast::new(room.to_owned(), exclude, body, now));
        self.deliver_local(&bcast, now);
        let home = home_shard(room, self.shards);
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
            if let Some(local) = self.rooms.get_mut(room) {
                for m in local.members.iter_mut().filter(|m| m.player == player) {
                    m.wire = wire;
                    m.outbox = Rc::clone(&outbox);
                }
            }
        }
    }

    /// Handles a message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Join { room, player, req } => self.home_join(from, &room, player, req, now),
            MeshMsg::Joined {
                room,
                player,
                req,
                members,
            } => {
                self.note_total(&room, members);
                if self.is_member(player, &room) {
                    self.reply(player, req, |req| Reply::Joined { req, room, members });
                }
            }
            MeshMsg::Leave {
                room,
                player,
                reason,
            } => self.home_leave(from, &room, player, reason, now),
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

    fn home_join(
        &mut self,
        origin: ShardId,
        room: &str,
        player: PlayerId,
        req: Option<u64>,
        now: Instant,
    ) {
        let shards = self.shards;
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
        let members = home.total;
        self.note_total(room, members);
        if origin == self.shard {
            self.reply(player, req, |req| Reply::Joined {
                req,
                room: room.to_owned(),
                members,
            });
        } else {
            self.send_mesh(
                origin,
                MeshMsg::Joined {
                    room: room.to_owned(),
                    player,
                    req,
                    members,
                },
            );
        }
        let bcast = Arc::new(Broadcast::new(
            room.to_owned(),
            player,
            Body::MemberJoined { player, members },
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
                player,
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

    fn reply(&self, player: PlayerId, req: Option<u64>, make: impl FnOnce(u64) -> Reply) {
        let (Some(req), Some(p)) = (req, self.players.get(&player)) else {
            return;
        };
        let _ = p.outbox.push(make(req).frame(p.wire));
    }

    fn note_total(&mut self, room: &str, members: u32) {
        if let Some(local) = self.rooms.get_mut(room) {
            local.total = members;
        }
    }

    fn send_mesh(&mut self, to: ShardId, msg: MeshMsg) {
        self.mesh.push((to, msg));
    }
}
