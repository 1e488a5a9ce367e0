//! Socket.IO v5 on corelay: the application API and the per-session protocol state.
//!
//! With no application code the main namespace runs the relay convention of docs/SOCKETIO.md
//! (`join`, `leave`, `to`), in the same rooms as native clients. Application code is
//! written the way socket.io servers are: a [`Namespace`] with an authorization check, a
//! connection handler, handlers per event (with an [`Ack`]), and a disconnect handler; a
//! [`Socket`] can `emit`, `join`, `leave`, emit `to` a room and `disconnect`.
//!
//! Handlers are shared by every shard (`Send + Sync`) and run on the shard that serves the
//! connection, with a shard-local [`Socket`].
//!
//! ```no_run
//! use corelay::socketio::{Namespace, SocketIo};
//! use corelay::proto::socketio::Arg;
//!
//! let app = SocketIo::relay().namespace(
//!     "/chat",
//!     Namespace::new()
//!         .on_connect(|socket| {
//!             let _ = socket.emit("welcome", [Arg::Json(socket.auth().clone())]);
//!         })
//!         .on("say", |socket, args, ack| {
//!             // Err(TooBig) when a recipient could not queue it: nothing was sent.
//!             let _ = socket.to("lobby").emit("said", args.clone());
//!             if let Some(ack) = ack {
//!                 ack.send(args);
//!             }
//!         }),
//! );
//! let server = corelay::Server::start_with(corelay::Config::default(), app).unwrap();
//! # drop(server);
//! ```
//!
//! Event names that the official clients reserve ([`RESERVED_EVENTS`]: `connect`,
//! `disconnect`, ...) make every client that receives them drop its connection with a parse
//! error; the emitting methods refuse them with [`EmitError::ReservedName`] and send nothing,
//! where socket.io's server throws `"connect" is a reserved event name`.

mod ack;
pub mod admin_ui;
mod session;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::{Identity, Verifier};
use crate::engineio::Session;
use crate::hooks::Hooks;
use crate::proto::native::ErrorCode;
use crate::proto::socketio::{Arg, Packet, RESERVED_EVENTS};
use crate::relay::{room_key, valid_name, Body, PlayerId, Relay};
use crate::shard::Shard;

pub use ack::AckError;
pub(crate) use session::SioSession;

type AuthorizeFn = dyn Fn(&Value) -> Result<(), Value> + Send + Sync;
type AuthorizeLaterFn = dyn Fn(&Value) -> Verdict + Send + Sync;
type ConnectFn = dyn Fn(&Socket) + Send + Sync;
type EventFn = dyn Fn(&Socket, Vec<Arg>, Option<Ack>) + Send + Sync;
type DisconnectFn = dyn Fn(&Socket, &str) + Send + Sync;
/// `Relay::join` or `Relay::leave`.
type MembershipChange =
    fn(&mut Relay, PlayerId, Option<u64>, &str, Instant) -> Result<(), ErrorCode>;

/// Why an emit sent nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The event name is one of [`RESERVED_EVENTS`]: every official client receiving it
    /// would drop its connection. Nothing was sent (and an ack callback is dropped uncalled);
    /// pick another name.
    #[error("{0:?} is a reserved event name")]
    ReservedName(String),
    /// The message is larger than a recipient may queue (`outbound_queue_bytes`). Nothing
    /// was sent; send it in smaller parts.
    #[error("the message is larger than a recipient may queue")]
    TooBig,
}

/// Refuses the names the official clients reserve (socket.io's server throws on them).
fn check_emit(event: &str) -> Result<(), EmitError> {
    if RESERVED_EVENTS.contains(&event) {
        return Err(EmitError::ReservedName(event.to_owned()));
    }
    Ok(())
}

/// The Socket.IO service of a server: its namespaces and their handlers.
#[derive(Clone)]
pub struct SocketIo {
    pub(crate) namespaces: HashMap<String, Arc<Namespace>>,
    pub(crate) engine_echo: bool,
    /// Checks CONNECT tokens; set by [`crate::Server::start_with`] from `[auth]` (none:
    /// every player is anonymous).
    pub(crate) verifier: Option<Arc<Verifier>>,
    /// Authorization hooks and rules; set by [`crate::Server::start_with_hooks`].
    pub(crate) hooks: Arc<Hooks>,
    /// The admin UI, when it is to hear every event received (`[admin_ui]` `events`).
    pub(crate) admin_events: Option<Arc<crate::relay::AdminUiShared>>,
}

impl Default for SocketIo {
    fn default() -> Self {
        SocketIo::relay()
    }
}

