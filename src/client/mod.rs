//! An async Rust client of the native protocol, for tests, the load generator and Rust games.
//!
//! It runs inside a glommio executor (its futures are `!Send`, like everything shard-local).
//! It shares the WebSocket framing with the server ([`crate::proto::ws`]) and its client
//! side with the load generator ([`ws`]): the sending half ([`ClientSender`]) queues frames
//! for a writer task and never blocks on the socket, and the receiving half
//! ([`ClientReceiver`]) answers pings while it reads.

mod stream;
pub mod ws;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::Message;

use crate::proto::native::{
    self, ArchivedServerFrame, ClientFrame, ErrorCode, HostAction, LeaveReason, RoomSeq,
    PROTOCOL_VERSION,
};
use crate::proto::ws::WsCodec;

pub use self::stream::Stream;
pub use self::ws::{upgrade, WsReceiver, WsSender};
pub use crate::proto::native::PayloadKind;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/path`, e.g. `ws://127.0.0.1:7700/ws`.
    pub url: String,
    /// JWT sent in `Hello` (docs/AUTH.md): its `sub` becomes [`Client::player`]. `None`
    /// connects anonymously, where the server allows it.
    pub token: Option<String>,
    /// Local address to connect from (spreads load generators over 127.0.0.x).
    pub bind: Option<IpAddr>,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Time allowed for TCP connect, upgrade and `Welcome`.
    pub connect_timeout: Duration,
    /// Whether [`Client::next_event`] reconnects by itself when the connection drops without
    /// a close frame (a lost network), resuming the session ([`Client::reconnect`]).
    pub auto_reconnect: bool,
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
            auto_reconnect: false,
        }
    }
}

/// How to create a room ([`Client::create_room`]); the default is a public room of the
/// server's size limit, gone with its last member, with a code the server picks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRoom {
    /// Most members; 0 for the server's `max_room_members`.
    pub max_members: u32,
    /// Not listed; joined with its code.
    pub private: bool,
    /// Public metadata: a JSON object's text.
    pub metadata: Option<String>,
    /// How long the room survives being empty, in ms (the server keeps at most an hour).
    pub empty_ttl_ms: u32,
    /// The code to give it; `None`: the server picks one.
    pub code: Option<String>,
}

/// A page of rooms ([`Client::list_rooms`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The rooms, by name.
    pub rooms: Vec<native::RoomInfo>,
    /// The next page to ask for, if there are more.
    pub next_page: Option<u32>,
}

/// The answer to a room creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The room's name (`#` and its code), to join, send to and leave.
    pub room: String,
    /// The code other players join it with.
    pub code: String,
    /// Its host: this player.
    pub host: String,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Member count after the join.
    pub members: u32,
    /// The room's host (docs/ROOMS.md): its longest-present member.
    pub host: String,
    /// The room's state as its host last set it (JSON text), if it did.
    pub state: Option<String>,
    /// Its longest-present members, this player included (at most 100), with their public
    /// metadata (a token's `meta` claim).
    pub players: Vec<native::PlayerInfo>,
}

/// Something the server pushed (not an answer to a request).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A member's message.
    Message {
        /// Room.
        room: String,
        /// Sender's player id (empty: the server's application code).
        from: String,
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
        player: String,
        /// Count after.
        members: u32,
    },
    /// Someone left a room we are in.
    MemberLeft {
        /// Room.
        room: String,
        /// Who.
        player: String,
        /// Count after.
        members: u32,
        /// Left or disconnected.
        reason: LeaveReason,
    },
    /// A member's connection dropped; it may come back within the server's resume window.
    MemberAway {
        /// Room.
        room: String,
        /// Who.
        player: String,
    },
    /// A member that was away resumed its session.
    MemberBack {
        /// Room.
        room: String,
        /// Who.
        player: String,
    },
    /// The room's host left; `player`, its longest-present member, is host now.
    Host {
        /// Room.
        room: String,
        /// The new host.
        player: String,
        /// The room's state (JSON text), if its host set one.
        state: Option<String>,
    },
    /// The room's host removed us from `room`.
    Kicked {
        /// Room.
        room: String,
    },
    /// Our matchmaking ticket matched: we are a member of `room` already.
    Matched {
        /// The ticket.
        ticket: u64,
        /// The match's room (`#` and its code).
        room: String,
        /// Its code.
        code: String,
        /// Every player of the match, the host first.
        players: Vec<native::PlayerInfo>,
    },
    /// Our matchmaking ticket ended without a match.
    Unqueued {
        /// The ticket.
        ticket: u64,
        /// Why.
        reason: native::UnqueueReason,
        /// The party member who cancelled or disconnected, if that is why.
        by: Option<String>,
    },
    /// The server drains: leave, and reconnect (elsewhere) after `reconnect_after_ms`.
    Draining {
        /// How long to wait before reconnecting.
        reconnect_after_ms: u32,
    },
    /// After a resumed reconnect, one per room: the messages missed there follow.
    Resumed {
        /// Room.
        room: String,
        /// Member count now.
        members: u32,
        /// How many missed messages follow.
        replayed: u32,
        /// Some missed messages were no longer kept by the server: the replay is not
        /// complete.
        gap: bool,
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
    Welcome {
        player: String,
        shard: u32,
        session: u64,
        secret: String,
        resumed: bool,
    },
    Refreshed {
        exp: u64,
    },
    Joined(Joined),
    Created(Created),
    Listed(Listed),
    Left,
    Updated,
    Queued(u64),
    Cancelled(u64),
    Pong,
    Error {
        code: u16,
        message: String,
    },
}

