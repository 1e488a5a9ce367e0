//! An async Rust client of the native protocol, for tests, the load generator and Rust games.
//!
//! It runs inside a glommio executor (its futures are `!Send`, like everything shard-local).
//! Writes go through the same [`Outbox`] and writer task as the server's, so the sending
//! half ([`ClientSender`]) never blocks on the socket and the receiving half
//! ([`ClientReceiver`]) answers pings while it reads.

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpStream;
use tungstenite::protocol::Role;
use tungstenite::Message;

use crate::net::ws::{masked_binary_frame, masked_close_frame, Incoming, WsCodec};
use crate::net::Stream;
use crate::proto::native::{self, ArchivedServerFrame, ClientFrame, LeaveReason, PROTOCOL_VERSION};
use crate::relay::{Outbox, OutboxLimits};

pub use crate::proto::native::PayloadKind;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/path`, e.g. `ws://127.0.0.1:7700/ws`.
    pub url: String,
    /// Token sent in `Hello`.
    pub token: Option<String>,
    /// Local address to connect from (spreads load generators over 127.0.0.x).
    pub bind: Option<IpAddr>,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Time allowed for TCP connect, upgrade and `Welcome`.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            token: None,
            bind: None,
            max_message_size: 16 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Something the server pushed (not an answer to a request).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A member's message.
    Message {
        /// Room.
        room: String,
        /// Sender's player id.
        from: u64,
        /// Event name.
        event: String,
        /// Payload.
        payload: Bytes,
        /// How to read it.
        kind: PayloadKind,
    },
    /// Someone joined a room we are in.
    MemberJoined {
        /// Room.
        room: String,
        /// New member.
        player: u64,
        /// Count after.
        members: u32,
    },
    /// Someone left a room we are in.
    MemberLeft {
        /// Room.
        room: String,
        /// Who.
        player: u64,
        /// Count after.
        members: u32,
        /// Left or disconnected.
        reason: LeaveReason,
    },
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error: the connection is gone; reconnect.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The URL is not `ws://host:port/path`.
    #[error("bad url: {0}")]
    Url(String),
    /// The server refused the upgrade (status line given) or answered nonsense.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// Connect, upgrade or an answer took too long.
    #[error("timed out")]
    Timeout,
    /// The server closed the connection, with its close code and reason when it sent one.
    #[error("closed by server: {0:?}")]
    Closed(Option<(u16, String)>),
    /// The server answered a request with an Error frame.
    #[error("server error {code}: {message}")]
    Server {
        /// Code (see [`native::ErrorCode`]).
        code: u16,
        /// Detail.
        message: String,
    },
    /// The server sent something this client cannot read.
    #[error("protocol: {0}")]
    Protocol(String),
}

#[derive(Debug)]
enum Answer {
    Welcome { player: u64, shard: u32 },
    Joined { members: u32 },
    Left,
    Pong,
    Error { code: u16, message: String },
}

/// A connected, welcomed client.
pub struct Client {
    tx: ClientSender,
    rx: ClientReceiver,
    player: u64,
    shard: u32,
}

/// The sending half: fire-and-forget frames.
#[derive(Clone)]
pub struct ClientSender {
    outbox: Rc<Outbox>,
    mask: Rc<Cell<u64>>,
    next_req: Rc<Cell<u32>>,
}

/// The receiving half: events in arrival order.
pub struct ClientReceiver {
    stream: Stream,
    codec: WsCodec,
    outbox: Rc<Outbox>,
    buf: Vec<u8>,
    events: VecDeque<ServerEvent>,
    answers: VecDeque<(u32, Answer)>,
    closed: Option<Option<(u16, String)>>,
}

fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| ClientError::Url(format!("{url}: only ws:// is supported")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok((host.to_owned(), path.to_owned()))
}

async fn with_deadline<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err(ClientError::Timeout)
    };
    futures_lite::future::or(fut, timer).await
}

