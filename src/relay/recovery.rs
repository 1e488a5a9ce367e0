//! Socket.IO connection state recovery: a socket.io session whose connection was lost is
//! kept like a native one ([`Relay::release`]) and recovered by the `pid` and offset that
//! the official client sends back in its CONNECT (docs/SESSIONS.md).
//!
//! The client sends one offset: that of the last event it processed, whichever room it
//! came from ([`sio_offset`]: the room's tag and number). Each recoverable socket keeps a
//! [`DeliveryLog`] of the numbers it was sent, in the order sent, so that one offset tells
//! where the client stands in every room: in a room other than the offset's, it processed
//! what it was sent before that event.
//!
//! The reconnect reaches any shard (a new Engine.IO session), and the session may be held
//! by another one. The new shard asks the others ([`MeshMsg::Recover`]); the holder checks
//! the secret, takes the player out of its rooms' local lists without a notice and sends
//! it over ([`MeshMsg::Recovered`]); the new shard makes it a member here, away, and asks
//! each room's home for the replay, which also moves the player's place in the home's
//! count from the old shard to this one ([`MeshMsg::Resume`] with `moved_from`). The
//! Engine.IO session learns the outcome through a [`RecoveryTicket`] and a timer of its own
//! that the shard fires ([`Relay::take_wakeups`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::broadcast::{room_tag, sio_polling_text, sio_ws_frames};
use super::{
    add, home_shard, secret_eq, Identity, Member, MeshMsg, Outbox, Player, PlayerId, PlayerName,
    Relay, Session, ShardId, Wire,
};
use crate::proto::socketio::Packet as SioPacket;

/// The shard timer that tells an Engine.IO session its recovery is decided: (endpoint,
/// key) for [`crate::shard::Shard::set_timer`].
pub type Waker = (u16, u64);

/// What a recoverable socket.io session keeps besides the secret: its namespace (a pid
/// recovers a socket of that namespace only) and its [`DeliveryLog`].
#[derive(Debug)]
pub(super) struct SioLog {
    pub(super) nsp: Box<str>,
    deliveries: DeliveryLog,
}

impl SioLog {
    /// The log of a socket of namespace `nsp` whose client stands at `at` (per room tag,
    /// the last number processed).
    pub(super) fn starting_at(nsp: &str, at: Vec<(u32, u64)>) -> SioLog {
        SioLog {
            nsp: nsp.into(),
            deliveries: DeliveryLog::starting_at(at),
        }
    }
}

/// Where a socket.io client may stand in its rooms: the numbers it was sent, in the order
/// sent, as runs of one room each (a socket in one room has one run, extended in place),
/// at most `window_messages` runs; what falls out of the log is kept as one number per
/// room (`base`).
#[derive(Debug, Default)]
pub(super) struct DeliveryLog {
    /// Per room tag, the last number sent before the first run.
    base: Vec<(u32, u64)>,
    runs: VecDeque<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    tag: u32,
    first: u64,
    last: u64,
}

fn set_position(at: &mut Vec<(u32, u64)>, tag: u32, seq: u64) {
    match at.iter_mut().find(|(t, _)| *t == tag) {
        Some(entry) => entry.1 = seq,
        None => at.push((tag, seq)),
    }
}

impl DeliveryLog {
    /// A log whose client stands at `at` (per room tag, the last number processed).
    pub(super) fn starting_at(at: Vec<(u32, u64)>) -> DeliveryLog {
        DeliveryLog {
            base: at,
            runs: VecDeque::new(),
        }
    }

    /// Number `seq` of the room tagged `tag` was sent; at most `cap` runs are kept.
    pub(super) fn record(&mut self, tag: u32, seq: u64, cap: usize) {
        if let Some(run) = self.runs.back_mut() {
            if run.tag == tag {
                run.last = seq;
                return;
            }
        }
        while self.runs.len() >= cap.max(1) {
            let Some(old) = self.runs.pop_front() else {
                break;
            };
            set_position(&mut self.base, old.tag, old.last);
        }
        self.runs.push_back(Run {
            tag,
            first: seq,
            last: seq,
        });
    }

