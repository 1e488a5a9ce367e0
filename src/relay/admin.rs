//! What the operator's dashboard asks of the rooms (docs/OPERATIONS.md, "Dashboard"),
//! sans-IO: a page of the rooms, one room's members, and two actions, kick a player and
//! close a room.
//!
//! Nothing here runs unless the dashboard asks, and nothing is kept for it in between:
//! each request is a scatter-gather over the mesh, as `room:list` is
//! ([`MeshMsg::Admin`]). The asking shard answers its own part at once, every other shard
//! answers its part, and once all have, the result goes as one JSON text into the asker's
//! inbox, an [`Outbox`] that wakes the waiting connection (the dashboard's feed or an
//! HTTP request). Every answer is bounded: a page of [`ROOMS_PAGE`] rooms (each shard sends
//! at most the pages up to the one asked), at most [`MEMBERS_LISTED`] members.
//!
//! A room's message rate comes from a count its home keeps (`HomeRoom::messages`): one add
//! per broadcast, at a lookup the home makes for every broadcast anyway, rather than a
//! sample, so that a quiet room's rate is exact and a busy one costs no more than it did.
//! The dashboard turns two counts a second apart into a rate.
//!
//! A kick reaches every shard (a player lives where its connection is, which for a
//! recovered Socket.IO session need not be the shard that made its id). The shard that
//! holds the player takes it out of its rooms (they hear `kicked`) and ends it: a native
//! connection is closed (1008 `kicked`); a Socket.IO session is ended by its Engine.IO
//! endpoint, which the relay cannot reach, so the player is queued
//! ([`Relay::take_kicked_sessions`]) and the endpoint's timer fired. A room is closed at
//! its home, which forgets it and tells each shard with members to drop them (each is told
//! it was kicked from the room; nobody is told of the others leaving, since all are).

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::recovery::Waker;
use super::{home_shard, split_room_key, MeshMsg, Outbox, PlayerId, Relay, Reply, ShardId, Wire};
use crate::proto::native::LeaveReason;

/// Rooms in one page of the dashboard's table: a screenful.
pub const ROOMS_PAGE: usize = 50;

/// Last page the table may ask for: each shard sends the rooms of every page up to the
/// one asked, `(page + 1) * ROOMS_PAGE`, so the page bounds that work; past the twentieth
/// page (a thousand rooms) an operator searches instead.
pub const MAX_ROOMS_PAGE: u32 = 20;

/// Most members the inspector lists for a room, and most each shard sends: a game room is
/// far smaller, and a lobby's first hundred say what it is.
pub const MEMBERS_LISTED: usize = 100;

/// Most dashboard requests one shard waits on at once. Every shard answers within a mesh
/// round trip unless one is stuck; past this the oldest is given up (its asker has stopped
/// waiting by then), so that a stuck shard cannot make requests pile up.
const MAX_GATHERS: usize = 64;

/// Which rooms the table shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomsFilter {
    /// Only rooms whose name holds this text (ASCII case ignored); empty for all.
    pub search: String,
    /// Page, from 0, at most [`MAX_ROOMS_PAGE`]; rooms by members (most first), then name.
    pub page: u32,
}

/// A room as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminRoom {
    /// The relay's key for it (what an action names).
    pub key: String,
    /// Its name.
    pub name: String,
    /// Its Socket.IO namespace (`/` is the main one, shared with native clients).
    pub namespace: String,
    /// Its home shard.
    pub home: ShardId,
    /// Members, room-wide.
    pub members: u32,
    /// Messages broadcast to it since it was made.
    pub messages: u64,
    /// Made by `room:create` (a game room with a host and a code).
    pub created: bool,
    /// Not listed by `room:list`.
    pub private: bool,
    /// Its host locked it.
    pub locked: bool,
    /// Its host, the longest-present member.
    pub host: Option<String>,
}

/// What a room's home knows of it, for the inspector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminRoomHome {
    /// The room, as the table lists it.
    #[serde(flatten)]
    pub room: AdminRoom,
    /// Members per shard.
    pub per_shard: Vec<u32>,
    /// Most members (`max_room_members`, or the room's own cap).
    pub max_members: u32,
    /// Messages its replay ring keeps (`[resume]`).
    pub kept: usize,
}

