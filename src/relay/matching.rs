//! Matchmaking on the shards (docs/ROOMS.md, "Matchmaking"): tickets reach their queue's
//! shard through the mesh, matches become rooms at the room's home, and every player
//! learns the outcome on its own shard.
//!
//! A queue lives on one shard, [`home_shard`] of its name, which holds its waiting tickets
//! in a [`Matchmaker`]. A player's shard checks the ticket, remembers that the player holds
//! one (a player holds at most one, and it takes one of its room slots until it ends), and
//! sends it to the queue's shard, which answers with the ticket's id. Every player's path
//! to a queue is FIFO, so a cancel or a disconnect always finds the ticket it follows.
//!
//! A party forms on the queue's shard: each member queues with the same list of player
//! ids (its leader first), and the ticket waits for a match once every member has queued.
//! The members are handed the ticket's id at once, reserved for the party, so that any of
//! them may cancel it while the others are still on their way.
//!
//! A match becomes a room homed wherever its random code hashes to, made there with every
//! player counted at once: no join of a player can race another's. The home then tells each
//! shard with players of the match which of its players are members now, in one message,
//! so that the players of a shard become members in the same turn and none of them can
//! send to the room before the others are in. A player gone meanwhile leaves the room as
//! disconnected.
//!
//! **In a cluster** (`[cluster]` with `matchmaking` on, docs/SCALING.md) the queues live in
//! Redis instead, kept by the node's cluster queues (`cluster/queues.rs`) on the bridge's
//! end of the mesh: a player's shard checks the ticket as above and sends it there
//! ([`QueuesMsg`]), and the answers and endings come back as they do from a queue's shard.
//! A match arrives in two steps at its room's home on every node with players of it:
//! [`QueuesMsg::Match`] makes the room with this node's players counted and follows it
//! across nodes (the other nodes' players counted as their members), and
//! [`QueuesMsg::Go`], once every node of the match follows the room, admits and tells the
//! players as above, so that nothing a player sends at once misses a node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    home_shard, new_code, public_meta, ClusterMsg, HomeMember, HomeRoom, Member, MeshMsg, PlayerId,
    PlayerName, Relay, Reply, RoomOptions, Roster, RosterEntry, ShardId, CODE_PREFIX, ROSTER_MAX,
};
use crate::matchmaking::{
    Event, MatchError, Matchmaker, MatchmakingConfig, Member as TicketMember, QueueConfig, Ticket,
    TicketId, MAX_VALUE_LEN,
};
use crate::proto::native::{ErrorCode, LeaveReason, UnqueueReason};
use crate::stats::add;

/// What a player asks to be matched with (`mm:queue`, native `Queue`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketRequest {
    /// The queue's name.
    pub queue: String,
    /// The player's own skill.
    pub skill: f64,
    /// Its region, if it names one.
    pub region: Option<String>,
    /// Its properties; those the queue does not list are dropped.
    pub properties: BTreeMap<String, String>,
    /// The party's player ids, leader first (this player among them); empty to queue
    /// alone.
    pub party: Vec<String>,
}

/// A player's request as it crosses to the queue's shard (or to the cluster's queues).
#[derive(Debug)]
pub struct QueueRequest {
    /// The player.
    pub player: PlayerId,
    /// Its request, to answer.
    pub req: Option<u64>,
    /// Its player id as others see it.
    pub name: PlayerName,
    /// Its public metadata, for the match's roster.
    pub meta: Option<Arc<str>>,
    /// The ticket, checked against its queue.
    pub ticket: TicketRequest,
}

/// Matchmaking between the shards and the node's cluster queues (`cluster/queues.rs`),
/// which keep the queues in Redis when `[cluster]` shares them; it travels on the bridge's
/// end of the mesh ([`MeshMsg::Queues`]).
#[derive(Debug)]
pub enum QueuesMsg {
    /// player's shard -> cluster queues: a checked ticket.
    Enqueue {
        /// The player's shard, to answer.
        shard: ShardId,
        /// The request.
        request: QueueRequest,
    },
    /// player's shard -> cluster queues: cancel the player's ticket (`ticket`, or whichever
    /// it holds when 0).
    Cancel {
        /// The player's shard, to answer.
        shard: ShardId,
        /// Who asks.
        player: PlayerId,
        /// Its request id.
        req: Option<u64>,
        /// The ticket.
        ticket: u64,
    },
    /// player's shard -> cluster queues: the player is gone; withdraw its ticket.
    Withdraw {
        /// The player's shard.
        shard: ShardId,
        /// Who.
        player: PlayerId,
    },
    /// cluster queues -> the room's home: a match with players on this node. Make its
    /// room with them counted and follow it across nodes; tell nobody yet.
    Match(ClusterMatch),
    /// cluster queues -> the room's home: every node of the match follows the room (or
    /// the wait for them is over): admit the players and tell them.
    Go {
        /// The match's room.
        room: String,
    },
}

/// A match formed across nodes, as one node's players' home learns it.
#[derive(Debug)]
pub struct ClusterMatch {
    /// Its queue (the room's options are the queue's).
    pub queue: String,
    /// Its room, `#` and a code the passing node drew.
    pub room: String,
    /// Its players on this node.
    pub here: Vec<MatchedPlayer>,
    /// Every player of the match, the host first (the oldest ticket's leader).
    pub roster: Vec<RosterEntry>,
    /// Its players on other nodes, by name, per node incarnation.
    pub elsewhere: Vec<(u64, Vec<PlayerName>)>,
}

