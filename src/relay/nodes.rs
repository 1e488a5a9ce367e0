//! Rooms across nodes (`[cluster]`, docs/SCALING.md): what a room's home does for members
//! on other nodes.
//!
//! A room's home on each node is that node's end of the room's Redis channel. While the
//! room has members on this node (and only then: interest routing), the home has the
//! cluster bridge follow the channel ([`ClusterMsg::Interest`]) and hands it every
//! broadcast it fans out that was made on this node ([`MeshMsg::Publish`], from
//! `forward_from_home`), once, whichever shard it came from. What another node published comes back from the bridge to the home
//! ([`MeshMsg::FromNode`]), which delivers it here exactly as a broadcast of its own shards,
//! but never publishes it again.
//!
//! One sender's messages keep their order across nodes: its shard to its home is FIFO, the
//! home to the bridge is FIFO, the bridge publishes on one connection in order, Redis
//! delivers a channel's messages to a subscriber in order, and the receiving bridge hands
//! them to the room's home, which forwards them on FIFO paths.
//!
//! **Presence.** The home knows the room's members on every other node by name, from their
//! join and leave notices and from the snapshots nodes publish when another begins to
//! follow the room ([`crate::cluster::envelope::Content::Hello`]). Counts in notices and
//! join answers, and the room's capacity, are the room's count across nodes as this home
//! knows it: exact once notices have crossed, and a node's members leave every other
//! node's count (as disconnected, told to the room) when its lease ends.
//!
//! Created rooms (`#CODE`) and hosts stay per node for now (docs/SCALING.md); the rooms of
//! matches made by the cluster's queues are shared like any other.

use std::sync::Arc;
use std::time::Instant;

use super::{
    Body, Broadcast, HomeRoom, MeshMsg, PlayerId, PlayerName, Relay, SessionRecord, ShardId,
    CODE_PREFIX,
};
use crate::cluster::envelope::Presence;
use crate::proto::native::HostAction;
use crate::proto::native::LeaveReason;

/// The player id no connection has: what a broadcast made by no player of this node (one
/// from another node, a notice for a node gone) excludes.
pub const NOBODY: u64 = u64::MAX;

/// Whether a broadcast's body crosses nodes: everything but the host's notice (every node
/// finds the same host from the members it knows, and tells its own members).
pub fn crosses(body: &Body) -> bool {
    !matches!(body, Body::Host { .. })
}

/// Milliseconds since the Unix epoch: when a member joined, as the nodes compare it.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cluster business between a shard and the bridge (`MeshMsg::Cluster`, boxed: rare).
#[derive(Debug)]
pub enum ClusterMsg {
    /// home -> bridge: follow the room's channel (it has members here), or stop.
    Interest {
        /// Room key.
        room: String,
        /// Follow or stop.
        on: bool,
    },
    /// bridge -> home: another node began to follow the room; say who is here.
    Hello {
        /// Room key.
        room: String,
    },
    /// home -> bridge: publish the room's members here and its shared state (`node`
    /// unused); bridge -> home: node `node`'s members in the room, replacing what was known
    /// of them, and the room's state as that node knows it.
    Presence {
        /// Room key.
        room: String,
        /// Whose members.
        node: u64,
        /// Them, and the room's shared state.
        presence: Presence,
    },
    /// home -> bridge: the room's host here acted (`node` unused); bridge -> home: node
    /// `node`'s host of the room did.
    Action {
        /// Room key.
        room: String,
        /// Whose host.
        node: u64,
        /// What it did.
        action: HostAction,
    },
    /// bridge -> every shard: node `0`'s lease ended; its members are gone.
    NodeGone(u64),
    /// player's shard -> bridge: write (or, `None`, remove) a native session's record
    /// (`relay/failover.rs`).
    SaveSession {
        /// The session.
        player: PlayerId,
        /// Its record.
        record: Option<Box<SessionRecord>>,
    },
    /// shard -> bridge: a client showed a session another node made; take its record.
    Claim {
        /// The session.
        player: PlayerId,
        /// The secret the client showed.
        secret: Box<str>,
        /// The shard that asks.
        shard: ShardId,
    },
    /// bridge -> the shard that asked: the session's record, or `None`.
    Claimed {
        /// The session.
        player: PlayerId,
        /// Its record, taken from its old node.
        record: Option<Box<SessionRecord>>,
    },
    /// home -> bridge: read the room's stream after `after` for a restored member's
    /// replay, once the room is followed and caught up.
    ReadStream {
        /// Room key.
        room: String,
        /// The member.
        player: PlayerId,
        /// Its shard.
        shard: ShardId,
        /// The last number it saw.
        after: u64,
    },
    /// bridge -> home: what the read found.
    StreamRead {
        /// Room key.
        room: String,
        /// The member.
        player: PlayerId,
        /// Its shard.
        shard: ShardId,
        /// The last number it saw.
        after: u64,
        /// Whether Redis answered.
        read: bool,
        /// The room's broadcasts after `after`, numbered, oldest first.
        entries: Vec<Broadcast>,
    },
    /// bridge -> the player's shard: another node restored this node's session.
    Taken(PlayerId),
    /// player's shard -> home: the member left for another node; no notice.
    MovedAway {
        /// Room key.
        room: String,
        /// The member.
        player: PlayerId,
    },
}