/// A member as the inspector lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminMember {
    /// Its player id, as decimal text (ids exceed the integers JavaScript holds exactly):
    /// what a kick names.
    pub id: String,
    /// The id others see (`from`): a token's `sub`, or the player id.
    pub name: String,
    /// The shard its connection is on.
    pub shard: ShardId,
    /// `native` or `socket.io`.
    pub protocol: &'static str,
    /// `websocket` or `polling`.
    pub transport: &'static str,
    /// Its connection dropped and its session waits to be resumed.
    pub away: bool,
}

/// What crosses the mesh for the dashboard (in [`MeshMsg::Admin`]).
#[derive(Debug)]
pub enum AdminMsg {
    /// asker -> every shard: list your homed rooms that `filter` shows.
    Rooms {
        /// The asker's request.
        query: u64,
        /// Which rooms.
        filter: RoomsFilter,
    },
    /// answer to `Rooms`.
    RoomsAnswer {
        /// The asker's request.
        query: u64,
        /// Rooms homed there that the filter shows, in all.
        matching: u64,
        /// The first of them, up to the asked page's end.
        rooms: Vec<AdminRoom>,
    },
    /// asker -> every shard: what you know of `room`.
    Room {
        /// The asker's request.
        query: u64,
        /// The room's key.
        room: String,
    },
    /// answer to `Room`.
    RoomAnswer {
        /// The asker's request.
        query: u64,
        /// The home's view, from the room's home.
        home: Option<Box<AdminRoomHome>>,
        /// Members there, at most [`MEMBERS_LISTED`].
        members: Vec<AdminMember>,
    },
    /// asker -> every shard: kick `player` if you hold it.
    Kick {
        /// The asker's request.
        query: u64,
        /// Who.
        player: PlayerId,
    },
    /// answer to `Kick`: the kicked player's protocol, if it was there.
    Kicked {
        /// The asker's request.
        query: u64,
        /// `native` or `socket.io`.
        protocol: Option<&'static str>,
    },
    /// asker -> the room's home: close it.
    Close {
        /// The asker's request.
        query: u64,
        /// The room's key.
        room: String,
    },
    /// answer to `Close`: its member count, if it existed.
    Closed {
        /// The asker's request.
        query: u64,
        /// Members it had.
        members: Option<u32>,
    },
    /// home -> a shard with members: the room is gone; drop them.
    Dropped {
        /// The room's key.
        room: String,
    },
}

/// One dashboard request this shard waits on.
#[derive(Debug)]
struct Gather {
    query: u64,
    /// Where the answer goes (its connection waits on it).
    inbox: Rc<Outbox>,
    /// Shards that have not answered.
    left: usize,
    part: Part,
}

/// What a request has gathered so far.
#[derive(Debug)]
enum Part {
    Rooms {
        filter: RoomsFilter,
        matching: u64,
        rooms: Vec<AdminRoom>,
    },
    Room {
        key: String,
        home: Option<Box<AdminRoomHome>>,
        members: Vec<AdminMember>,
    },
    Kick {
        player: PlayerId,
        protocol: Option<&'static str>,
    },
    Close {
        key: String,
        members: Option<u32>,
    },
}

/// The dashboard's state in one shard's relay: requests in flight, and Socket.IO players
/// kicked whose sessions the Engine.IO endpoint has to end.
#[derive(Debug, Default)]
pub(super) struct AdminState {
    last_query: u64,
    gathers: Vec<Gather>,
    kicked_sessions: Vec<PlayerId>,
    /// The timer that makes the dashboard's endpoint end them.
    waker: Option<Waker>,
}

/// `(protocol, transport)` of a wire, as the dashboard names them.
fn wire_names(wire: Wire) -> (&'static str, &'static str) {
    match wire {
        Wire::Native => ("native", "websocket"),
        Wire::SioWs => ("socket.io", "websocket"),
        Wire::SioPolling => ("socket.io", "polling"),
        Wire::SocketCluster => ("socketcluster", "websocket"),
    }
}

/// Whether `key` (a room's name in its namespace) holds `search`, ASCII case ignored.
fn shows(name: &str, search: &str) -> bool {
    search.is_empty()
        || name
            .as_bytes()
            .windows(search.len())
            .any(|w| w.eq_ignore_ascii_case(search.as_bytes()))
}

