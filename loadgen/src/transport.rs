//! One interface over the client protocols: connect and join during the setup (async,
//! on glommio), then, for the load phase's event loop, the connection taken apart
//! ([`Parts`]) with sans-IO encoding of load messages and decoding of what arrives.
//!
//! Enums rather than trait objects: the set is closed, and the futures stay `!Send`
//! glommio futures without boxing.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use bytes::Bytes;
use corelay::client::{Client, ClientConfig, ClientError, PayloadKind, ServerEvent};
use corelay::proto::native::{
    self, ArchivedClientFrame, ArchivedServerFrame, ClientFrame, ErrorCode, TicketSpec,
    UnqueueReason,
};
use corelay::proto::ws::{self, WsCodec};
use tungstenite::Message;

use crate::header::{TimingHeader, BINARY_LEN, TEXT_LEN};
use crate::options::Protocol;
use crate::socketcluster::{
    self, SocketClusterClient, SocketClusterConfig, SocketClusterError, PUBLISH_SUFFIX,
};
use crate::socketio::{
    to_room_prefix, Decoded, Packet, SioDecoder, SocketIoClient, SocketIoConfig, SocketIoError,
};
use crate::tickets::{Ticket, TicketOutcome};

/// The event name load messages are sent under.
pub const EVENT: &str = "msg";

/// Where to connect, resolved once for all clients.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Wire protocol.
    pub protocol: Protocol,
    /// The URL as given (the native client parses it itself).
    pub url: String,
    /// Resolved server address.
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
    /// Path of the URL (e.g. `/ws`, `/socket.io/`).
    pub path: String,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// JWT presented at connect.
    pub token: Option<String>,
}

/// A transport failure, reduced to the text of the underlying error.
///
/// The load generator only counts and prints failures, so one string is enough here; the
/// first word or two become the failure "reason" in the report (see [`reason`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

impl From<SocketIoError> for TransportError {
    fn from(e: SocketIoError) -> Self {
        Self(e.to_string())
    }
}

impl From<SocketClusterError> for TransportError {
    fn from(e: SocketClusterError) -> Self {
        Self(e.to_string())
    }
}

impl From<corelay::client::ClientError> for TransportError {
    fn from(e: corelay::client::ClientError) -> Self {
        Self(e.to_string())
    }
}

/// A short, stable failure reason for grouping: "connection refused", "timeout",
/// "reset", ... or the error text cut at 60 characters. A server's refusal of a request
/// (`join refused: room full`, `subscribe refused: ...`, `handshake refused: ...`) keeps its
/// own words: they say why.
pub fn reason(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains(" refused: ") {
        return error.chars().take(60).collect();
    }
    let known = [
        ("refused", "connection refused"),
        ("timed out", "timeout"),
        ("timeout", "timeout"),
        ("reset", "connection reset"),
        ("broken pipe", "broken pipe"),
        ("address not available", "no source address/port"),
        ("address already in use", "no source address/port"),
        ("too many open files", "fd limit"),
        ("upgrade", "websocket upgrade"),
        ("handshake", "websocket upgrade"),
        ("closed", "closed by server"),
    ];
    for (needle, reason) in known {
        if lower.contains(needle) {
            return reason.to_string();
        }
    }
    error.chars().take(60).collect()
}

/// A connected client, during the setup.
pub enum Connection {
    /// corelay's native protocol.
    Native(Client),
    /// Socket.IO v4.
    SocketIo(SocketIoClient),
    /// SocketCluster (`socketcluster-client` 20.x's protocol).
    SocketCluster(SocketClusterClient),
}

