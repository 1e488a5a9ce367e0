//! End-to-end: `matchmake` against an in-process corelay on 127.0.0.1:0. Every ticket is
//! accounted for, every matched room is played with no loss, and every run ends by itself.

mod common;

use std::time::{Duration, Instant};

use common::run_bounded;
use corelay::config::{MatchmakingConfig, QueueConfig};
use corelay::matchmaking::MatchSize;
use corelay::{Config, Server};
use corelay_loadgen::tickets::TicketPlan;
use corelay_loadgen::{Options, Protocol, Scenario};

fn server(shards: usize, queues: &[(&str, QueueConfig)]) -> Server {
    let mut matchmaking = MatchmakingConfig::default();
    for (name, queue) in queues {
        matchmaking.queues.insert((*name).to_owned(), queue.clone());
    }
    Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        matchmaking,
        ..Config::default()
    })
    .expect("server starts")
}

fn options(server: &Server, protocol: Protocol) -> Options {
    let mut o = Options::new(
        Scenario::Matchmake,
        protocol,
        format!("ws://{}{}", server.local_addr(), protocol.default_path()),
    );
    o.clients = 40;
    o.rate = 20.0;
    o.warmup = Duration::from_millis(500);
    o.duration = Duration::from_secs(2);
    // The drain ends as soon as every owed delivery has arrived; the long limit only keeps
    // a loaded CI machine from turning slowness into loss.
    o.drain = Duration::from_secs(10);
    o.tickets = TicketPlan {
        rate: 200.0,
        // Every skill within the default queue's first window (100): each ticket matches
        // at the first pass that sees a partner, so time to match stays within a pass
        // or two and the test needs no widening.
        skill: "0..50".parse().unwrap(),
        ..TicketPlan::default()
    };
    o
}

#[test]
fn every_ticket_matches_and_every_matched_room_is_played() {
    let server = server(1, &[]);
    let mut o = options(&server, Protocol::Native);
    // The server runs in this process, so its /proc figures are ours; that is enough to
    // check that they are read and reported.
    o.server_pid = Some(std::process::id());
    o.slo = Some("loss=0".parse().unwrap());
    let started = Instant::now();
    let outcome = run_bounded(o);
    let r = &outcome.report;
    let m = r
        .matchmaking
        .as_ref()
        .expect("matchmake reports its matches");

    // 40 tickets due over 0.2 s, 1v1: 20 matches, every ticket matched once.
    assert_eq!(r.connections.established, 40);
    assert_eq!(m.tickets.queued, 40);
    assert_eq!(m.tickets.matched, 40, "{:?}", m.tickets);
    assert_eq!(m.tickets.resolved(), 40);
    assert_eq!(m.matches, 20);
    assert_eq!(m.players_per_match, 2.0);
    assert_eq!(m.time_to_match.count, 40);
    // A pass every 100 ms: matches come within a few passes, not after any widening.
    assert!(
        m.time_to_match.max_us < 2_000_000,
        "time to match {:?}",
        m.time_to_match
    );
    assert!(m.span_s > 0.0 && m.matches_per_s > 0.0);
    assert!(m.peak_matches_per_s > 0.0 && m.peak_matches_per_s <= 20.0);
    assert!(m.server_cpu_s.is_some());
    assert!(
        !r.warnings.iter().any(|w| w.contains("not matched")),
        "{:?}",
        r.warnings
    );

    // Then every player sends 20 msg/s for 2 s to its one opponent, and all of it arrives.
    assert_eq!((r.settings.rooms, r.settings.senders), (20, 40));
    assert_eq!(r.messages.sent, 40 * 20 * 2);
    assert_eq!(r.messages.expected, r.messages.sent);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.messages.duplicated, 0);
    assert_eq!(r.latency.count, r.messages.delivered);
    assert!(r.slo.as_ref().is_some_and(|s| s.passed), "{:?}", r.slo);
    assert!(r.table().contains("time to match"));
    assert!(started.elapsed() < Duration::from_secs(20));

    // The figures are in the JSON, which reads back.
    let dir = std::env::temp_dir().join(format!("corelay-loadgen-mm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("matchmake.json");
    corelay_loadgen::write_json(r, &path).unwrap();
    let back = corelay_loadgen::read_json(&path).unwrap();
    let back = back.matchmaking.expect("matchmaking in the JSON");
    assert_eq!(back.tickets, m.tickets);
    assert_eq!(back.time_to_match.p99_us, m.time_to_match.p99_us);
    std::fs::remove_dir_all(&dir).unwrap();

    server.shutdown();
    server.join().unwrap();
}

#[test]
fn socketio_players_match_in_fours_across_shards() {
    // Two shards: a queue lives on one, players and match rooms on both.
    let quad = QueueConfig {
        match_size: MatchSize { min: 4, max: 4 },
        ..QueueConfig::default()
    };
    let server = server(2, &[("quad", quad)]);
    let mut o = options(&server, Protocol::SocketIo);
    o.tickets.queue = "quad".into();
    o.tickets.regions = vec!["eu".into()];
    o.threads = 2;
    let r = run_bounded(o).report;
    let m = r.matchmaking.expect("matchmake reports its matches");
    assert_eq!(m.tickets.matched, 40, "{:?}", m.tickets);
    assert_eq!(m.matches, 10);
    assert_eq!(m.players_per_match, 4.0);
    // Each message is owed to the 3 other players of its match.
    assert_eq!(r.messages.sent, 40 * 20 * 2);
    assert_eq!(r.messages.expected, r.messages.sent * 3);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn tickets_that_cannot_match_are_counted_and_the_run_still_ends() {
    let server = server(1, &[]);

    // No such queue: every request is refused, by name, and nothing is played.
    let mut o = options(&server, Protocol::Native);
    o.clients = 4;
    o.tickets.queue = "nosuch".into();
    let r = run_bounded(o).report;
    let m = r.matchmaking.expect("matchmake reports its tickets");
    assert_eq!((m.tickets.queued, m.tickets.refused), (4, 4));
    assert_eq!(m.tickets.reasons.get("unknown_queue"), Some(&4));
    assert_eq!(m.matches, 0);
    assert_eq!(r.messages.sent, 0);

    // Three players for 1v1: one waits alone until the generator's bound gives up on it,
    // long before the queue's 60 s timeout; the other two play.
    let mut o = options(&server, Protocol::Native);
    o.clients = 3;
    o.match_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let r = run_bounded(o).report;
    let m = r.matchmaking.expect("matchmake reports its tickets");
    assert_eq!((m.tickets.matched, m.tickets.unanswered), (2, 1));
    assert!(r.warnings.iter().any(|w| w.contains("not matched")));
    assert_eq!(r.settings.senders, 2);
    assert_eq!(r.messages.expected, r.messages.sent);
    assert_eq!(r.messages.lost, 0);
    assert!(started.elapsed() < Duration::from_secs(20));
    server.shutdown();
    server.join().unwrap();
}
