//! What fans out: a message (or membership notice) to a room, encoded once per wire format.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::proto::engineio::{encode_base64_into, RECORD_SEPARATOR};
use crate::proto::native::{LeaveReason, PayloadKind, PlayerInfo, ServerFrame, UnqueueReason};
use crate::proto::socketcluster as sc;
use crate::proto::socketio::{self, encode_relay_event, Arg, RelayPayload};
use crate::proto::ws;

/// A player id, unique on the server: the shard number in the top 16 bits, a per-shard
/// counter below (so ids are allocated without coordination).
pub type PlayerId = u64;

/// The player id others see: the `sub` of the player's token, or its [`PlayerId`] in
/// decimal for an anonymous player (docs/AUTH.md). Several connections may share one (the
/// same player on two devices), so the relay keys connections by [`PlayerId`] and only
/// encodes this. Shared, since every message the player sends carries it.
pub type PlayerName = Arc<str>;

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
    /// SocketCluster over WebSocket: one JSON text frame per packet (channel messages as
    /// `#publish`, docs/SOCKETCLUSTER.md).
    SocketCluster,
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
        from: PlayerName,
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
        player: PlayerName,
        /// Count after the join.
        members: u32,
    },
    /// A member left or disconnected.
    MemberLeft {
        /// Who left.
        player: PlayerName,
        /// Count after.
        members: u32,
        /// Why.
        reason: LeaveReason,
    },
    /// A member's connection dropped; its session may be resumed (docs/SESSIONS.md).
    MemberAway {
        /// Who.
        player: PlayerName,
    },
    /// A member that was away resumed its session.
    MemberBack {
        /// Who.
        player: PlayerName,
    },
    /// The room has a new host: its host left and this is the longest-present member.
    Host {
        /// The new host.
        player: PlayerName,
        /// The room's state (JSON text), if its host set one.
        state: Option<Arc<str>>,
    },
    /// A socket.io member's message whose JSON payload holds binary buffers (an
    /// [`Arg::Tree`]); native recipients get it as JSON with the buffers in base64.
    Nested {
        /// Sender.
        from: PlayerName,
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

/// What an event's largest encoding adds to its payload and twice its names, at most: two
/// WebSocket headers (10 bytes each: a socket.io binary event is a text frame and a binary
/// one), the socket.io packet's type, attachment count, brackets, quotes and placeholder
/// (about 40), the sender's id (20 digits), the long-polling separator and `b` marker, and
/// the native frame's fixed fields (about 40), and the socket.io recovery offset (at most 24
/// characters, its quotes and comma). The sender's name is counted apart (twice, for JSON
/// escaping). The unit tests check it against every wire.
pub const EVENT_ENVELOPE: usize = 160;

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
    /// The room's sequence number, given by the room's home shard when it keeps history
    /// ([`Broadcast::numbered`]); 0 otherwise.
    pub seq: u64,
    /// Socket.IO recipients get the room's offset ([`sio_offset`]) as the event's last
    /// argument (socket.io recovery on).
    pub offsets: bool,
    native: OnceLock<Bytes>,
    sio_ws: OnceLock<Bytes>,
    sio_polling: OnceLock<Bytes>,
    socketcluster: OnceLock<Bytes>,
}

impl Wire {
    /// Every wire, for what is measured on all of them.
    pub const ALL: [Wire; 4] = [
        Wire::Native,
        Wire::SioWs,
        Wire::SioPolling,
        Wire::SocketCluster,
    ];
}

impl Broadcast {
    /// A broadcast to `room`, skipping `exclude`.
    pub fn new(room: String, exclude: PlayerId, body: Body, received_at: Instant) -> Broadcast {
        Broadcast {
            room,
            exclude,
            body,
            received_at,
            seq: 0,
            offsets: false,
            native: OnceLock::new(),
            sio_ws: OnceLock::new(),
            sio_polling: OnceLock::new(),
            socketcluster: OnceLock::new(),
        }
    }

    /// This broadcast with the room's sequence number `seq`, and with `offsets` its
    /// socket.io encodings carry the offset made of it. Encodings made before (an
    /// application payload is encoded to be measured) are dropped: they lack the number.
    pub fn numbered(self, seq: u64, offsets: bool) -> Broadcast {
        Broadcast {
            seq,
            offsets,
            ..Broadcast::new(self.room, self.exclude, self.body, self.received_at)
        }
    }

