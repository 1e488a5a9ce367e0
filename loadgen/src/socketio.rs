//! A minimal Socket.IO v4 client (Engine.IO v4, WebSocket transport only) for glommio.
//!
//! Only what the relay convention needs: connect to the main namespace, `join` a room with
//! an ack, emit `to`, receive `msg` events, answer Engine.IO pings. That is enough to
//! measure corelay's socket.io side and any socket.io server implementing the convention
//! (see `loadgen/reference/socketio-relay.js`). For `matchmake`, corelay's matchmaking
//! events too: `mm:queue` with an ack, then `mm:matched`, `mm:timeout` or `mm:cancelled`.
//!
//! The WebSocket is corelay's client side ([`corelay::client::ws`]): the same upgrade,
//! framing and codec as the native client and the server. What is here is the Engine.IO
//! and Socket.IO layer, split into a sans-IO [`SioDecoder`] (text and binary messages in,
//! packets and the replies to send out) that the load phase's event loop also uses, and
//! the async client for the setup (connect, namespace, join).
//!
//! Wire summary (text frames): `0{open}` from the server, `40` from us, `40{"sid":..}` back;
//! `2` ping -> `3` pong; `421["join","room"]` -> `431[{"room":..,"members":N}]`;
//! `42["to","room","msg","<payload>"]`; incoming `42["msg","<payload>",<from>]`, or
//! `451-["msg",{"_placeholder":true,"num":0},<from>]` followed by one binary frame when the
//! sender's payload was binary. A server that recovers sessions (socket.io's connection state
//! recovery, corelay's default) adds a `pid` to the CONNECT answer and the room's offset as
//! the last argument of each event; the parser reads the payload and ignores the rest.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use corelay::client::{ws, ClientError, WsReceiver, WsSender};
use corelay::proto::ws::WsCodec;
use tungstenite::Message;

use crate::tickets::{Ticket, TicketOutcome};

/// Time allowed for TCP connect and the WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the socket.io client.
#[derive(Debug, thiserror::Error)]
pub enum SocketIoError {
    /// The WebSocket failed: connect, upgrade, framing or the socket.
    #[error("{0}")]
    WebSocket(#[from] ClientError),
    /// An Engine.IO or Socket.IO packet that this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the namespace connection (`44{...}`).
    #[error("namespace connect refused: {0}")]
    ConnectRefused(String),
    /// The server answered `join` with an error.
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// The server closed the connection (Engine.IO close, WebSocket close or EOF).
    #[error("connection closed by the server")]
    Closed,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct SocketIoConfig {
    /// Resolved server address.
    pub addr: SocketAddr,
    /// `Host` header value (`host:port` of the URL).
    pub host: String,
    /// Engine.IO path, e.g. `/socket.io/`.
    pub path: String,
    /// Local source address to bind before connecting.
    pub bind: Option<IpAddr>,
    /// Largest WebSocket message accepted from the server.
    pub max_message_size: usize,
    /// JWT sent in the CONNECT auth payload (`{"token": ...}`), as `io(url, {auth})` does.
    pub token: Option<String>,
}

/// A payload received in a `msg` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The payload: the JSON string's characters (no escapes are decoded: the load
    /// generator never sends any), or the binary attachment's bytes.
    pub bytes: Bytes,
    /// True when it arrived as a JSON string, false when as a binary attachment.
    pub text: bool,
}

/// A Socket.IO packet, as far as this client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// A `msg` event with its payload.
    Msg(Payload),
    /// A `msg` binary event whose payload comes in the next binary frame(s).
    MsgAwaitingAttachment,
    /// A matchmaking event (`mm:matched`, `mm:timeout`, `mm:cancelled`) about a ticket.
    Ticket {
        /// The ticket's id (`ticket_id`).
        ticket: u64,
        /// What came of it.
        outcome: TicketOutcome,
    },
    /// Any other event.
    OtherEvent,
    /// An ack with its id and JSON arguments.
    Ack {
        /// The ack id.
        id: u64,
        /// The arguments, as JSON text.
        args: String,
    },
    /// Namespace connected, with its JSON data.
    Connected(String),
    /// Namespace connect refused, with its JSON data.
    ConnectError(String),
    /// Namespace disconnected by the server.
    Disconnect,
}

