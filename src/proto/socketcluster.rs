//! The SocketCluster protocol as `socketcluster-client` 20.x speaks it over WebSocket,
//! sans-IO: message text in, [`Packet`]s out; answers, events and channel messages encoded
//! as text; and the [`Heartbeat`] (handshake deadline, pings, the client's silence) as a
//! state machine fed `now`.
//!
//! Every message is one JSON packet or an array of them (a batch). A packet is an event
//! (`{"event", "data", "cid"?}`: with a `cid` the sender wants an answer) or an answer
//! (`{"rid", "data"}` or `{"rid", "error": {"name", "message", ..}}`). Events whose name
//! starts with `#` are the protocol's own: `#handshake`, `#authenticate`,
//! `#removeAuthToken`, `#subscribe`, `#unsubscribe`, `#publish` from the client;
//! `#publish`, `#kickOut`, `#setAuthToken`, `#removeAuthToken` from the server. Pings and
//! pongs are not JSON: the empty string both ways (protocol version 2, the client's
//! default), or `#1` from the server answered by `#2` (version 1).
//!
//! Binary data travels as the client's codec (`sc-formatter`) writes it: a JSON object
//! `{"base64": true, "data": "<base64>"}` where the sender had a `Buffer` or an
//! `ArrayBuffer`. [`split_binary`] turns such objects into corelay's binary payloads, and
//! [`sc_value`] turns corelay's binary payloads back into them.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::engineio::{decode_base64, encode_base64_into};
use super::socketio::{placeholder, placeholder_index, Arg};

/// The path `socketcluster-client` connects to by default.
pub const DEFAULT_PATH: &str = "/socketcluster/";

/// Most packets one batch (a JSON array) may hold: the client batches what it sent within
/// `batchInterval` (50 ms by default), a few packets; a thousand small packets in one
/// message would be answered by a thousand errors before the rate limits closed the
/// client.
pub const MAX_BATCH: usize = 256;

/// A packet from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// `#handshake`: the first packet, with the stored auth token if any. Without a `cid`
    /// it is malformed (the client closes with 4008).
    Handshake {
        /// The call id to answer.
        cid: Option<u64>,
        /// `data.authToken`, when a string.
        token: Option<String>,
    },
    /// `#authenticate`: authenticate with a signed token.
    Authenticate {
        /// The call id to answer.
        cid: Option<u64>,
        /// The token, when `data` is a string.
        token: Option<String>,
    },
    /// `#removeAuthToken`: the client dropped its token (`socket.deauthenticate()`).
    RemoveAuthToken,
    /// `#subscribe` to `channel`.
    Subscribe {
        /// The call id to answer.
        cid: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// `#unsubscribe` from `channel` (the client transmits it: no answer expected).
    Unsubscribe {
        /// The call id to answer, if any.
        cid: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// `#publish` `data` to `channel` (`invokePublish` with a `cid`, `transmitPublish`
    /// without).
    Publish {
        /// The call id to answer, if any.
        cid: Option<u64>,
        /// The channel.
        channel: String,
        /// What is published.
        data: Value,
    },
    /// An application event: `invoke` (with a `cid`) or `transmit`.
    Event {
        /// The call id to answer, if any.
        cid: Option<u64>,
        /// The event's name (never starting with `#`).
        event: String,
        /// Its data (`null` when absent).
        data: Value,
    },
    /// An answer to an event the server invoked; corelay invokes none, so it is ignored.
    Answer {
        /// The call id answered.
        rid: u64,
    },
}

/// A packet refused on its own; the rest of a batch goes on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacketError {
    /// An event whose name starts with `#` that the protocol does not have. Answered with
    /// an error when it has a `cid`; without one there is nobody to answer and the
    /// connection is closed (1003).
    #[error("unknown reserved event {event}")]
    UnknownReserved {
        /// The call id to answer, if any.
        cid: Option<u64>,
        /// The name.
        event: String,
    },
    /// A protocol event with data of the wrong shape (a channel that is no string).
    /// Answered with `InvalidActionError` when it has a `cid`.
    #[error("{event}: {message}")]
    BadData {
        /// The call id to answer, if any.
        cid: Option<u64>,
        /// The event.
        event: &'static str,
        /// What is wrong.
        message: &'static str,
    },
    /// Neither an event nor an answer (no string `event`, no numeric `rid`), or a `cid` that
    /// is no integer: nothing can be answered, and the connection is closed (1003).
    #[error("not a SocketCluster packet")]
    NotAPacket,
}

