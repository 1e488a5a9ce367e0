//! A minimal SocketCluster client (the protocol of `socketcluster-client` 20.x over a
//! WebSocket) for glommio.
//!
//! Only what the channel workload needs: `#handshake` (with the `--token` as its auth
//! token), `#subscribe` to the client's channel, `#publish` to it without a call id (the
//! client's `transmitPublish`: no answer is asked for, so none costs either side), channel
//! messages in, and the server's pings answered. That is enough to measure corelay's
//! `/socketcluster/` endpoint (a channel is a room, docs/SOCKETCLUSTER.md) and the Node
//! `socketcluster-server` (`loadgen/peers/socketcluster/`).
//!
//! The WebSocket is corelay's client side ([`corelay::client::ws`]), as for
//! [`crate::socketio`]. What is here is the SocketCluster layer: encoders of the few
//! packets a client sends, a sans-IO [`decode`] of what the server sends (used by the
//! setup and by the load phase's event loop), and the async client for the setup.
//!
//! Wire summary (text frames, every packet a JSON object, or an array of them: a batch):
//! `{"event":"#handshake","data":{"authToken":T|null},"cid":1}` ->
//! `{"rid":1,"data":{"id":..,"pingTimeout":..,"isAuthenticated":..,"authError"?:..}}`;
//! `{"event":"#subscribe","data":{"channel":C},"cid":N}` -> `{"rid":N}` or
//! `{"rid":N,"error":{"name":..,"message":..}}`; `{"event":"#publish","data":{"channel":C,
//! "data":"<payload>"}}` out, and every subscriber of `C` (the publisher too: SocketCluster
//! delivers to every subscriber) gets the same packet. Pings: the server sends `""`
//! (protocol version 2) or `#1` (version 1); the client answers `""` or `#2`.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use corelay::client::{ws, ClientError, WsReceiver, WsSender};
use corelay::proto::socketcluster::binary_of;
use corelay::proto::ws::WsCodec;
use serde_json::Value;
use tungstenite::Message;

use crate::header::TimingHeader;

/// Time allowed for TCP connect and the WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the SocketCluster client.
#[derive(Debug, thiserror::Error)]
pub enum SocketClusterError {
    /// The WebSocket failed: connect, upgrade, framing, the socket, or the server closed it
    /// (with its close code: 4008 is a refused handshake).
    #[error("{0}")]
    WebSocket(#[from] ClientError),
    /// The server answered `#handshake` with an error.
    #[error("handshake refused: {0}")]
    HandshakeRefused(String),
    /// A token was presented and the server did not accept it (`authError`, or
    /// `isAuthenticated: false`): the load would not be the authenticated load asked for.
    #[error("auth token refused: {0}")]
    AuthRefused(String),
    /// The server answered `#subscribe` with an error.
    #[error("subscribe refused: {0}")]
    SubscribeRefused(String),
    /// The server removed the client from a channel (`#kickOut`): it receives no more of
    /// the channel's messages.
    #[error("kicked out of channel {0}")]
    KickedOut(String),
    /// The server closed the connection (a WebSocket close frame).
    #[error("connection closed by the server")]
    Closed,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct SocketClusterConfig {
    /// Resolved server address.
    pub addr: SocketAddr,
    /// `Host` header value (`host:port` of the URL).
    pub host: String,
    /// The endpoint's path, e.g. `/socketcluster/`.
    pub path: String,
    /// Local source address to bind before connecting.
    pub bind: Option<IpAddr>,
    /// Largest WebSocket message accepted from the server.
    pub max_message_size: usize,
    /// JWT sent as the handshake's `authToken`, as a client with a stored token does.
    pub token: Option<String>,
}

/// A packet from the server, as far as this client cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// A channel message (`#publish`) whose data starts with a timing header: a load
    /// message.
    Load(TimingHeader),
    /// Any other channel message.
    Publish,
    /// The answer to call `rid`: its data, or the refusal's message.
    Answer {
        /// The call id answered.
        rid: u64,
        /// `data` (`null` when absent), or the error's `message` (its `name` when it has
        /// none).
        result: Result<Value, String>,
    },
    /// `#kickOut`: the server removed the client from `channel`.
    KickOut(String),
    /// Any other event (`member_joined`, `#setAuthToken`, ...), or a message that is no
    /// packet (SocketCluster clients hand those to a `raw` listener; this one drops them).
    Other,
}

/// `#publish` packets as both corelay and `socketcluster-server` write them (one
/// `JSON.stringify` of `{event, data: {channel, data}}`), up to the channel's name.
const PUBLISH_PREFIX: &[u8] = br##"{"event":"#publish","data":{"channel":""##;

/// Decodes one WebSocket message from the server, handing each packet to `on_packet` (a
/// batch holds several). Returns the answer to send back when the message is a ping.
///
/// A load message takes a fast path that allocates nothing: the exact form both servers
/// write, with a payload string that needs no unescaping (the generator's never does).
/// Anything else is parsed as JSON.
pub fn decode(
    msg: Message,
    mut on_packet: impl FnMut(Packet),
) -> Result<Option<&'static str>, SocketClusterError> {
    let bytes: Bytes = match msg {
        Message::Text(text) => Bytes::from(text),
        // The client's codec reads a binary message as its UTF-8 text.
        Message::Binary(bytes) => bytes,
        Message::Close(_) => return Err(SocketClusterError::Closed),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(None),
    };
    match &bytes[..] {
        b"" => return Ok(Some("")),
        b"#1" => return Ok(Some("#2")),
        _ => {}
    }
    if let Some(payload) = fast_publish(&bytes) {
        on_packet(match TimingHeader::from_hex(payload) {
            Some(header) => Packet::Load(header),
            None => Packet::Publish,
        });
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(batch)) => batch.into_iter().for_each(|p| on_packet(packet(p))),
        Ok(single) => on_packet(packet(single)),
        Err(_) => on_packet(Packet::Other),
    }
    Ok(None)
}

