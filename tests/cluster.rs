//! Several nodes through Redis (issue 12), first part: node membership. Real
//! `redis-server` and `corelay` processes on 127.0.0.1, each started here and stopped by
//! its PID: nodes list each other, a drained node leaves at once, a killed one drops out
//! when its lease ends, and a node whose Redis is gone is not ready until it is back.
//!
//! `redis-server` comes from the README's test command (Debian's package); a missing one
//! fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corelay");

/// The nodes' admin token (the dashboard shows the cluster).
const ADMIN_TOKEN: &str = "cluster-test-admin-token";

/// A `redis-server` of the test's own, stopped (by PID) when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
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

    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
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
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until `cond` holds.
fn bounded(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `corelay serve` node of the cluster on `redis`, stopped (by PID) when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis: &str, id: &str) -> Node {
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
        let addr = common::start_line_addr(&line);
        Node { child, addr }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// `GET /readyz`: status and body.
    fn ready(&self) -> (u16, Value) {
        self.get("/readyz")
    }

    /// `GET path` with the admin token: status and body.
    fn get(&self, path: &'static str) -> (u16, Value) {
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = self.addr;
        common::run(move || async move {
            let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
            let r = common::eio::request(addr, "GET", path, &auth, "").await;
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
fn status(redis: &str) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["cluster", "status", "--json", "--redis", redis])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn ids(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Three nodes list each other with their addresses; one that drains says so and leaves
/// as it stops; one killed with SIGKILL drops out once its lease (1 s) ends.
#[test]
fn nodes_list_each_other_leave_when_drained_and_drop_out_when_killed() {
    let redis = Redis::start();
    let url = redis.url();
    let mut nodes: Vec<Node> = ["ann", "bo", "cy"]
        .iter()
        .map(|id| Node::start(&url, id))
        .collect();
    bounded("three nodes listed", || status(&url).len() == 3);
    let listed = status(&url);
    assert_eq!(ids(&listed), ["ann", "bo", "cy"]);
    for (n, node) in listed.iter().zip(&nodes) {
        assert_eq!(n["addr"], node.addr.to_string());
        assert_eq!(n["shards"], 1);
        assert_eq!(n["draining"], false);
    }
    // Each node reads the others at its next renewal (a third of its lease).
    bounded("ann counts three nodes", || {
        nodes[0].ready().1["cluster"]["nodes"] == 3
    });
    let (code, ready) = nodes[0].ready();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["cluster"]["redis"], true);
    // The dashboard shows every node with its load.
    bounded("bo's dashboard lists three nodes", || {
        nodes[1].get("/admin/api/stats").1["cluster"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3)
    });
    let (code, stats) = nodes[1].get("/admin/api/stats");
    assert_eq!(code, 200);
    assert_eq!(
        ids(stats["cluster"]["nodes"].as_array().unwrap()),
        ["ann", "bo", "cy"]
    );
    assert_eq!(stats["cluster"]["redis"], true);

    // A drained node leaves as it stops, not a lease later.
    let mut ann = nodes.remove(0);
    ann.signal(libc::SIGTERM);
    assert!(ann.child.wait().unwrap().success());
    assert_eq!(ids(&status(&url)), ["bo", "cy"], "gone at once");

    // A killed node drops out when its lease ends.
    let killed = Instant::now();
    nodes[0].signal(libc::SIGKILL);
    let _ = nodes[0].child.wait();
    assert_eq!(ids(&status(&url)), ["bo", "cy"], "still within its lease");
    bounded("the killed node dropped out", || {
        ids(&status(&url)) == ["cy"]
    });
    assert!(killed.elapsed() >= Duration::from_millis(300));
}

/// A node whose Redis goes away keeps serving but is not ready (its rooms would miss the
/// other nodes); when Redis is back it is listed and ready again.
#[test]
fn a_node_without_its_redis_is_not_ready_until_redis_is_back() {
    let redis = Redis::start();
    let (url, port) = (redis.url(), redis.port);
    let node = Node::start(&url, "solo");
    bounded("listed", || status(&url).len() == 1);
    assert_eq!(node.ready().0, 200);
    drop(redis);
    bounded("not ready without redis", || node.ready().0 == 503);
    let (_, body) = node.ready();
    assert_eq!(body["cluster"]["redis"], false);
    assert_eq!(body["draining"], false);
    // Still serving its own players.
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = node.addr;
    common::run(move || async move {
        common::still_serving(addr).await;
        tx.send(()).unwrap();
    });
    rx.recv().unwrap();
    // Back on the same port (empty: it kept nothing): the node lists itself again.
    let redis = Redis::start_on(port);
    bounded("ready again", || node.ready().0 == 200);
    bounded("listed again", || ids(&status(&redis.url())) == ["solo"]);
}