/// A message refused whole: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON (nor a ping or pong): close 1003.
    #[error("message is not JSON")]
    NotJson,
    /// A batch of more than [`MAX_BATCH`] packets: close 1008.
    #[error("batch of more than {MAX_BATCH} packets")]
    BatchTooLarge,
}

/// What one message from the client is.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The answer to the server's ping (`""` or `#2`).
    Pong,
    /// A version 1 ping from the client (`#1`): answer `#2`.
    Ping,
    /// One packet, or a batch; each decoded on its own.
    Packets(Vec<Result<Packet, PacketError>>),
}

/// Decodes one message's text.
pub fn decode(text: &str) -> Result<Inbound, MessageError> {
    match text {
        "" | "#2" => return Ok(Inbound::Pong),
        "#1" => return Ok(Inbound::Ping),
        _ => {}
    }
    let value: Value = serde_json::from_str(text).map_err(|_| MessageError::NotJson)?;
    match value {
        Value::Array(items) => {
            if items.len() > MAX_BATCH {
                return Err(MessageError::BatchTooLarge);
            }
            Ok(Inbound::Packets(items.into_iter().map(packet).collect()))
        }
        single => Ok(Inbound::Packets(vec![packet(single)])),
    }
}

/// A call id: a JSON integer the client's generator made (it counts from 1).
fn call_id(value: Option<&Value>) -> Result<Option<u64>, PacketError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(PacketError::NotAPacket),
    }
}

fn packet(value: Value) -> Result<Packet, PacketError> {
    let Value::Object(mut object) = value else {
        return Err(PacketError::NotAPacket);
    };
    let Some(Value::String(event)) = object.remove("event") else {
        return match object.get("rid").and_then(Value::as_u64) {
            Some(rid) => Ok(Packet::Answer { rid }),
            None => Err(PacketError::NotAPacket),
        };
    };
    let cid = call_id(object.get("cid"))?;
    let data = object.remove("data").unwrap_or(Value::Null);
    let channel = |data: &Value, event: &'static str| match data.get("channel") {
        Some(Value::String(c)) => Ok(c.clone()),
        _ => Err(PacketError::BadData {
            cid,
            event,
            message: "channel name was malformatted",
        }),
    };
    let text = |data: Value| match data {
        Value::String(s) => Some(s),
        _ => None,
    };
    Ok(match event.as_str() {
        "#handshake" => Packet::Handshake {
            cid,
            token: match data {
                Value::Object(mut o) => o.remove("authToken").and_then(text),
                _ => None,
            },
        },
        "#authenticate" => Packet::Authenticate {
            cid,
            token: text(data),
        },
        "#removeAuthToken" => Packet::RemoveAuthToken,
        "#subscribe" => Packet::Subscribe {
            cid,
            channel: channel(&data, "#subscribe")?,
        },
        "#unsubscribe" => match data {
            Value::String(channel) => Packet::Unsubscribe { cid, channel },
            _ => {
                return Err(PacketError::BadData {
                    cid,
                    event: "#unsubscribe",
                    message: "channel name was malformatted",
                })
            }
        },
        "#publish" => {
            let channel = channel(&data, "#publish")?;
            let data = match data {
                Value::Object(mut o) => o.remove("data").unwrap_or(Value::Null),
                _ => Value::Null,
            };
            Packet::Publish { cid, channel, data }
        }
        name if name.starts_with('#') => {
            return Err(PacketError::UnknownReserved {
                cid,
                event: name.to_owned(),
            })
        }
        _ => Packet::Event { cid, event, data },
    })
}

/// An error as the protocol carries it (`sc-errors`' dehydrated form): the client rebuilds
/// an `Error` with this `name` and `message`; `code`, when set, is corelay's error code
/// (`rate_limited`, `forbidden`, ..., as docs/PROTOCOL.md lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScError {
    /// The error's class name (`InvalidActionError`, `AuthTokenInvalidError`, or one of
    /// the application's).
    pub name: String,
    /// What the client is shown.
    pub message: String,
    /// corelay's error code, if the error has one.
    pub code: Option<&'static str>,
}

