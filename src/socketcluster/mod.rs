//! SocketCluster on corelay: the `[socketcluster]` settings and the application API.
//!
//! SocketCluster clients (`socketcluster-client` and the clients that speak its protocol)
//! connect to `/socketcluster/` unchanged. With no application code they subscribe to
//! channels, which are corelay rooms shared with native and Socket.IO players, and publish
//! to them (docs/SOCKETCLUSTER.md has the mapping). Application code adds what a
//! SocketCluster server's code does:
//!
//! - procedures: [`SocketCluster::on`] answers `socket.invoke(event, data)` through a
//!   [`Response`] (or receives `socket.transmit(event, data)` without one);
//! - the exchange: [`Exchange::publish`] publishes to a channel from server code;
//! - middleware: the server's [`Hooks`](crate::hooks::Hooks) are SocketCluster's handshake
//!   (`on_handshake`), subscribe (`on_join`), publish-in (`on_message`) and publish-out
//!   (`on_delivery`) middleware, shared with the other protocols; invoke and transmit
//!   middleware is [`SocketCluster::middleware_invoke`]. A refusal reaches the client as
//!   the error of its request.
//!
//! ```no_run
//! use corelay::proto::socketcluster::ScError;
//! use corelay::socketcluster::SocketCluster;
//! use corelay::socketio::SocketIo;
//! use serde_json::json;
//!
//! let sc = SocketCluster::new()
//!     .on("echo", |_socket, data, response| {
//!         if let Some(response) = response {
//!             response.end(data);
//!         }
//!     })
//!     .on("announce", |socket, data, response| {
//!         let sent = socket.exchange().publish("lobby", json!({"announcement": data}));
//!         if let Some(response) = response {
//!             match sent {
//!                 Ok(()) => response.end_empty(),
//!                 Err(e) => response.error(ScError::new("PublishError", e.to_string())),
//!             }
//!         }
//!     })
//!     .middleware_invoke(|socket, event, _data| {
//!         if event.starts_with("admin") && !socket.identity().is_authenticated() {
//!             return Err(ScError::new("ForbiddenError", "sign in first"));
//!         }
//!         Ok(())
//!     });
//! let server = corelay::Server::start_with_socketcluster(
//!     corelay::Config::default(),
//!     SocketIo::relay(),
//!     sc,
//!     corelay::hooks::Hooks::new(),
//! )
//! .unwrap();
//! # drop(server);
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::{Identity, SignError, Verifier};
use crate::proto::native::ErrorCode;
use crate::proto::socketcluster::{self as sc, ScError};
use crate::relay::{text_frame, valid_name, Body, Outbox, PlayerId, NOBODY};
use crate::shard::Shard;

/// `[socketcluster]`: the SocketCluster endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketClusterConfig {
    /// Serve SocketCluster clients at all (default `true`).
    pub enabled: bool,
    /// The endpoint's path: `/socketcluster/`, the client's default.
    pub path: String,
    /// The ping form: 2 (the default of `socketcluster-client` and of the reference
    /// server since v15) pings with an empty message, 1 (older clients, and clients of
    /// other languages that predate it) with `#1`, answered `#2`. The server accepts either
    /// answer whatever this says; the client answers only its own form, so this must match
    /// the clients' `protocolVersion` option.
    pub protocol_version: u8,
    /// The server pings every this many ms (the reference server's `pingInterval`).
    pub ping_interval_ms: u64,
    /// A client that sends nothing for this many ms is closed (4001), and the client closes
    /// a server whose pings stop for as long (4000): the handshake tells it this value.
    pub ping_timeout_ms: u64,
    /// Whether clients may `#publish` (the reference server's `allowClientPublish`); when
    /// not, a publish is refused with `InvalidActionError` and only server code publishes.
    pub allow_client_publish: bool,
}

impl Default for SocketClusterConfig {
    fn default() -> Self {
        SocketClusterConfig {
            enabled: true,
            path: sc::DEFAULT_PATH.to_owned(),
            protocol_version: 2,
            // The reference server's defaults, so that clients behave as they do there.
            ping_interval_ms: 8_000,
            ping_timeout_ms: 20_000,
            allow_client_publish: true,
        }
    }
}

impl SocketClusterConfig {
    /// What is wrong with these settings, if anything (for the configuration's check).
    pub fn problem(&self) -> Option<String> {
        if !self.path.starts_with('/') {
            return Some("path must start with /".into());
        }
        if !matches!(self.protocol_version, 1 | 2) {
            return Some("protocol_version must be 1 or 2".into());
        }
        // A ping must reach the client before its `pingTimeout` runs out.
        if self.ping_interval_ms == 0 || self.ping_interval_ms >= self.ping_timeout_ms {
            return Some(
                "ping_interval_ms must be positive and below ping_timeout_ms (a client \
                 closes a server whose pings stop for ping_timeout_ms)"
                    .into(),
            );
        }
        None
    }
}