/// The table's order: most members first, then by key.
fn table_order(a: &AdminRoom, b: &AdminRoom) -> std::cmp::Ordering {
    b.members.cmp(&a.members).then_with(|| a.key.cmp(&b.key))
}

impl Relay {
    /// Sets the timer that tells the dashboard's endpoint of kicked Socket.IO players
    /// (once per shard, before it serves); without one, such a kick only takes the player
    /// out of its rooms.
    pub fn set_admin_waker(&mut self, waker: Waker) {
        self.admin.waker = Some(waker);
    }

    /// The Socket.IO players kicked since the last call, whose sessions are to be ended.
    pub fn take_kicked_sessions(&mut self) -> Vec<PlayerId> {
        std::mem::take(&mut self.admin.kicked_sessions)
    }

    /// Lists the rooms `filter` shows, from every shard; the answer (JSON, `kind: "rooms"`)
    /// goes to `inbox`. Returns the request's number, which the answer carries.
    pub fn admin_rooms(&mut self, filter: RoomsFilter, inbox: &Rc<Outbox>) -> u64 {
        let filter = RoomsFilter {
            page: filter.page.min(MAX_ROOMS_PAGE),
            ..filter
        };
        let (matching, rooms) = self.rooms_here(&filter);
        let query = self.admin_gather(
            inbox,
            Part::Rooms {
                filter: filter.clone(),
                matching,
                rooms,
            },
        );
        self.admin_ask_others(
            |query| AdminMsg::Rooms {
                query,
                filter: filter.clone(),
            },
            query,
        );
        self.admin_gathered(query);
        query
    }

    /// What every shard knows of room `key`: the home's view and the members (JSON,
    /// `kind: "room"`, to `inbox`).
    pub fn admin_room(&mut self, key: &str, inbox: &Rc<Outbox>) -> u64 {
        let (home, members) = self.room_here(key);
        let query = self.admin_gather(
            inbox,
            Part::Room {
                key: key.to_owned(),
                home,
                members,
            },
        );
        self.admin_ask_others(
            |query| AdminMsg::Room {
                query,
                room: key.to_owned(),
            },
            query,
        );
        self.admin_gathered(query);
        query
    }

    /// Kicks `player` wherever it is (JSON, `kind: "kick"`, to `inbox`, with its protocol
    /// or `kicked: false`).
    pub fn admin_kick(&mut self, player: PlayerId, inbox: &Rc<Outbox>, now: Instant) -> u64 {
        let protocol = self.kick_here(player, now);
        let query = self.admin_gather(inbox, Part::Kick { player, protocol });
        self.admin_ask_others(|query| AdminMsg::Kick { query, player }, query);
        self.admin_gathered(query);
        query
    }

    /// Closes room `key` at its home (JSON, `kind: "close"`, to `inbox`, with the members
    /// it had or `closed: false`).
    pub fn admin_close_room(&mut self, key: &str, inbox: &Rc<Outbox>, now: Instant) -> u64 {
        let home = home_shard(key, self.shards);
        let members = (home == self.shard).then(|| self.close_here(key, now));
        let query = self.admin_gather(
            inbox,
            Part::Close {
                key: key.to_owned(),
                members: members.flatten(),
            },
        );
        // Only the home answers: the one shard to wait for, or none when it is this one.
        let left = usize::from(members.is_none());
        if let Some(g) = self.admin_gather_mut(query) {
            g.left = left;
        }
        if members.is_none() {
            self.send_mesh(
                home,
                MeshMsg::Admin(Box::new(AdminMsg::Close {
                    query,
                    room: key.to_owned(),
                })),
            );
        }
        self.admin_gathered(query);
        query
    }

    /// Registers a request that waits on every other shard; its number.
    fn admin_gather(&mut self, inbox: &Rc<Outbox>, part: Part) -> u64 {
        if self.admin.gathers.len() >= MAX_GATHERS {
            self.admin.gathers.remove(0);
        }
        self.admin.last_query += 1;
        let query = self.admin.last_query;
        self.admin.gathers.push(Gather {
            query,
            inbox: Rc::clone(inbox),
            left: self.shards - 1,
            part,
        });
        query
    }

    fn admin_gather_mut(&mut self, query: u64) -> Option<&mut Gather> {
        self.admin.gathers.iter_mut().find(|g| g.query == query)
    }