impl Connection {
    /// Connects and completes the protocol handshake.
    pub async fn connect(
        endpoint: &Endpoint,
        bind: Option<IpAddr>,
    ) -> Result<Self, TransportError> {
        match endpoint.protocol {
            Protocol::Native => {
                let mut config = ClientConfig::new(endpoint.url.clone());
                config.bind = bind;
                config.max_message_size = endpoint.max_message_size;
                config.token = endpoint.token.clone();
                Ok(Self::Native(Client::connect(&config).await?))
            }
            Protocol::SocketIo => {
                let config = SocketIoConfig {
                    addr: endpoint.addr,
                    host: endpoint.host.clone(),
                    path: endpoint.path.clone(),
                    bind,
                    max_message_size: endpoint.max_message_size,
                    token: endpoint.token.clone(),
                };
                Ok(Self::SocketIo(SocketIoClient::connect(&config).await?))
            }
            Protocol::SocketCluster => {
                let config = SocketClusterConfig {
                    addr: endpoint.addr,
                    host: endpoint.host.clone(),
                    path: endpoint.path.clone(),
                    bind,
                    max_message_size: endpoint.max_message_size,
                    token: endpoint.token.clone(),
                };
                Ok(Self::SocketCluster(
                    SocketClusterClient::connect(&config).await?,
                ))
            }
        }
    }

    /// Joins `room` (SocketCluster: subscribes to the channel of that name); returns its
    /// member count after the join, 0 where the protocol does not tell.
    pub async fn join(&mut self, room: &str) -> Result<u32, TransportError> {
        match self {
            Self::Native(c) => Ok(c.join(room).await?),
            Self::SocketIo(c) => Ok(c.join(room).await?),
            Self::SocketCluster(c) => {
                c.subscribe(room).await?;
                Ok(0)
            }
        }
    }

    /// Queues `ticket` for matchmaking and waits for what comes of it. On
    /// [`TicketOutcome::Matched`] the client is a member of the match's room already.
    pub async fn matchmake(&mut self, ticket: &Ticket) -> Result<TicketOutcome, TransportError> {
        match self {
            Self::Native(c) => {
                let spec = TicketSpec {
                    queue: ticket.queue.clone(),
                    skill: ticket.skill,
                    region: ticket.region.clone().unwrap_or_default(),
                    properties: Vec::new(),
                    party: Vec::new(),
                };
                let id = match c.queue(spec).await {
                    Ok(id) => id,
                    Err(ClientError::Server { code, message }) => {
                        let why = ErrorCode::from_code(code).map_or(message, |c| c.name().into());
                        return Ok(TicketOutcome::Refused(why));
                    }
                    Err(e) => return Err(e.into()),
                };
                loop {
                    match c.next_event().await? {
                        ServerEvent::Matched {
                            ticket,
                            room,
                            players,
                            ..
                        } if ticket == id => {
                            return Ok(TicketOutcome::Matched {
                                room,
                                players: players.len(),
                            })
                        }
                        ServerEvent::Unqueued { ticket, reason, .. } if ticket == id => {
                            return Ok(match reason {
                                UnqueueReason::TimedOut => TicketOutcome::TimedOut,
                                UnqueueReason::Refused => TicketOutcome::Refused("refused".into()),
                                UnqueueReason::Cancelled => {
                                    TicketOutcome::Withdrawn("cancelled".into())
                                }
                                UnqueueReason::Disconnected => {
                                    TicketOutcome::Withdrawn("disconnected".into())
                                }
                            })
                        }
                        _ => {}
                    }
                }
            }
            Self::SocketIo(c) => Ok(c.matchmake(ticket).await?),
            // `Options::validate` refuses `matchmake` over SocketCluster.
            Self::SocketCluster(_) => Err(TransportError(
                "matchmaking is not spoken over socketcluster".into(),
            )),
        }
    }

    /// Reads and drops what the server sends, answering its pings, until the connection
    /// fails; returns why. Keeps a client alive while it waits for the load phase (the
    /// server closes a connection that answers no ping). Cancelling it loses nothing: a
    /// read is either whole or has not taken any byte (glommio reads sockets on readiness).
    pub async fn keep_alive(&mut self) -> TransportError {
        match self {
            Self::Native(c) => loop {
                if let Err(e) = c.next_event().await {
                    return e.into();
                }
            },
            Self::SocketIo(c) => c.keep_alive().await.into(),
            Self::SocketCluster(c) => c.keep_alive().await.into(),
        }
    }

