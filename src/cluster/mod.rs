//! Several nodes through Redis (`[cluster]`, docs/SCALING.md): node membership, and rooms
//! across nodes ([`bridge`]).
//!
//! Each node keeps a lease in Redis while it serves: a key `corelay:node:<id>` holding what
//! it is (address, shards, load) that expires `lease_ms` after its last renewal, and its id
//! in the sorted set `corelay:nodes` scored by that expiry. A node renews a third of the way
//! into its lease, so a node that dies (SIGKILL, a lost machine) drops out of every live
//! list within `lease_ms`, and one that drains says so at once and leaves when it stops.
//!
//! The lease is kept by one thread per node, outside the shards: a Redis round trip never
//! stalls a shard. It publishes what it learns (Redis up or not, the live nodes) in a
//! [`ClusterStatus`] that the shards' `/readyz` and `/metrics` read.
//!
//! Rooms cross nodes through the [`bridge`], one more thread per node, which publishes what
//! rooms' homes broadcast on each room's Redis channel and follows the channels of rooms
//! with members here ([`envelope`] is the format). Matchmaking queues are the cluster's
//! ([`queues`], on the bridge's thread): tickets wait in Redis and one node at a time runs
//! a queue's matching pass under a lease (docs/SCALING.md says what works today).

pub mod bridge;
pub mod envelope;
pub mod queues;
pub mod sessions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::shard::Control;
use crate::stats::{unix_ms, StatsRegistry};

/// The sorted set of node ids, scored by their lease's expiry (ms since the Unix epoch).
/// Membership's keys share the hash tag `{corelay}`, so that on Redis Cluster a lease's
/// key and the set are written in one transaction (one slot).
pub const NODES_KEY: &str = "{corelay}:nodes";

/// The key of node `id`'s lease.
pub fn node_key(id: &str) -> String {
    format!("{{corelay}}:node:{id}")
}

/// Where the cluster's Redis is: one server, or a Redis Cluster reached through its seed
/// nodes (`redis_cluster`).
#[derive(Debug, Clone)]
pub enum Target {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster: keys and room channels are spread over its masters by hash slot.
    Cluster {
        /// The client (boxed: it is large, and made once).
        client: Box<redis::cluster::ClusterClient>,
        /// Its seed nodes' URLs (the bridge's subscriber is a client of its own).
        seeds: Vec<String>,
    },
}

impl Target {
    /// The target `redis` names: one URL, or with `cluster` a comma-separated list of
    /// seed nodes' URLs.
    pub fn open(redis: &str, cluster: bool) -> redis::RedisResult<Target> {
        if cluster {
            let seeds: Vec<String> = redis.split(',').map(|s| s.trim().to_owned()).collect();
            redis::cluster::ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(std::time::Duration::from_secs(1))
                .response_timeout(std::time::Duration::from_secs(1))
                .build()
                .map(|client| Target::Cluster {
                    client: Box::new(client),
                    seeds,
                })
        } else {
            redis::Client::open(redis).map(Target::Single)
        }
    }

    /// A blocking connection whose every call gives up after `timeout`.
    pub fn blocking(
        &self,
        timeout: std::time::Duration,
    ) -> redis::RedisResult<Box<dyn redis::ConnectionLike + Send>> {
        match self {
            Target::Single(client) => {
                let c = client.get_connection_with_timeout(timeout)?;
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                Ok(Box::new(c))
            }
            Target::Cluster { client, .. } => Ok(Box::new(client.get_connection()?)),
        }
    }
}