/// Opens a TCP connection, from `bind` if given.
pub async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match bind {
        None => TcpStream::connect(addr).await.map_err(std::io::Error::from),
        Some(ip) => {
            // glommio has no bind-before-connect; a blocking connect on loopback completes
            // at once (the handshake runs in the kernel), so it is done here directly.
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
            socket.connect(&addr.into())?;
            socket.set_nonblocking(true)?;
            // SAFETY: into_raw_fd hands over sole ownership of a connected TCP socket.
            Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
        }
    }
}

/// Performs the client side of the WebSocket upgrade on `stream` for `host` and `path`;
/// returns bytes read past the response head.
pub async fn upgrade(stream: &Stream, host: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    let key = tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Handshake(
                "connection closed during upgrade".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            return Err(ClientError::Handshake("response head too large".into()));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(ClientError::Handshake(status));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ok = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    });
    if !ok {
        return Err(ClientError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(head.split_off(end))
}

impl Client {
    /// Connects, upgrades and exchanges `Hello`/`Welcome`.
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let deadline = Instant::now() + config.connect_timeout;
        let (host, path) = parse_url(&config.url)?;
        let addr = host
            .to_socket_addrs()
            .map_err(|e| ClientError::Url(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Url(format!("{host}: no address")))?;
        let tcp = with_deadline(deadline, async {
            Ok(tcp_connect(addr, config.bind).await?)
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        let stream = Stream::new(tcp);
        let leftover = with_deadline(deadline, upgrade(&stream, &host, &path)).await?;

        // A client's own queue only bounds runaway senders; it is generous.
        let outbox = Rc::new(Outbox::new(OutboxLimits {
            frames: 1 << 16,
            bytes: 64 << 20,
        }));
        // A client's writer is cut only if its own queue overflows and stays stuck a minute.
        glommio::spawn_local(crate::net::write_loop(
            stream.clone(),
            Rc::clone(&outbox),
            None,
            Duration::from_secs(60),
        ))
        .detach();
        let seed = (addr.port() as u64) << 32
            ^ Instant::now().elapsed().as_nanos() as u64
            ^ 0x9E37_79B9_7F4A_7C15;
        let tx = ClientSender {
            outbox: Rc::clone(&outbox),
            mask: Rc::new(Cell::new(seed | 1)),
            next_req: Rc::new(Cell::new(1)),
        };
        let mut rx = ClientReceiver {
            stream,
            codec: WsCodec::new(Role::Client, config.max_message_size),
            outbox,
            buf: vec![0u8; 16 * 1024],
            events: VecDeque::new(),
            answers: VecDeque::new(),
            closed: None,
        };
        rx.codec.feed(&leftover);
        let req = tx.request(|req| ClientFrame::Hello {
            req,
            version: PROTOCOL_VERSION,
            token: config.token.clone(),
        })?;
        match with_deadline(deadline, rx.answer(req)).await? {
            Answer::Welcome { player, shard } => Ok(Client {
                tx,
                rx,
                player,
                shard,
            }),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    /// This connection's player id.
    pub fn player(&self) -> u64 {
        self.player
    }

    /// The shard serving this connection.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Joins `room`; returns the member count after the join.
    pub async fn join(&mut self, room: &str) -> Result<u32, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Join {
            req,
            room: room.to_owned(),
        })?;
        match self.rx.answer(req).await? {
            Answer::Joined { members } => Ok(members),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Joined, got {other:?}"
            ))),
        }
    }

    /// Leaves `room`.
    pub async fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        let req = self.tx.request(|req| ClientFrame::Leave {
            req,
            room: room.to_owned(),
        })?;
        match self.rx.answer(req).await? {
            Answer::Left => Ok(()),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Left, got {other:?}"
            ))),
        }
    }

    /// Sends to every other member of `room`.
    pub async fn send(
        &mut self,
        room: &str,
        event: &str,
        payload: &[u8],
        kind: PayloadKind,
    ) -> Result<(), ClientError> {
        self.tx.send(room, event, payload, kind).await
    }

    /// Measures a round trip to the server.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        let req = self.tx.request(|req| ClientFrame::Ping { req, t: 0 })?;
        match self.rx.answer(req).await? {
            Answer::Pong => Ok(start.elapsed()),
            other => Err(ClientError::Protocol(format!(
                "expected Pong, got {other:?}"
            ))),
        }
    }

    /// The next event pushed by the server.
    pub async fn next_event(&mut self) -> Result<ServerEvent, ClientError> {
        self.rx.next_event().await
    }

    /// Sends raw bytes as one binary message (for tests of bad input).
    pub fn send_raw(&self, body: &[u8]) -> Result<(), ClientError> {
        self.tx.send_raw(body)
    }

    /// Sends a text message (which `/ws` refuses; for tests).
    pub fn send_text(&self, text: &str) -> Result<(), ClientError> {
        let mask = self.tx.next_mask();
        let mut frame = masked_binary_frame(text.as_bytes(), mask).to_vec();
        frame[0] = 0x81; // FIN + text opcode
        self.tx.push(Bytes::from(frame))
    }

    /// Waits until the server closes the connection; returns its close code and reason.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.rx.next_event().await {
                Ok(_) => continue,
                Err(ClientError::Closed(c)) => return c,
                Err(_) => return None,
            }
        }
    }

    /// Closes with 1000 and waits for the server's answer.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.tx.close().await?;
        let _ = self.closed().await;
        Ok(())
    }

    /// Splits into a sender and a receiver that can be used from two tasks.
    pub fn split(self) -> (ClientSender, ClientReceiver) {
        (self.tx, self.rx)
    }
}

