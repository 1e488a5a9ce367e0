//! Several nodes through Redis (issue 12), first part: node membership. Real
//! `redis-server` and `corelay` processes on 127.0.0.1, each started here and stopped by
//! its PID: nodes list each other, a drained node leaves at once, a killed one drops out
//! when its lease ends, and a node whose Redis is gone is not ready until it is back.
//!
//! `redis-server` comes from the README's test command (Debian's package); a missing one
//! fails the test.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use std::net::SocketAddr;

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

/// What one receiver got from each sender: the numbers in order of arrival.
type Heard = std::collections::BTreeMap<String, Vec<u64>>;

/// Receives `expected` messages on a native client, by sender, skipping notices.
async fn native_hears(rx: &mut corelay::client::ClientReceiver, expected: usize) -> Heard {
    let mut heard = Heard::new();
    let mut n = 0;
    while n < expected {
        let event = common::within("a relayed message", rx.next_event())
            .await
            .unwrap();
        if let corelay::client::ServerEvent::Message { from, payload, .. } = event {
            let k: u64 = serde_json::from_slice(&payload).unwrap();
            heard.entry(from).or_default().push(k);
            n += 1;
        }
    }
    heard
}

/// Receives `expected` `m` events on a Socket.IO session, by sender, skipping the rest.
async fn sio_hears(
    s: &corelay::client::Stream,
    codec: &mut corelay::proto::ws::WsCodec,
    expected: usize,
) -> Heard {
    let mut heard = Heard::new();
    let mut n = 0;
    while n < expected {
        let text = common::within(
            "a relayed event",
            common::eio::next_starting(s, codec, "42[\"m\""),
        )
        .await;
        let v = common::eio::data(&text, "42");
        heard
            .entry(v[2].as_str().unwrap().to_owned())
            .or_default()
            .push(v[1].as_u64().unwrap());
        n += 1;
    }
    heard
}

/// Each sender's numbers 0..per, exactly once and in order.
fn assert_each_once_in_order(who: &str, heard: &Heard, senders: &[String], per: u64) {
    let expected: Vec<u64> = (0..per).collect();
    assert_eq!(
        heard.keys().collect::<Vec<_>>(),
        senders.iter().collect::<Vec<_>>(),
        "{who} heard these senders"
    );
    for (from, got) in heard {
        assert_eq!(got, &expected, "{who} from {from}");
    }
}

