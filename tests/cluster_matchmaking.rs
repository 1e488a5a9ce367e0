//! Matchmaking across nodes (issue 12, item 4): queues in Redis, one node at a time running
//! a queue's matching pass under a lease. Real `redis-server` processes (one, or a 3-master
//! Redis Cluster) and corelay nodes on 127.0.0.1, each started here and stopped by its
//! PID: players queued on different nodes are matched into one room and hear each other,
//! parties span nodes, cancels reach every node, a killed lease holder is replaced and its
//! players' tickets dropped, no ticket is in two matches while the lease moves, and a
//! Redis that stops answering pauses the queues without losing a ticket.
//!
//! `redis-server` comes from the README's test command (Debian's package); a missing one
//! fails the test.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::matchmaking::{matched, next_outcome, outcome, server_error, ticket};
use common::{connect, run, within};
use corelay::client::{Client, PayloadKind, ServerEvent};
use corelay::config::QueueConfig;
use corelay::matchmaking::MatchSize;
use corelay::proto::native::{ErrorCode, LeaveReason, Property, TicketSpec, UnqueueReason};

/// A ticket of `queue` whose `mode` is `mode`.
fn moded(queue: &str, mode: &str) -> TicketSpec {
    TicketSpec {
        properties: vec![Property {
            name: "mode".into(),
            value: mode.into(),
        }],
        ..ticket(queue, 1000.0)
    }
}

/// A queue of `min..=max` players whose windows take anyone at once.
fn open_queue(min: usize, max: usize) -> QueueConfig {
    QueueConfig {
        match_size: MatchSize { min, max },
        skill_window: 100_000.0,
        max_window: 100_000.0,
        ..QueueConfig::default()
    }
}

/// An in-process node of the cluster on `url` with two shards and the queues `duo` (two
/// players), `trio` (three) and `brawl` (two to four), tweaked by `tweak`.
fn mm_node(url: &str, id: &str, tweak: impl FnOnce(&mut corelay::Config)) -> corelay::Server {
    let (url, id) = (url.to_owned(), id.to_owned());
    common::server(2, move |c| {
        c.cluster.redis = Some(url);
        c.cluster.node_id = Some(id);
        c.cluster.lease_ms = 1_000;
        c.matchmaking.queues = BTreeMap::from([
            ("duo".to_owned(), open_queue(2, 2)),
            ("trio".to_owned(), open_queue(3, 3)),
            ("brawl".to_owned(), open_queue(2, 4)),
        ]);
        tweak(c);
    })
}

/// In-process nodes `ids` of the cluster on `url` ([`mm_node`]), and their addresses.
fn mm_nodes(
    url: &str,
    ids: &[&str],
    tweak: fn(&mut corelay::Config),
) -> (Vec<corelay::Server>, Vec<SocketAddr>) {
    let nodes: Vec<_> = ids.iter().map(|id| mm_node(url, id, tweak)).collect();
    let addrs = nodes.iter().map(|n| n.local_addr()).collect();
    (nodes, addrs)
}

/// The next message (not a notice) a client receives in `room`: its sender and payload.
async fn next_message(c: &mut Client, in_room: &str) -> (String, Vec<u8>) {
    loop {
        match within("a message", c.next_event()).await.expect("event") {
            ServerEvent::Message {
                room,
                from,
                payload,
                ..
            } if room == in_room => return (from, payload.to_vec()),
            ServerEvent::MemberJoined { .. } => panic!("a match has no join notices"),
            _ => {}
        }
    }
}

/// A sync connection to a Redis.
fn redis_at(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .unwrap()
}

/// Tickets waiting or gathering in `queue`, as Redis holds them.
fn waiting_in(url: &str, queue: &str) -> (usize, usize) {
    let mut con = redis_at(url);
    let prefix = corelay::cluster::queues::queue_prefix(queue);
    let tickets: usize = redis::cmd("HLEN")
        .arg(format!("{prefix}:tickets"))
        .query(&mut con)
        .unwrap();
    let seats: usize = redis::cmd("HLEN")
        .arg(format!("{prefix}:seats"))
        .query(&mut con)
        .unwrap();
    (tickets, seats)
}

