//! Matchmaking queues, sans-IO: tickets and `now` in, matches and timeouts out
//! (docs/ROOMS.md, "Matchmaking queues").
//!
//! A [`Matchmaker`] holds every queue of the `[matchmaking]` configuration plus the built-in
//! queue `default`. A [`Ticket`] is one player, or a party matched as one unit; each waits
//! with a skill window that widens with its waiting time. [`Matchmaker::poll`] expires
//! tickets past their queue's timeout and runs the matching pass, which forms matches of
//! pairwise compatible tickets, oldest ticket first; [`Matchmaker::next_deadline`] says when
//! the next call has something to do. Nothing here reads a clock, opens a socket or knows a
//! protocol: the relay wires it to `mm:queue` and the native frames, and a shard's timer
//! wheel calls `poll` at the deadline.
//!
//! # Matching rule
//!
//! A ticket's window after waiting `w` seconds is `min(max_window, skill_window + widen_per_s
//! * w)`. Two tickets are compatible when
//!
//! - their skills differ by at most the smaller of their two windows (both must accept the
//!   other: a newcomer with a narrow window is not pulled into a game far from its skill
//!   because an old ticket's window has grown wide),
//! - their regions are equal, or both have waited at least `cross_region_after_s` (never,
//!   when the queue does not set it), and
//! - every property the queue lists is equal on both (a property a ticket lacks equals
//!   only another ticket's lack of it).
//!
//! A match is a set of pairwise compatible tickets whose players number between the queue's
//! `match_size` min and max.
//!
//! # Complexity
//!
//! Tickets wait in buckets by listed property values and region, each a `BTreeSet` ordered
//! by skill (and, once tickets have waited past `cross_region_after_s`, one more per
//! property bucket that holds them whatever their region). A pass takes the waiting tickets
//! oldest first as anchors and walks the anchor's buckets outward from its skill, nearest
//! first, within its window: `O(n · (log n + k))` for `n` waiting tickets, where `k` is the
//! tickets the walk passes before the match is full (at most those within the window; a
//! match of `max` players usually stops after about `max` of them). Enqueue, cancel and
//! withdraw are `O(log n)`; a timeout or a region crossing costs `O(log n)` when it is due.
//! `benches/matchmaking.rs` measures a pass at 10,000 waiting tickets.

use std::collections::btree_set;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::iter::Rev;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

/// A player as the matchmaker knows it: the relay's player id.
pub type PlayerKey = crate::relay::PlayerId;

/// The name of the queue that exists without configuration.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest region or property value, in bytes. Both are part of the bucket a ticket waits in
/// and come from the client; 128 bytes is a room name's default bound (`max_name_len`) and
/// room for any region code or game-mode name.
pub const MAX_VALUE_LEN: usize = 128;

/// Longest time any queue setting in seconds may name: one day. A ticket a day old belongs
/// to a player long gone, and the bound keeps `Instant` arithmetic far from overflow.
pub const MAX_SECONDS: f64 = 86_400.0;

/// `[matchmaking]`: the queues and the limits of the matchmaker (docs/ROOMS.md).
///
/// `pass_interval_ms` and `max_tickets_per_queue` are also `CORELAY_MATCHMAKING_<KEY>`
/// variables; the queues (`[matchmaking.queues.<name>]`) are set in the TOML file only, as
/// their names are free text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchmakingConfig {
    /// Least time between two matching passes of one queue, in ms. A pass walks every
    /// waiting ticket, so this bounds what a busy queue costs its shard; timeouts are
    /// exact regardless.
    pub pass_interval_ms: u64,
    /// Most tickets waiting in one queue; past it `enqueue` refuses with
    /// [`MatchError::QueueFull`].
    pub max_tickets_per_queue: usize,
    /// The queues by name (`[matchmaking.queues.ranked]`). A queue named `default` replaces
    /// the built-in one; a key a queue leaves out takes the built-in queue's value.
    pub queues: BTreeMap<String, QueueConfig>,
}

impl Default for MatchmakingConfig {
    fn default() -> Self {
        MatchmakingConfig {
            // 100 ms: a match found a tenth of a second late goes unnoticed on a queue
            // screen, and a 10,000-ticket queue then costs at most ten passes a second.
            pass_interval_ms: 100,
            // 100,000: ten times the benched 10,000, a busy game's whole queue; a pass is
            // linear in it, and each ticket holds a few hundred bytes.
            max_tickets_per_queue: 100_000,
            queues: BTreeMap::new(),
        }
    }
}

impl MatchmakingConfig {
    /// Every queue a matchmaker built from this has: the configured ones and, unless one of
    /// them is named `default`, the built-in [`DEFAULT_QUEUE`].
    pub fn effective_queues(&self) -> BTreeMap<String, QueueConfig> {
        let mut queues = self.queues.clone();
        // `QueueConfig::default()` is the built-in queue.
        queues.entry(DEFAULT_QUEUE.to_owned()).or_default();
        queues
    }

    /// What is wrong with this configuration, if anything, as one line naming the key.
    /// Queue names follow the room names' rule (`max_name_len`), and no match may be
    /// larger than a room (`max_room_members`), since a match becomes one.
    pub fn problem(&self, max_name_len: usize, max_room_members: usize) -> Option<String> {
        if self.pass_interval_ms == 0 {
            return Some("pass_interval_ms must be positive".into());
        }
        if self.max_tickets_per_queue == 0 {
            return Some("max_tickets_per_queue must be positive".into());
        }
        self.queues.iter().find_map(|(name, queue)| {
            if !crate::relay::valid_name(name, max_name_len) {
                return Some(format!(
                    "queues: `{name}` is not a valid name (1..={max_name_len} bytes, no control characters)"
                ));
            }
            queue
                .problem(max_room_members)
                .map(|p| format!("queues.{name}.{p}"))
        })
    }
}

/// How a party's skill is made from its members' skills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartySkill {
    /// The mean of the members' skills (the default).
    #[default]
    Mean,
    /// The best member's skill: a strong player cannot carry weak friends into easy games.
    Max,
}

/// How many players a match holds: at least `min`, at most `max`. In TOML `[2, 4]`,
/// `{ min = 2, max = 4 }`, or `2` for exactly two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MatchSize {
    /// Fewest players of a match.
    pub min: usize,
    /// Most players of a match, and the largest party the queue takes.
    pub max: usize,
}

impl<'de> Deserialize<'de> for MatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Exact(usize),
            Pair(usize, usize),
            Table { min: usize, max: usize },
        }
        Ok(match Form::deserialize(d)? {
            Form::Exact(n) => MatchSize { min: n, max: n },
            Form::Pair(min, max) | Form::Table { min, max } => MatchSize { min, max },
        })
    }
}

/// One queue (`[matchmaking.queues.<name>]`). Skills, windows and times are numbers >= 0;
/// a key left out takes the built-in `default` queue's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Players per match, `[min, max]`.
    pub match_size: MatchSize,
    /// A new ticket's window: the largest skill difference it accepts.
    pub skill_window: f64,
    /// How much the window grows per second of waiting.
    pub widen_per_s: f64,
    /// The widest a window grows.
    pub max_window: f64,
    /// Seconds after which a ticket may match other regions (with tickets that have waited
    /// as long). Absent: regions never mix.
    pub cross_region_after_s: Option<f64>,
    /// Ticket properties that must be equal within a match (game mode, map, version).
    pub properties: Vec<String>,
    /// A party's skill: `"mean"` or `"max"` of its members'.
    pub party_skill: PartySkill,
    /// Seconds a ticket waits before it fails with [`Event::TimedOut`].
    pub timeout_s: f64,
    /// The room a match becomes (`[matchmaking.queues.<name>.room]`).
    pub room: MatchRoom,
}

/// How the room of a match is made: the options of `room:create` (docs/ROOMS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchRoom {
    /// Most members; absent: the queue's `match_size` max (a match fills its room).
    pub max_members: Option<u32>,
    /// Not listed by `room:list`, joined only with its code: by default a match's room is
    /// private, so that players who were not matched do not drop in.
    pub private: bool,
    /// Its public metadata (a table, kept as a JSON object).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// How long it survives being empty, in ms (at most an hour): players who dropped can
    /// come back.
    pub empty_ttl_ms: u64,
}

