//! `--spin-us`: a load thread spins for that long after its last work, then sleeps, and
//! the report does not take busy-polling for a saturated generator.
//!
//! Alone in its test binary because it reads the CPU use of the whole process (the
//! report's generator figures), which tests running beside it would add to.

mod common;

use std::time::Duration;

use corelay::{Config, Server};
use corelay_loadgen::{Options, Protocol, Report, Scenario};

fn run(o: Options) -> Report {
    common::run_bounded(o).report
}

#[test]
fn a_load_thread_spins_only_for_its_spin_and_says_nothing_of_it() {
    let server = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..Config::default()
    })
    .expect("server starts");
    let url = format!("ws://{}/ws", server.local_addr());

    // Nothing arrives in idle: a thread that spun for good would use its whole core.
    let mut o = Options::new(Scenario::Idle, Protocol::Native, url.clone());
    o.clients = 10;
    o.room_size = 5;
    o.spin = Duration::from_millis(2);
    o.duration = Duration::from_secs(1);
    let r = run(o);
    assert_eq!(r.connections.established, 10);
    assert!(
        r.generator.utilization < 0.5,
        "the load thread kept spinning: {:.0}% of its core",
        r.generator.utilization * 100.0
    );

    // Sends every 50 ms and a spin of 100 ms: the thread busy-polls on purpose, which is
    // no sign of a saturated generator.
    let mut o = Options::new(Scenario::Relay, Protocol::Native, url);
    o.clients = 10;
    o.room_size = 5;
    o.rate = 20.0;
    o.spin = Duration::from_millis(100);
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run(o);
    assert_eq!(r.messages.lost, 0);
    assert!(
        !r.warnings.iter().any(|w| w.contains("generator used")),
        "{:?}",
        r.warnings
    );
    server.shutdown();
    server.join().unwrap();
}