    /// The socket.io offset of this broadcast, if its socket.io recipients get one.
    pub fn offset(&self) -> Option<String> {
        (self.offsets && self.seq > 0).then(|| sio_offset(&self.room, self.seq))
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
            Wire::SocketCluster => self
                .socketcluster
                .get_or_init(|| text_frame(&self.encode_socketcluster()))
                .clone(),
        }
    }

    /// At least the length of [`Broadcast::frame`] on every [`Wire`], so that a message can
    /// be measured against a recipient's outbound budget before it reaches any outbox,
    /// including those of recipients on other shards whose wires the sending shard does not
    /// know.
    ///
    /// A member's event is not encoded for this: its largest encoding is long-polling's,
    /// which carries a binary payload (or JSON that does not parse) in base64, so the bound
    /// is 4/3 of the payload, plus the names twice (JSON escaping of `"` and `\` at most
    /// doubles them; names hold no control characters) plus [`EVENT_ENVELOPE`]. A native
    /// recipient's frame is about 3/4 of that, which the bound accepts for being cheap: it
    /// adds no encoding to the hot path. Application payloads (`Nested`, `Emit`: any JSON,
    /// whose re-serialization may grow) are encoded for every wire and measured; each
    /// encoding is kept for delivery, so nothing is encoded twice.
    pub fn max_frame_len(&self) -> usize {
        let names = |event: &str, player: &str| {
            2 * (event.len() + self.room.len() + player.len()) + EVENT_ENVELOPE
        };
        match &self.body {
            Body::Event {
                event,
                payload,
                from,
                ..
            } => payload.len().div_ceil(3) * 4 + names(event, from),
            Body::MemberJoined { player, .. }
            | Body::MemberLeft { player, .. }
            | Body::MemberAway { player }
            | Body::MemberBack { player } => names("", player),
            Body::Host { player, state } => {
                names("", player) + state.as_ref().map_or(0, |s| 2 * s.len())
            }
            // Measured before its home numbers it: room for the offset numbering adds.
            Body::Nested { .. } | Body::Emit { .. } => {
                Wire::ALL
                    .into_iter()
                    .map(|wire| self.frame(wire).len())
                    .max()
                    .unwrap_or(0)
                    + OFFSET_ARG
            }
        }
    }

    /// The Engine.IO message text (`4...`) and attachments for socket.io recipients.
    fn encode_socketio(&self) -> (String, Vec<Bytes>) {
        let (nsp, room) = split_room_key(&self.room);
        let offset = self.offset();
        // The offset is the last argument, as socket.io's recovery appends it.
        let with_offset = |args: &mut Vec<Arg>| {
            if let Some(offset) = &offset {
                args.push(Arg::Json(offset.as_str().into()));
            }
        };
        let notice = |event: &str, data: serde_json::Value| {
            let mut args = vec![Arg::Json(data)];
            with_offset(&mut args);
            let packet = socketio::Packet::event(nsp, event, args);
            (packet.encode_engineio(), Vec::new())
        };
        match &self.body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => {
                // A native client's JSON is checked here, once per broadcast: invalid text
                // would make every socket.io recipient drop its connection, so it travels
                // as binary instead.
                let json = json_text(payload, *kind);
                let payload = match json {
                    Some(text) => RelayPayload::Json(text),
                    None => RelayPayload::Binary(payload),
                };
                let encoded = encode_relay_event(nsp, event, payload, from, offset.as_deref());
                (encoded.frame, encoded.attachment.into_iter().collect())
            }
            Body::Nested {
                from,
                event,
                payload,
            } => {
                let mut args = vec![payload.clone(), Arg::Json(from.as_ref().into())];
                with_offset(&mut args);
                let packet = socketio::Packet::event(nsp, event, args);
                (packet.encode_engineio(), packet.attachments)
            }
            Body::Emit { event, args } => {
                let mut args = args.clone();
                with_offset(&mut args);
                let packet = socketio::Packet::event(nsp, event, args);
                (packet.encode_engineio(), packet.attachments)
            }
            notice_body => {
                let (event, data) = notice_of(room, notice_body);
                notice(event, data)
            }
        }
    }

    /// The SocketCluster message for subscribers of the room's channel: a member's message
    /// as a `#publish` (docs/SOCKETCLUSTER.md has the mapping), a notice as the event that
    /// socket.io clients get under the same name.
    fn encode_socketcluster(&self) -> String {
        let (_, channel) = split_room_key(&self.room);
        let notice = |event: &str, data: serde_json::Value| sc::transmit(event, &data);
        match &self.body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => {
                // Checked once per broadcast, as for socket.io: JSON that does not parse
                // travels as binary rather than break every subscriber's decoder.
                let json = json_text(payload, *kind);
                let data = match json {
                    Some(text) => sc::ChannelData::Json(text),
                    None => sc::ChannelData::Binary(payload),
                };
                sc::channel_message(channel, event, from, data)
            }
            Body::Nested {
                from,
                event,
                payload,
            } => {
                let data = sc::sc_value(payload);
                sc::channel_message(channel, event, from, sc::ChannelData::Value(&data))
            }
            Body::Emit { event, args } => {
                let data = match args.as_slice() {
                    [single] => sc::sc_value(single),
                    many => serde_json::Value::Array(many.iter().map(sc::sc_value).collect()),
                };
                // No player sent it: the server's own, as on the native wire.
                sc::channel_message(channel, event, "", sc::ChannelData::Value(&data))
            }
            notice_body => {
                let (event, data) = notice_of(channel, notice_body);
                notice(event, data)
            }
        }
    }

    fn encode_native(&self) -> Bytes {
        let room = self.room.clone();
        let seq = self.seq;
        let frame = match &self.body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => ServerFrame::Event {
                room,
                from: from.to_string(),
                event: event.clone(),
                payload: payload.clone(),
                kind: *kind,
                seq,
            },
            Body::Nested {
                from,
                event,
                payload,
            } => ServerFrame::Event {
                room,
                from: from.to_string(),
                event: event.clone(),
                payload: Bytes::from(payload.to_plain_json().to_string()),
                kind: PayloadKind::Json,
                seq,
            },
            Body::MemberJoined { player, members } => ServerFrame::MemberJoined {
                room,
                player: player.to_string(),
                members: *members,
                seq,
            },
            Body::MemberLeft {
                player,
                members,
                reason,
            } => ServerFrame::MemberLeft {
                room,
                player: player.to_string(),
                members: *members,
                reason: *reason,
                seq,
            },
            Body::MemberAway { player } => ServerFrame::MemberAway {
                room,
                player: player.to_string(),
                seq,
            },
            Body::MemberBack { player } => ServerFrame::MemberBack {
                room,
                player: player.to_string(),
                seq,
            },
            Body::Host { player, state } => ServerFrame::Host {
                room,
                player: player.to_string(),
                state: state.as_deref().unwrap_or_default().to_owned(),
                seq,
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
                    // No player sent it: the server's own (docs/PROTOCOL.md, Event).
                    from: String::new(),
                    event: event.clone(),
                    payload,
                    kind,
                    seq,
                }
            }
        };
        native_frame(&frame)
    }
}

