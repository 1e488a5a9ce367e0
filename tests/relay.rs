//! The relay over real sockets: cross-shard rooms, ordering, notifications, scale, shutdown.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use common::{connect, connect_on_shard, room_homed_on, run, server, still_serving};
use corelay::client::{PayloadKind, ServerEvent};
use corelay::config::RateProfile;
use corelay::proto::native::LeaveReason;

/// (receiver index, sender id, sequence) -> times delivered.
type Deliveries = HashMap<(usize, String, u32), u32>;

async fn next_message(c: &mut corelay::client::Client) -> (String, bytes::Bytes) {
    loop {
        match c.next_event().await.expect("event") {
            ServerEvent::Message { from, payload, .. } => return (from, payload),
            _ => continue,
        }
    }
}

#[test]
fn members_on_two_shards_exchange_messages_in_order_with_nothing_lost() {
    // 900 messages per client as fast as they go: ordering under load, not rate limits.
    let srv = server(2, |c| c.rate_limits.native = RateProfile::UNLIMITED);
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        assert_ne!(a.shard(), b.shard(), "members sit on different shards");
        // Several rooms so that both home shards are exercised.
        for room in ["arena-1", "arena-2", "arena-3"] {
            assert_eq!(a.join(room).await.unwrap(), 1);
            assert_eq!(b.join(room).await.unwrap(), 2);
            const N: u32 = 300;
            for i in 0..N {
                a.send(room, "move", &i.to_le_bytes(), PayloadKind::Binary)
                    .await
                    .unwrap();
                b.send(room, "move", &(N + i).to_le_bytes(), PayloadKind::Binary)
                    .await
                    .unwrap();
            }
            for i in 0..N {
                let (from, p) = next_message(&mut b).await;
                assert_eq!(from, a.player());
                assert_eq!(
                    u32::from_le_bytes(p[..].try_into().unwrap()),
                    i,
                    "b sees a's order"
                );
                let (from, p) = next_message(&mut a).await;
                assert_eq!(from, b.player());
                assert_eq!(
                    u32::from_le_bytes(p[..].try_into().unwrap()),
                    N + i,
                    "a sees b's order"
                );
            }
        }
    });
    let stats = srv.stats();
    assert!(stats.messages_in >= 1800, "{stats}");
    assert!(
        stats.mesh_out > 0,
        "cross-shard traffic went over the mesh: {stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn sender_never_receives_its_own_message_and_json_kind_is_kept() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        a.join("r").await.unwrap();
        b.join("r").await.unwrap();
        a.send("r", "chat", br#"{"hi":1}"#, PayloadKind::Json)
            .await
            .unwrap();
        b.send("r", "marker", b"", PayloadKind::Binary)
            .await
            .unwrap();
        match b.next_event().await.unwrap() {
            ServerEvent::Message {
                event,
                payload,
                kind,
                room,
                ..
            } => {
                assert_eq!((event.as_str(), room.as_str()), ("chat", "r"));
                assert_eq!(&payload[..], br#"{"hi":1}"#);
                assert_eq!(kind, PayloadKind::Json);
            }
            other => panic!("unexpected {other:?}"),
        }
        // a's next message is b's marker, not its own chat.
        loop {
            match a.next_event().await.unwrap() {
                ServerEvent::Message { event, .. } => {
                    assert_eq!(event, "marker");
                    break;
                }
                ServerEvent::MemberJoined { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    srv.stop().unwrap();
}

#[test]
fn members_are_told_of_joins_leaves_and_disconnects_across_shards() {
    // A lost connection's session waits `resume.window_ms` before its player leaves.
    let srv = server(2, |c| {
        c.resume.window_ms = 300;
        c.stats_publish_ms = 20;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut watcher = connect_on_shard(addr, 0).await;
        watcher.join("lobby").await.unwrap();
        let mut b = connect_on_shard(addr, 1).await;
        assert_eq!(b.join("lobby").await.unwrap(), 2);
        assert_eq!(
            watcher.next_event().await.unwrap(),
            ServerEvent::MemberJoined {
                room: "lobby".into(),
                player: b.player().to_owned(),
                members: 2
            }
        );
        b.leave("lobby").await.unwrap();
        assert_eq!(
            watcher.next_event().await.unwrap(),
            ServerEvent::MemberLeft {
                room: "lobby".into(),
                player: b.player().to_owned(),
                members: 1,
                reason: LeaveReason::Left
            }
        );
        let mut c = connect_on_shard(addr, 1).await;
        c.join("lobby").await.unwrap();
        let c_id = c.player().to_owned();
        assert!(
            matches!(watcher.next_event().await.unwrap(), ServerEvent::MemberJoined { player, .. } if player == c_id)
        );
        drop(c); // the socket closes without a close frame
        assert_eq!(
            watcher.next_event().await.unwrap(),
            ServerEvent::MemberAway {
                room: "lobby".into(),
                player: c_id.clone(),
            }
        );
        assert_eq!(
            watcher.next_event().await.unwrap(),
            ServerEvent::MemberLeft {
                room: "lobby".into(),
                player: c_id,
                members: 1,
                reason: LeaveReason::Disconnected
            }
        );
        // Leaving a room one is not in is an error, not a crash.
        assert!(b.leave("lobby").await.is_err());
    });
    srv.stop().unwrap();
}

#[test]
fn a_thousand_clients_in_a_hundred_rooms_get_every_message_exactly_once() {
    const CLIENTS: usize = 1000;
    const ROOM: usize = 10;
    const MSGS: u32 = 5;
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..CLIENTS {
            let mut c = connect(addr).await;
            c.join(&format!("room-{}", i / ROOM)).await.unwrap();
            let id = c.player().to_owned();
            let (tx, rx) = c.split();
            senders.push((id, tx));
            receivers.push(rx);
        }
        // Everyone in; wait for each receiver to see the MemberJoined of those after it so
        // that all joins are counted before sending.
        let expected_per_client = (ROOM as u32 - 1) * MSGS;
        let seen: Rc<RefCell<Deliveries>> = Rc::default();
        let mut tasks = Vec::new();
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let seen = Rc::clone(&seen);
            tasks.push(glommio::spawn_local(async move {
                let mut got = 0;
                while got < expected_per_client {
                    if let ServerEvent::Message { from, payload, .. } =
                        rx.next_event().await.unwrap()
                    {
                        let seq = u32::from_le_bytes(payload[..4].try_into().unwrap());
                        *seen.borrow_mut().entry((i, from, seq)).or_default() += 1;
                        got += 1;
                    }
                }
            }));
        }
        for seq in 0..MSGS {
            for (i, (_, tx)) in senders.iter().enumerate() {
                tx.send(
                    &format!("room-{}", i / ROOM),
                    "tick",
                    &seq.to_le_bytes(),
                    PayloadKind::Binary,
                )
                .await
                .unwrap();
            }
        }
        for t in tasks {
            t.await;
        }
        let seen = seen.borrow();
        assert_eq!(
            seen.len(),
            CLIENTS * expected_per_client as usize,
            "every delivery distinct"
        );
        assert!(seen.values().all(|&n| n == 1), "no duplicates");
        for ((i, from, _), _) in seen.iter() {
            let sender = senders.iter().position(|(id, _)| id == from).unwrap();
            assert_eq!(sender / ROOM, i / ROOM, "delivered only within the room");
            assert_ne!(sender, *i, "never back to the sender");
        }
    });
    let stats = srv.stats();
    assert_eq!(stats.messages_in, (CLIENTS as u64) * u64::from(MSGS));
    srv.stop().unwrap();
}

/// A shutdown drains: every client is told to go (`Draining`), and those still there at
/// `drain_timeout_ms` are closed with 1001.
#[test]
fn shutdown_tells_every_client_to_go_then_closes_the_rest_with_1001() {
    let srv = server(2, |c| c.drain_timeout_ms = 200);
    let addr = srv.local_addr();
    let control = srv.control();
    let joined = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        run(move || async move {
            let mut clients = Vec::new();
            for _ in 0..10 {
                clients.push(connect(addr).await);
            }
            still_serving(addr).await;
            control.request_shutdown();
            for mut c in clients {
                loop {
                    match c.next_event().await {
                        Ok(ServerEvent::Draining { .. }) => break,
                        Ok(_) => {}
                        Err(e) => panic!("closed before it was told to go: {e}"),
                    }
                }
                let close = c.closed().await;
                assert_eq!(close.map(|(code, _)| code), Some(1001));
            }
        });
        started.elapsed()
    });
    let elapsed = joined.join().unwrap();
    assert!(elapsed < std::time::Duration::from_secs(10));
    srv.join().unwrap();
}

