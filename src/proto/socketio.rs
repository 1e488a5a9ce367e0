//! Socket.IO protocol v5, sans-IO: the packets carried inside Engine.IO `message` packets.
//!
//! The reference is the Readme of `socketio/socket.io-protocol` (5th version). A packet is
//!
//! ```text
//! <type digit>[<attachment count>-][<namespace>,][<ack id>][<JSON data>]
//! ```
//!
//! followed, for `BINARY_EVENT` and `BINARY_ACK`, by that many binary Engine.IO messages.
//! The JSON data holds a placeholder `{"_placeholder":true,"num":i}` where the sender had
//! its `i`-th binary buffer.
//!
//! Binary data is kept the way it travels: [`Packet::data`] is the JSON with its
//! placeholders, and [`Packet::attachments`] holds the buffers, `attachments[i]` being
//! the buffer of placeholder `i`. [`Packet::resolve`] and [`Packet::args`] turn a value into
//! an [`ArgRef`], JSON or binary, without rebuilding the tree; a relay forwards buffers
//! without ever copying them into JSON.
//!
//! Decoding text goes through [`BinaryAssembler`] on a connection, which waits for the
//! attachments of a binary packet and bounds their number. Encoding has a general path
//! ([`Packet::encode`]) and a fast path for the relay's `emit(event, payload, from)`
//! ([`encode_relay_event`]) that splices an already encoded JSON payload in verbatim, once
//! per broadcast. Decoders never panic and allocate at most in proportion to their input
//! (plus the attachment limit); a decode error means the peer is broken or hostile, and the
//! spec says the connection is then closed.

use std::fmt::{self, Write as _};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::proto::engineio;

/// The main namespace, the default when a packet names none.
pub const MAIN_NAMESPACE: &str = "/";

/// Event names the reference implementation reserves for itself; a peer may not emit them.
/// The official clients refuse them too: an event under one of these names makes a client
/// drop its connection with a parse error, so no server may emit them either.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The events corelay itself emits to socket.io clients: room notices (`member_joined`,
/// `member_left`, see docs/SOCKETIO.md) and error answers (`error`). A client relaying an
/// event under one of them could pass itself off as the server.
pub const SERVER_EVENTS: [&str; 5] = [
    "member_joined",
    "member_left",
    "member_away",
    "member_back",
    "error",
];

/// Whether a client may not relay an event named `name` to others, on either protocol:
/// a name of [`RESERVED_EVENTS`] (it would disconnect every socket.io client that receives
/// it) or of [`SERVER_EVENTS`] (it would forge the server's own notices). The relay refuses
/// such an event to its sender (`reserved_name`).
pub fn is_reserved_for_relay(name: &str) -> bool {
    RESERVED_EVENTS.contains(&name)
        || SERVER_EVENTS.contains(&name)
        || SERVER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Prefixes of the server's game-service vocabulary (`room:host`, and the rest of the room
/// and matchmaking events, docs/ROOMS.md): no member may relay an event that looks like one.
pub const SERVER_PREFIXES: [&str; 2] = ["room:", "mm:"];

/// The kind of a Socket.IO packet, sent as one ASCII digit first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: connect to a namespace (client, optional auth object) or accept it (server,
    /// `{"sid":..}`).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event, data `[name, args..]`, with an ack id when the sender wants an answer.
    Event,
    /// `3`: the answer to an event, data `[args..]`, with the event's ack id.
    Ack,
    /// `4`: the server refuses a namespace connection, data `{"message":..}`.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketType {
    /// All packet types, in the order of their wire digit.
    pub const ALL: [PacketType; 7] = [
        PacketType::Connect,
        PacketType::Disconnect,
        PacketType::Event,
        PacketType::Ack,
        PacketType::ConnectError,
        PacketType::BinaryEvent,
        PacketType::BinaryAck,
    ];

    /// The packet type whose wire digit is `byte` (`b'0'..=b'6'`), if any.
    pub fn from_ascii(byte: u8) -> Option<PacketType> {
        let index = byte.checked_sub(b'0')?;
        Self::ALL.get(usize::from(index)).copied()
    }

    /// The wire digit of this type (`'0'..='6'`).
    pub fn as_char(self) -> char {
        match self {
            PacketType::Connect => '0',
            PacketType::Disconnect => '1',
            PacketType::Event => '2',
            PacketType::Ack => '3',
            PacketType::ConnectError => '4',
            PacketType::BinaryEvent => '5',
            PacketType::BinaryAck => '6',
        }
    }

    /// Whether packets of this type carry an attachment count and binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            PacketType::Connect => "CONNECT",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Event => "EVENT",
            PacketType::Ack => "ACK",
            PacketType::ConnectError => "CONNECT_ERROR",
            PacketType::BinaryEvent => "BINARY_EVENT",
            PacketType::BinaryAck => "BINARY_ACK",
        };
        f.write_str(name)
    }
}

/// Why a Socket.IO packet, or a sequence of them, is invalid. Every variant means the same
/// thing to the caller: the peer broke the protocol, close its connection (the spec asks
/// for it), and count it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An empty message. Close the connection.
    #[error("empty socket.io packet")]
    EmptyPacket,
    /// The first byte is not a type digit `0`..`6`. Close the connection.
    #[error("unknown socket.io packet type byte {0:#04x}")]
    UnknownPacketType(u8),
    /// A binary packet without `<digits>-`, or a count too large to represent. Close the
    /// connection.
    #[error("invalid attachment count")]
    InvalidAttachmentCount,
    /// A binary packet announces more attachments than the connection allows. Close the
    /// connection (the limit guards memory, see [`BinaryAssembler::new`]).
    #[error("{count} attachments announced, at most {max} allowed")]
    TooManyAttachments {
        /// The count the packet announced.
        count: usize,
        /// The connection's limit.
        max: usize,
    },
    /// A namespace holding a control character (it could not be echoed safely, e.g. in a
    /// long-polling body). Close the connection.
    #[error("invalid namespace")]
    InvalidNamespace,
    /// An ack id too large for 64 bits. Close the connection.
    #[error("invalid ack id")]
    InvalidAckId,
    /// The data after the header is not JSON (this covers garbage such as `2abc[..]`).
    /// Close the connection.
    #[error("invalid JSON data: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The data has the wrong shape for the packet type (an event that is not a non-empty
    /// array starting with a name, an ack that is not an array, ...). Close the connection.
    #[error("invalid {packet_type} payload: {reason}")]
    InvalidPayload {
        /// The packet's type.
        packet_type: PacketType,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An event named after one of [`RESERVED_EVENTS`]. Close the connection.
    #[error("reserved event name")]
    ReservedEventName,
    /// A binary placeholder whose `num` is not an index below the attachment count. Close
    /// the connection.
    #[error("invalid binary placeholder")]
    InvalidPlaceholder,
    /// The attachments of one packet add up to more bytes than the connection allows.
    /// Close the connection (the limit guards memory, see [`BinaryAssembler::new`]).
    #[error("attachments of more than {max} bytes in one packet")]
    AttachmentsTooLarge {
        /// The connection's limit, in bytes.
        max: usize,
    },
    /// A binary message arrived while no binary packet waited for attachments. Close the
    /// connection.
    #[error("binary message without a binary packet waiting for it")]
    UnexpectedBinary,
    /// A text message arrived while a binary packet still waited for attachments. Close the
    /// connection.
    #[error("text message while binary attachments were expected")]
    UnexpectedText,
}