/// `[cluster]`: how this node finds the others (docs/SCALING.md). Off unless `redis` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis that nodes share, `redis://host:port[/db]` (`CORELAY_CLUSTER_REDIS`); unset,
    /// the node is alone and needs nothing.
    pub redis: Option<String>,
    /// This node's id in the cluster; by default its host name, its port and a random
    /// suffix, unique across restarts.
    pub node_id: Option<String>,
    /// How long a node stays listed without renewing its lease, in ms. A node that dies is
    /// out of every list this long after; it renews every third of it.
    pub lease_ms: u64,
    /// The address clients and other nodes reach this node at; by default `listen`.
    pub advertise: Option<String>,
    /// `redis` is a Redis Cluster: a comma-separated list of seed nodes' URLs. Rooms then
    /// use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), each room's channel on the master
    /// owning its slot.
    pub redis_cluster: bool,
    /// Matchmaking queues are the cluster's: tickets wait in Redis and players on different
    /// nodes match together ([`queues`]). `false` keeps each node's queues its own, as
    /// without `[cluster]` (players then meet only those on their node).
    pub matchmaking: bool,
    /// With history on (`[resume]`), rooms followed across nodes keep it in Redis streams
    /// that number every broadcast for every node alike, and sessions resume on any node
    /// (docs/SCALING.md, "History and resume across nodes"). Each broadcast of such a room
    /// then reaches its own node's members after a round trip to Redis. `false`: each node
    /// numbers and keeps its rooms' history itself, delivers its own members' messages at
    /// once, and a session resumes only on the node that held it.
    pub shared_history: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            node_id: None,
            // 5 s: a dead node is noticed within 5 s (a client's own reconnect takes about
            // as long), and renewals every 1.7 s are nothing to Redis.
            lease_ms: 5_000,
            advertise: None,
            redis_cluster: false,
            matchmaking: true,
            shared_history: true,
        }
    }
}

impl ClusterConfig {
    /// What is wrong with this section, if anything, as `key: reason`.
    pub fn problem(&self) -> Option<String> {
        if let Some(urls) = &self.redis {
            let mut urls = urls.split(',').map(str::trim);
            if let Some(url) =
                urls.find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return Some(format!("redis: `{url}` is not a redis:// URL"));
            }
            if !self.redis_cluster && self.redis.as_ref().is_some_and(|u| u.contains(',')) {
                return Some(
                    "redis: several URLs name a Redis Cluster's seeds: set redis_cluster".into(),
                );
            }
        }
        if !(300..=600_000).contains(&self.lease_ms) {
            return Some("lease_ms: must be between 300 and 600000".into());
        }
        if let Some(id) = &self.node_id {
            if !crate::relay::valid_name(id, 64) || id.contains(char::is_whitespace) {
                return Some(format!(
                    "node_id: `{id}` must be 1..=64 bytes of visible text"
                ));
            }
        }
        None
    }
}

/// What a node's lease says about it (the value of its key, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Where it is reached.
    pub addr: String,
    /// Its shards.
    pub shards: usize,
    /// Its open connections.
    pub connections: u64,
    /// The rooms homed on it.
    pub rooms: u64,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it last renewed its lease.
    pub renewed_ms: u64,
    /// It is draining: it takes no new players and leaves soon.
    pub draining: bool,
    /// This run of it: a random number drawn at start, which its publications carry (a
    /// node restarted with the same id is another incarnation).
    #[serde(default)]
    pub incarnation: u64,
}

/// What the membership thread learned, for the shards to read.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    enabled: AtomicBool,
    redis_up: AtomicBool,
    nodes: AtomicU64,
    /// The live nodes as last read, for the dashboard. Written by the membership thread a
    /// few times a lease, read when a dashboard asks; no shard ever writes it.
    listed: std::sync::Mutex<Vec<NodeInfo>>,
    /// Rooms whose channel the bridge follows now.
    pub(crate) subscriptions: AtomicU64,
    /// Envelopes published.
    pub(crate) published: AtomicU64,
    /// Envelopes not published: Redis was unreachable, or the publisher's queue was full.
    pub(crate) dropped: AtomicU64,
    /// Envelopes of other nodes received.
    pub(crate) received: AtomicU64,
    /// Messages on a room's channel that were not envelopes.
    pub(crate) refused: AtomicU64,
    /// The cluster's matchmaking queues, as this node sees them.
    pub(crate) queues: queues::QueueCounts,
    /// Nodes whose lease ended while this one was up (their members left its rooms).
    pub(crate) nodes_gone: AtomicU64,
}