/// A matched player on this node.
#[derive(Debug, Clone)]
pub struct MatchedPlayer {
    /// The player.
    pub player: PlayerId,
    /// Its player id as others see it.
    pub name: PlayerName,
    /// Its shard.
    pub shard: ShardId,
    /// Its public metadata.
    pub meta: Option<Arc<str>>,
    /// Its ticket.
    pub ticket: u64,
}

/// What a queue's shard tells a player's shard about its ticket.
#[derive(Debug)]
pub enum TicketNews {
    /// The answer to a queue request: the ticket's id, or why not.
    Queued {
        /// The player's request.
        req: Option<u64>,
        /// The ticket, or why not.
        result: Result<u64, ErrorCode>,
    },
    /// The answer to a cancel.
    Cancelled {
        /// The player's request.
        req: Option<u64>,
        /// The ticket, or `NotQueued`.
        result: Result<u64, ErrorCode>,
    },
    /// The ticket ended without a match.
    Ended {
        /// The ticket.
        ticket: u64,
        /// Why.
        reason: UnqueueReason,
        /// The party member who cancelled or disconnected.
        by: Option<PlayerName>,
    },
}

/// A match on its way to its room's home.
#[derive(Debug)]
pub struct MatchRoom {
    room: String,
    options: RoomOptions,
    seats: Vec<Seat>,
}

/// The players of one shard who are members of a match's room now.
#[derive(Debug)]
pub struct MatchJoined {
    room: String,
    /// Member count.
    members: u32,
    /// The room's members, the host first.
    roster: super::Roster,
    /// This shard's players: who, its name, its ticket.
    players: Vec<(PlayerId, PlayerName, u64)>,
}

/// A player of a ticket, as its queue's shard knows it.
#[derive(Debug, Clone)]
struct Seat {
    player: PlayerId,
    name: PlayerName,
    shard: ShardId,
    meta: Option<Arc<str>>,
    skill: f64,
    ticket: u64,
}

/// A party whose members have not all queued yet.
#[derive(Debug)]
struct Gathering {
    queue: String,
    /// Every member's player id, leader first, as the first member to queue named them.
    party: Vec<PlayerName>,
    /// The members that have queued.
    seats: Vec<Seat>,
    /// The leader's region and properties, once it has queued.
    region: Option<String>,
    properties: BTreeMap<String, String>,
    /// It times out then, as a waiting ticket of its queue would.
    until: Instant,
}

/// The matchmaking of one shard: the queues homed here and the tickets of this shard's
/// players.
#[derive(Debug)]
pub(super) struct Matching {
    matchmaker: Matchmaker,
    /// Players of the waiting tickets of queues homed here, by ticket.
    seats: HashMap<TicketId, Vec<Seat>>,
    /// Parties being formed here, by their reserved ticket id.
    gatherings: HashMap<TicketId, Gathering>,
    /// The gathering of each (queue, leader).
    by_leader: HashMap<(String, PlayerName), TicketId>,
    /// The gathering each player who queued in one is in.
    gathered: HashMap<PlayerId, TicketId>,
    /// Gatherings by the time they time out.
    gathering_until: BTreeSet<(Instant, TicketId)>,
    /// Tickets of queues homed here that wait or gather, per queue, against
    /// `max_tickets_per_queue`.
    max_tickets: usize,
    /// Something changed that may move the next deadline since the runtime last asked.
    touched: bool,
    /// The queues are the cluster's, in Redis (`[cluster]`): tickets go to the bridge.
    shared: bool,
    /// Match rooms across nodes homed here, followed across nodes as plain rooms are;
    /// pruned of rooms gone once it has doubled (`remember_shared_match`).
    shared_matches: HashSet<String>,
    /// Its size after the last pruning.
    pruned_at: usize,
    /// Match rooms made here whose players wait for [`QueuesMsg::Go`]: the roster, and
    /// the players here.
    waiting_go: HashMap<String, (Roster, Vec<Seat>)>,
}

impl Matching {
    /// The matchmaking of shard `shard` of `shards` with the queues of `config`: ticket ids
    /// are `shard` modulo `shards`, so that every shard's ids differ.
    pub(super) fn new(config: &MatchmakingConfig, shard: ShardId, shards: usize) -> Matching {
        let (shard, shards) = (shard as u64, shards.max(1) as u64);
        Matching {
            matchmaker: Matchmaker::new(config).numbered(shards + shard, shards),
            seats: HashMap::new(),
            gatherings: HashMap::new(),
            by_leader: HashMap::new(),
            gathered: HashMap::new(),
            gathering_until: BTreeSet::new(),
            max_tickets: config.max_tickets_per_queue,
            touched: false,
            shared: false,
            shared_matches: HashSet::new(),
            pruned_at: 0,
            waiting_go: HashMap::new(),
        }
    }
}

/// A ticket a player holds, on the player's shard.
#[derive(Debug)]
pub(super) struct Held {
    /// Its queue's shard.
    shard: ShardId,
    /// Its id, 0 until the queue's shard has answered.
    id: u64,
}

/// The error code telling a client why the matchmaker refused its ticket.
fn refusal(e: &MatchError) -> ErrorCode {
    match e {
        MatchError::UnknownQueue(_) => ErrorCode::UnknownQueue,
        MatchError::AlreadyQueued(_) | MatchError::DuplicateId(_) => ErrorCode::AlreadyQueued,
        MatchError::QueueFull(_) => ErrorCode::QueueFull,
        MatchError::NoPlayers
        | MatchError::PartyTooLarge { .. }
        | MatchError::BadSkill
        | MatchError::BadValue(_) => ErrorCode::InvalidValue,
    }
}

