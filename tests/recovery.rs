//! Socket.IO connection state recovery (issue 9, item 4) over real sockets, with a raw
//! client that does what the official one does: it keeps the CONNECT answer's `pid` and the
//! last argument of every event it processes (the offset), and sends both back in the
//! CONNECT auth payload of its next connection. The official client itself is exercised
//! by tests/interop/recovery.test.js.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};

use common::eio::{ws_connect, ws_recv, ws_send, EIO_WS};
use common::{connect, room_homed_on, run, server, within};
use corelay::client::{Client, PayloadKind, ServerEvent, Stream};
use corelay::proto::ws::WsCodec;

/// A socket.io client's connection: its WebSocket, and what it keeps across connections.
struct SioClient {
    s: Stream,
    codec: WsCodec,
    /// The CONNECT answer's data (`sid`, `pid`).
    connected: Value,
    /// Room events received, in order: (event, args without the offset, offset).
    events: Vec<(String, Vec<Value>, String)>,
}

/// Opens an Engine.IO WebSocket session on shard `shard` (the kernel picks the shard of a
/// connection; the session id's first two hex digits say which it was), at most 64 tries.
async fn open_on(addr: SocketAddr, shard: usize) -> (Stream, WsCodec) {
    for _ in 0..64 {
        let (s, mut codec) = ws_connect(addr, EIO_WS).await;
        let open = ws_recv(&s, &mut codec).await.expect("open packet");
        let v: Value = serde_json::from_str(&open[1..]).unwrap();
        let sid = v["sid"].as_str().unwrap();
        if usize::from_str_radix(&sid[..2], 16).unwrap() == shard {
            return (s, codec);
        }
    }
    panic!("no connection landed on shard {shard} in 64 tries");
}

impl SioClient {
    /// Connects the main namespace on shard `shard` with `auth`. Events that come before the
    /// CONNECT answer (a recovered session's replay) are kept, as the official client
    /// buffers them.
    async fn connect(addr: SocketAddr, shard: usize, auth: Value) -> SioClient {
        let (s, codec) = open_on(addr, shard).await;
        let mut c = SioClient {
            s,
            codec,
            connected: Value::Null,
            events: Vec::new(),
        };
        ws_send(&c.s, &format!("40{auth}")).await;
        loop {
            let text = c.next().await;
            if let Some(data) = text.strip_prefix("40") {
                c.connected = serde_json::from_str(data).unwrap();
                return c;
            }
            c.keep(&text);
        }
    }

    fn sid(&self) -> &str {
        self.connected["sid"].as_str().expect("sid")
    }

    fn pid(&self) -> &str {
        self.connected["pid"]
            .as_str()
            .expect("pid (recovery is on)")
    }

    /// The next text message, pings answered.
    async fn next(&mut self) -> String {
        loop {
            let text = ws_recv(&self.s, &mut self.codec).await.expect("a message");
            if text == "2" {
                ws_send(&self.s, "3").await;
                continue;
            }
            return text;
        }
    }

    /// Records an event (`42[...]`); other packets (acks) are ignored.
    fn keep(&mut self, text: &str) {
        let Some(array) = text.strip_prefix("42") else {
            return;
        };
        let mut args: Vec<Value> = serde_json::from_str(array).unwrap();
        let event = args.remove(0).as_str().unwrap().to_owned();
        let offset = args
            .pop()
            .and_then(|o| o.as_str().map(str::to_owned))
            .expect("every room event ends with its offset");
        assert!(
            (9..=24).contains(&offset.len()) && offset.bytes().all(|b| b.is_ascii_hexdigit()),
            "{offset}"
        );
        self.events.push((event, args, offset));
    }

    /// Reads until `n` events are kept in all.
    async fn until_events(&mut self, n: usize) {
        while self.events.len() < n {
            let text = self.next().await;
            self.keep(&text);
        }
    }

    /// Sends an event with an ack and waits for the ack's data.
    async fn call(&mut self, id: u32, args: Value) -> Value {
        ws_send(&self.s, &format!("42{id}{args}")).await;
        let prefix = format!("43{id}");
        loop {
            let text = self.next().await;
            if let Some(data) = text.strip_prefix(&prefix) {
                return serde_json::from_str::<Value>(data).unwrap()[0].clone();
            }
            self.keep(&text);
        }
    }

    /// The auth payload that recovers this session, as the official client sends it: the
    /// pid and the offset of the `processed`-th event kept (1-based; 0: none processed).
    fn recovery(&self, processed: usize) -> Value {
        let mut auth = json!({ "pid": self.pid() });
        if processed > 0 {
            auth["offset"] = json!(self.events[processed - 1].2);
        }
        auth
    }
}

/// `n` of a `move` event's payload, from a kept event.
fn number(event: &(String, Vec<Value>, String)) -> (String, u64) {
    let payload = &event.1[0];
    (
        payload["room"].as_str().unwrap().to_owned(),
        payload["n"].as_u64().unwrap(),
    )
}

async fn send(c: &mut Client, room: &str, n: u64) {
    let payload = json!({ "room": room, "n": n }).to_string();
    c.send(room, "move", payload.as_bytes(), PayloadKind::Json)
        .await
        .unwrap();
}

