//! The SocketCluster endpoint over real sockets, with raw protocol messages: the handshake
//! and pings, channels shared with native clients, and bad input that gets the protocol's
//! errors and closes only its own connection (issue 13).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::eio::{ws_connect, ws_next, ws_send, ws_send_binary};
use common::{connect, run, server, still_serving, wait_for_stats};
use corelay::client::ServerEvent;
use corelay::client::{PayloadKind, Stream};
use corelay::proto::ws::WsCodec;
use corelay::stats::CloseReason;
use serde_json::{json, Value};

const PATH: &str = "/socketcluster/";

/// A raw SocketCluster connection.
struct Sc {
    s: Stream,
    codec: WsCodec,
}

impl Sc {
    async fn open(addr: SocketAddr) -> Sc {
        let (s, codec) = ws_connect(addr, PATH).await;
        Sc { s, codec }
    }

    /// Opened and handshaken; returns the socket id.
    async fn handshaken(addr: SocketAddr) -> (Sc, String) {
        let mut sc = Sc::open(addr).await;
        sc.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
            .await;
        let answer = sc.packet().await;
        assert_eq!(answer["rid"], 1, "{answer}");
        assert_eq!(answer["data"]["isAuthenticated"], false);
        let id = answer["data"]["id"].as_str().expect("an id").to_owned();
        (sc, id)
    }

    async fn send(&self, text: &str) {
        ws_send(&self.s, text).await;
    }

    /// The next text message, pings skipped.
    async fn text(&mut self) -> Result<String, Option<u16>> {
        loop {
            match ws_next(&self.s, &mut self.codec).await {
                Ok(t) if t.is_empty() => continue,
                other => return other,
            }
        }
    }