impl Relay {
    /// Sets the matchmaking queues (once per shard, before it serves).
    pub fn set_matchmaking(&mut self, config: &MatchmakingConfig) {
        let shared = self.matching.shared;
        self.matching = Matching::new(config, self.shard, self.shards);
        self.matching.shared = shared;
    }

    /// Puts this shard's players' tickets in the cluster's queues, in Redis, rather than in
    /// a queue's shard (`[cluster]` with `matchmaking` on; after [`Relay::set_cluster`]).
    pub fn share_queues(&mut self) {
        self.matching.shared = self.node.is_some();
    }

    /// Whether `room` is a match room across nodes homed here (followed across nodes like
    /// a room made by a join, though its name is a code's).
    pub(super) fn is_shared_match(&self, room: &str) -> bool {
        self.matching.shared_matches.contains(room)
    }

    /// Puts `player` in a matchmaking queue with `ticket`; answered to `req` with `Queued`
    /// once the queue's shard has the ticket (or with an error), and later told `Matched`
    /// (already a member of the match's room) or `Unqueued`.
    ///
    /// `Err` at once for an unknown queue, a bad ticket (skill not finite, a region or
    /// property value that is no name, a party that does not name this player, names a
    /// player twice or is larger than a match), a player who holds a ticket already, or
    /// one whose room slots are all taken (the match's room will need one).
    pub fn queue_ticket(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        mut ticket: TicketRequest,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        let p = self.players.get(&player).ok_or(ErrorCode::NotWelcomed)?;
        if p.ticket.is_some() {
            return Err(ErrorCode::AlreadyQueued);
        }
        if p.rooms.len() >= self.limits.max_rooms_per_connection {
            return Err(ErrorCode::TooManyRooms);
        }
        let queue = self
            .matching
            .matchmaker
            .queue(&ticket.queue)
            .ok_or(ErrorCode::UnknownQueue)?;
        check_ticket(
            &mut ticket,
            queue,
            &p.identity.player,
            self.limits.max_name_len,
        )?;
        let (name, meta) = (Arc::clone(&p.identity.player), public_meta(&p.identity));
        let shard = if self.matching.shared {
            self.bridge()
        } else {
            home_shard(&ticket.queue, self.shards)
        };
        if let Some(p) = self.players.get_mut(&player) {
            p.ticket = Some(Box::new(Held { shard, id: 0 }));
        }
        let request = QueueRequest {
            player,
            req,
            name,
            meta,
            ticket,
        };
        let msg = if self.matching.shared {
            MeshMsg::Queues(Box::new(QueuesMsg::Enqueue {
                shard: self.shard,
                request,
            }))
        } else {
            MeshMsg::Queue(Box::new(request))
        };
        self.post(shard, msg, now);
        Ok(())
    }

    /// Takes `player`'s ticket (`ticket`, or whichever it holds when 0) out of its queue;
    /// answered to `req` with `Cancelled`, or `not_queued` when the ticket has ended
    /// meanwhile. `Err(NotQueued)` at once when the player holds no such ticket.
    pub fn cancel_ticket(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        ticket: u64,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        let held = self
            .players
            .get(&player)
            .and_then(|p| p.ticket.as_deref())
            .ok_or(ErrorCode::NotQueued)?;
        // An id not known yet (the queue's shard has not answered) is cancelled as
        // "whatever I hold": the cancel follows the request on the same path.
        if ticket != 0 && held.id != 0 && ticket != held.id {
            return Err(ErrorCode::NotQueued);
        }
        let shard = held.shard;
        let msg = if self.matching.shared {
            MeshMsg::Queues(Box::new(QueuesMsg::Cancel {
                shard: self.shard,
                player,
                req,
                ticket,
            }))
        } else {
            MeshMsg::Cancel {
                player,
                req,
                ticket,
            }
        };
        self.post(shard, msg, now);
        Ok(())
    }

    /// The player is going (disconnected, or its session detached): its ticket, if it holds
    /// one, is withdrawn with its whole party.
    pub(super) fn withdraw_ticket(&mut self, player: PlayerId, now: Instant) {
        let Some(held) = self.players.get_mut(&player).and_then(|p| p.ticket.take()) else {
            return;
        };
        let msg = if self.matching.shared {
            MeshMsg::Queues(Box::new(QueuesMsg::Withdraw {
                shard: self.shard,
                player,
            }))
        } else {
            MeshMsg::Withdraw { player }
        };
        self.post(held.shard, msg, now);
    }

    /// Runs the matchmaking due at `now`: parties that waited too long for their members,
    /// tickets past their timeout, and matching passes.
    pub fn poll_matchmaking(&mut self, now: Instant) {
        self.matching.touched = true;
        while let Some(&(until, id)) = self.matching.gathering_until.first() {
            if until > now {
                break;
            }
            if let Some(seats) = self.end_gathering(id) {
                self.tell_ended(&seats, UnqueueReason::TimedOut, None, now);
            }
        }
        for event in self.matching.matchmaker.poll(now) {
            match event {
                Event::TimedOut { ticket, .. } => {
                    if let Some(seats) = self.matching.seats.remove(&ticket) {
                        self.tell_ended(&seats, UnqueueReason::TimedOut, None, now);
                    }
                }
                Event::Matched { queue, tickets, .. } => {
                    let seats: Vec<Seat> = tickets
                        .iter()
                        .filter_map(|t| self.matching.seats.remove(t))
                        .flatten()
                        .collect();
                    self.make_match_room(&queue, seats, now);
                }
            }
        }
    }