/// What a `Welcome` to a `Hello` gives a new session.
struct Welcome {
    player: String,
    shard: u32,
    session: u64,
    secret: String,
}

/// A connected, welcomed client.
pub struct Client {
    tx: ClientSender,
    rx: ClientReceiver,
    player: String,
    shard: u32,
    /// Boxed: only a reconnect reads it, and every load-generator connection carries it.
    resume: Box<ResumeState>,
}

/// What [`Client::reconnect`] needs.
struct ResumeState {
    config: ClientConfig,
    /// `Welcome.session` and `.secret`.
    session: u64,
    secret: String,
    recovered: bool,
}

/// The sending half: fire-and-forget frames.
#[derive(Clone)]
pub struct ClientSender {
    ws: WsSender,
    next_req: Rc<Cell<u32>>,
}

/// The receiving half: events in arrival order.
pub struct ClientReceiver {
    ws: WsReceiver,
    events: VecDeque<ServerEvent>,
    answers: VecDeque<(u32, Answer)>,
    /// The last sequence number received in each room, for a resume.
    seen: HashMap<String, u64>,
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

impl Client {
    /// Connects, upgrades and exchanges `Hello`/`Welcome`.
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let deadline = Instant::now() + config.connect_timeout;
        let (tx, mut rx) = Self::open(config, None).await?;
        let welcome = Self::hello(&tx, &mut rx, config.token.clone(), deadline).await?;
        Ok(Client {
            tx,
            rx,
            player: welcome.player,
            shard: welcome.shard,
            resume: Box::new(ResumeState {
                config: config.clone(),
                session: welcome.session,
                secret: welcome.secret,
                recovered: false,
            }),
        })
    }