impl ClientSender {
    fn next_mask(&self) -> [u8; 4] {
        // xorshift: masks need not be secret from the client itself, only unpredictable to
        // intermediaries (RFC 6455 section 10.3); this client talks to its own server.
        let mut x = self.mask.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask.set(x);
        (x as u32).to_le_bytes()
    }

    fn push(&self, frame: Bytes) -> Result<(), ClientError> {
        self.outbox
            .push(frame)
            .map_err(|_| ClientError::Closed(None))
    }

    fn request(&self, make: impl FnOnce(u32) -> ClientFrame) -> Result<u32, ClientError> {
        let req = self.next_req.get();
        self.next_req.set(req.wrapping_add(1).max(1));
        self.send_raw(&native::encode_client(&make(req)))?;
        Ok(req)
    }

    /// Sends raw bytes as one binary message.
    pub fn send_raw(&self, body: &[u8]) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.push(masked_binary_frame(body, mask))
    }

    /// Sends to every other member of `room`.
    pub async fn send(
        &self,
        room: &str,
        event: &str,
        payload: &[u8],
        kind: PayloadKind,
    ) -> Result<(), ClientError> {
        let frame = ClientFrame::Send {
            req: 0,
            room: room.to_owned(),
            event: event.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            kind,
        };
        self.send_raw(&native::encode_client(&frame))
    }

    /// Starts the close handshake (1000).
    pub async fn close(&self) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.push(masked_close_frame(1000, "", mask))?;
        Ok(())
    }

    /// Frames queued but not yet written.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }
}

