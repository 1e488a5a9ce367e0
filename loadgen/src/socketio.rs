//! A minimal Socket.IO v4 client (Engine.IO v4, WebSocket transport only) for glommio.
//!
//! Only what the relay convention needs: connect to the main namespace, `join` a room with
//! an ack, emit `to`, receive `msg` events, answer Engine.IO pings. That is enough to
//! measure corelay's socket.io side and any socket.io server implementing the convention
//! (see `loadgen/reference/socketio-relay.js`).
//!
//! How it is built:
//! - TCP: a `socket2` socket, optionally bound to a source address, connected without
//!   blocking and handed to glommio as a `TcpStream`. The first write (the HTTP upgrade
//!   request) waits until the connection is established, or fails with its error.
//! - WebSocket handshake: done by hand (write the `GET ... Upgrade: websocket` request, read
//!   the `101` response, check `Sec-WebSocket-Accept` with tungstenite's helper).
//! - WebSocket framing: tungstenite's sans-IO [`WebSocketContext`] in client role, one per
//!   direction, fed from in-memory buffers that glommio fills and drains. The read side's
//!   automatic replies (pong, close) are forwarded to the write side.
//! - The reader and the writer share one socket through [`SharedStream`]; writes are made
//!   whole-frame under a one-permit semaphore, so frames from the sending task and ping
//!   answers from the receiving task never interleave.
//!
//! Wire summary (text frames): `0{open}` from the server, `40` from us, `40{"sid":..}` back;
//! `2` ping -> `3` pong; `421["join","room"]` -> `431[{"room":..,"members":N}]`;
//! `42["to","room","msg","<payload>"]`; incoming `42["msg","<payload>",<from>]`, or
//! `451-["msg",{"_placeholder":true,"num":0},<from>]` followed by one binary frame when the
//! sender's payload was binary.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

/// Largest HTTP upgrade response accepted; real ones are ~200 bytes.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Socket read size: one syscall takes many small relay messages at once.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the socket.io client.
#[derive(Debug, thiserror::Error)]
pub enum SocketIoError {
    /// The TCP connection could not be made (refused, unreachable, no source port...).
    #[error("tcp connect: {0}")]
    Connect(io::Error),
    /// The socket failed after connecting.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server did not answer the WebSocket upgrade with a valid `101`.
    #[error("websocket upgrade: {0}")]
    Upgrade(String),
    /// Bad WebSocket framing from the server.
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
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
}

/// A socket shared by the reading and the writing half of one connection.
///
/// glommio keeps separate read and write readiness for a stream, so the two halves may be
/// polled from different tasks; each poll borrows the stream only for its own duration.
#[derive(Clone)]
pub struct SharedStream(Rc<RefCell<TcpStream>>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// A byte sink for tungstenite's encoder: collects frames, never blocks.
struct Sink<'a>(&'a mut Vec<u8>);