/// Waits for `n` notices of `kind` about player `who` at a native member.
async fn notices(c: &mut Client, who: &str, n: usize, kind: fn(&ServerEvent) -> Option<&str>) {
    let mut seen = 0;
    while seen < n {
        let e = within("a notice", c.next_event()).await.expect("event");
        if kind(&e) == Some(who) {
            seen += 1;
        }
    }
}

fn away(e: &ServerEvent) -> Option<&str> {
    match e {
        ServerEvent::MemberAway { player, .. } => Some(player),
        _ => None,
    }
}

fn back(e: &ServerEvent) -> Option<&str> {
    match e {
        ServerEvent::MemberBack { player, .. } => Some(player),
        _ => None,
    }
}

fn left(e: &ServerEvent) -> Option<&str> {
    match e {
        ServerEvent::MemberLeft { player, .. } => Some(player),
        _ => None,
    }
}

/// Per room, the numbers of the `move` events in `events`, in the order received.
fn per_room(events: &[(String, Vec<Value>, String)]) -> BTreeMap<String, Vec<u64>> {
    let mut rooms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.0 == "move") {
        let (room, n) = number(e);
        rooms.entry(room).or_default().push(n);
    }
    rooms
}

/// A socket.io player in two rooms, homed on different shards, loses its connection twice
/// mid-stream and recovers on the other shard, then on the first again: each time it gets
/// its id and rooms back and exactly the events it had not processed, per room in order,
/// once, before anything newer; the others see it away and back, never leaving.
#[test]
fn a_lost_socketio_connection_recovers_on_either_shard_with_exactly_what_it_missed() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let rooms = [room_homed_on(0, 2), room_homed_on(1, 2)];
        let mut bob = connect(addr).await;
        for room in &rooms {
            bob.join(room).await.unwrap();
        }
        let mut alice = SioClient::connect(addr, 0, json!({})).await;
        let (sid, pid) = (alice.sid().to_owned(), alice.pid().to_owned());
        for (i, room) in rooms.iter().enumerate() {
            let ack = alice.call(i as u32, json!(["join", room])).await;
            assert_eq!(ack["room"], json!(room));
        }
        let mut next = 0;
        // Cut on shard 0, recover on shard 1; then cut there and recover on shard 0.
        for (round, recover_on) in [1usize, 0].into_iter().enumerate() {
            let first = alice.events.len();
            // Five interleaved messages; alice reads them all but processes only two (the
            // rest were "in the dead socket's buffers").
            for i in 0..5 {
                send(&mut bob, &rooms[i % 2], next).await;
                next += 1;
            }
            alice.until_events(first + 5).await;
            let processed = alice.events.len() - 3;
            let unprocessed = per_room(&alice.events[processed..]);
            let auth = alice.recovery(processed);
            drop(alice);
            notices(&mut bob, &sid, 2, away).await;
            // More while it is away.
            for i in 0..4 {
                send(&mut bob, &rooms[i % 2], next).await;
                next += 1;
            }
            alice = SioClient::connect(addr, recover_on, auth).await;
            assert_eq!(alice.sid(), sid, "round {round}: the same socket id");
            assert_eq!(
                alice.pid(),
                pid,
                "round {round}: the same pid (socket.recovered)"
            );
            notices(&mut bob, &sid, 2, back).await;
            // One more after the replay was asked for: it must come after it, once.
            send(&mut bob, &rooms[0], next).await;
            let last = next;
            next += 1;
            let mut expected = unprocessed;
            for i in 0..4u64 {
                let n = last - 4 + i;
                expected
                    .entry(rooms[(i % 2) as usize].clone())
                    .or_default()
                    .push(n);
            }
            expected.entry(rooms[0].clone()).or_default().push(last);
            let total: usize = expected.values().map(Vec::len).sum();
            alice.until_events(total).await;
            assert_eq!(per_room(&alice.events), expected, "round {round}");
            assert_eq!(number(alice.events.last().unwrap()).1, last, "newest last");
            // The recovered socket sends as the same player.
            let ack = alice
                .call(9, json!(["to", rooms[1], "hello", {"round": round}]))
                .await;
            assert_eq!(ack["room"], json!(rooms[1]));
            loop {
                let e = within("hello", bob.next_event()).await.unwrap();
                if let ServerEvent::Message { from, event, .. } = e {
                    if event == "hello" {
                        assert_eq!(from, sid);
                        break;
                    }
                }
            }
        }
        assert!(srv.stats().resumes >= 2);
    });
}

