//! Matchmaking seen from a native client: tickets, and the outcomes a test waits for.

use corelay::client::{Client, ClientError, ServerEvent};
use corelay::proto::native::TicketSpec;

/// A ticket of `queue` with `skill`.
pub fn ticket(queue: &str, skill: f64) -> TicketSpec {
    TicketSpec {
        queue: queue.into(),
        skill,
        region: String::new(),
        properties: Vec::new(),
        party: Vec::new(),
    }
}

/// The next matchmaking event of a native client (room notices are skipped), within
/// [`super::WAIT`].
pub async fn next_outcome(c: &mut Client) -> ServerEvent {
    super::within("a matchmaking outcome", outcome(c)).await
}

/// The next matchmaking event of a native client, however long it takes.
pub async fn outcome(c: &mut Client) -> ServerEvent {
    loop {
        let e = c.next_event().await.expect("event");
        if matches!(
            e,
            ServerEvent::Matched { .. } | ServerEvent::Unqueued { .. }
        ) {
            return e;
        }
    }
}

/// The room of a `Matched` event, and its players.
pub fn matched(e: &ServerEvent) -> (String, Vec<String>) {
    match e {
        ServerEvent::Matched { room, players, .. } => {
            (room.clone(), players.iter().map(|p| p.id.clone()).collect())
        }
        other => panic!("expected Matched, got {other:?}"),
    }
}

/// The code of a server's refusal.
pub fn server_error(e: ClientError) -> u16 {
    match e {
        ClientError::Server { code, .. } => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}
