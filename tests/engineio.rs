//! Engine.IO v4 at the HTTP level: handshake, long-polling, upgrade, heartbeat, the
//! spec's error answers, CORS and maxPayload, with raw requests (no client library).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::eio::{
    connected_sid, request, responses, sid_of, ws_connect, ws_next, ws_next_within, ws_recv,
    ws_send, Response, EIO,
};
use common::{run, server, wait_for_stats};
use corelay::client::Stream;
use corelay::proto::ws::{close, masked_binary_frame, WsCodec};
use corelay::socketio::{Namespace, SocketIo};
use corelay::stats::CloseReason;

fn engine_server(shards: usize) -> corelay::Server {
    server(shards, |c| {
        c.engineio_ping_interval_ms = 300;
        c.engineio_ping_timeout_ms = 200;
        c.socketio_connect_timeout_ms = 10_000;
        c.engineio_max_payload = 1000;
        c.cors_origins = vec!["https://game.example".into()];
    })
}

#[test]
fn handshake_answers_the_open_packet_and_bad_queries_get_the_spec_errors() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let open = request(addr, "GET", EIO, "", "").await;
        assert_eq!(open.status, 200);
        let v: serde_json::Value = serde_json::from_str(&open.body[1..]).unwrap();
        assert_eq!(v["upgrades"], serde_json::json!(["websocket"]));
        assert_eq!(v["pingInterval"], 300);
        assert_eq!(v["pingTimeout"], 200);
        assert_eq!(v["maxPayload"], 1000);

        let cases = [
            ("GET", "/socket.io/?transport=polling", 5),
            ("GET", "/socket.io/?EIO=3&transport=polling", 5),
            ("GET", "/socket.io/?EIO=4", 0),
            ("GET", "/socket.io/?EIO=4&transport=carrier-pigeon", 0),
            (
                "GET",
                "/socket.io/?EIO=4&transport=polling&sid=00nonexistent",
                1,
            ),
            ("POST", EIO, 2),
            ("PUT", EIO, 2),
        ];
        for (method, target, code) in cases {
            let r = request(addr, method, target, "", "").await;
            assert_eq!(r.status, 400, "{method} {target}");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["code"], code, "{method} {target}: {}", r.body);
            assert!(body["message"].is_string());
        }
    });
    srv.stop().unwrap();
}

#[test]
fn cors_allows_configured_origins_only_and_answers_preflight() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let ok = request(addr, "GET", EIO, "Origin: https://game.example\r\n", "").await;
        assert!(
            ok.head
                .contains("Access-Control-Allow-Origin: https://game.example"),
            "{}",
            ok.head
        );
        assert!(ok.head.contains("Access-Control-Allow-Credentials: true"));
        // The answer depends on the Origin, so caches must key on it.
        assert!(ok.head.contains("Vary: Origin"), "{}", ok.head);
        let other = request(addr, "GET", EIO, "Origin: https://evil.example\r\n", "").await;
        assert!(
            !other.head.contains("Access-Control-Allow-"),
            "{}",
            other.head
        );
        assert!(other.head.contains("Vary: Origin"), "{}", other.head);
        // A preflight from an origin outside the list learns nothing.
        let foreign = request(
            addr,
            "OPTIONS",
            EIO,
            "Origin: https://evil.example\r\nAccess-Control-Request-Headers: content-type\r\n",
            "",
        )
        .await;
        assert!(
            !foreign.head.contains("Access-Control-Allow-"),
            "{}",
            foreign.head
        );
        let pre = request(
            addr,
            "OPTIONS",
            EIO,
            "Origin: https://game.example\r\nAccess-Control-Request-Headers: content-type\r\n",
            "",
        )
        .await;
        assert_eq!(pre.status, 204);
        assert!(pre.head.contains("Access-Control-Allow-Methods"));
        assert!(pre
            .head
            .contains("Access-Control-Allow-Headers: content-type"));
    });
    srv.stop().unwrap();
}