impl Default for MatchRoom {
    fn default() -> Self {
        MatchRoom {
            max_members: None,
            private: true,
            metadata: None,
            empty_ttl_ms: 0,
        }
    }
}

impl Default for QueueConfig {
    /// The built-in `default` queue: one against one, a window of 100 widening by 50 per
    /// second (the newcomer queue).
    fn default() -> Self {
        QueueConfig {
            match_size: MatchSize { min: 2, max: 2 },
            skill_window: 100.0,
            widen_per_s: 50.0,
            // 1,000: reached after 18 s; on an Elo-like scale a difference of 1,000 is
            // already "anyone", so a wider window would mean nothing.
            max_window: 1_000.0,
            cross_region_after_s: None,
            properties: Vec::new(),
            party_skill: PartySkill::Mean,
            // 60 s: players give up on a queue screen after about a minute, and the client
            // can then offer another queue; 42 s of it at the widest window.
            timeout_s: 60.0,
            room: MatchRoom::default(),
        }
    }
}

impl QueueConfig {
    /// What is wrong with this queue, if anything, as `key: reason`.
    pub fn problem(&self, max_room_members: usize) -> Option<String> {
        let MatchSize { min, max } = self.match_size;
        if min == 0 || min > max {
            return Some(format!("match_size: [{min}, {max}] needs 1 <= min <= max"));
        }
        if max > max_room_members {
            return Some(format!(
                "match_size: max {max} is above max_room_members ({max_room_members}): a match becomes a room"
            ));
        }
        let numbers = [
            ("skill_window", self.skill_window),
            ("widen_per_s", self.widen_per_s),
            ("max_window", self.max_window),
        ];
        if let Some((key, _)) = numbers.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Some(format!("{key}: must be a number >= 0"));
        }
        if self.max_window < self.skill_window {
            return Some("max_window: must be at least skill_window".into());
        }
        let seconds = [
            ("timeout_s", Some(self.timeout_s)),
            ("cross_region_after_s", self.cross_region_after_s),
        ];
        for (key, v) in seconds {
            if let Some(v) = v {
                if !(v.is_finite() && (0.0..=MAX_SECONDS).contains(&v)) {
                    return Some(format!("{key}: must be between 0 and {MAX_SECONDS} s"));
                }
            }
        }
        if self.timeout_s <= 0.0 {
            return Some("timeout_s: must be positive".into());
        }
        if let Some(n) = self.room.max_members {
            if (n as usize) < max || n as usize > max_room_members {
                return Some(format!(
                    "room.max_members: {n} must hold a match ({max}) and be at most max_room_members ({max_room_members})"
                ));
            }
        }
        if self.room.empty_ttl_ms > crate::relay::MAX_EMPTY_TTL_MS {
            return Some(format!(
                "room.empty_ttl_ms: at most {} ms",
                crate::relay::MAX_EMPTY_TTL_MS
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &self.properties {
            if !crate::relay::valid_name(p, MAX_VALUE_LEN) {
                return Some(format!("properties: `{p}` is not a valid name"));
            }
            if !seen.insert(p) {
                return Some(format!("properties: `{p}` is listed twice"));
            }
        }
        None
    }

    /// The window of a ticket that has waited `waited`.
    fn window(&self, waited: Duration) -> f64 {
        (self.skill_window + self.widen_per_s * waited.as_secs_f64()).min(self.max_window)
    }
}

/// A ticket's id, unique within its [`Matchmaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketId(pub u64);

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One member of a ticket: a player and its skill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// The player.
    pub player: PlayerKey,
    /// Its skill rating (any finite number; the scale is the game's).
    pub skill: f64,
}

/// What a player (or a party's leader) asks to be matched with. Per-member skills let the
/// queue's `party_skill` pick mean or max; a protocol that carries one skill per ticket
/// gives it to every member, and then both are that skill. The matchmaker gives the ticket
/// its id and its enqueue time.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// The queue's name.
    pub queue: String,
    /// One member, or a party: matched as one unit, never split.
    pub members: Vec<Member>,
    /// The region to play in; `None` is a region of its own (it matches only other
    /// tickets without one until `cross_region_after_s`).
    pub region: Option<String>,
    /// Properties; those the queue lists must be equal within a match, the others are
    /// ignored (and not kept).
    pub properties: BTreeMap<String, String>,
}

impl Ticket {
    /// A ticket of one player.
    pub fn solo(queue: &str, player: PlayerKey, skill: f64) -> Ticket {
        Ticket::party(queue, vec![Member { player, skill }])
    }

    /// A ticket of several players matched together.
    pub fn party(queue: &str, members: Vec<Member>) -> Ticket {
        Ticket {
            queue: queue.to_owned(),
            members,
            region: None,
            properties: BTreeMap::new(),
        }
    }

    /// This ticket with `region`.
    pub fn in_region(mut self, region: &str) -> Ticket {
        self.region = Some(region.to_owned());
        self
    }

    /// This ticket with property `name` = `value`.
    pub fn with_property(mut self, name: &str, value: &str) -> Ticket {
        self.properties.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// What [`Matchmaker::poll`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// These tickets form a match: put `players` in one room and tell them. The tickets are
    /// gone from the queue.
    Matched {
        /// The queue.
        queue: String,
        /// The tickets, the oldest (the anchor) first.
        tickets: Vec<TicketId>,
        /// Their players, ticket by ticket.
        players: Vec<PlayerKey>,
    },
    /// The ticket waited its queue's `timeout_s` without a match and is gone: tell its
    /// players.
    TimedOut {
        /// The queue.
        queue: String,
        /// The ticket.
        ticket: TicketId,
        /// Its players.
        players: Vec<PlayerKey>,
    },
}

/// Why a ticket was refused. Each is the asker's mistake (or the queue's load); nothing
/// else is affected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    /// No queue of this name: ask for a configured one, or `default`.
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
    /// The id given to [`Matchmaker::enqueue_as`] is a waiting ticket's: a bug of the
    /// caller, which must take ids from [`Matchmaker::reserve`].
    #[error("ticket {0} exists")]
    DuplicateId(TicketId),
    /// The player waits in a ticket already (or is named twice in this one): cancel that
    /// ticket first.
    #[error("player {0} is already queued")]
    AlreadyQueued(PlayerKey),
    /// The ticket names no player.
    #[error("a ticket needs at least one player")]
    NoPlayers,
    /// The party has more players than a match of the queue holds: split it or pick
    /// another queue.
    #[error("a party of {size} does not fit a match of at most {max}")]
    PartyTooLarge {
        /// The party's size.
        size: usize,
        /// The queue's `match_size` max.
        max: usize,
    },
    /// A skill is NaN or infinite: send a finite number.
    #[error("skill must be a finite number")]
    BadSkill,
    /// The region or a listed property's value is empty, too long or has control
    /// characters: send at most [`MAX_VALUE_LEN`] bytes of text. Names the field
    /// (`region` or the property), not the value, which may be long.
    #[error("{0} must be 1..={max} bytes with no control characters", max = MAX_VALUE_LEN)]
    BadValue(String),
    /// The queue holds `max_tickets_per_queue` tickets: try again later.
    #[error("queue `{0}` is full")]
    QueueFull(String),
}

/// The matchmaker of one shard: every queue, the waiting tickets and who is in which.
#[derive(Debug)]
pub struct Matchmaker {
    queues: Vec<Queue>,
    by_name: HashMap<String, usize>,
    tickets: HashMap<TicketId, Waiting>,
    queued: HashMap<PlayerKey, TicketId>,
    next_id: u64,
    id_step: u64,
    pass_interval: Duration,
    max_tickets: usize,
}

/// A skill as ordered bits (see [`skill_bits`]) with the ticket id, so equal skills stay
/// apart: the key of a bucket.
type SkillKey = (u64, TicketId);

/// Values of a queue's listed properties, in the order it lists them.
type Group = Vec<Option<String>>;