/// Parses a Socket.IO packet (the text after Engine.IO's `4`).
fn parse_socketio(p: &Bytes) -> Result<Packet, SocketIoError> {
    let bad = || SocketIoError::Protocol(format!("bad packet {:?}", String::from_utf8_lossy(p)));
    let kind = *p.first().ok_or_else(bad)?;
    let mut i = 1;
    let mut attachments = 0u32;
    if kind == b'5' || kind == b'6' {
        let digits = p[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        attachments = std::str::from_utf8(&p[i..i + digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        i += digits;
        if p.get(i) != Some(&b'-') {
            return Err(bad());
        }
        i += 1;
    }
    if p.get(i) == Some(&b'/') {
        // A namespace other than the main one: skip to its comma.
        let comma = p[i..].iter().position(|&c| c == b',').ok_or_else(bad)?;
        i += comma + 1;
    }
    let digits = p[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let ack_id: Option<u64> = if digits > 0 {
        std::str::from_utf8(&p[i..i + digits])
            .ok()
            .and_then(|s| s.parse().ok())
    } else {
        None
    };
    i += digits;
    let data = p.slice(i..);
    let data_str = || String::from_utf8_lossy(&data).into_owned();
    match kind {
        b'0' => Ok(Packet::Connected(data_str())),
        b'1' => Ok(Packet::Disconnect),
        b'2' => Ok(parse_event(&data)),
        b'3' | b'6' => Ok(Packet::Ack {
            id: ack_id.ok_or_else(bad)?,
            args: data_str(),
        }),
        b'4' => Ok(Packet::ConnectError(data_str())),
        b'5' if attachments > 0 && data.starts_with(br#"["msg",{"_placeholder":true"#) => {
            Ok(Packet::MsgAwaitingAttachment)
        }
        b'5' => Ok(Packet::OtherEvent),
        _ => Err(bad()),
    }
}

/// An EVENT's data: `["msg","<payload>",<from>]` is the fast path; anything else is parsed
/// as JSON only to find out that it is not a `msg` with a string payload.
fn parse_event(data: &Bytes) -> Packet {
    const PREFIX: &[u8] = br#"["msg",""#;
    if let Some(rest) = data.strip_prefix(PREFIX) {
        if let Some(len) = rest.iter().position(|&c| c == b'"' || c == b'\\') {
            if rest[len] == b'"' {
                let start = PREFIX.len();
                return Packet::Msg(Payload {
                    bytes: data.slice(start..start + len),
                    text: true,
                });
            }
        }
    }
    // Slow path: escapes, spaces or another event.
    let Ok(args) = serde_json::from_slice::<Vec<serde_json::Value>>(data) else {
        return Packet::OtherEvent;
    };
    match (args.first().and_then(|v| v.as_str()), args.get(1)) {
        (Some("msg"), Some(serde_json::Value::String(s))) => Packet::Msg(Payload {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            text: true,
        }),
        (Some(name), Some(data)) if name.starts_with("mm:") => {
            ticket_event(name, data).unwrap_or(Packet::OtherEvent)
        }
        _ => Packet::OtherEvent,
    }
}

/// A matchmaking event: `mm:matched {ticket_id, room, players}`, `mm:timeout {ticket_id}`,
/// `mm:cancelled {ticket_id, reason}`; `None` for anything else.
fn ticket_event(name: &str, data: &serde_json::Value) -> Option<Packet> {
    let ticket = data.get("ticket_id")?.as_u64()?;
    let outcome = match name {
        "mm:matched" => TicketOutcome::Matched {
            room: data.get("room")?.as_str()?.to_owned(),
            players: data
                .get("players")
                .and_then(|p| p.as_array())
                .map_or(0, Vec::len),
        },
        "mm:timeout" => TicketOutcome::TimedOut,
        "mm:cancelled" => match data.get("reason").and_then(|r| r.as_str()) {
            Some("refused") => TicketOutcome::Refused("refused".into()),
            Some(why) => TicketOutcome::Withdrawn(why.to_owned()),
            None => TicketOutcome::Withdrawn("cancelled".into()),
        },
        _ => return None,
    };
    Some(Packet::Ticket { ticket, outcome })
}

/// Writes a JSON string literal (quotes and escapes included).
fn json_string(s: &str) -> String {
    // Serialising a &str to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// What a message from the server means, from [`SioDecoder::on_message`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A Socket.IO packet.
    Packet(Packet),
    /// Send this text message back (the Engine.IO pong to a ping).
    Reply(String),
    /// Nothing to do (an Engine.IO pong or noop, or half of a binary event).
    Nothing,
    /// The server closed the session.
    Closed,
}

/// The Engine.IO and Socket.IO layer of one connection, sans-IO.
#[derive(Debug, Default)]
pub struct SioDecoder {
    awaiting_attachment: bool,
}

impl SioDecoder {
    /// Decodes one WebSocket message from the server.
    pub fn on_message(&mut self, msg: Message) -> Result<Decoded, SocketIoError> {
        match msg {
            Message::Text(text) => {
                let bytes = Bytes::from(text);
                match bytes.first() {
                    // Engine.IO heartbeat: the server pings, the client pongs with the same
                    // payload (usually none).
                    Some(b'2') => Ok(Decoded::Reply(format!(
                        "3{}",
                        String::from_utf8_lossy(&bytes[1..])
                    ))),
                    Some(b'1') => Ok(Decoded::Closed),
                    Some(b'4') => {
                        let packet = parse_socketio(&bytes.slice(1..))?;
                        if packet == Packet::MsgAwaitingAttachment {
                            self.awaiting_attachment = true;
                            return Ok(Decoded::Nothing);
                        }
                        Ok(Decoded::Packet(packet))
                    }
                    Some(_) => Ok(Decoded::Nothing),
                    None => Err(SocketIoError::Protocol("empty packet".into())),
                }
            }
            Message::Binary(bytes) if std::mem::take(&mut self.awaiting_attachment) => {
                Ok(Decoded::Packet(Packet::Msg(Payload { bytes, text: false })))
            }
            Message::Close(_) => Ok(Decoded::Closed),
            _ => Ok(Decoded::Nothing),
        }
    }
}

/// The Engine.IO message text of `emit("to", room, event, payload)` up to the payload:
/// `42["to","<room>","<event>","`. A JSON string payload that needs no escaping (the load
/// generator's are hex and letters) and `"]` complete it.
pub fn to_room_prefix(room: &str, event: &str) -> String {
    format!("42[\"to\",{},{},\"", json_string(room), json_string(event))
}

/// A connected Socket.IO client (main namespace).
pub struct SocketIoClient {
    tx: WsSender,
    rx: WsReceiver,
    decoder: SioDecoder,
    next_ack: u64,
}

impl SocketIoClient {
    /// Connects: TCP, WebSocket upgrade, Engine.IO open, Socket.IO namespace connect.
    pub async fn connect(config: &SocketIoConfig) -> Result<Self, SocketIoError> {
        let separator = if config.path.contains('?') { '&' } else { '?' };
        let path = format!("{}{separator}EIO=4&transport=websocket", config.path);
        let (tx, mut rx) = ws::connect(
            config.addr,
            &config.host,
            &path,
            config.bind,
            config.max_message_size,
            CONNECT_TIMEOUT,
        )
        .await?;
        // Engine.IO open packet: 0{"sid":..,"pingInterval":..,...}
        match rx.next_message().await? {
            Message::Text(t) if t.starts_with('0') => {}
            other => {
                return Err(SocketIoError::Protocol(format!(
                    "expected the Engine.IO open packet, got {other:?}"
                )))
            }
        }
        match &config.token {
            Some(token) => tx.send_text(&format!("40{{\"token\":{}}}", json_string(token)))?,
            None => tx.send_text("40")?,
        }
        let mut client = Self {
            tx,
            rx,
            decoder: SioDecoder::default(),
            next_ack: 1,
        };
        loop {
            match client.next_packet().await? {
                Packet::Connected(_) => return Ok(client),
                Packet::ConnectError(data) => return Err(SocketIoError::ConnectRefused(data)),
                Packet::Disconnect => return Err(SocketIoError::Closed),
                _ => {}
            }
        }
    }

    async fn next_packet(&mut self) -> Result<Packet, SocketIoError> {
        loop {
            let msg = self.rx.next_message().await?;
            match self.decoder.on_message(msg)? {
                Decoded::Packet(p) => return Ok(p),
                Decoded::Reply(text) => self.tx.send_text(&text)?,
                Decoded::Nothing => {}
                Decoded::Closed => return Err(SocketIoError::Closed),
            }
        }
    }

    /// `emit("join", room, ack)`: returns the room's member count after the join.
    /// Events that arrive before the ack are dropped.
    pub async fn join(&mut self, room: &str) -> Result<u32, SocketIoError> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.tx
            .send_text(&format!("42{id}[\"join\",{}]", json_string(room)))?;
        loop {
            match self.next_packet().await? {
                Packet::Ack { id: got, args } if got == id => {
                    let value: serde_json::Value = serde_json::from_str(&args)
                        .map_err(|e| SocketIoError::Protocol(format!("join ack {args}: {e}")))?;
                    let first = value.get(0).cloned().unwrap_or_default();
                    if let Some(err) = first.get("error") {
                        return Err(SocketIoError::JoinRefused(err.to_string()));
                    }
                    return Ok(first.get("members").and_then(|m| m.as_u64()).unwrap_or(0) as u32);
                }
                Packet::Disconnect => return Err(SocketIoError::Closed),
                _ => {}
            }
        }
    }

    /// `emit("mm:queue", {queue, skill, region?}, ack)`, then waits for what comes of the
    /// ticket: `mm:matched` (the client is a member of the match's room), `mm:timeout` or
    /// `mm:cancelled`; an `{error}` ack is [`TicketOutcome::Refused`]. Other events are
    /// dropped.
    pub async fn matchmake(&mut self, ticket: &Ticket) -> Result<TicketOutcome, SocketIoError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut request = serde_json::json!({ "queue": ticket.queue, "skill": ticket.skill });
        if let Some(region) = &ticket.region {
            request["region"] = region.as_str().into();
        }
        self.tx
            .send_text(&format!("42{id}[\"mm:queue\",{request}]"))?;
        // The outcome comes from the match's room, the ack from the queue's shard: with
        // several shards the outcome may come first.
        let mut ticket_id = None;
        let mut early = Vec::new();
        loop {
            match self.next_packet().await? {
                Packet::Ack { id: got, args } if got == id => {
                    let value: serde_json::Value = serde_json::from_str(&args).map_err(|e| {
                        SocketIoError::Protocol(format!("mm:queue ack {args}: {e}"))
                    })?;
                    let first = value.get(0).cloned().unwrap_or_default();
                    if let Some(err) = first.get("error") {
                        let why = err.as_str().map_or_else(|| err.to_string(), str::to_owned);
                        return Ok(TicketOutcome::Refused(why));
                    }
                    let Some(got) = first.get("ticket_id").and_then(|t| t.as_u64()) else {
                        return Err(SocketIoError::Protocol(format!("mm:queue ack {args}")));
                    };
                    if let Some((_, outcome)) = early.into_iter().find(|(t, _)| *t == got) {
                        return Ok(outcome);
                    }
                    ticket_id = Some(got);
                    early = Vec::new();
                }
                Packet::Ticket { ticket, outcome } => match ticket_id {
                    Some(id) if id == ticket => return Ok(outcome),
                    Some(_) => {}
                    None => early.push((ticket, outcome)),
                },
                Packet::Disconnect => return Err(SocketIoError::Closed),
                _ => {}
            }
        }
    }

    /// Reads and drops what the server sends, answering its pings, until the connection
    /// fails; returns why. Keeps an idle client alive while it waits for the load phase.
    /// Cancelling it loses nothing: a read is either whole or has not taken any byte.
    pub async fn keep_alive(&mut self) -> SocketIoError {
        loop {
            match self.next_packet().await {
                Ok(Packet::Disconnect) => return SocketIoError::Closed,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// Takes the connection apart for the load phase's event loop: the socket, the codec,
    /// and the Socket.IO decoder state.
    pub async fn into_parts(self) -> Result<(OwnedFd, WsCodec, SioDecoder), SocketIoError> {
        let (fd, codec) = self.rx.into_parts().await?;
        Ok((fd, codec, self.decoder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(s: &str) -> Packet {
        parse_socketio(&Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn msg_event_fast_path() {
        assert_eq!(
            packet(r#"2["msg","00ffxx",17]"#),
            Packet::Msg(Payload {
                bytes: Bytes::from_static(b"00ffxx"),
                text: true
            })
        );
        assert_eq!(
            packet(r#"2["msg","abc","player-1"]"#),
            Packet::Msg(Payload {
                bytes: Bytes::from_static(b"abc"),
                text: true
            })
        );
    }

    #[test]
    fn msg_event_slow_path_and_other_events() {
        assert_eq!(
            packet(r#"2[ "msg" , "a\"b", 1]"#),
            Packet::Msg(Payload {
                bytes: Bytes::from_static(b"a\"b"),
                text: true
            })
        );
        assert_eq!(packet(r#"2["chat","hi"]"#), Packet::OtherEvent);
        assert_eq!(packet(r#"2["msg",{"x":1}]"#), Packet::OtherEvent);
    }

    #[test]
    fn acks_connect_and_binary() {
        assert_eq!(
            packet(r#"31[{"room":"r","members":3}]"#),
            Packet::Ack {
                id: 1,
                args: r#"[{"room":"r","members":3}]"#.into()
            }
        );
        assert_eq!(
            packet(r#"0{"sid":"abc"}"#),
            Packet::Connected(r#"{"sid":"abc"}"#.into())
        );
        assert_eq!(
            packet(r#"4{"message":"no"}"#),
            Packet::ConnectError(r#"{"message":"no"}"#.into())
        );
        assert_eq!(
            packet(r#"51-["msg",{"_placeholder":true,"num":0},7]"#),
            Packet::MsgAwaitingAttachment
        );
        assert_eq!(
            packet(r#"2/admin,["msg","x",1]"#),
            packet(r#"2["msg","x",1]"#)
        );
        assert!(parse_socketio(&Bytes::from_static(b"9")).is_err());
        assert!(parse_socketio(&Bytes::from_static(b"5x-[]")).is_err());
    }

    #[test]
    fn matchmaking_events() {
        assert_eq!(
            packet(
                r##"2["mm:matched",{"ticket_id":7,"room":"#ab12","code":"ab12","host":"p1","players":[{"id":"p1"},{"id":"p2"}]}]"##
            ),
            Packet::Ticket {
                ticket: 7,
                outcome: TicketOutcome::Matched {
                    room: "#ab12".into(),
                    players: 2
                }
            }
        );
        assert_eq!(
            packet(r#"2["mm:timeout",{"ticket_id":8}]"#),
            Packet::Ticket {
                ticket: 8,
                outcome: TicketOutcome::TimedOut
            }
        );
        assert_eq!(
            packet(r#"2["mm:cancelled",{"ticket_id":9,"reason":"refused","player":null}]"#),
            Packet::Ticket {
                ticket: 9,
                outcome: TicketOutcome::Refused("refused".into())
            }
        );
        assert_eq!(
            packet(r#"2["mm:cancelled",{"ticket_id":9,"reason":"disconnected","player":"p2"}]"#),
            Packet::Ticket {
                ticket: 9,
                outcome: TicketOutcome::Withdrawn("disconnected".into())
            }
        );
        assert_eq!(
            packet(r##"2["mm:matched",{"room":"#x"}]"##),
            Packet::OtherEvent
        );
        assert_eq!(
            packet(r#"2["mm:other",{"ticket_id":1}]"#),
            Packet::OtherEvent
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("room \"1\""), r#""room \"1\"""#);
    }

    #[test]
    fn the_decoder_answers_pings_and_joins_binary_events_with_their_attachment() {
        let mut d = SioDecoder::default();
        assert_eq!(
            d.on_message(Message::text("2")).unwrap(),
            Decoded::Reply("3".into())
        );
        assert_eq!(d.on_message(Message::text("3")).unwrap(), Decoded::Nothing);
        assert_eq!(
            d.on_message(Message::text(
                r#"451-["msg",{"_placeholder":true,"num":0},7]"#
            ))
            .unwrap(),
            Decoded::Nothing
        );
        assert_eq!(
            d.on_message(Message::Binary(Bytes::from_static(b"\x01\x02")))
                .unwrap(),
            Decoded::Packet(Packet::Msg(Payload {
                bytes: Bytes::from_static(b"\x01\x02"),
                text: false
            }))
        );
        // A binary message with no announcement is nothing.
        assert_eq!(
            d.on_message(Message::Binary(Bytes::from_static(b"x")))
                .unwrap(),
            Decoded::Nothing
        );
        assert_eq!(d.on_message(Message::text("1")).unwrap(), Decoded::Closed);
        assert_eq!(to_room_prefix("r\"", "msg"), r#"42["to","r\"","msg",""#);
    }
}