#[test]
fn stats_count_connections_messages_and_latency() {
    let srv = server(1, |c| c.stats_publish_ms = 10);
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        a.join("s").await.unwrap();
        b.join("s").await.unwrap();
        for i in 0u32..50 {
            a.send("s", "e", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        for _ in 0..50 {
            next_message(&mut b).await;
        }
    });
    // The latency histogram is published every 10 ms; wait for a publication.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut stats = srv.stats();
    while stats.latency.count < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        stats = srv.stats();
    }
    assert_eq!(stats.messages_in, 50);
    assert!(stats.messages_out >= 50);
    assert!(stats.latency.count >= 50, "{stats}");
    assert!(stats.accepted >= 2);
    srv.stop().unwrap();
}

/// Waits until `cond` holds for the server's stats, from inside a test body; fails the test
/// after 10 s.
async fn stats_until(
    stats: &corelay::stats::StatsRegistry,
    cond: impl Fn(&corelay::Stats) -> bool,
) -> corelay::Stats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = stats.snapshot();
        if cond(&s) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("the stats never got there: {s}");
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[test]
fn deliveries_ready_together_for_one_member_leave_in_one_write() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    let stats = srv.stats_registry();
    run(move || async move {
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        a.join("burst").await.unwrap();
        b.join("burst").await.unwrap();
        // The join notice to a must be out before counting writes.
        let before = stats_until(&stats, |s| s.messages_out >= 1).await;
        // A hundred messages in one client write: the server reads them in one turn and
        // b's hundred frames leave together.
        const N: u32 = 100;
        for i in 0..N {
            a.send("burst", "move", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        for i in 0..N {
            let (_, p) = next_message(&mut b).await;
            assert_eq!(u32::from_le_bytes(p[..].try_into().unwrap()), i);
        }
        let after = stats.snapshot();
        let writes = after.writes - before.writes;
        assert!(
            writes <= 5,
            "{N} deliveries to one member took {writes} writes: {after}"
        );
    });
    srv.stop().unwrap();
}

#[test]
fn a_flush_delay_coalesces_messages_that_arrive_in_separate_turns() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(100);
    let srv = server(1, |c| c.flush_delay_us = DELAY.as_micros() as u64);
    let addr = srv.local_addr();
    let stats = srv.stats_registry();
    run(move || async move {
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        a.join("slow").await.unwrap();
        b.join("slow").await.unwrap();
        let before = stats_until(&stats, |s| s.messages_out >= 1).await;
        // Each message is handled in its own turn (the next one is sent only once the
        // server has counted the previous), yet b's output waits DELAY for more: one write
        // per DELAY that the sending took, not one per message.
        const N: u64 = 20;
        let started = std::time::Instant::now();
        for i in 0..N {
            a.send("slow", "move", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
            stats_until(&stats, |s| s.messages_in > before.messages_in + i).await;
        }
        for i in 0..N {
            let (_, p) = next_message(&mut b).await;
            assert_eq!(u64::from_le_bytes(p[..].try_into().unwrap()), i);
        }
        let after = stats.snapshot();
        assert_eq!(after.messages_in - before.messages_in, N);
        let writes = after.writes - before.writes;
        // However slow this machine is, the bound follows it (and stays far below N on any
        // machine that sends 20 messages in well under 2 s).
        let delays = (started.elapsed().as_micros() / DELAY.as_micros()) as u64;
        assert!(
            writes <= 2 + delays,
            "{N} deliveries took {writes} writes over {delays} delays: {after}"
        );
    });
    srv.stop().unwrap();
}

#[test]
fn a_full_cross_shard_backlog_holds_input_back_and_loses_nothing() {
    // One message fits in each cross-shard queue and two in the backlog: the sending
    // shard must stop reading its clients until the other shard catches up.
    let srv = server(2, |c| {
        c.mesh_queue = 1;
        c.mesh_backlog = 2;
        // The senders flood on purpose, to fill the mesh.
        c.rate_limits.native = RateProfile::UNLIMITED;
    });
    let addr = srv.local_addr();
    let stats = srv.stats_registry();
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        a.join("wide").await.unwrap();
        b.join("wide").await.unwrap();
        const BATCH: u32 = 300;
        for i in 0..BATCH {
            a.send("wide", "move", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        // The second batch comes while the first is still crossing, one message at a time.
        let (_, p) = next_message(&mut b).await;
        assert_eq!(u32::from_le_bytes(p[..].try_into().unwrap()), 0);
        for i in BATCH..2 * BATCH {
            a.send("wide", "move", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        for i in 1..2 * BATCH {
            let (_, p) = next_message(&mut b).await;
            assert_eq!(u32::from_le_bytes(p[..].try_into().unwrap()), i, "in order");
        }
        let after = stats_until(&stats, |s| s.mesh_backlog == 0).await;
        assert!(after.mesh_stalls > 0, "input was held back: {after}");
        assert_eq!(after.mesh_backlog, 0);
    });
    srv.stop().unwrap();
}

/// One HTTP request on a connection of its own; the status and body of the answer.
async fn http(addr: std::net::SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let s = corelay::client::Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), body.to_owned())
}

const EIO: &str = "/socket.io/?EIO=4&transport=polling";

/// A socket.io client on long-polling, connected to the main namespace: its polling URL.
async fn polling_member(addr: std::net::SocketAddr, room: &str) -> String {
    let (_, open) = http(addr, "GET", EIO, "").await;
    let v: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    let target = format!("{EIO}&sid={}", v["sid"].as_str().unwrap());
    let join = format!("40\u{1e}420[\"join\",\"{room}\"]");
    assert_eq!(http(addr, "POST", &target, &join).await.0, 200);
    poll_until(addr, &target, "430[").await;
    target
}

/// Polls until the collected bodies contain `needle`; returns them.
async fn poll_until(addr: std::net::SocketAddr, target: &str, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let (status, body) = http(addr, "GET", target, "").await;
        assert_eq!(status, 200, "the session is still open: {seen}");
        seen.push_str(&body);
        seen.push('\u{1e}');
    }
    seen
}