    /// When [`poll_matchmaking`](Self::poll_matchmaking) next has something to do.
    pub fn next_matchmaking(&self) -> Option<Instant> {
        let gathering = self.matching.gathering_until.first().map(|&(at, _)| at);
        [gathering, self.matching.matchmaker.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next deadline of the matchmaking when it may have moved since the last call
    /// (for the runtime's timer, so that a turn with no matchmaking costs a flag test).
    pub fn matchmaking_wakeup(&mut self) -> Option<Instant> {
        if !std::mem::take(&mut self.matching.touched) {
            return None;
        }
        self.next_matchmaking()
    }

    /// Handles the matchmaking messages of the mesh.
    pub(super) fn handle_match_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        self.matching.touched = true;
        match msg {
            MeshMsg::Queue(request) => self.home_queue(from, *request, now),
            MeshMsg::Cancel {
                player,
                req,
                ticket,
            } => {
                let result = self.home_cancel(player, ticket, UnqueueReason::Cancelled, now);
                let news = TicketNews::Cancelled { req, result };
                self.post(from, MeshMsg::Ticket(player, Box::new(news)), now);
            }
            MeshMsg::Withdraw { player } => {
                let _ = self.home_cancel(player, 0, UnqueueReason::Disconnected, now);
            }
            MeshMsg::Ticket(player, news) => self.ticket_news(player, *news),
            MeshMsg::MatchRoom(m) => self.home_match(*m, now),
            MeshMsg::MatchJoined(m) => self.admit_match(from, *m, now),
            MeshMsg::Queues(msg) => match *msg {
                QueuesMsg::Match(m) => self.cluster_match(m, now),
                QueuesMsg::Go { room } => self.cluster_go(&room, now),
                // The cluster queues' to carry; never sent to a shard.
                QueuesMsg::Enqueue { .. }
                | QueuesMsg::Cancel { .. }
                | QueuesMsg::Withdraw { .. } => {}
            },
            _ => {}
        }
    }

    /// Delivers `msg` to shard `to`: handled at once when that is this shard.
    fn post(&mut self, to: ShardId, msg: MeshMsg, now: Instant) {
        if to == self.shard {
            self.handle_mesh(to, msg, now);
        } else {
            self.send_mesh(to, msg);
        }
    }

    /// On the queue's shard: a player's ticket arrives from shard `origin`.
    fn home_queue(&mut self, origin: ShardId, request: QueueRequest, now: Instant) {
        let QueueRequest {
            player,
            req,
            name,
            meta,
            ticket,
        } = request;
        let seat = Seat {
            player,
            name,
            shard: origin,
            meta,
            skill: ticket.skill,
            ticket: 0,
        };
        let result = if ticket.party.len() > 1 {
            self.gather(seat, ticket, now)
        } else {
            self.enqueue(vec![seat], &ticket, now)
                .map_err(|e| refusal(&e))
        };
        let news = TicketNews::Queued { req, result };
        self.post(origin, MeshMsg::Ticket(player, Box::new(news)), now);
    }

    /// Puts a whole ticket (one player, or a party all of whose members have queued) in its
    /// queue.
    fn enqueue(
        &mut self,
        mut seats: Vec<Seat>,
        request: &TicketRequest,
        now: Instant,
    ) -> Result<u64, MatchError> {
        let members = seats
            .iter()
            .map(|s| TicketMember {
                player: s.player,
                skill: s.skill,
            })
            .collect();
        let ticket = Ticket {
            queue: request.queue.clone(),
            members,
            region: request.region.clone(),
            properties: request.properties.clone(),
        };
        let id = match seats.first().map(|s| s.ticket) {
            Some(id) if id != 0 => TicketId(id),
            _ => self.matching.matchmaker.reserve(),
        };
        self.matching.matchmaker.enqueue_as(id, ticket, now)?;
        for seat in &mut seats {
            seat.ticket = id.0;
        }
        add(&self.stats.tickets, seats.len() as u64);
        self.matching.seats.insert(id, seats);
        Ok(id.0)
    }

    /// A party member's ticket: it joins its party's gathering (made by the first member to
    /// queue), and the party's ticket waits once every member has queued.
    fn gather(
        &mut self,
        mut seat: Seat,
        request: TicketRequest,
        now: Instant,
    ) -> Result<u64, ErrorCode> {
        let party: Vec<PlayerName> = request.party.iter().map(|n| Arc::from(&**n)).collect();
        let key = (request.queue.clone(), Arc::clone(&party[0]));
        let m = &mut self.matching;
        let id = match m.by_leader.get(&key) {
            Some(&id) => id,
            None => {
                let waiting = m.matchmaker.waiting(&request.queue) + m.gatherings.len();
                if waiting >= m.max_tickets {
                    return Err(ErrorCode::QueueFull);
                }
                let timeout = m
                    .matchmaker
                    .queue(&request.queue)
                    .map_or(0.0, |q| q.timeout_s);
                let until = now + Duration::from_secs_f64(timeout);
                let id = m.matchmaker.reserve();
                m.by_leader.insert(key.clone(), id);
                m.gathering_until.insert((until, id));
                m.gatherings.insert(
                    id,
                    Gathering {
                        queue: request.queue.clone(),
                        party: party.clone(),
                        seats: Vec::new(),
                        region: None,
                        properties: BTreeMap::new(),
                        until,
                    },
                );
                id
            }
        };
        let Some(g) = m.gatherings.get_mut(&id) else {
            return Err(ErrorCode::NotQueued);
        };
        // Every member names the same party: another list is another party's.
        let same = g.party.len() == party.len() && party.iter().all(|n| g.party.contains(n));
        if !same {
            return Err(ErrorCode::InvalidValue);
        }
        if g.seats.iter().any(|s| s.name == seat.name) {
            return Err(ErrorCode::AlreadyQueued);
        }
        if seat.name == g.party[0] {
            g.region = request.region.clone();
            g.properties = request.properties.clone();
        }
        seat.ticket = id.0;
        g.seats.push(seat.clone());
        m.gathered.insert(seat.player, id);
        if g.seats.len() < g.party.len() {
            return Ok(id.0);
        }
        // Whole: the party's ticket waits, with its leader's region and properties.
        let request = TicketRequest {
            region: g.region.clone(),
            properties: std::mem::take(&mut g.properties),
            ..request
        };
        let Some(mut seats) = self.end_gathering(id) else {
            return Ok(id.0);
        };
        // In the party's order, whoever came first: its leader is the ticket's first
        // player, and so the room's host when the ticket is the match's oldest.
        seats.sort_by_key(|s| party.iter().position(|n| *n == s.name));
        // Members are told the id now; a refusal of the whole party reaches them all as
        // the ticket's end, after this answer on the same path.
        if let Err(e) = self.enqueue(seats.clone(), &request, now) {
            // The member whose request completed the party learns it from its answer.
            let others: Vec<Seat> = seats
                .into_iter()
                .filter(|s| s.player != seat.player)
                .collect();
            self.tell_ended(&others, UnqueueReason::Refused, None, now);
            return Err(refusal(&e));
        }
        Ok(id.0)
    }

    /// Removes gathering `id`, returning its seats.
    fn end_gathering(&mut self, id: TicketId) -> Option<Vec<Seat>> {
        let m = &mut self.matching;
        let g = m.gatherings.remove(&id)?;
        m.by_leader
            .remove(&(g.queue.clone(), Arc::clone(&g.party[0])));
        m.gathering_until.remove(&(g.until, id));
        for s in &g.seats {
            m.gathered.remove(&s.player);
        }
        Some(g.seats)
    }

    /// On the queue's shard: `player` cancels its ticket (`ticket`, or whichever it holds
    /// when 0), or withdraws it by disconnecting; the rest of its party is told `reason`.
    fn home_cancel(
        &mut self,
        player: PlayerId,
        ticket: u64,
        reason: UnqueueReason,
        now: Instant,
    ) -> Result<u64, ErrorCode> {
        let m = &mut self.matching;
        let id = m
            .matchmaker
            .ticket_of(player)
            .or_else(|| m.gathered.get(&player).copied())
            .filter(|id| ticket == 0 || id.0 == ticket)
            .ok_or(ErrorCode::NotQueued)?;
        let seats = if m.matchmaker.cancel(id) {
            m.seats.remove(&id).unwrap_or_default()
        } else {
            self.end_gathering(id).unwrap_or_default()
        };
        let by = seats
            .iter()
            .find(|s| s.player == player)
            .map(|s| Arc::clone(&s.name));
        let others: Vec<Seat> = seats.into_iter().filter(|s| s.player != player).collect();
        self.tell_ended(&others, reason, by, now);
        Ok(id.0)
    }

    /// Tells each of `seats` that its ticket ended.
    fn tell_ended(
        &mut self,
        seats: &[Seat],
        reason: UnqueueReason,
        by: Option<PlayerName>,
        now: Instant,
    ) {
        for s in seats {
            let news = TicketNews::Ended {
                ticket: s.ticket,
                reason,
                by: by.clone(),
            };
            self.post(s.shard, MeshMsg::Ticket(s.player, Box::new(news)), now);
        }
    }

    /// On a player's shard: news of its ticket.
    fn ticket_news(&mut self, player: PlayerId, news: TicketNews) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        let reply = match news {
            TicketNews::Queued { req, result } => {
                match result {
                    Ok(id) => {
                        if let Some(held) = p.ticket.as_deref_mut() {
                            held.id = id;
                        }
                    }
                    Err(_) => p.ticket = None,
                }
                req.map(|req| match result {
                    Ok(ticket) => Reply::Queued { req, ticket },
                    Err(code) => Reply::Error {
                        req,
                        code,
                        message: "ticket refused".to_owned(),
                    },
                })
            }
            TicketNews::Cancelled { req, result } => {
                if let Ok(id) = result {
                    if p.ticket.as_ref().is_some_and(|h| h.id == id || h.id == 0) {
                        p.ticket = None;
                    }
                }
                req.map(|req| match result {
                    Ok(ticket) => Reply::Cancelled { req, ticket },
                    Err(code) => Reply::Error {
                        req,
                        code,
                        message: "no such ticket waiting".to_owned(),
                    },
                })
            }
            TicketNews::Ended { ticket, reason, by } => {
                if p.ticket
                    .as_ref()
                    .is_some_and(|h| h.id == ticket || h.id == 0)
                {
                    p.ticket = None;
                }
                Some(Reply::Unqueued { ticket, reason, by })
            }
        };
        if let Some(reply) = reply {
            self.reply_now(player, reply);
        }
    }