#[derive(Debug)]
struct Queue {
    name: String,
    config: QueueConfig,
    /// Every waiting ticket, oldest first: anchors, and the timeouts in order.
    by_age: BTreeSet<(Instant, TicketId)>,
    /// Tickets that have not yet waited `cross_region_after_s`, oldest first.
    uncrossed: BTreeSet<(Instant, TicketId)>,
    buckets: HashMap<Group, Buckets>,
    /// Players waiting in this queue: below `match_size.min` no pass can match.
    players: usize,
    /// When something changed that a pass has not seen (an arrival, a departure, a
    /// crossing).
    dirty_since: Option<Instant>,
    last_pass: Option<Instant>,
}

/// The tickets of one property group, by skill.
#[derive(Debug, Default)]
struct Buckets {
    regions: HashMap<Option<String>, BTreeSet<SkillKey>>,
    /// Those that may cross regions, whatever their own.
    crossed: BTreeSet<SkillKey>,
}

#[derive(Debug)]
struct Waiting {
    queue: usize,
    players: Vec<PlayerKey>,
    skill: f64,
    region: Option<String>,
    group: Group,
    enqueued_at: Instant,
    crossed: bool,
}

/// `x`'s bits reordered so that unsigned order is `f64::total_cmp` order.
fn skill_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

/// The inverse of [`skill_bits`].
fn skill_from_bits(k: u64) -> f64 {
    if k >> 63 == 1 {
        f64::from_bits(k & !(1 << 63))
    } else {
        f64::from_bits(!k)
    }
}

fn valid_value(v: &str) -> bool {
    crate::relay::valid_name(v, MAX_VALUE_LEN)
}

/// `at + s` seconds, or `None` past what `Instant` holds (no deadline then).
fn after(at: Instant, s: f64) -> Option<Instant> {
    at.checked_add(Duration::try_from_secs_f64(s).ok()?)
}

