//! End-to-end: `--protocol socketcluster` against an in-process corelay on 127.0.0.1:0,
//! whose `/socketcluster/` endpoint serves each room as a channel.

mod common;

use std::time::Duration;

use common::run_bounded;
use corelay::socketcluster::SocketClusterConfig;
use corelay::{Config, Server};
use corelay_loadgen::{Options, Protocol, Scenario};

fn server(socketcluster: SocketClusterConfig) -> Server {
    Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        socketcluster,
        ..Config::default()
    })
    .expect("server starts")
}

fn options(scenario: Scenario, server: &Server) -> Options {
    let mut o = Options::new(
        scenario,
        Protocol::SocketCluster,
        format!("ws://{}/socketcluster/", server.local_addr()),
    );
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    o.rate = 20.0;
    // The drain ends as soon as every owed delivery has arrived; the long limit only keeps
    // a loaded CI machine from turning slowness into loss.
    o.drain = Duration::from_secs(10);
    o
}

#[test]
fn socketcluster_relay_delivers_every_publish_to_every_subscriber() {
    let server = server(SocketClusterConfig::default());
    let mut o = options(Scenario::Relay, &server);
    // The server runs in this process: its /proc figures are ours, enough to check that
    // they are read.
    o.server_pid = Some(std::process::id());
    o.clients = 10;
    o.room_size = 5;
    o.slo = Some("loss=0".parse().unwrap());
    let r = run_bounded(o).report;
    // 10 publishers x 20 msg/s x 1 s, each owed to the 5 subscribers of its channel: a
    // SocketCluster publish reaches the publisher too.
    assert_eq!(r.protocol, "socketcluster");
    assert_eq!(r.connections.established, 10);
    assert_eq!(r.connections.failed + r.connections.dropped, 0);
    assert_eq!(r.messages.sent, 200);
    assert_eq!(r.messages.expected, 200 * 5);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.messages.duplicated, 0);
    assert_eq!(r.messages.out_of_order, 0);
    assert_eq!(r.latency.count, r.messages.delivered);
    assert_eq!(r.pacing_lag.count, 200);
    assert!(r.slo.as_ref().is_some_and(|s| s.passed), "{:?}", r.slo);
    assert!(r.server.as_ref().is_some_and(|s| s.cpu_s >= 0.0));
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn subscribers_that_only_listen_answer_the_pings_of_either_version() {
    // Pings every 100 ms, and a client silent for 400 ms is closed (4001): in `fanout` the
    // members other than the publisher send nothing but their answers to the pings, so
    // they stay only if every ping is answered, in the form of the server's version.
    for protocol_version in [1, 2] {
        let server = server(SocketClusterConfig {
            protocol_version,
            ping_interval_ms: 100,
            ping_timeout_ms: 400,
            ..SocketClusterConfig::default()
        });
        let mut o = options(Scenario::Fanout, &server);
        o.clients = 20;
        o.room_size = 10;
        o.warmup = Duration::from_millis(500);
        let r = run_bounded(o).report;
        // Two channels, one publisher each, 20 messages each in the window, 10 subscribers.
        assert_eq!(
            r.connections.dropped, 0,
            "version {protocol_version}: {:?}",
            r.connections.drops
        );
        assert_eq!(r.messages.sent, 40);
        assert_eq!(r.messages.expected, 40 * 10);
        assert_eq!(r.messages.delivered, r.messages.expected);
        assert_eq!(r.messages.fanout_complete, 40);
        server.shutdown();
        server.join().unwrap();
    }
}

#[test]
fn a_refused_subscription_is_a_failed_connection_with_its_reason() {
    let server = Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        max_room_members: 3,
        ..Config::default()
    })
    .expect("server starts");
    let mut o = options(Scenario::Idle, &server);
    o.clients = 4;
    o.room_size = 4;
    o.duration = Duration::from_millis(200);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.established, 3);
    assert_eq!(r.connections.failed, 1);
    let reasons: Vec<&String> = r.connections.failures.keys().collect();
    assert!(
        reasons[0].starts_with("subscribe refused"),
        "{:?}",
        r.connections.failures
    );
    server.shutdown();
    server.join().unwrap();
}