    /// On the queue's shard: a match of `queue` becomes a room, made at its home.
    fn make_match_room(&mut self, queue: &str, seats: Vec<Seat>, now: Instant) {
        let Some(config) = self.matching.matchmaker.queue(queue) else {
            return;
        };
        add(&self.stats.matches, 1);
        let options = match_options(config, seats.len());
        let room = format!("{CODE_PREFIX}{}", new_code());
        let home = home_shard(&room, self.shards);
        let m = MatchRoom {
            room,
            options,
            seats,
        };
        self.post(home, MeshMsg::MatchRoom(Box::new(m)), now);
    }

    /// On the room's home: makes the match's room with every player in it, and tells each
    /// shard with players which of its players are members now.
    fn home_match(&mut self, m: MatchRoom, now: Instant) {
        let MatchRoom {
            mut room,
            options,
            seats,
        } = m;
        // A code taken already (one in 890 million per live room) is replaced by one that is
        // free and homed here, so that the room is still made in this call.
        while self.homes.contains_key(&room) || home_shard(&room, self.shards) != self.shard {
            room = format!("{CODE_PREFIX}{}", new_code());
        }
        self.make_match_home(&room, options, &seats);
        let roster: Roster = seats
            .iter()
            .take(ROSTER_MAX)
            .map(|s| RosterEntry {
                id: Arc::clone(&s.name),
                meta: s.meta.clone(),
            })
            .collect();
        self.tell_matched(&room, seats.len() as u32, roster, seats, now);
    }