/// `object` with the room's `state` (JSON text, checked when the host set it) as a value,
/// when there is one.
fn with_state(mut object: serde_json::Value, state: Option<&str>) -> serde_json::Value {
    if let Some(value) = json_value(state) {
        object["state"] = value;
    }
    object
}

/// The value of JSON text the relay checked when it was set (room state and metadata, a
/// token's `meta` claim), for a Socket.IO answer.
fn json_value(text: Option<&str>) -> Option<serde_json::Value> {
    serde_json::from_str(text?).ok()
}

/// A join answer's or a match's members for a Socket.IO client: `[{id, meta?}]`.
fn players_json(roster: &[super::RosterEntry]) -> serde_json::Value {
    roster
        .iter()
        .map(|m| {
            let mut entry = serde_json::json!({ "id": &*m.id });
            if let Some(meta) = json_value(m.meta.as_deref()) {
                entry["meta"] = meta;
            }
            entry
        })
        .collect()
}

/// The same for a native client.
fn player_infos(roster: &[super::RosterEntry]) -> Vec<PlayerInfo> {
    roster
        .iter()
        .map(|m| PlayerInfo {
            id: m.id.to_string(),
            meta: m.meta.as_deref().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// What a socket.io offset adds to an event at most: 24 characters, quotes and a comma.
const OFFSET_ARG: usize = 8 + 16 + 3;

/// A 32-bit hash of a room key (FNV-1a), naming the room in socket.io offsets.
pub fn room_tag(room: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in room.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The socket.io offset of broadcast `seq` of `room`: the room's tag in 8 hex digits, then
/// the number in hex. The client sends back the last one it processed; the server knows
/// from it where the client stands in each of its rooms (docs/SESSIONS.md).
pub fn sio_offset(room: &str, seq: u64) -> String {
    format!("{:08x}{seq:x}", room_tag(room))
}

/// The room tag and number of a socket.io offset; `None` for anything else (the official
/// client sends the last string argument of any event it processed).
pub fn parse_sio_offset(offset: &str) -> Option<(u32, u64)> {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if offset.len() > 8 + 16 || !offset.is_ascii() {
        return None;
    }
    let (tag, seq) = offset.split_at_checked(8)?;
    if !hex(tag) || !hex(seq) {
        return None;
    }
    Some((
        u32::from_str_radix(tag, 16).ok()?,
        u64::from_str_radix(seq, 16).ok()?,
    ))
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

/// A relay error as a SocketCluster error: `InvalidActionError` (the class the reference
/// server refuses requests with), `ForbiddenError` for an authorization refusal, with
/// corelay's code beside the message.
pub fn sc_error(code: crate::proto::native::ErrorCode, message: &str) -> sc::ScError {
    let name = match code {
        crate::proto::native::ErrorCode::Forbidden => "ForbiddenError",
        _ => "InvalidActionError",
    };
    sc::ScError::new(name, message).with_code(code.name())
}

/// A whole WebSocket text frame carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    ws::text_frame(|mut v| {
        v.extend_from_slice(text.as_bytes());
        v
    })
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
        /// The room's host.
        host: PlayerName,
        /// The room's state (JSON text), if its host set one.
        state: Option<Arc<str>>,
        /// Its longest-present members.
        roster: super::Roster,
    },
    /// A room created (`room:create`).
    Created {
        /// Request id.
        req: u64,
        /// Room.
        room: String,
        /// Its code.
        code: String,
        /// Its host.
        host: PlayerName,
    },
    /// A page of rooms (`room:list`).
    Listed {
        /// Request id.
        req: u64,
        /// The rooms, by name.
        rooms: Vec<super::ListedRoom>,
        /// The next page, if there are more.
        next_page: Option<u32>,
    },
    /// A host action done.
    Updated {
        /// Request id.
        req: u64,
        /// Room.
        room: String,
    },
    /// Not an answer: the room's host removed this player from `room`.
    Kicked {
        /// Room.
        room: String,
    },
    /// A matchmaking ticket waits (`mm:queue`).
    Queued {
        /// Request id.
        req: u64,
        /// The ticket.
        ticket: u64,
    },
    /// A ticket cancelled (`mm:cancel`).
    Cancelled {
        /// Request id.
        req: u64,
        /// The ticket.
        ticket: u64,
    },
    /// Not an answer: the ticket matched, and the player is a member of `room`.
    Matched {
        /// The ticket.
        ticket: u64,
        /// The room made for the match.
        room: String,
        /// Its members, the host first.
        roster: super::Roster,
    },
    /// Not an answer: the ticket ended without a match.
    Unqueued {
        /// The ticket.
        ticket: u64,
        /// Why.
        reason: UnqueueReason,
        /// The party member who cancelled or disconnected.
        by: Option<PlayerName>,
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

/// A reply as JSON: the answer to a request, or an event of its own.
enum ReplyJson {
    /// The answer to request `.0`.
    Answer(u64, serde_json::Value),
    /// An event named `.0`.
    Event(&'static str, serde_json::Value),
}

impl Reply {
    /// The reply's JSON, which the socket.io and SocketCluster encodings share.
    fn json(&self) -> ReplyJson {
        let ack = ReplyJson::Answer;
        let event = ReplyJson::Event;
        match self {
            Reply::Joined {
                req,
                room,
                members,
                host,
                state,
                roster,
            } => {
                let mut answer = with_state(
                    serde_json::json!({"room": room, "members": members, "host": &**host}),
                    state.as_deref(),
                );
                if !roster.is_empty() {
                    answer["players"] = players_json(roster);
                }
                ack(*req, answer)
            }
            Reply::Updated { req, room } => ack(*req, serde_json::json!({"room": room})),
            Reply::Listed {
                req,
                rooms,
                next_page,
            } => {
                let rooms: Vec<serde_json::Value> = rooms
                    .iter()
                    .map(|r| {
                        let metadata =
                            json_value(r.metadata.as_deref()).unwrap_or(serde_json::Value::Null);
                        serde_json::json!({
                            "room": r.room,
                            "members": r.members,
                            "max_members": r.max_members,
                            "metadata": metadata,
                        })
                    })
                    .collect();
                ack(
                    *req,
                    serde_json::json!({"rooms": rooms, "next_page": next_page}),
                )
            }
            Reply::Created {
                req,
                room,
                code,
                host,
            } => ack(
                *req,
                serde_json::json!({"room": room, "code": code, "host": &**host}),
            ),
            Reply::Kicked { room } => event("room:kicked", serde_json::json!({ "room": room })),
            Reply::Left { req, room } => ack(*req, serde_json::json!({"room": room})),
            Reply::Error { req, code, .. } => ack(*req, serde_json::json!({"error": code.name()})),
            Reply::Queued { req, ticket } | Reply::Cancelled { req, ticket } => {
                ack(*req, serde_json::json!({ "ticket_id": ticket }))
            }
            Reply::Matched {
                ticket,
                room,
                roster,
            } => {
                let players = players_json(roster);
                let data = serde_json::json!({
                    "ticket_id": ticket,
                    "room": room,
                    "code": room.strip_prefix(super::CODE_PREFIX).unwrap_or(room),
                    "host": roster.first().map(|m| &*m.id),
                    "players": players,
                });
                event("mm:matched", data)
            }
            Reply::Unqueued {
                ticket,
                reason: UnqueueReason::TimedOut,
                ..
            } => event("mm:timeout", serde_json::json!({ "ticket_id": ticket })),
            Reply::Unqueued { ticket, reason, by } => {
                let reason = match reason {
                    UnqueueReason::Cancelled => "cancelled",
                    UnqueueReason::Disconnected => "disconnected",
                    UnqueueReason::Refused | UnqueueReason::TimedOut => "refused",
                };
                let data = serde_json::json!({
                    "ticket_id": ticket,
                    "reason": reason,
                    "player": by.as_deref(),
                });
                event("mm:cancelled", data)
            }
        }
    }

    /// The SocketCluster packet of this reply: an answer to the request's `cid` (an error
    /// answer for a refusal), a `#kickOut` for a host's kick, an event otherwise.
    fn sc_text(&self) -> String {
        match self {
            Reply::Joined { req, .. } | Reply::Left { req, .. } => sc::answer(*req, None),
            Reply::Error { req, code, message } => {
                sc::answer_error(*req, &sc_error(*code, message))
            }
            Reply::Kicked { room } => sc::transmit(
                "#kickOut",
                &serde_json::json!({"channel": room, "message": "kicked by the room's host"}),
            ),
            _ => match self.json() {
                ReplyJson::Answer(req, data) => sc::answer(req, Some(&data)),
                ReplyJson::Event(name, data) => sc::transmit(name, &data),
            },
        }
    }

    /// The frame answering the request on `wire`.
    pub fn frame(&self, wire: Wire) -> Bytes {
        let sio_text = || {
            let packet = match self.json() {
                // Relay-convention acks are on the main namespace.
                ReplyJson::Answer(req, data) => {
                    socketio::Packet::ack(socketio::MAIN_NAMESPACE, req, [Arg::Json(data)])
                }
                ReplyJson::Event(name, data) => {
                    socketio::Packet::event(socketio::MAIN_NAMESPACE, name, [Arg::Json(data)])
                }
            };
            packet.encode_engineio()
        };
        match wire {
            Wire::SioWs => sio_ws_frames(&sio_text(), &[]),
            Wire::SioPolling => Bytes::from(sio_text()),
            Wire::SocketCluster => text_frame(&self.sc_text()),
            Wire::Native => native_frame(&match self.clone() {
                Reply::Joined {
                    req,
                    room,
                    members,
                    host,
                    state,
                    roster,
                } => ServerFrame::Joined {
                    req: req as u32,
                    room,
                    members,
                    host: host.to_string(),
                    state: state.as_deref().unwrap_or_default().to_owned(),
                    players: player_infos(&roster),
                },
                Reply::Created {
                    req,
                    room,
                    code,
                    host,
                } => ServerFrame::Created {
                    req: req as u32,
                    room,
                    code,
                    host: host.to_string(),
                },
                Reply::Listed {
                    req,
                    rooms,
                    next_page,
                } => ServerFrame::Listed {
                    req: req as u32,
                    rooms: rooms
                        .into_iter()
                        .map(|r| crate::proto::native::RoomInfo {
                            room: r.room,
                            members: r.members,
                            max_members: r.max_members,
                            metadata: r.metadata.as_deref().unwrap_or_default().to_owned(),
                        })
                        .collect(),
                    next_page: next_page.unwrap_or(0),
                },
                Reply::Updated { req, room } => ServerFrame::Updated {
                    req: req as u32,
                    room,
                },
                Reply::Kicked { room } => ServerFrame::Kicked { room },
                Reply::Left { req, room } => ServerFrame::Left {
                    req: req as u32,
                    room,
                },
                Reply::Queued { req, ticket } => ServerFrame::Queued {
                    req: req as u32,
                    ticket,
                },
                Reply::Cancelled { req, ticket } => ServerFrame::Cancelled {
                    req: req as u32,
                    ticket,
                },
                Reply::Matched {
                    ticket,
                    room,
                    roster,
                } => ServerFrame::Matched {
                    ticket,
                    code: room
                        .strip_prefix(super::CODE_PREFIX)
                        .unwrap_or(&room)
                        .to_owned(),
                    room,
                    players: player_infos(&roster),
                },
                Reply::Unqueued { ticket, reason, by } => ServerFrame::Unqueued {
                    ticket,
                    reason,
                    player: by.as_deref().unwrap_or_default().to_owned(),
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

/// A payload sent as JSON whose text parses as JSON; `None` for binary, or for text that
/// does not parse (it then travels as binary).
fn json_text(payload: &[u8], kind: PayloadKind) -> Option<&str> {
    match kind {
        PayloadKind::Json => std::str::from_utf8(payload)
            .ok()
            .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()),
        PayloadKind::Binary => None,
    }
}

/// A membership or host notice of `room` (its name, not its key) as the event Socket.IO
/// and SocketCluster clients get: its name and data. Any other body is not a notice.
fn notice_of(room: &str, body: &Body) -> (&'static str, serde_json::Value) {
    match body {
        Body::MemberJoined { player, members } => (
            "member_joined",
            serde_json::json!({"room": room, "player": &**player, "members": members}),
        ),
        Body::MemberLeft {
            player,
            members,
            reason,
        } => (
            "member_left",
            serde_json::json!({
                "room": room,
                "player": &**player,
                "members": members,
                "reason": match reason {
                    LeaveReason::Left => "left",
                    LeaveReason::Disconnected => "disconnected",
                    LeaveReason::Kicked => "kicked",
                },
            }),
        ),
        Body::MemberAway { player } => (
            "member_away",
            serde_json::json!({"room": room, "player": &**player}),
        ),
        Body::MemberBack { player } => (
            "member_back",
            serde_json::json!({"room": room, "player": &**player}),
        ),
        Body::Host { player, state } => (
            "room:host",
            with_state(
                serde_json::json!({"room": room, "host": &**player}),
                state.as_deref(),
            ),
        ),
        Body::Event { .. } | Body::Nested { .. } | Body::Emit { .. } => {
            unreachable!("not a notice")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRES: [Wire; 4] = Wire::ALL;

    fn check(room: &str, body: Body) {
        let bcast = Broadcast::new(room.to_owned(), 0, body, Instant::now());
        // Measured before numbering; delivered numbered, with the longest offset.
        let bound = bcast.max_frame_len();
        let bcast = bcast.numbered(u64::MAX, true);
        for wire in WIRES {
            let len = bcast.frame(wire).len();
            assert!(
                len <= bound,
                "{wire:?}: {len} over the bound {bound} for {:?}",
                bcast.body
            );
        }
    }

    #[test]
    fn the_size_bound_covers_every_wire() {
        // Names that escape the most (quotes and backslashes), in namespaced rooms too.
        let names = ["e", "\"\\\"\\\"\\\"\\", &"\"".repeat(128), &"é".repeat(64)];
        let rooms = [
            "r",
            &"\\".repeat(128),
            &room_key("/chat", &"\"".repeat(128)),
        ];
        // The longest `sub` a token may carry, all of it escaped in JSON.
        let from: PlayerName = Arc::from("\"".repeat(crate::auth::MAX_SUBJECT_LEN));
        for len in [0, 1, 2, 3, 125, 126, 65_535, 65_536, 200_000] {
            let binary = Bytes::from(vec![0xffu8; len]);
            let json = Bytes::from(format!("\"{}\"", "a".repeat(len)));
            for (room, event) in rooms.iter().zip(names.iter().cycle()) {
                for (payload, kind) in [
                    (binary.clone(), PayloadKind::Binary),
                    // Invalid JSON travels as binary: base64 over long-polling.
                    (binary.clone(), PayloadKind::Json),
                    (json.clone(), PayloadKind::Json),
                ] {
                    let event = event.to_string();
                    check(
                        room,
                        Body::Event {
                            from: from.clone(),
                            event,
                            payload,
                            kind,
                        },
                    );
                }
            }
        }
        for room in rooms {
            check(
                room,
                Body::MemberJoined {
                    player: from.clone(),
                    members: u32::MAX,
                },
            );
            check(
                room,
                Body::MemberLeft {
                    player: from.clone(),
                    members: u32::MAX,
                    reason: LeaveReason::Disconnected,
                },
            );
        }
    }

    #[test]
    fn offsets_name_the_room_and_number_and_nothing_else_parses() {
        let offset = sio_offset("match-7", 0x1f);
        assert_eq!(offset.len(), 10);
        assert_eq!(parse_sio_offset(&offset), Some((room_tag("match-7"), 0x1f)));
        let longest = sio_offset("r", u64::MAX);
        assert_eq!(longest.len(), 24);
        assert_eq!(parse_sio_offset(&longest), Some((room_tag("r"), u64::MAX)));
        for other in [
            "",
            "p1",
            "1234567",
            "12345678",
            "1234567g1",
            "+2345678a",
            "é234567812",
        ] {
            assert_eq!(parse_sio_offset(other), None, "{other}");
        }
        // Socket.IO recipients get it last; native ones carry the number in the frame.
        let bcast = Broadcast::new(
            "match-7".into(),
            0,
            Body::MemberAway {
                player: Arc::from("p"),
            },
            Instant::now(),
        )
        .numbered(0x1f, true);
        let text = bcast.frame(Wire::SioPolling);
        let expected = format!(r#"42["member_away",{{"player":"p","room":"match-7"}},"{offset}"]"#);
        assert_eq!(std::str::from_utf8(&text).unwrap(), expected);
    }

    #[test]
    fn application_payloads_are_measured_as_encoded() {
        let big = Bytes::from(vec![1u8; 30_000]);
        let bcast = Broadcast::new(
            "r".into(),
            0,
            Body::Emit {
                event: "e".into(),
                args: vec![Arg::Binary(big.clone()), Arg::Json("x".into())],
            },
            Instant::now(),
        );
        let bound = bcast.max_frame_len();
        // Native and SocketCluster recipients get the buffer as base64 inside JSON (the
        // latter in the codec's object, inside the `{event, data, from}` of a channel
        // message: the largest here), and room for the offset its numbering adds for
        // socket.io recipients.
        assert!(bcast.frame(Wire::SocketCluster).len() > bcast.frame(Wire::Native).len());
        assert_eq!(bound, bcast.frame(Wire::SocketCluster).len() + OFFSET_ARG);
        assert!(bound > big.len() * 4 / 3);
    }
}
