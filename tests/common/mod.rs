//! Shared test harness: an in-process server on 127.0.0.1:0 and a bounded glommio runner.
#![allow(dead_code)]

pub mod cluster;
pub mod eio;
pub mod matchmaking;
pub mod node;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use corelay::client::{
    Client, ClientConfig, ClientError, ClientReceiver, ClientSender, PayloadKind,
};
use corelay::{Config, Server};

/// Every test body gets this long before it fails instead of hanging.
pub const TEST_BUDGET: Duration = Duration::from_secs(60);

/// A server with `shards` shards on an ephemeral port, tweaked by `tweak`.
pub fn server(shards: usize, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        ..Config::default()
    };
    tweak(&mut config);
    Server::start(config).expect("server starts")
}

/// Runs `body` on a fresh glommio executor; fails the test if it takes over [`TEST_BUDGET`].
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            glommio::timer::timeout(TEST_BUDGET, async move {
                body().await;
                Ok(())
            })
            .await
            .expect("test exceeded its time budget");
        })
        .expect("executor starts");
    handle.join().expect("test body panicked");
}

/// Longest wait for one expected thing before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// `fut`, failing the test if it takes over [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    glommio::timer::timeout(WAIT, async { Ok(fut.await) })
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// A room name whose home is `shard` of `shards` (the room's numbering, its joins and its
/// host live there).
pub fn room_homed_on(shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("room-{i}"))
        .find(|r| corelay::relay::home_shard(r, shards) == shard)
        .expect("some name hashes to every shard")
}

/// The address in `corelay serve`'s start line, "corelay listening on 127.0.0.1:PORT with
/// N shards on cpus [..]", which tests that run the binary read first.
pub fn start_line_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected start line: {line:?}"))
}

/// The native endpoint URL of a server.
pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// A connected, welcomed client.
pub async fn connect(addr: SocketAddr) -> Client {
    Client::connect(&ClientConfig::new(url(addr)))
        .await
        .expect("client connects")
}

/// Connects until a client lands on `shard` (the kernel spreads connections over the
/// SO_REUSEPORT listeners by hash, so a few tries suffice).
pub async fn connect_on_shard(addr: SocketAddr, shard: u32) -> Client {
    for _ in 0..200 {
        let c = connect(addr).await;
        if c.shard() == shard {
            return c;
        }
        let _ = c.close().await;
    }
    panic!("no connection landed on shard {shard} in 200 tries");
}

/// A flood into `room` from `tx` at 200 messages a second, paced so that a rate limit, not
/// its own unread answers (a slow consumer), is what ends it. It stops when its connection
/// ends or when the flag it returns is set.
pub fn paced_flood(tx: ClientSender, room: &'static str) -> (Rc<Cell<bool>>, glommio::Task<()>) {
    let stop = Rc::new(Cell::new(false));
    let flooding = Rc::clone(&stop);
    let flood = glommio::spawn_local(async move {
        while !flooding.get() {
            if tx
                .send(room, "spam", b"x", PayloadKind::Binary)
                .await
                .is_err()
            {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    });
    (stop, flood)
}

/// The close code and reason `rx`'s connection ends with (what comes before is skipped),
/// within [`WAIT`].
pub async fn close_of(rx: &mut ClientReceiver) -> Option<(u16, String)> {
    within("the close", async {
        loop {
            match rx.next_event().await {
                Ok(_) => continue,
                Err(ClientError::Closed(c)) => return c,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
}

/// Asserts the server still serves: a new client connects and gets a pong.
pub async fn still_serving(addr: SocketAddr) {
    let mut c = connect(addr).await;
    c.ping().await.expect("pong from a healthy server");
    let _ = c.close().await;
}

/// Waits (bounded) until the server's stats satisfy `cond`; stats are counted by the shard
/// as it closes a connection, a moment after the client saw the close.
pub fn wait_for_stats(srv: &Server, cond: impl Fn(&corelay::Stats) -> bool) -> corelay::Stats {
    wait_for_registry(&srv.stats_registry(), cond)
}

/// [`wait_for_stats`] from a registry (for a test body that runs apart from its server).
pub fn wait_for_registry(
    registry: &corelay::stats::StatsRegistry,
    cond: impl Fn(&corelay::Stats) -> bool,
) -> corelay::Stats {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = registry.snapshot();
        if cond(&stats) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
