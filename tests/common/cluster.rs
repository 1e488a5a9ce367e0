//! Cluster harness shared by the tests of several nodes through Redis: real `redis-server`
//! processes (one, or a 3-master Redis Cluster) and `corelay serve` nodes on 127.0.0.1,
//! each started here and stopped by its PID when dropped.
//!
//! `redis-server` comes from the README's test command (Debian's package); a missing one
//! fails the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `corelay` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_corelay");

/// The nodes' admin token (the dashboard shows the cluster).
pub const ADMIN_TOKEN: &str = "cluster-test-admin-token";

/// A `redis-server` of the test's own, stopped (by PID) when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server: run the README's test command, which installs it");
        let redis = Redis { child, port };
        bounded("redis-server answers", || redis.ping());
        redis
    }

    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until `cond` holds.
pub fn bounded(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `corelay serve` node of the cluster on `redis`, stopped (by PID) when dropped.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Node {
    pub fn start(redis: &str, id: &str) -> Node {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
            .env("CORELAY_CLUSTER_REDIS", redis)
            .env("CORELAY_CLUSTER_NODE_ID", id)
            .env("CORELAY_CLUSTER_LEASE_MS", "1000")
            .env("CORELAY_DRAIN_TIMEOUT_MS", "200")
            .env("CORELAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = super::start_line_addr(&line);
        Node { child, addr }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// `GET /readyz`: status and body.
    pub fn ready(&self) -> (u16, Value) {
        self.get("/readyz")
    }

    /// `GET path` with the admin token: status and body.
    pub fn get(&self, path: &'static str) -> (u16, Value) {
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = self.addr;
        super::run(move || async move {
            let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
            let r = super::eio::request(addr, "GET", path, &auth, "").await;
            tx.send((r.status, serde_json::from_str(&r.body).unwrap()))
                .unwrap();
        });
        rx.recv().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `corelay cluster status --json`: the live nodes' ids, and what each says of itself.
pub fn status(redis: &str) -> Vec<Value> {
    status_with(&["--redis", redis])
}

/// `corelay cluster status --json` with `args`.
pub fn status_with(args: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["cluster", "status", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

pub fn ids(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Redis's count of subscribers of each of `channels` (`PUBSUB NUMSUB`).
pub fn numsub(url: &str, rooms: &[&str]) -> Vec<i64> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .unwrap();
    let channels: Vec<String> = rooms
        .iter()
        .map(|r| corelay::cluster::bridge::channel(r))
        .collect();
    let answer: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channels)
        .query(&mut con)
        .unwrap();
    answer
        .chunks(2)
        .map(|pair| redis::from_redis_value_ref::<i64>(&pair[1]).unwrap())
        .collect()
}

/// An in-process node of the cluster on `url`, with two shards (so that a room's home is
/// not always its members' shard).
pub fn node(url: &str, id: &str) -> corelay::Server {
    let (url, id) = (url.to_owned(), id.to_owned());
    super::server(2, move |c| {
        c.cluster.redis = Some(url);
        c.cluster.node_id = Some(id);
        c.cluster.lease_ms = 1_000;
    })
}

/// A Redis Cluster of three masters (no replicas) of the test's own, on free ports, each
/// stopped by its PID when dropped.
pub struct RedisCluster {
    pub masters: Vec<Redis>,
    _dir: TempDir,
}

/// A directory of the test's own, removed when dropped (the masters' cluster files).
pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "corelay-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let masters: Vec<Redis> = (0..3)
            .map(|_| {
                let port = free_port();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", "2000"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server: run the README's test command, which installs it");
                let redis = Redis { child, port };
                bounded("a cluster master answers", || redis.ping());
                redis
            })
            .collect();
        // Each master takes a third of the slots, and they meet.
        let slots = 16_384 / masters.len();
        for (i, m) in masters.iter().enumerate() {
            let last = if i + 1 == masters.len() {
                16_383
            } else {
                (i + 1) * slots - 1
            };
            let mut con = m.connection();
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(i * slots)
                .arg(last)
                .query::<()>(&mut con)
                .unwrap();
            for other in &masters[..i] {
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(other.port)
                    .query::<()>(&mut con)
                    .unwrap();
            }
        }
        bounded("the cluster is ok on every master", || {
            masters.iter().all(|m| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut m.connection())
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
        });
        RedisCluster {
            masters,
            _dir: TempDir(dir),
        }
    }

    /// The seed list nodes are given.
    pub fn seeds(&self) -> String {
        self.masters
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }
}

/// Sharded subscribers of `room`'s channel on each master of `ports` (`PUBSUB
/// SHARDNUMSUB`).
pub fn shardnumsub(ports: &[u16], room: &str) -> Vec<i64> {
    let channel = corelay::cluster::bridge::channel(room);
    ports
        .iter()
        .map(|port| {
            let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .unwrap();
            let answer: Vec<redis::Value> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(&channel)
                .query(&mut con)
                .unwrap();
            redis::from_redis_value_ref::<i64>(&answer[1]).unwrap()
        })
        .collect()
}

impl Redis {
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .unwrap()
    }
}

/// Sends `probe` into `room` from `tx` until `rx` receives it (a node follows a room only
/// once Redis confirmed its subscription, and not while Redis is away); 10 s at most.
pub async fn until_heard(
    tx: &mut corelay::client::Client,
    rx: &mut corelay::client::Client,
    room: &str,
) {
    use corelay::client::{PayloadKind, ServerEvent};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "nothing crossed within 10 s");
        tx.send(room, "probe", b"1", PayloadKind::Json)
            .await
            .unwrap();
        let heard = glommio::timer::timeout(Duration::from_millis(200), async {
            loop {
                if let ServerEvent::Message { event, .. } = rx.next_event().await.unwrap() {
                    if event == "probe" {
                        return Ok(());
                    }
                }
            }
        })
        .await;
        if heard.is_ok() {
            return;
        }
    }
}