/// Three players, one per node, queue for a match of three: all are told the same room
/// and roster, each one's first message (sent the moment it is told) reaches both others,
/// and a leave is told with the room's count across nodes, as on one node.
#[test]
fn players_on_three_nodes_are_matched_into_one_room_and_hear_each_other() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b", "c"], |_| {});
    run(move || async move {
        let mut players = Vec::new();
        for &addr in &addrs {
            players.push(connect(addr).await);
        }
        let mut tickets = Vec::new();
        for (i, p) in players.iter_mut().enumerate() {
            tickets.push(p.queue(ticket("trio", 1000.0 + i as f64)).await.unwrap());
        }
        let ids: BTreeSet<u64> = tickets.iter().copied().collect();
        assert_eq!(ids.len(), 3, "one ticket each: {tickets:?}");
        let mut seen = Vec::new();
        for p in &mut players {
            seen.push(matched(&next_outcome(p).await));
        }
        let (room, roster) = seen[0].clone();
        assert!(room.starts_with('#'), "{room}");
        let names: Vec<String> = players.iter().map(|p| p.player().to_owned()).collect();
        assert_eq!(roster, names, "oldest ticket first, one roster for all");
        assert!(seen.iter().all(|s| *s == (room.clone(), roster.clone())));

        // Each speaks the moment it is told; each hears both others.
        for (i, p) in players.iter_mut().enumerate() {
            p.send(&room, "hi", format!("{i}").as_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        for (i, p) in players.iter_mut().enumerate() {
            let mut heard = BTreeMap::new();
            for _ in 0..2 {
                let (from, payload) = next_message(p, &room).await;
                heard.insert(from, payload);
            }
            let expected: BTreeMap<String, Vec<u8>> = (0..3)
                .filter(|&j| j != i)
                .map(|j| (names[j].clone(), format!("{j}").into_bytes()))
                .collect();
            assert_eq!(heard, expected, "player {i}");
        }

        // The third leaves: the others hear it with the count across nodes.
        let mut cy = players.pop().unwrap();
        cy.leave(&room).await.unwrap();
        for p in &mut players {
            match within("the leave", p.next_event()).await.unwrap() {
                ServerEvent::MemberLeft {
                    room: r,
                    player,
                    members,
                    reason,
                } => assert_eq!(
                    (r.as_str(), player.as_str(), members, reason),
                    (room.as_str(), names[2].as_str(), 2, LeaveReason::Left)
                ),
                other => panic!("{other:?}"),
            }
        }
        // Over: the ticket cannot be cancelled any more.
        let refused = players[0].cancel_ticket(tickets[0]).await.unwrap_err();
        assert_eq!(server_error(refused), ErrorCode::NotQueued as u16);

        // The host is the roster's first on every node: when it leaves, the second, on
        // another node, is told it hosts the room now.
        let host = players.remove(0);
        host.close().await.unwrap();
        let mut told = None;
        while told.is_none() {
            if let ServerEvent::Host { player, .. } =
                within("the new host", players[0].next_event())
                    .await
                    .unwrap()
            {
                told = Some(player);
            }
        }
        assert_eq!(told.as_deref(), Some(names[1].as_str()));

        // One node's pass claimed the match; each node put its player's ticket in Redis.
        let mut claimed = 0;
        for &addr in &addrs {
            let text = common::eio::request(addr, "GET", "/metrics", "", "")
                .await
                .body;
            let value = |name: &str| -> u64 {
                let line = text.lines().find(|l| l.starts_with(name));
                line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or_else(|| panic!("{name} missing"))
            };
            assert_eq!(value("corelay_cluster_matchmaking_tickets_total"), 1);
            assert_eq!(value("corelay_cluster_matchmaking_malformed_total"), 0);
            claimed += value("corelay_cluster_matches_total");
        }
        assert_eq!(claimed, 1);
    });
    assert_eq!(waiting_in(&url, "trio"), (0, 0), "nothing left in redis");
}

/// A party whose leader is on one node and whose friend is on another is one ticket: both
/// get its id, and it is matched with a player of a third node, the leader hosting.
#[test]
fn a_party_across_two_nodes_is_one_ticket_matched_with_a_third_node() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b", "c"], |_| {});
    let check = url.clone();
    run(move || async move {
        let mut leader = connect(addrs[0]).await;
        let mut friend = connect(addrs[1]).await;
        let mut solo = connect(addrs[2]).await;
        let party = vec![leader.player().to_owned(), friend.player().to_owned()];
        let party_ticket = |skill| TicketSpec {
            party: party.clone(),
            ..ticket("trio", skill)
        };
        // The friend comes first: the party gathers in Redis until its leader comes.
        let id = friend.queue(party_ticket(900.0)).await.unwrap();
        assert_eq!(waiting_in(&check, "trio"), (0, 1), "gathering, not waiting");
        let refused = solo
            .queue(TicketSpec {
                party: vec![leader.player().to_owned(), solo.player().to_owned()],
                ..ticket("trio", 0.0)
            })
            .await
            .unwrap_err();
        assert_eq!(
            server_error(refused),
            ErrorCode::InvalidValue as u16,
            "another list under the same leader"
        );
        assert_eq!(leader.queue(party_ticket(1100.0)).await.unwrap(), id);
        assert_eq!(waiting_in(&check, "trio"), (1, 2), "whole: one ticket");
        solo.queue(ticket("trio", 1000.0)).await.unwrap();
        let mut rooms = Vec::new();
        for p in [&mut leader, &mut friend, &mut solo] {
            rooms.push(matched(&next_outcome(p).await));
        }
        let expected = vec![
            leader.player().to_owned(),
            friend.player().to_owned(),
            solo.player().to_owned(),
        ];
        assert!(
            rooms.iter().all(|r| r.1 == expected && r.0 == rooms[0].0),
            "{rooms:?}"
        );
        // They play: the solo player's message reaches both members of the party.
        let room = rooms[0].0.clone();
        solo.send(&room, "gg", b"1", PayloadKind::Binary)
            .await
            .unwrap();
        for p in [&mut leader, &mut friend] {
            assert_eq!(next_message(p, &room).await.0, solo.player());
        }
    });
    assert_eq!(waiting_in(&url, "trio"), (0, 0));
}