/// A room's members on another node, as its home here knows them.
#[derive(Debug)]
pub(super) struct RemoteMembers {
    node: u64,
    /// The count that node last gave (its notices carry it).
    pub(super) count: u32,
    /// Their names, one entry per connection, with when each joined (ms since the epoch).
    pub(super) names: Vec<(PlayerName, u64)>,
}

impl HomeRoom {
    /// Members on other nodes, as far as known.
    pub(super) fn remote_count(&self) -> u32 {
        self.remote.iter().map(|r| r.count).sum()
    }

    /// Members across nodes, as far as known.
    pub(super) fn cluster_total(&self) -> u32 {
        self.total + self.remote_count()
    }

    /// The room's host and, when it is on this node, its player: the member present
    /// longest. A room alone on this node keeps its join order (the first member); across
    /// nodes every node picks the same one, the earliest to join (then the least name)
    /// among every node's members.
    pub(super) fn host(&self) -> Option<(PlayerName, Option<PlayerId>)> {
        if self.remote.iter().all(|r| r.names.is_empty()) {
            return self
                .members
                .first()
                .map(|m| (Arc::clone(&m.name), Some(m.player)));
        }
        let here = self
            .members
            .iter()
            .map(|m| (m.joined, &m.name, Some(m.player)));
        let elsewhere = self
            .remote
            .iter()
            .flat_map(|r| r.names.iter().map(|(n, joined)| (*joined, n, None)));
        here.chain(elsewhere)
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, name, player)| (Arc::clone(name), player))
    }

    /// When the member a join or back notice names joined (that notice excludes it); 0
    /// for any other broadcast.
    pub(super) fn joined_for(&self, bcast: &Broadcast) -> u64 {
        match bcast.body {
            Body::MemberJoined { .. } | Body::MemberBack { .. } => self
                .members
                .iter()
                .find(|m| m.player == bcast.exclude)
                .map_or(0, |m| m.joined),
            _ => 0,
        }
    }

    fn remote_mut(&mut self, node: u64) -> &mut RemoteMembers {
        let at = match self.remote.iter().position(|r| r.node == node) {
            Some(at) => at,
            None => {
                self.remote.push(RemoteMembers {
                    node,
                    count: 0,
                    names: Vec::new(),
                });
                self.remote.len() - 1
            }
        };
        &mut self.remote[at]
    }
}

impl Relay {
    /// Makes this relay one node's of a cluster: its incarnation is `node` (`[cluster]`).
    pub fn set_cluster(&mut self, node: u64) {
        self.node = Some(node);
        self.shared_history = true;
    }

    /// The cluster bridge's place in the mesh: after the last shard.
    pub(super) fn bridge(&self) -> super::ShardId {
        self.shards
    }