    /// Per room tag, the last number the client processed, given the offset of the last
    /// event it processed (`None`: it processed none, so every room from its join). `None`
    /// when the log cannot place the offset (too old, or not one of this session's).
    pub(super) fn processed(&self, offset: Option<(u32, u64)>) -> Option<Vec<(u32, u64)>> {
        let Some((tag, seq)) = offset else {
            return Some(Vec::new());
        };
        let mut at = self.base.clone();
        let cut = self
            .runs
            .iter()
            .rposition(|r| r.tag == tag && r.first <= seq && seq <= r.last);
        match cut {
            Some(cut) => {
                for run in self.runs.range(..cut) {
                    set_position(&mut at, run.tag, run.last);
                }
                set_position(&mut at, tag, seq);
                Some(at)
            }
            None if self.base.contains(&(tag, seq)) => Some(at),
            None => None,
        }
    }
}

/// A socket.io session handed from the shard that held it to the one its client
/// reconnected to.
#[derive(Debug)]
pub struct Moved {
    identity: Identity,
    secret: Box<str>,
    nsp: Box<str>,
    /// Per room: the number of the notice of its join, and the last number the client
    /// processed.
    rooms: Vec<(String, u64, u64)>,
}

/// How a recovery that asked other shards ended; shared by the relay and the Engine.IO
/// session that waits for it.
#[derive(Debug, Clone, Default)]
pub struct RecoveryTicket(Rc<RefCell<Option<Option<Identity>>>>);

impl RecoveryTicket {
    /// `None` while undecided; then `Some(Some(identity))` when the socket is recovered
    /// (the player, as its last connection knew it), `Some(None)` when it is not.
    pub fn outcome(&self) -> Option<Option<Identity>> {
        self.0.borrow().clone()
    }

    pub(super) fn decide(&self, outcome: Option<Identity>) {
        *self.0.borrow_mut() = Some(outcome);
    }

    /// The session gave up waiting: nobody holds the ticket but the relay.
    pub(super) fn abandoned(&self) -> bool {
        Rc::strong_count(&self.0) == 1
    }
}

/// What [`Relay::recover`] did.
#[derive(Debug)]
pub enum Recovery {
    /// The socket is back: the player, as its last connection knew it. Its replays are
    /// queued (rooms homed here) or on their way.
    Recovered(Identity),
    /// No session to recover (ended, unknown, wrong secret, offset it cannot place): a
    /// fresh one.
    Failed,
    /// The other shards were asked; the ticket tells, and the waker fires, when decided.
    Pending(RecoveryTicket),
}

/// A recovery this shard asked the other shards for.
#[derive(Debug)]
pub(super) struct Pending {
    /// Shards that have not answered.
    left: usize,
    pub(super) wire: Wire,
    pub(super) outbox: Rc<Outbox>,
    pub(super) waker: Waker,
    pub(super) ticket: RecoveryTicket,
    /// What the client asked.
    pub(super) req: Box<RecoverRequest>,
    /// No shard here held it; the cluster was asked (`relay/failover.rs`).
    pub(super) claiming: bool,
}

/// What a client asks to recover: the `pid` and `offset` of its CONNECT.
#[derive(Debug, Clone)]
pub struct RecoverRequest {
    /// The socket's player (from the pid).
    pub player: PlayerId,
    /// The namespace the client connects.
    pub nsp: Box<str>,
    /// The pid's secret.
    pub secret: Box<str>,
    /// The last offset the client processed, `None` if it sent none.
    pub offset: Option<(u32, u64)>,
    /// The player id its token names, if it presented one: the session must be that
    /// player's.
    pub expect: Option<PlayerName>,
}

/// A socket.io session's pid: its player id and secret. Only its holder can make one.
pub fn sio_pid(player: PlayerId, secret: &str) -> String {
    format!("{player:x}.{secret}")
}

/// The player id and secret of a pid ([`sio_pid`]).
pub fn parse_sio_pid(pid: &str) -> Option<(PlayerId, &str)> {
    let (player, secret) = pid.split_once('.')?;
    if player.is_empty() || player.len() > 16 || !player.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((PlayerId::from_str_radix(player, 16).ok()?, secret))
}