impl Matchmaker {
    /// A matchmaker with the queues of `config` and the built-in `default`. The
    /// configuration is the one [`crate::Config`] validated at start; an invalid queue
    /// here would match by nonsense rules, not panic.
    pub fn new(config: &MatchmakingConfig) -> Matchmaker {
        let queues: Vec<Queue> = config
            .effective_queues()
            .into_iter()
            .map(|(name, config)| Queue {
                name,
                config,
                by_age: BTreeSet::new(),
                uncrossed: BTreeSet::new(),
                buckets: HashMap::new(),
                players: 0,
                dirty_since: None,
                last_pass: None,
            })
            .collect();
        let by_name = queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), i))
            .collect();
        Matchmaker {
            queues,
            by_name,
            tickets: HashMap::new(),
            queued: HashMap::new(),
            next_id: 1,
            id_step: 1,
            pass_interval: Duration::from_millis(config.pass_interval_ms),
            max_tickets: config.max_tickets_per_queue,
        }
    }

    /// This matchmaker numbering its tickets `first`, `first + step`, ...: matchmakers
    /// of several shards then never give the same id, and an id tells its shard.
    pub fn numbered(mut self, first: u64, step: u64) -> Matchmaker {
        self.next_id = first;
        self.id_step = step.max(1);
        self
    }

    /// An id no ticket has, for [`enqueue_as`](Self::enqueue_as): a party's id is
    /// handed to its members before the last of them has queued.
    pub fn reserve(&mut self) -> TicketId {
        let id = TicketId(self.next_id);
        self.next_id += self.id_step;
        id
    }

    /// Puts `ticket` in its queue at `now`. It is matched by a later [`poll`](Self::poll);
    /// nothing matches inside this call.
    pub fn enqueue(&mut self, ticket: Ticket, now: Instant) -> Result<TicketId, MatchError> {
        // Taken only once the ticket is in: a refused ticket uses up no id.
        let id = TicketId(self.next_id);
        self.enqueue_as(id, ticket, now)?;
        self.next_id += self.id_step;
        Ok(id)
    }

    /// [`enqueue`](Self::enqueue) with an id from [`reserve`](Self::reserve).
    pub fn enqueue_as(
        &mut self,
        id: TicketId,
        ticket: Ticket,
        now: Instant,
    ) -> Result<(), MatchError> {
        if self.tickets.contains_key(&id) {
            return Err(MatchError::DuplicateId(id));
        }
        let q = *self
            .by_name
            .get(&ticket.queue)
            .ok_or_else(|| MatchError::UnknownQueue(ticket.queue.clone()))?;
        let queue = &self.queues[q];
        let config = &queue.config;
        if ticket.members.is_empty() {
            return Err(MatchError::NoPlayers);
        }
        if ticket.members.len() > config.match_size.max {
            return Err(MatchError::PartyTooLarge {
                size: ticket.members.len(),
                max: config.match_size.max,
            });
        }
        if ticket.members.iter().any(|m| !m.skill.is_finite()) {
            return Err(MatchError::BadSkill);
        }
        let players: Vec<PlayerKey> = ticket.members.iter().map(|m| m.player).collect();
        if let Some(&p) = players.iter().find(|p| self.queued.contains_key(p)) {
            return Err(MatchError::AlreadyQueued(p));
        }
        // Sorted, so that a party as large as a room is checked in O(n log n).
        let mut sorted = players.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MatchError::AlreadyQueued(pair[0]));
        }
        if ticket.region.as_deref().is_some_and(|r| !valid_value(r)) {
            return Err(MatchError::BadValue("region".into()));
        }
        let group: Group = config
            .properties
            .iter()
            .map(|p| ticket.properties.get(p).cloned())
            .collect();
        let mut values = config.properties.iter().zip(&group);
        if let Some((name, _)) = values.find(|(_, v)| v.as_deref().is_some_and(|v| !valid_value(v)))
        {
            return Err(MatchError::BadValue(name.clone()));
        }
        if queue.by_age.len() >= self.max_tickets {
            return Err(MatchError::QueueFull(queue.name.clone()));
        }
        let skills = ticket.members.iter().map(|m| m.skill);
        let skill = match config.party_skill {
            PartySkill::Mean => skills.sum::<f64>() / ticket.members.len() as f64,
            PartySkill::Max => skills.fold(f64::NEG_INFINITY, f64::max),
        };
        // Finite skills can still sum past f64's range.
        if !skill.is_finite() {
            return Err(MatchError::BadSkill);
        }
        // Adding 0.0 turns -0.0 into 0.0, so that equal skills have equal keys.
        let skill = skill + 0.0;
        // A ticket may cross regions at once (`cross_region_after_s = 0`), later, or never.
        let crossed = config.cross_region_after_s == Some(0.0);
        let crosses_later = !crossed && config.cross_region_after_s.is_some();
        let queue = &mut self.queues[q];
        queue.by_age.insert((now, id));
        if crosses_later {
            queue.uncrossed.insert((now, id));
        }
        let buckets = queue.buckets.entry(group.clone()).or_default();
        let key = (skill_bits(skill), id);
        buckets
            .regions
            .entry(ticket.region.clone())
            .or_default()
            .insert(key);
        if crossed {
            buckets.crossed.insert(key);
        }
        queue.players += players.len();
        queue.dirty_since.get_or_insert(now);
        for p in &players {
            self.queued.insert(*p, id);
        }
        self.tickets.insert(
            id,
            Waiting {
                queue: q,
                players,
                skill,
                region: ticket.region,
                group,
                enqueued_at: now,
                crossed,
            },
        );
        Ok(())
    }

    /// Takes a waiting ticket out of its queue, whole party; `false` when it is not waiting
    /// (unknown, matched, timed out, cancelled before). Checking that the asker may cancel
    /// it is the caller's part ([`ticket_of`](Self::ticket_of)).
    pub fn cancel(&mut self, ticket: TicketId) -> bool {
        self.remove(ticket).is_some()
    }

    /// Withdraws the ticket `player` waits in (a disconnected player: its whole party
    /// leaves the queue). Returns the ticket and its players, for the caller to tell the
    /// others; `None` when the player waits in no ticket.
    pub fn withdraw_player(&mut self, player: PlayerKey) -> Option<(TicketId, Vec<PlayerKey>)> {
        let id = *self.queued.get(&player)?;
        self.remove(id).map(|w| (id, w.players))
    }

    /// The ticket `player` waits in.
    pub fn ticket_of(&self, player: PlayerKey) -> Option<TicketId> {
        self.queued.get(&player).copied()
    }

    /// The players of a waiting ticket.
    pub fn players_of(&self, ticket: TicketId) -> Option<&[PlayerKey]> {
        self.tickets.get(&ticket).map(|w| w.players.as_slice())
    }

    /// The settings of queue `name`, if there is one.
    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.by_name.get(name).map(|&q| &self.queues[q].config)
    }

    /// Tickets waiting in `queue` (0 for an unknown queue).
    pub fn waiting(&self, queue: &str) -> usize {
        self.by_name
            .get(queue)
            .map_or(0, |&q| self.queues[q].by_age.len())
    }

    /// Does what is due at `now`: tickets that have waited their queue's `timeout_s` fail
    /// ([`Event::TimedOut`], before any match of this call, so a ticket never matches at or
    /// past its timeout), tickets reach `cross_region_after_s`, and each queue that has
    /// changed or whose windows are still widening gets a matching pass, at most one per
    /// `pass_interval_ms`.
    pub fn poll(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for q in 0..self.queues.len() {
            self.expire(q, now, &mut events);
            self.cross(q, now);
            if self.queues[q]
                .pass_due(self.pass_interval)
                .is_some_and(|due| due <= now)
            {
                self.pass(q, now, &mut events);
            }
        }
        events
    }

    /// When [`poll`](Self::poll) next has something to do: the next timeout, the next
    /// region crossing, or the next matching pass (an arrival or departure since the last
    /// pass; windows that have not reached `max_window` in a queue with enough players to
    /// match, which widen continuously and are passed over every `pass_interval_ms`).
    /// `None`: nothing until the next call of another method.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .flat_map(|queue| {
                let timeout = queue
                    .by_age
                    .first()
                    .and_then(|&(at, _)| after(at, queue.config.timeout_s));
                let crossing = queue.uncrossed.first().and_then(|&(at, _)| {
                    after(at, queue.config.cross_region_after_s.unwrap_or(MAX_SECONDS))
                });
                [timeout, crossing, queue.pass_due(self.pass_interval)]
            })
            .flatten()
            .min()
    }

    /// Fails the tickets of queue `q` that have waited their timeout by `now`.
    fn expire(&mut self, q: usize, now: Instant, events: &mut Vec<Event>) {
        let timeout_s = self.queues[q].config.timeout_s;
        while let Some(&(at, id)) = self.queues[q].by_age.first() {
            if after(at, timeout_s).is_none_or(|due| due > now) {
                break;
            }
            if let Some(w) = self.remove(id) {
                self.queues[q].dirty_since.get_or_insert(now);
                events.push(Event::TimedOut {
                    queue: self.queues[q].name.clone(),
                    ticket: id,
                    players: w.players,
                });
            }
        }
    }

    /// Lets the tickets of queue `q` that have waited `cross_region_after_s` by `now`
    /// match other regions.
    fn cross(&mut self, q: usize, now: Instant) {
        let queue = &mut self.queues[q];
        let Some(after_s) = queue.config.cross_region_after_s else {
            return;
        };
        while let Some(&(at, id)) = queue.uncrossed.first() {
            if after(at, after_s).is_none_or(|due| due > now) {
                break;
            }
            queue.uncrossed.pop_first();
            if let Some(w) = self.tickets.get_mut(&id) {
                w.crossed = true;
                if let Some(b) = queue.buckets.get_mut(&w.group) {
                    b.crossed.insert((skill_bits(w.skill), id));
                }
                queue.dirty_since.get_or_insert(now);
            }
        }
    }

    /// Takes ticket `id` out of every index; its data, or `None` if it was not waiting.
    fn remove(&mut self, id: TicketId) -> Option<Waiting> {
        let w = self.tickets.remove(&id)?;
        for p in &w.players {
            self.queued.remove(p);
        }
        let queue = &mut self.queues[w.queue];
        queue.by_age.remove(&(w.enqueued_at, id));
        queue.uncrossed.remove(&(w.enqueued_at, id));
        queue.players -= w.players.len();
        let key = (skill_bits(w.skill), id);
        if let Some(b) = queue.buckets.get_mut(&w.group) {
            if let Some(set) = b.regions.get_mut(&w.region) {
                set.remove(&key);
                if set.is_empty() {
                    b.regions.remove(&w.region);
                }
            }
            b.crossed.remove(&key);
            // Empty groups go, so that many one-off property values leave nothing behind.
            if b.regions.is_empty() {
                queue.buckets.remove(&w.group);
            }
        }
        Some(w)
    }

    /// One matching pass over queue `q`: each waiting ticket, oldest first, anchors an
    /// attempt; the nearest compatible tickets by skill join it until the match is full or
    /// the window is exhausted, and a match of at least `min` players is formed.
    fn pass(&mut self, q: usize, now: Instant, events: &mut Vec<Event>) {
        let anchors: Vec<TicketId> = self.queues[q].by_age.iter().map(|&(_, id)| id).collect();
        for anchor in anchors {
            // Below `min`, nobody left can match.
            if self.queues[q].players < self.queues[q].config.match_size.min {
                break;
            }
            let Some(chosen) = self.attempt(q, anchor, now) else {
                continue;
            };
            let mut players = Vec::new();
            for id in &chosen {
                if let Some(w) = self.remove(*id) {
                    players.extend(w.players);
                }
            }
            events.push(Event::Matched {
                queue: self.queues[q].name.clone(),
                tickets: chosen,
                players,
            });
        }
        let queue = &mut self.queues[q];
        queue.last_pass = Some(now);
        queue.dirty_since = None;
    }

    /// The tickets of a match anchored at `anchor`, or `None` when it cannot reach `min`.
    fn attempt(&self, q: usize, anchor: TicketId, now: Instant) -> Option<Vec<TicketId>> {
        let queue = &self.queues[q];
        let config = &queue.config;
        let a = self.tickets.get(&anchor)?;
        let window = |w: &Waiting| config.window(now.saturating_duration_since(w.enqueued_at));
        let wa = window(a);
        // Windows grow with waiting time alone, so no other ticket's is wider than the
        // oldest other's: past that distance nobody accepts the anchor.
        let widest_other = queue
            .by_age
            .iter()
            .take(2)
            .find(|&&(_, id)| id != anchor)
            .and_then(|(_, id)| self.tickets.get(id))
            .map_or(0.0, window);
        let limit = wa.min(widest_other);
        let buckets = queue.buckets.get(&a.group)?;
        let key = (skill_bits(a.skill), anchor);
        let mut walks = Vec::with_capacity(4);
        let mut sources = vec![(buckets.regions.get(&a.region)?, false)];
        if a.crossed {
            sources.push((&buckets.crossed, true));
        }
        for (set, crossed_set) in sources {
            walks.push(Cursor::new(Walk::Up(set.range(key..)), crossed_set));
            walks.push(Cursor::new(Walk::Down(set.range(..key).rev()), crossed_set));
        }
        let MatchSize { min, max } = config.match_size;
        // The members so far: id, skill, window at `now`, region, whether it may cross.
        let mut members: Vec<(TicketId, f64, f64, &Option<String>, bool)> =
            vec![(anchor, a.skill, wa, &a.region, a.crossed)];
        let mut players = a.players.len();
        while players < max {
            // The nearest head of all walks.
            let Some(next) = walks
                .iter_mut()
                .filter_map(|c| c.head.map(|k| ((skill_from_bits(k.0) - a.skill).abs(), c)))
                .min_by(|x, y| x.0.total_cmp(&y.0))
            else {
                break;
            };
            let (distance, cursor) = next;
            if distance > limit {
                break;
            }
            let crossed_set = cursor.crossed_set;
            let Some((_, id)) = cursor.advance() else {
                break;
            };
            if id == anchor {
                continue;
            }
            let Some(c) = self.tickets.get(&id) else {
                continue;
            };
            // The crossed set repeats the anchor's own region, walked already.
            if crossed_set && c.region == a.region {
                continue;
            }
            if players + c.players.len() > max {
                continue;
            }
            let wc = window(c);
            let fits = members.iter().all(|&(_, s, w, region, crossed)| {
                (c.skill - s).abs() <= wc.min(w) && (c.region == *region || (c.crossed && crossed))
            });
            if fits {
                members.push((id, c.skill, wc, &c.region, c.crossed));
                players += c.players.len();
            }
        }
        (players >= min).then(|| members.iter().map(|m| m.0).collect())
    }
}

