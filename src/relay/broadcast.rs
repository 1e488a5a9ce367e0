//! What fans out: a message (or membership notice) to a room, encoded once per wire format.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::net::ws;
use crate::proto::native::{LeaveReason, PayloadKind, ServerFrame};

/// A player id, unique on the server: the shard number in the top 16 bits, a per-shard
/// counter below (so ids are allocated without coordination).
pub type PlayerId = u64;

/// How a recipient's connection wants its frames encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Native protocol over WebSocket: one rkyv frame per binary message.
    Native,
}

/// The content of a broadcast.
#[derive(Debug, Clone)]
pub enum Body {
    /// A member's message.
    Event {
        /// Sender.
        from: PlayerId,
        /// Application event name.
        event: String,
        /// Payload, shared with the sender's incoming message (no copy).
        payload: Bytes,
        /// How to read it.
        kind: PayloadKind,
    },
    /// A member joined.
    MemberJoined {
        /// The new member.
        player: PlayerId,
        /// Count after the join.
        members: u32,
    },
    /// A member left or disconnected.
    MemberLeft {
        /// Who left.
        player: PlayerId,
        /// Count after.
        members: u32,
        /// Why.
        reason: LeaveReason,
    },
}

/// One fan-out to a room. Shared (`Arc`) by every shard that delivers it; each wire
/// encoding is computed at most once, by whichever shard needs it first.
#[derive(Debug)]
pub struct Broadcast {
    /// Target room.
    pub room: String,
    /// The player who must not receive it (the sender, or the member joining).
    pub exclude: PlayerId,
    /// Content.
    pub body: Body,
    /// When the origin shard received it (for the relay-latency histogram).
    pub received_at: Instant,
    native: OnceLock<Bytes>,
}

impl Broadcast {
    /// A broadcast to `room`, skipping `exclude`.
    pub fn new(room: String, exclude: PlayerId, body: Body, received_at: Instant) -> Broadcast {
        Broadcast {
            room,
            exclude,
            body,
            received_at,
            native: OnceLock::new(),
        }
    }

    /// The complete WebSocket frame for a recipient on `wire`, encoded on first use.
    pub fn frame(&self, wire: Wire) -> Bytes {
        match wire {
            Wire::Native => self.native.get_or_init(|| self.encode_native()).clone(),
        }
    }

    fn encode_native(&self) -> Bytes {
        let room = self.room.clone();
        let frame = match &self.body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => ServerFrame::Event {
                room,
                from: *from,
                event: event.clone(),
                payload: payload.clone(),
                kind: *kind,
            },
            Body::MemberJoined { player, members } => ServerFrame::MemberJoined {
                room,
                player: *player,
                members: *members,
            },
            Body::MemberLeft {
                player,
                members,
                reason,
            } => ServerFrame::MemberLeft {
                room,
                player: *player,
                members: *members,
                reason: *reason,
            },
        };
        native_frame(&frame)
    }
}

/// A whole WebSocket binary frame carrying one native server frame.
pub fn native_frame(frame: &ServerFrame) -> Bytes {
    ws::binary_frame(|prefix| crate::proto::native::encode_server_after(frame, prefix))
}

/// An answer to one request, encoded for the requester's wire.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Join done.
    Joined {
        /// Request id.
        req: u64,
        /// Room.
        room: String,
        /// Count after the join.
        members: u32,
    },
    /// Leave done.
    Left {
        /// Request id.
        req: u64,
        /// Room.
        room: String,
    },
    /// The request failed.
    Error {
        /// Request id.
        req: u64,
        /// Why.
        code: crate::proto::native::ErrorCode,
        /// Detail.
        message: String,
    },
}

impl Reply {
    /// The frame answering the request on `wire`.
    pub fn frame(&self, wire: Wire) -> Bytes {
        match wire {
            Wire::Native => native_frame(&match self.clone() {
                Reply::Joined { req, room, members } => ServerFrame::Joined {
                    req: req as u32,
                    room,
                    members,
                },
                Reply::Left { req, room } => ServerFrame::Left {
                    req: req as u32,
                    room,
                },
                Reply::Error { req, code, message } => ServerFrame::Error {
                    req: req as u32,
                    code: code as u16,
                    message,
                },
            }),
        }
    }
}