/// A cancel takes a ticket out of Redis for every node: a cancelled player is never
/// matched, a party member's cancel is told to the member on the other node, and a cancel
/// racing a claim has exactly one winner.
#[test]
fn a_cancel_on_one_node_ends_the_ticket_on_every_node() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b", "c"], |_| {});
    let check = url.clone();
    run(move || async move {
        // A party across nodes, cancelled by the friend: the leader is told who.
        let mut leader = connect(addrs[0]).await;
        let mut friend = connect(addrs[1]).await;
        let party = vec![leader.player().to_owned(), friend.player().to_owned()];
        let spec = TicketSpec {
            party,
            ..ticket("trio", 0.0)
        };
        let id = leader.queue(spec.clone()).await.unwrap();
        assert_eq!(friend.queue(spec).await.unwrap(), id);
        assert_eq!(friend.cancel_ticket(0).await.unwrap(), id);
        match next_outcome(&mut leader).await {
            ServerEvent::Unqueued { ticket, reason, by } => {
                assert_eq!(
                    (ticket, reason, by.as_deref()),
                    (id, UnqueueReason::Cancelled, Some(friend.player()))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(waiting_in(&check, "trio"), (0, 0));

        // Queued then cancelled on one node: players of two others meet each other.
        let mut ann = connect(addrs[0]).await;
        let a = ann.queue(ticket("duo", 0.0)).await.unwrap();
        assert_eq!(ann.cancel_ticket(a).await.unwrap(), a);
        let refused = ann.cancel_ticket(a).await.unwrap_err();
        assert_eq!(server_error(refused), ErrorCode::NotQueued as u16);
        let mut bo = connect(addrs[1]).await;
        let mut cy = connect(addrs[2]).await;
        bo.queue(ticket("duo", 0.0)).await.unwrap();
        cy.queue(ticket("duo", 0.0)).await.unwrap();
        let (room_b, players) = matched(&next_outcome(&mut bo).await);
        assert_eq!(players, [bo.player(), cy.player()]);
        assert_eq!(matched(&next_outcome(&mut cy).await).0, room_b);

        // A cancel racing the claim: either the cancel wins (never matched) or the match
        // does (the cancel is refused and the match told), never both nor neither.
        let (mut won, mut lost) = (0, 0);
        for round in 0..12 {
            let mut x = connect(addrs[round % 3]).await;
            let mut y = connect(addrs[(round + 1) % 3]).await;
            let tx = x.queue(ticket("duo", 0.0)).await.unwrap();
            y.queue(ticket("duo", 0.0)).await.unwrap();
            // Let the pass come closer on some rounds.
            glommio::timer::sleep(Duration::from_millis(7 * (round as u64 % 15))).await;
            match x.cancel_ticket(tx).await {
                Ok(t) => {
                    assert_eq!(t, tx);
                    won += 1;
                    // y waits alone: it cancels too, and was never matched.
                    y.cancel_ticket(0).await.unwrap();
                }
                Err(e) => {
                    assert_eq!(server_error(e), ErrorCode::NotQueued as u16);
                    lost += 1;
                    let (rx, _) = matched(&next_outcome(&mut x).await);
                    let (ry, _) = matched(&next_outcome(&mut y).await);
                    assert_eq!(rx, ry);
                }
            }
            assert_eq!(waiting_in(&check, "duo"), (0, 0), "round {round}");
        }
        assert_eq!(won + lost, 12);
    });
    assert_eq!(waiting_in(&url, "duo"), (0, 0));
}

/// The configuration file of a `corelay serve` node with a `duo` queue keyed by `mode`.
fn duo_config() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "corelay-cluster-mm-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(
        &path,
        "[matchmaking.queues.duo]\nmatch_size = 2\nproperties = [\"mode\"]\n",
    )
    .unwrap();
    path
}

