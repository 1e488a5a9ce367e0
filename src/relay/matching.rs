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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    home_shard, new_code, public_meta, HomeMember, HomeRoom, Member, MeshMsg, PlayerId, PlayerName,
    Relay, Reply, RoomOptions, RosterEntry, ShardId, CODE_PREFIX, ROSTER_MAX,
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

/// A player's request as it crosses to the queue's shard.
#[derive(Debug)]
pub struct QueueRequest {
    player: PlayerId,
    req: Option<u64>,
    name: PlayerName,
    meta: Option<Arc<str>>,
    ticket: TicketRequest,
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
        self.matching = Matching::new(config, self.shard, self.shards);
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
        let shard = home_shard(&ticket.queue, self.shards);
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
        self.post(shard, MeshMsg::Queue(Box::new(request)), now);
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
        self.post(
            shard,
            MeshMsg::Cancel {
                player,
                req,
                ticket,
            },
            now,
        );
        Ok(())
    }

    /// The player is going (disconnected, or its session detached): its ticket, if it holds
    /// one, is withdrawn with its whole party.
    pub(super) fn withdraw_ticket(&mut self, player: PlayerId, now: Instant) {
        let Some(held) = self.players.get_mut(&player).and_then(|p| p.ticket.take()) else {
            return;
        };
        self.post(held.shard, MeshMsg::Withdraw { player }, now);
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
        let room = &config.room;
        let options = RoomOptions {
            max_members: room
                .max_members
                .unwrap_or(config.match_size.max as u32)
                .max(seats.len() as u32),
            private: room.private,
            metadata: room
                .metadata
                .as_ref()
                .map(|m| Arc::from(serde_json::Value::Object(m.clone()).to_string())),
            empty_ttl_ms: room.empty_ttl_ms,
        };
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
        let mut per_shard = vec![0; self.shards];
        for s in &seats {
            per_shard[s.shard] += 1;
        }
        let members: Vec<HomeMember> = seats
            .iter()
            .map(|s| HomeMember {
                player: s.player,
                name: Arc::clone(&s.name),
                shard: s.shard,
                meta: s.meta.clone(),
            })
            .collect();
        let roster: super::Roster = members
            .iter()
            .take(ROSTER_MAX)
            .map(|m| RosterEntry {
                id: Arc::clone(&m.name),
                meta: m.meta.clone(),
            })
            .collect();
        let total = members.len() as u32;
        add(&self.stats.rooms, 1);
        add(&self.stats.room_members, u64::from(total));
        self.homes.insert(
            room.clone(),
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
            },
        );
        let mut by_shard: BTreeMap<ShardId, Vec<(PlayerId, PlayerName, u64)>> = BTreeMap::new();
        for s in seats {
            by_shard
                .entry(s.shard)
                .or_default()
                .push((s.player, s.name, s.ticket));
        }
        for (shard, players) in by_shard {
            let joined = MatchJoined {
                room: room.clone(),
                members: total,
                roster: Arc::clone(&roster),
                players,
            };
            self.post(shard, MeshMsg::MatchJoined(Box::new(joined)), now);
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
