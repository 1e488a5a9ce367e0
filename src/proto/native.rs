//! The native protocol: one rkyv-archived frame per WebSocket binary message on `/ws`.
//!
//! Frames are validated with bytecheck and read in place ([`access_client`],
//! [`access_server`]): the hot path never deserializes into owned copies. The crate enables
//! rkyv's `unaligned` format, so a frame can be read wherever the WebSocket layer left its
//! bytes, with no realigning copy. docs/PROTOCOL.md is the reference for every frame and
//! error code.

use rkyv::rancor;

/// Protocol version a client announces in `Hello`. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 3;

/// How a payload should be read by receivers: raw bytes or JSON text.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq), compare(PartialEq))]
#[repr(u8)]
pub enum PayloadKind {
    /// Opaque bytes; socket.io clients receive a Buffer/ArrayBuffer.
    Binary,
    /// UTF-8 JSON text; socket.io clients receive the parsed value.
    Json,
}

impl From<&ArchivedPayloadKind> for PayloadKind {
    fn from(kind: &ArchivedPayloadKind) -> Self {
        match kind {
            ArchivedPayloadKind::Binary => PayloadKind::Binary,
            ArchivedPayloadKind::Json => PayloadKind::Json,
        }
    }
}

/// Why a member left a room, as told to the others.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum LeaveReason {
    /// The member asked to leave.
    Left,
    /// The member's connection closed.
    Disconnected,
    /// The room's host removed the member (`room:kick`).
    Kicked,
}

pub use frames::*;

/// The frame enums. rkyv derives archived twins and resolvers next to each; those generated
/// items carry no docs of their own, hence the module-level allow (the enums above them are
/// documented field by field).
mod frames {
    #![allow(missing_docs)]
    use super::{LeaveReason, PayloadKind};
    use bytes::Bytes;