    /// The next JSON packet (pings skipped).
    async fn packet(&mut self) -> Value {
        let text = self.text().await.expect("a packet");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// The next packet that is not a room notice.
    async fn message(&mut self) -> Value {
        loop {
            let p = self.packet().await;
            let notice = p["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("member_"));
            if !notice {
                return p;
            }
        }
    }

    /// The close code the server ends with (what comes before is skipped).
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.text().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// The answer to call `cid` and the channel message that a publish of one's own
    /// brings, in whichever order they come.
    async fn answer_and_message(&mut self, cid: u64) -> (Value, Value) {
        let (first, second) = (self.message().await, self.message().await);
        if first.get("rid").is_some() {
            assert_eq!(first["rid"], cid);
            (first, second)
        } else {
            assert_eq!(second["rid"], cid);
            (second, first)
        }
    }

    async fn subscribe(&mut self, channel: &str, cid: u64) {
        self.send(&format!(
            r##"{{"event":"#subscribe","data":{{"channel":"{channel}"}},"cid":{cid}}}"##
        ))
        .await;
        let answer = self.message().await;
        assert_eq!(answer, json!({ "rid": cid }), "subscribe answered");
    }
}

#[test]
fn the_handshake_answers_id_and_ping_timeout_and_pings_come_in_either_form() {
    for version in [2u8, 1] {
        let srv = server(1, |c| {
            c.socketcluster.protocol_version = version;
            c.socketcluster.ping_interval_ms = 100;
            c.socketcluster.ping_timeout_ms = 1_000;
        });
        let addr = srv.local_addr();
        run(move || async move {
            let mut sc = Sc::open(addr).await;
            sc.send(r##"{"event":"#handshake","data":{},"cid":1}"##)
                .await;
            let answer = ws_next(&sc.s, &mut sc.codec).await.unwrap();
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["rid"], 1);
            assert_eq!(answer["data"]["pingTimeout"], 1_000);
            assert_eq!(answer["data"]["isAuthenticated"], false);
            assert!(answer["data"]["id"].is_string());
            // Pings of the configured form; the client answers them and stays.
            let ping = if version == 1 { "#1" } else { "" };
            for _ in 0..3 {
                assert_eq!(ws_next(&sc.s, &mut sc.codec).await.unwrap(), ping);
                sc.send(if version == 1 { "#2" } else { "" }).await;
            }
        });
        srv.shutdown();
        srv.join().unwrap();
    }
}

#[test]
fn silent_clients_are_closed_with_the_protocols_codes() {
    let srv = server(1, |c| {
        c.handshake_timeout_ms = 200;
        c.socketcluster.ping_interval_ms = 100;
        c.socketcluster.ping_timeout_ms = 300;
    });
    let addr = srv.local_addr();
    run(move || async move {
        // No #handshake: 4005.
        let mut sc = Sc::open(addr).await;
        assert_eq!(sc.close_code().await, Some(4005));
        // Handshaken, then deaf to pings: 4001.
        let (mut sc, _) = Sc::handshaken(addr).await;
        assert_eq!(sc.close_code().await, Some(4001));
    });
    wait_for_stats(&srv, |s| s.closes_for(CloseReason::Idle) == 1);
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn channels_are_rooms_shared_with_native_clients() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (mut a, _) = Sc::handshaken(addr).await;
        let (mut b, _) = Sc::handshaken(addr).await;
        a.subscribe("arena-42", 2).await;
        b.subscribe("arena-42", 2).await;
        let mut native = connect(addr).await;
        native.join("arena-42").await.unwrap();

        // A SocketCluster publish reaches subscribers (the publisher too, as SocketCluster
        // delivers) and native members as the event `publish`.
        a.send(r##"{"event":"#publish","data":{"channel":"arena-42","data":{"hp":3}},"cid":3}"##)
            .await;
        let published = json!({"event":"#publish","data":{"channel":"arena-42","data":{"hp":3}}});
        assert_eq!(
            a.answer_and_message(3).await,
            (json!({"rid": 3}), published.clone())
        );
        assert_eq!(b.message().await, published);
        let event = loop {
            match native.next_event().await.unwrap() {
                ServerEvent::Message {
                    event,
                    payload,
                    kind,
                    ..
                } => break (event, payload, kind),
                _ => continue,
            }
        };
        assert_eq!(event.0, "publish");
        assert_eq!(event.2, PayloadKind::Json);
        assert_eq!(
            serde_json::from_slice::<Value>(&event.1).unwrap(),
            json!({"hp":3})
        );

        // A native `publish` is the channel's message; any other event is wrapped; binary
        // travels as the codec's base64 object.
        native
            .send("arena-42", "publish", br#"[1,"two"]"#, PayloadKind::Json)
            .await
            .unwrap();
        let got = b.message().await;
        assert_eq!(got["data"]["data"], json!([1, "two"]));
        assert_eq!(a.message().await, got);
        native
            .send("arena-42", "move", &[1, 2, 3], PayloadKind::Binary)
            .await
            .unwrap();
        let got = b.message().await;
        assert_eq!(got["data"]["channel"], "arena-42");
        assert_eq!(got["data"]["data"]["event"], "move");
        assert_eq!(
            got["data"]["data"]["data"],
            json!({"base64": true, "data": "AQID"})
        );
        assert_eq!(got["data"]["data"]["from"], native.player());
        assert_eq!(a.message().await, got);

        // Binary published by a client arrives at native members as binary.
        a.send(r##"{"event":"#publish","data":{"channel":"arena-42","data":{"base64":true,"data":"BAUG"}}}"##)
            .await;
        let bytes = loop {
            match native.next_event().await.unwrap() {
                ServerEvent::Message {
                    payload,
                    kind: PayloadKind::Binary,
                    ..
                } => break payload,
                _ => continue,
            }
        };
        assert_eq!(&bytes[..], &[4, 5, 6]);

        assert_eq!(
            b.message().await["data"]["data"],
            json!({"base64":true,"data":"BAUG"})
        );

        // Unsubscribed (answered here, as the client may ask): nothing more.
        b.send(r##"{"event":"#unsubscribe","data":"arena-42","cid":8}"##)
            .await;
        assert_eq!(b.message().await, json!({"rid": 8}));
        native
            .send("arena-42", "publish", b"1", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(
            a.message().await["data"]["data"],
            json!({"base64":true,"data":"BAUG"})
        );
        assert_eq!(a.message().await["data"]["data"], 1);
        b.send(r##"{"event":"ping-me","cid":9}"##).await;
        // The next thing `b` sees is its own answer, not the channel's message.
        let answer = b.message().await;
        assert_eq!(answer["rid"], 9);
        assert_eq!(answer["error"]["name"], "InvalidActionError");
    });
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn bad_input_gets_the_protocols_errors_and_closes_only_its_client() {
    let srv = server(1, |c| {
        c.max_message_size = 4096;
        c.rate_limits.socketcluster.messages_per_s = 10.0;
        c.rate_limits.socketcluster.messages_burst = 5;
        c.rate_limits.sustained_ms = 300;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (mut bystander, _) = Sc::handshaken(addr).await;
        bystander.subscribe("calm", 2).await;

        // Before the handshake: 4009.
        let mut sc = Sc::open(addr).await;
        sc.send(r##"{"event":"#subscribe","data":{"channel":"calm"},"cid":1}"##)
            .await;
        assert_eq!(sc.close_code().await, Some(4009));

        // A #handshake without a cid: 4008.
        let mut sc = Sc::open(addr).await;
        sc.send(r##"{"event":"#handshake","data":{}}"##).await;
        assert_eq!(sc.close_code().await, Some(4008));

        // Malformed JSON: 1003.
        let (mut sc, _) = Sc::handshaken(addr).await;
        sc.send(r#"{"event":"oops","#).await;
        assert_eq!(sc.close_code().await, Some(1003));

        // JSON that is no packet: 1003.
        let (mut sc, _) = Sc::handshaken(addr).await;
        sc.send(r#"{"hello":1}"#).await;
        assert_eq!(sc.close_code().await, Some(1003));

        // Binary that is no UTF-8: 1007.
        let (mut sc, _) = Sc::handshaken(addr).await;
        ws_send_binary(&sc.s, &[0xff, 0xfe]).await;
        assert_eq!(sc.close_code().await, Some(1007));

        // An unknown # event with a cid: an error answer, and the connection goes on;
        // without a cid there is nobody to answer: 1003.
        let (mut sc, _) = Sc::handshaken(addr).await;
        sc.send(r##"{"event":"#fly","data":{},"cid":5}"##).await;
        let answer = sc.message().await;
        assert_eq!(answer["rid"], 5);
        assert_eq!(answer["error"]["name"], "InvalidActionError");
        assert_eq!(answer["error"]["code"], "reserved_name");
        sc.send(r##"{"event":"#subscribe","data":{"channel":7},"cid":6}"##)
            .await;
        let answer = sc.message().await;
        assert_eq!(answer["rid"], 6);
        assert_eq!(answer["error"]["name"], "InvalidActionError");
        sc.send(r##"{"event":"#fly","data":{}}"##).await;
        assert_eq!(sc.close_code().await, Some(1003));

        // Over max_message_size: 1009.
        let (mut sc, _) = Sc::handshaken(addr).await;
        let big = format!(
            r##"{{"event":"#publish","data":{{"channel":"calm","data":"{}"}}}}"##,
            "x".repeat(5000)
        );
        sc.send(&big).await;
        assert_eq!(sc.close_code().await, Some(1009));

        // A cid flood: rate_limited answers, then 1008 once it keeps on.
        let (mut sc, _) = Sc::handshaken(addr).await;
        let mut refused = 0;
        let code = 'flood: loop {
            for cid in 0..20u64 {
                sc.send(&format!(r##"{{"event":"spam","cid":{}}}"##, 100 + cid))
                    .await;
            }
            // Every call is answered (the first ones: no such procedure), until the close.
            for _ in 0..20 {
                match sc.text().await {
                    Ok(t) if t.contains("rate_limited") => refused += 1,
                    Ok(_) => {}
                    Err(code) => break 'flood code,
                }
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        };
        assert!(refused > 0);
        assert_eq!(code, Some(1008));

        // The bystander was served throughout, and still is.
        bystander
            .send(r##"{"event":"#publish","data":{"channel":"calm","data":"still here"},"cid":3}"##)
            .await;
        let (_, message) = bystander.answer_and_message(3).await;
        assert_eq!(message["data"]["data"], "still here");
        still_serving(addr).await;
    });
    srv.shutdown();
    srv.join().unwrap();
}