/// One Socket.IO packet, owned, with its binary attachments.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The kind of packet. Binary types carry `attachments.len()` attachments on the wire.
    pub packet_type: PacketType,
    /// The namespace, `"/"` for the main one; it always starts with `/`.
    pub nsp: String,
    /// The acknowledgement id: on an event, the sender wants an ack with this id; on an ack,
    /// the event it answers.
    pub ack_id: Option<u64>,
    /// The JSON data, with placeholders where binary buffers were. `None` when absent (a
    /// plain `CONNECT` or `DISCONNECT`).
    pub data: Option<Value>,
    /// The binary buffers, `attachments[i]` for placeholder `i`. Empty for non-binary types.
    pub attachments: Vec<Bytes>,
}

/// The result of decoding the text of one Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The packet is whole.
    Complete(Packet),
    /// A binary packet whose `count` (at least 1) attachments follow as binary messages;
    /// [`BinaryAssembler`] collects them.
    NeedsAttachments {
        /// The packet, with no attachments yet.
        packet: Packet,
        /// How many binary messages complete it.
        count: usize,
    },
}

/// An argument to encode: JSON, or a binary buffer that travels as an attachment.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Any JSON value (a value with binary inside can be built with [`placeholder`] and
    /// [`Packet::attachments`] directly).
    Json(Value),
    /// A binary buffer (a `Buffer` or `ArrayBuffer` on the JavaScript side).
    Binary(Bytes),
    /// JSON with binary buffers inside (e.g. `{"frame": <Buffer>}`): each buffer is a
    /// placeholder numbered from 0 into `attachments`.
    Tree {
        /// The JSON, with placeholders `{"_placeholder":true,"num":i}`.
        value: Value,
        /// The buffers, `attachments[i]` for placeholder `i`.
        attachments: Vec<Bytes>,
    },
}

impl Arg {
    /// The argument as plain JSON, buffers as base64 strings (for peers without binary).
    pub fn to_plain_json(&self) -> Value {
        match self {
            Arg::Json(v) => v.clone(),
            Arg::Binary(b) => Value::String(base64(b)),
            Arg::Tree { value, attachments } => {
                let mut v = value.clone();
                replace_placeholders(&mut v, &mut |i| {
                    attachments.get(i).map(|b| Value::String(base64(b)))
                });
                v
            }
        }
    }
}

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    engineio::encode_base64_into(data, &mut out);
    out
}

/// Replaces every placeholder inside `value` (at any depth) by what `with` returns for its
/// number; placeholders for which it returns `None` stay.
fn replace_placeholders(value: &mut Value, with: &mut impl FnMut(usize) -> Option<Value>) {
    if let Some(i) = placeholder_index(value) {
        if let Some(new) = with(i) {
            *value = new;
        }
        return;
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| replace_placeholders(v, with)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_placeholders(v, with)),
        _ => {}
    }
}

impl From<Value> for Arg {
    fn from(value: Value) -> Self {
        Arg::Json(value)
    }
}

impl From<Bytes> for Arg {
    fn from(bytes: Bytes) -> Self {
        Arg::Binary(bytes)
    }
}