    /// Sends `Hello` and reads its `Welcome` (a fresh session).
    async fn hello(
        tx: &ClientSender,
        rx: &mut ClientReceiver,
        token: Option<String>,
        deadline: Instant,
    ) -> Result<Welcome, ClientError> {
        let req = tx.request(|req| ClientFrame::Hello {
            req,
            version: PROTOCOL_VERSION,
            token,
        })?;
        match ws::with_deadline(deadline, rx.answer(req)).await? {
            Answer::Welcome {
                player,
                shard,
                session,
                secret,
                ..
            } => Ok(Welcome {
                player,
                shard,
                session,
                secret,
            }),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    /// Opens the WebSocket, on `/ws?resume=<session>` when resuming (so that the server
    /// routes it to the shard holding the session).
    async fn open(
        config: &ClientConfig,
        resume: Option<u64>,
    ) -> Result<(ClientSender, ClientReceiver), ClientError> {
        let (host, mut path) = parse_url(&config.url)?;
        if let Some(session) = resume {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(&format!("resume={session}"));
        }
        let addr = host
            .to_socket_addrs()
            .map_err(|e| ClientError::Url(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Url(format!("{host}: no address")))?;
        let (ws_tx, ws_rx) = ws::connect(
            addr,
            &host,
            &path,
            config.bind,
            config.max_message_size,
            config.connect_timeout,
        )
        .await?;
        let tx = ClientSender {
            ws: ws_tx,
            next_req: Rc::new(Cell::new(1)),
        };
        let rx = ClientReceiver {
            ws: ws_rx,
            events: VecDeque::new(),
            answers: VecDeque::new(),
            seen: HashMap::new(),
        };
        Ok((tx, rx))
    }

    /// Drops the connection (if it is still up) and connects again, resuming the session:
    /// the server gives back the player id and rooms, and replays what each room sent since
    /// the last message this client received there (each room's [`ServerEvent::Resumed`]
    /// comes first, then its missed messages, in order, once, before any newer one).
    /// Events received before and not yet read stay first in line.
    ///
    /// `Ok(true)` when the session was resumed. `Ok(false)` when the server could not resume
    /// it (its window passed, or it keeps no sessions): this is then a fresh session, with
    /// a new player id (for anonymous players) and no rooms; join them again.
    pub async fn reconnect(&mut self) -> Result<bool, ClientError> {
        let deadline = Instant::now() + self.resume.config.connect_timeout;
        self.drop_connection();
        let resume = (self.resume.session != 0).then_some(self.resume.session);
        let (tx, mut rx) = Self::open(&self.resume.config, resume).await?;
        let mut resumed = false;
        if let Some(session) = resume {
            let rooms = self
                .rx
                .seen
                .iter()
                .map(|(room, &seq)| RoomSeq {
                    room: room.clone(),
                    seq,
                })
                .collect();
            let secret = self.resume.secret.clone();
            let req = tx.request(|req| ClientFrame::Resume {
                req,
                session,
                secret,
                rooms,
            })?;
            match ws::with_deadline(deadline, rx.answer(req)).await? {
                Answer::Welcome {
                    player,
                    shard,
                    resumed: true,
                    ..
                } => {
                    self.player = player;
                    self.shard = shard;
                    resumed = true;
                }
                Answer::Error { code, .. } if code == ErrorCode::CannotResume as u16 => {}
                Answer::Error { code, message } => {
                    return Err(ClientError::Server { code, message })
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected Welcome, got {other:?}"
                    )))
                }
            }
        }
        if !resumed {
            let token = self.resume.config.token.clone();
            let welcome = Self::hello(&tx, &mut rx, token, deadline).await?;
            self.player = welcome.player;
            self.shard = welcome.shard;
            self.resume.session = welcome.session;
            self.resume.secret = welcome.secret;
        } else {
            // What the old connection delivered and nobody read yet comes before the replay.
            let old = std::mem::take(&mut self.rx.events);
            for e in old.into_iter().rev() {
                rx.events.push_front(e);
            }
            for (room, seq) in std::mem::take(&mut self.rx.seen) {
                rx.seen.entry(room).or_insert(seq);
            }
        }
        self.tx = tx;
        self.rx = rx;
        self.resume.recovered = resumed;
        Ok(resumed)
    }

    /// Sends the next [`Client::reconnect`] to `url`: another node of a cluster, which
    /// resumes the session when its own node is gone (docs/SCALING.md).
    pub fn move_to(&mut self, url: impl Into<String>) {
        self.resume.config.url = url.into();
    }

    /// Cuts the connection at once, with no close handshake, as a lost network does (the
    /// server keeps the session for its resume window); [`Client::reconnect`] resumes it.
    pub fn drop_connection(&mut self) {
        self.rx.ws.abort();
    }

    /// Whether the last [`Client::reconnect`] resumed the session (player id, rooms and the
    /// missed messages kept).
    pub fn recovered(&self) -> bool {
        self.resume.recovered
    }

    /// The session id the server gave (`Welcome.session`; 0 when it keeps no sessions).
    pub fn session(&self) -> u64 {
        self.resume.session
    }

    /// Resumes with `secret` instead of the session's own (to test how a server refuses).
    #[doc(hidden)]
    pub fn set_secret(&mut self, secret: &str) {
        self.resume.secret = secret.to_owned();
    }

    /// This connection's player id as others see it: the token's `sub`, or a server-made
    /// id when connected without a token.
    pub fn player(&self) -> &str {
        &self.player
    }