/// The payload string of a `#publish` in the servers' exact form, if it is one.
fn fast_publish(text: &[u8]) -> Option<&[u8]> {
    /// The string that starts `rest`, up to its closing quote; `None` if it has an escape.
    fn string(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
        (rest[end] == b'"').then(|| (&rest[..end], &rest[end + 1..]))
    }
    let rest = text.strip_prefix(PUBLISH_PREFIX)?;
    let (_channel, rest) = string(rest)?;
    let rest = rest.strip_prefix(br#","data":""#)?;
    let (payload, rest) = string(rest)?;
    (rest == b"}}").then_some(payload)
}

fn packet(value: Value) -> Packet {
    let Value::Object(mut o) = value else {
        return Packet::Other;
    };
    let data = o.remove("data").unwrap_or(Value::Null);
    match o.get("event").and_then(Value::as_str) {
        Some("#publish") => match data.get("data").and_then(timing_header) {
            Some(header) => Packet::Load(header),
            None => Packet::Publish,
        },
        Some("#kickOut") => Packet::KickOut(
            data.get("channel")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        Some(_) => Packet::Other,
        None => match o.get("rid").and_then(Value::as_u64) {
            Some(rid) => Packet::Answer {
                rid,
                result: match o.get("error") {
                    Some(error) if !error.is_null() => Err(error_text(error)),
                    _ => Ok(data),
                },
            },
            None => Packet::Other,
        },
    }
}

/// The timing header of a channel message's data: a text payload (hex), a binary one (the
/// codec's `{"base64": true, ...}` object, as a native sender's payload arrives), or either
/// inside corelay's `{"event", "data", "from"}` form of another protocol's event.
fn timing_header(data: &Value) -> Option<TimingHeader> {
    match data {
        Value::String(s) => TimingHeader::from_hex(s.as_bytes()),
        Value::Object(o) if o.contains_key("event") && o.contains_key("from") => {
            timing_header(o.get("data")?)
        }
        other => TimingHeader::from_bytes(&binary_of(other)?),
    }
}

/// A dehydrated error's `message` (`name` when it has none).
fn error_text(error: &Value) -> String {
    ["message", "name"]
        .iter()
        .find_map(|k| error.get(k).and_then(Value::as_str))
        .map_or_else(|| error.to_string(), str::to_owned)
}

/// A JSON string literal (quotes and escapes included).
fn json_string(s: &str) -> String {
    // Serialising a &str to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The `#handshake` packet, call id `cid`, with `token` as the stored auth token.
pub fn handshake(cid: u64, token: Option<&str>) -> String {
    let token = token.map_or_else(|| "null".to_owned(), json_string);
    format!(r##"{{"event":"#handshake","data":{{"authToken":{token}}},"cid":{cid}}}"##)
}

/// The `#subscribe` packet for `channel`, call id `cid`.
pub fn subscribe(cid: u64, channel: &str) -> String {
    format!(
        r##"{{"event":"#subscribe","data":{{"channel":{}}},"cid":{cid}}}"##,
        json_string(channel)
    )
}

/// A `#publish` to `channel` (no call id: nothing is answered) up to its data:
/// `{"event":"#publish","data":{"channel":"<channel>","data":"`. A JSON string payload that
/// needs no escaping (the generator's are hex and letters) and [`PUBLISH_SUFFIX`] complete
/// it.
pub fn publish_prefix(channel: &str) -> String {
    format!(
        r##"{{"event":"#publish","data":{{"channel":{},"data":""##,
        json_string(channel)
    )
}

/// What closes a `#publish` after its payload string.
pub const PUBLISH_SUFFIX: &str = "\"}}";

/// A connected SocketCluster client, handshake done.
pub struct SocketClusterClient {
    tx: WsSender,
    rx: WsReceiver,
    next_cid: u64,
    id: String,
}

impl SocketClusterClient {
    /// Connects: TCP, WebSocket upgrade, `#handshake` and its answer.
    pub async fn connect(config: &SocketClusterConfig) -> Result<Self, SocketClusterError> {
        let (tx, rx) = ws::connect(
            config.addr,
            &config.host,
            &config.path,
            config.bind,
            config.max_message_size,
            CONNECT_TIMEOUT,
        )
        .await?;
        let mut client = Self {
            tx,
            rx,
            next_cid: 1,
            id: String::new(),
        };
        let cid = client.cid();
        client
            .tx
            .send_text(&handshake(cid, config.token.as_deref()))?;
        let data = client
            .answer(cid)
            .await?
            .map_err(SocketClusterError::HandshakeRefused)?;
        if config.token.is_some() {
            if let Some(error) = data.get("authError").filter(|e| !e.is_null()) {
                return Err(SocketClusterError::AuthRefused(error_text(error)));
            }
            if data.get("isAuthenticated") != Some(&Value::Bool(true)) {
                return Err(SocketClusterError::AuthRefused("not authenticated".into()));
            }
        }
        client.id = data
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(client)
    }

    /// The socket's id, from the handshake's answer.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cid(&mut self) -> u64 {
        let cid = self.next_cid;
        self.next_cid += 1;
        cid
    }

    /// Reads until the answer to call `cid`, answering pings; other packets are dropped.
    async fn answer(&mut self, cid: u64) -> Result<Result<Value, String>, SocketClusterError> {
        loop {
            let msg = self.rx.next_message().await?;
            let mut found = None;
            let mut kicked = None;
            let pong = decode(msg, |p| match p {
                Packet::Answer { rid, result } if rid == cid => found = Some(result),
                Packet::KickOut(channel) => kicked = Some(channel),
                _ => {}
            })?;
            if let Some(pong) = pong {
                self.tx.send_text(pong)?;
            }
            if let Some(result) = found {
                return Ok(result);
            }
            if let Some(channel) = kicked {
                return Err(SocketClusterError::KickedOut(channel));
            }
        }
    }

    /// `#subscribe` to `channel`, and waits for the server's answer. Channel messages that
    /// arrive before it are dropped.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), SocketClusterError> {
        let cid = self.cid();
        self.tx.send_text(&subscribe(cid, channel))?;
        self.answer(cid)
            .await?
            .map(drop)
            .map_err(SocketClusterError::SubscribeRefused)
    }

    /// Reads and drops what the server sends, answering its pings, until the connection
    /// fails; returns why. Cancelling it loses nothing: a read is either whole or has not
    /// taken any byte.
    pub async fn keep_alive(&mut self) -> SocketClusterError {
        // No call is outstanding: call id 0 is never answered.
        match self.answer(0).await {
            Err(e) => e,
            Ok(_) => SocketClusterError::Closed,
        }
    }

    /// Takes the connection apart for the load phase's event loop: the socket and the
    /// codec (the SocketCluster layer keeps no state between messages).
    pub async fn into_parts(self) -> Result<(OwnedFd, WsCodec), SocketClusterError> {
        Ok(self.rx.into_parts().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header() -> TimingHeader {
        TimingHeader {
            intended_ns: 11,
            sent_ns: 12,
            sender: 13,
            seq: 14,
        }
    }

    fn hex_payload() -> String {
        let mut p = Vec::new();
        header().write_text(64, &mut p);
        String::from_utf8(p).unwrap()
    }

    fn packets(msg: Message) -> (Option<&'static str>, Vec<Packet>) {
        let mut got = Vec::new();
        let pong = decode(msg, |p| got.push(p)).unwrap();
        (pong, got)
    }

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    #[test]
    fn the_clients_packets_are_the_protocols() {
        let v = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        assert_eq!(
            v(handshake(1, None)),
            json!({"event":"#handshake","data":{"authToken":null},"cid":1})
        );
        assert_eq!(
            v(handshake(1, Some("a.b\"c"))),
            json!({"event":"#handshake","data":{"authToken":"a.b\"c"},"cid":1})
        );
        assert_eq!(
            v(subscribe(2, "lg-1")),
            json!({"event":"#subscribe","data":{"channel":"lg-1"},"cid":2})
        );
        let publish = format!(
            "{}{}{PUBLISH_SUFFIX}",
            publish_prefix("lg-1"),
            hex_payload()
        );
        assert_eq!(
            v(publish.clone()),
            json!({"event":"#publish","data":{"channel":"lg-1","data":hex_payload()}})
        );
        // What corelay's server reads: a publish with no call id.
        match corelay::proto::socketcluster::decode(&publish).unwrap() {
            corelay::proto::socketcluster::Inbound::Packets(p) => assert_eq!(
                p,
                vec![Ok(corelay::proto::socketcluster::Packet::Publish {
                    cid: None,
                    channel: "lg-1".into(),
                    data: json!(hex_payload()),
                })]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pings_are_answered_in_their_own_form() {
        assert_eq!(packets(text("")), (Some(""), vec![]));
        assert_eq!(packets(text("#1")), (Some("#2"), vec![]));
        assert_eq!(packets(Message::Binary(Bytes::new())), (Some(""), vec![]));
        assert!(matches!(
            decode(Message::Close(None), |_| {}),
            Err(SocketClusterError::Closed)
        ));
    }

    #[test]
    fn channel_messages_carry_the_timing_header() {
        // The servers' exact form: the fast path.
        let fast = format!(
            r##"{{"event":"#publish","data":{{"channel":"lg7-3","data":"{}"}}}}"##,
            hex_payload()
        );
        assert_eq!(
            fast_publish(fast.as_bytes()),
            Some(hex_payload().as_bytes())
        );
        assert_eq!(packets(text(&fast)).1, vec![Packet::Load(header())]);
        // Another key order, spaces, an escaped channel, a batch: the JSON path.
        let slow = format!(
            r##"[{{"data": {{"data": "{}", "channel": "a\"b"}}, "event": "#publish"}}, {{"event":"member_joined","data":{{}}}}]"##,
            hex_payload()
        );
        assert_eq!(fast_publish(slow.as_bytes()), None);
        assert_eq!(
            packets(text(&slow)).1,
            vec![Packet::Load(header()), Packet::Other]
        );
        // A native sender's binary payload, and another protocol's event in corelay's form.
        let mut binary = Vec::new();
        header().write_binary(32, &mut binary);
        let b64 = corelay::proto::socketcluster::binary_value(&binary);
        let msg = json!({"event":"#publish","data":{"channel":"c","data":b64}}).to_string();
        assert_eq!(packets(text(&msg)).1, vec![Packet::Load(header())]);
        let msg = json!({"event":"#publish","data":{"channel":"c",
            "data":{"event":"msg","data":hex_payload(),"from":"p1"}}})
        .to_string();
        assert_eq!(
            packets(Message::binary(msg)).1,
            vec![Packet::Load(header())]
        );
        // Not a load message.
        let msg = r##"{"event":"#publish","data":{"channel":"c","data":"hello"}}"##;
        assert_eq!(packets(text(msg)).1, vec![Packet::Publish]);
        let msg = r##"{"event":"#publish","data":{"channel":"c","data":{"x":1}}}"##;
        assert_eq!(packets(text(msg)).1, vec![Packet::Publish]);
    }

    #[test]
    fn answers_kicks_and_noise() {
        assert_eq!(
            packets(text(
                r#"{"rid":1,"data":{"id":"s1","pingTimeout":20000,"isAuthenticated":false}}"#
            ))
            .1,
            vec![Packet::Answer {
                rid: 1,
                result: Ok(json!({"id":"s1","pingTimeout":20000,"isAuthenticated":false}))
            }]
        );
        assert_eq!(
            packets(text(r#"{"rid":2}"#)).1,
            vec![Packet::Answer {
                rid: 2,
                result: Ok(Value::Null)
            }]
        );
        assert_eq!(
            packets(text(
                r#"{"rid":3,"error":{"name":"InvalidActionError","message":"room full"}}"#
            ))
            .1,
            vec![Packet::Answer {
                rid: 3,
                result: Err("room full".into())
            }]
        );
        assert_eq!(
            packets(text(
                r#"{"rid":4,"error":{"name":"SilentMiddlewareBlockedError"}}"#
            ))
            .1,
            vec![Packet::Answer {
                rid: 4,
                result: Err("SilentMiddlewareBlockedError".into())
            }]
        );
        assert_eq!(
            packets(text(
                r##"{"event":"#kickOut","data":{"channel":"c","message":"bye"}}"##
            ))
            .1,
            vec![Packet::KickOut("c".into())]
        );
        for noise in ["{not json", "42", r#"{"hello":1}"#, "#2"] {
            assert_eq!(packets(text(noise)), (None, vec![Packet::Other]), "{noise}");
        }
    }
}