#[test]
fn polling_carries_socketio_packets_both_ways_and_closes_on_bad_input() {
    // Two shards: requests land on either, the owner serves them (handoff).
    let srv = engine_server(2);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        // Socket.IO CONNECT, then join with an ack, in one payload.
        let post = request(addr, "POST", &target, "", "40\u{1e}420[\"join\",\"lobby\"]").await;
        assert_eq!((post.status, post.body.as_str()), (200, "ok"));
        // The join ack may come a poll later when the room's home is the other shard.
        let mut packets: Vec<String> = Vec::new();
        while packets.len() < 2 {
            let poll = request(addr, "GET", &target, "", "").await;
            assert_eq!(poll.status, 200);
            packets.extend(poll.body.split('\u{1e}').map(str::to_owned));
        }
        let socket = connected_sid(&packets[0], "");
        assert_eq!(
            packets[1],
            format!(r#"430[{{"host":"{socket}","members":1,"room":"lobby"}}]"#)
        );
        // Binary from the client, base64 in the payload, relayed to... nobody else; the
        // send is acked.
        let bin = request(
            addr,
            "POST",
            &target,
            "",
            "451-1[\"to\",\"lobby\",\"e\",{\"_placeholder\":true,\"num\":0}]\u{1e}bAQID",
        )
        .await;
        assert_eq!(bin.status, 200);
        let ack = request(addr, "GET", &target, "", "").await;
        assert_eq!(ack.body, r#"431[{"room":"lobby"}]"#);
        // Noops on 24 fresh connections: some land on the other shard (the kernel hashes
        // each connection), which hands them to the owner; all are answered.
        for _ in 0..24 {
            assert_eq!(request(addr, "POST", &target, "", "6").await.body, "ok");
        }
        // An invalid packet closes the session: 400, then the sid is unknown.
        let bad = request(addr, "POST", &target, "", "abc").await;
        assert_eq!(bad.status, 400);
        let after = request(addr, "GET", &target, "", "").await;
        assert_eq!(after.status, 400);
    });
    // Each request is a new connection that the kernel spreads over both shards: the ones
    // that landed on the wrong shard were handed to the session's owner.
    assert!(srv.stats().handoffs > 0, "{:?}", srv.stats());
    srv.stop().unwrap();
}

#[test]
fn a_connection_handed_to_the_session_owner_routes_its_next_requests_by_path() {
    let srv = engine_server(2);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        // Keep-alive connections, spread by the kernel over both shards: the ones that
        // land on the other shard are handed to the session's owner with their first
        // request, and their next request must still find its own route.
        for _ in 0..24 {
            let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
            let noop = format!("POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n6");
            s.write_all(noop.as_bytes()).await.unwrap();
            assert_eq!(responses(&s, 1).await[0].body, "ok");
            s.write_all(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(responses(&s, 1).await[0].status, 404);
        }
    });
    assert!(srv.stats().handoffs > 0, "{:?}", srv.stats());
    srv.stop().unwrap();
}

#[test]
fn oversized_polling_payloads_get_413_and_end_the_session() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        let big = format!("4{}", "x".repeat(2000));
        assert_eq!(request(addr, "POST", &target, "", &big).await.status, 413);
        assert_eq!(request(addr, "GET", &target, "", "").await.status, 400);
    });
    // One session ended, counted once.
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::TooBig) >= 1);
    assert_eq!(stats.closes_for(CloseReason::TooBig), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_session_that_misses_its_pong_is_closed() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        // Two polls pipelined on one connection: the second is pending as soon as the
        // first is answered.
        let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
        let get = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
        s.write_all(get.repeat(2).as_bytes()).await.unwrap();
        let polls = responses(&s, 2).await;
        // The server pings after 300 ms; with no pong within 200 ms it ends the session,
        // and the pending poll reads the close packet, as from the reference server.
        assert_eq!((polls[0].status, polls[0].body.as_str()), (200, "2"));
        assert_eq!((polls[1].status, polls[1].body.as_str()), (200, "1"));
        // The sid is forgotten.
        assert_eq!(request(addr, "GET", &target, "", "").await.status, 400);
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Idle) >= 1);
    assert_eq!(stats.closes_for(CloseReason::Idle), 1, "{stats}");
    // Only the last GET was a bad request.
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::BadRequest) >= 1);
    assert_eq!(stats.closes_for(CloseReason::BadRequest), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_pong_keeps_the_session_alive() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        for _ in 0..3 {
            assert_eq!(request(addr, "GET", &target, "", "").await.body, "2");
            assert_eq!(request(addr, "POST", &target, "", "3").await.status, 200);
        }
    });
    srv.stop().unwrap();
}

#[test]
fn polling_upgrades_to_websocket_without_losing_or_repeating_packets() {
    let srv = engine_server(2);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        request(addr, "POST", &target, "", "40\u{1e}420[\"join\",\"up\"]").await;
        // Collect the CONNECT answer and the join ack (which may come from another shard).
        let mut seen: Vec<String> = Vec::new();
        while !seen.iter().any(|p| p.starts_with("430[")) {
            let poll = request(addr, "GET", &target, "", "").await;
            seen.extend(poll.body.split('\u{1e}').map(str::to_owned));
        }
        let socket = connected_sid(&seen[0], "");
        let (ws, mut codec) = ws_connect(
            addr,
            &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        )
        .await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        // A noop ends the polling side.
        let poll = request(addr, "GET", &target, "", "").await;
        assert_eq!(poll.body, "6");
        ws_send(&ws, "5").await;
        // After the switch the socket works over WebSocket, and polling is refused.
        ws_send(&ws, "421[\"join\",\"up2\"]").await;
        assert_eq!(
            ws_recv(&ws, &mut codec).await,
            Some(format!(
                r#"431[{{"host":"{socket}","members":1,"room":"up2"}}]"#
            ))
        );
        assert_eq!(request(addr, "GET", &target, "", "").await.status, 400);
    });
    srv.stop().unwrap();
}