/// A decoded argument: JSON, or the binary buffer its placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgRef<'a> {
    /// A JSON value (which may hold placeholders deeper inside: resolve them with
    /// [`Packet::resolve`] while walking it).
    Json(&'a Value),
    /// A binary attachment.
    Binary(&'a Bytes),
}

/// The placeholder JSON for attachment `num`: `{"_placeholder":true,"num":num}`.
pub fn placeholder(num: usize) -> Value {
    let mut object = serde_json::Map::with_capacity(2);
    object.insert("_placeholder".to_owned(), Value::Bool(true));
    object.insert("num".to_owned(), Value::from(num));
    Value::Object(object)
}

/// Whether `value` is a placeholder (an object with `"_placeholder": true`, as the
/// reference parser decides); `Some(Some(i))` when its `num` is an index `i`, `Some(None)`
/// when it is a placeholder with an unusable `num`.
fn placeholder_num(value: &Value) -> Option<Option<usize>> {
    let object = value.as_object()?;
    if object.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    let num = object.get("num").and_then(Value::as_u64);
    Some(num.and_then(|num| usize::try_from(num).ok()))
}

/// The attachment index of a placeholder value, `None` for any other value.
pub fn placeholder_index(value: &Value) -> Option<usize> {
    placeholder_num(value).flatten()
}

impl Packet {
    /// A `CONNECT` packet: a client's request (optional auth object) or the server's
    /// acceptance (`{"sid": ..}`).
    pub fn connect(nsp: &str, data: Option<Value>) -> Self {
        Self::new(PacketType::Connect, nsp, data)
    }

    /// A `CONNECT_ERROR` packet, data `{"message": message}`.
    pub fn connect_error(nsp: &str, message: &str) -> Self {
        let mut object = serde_json::Map::with_capacity(1);
        object.insert("message".to_owned(), Value::String(message.to_owned()));
        Self::new(PacketType::ConnectError, nsp, Some(Value::Object(object)))
    }

    /// A `DISCONNECT` packet.
    pub fn disconnect(nsp: &str) -> Self {
        Self::new(PacketType::Disconnect, nsp, None)
    }

    /// An event `[event, args..]`; a `BINARY_EVENT` when some argument is binary, with a
    /// placeholder in its place. Ask for an ack with [`Packet::with_ack_id`].
    pub fn event(nsp: &str, event: &str, args: impl IntoIterator<Item = Arg>) -> Self {
        let mut items = vec![Value::String(event.to_owned())];
        let attachments = push_args(args, &mut items);
        let packet_type = if attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        Packet {
            attachments,
            ..Self::new(packet_type, nsp, Some(Value::Array(items)))
        }
    }

    /// An ack `[args..]` answering the event with `ack_id`; a `BINARY_ACK` when some
    /// argument is binary.
    pub fn ack(nsp: &str, ack_id: u64, args: impl IntoIterator<Item = Arg>) -> Self {
        let mut items = Vec::new();
        let attachments = push_args(args, &mut items);
        let packet_type = if attachments.is_empty() {
            PacketType::Ack
        } else {
            PacketType::BinaryAck
        };
        Packet {
            attachments,
            ..Self::new(packet_type, nsp, Some(Value::Array(items))).with_ack_id(ack_id)
        }
    }

    /// This packet with an ack id.
    pub fn with_ack_id(mut self, ack_id: u64) -> Self {
        self.ack_id = Some(ack_id);
        self
    }

    fn new(packet_type: PacketType, nsp: &str, data: Option<Value>) -> Self {
        Packet {
            packet_type,
            nsp: nsp.to_owned(),
            ack_id: None,
            data,
            attachments: Vec::new(),
        }
    }

    /// Decodes the text of one Socket.IO packet (the data of an Engine.IO `message`, without
    /// its `4`), validating it as the spec asks: an event's data is a non-empty array led
    /// by a name that is not reserved, an ack's data an array, a `CONNECT`'s or
    /// `CONNECT_ERROR`'s data (if any) an object, a `DISCONNECT` has none, and a binary
    /// packet has an attachment count that every placeholder respects.
    ///
    /// On a connection, prefer [`BinaryAssembler::push_text`], which also enforces the
    /// attachment limit.
    pub fn decode(text: &str) -> Result<Decoded, DecodeError> {
        let bytes = text.as_bytes();
        let first = *bytes.first().ok_or(DecodeError::EmptyPacket)?;
        let packet_type =
            PacketType::from_ascii(first).ok_or(DecodeError::UnknownPacketType(first))?;
        // Every index below moves past ASCII bytes only, so each is a char boundary.
        let mut pos = 1;

        let mut count = 0usize;
        if packet_type.is_binary() {
            let digits = leading_digits(&bytes[pos..]);
            if digits == 0 || bytes.get(pos + digits) != Some(&b'-') {
                return Err(DecodeError::InvalidAttachmentCount);
            }
            count = parse_decimal(&bytes[pos..pos + digits])
                .and_then(|count| usize::try_from(count).ok())
                .ok_or(DecodeError::InvalidAttachmentCount)?;
            pos += digits + 1;
        }

        let mut nsp = MAIN_NAMESPACE;
        if bytes.get(pos) == Some(&b'/') {
            // The namespace runs to the comma, or to the end of a packet with nothing else.
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b',')
                .map_or(bytes.len(), |offset| pos + offset);
            nsp = &text[pos..end];
            if nsp.chars().any(char::is_control) {
                return Err(DecodeError::InvalidNamespace);
            }
            pos = (end + 1).min(bytes.len());
        }

        let digits = leading_digits(&bytes[pos..]);
        let mut ack_id = None;
        if digits > 0 {
            let id = parse_decimal(&bytes[pos..pos + digits]).ok_or(DecodeError::InvalidAckId)?;
            ack_id = Some(id);
            pos += digits;
        }

        let rest = &text[pos..];
        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(DecodeError::InvalidJson)?)
        };
        validate_data(packet_type, data.as_ref())?;
        if packet_type.is_binary() {
            if let Some(data) = &data {
                check_placeholders(data, count)?;
            }
        }

        let packet = Packet {
            packet_type,
            nsp: nsp.to_owned(),
            ack_id,
            data,
            attachments: Vec::new(),
        };
        Ok(if count == 0 {
            Decoded::Complete(packet)
        } else {
            Decoded::NeedsAttachments { packet, count }
        })
    }

    /// The event name of an `EVENT` or `BINARY_EVENT`.
    pub fn event_name(&self) -> Option<&str> {
        match (self.packet_type, &self.data) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(items))) => {
                items.first()?.as_str()
            }
            _ => None,
        }
    }

    /// The arguments of an event (after its name) or of an ack, placeholders resolved at
    /// the top level; nothing for other types.
    pub fn args(&self) -> impl Iterator<Item = ArgRef<'_>> {
        let items: &[Value] = match (self.packet_type, &self.data) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(items))) => {
                items.get(1..).unwrap_or_default()
            }
            (PacketType::Ack | PacketType::BinaryAck, Some(Value::Array(items))) => items,
            _ => &[],
        };
        items.iter().map(|value| self.resolve(value))
    }

    /// The arguments as owned values: a top-level buffer as [`Arg::Binary`], JSON with
    /// buffers inside as [`Arg::Tree`] (placeholders renumbered into its own attachments),
    /// anything else as [`Arg::Json`].
    pub fn owned_args(&self) -> Vec<Arg> {
        self.args()
            .map(|arg| match arg {
                ArgRef::Binary(b) => Arg::Binary(b.clone()),
                ArgRef::Json(v) if self.attachments.is_empty() => Arg::Json(v.clone()),
                ArgRef::Json(v) => {
                    let mut value = v.clone();
                    let mut own = Vec::new();
                    replace_placeholders(&mut value, &mut |i| {
                        let bytes = self.attachments.get(i)?;
                        own.push(bytes.clone());
                        Some(placeholder(own.len() - 1))
                    });
                    if own.is_empty() {
                        Arg::Json(value)
                    } else {
                        Arg::Tree {
                            value,
                            attachments: own,
                        }
                    }
                }
            })
            .collect()
    }

    /// `value` as an argument: the attachment its placeholder stands for, or JSON. A
    /// packet without attachments resolves everything to JSON, so a placeholder-looking
    /// object in a plain `EVENT` stays the JSON the peer sent.
    pub fn resolve<'p>(&'p self, value: &'p Value) -> ArgRef<'p> {
        match placeholder_index(value).and_then(|num| self.attachments.get(num)) {
            Some(bytes) => ArgRef::Binary(bytes),
            None => ArgRef::Json(value),
        }
    }

    /// Encodes the packet's text (without the Engine.IO `4`). A binary type announces
    /// `attachments.len()` attachments, which the caller sends next, in order, as binary
    /// Engine.IO messages.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// Encodes the packet as the text of an Engine.IO `message` (`4` + [`Packet::encode`]),
    /// ready for a WebSocket text frame or a long-polling body.
    pub fn encode_engineio(&self) -> String {
        let mut out = String::from(engineio::PacketType::Message.as_char());
        self.encode_into(&mut out);
        out
    }

    /// Appends the packet's text to `out`.
    pub fn encode_into(&self, out: &mut String) {
        out.push(self.packet_type.as_char());
        if self.packet_type.is_binary() {
            push_display(out, self.attachments.len());
            out.push('-');
        }
        push_namespace(out, &self.nsp);
        if let Some(ack_id) = self.ack_id {
            push_display(out, ack_id);
        }
        if let Some(data) = &self.data {
            // Value's Display is its compact JSON.
            push_display(out, data);
        }
    }
}

/// Moves `args` into `items`, replacing each binary argument with a placeholder, and
/// returns the binary buffers in placeholder order.
fn push_args(args: impl IntoIterator<Item = Arg>, items: &mut Vec<Value>) -> Vec<Bytes> {
    let mut attachments = Vec::new();
    for arg in args {
        match arg {
            Arg::Json(value) => items.push(value),
            Arg::Binary(bytes) => {
                items.push(placeholder(attachments.len()));
                attachments.push(bytes);
            }
            Arg::Tree {
                mut value,
                attachments: own,
            } => {
                let offset = attachments.len();
                replace_placeholders(&mut value, &mut |i| Some(placeholder(offset + i)));
                items.push(value);
                attachments.extend(own);
            }
        }
    }
    attachments
}