    /// Sends `make(query)` to every other shard.
    fn admin_ask_others(&mut self, make: impl Fn(u64) -> AdminMsg, query: u64) {
        let me = self.shard;
        for shard in (0..self.shards).filter(|&s| s != me) {
            self.send_mesh(shard, MeshMsg::Admin(Box::new(make(query))));
        }
    }

    /// Answers request `query` once every shard has.
    fn admin_gathered(&mut self, query: u64) {
        let Some(at) = self
            .admin
            .gathers
            .iter()
            .position(|g| g.query == query && g.left == 0)
        else {
            return;
        };
        let g = self.admin.gathers.swap_remove(at);
        let answer = match g.part {
            Part::Rooms {
                filter,
                matching,
                mut rooms,
            } => {
                rooms.sort_by(table_order);
                let start = filter.page as usize * ROOMS_PAGE;
                let next_page = rooms.len() > start + ROOMS_PAGE && filter.page < MAX_ROOMS_PAGE;
                let page: Vec<AdminRoom> = rooms.into_iter().skip(start).take(ROOMS_PAGE).collect();
                json!({
                    "kind": "rooms",
                    "query": query,
                    "search": filter.search,
                    "page": filter.page,
                    "page_size": ROOMS_PAGE,
                    "matching": matching,
                    "next_page": next_page,
                    "rooms": page,
                })
            }
            Part::Room {
                key,
                home,
                mut members,
            } => {
                let (namespace, name) = split_room_key(&key);
                // Longest-known ids first would need the home's order; by shard, then id,
                // keeps the list steady from one refresh to the next.
                members.sort_by(|a, b| (a.shard, &a.id).cmp(&(b.shard, &b.id)));
                let listed = members.len();
                members.truncate(MEMBERS_LISTED);
                json!({
                    "kind": "room",
                    "query": query,
                    "key": key,
                    "name": name,
                    "namespace": namespace,
                    "found": home.is_some() || listed > 0,
                    "home": home,
                    "members": members,
                    "truncated": listed > MEMBERS_LISTED
                        || home.as_ref().is_some_and(|h| h.room.members as usize > MEMBERS_LISTED),
                })
            }
            Part::Kick { player, protocol } => json!({
                "kind": "kick",
                "query": query,
                "player": player.to_string(),
                "kicked": protocol.is_some(),
                "protocol": protocol,
            }),
            Part::Close { key, members } => json!({
                "kind": "close",
                "query": query,
                "room": key,
                "closed": members.is_some(),
                "members": members,
            }),
        };
        // The inbox is the asker's alone and holds a few answers; a full one means its
        // connection stopped reading them and is being closed.
        let _ = g.inbox.push(Bytes::from(answer.to_string()));
    }

    /// Handles the dashboard's messages of the mesh.
    pub(super) fn handle_admin_mesh(&mut self, from: ShardId, msg: AdminMsg, now: Instant) {
        let answer = |relay: &mut Relay, msg| relay.send_mesh(from, MeshMsg::Admin(Box::new(msg)));
        match msg {
            AdminMsg::Rooms { query, filter } => {
                let (matching, rooms) = self.rooms_here(&filter);
                answer(
                    self,
                    AdminMsg::RoomsAnswer {
                        query,
                        matching,
                        rooms,
                    },
                );
            }
            AdminMsg::Room { query, room } => {
                let (home, members) = self.room_here(&room);
                answer(
                    self,
                    AdminMsg::RoomAnswer {
                        query,
                        home,
                        members,
                    },
                );
            }
            AdminMsg::Kick { query, player } => {
                let protocol = self.kick_here(player, now);
                answer(self, AdminMsg::Kicked { query, protocol });
            }
            AdminMsg::Close { query, room } => {
                let members = self.close_here(&room, now);
                answer(self, AdminMsg::Closed { query, members });
            }
            AdminMsg::Dropped { room } => self.drop_members(&room),
            AdminMsg::RoomsAnswer {
                query,
                matching: n,
                rooms: more,
            } => self.admin_answered(query, |part| {
                if let Part::Rooms {
                    matching, rooms, ..
                } = part
                {
                    *matching += n;
                    rooms.extend(more);
                }
            }),
            AdminMsg::RoomAnswer {
                query,
                home: theirs,
                members: more,
            } => self.admin_answered(query, |part| {
                if let Part::Room { home, members, .. } = part {
                    if theirs.is_some() {
                        *home = theirs;
                    }
                    members.extend(more);
                }
            }),
            AdminMsg::Kicked {
                query,
                protocol: theirs,
            } => self.admin_answered(query, |part| {
                if let Part::Kick { protocol, .. } = part {
                    *protocol = protocol.or(theirs);
                }
            }),
            AdminMsg::Closed {
                query,
                members: theirs,
            } => self.admin_answered(query, |part| {
                if let Part::Close { members, .. } = part {
                    *members = theirs;
                }
            }),
        }
    }