impl Queue {
    /// When this queue's next pass is due: something changed or windows are widening,
    /// and `interval` has passed since the last pass. `None`: no pass could match more.
    fn pass_due(&self, interval: Duration) -> Option<Instant> {
        if self.players < self.config.match_size.min {
            return None;
        }
        let earliest = self.last_pass.and_then(|t| t.checked_add(interval));
        let wanted = match (self.dirty_since, self.last_pass) {
            (Some(since), _) => Some(since),
            // Windows still widening since the last pass: the newest ticket has the
            // narrowest window, so all have reached the widest once it has.
            (None, Some(last)) => self
                .by_age
                .last()
                .filter(|&&(at, _)| {
                    self.config.widen_per_s > 0.0
                        && self.config.window(last.saturating_duration_since(at))
                            < self.config.max_window
                })
                .map(|_| last),
            (None, None) => None,
        }?;
        Some(earliest.map_or(wanted, |e| e.max(wanted)))
    }
}

/// One direction of a walk through a bucket from the anchor's skill.
enum Walk<'a> {
    Up(btree_set::Range<'a, SkillKey>),
    Down(Rev<btree_set::Range<'a, SkillKey>>),
}

/// A walk with its next key in hand, so walks can be merged nearest first.
struct Cursor<'a> {
    head: Option<SkillKey>,
    walk: Walk<'a>,
    crossed_set: bool,
}

impl<'a> Cursor<'a> {
    fn new(mut walk: Walk<'a>, crossed_set: bool) -> Self {
        let head = walk.step();
        Cursor {
            head,
            walk,
            crossed_set,
        }
    }

    fn advance(&mut self) -> Option<SkillKey> {
        let head = self.head.take();
        self.head = self.walk.step();
        head
    }
}