    /// Replaces the session's token with `token` (same `sub`), so that a server that ends
    /// sessions at their token's expiry keeps this one until the new `exp`, which is
    /// returned (0 from a server that checks no tokens). A refused token is
    /// `ClientError::Server` with code 5; the session goes on with the old one.
    pub async fn refresh(&mut self, token: &str) -> Result<u64, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Refresh {
            req,
            token: token.to_owned(),
        })?;
        match self.rx.answer(req).await? {
            Answer::Refreshed { exp } => Ok(exp),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Refreshed, got {other:?}"
            ))),
        }
    }

    /// The shard serving this connection.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Joins `room`; returns the member count after the join.
    pub async fn join(&mut self, room: &str) -> Result<u32, ClientError> {
        Ok(self.join_room(room).await?.members)
    }

    /// Joins `room` (created on first join) and tells who is in it: the member count and
    /// the host.
    pub async fn join_room(&mut self, room: &str) -> Result<Joined, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Join {
            req,
            room: room.to_owned(),
        })?;
        match self.rx.answer(req).await? {
            Answer::Joined(joined) => Ok(joined),
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

    /// Creates a room (docs/ROOMS.md) of which this client is the first member and host.
    /// Other players join it as `#<code>`.
    pub async fn create_room(&mut self, options: NewRoom) -> Result<Created, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Create {
            req,
            max_members: options.max_members,
            private: options.private,
            metadata: options.metadata.unwrap_or_default(),
            empty_ttl_ms: options.empty_ttl_ms,
            code: options.code.unwrap_or_default(),
        })?;
        match self.rx.answer(req).await? {
            Answer::Created(created) => Ok(created),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Created, got {other:?}"
            ))),
        }
    }

    /// Lists page `page` of the public rooms made by `create_room` whose metadata has every
    /// key and value of `metadata` (a JSON object's text; empty: any), only those with a
    /// free seat when `free_seats`.
    pub async fn list_rooms(
        &mut self,
        metadata: &str,
        free_seats: bool,
        page: u32,
    ) -> Result<Listed, ClientError> {
        let req = self.tx.request(|req| ClientFrame::List {
            req,
            metadata: metadata.to_owned(),
            free_seats,
            page,
        })?;
        match self.rx.answer(req).await? {
            Answer::Listed(listed) => Ok(listed),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Listed, got {other:?}"
            ))),
        }
    }

    /// Does, as `room`'s host, `action` (docs/ROOMS.md): lock, kick, set the metadata or
    /// the state. `Err(Server)` with `not_host`, `not_member`, `too_big` or
    /// `invalid_value` when refused.
    pub async fn host_action(&mut self, room: &str, action: HostAction) -> Result<(), ClientError> {
        let req = self.tx.request(|req| ClientFrame::Host {
            req,
            room: room.to_owned(),
            action,
        })?;
        match self.rx.answer(req).await? {
            Answer::Updated => Ok(()),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Updated, got {other:?}"
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

    /// Puts this player in a matchmaking queue (docs/ROOMS.md); returns the ticket's id.
    /// The outcome comes later as [`ServerEvent::Matched`] or [`ServerEvent::Unqueued`].
    pub async fn queue(&mut self, ticket: native::TicketSpec) -> Result<u64, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Queue {
            req,
            ticket: Box::new(ticket),
        })?;
        match self.rx.answer(req).await? {
            Answer::Queued(id) => Ok(id),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Queued, got {other:?}"
            ))),
        }
    }

    /// Cancels this player's ticket (`ticket`, or whichever it holds when 0), with its
    /// whole party; `Err(Server)` `not_queued` when it has ended already.
    pub async fn cancel_ticket(&mut self, ticket: u64) -> Result<u64, ClientError> {
        let req = self.tx.request(|req| ClientFrame::Cancel { req, ticket })?;
        match self.rx.answer(req).await? {
            Answer::Cancelled(id) => Ok(id),
            Answer::Error { code, message } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected Cancelled, got {other:?}"
            ))),
        }
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
        loop {
            match self.rx.next_event().await {
                // A lost connection (no close frame from the server) is resumed.
                Err(ClientError::Io(_) | ClientError::Closed(None))
                    if self.resume.config.auto_reconnect =>
                {
                    self.reconnect().await?;
                }
                other => return other,
            }
        }
    }

    /// Sends raw bytes as one binary message (for tests of bad input).
    pub fn send_raw(&self, body: &[u8]) -> Result<(), ClientError> {
        self.tx.send_raw(body)
    }

    /// Sends a text message (which `/ws` refuses; for tests).
    pub fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.tx.ws.send_text(text)
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

    /// Takes the connection apart to drive it from another event loop (the load
    /// generator's): the socket and the codec, once everything queued is written. Events
    /// already read and not taken are dropped.
    pub async fn into_parts(self) -> Result<(std::os::fd::OwnedFd, WsCodec), ClientError> {
        self.rx.ws.into_parts().await
    }

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

