//! Authorization over real sockets (docs/AUTH.md, "Authorization"): each hook (handshake,
//! join, message, delivery) refusing, rewriting, dropping and filtering on both protocols,
//! and the `[[auth.rooms]]` rules from the configuration; a refusal answers its asker with
//! `forbidden` and leaves every other client served.

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::eio::{
    connected_sid, sio_connect_auth, sio_next, split_offset, without_offset, ws_send,
};
use common::{connect, connect_on_shard, run, url, wait_for_stats};
use corelay::client::{Client, ClientConfig, ClientError, PayloadKind, ServerEvent, Stream};
use corelay::hooks::{Forbidden, Hooks, Payload, RoomRule, Verdict};
use corelay::proto::native::ErrorCode;
use corelay::proto::ws::WsCodec;
use corelay::socketio::SocketIo;
use corelay::stats::{CloseReason, Refusal};
use corelay::{Config, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-of-the-game-backend";
const FORBIDDEN: u16 = ErrorCode::Forbidden as u16;

fn token(claims: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = claims;
    claims["exp"] = exp.into();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A server with `shards` shards checking tokens signed with [`SECRET`] (anonymous play
/// allowed), with `hooks`.
fn hooked(shards: usize, tweak: impl FnOnce(&mut Config), hooks: Hooks) -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        ..Config::default()
    };
    config.auth.jwt_secret = Some(SECRET.into());
    tweak(&mut config);
    Server::start_with_hooks(config, SocketIo::relay(), hooks).expect("server starts")
}

async fn native(addr: SocketAddr, claims: Value) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(url(addr));
    config.token = Some(token(claims));
    Client::connect(&config).await
}

/// A connected socket.io session of a player with `claims`.
async fn sio_player(addr: SocketAddr, claims: Value) -> (Stream, WsCodec) {
    let (s, codec, answer) = sio_connect_auth(addr, json!({ "token": token(claims) })).await;
    connected_sid(&answer, "");
    (s, codec)
}

/// The code and message of a refused native request.
fn refusal<T>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Server { code, message }) => (code, message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a success"),
    }
}

/// The next member message of a native client: (from, event, payload).
async fn next_message(c: &mut Client) -> (String, String, Vec<u8>) {
    loop {
        match c.next_event().await.expect("an event") {
            ServerEvent::Message {
                from,
                event,
                payload,
                ..
            } => return (from, event, payload.to_vec()),
            _ => continue,
        }
    }
}

/// The next socket.io packet that is not a membership notice (notices are room
/// broadcasts: each must carry its recovery offset).
async fn sio_message(s: &Stream, codec: &mut WsCodec) -> String {
    loop {
        let text = sio_next(s, codec).await.expect("a packet");
        if !text.contains("\"member_joined\"") && !text.contains("\"member_left\"") {
            return text;
        }
        split_offset(&text);
    }
}