impl Read for Sink<'_> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes received from the socket, lent to tungstenite's decoder; automatic replies that
/// it writes are collected for the write side.
struct Feed<'a> {
    input: &'a [u8],
    replies: &'a mut Vec<u8>,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Never Ok(0): that would mean end of stream to tungstenite.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = out.len().min(self.input.len());
        out[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.replies.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writing side of a connection; shared by the sender and the receiver (for pongs).
struct Writer {
    stream: SharedStream,
    ctx: RefCell<WebSocketContext>,
    /// One permit: a frame is written whole before the next one starts.
    turn: Semaphore,
    scratch: RefCell<Vec<u8>>,
}

impl Writer {
    async fn send_text(&self, text: String) -> Result<(), SocketIoError> {
        let frame = {
            let mut out = std::mem::take(&mut *self.scratch.borrow_mut());
            out.clear();
            let mut ctx = self.ctx.borrow_mut();
            let mut sink = Sink(&mut out);
            ctx.write(&mut sink, Message::text(text))?;
            ctx.flush(&mut sink)?;
            out
        };
        let result = self.send_raw(&frame).await;
        *self.scratch.borrow_mut() = frame;
        result
    }

    async fn send_close(&self) -> Result<(), SocketIoError> {
        let mut out = Vec::new();
        {
            let mut ctx = self.ctx.borrow_mut();
            let mut sink = Sink(&mut out);
            ctx.write(&mut sink, Message::Close(None))?;
            ctx.flush(&mut sink)?;
        }
        self.send_raw(&out).await
    }

    async fn send_raw(&self, frame: &[u8]) -> Result<(), SocketIoError> {
        let _turn = self
            .turn
            .acquire_permit(1)
            .await
            .map_err(|_| SocketIoError::Closed)?;
        let mut stream = self.stream.clone();
        stream.write_all(frame).await?;
        Ok(())
    }
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
enum Packet {
    /// A `msg` event with its payload.
    Msg(Payload),
    /// A `msg` binary event whose payload comes in the next binary frame(s).
    MsgAwaitingAttachment,
    /// Any other event.
    OtherEvent,
    /// An ack with its id and JSON arguments.
    Ack { id: u64, args: String },
    /// Namespace connected, with its JSON data.
    Connected(String),
    /// Namespace connect refused, with its JSON data.
    ConnectError(String),
    /// Namespace disconnected by the server.
    Disconnect,
}

/// Reads Engine.IO and Socket.IO packets; answers pings through the writer.
struct Reader {
    stream: SharedStream,
    ctx: WebSocketContext,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    replies: Vec<u8>,
    writer: Rc<Writer>,
    awaiting_attachment: bool,
}

impl Reader {
    async fn next_ws_message(&mut self) -> Result<Message, SocketIoError> {
        loop {
            let mut feed = Feed {
                input: &self.buf[self.start..self.end],
                replies: &mut self.replies,
            };
            let before = feed.input.len();
            let result = self.ctx.read(&mut feed);
            let left = feed.input.len();
            self.start += before - left;
            if !self.replies.is_empty() {
                let replies = std::mem::take(&mut self.replies);
                // A failed pong or close reply surfaces on the next read anyway.
                let _ = self.writer.send_raw(&replies).await;
            }
            match result {
                Ok(message) => return Ok(message),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.start = 0;
                    self.end = 0;
                    let n = self.stream.read(&mut self.buf).await?;
                    if n == 0 {
                        return Err(SocketIoError::Closed);
                    }
                    self.end = n;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(SocketIoError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next Engine.IO message (pings answered here), as text or binary.
    async fn next_engine_message(&mut self) -> Result<Message, SocketIoError> {
        loop {
            match self.next_ws_message().await? {
                Message::Text(text) => match text.as_bytes().first() {
                    Some(b'2') => {
                        // Engine.IO heartbeat: the server pings, the client pongs with the
                        // same payload (usually none).
                        self.writer.send_text(format!("3{}", &text[1..])).await?;
                    }
                    Some(b'1') => return Err(SocketIoError::Closed),
                    Some(b'3' | b'6') => {}
                    Some(_) => return Ok(Message::Text(text)),
                    None => return Err(SocketIoError::Protocol("empty packet".into())),
                },
                Message::Binary(b) => return Ok(Message::Binary(b)),
                Message::Close(_) => return Err(SocketIoError::Closed),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn next_packet(&mut self) -> Result<Packet, SocketIoError> {
        loop {
            match self.next_engine_message().await? {
                Message::Text(text) => {
                    let bytes = Bytes::from(text);
                    match bytes.first() {
                        Some(b'4') => {
                            let packet = parse_socketio(&bytes.slice(1..))?;
                            if packet == Packet::MsgAwaitingAttachment {
                                self.awaiting_attachment = true;
                                continue;
                            }
                            return Ok(packet);
                        }
                        // An unexpected open or upgrade packet: ignore.
                        _ => continue,
                    }
                }
                Message::Binary(bytes) if std::mem::take(&mut self.awaiting_attachment) => {
                    return Ok(Packet::Msg(Payload { bytes, text: false }));
                }
                _ => {}
            }
        }
    }
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
    match serde_json::from_slice::<Vec<serde_json::Value>>(data) {
        Ok(args) if args.first().and_then(|v| v.as_str()) == Some("msg") => {
            match args.get(1).and_then(|v| v.as_str()) {
                Some(s) => Packet::Msg(Payload {
                    bytes: Bytes::copy_from_slice(s.as_bytes()),
                    text: true,
                }),
                None => Packet::OtherEvent,
            }
        }
        _ => Packet::OtherEvent,
    }
}

/// Writes a JSON string literal (quotes and escapes included).
fn json_string(s: &str) -> String {
    // Serialising a &str to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A connected Socket.IO client (main namespace).
pub struct SocketIoClient {
    reader: Reader,
    writer: Rc<Writer>,
    sid: String,
    next_ack: u64,
}

impl SocketIoClient {
    /// Connects: TCP, WebSocket upgrade, Engine.IO open, Socket.IO namespace connect.
    pub async fn connect(config: &SocketIoConfig) -> Result<Self, SocketIoError> {
        let stream = connect_tcp(config.addr, config.bind)?;
        let stream = SharedStream(Rc::new(RefCell::new(stream)));
        let leftover = upgrade(stream.clone(), config).await?;

        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let writer = Rc::new(Writer {
            stream: stream.clone(),
            ctx: RefCell::new(WebSocketContext::new(Role::Client, Some(ws_config))),
            turn: Semaphore::new(1),
            scratch: RefCell::new(Vec::new()),
        });
        let mut buf = vec![0u8; READ_CHUNK.max(leftover.len())];
        buf[..leftover.len()].copy_from_slice(&leftover);
        let mut reader = Reader {
            stream,
            ctx: WebSocketContext::new(Role::Client, Some(ws_config)),
            end: leftover.len(),
            buf,
            start: 0,
            replies: Vec::new(),
            writer: writer.clone(),
            awaiting_attachment: false,
        };

        // Engine.IO open packet: 0{"sid":..,"pingInterval":..,...}
        match reader.next_ws_message().await? {
            Message::Text(t) if t.starts_with('0') => {}
            other => {
                return Err(SocketIoError::Protocol(format!(
                    "expected the Engine.IO open packet, got {other:?}"
                )))
            }
        }
        writer.send_text("40".into()).await?;
        let sid = loop {
            match reader.next_packet().await? {
                Packet::Connected(data) => {
                    break serde_json::from_str::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|v| v.get("sid")?.as_str().map(str::to_owned))
                        .unwrap_or_default();
                }
                Packet::ConnectError(data) => return Err(SocketIoError::ConnectRefused(data)),
                Packet::Disconnect => return Err(SocketIoError::Closed),
                _ => {}
            }
        };
        Ok(Self {
            reader,
            writer,
            sid,
            next_ack: 1,
        })
    }

    /// The Socket.IO session id the server gave this client.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// `emit("join", room, ack)`: returns the room's member count after the join.
    /// Events that arrive before the ack are dropped.
    pub async fn join(&mut self, room: &str) -> Result<u32, SocketIoError> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.writer
            .send_text(format!("42{id}[\"join\",{}]", json_string(room)))
            .await?;
        loop {
            match self.reader.next_packet().await? {
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

    /// Splits into a sending and a receiving half that may live in different tasks.
    pub fn split(self) -> (SocketIoSender, SocketIoReceiver) {
        (
            SocketIoSender {
                writer: self.writer,
            },
            SocketIoReceiver {
                reader: self.reader,
            },
        )
    }
}

/// The sending half.
pub struct SocketIoSender {
    writer: Rc<Writer>,
}

impl SocketIoSender {
    /// `emit("to", room, event, payload)` with a JSON string payload. `payload` must need no
    /// JSON escaping (the load generator's payloads are hex and letters).
    pub async fn send_to(
        &self,
        room: &str,
        event: &str,
        payload: &str,
    ) -> Result<(), SocketIoError> {
        let mut text = String::with_capacity(payload.len() + room.len() + event.len() + 16);
        text.push_str("42[\"to\",");
        text.push_str(&json_string(room));
        text.push(',');
        text.push_str(&json_string(event));
        text.push_str(",\"");
        text.push_str(payload);
        text.push_str("\"]");
        self.writer.send_text(text).await
    }

    /// Sends a WebSocket close frame and shuts the socket's write side.
    pub async fn close(&self) -> Result<(), SocketIoError> {
        let result = self.writer.send_close().await;
        let mut stream = self.writer.stream.clone();
        let _ = stream.close().await;
        result
    }
}

/// The receiving half.
pub struct SocketIoReceiver {
    reader: Reader,
}

impl SocketIoReceiver {
    /// The payload of the next `msg` event; other packets are skipped, pings answered.
    pub async fn next_msg(&mut self) -> Result<Payload, SocketIoError> {
        loop {
            match self.reader.next_packet().await? {
                Packet::Msg(payload) => return Ok(payload),
                Packet::Disconnect => return Err(SocketIoError::Closed),
                _ => {}
            }
        }
    }
}

/// A non-blocking TCP connect (optionally from `bind`), handed to glommio. The connection
/// completes in the background; the first write waits for it.
fn connect_tcp(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, SocketIoError> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket =
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(SocketIoError::Connect)?;
    socket.set_nodelay(true).map_err(SocketIoError::Connect)?;
    if let Some(ip) = bind {
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(SocketIoError::Connect)?;
    }
    socket
        .set_nonblocking(true)
        .map_err(SocketIoError::Connect)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(SocketIoError::Connect(e)),
    }
    // SAFETY: the fd comes from `into_raw_fd`, so glommio becomes its only owner.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Writes the HTTP upgrade request and reads the `101` response. Returns the bytes that
/// followed the response head (the start of the WebSocket stream).
async fn upgrade(
    mut stream: SharedStream,
    config: &SocketIoConfig,
) -> Result<Vec<u8>, SocketIoError> {
    let key = tungstenite::handshake::client::generate_key();
    let separator = if config.path.contains('?') { '&' } else { '?' };
    let request = format!(
        "GET {}{separator}EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        config.path, config.host
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| {
        // The first write is where a refused or failed TCP connect shows up.
        SocketIoError::Connect(e)
    })?;

    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(SocketIoError::Upgrade(
                "connection closed during the upgrade".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                if response.code != Some(101) {
                    return Err(SocketIoError::Upgrade(format!(
                        "HTTP {} {}",
                        response.code.unwrap_or(0),
                        response.reason.unwrap_or("")
                    )));
                }
                let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value);
                if accept != Some(expected.as_bytes()) {
                    return Err(SocketIoError::Upgrade("wrong Sec-WebSocket-Accept".into()));
                }
                return Ok(head[len..].to_vec());
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(SocketIoError::Upgrade("response head too large".into()))
            }
            Err(e) => return Err(SocketIoError::Upgrade(format!("bad HTTP response: {e}"))),
        }
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
    fn json_strings_are_escaped() {
        assert_eq!(json_string("room \"1\""), r#""room \"1\"""#);
    }

    #[test]
    fn tungstenite_frames_round_trip_through_buffers() {
        // Encode as a client (masked), decode as a server: proves the Sink/Feed adapters.
        let mut client = WebSocketContext::new(Role::Client, None);
        let mut wire = Vec::new();
        client
            .write(
                &mut Sink(&mut wire),
                Message::text("42[\"to\",\"r\",\"msg\",\"x\"]"),
            )
            .unwrap();
        client.flush(&mut Sink(&mut wire)).unwrap();
        let mut server = WebSocketContext::new(Role::Server, None);
        let mut replies = Vec::new();
        // Fed one byte at a time: WouldBlock between bytes must keep the partial frame.
        let mut got = None;
        for i in 0..wire.len() {
            let mut feed = Feed {
                input: &wire[i..i + 1],
                replies: &mut replies,
            };
            match server.read(&mut feed) {
                Ok(m) => got = Some(m),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, Some(Message::text("42[\"to\",\"r\",\"msg\",\"x\"]")));
    }
}