    /// Takes the connection apart for the load phase.
    pub async fn into_parts(self) -> Result<Parts, TransportError> {
        match self {
            Self::Native(c) => {
                let (fd, codec) = c.into_parts().await?;
                Ok(Parts {
                    fd,
                    codec,
                    wire: Wire::Native,
                })
            }
            Self::SocketIo(c) => {
                let (fd, codec, decoder) = c.into_parts().await?;
                Ok(Parts {
                    fd,
                    codec,
                    wire: Wire::SocketIo(decoder),
                })
            }
            Self::SocketCluster(c) => {
                let (fd, codec) = c.into_parts().await?;
                Ok(Parts {
                    fd,
                    codec,
                    wire: Wire::SocketCluster,
                })
            }
        }
    }
}

/// A connection taken apart: its socket, its WebSocket codec, its protocol state.
pub struct Parts {
    /// The socket (blocking mode, for io_uring).
    pub fd: OwnedFd,
    /// The client codec, with whatever it has buffered.
    pub codec: WsCodec,
    /// The protocol.
    pub wire: Wire,
}

/// One sender's load message, encoded once: from one message to the next only the timing
/// header at the start of the payload changes, so sending one is a copy of the header and
/// a masked copy of the body, with no allocation.
#[derive(Debug, Default)]
pub struct LoadMessage {
    /// The WebSocket message body: an rkyv `Send` frame, Engine.IO text, or a SocketCluster
    /// `#publish` packet.
    body: Vec<u8>,
    /// Where the payload starts in `body`.
    payload_at: usize,
    /// A text message (socket.io, SocketCluster), else binary (native).
    text: bool,
}

impl LoadMessage {
    /// Appends the masked WebSocket frame of the message carrying `header` to `out`.
    pub fn write(&mut self, header: &TimingHeader, mask: [u8; 4], out: &mut Vec<u8>) {
        let at = self.payload_at;
        if self.text {
            self.body[at..at + TEXT_LEN].copy_from_slice(&header.to_hex());
        } else {
            self.body[at..at + BINARY_LEN].copy_from_slice(&header.to_bytes());
        }
        ws::write_masked_frame(self.text, &self.body, mask, out);
    }
}

/// A protocol's encoding of load messages and decoding of what arrives, sans-IO.
pub enum Wire {
    /// Native: rkyv frames in binary messages.
    Native,
    /// Socket.IO: Engine.IO text packets, binary attachments.
    SocketIo(SioDecoder),
    /// SocketCluster: JSON packets in text messages (no state between messages).
    SocketCluster,
}

impl Wire {
    /// The load message of a sender in `room`, with a payload of `size` bytes.
    pub fn load_message(&self, room: &str, size: usize) -> LoadMessage {
        let mut payload = Vec::new();
        match self {
            Wire::Native => {
                TimingHeader::default().write_binary(size, &mut payload);
                let frame = ClientFrame::Send {
                    req: 0,
                    room: room.to_owned(),
                    event: EVENT.to_owned(),
                    payload: Bytes::from(payload),
                    kind: PayloadKind::Binary,
                };
                let body = native::encode_client(&frame);
                // The archive holds the payload's bytes as they are: find where.
                let Ok(ArchivedClientFrame::Send { payload, .. }) = native::access_client(&body)
                else {
                    unreachable!("an encoded Send frame reads back as one");
                };
                let payload_at = payload.as_slice().as_ptr() as usize - body.as_ptr() as usize;
                LoadMessage {
                    body,
                    payload_at,
                    text: false,
                }
            }
            Wire::SocketIo(_) => {
                TimingHeader::default().write_text(size, &mut payload);
                let mut body = to_room_prefix(room, EVENT).into_bytes();
                let payload_at = body.len();
                body.extend_from_slice(&payload);
                body.extend_from_slice(b"\"]");
                LoadMessage {
                    body,
                    payload_at,
                    text: true,
                }
            }
            // The same text payload as socket.io's, as the channel message's data.
            Wire::SocketCluster => {
                TimingHeader::default().write_text(size, &mut payload);
                let mut body = socketcluster::publish_prefix(room).into_bytes();
                let payload_at = body.len();
                body.extend_from_slice(&payload);
                body.extend_from_slice(PUBLISH_SUFFIX.as_bytes());
                LoadMessage {
                    body,
                    payload_at,
                    text: true,
                }
            }
        }
    }

