//! Native sessions across nodes (`[cluster]` with history on, docs/SCALING.md "History and
//! resume across nodes"): a client whose node died resumes on any other node, with exactly
//! the messages it missed.
//!
//! Each node keeps a record of every resumable native session it holds in Redis
//! ([`SessionRecord`]: who the player is, the hash of its secret, and per room the number
//! before its first message there), written when the session opens and when its rooms
//! change (`relay/cluster/sessions.rs` is the Redis side). The secret names the node that
//! made it, so that a node that does not hold a session knows where to look.
//!
//! A `Resume` this node cannot answer from its own sessions goes to the bridge, which
//! takes the record out of the old node's hash if the secret matches
//! ([`ClusterMsg::Claim`]). Back here ([`Relay::on_claimed`]) the player is made again,
//! and rejoins each of its rooms as a member *away*: the room's home counts it without a
//! notice, asks the room's stream for what it numbered after the last number the client
//! saw ([`ClusterMsg::ReadStream`]), and hands the player that, then what the home itself
//! numbered since, then tells the room it is back ([`Relay::on_stream_read`]). Deliveries
//! skip it until that replay, and the home's ring keeps them meanwhile, so nothing is
//! missed or given twice. Other nodes move the player's name to this node when they hear
//! it is back, so that the old node's lease ending does not take it out of the room.
//!
//! The old node, if alive, hears that the session moved ([`ClusterMsg::Taken`]) and drops
//! its player from its rooms without a notice ([`ClusterMsg::MovedAway`]).

use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    home_shard, public_meta, room_tag, Body, Broadcast, ClusterMsg, HomeRoom, JoinExtra, Joining,
    Member, MeshMsg, Outbox, Player, PlayerId, Relay, ShardId, SioLog, Wire, SINCE_UNKNOWN,
};
use crate::auth::Identity;
use crate::stats::add;

/// A resumable native session as Redis keeps it for the other nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The hash of its secret ([`secret_hash`]).
    pub secret: String,
    /// The player id others see.
    pub player: String,
    /// Its token's claims.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Its token's `exp`.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Its rooms, each with the number before the first broadcast it was given there
    /// (`u64::MAX` while not known yet).
    #[serde(default)]
    pub rooms: Vec<(String, u64)>,
    /// A Socket.IO session's namespace; `None` for a native session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp: Option<String>,
}

/// The hash a session record keeps of a secret: SHA-256, hex.
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The node that made a session's secret ([`Relay::new_session_secret`]); `None` for a
/// secret of a node alone.
pub fn node_of_secret(secret: &str) -> Option<u64> {
    if secret.len() != 48 || !secret.is_ascii() {
        return None;
    }
    u64::from_str_radix(&secret[..16], 16).ok()
}

/// A `Resume` waiting for the bridge's claim, then for its connection to take the answer.
#[derive(Debug)]
pub(super) struct Claiming {
    /// The `Resume`'s request id.
    req: u32,
    wire: Wire,
    outbox: Rc<Outbox>,
    /// Woken when decided.
    inbox: Rc<Outbox>,
    /// The secret it showed (the record's hash matched it, if it is restored).
    secret: Box<str>,
    /// The last number the client saw per room.
    last_seen: Vec<(String, u64)>,
    /// `Some` once decided: the player restored, or `None`.
    outcome: Option<Option<Identity>>,
    /// Its connection is gone.
    abandoned: bool,
}

/// A claim's answer, as its connection takes it ([`Relay::take_claim`]).
#[derive(Debug)]
pub struct Claimed {
    /// The `Resume`'s request id.
    pub req: u32,
    /// What woke the connection (it stops waking on it).
    pub inbox: Rc<Outbox>,
    /// The secret the client showed.
    pub secret: Box<str>,
    /// The player restored, or `None`.
    pub identity: Option<Identity>,
}

/// Whether `body` was sent by `name` or tells of it: what its own replay leaves out (it
/// was excluded from them when they were live).
fn by_or_about(body: &Body, name: &str) -> bool {
    match body {
        Body::Event { from, .. } | Body::Nested { from, .. } => &**from == name,
        Body::MemberJoined { player, .. }
        | Body::MemberLeft { player, .. }
        | Body::MemberAway { player }
        | Body::MemberBack { player } => &**player == name,
        _ => false,
    }
}