impl Walk<'_> {
    fn step(&mut self) -> Option<SkillKey> {
        match self {
            Walk::Up(r) => r.next().copied(),
            Walk::Down(r) => r.next().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(toml: &str) -> MatchmakingConfig {
        let c: MatchmakingConfig = toml::from_str(toml).unwrap();
        assert_eq!(c.problem(128, 10_000), None);
        c
    }

    fn matched(events: &[Event]) -> Vec<Vec<TicketId>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Matched { tickets, .. } => Some(tickets.clone()),
                Event::TimedOut { .. } => None,
            })
            .collect()
    }

    /// Polls at every deadline up to and including `until`; the events with their times.
    fn run_until(mm: &mut Matchmaker, until: Instant) -> Vec<(Instant, Event)> {
        let mut out = Vec::new();
        let mut last = None;
        while let Some(d) = mm.next_deadline().filter(|&d| d <= until) {
            assert!(last.is_none_or(|l| d > l), "deadlines move forward");
            last = Some(d);
            out.extend(mm.poll(d).into_iter().map(|e| (d, e)));
        }
        out
    }

    #[test]
    fn default_queue_matches_two_close_players_without_config() {
        let mut mm = Matchmaker::new(&MatchmakingConfig::default());
        let t0 = Instant::now();
        let a = mm.enqueue(Ticket::solo("default", 1, 1000.0), t0).unwrap();
        assert_eq!(
            mm.next_deadline(),
            Some(t0 + ms(60_000)),
            "alone: only its timeout"
        );
        let b = mm.enqueue(Ticket::solo("default", 2, 1050.0), t0).unwrap();
        assert_eq!(
            mm.next_deadline(),
            Some(t0),
            "an arrival wants a pass at once"
        );
        let events = mm.poll(t0);
        assert_eq!(
            events,
            vec![Event::Matched {
                queue: "default".into(),
                tickets: vec![a, b],
                players: vec![1, 2],
            }]
        );
        assert_eq!(mm.waiting("default"), 0);
        assert_eq!(mm.next_deadline(), None);
        assert_eq!(mm.ticket_of(1), None, "matched players may queue again");
    }

    #[test]
    fn widening_lets_far_tickets_match_only_once_both_windows_cover_the_gap() {
        let mut mm = Matchmaker::new(&MatchmakingConfig::default());
        let t0 = Instant::now();
        // 400 apart: both windows (100 + 50/s) cover it after exactly 6 s.
        let low = mm.enqueue(Ticket::solo("default", 1, 1000.0), t0).unwrap();
        let high = mm.enqueue(Ticket::solo("default", 2, 1400.0), t0).unwrap();
        let events = run_until(&mut mm, t0 + ms(5_999));
        assert!(
            events.is_empty(),
            "not before the windows reach 400: {events:?}"
        );
        assert_eq!(
            mm.next_deadline(),
            Some(t0 + ms(6_000)),
            "a pass per 100 ms"
        );
        let events = run_until(&mut mm, t0 + ms(6_000));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, t0 + ms(6_000));
        assert_eq!(matched(&[events[0].1.clone()]), vec![vec![low, high]]);

        // Both must accept: an old ticket's wide window does not pull in a newcomer whose
        // own window is narrower than the gap.
        let old = mm.enqueue(Ticket::solo("default", 3, 1000.0), t0).unwrap();
        let t10 = t0 + ms(10_000);
        assert!(run_until(&mut mm, t10).is_empty());
        let new = mm.enqueue(Ticket::solo("default", 4, 1300.0), t10).unwrap();
        // Old's window is 600 now, new's 100; new's reaches 300 after 4 s.
        let events = run_until(&mut mm, t10 + ms(3_999));
        assert!(events.is_empty(), "{events:?}");
        let events = run_until(&mut mm, t10 + ms(4_000));
        assert_eq!(events[0].0, t10 + ms(4_000));
        assert_eq!(matched(&[events[0].1.clone()]), vec![vec![old, new]]);
    }

    #[test]
    fn regions_must_match_until_both_have_waited_cross_region_after_s() {
        let mut mm = Matchmaker::new(&config(
            "[queues.q]\nskill_window = 1000\ncross_region_after_s = 5\n\
             [queues.three]\nmatch_size = 3\nskill_window = 1000\ncross_region_after_s = 5\n\
             [queues.stay]\nskill_window = 1000\ntimeout_s = 30\n",
        ));
        let t0 = Instant::now();
        let q = |p, r: &str| Ticket::solo("q", p, 1000.0).in_region(r);
        let eu = mm.enqueue(q(1, "eu"), t0).unwrap();
        let us = mm.enqueue(q(2, "us"), t0 + ms(3_000)).unwrap();
        // At 5 s eu may cross, but us (waited 2 s) may not.
        assert!(run_until(&mut mm, t0 + ms(7_999)).is_empty());
        let events = run_until(&mut mm, t0 + ms(8_000));
        assert_eq!(events[0].0, t0 + ms(8_000), "once both waited 5 s");
        assert_eq!(matched(&[events[0].1.clone()]), vec![vec![eu, us]]);

        // Same region: at once. No region is a region of its own.
        let t1 = t0 + ms(20_000);
        let a = mm.enqueue(q(3, "eu"), t1).unwrap();
        mm.enqueue(Ticket::solo("q", 4, 1000.0), t1).unwrap();
        let b = mm.enqueue(q(5, "eu"), t1).unwrap();
        assert_eq!(matched(&mm.poll(t1)), vec![vec![a, b]]);
        assert!(mm.ticket_of(4).is_some());
        mm.withdraw_player(4);

        // Crossing is pairwise: a crossed anchor may take a crossed foreigner or an
        // uncrossed ticket of its own region, but not both into one match.
        let t2 = t1 + ms(10_000);
        let three = |p, r: &str| Ticket::solo("three", p, 1000.0).in_region(r);
        let eu1 = mm.enqueue(three(10, "eu"), t2).unwrap();
        let us1 = mm.enqueue(three(11, "us"), t2).unwrap();
        let eu2 = mm.enqueue(three(12, "eu"), t2 + ms(4_900)).unwrap();
        let events = run_until(&mut mm, t2 + ms(9_899));
        assert!(events.is_empty(), "{events:?}");
        let events = run_until(&mut mm, t2 + ms(9_900));
        assert_eq!(
            events[0].0,
            t2 + ms(9_900),
            "once the third has waited 5 s too"
        );
        assert_eq!(matched(&[events[0].1.clone()]), vec![vec![eu1, eu2, us1]]);

        // A queue without cross_region_after_s never mixes regions, to the timeout.
        let x = mm
            .enqueue(Ticket::solo("stay", 6, 0.0).in_region("eu"), t1)
            .unwrap();
        let y = mm
            .enqueue(Ticket::solo("stay", 7, 0.0).in_region("us"), t1)
            .unwrap();
        let events = run_until(&mut mm, t1 + ms(60_000));
        let timed_out: Vec<_> = events
            .iter()
            .map(|(at, e)| match e {
                Event::TimedOut { ticket, .. } => (*at, *ticket),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(timed_out, vec![(t1 + ms(30_000), x), (t1 + ms(30_000), y)]);
    }

    #[test]
    fn listed_properties_must_be_equal_and_others_are_ignored() {
        let mut mm = Matchmaker::new(&config("[queues.q]\nproperties = [\"mode\"]\n"));
        let t0 = Instant::now();
        let t = |p| Ticket::solo("q", p, 1000.0);
        let ctf = mm
            .enqueue(
                t(1).with_property("mode", "ctf").with_property("map", "a"),
                t0,
            )
            .unwrap();
        mm.enqueue(t(2).with_property("mode", "dm"), t0).unwrap();
        let ctf2 = mm
            .enqueue(
                t(3).with_property("mode", "ctf").with_property("map", "b"),
                t0,
            )
            .unwrap();
        let none = mm.enqueue(t(4), t0).unwrap();
        let none2 = mm.enqueue(t(5).with_property("map", "c"), t0).unwrap();
        assert_eq!(
            matched(&mm.poll(t0)),
            vec![vec![ctf, ctf2], vec![none, none2]]
        );
        assert!(mm.ticket_of(2).is_some(), "dm waits alone");
        // Widening changes nothing about properties: dm waits to its timeout.
        let events = run_until(&mut mm, t0 + ms(60_000));
        assert!(
            matches!(events[..], [(_, Event::TimedOut { .. })]),
            "{events:?}"
        );
    }

    #[test]
    fn parties_are_never_split_and_take_the_mean_or_max_skill() {
        let mut mm = Matchmaker::new(&config(
            "[queues.four]\nmatch_size = [4, 4]\n\
             [queues.three]\nmatch_size = 3\nskill_window = 1000\n\
             [queues.max]\nmatch_size = 3\nparty_skill = \"max\"\n",
        ));
        let t0 = Instant::now();
        let party = |q: &str, ps: &[(u64, f64)]| {
            Ticket::party(
                q,
                ps.iter()
                    .map(|&(player, skill)| Member { player, skill })
                    .collect(),
            )
        };
        // Mean 1100: a solo at 1150 completes the four.
        let p = mm
            .enqueue(party("four", &[(1, 1000.0), (2, 1100.0), (3, 1200.0)]), t0)
            .unwrap();
        let s = mm.enqueue(Ticket::solo("four", 4, 1150.0), t0).unwrap();
        let events = mm.poll(t0);
        assert_eq!(
            events,
            vec![Event::Matched {
                queue: "four".into(),
                tickets: vec![p, s],
                players: vec![1, 2, 3, 4],
            }]
        );

        // Two pairs and a solo into matches of three: one pair and the solo; the other
        // pair is not split to fill anything.
        let t1 = t0 + ms(1_000);
        let a = mm
            .enqueue(party("three", &[(10, 0.0), (11, 0.0)]), t1)
            .unwrap();
        let b = mm
            .enqueue(party("three", &[(12, 0.0), (13, 0.0)]), t1)
            .unwrap();
        let c = mm.enqueue(Ticket::solo("three", 14, 0.0), t1).unwrap();
        assert_eq!(matched(&mm.poll(t1)), vec![vec![a, c]]);
        assert_eq!(mm.players_of(b), Some(&[12, 13][..]));
        assert_eq!(mm.withdraw_player(13), Some((b, vec![12, 13])));

        // Max: the party counts as 1400, so 1380 matches it and 1200 does not (the mean
        // would have been 1200).
        let t2 = t0 + ms(2_000);
        let m = mm
            .enqueue(party("max", &[(20, 1000.0), (21, 1400.0)]), t2)
            .unwrap();
        mm.enqueue(Ticket::solo("max", 22, 1200.0), t2).unwrap();
        let near = mm.enqueue(Ticket::solo("max", 23, 1380.0), t2).unwrap();
        assert_eq!(matched(&mm.poll(t2)), vec![vec![m, near]]);
        assert!(mm.ticket_of(22).is_some());
    }

    #[test]
    fn fills_up_to_max_when_enough_wait_and_settles_for_min_otherwise() {
        let mut mm = Matchmaker::new(&config("[queues.q]\nmatch_size = [2, 4]\n"));
        let t0 = Instant::now();
        let ids: Vec<_> = (1..=5)
            .map(|p| {
                mm.enqueue(Ticket::solo("q", p, 1000.0 + p as f64), t0)
                    .unwrap()
            })
            .collect();
        let events = mm.poll(t0);
        assert_eq!(
            matched(&events),
            vec![ids[..4].to_vec()],
            "four of five, oldest first"
        );
        assert_eq!(mm.ticket_of(5), Some(ids[4]), "one left: below min");
        let t1 = t0 + ms(1_000);
        let more = mm.enqueue(Ticket::solo("q", 6, 1000.0), t1).unwrap();
        assert_eq!(
            matched(&mm.poll(t1)),
            vec![vec![ids[4], more]],
            "min is enough"
        );
    }

    #[test]
    fn the_oldest_ticket_anchors_the_next_match() {
        let mut mm = Matchmaker::new(&MatchmakingConfig::default());
        let t0 = Instant::now();
        let old = mm.enqueue(Ticket::solo("default", 1, 1000.0), t0).unwrap();
        let t1 = t0 + ms(1_000);
        // The two newcomers are closer to each other, but the oldest ticket goes first
        // and takes the nearer of them.
        mm.enqueue(Ticket::solo("default", 2, 1050.0), t1).unwrap();
        let near = mm.enqueue(Ticket::solo("default", 3, 1040.0), t1).unwrap();
        assert_eq!(matched(&mm.poll(t1)), vec![vec![old, near]]);
    }

    #[test]
    fn timeouts_fire_at_timeout_s_and_timed_out_tickets_never_match() {
        let mut mm = Matchmaker::new(&config("[queues.q]\ntimeout_s = 3\n"));
        let t0 = Instant::now();
        let lone = mm.enqueue(Ticket::solo("q", 1, 0.0), t0).unwrap();
        assert_eq!(mm.next_deadline(), Some(t0 + ms(3_000)));
        assert!(mm.poll(t0 + ms(3_000) - Duration::from_nanos(1)).is_empty());
        // A compatible ticket arrives just before the timeout, but the first poll is at
        // the timeout: the old ticket fails, the new one does not match it.
        let late = mm
            .enqueue(Ticket::solo("q", 2, 0.0), t0 + ms(2_900))
            .unwrap();
        let events = mm.poll(t0 + ms(3_000));
        assert_eq!(
            events,
            vec![Event::TimedOut {
                queue: "q".into(),
                ticket: lone,
                players: vec![1],
            }]
        );
        assert_eq!(mm.ticket_of(1), None);
        assert_eq!(mm.ticket_of(2), Some(late));
        assert!(!mm.cancel(lone), "gone already");
        assert_eq!(mm.next_deadline(), Some(t0 + ms(5_900)));
    }

    #[test]
    fn cancelled_and_withdrawn_tickets_never_match() {
        let mut mm = Matchmaker::new(&config("[queues.q]\nmatch_size = [2, 3]\n"));
        let t0 = Instant::now();
        let a = mm.enqueue(Ticket::solo("q", 1, 0.0), t0).unwrap();
        let party = Ticket::party(
            "q",
            vec![
                Member {
                    player: 2,
                    skill: 0.0,
                },
                Member {
                    player: 3,
                    skill: 0.0,
                },
            ],
        );
        let p = mm.enqueue(party, t0).unwrap();
        assert!(mm.cancel(a));
        assert!(!mm.cancel(a), "once");
        // A disconnected member withdraws the whole party.
        assert_eq!(mm.withdraw_player(3), Some((p, vec![2, 3])));
        assert_eq!(mm.withdraw_player(3), None);
        assert_eq!((mm.ticket_of(2), mm.waiting("q")), (None, 0));
        assert!(
            run_until(&mut mm, t0 + ms(120_000)).is_empty(),
            "nothing left to match or time out"
        );
        // Its players may queue again, and match then.
        let t1 = t0 + ms(1_000);
        let again = mm.enqueue(Ticket::solo("q", 2, 0.0), t1).unwrap();
        let other = mm.enqueue(Ticket::solo("q", 1, 0.0), t1).unwrap();
        assert_eq!(matched(&mm.poll(t1)), vec![vec![again, other]]);
    }

    #[test]
    fn bad_tickets_are_refused_and_leave_no_trace() {
        let mut mm = Matchmaker::new(&config(
            "max_tickets_per_queue = 2\n[queues.q]\nmatch_size = [3, 3]\nproperties = [\"mode\"]\n",
        ));
        let t0 = Instant::now();
        let solo = |p, s| Ticket::solo("q", p, s);
        let members = |n: u64| {
            (1..=n)
                .map(|player| Member { player, skill: 0.0 })
                .collect()
        };
        assert_eq!(
            mm.enqueue(Ticket::solo("ranked", 1, 0.0), t0),
            Err(MatchError::UnknownQueue("ranked".into()))
        );
        assert_eq!(
            mm.enqueue(Ticket::party("q", vec![]), t0),
            Err(MatchError::NoPlayers)
        );
        assert_eq!(
            mm.enqueue(Ticket::party("q", members(4)), t0),
            Err(MatchError::PartyTooLarge { size: 4, max: 3 })
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(mm.enqueue(solo(1, bad), t0), Err(MatchError::BadSkill));
        }
        let huge = Ticket::party(
            "q",
            vec![
                Member {
                    player: 1,
                    skill: f64::MAX,
                },
                Member {
                    player: 2,
                    skill: f64::MAX,
                },
            ],
        );
        assert_eq!(
            mm.enqueue(huge, t0),
            Err(MatchError::BadSkill),
            "the mean overflows"
        );
        assert_eq!(
            mm.enqueue(solo(1, 0.0).in_region("e\nu"), t0),
            Err(MatchError::BadValue("region".into()))
        );
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            mm.enqueue(solo(1, 0.0).with_property("mode", &long), t0),
            Err(MatchError::BadValue("mode".into()))
        );
        // An unlisted property is not kept, so it is not checked either.
        assert!(mm
            .enqueue(solo(9, 0.0).with_property("map", &long), t0)
            .is_ok());
        let mut dup: Vec<Member> = members(2);
        dup.push(Member {
            player: 1,
            skill: 0.0,
        });
        assert_eq!(
            mm.enqueue(Ticket::party("q", dup), t0),
            Err(MatchError::AlreadyQueued(1))
        );
        assert_eq!(mm.waiting("q"), 1, "refusals leave nothing behind");
        let ok = mm.enqueue(Ticket::party("q", members(2)), t0).unwrap();
        assert_eq!(
            mm.enqueue(solo(2, 0.0), t0),
            Err(MatchError::AlreadyQueued(2))
        );
        assert_eq!(
            mm.enqueue(solo(3, 0.0), t0),
            Err(MatchError::QueueFull("q".into()))
        );
        assert_eq!(mm.ticket_of(1), Some(ok));
        assert!(MatchError::BadSkill.to_string().contains("finite"));
    }

    #[test]
    fn next_deadline_covers_arrivals_widening_and_timeouts_only() {
        let mut mm = Matchmaker::new(&MatchmakingConfig::default());
        assert_eq!(mm.next_deadline(), None);
        let t0 = Instant::now();
        mm.enqueue(Ticket::solo("default", 1, 0.0), t0).unwrap();
        mm.enqueue(Ticket::solo("default", 2, 5_000.0), t0).unwrap();
        assert_eq!(mm.next_deadline(), Some(t0));
        assert!(mm.poll(t0).is_empty());
        assert_eq!(
            mm.next_deadline(),
            Some(t0 + ms(100)),
            "widening: a pass per interval"
        );
        // A poll before the interval does no pass (and does not move the deadline).
        assert!(mm.poll(t0 + ms(50)).is_empty());
        assert_eq!(mm.next_deadline(), Some(t0 + ms(100)));
        // Both windows are widest (1,000) after 18 s; then only the timeouts are left.
        let events = run_until(&mut mm, t0 + ms(18_000));
        assert!(events.is_empty());
        assert_eq!(mm.next_deadline(), Some(t0 + ms(60_000)));
        // An arrival after a recent pass waits for the interval.
        mm.enqueue(Ticket::solo("default", 3, 10_000.0), t0 + ms(18_050))
            .unwrap();
        assert_eq!(mm.next_deadline(), Some(t0 + ms(18_100)));
    }

    /// Who a ticket was, for checking matches against the rules independently.
    struct Record {
        players: Vec<PlayerKey>,
        skill: f64,
        region: Option<String>,
        mode: String,
        at: Instant,
        done: Option<&'static str>,
    }

    #[test]
    fn randomized_1000_tickets_keep_every_rule() {
        const SKILL_WINDOW: f64 = 50.0;
        const WIDEN: f64 = 20.0;
        const MAX_WINDOW: f64 = 400.0;
        const CROSS_S: f64 = 4.0;
        const TIMEOUT_S: f64 = 15.0;
        let mut mm = Matchmaker::new(&config(&format!(
            "[queues.q]\nmatch_size = [2, 4]\nskill_window = {SKILL_WINDOW}\n\
             widen_per_s = {WIDEN}\nmax_window = {MAX_WINDOW}\n\
             cross_region_after_s = {CROSS_S}\nproperties = [\"mode\"]\ntimeout_s = {TIMEOUT_S}\n"
        )));
        let window =
            |waited: Duration| (SKILL_WINDOW + WIDEN * waited.as_secs_f64()).min(MAX_WINDOW);
        let mut rng = StdRng::seed_from_u64(10);
        let t0 = Instant::now();
        let mut records: BTreeMap<TicketId, Record> = BTreeMap::new();
        let mut matched_players = HashSet::new();
        let (mut matches, mut timeouts, mut cancels) = (0, 0, 0);
        let mut check = |events: Vec<(Instant, Event)>,
                         records: &mut BTreeMap<TicketId, Record>| {
            for (now, event) in events {
                match event {
                    Event::Matched {
                        queue,
                        tickets,
                        players,
                    } => {
                        assert_eq!(queue, "q");
                        matches += 1;
                        assert!((2..=4).contains(&players.len()), "{players:?}");
                        let mut expected: Vec<PlayerKey> = Vec::new();
                        for id in &tickets {
                            let r = &records[id];
                            assert_eq!(r.done, None, "ticket {id} was not waiting");
                            assert!(now.duration_since(r.at).as_secs_f64() < TIMEOUT_S);
                            expected.extend(&r.players);
                        }
                        assert_eq!(players, expected, "whole parties, in ticket order");
                        for p in &players {
                            assert!(matched_players.insert(*p), "player {p} in two matches");
                        }
                        for (i, x) in tickets.iter().enumerate() {
                            for y in &tickets[i + 1..] {
                                let (a, b) = (&records[x], &records[y]);
                                let (wa, wb) = (window(now - a.at), window(now - b.at));
                                assert!(
                                    (a.skill - b.skill).abs() <= wa.min(wb),
                                    "{x} {y}: {} vs {} with windows {wa}, {wb}",
                                    a.skill,
                                    b.skill
                                );
                                let crossed = |r: &Record| (now - r.at).as_secs_f64() >= CROSS_S;
                                assert!(a.region == b.region || (crossed(a) && crossed(b)));
                                assert_eq!(a.mode, b.mode);
                            }
                        }
                        for id in &tickets {
                            records.get_mut(id).unwrap().done = Some("matched");
                        }
                    }
                    Event::TimedOut {
                        ticket, players, ..
                    } => {
                        timeouts += 1;
                        let r = records.get_mut(&ticket).unwrap();
                        assert_eq!(r.done, None);
                        assert_eq!(players, r.players);
                        assert_eq!(now - r.at, Duration::from_secs_f64(TIMEOUT_S), "exactly");
                        r.done = Some("timed out");
                    }
                }
            }
        };
        // 1,000 tickets over 60 s at random instants, with cancels and disconnects between.
        let mut times: Vec<Duration> = (0..1_000)
            .map(|_| Duration::from_nanos(rng.random_range(0..60_000_000_000)))
            .collect();
        times.sort();
        let mut next_player = 1;
        for offset in times {
            let now = t0 + offset;
            check(run_until(&mut mm, now), &mut records);
            if rng.random_bool(0.2) && !records.is_empty() {
                // Cancel or withdraw a random earlier ticket, waiting or not.
                let id = TicketId(rng.random_range(1..=records.len() as u64));
                let r = records.get_mut(&id).unwrap();
                let waiting = r.done.is_none();
                if rng.random_bool(0.5) {
                    assert_eq!(mm.cancel(id), waiting);
                } else {
                    let player = r.players[rng.random_range(0..r.players.len())];
                    let withdrawn = mm.withdraw_player(player);
                    assert_eq!(withdrawn.map(|w| w.0), waiting.then_some(id));
                }
                if waiting {
                    cancels += 1;
                    r.done = Some("cancelled");
                }
            }
            let size = [1, 1, 1, 1, 2, 3][rng.random_range(0..6)];
            let members: Vec<Member> = (0..size)
                .map(|i| Member {
                    player: next_player + i,
                    skill: rng.random_range(0.0..3_000.0),
                })
                .collect();
            next_player += size;
            let skill = members.iter().map(|m| m.skill).sum::<f64>() / size as f64;
            // Many regions, so that crossing them matters.
            let region = ["eu", "us", "asia", "sa", "oce", ""][rng.random_range(0..6)];
            let mode = ["ctf", "dm"][rng.random_range(0..2)];
            let mut ticket = Ticket::party("q", members.clone()).with_property("mode", mode);
            if !region.is_empty() {
                ticket = ticket.in_region(region);
            }
            // A waiting player cannot queue twice.
            if let Some((_, r)) = records.iter().find(|(_, r)| r.done.is_none()) {
                let mut twice = ticket.clone();
                twice.members.push(Member {
                    player: r.players[0],
                    skill: 0.0,
                });
                assert_eq!(
                    mm.enqueue(twice, now),
                    Err(MatchError::AlreadyQueued(r.players[0]))
                );
            }
            let id = mm.enqueue(ticket, now).unwrap();
            records.insert(
                id,
                Record {
                    players: members.iter().map(|m| m.player).collect(),
                    skill,
                    region: (!region.is_empty()).then(|| region.to_owned()),
                    mode: mode.to_owned(),
                    at: now,
                    done: None,
                },
            );
        }
        check(run_until(&mut mm, t0 + ms(1_000_000)), &mut records);
        assert_eq!(mm.next_deadline(), None);
        assert_eq!(mm.waiting("q"), 0);
        assert!(
            records.values().all(|r| r.done.is_some()),
            "every ticket ended one way"
        );
        assert!(
            matches > 200 && timeouts > 0 && cancels > 0,
            "{matches} {timeouts} {cancels}"
        );
    }

    #[test]
    fn matchmaking_config_comes_from_its_table_and_is_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("corelay-mm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |toml: &str, env: &[(&str, &str)]| {
            let file = dir.join(format!("{}.toml", toml.len()));
            std::fs::write(&file, toml).unwrap();
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            crate::Config::load(Some(&file), env, &[])
        };
        let c = load(
            "[matchmaking]\npass_interval_ms = 50\n\
             [matchmaking.queues.ranked]\nmatch_size = { min = 2, max = 8 }\nwiden_per_s = 10\n\
             cross_region_after_s = 10\nproperties = [\"mode\"]\nparty_skill = \"max\"\n\
             [matchmaking.queues.ranked.room]\nprivate = false\nempty_ttl_ms = 30000\n\
             metadata = { mode = \"ranked\", season = 3 }\n\
             [matchmaking.queues.default]\nmatch_size = 4\n",
            &[("CORELAY_MATCHMAKING_MAX_TICKETS_PER_QUEUE", "10")],
        )
        .unwrap();
        let m = &c.matchmaking;
        assert_eq!((m.pass_interval_ms, m.max_tickets_per_queue), (50, 10));
        let ranked = &m.queues["ranked"];
        assert_eq!(ranked.match_size, MatchSize { min: 2, max: 8 });
        assert_eq!(ranked.cross_region_after_s, Some(10.0));
        assert_eq!(ranked.party_skill, PartySkill::Max);
        assert!(!ranked.room.private);
        assert_eq!(
            (ranked.room.max_members, ranked.room.empty_ttl_ms),
            (None, 30_000)
        );
        let metadata = serde_json::Value::Object(ranked.room.metadata.clone().unwrap());
        assert_eq!(metadata, serde_json::json!({"mode": "ranked", "season": 3}));
        // Keys left out take the built-in queue's values.
        assert_eq!((ranked.skill_window, ranked.timeout_s), (100.0, 60.0));
        let queues = m.effective_queues();
        assert_eq!(queues.keys().collect::<Vec<_>>(), ["default", "ranked"]);
        assert_eq!(queues["default"].match_size, MatchSize { min: 4, max: 4 });
        assert_eq!(
            crate::Config::default().matchmaking.effective_queues()["default"],
            QueueConfig::default()
        );

        for (bad, says) in [
            (
                "[matchmaking.queues.q]\nmatch_size = [3, 2]\n",
                "match_size",
            ),
            ("[matchmaking.queues.q]\nmatch_size = 0\n", "match_size"),
            (
                "[matchmaking.queues.q]\nmatch_size = 20000\n",
                "max_room_members",
            ),
            (
                "[matchmaking.queues.q]\nskill_window = -1\n",
                "skill_window",
            ),
            ("[matchmaking.queues.q]\nwiden_per_s = nan\n", "widen_per_s"),
            ("[matchmaking.queues.q]\nmax_window = 10\n", "max_window"),
            ("[matchmaking.queues.q]\ntimeout_s = 0\n", "timeout_s"),
            (
                "[matchmaking.queues.q]\ncross_region_after_s = 1e9\n",
                "cross_region_after_s",
            ),
            (
                "[matchmaking.queues.q]\nproperties = [\"a\", \"a\"]\n",
                "twice",
            ),
            (
                "[matchmaking.queues.q]\nparty_skill = \"median\"\n",
                "median",
            ),
            ("[matchmaking.queues.q]\nsize = 2\n", "size"),
            (
                "[matchmaking.queues.q.room]\nmax_members = 1\n",
                "room.max_members",
            ),
            (
                "[matchmaking.queues.q.room]\nempty_ttl_ms = 3600001\n",
                "room.empty_ttl_ms",
            ),
            ("[matchmaking.queues.q.room]\npublic = true\n", "public"),
            ("[matchmaking.queues.\"a\\u0001\"]\n", "not a valid name"),
            ("[matchmaking]\npass_interval_ms = 0\n", "pass_interval_ms"),
        ] {
            let e = load(bad, &[]).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = load("", &[("CORELAY_MATCHMAKING_MAX_TICKETS_PER_QUEUE", "0")]).unwrap_err();
        assert!(e.to_string().contains("max_tickets_per_queue"), "{e}");
    }
}
