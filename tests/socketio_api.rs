//! The Socket.IO application layer over real sockets: reserved event names on both
//! protocols, `Socket::disconnect` from a handler, rooms of other namespaces, binary
//! attachments bounded in bytes and time, server-to-client acks that expire. Raw Engine.IO
//! over WebSocket on the socket.io side (tests/common/eio.rs), the Rust client on the
//! native side; tests/interop.rs checks the same with the official JavaScript client.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::eio::{
    broadcast_data, data, next_starting, sio_connect, sio_next, ws_send, ws_send_binary,
};
use common::{connect, run, server, still_serving, wait_for_stats, within, WAIT};
use corelay::client::{ClientError, PayloadKind, ServerEvent};
use corelay::proto::native::ErrorCode;
use corelay::proto::socketio::Arg;
use corelay::socketio::{AckError, Namespace, SocketIo};
use corelay::stats::{CloseReason, Refusal};
use corelay::{Config, Server};
use serde_json::{json, Value};

/// A one-shard server on 127.0.0.1:0 running `app`, tweaked by `tweak`.
fn app_server(app: SocketIo, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..Config::default()
    };
    tweak(&mut config);
    Server::start_with(config, app).expect("server starts")
}

#[test]
fn reserved_event_names_are_refused_to_the_sender_on_both_protocols() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut native = connect(addr).await;
        native.join("arena").await.unwrap();
        let (sio, mut codec, sio_id) = sio_connect(addr, "/").await;
        ws_send(&sio, r#"420["join","arena"]"#).await;
        next_starting(&sio, &mut codec, "430[").await;

        // Native: each reserved name is refused with its own error; the connection stays.
        // Names starting with `room:` or `mm:` are the server's (room:host and the like).
        for event in [
            "disconnect",
            "connect",
            "member_joined",
            "error",
            "room:host",
            "mm:matched",
        ] {
            native
                .send("arena", event, b"{}", PayloadKind::Json)
                .await
                .unwrap();
            let code = within(event, native.next_error()).await.unwrap();
            assert_eq!(code, ErrorCode::ReservedName as u16, "{event}");
        }
        // Socket.IO: the ack carries the error, or without an ack an `error` event does.
        ws_send(&sio, r#"421["to","arena","disconnect",1]"#).await;
        let ack = next_starting(&sio, &mut codec, "431").await;
        assert_eq!(data(&ack, "431"), json!([{"error": "reserved_name"}]));
        ws_send(
            &sio,
            r#"422["to","arena","room:host",{"room":"arena","host":"me"}]"#,
        )
        .await;
        let ack = next_starting(&sio, &mut codec, "432").await;
        assert_eq!(data(&ack, "432"), json!([{"error": "reserved_name"}]));
        ws_send(&sio, r#"42["to","arena","member_left",{}]"#).await;
        let error = next_starting(&sio, &mut codec, r#"42["error""#).await;
        assert_eq!(
            data(&error, "42"),
            json!(["error", {"error": "reserved_name", "event": "to"}])
        );

        // Both stay in the room and go on exchanging events, nothing reserved in between.
        native
            .send("arena", "chat", br#"{"n":1}"#, PayloadKind::Json)
            .await
            .unwrap();
        let chat = next_starting(&sio, &mut codec, "42[").await;
        let from = native.player().to_string();
        assert_eq!(broadcast_data(&chat, "42"), json!(["chat", {"n": 1}, from]));
        ws_send(&sio, r#"42["to","arena","chat",2]"#).await;
        let event = within("native event", async {
            loop {
                match native.next_event().await.unwrap() {
                    ServerEvent::Message { event, from, .. } => return (event, from),
                    ServerEvent::MemberJoined { .. } => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(event, ("chat".to_owned(), sio_id.parse().unwrap()));
        still_serving(addr).await;
    });
    let stats = wait_for_stats(&srv, |s| s.refused_for(Refusal::ReservedName) >= 9);
    assert_eq!(stats.refused_for(Refusal::ReservedName), 9, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn application_code_cannot_emit_a_name_the_clients_reserve() {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&outcomes);
    let app = SocketIo::empty().namespace(
        "/",
        Namespace::new().on_connect(move |socket| {
            let mut seen = seen.lock().unwrap();
            seen.push(socket.emit("disconnect", []).map_err(|e| e.to_string()));
            seen.push(
                socket
                    .to("room")
                    .emit("connect", [])
                    .map_err(|e| e.to_string()),
            );
            let refused = socket.emit_with_ack("newListener", [], |_| {});
            seen.push(refused.map_err(|e| e.to_string()));
            // The server's own notice names are the application's to use.
            seen.push(
                socket
                    .emit("error", [Arg::Json(json!("fine"))])
                    .map_err(|e| e.to_string()),
            );
        }),
    );
    let srv = app_server(app, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (sio, mut codec, _) = sio_connect(addr, "/").await;
        // Only the allowed emit reaches the client.
        assert_eq!(
            sio_next(&sio, &mut codec).await.unwrap(),
            r#"42["error","fine"]"#
        );
    });
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes,
        vec![
            Err(r#""disconnect" is a reserved event name"#.to_owned()),
            Err(r#""connect" is a reserved event name"#.to_owned()),
            Err(r#""newListener" is a reserved event name"#.to_owned()),
            Ok(()),
        ]
    );
    srv.stop().unwrap();
}

#[test]
fn disconnect_from_inside_a_handler_removes_the_socket_and_its_rooms() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let app = SocketIo::empty().namespace(
        "/",
        Namespace::relay()
            .on("quit", |socket, _, _| socket.disconnect())
            .on_disconnect(move |_, reason| seen.lock().unwrap().push(reason.to_owned())),
    );
    let srv = app_server(app, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (a, mut a_codec, a_id) = sio_connect(addr, "/").await;
        let (b, mut b_codec, b_id) = sio_connect(addr, "/").await;
        ws_send(&a, r#"420["join","den"]"#).await;
        next_starting(&a, &mut a_codec, "430[").await;
        ws_send(&b, r#"420["join","den"]"#).await;
        next_starting(&b, &mut b_codec, "430[").await;

        ws_send(&a, r#"42["quit"]"#).await;
        assert_eq!(next_starting(&a, &mut a_codec, "41").await, "41");
        // The server let go of the socket: its room heard it leave.
        let left = next_starting(&b, &mut b_codec, r#"42["member_left""#).await;
        assert_eq!(
            broadcast_data(&left, "42"),
            json!(["member_left", {"room": "den", "player": a_id, "members": 1, "reason": "disconnected"}])
        );
        // a joined first and hosted the room: b, the one left, hosts it now.
        let host = next_starting(&b, &mut b_codec, r#"42["room:host""#).await;
        assert_eq!(
            broadcast_data(&host, "42"),
            json!(["room:host", {"room": "den", "host": b_id}])
        );
        assert_eq!(
            *reasons.lock().unwrap(),
            vec!["server namespace disconnect"]
        );
        // The other client is still served.
        ws_send(&b, r#"421["to","den","hello",1]"#).await;
        let ack = next_starting(&b, &mut b_codec, "431").await;
        assert_eq!(data(&ack, "431"), json!([{"room": "den"}]));
    });
    srv.stop().unwrap();
}

#[test]
fn application_code_joins_rooms_of_a_namespace_other_than_main() {
    let chat = Namespace::new()
        .on("enter", |socket, args, ack| {
            let room = match args.first() {
                Some(Arg::Json(Value::String(room))) => room.clone(),
                _ => String::new(),
            };
            let answer = match socket.join(&room) {
                Ok(()) => json!({"ok": room}),
                Err(code) => json!({"error": code.name()}),
            };
            if let Some(ack) = ack {
                ack.send([Arg::Json(answer)]);
            }
        })
        .on("say", |socket, args, _| {
            let _ = socket.to("lobby").emit("said", args);
        });
    let app = SocketIo::relay().namespace("/chat", chat);
    let srv = app_server(app, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (a, mut a_codec, _) = sio_connect(addr, "/chat").await;
        let (b, mut b_codec, _) = sio_connect(addr, "/chat").await;
        for (s, codec) in [(&a, &mut a_codec), (&b, &mut b_codec)] {
            ws_send(s, r#"42/chat,1["enter","lobby"]"#).await;
            let ack = next_starting(s, codec, "43/chat,1").await;
            assert_eq!(data(&ack, "43/chat,1"), json!([{"ok": "lobby"}]));
        }
        ws_send(&a, r#"42/chat,["say","hi"]"#).await;
        let said = next_starting(&b, &mut b_codec, "42/chat,").await;
        // A broadcast of the application's: the recovery offset comes last.
        assert_eq!(broadcast_data(&said, "42/chat,"), json!(["said", "hi"]));
        // Room names are still checked: the name, not the key.
        ws_send(&a, "42/chat,2[\"enter\",\"a\\u0000b\"]").await;
        let ack = next_starting(&a, &mut a_codec, "43/chat,2").await;
        assert_eq!(data(&ack, "43/chat,2"), json!([{"error": "invalid_name"}]));

        // No client of the main namespace reaches those rooms by naming their key.
        let mut native = connect(addr).await;
        match native.join("/chat\0lobby").await {
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, ErrorCode::InvalidName as u16)
            }
            other => panic!("native join of a namespaced key: {other:?}"),
        }
        let (main, mut main_codec, _) = sio_connect(addr, "/").await;
        ws_send(&main, "421[\"join\",\"/chat\\u0000lobby\"]").await;
        let ack = next_starting(&main, &mut main_codec, "431").await;
        assert_eq!(data(&ack, "431"), json!([{"error": "invalid_name"}]));
    });
    srv.stop().unwrap();
}

#[test]
fn a_binary_packet_whose_attachments_never_come_ends_its_session() {
    let srv = server(1, |c| c.socketio_attachment_timeout_ms = 200);
    let addr = srv.local_addr();
    run(move || async move {
        let (a, mut a_codec, _) = sio_connect(addr, "/").await;
        ws_send(&a, r#"451-["to","r",{"_placeholder":true,"num":0}]"#).await;
        // The session ends (as on a parse error); nothing else came meanwhile.
        assert_eq!(sio_next(&a, &mut a_codec).await, None);
        // Another client is served.
        let (b, mut b_codec, _) = sio_connect(addr, "/").await;
        ws_send(&b, r#"420["join","r"]"#).await;
        next_starting(&b, &mut b_codec, "430[").await;
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Invalid) >= 1);
    assert_eq!(stats.closes_for(CloseReason::Invalid), 1, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn attachments_of_one_packet_past_max_payload_end_its_session() {
    let srv = server(1, |c| c.engineio_max_payload = 1000);
    let addr = srv.local_addr();
    run(move || async move {
        let (a, mut a_codec, _) = sio_connect(addr, "/").await;
        ws_send(&a, r#"420["join","r"]"#).await;
        next_starting(&a, &mut a_codec, "430[").await;
        // Each attachment fits in a message; together they do not fit in one.
        ws_send(
            &a,
            r#"452-["to","r","blob",[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]]"#,
        )
        .await;
        ws_send_binary(&a, &[7; 600]).await;
        ws_send_binary(&a, &[8; 600]).await;
        assert_eq!(sio_next(&a, &mut a_codec).await, None);
        // Within the bound, the same packet is served.
        let (b, mut b_codec, _) = sio_connect(addr, "/").await;
        ws_send(&b, r#"420["join","r"]"#).await;
        next_starting(&b, &mut b_codec, "430[").await;
        ws_send(
            &b,
            r#"452-1["to","r","blob",[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]]"#,
        )
        .await;
        ws_send_binary(&b, &[7; 400]).await;
        ws_send_binary(&b, &[8; 400]).await;
        let ack = next_starting(&b, &mut b_codec, "431").await;
        assert_eq!(data(&ack, "431"), json!([{"room": "r"}]));
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::TooBig) >= 1);
    assert_eq!(stats.closes_for(CloseReason::TooBig), 1, "{stats}");
    srv.stop().unwrap();
}

/// An app that asks each client for an ack on connection (with `ask_timeout`, or the
/// configured default) and reports every outcome on `outcomes`, and to the client as
/// `outcome` when it is still connected.
fn asking_app(
    ask_timeout: Option<Duration>,
    outcomes: mpsc::Sender<Result<Vec<Arg>, AckError>>,
    callbacks_alive: Arc<AtomicUsize>,
) -> SocketIo {
    let outcomes = Mutex::new(outcomes);
    SocketIo::empty().namespace(
        "/",
        Namespace::new().on_connect(move |socket| {
            let tell = outcomes.lock().unwrap().clone();
            let echo = socket.clone();
            // Counts callbacks that exist; the count drops when one is freed.
            let alive = Guard::new(&callbacks_alive);
            let on_ack = move |result: Result<Vec<Arg>, AckError>| {
                let _alive = alive;
                let text = match &result {
                    Ok(_) => "answered".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                let _ = echo.emit("outcome", [Arg::Json(json!(text))]);
                let _ = tell.send(result);
            };
            let sent = match ask_timeout {
                Some(t) => socket.emit_with_ack_timeout("ask", [], t, on_ack),
                None => socket.emit_with_ack("ask", [], on_ack),
            };
            sent.expect("not a reserved name");
        }),
    )
}

/// Counts itself in a shared counter while it lives.
struct Guard(Arc<AtomicUsize>);

impl Guard {
    fn new(count: &Arc<AtomicUsize>) -> Guard {
        count.fetch_add(1, Ordering::SeqCst);
        Guard(Arc::clone(count))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_server_ack_the_client_never_answers_times_out_and_is_freed() {
    let (tx, outcomes) = mpsc::channel();
    let alive = Arc::new(AtomicUsize::new(0));
    let app = asking_app(None, tx, Arc::clone(&alive));
    let srv = app_server(app, |c| c.socketio_ack_timeout_ms = 200);
    let addr = srv.local_addr();
    run(move || async move {
        // This client answers: its callback gets the answer.
        let (a, mut a_codec, _) = sio_connect(addr, "/").await;
        assert_eq!(sio_next(&a, &mut a_codec).await.unwrap(), r#"420["ask"]"#);
        ws_send(&a, r#"430["yes"]"#).await;
        assert_eq!(
            sio_next(&a, &mut a_codec).await.unwrap(),
            r#"42["outcome","answered"]"#
        );
        // This one does not: its callback hears of the timeout, on a live session.
        let (b, mut b_codec, _) = sio_connect(addr, "/").await;
        assert_eq!(sio_next(&b, &mut b_codec).await.unwrap(), r#"420["ask"]"#);
        assert_eq!(
            sio_next(&b, &mut b_codec).await.unwrap(),
            r#"42["outcome","Timeout"]"#
        );
        // A late answer is ignored, and the session goes on.
        ws_send(&b, r#"430["late"]"#).await;
        ws_send(&b, "41").await;
    });
    let mut seen: Vec<_> = outcomes.iter().take(2).collect();
    seen.sort_by_key(|r| r.is_err());
    assert_eq!(
        seen,
        vec![Ok(vec![Arg::Json(json!("yes"))]), Err(AckError::Timeout)]
    );
    let stats = wait_for_stats(&srv, |s| s.ack_timeouts >= 1);
    assert_eq!(stats.ack_timeouts, 1, "{stats}");
    assert_eq!(alive.load(Ordering::SeqCst), 0, "every callback was freed");
    srv.stop().unwrap();
}

#[test]
fn pending_server_acks_end_when_their_socket_disconnects() {
    let (tx, outcomes) = mpsc::channel();
    let alive = Arc::new(AtomicUsize::new(0));
    // Far longer than the test: only the disconnect can end the ack.
    let app = asking_app(Some(Duration::from_secs(600)), tx, Arc::clone(&alive));
    let srv = app_server(app, |_| {});
    let addr = srv.local_addr();
    let still_alive = Arc::clone(&alive);
    run(move || async move {
        let (a, mut a_codec, _) = sio_connect(addr, "/").await;
        assert_eq!(sio_next(&a, &mut a_codec).await.unwrap(), r#"420["ask"]"#);
        assert_eq!(still_alive.load(Ordering::SeqCst), 1);
        ws_send(&a, "41").await;
        // The server runs on its own threads: blocking this one waits for it.
        let outcome = outcomes
            .recv_timeout(WAIT)
            .expect("the callback was called");
        assert_eq!(outcome, Err(AckError::Disconnected));
        // The session stays (only the namespace socket left) and is answered again.
        ws_send(&a, "40").await;
        assert!(next_starting(&a, &mut a_codec, "40{").await.contains("sid"));
        assert_eq!(sio_next(&a, &mut a_codec).await.unwrap(), r#"420["ask"]"#);
        // The first callback is freed; the new ask holds its own.
        assert_eq!(still_alive.load(Ordering::SeqCst), 1);
    });
    // The connection went with the test: its pending ack too.
    let stats = wait_for_stats(&srv, |_| alive.load(Ordering::SeqCst) == 0);
    assert_eq!(alive.load(Ordering::SeqCst), 0, "{stats}");
    assert_eq!(stats.ack_timeouts, 0, "{stats}");
    srv.stop().unwrap();
}