    /// A frame sent by a client. Every request carries `req`, which the answer (or the Error
    /// frame) echoes; 0 means the client does not care to match it.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
    #[rkyv(derive(Debug))]
    pub enum ClientFrame {
        /// First frame of a session. Answered by `Welcome`.
        Hello {
            /// Request id.
            req: u32,
            /// Must equal [`super::PROTOCOL_VERSION`].
            version: u16,
            /// A JWT proving who the player is (docs/AUTH.md); `None` to play anonymously
            /// where the server allows it.
            token: Option<String>,
        },
        /// Enter a room (created on first join). Answered by `Joined`.
        Join {
            /// Request id.
            req: u32,
            /// Room name, 1..=max_name_len bytes.
            room: String,
        },
        /// Leave a room. Answered by `Left`.
        Leave {
            /// Request id.
            req: u32,
            /// Room name.
            room: String,
        },
        /// Broadcast to every other member of a room. Not answered unless it fails.
        Send {
            /// Request id, echoed only by an Error frame.
            req: u32,
            /// A room the sender is a member of.
            room: String,
            /// Application event name.
            event: String,
            /// Opaque payload, relayed untouched.
            payload: Bytes,
            /// How receivers should read the payload.
            kind: PayloadKind,
        },
        /// Liveness and round-trip probe. Answered by `Pong` with the same `t`.
        Ping {
            /// Request id.
            req: u32,
            /// Client's timestamp, echoed.
            t: u64,
        },
        /// Replaces the session's token with a newer one of the same `sub`, moving the time
        /// at which the session ends for its expiry. Answered by `Refreshed`, or by
        /// `Error` `unauthorized` (the session goes on with its old token).
        Refresh {
            /// Request id.
            req: u32,
            /// The new JWT.
            token: String,
        },
        /// First frame of a reconnecting session, instead of `Hello` (docs/SESSIONS.md):
        /// takes back the session `Welcome` gave, with its player id and rooms. Answered by
        /// `Welcome` with `resumed` set, then per room `Resumed` and the messages missed; or
        /// by `Error` `cannot_resume` (the connection stays open for a `Hello`). Send it on
        /// `/ws?resume=<session>`, so that it reaches the shard that holds the session.
        Resume {
            /// Request id.
            req: u32,
            /// `Welcome.session` of the session to take back.
            session: u64,
            /// `Welcome.secret` of that session.
            secret: String,
            /// The last sequence number seen in each room (`Event.seq`, ...); a room not
            /// listed counts as 0 (everything the room still keeps is replayed).
            rooms: Vec<RoomSeq>,
        },
        /// Something only the room's host may do (docs/ROOMS.md). Answered by `Updated`,
        /// or by `Error` `not_host`, `not_member`, `too_big` or `invalid_value`.
        Host {
            /// Request id.
            req: u32,
            /// The room.
            room: String,
            /// What to do.
            action: HostAction,
        },
        /// Creates a room (docs/ROOMS.md) whose first member and host is this connection.
        /// Answered by `Created`, or by `Error` `room_exists`, `invalid_name` (a bad code),
        /// `invalid_value`, `too_big`, `too_many_rooms`.
        Create {
            /// Request id.
            req: u32,
            /// Most members; 0 for the server's `max_room_members`.
            max_members: u32,
            /// Not listed; joined with its code.
            private: bool,
            /// Public metadata, a JSON object's text; empty for none.
            metadata: String,
            /// How long the room survives being empty, in ms (at most an hour); 0: it goes
            /// with its last member. A `u32`, so that the frame fits the 30-byte root every
            /// client frame has.
            empty_ttl_ms: u32,
            /// The code to give it (4 to 12 letters of `23456789ABCDEFGHJKMNPQRSTUVWXYZ`);
            /// empty: the server picks 6.
            code: String,
        },
        /// Lists the public rooms made by `Create` (docs/ROOMS.md). Answered by `Listed`,
        /// or by `Error` `invalid_value` (a page past the last one served, or a filter
        /// that is not a JSON object).
        List {
            /// Request id.
            req: u32,
            /// Metadata every listed room must have (a JSON object's text; empty: any).
            metadata: String,
            /// Only rooms with a free seat.
            free_seats: bool,
            /// Page, from 0.
            page: u32,
        },
        /// Puts this player in a matchmaking queue (docs/ROOMS.md, "Matchmaking").
        /// Answered by `Queued`; then `Matched` or `Unqueued` comes when the ticket ends.
        /// Or by `Error` `unknown_queue`, `already_queued`, `invalid_value`, `queue_full`,
        /// `too_many_rooms`, `rate_limited`.
        Queue {
            /// Request id.
            req: u32,
            /// The ticket (boxed, so that the frame fits the 30-byte root every client
            /// frame has).
            ticket: Box<TicketSpec>,
        },
        /// Takes this player's ticket out of its queue, with its whole party (the other
        /// members get `Unqueued` `Cancelled`). Answered by `Cancelled`, or by `Error`
        /// `not_queued` (the ticket ended already: matched, timed out, withdrawn).
        Cancel {
            /// Request id.
            req: u32,
            /// `Queued.ticket`; 0 for whatever ticket this player holds.
            ticket: u64,
        },
    }

    /// A matchmaking ticket (`ClientFrame::Queue`).
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
    #[rkyv(derive(Debug))]
    pub struct TicketSpec {
        /// The queue's name (`default` always exists).
        pub queue: String,
        /// This player's skill, a finite number on the game's scale.
        pub skill: f64,
        /// Its region; empty for none.
        pub region: String,
        /// Properties the queue may require equal within a match.
        pub properties: Vec<Property>,
        /// The party's player ids, leader first, this player among them; empty to queue
        /// alone. Every member queues with the same list; the ticket waits for a match
        /// once all have.
        pub party: Vec<String>,
    }

    /// A named ticket property.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
    #[rkyv(derive(Debug))]
    pub struct Property {
        /// Its name.
        pub name: String,
        /// Its value.
        pub value: String,
    }