/// Three nodes share a room: native and Socket.IO members on every node receive every
/// other member's messages exactly once and in each sender's order, and notices carry the
/// room's count across nodes. A node follows a room's channel only while it has members
/// in it, as Redis itself reports.
#[test]
fn a_room_spans_three_nodes_with_every_message_once_in_each_senders_order() {
    use corelay::client::PayloadKind;
    use corelay::client::ServerEvent;
    let redis = Redis::start();
    let url = redis.url();
    let nodes: Vec<_> = ["a", "b", "c"].iter().map(|id| node(&url, id)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.local_addr()).collect();
    const PER: u64 = 100;
    common::run(move || async move {
        // Two native members and one Socket.IO member on each node.
        let mut natives = Vec::new();
        let mut sios = Vec::new();
        for &addr in &addrs {
            for _ in 0..2 {
                let mut c = common::connect(addr).await;
                c.join("arena").await.unwrap();
                natives.push(c);
            }
            let (s, mut codec, sid) = common::eio::sio_connect(addr, "/").await;
            common::eio::ws_send(&s, r#"421["join","arena"]"#).await;
            common::eio::next_starting(&s, &mut codec, "431").await;
            sios.push((s, codec, sid));
        }
        // Interest routing, from Redis: every node follows `arena`; only the first
        // follows `quiet`, and nobody follows a room without members.
        let mut quiet = common::connect(addrs[0]).await;
        quiet.join("quiet").await.unwrap();
        bounded("every node follows arena, one follows quiet", || {
            numsub(&url, &["arena", "quiet", "nobody"]) == [3, 1, 0]
        });
        quiet.leave("quiet").await.unwrap();
        bounded("nobody follows quiet once it is empty", || {
            numsub(&url, &["quiet"]) == [0]
        });

        // Everyone sends PER numbered messages.
        let mut senders: Vec<String> = natives.iter().map(|c| c.player().to_owned()).collect();
        senders.extend(sios.iter().map(|(_, _, sid)| sid.clone()));
        senders.sort();
        let mut natives: Vec<_> = natives
            .into_iter()
            .map(|c| (c.player().to_owned(), c.split()))
            .collect();
        for (_, (tx, _)) in &natives {
            for k in 0..PER {
                tx.send("arena", "m", k.to_string().as_bytes(), PayloadKind::Json)
                    .await
                    .unwrap();
            }
        }
        for (s, _, _) in &sios {
            for k in 0..PER {
                common::eio::ws_send(s, &format!(r#"42["to","arena","m",{k}]"#)).await;
            }
        }
        let others = (senders.len() - 1) * PER as usize;
        for (me, (_, rx)) in natives.iter_mut() {
            let heard = native_hears(rx, others).await;
            let from: Vec<String> = senders.iter().filter(|s| *s != me).cloned().collect();
            assert_each_once_in_order(me, &heard, &from, PER);
        }
        for (s, codec, sid) in sios.iter_mut() {
            let heard = sio_hears(s, codec, others).await;
            let from: Vec<String> = senders.iter().filter(|x| *x != sid).cloned().collect();
            assert_each_once_in_order(sid, &heard, &from, PER);
        }

        // Presence across nodes: a newcomer on the last node is counted with the nine
        // members of the three nodes, and the others are told of it with that count.
        let mut watcher = common::connect(addrs[0]).await;
        watcher.join("arena").await.unwrap();
        // Counts across nodes are as fresh as the notices that crossed: the newcomer's
        // node has heard of the watcher once a member there has.
        let seen = watcher.player().to_owned();
        let (_, (_, on_last)) = &mut natives[4];
        loop {
            let event = common::within(
                "the watcher's notice on the last node",
                on_last.next_event(),
            )
            .await
            .unwrap();
            if matches!(&event, ServerEvent::MemberJoined { player, .. } if *player == seen) {
                break;
            }
        }
        let mut newcomer = common::connect(addrs[2]).await;
        let joined = newcomer.join_room("arena").await.unwrap();
        assert_eq!(
            joined.members, 11,
            "nine members, the watcher and the newcomer"
        );
        let me = newcomer.player().to_owned();
        loop {
            let event = common::within("the newcomer's notice", watcher.next_event())
                .await
                .unwrap();
            if let ServerEvent::MemberJoined {
                player, members, ..
            } = event
            {
                if player == me {
                    assert_eq!(members, 11);
                    break;
                }
            }
        }
        newcomer.leave("arena").await.unwrap();
        let (members, _) = left_notice(&mut watcher, &me).await;
        assert_eq!(members, 10);
    });
    drop(nodes);
}

/// The next notice that `player` left, skipping everything else.
async fn left_notice(
    c: &mut corelay::client::Client,
    player: &str,
) -> (u32, corelay::proto::native::LeaveReason) {
    loop {
        let event = common::within("a member_left notice", c.next_event())
            .await
            .unwrap();
        if let corelay::client::ServerEvent::MemberLeft {
            player: p,
            members,
            reason,
            ..
        } = event
        {
            if p == player {
                return (members, reason);
            }
        }
    }
}

/// A node killed with SIGKILL says nothing; once its lease has ended, every other node
/// tells its rooms that the dead node's members left, disconnected, with the count after.
#[test]
fn a_killed_nodes_members_leave_their_rooms_when_its_lease_ends() {
    let redis = Redis::start();
    let url = redis.url();
    let doomed = Node::start(&url, "doomed");
    let survivor = node(&url, "survivor");
    let (doomed_addr, survivor_addr) = (doomed.addr, survivor.local_addr());
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        let mut doomed = doomed;
        kill_rx.recv().unwrap();
        doomed.signal(libc::SIGKILL);
        let _ = doomed.child.wait();
        killed_tx.send(()).unwrap();
    });
    common::run(move || async move {
        let mut here = common::connect(survivor_addr).await;
        here.join("arena").await.unwrap();
        let mut there = common::connect(doomed_addr).await;
        there.join("arena").await.unwrap();
        until_heard(&mut there, &mut here, "arena").await;
        let gone = there.player().to_owned();
        kill_tx.send(()).unwrap();
        let killed = Instant::now();
        killed_rx.recv().unwrap();
        let (members, reason) = left_notice(&mut here, &gone).await;
        assert_eq!(reason, corelay::proto::native::LeaveReason::Disconnected);
        assert_eq!(members, 1, "the survivor's member alone");
        // Not before its lease (1 s) had ended.
        assert!(
            killed.elapsed() >= Duration::from_millis(900),
            "{:?}",
            killed.elapsed()
        );
    });
    killer.join().unwrap();
    drop(survivor);
}

/// Redis restarts under traffic: each node's own members go on being served meanwhile,
/// and once Redis is back the nodes follow their rooms again by themselves and messages
/// cross again.
#[test]
fn rooms_cross_nodes_again_after_redis_restarts() {
    use corelay::client::{PayloadKind, ServerEvent};
    let redis = Redis::start();
    let (url, port) = (redis.url(), redis.port);
    let a = node(&url, "a");
    let b = node(&url, "b");
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let (down_tx, down_rx) = std::sync::mpsc::channel::<()>();
    let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let restarter = std::thread::spawn(move || {
        down_rx.recv().unwrap();
        drop(redis);
        gone_tx.send(()).unwrap();
        up_rx.recv().unwrap();
        let redis = Redis::start_on(port);
        back_tx.send(()).unwrap();
        redis
    });
    common::run(move || async move {
        let mut a1 = common::connect(a_addr).await;
        let mut a2 = common::connect(a_addr).await;
        let mut b1 = common::connect(b_addr).await;
        for c in [&mut a1, &mut a2, &mut b1] {
            c.join("arena").await.unwrap();
        }
        until_heard(&mut a1, &mut b1, "arena").await;
        down_tx.send(()).unwrap();
        gone_rx.recv().unwrap();
        // Redis is gone: a node's own members still hear each other, at once.
        for k in 0..50u32 {
            a1.send(
                "arena",
                "local",
                k.to_string().as_bytes(),
                PayloadKind::Json,
            )
            .await
            .unwrap();
        }
        let mut next = 0u32;
        while next < 50 {
            if let ServerEvent::Message { event, payload, .. } =
                common::within("a local message", a2.next_event())
                    .await
                    .unwrap()
            {
                if event == "local" {
                    assert_eq!(payload, next.to_string().as_bytes());
                    next += 1;
                }
            }
        }
        up_tx.send(()).unwrap();
        back_rx.recv().unwrap();
        // Back, empty: both nodes subscribe again by themselves, and messages cross.
        until_heard(&mut a1, &mut b1, "arena").await;
        until_heard(&mut b1, &mut a2, "arena").await;
    });
    let redis = restarter.join().unwrap();
    assert_eq!(numsub(&redis.url(), &["arena"]), [2]);
    drop((a, b));
}

/// On a Redis Cluster of three masters, rooms cross nodes through sharded pub/sub: each
/// room's channel lives on the master owning its slot, the nodes follow it there only while
/// they have members, and the nodes list each other through the cluster.
#[test]
fn rooms_cross_nodes_through_sharded_pubsub_on_a_redis_cluster() {
    use corelay::client::{PayloadKind, ServerEvent};
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let on_cluster = |id: &str| {
        let (seeds, id) = (seeds.clone(), id.to_owned());
        common::server(2, move |c| {
            c.cluster.redis = Some(seeds);
            c.cluster.redis_cluster = true;
            c.cluster.node_id = Some(id);
            c.cluster.lease_ms = 1_000;
        })
    };
    let (a, b) = (on_cluster("a"), on_cluster("b"));
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    // Enough rooms for their channels to live on every master.
    let rooms: Vec<String> = (0..12).map(|i| format!("table-{i}")).collect();
    let ports = cluster.ports();
    common::run(move || async move {
        // Every member stays: each room's channel stays followed by both nodes.
        let mut members = Vec::new();
        for room in &rooms {
            let mut here = common::connect(a_addr).await;
            let mut there = common::connect(b_addr).await;
            here.join(room).await.unwrap();
            there.join(room).await.unwrap();
            until_heard(&mut here, &mut there, room).await;
            until_heard(&mut there, &mut here, room).await;
            // Then every message, in order.
            for k in 0..20u32 {
                here.send(room, "m", k.to_string().as_bytes(), PayloadKind::Json)
                    .await
                    .unwrap();
            }
            let mut next = 0u32;
            while next < 20 {
                if let ServerEvent::Message { event, payload, .. } =
                    common::within("a message", there.next_event())
                        .await
                        .unwrap()
                {
                    if event == "m" {
                        assert_eq!(payload, next.to_string().as_bytes(), "{room}");
                        next += 1;
                    }
                }
            }
            members.push((here, there));
        }
        // Each room's channel is followed by both nodes, on one master, and the rooms
        // use every master.
        let mut masters_used = std::collections::BTreeSet::new();
        for room in &rooms {
            let per_master = shardnumsub(&ports, room);
            assert_eq!(per_master.iter().sum::<i64>(), 2, "{room}: {per_master:?}");
            let owner = per_master.iter().position(|&n| n == 2).unwrap();
            masters_used.insert(owner);
        }
        assert_eq!(masters_used.len(), 3, "rooms spread over every master");
        // A room left by its member on one node is followed by the other alone.
        let (here, _) = members.pop().unwrap();
        here.close().await.unwrap();
        let last = rooms.last().unwrap();
        bounded("one node follows a room it alone has members in", || {
            shardnumsub(&ports, last).iter().sum::<i64>() == 1
        });
    });
    // Membership through the cluster too.
    let nodes = status_with(&["--redis-cluster", "--redis", &cluster.seeds()]);
    assert_eq!(ids(&nodes), ["a", "b"]);
    drop((a, b));
}

/// A node started after a room's members met on another serves that room to its own
/// players: they hear the room and are heard, and once the new node has followed the room
/// its joins are counted with the members it did not see join.
#[test]
fn a_node_started_later_serves_the_rooms_that_exist() {
    use corelay::client::ServerEvent;
    let redis = Redis::start();
    let url = redis.url();
    let a = node(&url, "a");
    let a_addr = a.local_addr();
    let url_in = url.clone();
    common::run(move || async move {
        let mut a1 = common::connect(a_addr).await;
        let mut a2 = common::connect(a_addr).await;
        a1.join("arena").await.unwrap();
        a2.join("arena").await.unwrap();
        // The room exists, with two members, before B starts.
        let b = node(&url_in, "b");
        let mut b1 = common::connect(b.local_addr()).await;
        b1.join("arena").await.unwrap();
        until_heard(&mut a1, &mut b1, "arena").await;
        until_heard(&mut b1, &mut a2, "arena").await;
        let mut b2 = common::connect(b.local_addr()).await;
        let joined = b2.join_room("arena").await.unwrap();
        assert_eq!(joined.members, 4, "A's two members are counted on B");
        let me = b2.player().to_owned();
        loop {
            let event = common::within("B2's notice on A", a1.next_event())
                .await
                .unwrap();
            if let ServerEvent::MemberJoined {
                player, members, ..
            } = event
            {
                if player == me {
                    assert_eq!(members, 4);
                    break;
                }
            }
        }
        drop(b);
    });
    drop(a);
}