#[test]
fn the_handshake_hook_refuses_a_player_on_both_protocols_and_no_one_else() {
    let hooks = Hooks::new().on_handshake(|who| match who.claims.get("banned") {
        Some(Value::Bool(true)) => Err(Forbidden::new("banned until tomorrow")),
        _ => Ok(()),
    });
    let srv = hooked(1, |_| {}, hooks);
    let addr = srv.local_addr();
    run(move || async move {
        let mut fine = native(addr, json!({"sub": "fine"})).await.unwrap();
        fine.join("lobby").await.unwrap();
        let (code, message) = refusal(native(addr, json!({"sub": "x", "banned": true})).await);
        assert_eq!(
            (code, message.as_str()),
            (FORBIDDEN, "banned until tomorrow")
        );
        let (_s, _c, answer) = sio_connect_auth(
            addr,
            json!({"token": token(json!({"sub": "y", "banned": true}))}),
        )
        .await;
        let data: Value = serde_json::from_str(answer.strip_prefix("44").expect(&answer)).unwrap();
        assert_eq!(
            data,
            json!({"message": "banned until tomorrow", "data": {"code": "forbidden"}})
        );
        // Anonymous players and the connected one go on.
        let mut anon = connect(addr).await;
        anon.join("lobby").await.unwrap();
        anon.send("lobby", "hi", b"1", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(next_message(&mut fine).await.1, "hi");
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Forbidden) == 1);
    assert_eq!(stats.refused_for(Refusal::Forbidden), 2);
    assert_eq!(stats.closes_for(CloseReason::Forbidden), 1);
    srv.stop().unwrap();
}

#[test]
fn the_join_hook_refuses_the_asker_on_both_protocols_while_members_play_on() {
    let hooks = Hooks::new().on_join(|who, room| {
        if room.starts_with("vip-") && who.claims.get("vip") != Some(&Value::Bool(true)) {
            return Err(Forbidden::new("vip rooms need a vip pass"));
        }
        Ok(())
    });
    // Two shards: the refusal is made on the asker's shard, whichever is the room's home.
    let srv = hooked(2, |_| {}, hooks);
    let addr = srv.local_addr();
    run(move || async move {
        let mut vip = native(addr, json!({"sub": "v", "vip": true}))
            .await
            .unwrap();
        vip.join("vip-1").await.unwrap();
        let mut other = native(addr, json!({"sub": "w", "vip": true}))
            .await
            .unwrap();
        other.join("vip-1").await.unwrap();

        let mut plain = native(addr, json!({"sub": "p"})).await.unwrap();
        let (code, message) = refusal(plain.join("vip-1").await);
        assert_eq!(
            (code, message.as_str()),
            (FORBIDDEN, "vip rooms need a vip pass")
        );
        plain.join("lobby").await.expect("other rooms stay open");

        let (s, mut codec) = sio_player(addr, json!({"sub": "q"})).await;
        ws_send(&s, r#"421["join","vip-1"]"#).await;
        assert_eq!(
            sio_next(&s, &mut codec).await.unwrap(),
            r#"431[{"error":"forbidden","message":"vip rooms need a vip pass"}]"#
        );
        // Without an ack: an error event naming the request.
        ws_send(&s, r#"42["join","vip-2"]"#).await;
        assert_eq!(
            sio_next(&s, &mut codec).await.unwrap(),
            r#"42["error",{"error":"forbidden","event":"join","message":"vip rooms need a vip pass"}]"#
        );
        // Not a member: its sends are refused, and nothing reaches the room from it.
        ws_send(&s, r#"422["to","vip-1","e",1]"#).await;
        assert_eq!(
            sio_next(&s, &mut codec).await.unwrap(),
            r#"432[{"error":"not_member"}]"#
        );
        vip.send("vip-1", "go", b"1", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut other).await,
            ("v".into(), "go".into(), b"1".to_vec())
        );
    });
    assert_eq!(srv.stats().refused_for(Refusal::Forbidden), 3);
    srv.stop().unwrap();
}

/// Refuses `secret`, drops `noise`, rewrites `chat` into `said` with a fixed JSON payload.
fn moderating() -> Hooks {
    Hooks::new().on_message(|who, msg| match msg.event.as_str() {
        "secret" => Verdict::Refuse(Forbidden::new(format!("{} may not say that", who.player))),
        "noise" => Verdict::Drop,
        "chat" => {
            msg.event = "said".into();
            msg.payload = Payload::Json(r#""***""#.into());
            Verdict::Pass
        }
        _ => Verdict::Pass,
    })
}

#[test]
fn the_message_hook_refuses_drops_and_rewrites_from_native_senders() {
    let srv = hooked(2, |_| {}, moderating());
    let addr = srv.local_addr();
    run(move || async move {
        let mut sender = native(addr, json!({"sub": "s"})).await.unwrap();
        let mut reader = native(addr, json!({"sub": "r"})).await.unwrap();
        let (ws, mut codec) = sio_player(addr, json!({"sub": "io"})).await;
        sender.join("room").await.unwrap();
        reader.join("room").await.unwrap();
        ws_send(&ws, r#"421["join","room"]"#).await;
        assert!(sio_message(&ws, &mut codec).await.starts_with("431"));

        for event in ["noise", "secret", "chat", "plain"] {
            sender
                .send("room", event, b"{\"n\":1}", PayloadKind::Json)
                .await
                .unwrap();
        }
        // Only the refusal is answered; the dropped message is not.
        assert_eq!(sender.next_error().await.unwrap(), FORBIDDEN);
        assert!(sender.take_errors().is_empty());
        // Each recipient gets the rewritten message then the plain one, and nothing else.
        assert_eq!(
            next_message(&mut reader).await,
            ("s".into(), "said".into(), b"\"***\"".to_vec())
        );
        assert_eq!(next_message(&mut reader).await.1, "plain");
        assert_eq!(
            without_offset(&sio_message(&ws, &mut codec).await),
            r#"42["said","***","s"]"#
        );
        assert_eq!(
            without_offset(&sio_message(&ws, &mut codec).await),
            r#"42["plain",{"n":1},"s"]"#
        );
    });
    assert_eq!(srv.stats().refused_for(Refusal::Forbidden), 1);
    srv.stop().unwrap();
}

#[test]
fn the_message_hook_refuses_drops_and_rewrites_from_socketio_senders() {
    let srv = hooked(2, |_| {}, moderating());
    let addr = srv.local_addr();
    run(move || async move {
        let (ws, mut codec) = sio_player(addr, json!({"sub": "io"})).await;
        let mut reader = native(addr, json!({"sub": "r"})).await.unwrap();
        reader.join("room").await.unwrap();
        ws_send(&ws, r#"421["join","room"]"#).await;
        assert!(sio_message(&ws, &mut codec).await.starts_with("431"));

        ws_send(&ws, r#"422["to","room","noise",1]"#).await;
        assert_eq!(
            sio_message(&ws, &mut codec).await,
            r#"432[{"room":"room"}]"#,
            "a drop is answered as sent"
        );
        ws_send(&ws, r#"423["to","room","secret",1]"#).await;
        assert_eq!(
            sio_message(&ws, &mut codec).await,
            r#"433[{"error":"forbidden","message":"io may not say that"}]"#
        );
        ws_send(&ws, r#"42["to","room","secret",1]"#).await;
        assert_eq!(
            sio_message(&ws, &mut codec).await,
            r#"42["error",{"error":"forbidden","event":"to","message":"io may not say that"}]"#
        );
        ws_send(&ws, r#"424["to","room","chat",{"text":"rude"}]"#).await;
        assert_eq!(
            sio_message(&ws, &mut codec).await,
            r#"434[{"room":"room"}]"#
        );
        ws_send(&ws, r#"42["to","room","plain",2]"#).await;
        assert_eq!(
            next_message(&mut reader).await,
            ("io".into(), "said".into(), b"\"***\"".to_vec())
        );
        assert_eq!(
            next_message(&mut reader).await,
            ("io".into(), "plain".into(), b"2".to_vec())
        );
    });
    assert_eq!(srv.stats().refused_for(Refusal::Forbidden), 2);
    srv.stop().unwrap();
}

#[test]
fn the_delivery_hook_filters_per_recipient_on_every_shard_and_protocol() {
    // A `whisper` reaches only the player its payload names; everything else reaches all.
    let hooks = Hooks::new().on_delivery(|recipient, msg| match (&*msg.event, &msg.payload) {
        ("whisper", Payload::Binary(to)) => to[..] == *recipient.player.as_bytes(),
        _ => true,
    });
    let srv = hooked(2, |_| {}, hooks);
    let addr = srv.local_addr();
    run(move || async move {
        // Recipients on the sender's shard and on the other one, and a socket.io member.
        let mut sender = connect_on_shard(addr, 0).await;
        let mut near = connect_on_shard(addr, 0).await;
        let mut far = connect_on_shard(addr, 1).await;
        let (ws, mut codec) = sio_player(addr, json!({"sub": "io"})).await;
        for c in [&mut sender, &mut near, &mut far] {
            c.join("room").await.unwrap();
        }
        ws_send(&ws, r#"421["join","room"]"#).await;
        assert!(sio_message(&ws, &mut codec).await.starts_with("431"));

        let far_id = far.player().to_owned();
        let near_id = near.player().to_owned();
        sender
            .send("room", "whisper", far_id.as_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
        sender
            .send("room", "whisper", near_id.as_bytes(), PayloadKind::Binary)
            .await
            .unwrap();
        sender
            .send("room", "whisper", b"io", PayloadKind::Binary)
            .await
            .unwrap();
        sender
            .send("room", "all", b"1", PayloadKind::Json)
            .await
            .unwrap();
        let to_far = next_message(&mut far).await;
        assert_eq!(
            (to_far.1.as_str(), to_far.2),
            ("whisper", far_id.into_bytes())
        );
        assert_eq!(next_message(&mut far).await.1, "all");
        let to_near = next_message(&mut near).await;
        assert_eq!(
            (to_near.1.as_str(), to_near.2),
            ("whisper", near_id.into_bytes())
        );
        assert_eq!(next_message(&mut near).await.1, "all");
        let first = sio_message(&ws, &mut codec).await;
        assert_eq!(
            without_offset(&first),
            format!(
                r#"451-["whisper",{{"_placeholder":true,"num":0}},"{}"]"#,
                sender.player()
            )
        );
        assert_eq!(
            without_offset(&sio_message(&ws, &mut codec).await),
            format!(r#"42["all",1,"{}"]"#, sender.player())
        );
    });
    srv.stop().unwrap();
}

fn match_rule() -> RoomRule {
    RoomRule {
        room: "match-*".into(),
        claim: "role".into(),
        values: vec!["player".into(), "spectator".into()],
        read_only: vec!["spectator".into()],
    }
}

#[test]
fn room_rules_admit_by_claim_and_keep_spectators_from_sending_on_both_protocols() {
    let srv = hooked(2, |c| c.auth.rooms = vec![match_rule()], Hooks::new());
    let addr = srv.local_addr();
    run(move || async move {
        let mut player = native(addr, json!({"sub": "pl", "role": "player"}))
            .await
            .unwrap();
        let mut watcher = native(addr, json!({"sub": "sp", "role": "spectator"}))
            .await
            .unwrap();
        let mut guest = native(addr, json!({"sub": "gu", "role": "guest"}))
            .await
            .unwrap();
        let mut anon = connect(addr).await;
        player.join("match-7").await.unwrap();
        watcher.join("match-7").await.unwrap();
        for c in [&mut guest, &mut anon] {
            let (code, message) = refusal(c.join("match-7").await);
            assert_eq!(
                (code, message.as_str()),
                (FORBIDDEN, "room match-7 requires the claim role")
            );
            c.join("lobby-7")
                .await
                .expect("rooms no rule names are open");
        }
        // A spectator's send is refused; a player's goes through to the spectator.
        watcher
            .send("match-7", "move", b"1", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(watcher.next_error().await.unwrap(), FORBIDDEN);
        player
            .send("match-7", "move", b"2", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut watcher).await,
            ("pl".into(), "move".into(), b"2".to_vec())
        );

        // The same on socket.io.
        let (g, mut gc) = sio_player(addr, json!({"sub": "g2", "role": "guest"})).await;
        ws_send(&g, r#"421["join","match-7"]"#).await;
        assert_eq!(
            sio_message(&g, &mut gc).await,
            r#"431[{"error":"forbidden","message":"room match-7 requires the claim role"}]"#
        );
        let (s, mut sc) = sio_player(addr, json!({"sub": "s2", "role": ["spectator"]})).await;
        ws_send(&s, r#"421["join","match-7"]"#).await;
        // pl, the first to join, hosts; sp and s2 watch.
        assert_eq!(
            sio_message(&s, &mut sc).await,
            r#"431[{"host":"pl","members":3,"room":"match-7"}]"#
        );
        ws_send(&s, r#"422["to","match-7","move",3]"#).await;
        assert_eq!(
            sio_message(&s, &mut sc).await,
            r#"432[{"error":"forbidden","message":"spectator members may not send to match-7"}]"#
        );
        player
            .send("match-7", "move", b"4", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(
            without_offset(&sio_message(&s, &mut sc).await),
            r#"42["move",4,"pl"]"#
        );
        assert_eq!(
            next_message(&mut watcher).await.2,
            b"4".to_vec(),
            "nothing of the refused sends"
        );
    });
    assert_eq!(srv.stats().refused_for(Refusal::Forbidden), 5);
    srv.stop().unwrap();
}

#[test]
fn room_rules_come_from_the_toml_file() {
    let dir = std::env::temp_dir().join(format!("corelay-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corelay.toml");
    std::fs::write(
        &file,
        "[auth]\njwt_secret = \"k\"\n\n[[auth.rooms]]\nroom = \"match-*\"\nclaim = \"role\"\nvalues = [\"player\", \"spectator\"]\nread_only = [\"spectator\"]\n",
    )
    .unwrap();
    let config = Config::load(Some(&file), vec![], &[]).unwrap();
    assert_eq!(config.auth.rooms, vec![match_rule()]);
    std::fs::write(&file, "[[auth.rooms]]\nroom = \"\"\nclaim = \"role\"\n").unwrap();
    let err = Config::load(Some(&file), vec![], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty room pattern"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
