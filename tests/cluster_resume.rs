//! History and resume across nodes (issue 12, item 3): with history on, a shared room's
//! broadcasts go through its Redis stream, so that a number names the same message on every
//! node, and a native client whose node is gone resumes on another node with exactly the
//! messages it missed, in order, once. Real `redis-server` and `corelay serve` processes,
//! each stopped by its PID (tests/common/cluster.rs).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::*;
use corelay::client::{Client, PayloadKind, ServerEvent};

async fn send_numbers(c: &mut Client, room: &str, numbers: std::ops::Range<u32>) {
    for i in numbers {
        c.send(room, "n", &i.to_le_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
    }
}

/// The next `n` message's number, skipping everything else.
async fn next_number(c: &mut Client) -> u32 {
    loop {
        let event = common::within("a numbered message", c.next_event())
            .await
            .unwrap();
        if let ServerEvent::Message { event, payload, .. } = event {
            if event == "n" {
                return u32::from_le_bytes(payload[..4].try_into().unwrap());
            }
        }
    }
}

fn ws(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// The number of entries Redis keeps in `room`'s stream.
fn stream_len(url: &str, room: &str) -> i64 {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .unwrap();
    redis::cmd("XLEN")
        .arg(corelay::cluster::bridge::history(room))
        .query(&mut con)
        .unwrap()
}

/// Bob plays on node A, Alice on node B, Carol on node C. A is killed with SIGKILL while
/// Alice's messages are on their way; Bob reconnects to B with his session and gets
/// exactly what he had not seen, in order, then the live ones. The room hears he is back,
/// and when A's lease ends Bob does not leave the room with A's other members, on B or C.
#[test]
fn a_client_of_a_killed_node_resumes_on_another_with_exactly_what_it_missed() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Node::start(&url, "a");
    let b = node(&url, "b");
    let c = node(&url, "c");
    let (a_addr, b_addr, c_addr) = (a.addr, b.local_addr(), c.local_addr());
    let registries = [b.stats_registry(), c.stats_registry()];
    let url_in = url.clone();
    common::run(move || async move {
        let mut bob = common::connect(a_addr).await;
        bob.join("arena").await.unwrap();
        let mut alice = common::connect(b_addr).await;
        alice.join("arena").await.unwrap();
        let mut carol = common::connect(c_addr).await;
        carol.join("arena").await.unwrap();
        until_heard(&mut alice, &mut bob, "arena").await;
        until_heard(&mut alice, &mut carol, "arena").await;
        let bob_name = bob.player().to_owned();

        send_numbers(&mut alice, "arena", 0..50).await;
        for want in 0..20 {
            assert_eq!(next_number(&mut bob).await, want);
        }
        // 20..50 are on their way to Bob, or in A's buffers, when A dies.
        a.signal(libc::SIGKILL);
        bob.drop_connection();
        send_numbers(&mut alice, "arena", 50..100).await;

        bob.move_to(ws(b_addr));
        assert!(bob.reconnect().await.unwrap(), "the session resumed on B");
        assert_eq!(bob.player(), bob_name, "the same player id");
        send_numbers(&mut alice, "arena", 100..110).await;
        // Exactly once and in order: everything from 20 on, the replay then the live ones.
        let mut resumed = None;
        let mut numbers = Vec::new();
        while numbers.len() < 90 {
            let event = common::within("Bob's replay", bob.next_event())
                .await
                .unwrap();
            match event {
                ServerEvent::Resumed { room, gap, .. } => {
                    assert_eq!(room, "arena");
                    assert!(!gap, "the stream kept everything");
                    assert!(numbers.is_empty(), "Resumed comes before the replay");
                    resumed = Some(gap);
                }
                ServerEvent::Message { event, payload, .. } if event == "n" => {
                    numbers.push(u32::from_le_bytes(payload[..4].try_into().unwrap()));
                }
                _ => {}
            }
        }
        assert!(resumed.is_some(), "the room said Bob resumed");
        assert_eq!(numbers, (20..110).collect::<Vec<_>>());

        // Bob, now on B, is heard by Alice.
        bob.send("arena", "n", &7u32.to_le_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
        let mut back = false;
        loop {
            let event = common::within("Bob's message to Alice", alice.next_event())
                .await
                .unwrap();
            match event {
                ServerEvent::MemberBack { player, .. } if player == bob_name => back = true,
                ServerEvent::Message { from, event, .. } if event == "n" => {
                    assert_eq!(from, bob_name);
                    break;
                }
                _ => {}
            }
        }
        assert!(back, "Alice was told Bob is back");

        // A's lease ends; its members leave the rooms of B and C, but Bob is on B now.
        let deadline = Instant::now() + Duration::from_secs(10);
        while registries.iter().any(|r| r.cluster().traffic()[5] == 0) {
            assert!(Instant::now() < deadline, "A was never found gone");
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let mut dave = common::connect(b_addr).await;
        let joined = dave.join_room("arena").await.unwrap();
        assert_eq!(joined.members, 4, "Alice, Bob, Carol and Dave");
        let dave_name = dave.player().to_owned();
        for (who, c) in [("Alice", &mut alice), ("Carol", &mut carol)] {
            loop {
                let event = common::within("Dave's notice", c.next_event())
                    .await
                    .unwrap();
                match event {
                    ServerEvent::MemberLeft { player, .. } => {
                        assert_ne!(player, bob_name, "{who} heard Bob left with his old node");
                    }
                    ServerEvent::MemberJoined {
                        player, members, ..
                    } if player == dave_name => {
                        assert_eq!(members, 4, "{who}'s count");
                        break;
                    }
                    _ => {}
                }
            }
        }
        assert!(stream_len(&url_in, "arena") >= 110, "the room's stream");
        drop(a);
    });
    drop((b, c));
}

/// Bob's network changes and his reconnect lands on another node while his own is alive:
/// the session moves there, to a node with nobody else in the room (so what he missed
/// comes from the room's stream, not that node's own ring), the old node lets it go without
/// a word to the room, and Bob and Erin (still on the old node) hear each other.
#[test]
fn a_session_moves_to_another_node_while_its_own_is_alive() {
    let redis = Redis::start();
    let url = redis.url();
    let a = node(&url, "a");
    let b = node(&url, "b");
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    common::run(move || async move {
        let mut bob = common::connect(a_addr).await;
        bob.join("arena").await.unwrap();
        let mut erin = common::connect(a_addr).await;
        erin.join("arena").await.unwrap();
        let mut carol = common::connect(a_addr).await;
        carol.join("arena").await.unwrap();
        let bob_name = bob.player().to_owned();

        send_numbers(&mut erin, "arena", 0..10).await;
        for want in 0..10 {
            assert_eq!(next_number(&mut bob).await, want);
        }
        bob.drop_connection();
        send_numbers(&mut erin, "arena", 10..20).await;
        // A delivers a shared room's messages once Redis has numbered them: once Carol has
        // them, so has the room's stream.
        for want in 0..20 {
            assert_eq!(next_number(&mut carol).await, want);
        }
        bob.move_to(ws(b_addr));
        assert!(bob.reconnect().await.unwrap(), "the session moved to B");
        assert_eq!(bob.player(), bob_name);
        loop {
            let event = common::within("Bob's Resumed", bob.next_event())
                .await
                .unwrap();
            if let ServerEvent::Resumed { replayed, gap, .. } = event {
                assert_eq!((replayed, gap), (10, false), "from the stream");
                break;
            }
        }
        for want in 10..20 {
            assert_eq!(next_number(&mut bob).await, want, "exactly what he missed");
        }
        // Across nodes both ways.
        send_numbers(&mut erin, "arena", 20..21).await;
        assert_eq!(next_number(&mut bob).await, 20);
        bob.send("arena", "n", &99u32.to_le_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
        loop {
            let event = common::within("Bob's message to Erin", erin.next_event())
                .await
                .unwrap();
            match event {
                ServerEvent::MemberLeft { player, .. } => {
                    assert_ne!(player, bob_name, "Bob never left");
                }
                ServerEvent::Message { from, event, .. } if event == "n" => {
                    assert_eq!(from, bob_name);
                    break;
                }
                _ => {}
            }
        }
        // A counts Bob on B, once.
        let mut frank = common::connect(a_addr).await;
        let joined = frank.join_room("arena").await.unwrap();
        assert_eq!(joined.members, 4, "Bob, Erin, Carol and Frank");
    });
    drop((a, b));
}

/// `CLIENT KILL TYPE pubsub`: how many subscriber connections Redis dropped. From a thread
/// of its own: the test's executor thread takes signals that interrupt blocking calls.
fn kill_subscribers(url: &str) -> i64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut con = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .unwrap();
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query::<i64>(&mut con)
            .unwrap()
    })
    .join()
    .unwrap()
}

/// Redis drops every subscriber connection (`CLIENT KILL TYPE pubsub`) while Alice, on
/// node A, keeps sending. Both nodes subscribe again by themselves and read the room's
/// stream past the last number they heard before anything newer: Bob on B and Erin on A
/// (whose own node's echoes were lost too) get every message once, in order.
#[test]
fn members_miss_nothing_when_their_nodes_subscriptions_drop() {
    let redis = Redis::start();
    let url = redis.url();
    let a = node(&url, "a");
    let b = node(&url, "b");
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let url_in = url.clone();
    common::run(move || async move {
        let mut alice = common::connect(a_addr).await;
        alice.join("arena").await.unwrap();
        let mut erin = common::connect(a_addr).await;
        erin.join("arena").await.unwrap();
        let mut bob = common::connect(b_addr).await;
        bob.join("arena").await.unwrap();
        until_heard(&mut alice, &mut bob, "arena").await;
        // Within the default burst of 480 messages a connection may send at once.
        const N: u32 = 400;
        let mut killed = 0;
        for k in 0..N {
            alice
                .send("arena", "n", &k.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
            if k % 100 == 50 {
                killed += kill_subscribers(&url_in);
                // Alice goes on at once; a millisecond's pause lets the nodes notice.
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
        assert!(killed >= 2, "both nodes' subscriptions were dropped");
        for (who, c) in [("Bob", &mut bob), ("Erin", &mut erin)] {
            for want in 0..N {
                assert_eq!(next_number(c).await, want, "{who}");
            }
        }
    });
    drop((a, b));
}

/// With `[cluster] shared_history = false`, rooms still cross nodes, but each node numbers
/// and keeps its rooms' history itself: Redis holds no stream, and a session another node
/// made is not found here.
#[test]
fn without_shared_history_rooms_cross_nodes_and_redis_keeps_no_stream() {
    let redis = Redis::start();
    let url = redis.url();
    let quiet = |id: &str| {
        let (url, id) = (url.clone(), id.to_owned());
        common::server(2, move |c| {
            c.cluster.redis = Some(url);
            c.cluster.node_id = Some(id);
            c.cluster.lease_ms = 1_000;
            c.cluster.shared_history = false;
        })
    };
    let (a, b) = (quiet("a"), quiet("b"));
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let url_in = url.clone();
    common::run(move || async move {
        let mut bob = common::connect(a_addr).await;
        bob.join("arena").await.unwrap();
        let mut alice = common::connect(b_addr).await;
        alice.join("arena").await.unwrap();
        until_heard(&mut alice, &mut bob, "arena").await;
        send_numbers(&mut alice, "arena", 0..20).await;
        for want in 0..20 {
            assert_eq!(next_number(&mut bob).await, want);
        }
        assert_eq!(stream_len(&url_in, "arena"), 0, "no stream in Redis");
        bob.drop_connection();
        bob.move_to(ws(b_addr));
        assert!(
            !bob.reconnect().await.unwrap(),
            "a session resumes only on its own node"
        );
    });
    drop((a, b));
}
