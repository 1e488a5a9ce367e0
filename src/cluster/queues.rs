//! Matchmaking queues across nodes (`[cluster]` with `matchmaking` on; docs/SCALING.md,
//! "Matchmaking across nodes"): tickets wait in Redis, one node at a time runs a queue's
//! matching pass under a lease, and a match reaches the nodes of its players through the
//! queue's stream of outcomes.
//!
//! It runs as tasks on the bridge's Tokio runtime ([`super::bridge`]), the bridge's end of
//! the mesh carrying [`QueuesMsg`] both ways: a player's shard checks a ticket as on one
//! node and sends it here, and the answers and endings go back to it as they would from a
//! queue's shard (`relay/matching.rs`).
//!
//! **Keys.** Every key of queue `q` starts with `corelay:mm:{q}` ([`queue_prefix`]), so that
//! on a Redis Cluster they share one slot and one script touches them all: `waiting` (a
//! sorted set of ticket ids by enqueue time), `tickets` (id -> the ticket's record, JSON:
//! id, enqueue time, region and properties, and each seat's node incarnation, shard,
//! player, name, metadata and skill), `seats` (`<node>:<player>` -> the id its player holds),
//! `members` (id -> its seats), `seq` (ids), `version` (bumped by every change), `events`
//! (the stream of outcomes), `lease` (the passing node), and for parties still gathering
//! `parties` (the members so far, by leader), `gathering` (leaders by timeout) and `gids`
//! (id -> leader). Times are Redis's own (`TIME` in the scripts): nodes' clocks never meet.
//!
//! **Scripts.** Each change is one Lua script, atomic on the queue's master: enqueue (or
//! join a party, which waits once whole), cancel, claim a match (it removes the tickets only
//! if every one is still waiting, and only for the lease's holder), end a ticket (timed
//! out, its node gone, or refused), and the pass's load (renew or take the lease, time out
//! gatherings, and read the tickets when something changed or a deadline is due). A script
//! that removes tickets appends the outcome to `events` in the same step, so an outcome is
//! never lost between a removal and its telling, whoever dies.
//!
//! **Passes.** Every `pass_interval_ms` each node runs the load script for each queue; the
//! lease's holder (`SET PX`, renewed by the holder, checked by value) loads the waiting
//! tickets into the one [`Matchmaker`] (no second matching algorithm) and claims what it
//! returns. Two nodes that both believe they hold the lease cannot both claim: the claim
//! checks the lease and every ticket in one step.
//!
//! **Outcomes.** Every node follows every queue's `events` stream (a blocking `XREAD` per
//! queue, from where it last read): a node tells its own players their endings, and makes
//! their share of a match's room. A match is made in two steps so that no player's first
//! message misses a node: the room is made on every node of the match and followed across
//! nodes, and once Redis counts every node of the match among the room channel's
//! subscribers, the passing node appends `go`, and the players are told.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ClusterStatus, Target};
use crate::matchmaking::{
    Event, Matchmaker, MatchmakingConfig, Member, QueueConfig, Ticket, TicketId,
};
use crate::proto::native::{ErrorCode, UnqueueReason};
use crate::relay::{
    home_shard, new_code, valid_name, ClusterMatch, MatchedPlayer, MeshMsg, PlayerId, PlayerName,
    QueueRequest, QueuesMsg, RosterEntry, ShardId, TicketNews, CODE_PREFIX,
};

/// What the cluster queues count, for `/metrics` ([`ClusterStatus::matchmaking`]).
#[derive(Debug, Default)]
pub struct QueueCounts {
    /// Players whose ticket this node put in a queue in Redis.
    pub(crate) tickets: AtomicU64,
    /// Matches this node's passes claimed.
    pub(crate) matches: AtomicU64,
    /// Records read from Redis that were not what this code writes, dropped.
    pub(crate) malformed: AtomicU64,
    /// Players' requests waiting for Redis now.
    pub(crate) waiting: AtomicU64,
}

/// The prefix of every key of queue `queue`: `corelay:mm:{<queue>}`. The queue's name is
/// the hash tag, with `{`, `}` and `%` written `%7B`, `%7D` and `%25`: a brace would end the
/// tag early, and a tag that ends up empty would spread the queue's keys over slots.
pub fn queue_prefix(queue: &str) -> String {
    let mut tag = String::with_capacity(queue.len());
    for c in queue.chars() {
        match c {
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            '%' => tag.push_str("%25"),
            c => tag.push(c),
        }
    }
    format!("corelay:mm:{{{tag}}}")
}

/// The keys of a queue, in the order the scripts name them (`KEYS[1]` to `KEYS[11]`).
const PARTS: [&str; 11] = [
    "waiting",
    "tickets",
    "seats",
    "members",
    "seq",
    "version",
    "events",
    "lease",
    "gathering",
    "parties",
    "gids",
];

/// Index in [`PARTS`] of the seats' index (`<node>:<player>` -> ticket id).
const SEATS: usize = 2;
/// Index in [`PARTS`] of the stream of outcomes.
const EVENTS: usize = 6;

/// How long a queue's stream keeps an outcome, in ms: every node reads it within a round
/// trip; one that cannot reach Redis for longer learns what it missed from its
/// reconciliation ([`RECONCILE`]) instead. A minute of a busy queue's outcomes is a few
/// megabytes.
const RETENTION_MS: u64 = 60_000;

/// What every script starts with: Redis's clock, the outcome stream, and taking a ticket
/// (waiting or still gathering) out of every index, returning its record.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(n) return string.format('%d', n) end
local function outcome(now, json)
  redis.call('XADD', KEYS[7], 'MINID', '~', ms(now - RETENTION), '*', 'o', json)
end
local function record(id, at, ext, seats)
  return '{"id":' .. id .. ',"at":' .. at .. ',"ext":' .. ext .. ',"seats":[' .. table.concat(seats, ',') .. ']}'