#[test]
fn a_message_too_big_for_a_recipient_is_refused_to_its_sender_and_nobody_is_closed() {
    // A 16 KiB outbound budget; the native message limit (64 KiB) lets bigger ones in.
    let srv = server(2, |c| {
        c.outbound_queue_bytes = 16 * 1024;
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        a.join("big").await.unwrap();
        b.join("big").await.unwrap();
        let polling = polling_member(addr, "big").await;
        // Over the budget in any encoding; and 13 KiB, under it as a native frame but over
        // it in base64 for the long-polling member (the bound is the largest encoding).
        for len in [20 * 1024, 13 * 1024] {
            a.send("big", "blob", &vec![7u8; len], PayloadKind::Binary)
                .await
                .unwrap();
            // Bounded: without the refusal the sender hears nothing and its room is closed.
            let code = glommio::timer::timeout(std::time::Duration::from_secs(10), async {
                Ok(a.next_error().await.unwrap())
            })
            .await
            .expect("the sender is told");
            assert_eq!(code, 15, "too_big ({len} bytes)");
        }
        // The socket.io member's own: JSON text over the budget, answered on its ack.
        let huge = "x".repeat(20 * 1024);
        let to = format!("421[\"to\",\"big\",\"blob\",\"{huge}\"]");
        assert_eq!(http(addr, "POST", &polling, &to).await.0, 200);
        poll_until(addr, &polling, r#"431[{"error":"too_big"}]"#).await;
        // Nobody was closed and the room still relays, across shards and to long-polling.
        a.send("big", "after", b"1", PayloadKind::Json)
            .await
            .unwrap();
        loop {
            match b.next_event().await.unwrap() {
                ServerEvent::Message { event, .. } => {
                    assert_eq!(event, "after", "the refused messages never arrived");
                    break;
                }
                ServerEvent::MemberJoined { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        let seen = poll_until(addr, &polling, "\"after\"").await;
        assert!(!seen.contains("blob"), "{seen}");
        still_serving(addr).await;
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(corelay::stats::Refusal::TooBigForRecipients),
        3,
        "{stats}"
    );
    assert_eq!(
        stats.closes_for(corelay::stats::CloseReason::SlowConsumer),
        0,
        "{stats}"
    );
    srv.stop().unwrap();
}

/// `max_room_members` = 2: a third joiner (on the last shard, with the room homed on the
/// first) is refused with room_full and never receives the room's messages; once a member
/// leaves it may join.
fn a_full_room_refuses_a_joiner(shards: usize) {
    let srv = server(shards, |c| c.max_room_members = 2);
    let addr = srv.local_addr();
    let last = shards as u32 - 1;
    run(move || async move {
        let full = room_homed_on(0, shards);
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 0).await;
        let mut c = connect_on_shard(addr, last).await;
        // c and a also share a room, for a marker that follows a's message on the same path.
        c.join("other").await.unwrap();
        a.join("other").await.unwrap();
        a.join(&full).await.unwrap();
        assert_eq!(b.join(&full).await.unwrap(), 2);
        match c.join(&full).await {
            Err(corelay::client::ClientError::Server { code, .. }) => assert_eq!(code, 16),
            other => panic!("expected room_full, got {other:?}"),
        }
        a.send(&full, "secret", b"1", PayloadKind::Json)
            .await
            .unwrap();
        a.send("other", "marker", b"2", PayloadKind::Json)
            .await
            .unwrap();
        // The members are served; the refused joiner sees the marker and nothing before it.
        assert_eq!(next_message(&mut b).await.1, &b"1"[..]);
        loop {
            match c.next_event().await.unwrap() {
                ServerEvent::Message { room, event, .. } => {
                    assert_eq!((room.as_str(), event.as_str()), ("other", "marker"));
                    break;
                }
                ServerEvent::MemberJoined { room, .. } => assert_eq!(room, "other"),
                other => panic!("unexpected {other:?}"),
            }
        }
        // A leave makes room.
        b.leave(&full).await.unwrap();
        assert_eq!(c.join(&full).await.unwrap(), 2);
        a.send(&full, "welcome", b"3", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(next_message(&mut c).await.1, &b"3"[..]);
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(corelay::stats::Refusal::RoomFull),
        1,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn a_join_past_max_room_members_is_refused_with_room_full() {
    a_full_room_refuses_a_joiner(1);
}

#[test]
fn a_join_past_max_room_members_is_refused_by_the_home_shard_across_shards() {
    a_full_room_refuses_a_joiner(2);
}

#[test]
fn a_message_sent_right_after_a_join_on_another_shard_reaches_the_room() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(0, 2);
        let mut a = connect_on_shard(addr, 0).await;
        a.join(&room).await.unwrap();
        let mut c = connect_on_shard(addr, 1).await;
        // The join and the message leave together: the message waits for the home's count.
        let join = corelay::proto::native::ClientFrame::Join {
            req: 9_000,
            room: room.clone(),
        };
        c.send_raw(&corelay::proto::native::encode_client(&join))
            .unwrap();
        c.send(&room, "first", b"1", PayloadKind::Json)
            .await
            .unwrap();
        let (from, payload) = next_message(&mut a).await;
        assert_eq!((from, &payload[..]), (c.player().to_owned(), &b"1"[..]));
        c.ping().await.unwrap();
        assert!(c.take_errors().is_empty());
    });
    srv.stop().unwrap();
}
