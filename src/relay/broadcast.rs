//! What fans out: a message (or membership notice) to a room, encoded once per wire format.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use crate::proto::engineio::{encode_base64_into, RECORD_SEPARATOR};
use crate::proto::native::{LeaveReason, PayloadKind, ServerFrame};
use crate::proto::socketio::{self, encode_relay_event, Arg, RelayPayload};
use crate::proto::ws;

/// A player id, unique on the server: the shard number in the top 16 bits, a per-shard
/// counter below (so ids are allocated without coordination).
pub type PlayerId = u64;

/// How a recipient's connection wants its frames encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Native protocol over WebSocket: one rkyv frame per binary message.
    Native,
    /// Socket.IO over an Engine.IO WebSocket: a text frame, then one binary frame per
    /// attachment.
    SioWs,
    /// Socket.IO over Engine.IO long-polling: packets as text (`b<base64>` for binary),
    /// joined with the record separator when a poll collects them.
    SioPolling,
}

/// The relay's key for a room of namespace `nsp`: the name itself on the main namespace
/// (shared with native clients), `nsp` NUL `room` elsewhere. Names never hold control
/// characters (the relay refuses them), so keys of two namespaces never collide.
pub fn room_key(nsp: &str, room: &str) -> String {
    if nsp == socketio::MAIN_NAMESPACE {
        room.to_owned()
    } else {
        format!("{nsp}\0{room}")
    }
}

/// Splits a room key into namespace and room name.
pub fn split_room_key(key: &str) -> (&str, &str) {
    match key.split_once('\0') {
        Some((nsp, room)) => (nsp, room),
        None => (socketio::MAIN_NAMESPACE, key),
    }
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
    /// A socket.io member's message whose JSON payload holds binary buffers (an
    /// [`Arg::Tree`]); native recipients get it as JSON with the buffers in base64.
    Nested {
        /// Sender.
        from: PlayerId,
        /// Application event name.
        event: String,
        /// The payload.
        payload: Arg,
    },
    /// An application emit (socket.io API) to a room: any arguments, from the server.
    Emit {
        /// Event name.
        event: String,
        /// Arguments.
        args: Vec<Arg>,
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
    sio_ws: OnceLock<Bytes>,
    sio_polling: OnceLock<Bytes>,
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
            sio_ws: OnceLock::new(),
            sio_polling: OnceLock::new(),
        }
    }

    /// The complete WebSocket frame for a recipient on `wire`, encoded on first use.
    pub fn frame(&self, wire: Wire) -> Bytes {
        match wire {
            Wire::Native => self.native.get_or_init(|| self.encode_native()).clone(),
            Wire::SioWs => self
                .sio_ws
                .get_or_init(|| {
                    let (text, attachments) = self.encode_socketio();
                    sio_ws_frames(&text, &attachments)
                })
                .clone(),
            Wire::SioPolling => self
                .sio_polling
                .get_or_init(|| {
                    let (text, attachments) = self.encode_socketio();
                    sio_polling_text(&text, &attachments)
                })
                .clone(),
        }
    }

    /// The Engine.IO message text (`4...`) and attachments for socket.io recipients.
    fn encode_socketio(&self) -> (String, Vec<Bytes>) {
        let (nsp, room) = split_room_key(&self.room);
        let notice = |event: &str, data: serde_json::Value| {
            let packet = socketio::Packet::event(nsp, event, [Arg::Json(data)]);
            (packet.encode_engineio(), Vec::new())
        };
        match &self.body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => {
                let from = from.to_string();
                let json = match kind {
                    // A native client's JSON is checked here, once per broadcast: invalid
                    // text would make every socket.io recipient drop its connection, so it
                    // travels as binary instead.
                    PayloadKind::Json => std::str::from_utf8(payload)
                        .ok()
                        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()),
                    PayloadKind::Binary => None,
                };
                let encoded = match json {
                    Some(text) => encode_relay_event(nsp, event, RelayPayload::Json(text), &from),
                    None => encode_relay_event(nsp, event, RelayPayload::Binary(payload), &from),
                };
                (encoded.frame, encoded.attachment.into_iter().collect())
            }
            Body::Nested {
                from,
                event,
                payload,
            } => {
                let args = [payload.clone(), Arg::Json(from.to_string().into())];
                let packet = socketio::Packet::event(nsp, event, args);
                (packet.encode_engineio(), packet.attachments)
            }
            Body::MemberJoined { player, members } => notice(
                "member_joined",
                serde_json::json!({"room": room, "player": player.to_string(), "members": members}),
            ),
            Body::MemberLeft {
                player,
                members,
                reason,
            } => notice(
                "member_left",
                serde_json::json!({
                    "room": room,
                    "player": player.to_string(),
                    "members": members,
                    "reason": match reason { LeaveReason::Left => "left", LeaveReason::Disconnected => "disconnected" },
                }),
            ),
            Body::Emit { event, args } => {
                let packet = socketio::Packet::event(nsp, event, args.iter().cloned());
                (packet.encode_engineio(), packet.attachments)
            }
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
            Body::Nested {
                from,
                event,
                payload,
            } => ServerFrame::Event {
                room,
                from: *from,
                event: event.clone(),
                payload: Bytes::from(payload.to_plain_json().to_string()),
                kind: PayloadKind::Json,
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
            Body::Emit { event, args } => {
                let (payload, kind) = match args.as_slice() {
                    [Arg::Binary(bytes)] => (bytes.clone(), PayloadKind::Binary),
                    [single @ (Arg::Json(_) | Arg::Tree { .. })] => (
                        Bytes::from(single.to_plain_json().to_string()),
                        PayloadKind::Json,
                    ),
                    many => {
                        let values: Vec<serde_json::Value> = many
                            .iter()
                            // Binary inside several arguments has no native form; it
                            // travels as base64 text.
                            .map(Arg::to_plain_json)
                            .collect();
                        (
                            Bytes::from(serde_json::Value::Array(values).to_string()),
                            PayloadKind::Json,
                        )
                    }
                };
                ServerFrame::Event {
                    room,
                    from: 0,
                    event: event.clone(),
                    payload,
                    kind,
                }
            }
        };
        native_frame(&frame)
    }
}