end
local function party_fields(leader)
  local fields = {leader .. '\nid', leader .. '\nnames', leader .. '\next'}
  local seats = {}
  local names = redis.call('HGET', KEYS[10], leader .. '\nnames') or ''
  for name in string.gmatch(names, '[^\n]+') do
    local f = leader .. '\nseat\n' .. name
    local s = redis.call('HGET', KEYS[10], f)
    if s then seats[#seats + 1] = s end
    fields[#fields + 1] = f
  end
  return seats, fields
end
local function drop_party(leader, id, fields)
  for _, f in ipairs(fields) do redis.call('HDEL', KEYS[10], f) end
  redis.call('ZREM', KEYS[9], leader)
  redis.call('HDEL', KEYS[11], id)
end
local function take(id)
  local r = redis.call('HGET', KEYS[2], id)
  if r then
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
  else
    local leader = redis.call('HGET', KEYS[11], id)
    if not leader then return nil end
    local seats, fields = party_fields(leader)
    local ext = redis.call('HGET', KEYS[10], leader .. '\next') or 'null'
    drop_party(leader, id, fields)
    r = record(id, '0', ext, seats)
  end
  local held = redis.call('HGET', KEYS[4], id)
  if held then
    for f in string.gmatch(held, '[^ ]+') do redis.call('HDEL', KEYS[3], f) end
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('INCR', KEYS[6])
  return r
end
local function ended(now, reason, by, name, r)
  outcome(now, '{"kind":"ended","reason":"' .. reason .. '","by":' .. by .. ',"name":' .. name .. ',"tickets":[' .. r .. ']}')
end
"#;

/// A seat's ticket, or its party's: ARGV seat field, seat, ext, max tickets, leader ('' alone),
/// the party's names (leader first, `\n` between), timeout ms, the seat's name, '1' if the
/// leader. The same seat asking again (a retry after a lost answer) gets its ticket back.
const ENQUEUE: &str = r#"
local now = now_ms()
local have = redis.call('HGET', KEYS[3], ARGV[1])
if have then return {'again', have} end
local function full()
  return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[9]) >= tonumber(ARGV[4])
end
local function hold(id)
  redis.call('HSET', KEYS[3], ARGV[1], id)
  local held = redis.call('HGET', KEYS[4], id)
  redis.call('HSET', KEYS[4], id, held and (held .. ' ' .. ARGV[1]) or ARGV[1])
end
local function wait(id, ext, seats)
  redis.call('HSET', KEYS[2], id, record(id, ms(now), ext, seats))
  redis.call('ZADD', KEYS[1], ms(now), id)
end
if ARGV[5] == '' then
  if full() then return {'full'} end
  local id = tostring(redis.call('INCR', KEYS[5]))
  wait(id, ARGV[3], {ARGV[2]})
  hold(id)
  redis.call('INCR', KEYS[6])
  return {'queued', id}
end
local leader = ARGV[5]
local id = redis.call('HGET', KEYS[10], leader .. '\nid')
if not id then
  if full() then return {'full'} end
  id = tostring(redis.call('INCR', KEYS[5]))
  redis.call('HSET', KEYS[10], leader .. '\nid', id, leader .. '\nnames', ARGV[6])
  redis.call('ZADD', KEYS[9], ms(now + tonumber(ARGV[7])), leader)
  redis.call('HSET', KEYS[11], id, leader)
elseif redis.call('HGET', KEYS[10], leader .. '\nnames') ~= ARGV[6] then
  return {'invalid'}
elseif redis.call('HEXISTS', KEYS[10], leader .. '\nseat\n' .. ARGV[8]) == 1 then
  return {'already'}
end
redis.call('HSET', KEYS[10], leader .. '\nseat\n' .. ARGV[8], ARGV[2])
if ARGV[9] == '1' then redis.call('HSET', KEYS[10], leader .. '\next', ARGV[3]) end
hold(id)
local seats, fields = party_fields(leader)
local count = 0
for _ in string.gmatch(ARGV[6], '[^\n]+') do count = count + 1 end
if #seats == count then
  local ext = redis.call('HGET', KEYS[10], leader .. '\next') or 'null'
  drop_party(leader, id, fields)
  wait(id, ext, seats)
end
redis.call('INCR', KEYS[6])
return {'queued', id}
"#;

/// A seat's ticket ends by its player: ARGV seat field, ticket ('0': whichever), reason,
/// the player's name (JSON). A ticket claimed meanwhile is `none`: exactly one wins.
const CANCEL: &str = r#"
local id = redis.call('HGET', KEYS[3], ARGV[1])
if not id or (ARGV[2] ~= '0' and ARGV[2] ~= id) then return {'none'} end
local now = now_ms()
local r = take(id)
if not r then
  redis.call('HDEL', KEYS[3], ARGV[1])
  return {'none'}
end
ended(now, ARGV[3], '"' .. ARGV[1] .. '"', ARGV[4], r)
return {'cancelled', id}
"#;

/// A match, claimed by the lease's holder: ARGV holder, room (JSON), ticket ids. Claimed
/// only if every ticket still waits.
const CLAIM: &str = r#"
if redis.call('GET', KEYS[8]) ~= ARGV[1] then return {'lease'} end
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then return {'gone', ARGV[i]} end
end
local now = now_ms()
local records = {}
for i = 3, #ARGV do records[#records + 1] = take(ARGV[i]) end
outcome(now, '{"kind":"matched","room":' .. ARGV[2] .. ',"tickets":[' .. table.concat(records, ',') .. ']}')
return {'matched'}
"#;

/// A waiting ticket ended by the lease's holder: ARGV holder, reason, by (JSON), name
/// (JSON), id.
const END: &str = r#"
if redis.call('GET', KEYS[8]) ~= ARGV[1] then return {'lease'} end
if redis.call('HEXISTS', KEYS[2], ARGV[5]) == 0 then return {'gone'} end
ended(now_ms(), ARGV[2], ARGV[3], ARGV[4], take(ARGV[5]))
return {'ended'}
"#;

/// A pass's start: ARGV node, lease ms, the version last read, '1' to read regardless.
/// Takes or renews the lease (or answers `{0}`: another node holds it), times out the
/// gatherings due, and answers `{1, now, version}` and, when the version moved or a read
/// is asked for, every waiting ticket's id and record.
const LOAD: &str = r#"
local holder = redis.call('GET', KEYS[8])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[8], ARGV[2])
elseif holder then
  return {0}
else
  redis.call('SET', KEYS[8], ARGV[1], 'PX', ARGV[2])