#[test]
fn a_websocket_that_never_completes_its_upgrade_is_closed_after_the_upgrade_timeout() {
    // No heartbeat within the test: only the upgrade timeout can end the probe.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
        c.engineio_upgrade_timeout_ms = 300;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        assert_eq!(request(addr, "GET", &target, "", "").await.body, "6");
        // The client never sends `5`.
        let closed = ws_next_within(&ws, &mut codec, Duration::from_secs(20)).await;
        assert_eq!(closed, Err(Some(close::NORMAL)));
        // The session goes on polling, and may try the upgrade again.
        assert_eq!(request(addr, "POST", &target, "", "40").await.body, "ok");
        let connected = request(addr, "GET", &target, "", "").await.body;
        assert!(connected.starts_with("40{"), "{connected}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
    });
    srv.stop().unwrap();
}

#[test]
fn websocket_sessions_handshake_ping_and_close_on_invalid_packets() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        let open = ws_recv(&ws, &mut codec).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
        assert_eq!(v["upgrades"], serde_json::json!([]));
        assert_eq!(
            ws_recv(&ws, &mut codec).await.as_deref(),
            Some("2"),
            "server ping"
        );
        ws_send(&ws, "3").await;
        ws_send(&ws, "abc").await;
        assert_eq!(
            ws_recv(&ws, &mut codec).await,
            None,
            "closed on an invalid packet"
        );
        // A socket.io session that never connects a namespace is closed after connectTimeout.
    });
    srv.stop().unwrap();
}

#[test]
fn a_client_ping_ends_a_websocket_session() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        ws_recv(&ws, &mut codec).await.unwrap();
        // In v4 the server pings; a client's ping is the wrong heartbeat direction.
        ws_send(&ws, "2").await;
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::NORMAL)));
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Protocol) >= 1);
    assert_eq!(stats.closes_for(CloseReason::Protocol), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn websocket_messages_over_max_payload_are_closed_with_1009() {
    // maxPayload is 1000: a message of exactly that is served, one byte more is not.
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let event = |len: usize| {
            let head = "42[\"e\",\"";
            format!("{head}{}\"]", "x".repeat(len - head.len() - 2))
        };
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        ws_recv(&ws, &mut codec).await.unwrap();
        ws_send(&ws, "40").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with("40"));
        ws_send(&ws, &event(1000)).await;
        let answer = ws_recv(&ws, &mut codec).await.unwrap();
        assert!(answer.contains("unknown_event"), "{answer}");
        ws_send(&ws, &event(1001)).await;
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::TOO_BIG)));
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::TooBig) >= 1);
    assert_eq!(stats.closes_for(CloseReason::TooBig), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn sessions_without_a_namespace_are_closed_after_the_connect_timeout() {
    let srv = server(1, |c| c.socketio_connect_timeout_ms = 200);
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with('0'));
        assert_eq!(ws_recv(&ws, &mut codec).await, None, "closed");
        // Unknown namespaces get CONNECT_ERROR.
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        ws_recv(&ws, &mut codec).await.unwrap();
        ws_send(&ws, "40/nope,").await;
        let refusal = ws_recv(&ws, &mut codec).await.unwrap();
        assert!(refusal.starts_with("44/nope,"), "{refusal}");
    });
    // Closed for the connect timeout (the refused session may reach its own as well).
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::HandshakeTimeout) >= 1);
    assert!(
        stats.closes_for(CloseReason::HandshakeTimeout) >= 1,
        "{stats}"
    );
    srv.stop().unwrap();
}

/// A one-shard server with a namespace `/tracked` that records its disconnect reasons.
fn tracked_server() -> (corelay::Server, Arc<Mutex<Vec<String>>>) {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let app = SocketIo::relay().namespace(
        "/tracked",
        Namespace::new()
            .on_disconnect(move |_, reason| seen.lock().unwrap().push(reason.to_owned())),
    );
    let config = corelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..corelay::Config::default()
    };
    (corelay::Server::start_with(config, app).unwrap(), reasons)
}

#[test]
fn a_client_close_packet_disconnects_as_transport_close() {
    let (srv, reasons) = tracked_server();
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        request(addr, "POST", &target, "", "40/tracked,").await;
        request(addr, "GET", &target, "", "").await;
        assert_eq!(request(addr, "POST", &target, "", "1").await.body, "ok");
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Peer) >= 1);
    assert_eq!(stats.closes_for(CloseReason::Peer), 1, "{stats}");
    assert_eq!(*reasons.lock().unwrap(), vec!["transport close"]);
    srv.stop().unwrap();
}

#[test]
fn a_shutdown_disconnects_every_socket_as_server_shutting_down() {
    let (srv, reasons) = tracked_server();
    let addr = srv.local_addr();
    let control = srv.control();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        ws_recv(&ws, &mut codec).await.unwrap();
        ws_send(&ws, "40/tracked,").await;
        let connected = ws_recv(&ws, &mut codec).await.unwrap();
        assert!(connected.starts_with("40/tracked,"), "{connected}");
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        request(addr, "POST", &target, "", "40/tracked,").await;
        let connected = request(addr, "GET", &target, "", "").await.body;
        assert!(connected.starts_with("40/tracked,"), "{connected}");
        // Both sessions are open when the server shuts down.
        control.request_shutdown();
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::GOING_AWAY)));
    });
    srv.join().unwrap();
    assert_eq!(
        *reasons.lock().unwrap(),
        vec!["server shutting down", "server shutting down"]
    );
}

