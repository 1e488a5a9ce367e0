//! A room's host and state across nodes (issue 12, item 5): every node finds the same host,
//! the member present longest whichever node it is on; its actions (state, lock, kick)
//! reach every node; and when its node dies the role and the room's state move to the
//! member present longest among those left. Real `redis-server` and `corelay serve`
//! processes, each stopped by its PID (tests/common/cluster.rs).

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use corelay::client::{Client, ClientError, PayloadKind, ServerEvent};
use corelay::proto::native::{ErrorCode, HostAction, LeaveReason};

/// Waits until `c` is told that `host` hosts `room` (its join's answer may have named
/// another, before its node heard of the members elsewhere); returns the state told.
async fn host_told(c: &mut Client, answered: &str, host: &str) -> Option<String> {
    if answered == host {
        return None;
    }
    loop {
        let event = common::within("a host notice", c.next_event())
            .await
            .unwrap();
        if let ServerEvent::Host { player, state, .. } = event {
            if player == host {
                return state;
            }
        }
    }
}

/// Sends a probe from `tx` and waits until `rx` has it: what `tx`'s node published before
/// has reached `rx`'s node (one publishing connection, in order).
async fn probe(tx: &mut Client, rx: &mut Client, tag: &str) {
    tx.send("arena", tag, b"1", PayloadKind::Json)
        .await
        .unwrap();
    loop {
        let event = common::within("a probe", rx.next_event()).await.unwrap();
        if matches!(&event, ServerEvent::Message { event, .. } if event == tag) {
            return;
        }
    }
}

#[test]
fn one_host_across_nodes_acts_on_every_node_and_its_role_moves_when_its_node_dies() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Node::start(&url, "a");
    let b = node(&url, "b");
    let c = node(&url, "c");
    let (a_addr, b_addr, c_addr) = (a.addr, b.local_addr(), c.local_addr());
    common::run(move || async move {
        // Hal, on A, is in the room first: the host.
        let mut hal = common::connect(a_addr).await;
        let joined = hal.join_room("arena").await.unwrap();
        let hal_name = hal.player().to_owned();
        assert_eq!(joined.host, hal_name);
        // Bea (B) and Cy and Cat (C) join later: every node names Hal.
        let mut bea = common::connect(b_addr).await;
        let answered = bea.join_room("arena").await.unwrap().host;
        host_told(&mut bea, &answered, &hal_name).await;
        let bea_name = bea.player().to_owned();
        let mut cy = common::connect(c_addr).await;
        let answered = cy.join_room("arena").await.unwrap().host;
        host_told(&mut cy, &answered, &hal_name).await;
        let cy_name = cy.player().to_owned();
        let mut cat = common::connect(c_addr).await;
        let answered = cat.join_room("arena").await.unwrap().host;
        host_told(&mut cat, &answered, &hal_name).await;

        // Only the host acts, wherever the others are.
        let refused = bea
            .host_action("arena", HostAction::Lock { locked: true })
            .await;
        assert!(
            matches!(refused, Err(ClientError::Server { code, .. }) if code == ErrorCode::NotHost as u16),
            "{refused:?}"
        );

        // The state Hal sets is the room's on every node: a joiner on B gets it.
        let state = r#"{"round":2}"#;
        hal.host_action(
            "arena",
            HostAction::SetState {
                state: state.into(),
            },
        )
        .await
        .unwrap();
        probe(&mut hal, &mut bea, "after-state").await;
        let mut dee = common::connect(b_addr).await;
        let joined = dee.join_room("arena").await.unwrap();
        assert_eq!(joined.state.as_deref(), Some(state));
        assert_eq!(joined.host, hal_name, "B knows Hal by now");

        // A lock on A refuses joins on C, until it is lifted.
        hal.host_action("arena", HostAction::Lock { locked: true })
            .await
            .unwrap();
        probe(&mut hal, &mut cat, "after-lock").await;
        let mut late = common::connect(c_addr).await;
        let refused = late.join("arena").await;
        assert!(
            matches!(refused, Err(ClientError::Server { code, .. }) if code == ErrorCode::RoomLocked as u16),
            "{refused:?}"
        );
        hal.host_action("arena", HostAction::Lock { locked: false })
            .await
            .unwrap();
        probe(&mut hal, &mut cat, "after-unlock").await;
        late.join("arena").await.unwrap();
        late.leave("arena").await.unwrap();

        // Hal kicks Cy, who is on C.
        hal.host_action(
            "arena",
            HostAction::Kick {
                player: cy_name.clone(),
            },
        )
        .await
        .unwrap();
        loop {
            let event = common::within("Cy's kick", cy.next_event()).await.unwrap();
            if matches!(event, ServerEvent::Kicked { .. }) {
                break;
            }
        }
        loop {
            let event = common::within("Cy's leave on B", bea.next_event())
                .await
                .unwrap();
            if let ServerEvent::MemberLeft { player, reason, .. } = event {
                if player == cy_name {
                    assert_eq!(reason, LeaveReason::Kicked);
                    break;
                }
            }
        }

        // A dies: when its lease ends, Bea (present longest of those left) hosts the room,
        // with its state, on B and on C alike.
        a.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (who, c) in [("Bea", &mut bea), ("Cat", &mut cat), ("Dee", &mut dee)] {
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{who} was never told of a new host"
                );
                let event = common::within("the new host", c.next_event())
                    .await
                    .unwrap();
                if let ServerEvent::Host {
                    player, state: s, ..
                } = event
                {
                    assert_eq!(player, bea_name, "{who}'s new host");
                    assert_eq!(s.as_deref(), Some(state), "{who}'s room state");
                    break;
                }
            }
        }
        // And Bea's actions now reach C.
        bea.host_action("arena", HostAction::Lock { locked: true })
            .await
            .unwrap();
        probe(&mut bea, &mut cat, "after-failover").await;
        let mut last = common::connect(c_addr).await;
        let refused = last.join("arena").await;
        assert!(
            matches!(refused, Err(ClientError::Server { code, .. }) if code == ErrorCode::RoomLocked as u16),
            "{refused:?}"
        );
        drop(a);
    });
    drop((b, c));
}
