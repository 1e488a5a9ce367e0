//! The rows of docs/LIMITS.md that the native endpoint answers, each followed by a check that
//! another client is still served.

mod common;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use common::{connect, run, server, still_serving, wait_for_stats};
use corelay::client::Stream;
use corelay::client::{PayloadKind, ServerEvent};
use corelay::proto::native::{encode_client, ClientFrame, ErrorCode, PROTOCOL_VERSION};
use corelay::proto::ws::{masked_binary_frame, Incoming, WsCodec};
use corelay::stats::CloseReason;
use tungstenite::protocol::Role;
use tungstenite::Message;

async fn raw(addr: SocketAddr) -> Stream {
    Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap())
}

/// Reads until end of stream; returns everything read.
async fn read_to_end(s: &Stream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn http_status(addr: SocketAddr, request: &[u8]) -> String {
    let s = raw(addr).await;
    s.write_all(request).await.unwrap();
    let answer = read_to_end(&s).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// An upgraded raw connection that answers nothing (no pongs), for timeout tests.
async fn raw_upgraded(addr: SocketAddr) -> (Stream, Vec<u8>) {
    let s = raw(addr).await;
    let leftover = corelay::client::upgrade(&s, &addr.to_string(), "/ws")
        .await
        .unwrap();
    (s, leftover)
}

/// Decodes what a server sent on a raw connection; returns its close code.
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    let mut codec = WsCodec::new(Role::Client, 1 << 20);
    codec.feed(bytes);
    loop {
        match codec.poll_message() {
            Ok(Some(Incoming::Closed(close))) => return close.map(|(c, _)| c),
            Ok(Some(Incoming::Message(_))) => continue,
            _ => return None,
        }
    }
}

#[test]
fn wrong_path_gets_404_and_malformed_http_gets_400() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let s404 = http_status(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(s404.starts_with("HTTP/1.1 404"), "{s404}");
        let s400 = http_status(addr, b"\x16\x03\x01 definitely not http\r\n\r\n").await;
        assert!(s400.starts_with("HTTP/1.1 400"), "{s400}");
        let bad_upgrade = http_status(
            addr,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
        assert!(bad_upgrade.starts_with("HTTP/1.1 400"), "{bad_upgrade}");
        let mut huge = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..400 {
            huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        huge.extend_from_slice(b"\r\n");
        let too_large = http_status(addr, &huge).await;
        assert!(too_large.starts_with("HTTP/1.1 400"), "{too_large}");
        still_serving(addr).await;
    });
    assert!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::BadRequest) >= 4)
            .closes_for(CloseReason::BadRequest)
            >= 4
    );
    srv.stop().unwrap();
}

#[test]
fn requests_whose_body_length_is_ambiguous_get_400() {
    // A proxy in front could frame these bodies otherwise than corelay and smuggle a
    // request past it: each would be served without the check.
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let handshake = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n";
        let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let cases = [
            format!("{handshake}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            format!("{handshake}Content-Length: 0\r\nContent-Length: 0\r\n\r\n"),
            format!("{handshake}Content-Length: 0, 0\r\n\r\n"),
            format!("{upgrade}Transfer-Encoding: chunked\r\n\r\n"),
        ];
        for request in &cases {
            let status = http_status(addr, request.as_bytes()).await;
            assert!(status.starts_with("HTTP/1.1 400"), "{request:?}: {status}");
        }
        still_serving(addr).await;
    });
    srv.stop().unwrap();
}

#[test]
fn http_1_0_long_polling_is_served_and_only_the_upgrade_needs_1_1() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let handshake = "GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\nHost: x\r\n";
        // As nginx sends it upstream: answered, then closed (1.0 closes by default).
        let s = raw(addr).await;
        s.write_all(format!("{handshake}\r\n").as_bytes())
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&read_to_end(&s).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.contains(r#"0{"sid":""#), "{answer}");
        // With keep-alive the connection serves the next request too (closed after that
        // one, which does not ask to be kept).
        let s = raw(addr).await;
        let two = format!("{handshake}Connection: keep-alive\r\n\r\n{handshake}\r\n");
        s.write_all(two.as_bytes()).await.unwrap();
        let answers = String::from_utf8_lossy(&read_to_end(&s).await).into_owned();
        assert_eq!(
            answers.matches("HTTP/1.1 200 OK\r\n").count(),
            2,
            "{answers}"
        );
        assert!(answers.contains("Connection: keep-alive\r\n"), "{answers}");
        // A WebSocket upgrade needs HTTP/1.1 (RFC 6455).
        let upgrade = http_status(
            addr,
            b"GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
        assert!(upgrade.starts_with("HTTP/1.1 400"), "{upgrade}");
        still_serving(addr).await;
    });
    srv.stop().unwrap();
}

