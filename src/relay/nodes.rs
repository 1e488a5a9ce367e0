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
use crate::proto::native::LeaveReason;

/// The player id no connection has: what a broadcast made by no player of this node (one
/// from another node, a notice for a node gone) excludes.
pub const NOBODY: u64 = u64::MAX;

/// Whether a broadcast's body crosses nodes: everything but the host's notice (a room's
/// host is chosen per node until hosts are cluster-wide, docs/SCALING.md).
pub fn crosses(body: &Body) -> bool {
    !matches!(body, Body::Host { .. })
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
    /// home -> bridge: publish the room's members here (`node` unused); bridge -> home:
    /// node `node`'s members in the room, replacing what was known of them.
    Presence {
        /// Room key.
        room: String,
        /// Whose members.
        node: u64,
        /// Them, by name.
        names: Vec<PlayerName>,
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
    /// Their names, one entry per connection.
    pub(super) names: Vec<PlayerName>,
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
            },
            Some(body) => MeshMsg::Publish {
                bcast: Arc::new(Broadcast::new(room.to_owned(), NOBODY, body, now)),
                members,
            },
            None => MeshMsg::Cluster(Box::new(ClusterMsg::Presence {
                room: room.to_owned(),
                node: 0,
                names: Vec::new(),
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
        self.limits.history.is_some() && self.homes.get(room).is_some_and(|h| h.shared)
    }

    /// On the home shard: hands `bcast` to the bridge for the room's stream, and keeps it
    /// until its number comes back ([`Relay::appended`]).
    pub(super) fn append(&mut self, bcast: Arc<Broadcast>) {
        let Some(home) = self.homes.get(&bcast.room) else {
            return;
        };
        let (members, floor) = (home.total, home.seq);
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
    /// `bcast`: count it, and deliver it here and to the other shards with members.
    pub(super) fn heard_from_node(
        &mut self,
        node: u64,
        members: u32,
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
            Body::MemberJoined { player, .. } => remote.names.push(Arc::clone(player)),
            Body::MemberBack { player } if !remote.names.contains(player) => {
                remote.names.push(Arc::clone(player))
            }
            Body::MemberLeft { player, .. } => {
                if let Some(at) = remote.names.iter().position(|n| n == player) {
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
        let from_bridge = Some(self.bridge());
        self.home_relay(Arc::new(*bcast), from_bridge, now);
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
                let names = home.members.iter().map(|m| Arc::clone(&m.name)).collect();
                let bridge = self.bridge();
                self.send_mesh(
                    bridge,
                    MeshMsg::Cluster(Box::new(ClusterMsg::Presence {
                        room,
                        node: 0,
                        names,
                    })),
                );
            }
            ClusterMsg::Presence { room, node, names } => {
                let Some(home) = self.homes.get_mut(&room).filter(|h| h.shared) else {
                    return;
                };
                home.remote.retain(|r| r.node != node);
                if !names.is_empty() {
                    home.remote.push(RemoteMembers {
                        node,
                        count: names.len() as u32,
                        names,
                    });
                }
            }
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
        let mut gone: Vec<(String, Vec<PlayerName>)> = Vec::new();
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
            for player in names {
                total -= 1;
                let body = Body::MemberLeft {
                    player,
                    members: total,
                    reason: LeaveReason::Disconnected,
                };
                let bcast = Arc::new(Broadcast::new(room.clone(), NOBODY, body, now));
                self.home_relay(bcast, from_bridge, now);
            }
        }
    }
}