impl SocketIo {
    /// The main namespace with the relay convention, nothing else: corelay's behaviour
    /// with no application code.
    pub fn relay() -> SocketIo {
        SocketIo::empty().namespace("/", Namespace::relay())
    }

    /// No namespace at all; add them with [`SocketIo::namespace`].
    pub fn empty() -> SocketIo {
        SocketIo {
            namespaces: HashMap::new(),
            engine_echo: false,
            verifier: None,
            hooks: Arc::new(Hooks::new()),
            admin_events: None,
        }
    }

    /// No Socket.IO at all: every Engine.IO message is echoed back (the Engine.IO
    /// reference server of the protocol's test suite).
    pub fn engine_echo() -> SocketIo {
        SocketIo {
            namespaces: HashMap::new(),
            engine_echo: true,
            verifier: None,
            hooks: Arc::new(Hooks::new()),
            admin_events: None,
        }
    }

    /// Adds (or replaces) namespace `name` (e.g. `"/"`, `"/admin"`).
    pub fn namespace(mut self, name: &str, namespace: Namespace) -> SocketIo {
        let name = if name.starts_with('/') {
            name.to_owned()
        } else {
            format!("/{name}")
        };
        self.namespaces.insert(name, Arc::new(namespace));
        self
    }

    pub(crate) fn lookup(&self, nsp: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(nsp).cloned()
    }
}

/// One namespace's behaviour.
#[derive(Default)]
pub struct Namespace {
    relay_convention: bool,
    /// The admin UI's namespace: its sockets are operators, who prove themselves to it
    /// (`authorize_later`), not players: no player token, no handshake hook, no recovery.
    admin: bool,
    authorize: Option<Arc<AuthorizeFn>>,
    authorize_later: Option<Arc<AuthorizeLaterFn>>,
    on_connect: Option<Arc<ConnectFn>>,
    events: HashMap<String, Arc<EventFn>>,
    on_disconnect: Option<Arc<DisconnectFn>>,
}

impl Namespace {
    /// A namespace with no behaviour; add handlers.
    pub fn new() -> Namespace {
        Namespace::default()
    }

    /// A namespace that runs the relay convention (`join`, `leave`, `to`) for events that
    /// have no handler of their own. Only meaningful on the main namespace, whose rooms are
    /// shared with native clients.
    pub fn relay() -> Namespace {
        Namespace {
            relay_convention: true,
            ..Namespace::default()
        }
    }

    /// Checks the handshake's auth payload before the connection is accepted; `Err(data)`
    /// refuses it with a CONNECT_ERROR carrying `data` (e.g. `{"message": "bad token"}`).
    pub fn authorize(
        mut self,
        f: impl Fn(&Value) -> Result<(), Value> + Send + Sync + 'static,
    ) -> Namespace {
        self.authorize = Some(Arc::new(f));
        self
    }

    /// Like [`Namespace::authorize`], for a check that must not run on the shard (a password
    /// hash that takes tens of milliseconds, a call to a backend): `f` answers with a
    /// [`Verdict`] that another thread decides, and the CONNECT waits for it (at most
    /// [`AUTHORIZE_WAIT`], then it is refused) while the shard serves everyone else. Runs
    /// after `authorize`, if both are set.
    pub fn authorize_later(
        mut self,
        f: impl Fn(&Value) -> Verdict + Send + Sync + 'static,
    ) -> Namespace {
        self.authorize_later = Some(Arc::new(f));
        self
    }