    /// On the room's home: makes a match's room with `seats` (this node's players of it)
    /// counted as its members, the first one its host.
    fn make_match_home(&mut self, room: &str, options: RoomOptions, seats: &[Seat]) {
        let mut per_shard = vec![0; self.shards];
        for s in seats {
            per_shard[s.shard] += 1;
        }
        let members: Vec<HomeMember> = seats
            .iter()
            .map(|s| HomeMember {
                player: s.player,
                name: Arc::clone(&s.name),
                shard: s.shard,
                // A match's players join at once; across nodes, in the roster's order
                // (`cluster_match`).
                joined: 0,
                meta: s.meta.clone(),
            })
            .collect();
        let total = members.len() as u32;
        add(&self.stats.rooms, 1);
        add(&self.stats.room_members, u64::from(total));
        self.homes.insert(
            room.to_owned(),
            HomeRoom {
                per_shard,
                total,
                members,
                locked: false,
                state: None,
                metadata: options.metadata.clone(),
                options: Some(Box::new(options)),
                empty_until: None,
                seq: 0,
                kept: Default::default(),
                kept_bytes: 0,
                messages: 0,
                shared: false,
                remote: Vec::new(),
                told_host: None,
            },
        );
        // The players learn the host from `matched`; a change from it is told.
        if let Some(home) = self.homes.get_mut(room) {
            home.told_host = home.host().map(|(host, _)| host);
        }
    }

    /// On the room's home: tells each shard with players of `seats` which of its players
    /// are members of the match's room (of `members` members) now.
    fn tell_matched(
        &mut self,
        room: &str,
        members: u32,
        roster: Roster,
        seats: Vec<Seat>,
        now: Instant,
    ) {
        let mut by_shard: BTreeMap<ShardId, Vec<(PlayerId, PlayerName, u64)>> = BTreeMap::new();
        for s in seats {
            by_shard
                .entry(s.shard)
                .or_default()
                .push((s.player, s.name, s.ticket));
        }
        for (shard, players) in by_shard {
            let joined = MatchJoined {
                room: room.to_owned(),
                members,
                roster: Arc::clone(&roster),
                players,
            };
            self.post(shard, MeshMsg::MatchJoined(Box::new(joined)), now);
        }
    }

    /// On the room's home, in a cluster: a match with players on this node. Its room is
    /// made with them counted, followed across nodes, and counts the other nodes' players
    /// as their members (as their presence would); they are told at [`QueuesMsg::Go`].
    fn cluster_match(&mut self, m: ClusterMatch, now: Instant) {
        let ClusterMatch {
            queue,
            room,
            here,
            roster,
            elsewhere,
        } = m;
        let seats: Vec<Seat> = here
            .into_iter()
            .filter(|p| p.shard < self.shards)
            .map(|p| Seat {
                player: p.player,
                name: p.name,
                shard: p.shard,
                meta: p.meta,
                skill: 0.0,
                ticket: p.ticket,
            })
            .collect();
        if self.homes.contains_key(&room) {
            // The same match told twice (a stream read again) changes nothing; another
            // room of the same code (12 letters: about one in 10^17) cannot take it in.
            if !self.is_shared_match(&room) {
                self.tell_ended(&seats, UnqueueReason::Refused, None, now);
            }
            return;
        }
        if seats.is_empty() {
            return;
        }
        let players = roster.len().max(seats.len());
        let options = match self.matching.matchmaker.queue(&queue) {
            Some(config) => match_options(config, players),
            // Nodes share their `[matchmaking]` queues; one this node lacks gets the
            // built-in queue's room.
            None => match_options(&QueueConfig::default(), players),
        };
        self.make_match_home(&room, options, &seats);
        // Every node counts the match's players as joined in the roster's order, so that
        // each finds the roster's first (the oldest ticket's leader) as the host, as
        // `matched` says.
        let rank = |name: &PlayerName| {
            roster
                .iter()
                .position(|m| m.id == *name)
                .map_or(u64::MAX, |at| at as u64)
        };
        if let Some(home) = self.homes.get_mut(&room) {
            for m in &mut home.members {
                m.joined = rank(&m.name);
            }
            home.told_host = home.host().map(|(host, _)| host);
        }
        self.remember_shared_match(&room);
        self.share_room(&room);
        for (node, names) in elsewhere {
            let room = room.clone();
            let bridge = self.bridge();
            let presence = crate::cluster::envelope::Presence {
                members: names
                    .into_iter()
                    .map(|name| {
                        let joined = rank(&name);
                        (name, joined)
                    })
                    .collect(),
                ..Default::default()
            };
            let msg = ClusterMsg::Presence {
                room,
                node,
                presence,
            };
            self.handle_cluster_mesh(bridge, msg, now);
        }
        let roster: Roster = roster.into_iter().take(ROSTER_MAX).collect();
        self.matching.waiting_go.insert(room, (roster, seats));
    }

