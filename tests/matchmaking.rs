//! Matchmaking (issue 10) over real sockets: tickets on both protocols from players on two
//! shards form matches that keep the queue's rules, and every matched player is a member of
//! the match's room when it is told.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use common::eio::{data, next_starting, sio_connect, ws_send};
use common::matchmaking::{matched, next_outcome, server_error, ticket};
use common::{connect, connect_on_shard, run, server, within};
use corelay::client::{Client, ServerEvent};
use corelay::config::QueueConfig;
use corelay::matchmaking::MatchSize;
use corelay::proto::native::{ErrorCode, PayloadKind, Property, TicketSpec, UnqueueReason};

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

/// A queue for the tests: `min..=max` players, a window of `window` widening by `widen`
/// per second up to `max_window`, failing after `timeout_s`.
fn queue(
    min: usize,
    max: usize,
    window: f64,
    widen: f64,
    max_window: f64,
    timeout_s: f64,
) -> QueueConfig {
    QueueConfig {
        match_size: MatchSize { min, max },
        skill_window: window,
        widen_per_s: widen,
        max_window,
        timeout_s,
        ..QueueConfig::default()
    }
}

/// One ticket of the 1,000 and what became of it.
struct Record {
    /// Its players (one, or a party's).
    players: Vec<String>,
    /// Its skill (a party's: the mean of its members').
    skill: f64,
    region: String,
    /// When its last member sent its request: the server put it in the queue later, so
    /// the wait measured from here is at least the server's.
    queued: Instant,
    /// Its room and when its last member heard of the match; `None`: timed out.
    matched: Option<(String, Instant)>,
}