end
local now = now_ms()
for _, leader in ipairs(redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', ms(now))) do
  local id = redis.call('HGET', KEYS[10], leader .. '\nid')
  local r = id and take(id)
  if r then
    ended(now, 'timed_out', 'null', 'null', r)
  else
    redis.call('ZREM', KEYS[9], leader)
  end
end
local version = redis.call('GET', KEYS[6]) or '0'
local out = {1, now, version}
if version == ARGV[3] and ARGV[4] == '0' then return out end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all do out[#out + 1] = all[i] end
return out
"#;

/// Gives the lease back (a node that stops): ARGV node.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[8]) == ARGV[1] then redis.call('DEL', KEYS[8]) end
return 1
"#;

/// Longest a connect or a round trip may take before Redis counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between two tries to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long one `XREAD` of outcomes blocks: the follower notices a dead connection within
/// it, and it costs Redis nothing while it waits.
const BLOCK_MS: u64 = 1_000;

/// Most outcomes one read takes.
const OUTCOMES_BATCH: usize = 256;

/// Longest the passing node waits for every node of a match to follow its room before it
/// tells them all to go: each does within a round trip to Redis, and a node that never
/// does (it died) holds its match's other players that long.
const BARRIER: Duration = Duration::from_secs(1);

/// How often Redis is asked whether a match's nodes follow its room: a match waits at
/// most this long past the moment they all do.
const BARRIER_POLL: Duration = Duration::from_millis(2);

/// How long a node waits for a match's `go` before it tells its players itself: the
/// passing node died between its claim and the go.
const GO_WAIT: Duration = BARRIER.saturating_add(Duration::from_secs(2));

/// How often a node checks that the tickets its players hold still wait in Redis. A ticket
/// missing at two checks in a row (a Redis restarted empty, or outcomes missed for longer
/// than [`RETENTION_MS`]) ends as timed out: its player may queue again.
const RECONCILE: Duration = Duration::from_secs(3);

/// Players' requests that may wait for Redis; past it a new ticket is refused
/// (`queue_full`) and a cancel answered `not_queued`, so that an outage costs bounded
/// memory. Withdrawals of players gone always wait.
const MAX_BACKLOG: usize = 10_000;

/// A seat of a ticket: one player, where it is, and what its match's room shows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seat {
    /// Its node's incarnation.
    node: u64,
    shard: usize,
    player: u64,
    name: String,
    #[serde(default)]
    meta: Option<String>,
    skill: f64,
}

/// A ticket's region and listed properties (its leader's, for a party).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ext {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

/// A ticket as Redis keeps it.
#[derive(Debug, Deserialize)]
struct Record {
    id: u64,
    /// Enqueue time, ms of Redis's clock (0 for a party that never gathered).
    at: u64,
    #[serde(default)]
    ext: Option<Ext>,
    seats: Vec<Seat>,
}

/// Longest player name a record may hold: well above any `max_name_len`.
const MAX_RECORD_NAME: usize = 4_096;

impl Record {
    /// Whether it is what this code writes: seats, with names, finite skills, and a shard
    /// this node has for its own seats.
    fn sound(&self, node: u64, shards: usize) -> bool {
        !self.seats.is_empty()
            && self.seats.iter().all(|s| {
                valid_name(&s.name, MAX_RECORD_NAME)
                    && s.skill.is_finite()
                    && (s.node != node || s.shard < shards)
            })
    }
}

/// An entry of a queue's stream of outcomes.
#[derive(Debug, Deserialize)]
struct Outcome {
    /// `matched`, `ended` or `go`.
    kind: String,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// The seat whose player ended the ticket (told by its own answer).
    #[serde(default)]
    by: Option<String>,
    /// Its name, told to the others.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tickets: Vec<Record>,
}

/// The field of `player` of node `node` in a queue's seats' index.
fn seat_field(node: u64, player: PlayerId) -> String {
    format!("{node}:{player}")
}

/// A connection for the scripts: one to a server, or a Redis Cluster's (each script goes to
/// its queue's master).
#[derive(Clone)]
enum Store {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Store {
    /// A connection to `target` whose every answer comes within `response`.
    async fn open(target: &Target, response: Duration) -> redis::RedisResult<Store> {
        match target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(response));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Store::Single)
            }
            Target::Cluster { seeds, .. } => {
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(REDIS_TIMEOUT)
                    .response_timeout(response)
                    .build()?;
                client.get_async_connection().await.map(Store::Cluster)
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Store::Single(c) => cmd.query_async(c).await,
            Store::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A script and, once Redis has told it, its digest.
struct Script {
    body: String,
    sha: Option<String>,
}

impl Script {
    fn new(body: &str) -> Script {
        Script {
            body: format!(
                "{}{body}",
                PRELUDE.replace("RETENTION", &RETENTION_MS.to_string())
            ),
            sha: None,
        }
    }

    /// Runs the script on `keys` with `args`: by its digest, or whole when the server does
    /// not have it (restarted, or another master).
    async fn run(
        &mut self,
        store: &mut Store,
        keys: &[String],
        args: &[String],
    ) -> redis::RedisResult<Value> {
        let sha = match &self.sha {
            Some(sha) => sha.clone(),
            None => {
                let sha: String = store
                    .query(redis::cmd("SCRIPT").arg("LOAD").arg(&self.body))
                    .await?;
                self.sha = Some(sha.clone());
                sha
            }
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(keys.len()).arg(keys).arg(args);
        match store.query(&cmd).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(&self.body).arg(keys.len()).arg(keys).arg(args);
                store.query(&cmd).await
            }
            answer => answer,
        }
    }
}

/// The scripts, by what they do.
struct Scripts {
    enqueue: Script,
    cancel: Script,
    claim: Script,
    end: Script,
    load: Script,
    release: Script,
}

/// Whether `e` says Redis is out of reach (try again later) rather than that it refused
/// the command (a bug here: do not try again).
fn out_of_reach(e: &redis::RedisError) -> bool {
    match e.code() {
        Some(code) => matches!(
            code,
            "CLUSTERDOWN" | "TRYAGAIN" | "LOADING" | "MASTERDOWN" | "BUSY"
        ),
        None => true,
    }
}

/// A Redis value as text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A Redis value as a number.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(_) | Value::SimpleString(_) => text(v)?.parse().ok(),
        _ => None,
    }
}

/// A script's answer: its word, and the number after it if any.
fn answer(v: &Value) -> (String, Option<u64>) {
    let Value::Array(items) = v else {
        return (String::new(), None);
    };
    let word = items.first().and_then(text).unwrap_or_default();
    let id = items
        .get(1)
        .and_then(int)
        .and_then(|i| u64::try_from(i).ok());
    (word, id)
}

/// What a queue's follower tells the queues.
enum Heard {
    /// It knows where to read from: tickets may enter the queue.
    Ready(String),
    /// An outcome (its text) of the queue.
    Outcome(String, String),
}

/// A queue as this node knows it.
struct QueueState {
    config: QueueConfig,
    keys: Vec<String>,
    /// Its follower knows where to read from.
    ready: bool,
    /// This node held its lease at the last pass.
    holder: bool,
    /// Its version at the last read of its tickets.
    version: Option<String>,
    /// When a pass is due whether or not it changed (a timeout, widening windows).
    due: Option<Instant>,
}

/// A ticket a player of this node holds.
struct Held {
    queue: String,
    ticket: u64,
    shard: ShardId,
    name: PlayerName,
    /// Not in Redis at the last reconciliation.
    missing: bool,
}

/// The bridge's handle of the cluster queues: it carries the shards' requests in and the
/// answers out ([`super::bridge`]).
#[derive(Debug)]
pub struct QueuesPort {
    requests: mpsc::UnboundedSender<QueuesMsg>,
    outbound: mpsc::UnboundedReceiver<(ShardId, MeshMsg)>,
    task: tokio::task::JoinHandle<()>,
}

impl QueuesPort {
    /// Starts the queues of `config` for node `node` (its incarnation) of `shards` shards,
    /// on `target`; a node out of the live list for `lease` is gone. Call it on the
    /// bridge's runtime.
    pub fn start(
        target: &Target,
        node: u64,
        shards: usize,
        lease: Duration,
        config: &MatchmakingConfig,
        status: Arc<ClusterStatus>,
    ) -> QueuesPort {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (out, outbound) = mpsc::unbounded_channel();
        let queues = config
            .effective_queues()
            .into_iter()
            .map(|(name, config)| {
                let prefix = queue_prefix(&name);
                let state = QueueState {
                    config,
                    keys: PARTS.iter().map(|p| format!("{prefix}:{p}")).collect(),
                    ready: false,
                    holder: false,
                    version: None,
                    due: None,
                };
                (name, state)
            })
            .collect();
        let queues = Queues {
            node,
            me: node.to_string(),
            shards,
            lease,
            pass_interval: config.pass_interval_ms,
            max_tickets: config.max_tickets_per_queue,
            queues,
            sharded: matches!(target, Target::Cluster { .. }),
            target: target.clone(),
            store: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            warned: false,
            scripts: Scripts {
                enqueue: Script::new(ENQUEUE),
                cancel: Script::new(CANCEL),
                claim: Script::new(CLAIM),
                end: Script::new(END),
                load: Script::new(LOAD),
                release: Script::new(RELEASE),
            },
            out,
            status,
            backlog: VecDeque::new(),
            held: HashMap::new(),
            waiting_go: HashMap::new(),
            absent_since: HashMap::new(),
            barriers: JoinSet::new(),
        };
        QueuesPort {
            requests,
            outbound,
            task: tokio::spawn(queues.run(requests_rx)),
        }
    }