impl ClientReceiver {
    /// The next event pushed by the server (answers to requests are set aside).
    pub async fn next_event(&mut self) -> Result<ServerEvent, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            self.read_more().await?;
        }
    }

    async fn answer(&mut self, req: u32) -> Result<Answer, ClientError> {
        loop {
            if let Some(i) = self.answers.iter().position(|(r, _)| *r == req) {
                // position() found it, so remove() returns it.
                return Ok(self.answers.remove(i).map(|(_, a)| a).expect("present"));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), ClientError> {
        if let Some(closed) = &self.closed {
            return Err(ClientError::Closed(closed.clone()));
        }
        loop {
            let mut progressed = false;
            loop {
                match self.codec.poll_message() {
                    Ok(None) => break,
                    Ok(Some(Incoming::Message(Message::Binary(bytes)))) => {
                        self.handle(&bytes)?;
                        progressed = true;
                    }
                    Ok(Some(Incoming::Message(_))) => {
                        return Err(ClientError::Protocol("unexpected text message".into()))
                    }
                    Ok(Some(Incoming::Closed(close))) => {
                        if let Some(out) = self.codec.take_output() {
                            let _ = self.outbox.push(out);
                        }
                        self.outbox.finish();
                        self.closed = Some(close.clone());
                        if progressed {
                            return Ok(());
                        }
                        return Err(ClientError::Closed(close));
                    }
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            if let Some(out) = self.codec.take_output() {
                let _ = self.outbox.push(out);
            }
            if progressed {
                return Ok(());
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                self.closed = Some(None);
                return Err(ClientError::Closed(None));
            }
            self.codec.feed(&self.buf[..n]);
        }
    }

    fn handle(&mut self, bytes: &Bytes) -> Result<(), ClientError> {
        let frame =
            native::access_server(bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match frame {
            ArchivedServerFrame::Welcome { req, player, shard } => self.answers.push_back((
                req.to_native(),
                Answer::Welcome {
                    player: player.to_native(),
                    shard: shard.to_native(),
                },
            )),
            ArchivedServerFrame::Joined { req, members, .. } => self.answers.push_back((
                req.to_native(),
                Answer::Joined {
                    members: members.to_native(),
                },
            )),
            ArchivedServerFrame::Left { req, .. } => {
                self.answers.push_back((req.to_native(), Answer::Left))
            }
            ArchivedServerFrame::Pong { req, .. } => {
                self.answers.push_back((req.to_native(), Answer::Pong))
            }
            ArchivedServerFrame::Error { req, code, message } => self.answers.push_back((
                req.to_native(),
                Answer::Error {
                    code: code.to_native(),
                    message: message.as_str().to_owned(),
                },
            )),
            ArchivedServerFrame::Event {
                room,
                from,
                event,
                payload,
                kind,
            } => self.events.push_back(ServerEvent::Message {
                room: room.as_str().to_owned(),
                from: from.to_native(),
                event: event.as_str().to_owned(),
                payload: bytes.slice_ref(payload.as_slice()),
                kind: PayloadKind::from(kind),
            }),
            ArchivedServerFrame::MemberJoined {
                room,
                player,
                members,
            } => self.events.push_back(ServerEvent::MemberJoined {
                room: room.as_str().to_owned(),
                player: player.to_native(),
                members: members.to_native(),
            }),
            ArchivedServerFrame::MemberLeft {
                room,
                player,
                members,
                reason,
            } => self.events.push_back(ServerEvent::MemberLeft {
                room: room.as_str().to_owned(),
                player: player.to_native(),
                members: members.to_native(),
                reason: match reason {
                    native::ArchivedLeaveReason::Left => LeaveReason::Left,
                    native::ArchivedLeaveReason::Disconnected => LeaveReason::Disconnected,
                },
            }),
        }
        Ok(())
    }

    /// Errors the server answered to requests that nobody awaited (e.g. a failed send):
    /// `(request id, code)`.
    pub fn take_errors(&mut self) -> Vec<(u32, u16)> {
        let mut out = Vec::new();
        self.answers.retain(|(req, a)| match a {
            Answer::Error { code, .. } => {
                out.push((*req, *code));
                false
            }
            _ => true,
        });
        out
    }
}

impl Client {
    /// Errors the server answered to requests nobody awaited (e.g. a send to a room we
    /// are not in): `(request id, code)`.
    pub fn take_errors(&mut self) -> Vec<(u32, u16)> {
        self.rx.take_errors()
    }

    /// Reads until the server answers an error to a request without an awaited answer
    /// (request id 0, as `send` uses); returns its code.
    pub async fn next_error(&mut self) -> Result<u16, ClientError> {
        loop {
            if let Some((_, code)) = self.rx.take_errors().into_iter().next() {
                return Ok(code);
            }
            self.rx.read_more().await?;
        }
    }
}

impl Drop for ClientReceiver {
    /// Dropping the receiver drops the connection: the socket is shut at once (the server
    /// sees a disconnect, not a close handshake) and the writer task ends.
    fn drop(&mut self) {
        self.outbox.finish();
        self.stream.shutdown(std::net::Shutdown::Both);
    }
}