    /// Why a ticket ended without a match (`ServerFrame::Unqueued`).
    #[derive(
        rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq,
    )]
    #[rkyv(derive(Debug, PartialEq, Eq))]
    #[repr(u8)]
    pub enum UnqueueReason {
        /// It waited its queue's `timeout_s`.
        TimedOut,
        /// A member of its party cancelled it.
        Cancelled,
        /// A member of its party disconnected.
        Disconnected,
        /// The queue refused the party once it was whole (the queue was full, or the
        /// members' skills summed past a finite number).
        Refused,
    }

    /// What a room's host asks for (`ClientFrame::Host`, docs/ROOMS.md).
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
    #[rkyv(derive(Debug))]
    pub enum HostAction {
        /// Locks the room (no one joins) or unlocks it.
        Lock {
            /// Locked or not.
            locked: bool,
        },
        /// Removes a member (its player id) from the room.
        Kick {
            /// The member's player id.
            player: String,
        },
        /// Replaces the room's public metadata (a JSON object, at most
        /// `rooms.max_metadata_bytes`).
        SetMetadata {
            /// JSON text.
            metadata: String,
        },
        /// Replaces the room's state (any JSON, at most `rooms.max_state_bytes`), handed to
        /// each new member and to a new host.
        SetState {
            /// JSON text.
            state: String,
        },
    }

    /// A member in a `Joined` answer.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
    #[rkyv(derive(Debug))]
    pub struct PlayerInfo {
        /// Its player id.
        pub id: String,
        /// Its public metadata: the `meta` claim of its token (a JSON object's text), empty
        /// when none.
        pub meta: String,
    }

    /// A room in a `Listed` page.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
    #[rkyv(derive(Debug))]
    pub struct RoomInfo {
        /// Its name (`#<code>`).
        pub room: String,
        /// Its member count.
        pub members: u32,
        /// Its capacity.
        pub max_members: u32,
        /// Its metadata (a JSON object's text), empty when none.
        pub metadata: String,
    }

    /// How far a client got in a room: the last sequence number it received.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
    #[rkyv(derive(Debug))]
    pub struct RoomSeq {
        /// Room name.
        pub room: String,
        /// Last `seq` received from it.
        pub seq: u64,
    }

    /// A frame sent by the server.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
    #[rkyv(derive(Debug))]
    pub enum ServerFrame {
        /// Answer to `Hello`.
        Welcome {
            /// Echoed request id.
            req: u32,
            /// This connection's player id as others see it: the token's `sub`, or a
            /// server-made id (decimal digits) for an anonymous player.
            player: String,
            /// The shard (core) serving this connection.
            shard: u32,
            /// The session id to send in `Resume` (and in `/ws?resume=`) after a
            /// disconnection; 0 when the server keeps no sessions (`resume.window_ms = 0`).
            session: u64,
            /// The secret that proves the session is yours in `Resume`; keep it private.
            secret: String,
            /// Whether this answers a `Resume` that took the session back (player id and
            /// rooms kept; `Resumed` frames follow).
            resumed: bool,
        },
        /// Answer to `Join`.
        Joined {
            /// Echoed request id.
            req: u32,
            /// Room joined.
            room: String,
            /// Member count after the join.
            members: u32,
            /// The room's host: its longest-present member (this player, if it is the
            /// first).
            host: String,
            /// The room's state as its host last set it (JSON text), empty when none.
            state: String,
            /// Its longest-present members, the joiner included, at most 100 (empty in the
            /// answer to a `Join` of a room the connection is already in).
            players: Vec<PlayerInfo>,
        },
        /// Answer to `Leave`.
        Left {
            /// Echoed request id.
            req: u32,
            /// Room left.
            room: String,
        },
        /// A message another member sent to a room.
        Event {
            /// Room it was sent to.
            room: String,
            /// Sender's player id (see `Welcome.player`); empty for a message from the
            /// server's application code.
            from: String,
            /// Application event name.
            event: String,
            /// The payload, untouched.
            payload: Bytes,
            /// How to read the payload.
            kind: PayloadKind,
            /// The room's sequence number of this message, given by the room's home shard;
            /// 0 when the server keeps no history (docs/SESSIONS.md).
            seq: u64,
        },
        /// Someone joined a room this connection is in.
        MemberJoined {
            /// The room.
            room: String,
            /// The new member's player id.
            player: String,
            /// Member count after the join.
            members: u32,
            /// The room's sequence number of this notice (see `Event.seq`).
            seq: u64,
        },
        /// Someone left a room this connection is in.
        MemberLeft {
            /// The room.
            room: String,
            /// The player id of the member who left.
            player: String,
            /// Member count after the departure.
            members: u32,
            /// Whether they left or disconnected.
            reason: LeaveReason,
            /// The room's sequence number of this notice (see `Event.seq`).
            seq: u64,
        },
        /// Answer to `Ping`.
        Pong {
            /// Echoed request id.
            req: u32,
            /// Echoed client timestamp.
            t: u64,
        },
        /// A request failed; see docs/PROTOCOL.md for the codes.
        Error {
            /// Request id of the failed request (0 if unknown).
            req: u32,
            /// Machine-readable code, one of [`super::ErrorCode`].
            code: u16,
            /// Human-readable detail.
            message: String,
        },
        /// Answer to `Refresh`: the new token is the session's.
        Refreshed {
            /// Echoed request id.
            req: u32,
            /// The new token's `exp` (seconds since the Unix epoch); 0 when the server
            /// checks no tokens.
            exp: u64,
        },
        /// A member's connection dropped; it stays a member for `resume.window_ms` and may
        /// come back (`MemberBack`) or be gone (`MemberLeft`, `Disconnected`).
        MemberAway {
            /// The room.
            room: String,
            /// The member's player id.
            player: String,
            /// The room's sequence number of this notice.
            seq: u64,
        },
        /// A member that was away resumed its session.
        MemberBack {
            /// The room.
            room: String,
            /// The member's player id.
            player: String,
            /// The room's sequence number of this notice.
            seq: u64,
        },
        /// After a resumed `Welcome`, one per room the session is in: the room's missed
        /// messages follow, in order, before any new one.
        Resumed {
            /// The room.
            room: String,
            /// Member count now.
            members: u32,
            /// How many messages follow (those missed that the room still kept).
            replayed: u32,
            /// Some messages missed are no longer kept (the room's window passed them):
            /// what follows is not everything missed.
            gap: bool,
        },
        /// The room's host changed: its host left (or its session ended) and `player`,
        /// the longest-present member, is host now (docs/ROOMS.md).
        Host {
            /// The room.
            room: String,
            /// The new host's player id.
            player: String,
            /// The room's state (JSON text, empty when the host never set one), for the new
            /// host to carry on with.
            state: String,
            /// The room's sequence number of this notice.
            seq: u64,
        },
        /// Answer to `Host`: done.
        Updated {
            /// Echoed request id.
            req: u32,
            /// The room.
            room: String,
        },
        /// The room's host removed this connection from `room`.
        Kicked {
            /// The room.
            room: String,
        },
        /// Answer to `Create`: the room (`#` and its code), its code, and its host (this
        /// player).
        Created {
            /// Echoed request id.
            req: u32,
            /// The room's name, to `Join`, `Send` and `Leave` with.
            room: String,
            /// The code other players join it with (`Join` of `#<code>`).
            code: String,
            /// Its host.
            host: String,
        },
        /// Answer to `List`: one page of rooms, by name.
        Listed {
            /// Echoed request id.
            req: u32,
            /// The rooms.
            rooms: Vec<RoomInfo>,
            /// The next page to ask for; 0 when this is the last.
            next_page: u32,
        },
        /// Answer to `Queue`: the ticket waits (a party's, once every member has queued).
        Queued {
            /// Echoed request id.
            req: u32,
            /// The ticket's id, the same for every member of a party.
            ticket: u64,
        },
        /// Pushed: the ticket matched, and this player is a member of `room` already (a
        /// room made for the match with the queue's room options; its host is
        /// `players[0]`).
        Matched {
            /// The ticket.
            ticket: u64,
            /// The room's name (`#` and its code).
            room: String,
            /// Its code.
            code: String,
            /// Every player of the match, the host first (the oldest ticket's leader).
            players: Vec<PlayerInfo>,
        },
        /// Pushed: the ticket ended without a match.
        Unqueued {
            /// The ticket.
            ticket: u64,
            /// Why.
            reason: UnqueueReason,
            /// The player id of the party member who cancelled or disconnected; empty
            /// otherwise.
            player: String,
        },
        /// Answer to `Cancel`: the ticket is out of its queue.
        Cancelled {
            /// Echoed request id.
            req: u32,
            /// The ticket.
            ticket: u64,
        },
        /// Pushed: the server is draining (docs/OPERATIONS.md): leave, and reconnect
        /// (through the load balancer, to another node) after `reconnect_after_ms`. The
        /// connection works until then; the server closes it with 1001 at its drain's end.
        Draining {
            /// How long to wait before reconnecting, chosen at random per client so that
            /// clients do not all come back at once.
            reconnect_after_ms: u32,
        },
    }
}