#[test]
fn silent_handshakes_are_closed_after_the_timeout() {
    let srv = server(1, |c| c.handshake_timeout_ms = 300);
    let addr = srv.local_addr();
    run(move || async move {
        // Nothing at all: closed without an answer.
        let silent = raw(addr).await;
        assert!(read_to_end(&silent).await.is_empty());
        // Half a request head: same.
        let half = raw(addr).await;
        half.write_all(b"GET /ws HTTP/1.1\r\nHost").await.unwrap();
        assert!(read_to_end(&half).await.is_empty());
        // Upgraded but no Hello: closed with 1008.
        let (s, _) = raw_upgraded(addr).await;
        assert_eq!(close_code_in(&read_to_end(&s).await), Some(1008));
        still_serving(addr).await;
    });
    assert!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::HandshakeTimeout) >= 3)
            .closes_for(CloseReason::HandshakeTimeout)
            >= 3
    );
    srv.stop().unwrap();
}

#[test]
fn oversized_messages_are_closed_with_1009() {
    let srv = server(1, |c| c.max_message_size = 1024);
    let addr = srv.local_addr();
    run(move || async move {
        let mut c = connect(addr).await;
        c.send_raw(&vec![0u8; 2000]).unwrap();
        assert_eq!(
            c.closed().await,
            Some((1009, "message too big".to_string()))
        );
        still_serving(addr).await;
    });
    assert_eq!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::TooBig) >= 1)
            .closes_for(CloseReason::TooBig),
        1
    );
    srv.stop().unwrap();
}

#[test]
fn invalid_frames_get_an_error_frame_then_1007() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut c = connect(addr).await;
        c.send_raw(b"\x01\x02 this is not an rkyv frame").unwrap();
        assert_eq!(
            c.next_error().await.unwrap(),
            ErrorCode::InvalidFrame as u16
        );
        assert_eq!(c.closed().await.map(|(code, _)| code), Some(1007));
        still_serving(addr).await;
    });
    assert_eq!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::Invalid) >= 1)
            .closes_for(CloseReason::Invalid),
        1
    );
    srv.stop().unwrap();
}

#[test]
fn text_frames_get_an_error_frame_then_1003() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut c = connect(addr).await;
        c.send_text("hello").unwrap();
        assert_eq!(c.next_error().await.unwrap(), ErrorCode::TextFrame as u16);
        assert_eq!(c.closed().await.map(|(code, _)| code), Some(1003));
        still_serving(addr).await;
    });
    srv.stop().unwrap();
}

#[test]
fn requests_before_hello_second_hellos_and_bad_versions_are_refused() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (s, _) = raw_upgraded(addr).await;
        let join = encode_client(&ClientFrame::Join {
            req: 7,
            room: "r".into(),
        });
        let hello = encode_client(&ClientFrame::Hello {
            req: 8,
            version: PROTOCOL_VERSION + 1,
            token: None,
        });
        s.write_all(&masked_binary_frame(&join, [1, 2, 3, 4]))
            .await
            .unwrap();
        s.write_all(&masked_binary_frame(&hello, [5, 6, 7, 8]))
            .await
            .unwrap();
        let bytes = read_to_end(&s).await;
        let mut codec = WsCodec::new(Role::Client, 1 << 20);
        codec.feed(&bytes);
        let mut codes = Vec::new();
        while let Ok(Some(Incoming::Message(Message::Binary(b)))) = codec.poll_message() {
            if let corelay::proto::native::ArchivedServerFrame::Error { req, code, .. } =
                corelay::proto::native::access_server(&b).unwrap()
            {
                codes.push((req.to_native(), code.to_native()));
            }
        }
        assert_eq!(
            codes,
            vec![
                (7, ErrorCode::NotWelcomed as u16),
                (8, ErrorCode::UnsupportedVersion as u16)
            ]
        );
        // A second Hello is refused and the session goes on.
        let mut c = connect(addr).await;
        let again = encode_client(&ClientFrame::Hello {
            req: 9,
            version: PROTOCOL_VERSION,
            token: None,
        });
        c.send_raw(&again).unwrap();
        assert_eq!(c.next_error().await.unwrap(), ErrorCode::NotWelcomed as u16);
        c.ping().await.expect("the connection stays open");
        still_serving(addr).await;
    });
    srv.stop().unwrap();
}