/// A `corelay serve` node (one shard, a lease of 1 s) with the configuration file
/// `config`, stopped by its PID when dropped.
fn serve(url: &str, id: &str, config: &std::path::Path) -> Node {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--config",
        ])
        .arg(config)
        .env("CORELAY_CLUSTER_REDIS", url)
        .env("CORELAY_CLUSTER_NODE_ID", id)
        .env("CORELAY_CLUSTER_LEASE_MS", "1000")
        .env("CORELAY_DRAIN_TIMEOUT_MS", "200")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = common::start_line_addr(&line);
    Node { child, addr }
}

/// The holder of `queue`'s pass lease, an incarnation, if any.
fn lease_holder(url: &str, queue: &str) -> Option<u64> {
    let key = format!("{}:lease", corelay::cluster::queues::queue_prefix(queue));
    let holder: Option<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut redis_at(url))
        .unwrap();
    holder.and_then(|h| h.parse().ok())
}

/// The incarnation of each live node, by id.
fn incarnations(url: &str) -> HashMap<String, u64> {
    status(url)
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["incarnation"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The node running the passes is killed (SIGKILL) while players of the other nodes wait:
/// another node takes the lease once it runs out and matches them, and the ticket of the
/// killed node's player is dropped once that node's lease has ended, never matched.
#[test]
fn a_killed_lease_holder_is_replaced_and_its_players_tickets_are_dropped() {
    let redis = Redis::start();
    let url = redis.url();
    let config = duo_config();
    // The first node alone takes the lease.
    let mut ann = serve(&url, "ann", &config);
    bounded("ann listed", || incarnations(&url).contains_key("ann"));
    let ann_node = incarnations(&url)["ann"];
    bounded("ann holds the lease", || {
        lease_holder(&url, "duo") == Some(ann_node)
    });
    let bo = serve(&url, "bo", &config);
    let cy = serve(&url, "cy", &config);
    bounded("three nodes listed", || incarnations(&url).len() == 3);
    let addrs = [ann.addr, bo.addr, cy.addr];
    let (to_test, from_test) = std::sync::mpsc::channel::<&'static str>();
    let (to_body, from_main) = std::sync::mpsc::channel::<()>();
    let body = std::thread::spawn(move || {
        run(move || async move {
            // Each waits alone: three modes.
            let mut a1 = connect(addrs[0]).await;
            let mut b1 = connect(addrs[1]).await;
            let mut c1 = connect(addrs[2]).await;
            a1.queue(moded("duo", "z")).await.unwrap();
            b1.queue(moded("duo", "x")).await.unwrap();
            c1.queue(moded("duo", "y")).await.unwrap();
            to_test.send("queued").unwrap();
            // The test kills ann, the lease's holder.
            while from_main.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let mut b2 = connect(addrs[1]).await;
            let mut c2 = connect(addrs[2]).await;
            b2.queue(moded("duo", "y")).await.unwrap();
            c2.queue(moded("duo", "x")).await.unwrap();
            let (r1, p1) = matched(&next_outcome(&mut b1).await);
            assert_eq!(p1, [b1.player(), c2.player()]);
            assert_eq!(matched(&next_outcome(&mut c2).await).0, r1);
            let (r2, p2) = matched(&next_outcome(&mut c1).await);
            assert_eq!(p2, [c1.player(), b2.player()]);
            assert_eq!(matched(&next_outcome(&mut b2).await).0, r2);
            // Across nodes, they play.
            b1.send(&r1, "gg", b"1", PayloadKind::Binary).await.unwrap();
            assert_eq!(next_message(&mut c2, &r1).await.0, b1.player());
            drop(a1);
            to_test.send("matched").unwrap();
        });
    });
    assert_eq!(from_test.recv().unwrap(), "queued");
    assert_eq!(waiting_in(&url, "duo"), (3, 3));
    let killed = Instant::now();
    ann.signal(libc::SIGKILL);
    let _ = ann.child.wait();
    to_body.send(()).unwrap();
    assert_eq!(from_test.recv().unwrap(), "matched");
    body.join().unwrap();
    let holder = lease_holder(&url, "duo");
    let live = incarnations(&url);
    assert!(
        holder.is_some_and(|h| h == live["bo"] || h == live["cy"]),
        "{holder:?} {live:?}"
    );
    // The killed node's ticket: dropped once its lease (1 s) has ended and a lease more.
    bounded("the killed node's ticket dropped", || {
        waiting_in(&url, "duo") == (0, 0)
    });
    assert!(killed.elapsed() >= Duration::from_millis(1_000));
    drop((bo, cy));
    let _ = std::fs::remove_file(config);
}

/// Sixty players on three nodes queue at once for matches of two to four while a thread
/// keeps taking the pass lease away (so that passes move between nodes, and a node may
/// briefly believe it holds a lease another has taken): every player is matched exactly
/// once, every room's players all got the same roster, and no room has a player twice.
#[test]
fn no_ticket_is_in_two_matches_among_sixty_players_while_the_lease_moves() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b", "c"], |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let key = format!("{}:lease", corelay::cluster::queues::queue_prefix("brawl"));
            let mut con = redis_at(&url);
            let mut taken = 0;
            while !stop.load(Ordering::Relaxed) {
                let gone: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
                taken += gone;
                std::thread::sleep(Duration::from_millis(25));
            }
            taken
        })
    };
    run(move || async move {
        let outcomes: Rc<RefCell<Vec<(String, ServerEvent)>>> = Rc::default();
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        for i in 0..60 {
            clients.push(connect(addrs[i % 3]).await);
        }
        for (i, mut c) in clients.into_iter().enumerate() {
            let outcomes = Rc::clone(&outcomes);
            tasks.push(glommio::spawn_local(async move {
                c.queue(ticket("brawl", (i * 37 % 100) as f64))
                    .await
                    .unwrap();
                let e = outcome(&mut c).await;
                outcomes.borrow_mut().push((c.player().to_owned(), e));
                c
            }));
        }
        let mut waiting = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(8);
        // A match of two to four leaves one player alone when the others are taken in
        // fours: one more player completes its match.
        while outcomes.borrow().len() < 60 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        let told = outcomes.borrow().len();
        assert!(told >= 59, "{told} of 60 matched");
        if told == 59 {
            let mut closer = connect(addrs[0]).await;
            closer.queue(ticket("brawl", 50.0)).await.unwrap();
            let e = next_outcome(&mut closer).await;
            outcomes.borrow_mut().push((closer.player().to_owned(), e));
            waiting.push(closer);
        }
        for t in tasks {
            waiting.push(t.await);
        }
        let outcomes = outcomes.borrow();
        let mut rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut players = BTreeSet::new();
        for (player, e) in outcomes.iter() {
            let (room, roster) = matched(e);
            assert!((2..=4).contains(&roster.len()), "{roster:?}");
            assert!(roster.contains(player), "{player} in its own match");
            let distinct: BTreeSet<&String> = roster.iter().collect();
            assert_eq!(distinct.len(), roster.len(), "{roster:?}");
            match rooms.get(&room) {
                Some(known) => assert_eq!(known, &roster, "one roster per room"),
                None => {
                    rooms.insert(room, roster);
                }
            }
            assert!(players.insert(player.clone()), "{player} told twice");
        }
        // Every roster's players were told that room and no other.
        let in_rosters: usize = rooms.values().map(Vec::len).sum();
        assert_eq!(
            in_rosters,
            outcomes.len(),
            "no player in two rooms: {rooms:?}"
        );
    });
    stop.store(true, Ordering::Relaxed);
    let taken = chaos.join().unwrap();
    assert!(taken > 0, "the lease was taken away {taken} times");
    assert_eq!(waiting_in(&url, "brawl"), (0, 0));
}