impl ScError {
    /// An error named `name` with `message`.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> ScError {
        ScError {
            name: name.into(),
            message: message.into(),
            code: None,
        }
    }

    /// This error with corelay's error code `code`.
    pub fn with_code(mut self, code: &'static str) -> ScError {
        self.code = Some(code);
        self
    }

    /// The error as JSON: `{"name", "message", "code"?}`.
    pub fn to_json(&self) -> Value {
        let mut o = Map::with_capacity(3);
        o.insert("name".into(), Value::String(self.name.clone()));
        o.insert("message".into(), Value::String(self.message.clone()));
        if let Some(code) = self.code {
            o.insert("code".into(), Value::String(code.to_owned()));
        }
        Value::Object(o)
    }
}

/// The ping the server sends for protocol `version` (1: `#1`, else the empty string).
pub fn ping(version: u8) -> &'static str {
    if version == 1 {
        "#1"
    } else {
        ""
    }
}

/// `text` as a JSON string literal.
fn quoted(text: &str) -> String {
    // Serializing a `str` cannot fail.
    serde_json::to_string(text).unwrap_or_default()
}

/// The answer to call `rid` with `data` (`None`: an answer with no data, as the client's
/// `request.end()` sends).
pub fn answer(rid: u64, data: Option<&Value>) -> String {
    match data {
        Some(data) => format!(r#"{{"rid":{rid},"data":{data}}}"#),
        None => format!(r#"{{"rid":{rid}}}"#),
    }
}

/// The refusal of call `rid` with `error`.
pub fn answer_error(rid: u64, error: &ScError) -> String {
    format!(r#"{{"rid":{rid},"error":{}}}"#, error.to_json())
}

/// The handshake's answer: the socket's `id`, the `pingTimeout` (ms) after which the
/// client gives up on a silent server, whether the token was accepted, and why not.
pub fn handshake_answer(
    rid: u64,
    id: &str,
    ping_timeout_ms: u64,
    authenticated: bool,
    auth_error: Option<&ScError>,
) -> String {
    let mut data = Map::with_capacity(4);
    data.insert("id".into(), Value::String(id.to_owned()));
    data.insert("pingTimeout".into(), Value::from(ping_timeout_ms));
    data.insert("isAuthenticated".into(), Value::Bool(authenticated));
    if let Some(e) = auth_error {
        data.insert("authError".into(), e.to_json());
    }
    answer(rid, Some(&Value::Object(data)))
}

/// An event the server transmits (no answer expected).
pub fn transmit(event: &str, data: &Value) -> String {
    format!(r#"{{"event":{},"data":{data}}}"#, quoted(event))
}

/// What a channel message carries, as the relay holds it.
#[derive(Debug, Clone, Copy)]
pub enum ChannelData<'a> {
    /// JSON text, checked valid: inserted as it is.
    Json(&'a str),
    /// Bytes: sent as the codec's base64 object.
    Binary(&'a [u8]),
    /// A JSON value, already in the protocol's form (see [`sc_value`]).
    Value(&'a Value),
}

impl ChannelData<'_> {
    fn write(&self, out: &mut String) {
        match self {
            ChannelData::Json(text) => out.push_str(text),
            ChannelData::Binary(bytes) => {
                out.push_str(r#"{"base64":true,"data":""#);
                encode_base64_into(bytes, out);
                out.push_str("\"}");
            }
            ChannelData::Value(v) => out.push_str(&v.to_string()),
        }
    }

    /// At most how long [`ChannelData::write`] makes it.
    fn len_bound(&self) -> usize {
        match self {
            ChannelData::Json(text) => text.len(),
            ChannelData::Binary(bytes) => bytes.len().div_ceil(3) * 4 + 26,
            ChannelData::Value(_) => 64,
        }
    }
}

/// A `#publish` to `channel`. A relayed message's `event` decides its form (docs/
/// SOCKETCLUSTER.md): `publish` carries `data` as the channel message itself; any other
/// event arrives as `{"event", "data", "from"}`.
pub fn channel_message(channel: &str, event: &str, from: &str, data: ChannelData<'_>) -> String {
    let channel = quoted(channel);
    let mut out = String::with_capacity(64 + channel.len() + data.len_bound());
    out.push_str(r##"{"event":"#publish","data":{"channel":"##);
    out.push_str(&channel);
    out.push_str(r#","data":"#);
    if event == "publish" {
        data.write(&mut out);
    } else {
        out.push_str(r#"{"event":"#);
        out.push_str(&quoted(event));
        out.push_str(r#","data":"#);
        data.write(&mut out);
        out.push_str(r#","from":"#);
        out.push_str(&quoted(from));
        out.push('}');
    }
    out.push_str("}}");
    out
}

/// The codec's form of binary data: `{"base64": true, "data": "<base64>"}`.
pub fn binary_value(bytes: &[u8]) -> Value {
    let mut text = String::new();
    encode_base64_into(bytes, &mut text);
    let mut o = Map::with_capacity(2);
    o.insert("base64".into(), Value::Bool(true));
    o.insert("data".into(), Value::String(text));
    Value::Object(o)
}

/// The bytes of a value in the codec's binary form; `None` for any other value (and for
/// one whose base64 does not decode, which stays JSON).
pub fn binary_of(value: &Value) -> Option<Vec<u8>> {
    let o = value.as_object()?;
    if o.len() != 2 || o.get("base64") != Some(&Value::Bool(true)) {
        return None;
    }
    decode_base64(o.get("data")?.as_str()?).ok()
}

/// A socket.io argument in the protocol's form: binary buffers as the codec's base64
/// objects.
pub fn sc_value(arg: &Arg) -> Value {
    match arg {
        Arg::Json(v) => v.clone(),
        Arg::Binary(b) => binary_value(b),
        Arg::Tree { value, attachments } => {
            let mut v = value.clone();
            resolve(&mut v, attachments);
            v
        }
    }
}

fn resolve(value: &mut Value, attachments: &[Bytes]) {
    if let Some(b) = placeholder_index(value).and_then(|i| attachments.get(i)) {
        *value = binary_value(b);
        return;
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, attachments)),
        Value::Object(o) => o.values_mut().for_each(|v| resolve(v, attachments)),
        _ => {}
    }
}

/// A client's data with the codec's binary objects taken out: plain JSON, one buffer, or
/// a socket.io argument whose buffers are attachments (so that socket.io members receive
/// `Buffer`s and native members binary payloads).
pub fn split_binary(data: Value) -> Arg {
    if let Some(bytes) = binary_of(&data) {
        return Arg::Binary(Bytes::from(bytes));
    }
    let mut attachments = Vec::new();
    let mut value = data;
    extract(&mut value, &mut attachments);
    if attachments.is_empty() {
        Arg::Json(value)
    } else {
        Arg::Tree { value, attachments }
    }
}

fn extract(value: &mut Value, attachments: &mut Vec<Bytes>) {
    if let Some(bytes) = binary_of(value) {
        *value = placeholder(attachments.len());
        attachments.push(Bytes::from(bytes));
        return;
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| extract(v, attachments)),
        Value::Object(o) => o.values_mut().for_each(|v| extract(v, attachments)),
        _ => {}
    }
}

/// What the [`Heartbeat`] wants done when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send the ping.
    Ping,
    /// No `#handshake` came in time: close 4005.
    HandshakeTimeout,
    /// The client said nothing for `ping_timeout`: close 4001.
    PongTimeout,
}

/// The connection's timers, sans clock: the handshake's deadline, a ping every
/// `interval` (the client closes a connection whose pings stop for its `pingTimeout`, even
/// while the server sends other traffic), and the client's silence (anything it sends
/// counts, pongs included).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: std::time::Duration,
    timeout: std::time::Duration,
    handshake_by: Option<std::time::Instant>,
    next_ping: std::time::Instant,
    last_heard: std::time::Instant,
}

impl Heartbeat {
    /// Timers of a connection opened at `now`, whose `#handshake` must come by
    /// `handshake_by`.
    pub fn new(
        now: std::time::Instant,
        handshake_by: std::time::Instant,
        interval: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Heartbeat {
        Heartbeat {
            interval,
            timeout,
            handshake_by: Some(handshake_by),
            next_ping: now + interval,
            last_heard: now,
        }
    }

    /// A message came at `now`.
    pub fn heard(&mut self, now: std::time::Instant) {
        self.last_heard = now;
    }

    /// The handshake is done: its deadline no longer applies.
    pub fn handshaken(&mut self) {
        self.handshake_by = None;
    }

    /// When [`Heartbeat::poll`] has something to do.
    pub fn deadline(&self) -> std::time::Instant {
        let silent = self.last_heard + self.timeout;
        let next = self.next_ping.min(silent);
        self.handshake_by.map_or(next, |h| h.min(next))
    }

    /// What is due at `now`, most urgent first; call again until `None`.
    pub fn poll(&mut self, now: std::time::Instant) -> Option<Beat> {
        if self.handshake_by.is_some_and(|h| now >= h) {
            return Some(Beat::HandshakeTimeout);
        }
        if now >= self.last_heard + self.timeout {
            return Some(Beat::PongTimeout);
        }
        if now >= self.next_ping {
            // From now, not from the missed time: a late turn sends one ping, not a burst.
            self.next_ping = now + self.interval;
            return Some(Beat::Ping);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    #[test]
    fn the_clients_packets_decode() {
        let one = |text: &str| match decode(text).unwrap() {
            Inbound::Packets(mut p) => p.remove(0),
            other => panic!("{other:?}"),
        };
        assert_eq!(decode("").unwrap(), Inbound::Pong);
        assert_eq!(decode("#2").unwrap(), Inbound::Pong);
        assert_eq!(decode("#1").unwrap(), Inbound::Ping);
        assert_eq!(
            one(r##"{"event":"#handshake","data":{"authToken":"t"},"cid":1}"##),
            Ok(Packet::Handshake {
                cid: Some(1),
                token: Some("t".into())
            })
        );
        assert_eq!(
            one(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##),
            Ok(Packet::Handshake {
                cid: Some(1),
                token: None
            })
        );
        assert_eq!(
            one(r##"{"event":"#subscribe","data":{"channel":"a","waitForAuth":true},"cid":3}"##),
            Ok(Packet::Subscribe {
                cid: Some(3),
                channel: "a".into()
            })
        );
        assert_eq!(
            one(r##"{"event":"#unsubscribe","data":"a"}"##),
            Ok(Packet::Unsubscribe {
                cid: None,
                channel: "a".into()
            })
        );
        assert_eq!(
            one(r##"{"event":"#publish","data":{"channel":"a","data":[1]}}"##),
            Ok(Packet::Publish {
                cid: None,
                channel: "a".into(),
                data: json!([1])
            })
        );
        assert_eq!(
            one(r##"{"event":"move","data":{"x":1},"cid":9}"##),
            Ok(Packet::Event {
                cid: Some(9),
                event: "move".into(),
                data: json!({"x":1})
            })
        );
        assert_eq!(
            one(r##"{"rid":4,"data":1}"##),
            Ok(Packet::Answer { rid: 4 })
        );
        assert_eq!(
            one(r##"{"event":"#nope","cid":2}"##),
            Err(PacketError::UnknownReserved {
                cid: Some(2),
                event: "#nope".into()
            })
        );
        assert!(matches!(
            one(r##"{"event":"#subscribe","data":{"channel":5},"cid":2}"##),
            Err(PacketError::BadData { cid: Some(2), .. })
        ));
        assert_eq!(
            one(r##"{"event":"e","cid":"x"}"##),
            Err(PacketError::NotAPacket)
        );
        assert_eq!(one(r##"{"hello":1}"##), Err(PacketError::NotAPacket));
        assert_eq!(one("42"), Err(PacketError::NotAPacket));
        assert_eq!(decode("{not json"), Err(MessageError::NotJson));
        assert_eq!(decode("hello"), Err(MessageError::NotJson));
        let batch = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        assert_eq!(decode(&batch), Err(MessageError::BatchTooLarge));
        match decode(r##"[{"event":"a"},7]"##).unwrap() {
            Inbound::Packets(p) => {
                assert!(p[0].is_ok());
                assert_eq!(p[1], Err(PacketError::NotAPacket));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_and_events_are_the_protocols() {
        assert_eq!(answer(3, None), r##"{"rid":3}"##);
        assert_eq!(
            answer(3, Some(&json!({"a":1}))),
            r##"{"rid":3,"data":{"a":1}}"##
        );
        let e = ScError::new("InvalidActionError", "no").with_code("forbidden");
        let v: Value = serde_json::from_str(&answer_error(7, &e)).unwrap();
        assert_eq!(
            v,
            json!({"rid":7,"error":{"name":"InvalidActionError","message":"no","code":"forbidden"}})
        );
        let v: Value =
            serde_json::from_str(&handshake_answer(1, "42", 20000, false, None)).unwrap();
        assert_eq!(
            v,
            json!({"rid":1,"data":{"id":"42","pingTimeout":20000,"isAuthenticated":false}})
        );
        let v: Value =
            serde_json::from_str(&transmit("#kickOut", &json!({"channel":"c"}))).unwrap();
        assert_eq!(v, json!({"event":"#kickOut","data":{"channel":"c"}}));
    }

    #[test]
    fn channel_messages_follow_the_mapping() {
        let parse = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        assert_eq!(
            parse(channel_message(
                "a\"b",
                "publish",
                "p1",
                ChannelData::Json("{\"x\":1}")
            )),
            json!({"event":"#publish","data":{"channel":"a\"b","data":{"x":1}}})
        );
        assert_eq!(
            parse(channel_message(
                "c",
                "move",
                "p1",
                ChannelData::Json("[1,2]")
            )),
            json!({"event":"#publish","data":{"channel":"c","data":{"event":"move","data":[1,2],"from":"p1"}}})
        );
        assert_eq!(
            parse(channel_message(
                "c",
                "publish",
                "",
                ChannelData::Binary(&[1, 2, 3])
            )),
            json!({"event":"#publish","data":{"channel":"c","data":{"base64":true,"data":"AQID"}}})
        );
    }

    #[test]
    fn binary_objects_become_buffers_and_back() {
        assert_eq!(
            split_binary(json!({"base64":true,"data":"AQID"})),
            Arg::Binary(Bytes::from_static(&[1, 2, 3]))
        );
        assert_eq!(split_binary(json!({"a":1})), Arg::Json(json!({"a":1})));
        // Not the codec's object (a third key, bad base64): JSON as sent.
        let odd = json!({"base64":true,"data":"AQID","x":1});
        assert_eq!(split_binary(odd.clone()), Arg::Json(odd));
        let bad = json!({"base64":true,"data":"*"});
        assert_eq!(split_binary(bad.clone()), Arg::Json(bad));
        let nested =
            json!({"frame":{"base64":true,"data":"AQID"},"n":[{"base64":true,"data":"BA=="}]});
        let arg = split_binary(nested.clone());
        match &arg {
            Arg::Tree { value, attachments } => {
                assert_eq!(value["frame"], placeholder(0));
                assert_eq!(value["n"][0], placeholder(1));
                assert_eq!(attachments.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sc_value(&arg), nested);
    }

    /// The decoder on mutated packets and noise (fixed seed, 20,000 cases): never a panic,
    /// and whatever decodes splits and rebuilds its binary objects.
    #[test]
    fn randomized_inputs_never_panic() {
        use crate::proto::engineio::tests::XorShift;
        let mut rng = XorShift::new(0x5c_c1a5);
        let seeds = [
            r##"{"event":"#handshake","data":{"authToken":"a.b.c"},"cid":1}"##,
            r##"{"event":"#publish","data":{"channel":"c","data":{"base64":true,"data":"AQID"}},"cid":2}"##,
            r##"[{"event":"#subscribe","data":{"channel":"c"},"cid":3},{"event":"#unsubscribe","data":"c"}]"##,
            r##"{"event":"move","data":[1,{"base64":true,"data":"BA=="}],"cid":4}"##,
            r##"{"rid":5,"error":{"name":"E","message":"m"}}"##,
        ];
        let alphabet = b"{}[]\":,#0123456789abcdefbase64truedatacidrid= ";
        for _ in 0..20_000 {
            let input = if rng.below(3) == 0 {
                rng.bytes(48)
            } else {
                let seed = seeds[rng.below(seeds.len())];
                rng.mutate(seed.as_bytes(), alphabet)
            };
            let text = String::from_utf8_lossy(&input);
            if let Ok(Inbound::Packets(packets)) = decode(&text) {
                for packet in packets.into_iter().flatten() {
                    if let Packet::Publish { data, .. } | Packet::Event { data, .. } = packet {
                        let _ = sc_value(&split_binary(data));
                    }
                }
            }
        }
    }

    #[test]
    fn the_heartbeat_pings_and_times_out() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut hb = Heartbeat::new(t0, t0 + ms(100), ms(50), ms(200));
        assert_eq!(hb.deadline(), t0 + ms(50));
        assert_eq!(hb.poll(t0 + ms(49)), None);
        assert_eq!(hb.poll(t0 + ms(50)), Some(Beat::Ping));
        assert_eq!(hb.poll(t0 + ms(50)), None);
        assert_eq!(hb.poll(t0 + ms(100)), Some(Beat::HandshakeTimeout));
        hb.handshaken();
        hb.heard(t0 + ms(100));
        assert_eq!(hb.poll(t0 + ms(100)), Some(Beat::Ping));
        assert_eq!(hb.deadline(), t0 + ms(150));
        assert_eq!(hb.poll(t0 + ms(300)), Some(Beat::PongTimeout));
    }
}