#[test]
fn a_socketio_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let srv = server(1, |c| {
        c.outbound_queue_frames = 64;
        c.outbound_queue_bytes = 128 * 1024;
        c.slow_consumer_grace_ms = 100;
        // The native sender floods on purpose: the subject is the reader.
        c.rate_limits.native = corelay::config::RateProfile::UNLIMITED;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        ws_recv(&ws, &mut codec).await.unwrap();
        ws_send(&ws, "40").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with("40"));
        ws_send(&ws, "421[\"join\",\"flood\"]").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with("431"));
        // From here the socket.io client reads nothing.
        let mut sender = common::connect(addr).await;
        sender.join("flood").await.unwrap();
        let payload = vec![7u8; 8 * 1024];
        for _ in 0..2000 {
            sender
                .send(
                    "flood",
                    "blob",
                    &payload,
                    corelay::client::PayloadKind::Binary,
                )
                .await
                .unwrap();
        }
        // The sender stays served while the reader is cut.
        sender.ping().await.unwrap();
        common::still_serving(addr).await;
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::SlowConsumer) >= 1);
    assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_polling_client_that_polls_too_slowly_reads_a_close_packet() {
    // Heartbeats far beyond the test budget: only the poll can notice the overflow.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
        c.outbound_queue_frames = 8;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        request(addr, "POST", &target, "", "40\u{1e}420[\"join\",\"flood\"]").await;
        let mut seen = String::new();
        while !seen.contains("430[") {
            seen.push_str(&request(addr, "GET", &target, "", "").await.body);
        }
        // More events than the session's queue holds arrive before its next poll.
        let mut sender = common::connect(addr).await;
        sender.join("flood").await.unwrap();
        for _ in 0..20 {
            sender
                .send("flood", "e", b"1", corelay::client::PayloadKind::Json)
                .await
                .unwrap();
        }
        sender.ping().await.unwrap();
        let poll = request(addr, "GET", &target, "", "").await;
        assert_eq!((poll.status, poll.body.as_str()), (200, "1"));
        assert_eq!(request(addr, "GET", &target, "", "").await.status, 400);
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::SlowConsumer) >= 1);
    assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1, "{stats}");
    srv.stop().unwrap();
}

/// A server whose heartbeats are far beyond the test budget (only noticing the closed
/// poll can end a session), with a resume window of `window_ms`.
fn vanish_server(window_ms: u64) -> corelay::Server {
    server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
        c.resume.window_ms = window_ms;
    })
}

/// A native watcher in room `r`, and a polling Socket.IO client that joins it and then
/// disappears with a poll pending; the watcher (its `member_joined` read) and the
/// vanished socket's player id.
async fn vanish_mid_poll(addr: SocketAddr) -> (corelay::client::Client, String) {
    let mut watcher = common::connect(addr).await;
    watcher.join("r").await.unwrap();
    let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
    let target = format!("{EIO}&sid={sid}");
    request(addr, "POST", &target, "", "40\u{1e}420[\"join\",\"r\"]").await;
    // The CONNECT answer and the join ack (one shard: in the same poll).
    let answered = request(addr, "GET", &target, "", "").await.body;
    let connect = answered.split('\u{1e}').next().unwrap();
    let data: serde_json::Value = serde_json::from_str(
        connect
            .strip_prefix("40")
            .unwrap_or_else(|| panic!("{answered}")),
    )
    .unwrap();
    // An anonymous socket's id is its player id.
    let player = data["sid"].as_str().expect("socket id").to_owned();
    let joined = watcher.next_event().await.unwrap();
    assert!(
        matches!(&joined, corelay::client::ServerEvent::MemberJoined { player: p, .. } if *p == player),
        "{joined:?}"
    );
    // A poll is pending when the client disappears.
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.shutdown(std::net::Shutdown::Both);
    drop(s);
    (watcher, player)
}

#[test]
fn a_polling_client_that_vanishes_mid_poll_is_away_until_its_resume_window_ends() {
    // Socket.IO recovery (on by default) keeps the lost session for the window: its rooms
    // are told it is away at once, it still counts, and it leaves when the window ends.
    let srv = vanish_server(1_000);
    let addr = srv.local_addr();
    run(move || async move {
        let (mut watcher, player) = vanish_mid_poll(addr).await;
        assert_eq!(
            common::within("member_away", watcher.next_event())
                .await
                .unwrap(),
            corelay::client::ServerEvent::MemberAway {
                room: "r".into(),
                player: player.clone(),
            }
        );
        let mut late = common::connect(addr).await;
        assert_eq!(late.join("r").await.unwrap(), 3, "the away member counts");
        let left = loop {
            match common::within("member_left", watcher.next_event())
                .await
                .unwrap()
            {
                corelay::client::ServerEvent::MemberJoined { .. } => continue,
                other => break other,
            }
        };
        assert_eq!(
            left,
            corelay::client::ServerEvent::MemberLeft {
                room: "r".into(),
                player,
                members: 2,
                reason: corelay::proto::native::LeaveReason::Disconnected,
            }
        );
    });
    srv.stop().unwrap();
}