/// On a Redis Cluster of three masters: a queue's keys all live on one master (one hash
/// tag), its scripts run there, and players of two nodes are matched and play.
#[test]
fn on_a_redis_cluster_a_queue_lives_on_one_master_and_matches_across_nodes() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let (_nodes, addrs) = mm_nodes(&seeds, &["a", "b"], |c| {
        c.cluster.redis_cluster = true;
    });
    run(move || async move {
        for round in 0..3 {
            let mut ann = connect(addrs[0]).await;
            let mut bo = connect(addrs[1]).await;
            ann.queue(ticket("duo", 10.0)).await.unwrap();
            bo.queue(ticket("duo", 20.0)).await.unwrap();
            let (room, players) = matched(&next_outcome(&mut ann).await);
            assert_eq!(players, [ann.player(), bo.player()], "round {round}");
            assert_eq!(matched(&next_outcome(&mut bo).await).0, room);
            ann.send(&room, "hi", b"a", PayloadKind::Binary)
                .await
                .unwrap();
            bo.send(&room, "hi", b"b", PayloadKind::Binary)
                .await
                .unwrap();
            assert_eq!(next_message(&mut bo, &room).await.0, ann.player());
            assert_eq!(next_message(&mut ann, &room).await.0, bo.player());
        }
    });
    let prefix = corelay::cluster::queues::queue_prefix("duo");
    let holding: Vec<usize> = cluster
        .masters
        .iter()
        .map(|m| {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut m.connection())
                .unwrap();
            keys.len()
        })
        .collect();
    assert_eq!(
        holding.iter().filter(|&&n| n > 0).count(),
        1,
        "one master holds the queue's keys: {holding:?}"
    );
    assert!(holding.iter().sum::<usize>() >= 3, "{holding:?}");
}