impl ClusterStatus {
    /// Whether this node is part of a cluster (`cluster.redis` is set).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Whether the last round trip to Redis succeeded.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Relaxed)
    }

    /// Live nodes as last read, this one included.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Relaxed)
    }

    /// What each live node said of itself, as last read.
    pub fn listed(&self) -> Vec<NodeInfo> {
        self.listed.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The bridge's counts: rooms followed, envelopes published, dropped, received and
    /// refused, and nodes found gone.
    pub fn traffic(&self) -> [u64; 6] {
        [
            &self.subscriptions,
            &self.published,
            &self.dropped,
            &self.received,
            &self.refused,
            &self.nodes_gone,
        ]
        .map(|c| c.load(Relaxed))
    }

    /// The cluster queues' counts ([`queues::QueueCounts`]): players queued through this
    /// node, matches its passes claimed, records of Redis dropped as malformed, and
    /// requests waiting for Redis now.
    pub fn matchmaking(&self) -> [u64; 4] {
        let q = &self.queues;
        [&q.tickets, &q.matches, &q.malformed, &q.waiting].map(|c| c.load(Relaxed))
    }
}

/// The live nodes in `redis`, by id (dead ones' entries are dropped on the way).
pub fn live_nodes(
    con: &mut dyn redis::ConnectionLike,
    now_ms: u64,
) -> redis::RedisResult<Vec<NodeInfo>> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(NODES_KEY)
        .arg(now_ms)
        .arg("+inf")
        .query(con)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(con)?;
    let mut nodes: Vec<NodeInfo> = values
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// Keeps this node's lease until the server stops, then takes it back.
#[derive(Debug)]
pub struct Membership {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set once the shards have stopped: the lease is taken back.
    stopped: Arc<AtomicBool>,
}

impl Membership {
    /// Starts keeping the lease of a node serving at `addr` with `shards` shards, reading
    /// its load from `registry`, until `control` says the server stops. `None` without
    /// `cluster.redis`.
    pub fn start(
        config: &ClusterConfig,
        addr: std::net::SocketAddr,
        shards: usize,
        incarnation: u64,
        registry: StatsRegistry,
        control: Arc<Control>,
    ) -> std::io::Result<Option<Membership>> {
        let Some(url) = config.redis.clone() else {
            return Ok(None);
        };
        let target = Target::open(&url, config.redis_cluster).map_err(std::io::Error::other)?;
        let status = registry.cluster();
        status.enabled.store(true, Relaxed);
        let id = config
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id(addr.port()));
        let info = NodeInfo {
            id,
            addr: config.advertise.clone().unwrap_or_else(|| addr.to_string()),
            shards,
            connections: 0,
            rooms: 0,
            started_ms: unix_ms(SystemTime::now()),
            renewed_ms: 0,
            draining: false,
            incarnation,
        };
        let lease = Duration::from_millis(config.lease_ms);
        let stopped = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stopped);
        let thread = std::thread::Builder::new()
            .name("corelay-cluster".into())
            .spawn(move || keep_lease(&target, info, lease, &registry, &control, &done))?;
        Ok(Some(Membership {
            thread: Some(thread),
            stopped,
        }))
    }

    /// The shards have stopped: takes the lease back and waits until it is.
    pub fn leave(mut self) {
        self.stopped.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A node id nobody else has: the host's name, the port, and 32 random bits.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let suffix = &crate::relay::new_secret()[..8];
    format!("{host}-{port}-{suffix}")
}