type ProcedureFn = dyn Fn(&Socket, Value, Option<Response>) + Send + Sync;
type InvokeMiddlewareFn = dyn Fn(&Socket, &str, &Value) -> Result<(), ScError> + Send + Sync;
type ConnectFn = dyn Fn(&Socket) + Send + Sync;
type DisconnectFn = dyn Fn(&Socket) + Send + Sync;

/// The SocketCluster service of a server: its procedures and middleware. Handlers are
/// shared by every shard (`Send + Sync`) and run on the shard of the connection, with a
/// shard-local [`Socket`].
#[derive(Clone, Default)]
pub struct SocketCluster {
    procedures: HashMap<String, Arc<ProcedureFn>>,
    invoke_middleware: Option<Arc<InvokeMiddlewareFn>>,
    on_connect: Option<Arc<ConnectFn>>,
    on_disconnect: Option<Arc<DisconnectFn>>,
}

impl SocketCluster {
    /// No application code: channels only.
    pub fn new() -> SocketCluster {
        SocketCluster::default()
    }

    /// Handles event `name`: an `invoke` comes with a [`Response`] to answer once, a
    /// `transmit` without. An `invoke` of a name with no handler is refused with
    /// `InvalidActionError`; a `transmit` of one is ignored, as a receiver nobody listens
    /// to.
    pub fn on(
        mut self,
        name: &str,
        f: impl Fn(&Socket, Value, Option<Response>) + Send + Sync + 'static,
    ) -> SocketCluster {
        self.procedures.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// SocketCluster's inbound middleware for `invoke` and `transmit`: runs before the
    /// handler with the event's name and data; `Err` refuses it (an `invoke` gets the
    /// error as its answer; a `transmit` is dropped).
    pub fn middleware_invoke(
        mut self,
        f: impl Fn(&Socket, &str, &Value) -> Result<(), ScError> + Send + Sync + 'static,
    ) -> SocketCluster {
        self.invoke_middleware = Some(Arc::new(f));
        self
    }

    /// Runs once a client's handshake is answered.
    pub fn on_connect(mut self, f: impl Fn(&Socket) + Send + Sync + 'static) -> SocketCluster {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Runs when a handshaken client's connection ends.
    pub fn on_disconnect(mut self, f: impl Fn(&Socket) + Send + Sync + 'static) -> SocketCluster {
        self.on_disconnect = Some(Arc::new(f));
        self
    }

    pub(crate) fn connected(&self, socket: &Socket) {
        if let Some(f) = &self.on_connect {
            f(socket);
        }
    }

    pub(crate) fn disconnected(&self, socket: &Socket) {
        if let Some(f) = &self.on_disconnect {
            f(socket);
        }
    }

    pub(crate) fn check_invoke(
        &self,
        socket: &Socket,
        event: &str,
        data: &Value,
    ) -> Result<(), ScError> {
        match &self.invoke_middleware {
            Some(f) => f(socket, event, data),
            None => Ok(()),
        }
    }

    pub(crate) fn procedure(&self, event: &str) -> Option<Arc<ProcedureFn>> {
        self.procedures.get(event).cloned()
    }
}

/// One handshaken client, shared by its connection and the handles given to handlers.
pub(crate) struct Core {
    pub(crate) id: Arc<str>,
    pub(crate) player: PlayerId,
    pub(crate) shard: Rc<Shard>,
    pub(crate) out: Rc<Outbox>,
    pub(crate) verifier: Arc<Verifier>,
    /// Anonymous (named by `id`) until a token proves who it is.
    pub(crate) identity: RefCell<Identity>,
    /// When the token expires, if sessions end then (`auth.expiry`).
    pub(crate) expires: Cell<Option<Instant>>,
    pub(crate) connected: Cell<bool>,
}

impl Core {
    /// Sends the packet `text` to the client (nothing once it is gone; a full queue closes
    /// the connection as a slow consumer).
    pub(crate) fn send(&self, text: &str) {
        if self.connected.get() {
            let _ = self.out.push(text_frame(text));
        }
    }

    /// The player is now `identity` (a token checked, or anonymous again).
    pub(crate) fn set_identity(&self, identity: Identity, now: Instant) {
        self.expires.set(self.verifier.deadline(&identity, now));
        self.shard
            .relay
            .borrow_mut()
            .set_identity(self.player, identity.clone());
        *self.identity.borrow_mut() = identity;
    }

    /// Back to anonymous, known by the socket id.
    pub(crate) fn forget_token(&self, now: Instant) {
        self.set_identity(Identity::anonymous(self.id.to_string()), now);
    }
}

/// A client's connection, as application handlers see it.
#[derive(Clone)]
pub struct Socket {
    pub(crate) core: Rc<Core>,
}

/// Why a server-side publish or transmit sent nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The channel's name is empty, too long (`max_name_len`) or holds control characters.
    #[error("invalid channel name")]
    InvalidName,
    /// The event's name starts with `#`, which the protocol keeps for itself.
    #[error("{0:?} is a name the protocol reserves")]
    ReservedName(String),
    /// The message is larger than a recipient may queue (`outbound_queue_bytes`): send
    /// it in smaller parts.
    #[error("the message is larger than a recipient may queue")]
    TooBig,
}

impl Socket {
    /// The socket's id (the handshake's `id`, `socket.id` on the client).
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The relay's key for this connection, unique on the server.
    pub fn player(&self) -> PlayerId {
        self.core.player
    }