    /// On the room's home, in a cluster: the match's players here are admitted and told.
    fn cluster_go(&mut self, room: &str, now: Instant) {
        let Some((roster, seats)) = self.matching.waiting_go.remove(room) else {
            return;
        };
        let members = self
            .homes
            .get(room)
            .map_or(roster.len() as u32, HomeRoom::cluster_total);
        self.tell_matched(room, members, roster, seats, now);
    }

    /// Marks `room` a match room across nodes; the rooms gone are pruned once the set has
    /// doubled since the last pruning, so that it stays within twice the live ones.
    fn remember_shared_match(&mut self, room: &str) {
        let m = &mut self.matching;
        m.shared_matches.insert(room.to_owned());
        if m.shared_matches.len() >= 2 * m.pruned_at.max(32) {
            let homes = &self.homes;
            m.shared_matches.retain(|r| homes.contains_key(r));
            m.pruned_at = m.shared_matches.len();
        }
    }

    /// On a player's shard: these players are members of the match's room; each is told
    /// `Matched`, and one gone meanwhile (or whose session is detached) leaves the room as
    /// disconnected.
    fn admit_match(&mut self, home: ShardId, m: MatchJoined, now: Instant) {
        let MatchJoined {
            room,
            members,
            roster,
            players,
        } = m;
        // Every player was in the room from its first number on: a replay owes it all.
        let since = 0;
        let host = roster.first().map(|m| Arc::clone(&m.id));
        for (player, name, ticket) in players {
            let present = self
                .players
                .get(&player)
                .filter(|p| p.session.as_ref().is_none_or(|s| s.away_until.is_none()));
            let Some(p) = present else {
                self.post(
                    home,
                    MeshMsg::Leave {
                        room: room.clone(),
                        player,
                        name,
                        reason: LeaveReason::Disconnected,
                    },
                    now,
                );
                continue;
            };
            let member = Member {
                player,
                wire: p.wire,
                outbox: std::rc::Rc::clone(&p.outbox),
                away: false,
                since,
            };
            let local = self.rooms.entry(room.clone()).or_default();
            local.add(member);
            local.total = members;
            local.host = host.clone();
            self.admin_ui_joined(player, &room, now);
            if let Some(p) = self.players.get_mut(&player) {
                p.rooms.push(room.clone());
                if p.ticket
                    .as_ref()
                    .is_some_and(|h| h.id == ticket || h.id == 0)
                {
                    p.ticket = None;
                }
            }
            self.reply_now(
                player,
                Reply::Matched {
                    ticket,
                    room: room.clone(),
                    roster: Arc::clone(&roster),
                },
            );
        }
    }
}

/// The options of the room a match of `players` players of a queue of `config` becomes.
fn match_options(config: &QueueConfig, players: usize) -> RoomOptions {
    let room = &config.room;
    RoomOptions {
        max_members: room
            .max_members
            .unwrap_or(config.match_size.max as u32)
            .max(players as u32),
        private: room.private,
        metadata: room
            .metadata
            .as_ref()
            .map(|m| Arc::from(serde_json::Value::Object(m.clone()).to_string())),
        empty_ttl_ms: room.empty_ttl_ms,
    }
}