impl ClientSender {
    fn request(&self, make: impl FnOnce(u32) -> ClientFrame) -> Result<u32, ClientError> {
        let req = self.next_req.get();
        self.next_req.set(req.wrapping_add(1).max(1));
        self.send_raw(&native::encode_client(&make(req)))?;
        Ok(req)
    }

    /// Sends raw bytes as one binary message.
    pub fn send_raw(&self, body: &[u8]) -> Result<(), ClientError> {
        self.ws.send_binary(body)
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
        self.ws.send_close(1000)
    }

    /// Frames queued but not yet written.
    pub fn queued(&self) -> usize {
        self.ws.queued()
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
        match self.ws.next_message().await? {
            Message::Binary(bytes) => self.handle(&bytes),
            _ => Err(ClientError::Protocol("unexpected text message".into())),
        }
    }

    fn handle(&mut self, bytes: &Bytes) -> Result<(), ClientError> {
        let frame =
            native::access_server(bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match frame {
            ArchivedServerFrame::Event { room, seq, .. }
            | ArchivedServerFrame::MemberJoined { room, seq, .. }
            | ArchivedServerFrame::MemberLeft { room, seq, .. }
            | ArchivedServerFrame::MemberAway { room, seq, .. }
            | ArchivedServerFrame::MemberBack { room, seq, .. }
            | ArchivedServerFrame::Host { room, seq, .. } => {
                self.saw(room.as_str(), seq.to_native())
            }
            _ => {}
        }
        match frame {
            ArchivedServerFrame::Welcome {
                req,
                player,
                shard,
                session,
                secret,
                resumed,
            } => self.answers.push_back((
                req.to_native(),
                Answer::Welcome {
                    player: player.as_str().to_owned(),
                    shard: shard.to_native(),
                    session: session.to_native(),
                    secret: secret.as_str().to_owned(),
                    resumed: *resumed,
                },
            )),
            ArchivedServerFrame::MemberAway { room, player, .. } => {
                self.events.push_back(ServerEvent::MemberAway {
                    room: room.as_str().to_owned(),
                    player: player.as_str().to_owned(),
                })
            }
            ArchivedServerFrame::MemberBack { room, player, .. } => {
                self.events.push_back(ServerEvent::MemberBack {
                    room: room.as_str().to_owned(),
                    player: player.as_str().to_owned(),
                })
            }
            ArchivedServerFrame::Host {
                room,
                player,
                state,
                ..
            } => self.events.push_back(ServerEvent::Host {
                room: room.as_str().to_owned(),
                player: player.as_str().to_owned(),
                state: non_empty(state.as_str()),
            }),
            ArchivedServerFrame::Kicked { room } => self.events.push_back(ServerEvent::Kicked {
                room: room.as_str().to_owned(),
            }),
            ArchivedServerFrame::Updated { req, .. } => {
                self.answers.push_back((req.to_native(), Answer::Updated))
            }
            ArchivedServerFrame::Listed {
                req,
                rooms,
                next_page,
            } => self.answers.push_back((
                req.to_native(),
                Answer::Listed(Listed {
                    rooms: rooms
                        .iter()
                        .map(|r| native::RoomInfo {
                            room: r.room.as_str().to_owned(),
                            members: r.members.to_native(),
                            max_members: r.max_members.to_native(),
                            metadata: r.metadata.as_str().to_owned(),
                        })
                        .collect(),
                    next_page: match next_page.to_native() {
                        0 => None,
                        n => Some(n),
                    },
                }),
            )),
            ArchivedServerFrame::Created {
                req,
                room,
                code,
                host,
            } => self.answers.push_back((
                req.to_native(),
                Answer::Created(Created {
                    room: room.as_str().to_owned(),
                    code: code.as_str().to_owned(),
                    host: host.as_str().to_owned(),
                }),
            )),
            ArchivedServerFrame::Resumed {
                room,
                members,
                replayed,
                gap,
            } => self.events.push_back(ServerEvent::Resumed {
                room: room.as_str().to_owned(),
                members: members.to_native(),
                replayed: replayed.to_native(),
                gap: *gap,
            }),
            ArchivedServerFrame::Joined {
                req,
                members,
                host,
                state,
                players,
                ..
            } => self.answers.push_back((
                req.to_native(),
                Answer::Joined(Joined {
                    members: members.to_native(),
                    host: host.as_str().to_owned(),
                    state: non_empty(state.as_str()),
                    players: player_infos(players),
                }),
            )),
            ArchivedServerFrame::Left { req, .. } => {
                self.answers.push_back((req.to_native(), Answer::Left))
            }
            ArchivedServerFrame::Draining { reconnect_after_ms } => {
                self.events.push_back(ServerEvent::Draining {
                    reconnect_after_ms: reconnect_after_ms.to_native(),
                })
            }
            ArchivedServerFrame::Queued { req, ticket } => self
                .answers
                .push_back((req.to_native(), Answer::Queued(ticket.to_native()))),
            ArchivedServerFrame::Cancelled { req, ticket } => self
                .answers
                .push_back((req.to_native(), Answer::Cancelled(ticket.to_native()))),
            ArchivedServerFrame::Matched {
                ticket,
                room,
                code,
                players,
            } => self.events.push_back(ServerEvent::Matched {
                ticket: ticket.to_native(),
                room: room.as_str().to_owned(),
                code: code.as_str().to_owned(),
                players: player_infos(players),
            }),
            ArchivedServerFrame::Unqueued {
                ticket,
                reason,
                player,
            } => self.events.push_back(ServerEvent::Unqueued {
                ticket: ticket.to_native(),
                reason: match reason {
                    native::ArchivedUnqueueReason::TimedOut => native::UnqueueReason::TimedOut,
                    native::ArchivedUnqueueReason::Cancelled => native::UnqueueReason::Cancelled,
                    native::ArchivedUnqueueReason::Disconnected => {
                        native::UnqueueReason::Disconnected
                    }
                    native::ArchivedUnqueueReason::Refused => native::UnqueueReason::Refused,
                },
                by: non_empty(player.as_str()),
            }),
            ArchivedServerFrame::Refreshed { req, exp } => self.answers.push_back((
                req.to_native(),
                Answer::Refreshed {
                    exp: exp.to_native(),
                },
            )),
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
                ..
            } => self.events.push_back(ServerEvent::Message {
                room: room.as_str().to_owned(),
                from: from.as_str().to_owned(),
                event: event.as_str().to_owned(),
                payload: bytes.slice_ref(payload.as_slice()),
                kind: PayloadKind::from(kind),
            }),
            ArchivedServerFrame::MemberJoined {
                room,
                player,
                members,
                ..
            } => self.events.push_back(ServerEvent::MemberJoined {
                room: room.as_str().to_owned(),
                player: player.as_str().to_owned(),
                members: members.to_native(),
            }),
            ArchivedServerFrame::MemberLeft {
                room,
                player,
                members,
                reason,
                ..
            } => self.events.push_back(ServerEvent::MemberLeft {
                room: room.as_str().to_owned(),
                player: player.as_str().to_owned(),
                members: members.to_native(),
                reason: match reason {
                    native::ArchivedLeaveReason::Left => LeaveReason::Left,
                    native::ArchivedLeaveReason::Disconnected => LeaveReason::Disconnected,
                    native::ArchivedLeaveReason::Kicked => LeaveReason::Kicked,
                },
            }),
        }
        Ok(())
    }

    /// Notes the room's sequence number of a frame just received (0: not numbered).
    fn saw(&mut self, room: &str, seq: u64) {
        if seq > 0 {
            match self.seen.get_mut(room) {
                Some(last) => *last = seq,
                None => {
                    self.seen.insert(room.to_owned(), seq);
                }
            }
        }
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

/// Owned copies of a frame's players.
fn player_infos(
    players: &rkyv::vec::ArchivedVec<native::ArchivedPlayerInfo>,
) -> Vec<native::PlayerInfo> {
    players
        .iter()
        .map(|p| native::PlayerInfo {
            id: p.id.as_str().to_owned(),
            meta: p.meta.as_str().to_owned(),
        })
        .collect()
}

/// `None` for the empty string a frame uses for "none".
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}