fn leading_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Parses ASCII digits, `None` on overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn validate_data(packet_type: PacketType, data: Option<&Value>) -> Result<(), DecodeError> {
    let invalid = |reason| DecodeError::InvalidPayload {
        packet_type,
        reason,
    };
    match packet_type {
        PacketType::Connect | PacketType::ConnectError => match data {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => Err(invalid("data must be an object")),
        },
        PacketType::Disconnect => match data {
            None => Ok(()),
            Some(_) => Err(invalid("data must be absent")),
        },
        PacketType::Event | PacketType::BinaryEvent => {
            let Some(Value::Array(items)) = data else {
                return Err(invalid("data must be an array"));
            };
            let Some(first) = items.first() else {
                return Err(invalid("data must not be empty"));
            };
            let Some(name) = first.as_str() else {
                return Err(invalid("the event name must be a string"));
            };
            if RESERVED_EVENTS.contains(&name) {
                return Err(DecodeError::ReservedEventName);
            }
            Ok(())
        }
        PacketType::Ack | PacketType::BinaryAck => match data {
            Some(Value::Array(_)) => Ok(()),
            _ => Err(invalid("data must be an array")),
        },
    }
}

/// Checks that every placeholder in `value` names an attachment below `count`. The
/// recursion is bounded: serde_json refuses to parse JSON nested deeper than 128 levels.
fn check_placeholders(value: &Value, count: usize) -> Result<(), DecodeError> {
    if let Some(num) = placeholder_num(value) {
        return match num {
            Some(num) if num < count => Ok(()),
            _ => Err(DecodeError::InvalidPlaceholder),
        };
    }
    match value {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_placeholders(item, count)),
        Value::Object(object) => object
            .values()
            .try_for_each(|item| check_placeholders(item, count)),
        _ => Ok(()),
    }
}

/// Turns one connection's incoming Engine.IO messages into whole Socket.IO packets,
/// collecting the binary attachments that follow a binary packet.
///
/// Feed every text message to [`push_text`](Self::push_text) and every binary message to
/// [`push_binary`](Self::push_binary), in arrival order; each returns a packet once one is
/// whole. After an error, close the connection: the assembler's state is reset but the
/// stream is no longer trustworthy.
///
/// The assembler has no clock: the caller gives each packet the deadline by which its
/// attachments must have come, and checks [`deadline`](Self::deadline) itself.
#[derive(Debug)]
pub struct BinaryAssembler {
    max_attachments: usize,
    max_bytes: usize,
    /// Boxed: rare, and kept out of every session's size.
    pending: Option<Box<Pending>>,
}

#[derive(Debug)]
struct Pending {
    packet: Packet,
    count: usize,
    /// Bytes of the attachments received so far.
    bytes: usize,
    /// Bytes of the text that announced them.
    text_len: usize,
    /// When the caller gives up waiting for the attachments.
    deadline: Instant,
}

impl BinaryAssembler {
    /// An assembler accepting at most `max_attachments` attachments per packet, of at most
    /// `max_bytes` together. The limits bound what a peer can make the server hold before a
    /// packet is whole. The official clients send one attachment per binary argument, so a
    /// small count (say 10) serves real games; a byte bound equal to the transport's message
    /// size limit keeps a pending packet from costing more than one message may.
    pub fn new(max_attachments: usize, max_bytes: usize) -> Self {
        BinaryAssembler {
            max_attachments,
            max_bytes,
            pending: None,
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// The deadline of the packet waiting for attachments, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|pending| pending.deadline)
    }

    /// Feeds the text of an Engine.IO `message`; returns the packet if it is whole. A
    /// binary packet waits for its attachments until `deadline` (which the assembler only
    /// keeps: see [`deadline`](Self::deadline)).
    pub fn push_text(
        &mut self,
        text: &str,
        deadline: Instant,
    ) -> Result<Option<Packet>, DecodeError> {
        if self.pending.take().is_some() {
            return Err(DecodeError::UnexpectedText);
        }
        match Packet::decode(text)? {
            Decoded::Complete(packet) => Ok(Some(packet)),
            Decoded::NeedsAttachments { mut packet, count } => {
                if count > self.max_attachments {
                    return Err(DecodeError::TooManyAttachments {
                        count,
                        max: self.max_attachments,
                    });
                }
                // Bounded by the check just above.
                packet.attachments = Vec::with_capacity(count);
                self.pending = Some(Box::new(Pending {
                    packet,
                    count,
                    bytes: 0,
                    text_len: text.len(),
                    deadline,
                }));
                Ok(None)
            }
        }
    }

    /// The length of the text of the packet waiting for its attachments (0 when none
    /// waits): with the attachments, what the packet weighed on the wire.
    pub fn pending_text_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.text_len)
    }

    /// Feeds the data of a binary Engine.IO `message`; returns the packet once its last
    /// attachment arrived.
    pub fn push_binary(&mut self, data: Bytes) -> Result<Option<Packet>, DecodeError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(DecodeError::UnexpectedBinary);
        };
        pending.bytes = pending.bytes.saturating_add(data.len());
        if pending.bytes > self.max_bytes {
            self.pending = None;
            return Err(DecodeError::AttachmentsTooLarge {
                max: self.max_bytes,
            });
        }
        pending.packet.attachments.push(data);
        if pending.packet.attachments.len() < pending.count {
            return Ok(None);
        }
        Ok(self.pending.take().map(|pending| pending.packet))
    }
}

/// The payload of a relayed event, as the relay holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPayload<'a> {
    /// JSON text, inserted verbatim. It must be one valid JSON value (the relay validated
    /// it when it arrived, or encoded it itself); valid JSON never holds `\x1e`, so the
    /// result is safe in a long-polling body too.
    Json(&'a str),
    /// Binary data, sent as the packet's single attachment.
    Binary(&'a Bytes),
}

/// An event encoded once for every recipient of a broadcast.
///
/// Send [`frame`](Self::frame) as a WebSocket text frame (or append it to a long-polling
/// body with [`engineio::PayloadEncoder::push_encoded_text`]), then, if present, the
/// [`attachment`](Self::attachment) as a binary WebSocket frame (or with
/// [`engineio::PayloadEncoder::push_binary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The whole Engine.IO message text: `4` then the Socket.IO packet, e.g.
    /// `42["chat",{"text":"hi"},"p1"]` or `451-["chat",{"_placeholder":true,"num":0},"p1"]`.
    pub frame: String,
    /// The binary attachment of a `BINARY_EVENT`, `None` for a JSON payload.
    pub attachment: Option<Bytes>,
}

impl EncodedEvent {
    /// The Socket.IO packet text, without the Engine.IO `4`.
    pub fn socketio_text(&self) -> &str {
        // `frame` always starts with the one-byte ASCII digit `4`.
        self.frame.get(1..).unwrap_or_default()
    }
}