/// Error codes carried by `ServerFrame::Error`. Stable: clients match on the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The bytes are not a valid frame (bad rkyv data, unknown frame). The connection closes (1007).
    InvalidFrame = 1,
    /// A text message was sent on `/ws`. The connection closes (1003).
    TextFrame = 2,
    /// `Hello.version` is not supported. The connection closes.
    UnsupportedVersion = 3,
    /// A frame other than `Hello` came first, or `Hello` came twice.
    NotWelcomed = 4,
    /// The token was rejected (missing when required, bad, expired), or a `Refresh` was.
    /// On `Hello` or expiry the connection closes (1008); on `Refresh` it goes on.
    Unauthorized = 5,
    /// `Send` or `Leave` names a room the connection is not in (or that does not exist).
    NotMember = 10,
    /// A room or event name is empty or longer than the configured limit.
    InvalidName = 11,
    /// The connection is already in the maximum number of rooms.
    TooManyRooms = 12,
    /// The server is shutting down; reconnect elsewhere.
    ShuttingDown = 13,
    /// The event name is reserved (by socket.io client libraries or by the server's own
    /// events); nothing was sent. Use another name.
    ReservedName = 14,
    /// The message is larger than a recipient's outbound budget; nothing was sent. Send
    /// it in smaller parts.
    TooBig = 15,
    /// The room has `max_room_members` members; the join was refused.
    RoomFull = 16,
    /// The connection is past one of its rate limits (messages, bytes or joins per
    /// second); the request was not carried out. Slow down: a client refused without
    /// pause for `rate_limits.sustained_ms` is closed (1008 `rate limited`).
    RateLimited = 17,
    /// An authorization hook or an `[[auth.rooms]]` rule refused the request (the message
    /// says why); nothing was carried out. On `Hello` the connection closes (1008); on a
    /// `Join` or `Send` it goes on, and nobody else is affected.
    Forbidden = 18,
    /// `Resume` could not take the session back: it expired (resume window), never
    /// existed, or the secret is wrong (the server does not say which). The connection
    /// stays open: send `Hello` for a fresh session and join the rooms again.
    CannotResume = 19,
    /// Only the room's host may do that (`Host` frames); nothing changed.
    NotHost = 20,
    /// The room's host locked it: no one joins until it is unlocked.
    RoomLocked = 21,
    /// A room's state or metadata is not valid JSON (metadata: not a JSON object), or a
    /// room option is out of range; nothing changed.
    InvalidValue = 22,
    /// `Create`: a room with that code exists; choose another (or let the server pick).
    RoomExists = 23,
    /// `Queue`: this player holds a ticket already; cancel it first (or wait for its end).
    AlreadyQueued = 24,
    /// `Queue`: no queue has that name; ask for a configured one, or `default`.
    UnknownQueue = 25,
    /// `Cancel`: the ticket is not waiting (it matched, timed out or was withdrawn, or it
    /// is not this player's); nothing changed.
    NotQueued = 26,
    /// `Queue`: the queue holds `matchmaking.max_tickets_per_queue` tickets; try later.
    QueueFull = 27,
}