#[test]
fn bad_requests_get_error_codes_and_the_connection_lives_on() {
    let srv = server(1, |c| {
        c.max_name_len = 16;
        c.max_rooms_per_connection = 2;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut c = connect(addr).await;
        c.send("nowhere", "e", b"x", PayloadKind::Binary)
            .await
            .unwrap();
        assert_eq!(c.next_error().await.unwrap(), ErrorCode::NotMember as u16);
        let err = |r: Result<u32, corelay::client::ClientError>| match r {
            Err(corelay::client::ClientError::Server { code, .. }) => code,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(err(c.join("").await), ErrorCode::InvalidName as u16);
        assert_eq!(
            err(c.join(&"x".repeat(17)).await),
            ErrorCode::InvalidName as u16
        );
        c.join("a").await.unwrap();
        assert_eq!(
            c.join("a").await.unwrap(),
            1,
            "joining twice changes nothing"
        );
        c.join("b").await.unwrap();
        assert_eq!(err(c.join("c").await), ErrorCode::TooManyRooms as u16);
        c.send("a", &"e".repeat(17), b"x", PayloadKind::Binary)
            .await
            .unwrap();
        assert_eq!(c.next_error().await.unwrap(), ErrorCode::InvalidName as u16);
        c.ping().await.expect("the connection is still open");
        still_serving(addr).await;
    });
    srv.stop().unwrap();
}

#[test]
fn a_peer_that_stops_answering_pings_is_closed() {
    let srv = server(1, |c| {
        c.ping_interval_ms = 100;
        c.ping_timeout_ms = 200;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (s, _) = raw_upgraded(addr).await;
        let hello = encode_client(&ClientFrame::Hello {
            req: 1,
            version: PROTOCOL_VERSION,
            token: None,
        });
        s.write_all(&masked_binary_frame(&hello, [9, 9, 9, 9]))
            .await
            .unwrap();
        // We read but never answer the pings: the server gives up with 1008.
        assert_eq!(close_code_in(&read_to_end(&s).await), Some(1008));
        // A client that answers pings (ours does while reading) stays connected meanwhile.
        let mut alive = connect(addr).await;
        alive.join("r").await.unwrap();
        let timer = glommio::timer::sleep(std::time::Duration::from_millis(600));
        // Read (and so answer pings) for longer than the idle limit.
        let read = async {
            loop {
                if let Err(e) = alive.next_event().await {
                    panic!("healthy client was closed: {e}");
                }
            }
        };
        futures_lite::future::or(read, timer).await;
        alive.ping().await.unwrap();
    });
    assert_eq!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::Idle) >= 1)
            .closes_for(CloseReason::Idle),
        1
    );
    srv.stop().unwrap();
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_its_room_keeps_full_speed() {
    const N: u32 = 3000;
    const SIZE: usize = 8 * 1024;
    let srv = server(1, |c| {
        c.outbound_queue_frames = 128;
        c.outbound_queue_bytes = 256 * 1024;
        c.slow_consumer_grace_ms = 200;
        // The sender floods on purpose (24 MB as fast as it can): the subject here is
        // the slow consumer, not the sender's rate limit.
        c.rate_limits.native = corelay::config::RateProfile::UNLIMITED;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut sender = connect(addr).await;
        let mut fast = connect(addr).await;
        let mut slow = connect(addr).await;
        for c in [&mut sender, &mut fast, &mut slow] {
            c.join("room").await.unwrap();
        }
        // The fast member acknowledges each message to the sender, which keeps at most WINDOW
        // in flight: the room runs as fast as its healthy member reads.
        const WINDOW: u32 = 16;
        let (ack_tx, ack_rx) = glommio::channels::local_channel::new_unbounded::<u32>();
        let received = Rc::new(std::cell::Cell::new(0u32));
        let counter = Rc::clone(&received);
        let reader = glommio::spawn_local(async move {
            let mut next = 0u32;
            while next < N {
                if let ServerEvent::Message { payload, .. } = fast.next_event().await.unwrap() {
                    assert_eq!(u32::from_le_bytes(payload[..4].try_into().unwrap()), next);
                    next += 1;
                    counter.set(next);
                    let _ = ack_tx.try_send(next);
                }
            }
        });
        let mut payload = vec![0u8; SIZE];
        let mut acked = 0;
        for i in 0..N {
            while i >= acked + WINDOW {
                acked = ack_rx.recv().await.expect("fast member alive");
            }
            payload[..4].copy_from_slice(&i.to_le_bytes());
            sender
                .send("room", "blob", &payload, PayloadKind::Binary)
                .await
                .unwrap();
        }
        reader.await;
        assert_eq!(
            received.get(),
            N,
            "the fast member got everything, in order"
        );
        // The slow member was cut: draining what reached it ends in a close, not more data.
        let close = slow.closed().await;
        assert!(matches!(close, None | Some((1008, _))), "{close:?}");
        still_serving(addr).await;
        drop(Bytes::new());
    });
    assert_eq!(
        wait_for_stats(&srv, |s| s.closes_for(CloseReason::SlowConsumer) >= 1)
            .closes_for(CloseReason::SlowConsumer),
        1
    );
    srv.stop().unwrap();
}