/// With `[cluster] matchmaking = false` each node keeps its queues: players of two nodes
/// never meet, and a node's own players still do.
#[test]
fn with_cluster_matchmaking_off_each_node_matches_only_its_own_players() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b"], |c| {
        c.cluster.matchmaking = false;
    });
    run(move || async move {
        let mut ann = connect(addrs[0]).await;
        let mut bo = connect(addrs[1]).await;
        ann.queue(ticket("duo", 0.0)).await.unwrap();
        bo.queue(ticket("duo", 0.0)).await.unwrap();
        let quiet = glommio::timer::timeout(Duration::from_millis(1_500), async {
            Ok(next_outcome(&mut ann).await)
        })
        .await;
        assert!(quiet.is_err(), "matched across nodes: {quiet:?}");
        let mut cy = connect(addrs[0]).await;
        cy.queue(ticket("duo", 0.0)).await.unwrap();
        let (_, players) = matched(&next_outcome(&mut ann).await);
        assert_eq!(players, [ann.player(), cy.player()]);
    });
    assert_eq!(waiting_in(&url, "duo"), (0, 0), "nothing in redis");
}

/// A Redis that stops answering (SIGSTOP) pauses the queues: a ticket asked for meanwhile
/// is answered once Redis answers again (SIGCONT), once, and matched.
#[test]
fn a_queue_waits_while_redis_does_not_answer_and_goes_on_after() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b"], |_| {});
    let pid = redis.child.id() as i32;
    run(move || async move {
        let mut ann = connect(addrs[0]).await;
        let mut bo = connect(addrs[1]).await;
        // Once through, so that the node's scripts are known to Redis: the ticket below is
        // sent whole while Redis is stopped, and carried out when it goes on.
        let warm = ann.queue(ticket("duo", 0.0)).await.unwrap();
        ann.cancel_ticket(warm).await.unwrap();
        // SAFETY: plain kill(2) on the test's own redis-server.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let answered = Rc::new(std::cell::Cell::new(false));
        let told = Rc::clone(&answered);
        let asked = glommio::spawn_local(async move {
            let id = ann.queue(ticket("duo", 0.0)).await.unwrap();
            told.set(true);
            (ann, id)
        });
        glommio::timer::sleep(Duration::from_millis(2_500)).await;
        assert!(!answered.get(), "answered while redis was stopped");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let (mut ann, id) = within("the answer after redis is back", asked).await;
        assert!(id > warm);
        bo.queue(ticket("duo", 0.0)).await.unwrap();
        let (room, players) = matched(&next_outcome(&mut ann).await);
        assert_eq!(players, [ann.player(), bo.player()]);
        assert_eq!(matched(&next_outcome(&mut bo).await).0, room);
    });
    assert_eq!(
        waiting_in(&url, "duo"),
        (0, 0),
        "the retried ticket was not queued twice"
    );
}

