//! Game rooms (issue 10) over real sockets: every room has a host, its longest-present
//! member; when the host leaves, or its session ends, the next one takes over and every
//! member is told, on both protocols and whichever shards the players are on.

mod common;

use serde_json::{json, Value};

use common::eio::{data, next_starting, sio_connect, ws_send};
use common::{connect_on_shard, room_homed_on, run, server, within};
use corelay::client::{Client, ClientConfig, NewRoom, ServerEvent};
use corelay::proto::native::HostAction;

const SECRET: &str = "rooms-test-secret";

/// An HS256 token of `claims`, valid until 2096.
fn token(mut claims: Value) -> String {
    claims["exp"] = json!(4_000_000_000u64);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The next `Host` notice a native member gets.
async fn next_host(c: &mut Client) -> (String, String) {
    loop {
        let e = within("a host notice", c.next_event())
            .await
            .expect("event");
        if let ServerEvent::Host { room, player, .. } = e {
            return (room, player);
        }
    }
}

/// The first member is host; when it leaves the longest-present member is, and every
/// member (native and Socket.IO, on both shards, the new host too) is told once.
#[test]
fn the_longest_present_member_takes_over_when_the_host_leaves() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(1, 2);
        let mut ann = connect_on_shard(addr, 0).await;
        let mut bo = connect_on_shard(addr, 1).await;
        let mut cy = connect_on_shard(addr, 0).await;
        let first = ann.join_room(&room).await.unwrap();
        assert_eq!(first.host, ann.player(), "the first member is host");
        assert_eq!(bo.join_room(&room).await.unwrap().host, ann.player());
        let (s, mut codec, dee) = sio_connect(addr, "/").await;
        ws_send(&s, &format!(r#"420["join","{room}"]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        assert_eq!(ack[0]["host"], json!(ann.player()));
        assert_eq!(ack[0]["members"], json!(3));
        assert_eq!(cy.join_room(&room).await.unwrap().host, ann.player());

        ann.leave(&room).await.unwrap();
        let bo_name = bo.player().to_owned();
        assert_eq!(next_host(&mut bo).await, (room.clone(), bo_name.clone()));
        assert_eq!(next_host(&mut cy).await, (room.clone(), bo_name.clone()));
        let notice = next_starting(&s, &mut codec, r#"42["room:host""#).await;
        let args: Vec<Value> = serde_json::from_str(&notice[2..]).unwrap();
        assert_eq!(args[1], json!({"room": room, "host": bo_name}));

        // Then the Socket.IO player, after bo (it joined before cy).
        bo.leave(&room).await.unwrap();
        assert_eq!(next_host(&mut cy).await, (room.clone(), dee.clone()));
        // A late joiner hears who is host in its answer.
        assert_eq!(ann.join_room(&room).await.unwrap().host, dee);
        // The host leaves again: cy has been here longer than ann, who came back last.
        ws_send(&s, &format!(r#"421["leave","{room}"]"#)).await;
        assert_eq!(
            next_host(&mut cy).await,
            (room.clone(), cy.player().to_owned())
        );
    });
}

/// A host whose connection is lost stays host while its session may resume; when the
/// window ends, the next member takes over.
#[test]
fn a_host_whose_session_ends_hands_over_when_its_window_does() {
    let srv = server(2, |c| c.resume.window_ms = 400);
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(0, 2);
        let mut ann = connect_on_shard(addr, 1).await;
        let mut bo = connect_on_shard(addr, 0).await;
        ann.join(&room).await.unwrap();
        assert_eq!(bo.join_room(&room).await.unwrap().host, ann.player());
        ann.drop_connection();
        let mut away = false;
        loop {
            match within("notices", bo.next_event()).await.unwrap() {
                ServerEvent::MemberAway { .. } => away = true,
                ServerEvent::Host {
                    room: r, player, ..
                } => {
                    assert!(away, "still host while away");
                    assert_eq!((r, player), (room.clone(), bo.player().to_owned()));
                    break;
                }
                _ => {}
            }
        }
    });
}

/// The code of a refused native request.
fn refused<T: std::fmt::Debug>(result: Result<T, corelay::client::ClientError>) -> u16 {
    match result {
        Err(corelay::client::ClientError::Server { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn set_state(state: &str) -> HostAction {
    HostAction::SetState {
        state: state.to_owned(),
    }
}

/// Only the host sets the room's state, its metadata, locks it and kicks members; the state
/// reaches each later joiner and a new host; refusals reach the asker alone.
#[test]
fn the_host_keeps_the_state_locks_and_kicks_and_nobody_else_may() {
    let srv = server(2, |c| c.rooms.max_state_bytes = 1_000);
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(1, 2);
        let mut ann = connect_on_shard(addr, 0).await;
        let mut bo = connect_on_shard(addr, 1).await;
        ann.join(&room).await.unwrap();
        bo.join(&room).await.unwrap();
        let (s, mut codec, dee) = sio_connect(addr, "/").await;
        ws_send(&s, &format!(r#"420["join","{room}"]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        assert!(ack[0].get("state").is_none(), "no state yet: {ack}");

        // Not the host: refused, on both protocols; the state stays unset.
        assert_eq!(refused(bo.host_action(&room, set_state("1")).await), 20);
        ws_send(
            &s,
            &format!(r#"421["room:set_state","{room}",{{"turn":9}}]"#),
        )
        .await;
        let ack = data(&next_starting(&s, &mut codec, "431").await, "431");
        assert_eq!(ack[0]["error"], json!("not_host"));
        // Bad values are refused where they arrive.
        let big = format!("\"{}\"", "x".repeat(1_000));
        assert_eq!(refused(ann.host_action(&room, set_state(&big)).await), 15);
        assert_eq!(
            refused(ann.host_action(&room, set_state("{nope")).await),
            22
        );
        let list = HostAction::SetMetadata {
            metadata: "[1]".into(),
        };
        assert_eq!(refused(ann.host_action(&room, list).await), 22);

        ann.host_action(&room, set_state(r#"{"turn":3}"#))
            .await
            .unwrap();
        let mode = HostAction::SetMetadata {
            metadata: r#"{"mode":"duel"}"#.into(),
        };
        ann.host_action(&room, mode).await.unwrap();
        let mut cy = connect_on_shard(addr, 0).await;
        let joined = cy.join_room(&room).await.unwrap();
        assert_eq!(joined.state.as_deref(), Some(r#"{"turn":3}"#));
        let (s2, mut codec2, _) = sio_connect(addr, "/").await;
        ws_send(&s2, &format!(r#"420["join","{room}"]"#)).await;
        let ack = data(&next_starting(&s2, &mut codec2, "430").await, "430");
        assert_eq!(ack[0]["state"], json!({"turn": 3}));

        // Locked: nobody joins, on either protocol, until unlocked.
        ann.host_action(&room, HostAction::Lock { locked: true })
            .await
            .unwrap();
        let mut eve = connect_on_shard(addr, 1).await;
        assert_eq!(refused(eve.join(&room).await), 21);
        let (s3, mut codec3, _) = sio_connect(addr, "/").await;
        ws_send(&s3, &format!(r#"420["join","{room}"]"#)).await;
        let ack = data(&next_starting(&s3, &mut codec3, "430").await, "430");
        assert_eq!(ack[0]["error"], json!("room_locked"));
        ann.host_action(&room, HostAction::Lock { locked: false })
            .await
            .unwrap();
        assert_eq!(eve.join(&room).await.unwrap(), 6);

        // Kicked: the Socket.IO player is told, the others see it leave as kicked.
        ann.host_action(
            &room,
            HostAction::Kick {
                player: dee.clone(),
            },
        )
        .await
        .unwrap();
        let kicked = next_starting(&s, &mut codec, r#"42["room:kicked""#).await;
        assert_eq!(data(&kicked, "42"), json!(["room:kicked", {"room": room}]));
        loop {
            match within("the kick", bo.next_event()).await.unwrap() {
                ServerEvent::MemberLeft { player, reason, .. } if player == dee => {
                    assert_eq!(reason, corelay::proto::native::LeaveReason::Kicked);
                    break;
                }
                _ => {}
            }
        }
        ws_send(&s, &format!(r#"422["to","{room}","move",1]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "432").await, "432");
        assert_eq!(ack[0]["error"], json!("not_member"));
        let nobody = HostAction::Kick {
            player: "nobody".into(),
        };
        assert_eq!(refused(ann.host_action(&room, nobody).await), 10);

        // The host leaves: the next host gets the state with its notice.
        ann.leave(&room).await.unwrap();
        loop {
            if let ServerEvent::Host { player, state, .. } =
                within("host", bo.next_event()).await.unwrap()
            {
                assert_eq!(player, bo.player());
                assert_eq!(state.as_deref(), Some(r#"{"turn":3}"#));
                break;
            }
        }
        // And may act as host at once.
        bo.host_action(&room, set_state("4")).await.unwrap();
    });
}

/// A Socket.IO host sets the state with `room:set_state` and a native joiner gets it.
#[test]
fn a_socketio_host_sets_the_state_with_room_set_state() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let room = room_homed_on(0, 2);
        let (s, mut codec, dee) = sio_connect(addr, "/").await;
        ws_send(&s, &format!(r#"420["join","{room}"]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        assert_eq!(ack[0]["host"], json!(dee));
        ws_send(
            &s,
            &format!(r#"421["room:set_state","{room}",["a",{{"b":2}}]]"#),
        )
        .await;
        let ack = data(&next_starting(&s, &mut codec, "431").await, "431");
        assert_eq!(ack, json!([{"room": room}]));
        ws_send(&s, &format!(r#"422["room:lock","{room}","yes"]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "432").await, "432");
        assert_eq!(ack[0]["error"], json!("bad_arguments"));
        let mut ann = connect_on_shard(addr, 1).await;
        let joined = ann.join_room(&room).await.unwrap();
        assert_eq!(joined.host, dee);
        let state: Value = serde_json::from_str(joined.state.as_deref().unwrap()).unwrap();
        assert_eq!(state, json!(["a", {"b": 2}]));
    });
}

/// `room:create` makes a room with a code others join it by, a size of its own, and a life
/// past its last member for `empty_ttl_ms`; a code is taken once, and `#` names are only
/// made by creation.
#[test]
fn a_created_room_has_a_code_a_size_and_waits_empty_for_its_ttl() {
    let srv = server(2, |c| {
        c.stats_publish_ms = 50;
        c.auth.jwt_secret = Some(SECRET.into());
    });
    let addr = srv.local_addr();
    run(move || async move {
        // Ann's token carries public metadata, which join answers list with her id.
        let mut config = ClientConfig::new(common::url(addr));
        config.token = Some(token(json!({"sub": "ann", "meta": {"skin": "red"}})));
        let mut ann = Client::connect(&config).await.unwrap();
        let created = ann
            .create_room(NewRoom {
                max_members: 2,
                empty_ttl_ms: 300,
                metadata: Some(r#"{"mode":"duel"}"#.into()),
                ..NewRoom::default()
            })
            .await
            .unwrap();
        assert_eq!(created.room, format!("#{}", created.code));
        assert_eq!(created.code.len(), 6);
        assert_eq!(created.host, ann.player());
        // Joined by its code, in any case, over Socket.IO.
        let (s, mut codec, dee) = sio_connect(addr, "/").await;
        let lower = created.code.to_lowercase();
        ws_send(&s, &format!(r#"420["join",{{"code":"{lower}"}}]"#)).await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        assert_eq!(
            ack[0],
            json!({"room": created.room, "members": 2, "host": "ann", "players": [
                {"id": "ann", "meta": {"skin": "red"}},
                {"id": dee},
            ]})
        );
        let mut bo = connect_on_shard(addr, 1).await;
        assert_eq!(refused(bo.join(&created.room).await), 16, "full at 2");
        let taken = NewRoom {
            code: Some(created.code.clone()),
            ..NewRoom::default()
        };
        assert_eq!(refused(bo.create_room(taken).await), 23);
        let bad = NewRoom {
            code: Some("O0".into()),
            ..NewRoom::default()
        };
        assert_eq!(refused(bo.create_room(bad).await), 11);
        assert_eq!(refused(bo.join("#NQPE23").await), 10, "no squatting");

        // Empty, it waits for its players...
        ann.leave(&created.room).await.unwrap();
        ws_send(&s, &format!(r#"421["leave","{}"]"#, created.room)).await;
        next_starting(&s, &mut codec, "431").await;
        // A leave is answered on the leaver's shard; the room's home (maybe another shard)
        // counts it a mesh hop later. Bo's join must find the room empty.
        let registry = srv.stats_registry();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while (0..srv.shards())
            .map(|i| {
                registry
                    .shard(i)
                    .room_members
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
            > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the leaves were never counted"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        let back = bo.join_room(&created.room).await.unwrap();
        assert_eq!((back.members, back.host.as_str()), (1, bo.player()));
        let only = &back.players[..];
        assert_eq!(only.len(), 1);
        assert_eq!(
            (only[0].id.as_str(), only[0].meta.as_str()),
            (bo.player(), "")
        );
        // ... then goes when its time is up.
        bo.leave(&created.room).await.unwrap();
        common::wait_for_stats(&srv, |s| s.rooms == 0);
        assert_eq!(refused(bo.join(&created.room).await), 10);

        // Socket.IO creates with a code of its own choice.
        ws_send(&s, r#"422["room:create",{"code":"duck42","private":true}]"#).await;
        let ack = data(&next_starting(&s, &mut codec, "432").await, "432");
        assert_eq!(ack[0]["room"], json!("#DUCK42"));
        assert_eq!(ack[0]["code"], json!("DUCK42"));
        ws_send(&s, r#"423["room:create",{"max_members":"two"}]"#).await;
        let ack = data(&next_starting(&s, &mut codec, "433").await, "433");
        assert_eq!(ack[0]["error"], json!("bad_arguments"));
    });
}

/// `room:list` gathers the public created rooms of every shard, by name, a page at a time,
/// filtered by metadata and free seats; private rooms and rooms made by a plain join are
/// not listed.
#[test]
fn public_rooms_are_listed_from_every_shard_by_metadata_and_free_seats_in_pages() {
    let srv = server(2, |c| {
        c.max_rooms_per_connection = 200;
        // 110 creations in a row: each takes a join token.
        c.rate_limits.native.joins_burst = 200;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut ann = connect_on_shard(addr, 0).await;
        let mut duel_rooms = Vec::new();
        let mut free_duels = Vec::new();
        for i in 0..110u32 {
            let mode = if i % 2 == 0 { "duel" } else { "ffa" };
            let created = ann
                .create_room(NewRoom {
                    // Every fifth room is full with its creator alone.
                    max_members: if i % 5 == 0 { 1 } else { 4 },
                    metadata: Some(format!(r#"{{"mode":"{mode}","n":{i}}}"#)),
                    ..NewRoom::default()
                })
                .await
                .unwrap();
            if mode == "duel" {
                duel_rooms.push(created.room.clone());
                if i % 5 != 0 {
                    free_duels.push(created.room);
                }
            }
        }
        let hidden = NewRoom {
            private: true,
            metadata: Some(r#"{"mode":"duel"}"#.into()),
            ..NewRoom::default()
        };
        ann.create_room(hidden).await.unwrap();
        ann.join("plain").await.unwrap();
        duel_rooms.sort();
        free_duels.sort();

        let mut bo = connect_on_shard(addr, 1).await;
        let first = bo.list_rooms(r#"{"mode":"duel"}"#, false, 0).await.unwrap();
        assert_eq!(first.rooms.len(), corelay::relay::LIST_PAGE);
        assert_eq!(first.next_page, Some(1));
        let second = bo.list_rooms(r#"{"mode":"duel"}"#, false, 1).await.unwrap();
        assert_eq!(second.next_page, None);
        let listed: Vec<String> = first
            .rooms
            .iter()
            .chain(&second.rooms)
            .map(|r| r.room.clone())
            .collect();
        assert_eq!(listed, duel_rooms, "every public duel room, by name, once");
        let one = &first.rooms[0];
        assert_eq!(one.members, 1);
        let metadata: Value = serde_json::from_str(&one.metadata).unwrap();
        assert_eq!(metadata["mode"], json!("duel"));

        let free = bo.list_rooms(r#"{"mode":"duel"}"#, true, 0).await.unwrap();
        let free: Vec<String> = free.rooms.into_iter().map(|r| r.room).collect();
        assert_eq!(free, free_duels);
        assert_eq!(refused(bo.list_rooms("[]", false, 0).await), 22);
        let past = corelay::relay::MAX_LIST_PAGE + 1;
        assert_eq!(refused(bo.list_rooms("", false, past).await), 22);

        // Over Socket.IO.
        let (s, mut codec, _) = sio_connect(addr, "/").await;
        ws_send(
            &s,
            r#"420["room:list",{"metadata":{"mode":"ffa"},"free_seats":true}]"#,
        )
        .await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        let rooms = ack[0]["rooms"].as_array().unwrap();
        assert_eq!(rooms.len(), 44, "55 ffa rooms, 11 of them full");
        assert_eq!(ack[0]["next_page"], Value::Null);
        assert_eq!(rooms[0]["max_members"], json!(4));
        assert_eq!(rooms[0]["metadata"]["mode"], json!("ffa"));
    });
}