    /// A shard's request.
    pub fn carry(&self, msg: QueuesMsg) {
        // Fails only once the task has ended, which it does after the bridge's loop.
        let _ = self.requests.send(msg);
    }

    /// The next message for a shard, if one is ready.
    pub fn try_next(&mut self) -> Option<(ShardId, MeshMsg)> {
        self.outbound.try_recv().ok()
    }

    /// Whether a message for a shard is ready.
    pub fn has_next(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// The next message for a shard, when one comes.
    pub async fn next(&mut self) -> Option<(ShardId, MeshMsg)> {
        self.outbound.recv().await
    }

    /// The shards have stopped: the requests they left (their players' withdrawals) are
    /// carried out and the leases given back, for at most `within`.
    pub async fn finish(self, within: Duration) {
        drop(self.requests);
        let _ = tokio::time::timeout(within, self.task).await;
    }
}

/// The next message for a shard from `port`, or never without one.
pub async fn next_for_shards(port: &mut Option<QueuesPort>) -> (ShardId, MeshMsg) {
    match port {
        Some(p) => match p.next().await {
            Some(next) => next,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The cluster queues' task.
struct Queues {
    node: u64,
    /// `node` as the lease's value.
    me: String,
    shards: usize,
    lease: Duration,
    pass_interval: u64,
    max_tickets: usize,
    queues: BTreeMap<String, QueueState>,
    sharded: bool,
    target: Target,
    store: Option<Store>,
    retry_at: Instant,
    backoff: Duration,
    /// Redis's absence was logged.
    warned: bool,
    scripts: Scripts,
    out: mpsc::UnboundedSender<(ShardId, MeshMsg)>,
    status: Arc<ClusterStatus>,
    /// Players' requests, in order, waiting for Redis.
    backlog: VecDeque<QueuesMsg>,
    /// The tickets of this node's players, by player.
    held: HashMap<PlayerId, Held>,
    /// Match rooms made here that wait for their go, until when.
    waiting_go: HashMap<String, Instant>,
    /// Nodes of tickets missing from the live list, since when.
    absent_since: HashMap<u64, Instant>,
    /// Matches waiting for their nodes to follow their rooms.
    barriers: JoinSet<()>,
}

impl Queues {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<QueuesMsg>) {
        let (heard_tx, mut heard) = mpsc::channel(OUTCOMES_BATCH);
        let mut followers = JoinSet::new();
        for (name, q) in &self.queues {
            followers.spawn(follow(
                self.target.clone(),
                name.clone(),
                q.keys[EVENTS].clone(),
                heard_tx.clone(),
            ));
        }
        drop(heard_tx);
        // A pass per `pass_interval_ms`, as on one node; 10 ms at least, so that an
        // unusual setting does not make every node hammer Redis.
        let tick = Duration::from_millis(self.pass_interval.max(10));
        let mut next_pass = Instant::now();
        let mut next_check = Instant::now() + RECONCILE;
        let mut closing = false;
        loop {
            self.work_backlog().await;
            if closing && (self.backlog.is_empty() || self.store.is_none()) {
                break;
            }
            let now = Instant::now();
            if now >= next_pass {
                self.passes().await;
                self.overdue_go();
                next_pass = Instant::now() + tick;
            }
            if now >= next_check {
                if self.connect().await {
                    if let Err(e) = self.reconcile().await {
                        self.lost(&e);
                    }
                }
                next_check = Instant::now() + RECONCILE;
            }
            while self.barriers.try_join_next().is_some() {}
            let retry = (!self.backlog.is_empty() && self.store.is_none()).then_some(self.retry_at);
            let wake = retry.map_or(next_pass, |r| r.min(next_pass));
            tokio::select! {
                msg = requests.recv(), if !closing => match msg {
                    Some(msg) => self.take_request(msg),
                    None => closing = true,
                },
                // The followers never end before this task: the channel stays open.
                Some(h) = heard.recv() => self.heard(h),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            while let Ok(msg) = requests.try_recv() {
                self.take_request(msg);
            }
            while let Ok(h) = heard.try_recv() {
                self.heard(h);
            }
        }
        // Stopping: another node takes the passes over at once.
        if self.connect().await {
            let holding: Vec<Vec<String>> = self
                .queues
                .values()
                .filter(|q| q.holder)
                .map(|q| q.keys.clone())
                .collect();
            for keys in holding {
                let me = [self.me.clone()];
                if let Some(store) = self.store.as_mut() {
                    let _ = self.scripts.release.run(store, &keys, &me).await;
                }
            }
        }
        followers.abort_all();
    }

    /// Answers a player's request on its shard.
    fn tell(&self, shard: ShardId, player: PlayerId, news: TicketNews) {
        let _ = self
            .out
            .send((shard, MeshMsg::Ticket(player, Box::new(news))));
    }

    /// A shard's request: in line behind the others.
    fn take_request(&mut self, msg: QueuesMsg) {
        match msg {
            QueuesMsg::Enqueue { .. } | QueuesMsg::Cancel { .. }
                if self.backlog.len() >= MAX_BACKLOG =>
            {
                self.refuse(msg);
            }
            QueuesMsg::Enqueue { .. } | QueuesMsg::Cancel { .. } | QueuesMsg::Withdraw { .. } => {
                self.backlog.push_back(msg);
                self.status
                    .queues
                    .waiting
                    .store(self.backlog.len() as u64, Relaxed);
            }
            QueuesMsg::Match(_) | QueuesMsg::Go { .. } => {}
        }
    }

    /// Carries out the requests in line, in order, while Redis answers.
    async fn work_backlog(&mut self) {
        while let Some(msg) = self.backlog.pop_front() {
            if let QueuesMsg::Enqueue { request, .. } = &msg {
                let ready = self
                    .queues
                    .get(&request.ticket.queue)
                    .is_none_or(|q| q.ready);
                if !ready {
                    self.backlog.push_front(msg);
                    break;
                }
            }
            if !self.connect().await {
                self.backlog.push_front(msg);
                break;
            }
            if let Err(e) = self.execute(&msg).await {
                if out_of_reach(&e) {
                    self.backlog.push_front(msg);
                    self.lost(&e);
                    break;
                }
                tracing::error!(error = %e, "cluster: a matchmaking script failed");
                self.refuse(msg);
            }
        }
        self.status
            .queues
            .waiting
            .store(self.backlog.len() as u64, Relaxed);
    }

    /// Refuses a request: the queue is full (`queue_full`), the cancel finds nothing
    /// (`not_queued`). For requests past [`MAX_BACKLOG`], and those Redis refused (a bug:
    /// they are not tried again).
    fn refuse(&mut self, msg: QueuesMsg) {
        match msg {
            QueuesMsg::Enqueue { shard, request } => {
                let news = TicketNews::Queued {
                    req: request.req,
                    result: Err(ErrorCode::QueueFull),
                };
                self.tell(shard, request.player, news);
            }
            QueuesMsg::Cancel {
                shard, player, req, ..
            } => {
                let news = TicketNews::Cancelled {
                    req,
                    result: Err(ErrorCode::NotQueued),
                };
                self.tell(shard, player, news);
            }
            _ => {}
        }
    }

    /// A connection to Redis, made anew (within its backoff) when there is none.
    async fn connect(&mut self) -> bool {
        if self.store.is_some() {
            return true;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        let opened = tokio::time::timeout(REDIS_TIMEOUT, Store::open(&self.target, REDIS_TIMEOUT));
        match opened.await {
            Ok(Ok(store)) => {
                if self.warned {
                    tracing::info!("cluster: matchmaking reaches redis again");
                    self.warned = false;
                }
                self.store = Some(store);
                self.backoff = Duration::from_millis(100);
                true
            }
            _ => {
                if !self.warned {
                    tracing::warn!("cluster: matchmaking cannot reach redis; queues pause");
                    self.warned = true;
                }
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                false
            }
        }
    }

    /// Redis stopped answering: connect again later.
    fn lost(&mut self, e: &redis::RedisError) {
        if !self.warned {
            tracing::warn!(error = %e, "cluster: matchmaking lost redis; queues pause");
            self.warned = true;
        }
        self.store = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Runs `script` of queue `queue` with `args`.
    async fn script(
        &mut self,
        which: fn(&mut Scripts) -> &mut Script,
        keys: &[String],
        args: &[String],
    ) -> redis::RedisResult<Value> {
        let Some(store) = self.store.as_mut() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no connection",
            )));
        };
        which(&mut self.scripts).run(store, keys, args).await
    }

    /// Carries out one request of a shard.
    async fn execute(&mut self, msg: &QueuesMsg) -> redis::RedisResult<()> {
        match msg {
            QueuesMsg::Enqueue { shard, request } => self.enqueue(*shard, request).await,
            QueuesMsg::Cancel {
                shard,
                player,
                req,
                ticket,
            } => {
                let Some(h) = self
                    .held
                    .get(player)
                    .filter(|h| *ticket == 0 || h.ticket == *ticket)
                else {
                    let news = TicketNews::Cancelled {
                        req: *req,
                        result: Err(ErrorCode::NotQueued),
                    };
                    self.tell(*shard, *player, news);
                    return Ok(());
                };
                let id = h.ticket;
                let result = self
                    .withdraw(*player, UnqueueReason::Cancelled)
                    .await?
                    .filter(|&t| t == id)
                    .ok_or(ErrorCode::NotQueued);
                let news = TicketNews::Cancelled { req: *req, result };
                self.tell(*shard, *player, news);
                Ok(())
            }
            QueuesMsg::Withdraw { player, .. } => {
                if self.held.contains_key(player) {
                    self.withdraw(*player, UnqueueReason::Disconnected).await?;
                    self.held.remove(player);
                }
                Ok(())
            }
            QueuesMsg::Match(_) | QueuesMsg::Go { .. } => Ok(()),
        }
    }

    /// Puts a player's ticket (or its seat in its party's) in its queue in Redis, and
    /// answers it.
    async fn enqueue(&mut self, shard: ShardId, request: &QueueRequest) -> redis::RedisResult<()> {
        let QueueRequest {
            player,
            req,
            name,
            meta,
            ticket,
        } = request;
        let Some(q) = self.queues.get(&ticket.queue) else {
            let news = TicketNews::Queued {
                req: *req,
                result: Err(ErrorCode::UnknownQueue),
            };
            self.tell(shard, *player, news);
            return Ok(());
        };
        let seat = Seat {
            node: self.node,
            shard,
            player: *player,
            name: name.to_string(),
            meta: meta.as_deref().map(str::to_owned),
            skill: ticket.skill,
        };
        let ext = Ext {
            region: ticket.region.clone(),
            properties: ticket.properties.clone(),
        };
        // A party's list, its leader first and the others in one order, so that every
        // member's list reads the same whatever order it named them in.
        let (leader, names) = match ticket.party.split_first() {
            Some((leader, rest)) if !rest.is_empty() => {
                let mut rest = rest.to_vec();
                rest.sort();
                let names = std::iter::once(leader.clone())
                    .chain(rest)
                    .collect::<Vec<_>>();
                (leader.clone(), names.join("\n"))
            }
            _ => (String::new(), String::new()),
        };
        let timeout_ms = (q.config.timeout_s * 1000.0) as u64;
        let args = [
            seat_field(self.node, *player),
            serde_json::to_string(&seat).unwrap_or_default(),
            serde_json::to_string(&ext).unwrap_or_default(),
            self.max_tickets.to_string(),
            leader.clone(),
            names,
            timeout_ms.to_string(),
            name.to_string(),
            if leader == **name { "1" } else { "0" }.to_owned(),
        ];
        let keys = q.keys.clone();
        let reply = self.script(|s| &mut s.enqueue, &keys, &args).await?;
        let (word, id) = answer(&reply);
        let result = match (word.as_str(), id) {
            ("queued" | "again", Some(id)) => Ok(id),
            ("full", _) => Err(ErrorCode::QueueFull),
            ("already", _) => Err(ErrorCode::AlreadyQueued),
            _ => Err(ErrorCode::InvalidValue),
        };
        if let Ok(id) = result {
            self.status.queues.tickets.fetch_add(1, Relaxed);
            self.held.insert(
                *player,
                Held {
                    queue: ticket.queue.clone(),
                    ticket: id,
                    shard,
                    name: Arc::clone(name),
                    missing: false,
                },
            );
        }
        self.tell(shard, *player, TicketNews::Queued { req: *req, result });
        Ok(())
    }

    /// Takes `player`'s ticket out of its queue for `reason`; the other players of it are
    /// told by its outcome. The ticket, or `None` when it was not waiting any more.
    async fn withdraw(
        &mut self,
        player: PlayerId,
        reason: UnqueueReason,
    ) -> redis::RedisResult<Option<u64>> {
        let Some(h) = self.held.get(&player) else {
            return Ok(None);
        };
        let Some(keys) = self.queues.get(&h.queue).map(|q| q.keys.clone()) else {
            return Ok(None);
        };
        let args = [
            seat_field(self.node, player),
            h.ticket.to_string(),
            reason_name(reason).to_owned(),
            serde_json::to_string(&*h.name).unwrap_or_default(),
        ];
        let reply = self.script(|s| &mut s.cancel, &keys, &args).await?;
        match answer(&reply) {
            (word, Some(id)) if word == "cancelled" => {
                self.held.remove(&player);
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    /// One pass step for every queue: the holder of a queue's lease matches it; the
    /// others try to take the lease.
    async fn passes(&mut self) {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            if !self.connect().await {
                return;
            }
            if let Err(e) = self.pass(&name).await {
                if out_of_reach(&e) {
                    self.lost(&e);
                    return;
                }
                tracing::error!(queue = %name, error = %e, "cluster: a matching pass failed");
            }
        }
    }

    /// A pass step for queue `name`.
    async fn pass(&mut self, name: &str) -> redis::RedisResult<()> {
        let Some(q) = self.queues.get(name) else {
            return Ok(());
        };
        let due = q.due.is_some_and(|d| d <= Instant::now());
        let keys = q.keys.clone();
        let args = [
            self.me.clone(),
            self.lease.as_millis().to_string(),
            q.version.clone().unwrap_or_default(),
            if due { "1" } else { "0" }.to_owned(),
        ];
        let reply = self.script(|s| &mut s.load, &keys, &args).await?;
        let Value::Array(items) = reply else {
            return Ok(());
        };
        let Some(q) = self.queues.get_mut(name) else {
            return Ok(());
        };
        if items.first().and_then(int) != Some(1) {
            q.holder = false;
            q.version = None;
            q.due = None;
            return Ok(());
        }
        if !q.holder {
            tracing::info!(queue = %name, "cluster: this node runs the queue's matching passes");
            q.holder = true;
        }
        let now_ms = items.get(1).and_then(int).unwrap_or(0).max(0) as u64;
        let version = items.get(2).and_then(text);
        // Nothing read: nothing changed, and no deadline is due.
        if version == q.version && !due {
            return Ok(());
        }
        q.version = version;
        let records: Vec<(String, String)> = items[3..]
            .chunks(2)
            .filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?)))
            .collect();
        self.match_queue(name, now_ms, records).await
    }

    /// The live nodes' incarnations, this one's included, if the membership has read them:
    /// without a list every node counts as live.
    fn live_nodes(&self) -> Option<HashSet<u64>> {
        if !self.status.redis_up() {
            return None;
        }
        let listed = self.status.listed();
        if listed.is_empty() {
            return None;
        }
        let mut live: HashSet<u64> = listed.iter().map(|n| n.incarnation).collect();
        live.insert(self.node);
        Some(live)
    }

    /// A matching pass over queue `name`'s waiting tickets (`records`, id and record) at
    /// `now_ms` of Redis's clock: the tickets go into a [`Matchmaker`] with their waiting
    /// times, and what it answers is claimed (matches) or ended (timeouts).
    async fn match_queue(
        &mut self,
        name: &str,
        now_ms: u64,
        records: Vec<(String, String)>,
    ) -> redis::RedisResult<()> {
        let Some(config) = self.queues.get(name).map(|q| q.config.clone()) else {
            return Ok(());
        };
        let mut matchmaker = Matchmaker::new(&MatchmakingConfig {
            pass_interval_ms: self.pass_interval,
            max_tickets_per_queue: usize::MAX,
            queues: BTreeMap::from([(name.to_owned(), config)]),
        });
        let live = self.live_nodes();
        let now = Instant::now();
        let mut absent = HashSet::new();
        // Tickets to end before the pass: malformed ones, and those of nodes gone.
        let mut ends: Vec<Ending> = Vec::new();
        let mut tickets: HashMap<u64, Record> = HashMap::new();
        let mut parsed = Vec::with_capacity(records.len());
        for (field, value) in records {
            let record = serde_json::from_str::<Record>(&value)
                .ok()
                .filter(|r| r.sound(self.node, self.shards) && field == r.id.to_string());
            match record {
                Some(r) => parsed.push(r),
                None => {
                    self.status.queues.malformed.fetch_add(1, Relaxed);
                    tracing::warn!(queue = %name, ticket = %field, "cluster: a malformed ticket record, dropped");
                    ends.push(Ending::of(field, "refused"));
                }
            }
        }
        // Waiting times from Redis's clock, laid on this process's: the oldest ticket at
        // `base`.
        let oldest = parsed
            .iter()
            .map(|r| r.at.min(now_ms))
            .min()
            .unwrap_or(now_ms);
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms.min(now_ms).saturating_sub(oldest));
        let mut next_key = 1;
        let mut skipped = false;
        'records: for record in parsed {
            for s in &record.seats {
                let Some(live) = &live else { break };
                if live.contains(&s.node) {
                    continue;
                }
                absent.insert(s.node);
                let since = *self.absent_since.entry(s.node).or_insert(now);
                if now.duration_since(since) > self.lease {
                    ends.push(Ending {
                        by: format!("\"{}\"", seat_field(s.node, s.player)),
                        name: serde_json::to_string(&s.name).unwrap_or_default(),
                        ..Ending::of(record.id.to_string(), "disconnected")
                    });
                }
                // A node missing from the list briefly (just started, or its lease is
                // running out) has its tickets wait; one gone for a lease has them end.
                skipped = true;
                continue 'records;
            }
            let members = record
                .seats
                .iter()
                .map(|s| {
                    next_key += 1;
                    Member {
                        player: next_key,
                        skill: s.skill,
                    }
                })
                .collect();
            let ext = record.ext.as_ref();
            let ticket = Ticket {
                queue: name.to_owned(),
                members,
                region: ext.and_then(|e| e.region.clone()),
                properties: ext.map(|e| e.properties.clone()).unwrap_or_default(),
            };
            match matchmaker.enqueue_as(TicketId(record.id), ticket, at(record.at)) {
                Ok(()) => {
                    tickets.insert(record.id, record);
                }
                Err(e) => {
                    tracing::debug!(queue = %name, ticket = record.id, error = %e, "cluster: a ticket refused by the queue");
                    ends.push(Ending::of(record.id.to_string(), "refused"));
                }
            }
        }
        self.absent_since.retain(|n, _| absent.contains(n));
        let pass_at = at(now_ms);
        let events = matchmaker.poll(pass_at);
        if let Some(q) = self.queues.get_mut(name) {
            q.due = matchmaker
                .next_deadline()
                .map(|d| Instant::now() + d.saturating_duration_since(pass_at));
            // Tickets left out wait for their node to be listed (or to be gone): the next
            // pass reads them again.
            if skipped {
                q.due = Some(Instant::now());
            }
        }
        let keys = self
            .queues
            .get(name)
            .map(|q| q.keys.clone())
            .unwrap_or_default();
        for Ending {
            id,
            reason,
            by,
            name: who,
        } in ends
        {
            let args = [self.me.clone(), reason.to_owned(), by, who, id];
            let reply = self.script(|s| &mut s.end, &keys, &args).await?;
            if answer(&reply).0 == "lease" {
                return self.lost_lease(name);
            }
        }
        for event in events {
            match event {
                Event::TimedOut { ticket, .. } => {
                    let args = [
                        self.me.clone(),
                        "timed_out".into(),
                        "null".into(),
                        "null".into(),
                        ticket.0.to_string(),
                    ];
                    let reply = self.script(|s| &mut s.end, &keys, &args).await?;
                    if answer(&reply).0 == "lease" {
                        return self.lost_lease(name);
                    }
                }
                Event::Matched { tickets: ids, .. } => {
                    // Twelve letters: codes drawn on different nodes never meet in
                    // practice (31^12), and a node cannot ask the others.
                    let room = format!("{CODE_PREFIX}{}{}", new_code(), new_code());
                    let mut args = vec![
                        self.me.clone(),
                        serde_json::to_string(&room).unwrap_or_default(),
                    ];
                    args.extend(ids.iter().map(|t| t.0.to_string()));
                    let reply = self.script(|s| &mut s.claim, &keys, &args).await?;
                    match answer(&reply).0.as_str() {
                        "matched" => {
                            self.status.queues.matches.fetch_add(1, Relaxed);
                            let nodes: HashSet<u64> = ids
                                .iter()
                                .filter_map(|t| tickets.get(&t.0))
                                .flat_map(|r| r.seats.iter().map(|s| s.node))
                                .collect();
                            self.open_when_followed(room, nodes.len(), &keys[EVENTS]);
                        }
                        "lease" => return self.lost_lease(name),
                        // A ticket left meanwhile: the others wait for the next pass.
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Another node holds queue `name`'s lease now: this pass stops.
    fn lost_lease(&mut self, name: &str) -> redis::RedisResult<()> {
        if let Some(q) = self.queues.get_mut(name) {
            q.holder = false;
            q.version = None;
            q.due = None;
        }
        Ok(())
    }

    /// Tells the nodes of the match in `room` to go once `nodes` nodes follow the room (or
    /// [`BARRIER`] has passed), by an outcome on the queue's stream `events`.
    fn open_when_followed(&mut self, room: String, nodes: usize, events: &str) {
        let Some(mut store) = self.store.clone() else {
            return;
        };
        let sharded = self.sharded;
        let events = events.to_owned();
        self.barriers.spawn(async move {
            let channel = super::bridge::channel(&room);
            let until = Instant::now() + BARRIER;
            let verb = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
            loop {
                let count: Option<Value> = store
                    .query(redis::cmd("PUBSUB").arg(verb).arg(&channel))
                    .await
                    .ok();
                let count = match count {
                    Some(Value::Array(a)) => a.get(1).and_then(int),
                    Some(Value::Map(m)) => m.first().and_then(|(_, c)| int(c)),
                    _ => None,
                };
                if count.unwrap_or(0) >= nodes as i64 || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(BARRIER_POLL).await;
            }
            let go = serde_json::json!({ "kind": "go", "room": room }).to_string();
            let mut add = redis::cmd("XADD");
            add.arg(&events).arg("*").arg("o").arg(go);
            let _: redis::RedisResult<Value> = store.query(&add).await;
        });
    }

    /// Something a queue's follower heard.
    fn heard(&mut self, heard: Heard) {
        match heard {
            Heard::Ready(queue) => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.ready = true;
                }
            }
            Heard::Outcome(queue, text) => {
                let outcome = serde_json::from_str::<Outcome>(&text);
                let told = match outcome {
                    Ok(o) if o.kind == "matched" => self.matched(&queue, o),
                    Ok(o) if o.kind == "ended" => self.ended(o),
                    Ok(o) if o.kind == "go" => {
                        if let Some(room) = o.room {
                            self.go(room);
                        }
                        true
                    }
                    _ => false,
                };
                if !told {
                    self.status.queues.malformed.fetch_add(1, Relaxed);
                    tracing::warn!(%queue, len = text.len(), "cluster: a malformed matchmaking outcome, dropped");
                }
            }
        }
    }

    /// A match of `queue`: its players here go into its room at its home here. `false`
    /// for an outcome that is not what this code writes.
    fn matched(&mut self, queue: &str, o: Outcome) -> bool {
        let Some(room) = o
            .room
            .filter(|r| r.starts_with(CODE_PREFIX) && valid_name(r, 64))
        else {
            return false;
        };
        if o.tickets.is_empty() {
            return false;
        }
        let mut here = Vec::new();
        let mut roster = Vec::new();
        let mut elsewhere: BTreeMap<u64, Vec<PlayerName>> = BTreeMap::new();
        for t in o.tickets {
            for s in t.seats {
                // The passing node checked the seats but cannot know this node's shards: a
                // seat that is not sound here is left out, and the others play.
                let here_bad = s.node == self.node && s.shard >= self.shards;
                if here_bad || !valid_name(&s.name, MAX_RECORD_NAME) {
                    self.status.queues.malformed.fetch_add(1, Relaxed);
                    continue;
                }
                let name: PlayerName = Arc::from(s.name);
                let meta: Option<Arc<str>> = s.meta.map(Arc::from);
                roster.push(RosterEntry {
                    id: Arc::clone(&name),
                    meta: meta.clone(),
                });
                if s.node != self.node {
                    elsewhere.entry(s.node).or_default().push(name);
                    continue;
                }
                if self.held.get(&s.player).is_some_and(|h| h.ticket == t.id) {
                    self.held.remove(&s.player);
                }
                here.push(MatchedPlayer {
                    player: s.player,
                    name,
                    shard: s.shard,
                    meta,
                    ticket: t.id,
                });
            }
        }
        if here.is_empty() {
            return true;
        }
        let home = home_shard(&room, self.shards);
        self.waiting_go
            .insert(room.clone(), Instant::now() + GO_WAIT);
        let m = ClusterMatch {
            queue: queue.to_owned(),
            room,
            here,
            roster,
            elsewhere: elsewhere.into_iter().collect(),
        };
        let _ = self
            .out
            .send((home, MeshMsg::Queues(Box::new(QueuesMsg::Match(m)))));
        true
    }

    /// Tickets ended: their players here are told, but the one who ended it (told by its
    /// own answer).
    fn ended(&mut self, o: Outcome) -> bool {
        let reason = match o.reason.as_deref() {
            Some("timed_out") => UnqueueReason::TimedOut,
            Some("cancelled") => UnqueueReason::Cancelled,
            Some("disconnected") => UnqueueReason::Disconnected,
            Some("refused") => UnqueueReason::Refused,
            _ => return false,
        };
        let by: Option<PlayerName> = o.name.map(Arc::from);
        for t in o.tickets {
            for s in t.seats {
                if s.node != self.node || s.shard >= self.shards {
                    continue;
                }
                if o.by.as_deref() == Some(seat_field(self.node, s.player).as_str()) {
                    continue;
                }
                if self.held.get(&s.player).is_some_and(|h| h.ticket == t.id) {
                    self.held.remove(&s.player);
                }
                let news = TicketNews::Ended {
                    ticket: t.id,
                    reason,
                    by: by.clone(),
                };
                self.tell(s.shard, s.player, news);
            }
        }
        true
    }

    /// Every node of the match in `room` follows it: its players here are told.
    fn go(&mut self, room: String) {
        if self.waiting_go.remove(&room).is_some() {
            let home = home_shard(&room, self.shards);
            let go = QueuesMsg::Go { room };
            let _ = self.out.send((home, MeshMsg::Queues(Box::new(go))));
        }
    }

    /// Matches whose go never came (their passing node died): their players here are told.
    fn overdue_go(&mut self) {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .waiting_go
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in overdue {
            self.go(room);
        }
    }

    /// Checks that the tickets of this node's players still wait in Redis; one missing
    /// twice in a row ends as timed out (its outcome was lost with Redis's data, or missed).
    async fn reconcile(&mut self) -> redis::RedisResult<()> {
        let mut by_queue: BTreeMap<String, Vec<PlayerId>> = BTreeMap::new();
        for (player, h) in &self.held {
            by_queue.entry(h.queue.clone()).or_default().push(*player);
        }
        let mut lost = Vec::new();
        for (queue, players) in by_queue {
            let Some(key) = self.queues.get(&queue).map(|q| q.keys[SEATS].clone()) else {
                continue;
            };
            for chunk in players.chunks(512) {
                let fields: Vec<String> = chunk.iter().map(|p| seat_field(self.node, *p)).collect();
                let Some(store) = self.store.as_mut() else {
                    return Ok(());
                };
                let values: Vec<Option<String>> = store
                    .query(redis::cmd("HMGET").arg(&key).arg(&fields))
                    .await?;
                for (player, value) in chunk.iter().zip(values) {
                    let Some(h) = self.held.get_mut(player) else {
                        continue;
                    };
                    if value.and_then(|v| v.parse::<u64>().ok()) == Some(h.ticket) {
                        h.missing = false;
                    } else if h.missing {
                        lost.push(*player);
                    } else {
                        h.missing = true;
                    }
                }
            }
        }
        for player in lost {
            if let Some(h) = self.held.remove(&player) {
                tracing::warn!(queue = %h.queue, ticket = h.ticket, "cluster: a ticket no longer in redis ends as timed out");
                let news = TicketNews::Ended {
                    ticket: h.ticket,
                    reason: UnqueueReason::TimedOut,
                    by: None,
                };
                self.tell(h.shard, player, news);
            }
        }
        Ok(())
    }
}

/// A ticket the holder ends before its pass, and how its outcome says it.
struct Ending {
    id: String,
    reason: &'static str,
    /// The seat that ended it (JSON), or `null`.
    by: String,
    /// Its player's name (JSON), or `null`.
    name: String,
}

impl Ending {
    fn of(id: String, reason: &'static str) -> Ending {
        Ending {
            id,
            reason,
            by: "null".into(),
            name: "null".into(),
        }
    }
}

/// The name a reason has in outcomes.
fn reason_name(reason: UnqueueReason) -> &'static str {
    match reason {
        UnqueueReason::TimedOut => "timed_out",
        UnqueueReason::Cancelled => "cancelled",
        UnqueueReason::Disconnected => "disconnected",
        UnqueueReason::Refused => "refused",
    }
}

/// An entry of a stream as Redis answers it, `[id, [field, value, ...]]`: its id and its
/// `o` field.
fn entry(v: &Value) -> Option<(String, Option<String>)> {
    let Value::Array(entry) = v else {
        return None;
    };
    let id = entry.first().and_then(text)?;
    let outcome = match entry.get(1) {
        Some(Value::Array(fields)) => fields
            .chunks(2)
            .find(|kv| kv.first().and_then(text).as_deref() == Some("o"))
            .and_then(|kv| kv.get(1).and_then(text)),
        _ => None,
    };
    Some((id, outcome))
}

/// The entries of an `XREAD` answer for one stream: `[[stream, [entry, ...]]]` (a map of
/// streams in RESP3), or nil when nothing came.
fn read_entries(v: &Value) -> Vec<(String, Option<String>)> {
    let lists: Vec<&Value> = match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    lists
        .into_iter()
        .filter_map(|l| match l {
            Value::Array(entries) => Some(entries.iter().filter_map(entry)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A queue's follower: reads its stream of outcomes from where it last did, on a
/// connection of its own (a blocking read holds its connection), connecting again with a
/// backoff.
async fn follow(target: Target, queue: String, key: String, heard: mpsc::Sender<Heard>) {
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let response = Duration::from_millis(BLOCK_MS) + REDIS_TIMEOUT;
    loop {
        let opened = tokio::time::timeout(REDIS_TIMEOUT, Store::open(&target, response)).await;
        let Ok(Ok(mut store)) = opened else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        if cursor.is_none() {
            // From the newest outcome on: nothing older can concern this node's tickets,
            // none of which waits before the queue is ready.
            let mut last = redis::cmd("XREVRANGE");
            last.arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
            match store.query::<Value>(&last).await {
                Ok(v) => {
                    let newest = match &v {
                        Value::Array(newest) => newest.first().and_then(entry).map(|(id, _)| id),
                        _ => None,
                    };
                    cursor = Some(newest.unwrap_or_else(|| "0-0".into()));
                    if heard.send(Heard::Ready(queue.clone())).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        backoff = Duration::from_millis(100);
        while let Some(from) = cursor.clone() {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(OUTCOMES_BATCH)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&key)
                .arg(from);
            match store.query::<Value>(&read).await {
                Ok(v) => {
                    for (id, outcome) in read_entries(&v) {
                        cursor = Some(id);
                        let Some(outcome) = outcome else { continue };
                        if heard
                            .send(Heard::Outcome(queue.clone(), outcome))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(_) => break,
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queues_keys_share_one_hash_tag_whatever_its_name() {
        assert_eq!(queue_prefix("ranked"), "corelay:mm:{ranked}");
        for name in ["}x", "{}", "a{b}c", "%7D", "🙂 ranked"] {
            let prefix = queue_prefix(name);
            let tag = &prefix["corelay:mm:{".len()..prefix.len() - 1];
            assert!(
                !tag.is_empty() && !tag.contains(['{', '}']),
                "{name}: {prefix}"
            );
        }
        assert_ne!(
            queue_prefix("}"),
            queue_prefix("%7D"),
            "escapes are unambiguous"
        );
    }

    #[test]
    fn records_from_redis_are_checked_before_use() {
        let seat = |node: u64, shard: usize, name: &str, skill: f64| Seat {
            node,
            shard,
            player: 7,
            name: name.into(),
            meta: None,
            skill,
        };
        let record = |seats: Vec<Seat>| Record {
            id: 1,
            at: 0,
            ext: None,
            seats,
        };
        assert!(record(vec![seat(1, 0, "ann", 5.0)]).sound(1, 2));
        assert!(
            record(vec![seat(9, 40, "ann", 5.0)]).sound(1, 2),
            "another node's shards are its own"
        );
        assert!(!record(vec![]).sound(1, 2));
        assert!(
            !record(vec![seat(1, 2, "ann", 5.0)]).sound(1, 2),
            "no such shard here"
        );
        assert!(!record(vec![seat(1, 0, "", 5.0)]).sound(1, 2));
        assert!(!record(vec![seat(1, 0, "a\nb", 5.0)]).sound(1, 2));
        assert!(!record(vec![seat(1, 0, "ann", f64::NAN)]).sound(1, 2));
        for bad in [
            "",
            "{",
            "[]",
            r#"{"id":1,"at":0,"seats":[{"node":1}]}"#,
            r#"{"id":-1,"at":0,"seats":[]}"#,
        ] {
            assert!(serde_json::from_str::<Record>(bad).is_err(), "{bad}");
        }
        let outcome: Outcome = serde_json::from_str(
            r#"{"kind":"ended","reason":"cancelled","by":"1:7","name":"ann","tickets":[{"id":3,"at":0,"ext":null,"seats":[{"node":1,"shard":0,"player":7,"name":"ann","meta":null,"skill":1.5}]}]}"#,
        )
        .unwrap();
        assert_eq!(outcome.tickets[0].seats[0].skill, 1.5);
    }

    #[test]
    fn stream_answers_are_read_in_both_shapes() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, o: &str| {
            Value::Array(vec![bulk(id), Value::Array(vec![bulk("o"), bulk(o)])])
        };
        let xread = Value::Array(vec![Value::Array(vec![
            bulk("corelay:mm:{q}:events"),
            Value::Array(vec![entry("1-0", "a"), entry("2-0", "b")]),
        ])]);
        assert_eq!(
            read_entries(&xread),
            [
                ("1-0".into(), Some("a".into())),
                ("2-0".into(), Some("b".into()))
            ]
        );
        let resp3 = Value::Map(vec![(bulk("k"), Value::Array(vec![entry("3-0", "c")]))]);
        assert_eq!(read_entries(&resp3), [("3-0".into(), Some("c".into()))]);
        assert!(read_entries(&Value::Nil).is_empty());
        assert!(read_entries(&Value::Array(vec![bulk("junk")])).is_empty());
        assert_eq!(super::entry(&bulk("x")), None);
    }
}