/// Takes `name` out of the members `home` knows on other nodes (it is here now); when it
/// joined, if it was known.
pub(super) fn forget_remote(home: &mut HomeRoom, name: &str) -> Option<u64> {
    let mut joined = None;
    for r in &mut home.remote {
        if let Some(at) = r.names.iter().position(|(n, _)| &**n == name) {
            joined = Some(r.names.swap_remove(at).1);
            r.count = r.count.saturating_sub(1);
        }
    }
    joined
}

impl Relay {
    /// Whether sessions are kept across nodes (`[cluster]` with history on).
    fn across_nodes(&self) -> bool {
        self.node.is_some() && self.shared_history && self.limits.history.is_some()
    }

    /// Whether a session with `secret` may be another node's, to claim.
    pub(super) fn claimable(&self, secret: &str) -> bool {
        self.across_nodes() && node_of_secret(secret).is_some_and(|n| Some(n) != self.node)
    }

    /// A Socket.IO recovery no shard here could answer: asks the cluster, if the pid's
    /// secret names another node. `false` when there is nobody to ask.
    pub(super) fn claim_sio(&mut self, player: PlayerId) -> bool {
        let Some(secret) = self.pending.get(&player).map(|p| p.req.secret.clone()) else {
            return false;
        };
        if !self.claimable(&secret) {
            return false;
        }
        if let Some(p) = self.pending.get_mut(&player) {
            p.claiming = true;
        }
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::Claim {
                player,
                secret,
                shard: self.shard,
            })),
        );
        true
    }

    /// A new session's secret: random, and in a cluster prefixed by this node's
    /// incarnation (16 hex digits), so that another node knows where the session was.
    pub fn new_session_secret(&self) -> String {
        match self.node {
            Some(node) if self.across_nodes() => format!("{node:016x}{}", super::new_secret()),
            _ => super::new_secret(),
        }
    }

    /// Asks the cluster for native session `session` that this node does not hold, for a
    /// new connection (`wire`, `outbox`) whose client saw `last_seen`. `false` when there
    /// is nothing to ask (no cluster, or the secret is this node's); else `inbox` gets a
    /// frame when it is decided, and the connection takes the answer with
    /// [`Relay::take_claim`].
    pub fn claim_session(
        &mut self,
        req: u32,
        session: PlayerId,
        secret: &str,
        (wire, outbox): (Wire, Rc<Outbox>),
        inbox: Rc<Outbox>,
        last_seen: Vec<(String, u64)>,
    ) -> bool {
        if !self.claimable(secret)
            || self.players.contains_key(&session)
            || self.claims.contains_key(&session)
        {
            return false;
        }
        self.claims.insert(
            session,
            Claiming {
                req,
                wire,
                outbox,
                inbox,
                secret: secret.into(),
                last_seen,
                outcome: None,
                abandoned: false,
            },
        );
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::Claim {
                player: session,
                secret: secret.into(),
                shard: self.shard,
            })),
        );
        true
    }

    /// The answer to the claim of `session`, once decided (`None` before).
    pub fn take_claim(&mut self, session: PlayerId) -> Option<Claimed> {
        let identity = self.claims.get(&session)?.outcome.clone()?;
        let c = self.claims.remove(&session)?;
        Some(Claimed {
            req: c.req,
            inbox: c.inbox,
            secret: c.secret,
            identity,
        })
    }

    /// The connection that claimed `session` is gone: the inbox it waited on (to stop
    /// waking). A session restored meanwhile, or later, waits away for its window.
    pub fn abandon_claim(&mut self, session: PlayerId, now: Instant) -> Option<Rc<Outbox>> {
        let c = self.claims.get_mut(&session)?;
        let inbox = Rc::clone(&c.inbox);
        match c.outcome {
            None => c.abandoned = true,
            Some(ref restored) => {
                let restored = restored.is_some();
                self.claims.remove(&session);
                if restored {
                    self.detach(session, now);
                    self.wait_away(session, now);
                }
            }
        }
        Some(inbox)
    }

    /// A detached session waits for a window.
    pub(super) fn wait_away(&mut self, player: PlayerId, now: Instant) {
        let Some(limits) = self.limits.history else {
            return;
        };
        let Some(s) = self
            .players
            .get_mut(&player)
            .and_then(|p| p.session.as_mut())
        else {
            return;
        };
        let until = now + limits.window;
        s.away_until = Some(until);
        self.away.push_back((until, player));
        add(&self.stats.sessions_away, 1);
    }

    /// The bridge's answer to a claim: the session's record, taken from its old node.
    pub(super) fn on_claimed(
        &mut self,
        player: PlayerId,
        record: Option<Box<SessionRecord>>,
        now: Instant,
    ) {
        let Some(c) = self.claims.get_mut(&player) else {
            if self.pending.get(&player).is_some_and(|p| p.claiming) {
                self.on_claimed_sio(player, record, now);
            }
            return;
        };
        let record = record.filter(|_| !self.players.contains_key(&player));
        let Some(record) = record else {
            add(&self.stats.resumes_refused, 1);
            c.outcome = Some(None);
            let _ = c.inbox.push(Bytes::new());
            if c.abandoned {
                self.claims.remove(&player);
            }
            return;
        };
        let abandoned = c.abandoned;
        let (wire, outbox, secret) = (c.wire, Rc::clone(&c.outbox), c.secret.clone());
        let last_seen = std::mem::take(&mut c.last_seen);
        let SessionRecord {
            player: name,
            claims,
            exp,
            rooms,
            ..
        } = *record;
        let identity = Identity {
            player: Arc::from(name.as_str()),
            claims: Arc::new(claims),
            exp: exp.and_then(NonZeroU64::new),
        };
        let restored = Player::restored(identity.clone(), (wire, outbox), Vec::new(), secret, None);
        self.players.insert(player, restored);
        add(&self.stats.resumes, 1);
        if abandoned {
            // The connection that asked is gone already: the session waits here, away,
            // for the rest of a window.
            self.claims.remove(&player);
            self.wait_away(player, now);
        }
        for (room, since) in rooms {
            let seen = last_seen
                .iter()
                .find(|(r, _)| *r == room)
                .map_or(0, |&(_, seq)| seq);
            let after = match since {
                // It was given nothing there yet: whatever it saw is where it stands.
                SINCE_UNKNOWN if seen == 0 => SINCE_UNKNOWN,
                SINCE_UNKNOWN => seen,
                since => since.max(seen),
            };
            self.rejoin(player, room, after, !abandoned);
        }
        // Its record, now this node's (the rooms whose home is another shard follow as
        // each is counted).
        self.save_session(player);
        if let Some(c) = self.claims.get_mut(&player) {
            c.outcome = Some(Some(identity));
            let _ = c.inbox.push(Bytes::new());
        }
    }

    /// The cluster's answer to a Socket.IO recovery: the session's record, taken from its
    /// old node.
    ///
    /// The client's offset places it exactly in the room it names: numbers are the same on
    /// every node. A socket that was in other rooms too cannot be placed in them (each node
    /// delivers rooms to a socket in an order of its own), so it gets a fresh session, and
    /// its old one leaves its rooms as disconnected.
    fn on_claimed_sio(
        &mut self,
        player: PlayerId,
        record: Option<Box<SessionRecord>>,
        now: Instant,
    ) {
        let Some(pending) = self.pending.remove(&player) else {
            return;
        };
        let record = record.filter(|_| !self.players.contains_key(&player));
        let Some(record) = record else {
            add(&self.stats.resumes_refused, 1);
            pending.ticket.decide(None);
            self.wakeups.push(pending.waker);
            return;
        };
        let req = &pending.req;
        let named = req.expect.as_ref().is_none_or(|n| **n == *record.player);
        let mut placed = named && record.nsp.as_deref() == Some(&*req.nsp);
        let mut rooms = Vec::with_capacity(record.rooms.len());
        for (room, since) in record.rooms {
            let after = match req.offset {
                // It processed nothing: everything from its join.
                None => since,
                Some((tag, seq)) if tag == room_tag(&room) => match since {
                    SINCE_UNKNOWN => seq,
                    since => since.max(seq),
                },
                Some(_) => {
                    placed = false;
                    since
                }
            };
            rooms.push((room, after));
        }
        let identity = Identity {
            player: Arc::from(record.player.as_str()),
            claims: Arc::new(record.claims),
            exp: record.exp.and_then(NonZeroU64::new),
        };
        let at = rooms
            .iter()
            .filter(|(_, after)| *after != SINCE_UNKNOWN)
            .map(|(room, after)| (room_tag(room), *after))
            .collect();
        let abandoned = pending.ticket.abandoned();
        let restored = Player::restored(
            identity.clone(),
            (pending.wire, Rc::clone(&pending.outbox)),
            Vec::new(),
            req.secret.clone(),
            Some(Box::new(SioLog::starting_at(&req.nsp, at))),
        );
        self.players.insert(player, restored);
        for (room, after) in rooms {
            self.rejoin(player, room, after, placed && !abandoned);
        }
        if !placed {
            // Taken from its old node, which let it go: it leaves its rooms now.
            self.disconnect(player, now);
            add(&self.stats.resumes_refused, 1);
            pending.ticket.decide(None);
            self.wakeups.push(pending.waker);
            return;
        }
        add(&self.stats.resumes, 1);
        if abandoned {
            self.wait_away(player, now);
        }
        self.save_session(player);
        pending.ticket.decide(Some(identity));
        self.wakeups.push(pending.waker);
    }

    /// A restored player becomes a member of `room` again, away until its replay of what
    /// the room numbered after `after` (`replay`), or until it resumes (not `replay`).
    fn rejoin(&mut self, player: PlayerId, room: String, after: u64, replay: bool) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        p.rooms.push(room.clone());
        let name = Arc::clone(&p.identity.player);
        let (wire, outbox, meta) = (p.wire, Rc::clone(&p.outbox), public_meta(&p.identity));
        let home = home_shard(&room, self.shards);
        if home != self.shard {
            self.rooms.entry(room.clone()).or_default().joining.insert(
                player,
                Joining {
                    name: Arc::clone(&name),
                    resumed: true,
                    ..Joining::default()
                },
            );
            let extra = JoinExtra {
                meta,
                create: None,
                resume: Some((after, replay)),
            };
            self.send_mesh(
                home,
                MeshMsg::Join {
                    room,
                    player,
                    name,
                    extra: Some(Box::new(extra)),
                },
            );
            return;
        }
        match self.home_count(self.shard, &room, player, &name, meta, None) {
            Ok(counted) => {
                let local = self.rooms.entry(room.clone()).or_default();
                local.add(Member {
                    player,
                    wire,
                    outbox,
                    away: true,
                    since: after,
                });
                local.total = counted.members;
                local.host = Some(counted.host);
                self.counted_back(&room, player, self.shard, after, replay);
            }
            Err(_) => {
                if let Some(p) = self.players.get_mut(&player) {
                    p.rooms.retain(|r| *r != room);
                }
            }
        }
    }

    /// On the home shard: a restored member from shard `origin` is counted; unless it
    /// waits away (`replay` false), its replay starts with a read of the room's stream.
    pub(super) fn counted_back(
        &mut self,
        room: &str,
        player: PlayerId,
        origin: ShardId,
        after: u64,
        replay: bool,
    ) {
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        if let Some(name) = home
            .members
            .iter()
            .find(|m| m.player == player)
            .map(|m| Arc::clone(&m.name))
        {
            // Present since it first joined, on the node it came from.
            if let Some(joined) = forget_remote(home, &name) {
                if let Some(m) = home.members.iter_mut().find(|m| m.player == player) {
                    m.joined = joined;
                }
            }
        }
        if !replay {
            return;
        }
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::ReadStream {
                room: room.to_owned(),
                player,
                shard: origin,
                after,
            })),
        );
    }

    /// On the home shard: the room's stream after `after` (`entries`; `read` false when
    /// Redis could not be read) for the replay of restored member `player` on `origin`.
    /// It gets those, then what this home numbered past them, then the room hears it is
    /// back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_stream_read(
        &mut self,
        room: &str,
        player: PlayerId,
        origin: ShardId,
        after: u64,
        read: bool,
        entries: Vec<Broadcast>,
        now: Instant,
    ) {
        let Some(limits) = self.limits.history else {
            return;
        };
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        let Some(name) = home
            .members
            .iter()
            .find(|m| m.player == player)
            .map(|m| Arc::clone(&m.name))
        else {
            // Gone meanwhile.
            return;
        };
        Self::trim(home, &limits, now, &self.stats);
        let first = entries.first().map(|b| b.seq);
        let last = entries.last().map_or(after, |b| b.seq).max(after);
        let mut gap = match first {
            Some(first) => first > after.saturating_add(1),
            None => !read && home.seq > after,
        };
        let mut missed: Vec<Arc<Broadcast>> = entries
            .into_iter()
            .filter(|b| b.seq > after && !by_or_about(&b.body, &name))
            .map(|b| {
                let seq = b.seq;
                Arc::new(b.numbered(seq, limits.socketio))
            })
            .collect();
        missed.extend(
            home.kept
                .iter()
                .filter(|k| k.bcast.seq > last && k.bcast.exclude != player)
                .map(|k| Arc::clone(&k.bcast)),
        );
        // Within the window's bounds, as a replay from the home's own ring is: the newest
        // that fit, so that the client's outbound queue takes them at once.
        let mut bytes = 0;
        let fit = missed
            .iter()
            .rev()
            .take(limits.messages)
            .take_while(|b| {
                bytes += b.max_frame_len();
                bytes <= limits.bytes
            })
            .count();
        if fit < missed.len() {
            missed.drain(..missed.len() - fit);
            gap = true;
        }
        let members = home.cluster_total();
        if origin == self.shard {
            self.replay(room, player, members, gap, &missed);
        } else {
            self.send_mesh(
                origin,
                MeshMsg::Replay {
                    room: room.to_owned(),
                    player,
                    members,
                    gap,
                    missed,
                },
            );
        }
        self.home_notice(room, player, Body::MemberBack { player: name }, now);
    }

    /// Writes `player`'s session record (native sessions, across nodes): its rooms, each
    /// with where its replay would start.
    pub(super) fn save_session(&mut self, player: PlayerId) {
        if !self.across_nodes() {
            return;
        }
        let Some(p) = self.players.get(&player) else {
            return;
        };
        let Some(s) = p.session.as_deref() else {
            return;
        };
        let rooms = p
            .rooms
            .iter()
            .filter_map(|room| {
                let local = self.rooms.get(room)?;
                let since = local.members[local.slot(player)?].since;
                Some((room.clone(), since))
            })
            .collect();
        let record = SessionRecord {
            secret: secret_hash(&s.secret),
            player: p.identity.player.to_string(),
            claims: (*p.identity.claims).clone(),
            exp: p.identity.exp.map(NonZeroU64::get),
            rooms,
            nsp: s.log.as_ref().map(|log| log.nsp.to_string()),
        };
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::SaveSession {
                player,
                record: Some(Box::new(record)),
            })),
        );
    }

    /// `player`'s session ended: its record goes.
    pub(super) fn drop_session_record(&mut self, player: PlayerId) {
        let kept = self
            .players
            .get(&player)
            .is_some_and(|p| p.session.is_some());
        if !self.across_nodes() || !kept {
            return;
        }
        let bridge = self.bridge();
        self.send_mesh(
            bridge,
            MeshMsg::Cluster(Box::new(ClusterMsg::SaveSession {
                player,
                record: None,
            })),
        );
    }

    /// Another node restored `player`'s session: if it is here, its connection is closed
    /// and it leaves its rooms without a notice (it is still a member, there).
    pub(super) fn on_taken(&mut self, player: PlayerId, now: Instant) {
        if self
            .players
            .get(&player)
            .is_none_or(|p| p.session.is_none())
        {
            return;
        }
        self.withdraw_ticket(player, now);
        let Some(p) = self.players.remove(&player) else {
            return;
        };
        if p.session.as_ref().is_some_and(|s| s.away_until.is_some()) {
            self.stats
                .sessions_away
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        p.outbox
            .close(crate::proto::ws::close::POLICY, "session resumed elsewhere");
        for room in p.rooms {
            let Some(local) = self.rooms.get_mut(&room) else {
                continue;
            };
            if let Some(joining) = local.joining.get_mut(&player) {
                joining.leaving = Some(crate::proto::native::LeaveReason::Disconnected);
                continue;
            }
            local.remove(player);
            if local.is_empty() {
                self.rooms.remove(&room);
            }
            let home = home_shard(&room, self.shards);
            if home == self.shard {
                self.moved_away(self.shard, &room, player, now);
            } else {
                self.send_mesh(
                    home,
                    MeshMsg::Cluster(Box::new(ClusterMsg::MovedAway { room, player })),
                );
            }
        }
    }

    /// On the home shard: member `player` of shard `origin` now plays on another node;
    /// it leaves the count here without a notice.
    pub(super) fn moved_away(
        &mut self,
        origin: ShardId,
        room: &str,
        player: PlayerId,
        now: Instant,
    ) {
        let Some(home) = self.homes.get_mut(room) else {
            return;
        };
        let Some(at) = home.members.iter().position(|m| m.player == player) else {
            return;
        };
        home.members.remove(at);
        home.per_shard[origin] = home.per_shard[origin].saturating_sub(1);
        home.total = home.total.saturating_sub(1);
        crate::stats::sub(&self.stats.room_members, 1);
        if home.total == 0 {
            self.unshare_room(room, None, now);
            self.destroy_home(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_node_and_is_kept_hashed() {
        assert_eq!(
            node_of_secret("00000000deadbeef00112233445566778899aabbccddeeff"),
            Some(0xdead_beef)
        );
        assert_eq!(node_of_secret("00112233445566778899aabbccddeeff"), None);
        assert_eq!(secret_hash("abc").len(), 64);
        assert_ne!(secret_hash("abc"), secret_hash("abd"));
    }
}
