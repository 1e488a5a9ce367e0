//! Matchmaking (issue 10) over real sockets: tickets on both protocols from players on two
//! shards form matches that keep the queue's rules, and every matched player is a member of
//! the match's room when it is told.

mod common;

use common::{connect_on_shard, run, server, within};
use corelay::client::{Client, ServerEvent};
use corelay::proto::native::{ErrorCode, PayloadKind, TicketSpec};

/// A ticket of `queue` with `skill`.
fn ticket(queue: &str, skill: f64) -> TicketSpec {
    TicketSpec {
        queue: queue.into(),
        skill,
        region: String::new(),
        properties: Vec::new(),
        party: Vec::new(),
    }
}

/// The next matchmaking event of a native client (room notices are skipped).
async fn next_outcome(c: &mut Client) -> ServerEvent {
    loop {
        let e = within("a matchmaking outcome", c.next_event())
            .await
            .expect("event");
        if matches!(
            e,
            ServerEvent::Matched { .. } | ServerEvent::Unqueued { .. }
        ) {
            return e;
        }
    }
}

/// The room of a `Matched` event, and its players.
fn matched(e: &ServerEvent) -> (String, Vec<String>) {
    match e {
        ServerEvent::Matched { room, players, .. } => {
            (room.clone(), players.iter().map(|p| p.id.clone()).collect())
        }
        other => panic!("expected Matched, got {other:?}"),
    }
}

fn server_error(e: corelay::client::ClientError) -> u16 {
    match e {
        corelay::client::ClientError::Server { code, .. } => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Two players on different shards queue in the built-in `default` queue: both are told
/// the same room, are members of it already, and can play.
#[test]
fn two_players_on_two_shards_are_matched_into_one_room_and_play() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut ann = connect_on_shard(addr, 0).await;
        let mut bo = connect_on_shard(addr, 1).await;
        let a = ann.queue(ticket("default", 1500.0)).await.unwrap();
        let b = bo.queue(ticket("default", 1520.0)).await.unwrap();
        assert_ne!(a, b);
        let (room_a, players_a) = matched(&next_outcome(&mut ann).await);
        let (room_b, players_b) = matched(&next_outcome(&mut bo).await);
        assert_eq!(room_a, room_b);
        assert!(room_a.starts_with('#'));
        assert_eq!(players_a, players_b);
        assert_eq!(
            players_a,
            vec![ann.player().to_owned(), bo.player().to_owned()]
        );
        // Members already: a message reaches the other at once.
        bo.send(&room_b, "hello", b"{}", PayloadKind::Json)
            .await
            .unwrap();
        loop {
            match within("the message", ann.next_event()).await.unwrap() {
                ServerEvent::Message { room, event, .. } => {
                    assert_eq!((room, event.as_str()), (room_a.clone(), "hello"));
                    break;
                }
                ServerEvent::MemberJoined { .. } => panic!("a match has no join notices"),
                _ => {}
            }
        }
        // The ticket is over: cancelling it is refused.
        let refused = ann.cancel_ticket(a).await.unwrap_err();
        assert_eq!(server_error(refused), ErrorCode::NotQueued as u16);
    });
}