impl ErrorCode {
    /// The stable short name, used by socket.io acks (`{"error": name}`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::TextFrame => "text_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotWelcomed => "not_welcomed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotMember => "not_member",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::ReservedName => "reserved_name",
            ErrorCode::TooBig => "too_big",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::CannotResume => "cannot_resume",
            ErrorCode::NotHost => "not_host",
            ErrorCode::RoomLocked => "room_locked",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::AlreadyQueued => "already_queued",
            ErrorCode::UnknownQueue => "unknown_queue",
            ErrorCode::NotQueued => "not_queued",
            ErrorCode::QueueFull => "queue_full",
        }
    }

    /// Every code, by number.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::InvalidFrame,
        ErrorCode::TextFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotWelcomed,
        ErrorCode::Unauthorized,
        ErrorCode::NotMember,
        ErrorCode::InvalidName,
        ErrorCode::TooManyRooms,
        ErrorCode::ShuttingDown,
        ErrorCode::ReservedName,
        ErrorCode::TooBig,
        ErrorCode::RoomFull,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::CannotResume,
        ErrorCode::NotHost,
        ErrorCode::RoomLocked,
        ErrorCode::InvalidValue,
        ErrorCode::RoomExists,
        ErrorCode::AlreadyQueued,
        ErrorCode::UnknownQueue,
        ErrorCode::NotQueued,
        ErrorCode::QueueFull,
    ];

    /// Looks a code up by its name (`room_full`).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Looks a code up by number.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::InvalidFrame,
            2 => ErrorCode::TextFrame,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::NotWelcomed,
            5 => ErrorCode::Unauthorized,
            10 => ErrorCode::NotMember,
            11 => ErrorCode::InvalidName,
            12 => ErrorCode::TooManyRooms,
            13 => ErrorCode::ShuttingDown,
            14 => ErrorCode::ReservedName,
            15 => ErrorCode::TooBig,
            16 => ErrorCode::RoomFull,
            17 => ErrorCode::RateLimited,
            18 => ErrorCode::Forbidden,
            19 => ErrorCode::CannotResume,
            20 => ErrorCode::NotHost,
            21 => ErrorCode::RoomLocked,
            22 => ErrorCode::InvalidValue,
            23 => ErrorCode::RoomExists,
            24 => ErrorCode::AlreadyQueued,
            25 => ErrorCode::UnknownQueue,
            26 => ErrorCode::NotQueued,
            27 => ErrorCode::QueueFull,
            _ => return None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes failed validation. The peer is broken or hostile: answer with an Error
    /// frame (`InvalidFrame`) and close the connection with 1007.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Validates `bytes` as a client frame and returns a view of it, read in place.