    /// On the home shard: the room's members here went from none to some; follow the room
    /// across nodes (created rooms stay on their node, matches across nodes excepted).
    pub(super) fn share_room(&mut self, room: &str) {
        if self.node.is_none() || (room.starts_with(CODE_PREFIX) && !self.is_shared_match(room)) {
            return;
        }
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        if home.shared {
            return;
        }
        home.shared = true;
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::Interest {
                room: room.to_owned(),
                on: true,
            })),
        );
    }

    /// On the home shard: the room has no members here any more; tell the other nodes
    /// (with `last`, the notice of the last one to go, or an empty presence) and stop
    /// following it. Their members are forgotten: the room's count here starts again from
    /// what the nodes say when it is followed again.
    pub(super) fn unshare_room(&mut self, room: &str, last: Option<Body>, now: Instant) {
        let bridge = self.bridge();
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        if !std::mem::take(&mut home.shared) {
            return;
        }
        home.remote.clear();
        let members = home.total;
        let floor = home.seq;
        let streamed = self.limits.history.is_some();
        if streamed {
            // What waits for its number will not be heard back (the room is followed no
            // more), and nobody here would receive it.
            self.appending.retain(|_, b| b.room != room);
        }
        let told = match last {
            Some(body) if streamed => MeshMsg::Append {
                bcast: Arc::new(Broadcast::new(room.to_owned(), NOBODY, body, now)),
                members,
                token: 0,
                floor,
                joined: 0,
            },
            Some(body) => MeshMsg::Publish {
                bcast: Arc::new(Broadcast::new(room.to_owned(), NOBODY, body, now)),
                members,
                joined: 0,
            },
            None => MeshMsg::Cluster(Box::new(ClusterMsg::Presence {
                room: room.to_owned(),
                node: 0,
                presence: Presence::default(),
            })),
        };
        self.send_mesh(bridge, told);
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::Interest {
                room: room.to_owned(),
                on: false,
            })),
        );
    }

    /// On the home shard: whether the room's broadcasts go through its stream (followed
    /// across nodes, history on).
    pub(super) fn streams(&self, room: &str) -> bool {
        self.shared_history
            && self.limits.history.is_some()
            && self.homes.get(room).is_some_and(|h| h.shared)
    }

    /// Whether rooms followed across nodes keep their history in Redis (`[cluster]
    /// shared_history`, on by default): off, each node numbers and keeps its rooms' history
    /// itself, and sessions resume on the node that held them only.
    pub fn set_shared_history(&mut self, on: bool) {
        self.shared_history = on;
    }

    /// On the home shard: hands `bcast` to the bridge for the room's stream, and keeps it
    /// until its number comes back ([`Relay::appended`]).
    pub(super) fn append(&mut self, bcast: Arc<Broadcast>) {
        let Some(home) = self.homes.get(&bcast.room) else {
            return;
        };
        let (members, floor, joined) = (home.total, home.seq, home.joined_for(&bcast));
        self.last_token += 1;
        let token = self.last_token;
        self.appending.insert(token, Arc::clone(&bcast));
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Append {
                bcast,
                members,
                token,
                floor,
                joined,
            },
        );
    }

    /// On the home shard: broadcast `token` has number `seq` in its room's stream (0: it
    /// did not get there). Delivered now, in the stream's order; never published again.
    pub(super) fn appended(&mut self, token: u64, seq: u64, now: Instant) {
        // Gone when the room was followed no more, or numbered here already (the bridge
        // gave up on Redis, which had it after all: the other nodes have it by the
        // stream's number).
        let Some(bcast) = self.appending.remove(&token) else {
            return;
        };
        let bridge = Some(self.bridge());
        self.numbered_relay(bcast, Some(seq), bridge, now);
    }

    /// On the home shard: node `node`, with `members` members in the room, published
    /// `bcast` (a join or back notice's member joined at `joined`): count it, and deliver
    /// it here and to the other shards with members.
    pub(super) fn heard_from_node(
        &mut self,
        node: u64,
        members: u32,
        joined: u64,
        mut bcast: Box<Broadcast>,
        now: Instant,
    ) {
        let Some(home) = self.homes.get_mut(&bcast.room) else {
            return;
        };
        if !home.shared {
            // No member here: followed no more, and this was on its way.
            return;
        }
        if let Body::MemberJoined { player, .. } | Body::MemberBack { player } = &bcast.body {
            // A player is on one node at a time: one whose session moved to `node` is
            // no longer on the node it left (whose lease may end without taking it).
            super::failover::forget_remote(home, player);
        }
        let remote = home.remote_mut(node);
        remote.count = members;
        match &bcast.body {
            Body::MemberJoined { player, .. } | Body::MemberBack { player } => {
                remote.names.push((Arc::clone(player), joined));
            }
            Body::MemberLeft { player, .. } => {
                if let Some(at) = remote.names.iter().position(|(n, _)| n == player) {
                    remote.names.swap_remove(at);
                }
            }
            _ => {}
        }
        if members == 0 {
            home.remote.retain(|r| r.node != node);
        }
        let total = home.cluster_total();
        if let Body::MemberJoined { members, .. } | Body::MemberLeft { members, .. } =
            &mut bcast.body
        {
            *members = total;
        }
        let changes = matches!(
            bcast.body,
            Body::MemberJoined { .. } | Body::MemberLeft { .. } | Body::MemberBack { .. }
        );
        let room = bcast.room.clone();
        let from_bridge = Some(self.bridge());
        self.home_relay(Arc::new(*bcast), from_bridge, now);
        if changes {
            self.host_check(&room, now);
        }
    }

    /// On the home shard: tells the room's members here when its host changed (the host
    /// left, here or on another node, or a member there since longer became known). Every
    /// node finds the same host from the same members, and tells its own.
    pub(super) fn host_check(&mut self, room: &str, now: Instant) {
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        let host = home.host().map(|(name, _)| name);
        if host == home.told_host {
            return;
        }
        let before = std::mem::replace(&mut home.told_host, host.clone());
        let state = home.state.clone();
        if let (Some(_), Some(host)) = (before, host) {
            // Told to everyone, the new host included: it learns its role as the others do.
            let body = Body::Host {
                player: host,
                state,
            };
            self.home_notice(room, NOBODY, body, now);
        }
    }

    /// On the home shard: what this node says of the room to a node that begins to follow
    /// it: its members, with when each joined, and the room's shared state.
    fn presence(home: &HomeRoom) -> Presence {
        Presence {
            members: home
                .members
                .iter()
                .map(|m| (Arc::clone(&m.name), m.joined))
                .collect(),
            locked: home.locked,
            state: home.state.clone(),
            metadata: home.metadata.clone(),
        }
    }

    /// On the home shard: node `node`'s host did `action` to the room; this node does the
    /// same (a kicked member that is here is kicked).
    fn host_acted(&mut self, room: &str, action: HostAction, now: Instant) {
        let Some(home) = self.homes.get_mut(room).filter(|h| h.shared) else {
            return;
        };
        match action {
            HostAction::Lock { locked } => home.locked = locked,
            HostAction::SetMetadata { metadata } => home.metadata = Some(Arc::from(metadata)),
            HostAction::SetState { state } => home.state = Some(Arc::from(state)),
            HostAction::Kick { player: name } => {
                let target = home
                    .members
                    .iter()
                    .find(|m| *m.name == *name)
                    .map(|m| (m.player, m.shard));
                match target {
                    Some((kicked, shard)) if shard == self.shard => self.kick(room, kicked, now),
                    Some((kicked, shard)) => self.send_mesh(
                        shard,
                        MeshMsg::Kick {
                            room: room.to_owned(),
                            player: kicked,
                        },
                    ),
                    None => {}
                }
            }
        }
    }

    /// Cluster business from the bridge (or, `MovedAway`, from shard `from`).
    pub(super) fn handle_cluster_mesh(&mut self, from: ShardId, msg: ClusterMsg, now: Instant) {
        match msg {
            ClusterMsg::Claimed { player, record } => self.on_claimed(player, record, now),
            ClusterMsg::StreamRead {
                room,
                player,
                shard,
                after,
                read,
                entries,
            } => self.on_stream_read(&room, player, shard, after, read, entries, now),
            ClusterMsg::Taken(player) => self.on_taken(player, now),
            ClusterMsg::MovedAway { room, player } => self.moved_away(from, &room, player, now),
            ClusterMsg::Hello { room } => {
                let Some(home) = self.homes.get(&room).filter(|h| h.shared) else {
                    return;
                };
                let presence = Self::presence(home);
                let bridge = self.bridge();
                self.send_mesh(
                    bridge,
                    MeshMsg::Cluster(Box::new(ClusterMsg::Presence {
                        room,
                        node: 0,
                        presence,
                    })),
                );
            }
            ClusterMsg::Presence {
                room,
                node,
                presence,
            } => {
                let Some(home) = self.homes.get_mut(&room).filter(|h| h.shared) else {
                    return;
                };
                home.remote.retain(|r| r.node != node);
                if !presence.members.is_empty() {
                    home.remote.push(RemoteMembers {
                        node,
                        count: presence.members.len() as u32,
                        names: presence.members,
                    });
                }
                // The node of the room's host knows its state.
                let host_there = match home.host() {
                    Some((host, None)) => home
                        .remote
                        .iter()
                        .any(|r| r.node == node && r.names.iter().any(|(n, _)| *n == host)),
                    _ => false,
                };
                if host_there {
                    home.locked = presence.locked;
                    home.state = presence.state;
                    home.metadata = presence.metadata;
                }
                self.host_check(&room, now);
            }
            ClusterMsg::Action { room, action, .. } => self.host_acted(&room, action, now),
            ClusterMsg::NodeGone(node) => self.node_gone(node, now),
            // The bridge's own business.
            ClusterMsg::Interest { .. }
            | ClusterMsg::SaveSession { .. }
            | ClusterMsg::Claim { .. }
            | ClusterMsg::ReadStream { .. } => {}
        }
    }

    /// Node `node` is gone: its members leave every room homed here, told to the members
    /// here as disconnected. Every node does the same, so nothing is published.
    fn node_gone(&mut self, node: u64, now: Instant) {
        let mut gone: Vec<(String, Vec<(PlayerName, u64)>)> = Vec::new();
        for (room, home) in &mut self.homes {
            if let Some(at) = home.remote.iter().position(|r| r.node == node) {
                gone.push((room.clone(), home.remote.swap_remove(at).names));
            }
        }
        let from_bridge = Some(self.bridge());
        for (room, names) in gone {
            let Some(mut total) = self.homes.get(&room).map(HomeRoom::cluster_total) else {
                continue;
            };
            total += names.len() as u32;
            for (player, _) in names {
                total -= 1;
                let body = Body::MemberLeft {
                    player,
                    members: total,
                    reason: LeaveReason::Disconnected,
                };
                let bcast = Arc::new(Broadcast::new(room.clone(), NOBODY, body, now));
                self.home_relay(bcast, from_bridge, now);
            }
            // Its host, if it was there, is one of the members left.
            self.host_check(&room, now);
        }
    }
}