    /// Who the player is: anonymous (named by [`Socket::id`]) or proved by a token.
    pub fn identity(&self) -> Identity {
        self.core.identity.borrow().clone()
    }

    /// Whether the connection is still open.
    pub fn connected(&self) -> bool {
        self.core.connected.get()
    }

    /// Transmits `event` with `data` to this client (`socket.receiver(event)` there). Names
    /// starting with `#` are the protocol's and are refused.
    pub fn transmit(&self, event: &str, data: &Value) -> Result<(), PublishError> {
        if event.starts_with('#') {
            return Err(PublishError::ReservedName(event.to_owned()));
        }
        self.core.send(&sc::transmit(event, data));
        Ok(())
    }

    /// Issues a token of `claims` to this client, signed with `auth.jwt_secret`: the
    /// client stores it, becomes authenticated (`authStateChange` there) and brings it back
    /// on its next handshake. `sub` names the player; `exp` is a day away unless given.
    pub fn set_auth_token(&self, claims: &Map<String, Value>) -> Result<(), SignError> {
        let (token, identity) = self.core.verifier.sign(claims)?;
        self.core.set_identity(identity, Instant::now());
        self.core.send(&sc::transmit(
            "#setAuthToken",
            &serde_json::json!({ "token": token }),
        ));
        Ok(())
    }

    /// Takes the client's token away: it is anonymous again, here and on the client
    /// (`#removeAuthToken`).
    pub fn deauthenticate(&self) {
        self.core.forget_token(Instant::now());
        self.core
            .send(&sc::transmit("#removeAuthToken", &Value::Null));
    }

    /// Unsubscribes the client from `channel`, telling it why (`#kickOut`, the `kickOut`
    /// event on the client). `Err(NotMember)` when it is not subscribed.
    pub fn kick_out(&self, channel: &str, message: &str) -> Result<(), ErrorCode> {
        self.core.shard.relay.borrow_mut().leave(
            self.core.player,
            None,
            channel,
            Instant::now(),
        )?;
        self.core.send(&sc::transmit(
            "#kickOut",
            &serde_json::json!({ "channel": channel, "message": message }),
        ));
        Ok(())
    }

    /// Closes the connection with WebSocket close `code` (4000-4499 make the client
    /// reconnect by itself, 4500 and up do not) and `reason`.
    pub fn disconnect(&self, code: u16, reason: &str) {
        self.core.out.close(code, reason);
    }

    /// The exchange: publishing to channels from server code.
    pub fn exchange(&self) -> Exchange {
        Exchange {
            shard: Rc::clone(&self.core.shard),
        }
    }
}

/// Publishing to channels from server code (SocketCluster's `server.exchange`), on the
/// shard it was taken on.
pub struct Exchange {
    shard: Rc<Shard>,
}

impl Exchange {
    /// Publishes `data` to `channel`: its SocketCluster subscribers receive `data` as the
    /// channel's message (with the codec's base64 objects as binary), and its native and
    /// Socket.IO members the event `publish` with `data` (from the server). Encoded once
    /// per wire, as every broadcast.
    pub fn publish(&self, channel: &str, data: Value) -> Result<(), PublishError> {
        if !valid_name(channel, self.shard.config.max_name_len) {
            return Err(PublishError::InvalidName);
        }
        let body = Body::Emit {
            event: "publish".to_owned(),
            args: vec![sc::split_binary(data)],
        };
        self.shard
            .relay
            .borrow_mut()
            .broadcast(NOBODY, channel, body, Instant::now())
            .map_err(|_| PublishError::TooBig)
    }
}

/// The answer an `invoke` waits for; answer it once (dropping it unanswered leaves the
/// client to its `ackTimeout`).
pub struct Response {
    pub(crate) core: Rc<Core>,
    pub(crate) rid: u64,
}

impl Response {
    /// Answers with `data` (the client's `invoke` resolves with it).
    pub fn end(self, data: Value) {
        self.core.send(&sc::answer(self.rid, Some(&data)));
    }

    /// Answers with no data.
    pub fn end_empty(self) {
        self.core.send(&sc::answer(self.rid, None));
    }

    /// Refuses with `error` (the client's `invoke` rejects with an `Error` of its name and
    /// message).
    pub fn error(self, error: ScError) {
        self.core.send(&sc::answer_error(self.rid, &error));
    }
}