    /// Runs after a connection is accepted (the client already has its CONNECT answer).
    pub fn on_connect(mut self, f: impl Fn(&Socket) + Send + Sync + 'static) -> Namespace {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Handles event `name`; the [`Ack`] is there when the client asked for one.
    pub fn on(
        mut self,
        name: &str,
        f: impl Fn(&Socket, Vec<Arg>, Option<Ack>) + Send + Sync + 'static,
    ) -> Namespace {
        self.events.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Runs when a socket leaves, with the socket.io disconnect reason (`"client namespace
    /// disconnect"`, `"server namespace disconnect"`, `"transport close"`, `"transport
    /// error"`, `"ping timeout"`, `"parse error"`, `"server shutting down"`).
    pub fn on_disconnect(mut self, f: impl Fn(&Socket, &str) + Send + Sync + 'static) -> Namespace {
        self.on_disconnect = Some(Arc::new(f));
        self
    }
}

/// Longest a CONNECT waits for a [`Verdict`] before it is refused: a check that has not
/// answered by then is stuck, and the client is better told so than left waiting.
pub const AUTHORIZE_WAIT: Duration = Duration::from_secs(10);

/// The answer to a CONNECT's [`Namespace::authorize_later`]: decided once, by any thread
/// (`Ok`, or `Err(data)` for a CONNECT_ERROR carrying `data`), and read by the session that
/// waits for it.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<OnceLock<Result<(), Value>>>);

impl Verdict {
    /// A verdict still to be decided (hand a clone to whoever decides it).
    pub fn pending() -> Verdict {
        Verdict::default()
    }

    /// A verdict decided already.
    pub fn ready(verdict: Result<(), Value>) -> Verdict {
        let v = Verdict::default();
        v.decide(verdict);
        v
    }

    /// Decides it; only the first decision counts.
    pub fn decide(&self, verdict: Result<(), Value>) {
        let _ = self.0.set(verdict);
    }

    /// The decision, once there is one.
    pub fn outcome(&self) -> Option<&Result<(), Value>> {
        self.0.get()
    }
}

pub(crate) struct SocketCore {
    id: Arc<str>,
    player: PlayerId,
    nsp: String,
    auth: Value,
    /// Who the player is (its token's `sub` and claims); replaced by a refresh.
    identity: RefCell<Identity>,
    /// When the token expires, if sessions end then (`auth.expiry`).
    expires: Cell<Option<Instant>>,
    shard: Rc<Shard>,
    session: Weak<Session>,
    /// Cleared by [`Socket::disconnect`] before the socket is removed: inside one of its
    /// session's handlers the removal waits for the handler to return, and this mark is
    /// what the session looks for then.
    connected: Cell<bool>,
    /// Answers the client owes, with their deadlines.
    acks: RefCell<ack::PendingAcks>,
    /// The socket is a recovered session (connection state recovery).
    recovered: bool,
}

/// One client's connection to one namespace, as application handlers see it.
#[derive(Clone)]
pub struct Socket {
    core: Rc<SocketCore>,
}

impl Socket {
    /// The socket id (the Engine.IO-level id the client sees as `socket.id`; also the
    /// player id others see for an anonymous player).
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The relay's key for this socket, unique on the server.
    pub fn player(&self) -> u64 {
        self.core.player
    }

    /// Who the player is: the id others see as `from` (the token's `sub`, or [`Socket::id`]
    /// for an anonymous player) and the token's claims.
    pub fn identity(&self) -> Identity {
        self.core.identity.borrow().clone()
    }

    /// The claims of the player's token (empty for an anonymous player): `tier`, `role`,
    /// whatever the game backend put in it.
    pub fn claims(&self) -> Arc<serde_json::Map<String, Value>> {
        Arc::clone(&self.core.identity.borrow().claims)
    }

    /// The namespace, e.g. `"/"`.
    pub fn namespace(&self) -> &str {
        &self.core.nsp
    }

    /// The auth payload the client sent with CONNECT (`{}` when none).
    pub fn auth(&self) -> &Value {
        &self.core.auth
    }

    /// Whether this socket recovered a session its client lost (socket.io's connection
    /// state recovery, `socket.recovered`): same id, same rooms, and the room events it
    /// missed were replayed to it.
    pub fn recovered(&self) -> bool {
        self.core.recovered
    }

    /// Whether the socket is still connected.
    pub fn connected(&self) -> bool {
        self.core.connected.get()
    }

    /// Emits `event` to this client (nothing once the socket is disconnected). A name of
    /// [`RESERVED_EVENTS`] is refused and nothing is sent.
    pub fn emit(&self, event: &str, args: impl IntoIterator<Item = Arg>) -> Result<(), EmitError> {
        check_emit(event)?;
        self.send(Packet::event(&self.core.nsp, event, args));
        Ok(())
    }

    /// Emits `event` to this client and calls `on_ack` once: with the client's answer, with
    /// [`AckError::Timeout`] when none came within `socketio_ack_timeout_ms`, or with
    /// [`AckError::Disconnected`] when the socket goes first (at once if it is gone already).
    /// A name of [`RESERVED_EVENTS`] is refused: nothing is sent and `on_ack` is dropped
    /// uncalled.
    pub fn emit_with_ack(
        &self,
        event: &str,
        args: impl IntoIterator<Item = Arg>,
        on_ack: impl FnOnce(Result<Vec<Arg>, AckError>) + 'static,
    ) -> Result<(), EmitError> {
        let timeout = Duration::from_millis(self.core.shard.config.socketio_ack_timeout_ms);
        self.emit_with_ack_timeout(event, args, timeout, on_ack)
    }

    /// [`Socket::emit_with_ack`] with this call's own timeout (socket.io's
    /// `socket.timeout(ms).emit(..)`).
    pub fn emit_with_ack_timeout(
        &self,
        event: &str,
        args: impl IntoIterator<Item = Arg>,
        timeout: Duration,
        on_ack: impl FnOnce(Result<Vec<Arg>, AckError>) + 'static,
    ) -> Result<(), EmitError> {
        check_emit(event)?;
        if !self.connected() {
            on_ack(Err(AckError::Disconnected));
            return Ok(());
        }
        // The deadline reaches the session's timer through `SioSession::deadline` when the
        // session next reschedules (after the input that ran this handler, or its next
        // timer: at most a ping interval late when emitted from another session's handler).
        let deadline = Instant::now() + timeout;
        let id = self
            .core
            .acks
            .borrow_mut()
            .register(deadline, Box::new(on_ack));
        self.send(Packet::event(&self.core.nsp, event, args).with_ack_id(id));
        Ok(())
    }

    fn send(&self, packet: Packet) {
        if !self.connected() {
            return;
        }
        if let Some(session) = self.core.session.upgrade() {
            session.send(&packet.encode_engineio(), &packet.attachments);
        }
    }

    /// Joins a room of this namespace (shared with native clients on the main namespace).
    /// `InvalidName` for an empty name, one longer than `max_name_len` or one with control
    /// characters.
    pub fn join(&self, room: &str) -> Result<(), ErrorCode> {
        self.with_relay(room, Relay::join)
    }

    /// Leaves a room of this namespace.
    pub fn leave(&self, room: &str) -> Result<(), ErrorCode> {
        self.with_relay(room, Relay::leave)
    }

    /// Runs a membership change of the relay for this socket, with no reply (application
    /// code gets the result instead); what it sends to other shards leaves at the end of the
    /// shard's turn.
    fn with_relay(&self, room: &str, change: MembershipChange) -> Result<(), ErrorCode> {
        let shard = &self.core.shard;
        // The name is checked here, not as part of the key: a namespace's key holds the NUL
        // that separates it from the room name (`room_key`), which no name may contain.
        if !valid_name(room, shard.config.max_name_len) {
            return Err(ErrorCode::InvalidName);
        }
        let key = room_key(&self.core.nsp, room);
        change(
            &mut shard.relay.borrow_mut(),
            self.core.player,
            None,
            &key,
            Instant::now(),
        )
    }

    /// Emits to every member of `room` except this socket (`socket.to(room).emit(..)`).
    pub fn to(&self, room: &str) -> RoomEmitter {
        RoomEmitter {
            shard: Rc::clone(&self.core.shard),
            exclude: self.core.player,
            key: room_key(&self.core.nsp, room),
        }
    }

    /// Disconnects this socket from the namespace: the client gets a DISCONNECT, the socket
    /// leaves its rooms, its pending acks end with [`AckError::Disconnected`] and the
    /// namespace's disconnect handler runs with `"server namespace disconnect"`. Called from
    /// one of this session's own handlers, all but the DISCONNECT happen as the handler
    /// returns ([`Socket::connected`] is false at once).
    pub fn disconnect(&self) {
        if !self.connected() {
            return;
        }
        let Some(session) = self.core.session.upgrade() else {
            return;
        };
        self.send(Packet::disconnect(&self.core.nsp));
        self.core.connected.set(false);
        session.disconnect_socket(&self.core.nsp);
    }
}

/// Emits to a room, from [`Socket::to`].
pub struct RoomEmitter {
    shard: Rc<Shard>,
    exclude: PlayerId,
    key: String,
}

impl RoomEmitter {
    /// Emits `event` with `args` to the room, encoded once per wire format. A name of
    /// [`RESERVED_EVENTS`] is refused, and so is a message larger than a recipient may
    /// queue (`outbound_queue_bytes`); either way nothing is sent.
    pub fn emit(&self, event: &str, args: impl IntoIterator<Item = Arg>) -> Result<(), EmitError> {
        check_emit(event)?;
        let body = Body::Emit {
            event: event.to_owned(),
            args: args.into_iter().collect(),
        };
        self.shard
            .relay
            .borrow_mut()
            .broadcast(self.exclude, &self.key, body, Instant::now())
            .map_err(|_| EmitError::TooBig)
    }
}

/// The acknowledgement a client asked for; answer it once with [`Ack::send`].
pub struct Ack {
    session: Weak<Session>,
    nsp: String,
    id: u64,
}

impl Ack {
    /// Sends the acknowledgement with `args`.
    pub fn send(self, args: impl IntoIterator<Item = Arg>) {
        if let Some(session) = self.session.upgrade() {
            let packet = Packet::ack(&self.nsp, self.id, args);
            session.send(&packet.encode_engineio(), &packet.attachments);
        }
    }
}