#[test]
fn without_a_resume_window_a_polling_client_that_vanishes_mid_poll_leaves_its_rooms_at_once() {
    let srv = vanish_server(0);
    let addr = srv.local_addr();
    run(move || async move {
        let (mut watcher, player) = vanish_mid_poll(addr).await;
        assert_eq!(
            common::within("member_left", watcher.next_event())
                .await
                .unwrap(),
            corelay::client::ServerEvent::MemberLeft {
                room: "r".into(),
                player,
                members: 1,
                reason: corelay::proto::native::LeaveReason::Disconnected,
            }
        );
    });
    srv.stop().unwrap();
}

#[test]
fn a_poll_answer_carries_at_most_sixteen_packets() {
    let srv = engine_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        let mut body = String::from("40");
        for i in 0..40 {
            body.push_str(&format!("\u{1e}42{i}[\"join\",\"r{i}\"]"));
        }
        // 40 joins over a limit of 64 rooms per connection: all acked.
        request(addr, "POST", &target, "", &body).await;
        let mut packets = 0;
        while packets < 41 {
            let poll = request(addr, "GET", &target, "", "").await;
            let n = poll
                .body
                .split('\u{1e}')
                .filter(|p| !p.starts_with('2'))
                .count();
            assert!(poll.body.split('\u{1e}').count() <= 16, "{}", poll.body);
            packets += n;
        }
        assert_eq!(packets, 41);
    });
    srv.stop().unwrap();
}

/// A one-shard server whose heartbeat stays out of the test (no ping within its budget).
fn quiet_server() -> corelay::Server {
    server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
    })
}

/// Opens a polling session that has connected Socket.IO's main namespace; its sid.
async fn connected_polling_session(addr: SocketAddr) -> String {
    connected_polling_socket(addr).await.0
}

/// Opens a polling session that has connected Socket.IO's main namespace; its Engine.IO
/// sid and its socket's id (the socket's player id).
async fn connected_polling_socket(addr: SocketAddr) -> (String, String) {
    let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
    let target = format!("{EIO}&sid={sid}");
    assert_eq!(request(addr, "POST", &target, "", "40").await.body, "ok");
    let connected = request(addr, "GET", &target, "", "").await.body;
    assert!(connected.starts_with("40{"), "{connected}");
    let socket = connected_sid(&connected, "");
    (sid, socket)
}

/// Joins `room`, empty until then, over the WebSocket and expects the ack naming the
/// joiner (`socket`, its socket id) as the host: the session is served.
async fn ws_joins(ws: &Stream, codec: &mut WsCodec, room: &str, socket: &str) {
    ws_send(ws, &format!("421[\"join\",\"{room}\"]")).await;
    assert_eq!(
        ws_recv(ws, codec).await,
        Some(format!(
            r#"431[{{"host":"{socket}","members":1,"room":"{room}"}}]"#
        ))
    );
}

