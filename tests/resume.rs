//! Session resume with exact replay (issue 9, item 4) over real sockets: a native client's
//! connection is cut mid-stream while others keep sending; it reconnects and receives exactly
//! what it missed, in order, once, before anything newer.

mod common;

use std::time::Duration;

use common::{connect, connect_on_shard, room_homed_on, run, server, wait_for_stats};
use corelay::client::{Client, PayloadKind, ServerEvent};
use corelay::proto::native::{self, ClientFrame, ErrorCode};

/// Reads events until a message arrives; returns its payload as the number it carries.
async fn next_number(c: &mut Client) -> u32 {
    loop {
        match c.next_event().await.expect("event") {
            ServerEvent::Message { payload, .. } => {
                return u32::from_le_bytes(payload[..4].try_into().unwrap())
            }
            _ => continue,
        }
    }
}

async fn send_numbers(c: &mut Client, room: &str, numbers: std::ops::Range<u32>) {
    for i in numbers {
        c.send(room, "n", &i.to_le_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
    }
}

/// Waits for a notice about `who` in a room.
async fn wait_for(c: &mut Client, want: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
    loop {
        let e = c.next_event().await.expect("event");
        if want(&e) {
            return e;
        }
    }
}

/// The whole scenario: `bob` reads part of a stream, loses his connection with more in
/// flight, `alice` keeps sending, `bob` reconnects and must see exactly the rest.
async fn drop_mid_stream_and_resume(mut alice: Client, mut bob: Client, room: &str) {
    alice.join(room).await.unwrap();
    bob.join(room).await.unwrap();
    send_numbers(&mut alice, room, 0..50).await;
    for want in 0..20 {
        assert_eq!(next_number(&mut bob).await, want);
    }
    // 20..50 are sent and maybe on their way to (or in the socket buffer of) the connection
    // that is cut now: bob has not seen them.
    bob.drop_connection();
    let bob_name = bob.player().to_owned();
    let away = wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberAway { .. })).await;
    assert_eq!(
        away,
        ServerEvent::MemberAway {
            room: room.to_owned(),
            player: bob_name.clone()
        }
    );
    send_numbers(&mut alice, room, 50..100).await;
    assert!(
        bob.reconnect().await.expect("reconnects"),
        "the session resumed"
    );
    assert!(bob.recovered());
    assert_eq!(bob.player(), bob_name, "the same player id");
    match bob.next_event().await.unwrap() {
        ServerEvent::Resumed {
            room: r,
            members: 2,
            replayed,
            gap: false,
        } if r == room => assert!(replayed >= 80, "{replayed}"),
        other => panic!("expected Resumed first, got {other:?}"),
    }
    // Exactly once and in order: every number from 20 on, then the live ones.
    for want in 20..100 {
        assert_eq!(next_number(&mut bob).await, want);
    }
    let back = wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberBack { .. })).await;
    assert_eq!(
        back,
        ServerEvent::MemberBack {
            room: room.to_owned(),
            player: bob_name
        }
    );
    send_numbers(&mut alice, room, 100..101).await;
    assert_eq!(
        next_number(&mut bob).await,
        100,
        "nothing repeated, nothing lost"
    );
    // And bob still sends into the room as a member.
    bob.send(room, "n", &7u32.to_le_bytes(), PayloadKind::Binary)
        .await
        .unwrap();
    assert_eq!(next_number(&mut alice).await, 7);
}

fn no_rate_limits(c: &mut corelay::Config) {
    c.rate_limits.native.messages_per_s = 0.0;
}

#[test]
fn a_dropped_session_resumes_with_exactly_what_it_missed() {
    let srv = server(1, no_rate_limits);
    let addr = srv.local_addr();
    run(move || async move {
        let alice = connect(addr).await;
        let bob = connect(addr).await;
        drop_mid_stream_and_resume(alice, bob, "arena").await;
    });
    // The clients are gone now: their sessions wait for them, shown in the stats.
    let stats = wait_for_stats(&srv, |s| s.sessions_away == 2);
    assert_eq!((stats.resumes, stats.sessions_away), (1, 2));
    assert!(stats.history_messages > 100 && stats.history_bytes > 0);
}

#[test]
fn a_session_resumes_when_its_room_is_homed_on_another_shard() {
    let srv = server(2, no_rate_limits);
    let addr = srv.local_addr();
    let room = room_homed_on(0, 2);
    run(move || async move {
        // Both players on shard 1, the room's home on shard 0; bob's reconnect may land on
        // either shard and is routed to his session's.
        let alice = connect_on_shard(addr, 1).await;
        let bob = connect_on_shard(addr, 1).await;
        drop_mid_stream_and_resume(alice, bob, &room).await;
    });
}

#[test]
fn senders_on_several_shards_are_replayed_in_the_rooms_one_order() {
    let srv = server(2, no_rate_limits);
    let addr = srv.local_addr();
    let room = room_homed_on(1, 2);
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        let mut watcher = connect_on_shard(addr, 0).await;
        let mut bob = connect_on_shard(addr, 0).await;
        for c in [&mut a, &mut b, &mut watcher, &mut bob] {
            c.join(&room).await.unwrap();
        }
        bob.drop_connection();
        // Two senders on two shards, interleaved; the watcher's view is the room's order.
        for i in 0..40u32 {
            let sender = if i % 2 == 0 { &mut a } else { &mut b };
            send_numbers(sender, &room, i..i + 1).await;
        }
        let mut order = Vec::new();
        while order.len() < 40 {
            order.push(next_number(&mut watcher).await);
        }
        assert!(bob.reconnect().await.unwrap());
        let mut replay = Vec::new();
        while replay.len() < 40 {
            replay.push(next_number(&mut bob).await);
        }
        assert_eq!(
            replay, order,
            "bob's replay is in the order the room delivered"
        );
    });
}

