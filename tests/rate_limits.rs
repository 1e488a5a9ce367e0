//! Rate limits per connection over real sockets (`[rate_limits]`): messages, bytes and joins
//! past their bucket are refused to the sender and never reach the room; a client that
//! keeps exceeding them is closed while its room goes on. Native clients with the Rust
//! client, Socket.IO with raw Engine.IO over WebSocket (tests/common/eio.rs); interop.rs
//! checks the Socket.IO ack with the official JavaScript client.

mod common;

use std::time::Duration;

use common::eio::{data, next_starting, sio_connect, sio_next, ws_next, ws_send};
use common::{close_of, connect, paced_flood, run, server, wait_for_stats, within};
use corelay::client::{Client, ClientError, PayloadKind, ServerEvent};
use corelay::config::RateProfile;
use corelay::proto::native::ErrorCode;
use corelay::stats::{CloseReason, Refusal};
use serde_json::json;

/// A profile that limits nothing, to set one bucket on.
fn unlimited() -> RateProfile {
    RateProfile::UNLIMITED
}

/// The payload of the next message `c` receives (notices skipped).
async fn next_payload(c: &mut Client) -> Vec<u8> {
    loop {
        match within("a message", c.next_event()).await.expect("event") {
            ServerEvent::Message { payload, .. } => return payload.to_vec(),
            _ => continue,
        }
    }
}

/// `a` and `b` in room `r`, `b` seeing `a` join.
async fn pair(addr: std::net::SocketAddr) -> (Client, Client) {
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    b.join("r").await.unwrap();
    a.join("r").await.unwrap();
    (a, b)
}