#[test]
fn issue_8_1_the_next_ping_comes_a_ping_interval_after_the_pong() {
    // The old schedule put the next ping pingInterval + pingTimeout (3.2 s) after the
    // previous one; the reference puts it pingInterval (0.2 s) after the pong.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 200;
        c.engineio_ping_timeout_ms = 3_000;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with('0'));
        for _ in 0..3 {
            let ping = ws_next_within(&ws, &mut codec, Duration::from_secs(2)).await;
            assert_eq!(ping.as_deref(), Ok("2"));
            ws_send(&ws, "3").await;
        }
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_2_a_websocket_for_an_upgraded_session_is_accepted_then_closed() {
    let srv = quiet_server();
    let addr = srv.local_addr();
    run(move || async move {
        let (sid, socket) = connected_polling_socket(addr).await;
        let target = format!("{EIO}&sid={sid}");
        let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        assert_eq!(request(addr, "GET", &target, "", "").await.body, "6");
        ws_send(&ws, "5").await;
        ws_joins(&ws, &mut codec, "a", &socket).await;
        // The second WebSocket's handshake succeeds (101), then the server closes it, as
        // the reference does (a close frame with no status).
        let (again, mut again_codec) = ws_connect(addr, &probe).await;
        assert_eq!(ws_next(&again, &mut again_codec).await, Err(None));
        // The session goes on untouched on its WebSocket.
        ws_joins(&ws, &mut codec, "b", &socket).await;
        // A WebSocket naming an unknown session is refused before the handshake.
        let unknown = request(
            addr,
            "GET",
            "/socket.io/?EIO=4&transport=websocket&sid=00nonexistent",
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "",
        )
        .await;
        assert_eq!(unknown.status, 400);
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_3_one_upgrade_at_a_time_a_second_probe_is_accepted_then_closed() {
    let srv = quiet_server();
    let addr = srv.local_addr();
    run(move || async move {
        let (sid, socket) = connected_polling_socket(addr).await;
        let target = format!("{EIO}&sid={sid}");
        let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        // While the first WebSocket upgrades, a second one is closed at once.
        let (again, mut again_codec) = ws_connect(addr, &probe).await;
        assert_eq!(ws_next(&again, &mut again_codec).await, Err(None));
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        let (third, mut third_codec) = ws_connect(addr, &probe).await;
        assert_eq!(ws_next(&third, &mut third_codec).await, Err(None));
        // The first upgrade completes and serves the session.
        assert_eq!(request(addr, "GET", &target, "", "").await.body, "6");
        ws_send(&ws, "5").await;
        ws_joins(&ws, &mut codec, "a", &socket).await;
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_3_a_probing_websocket_ends_with_its_session_and_counts_until_then() {
    // The session misses its pong about 2.2 s in; the upgrade timeout (10 s) is far later
    // than the 5 s the probe is given to see its close.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 2_000;
        c.engineio_ping_timeout_ms = 200;
    });
    let addr = srv.local_addr();
    let reg = srv.stats_registry();
    run(move || async move {
        let sid = connected_polling_session(addr).await;
        let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        // The polling session and its probing WebSocket.
        let stats = stats_until(&reg, |s| s.connections == 2);
        assert_eq!(stats.connections, 2, "{stats}");
        // The client falls silent: no pong, no upgrade. The probe closes with the session.
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::NORMAL)));
        let stats = stats_until(&reg, |s| s.connections == 0);
        assert_eq!(stats.connections, 0, "{stats}");
        assert_eq!(stats.closes_for(CloseReason::Idle), 1, "{stats}");
    });
    srv.stop().unwrap();
}

/// Waits (bounded, 5 s) until the stats read through `reg` satisfy `cond`, from inside a
/// test body (which cannot hold the `Server`).
fn stats_until(
    reg: &corelay::stats::StatsRegistry,
    cond: impl Fn(&corelay::Stats) -> bool,
) -> corelay::Stats {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = reg.snapshot();
        if cond(&stats) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn issue_8_7_a_poll_answer_nobody_reads_times_out_and_its_packets_go_to_the_next_poll() {
    let mut config = corelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        engineio_ping_interval_ms: 120_000,
        engineio_ping_timeout_ms: 120_000,
        engineio_max_payload: 10_000_000,
        write_timeout_ms: 300,
        ..corelay::Config::default()
    };
    config.outbound_queue_bytes = 16 << 20;
    let srv = corelay::Server::start_with(config, SocketIo::engine_echo()).unwrap();
    let addr = srv.local_addr();
    let reg = srv.stats_registry();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        // Sixteen echoes of 512 KiB: an 8 MiB answer, more than the socket buffers between
        // the server and a client that reads nothing take (Linux gives a socket at most
        // 4 MiB to send by default).
        let packets: Vec<String> = (0..16)
            .map(|i| format!("4m{i:02}{}", "x".repeat(512 << 10)))
            .collect();
        let post = request(addr, "POST", &target, "", &packets.join("\u{1e}")).await;
        assert_eq!(post.body, "ok");
        // A poller with a tiny receive window that never reads its answer.
        let stuck =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        stuck.set_recv_buffer_size(4096).unwrap();
        stuck.connect(&addr.into()).unwrap();
        let get = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
        std::io::Write::write_all(&mut &stuck, get.as_bytes()).unwrap();
        // The answer makes no progress for the write timeout: the connection is closed.
        let stats = stats_until(&reg, |s| s.closes_for(CloseReason::SlowConsumer) >= 1);
        assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1, "{stats}");
        drop(stuck);
        // The next poll gets every packet of the lost answer, in order.
        let poll = glommio::timer::timeout(Duration::from_secs(10), async {
            Ok(request(addr, "GET", &target, "", "").await)
        })
        .await
        .expect("the next poll is answered");
        assert_eq!(poll.status, 200);
        let got: Vec<&str> = poll.body.split('\u{1e}').collect();
        assert_eq!(got.len(), 16);
        assert!(got.iter().zip(&packets).all(|(g, p)| g == p));
        common::still_serving(addr).await;
    });
    srv.stop().unwrap();
}

/// A raw WebSocket handshake request for the Engine.IO endpoint (no sid).
const WS_HANDSHAKE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn refusal(r: &Response, message: &str) {
    assert_eq!(r.status, 503, "{}", r.head);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body, serde_json::json!({"code": 4, "message": message}));
}