/// A client that reconnects before the server saw its old connection go (a phone that
/// changed networks leaves no FIN behind) takes its session over, on the other shard and on
/// the same one: the old connection is told its socket is disconnected, the rooms see the
/// player away and back, and the new connection gets what the old one had not processed.
#[test]
fn a_reconnect_takes_over_a_session_whose_old_connection_the_server_still_holds() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(0, 2);
        let mut bob = connect(addr).await;
        bob.join(&room).await.unwrap();
        let mut alice = SioClient::connect(addr, 0, json!({})).await;
        alice.call(0, json!(["join", room])).await;
        let sid = alice.sid().to_owned();
        let mut next = 0;
        for shard in [1, 1, 0] {
            for _ in 0..3 {
                send(&mut bob, &room, next).await;
                next += 1;
            }
            alice.until_events(3).await;
            let auth = alice.recovery(1);
            let missed: Vec<u64> = alice.events[1..].iter().map(|e| number(e).1).collect();
            // The old connection stays open; a new one recovers the session.
            let mut old = alice;
            alice = SioClient::connect(addr, shard, auth).await;
            assert_eq!(alice.sid(), sid, "recovered on shard {shard}");
            alice.until_events(missed.len()).await;
            let got: Vec<u64> = alice.events.iter().map(|e| number(e).1).collect();
            assert_eq!(got, missed);
            notices(&mut bob, &sid, 1, away).await;
            notices(&mut bob, &sid, 1, back).await;
            // The old connection hears its socket is gone.
            loop {
                let text = old.next().await;
                if text == "41" {
                    break;
                }
                assert!(text.starts_with("42"), "{text}");
            }
            alice.events.clear();
        }
    });
}

/// A wrong secret, an offset the server never gave, and a session whose window ended all
/// get a fresh session; a wrong secret does not end the real one.
#[test]
fn a_wrong_secret_an_unknown_offset_or_an_ended_window_get_a_fresh_session() {
    let srv = server(2, |c| c.resume.window_ms = 1_500);
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(1, 2);
        let mut bob = connect(addr).await;
        bob.join(&room).await.unwrap();
        let mut alice = SioClient::connect(addr, 0, json!({})).await;
        alice.call(0, json!(["join", room])).await;
        send(&mut bob, &room, 1).await;
        alice.until_events(1).await;
        let (sid, pid) = (alice.sid().to_owned(), alice.pid().to_owned());
        let auth = alice.recovery(1);
        drop(alice);
        notices(&mut bob, &sid, 1, away).await;

        let (player, _) = pid.split_once('.').unwrap();
        let forged =
            json!({ "pid": format!("{player}.{}", "0".repeat(32)), "offset": auth["offset"] });
        let unknown = json!({ "pid": pid, "offset": "ffffffff1" });
        for (shard, wrong) in [(0, &forged), (1, &forged), (0, &unknown), (1, &unknown)] {
            let fresh = SioClient::connect(addr, shard, wrong.clone()).await;
            assert_ne!(fresh.sid(), sid, "{wrong} on shard {shard}");
            assert_ne!(fresh.pid(), pid);
        }
        // The session survived the attempts.
        let alice = SioClient::connect(addr, 1, auth.clone()).await;
        assert_eq!(alice.sid(), sid);
        notices(&mut bob, &sid, 1, back).await;
        drop(alice);
        notices(&mut bob, &sid, 1, away).await;
        // The window ends: the room is told it left, and the pid no longer recovers.
        notices(&mut bob, &sid, 1, left).await;
        let late = SioClient::connect(addr, 0, auth).await;
        assert_ne!(late.sid(), sid);
    });
}

/// A client that disconnects on purpose (a DISCONNECT packet) leaves at once, and its pid
/// recovers nothing.
#[test]
fn a_client_that_says_goodbye_leaves_at_once_and_cannot_recover() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut bob = connect(addr).await;
        bob.join("lobby").await.unwrap();
        let mut alice = SioClient::connect(addr, 0, json!({})).await;
        alice.call(0, json!(["join", "lobby"])).await;
        let (sid, auth) = (alice.sid().to_owned(), alice.recovery(0));
        ws_send(&alice.s, "41").await;
        notices(&mut bob, &sid, 1, left).await;
        let again = SioClient::connect(addr, 0, auth).await;
        assert_ne!(again.sid(), sid);
    });
}

/// `resume.socketio = false`: no pid, events without offsets, and a lost connection
/// leaves at once.
#[test]
fn recovery_off_gives_no_pid_and_no_offsets() {
    let srv = server(1, |c| c.resume.socketio = false);
    let addr = srv.local_addr();
    run(move || async move {
        let mut bob = connect(addr).await;
        bob.join("lobby").await.unwrap();
        let (s, mut codec) = open_on(addr, 0).await;
        ws_send(&s, "40").await;
        let answer = ws_recv(&s, &mut codec).await.unwrap();
        let data: Value = serde_json::from_str(answer.strip_prefix("40").unwrap()).unwrap();
        assert!(data.get("pid").is_none(), "{answer}");
        let sid = data["sid"].as_str().unwrap().to_owned();
        ws_send(&s, r#"420["join","lobby"]"#).await;
        send(&mut bob, "lobby", 7).await;
        let event = loop {
            let text = ws_recv(&s, &mut codec).await.unwrap();
            if text.starts_with("42[\"move\"") {
                break text;
            }
        };
        let args: Vec<Value> = serde_json::from_str(&event[2..]).unwrap();
        assert_eq!(args.len(), 3, "event, payload, from: {event}");
        drop(s);
        notices(&mut bob, &sid, 1, left).await;
    });
}