#[test]
fn native_messages_past_the_rate_are_refused_and_not_relayed() {
    let srv = server(1, |c| {
        // Three at once, then one a second: the test sends five within milliseconds.
        c.rate_limits.native = RateProfile {
            messages_per_s: 1.0,
            messages_burst: 3,
            ..unlimited()
        };
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (mut a, mut b) = pair(addr).await;
        for i in 0..5u8 {
            a.send("r", "move", &[i], PayloadKind::Binary)
                .await
                .unwrap();
        }
        for _ in 0..2 {
            let code = within("the refusal", a.next_error()).await.unwrap();
            assert_eq!(code, ErrorCode::RateLimited as u16);
        }
        assert_eq!(ErrorCode::from_code(17), Some(ErrorCode::RateLimited));
        assert_eq!(ErrorCode::RateLimited.name(), "rate_limited");
        // The refusals came after the server handled all five: a marker from another
        // member (with its own buckets) is what b gets after the three that passed.
        let c = connect(addr).await;
        let mut c = c;
        c.join("r").await.unwrap();
        c.send("r", "move", b"marker", PayloadKind::Binary)
            .await
            .unwrap();
        for i in 0..3u8 {
            assert_eq!(next_payload(&mut b).await, vec![i]);
        }
        assert_eq!(next_payload(&mut b).await, b"marker".to_vec());
        // The sender stays connected.
        a.ping().await.expect("still connected");
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(Refusal::RateLimitedMessages),
        2,
        "{stats}"
    );
    assert!(stats
        .to_string()
        .contains("refused.rate_limited_messages=2"));
    srv.stop().unwrap();
}

#[test]
fn native_bytes_past_the_rate_are_refused_and_not_relayed() {
    let srv = server(1, |c| {
        c.rate_limits.native = RateProfile {
            bytes_per_s: 1.0,
            bytes_burst: 100,
            ..unlimited()
        };
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (mut a, mut b) = pair(addr).await;
        // 60 pass, 60 more do not fit in the 40 left, 40 do.
        a.send("r", "m", &[1; 60], PayloadKind::Binary)
            .await
            .unwrap();
        a.send("r", "m", &[2; 60], PayloadKind::Binary)
            .await
            .unwrap();
        a.send("r", "m", &[3; 40], PayloadKind::Binary)
            .await
            .unwrap();
        let code = within("the refusal", a.next_error()).await.unwrap();
        assert_eq!(code, ErrorCode::RateLimited as u16);
        assert_eq!(next_payload(&mut b).await, vec![1; 60]);
        assert_eq!(next_payload(&mut b).await, vec![3; 40]);
        a.ping().await.expect("still connected");
    });
    let stats = srv.stats();
    assert_eq!(stats.refused_for(Refusal::RateLimitedBytes), 1, "{stats}");
    assert_eq!(
        stats.refused_for(Refusal::RateLimitedMessages),
        0,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn native_joins_past_the_rate_are_refused_and_the_room_never_sees_them() {
    let srv = server(1, |c| {
        c.rate_limits.native = RateProfile {
            joins_per_s: 0.5,
            joins_burst: 2,
            ..unlimited()
        };
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect(addr).await;
        assert_eq!(a.join("one").await.unwrap(), 1);
        assert_eq!(a.join("two").await.unwrap(), 1);
        match a.join("three").await {
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited as u16)
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // a is not a member: the next joiner is alone.
        let mut b = connect(addr).await;
        assert_eq!(b.join("three").await.unwrap(), 1);
        a.ping().await.expect("still connected");
    });
    let stats = srv.stats();
    assert_eq!(stats.refused_for(Refusal::RateLimitedJoins), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_persistent_native_abuser_is_closed_with_1008_while_its_room_keeps_receiving() {
    let srv = server(1, |c| {
        c.rate_limits.native = RateProfile {
            messages_per_s: 20.0,
            messages_burst: 2,
            ..unlimited()
        };
        c.rate_limits.sustained_ms = 300;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (a, mut b) = pair(addr).await;
        let mut c = connect(addr).await;
        c.join("r").await.unwrap();
        let (tx, mut rx) = a.split();
        // Two hundred a second against twenty allowed.
        let (stop, flood) = paced_flood(tx, "r");
        // The room goes on meanwhile: b's messages, within b's own rate, reach c.
        for i in 0..5u8 {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            b.send("r", "tick", &[i], PayloadKind::Binary)
                .await
                .unwrap();
            loop {
                match within("b's tick", c.next_event()).await.unwrap() {
                    ServerEvent::Message { event, payload, .. } if event == "tick" => {
                        assert_eq!(payload.to_vec(), vec![i]);
                        break;
                    }
                    _ => continue,
                }
            }
        }
        let closed = close_of(&mut rx).await;
        stop.set(true);
        flood.await;
        assert_eq!(closed, Some((1008, "rate limited".to_owned())));
        // After it: still a room, and c hears a leave and then b.
        b.send("r", "tick", b"after", PayloadKind::Binary)
            .await
            .unwrap();
        loop {
            match within("b after the close", c.next_event()).await.unwrap() {
                ServerEvent::Message { event, payload, .. } if event == "tick" => {
                    assert_eq!(payload.to_vec(), b"after".to_vec());
                    break;
                }
                _ => continue,
            }
        }
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::RateLimited) == 1);
    assert_eq!(stats.closes_for(CloseReason::RateLimited), 1, "{stats}");
    assert!(
        stats.refused_for(Refusal::RateLimitedMessages) > 1,
        "{stats}"
    );
    assert!(stats.to_string().contains("close.rate_limited=1"));
    srv.stop().unwrap();
}

#[test]
fn socketio_events_past_the_rate_get_rate_limited_and_are_not_relayed() {
    let srv = server(1, |c| {
        // Every event packet counts, the `join` too: the join and two `to`s pass.
        c.rate_limits.socketio = RateProfile {
            messages_per_s: 1.0,
            messages_burst: 3,
            ..unlimited()
        };
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut native = connect(addr).await;
        native.join("arena").await.unwrap();
        let (sio, mut codec, _) = sio_connect(addr, "/").await;
        ws_send(&sio, r#"420["join","arena"]"#).await;
        next_starting(&sio, &mut codec, "430[").await;
        ws_send(&sio, r#"421["to","arena","move",1]"#).await;
        ws_send(&sio, r#"422["to","arena","move",2]"#).await;
        ws_send(&sio, r#"423["to","arena","move",3]"#).await;
        ws_send(&sio, r#"42["to","arena","move",4]"#).await;
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "431").await, "431"),
            json!([{"room": "arena"}])
        );
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "432").await, "432"),
            json!([{"room": "arena"}])
        );
        // Past the limit: the ack carries the error, or without one an `error` event.
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "433").await, "433"),
            json!([{"error": "rate_limited"}])
        );
        let error = next_starting(&sio, &mut codec, r#"42["error""#).await;
        assert_eq!(
            data(&error, "42"),
            json!(["error", {"error": "rate_limited", "event": "to"}])
        );
        // The native member got the two that passed, then a marker of its own room.
        let mut marker = connect(addr).await;
        marker.join("arena").await.unwrap();
        marker
            .send("arena", "move", b"99", PayloadKind::Json)
            .await
            .unwrap();
        for expected in [&b"1"[..], b"2", b"99"] {
            assert_eq!(next_payload(&mut native).await, expected.to_vec());
        }
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(Refusal::RateLimitedMessages),
        2,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn socketio_joins_and_bytes_have_their_own_buckets() {
    let srv = server(1, |c| {
        c.rate_limits.socketio = RateProfile {
            joins_per_s: 0.5,
            joins_burst: 1,
            // The first `to` below is 33 bytes on the wire, the second 63.
            bytes_per_s: 1.0,
            bytes_burst: 80,
            ..unlimited()
        };
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (sio, mut codec, _) = sio_connect(addr, "/").await;
        ws_send(&sio, r#"420["join","a"]"#).await;
        next_starting(&sio, &mut codec, "430[").await;
        ws_send(&sio, r#"421["join","b"]"#).await;
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "431").await, "431"),
            json!([{"error": "rate_limited"}])
        );
        ws_send(&sio, r#"422["to","a","move",1]"#).await;
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "432").await, "432"),
            json!([{"room": "a"}])
        );
        ws_send(&sio, r#"423["to","a","move","a payload that is too long"]"#).await;
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "433").await, "433"),
            json!([{"error": "rate_limited"}])
        );
    });
    let stats = srv.stats();
    assert_eq!(stats.refused_for(Refusal::RateLimitedJoins), 1, "{stats}");
    assert_eq!(stats.refused_for(Refusal::RateLimitedBytes), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_persistent_socketio_abuser_is_disconnected_while_its_room_keeps_receiving() {
    let srv = server(1, |c| {
        c.rate_limits.socketio = RateProfile {
            messages_per_s: 5.0,
            messages_burst: 1,
            ..unlimited()
        };
        c.rate_limits.sustained_ms = 300;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut sender = connect(addr).await;
        sender.join("arena").await.unwrap();
        let mut receiver = connect(addr).await;
        receiver.join("arena").await.unwrap();
        let (sio, mut codec, _) = sio_connect(addr, "/").await;
        ws_send(&sio, r#"420["join","arena"]"#).await;
        next_starting(&sio, &mut codec, "430[").await;
        // A hundred a second against five, each refusal read as it comes, until the
        // server disconnects the namespace (`41`) and ends the session.
        let mut refused = 0;
        let disconnected = within("the disconnect", async {
            loop {
                ws_send(&sio, r#"42["to","arena","spam",0]"#).await;
                glommio::timer::sleep(Duration::from_millis(10)).await;
                loop {
                    let next = glommio::timer::timeout(Duration::from_millis(1), async {
                        Ok(sio_next(&sio, &mut codec).await)
                    })
                    .await;
                    match next {
                        Ok(Some(m)) if m == "41" => return true,
                        Ok(Some(m)) if m.starts_with(r#"42["error""#) => refused += 1,
                        Ok(Some(_)) => {}
                        Ok(None) => return false,
                        Err(_) => break,
                    }
                }
            }
        })
        .await;
        assert!(disconnected, "a DISCONNECT packet before the end");
        assert!(refused > 0);
        assert!(
            ws_next(&sio, &mut codec).await.is_err(),
            "the session ended"
        );
        // The room goes on.
        sender
            .send("arena", "tick", b"1", PayloadKind::Json)
            .await
            .unwrap();
        loop {
            if let ServerEvent::Message { event, .. } =
                within("the tick", receiver.next_event()).await.unwrap()
            {
                if event == "tick" {
                    break;
                }
            }
        }
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::RateLimited) == 1);
    assert_eq!(stats.closes_for(CloseReason::RateLimited), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn the_default_profile_limits_a_flood_and_zero_turns_it_off() {
    // The defaults are on: a burst far past `messages_burst` is refused in part.
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    let burst = corelay::config::RateLimits::default().native.messages_burst;
    run(move || async move {
        let (mut a, _b) = pair(addr).await;
        for _ in 0..burst + 20 {
            a.send("r", "m", b"x", PayloadKind::Binary).await.unwrap();
        }
        let code = within("a refusal", a.next_error()).await.unwrap();
        assert_eq!(code, ErrorCode::RateLimited as u16);
    });
    srv.stop().unwrap();

    // With every rate 0 the same flood passes whole.
    let srv = server(1, |c| c.rate_limits.native = RateProfile::UNLIMITED);
    let addr = srv.local_addr();
    run(move || async move {
        let (mut a, mut b) = pair(addr).await;
        let n = burst + 20;
        for i in 0..n {
            a.send("r", "m", &i.to_le_bytes(), PayloadKind::Binary)
                .await
                .unwrap();
        }
        for i in 0..n {
            assert_eq!(next_payload(&mut b).await, i.to_le_bytes().to_vec());
        }
        assert!(a.take_errors().is_empty());
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(Refusal::RateLimitedMessages),
        0,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn socketio_application_events_count_as_messages() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let handled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&handled);
    let app = corelay::socketio::SocketIo::empty().namespace(
        "/",
        corelay::socketio::Namespace::new().on("fire", move |_, _, ack| {
            seen.fetch_add(1, Ordering::Relaxed);
            if let Some(ack) = ack {
                ack.send([corelay::proto::socketio::Arg::Json(json!("done"))]);
            }
        }),
    );
    let mut config = corelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..corelay::Config::default()
    };
    config.rate_limits.socketio = RateProfile {
        messages_per_s: 1.0,
        messages_burst: 2,
        ..unlimited()
    };
    let srv = corelay::Server::start_with(config, app).expect("server starts");
    let addr = srv.local_addr();
    run(move || async move {
        let (sio, mut codec, _) = sio_connect(addr, "/").await;
        for id in 1..=3 {
            ws_send(&sio, &format!(r#"42{id}["fire"]"#)).await;
        }
        // The handler ran for the first two; the third never reached it.
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "431").await, "431"),
            json!(["done"])
        );
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "432").await, "432"),
            json!(["done"])
        );
        assert_eq!(
            data(&next_starting(&sio, &mut codec, "433").await, "433"),
            json!([{"error": "rate_limited"}])
        );
    });
    assert_eq!(handled.load(Ordering::Relaxed), 2);
    srv.stop().unwrap();
}