pub fn access_client(bytes: &[u8]) -> Result<&ArchivedClientFrame, DecodeError> {
    rkyv::access::<ArchivedClientFrame, rancor::Error>(bytes)
        .map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Validates `bytes` as a server frame and returns a view of it, read in place.
pub fn access_server(bytes: &[u8]) -> Result<&ArchivedServerFrame, DecodeError> {
    rkyv::access::<ArchivedServerFrame, rancor::Error>(bytes)
        .map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Encodes a client frame into the body of a WebSocket binary message.
pub fn encode_client(frame: &ClientFrame) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail: the only errors rkyv reports are
    // allocation failures (which abort) and shared-pointer cycles (none in these types).
    rkyv::to_bytes::<rancor::Error>(frame)
        .map(|v| v.into_vec())
        .expect("serializing a ClientFrame cannot fail")
}

/// Encodes a server frame into the body of a WebSocket binary message.
pub fn encode_server(frame: &ServerFrame) -> Vec<u8> {
    encode_server_after(frame, Vec::new())
}

/// Encodes a server frame after whatever `prefix` already holds, so that a caller can reserve
/// room for a WebSocket header and build the whole outgoing frame in one allocation. All rkyv
/// pointers are relative and the format is unaligned, so the frame is valid from
/// `prefix.len()` on.
pub fn encode_server_after(frame: &ServerFrame, prefix: Vec<u8>) -> Vec<u8> {
    // See encode_client for why this cannot fail.
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, prefix)
        .expect("serializing a ServerFrame cannot fail")
}