#[test]
fn issue_8_8_sessions_per_address_are_capped_across_shards_with_503() {
    // Two shards: the count is the server's, whichever shard holds each session.
    let srv = server(2, |c| {
        c.engineio_max_sessions_per_ip = 2;
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let first = connected_polling_session(addr).await;
        let (ws, mut codec) = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with('0'));
        let message = "Too many sessions from this address";
        refusal(&request(addr, "GET", EIO, "", "").await, message);
        let ws_target = "/socket.io/?EIO=4&transport=websocket";
        refusal(
            &request(addr, "GET", ws_target, WS_HANDSHAKE, "").await,
            message,
        );
        // The sessions in are served.
        let target = format!("{EIO}&sid={first}");
        assert_eq!(
            request(addr, "POST", &target, "", "421[\"join\",\"r\"]")
                .await
                .body,
            "ok"
        );
        let ack = request(addr, "GET", &target, "", "").await.body;
        assert!(ack.starts_with("431["), "{ack}");
        ws_send(&ws, "40").await;
        assert!(ws_recv(&ws, &mut codec).await.unwrap().starts_with("40"));
        // A session that ends makes room.
        assert_eq!(request(addr, "POST", &target, "", "1").await.body, "ok");
        sid_of(&request(addr, "GET", EIO, "", "").await.body);
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(corelay::stats::Refusal::SessionsPerIp),
        2,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn issue_8_8_sessions_are_capped_server_wide_with_503() {
    let srv = server(1, |c| c.engineio_max_sessions = 1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = connected_polling_session(addr).await;
        refusal(
            &request(addr, "GET", EIO, "", "").await,
            "Too many sessions",
        );
        let target = format!("{EIO}&sid={sid}");
        assert_eq!(
            request(addr, "POST", &target, "", "421[\"join\",\"r\"]")
                .await
                .body,
            "ok"
        );
        let ack = request(addr, "GET", &target, "", "").await.body;
        assert!(ack.starts_with("431["), "{ack}");
    });
    let stats = srv.stats();
    assert_eq!(
        stats.refused_for(corelay::stats::Refusal::Sessions),
        1,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn issue_8_8_handshakes_are_rate_limited_per_address_with_503() {
    // One per second: of ten handshakes in a row, all but the first few are refused, at
    // whatever speed the machine runs them.
    let srv = server(1, |c| c.engineio_handshake_rate = 1);
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let mut refused = 0;
        for _ in 0..10 {
            let r = request(addr, "GET", EIO, "", "").await;
            if r.status == 503 {
                refusal(&r, "Too many handshakes from this address");
                refused += 1;
            }
        }
        assert!(refused > 0);
        // The session opened is served.
        let target = format!("{EIO}&sid={sid}");
        assert_eq!(request(addr, "POST", &target, "", "40").await.body, "ok");
        let connected = request(addr, "GET", &target, "", "").await.body;
        assert!(connected.starts_with("40{"), "{connected}");
    });
    let stats = srv.stats();
    assert!(
        stats.refused_for(corelay::stats::Refusal::HandshakeRate) > 0,
        "{stats}"
    );
    srv.stop().unwrap();
}

#[test]
fn issue_8_3_every_socket_of_a_session_ended_by_its_connect_timeout_is_released() {
    // The session never connects a namespace; its client then falls silent on all three of
    // its sockets: a probing WebSocket, a pending poll on a keep-alive connection.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
        c.socketio_connect_timeout_ms = 500;
        c.handshake_timeout_ms = 500;
    });
    let addr = srv.local_addr();
    let reg = srv.stats_registry();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (ws, mut codec) = ws_connect(addr, &probe).await;
        ws_send(&ws, "2probe").await;
        assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
        let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
        let get = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
        s.write_all(get.repeat(2).as_bytes()).await.unwrap();
        // The noop that paused polling, then the close packet when the session ends.
        let polls = responses(&s, 2).await;
        assert_eq!((polls[0].body.as_str(), polls[1].body.as_str()), ("6", "1"));
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::NORMAL)));
        // The keep-alive connection, silent, is closed by the server.
        let mut buf = [0u8; 64];
        let read =
            glommio::timer::timeout(Duration::from_secs(5), async { Ok(s.read(&mut buf).await) })
                .await
                .expect("the server closes the idle keep-alive connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let stats = stats_until(&reg, |s| s.connections == 0);
        assert_eq!(stats.connections, 0, "{stats}");
        assert_eq!(
            stats.closes_for(CloseReason::HandshakeTimeout),
            2,
            "{stats}"
        );
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_7_a_websocket_whose_output_stalls_is_closed_after_the_write_timeout() {
    // A Socket.IO client on WebSocket that never reads, with a tiny receive window, while
    // a room sends it far more than the socket buffers hold but less than its outbound
    // budget: only the write timeout can end it (its heartbeat is beyond the test).
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 120_000;
        c.engineio_ping_timeout_ms = 120_000;
        c.outbound_queue_bytes = 16 << 20;
        c.write_timeout_ms = 300;
        // The sender floods on purpose: the subject is the reader.
        c.rate_limits.native = corelay::config::RateProfile::UNLIMITED;
        c.rate_limits.socketio = corelay::config::RateProfile::UNLIMITED;
    });
    let addr = srv.local_addr();
    let reg = srv.stats_registry();
    run(move || async move {
        let stuck =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        stuck.set_recv_buffer_size(4096).unwrap();
        stuck
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stuck.connect(&addr.into()).unwrap();
        let mut io = &stuck;
        let upgrade = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\n{WS_HANDSHAKE}\r\n"
        );
        std::io::Write::write_all(&mut io, upgrade.as_bytes()).unwrap();
        let text = |t: &str| {
            let mut frame = masked_binary_frame(t.as_bytes(), [1, 2, 3, 4]).to_vec();
            frame[0] = 0x81;
            frame
        };
        std::io::Write::write_all(&mut io, &text("40")).unwrap();
        std::io::Write::write_all(&mut io, &text("421[\"join\",\"r\"]")).unwrap();
        // Reads until the join is acked (the server's frames are not masked).
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("431[") {
            let n = std::io::Read::read(&mut io, &mut buf).unwrap();
            assert!(n > 0, "closed before the join was acked");
            seen.extend_from_slice(&buf[..n]);
        }
        // From here it reads nothing.
        let mut sender = common::connect(addr).await;
        sender.join("r").await.unwrap();
        // 7.2 MB: more than the largest send buffer Linux gives a socket by default (4 MiB).
        let payload = vec![7u8; 60_000];
        for _ in 0..120 {
            sender
                .send("r", "blob", &payload, corelay::client::PayloadKind::Binary)
                .await
                .unwrap();
        }
        // The server has relayed them all once it answers the ping.
        sender.ping().await.unwrap();
        let stats = stats_until(&reg, |s| s.closes_for(CloseReason::SlowConsumer) >= 1);
        assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1, "{stats}");
        // The sender is still served, and so is everyone else.
        sender.ping().await.unwrap();
        common::still_serving(addr).await;
        drop(stuck);
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_3_a_probing_websocket_ends_with_a_session_closed_by_its_client_or_as_a_slow_consumer() {
    // Pings every 500 ms (when a slow consumer is noticed), answered within 120 s: no
    // heartbeat ends a session within the test.
    let srv = server(1, |c| {
        c.engineio_ping_interval_ms = 500;
        c.engineio_ping_timeout_ms = 120_000;
        c.outbound_queue_frames = 8;
    });
    let addr = srv.local_addr();
    let reg = srv.stats_registry();
    run(move || async move {
        let probing = |sid: String| async move {
            let probe = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
            let (ws, mut codec) = ws_connect(addr, &probe).await;
            ws_send(&ws, "2probe").await;
            assert_eq!(ws_recv(&ws, &mut codec).await.as_deref(), Some("3probe"));
            (ws, codec)
        };
        // The client closes its session by polling: its probe closes too.
        let sid = connected_polling_session(addr).await;
        let (ws, mut codec) = probing(sid.clone()).await;
        let target = format!("{EIO}&sid={sid}");
        assert_eq!(request(addr, "POST", &target, "", "1").await.body, "ok");
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::NORMAL)));
        // A session that overflows while it probes ends as a slow consumer, probe and all.
        let sid = connected_polling_session(addr).await;
        let target = format!("{EIO}&sid={sid}");
        assert_eq!(
            request(addr, "POST", &target, "", "421[\"join\",\"r\"]")
                .await
                .body,
            "ok"
        );
        let ack = request(addr, "GET", &target, "", "").await.body;
        assert!(ack.contains("431["), "{ack}");
        let (ws, mut codec) = probing(sid).await;
        let mut sender = common::connect(addr).await;
        sender.join("r").await.unwrap();
        for _ in 0..20 {
            sender
                .send("r", "e", b"1", corelay::client::PayloadKind::Json)
                .await
                .unwrap();
        }
        assert_eq!(ws_next(&ws, &mut codec).await, Err(Some(close::NORMAL)));
        let stats = stats_until(&reg, |s| s.closes_for(CloseReason::SlowConsumer) >= 1);
        assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1, "{stats}");
        sender.ping().await.unwrap();
    });
    srv.stop().unwrap();
}