/// 1,000 tickets (900 players alone and 100 parties of two, a party's members on either
/// shard) with random skills and regions: every match's tickets are pairwise within each
/// other's window as it stood when they matched (measured from the client's side, which
/// can only make the windows wider), in one region, 2 to 4 players; no player is in two
/// matches, no party is split, and every ticket ends once, matched or timed out.
#[test]
fn a_thousand_tickets_form_matches_that_keep_every_rule() {
    const WINDOW: f64 = 20.0;
    const WIDEN: f64 = 10.0;
    const MAX_WINDOW: f64 = 100.0;
    let srv = server(2, |c| {
        // 1,100 connections from one address.
        c.max_connections_per_ip = 2_000;
        c.matchmaking
            .queues
            .insert("ranked".into(), queue(2, 4, WINDOW, WIDEN, MAX_WINDOW, 3.0));
    });
    let addr = srv.local_addr();
    run(move || async move {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        // (players of the ticket, skill of each, region)
        let mut plan: Vec<(Vec<Client>, Vec<f64>, String)> = Vec::new();
        for i in 0..1_000 {
            let size = if i % 10 == 0 { 2 } else { 1 };
            let mut clients = Vec::new();
            for _ in 0..size {
                clients.push(connect(addr).await);
            }
            let skills = (0..size).map(|_| rng.random_range(0.0..1_000.0)).collect();
            let region = ["eu", "us"][rng.random_range(0..2)].to_owned();
            plan.push((clients, skills, region));
        }
        let shards: HashSet<u32> = plan
            .iter()
            .flat_map(|(c, _, _)| c.iter().map(|c| c.shard()))
            .collect();
        assert_eq!(shards.len(), 2, "players on both shards");
        let mut tasks = Vec::new();
        for (clients, skills, region) in plan {
            let party: Vec<String> = if clients.len() > 1 {
                clients.iter().map(|c| c.player().to_owned()).collect()
            } else {
                Vec::new()
            };
            let mean = skills.iter().sum::<f64>() / skills.len() as f64;
            for (mut c, skill) in clients.into_iter().zip(skills) {
                let spec = TicketSpec {
                    region: region.clone(),
                    party: party.clone(),
                    ..ticket("ranked", skill)
                };
                let region = region.clone();
                tasks.push(glommio::spawn_local(async move {
                    let queued = Instant::now();
                    let id = c.queue(spec).await.expect("queued");
                    let outcome = next_outcome(&mut c).await;
                    let at = Instant::now();
                    (
                        c.player().to_owned(),
                        id,
                        mean,
                        region,
                        queued,
                        outcome,
                        at,
                        c,
                    )
                }));
            }
        }
        let mut records: HashMap<u64, Record> = HashMap::new();
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        let mut clients = Vec::new();
        for task in tasks {
            let (player, id, skill, region, queued, outcome, at, c) = task.await;
            clients.push(c);
            let r = records.entry(id).or_insert_with(|| Record {
                players: Vec::new(),
                skill,
                region,
                queued,
                matched: None,
            });
            r.players.push(player.clone());
            r.queued = r.queued.max(queued);
            match outcome {
                ServerEvent::Matched {
                    ticket,
                    room,
                    players,
                    ..
                } => {
                    assert_eq!(ticket, id);
                    let ids: Vec<String> = players.into_iter().map(|p| p.id).collect();
                    assert!(ids.contains(&player), "{player} is in its own match");
                    match rooms.get(&room) {
                        Some(known) => assert_eq!(known, &ids, "one roster per room"),
                        None => {
                            rooms.insert(room.clone(), ids);
                        }
                    }
                    // A party's members are in one room.
                    match &r.matched {
                        Some((known, last)) => {
                            assert_eq!(known, &room, "party split");
                            r.matched = Some((room, at.max(*last)));
                        }
                        None => {
                            assert_eq!(r.players.len(), 1, "party split: one matched, one not");
                            r.matched = Some((room, at));
                        }
                    }
                }
                ServerEvent::Unqueued { ticket, reason, .. } => {
                    assert_eq!((ticket, reason), (id, UnqueueReason::TimedOut));
                    assert!(
                        r.matched.is_none(),
                        "party split: one matched, one timed out"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(records.len(), 1_000, "every ticket has its own id");
        // No player in two rooms.
        let mut seen = HashSet::new();
        for ids in rooms.values() {
            assert!((2..=4).contains(&ids.len()), "{ids:?}");
            for id in ids {
                assert!(seen.insert(id.clone()), "{id} is in two matches");
            }
        }
        // Every match keeps the rule: pairwise within both windows, one region.
        let mut by_room: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in records.values() {
            if let Some((room, _)) = &r.matched {
                by_room.entry(room).or_default().push(r);
            }
        }
        let window = |r: &Record| {
            let waited = r
                .matched
                .as_ref()
                .map_or(Duration::ZERO, |(_, at)| *at - r.queued);
            (WINDOW + WIDEN * waited.as_secs_f64()).min(MAX_WINDOW)
        };
        for (room, tickets) in &by_room {
            let players: usize = tickets.iter().map(|t| t.players.len()).sum();
            assert_eq!(
                players,
                rooms[*room].len(),
                "{room}: every ticket's players and no other"
            );
            for a in tickets {
                for b in tickets {
                    assert_eq!(a.region, b.region, "{room}");
                    let gap = (a.skill - b.skill).abs();
                    let allowed = window(a).min(window(b));
                    assert!(
                        gap <= allowed + 1e-6,
                        "{room}: {gap} apart, windows {allowed}"
                    );
                }
            }
        }
        let matched = records.values().filter(|r| r.matched.is_some()).count();
        assert!(matched > 500, "most tickets match ({matched} of 1000)");
        drop(clients);
    });
}

/// A lone high-skill ticket matches a distant one only once both windows have grown to the
/// gap: 400 points with a window of 100 widening by 200 per second takes 1.5 s.
#[test]
fn widening_lets_a_distant_ticket_match_only_once_both_windows_cover_the_gap() {
    let srv = server(2, |c| {
        c.matchmaking
            .queues
            .insert("wide".into(), queue(2, 2, 100.0, 200.0, 1_000.0, 30.0));
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut low = connect_on_shard(addr, 0).await;
        let mut high = connect_on_shard(addr, 1).await;
        let start = Instant::now();
        low.queue(ticket("wide", 1_000.0)).await.unwrap();
        high.queue(ticket("wide", 1_400.0)).await.unwrap();
        let (room, _) = matched(&next_outcome(&mut high).await);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1_500),
            "matched after {waited:?}, before the windows covered 400 points"
        );
        assert_eq!(matched(&next_outcome(&mut low).await).0, room);
    });
}

/// Cancel takes the ticket out (nobody matches it later); a ticket nobody matches fails at
/// its timeout; and a ticket whose player disconnected is withdrawn: a compatible newcomer
/// is not matched with it.
#[test]
fn cancelled_timed_out_and_disconnected_tickets_never_match() {
    let srv = server(2, |c| {
        c.matchmaking
            .queues
            .insert("short".into(), queue(2, 2, 100.0, 0.0, 100.0, 0.5));
    });
    let addr = srv.local_addr();
    run(move || async move {
        // Cancel, by id and by "whatever I hold".
        let mut ann = connect_on_shard(addr, 0).await;
        let id = ann.queue(ticket("short", 10.0)).await.unwrap();
        assert_eq!(ann.cancel_ticket(id).await.unwrap(), id);
        let again = ann.queue(ticket("short", 10.0)).await.unwrap();
        assert_ne!(again, id);
        assert_eq!(ann.cancel_ticket(0).await.unwrap(), again);
        let refused = ann.cancel_ticket(again).await.unwrap_err();
        assert_eq!(server_error(refused), ErrorCode::NotQueued as u16);
        // A disconnected player's ticket is gone before the next one comes.
        let mut gone = connect_on_shard(addr, 1).await;
        gone.queue(ticket("short", 10.0)).await.unwrap();
        gone.close().await.unwrap();
        // The cancelled and the withdrawn tickets were compatible with this one: it
        // times out alone.
        let mut bo = connect_on_shard(addr, 0).await;
        let start = Instant::now();
        let id = bo.queue(ticket("short", 10.0)).await.unwrap();
        match next_outcome(&mut bo).await {
            ServerEvent::Unqueued { ticket, reason, by } => {
                assert_eq!((ticket, reason, by), (id, UnqueueReason::TimedOut, None));
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() >= Duration::from_millis(500));
        // Its room slot is free again: it may queue anew.
        bo.queue(ticket("short", 10.0)).await.unwrap();
    });
}

/// A party forms from each member's own request, is matched whole with a player alone in
/// a three-player queue, and its members learn of a member's cancel or disconnect.
#[test]
fn parties_form_from_every_members_request_and_are_never_split() {
    let srv = server(2, |c| {
        c.matchmaking
            .queues
            .insert("trio".into(), queue(3, 3, 1_000.0, 0.0, 1_000.0, 30.0));
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut lead = connect_on_shard(addr, 0).await;
        let mut mate = connect_on_shard(addr, 1).await;
        let party = vec![lead.player().to_owned(), mate.player().to_owned()];
        let spec = TicketSpec {
            party: party.clone(),
            ..ticket("trio", 100.0)
        };
        // A cancel by one member ends the party's ticket for both.
        let id = lead.queue(spec.clone()).await.unwrap();
        assert_eq!(
            mate.queue(spec.clone()).await.unwrap(),
            id,
            "one ticket per party"
        );
        assert_eq!(mate.cancel_ticket(id).await.unwrap(), id);
        match next_outcome(&mut lead).await {
            ServerEvent::Unqueued { ticket, reason, by } => {
                assert_eq!(ticket, id);
                assert_eq!(reason, UnqueueReason::Cancelled);
                assert_eq!(by.as_deref(), Some(mate.player()));
            }
            other => panic!("{other:?}"),
        }
        // A party whose members have not all queued does not match: two players alone
        // and the leader make three, but the leader waits for its mate.
        let id = lead.queue(spec.clone()).await.unwrap();
        let mut solo = connect_on_shard(addr, 0).await;
        let mut other = connect_on_shard(addr, 1).await;
        solo.queue(ticket("trio", 100.0)).await.unwrap();
        // Once the mate has queued, the party and one player alone fill the match.
        assert_eq!(mate.queue(spec.clone()).await.unwrap(), id);
        let (room, players) = matched(&next_outcome(&mut lead).await);
        assert_eq!(matched(&next_outcome(&mut mate).await).0, room);
        assert_eq!(matched(&next_outcome(&mut solo).await).0, room);
        assert_eq!(players.len(), 3);
        // The party's ticket waits from its last member's request: the player alone was
        // first, and is host.
        assert_eq!(
            players[0],
            solo.player(),
            "the oldest ticket's first player is host"
        );
        assert!(party.iter().all(|p| players.contains(p)));
        // A member's disconnect withdraws the party; the other member is told.
        let spec = TicketSpec {
            party: vec![other.player().to_owned(), solo.player().to_owned()],
            ..ticket("trio", 100.0)
        };
        let id = other.queue(spec.clone()).await.unwrap();
        assert_eq!(solo.queue(spec).await.unwrap(), id);
        solo.close().await.unwrap();
        match next_outcome(&mut other).await {
            ServerEvent::Unqueued { ticket, reason, .. } => {
                assert_eq!((ticket, reason), (id, UnqueueReason::Disconnected));
            }
            other => panic!("{other:?}"),
        }
    });
}

/// A Socket.IO player and a native one are matched into one room: the Socket.IO player is
/// told with `mm:matched`, is a member already, and the queue's room options hold (a
/// public room with metadata is listed).
#[test]
fn socketio_and_native_players_meet_in_a_match_room_made_with_the_queues_options() {
    let srv = server(2, |c| {
        let mut q = queue(2, 2, 100.0, 50.0, 1_000.0, 30.0);
        q.room.private = false;
        q.room.max_members = Some(4);
        q.room.metadata = Some(json!({"mode": "duel"}).as_object().unwrap().clone());
        c.matchmaking.queues.insert("duel".into(), q);
    });
    let addr = srv.local_addr();
    run(move || async move {
        let (s, mut codec, _) = sio_connect(addr, "/").await;
        ws_send(
            &s,
            r#"420["mm:queue",{"queue":"duel","skill":50,"region":"eu"}]"#,
        )
        .await;
        let ack = data(&next_starting(&s, &mut codec, "430").await, "430");
        let id = ack[0]["ticket_id"].as_u64().expect("a ticket id");
        let mut bo = connect_on_shard(addr, 1).await;
        bo.queue(TicketSpec {
            region: "eu".into(),
            ..ticket("duel", 60.0)
        })
        .await
        .unwrap();
        let (room, players) = matched(&next_outcome(&mut bo).await);
        let told = data(
            &next_starting(&s, &mut codec, r#"42["mm:matched""#).await,
            "42",
        );
        let m = &told[1];
        assert_eq!(m["ticket_id"], json!(id));
        assert_eq!(m["room"], json!(room));
        assert_eq!(m["code"], json!(&room[1..]));
        assert_eq!(m["host"], json!(players[0]));
        let ids: Vec<&str> = m["players"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, players);
        // A member: its message reaches the native player.
        ws_send(&s, &format!(r#"42["to","{room}","hi",{{"n":1}}]"#)).await;
        loop {
            if let ServerEvent::Message { room: r, event, .. } =
                within("hi", bo.next_event()).await.unwrap()
            {
                assert_eq!((r, event.as_str()), (room.clone(), "hi"));
                break;
            }
        }
        // The room was made with the queue's options.
        let listed = bo.list_rooms(r#"{"mode":"duel"}"#, true, 0).await.unwrap();
        let found = listed
            .rooms
            .iter()
            .find(|r| r.room == room)
            .expect("listed");
        assert_eq!((found.members, found.max_members), (2, 4));
    });
}

/// Bad tickets are refused to their sender only, on both protocols; a pair queued
/// meanwhile is matched as if nothing happened.
#[test]
fn bad_tickets_are_refused_to_their_sender_and_nobody_else_notices() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (s, mut codec, _) = sio_connect(addr, "/").await;
        let mut ann = connect_on_shard(addr, 0).await;
        let mut bo = connect_on_shard(addr, 1).await;
        ann.queue(ticket("default", 0.0)).await.unwrap();
        let sio_cases = [
            (r#"["mm:queue",{"skill":"high"}]"#, "bad_arguments"),
            (r#"["mm:queue",{"queue":7}]"#, "bad_arguments"),
            (r#"["mm:queue",{"party":"ann"}]"#, "bad_arguments"),
            (
                r#"["mm:queue",{"properties":{"mode":["a"]}}]"#,
                "bad_arguments",
            ),
            (r#"["mm:queue","default"]"#, "bad_arguments"),
            (r#"["mm:queue",{"queue":"nope"}]"#, "unknown_queue"),
            (
                r#"["mm:queue",{"party":["somebody","else"]}]"#,
                "invalid_value",
            ),
            (r#"["mm:cancel","x"]"#, "bad_arguments"),
            (r#"["mm:cancel",12345]"#, "not_queued"),
        ];
        let region = "r".repeat(200);
        let too_long = format!(r#"["mm:queue",{{"region":"{region}"}}]"#);
        let cases = sio_cases
            .iter()
            .map(|(p, e)| (p.to_string(), *e))
            .chain([(too_long, "invalid_value")]);
        for (i, (packet, error)) in cases.enumerate() {
            ws_send(&s, &format!("42{i}{packet}")).await;
            let ack = data(
                &next_starting(&s, &mut codec, &format!("43{i}")).await,
                &format!("43{i}"),
            );
            assert_eq!(ack[0]["error"], json!(error), "{packet}");
        }
        // Native: a skill that is no number, a party that names others, a second ticket.
        let nan = ann.queue(ticket("default", f64::NAN)).await.unwrap_err();
        assert_eq!(server_error(nan), ErrorCode::AlreadyQueued as u16);
        for bad in [
            ticket("default", f64::INFINITY),
            TicketSpec {
                party: vec!["x".into(), "y".into()],
                ..ticket("default", 0.0)
            },
            TicketSpec {
                party: vec![bo.player().into(), bo.player().into()],
                ..ticket("default", 0.0)
            },
            TicketSpec {
                properties: vec![Property {
                    name: "mode".into(),
                    value: "a".into(),
                }],
                party: vec![bo.player().into(); 3],
                ..ticket("default", 0.0)
            },
        ] {
            let e = bo.queue(bad).await.unwrap_err();
            assert_eq!(server_error(e), ErrorCode::InvalidValue as u16);
        }
        let e = bo.queue(ticket("nope", 0.0)).await.unwrap_err();
        assert_eq!(server_error(e), ErrorCode::UnknownQueue as u16);
        // The one good ticket waits, unharmed: the next one matches it.
        bo.queue(ticket("default", 5.0)).await.unwrap();
        let (room, players) = matched(&next_outcome(&mut ann).await);
        assert_eq!(
            players,
            vec![ann.player().to_owned(), bo.player().to_owned()]
        );
        assert_eq!(matched(&next_outcome(&mut bo).await).0, room);
    });
}
