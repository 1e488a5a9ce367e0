//! One interface over the two client protocols: connect, join, send, receive, close.
//!
//! Enums rather than trait objects: the set is closed, and the futures stay `!Send`
//! glommio futures without boxing.

use std::net::{IpAddr, SocketAddr};

use corelay::client::{
    Client, ClientConfig, ClientReceiver, ClientSender, PayloadKind, ServerEvent,
};

use crate::header::TimingHeader;
use crate::options::Protocol;
use crate::socketio::{
    SocketIoClient, SocketIoConfig, SocketIoError, SocketIoReceiver, SocketIoSender,
};

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

impl From<corelay::client::ClientError> for TransportError {
    fn from(e: corelay::client::ClientError) -> Self {
        Self(e.to_string())
    }
}

/// A short, stable failure reason for grouping: "refused", "timeout", "reset", ... or
/// the error text cut at 60 characters.
pub fn reason(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
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
        ("closed", "closed by server"),
    ];
    for (needle, reason) in known {
        if lower.contains(needle) {
            return reason.to_string();
        }
    }
    error.chars().take(60).collect()
}

/// A connected client before it is split.
pub enum Connection {
    /// corelay's native protocol.
    Native(Client),
    /// Socket.IO v4.
    SocketIo(SocketIoClient),
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
                Ok(Self::Native(Client::connect(&config).await?))
            }
            Protocol::SocketIo => {
                let config = SocketIoConfig {
                    addr: endpoint.addr,
                    host: endpoint.host.clone(),
                    path: endpoint.path.clone(),
                    bind,
                    max_message_size: endpoint.max_message_size,
                };
                Ok(Self::SocketIo(SocketIoClient::connect(&config).await?))
            }
        }
    }

    /// Joins `room`; returns its member count after the join.
    pub async fn join(&mut self, room: &str) -> Result<u32, TransportError> {
        match self {
            Self::Native(c) => Ok(c.join(room).await?),
            Self::SocketIo(c) => Ok(c.join(room).await?),
        }
    }

    /// Splits into halves for a sending and a receiving task.
    pub fn split(self) -> (Sender, Receiver) {
        match self {
            Self::Native(c) => {
                let (tx, rx) = c.split();
                (Sender::Native(tx), Receiver::Native(rx))
            }
            Self::SocketIo(c) => {
                let (tx, rx) = c.split();
                (Sender::SocketIo(tx), Receiver::SocketIo(rx))
            }
        }
    }
}

/// The sending half of a connection.
pub enum Sender {
    /// Native.
    Native(ClientSender),
    /// Socket.IO.
    SocketIo(SocketIoSender),
}

impl Sender {
    /// Sends one load message of `size` bytes with `header` to `room`; `buf` is scratch.
    pub async fn send(
        &self,
        room: &str,
        header: &TimingHeader,
        size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        match self {
            Self::Native(tx) => {
                header.write_binary(size, buf);
                Ok(tx.send(room, EVENT, buf, PayloadKind::Binary).await?)
            }
            Self::SocketIo(tx) => {
                header.write_text(size, buf);
                // write_text produces ASCII only.
                let text = std::str::from_utf8(buf).map_err(|e| TransportError(e.to_string()))?;
                Ok(tx.send_to(room, EVENT, text).await?)
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(&self) -> Result<(), TransportError> {
        match self {
            Self::Native(tx) => Ok(tx.close().await?),
            Self::SocketIo(tx) => Ok(tx.close().await?),
        }
    }
}

/// The receiving half of a connection.
pub enum Receiver {
    /// Native.
    Native(ClientReceiver),
    /// Socket.IO.
    SocketIo(SocketIoReceiver),
}

impl Receiver {
    /// The timing header of the next load message; `Ok(None)` for an event that is not
    /// one (membership changes, foreign messages).
    pub async fn next_header(&mut self) -> Result<Option<TimingHeader>, TransportError> {
        match self {
            Self::Native(rx) => match rx.next_event().await? {
                ServerEvent::Message {
                    event,
                    payload,
                    kind,
                    ..
                } if event == EVENT => {
                    Ok(match kind {
                        PayloadKind::Binary => TimingHeader::from_bytes(&payload),
                        // A socket.io sender's text payload reaches native clients as JSON
                        // text: a quoted string.
                        PayloadKind::Json => {
                            TimingHeader::from_hex(payload.strip_prefix(b"\"").unwrap_or(&payload))
                        }
                    })
                }
                _ => Ok(None),
            },
            Self::SocketIo(rx) => {
                let payload = rx.next_msg().await?;
                Ok(if payload.text {
                    TimingHeader::from_hex(&payload.bytes)
                } else {
                    TimingHeader::from_bytes(&payload.bytes)
                })
            }
        }
    }
}