/// Encodes the relay's `emit(event, payload, from[, offset])` on namespace `nsp`: data
/// `[event, payload, from]` (and the recovery `offset` last, when given), an `EVENT` for a JSON payload (spliced in without re-parsing)
/// or a `BINARY_EVENT` with one attachment for a binary payload. Call it once per
/// broadcast and send the result to every recipient.
pub fn encode_relay_event(
    nsp: &str,
    event: &str,
    payload: RelayPayload<'_>,
    from: &str,
    offset: Option<&str>,
) -> EncodedEvent {
    const PLACEHOLDER: &str = r#"{"_placeholder":true,"num":0}"#;
    let payload_len = match payload {
        RelayPayload::Json(json) => json.len(),
        RelayPayload::Binary(_) => PLACEHOLDER.len(),
    };
    // Room for the header, the array items with quotes and a little escaping.
    let offset_len = offset.map_or(0, |o| o.len() + 3);
    let mut frame =
        String::with_capacity(16 + nsp.len() + event.len() + payload_len + from.len() + offset_len);
    frame.push(engineio::PacketType::Message.as_char());
    let attachment = match payload {
        RelayPayload::Json(_) => {
            frame.push(PacketType::Event.as_char());
            None
        }
        RelayPayload::Binary(bytes) => {
            frame.push(PacketType::BinaryEvent.as_char());
            frame.push_str("1-");
            Some(bytes.clone())
        }
    };
    push_namespace(&mut frame, nsp);
    frame.push('[');
    push_json_string(&mut frame, event);
    frame.push(',');
    match payload {
        RelayPayload::Json(json) => frame.push_str(json),
        RelayPayload::Binary(_) => frame.push_str(PLACEHOLDER),
    }
    frame.push(',');
    push_json_string(&mut frame, from);
    if let Some(offset) = offset {
        frame.push(',');
        push_json_string(&mut frame, offset);
    }
    frame.push(']');
    EncodedEvent { frame, attachment }
}

/// Writes `<nsp>,` unless `nsp` is the main namespace (the spec omits it then). A
/// namespace without its leading `/` gets one, since the decoder only recognizes a
/// namespace by it.
fn push_namespace(out: &mut String, nsp: &str) {
    if nsp.is_empty() || nsp == MAIN_NAMESPACE {
        return;
    }
    if !nsp.starts_with('/') {
        out.push('/');
    }
    out.push_str(nsp);
    out.push(',');
}

fn push_display(out: &mut String, value: impl fmt::Display) {
    // Writing into a String cannot fail, and neither can displaying an integer or a
    // serde_json Value (its keys are strings), so the result carries no information.
    let _ = write!(out, "{value}");
}