#[test]
fn past_the_window_the_session_is_gone_and_its_rooms_were_told_it_left() {
    let srv = server(1, |c| {
        c.resume.window_ms = 200;
        c.stats_publish_ms = 20;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut alice = connect(addr).await;
        let mut bob = connect(addr).await;
        alice.join("arena").await.unwrap();
        bob.join("arena").await.unwrap();
        let old_id = bob.player().to_owned();
        bob.drop_connection();
        wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberAway { .. })).await;
        let left = wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberLeft { .. })).await;
        assert!(
            matches!(&left, ServerEvent::MemberLeft { player, members: 1, .. } if *player == old_id),
            "{left:?}"
        );
        // The gap answer: a fresh session, with a new id and no rooms.
        assert!(!bob.reconnect().await.unwrap());
        assert!(!bob.recovered());
        assert_ne!(bob.player(), old_id);
        assert_eq!(bob.join("arena").await.unwrap(), 2);
    });
    assert_eq!(srv.stats().resumes_refused, 1);
}

/// The raw answer to a `Resume` for `session` with `secret`, on a fresh connection.
async fn resume_answer(addr: std::net::SocketAddr, session: u64, secret: &str) -> Vec<u8> {
    let path = format!("/ws?resume={session}");
    let (tx, mut rx) = corelay::client::ws::connect(
        addr,
        &addr.to_string(),
        &path,
        None,
        1 << 20,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    tx.send_binary(&native::encode_client(&ClientFrame::Resume {
        req: 9,
        session,
        secret: secret.to_owned(),
        rooms: Vec::new(),
    }))
    .unwrap();
    match rx.next_message().await.unwrap() {
        tungstenite::Message::Binary(b) => b.to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_secret_is_refused_like_a_session_that_never_existed() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut alice = connect(addr).await;
        let mut bob = connect(addr).await;
        alice.join("arena").await.unwrap();
        bob.join("arena").await.unwrap();
        bob.drop_connection();
        wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberAway { .. })).await;
        let wrong = resume_answer(addr, bob.session(), "0123456789abcdef0123456789abcdef").await;
        let unknown =
            resume_answer(addr, bob.session() + 1, "0123456789abcdef0123456789abcdef").await;
        assert_eq!(wrong, unknown, "the answers do not tell them apart");
        match rkyv::deserialize::<native::ServerFrame, rkyv::rancor::Error>(
            native::access_server(&wrong).unwrap(),
        )
        .unwrap()
        {
            native::ServerFrame::Error { req: 9, code, .. } => {
                assert_eq!(code, ErrorCode::CannotResume as u16)
            }
            other => panic!("{other:?}"),
        }
        // The guesses did not end the session: the right secret still resumes it.
        assert!(bob.reconnect().await.unwrap());
        wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberBack { .. })).await;
        // The client's own wrong secret: refused, and it falls back to a fresh session.
        let old_id = bob.player().to_owned();
        bob.drop_connection();
        wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberAway { .. })).await;
        bob.set_secret("not-the-secret");
        assert!(!bob.reconnect().await.unwrap());
        assert_ne!(bob.player(), old_id);
    });
    let stats = wait_for_stats(&srv, |s| s.resumes == 1);
    assert_eq!((stats.resumes, stats.resumes_refused), (1, 3));
}

#[test]
fn without_a_window_sessions_end_with_their_connection() {
    let srv = server(1, |c| c.resume.window_ms = 0);
    let addr = srv.local_addr();
    run(move || async move {
        let mut alice = connect(addr).await;
        let mut bob = connect(addr).await;
        assert_eq!(bob.session(), 0);
        alice.join("arena").await.unwrap();
        bob.join("arena").await.unwrap();
        bob.drop_connection();
        let left = wait_for(&mut alice, |e| {
            matches!(
                e,
                ServerEvent::MemberLeft { .. } | ServerEvent::MemberAway { .. }
            )
        })
        .await;
        assert!(matches!(left, ServerEvent::MemberLeft { .. }), "{left:?}");
        assert!(!bob.reconnect().await.unwrap());
    });
}

#[test]
fn with_auto_reconnect_the_client_resumes_by_itself() {
    let srv = server(2, no_rate_limits);
    let addr = srv.local_addr();
    run(move || async move {
        let mut alice = connect(addr).await;
        let mut config = corelay::client::ClientConfig::new(common::url(addr));
        config.auto_reconnect = true;
        let mut bob = Client::connect(&config).await.unwrap();
        alice.join("arena").await.unwrap();
        bob.join("arena").await.unwrap();
        bob.drop_connection();
        wait_for(&mut alice, |e| matches!(e, ServerEvent::MemberAway { .. })).await;
        send_numbers(&mut alice, "arena", 0..3).await;
        // No reconnect call: next_event notices the lost connection and resumes.
        let first = bob.next_event().await.unwrap();
        assert!(
            matches!(
                first,
                ServerEvent::Resumed {
                    replayed: 3,
                    gap: false,
                    ..
                }
            ),
            "{first:?}"
        );
        assert!(bob.recovered());
        for want in 0..3 {
            assert_eq!(next_number(&mut bob).await, want);
        }
    });
}