/// What Redis holds is read defensively: ticket records and outcomes that are not what
/// corelay writes (junk, a shard the node does not have, a room that is no code) are
/// dropped and counted, and the queue goes on matching real players.
#[test]
fn malformed_records_in_redis_are_dropped_and_counted() {
    let redis = Redis::start();
    let url = redis.url();
    let (_nodes, addrs) = mm_nodes(&url, &["a", "b"], |_| {});
    let node_a = {
        bounded("both listed", || incarnations(&url).len() == 2);
        incarnations(&url)["a"]
    };
    let prefix = corelay::cluster::queues::queue_prefix("duo");
    let mut con = redis_at(&url);
    let junk_seat = format!(
        r#"{{"id":900,"at":1,"ext":null,"seats":[{{"node":{node_a},"shard":0,"player":1,"name":"","meta":null,"skill":1.0}}]}}"#
    );
    for (id, record) in [
        ("899", "not json".to_owned()),
        ("900", junk_seat),
        ("x", "{}".into()),
    ] {
        redis::cmd("HSET")
            .arg(format!("{prefix}:tickets"))
            .arg(id)
            .arg(record)
            .query::<()>(&mut con)
            .unwrap();
        redis::cmd("ZADD")
            .arg(format!("{prefix}:waiting"))
            .arg(1)
            .arg(id)
            .query::<()>(&mut con)
            .unwrap();
    }
    redis::cmd("INCR")
        .arg(format!("{prefix}:version"))
        .query::<()>(&mut con)
        .unwrap();
    let writer = url.clone();
    run(move || async move {
        let mut ann = connect(addrs[0]).await;
        let mut bo = connect(addrs[1]).await;
        ann.queue(ticket("duo", 0.0)).await.unwrap();
        // Junk on the stream too, between real outcomes.
        let events = format!("{prefix}:events");
        for junk in [
            "garbage",
            r#"{"kind":"matched","room":"no-code","tickets":[]}"#,
            r#"{"kind":"ended","reason":"bored","tickets":[]}"#,
        ] {
            redis::cmd("XADD")
                .arg(&events)
                .arg("*")
                .arg("o")
                .arg(junk)
                .query::<()>(&mut redis_at(&writer))
                .unwrap();
        }
        bo.queue(ticket("duo", 0.0)).await.unwrap();
        let (room, players) = matched(&next_outcome(&mut ann).await);
        assert_eq!(players, [ann.player(), bo.player()]);
        assert_eq!(matched(&next_outcome(&mut bo).await).0, room);
        let mut malformed = 0;
        for &addr in &addrs {
            let text = common::eio::request(addr, "GET", "/metrics", "", "")
                .await
                .body;
            malformed += text
                .lines()
                .find(|l| l.starts_with("corelay_cluster_matchmaking_malformed_total"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap();
        }
        // Each node drops the three junk outcomes (and the refusals of the junk records);
        // the pass's node drops the three records.
        assert!(malformed >= 3 + 2 * 3, "{malformed}");
    });
    assert_eq!(waiting_in(&url, "duo"), (0, 0), "junk records removed");
}
