//! `--spin-us`: a load thread spins for that long after its last work, then sleeps.
//!
//! Alone in its test binary because it reads the CPU use of the whole process (the
//! report's generator figures), which tests running beside it would add to.

use std::sync::mpsc;
use std::time::Duration;

use corelay::{Config, Server};
use corelay_loadgen::{Options, Protocol, Scenario};

#[test]
fn an_idle_load_thread_sleeps_once_its_spin_is_over() {
    let server = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..Config::default()
    })
    .expect("server starts");
    let mut o = Options::new(
        Scenario::Idle,
        Protocol::Native,
        format!("ws://{}/ws", server.local_addr()),
    );
    o.clients = 10;
    o.room_size = 5;
    o.spin = Duration::from_millis(2);
    o.duration = Duration::from_secs(1);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(corelay_loadgen::run(&o));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the run ended within its budget")
        .expect("the run succeeded")
        .report;
    assert_eq!(r.connections.established, 10);
    // Nothing arrives in idle: a thread that spun for good would use its whole core.
    assert!(
        r.generator.utilization < 0.5,
        "the load thread kept spinning: {:.0}% of its core",
        r.generator.utilization * 100.0
    );
    server.shutdown();
    server.join().unwrap();
}