    /// Adds one shard's answer to request `query` (gone: given up), and answers it if it
    /// was the last.
    fn admin_answered(&mut self, query: u64, add: impl FnOnce(&mut Part)) {
        let Some(g) = self.admin_gather_mut(query) else {
            return;
        };
        g.left = g.left.saturating_sub(1);
        add(&mut g.part);
        self.admin_gathered(query);
    }

    /// This shard's homed rooms that `filter` shows: how many, and the first up to the
    /// asked page's end in the table's order. O(rooms homed here), once per request.
    fn rooms_here(&self, filter: &RoomsFilter) -> (u64, Vec<AdminRoom>) {
        let mut rooms: Vec<AdminRoom> = self
            .homes
            .iter()
            .filter(|(key, _)| shows(split_room_key(key).1, &filter.search))
            .map(|(key, home)| self.admin_room_of(key, home))
            .collect();
        let matching = rooms.len() as u64;
        let keep = (filter.page as usize + 1) * ROOMS_PAGE;
        if rooms.len() > keep {
            rooms.select_nth_unstable_by(keep, table_order);
            rooms.truncate(keep);
        }
        (matching, rooms)
    }

    fn admin_room_of(&self, key: &str, home: &super::HomeRoom) -> AdminRoom {
        let (namespace, name) = split_room_key(key);
        AdminRoom {
            key: key.to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            home: self.shard,
            members: home.total,
            messages: home.messages,
            created: home.options.is_some(),
            private: home.options.as_ref().is_some_and(|o| o.private),
            locked: home.locked,
            host: home.host().map(|(host, _)| host.to_string()),
        }
    }

    /// What this shard knows of room `key`: the home's view if it is its home, and its
    /// members here (at most [`MEMBERS_LISTED`]).
    fn room_here(&self, key: &str) -> (Option<Box<AdminRoomHome>>, Vec<AdminMember>) {
        let home = self.homes.get(key).map(|home| {
            Box::new(AdminRoomHome {
                room: self.admin_room_of(key, home),
                per_shard: home.per_shard.clone(),
                max_members: home
                    .options
                    .as_ref()
                    .map_or(self.limits.max_room_members as u32, |o| o.max_members),
                kept: home.kept.len(),
            })
        });
        let members = self.rooms.get(key).map_or_else(Vec::new, |local| {
            local
                .members
                .iter()
                .take(MEMBERS_LISTED)
                .map(|m| {
                    let (protocol, transport) = wire_names(m.wire);
                    AdminMember {
                        id: m.player.to_string(),
                        name: self.players.get(&m.player).map_or_else(
                            || m.player.to_string(),
                            |p| p.identity.player.to_string(),
                        ),
                        shard: self.shard,
                        protocol,
                        transport,
                        away: m.away,
                    }
                })
                .collect()
        });
        (home, members)
    }

    /// Kicks `player` if this shard holds it: it leaves its rooms (they hear `kicked`) and
    /// its connection ends. Its protocol, or `None` when it is not here.
    fn kick_here(&mut self, player: PlayerId, now: Instant) -> Option<&'static str> {
        let p = self.players.get(&player)?;
        let (wire, outbox) = (p.wire, Rc::clone(&p.outbox));
        if p.session.as_ref().is_some_and(|s| s.away_until.is_some()) {
            // Detached: nobody to close, and its session ends here.
            self.stats
                .sessions_away
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.disconnect_as(player, LeaveReason::Kicked, now);
        match wire {
            // The connection counts the close as `kicked` when it ends.
            Wire::Native | Wire::SocketCluster => outbox.kick(),
            Wire::SioWs | Wire::SioPolling => {
                if let Some(waker) = self.admin.waker {
                    self.admin.kicked_sessions.push(player);
                    self.wakeups.push(waker);
                }
            }
        }
        Some(wire_names(wire).0)
    }