    /// Decodes one message from the server: the timing header of each load message it
    /// holds goes into `headers` (a SocketCluster batch may hold several), anything else
    /// is dropped. The answer to a ping goes into `reply` (text to send).
    pub fn decode(
        &mut self,
        msg: Message,
        reply: &mut Option<String>,
        headers: &mut Vec<TimingHeader>,
    ) -> Result<(), TransportError> {
        match self {
            Wire::Native => {
                let Message::Binary(bytes) = msg else {
                    return Ok(());
                };
                let frame = native::access_server(&bytes)
                    .map_err(|e| TransportError(format!("protocol: {e}")))?;
                let header = match frame {
                    ArchivedServerFrame::Event {
                        event,
                        payload,
                        kind,
                        ..
                    } if event.as_str() == EVENT => match PayloadKind::from(kind) {
                        PayloadKind::Binary => TimingHeader::from_bytes(payload.as_slice()),
                        // A socket.io sender's text payload reaches native clients as JSON
                        // text: a quoted string.
                        PayloadKind::Json => {
                            let p = payload.as_slice();
                            TimingHeader::from_hex(p.strip_prefix(b"\"").unwrap_or(p))
                        }
                    },
                    _ => None,
                };
                headers.extend(header);
                Ok(())
            }
            Wire::SocketIo(decoder) => match decoder.on_message(msg)? {
                Decoded::Packet(Packet::Msg(payload)) => {
                    headers.extend(if payload.text {
                        TimingHeader::from_hex(&payload.bytes)
                    } else {
                        TimingHeader::from_bytes(&payload.bytes)
                    });
                    Ok(())
                }
                Decoded::Packet(Packet::Disconnect) | Decoded::Closed => {
                    Err(TransportError("connection closed by the server".into()))
                }
                Decoded::Reply(text) => {
                    *reply = Some(text);
                    Ok(())
                }
                Decoded::Packet(_) | Decoded::Nothing => Ok(()),
            },
            Wire::SocketCluster => {
                let mut kicked = None;
                let pong = socketcluster::decode(msg, |packet| match packet {
                    socketcluster::Packet::Load(header) => headers.push(header),
                    socketcluster::Packet::KickOut(channel) => kicked = Some(channel),
                    _ => {}
                })?;
                if let Some(pong) = pong {
                    *reply = Some(pong.to_owned());
                }
                match kicked {
                    // Out of its channel, the client would count as a member that receives
                    // nothing: it is dropped, with the reason.
                    Some(channel) => Err(SocketClusterError::KickedOut(channel).into()),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corelay::proto::ws::Incoming;
    use tungstenite::protocol::Role;

    fn headers() -> [TimingHeader; 2] {
        [
            TimingHeader {
                intended_ns: 1,
                sent_ns: 2,
                sender: 3,
                seq: 4,
            },
            TimingHeader {
                intended_ns: u64::MAX,
                sent_ns: 1 << 40,
                sender: 77,
                seq: 5,
            },
        ]
    }

    /// The messages as the server reads them.
    fn sent(wire: Wire) -> Vec<Message> {
        let mut m = wire.load_message("lg-1", 64);
        let mut out = Vec::new();
        for (h, mask) in headers().iter().zip([[1, 2, 3, 4], [9, 8, 7, 6]]) {
            m.write(h, mask, &mut out);
        }
        let mut server = WsCodec::new(Role::Server, 1 << 20);
        server.feed(&out);
        let mut got = Vec::new();
        while let Some(Incoming::Message(msg)) = server.poll_message().unwrap() {
            got.push(msg);
        }
        got
    }

    #[test]
    fn native_load_messages_are_send_frames_with_each_header() {
        let got = sent(Wire::Native);
        assert_eq!(got.len(), 2);
        for (msg, h) in got.iter().zip(headers()) {
            let Message::Binary(body) = msg else {
                panic!("a binary message: {msg:?}")
            };
            let Ok(ArchivedClientFrame::Send {
                room,
                event,
                payload,
                kind,
                ..
            }) = native::access_client(body)
            else {
                panic!("a Send frame")
            };
            assert_eq!((room.as_str(), event.as_str()), ("lg-1", EVENT));
            assert_eq!(PayloadKind::from(kind), PayloadKind::Binary);
            let mut expected = Vec::new();
            h.write_binary(64, &mut expected);
            assert_eq!(payload.as_slice(), &expected[..]);
        }
    }

    #[test]
    fn socketio_load_messages_are_to_room_events_with_each_header() {
        let got = sent(Wire::SocketIo(SioDecoder::default()));
        assert_eq!(got.len(), 2);
        for (msg, h) in got.iter().zip(headers()) {
            let mut payload = Vec::new();
            h.write_text(64, &mut payload);
            let payload = String::from_utf8(payload).unwrap();
            assert_eq!(
                msg,
                &Message::text(format!(r#"42["to","lg-1","msg","{payload}"]"#))
            );
        }
    }

    #[test]
    fn failure_reasons_group_without_losing_a_servers_refusal() {
        assert_eq!(
            reason("io: Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(reason("connect timed out"), "timeout");
        assert_eq!(
            reason("handshake failed: HTTP/1.1 404 Not Found"),
            "websocket upgrade"
        );
        assert_eq!(
            reason("subscribe refused: room is full"),
            "subscribe refused: room is full"
        );
        assert_eq!(
            reason("handshake refused: not allowed"),
            "handshake refused: not allowed"
        );
        assert_eq!(
            reason("join refused: \"bad_room\""),
            "join refused: \"bad_room\""
        );
    }

    #[test]
    fn socketcluster_load_messages_are_publishes_with_each_header() {
        let got = sent(Wire::SocketCluster);
        assert_eq!(got.len(), 2);
        for (msg, h) in got.iter().zip(headers()) {
            let mut payload = Vec::new();
            h.write_text(64, &mut payload);
            let payload = String::from_utf8(payload).unwrap();
            assert_eq!(
                msg,
                &Message::text(format!(
                    r##"{{"event":"#publish","data":{{"channel":"lg-1","data":"{payload}"}}}}"##
                ))
            );
        }
    }

    #[test]
    fn socketcluster_channel_messages_and_pings_decode() {
        use corelay::proto::socketcluster::{channel_message, ChannelData};
        let mut wire = Wire::SocketCluster;
        let (mut reply, mut got) = (None, Vec::new());
        for h in headers() {
            let mut payload = Vec::new();
            h.write_text(64, &mut payload);
            let data = format!("\"{}\"", String::from_utf8(payload).unwrap());
            // As corelay's endpoint writes a channel message.
            let text = channel_message("lg-1", "publish", "p1", ChannelData::Json(&data));
            wire.decode(Message::text(text), &mut reply, &mut got)
                .unwrap();
        }
        assert_eq!(got, headers());
        assert_eq!(reply, None);
        wire.decode(Message::text("#1"), &mut reply, &mut got)
            .unwrap();
        assert_eq!(reply.as_deref(), Some("#2"));
        let kick = r##"{"event":"#kickOut","data":{"channel":"lg-1","message":"bye"}}"##;
        let e = wire
            .decode(Message::text(kick), &mut reply, &mut got)
            .unwrap_err();
        assert_eq!(reason(&e.0), "kicked out of channel lg-1");
    }
}