/// Longest wait between two tries to reach a Redis that is down: long enough not to
/// hammer it, short enough that readiness comes back within seconds of it.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The membership thread: renew, watch for the stop, leave.
fn keep_lease(
    target: &Target,
    mut info: NodeInfo,
    lease: Duration,
    registry: &StatsRegistry,
    control: &Control,
    stopped: &AtomicBool,
) {
    let status = registry.cluster();
    let mut con: Option<Box<dyn redis::ConnectionLike + Send>> = None;
    let mut backoff = Duration::from_millis(100);
    let renew_every = lease / 3;
    let mut next_renewal = std::time::Instant::now();
    // Short steps, so that a drain is announced (and a stop's leave made) at once.
    let step = Duration::from_millis(50).min(renew_every);
    let mut warned = false;
    loop {
        let stopping = control.shutting_down();
        let draining_now = stopping && !info.draining;
        if std::time::Instant::now() >= next_renewal || draining_now {
            info.draining = stopping;
            let snapshot = registry.snapshot();
            info.connections = snapshot.connections;
            info.rooms = snapshot.rooms;
            info.renewed_ms = unix_ms(SystemTime::now());
            let renewed = connection(target, &mut con)
                .and_then(|c| renew(c, &info, lease).map(|()| c))
                .and_then(|c| live_nodes(c, unix_ms(SystemTime::now())));
            match renewed {
                Ok(nodes) => {
                    if !status.redis_up() {
                        tracing::info!(node = %info.id, nodes = nodes.len(), "cluster: redis reached");
                    }
                    status.redis_up.store(true, Relaxed);
                    status.nodes.store(nodes.len() as u64, Relaxed);
                    if let Ok(mut listed) = status.listed.lock() {
                        *listed = nodes;
                    }
                    backoff = Duration::from_millis(100);
                    next_renewal = std::time::Instant::now() + renew_every;
                }
                Err(e) => {
                    // Said once per outage, and at start when Redis never answered.
                    if status.redis_up() || !warned {
                        tracing::warn!(node = %info.id, error = %e, "cluster: redis unreachable");
                        warned = true;
                    }
                    status.redis_up.store(false, Relaxed);
                    con = None;
                    next_renewal = std::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if stopped.load(Relaxed) {
            break;
        }
        std::thread::sleep(step);
    }
    // Gone: the others stop listing this node now rather than at the lease's end.
    if let Ok(c) = connection(target, &mut con) {
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg(LEAVE)
            .arg(2)
            .arg(node_key(&info.id))
            .arg(NODES_KEY)
            .arg(&info.id)
            .query(c);
    }
}

/// The open connection, made anew when there is none.
fn connection<'a>(
    target: &Target,
    con: &'a mut Option<Box<dyn redis::ConnectionLike + Send>>,
) -> redis::RedisResult<&'a mut (dyn redis::ConnectionLike + Send + 'static)> {
    if con.is_none() {
        *con = Some(target.blocking(Duration::from_secs(1))?);
    }
    // Set just above when it was not.
    con.as_deref_mut()
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))
}

/// Writes the lease: the key with its expiry, the id scored by it, and drops ids whose
/// lease ran out (a node killed without leaving).
fn renew(
    con: &mut dyn redis::ConnectionLike,
    info: &NodeInfo,
    lease: Duration,
) -> redis::RedisResult<()> {
    let now = unix_ms(SystemTime::now());
    let value = serde_json::to_string(info).unwrap_or_default();
    let lease = lease.as_millis() as u64;
    redis::cmd("EVAL")
        .arg(RENEW)
        .arg(2)
        .arg(node_key(&info.id))
        .arg(NODES_KEY)
        .arg(value)
        .arg(lease)
        .arg(&info.id)
        .arg(now + lease)
        .arg(now)
        .query(con)
}

/// Renews a lease in one atomic step (a script rather than a transaction: Redis Cluster
/// clients pipeline nothing, and the keys share a slot): the lease's key with its expiry,
/// the id scored by it, and the ids whose lease ran out dropped.
const RENEW: &str = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) \
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5]) \
return 1";

/// Takes a lease back.
const LEAVE: &str = "redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], ARGV[1]) return 1";

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_table_comes_from_its_variables_and_is_checked() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = crate::Config::load(
            None,
            env(&[
                ("CORELAY_CLUSTER_REDIS", "redis://10.0.0.5:6379"),
                ("CORELAY_CLUSTER_LEASE_MS", "2000"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.cluster.redis.as_deref(), Some("redis://10.0.0.5:6379"));
        assert_eq!(c.cluster.lease_ms, 2_000);
        assert_eq!(
            crate::Config::default().cluster.redis,
            None,
            "off by default"
        );
        for (key, value, says) in [
            ("cluster.redis", "10.0.0.5:6379", "redis"),
            ("cluster.lease_ms", "10", "lease_ms"),
            ("cluster.node_id", "two words", "node_id"),
            ("cluster.redis", "redis://a:1,redis://b:2", "redis_cluster"),
        ] {
            let e = crate::Config::load(None, vec![], &[(key, value.into())]).unwrap_err();
            assert!(e.to_string().contains(says), "{key}: {e}");
        }
    }
}