#[test]
fn issue_8_7_a_poll_from_a_client_that_half_closes_is_answered_once() {
    // The client sends its GET and its FIN together: the FIN may come while the answer is
    // being written, and must neither lose the packets nor have them sent twice.
    let config = corelay::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        engineio_ping_interval_ms: 120_000,
        engineio_ping_timeout_ms: 120_000,
        ..corelay::Config::default()
    };
    let srv = corelay::Server::start_with(config, SocketIo::engine_echo()).unwrap();
    let addr = srv.local_addr();
    run(move || async move {
        let sid = sid_of(&request(addr, "GET", EIO, "", "").await.body);
        let target = format!("{EIO}&sid={sid}");
        for round in 0..5 {
            let first = format!("4first{round}");
            assert_eq!(request(addr, "POST", &target, "", &first).await.body, "ok");
            let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
            let get = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
            s.write_all(get.as_bytes()).await.unwrap();
            s.shutdown(std::net::Shutdown::Write);
            assert_eq!(responses(&s, 1).await[0].body, first);
            // The session lives on, and its next poll carries only what came since.
            let second = format!("4second{round}");
            assert_eq!(request(addr, "POST", &target, "", &second).await.body, "ok");
            assert_eq!(request(addr, "GET", &target, "", "").await.body, second);
        }
    });
    srv.stop().unwrap();
}