/// Checks a ticket against its queue where it arrives, and keeps of its properties those
/// the queue lists.
fn check_ticket(
    ticket: &mut TicketRequest,
    queue: &QueueConfig,
    me: &str,
    max_name_len: usize,
) -> Result<(), ErrorCode> {
    if !ticket.skill.is_finite() {
        return Err(ErrorCode::InvalidValue);
    }
    let value = |v: &str| super::valid_name(v, MAX_VALUE_LEN);
    if ticket.region.as_deref().is_some_and(|r| !value(r)) {
        return Err(ErrorCode::InvalidValue);
    }
    ticket
        .properties
        .retain(|k, _| queue.properties.contains(k));
    if ticket.properties.values().any(|v| !value(v)) {
        return Err(ErrorCode::InvalidValue);
    }
    let party = &ticket.party;
    if party.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = party.iter().map(String::as_str).collect();
    names.sort_unstable();
    let distinct = names.windows(2).all(|w| w[0] != w[1]);
    let valid = party.iter().all(|n| super::valid_name(n, max_name_len));
    if !(distinct && valid && names.contains(&me) && party.len() <= queue.match_size.max) {
        return Err(ErrorCode::InvalidValue);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::auth::Identity;
    use crate::proto::native::ServerFrame;
    use crate::relay::tests::{frames, outbox};
    use crate::relay::{RelayLimits, Wire};
    use crate::stats::ShardStats;

    /// Two shards of one node of a cluster, whose queues are the cluster's.
    fn clustered() -> Vec<Relay> {
        let stats = Arc::new(ShardStats::default());
        let limits = RelayLimits {
            max_name_len: 64,
            max_rooms_per_connection: 4,
            max_room_members: 100,
            max_message_bytes: 4096,
            history: None,
            rooms: crate::config::RoomsConfig::DEFAULT,
        };
        (0..2)
            .map(|i| {
                let mut r = Relay::new(i, 2, limits, Arc::clone(&stats));
                r.set_cluster(7);
                r.share_queues();
                r.set_matchmaking(&MatchmakingConfig::default());
                r
            })
            .collect()
    }

    /// Carries every message between the shards until none is left; those for the bridge
    /// (index 2) are dropped.
    fn settle(r: &mut [Relay]) {
        loop {
            let mut moved = Vec::new();
            for (from, relay) in r.iter_mut().enumerate() {
                moved.extend(relay.drain_mesh().map(|(to, msg)| (from, to, msg)));
            }
            if moved.is_empty() {
                return;
            }
            for (from, to, msg) in moved {
                if let Some(relay) = r.get_mut(to) {
                    relay.handle_mesh(from, msg, Instant::now());
                }
            }
        }
    }

    /// What the shards sent the bridge (the cluster queues), taken out of their mesh.
    fn to_bridge(r: &mut [Relay]) -> Vec<QueuesMsg> {
        let mut out = Vec::new();
        for relay in r.iter_mut() {
            let mut kept = Vec::new();
            for (to, msg) in relay.drain_mesh() {
                match msg {
                    MeshMsg::Queues(q) if to == 2 => out.push(*q),
                    MeshMsg::Cluster(_) if to == 2 => {}
                    msg => kept.push((to, msg)),
                }
            }
            relay.mesh.extend(kept);
        }
        out
    }

    /// A ticket goes to the bridge; a match comes back in two steps: the room is made
    /// (counting the other node's player) with nobody told, then the go admits and tells
    /// the players here, with the count across nodes. The same match told twice changes
    /// nothing.
    #[test]
    fn a_cluster_match_is_made_first_and_told_at_its_go() {
        let mut r = clustered();
        let now = Instant::now();
        let boxes = [outbox(), outbox()];
        for (i, b) in boxes.iter().enumerate() {
            let p = i as PlayerId + 1;
            r[i].connect(
                p,
                Identity::anonymous(p.to_string()),
                Wire::Native,
                Rc::clone(b),
            );
            let ticket = TicketRequest {
                queue: "default".into(),
                ..TicketRequest::default()
            };
            r[i].queue_ticket(p, Some(p), ticket, now).unwrap();
        }
        let sent = to_bridge(&mut r);
        assert!(
            matches!(&sent[..], [QueuesMsg::Enqueue { shard: 0, request: a }, QueuesMsg::Enqueue { shard: 1, request: b }] if a.player == 1 && b.player == 2),
            "{sent:?}"
        );
        for (i, p) in [(0, 1), (1, 2)] {
            let news = TicketNews::Queued {
                req: Some(p),
                result: Ok(40 + p),
            };
            r[i].handle_mesh(2, MeshMsg::Ticket(p, Box::new(news)), now);
        }
        let room = "#ABCDEFGHJKMN".to_owned();
        let home = home_shard(&room, 2);
        let player = |p: PlayerId, shard| MatchedPlayer {
            player: p,
            name: Arc::from(p.to_string()),
            shard,
            meta: None,
            ticket: 40 + p,
        };
        let roster = ["1", "2", "elsewhere"]
            .map(|id| RosterEntry {
                id: Arc::from(id),
                meta: None,
            })
            .to_vec();
        let m = || {
            MeshMsg::Queues(Box::new(QueuesMsg::Match(ClusterMatch {
                queue: "default".into(),
                room: room.clone(),
                here: vec![player(1, 0), player(2, 1)],
                roster: roster.clone(),
                elsewhere: vec![(9, vec![Arc::from("elsewhere")])],
            })))
        };
        r[home].handle_mesh(2, m(), now);
        settle(&mut r);
        assert!(r[home].homes[&room].shared, "followed across nodes");
        assert_eq!(r[home].homes[&room].cluster_total(), 3);
        for b in &boxes {
            let got = frames(b);
            assert!(matches!(got[..], [ServerFrame::Queued { .. }]), "{got:?}");
        }
        assert!(!r[0].is_member(1, &room), "not before the go");
        let go = || MeshMsg::Queues(Box::new(QueuesMsg::Go { room: room.clone() }));
        r[home].handle_mesh(2, go(), now);
        settle(&mut r);
        for (i, b) in boxes.iter().enumerate() {
            let got = frames(b);
            let [ServerFrame::Matched {
                room: told,
                players,
                ticket,
                ..
            }] = &got[..]
            else {
                panic!("{got:?}");
            };
            assert_eq!((told, *ticket), (&room, 41 + i as u64));
            assert_eq!(players.len(), 3);
        }
        assert!(r[0].is_member(1, &room) && r[1].is_member(2, &room));
        assert_eq!(r[0].rooms[&room].total, 3, "the count across nodes");
        // Told again (a stream read twice): nothing changes, nobody is told anything.
        r[home].handle_mesh(2, m(), now);
        r[home].handle_mesh(2, go(), now);
        settle(&mut r);
        assert!(boxes.iter().all(|b| frames(b).is_empty()));
        // Both may queue again: their tickets ended with the match.
        let again = TicketRequest {
            queue: "default".into(),
            ..TicketRequest::default()
        };
        r[0].queue_ticket(1, None, again, now).unwrap();
    }
}
