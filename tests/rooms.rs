//! Game rooms (issue 10) over real sockets: every room has a host, its longest-present
//! member; when the host leaves, or its session ends, the next one takes over and every
//! member is told, on both protocols and whichever shards the players are on.

mod common;

use serde_json::{json, Value};

use common::eio::{data, next_starting, sio_connect, ws_send};
use common::{connect_on_shard, run, server, within};
use corelay::client::{Client, ServerEvent};
use corelay::relay::home_shard;

fn room_homed_on(shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("hall-{i}"))
        .find(|r| home_shard(r, shards) == shard)
        .expect("some name hashes to every shard")
}

/// The next `Host` notice a native member gets.
async fn next_host(c: &mut Client) -> (String, String) {
    loop {
        let e = within("a host notice", c.next_event())
            .await
            .expect("event");
        if let ServerEvent::Host { room, player } = e {
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
                ServerEvent::Host { room: r, player } => {
                    assert!(away, "still host while away");
                    assert_eq!((r, player), (room.clone(), bo.player().to_owned()));
                    break;
                }
                _ => {}
            }
        }
    });
}