impl Relay {
    /// Makes socket.io `player`'s session (a socket of namespace `nsp`) recoverable with
    /// `secret` (socket.io recovery on); its deliveries are logged from now on. Without
    /// recovery, does nothing.
    pub fn open_sio_session(&mut self, player: PlayerId, secret: &str, nsp: &str) {
        if !self.recovers_sio() {
            return;
        }
        if let Some(p) = self.players.get_mut(&player) {
            p.session = Some(Box::new(Session {
                secret: secret.into(),
                away_until: None,
                log: Some(Box::new(SioLog {
                    nsp: nsp.into(),
                    deliveries: DeliveryLog::default(),
                })),
            }));
        }
        self.save_session(player);
    }

    /// Whether socket.io sessions may be recovered (`resume.socketio`).
    pub fn recovers_sio(&self) -> bool {
        self.limits.history.is_some_and(|h| h.socketio)
    }

    /// The timers to fire now for sessions whose recovery was decided.
    pub fn take_wakeups(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.wakeups)
    }

    /// Recovers a socket.io session for a new connection (`wire`, `outbox`). When this
    /// shard holds it, at once; else the other shards are asked and `waker` fires when
    /// they have answered.
    ///
    /// Only a session whose connection is gone is recovered (as socket.io's server keeps a
    /// session only once its socket disconnected); an unknown session, an ended one, a
    /// wrong secret or an offset the session's log cannot place all fail alike.
    pub fn recover(
        &mut self,
        req: RecoverRequest,
        wire: Wire,
        outbox: Rc<Outbox>,
        waker: Waker,
        now: Instant,
    ) -> Recovery {
        if !self.recovers_sio() {
            return Recovery::Failed;
        }
        if let Some(at) = self.take_for_recovery(&req, now) {
            let player = req.player;
            add(&self.stats.resumes, 1);
            self.rewire(player, wire, outbox);
            let Some(p) = self.players.get_mut(&player) else {
                return Recovery::Failed;
            };
            let identity = p.identity.clone();
            let rooms = p.rooms.clone();
            let last_seen: Vec<(&str, u64)> = rooms
                .iter()
                .map(|room| (room.as_str(), position(&at, room)))
                .collect();
            if let Some(log) = p.session.as_mut().and_then(|s| s.log.as_mut()) {
                log.deliveries = DeliveryLog::starting_at(at);
            }
            self.replay_missed(player, &last_seen, now);
            return Recovery::Recovered(identity);
        }
        let elsewhere = self.claimable(&req.secret);
        if (self.shards == 1 && !elsewhere) || self.pending.contains_key(&req.player) {
            add(&self.stats.resumes_refused, 1);
            return Recovery::Failed;
        }
        let me = self.shard;
        for shard in (0..self.shards).filter(|&s| s != me) {
            self.send_mesh(shard, MeshMsg::Recover(Box::new(req.clone())));
        }
        let ticket = RecoveryTicket::default();
        let player = req.player;
        self.pending.insert(
            player,
            Pending {
                left: self.shards - 1,
                wire,
                outbox,
                waker,
                ticket: ticket.clone(),
                req: Box::new(req),
                claiming: false,
            },
        );
        if self.shards == 1 {
            self.claim_sio(player);
        }
        Recovery::Pending(ticket)
    }

    /// If this shard holds `req`'s session, of that namespace, with that secret and an
    /// offset its log can place: where its client stands (per room tag, the last number
    /// processed), and the session is no longer away. Else `None`, after the same
    /// comparison.
    ///
    /// A session whose connection the server still holds is taken over (as a native
    /// `Resume` does): its client may have reconnected before the server saw the old
    /// connection go (a phone that changed networks leaves no FIN behind). The old
    /// connection is told its socket is disconnected (a DISCONNECT, which the official
    /// client does not reconnect from) and the rooms hear the player was away.
    fn take_for_recovery(&mut self, req: &RecoverRequest, now: Instant) -> Option<Vec<(u32, u64)>> {
        let p = self.players.get(&req.player);
        let session = p.and_then(|p| p.session.as_deref());
        let known = session.filter(|s| s.log.is_some()).map(|s| &*s.secret);
        // Compared in constant time, against a stand-in when there is no such session.
        let matches = secret_eq(known.unwrap_or("-no-session-"), &req.secret) && known.is_some();
        let p = p.filter(|_| matches)?;
        let session = p.session.as_deref()?;
        let log = session.log.as_deref()?;
        let named = req.expect.as_ref().is_none_or(|n| *n == p.identity.player);
        let at = log.deliveries.processed(req.offset);
        if log.nsp != req.nsp || !named || at.is_none() {
            return None;
        }
        if session.away_until.is_some() {
            let p = self.players.get_mut(&req.player)?;
            p.session.as_mut()?.away_until = None;
            self.stats
                .sessions_away
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            let text = SioPacket::disconnect(&req.nsp).encode_engineio();
            let frame = match p.wire {
                Wire::SioPolling => sio_polling_text(&text, &[]),
                _ => sio_ws_frames(&text, &[]),
            };
            let _ = p.outbox.push(frame);
            self.detach(req.player, now);
        }
        at
    }

    /// On a shard asked by `from`: hands the session over if it holds it.
    pub(super) fn on_recover(&mut self, from: ShardId, req: RecoverRequest, now: Instant) {
        let player = req.player;
        let moved = self.take_for_recovery(&req, now).and_then(|at| {
            let p = self.players.remove(&player)?;
            let mut rooms = Vec::with_capacity(p.rooms.len());
            for room in p.rooms {
                let Some(local) = self.rooms.get_mut(&room) else {
                    continue;
                };
                let since = local
                    .slot(player)
                    .map_or(0, |slot| local.members[slot].since);
                // No notice: the player is still a member, elsewhere. The home moves its
                // place in the count when the new shard asks for the replay.
                local.remove(player);
                if local.is_empty() {
                    self.rooms.remove(&room);
                }
                let after = position(&at, &room).max(since);
                rooms.push((room, since, after));
            }
            add(&self.stats.resumes, 1);
            let secret = p.session.map(|s| s.secret).unwrap_or_default();
            Some(Box::new(Moved {
                identity: p.identity,
                secret,
                nsp: req.nsp.clone(),
                rooms,
            }))
        });
        self.send_mesh(from, MeshMsg::Recovered { player, moved });
    }

    /// On the shard that asked: shard `from` answered for `player`.
    pub(super) fn on_recovered(
        &mut self,
        from: ShardId,
        player: PlayerId,
        moved: Option<Box<Moved>>,
        now: Instant,
    ) {
        let Some(pending) = self.pending.get_mut(&player) else {
            return;
        };
        pending.left = pending.left.saturating_sub(1);
        let Some(moved) = moved else {
            // No shard here holds it: maybe another node does.
            if pending.left == 0 && !self.claim_sio(player) {
                let pending = self.pending.remove(&player);
                if let Some(pending) = pending {
                    add(&self.stats.resumes_refused, 1);
                    pending.ticket.decide(None);
                    self.wakeups.push(pending.waker);
                }
            }
            return;
        };
        // Other shards' answers for this player, if any are still to come, are refusals:
        // only one shard held it.
        let Some(pending) = self.pending.remove(&player) else {
            return;
        };
        let abandoned = pending.ticket.abandoned();
        let Moved {
            identity,
            secret,
            nsp,
            rooms,
        } = *moved;
        let name = Arc::clone(&identity.player);
        let at = rooms
            .iter()
            .map(|(room, _, after)| (room_tag(room), *after))
            .collect();
        let restored = Player::restored(
            identity.clone(),
            (pending.wire, Rc::clone(&pending.outbox)),
            rooms.iter().map(|(room, _, _)| room.clone()).collect(),
            secret,
            Some(Box::new(SioLog::starting_at(&nsp, at))),
        );
        self.players.insert(player, restored);
        for (room, since, _) in &rooms {
            self.rooms.entry(room.clone()).or_default().add(Member {
                player,
                wire: pending.wire,
                outbox: Rc::clone(&pending.outbox),
                // Until the home's replay: it comes before anything newer.
                away: true,
                since: *since,
            });
        }
        if abandoned {
            // The connection that asked is gone: the session waits here, detached, for
            // the rest of a window (its rooms were told it is away already).
            self.wait_away(player, now);
        }
        for (room, _, after) in rooms {
            let home = home_shard(&room, self.shards);
            if home == self.shard {
                self.move_count(&room, player, from, self.shard);
                if !abandoned {
                    let (members, gap, missed) = self.missed(&room, player, after, now);
                    self.replay(&room, player, members, gap, &missed);
                    let body = super::Body::MemberBack {
                        player: Arc::clone(&name),
                    };
                    self.home_notice(&room, player, body, now);
                }
            } else {
                self.send_mesh(
                    home,
                    MeshMsg::Resume {
                        room,
                        player,
                        name: Arc::clone(&name),
                        after,
                        // Shards are fewer than `MAX_SHARDS` (2^16), so the id fits.
                        moved_from: Some(from as u16),
                        replay: !abandoned,
                    },
                );
            }
        }
        pending.ticket.decide(Some(identity));
        self.wakeups.push(pending.waker);
    }

    /// On `room`'s home: a member's place in the count moves from shard `from` to `to`.
    pub(super) fn move_count(&mut self, room: &str, player: PlayerId, from: ShardId, to: ShardId) {
        if let Some(home) = self.homes.get_mut(room) {
            home.per_shard[from] = home.per_shard[from].saturating_sub(1);
            home.per_shard[to] += 1;
            if let Some(m) = home.members.iter_mut().find(|m| m.player == player) {
                m.shard = to;
            }
        }
    }

    /// Records that number `seq` of the room tagged `tag` went to socket.io `player`.
    pub(super) fn log_delivery(
        players: &mut std::collections::HashMap<PlayerId, Player>,
        player: PlayerId,
        tag: u32,
        seq: u64,
        cap: usize,
    ) {
        let log = players
            .get_mut(&player)
            .and_then(|p| p.session.as_mut())
            .and_then(|s| s.log.as_mut());
        if let Some(log) = log {
            log.deliveries.record(tag, seq, cap);
        }
    }
}