    /// On the room's home: forgets room `key` and tells each shard with members to drop
    /// them. The members it had, or `None` when it is not homed here.
    fn close_here(&mut self, key: &str, _now: Instant) -> Option<u32> {
        let home = self.homes.get(key)?;
        let members = home.total;
        let with_members: Vec<ShardId> = home
            .per_shard
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(s, _)| s)
            .collect();
        self.destroy_home(key);
        for shard in with_members {
            if shard == self.shard {
                self.drop_members(key);
            } else {
                self.send_mesh(
                    shard,
                    MeshMsg::Admin(Box::new(AdminMsg::Dropped {
                        room: key.to_owned(),
                    })),
                );
            }
        }
        Some(members)
    }

    /// The room `key` was closed at its home: its members here leave it, each told it was
    /// kicked; joins still waiting for the home's answer stay (the home answers them as a
    /// new room's).
    fn drop_members(&mut self, key: &str) {
        let Some(local) = self.rooms.get_mut(key) else {
            return;
        };
        let members = std::mem::take(&mut local.members);
        local.slots = Default::default();
        if local.is_empty() {
            self.rooms.remove(key);
        }
        for m in members {
            let Some(p) = self.players.get_mut(&m.player) else {
                continue;
            };
            p.rooms.retain(|r| r != key);
            // A full outbox closes its own connection; it has left the room either way.
            let _ = p.outbox.push(
                Reply::Kicked {
                    room: key.to_owned(),
                }
                .frame(p.wire),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::auth::Identity;
    use crate::proto::native::ServerFrame;
    use crate::relay::tests::{outbox, settle};
    use crate::relay::{Body, RelayLimits};
    use crate::stats::ShardStats;

    const LIMITS: RelayLimits = RelayLimits {
        max_name_len: 64,
        max_rooms_per_connection: 8,
        max_room_members: 100,
        max_message_bytes: 4096,
        history: None,
        rooms: crate::config::RoomsConfig::DEFAULT,
    };

    fn relays(shards: usize) -> Vec<Relay> {
        (0..shards)
            .map(|i| Relay::new(i, shards, LIMITS, Arc::new(ShardStats::default())))
            .collect()
    }

    /// The one answer an inbox holds.
    fn answer(inbox: &Outbox) -> Value {
        let mut frames = Vec::new();
        assert_eq!(inbox.drain(&mut frames), Drained::Frames, "an answer");
        assert_eq!(frames.len(), 1);
        serde_json::from_slice(&frames[0]).unwrap()
    }

    /// Connects player `id` on `r` (`wire`) and joins `rooms`; its outbox.
    fn member(
        r: &mut [Relay],
        shard: usize,
        id: PlayerId,
        wire: Wire,
        rooms: &[&str],
    ) -> Rc<Outbox> {
        let out = outbox();
        r[shard].connect(
            id,
            Identity::anonymous(id.to_string()),
            wire,
            Rc::clone(&out),
        );
        for room in rooms {
            r[shard].join(id, None, room, Instant::now()).unwrap();
        }
        settle(r);
        out
    }

    fn send(r: &mut [Relay], shard: usize, id: PlayerId, room: &str) {
        let body = Body::Event {
            from: Arc::from(id.to_string()),
            event: "move".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            kind: crate::proto::native::PayloadKind::Json,
        };
        r[shard].send(id, room, body, Instant::now()).unwrap();
        settle(r);
    }

    use crate::relay::Drained;

    #[test]
    fn the_rooms_table_gathers_every_shard_by_members_then_name_and_counts_messages() {
        let mut r = relays(3);
        member(&mut r, 0, 1, Wire::Native, &["lobby", "duel"]);
        member(&mut r, 1, 2, Wire::SioWs, &["lobby", "duel"]);
        member(&mut r, 2, 3, Wire::SioPolling, &["lobby", "solo"]);
        for _ in 0..3 {
            send(&mut r, 0, 1, "lobby");
        }
        send(&mut r, 2, 3, "lobby");
        let inbox = outbox();
        let query = r[1].admin_rooms(RoomsFilter::default(), &inbox);
        settle(&mut r);
        let a = answer(&inbox);
        assert_eq!(a["query"], query);
        assert_eq!(a["matching"], 3);
        let listed: Vec<(&str, u64, u64)> = a["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["key"].as_str().unwrap(),
                    x["members"].as_u64().unwrap(),
                    x["messages"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(listed, [("lobby", 3, 4), ("duel", 2, 0), ("solo", 1, 0)]);
        assert_eq!(a["rooms"][0]["home"], home_shard("lobby", 3));

        // A search keeps the rooms whose name holds it, case aside.
        let inbox = outbox();
        r[2].admin_rooms(
            RoomsFilter {
                search: "UEL".into(),
                page: 0,
            },
            &inbox,
        );
        settle(&mut r);
        let a = answer(&inbox);
        assert_eq!(a["matching"], 1);
        assert_eq!(a["rooms"][0]["key"], "duel");
    }

    #[test]
    fn the_table_is_paged_and_bounded() {
        let mut r = relays(2);
        let rooms: Vec<String> = (0..ROOMS_PAGE * 2 + 5)
            .map(|i| format!("r{i:03}"))
            .collect();
        for (i, room) in rooms.iter().enumerate() {
            member(&mut r, i % 2, i as PlayerId + 1, Wire::Native, &[room]);
        }
        let page = |r: &mut Vec<Relay>, page: u32| {
            let inbox = outbox();
            r[0].admin_rooms(
                RoomsFilter {
                    search: String::new(),
                    page,
                },
                &inbox,
            );
            settle(r);
            answer(&inbox)
        };
        let first = page(&mut r, 0);
        assert_eq!(first["rooms"].as_array().unwrap().len(), ROOMS_PAGE);
        assert_eq!(first["rooms"][0]["key"], "r000", "equal members: by name");
        assert_eq!(first["next_page"], true);
        let last = page(&mut r, 2);
        assert_eq!(last["rooms"].as_array().unwrap().len(), 5);
        assert_eq!(last["next_page"], false);
        assert_eq!(last["matching"], ROOMS_PAGE * 2 + 5);
        // Past the last page allowed, the last page allowed.
        assert_eq!(page(&mut r, 1000)["page"], MAX_ROOMS_PAGE);
    }

    #[test]
    fn the_inspector_lists_members_with_protocol_and_transport_from_every_shard() {
        let mut r = relays(3);
        member(&mut r, 0, 10, Wire::Native, &["arena"]);
        member(&mut r, 1, 11, Wire::SioWs, &["arena"]);
        member(&mut r, 2, 12, Wire::SioPolling, &["arena"]);
        send(&mut r, 1, 11, "arena");
        let inbox = outbox();
        r[0].admin_room("arena", &inbox);
        settle(&mut r);
        let a = answer(&inbox);
        assert_eq!(a["found"], true);
        assert_eq!(a["home"]["members"], 3);
        assert_eq!(a["home"]["messages"], 1);
        assert_eq!(a["home"]["host"], "10");
        let members: Vec<(String, String, String, u64)> = a["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let s = |k: &str| m[k].as_str().unwrap().to_owned();
                (
                    s("id"),
                    s("protocol"),
                    s("transport"),
                    m["shard"].as_u64().unwrap(),
                )
            })
            .collect();
        let s = |v: &str| v.to_owned();
        assert_eq!(
            members,
            [
                (s("10"), s("native"), s("websocket"), 0),
                (s("11"), s("socket.io"), s("websocket"), 1),
                (s("12"), s("socket.io"), s("polling"), 2),
            ]
        );
        let inbox = outbox();
        r[1].admin_room("nowhere", &inbox);
        settle(&mut r);
        assert_eq!(answer(&inbox)["found"], false);
    }

    #[test]
    fn a_kick_reaches_the_players_shard_and_ends_it_by_its_protocol() {
        let mut r = relays(2);
        for relay in &mut r {
            relay.set_admin_waker((2, 0));
        }
        let native = member(&mut r, 1, 20, Wire::Native, &["arena"]);
        let sio = member(&mut r, 1, 21, Wire::SioWs, &["arena"]);
        let stays = member(&mut r, 0, 22, Wire::Native, &["arena"]);
        while stays.drain(&mut Vec::new()) == Drained::Frames {}

        let inbox = outbox();
        r[0].admin_kick(20, &inbox, Instant::now());
        settle(&mut r);
        let a = answer(&inbox);
        assert_eq!(
            (a["kicked"].as_bool(), a["protocol"].as_str()),
            (Some(true), Some("native"))
        );
        assert!(native.kicked() && !native.is_open(), "closed 1008 kicked");
        assert!(!r[1].is_member(20, "arena"));

        let inbox = outbox();
        r[0].admin_kick(21, &inbox, Instant::now());
        settle(&mut r);
        assert_eq!(answer(&inbox)["protocol"], "socket.io");
        // A Socket.IO session is ended by its Engine.IO endpoint, which the timer reaches.
        assert!(sio.is_open());
        assert_eq!(r[1].take_kicked_sessions(), [21]);
        assert_eq!(r[1].take_wakeups(), [(2, 0)]);
        assert!(r[0].take_kicked_sessions().is_empty());

        // The room heard both leave, kicked (and of its new hosts); the one left is still
        // a member.
        let mut frames = Vec::new();
        stays.drain(&mut frames);
        let left: Vec<(String, LeaveReason)> = frames
            .iter()
            .filter_map(|f| {
                let archived = crate::proto::native::access_server(&f[2..]).ok()?;
                let frame: ServerFrame =
                    rkyv::deserialize::<_, rkyv::rancor::Error>(archived).ok()?;
                match frame {
                    ServerFrame::MemberLeft { player, reason, .. } => Some((player, reason)),
                    _ => None,
                }
            })
            .collect();
        let kicked = LeaveReason::Kicked;
        assert_eq!(left, [("20".to_owned(), kicked), ("21".to_owned(), kicked)]);
        assert!(r[0].is_member(22, "arena"));

        let inbox = outbox();
        r[1].admin_kick(99, &inbox, Instant::now());
        settle(&mut r);
        assert_eq!(answer(&inbox)["kicked"], false);
    }

    #[test]
    fn closing_a_room_removes_every_member_on_every_shard_and_forgets_it() {
        let mut r = relays(3);
        let outs: Vec<Rc<Outbox>> = (0..3)
            .map(|shard| {
                member(
                    &mut r,
                    shard,
                    30 + shard as PlayerId,
                    Wire::Native,
                    &["doomed", "kept"],
                )
            })
            .collect();
        for o in &outs {
            while o.drain(&mut Vec::new()) == Drained::Frames {}
        }
        let inbox = outbox();
        // Asked on a shard that is not the room's home (then on the home, below).
        let asker = (home_shard("doomed", 3) + 1) % 3;
        r[asker].admin_close_room("doomed", &inbox, Instant::now());
        settle(&mut r);
        let a = answer(&inbox);
        assert_eq!(
            (a["closed"].as_bool(), a["members"].as_u64()),
            (Some(true), Some(3))
        );
        for (shard, o) in outs.iter().enumerate() {
            let player = 30 + shard as PlayerId;
            assert!(!r[shard].is_member(player, "doomed"));
            assert!(
                r[shard].is_member(player, "kept"),
                "other rooms are untouched"
            );
            let mut frames = Vec::new();
            o.drain(&mut frames);
            assert_eq!(
                frames.len(),
                1,
                "told it was removed, nothing of the others"
            );
            assert!(o.is_open(), "and still connected");
        }
        let home = home_shard("doomed", 3);
        assert!(!r[home].homes.contains_key("doomed"));
        let inbox = outbox();
        r[home].admin_close_room("doomed", &inbox, Instant::now());
        assert_eq!(
            answer(&inbox)["closed"],
            false,
            "answered at once on the home"
        );
        member(&mut r, home, 39, Wire::Native, &["doomed"]);
        let inbox = outbox();
        r[home].admin_close_room("doomed", &inbox, Instant::now());
        assert_eq!(answer(&inbox)["members"], 1);
    }

    #[test]
    fn requests_waiting_on_a_stuck_shard_are_bounded() {
        let mut r = relays(2);
        let inbox = outbox();
        for _ in 0..MAX_GATHERS * 2 {
            r[0].admin_rooms(RoomsFilter::default(), &inbox);
        }
        assert_eq!(r[0].admin.gathers.len(), MAX_GATHERS);
    }
}