/// Copies an archived string out; used off the hot path (names are short).
pub fn owned(s: &rkyv::string::ArchivedString) -> String {
    s.as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn roundtrip_client(frame: ClientFrame) {
        let bytes = encode_client(&frame);
        let archived = access_client(&bytes).expect("valid");
        let back: ClientFrame =
            rkyv::deserialize::<ClientFrame, rancor::Error>(archived).expect("deserialize");
        assert_eq!(back, frame);
    }

    #[test]
    fn client_frames_roundtrip() {
        roundtrip_client(ClientFrame::Hello {
            req: 1,
            version: PROTOCOL_VERSION,
            token: Some("t".into()),
        });
        roundtrip_client(ClientFrame::Join {
            req: 2,
            room: "lobby".into(),
        });
        roundtrip_client(ClientFrame::Leave {
            req: 3,
            room: "lobby".into(),
        });
        roundtrip_client(ClientFrame::Send {
            req: 0,
            room: "lobby".into(),
            event: "move".into(),
            payload: Bytes::from_static(b"\x00\x01\x02"),
            kind: PayloadKind::Binary,
        });
        roundtrip_client(ClientFrame::Ping { req: 4, t: 99 });
        roundtrip_client(ClientFrame::Refresh {
            req: 5,
            token: "a.b.c".into(),
        });
        roundtrip_client(ClientFrame::Resume {
            req: 6,
            session: 1 << 40,
            secret: "0123456789abcdef0123456789abcdef".into(),
            rooms: vec![
                RoomSeq {
                    room: "lobby".into(),
                    seq: 17,
                },
                RoomSeq {
                    room: "a-long-room-name".into(),
                    seq: u64::MAX,
                },
            ],
        });
    }

    #[test]
    fn roots_keep_their_documented_sizes() {
        // docs/PROTOCOL.md gives every field's offset in these roots; a frame that grew one
        // would move the end of every message a client writes or reads.
        assert_eq!(std::mem::size_of::<ArchivedClientFrame>(), 30);
        assert_eq!(std::mem::size_of::<ArchivedServerFrame>(), 42);
    }

    /// The offsets docs/PROTOCOL.md gives for the matchmaking and drain frames, read from real
    /// encodings.
    #[test]
    fn matchmaking_and_drain_frames_have_their_documented_layout() {
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let bytes = encode_client(&ClientFrame::Queue {
            req: 0x0102_0304,
            ticket: Box::new(TicketSpec {
                queue: "q".into(),
                skill: 1.5,
                region: "eu".into(),
                properties: vec![],
                party: vec![],
            }),
        });
        let root = bytes.len() - 30;
        assert_eq!(bytes[root], 10, "Queue is tag 10");
        assert_eq!(le32(&bytes, root + 1), 0x0102_0304);
        // @5: an i32 offset from the field itself to the 40-byte TicketSpec.
        let spec = (root as i64 + 5 + i64::from(le32(&bytes, root + 5) as i32)) as usize;
        assert_eq!(&bytes[spec..spec + 2], b"q\xff");
        assert_eq!(
            f64::from_le_bytes(bytes[spec + 8..spec + 16].try_into().unwrap()),
            1.5
        );
        assert_eq!(&bytes[spec + 16..spec + 19], b"eu\xff");
        assert_eq!(le32(&bytes, spec + 28), 0, "no properties");
        assert_eq!(le32(&bytes, spec + 36), 0, "no party");
        assert_eq!(spec + 40, root, "the spec lies just before the root");
        let bytes = encode_client(&ClientFrame::Cancel { req: 9, ticket: 77 });
        let root = bytes.len() - 30;
        assert_eq!(
            (bytes[root], le32(&bytes, root + 1), le64(&bytes, root + 5)),
            (11, 9, 77)
        );

        let server = |frame: &ServerFrame| {
            let bytes = encode_server(frame);
            let root = bytes.len() - 42;
            (bytes, root)
        };
        let (b, r) = server(&ServerFrame::Queued { req: 3, ticket: 5 });
        assert_eq!((b[r], le32(&b, r + 1), le64(&b, r + 5)), (17, 3, 5));
        let (b, r) = server(&ServerFrame::Matched {
            ticket: 6,
            room: "#ABCDEF".into(),
            code: "ABCDEF".into(),
            players: vec![],
        });
        assert_eq!((b[r], le64(&b, r + 1)), (18, 6));
        assert_eq!(&b[r + 9..r + 17], b"#ABCDEF\xff");
        assert_eq!(&b[r + 17..r + 24], b"ABCDEF\xff");
        assert_eq!(le32(&b, r + 29), 0, "no players");
        let (b, r) = server(&ServerFrame::Unqueued {
            ticket: 7,
            reason: UnqueueReason::Disconnected,
            player: "ann".into(),
        });
        assert_eq!((b[r], le64(&b, r + 1), b[r + 9]), (19, 7, 2));
        assert_eq!(&b[r + 10..r + 14], b"ann\xff");
        let (b, r) = server(&ServerFrame::Cancelled { req: 4, ticket: 8 });
        assert_eq!((b[r], le32(&b, r + 1), le64(&b, r + 5)), (20, 4, 8));
        let (b, r) = server(&ServerFrame::Draining {
            reconnect_after_ms: 1234,
        });
        assert_eq!((b[r], le32(&b, r + 1)), (21, 1234));
    }

    #[test]
    fn matchmaking_frames_roundtrip() {
        roundtrip_client(ClientFrame::Queue {
            req: 7,
            ticket: Box::new(TicketSpec {
                queue: "ranked".into(),
                skill: -12.5,
                region: "eu".into(),
                properties: vec![Property {
                    name: "mode".into(),
                    value: "capture-the-flag".into(),
                }],
                party: vec!["ann".into(), "a-longer-player-id".into()],
            }),
        });
        roundtrip_client(ClientFrame::Cancel {
            req: 8,
            ticket: 1 << 40,
        });
    }

    #[test]
    fn server_frame_after_prefix_is_readable_in_place() {
        let frame = ServerFrame::Event {
            room: "r".into(),
            from: "7".into(),
            event: "e".into(),
            payload: Bytes::from_static(b"{}"),
            kind: PayloadKind::Json,
            seq: 0,
        };
        let bytes = encode_server_after(&frame, vec![0xAA; 10]);
        match access_server(&bytes[10..]).expect("valid") {
            ArchivedServerFrame::Event {
                room,
                from,
                payload,
                kind,
                ..
            } => {
                assert_eq!(room.as_str(), "r");
                assert_eq!(from.as_str(), "7");
                assert_eq!(payload.as_slice(), b"{}");
                assert_eq!(PayloadKind::from(kind), PayloadKind::Json);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn misaligned_buffers_are_read_in_place() {
        let bytes = encode_client(&ClientFrame::Ping { req: 1, t: 2 });
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&bytes);
        assert!(access_client(&shifted[1..]).is_ok());
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let valid = encode_client(&ClientFrame::Join {
            req: 9,
            room: "some-room".into(),
        });
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = if i % 2 == 0 {
                valid.clone()
            } else {
                vec![0; (seed % 64) as usize]
            };
            if !bytes.is_empty() {
                let at = (seed >> 8) as usize % bytes.len();
                bytes[at] = (seed >> 16) as u8;
            }
            let _ = access_client(&bytes);
            let _ = access_server(&bytes);
        }
        assert!(access_client(b"").is_err());
        assert!(access_client(&[0xFF; 3]).is_err());
    }

    #[test]
    fn error_codes_are_stable() {
        for code in 0..100u16 {
            if let Some(c) = ErrorCode::from_code(code) {
                assert_eq!(c as u16, code);
                assert!(!c.name().is_empty());
            }
        }
        assert_eq!(ErrorCode::NotMember as u16, 10);
        // `ALL` lists every code, each once, by number.
        let numbered: Vec<ErrorCode> = (0..100).filter_map(ErrorCode::from_code).collect();
        assert_eq!(numbered, ErrorCode::ALL);
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(18), Some(ErrorCode::Forbidden));
    }
}