/// Appends `text` as a JSON string literal, escaped exactly as serde_json does: `"`, `\`
/// and control characters, nothing else.
fn push_json_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut clean_from = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `byte` is ASCII, so `index` and `index + 1` are char boundaries.
        out.push_str(&text[clean_from..index]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        clean_from = index + 1;
    }
    out.push_str(&text[clean_from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proto::engineio::tests::XorShift;

    /// A binary packet's text, type, namespace, ack id and attachments.
    type BinaryExample = (
        &'static str,
        PacketType,
        &'static str,
        Option<u64>,
        Vec<Bytes>,
    );

    /// Whether a decode error is the expected one.
    type ErrorCheck = fn(&DecodeError) -> bool;

    fn complete(text: &str) -> Packet {
        match Packet::decode(text) {
            Ok(Decoded::Complete(packet)) => packet,
            other => panic!("{text:?} decoded to {other:?}"),
        }
    }

    fn needs(text: &str) -> (Packet, usize) {
        match Packet::decode(text) {
            Ok(Decoded::NeedsAttachments { packet, count }) => (packet, count),
            other => panic!("{text:?} decoded to {other:?}"),
        }
    }

    fn packet(
        packet_type: PacketType,
        nsp: &str,
        data: Option<Value>,
        ack_id: Option<u64>,
    ) -> Packet {
        Packet {
            packet_type,
            nsp: nsp.to_owned(),
            ack_id,
            data,
            attachments: Vec::new(),
        }
    }

    fn bytes(data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }

    /// The spec's examples without binary: the packet and its encoding.
    fn spec_text_examples() -> Vec<(Packet, &'static str)> {
        use PacketType::*;
        vec![
            (packet(Connect, "/", None, None), "0"),
            (
                packet(
                    Connect,
                    "/",
                    Some(json!({"sid": "wZX3oN0bSVIhsaknAAAI"})),
                    None,
                ),
                r#"0{"sid":"wZX3oN0bSVIhsaknAAAI"}"#,
            ),
            (packet(Connect, "/admin", None, None), "0/admin,"),
            (
                packet(
                    Connect,
                    "/admin",
                    Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"})),
                    None,
                ),
                r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
            ),
            (
                packet(Connect, "/admin", Some(json!({"token": "123"})), None),
                r#"0/admin,{"token":"123"}"#,
            ),
            (
                packet(
                    ConnectError,
                    "/",
                    Some(json!({"message": "Not authorized"})),
                    None,
                ),
                r#"4{"message":"Not authorized"}"#,
            ),
            (
                packet(
                    ConnectError,
                    "/random",
                    Some(json!({"message": "Invalid namespace"})),
                    None,
                ),
                r#"4/random,{"message":"Invalid namespace"}"#,
            ),
            (
                packet(Event, "/", Some(json!(["foo"])), None),
                r#"2["foo"]"#,
            ),
            (
                packet(Event, "/admin", Some(json!(["bar"])), None),
                r#"2/admin,["bar"]"#,
            ),
            (
                packet(Event, "/", Some(json!(["foo"])), Some(12)),
                r#"212["foo"]"#,
            ),
            (packet(Ack, "/", Some(json!([])), Some(12)), "312[]"),
            (
                packet(Event, "/admin", Some(json!(["foo"])), Some(13)),
                r#"2/admin,13["foo"]"#,
            ),
            (
                packet(Ack, "/admin", Some(json!(["bar"])), Some(13)),
                r#"3/admin,13["bar"]"#,
            ),
            (
                packet(Ack, "/", Some(json!(["bar"])), Some(14)),
                r#"314["bar"]"#,
            ),
            (
                packet(Event, "/", Some(json!(["foo"])), Some(15)),
                r#"215["foo"]"#,
            ),
            (packet(Disconnect, "/", None, None), "1"),
            (packet(Disconnect, "/admin", None, None), "1/admin,"),
            (
                packet(Event, "/", Some(json!(["hey", "Jude"])), None),
                r#"2["hey","Jude"]"#,
            ),
            (
                packet(Event, "/admin", Some(json!(["tellme"])), Some(1)),
                r#"2/admin,1["tellme"]"#,
            ),
        ]
    }

    #[test]
    fn spec_text_examples_round_trip() {
        for (expected, text) in spec_text_examples() {
            assert_eq!(complete(text), expected, "{text}");
            assert_eq!(expected.encode(), text);
            assert_eq!(expected.encode_engineio(), format!("4{text}"));
        }
    }

    #[test]
    fn spec_binary_examples_round_trip() {
        let examples: [BinaryExample; 5] = [
            (
                r#"51-["baz",{"_placeholder":true,"num":0}]"#,
                PacketType::BinaryEvent,
                "/",
                None,
                vec![bytes(&[1, 2, 3, 4])],
            ),
            (
                r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
                PacketType::BinaryEvent,
                "/admin",
                None,
                vec![bytes(&[1, 2]), bytes(&[3, 4])],
            ),
            (
                r#"51-14["foo",{"_placeholder":true,"num":0}]"#,
                PacketType::BinaryEvent,
                "/",
                Some(14),
                vec![bytes(&[1, 2, 3, 4])],
            ),
            (
                r#"61-15["bar",{"_placeholder":true,"num":0}]"#,
                PacketType::BinaryAck,
                "/",
                Some(15),
                vec![bytes(&[1, 2, 3, 4])],
            ),
            (
                r#"61-/admin,1[{"_placeholder":true,"num":0}]"#,
                PacketType::BinaryAck,
                "/admin",
                Some(1),
                vec![bytes(b"binary")],
            ),
        ];
        for (text, packet_type, nsp, ack_id, attachments) in examples {
            let mut assembler = BinaryAssembler::new(4, 1 << 20);
            assert!(assembler.push_text(text, deadline()).unwrap().is_none());
            let last = attachments.len() - 1;
            let mut whole = None;
            for (i, attachment) in attachments.iter().enumerate() {
                assert!(assembler.is_waiting());
                let result = assembler.push_binary(attachment.clone()).unwrap();
                assert_eq!(result.is_some(), i == last);
                whole = result;
            }
            assert!(!assembler.is_waiting());
            let whole = whole.unwrap();
            assert_eq!(whole.packet_type, packet_type);
            assert_eq!(whole.nsp, nsp);
            assert_eq!(whole.ack_id, ack_id);
            assert_eq!(whole.attachments, attachments);
            assert_eq!(whole.encode(), text);
        }
    }

    #[test]
    fn builds_spec_binary_packets_from_args() {
        let event = Packet::event("/", "baz", [Arg::Binary(bytes(&[1, 2, 3, 4]))]);
        assert_eq!(
            event.encode(),
            r#"51-["baz",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(event.attachments, [bytes(&[1, 2, 3, 4])]);

        let event = Packet::event(
            "/admin",
            "baz",
            [Arg::from(bytes(&[1, 2])), Arg::from(bytes(&[3, 4]))],
        );
        assert_eq!(
            event.encode(),
            r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
        );

        let event = Packet::event("/", "foo", [Arg::from(bytes(&[1, 2, 3, 4]))]).with_ack_id(14);
        assert_eq!(
            event.encode(),
            r#"51-14["foo",{"_placeholder":true,"num":0}]"#
        );

        let ack = Packet::ack(
            "/",
            15,
            [Arg::from(json!("bar")), Arg::from(bytes(&[1, 2, 3, 4]))],
        );
        assert_eq!(
            ack.encode(),
            r#"61-15["bar",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(
            ack.encode_engineio(),
            r#"461-15["bar",{"_placeholder":true,"num":0}]"#
        );

        assert_eq!(Packet::ack("/", 12, []).encode(), "312[]");
        assert_eq!(
            Packet::ack("/admin", 13, [Arg::from(json!("bar"))]).encode(),
            r#"3/admin,13["bar"]"#
        );
        assert_eq!(Packet::event("/", "foo", []).encode(), r#"2["foo"]"#);
        assert_eq!(
            Packet::event("/", "hey", [Arg::from(json!("Jude"))]).encode_engineio(),
            r#"42["hey","Jude"]"#
        );
        assert_eq!(Packet::disconnect("/admin").encode(), "1/admin,");
        assert_eq!(
            Packet::connect_error("/", "Not authorized").encode(),
            r#"4{"message":"Not authorized"}"#
        );
        assert_eq!(
            Packet::connect("/admin", Some(json!({"sid": "x"}))).encode(),
            r#"0/admin,{"sid":"x"}"#
        );
        // A namespace missing its slash still encodes as one.
        assert_eq!(Packet::disconnect("admin").encode(), "1/admin,");
    }

    #[test]
    fn args_resolve_placeholders() {
        let event = Packet::event(
            "/",
            "mixed",
            [
                Arg::from(json!({"a": 1})),
                Arg::from(bytes(b"xy")),
                Arg::from(json!(null)),
            ],
        );
        assert_eq!(event.event_name(), Some("mixed"));
        let args: Vec<_> = event.args().collect();
        assert_eq!(args.len(), 3);
        assert_eq!(args[0], ArgRef::Json(&json!({"a": 1})));
        assert_eq!(args[1], ArgRef::Binary(&bytes(b"xy")));
        assert_eq!(args[2], ArgRef::Json(&Value::Null));

        let ack = Packet::ack("/", 1, [Arg::from(bytes(b"z"))]);
        assert_eq!(ack.event_name(), None);
        assert_eq!(
            ack.args().collect::<Vec<_>>(),
            [ArgRef::Binary(&bytes(b"z"))]
        );

        // A placeholder-shaped object in a plain event stays JSON.
        let plain = complete(r#"2["ev",{"_placeholder":true,"num":0}]"#);
        assert_eq!(plain.args().next(), Some(ArgRef::Json(&placeholder(0))));

        // Nested placeholders resolve while walking.
        let mut assembler = BinaryAssembler::new(2, 1 << 20);
        assembler
            .push_text(
                r#"51-["ev",{"deep":[{"_placeholder":true,"num":0}]}]"#,
                deadline(),
            )
            .unwrap();
        let nested = assembler.push_binary(bytes(b"n")).unwrap().unwrap();
        let Some(ArgRef::Json(outer)) = nested.args().next() else {
            panic!("expected JSON");
        };
        assert_eq!(
            nested.resolve(&outer["deep"][0]),
            ArgRef::Binary(&bytes(b"n"))
        );
        assert_eq!(Packet::connect("/", None).args().count(), 0);
        assert_eq!(placeholder_index(&placeholder(7)), Some(7));
        assert_eq!(
            placeholder_index(&json!({"_placeholder": false, "num": 0})),
            None
        );
    }

    #[test]
    fn decodes_header_details() {
        // A namespace with nothing after it needs no comma.
        assert_eq!(
            complete("1/admin"),
            packet(PacketType::Disconnect, "/admin", None, None)
        );
        assert_eq!(
            complete("0/a/b,"),
            packet(PacketType::Connect, "/a/b", None, None)
        );
        assert_eq!(complete("0/€,").nsp, "/€");
        // Whitespace around JSON is JSON's business.
        assert_eq!(complete("2 [\"a\"] ").data, Some(json!(["a"])));
        assert_eq!(
            complete("3/x,18446744073709551615[]").ack_id,
            Some(u64::MAX)
        );
        // A binary packet announcing no attachment is whole at once.
        assert_eq!(complete(r#"50-["a"]"#).packet_type, PacketType::BinaryEvent);
        let (header, count) = needs(r#"5007-["a",{"_placeholder":true,"num":6}]"#);
        assert_eq!(count, 7);
        assert!(header.attachments.is_empty());
    }

    #[test]
    fn rejects_malformed_packets() {
        let cases: &[(&str, ErrorCheck)] = &[
            ("", |e| matches!(e, DecodeError::EmptyPacket)),
            ("abc", |e| matches!(e, DecodeError::UnknownPacketType(b'a'))),
            ("7", |e| matches!(e, DecodeError::UnknownPacketType(b'7'))),
            ("€", |e| matches!(e, DecodeError::UnknownPacketType(0xe2))),
            // The spec's test suite: invalid payload format, invalid ack id.
            ("2{}", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            (r#"2abc["message-with-ack",1,"2",{"3":[false]}]"#, |e| {
                matches!(e, DecodeError::InvalidJson(_))
            }),
            ("2", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("2[]", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("2[1]", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("2[null]", |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            ("2\"foo\"", |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            (r#"2["connect"]"#, |e| {
                matches!(e, DecodeError::ReservedEventName)
            }),
            (r#"2["disconnecting",1]"#, |e| {
                matches!(e, DecodeError::ReservedEventName)
            }),
            (r#"2["a"]x"#, |e| matches!(e, DecodeError::InvalidJson(_))),
            (r#"2["a""#, |e| matches!(e, DecodeError::InvalidJson(_))),
            // Without a comma the namespace runs to the end, leaving the event no data.
            (r#"2/admin["a"]"#, |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            ("2/admin,", |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            ("212", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            (r#"218446744073709551616["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAckId)
            }),
            ("3", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("312", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("312{}", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("0[]", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("0\"token\"", |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            ("1{}", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("1[]", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("4[]", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("4\"Not authorized\"", |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            ("0/ad\u{1e}min,", |e| {
                matches!(e, DecodeError::InvalidNamespace)
            }),
            ("0/ad\nmin,", |e| matches!(e, DecodeError::InvalidNamespace)),
            // Binary packets.
            (r#"5["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAttachmentCount)
            }),
            (r#"5-["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAttachmentCount)
            }),
            (r#"51["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAttachmentCount)
            }),
            (r#"5x-["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAttachmentCount)
            }),
            ("5", |e| matches!(e, DecodeError::InvalidAttachmentCount)),
            ("51", |e| matches!(e, DecodeError::InvalidAttachmentCount)),
            (r#"599999999999999999999999-["a"]"#, |e| {
                matches!(e, DecodeError::InvalidAttachmentCount)
            }),
            ("51-", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            ("61-", |e| matches!(e, DecodeError::InvalidPayload { .. })),
            (r#"51-{}"#, |e| {
                matches!(e, DecodeError::InvalidPayload { .. })
            }),
            (r#"51-["a",{"_placeholder":true,"num":1}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
            (r#"51-["a",{"_placeholder":true,"num":-1}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
            (r#"51-["a",{"_placeholder":true,"num":"0"}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
            (r#"51-["a",{"_placeholder":true,"num":0.5}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
            (r#"51-["a",{"_placeholder":true}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
            (r#"61-[{"x":[{"_placeholder":true,"num":9}]}]"#, |e| {
                matches!(e, DecodeError::InvalidPlaceholder)
            }),
        ];
        for (text, is_expected) in cases {
            match Packet::decode(text) {
                Err(error) => {
                    assert!(is_expected(&error), "{text:?} gave {error:?}");
                    assert!(!error.to_string().is_empty());
                }
                Ok(decoded) => panic!("{text:?} decoded to {decoded:?}"),
            }
        }
    }

    #[test]
    fn rejects_deep_json_without_overflowing_the_stack() {
        let deep = format!("2[\"a\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            Packet::decode(&deep),
            Err(DecodeError::InvalidJson(_))
        ));
        let deep_binary = format!("51-[\"a\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Packet::decode(&deep_binary).is_err());
    }

    #[test]
    fn assembler_enforces_sequence_and_limits() {
        let mut assembler = BinaryAssembler::new(2, 1 << 20);
        assert!(matches!(
            assembler.push_binary(bytes(b"x")),
            Err(DecodeError::UnexpectedBinary)
        ));
        assert!(matches!(
            assembler.push_text(r#"53-["a"]"#, deadline()),
            Err(DecodeError::TooManyAttachments { count: 3, max: 2 })
        ));
        assert!(!assembler.is_waiting());
        // A huge announced count is refused before anything is allocated for it.
        assert!(matches!(
            assembler.push_text(r#"518446744073709551615-["a"]"#, deadline()),
            Err(DecodeError::TooManyAttachments { .. }) | Err(DecodeError::InvalidAttachmentCount)
        ));

        assert!(assembler
            .push_text(r#"52-["a"]"#, deadline())
            .unwrap()
            .is_none());
        assert!(assembler.push_binary(bytes(b"1")).unwrap().is_none());
        assert!(matches!(
            assembler.push_text(r#"2["b"]"#, deadline()),
            Err(DecodeError::UnexpectedText)
        ));
        assert!(!assembler.is_waiting());

        // Plain packets pass straight through, and the assembler is reusable.
        let plain = assembler
            .push_text(r#"2["b"]"#, deadline())
            .unwrap()
            .unwrap();
        assert_eq!(plain.event_name(), Some("b"));
        assert!(assembler
            .push_text(r#"61-3[{"_placeholder":true,"num":0}]"#, deadline())
            .unwrap()
            .is_none());
        let ack = assembler.push_binary(bytes(b"")).unwrap().unwrap();
        assert_eq!(ack.ack_id, Some(3));
        assert_eq!(ack.args().next(), Some(ArgRef::Binary(&Bytes::new())));
        assert!(matches!(
            assembler.push_binary(bytes(b"extra")),
            Err(DecodeError::UnexpectedBinary)
        ));
        assert!(matches!(
            assembler.push_text("2{}", deadline()),
            Err(DecodeError::InvalidPayload { .. })
        ));
        assert!(!assembler.is_waiting());
    }

    /// A deadline for a pending packet: the assembler keeps it, never reads a clock.
    fn deadline() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[test]
    fn assembler_bounds_the_bytes_of_one_packets_attachments() {
        let mut assembler = BinaryAssembler::new(4, 10);
        let due = deadline();
        assert_eq!(assembler.deadline(), None);
        assert!(assembler.push_text(r#"53-["a"]"#, due).unwrap().is_none());
        // The packet keeps the deadline it came with, for the caller to check.
        assert_eq!(assembler.deadline(), Some(due));
        assert!(assembler.push_binary(bytes(b"12345")).unwrap().is_none());
        // Ten bytes in all is the limit itself: still accepted.
        assert!(assembler.push_binary(bytes(b"12345")).unwrap().is_none());
        assert!(matches!(
            assembler.push_binary(bytes(b"x")),
            Err(DecodeError::AttachmentsTooLarge { max: 10 })
        ));
        assert!(!assembler.is_waiting());
        assert_eq!(assembler.deadline(), None);
        // The count is per packet: the next packet starts from zero.
        assert!(assembler
            .push_text(r#"51-["a"]"#, deadline())
            .unwrap()
            .is_none());
        let whole = assembler.push_binary(bytes(b"0123456789")).unwrap();
        assert_eq!(whole.unwrap().attachments.len(), 1);
    }

    #[test]
    fn reserved_names_cover_the_clients_and_the_servers_own_events() {
        for name in RESERVED_EVENTS.iter().chain(&SERVER_EVENTS) {
            assert!(is_reserved_for_relay(name), "{name}");
        }
        for name in ["chat", "move", "Connect", "disconnected", "join", "to", ""] {
            assert!(!is_reserved_for_relay(name), "{name}");
        }
    }

    #[test]
    fn relay_event_with_json_payload() {
        let encoded = encode_relay_event(
            "/",
            "chat",
            RelayPayload::Json(r#"{"text":"hi"}"#),
            "p1",
            None,
        );
        assert_eq!(encoded.frame, r#"42["chat",{"text":"hi"},"p1"]"#);
        assert_eq!(encoded.socketio_text(), r#"2["chat",{"text":"hi"},"p1"]"#);
        assert_eq!(encoded.attachment, None);
        let decoded = complete(encoded.socketio_text());
        assert_eq!(
            decoded,
            Packet::event(
                "/",
                "chat",
                [json!({"text": "hi"}).into(), json!("p1").into()]
            )
        );

        let encoded = encode_relay_event("/game", "move", RelayPayload::Json("[1,2]"), "p2", None);
        assert_eq!(encoded.frame, r#"42/game,["move",[1,2],"p2"]"#);
        assert_eq!(complete(encoded.socketio_text()).nsp, "/game");
    }

    #[test]
    fn relay_event_with_binary_payload() {
        let payload = bytes(&[0, 1, 2, 255]);
        let encoded = encode_relay_event("/", "state", RelayPayload::Binary(&payload), "p1", None);
        assert_eq!(
            encoded.frame,
            r#"451-["state",{"_placeholder":true,"num":0},"p1"]"#
        );
        assert_eq!(encoded.attachment.as_ref(), Some(&payload));

        // What a client does with it: decode the frame, then the attachment.
        let mut assembler = BinaryAssembler::new(1, 1 << 20);
        let engine_packet = engineio::Packet::decode_text(&encoded.frame).unwrap();
        let engineio::Data::Text(text) = engine_packet.data else {
            panic!("text frame decoded as binary");
        };
        assert!(assembler.push_text(text, deadline()).unwrap().is_none());
        let whole = assembler.push_binary(payload.clone()).unwrap().unwrap();
        assert_eq!(
            whole,
            Packet::event("/", "state", [Arg::from(payload), Arg::from(json!("p1"))])
        );
    }

    #[test]
    fn relay_event_escapes_names() {
        let event = "quote\" back\\ nl\n tab\t ctl\u{1} rs\u{1e} del\u{7f} €";
        let from = "id\"\u{0}";
        let encoded = encode_relay_event("/", event, RelayPayload::Json("null"), from, None);
        assert!(!encoded.frame.contains('\u{1e}'));
        let decoded = complete(encoded.socketio_text());
        assert_eq!(decoded.data, Some(json!([event, null, from])));
        assert_eq!(decoded.encode_engineio(), encoded.frame);
    }

    #[test]
    fn json_string_escaping_matches_serde_json() {
        let mut rng = XorShift::new(42);
        let pieces = [
            "a", "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}", "\u{1f}", "\u{7f}", "é",
            "€", "😀", "/", "\u{2028}",
        ];
        for _ in 0..2_000 {
            let text: String = (0..rng.below(12))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect();
            let mut ours = String::new();
            push_json_string(&mut ours, &text);
            assert_eq!(ours, serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn randomized_inputs_never_panic() {
        let mut rng = XorShift::new(0x50c7_e710);
        let mut seeds: Vec<String> = spec_text_examples()
            .into_iter()
            .map(|(_, text)| text.to_owned())
            .collect();
        seeds.extend(
            [
                r#"51-["baz",{"_placeholder":true,"num":0}]"#,
                r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
                r#"61-15["bar",{"_placeholder":true,"num":0}]"#,
                r#"2["a",{"b":[1,2.5,true,null,"c"]}]"#,
            ]
            .map(str::to_owned),
        );
        let alphabet = b"0123456789-/,[]{}\":_placeholdernum \x1e";
        let mut assembler = BinaryAssembler::new(3, 1 << 20);
        for _ in 0..20_000 {
            let input = if rng.below(3) == 0 {
                rng.bytes(48)
            } else {
                let seed = &seeds[rng.below(seeds.len())];
                rng.mutate(seed.as_bytes(), alphabet)
            };
            let text = String::from_utf8_lossy(&input);
            match Packet::decode(&text) {
                Ok(Decoded::Complete(packet)) => {
                    // Whatever decodes re-encodes to text that decodes to the same packet.
                    assert_eq!(complete(&packet.encode()), packet, "{text:?}");
                    let _ = packet.args().count();
                }
                Ok(Decoded::NeedsAttachments { packet, count }) => {
                    assert!(count > 0);
                    assert!(packet.packet_type.is_binary());
                }
                Err(_) => {}
            }
            // Drive the assembler with a random mix of text and binary messages.
            let _ = if rng.below(4) == 0 {
                assembler.push_binary(Bytes::from(input))
            } else {
                assembler.push_text(&text, deadline())
            };
        }
    }

    #[test]
    fn nested_buffers_survive_a_round_trip_through_owned_args() {
        let text = r#"53-["ev",{"_placeholder":true,"num":0},{"nested":[{"_placeholder":true,"num":1}]},{"_placeholder":true,"num":2}]"#;
        let mut assembler = BinaryAssembler::new(4, 1 << 20);
        assert!(assembler.push_text(text, deadline()).unwrap().is_none());
        assert!(assembler
            .push_binary(Bytes::from_static(b"\x01"))
            .unwrap()
            .is_none());
        assert!(assembler
            .push_binary(Bytes::from_static(b"\x02"))
            .unwrap()
            .is_none());
        let packet = assembler
            .push_binary(Bytes::from_static(b"\x03"))
            .unwrap()
            .unwrap();
        let args = packet.owned_args();
        assert_eq!(args[0], Arg::Binary(Bytes::from_static(b"\x01")));
        match &args[1] {
            Arg::Tree { value, attachments } => {
                assert_eq!(value["nested"][0], placeholder(0));
                assert_eq!(attachments, &vec![Bytes::from_static(b"\x02")]);
            }
            other => panic!("{other:?}"),
        }
        // Re-encoding numbers the placeholders in argument order.
        let again = Packet::event("/", "back", args);
        assert_eq!(
            again.attachments,
            vec![
                Bytes::from_static(b"\x01"),
                Bytes::from_static(b"\x02"),
                Bytes::from_static(b"\x03")
            ]
        );
        let data = again.data.unwrap();
        assert_eq!(data[2]["nested"][0], placeholder(1));
        assert_eq!(data[3], placeholder(2));
        assert_eq!(
            Arg::Tree {
                value: serde_json::json!({"b": placeholder(0)}),
                attachments: vec![Bytes::from_static(b"hi")]
            }
            .to_plain_json(),
            serde_json::json!({"b": "aGk="})
        );
    }
}