/// An Engine.IO message and its attachments as WebSocket frames, back to back in one buffer.
pub fn sio_ws_frames(text: &str, attachments: &[Bytes]) -> Bytes {
    let first = ws::text_frame(|mut v| {
        v.extend_from_slice(text.as_bytes());
        v
    });
    if attachments.is_empty() {
        return first;
    }
    let mut all = first.to_vec();
    for a in attachments {
        all.extend_from_slice(&ws::binary_frame(|mut v| {
            v.extend_from_slice(a);
            v
        }));
    }
    Bytes::from(all)
}

/// An Engine.IO message and its attachments as long-polling payload text (a fragment that
/// a poll joins to others with the record separator).
pub fn sio_polling_text(text: &str, attachments: &[Bytes]) -> Bytes {
    let mut out = String::with_capacity(
        text.len()
            + attachments
                .iter()
                .map(|a| a.len() * 4 / 3 + 4)
                .sum::<usize>(),
    );
    out.push_str(text);
    for a in attachments {
        out.push(char::from(RECORD_SEPARATOR));
        out.push('b');
        encode_base64_into(a, &mut out);
    }
    Bytes::from(out)
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
        let ack = |req: u64, data: serde_json::Value| {
            // Relay-convention acks are on the main namespace.
            socketio::Packet::ack(socketio::MAIN_NAMESPACE, req, [Arg::Json(data)])
                .encode_engineio()
        };
        let sio_text = || match self {
            Reply::Joined { req, room, members } => {
                ack(*req, serde_json::json!({"room": room, "members": members}))
            }
            Reply::Left { req, room } => ack(*req, serde_json::json!({"room": room})),
            Reply::Error { req, code, .. } => ack(*req, serde_json::json!({"error": code.name()})),
        };
        match wire {
            Wire::SioWs => sio_ws_frames(&sio_text(), &[]),
            Wire::SioPolling => Bytes::from(sio_text()),
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