/// The last number processed in `room`, per the positions `at` (0: none).
fn position(at: &[(u32, u64)], room: &str) -> u64 {
    let tag = room_tag(room);
    at.iter()
        .find(|(t, _)| *t == tag)
        .map_or(0, |&(_, seq)| seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_offset_places_the_client_in_every_room() {
        let mut log = DeliveryLog::default();
        // Room 1 sends 1..=3, room 2 sends 10, room 1 sends 4, room 2 sends 11, 12.
        for (tag, seq) in [(1, 1), (1, 2), (1, 3), (2, 10), (1, 4), (2, 11), (2, 12)] {
            log.record(tag, seq, 100);
        }
        let mut at = log.processed(Some((1, 4))).unwrap();
        at.sort();
        assert_eq!(at, vec![(1, 4), (2, 10)]);
        let mut at = log.processed(Some((1, 2))).unwrap();
        at.sort();
        assert_eq!(at, vec![(1, 2)], "nothing of room 2 came before");
        let mut at = log.processed(Some((2, 12))).unwrap();
        at.sort();
        assert_eq!(at, vec![(1, 4), (2, 12)]);
        assert_eq!(log.processed(None).unwrap(), vec![]);
        assert!(
            log.processed(Some((3, 1))).is_none(),
            "not a room of the log"
        );
        assert!(log.processed(Some((1, 9))).is_none(), "never sent");
    }

    #[test]
    fn a_bounded_log_keeps_what_falls_out_as_one_number_per_room() {
        let mut log = DeliveryLog::default();
        for i in 0..10u64 {
            log.record((i % 2) as u32, i, 4);
        }
        assert_eq!(log.runs.len(), 4);
        // Runs 6..=9 are kept; 4 (room 0) and 5 (room 1) fell out last.
        let mut at = log.processed(Some((0, 6))).unwrap();
        at.sort();
        assert_eq!(at, vec![(0, 6), (1, 5)]);
        assert!(log.processed(Some((0, 2))).is_none(), "older than the log");
        let mut at = log.processed(Some((1, 5))).unwrap();
        at.sort();
        assert_eq!(
            at,
            vec![(0, 4), (1, 5)],
            "the last number out is a place too"
        );
    }

    #[test]
    fn a_recovered_log_starts_where_the_client_stood() {
        let log = DeliveryLog::starting_at(vec![(1, 4), (2, 10)]);
        let mut at = log.processed(Some((2, 10))).unwrap();
        at.sort();
        assert_eq!(at, vec![(1, 4), (2, 10)]);
    }

    #[test]
    fn pids_carry_the_player_and_secret() {
        let pid = sio_pid(0x1234_5678_9abc, "00ff");
        assert_eq!(parse_sio_pid(&pid), Some((0x1234_5678_9abc, "00ff")));
        assert_eq!(parse_sio_pid("xyz.00"), None);
        assert_eq!(parse_sio_pid("nodot"), None);
    }
}
