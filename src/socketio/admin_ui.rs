//! The official Socket.IO Admin UI (`@socket.io/admin-ui`) on corelay: its server side as a
//! namespace of the Socket.IO endpoint (`/admin` by default), so that an operator points
//! the hosted UI (or its files, served anywhere) at the server and sees the sockets of
//! every shard, native players among them, their rooms, what they do, and can make them
//! join, leave or disconnect (docs/ADMIN_UI.md).
//!
//! The protocol is the admin-ui package's (0.5): the UI connects to the namespace with
//! `auth: {username, password}` (or a `sessionId` it was given), is refused with the
//! CONNECT_ERROR `invalid credentials`, or gets `session`, `config` (the features this
//! server supports), `server_stats` every 2 s, `all_sockets`, then each change as it happens
//! (`socket_connected`, `socket_updated`, `socket_disconnected`, `room_joined`,
//! `room_left`, and `event_received` when `events` is on); it sends `join`, `leave`,
//! `_disconnect` and `emit` for the sockets of a namespace, all of them or those of a room
//! (a socket id being the room of that socket).
//!
//! Where things run:
//!
//! - The password is checked as the package checks it, against a bcrypt hash, but never on
//!   a shard: a hash takes tens of milliseconds, which would stall every player of the
//!   shard. One thread of low priority checks logins from a short queue, and the
//!   CONNECT waits for its verdict ([`super::Namespace::authorize_later`]).
//! - Sockets, rooms and commands: the relay of each shard ([`crate::relay::AdminUiShared`],
//!   `relay/admin_ui.rs`), fed by the sessions of both protocols at connect and disconnect
//!   and by its own membership changes; nothing per message unless `events` is on and an
//!   admin watches.
//! - `server_stats`: each shard with admins, every 2 s, from the stats every shard keeps
//!   anyway (connections, bytes and messages in and out, closes by reason) and the sockets
//!   counted per namespace at connect.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Namespace, Socket, SocketCore, SocketIo, Verdict};
use crate::config::Config;
use crate::engineio::Session;
use crate::proto::socketio::{Arg, Packet};
use crate::proto::ws::close;
use crate::relay::{
    iso8601, AdminCommand, AdminUiShared, ListedSocket, PlayerId, Relay, DISCONNECT_TIMER,
    STATS_TIMER,
};
use crate::shard::{Cx, Endpoint, Shard};
use crate::stats::{CloseReason, StatsRegistry};

/// How often admins get `server_stats`: the package's period. The UI marks a server
/// unhealthy after 10 s without one.
const STATS_PERIOD: Duration = Duration::from_secs(2);

/// Logins waiting for the checker at once. A login costs one bcrypt hash (tens of ms at the
/// usual cost of 10); past four waiting, a login is refused at once ("retry") rather than
/// queued, so that a flood of guesses costs one low-priority thread and never grows a queue.
const CHECKS_QUEUED: usize = 4;

/// The login checker's nice value: a lower priority than the shards' (0), so that a flood of
/// guesses takes little CPU time from those who serve players, and not the lowest (19), so
/// that a login still goes through on a busy host.
const LOGIN_NICE: libc::c_int = 10;

/// Largest event (its name and arguments as JSON) that `event_received` shows whole; a
/// larger one is shown by its name and size. The UI lists the last thousand events; a few
/// kilobytes each is all it shows, and an admin's outbound queue is not filled by them.
const EVENT_SHOWN_BYTES: usize = 4096;

/// What the UI is told when a login fails, the package's words (the UI shows its login
/// form again on exactly this message).
const INVALID_CREDENTIALS: &str = "invalid credentials";

/// `[admin_ui]`: the official Socket.IO Admin UI (docs/ADMIN_UI.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminUiConfig {
    /// Serve the admin UI's namespace. Off by default: it shows every player's address and
    /// lets whoever logs in disconnect them.
    pub enabled: bool,
    /// The namespace the UI connects to (its "namespace" field), `/admin` as the package's.
    pub namespace: String,
    /// Whether the UI must log in with `username` and the password of `password_hash`.
    /// Turning it off must be said (`auth = false`): then anyone who reaches the port sees
    /// every player and, unless `readonly`, can disconnect them.
    pub auth: bool,
    /// The login's user name.
    pub username: String,
    /// The login's password as a bcrypt hash (`$2a$`, `$2b$` or `$2y$`, as bcryptjs,
    /// the bcrypt packages and `htpasswd -B` write them), never the password itself.
    pub password_hash: String,
    /// Only watch: no join, leave, disconnect or emit.
    pub readonly: bool,
    /// `development` (the default): every socket, its rooms and each change as it
    /// happens; `production`: only the counts and rates of the dashboard, as the package's
    /// production mode, for a server with more sockets than a list can show.
    pub mode: AdminUiMode,
    /// Every event received from a Socket.IO socket is shown too (the UI's Events page):
    /// a JSON copy of each event while an admin watches, so off by default.
    pub events: bool,
    /// The server's name in the UI's Servers page; empty: the host name.
    pub server_id: String,
    /// How long the UI's session (the `sessionId` it keeps to log in again without the
    /// password) lasts, in ms; 0: none is given. A day, as the package's Redis store.
    pub session_ttl_ms: u64,
}

/// What the admin UI is shown (`[admin_ui]` `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminUiMode {
    /// Sockets, rooms and changes.
    Development,
    /// Counts and rates only.
    Production,
}

impl Default for AdminUiConfig {
    fn default() -> Self {
        AdminUiConfig {
            enabled: false,
            namespace: "/admin".to_owned(),
            auth: true,
            username: String::new(),
            password_hash: String::new(),
            readonly: false,
            mode: AdminUiMode::Development,
            events: false,
            server_id: String::new(),
            session_ttl_ms: 86_400_000,
        }
    }
}

impl AdminUiConfig {
    /// What is wrong with these settings, if anything (checked when the configuration is
    /// read, so that a bad hash stops the start instead of refusing every login).
    pub fn problem(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let nsp = &self.namespace;
        if nsp.len() < 2 || !nsp.starts_with('/') || nsp.chars().any(|c| c.is_control()) {
            return Some(format!(
                "namespace `{nsp}` must be a namespace other than the main one, like \"/admin\""
            ));
        }
        if !self.auth {
            return None;
        }
        if self.username.is_empty() {
            return Some(
                "username is required (or auth = false, to let anyone in: say so explicitly)"
                    .to_owned(),
            );
        }
        if let Err(e) = self.password_hash.parse::<bcrypt::HashParts>() {
            return Some(format!(
                "password_hash must be a bcrypt hash ($2b$10$...), not the password ({e}); \
                 make one with `htpasswd -nbBC 10 \"\" <password> | tr -d ':\\n'` \
                 or bcryptjs (docs/ADMIN_UI.md)"
            ));
        }
        None
    }
}

/// The admin UI of a server: its settings, what its shards share, and the login checker.
/// Made by [`AdminUi::install`] when the server starts.
pub struct AdminUi {
    config: AdminUiConfig,
    shared: Arc<AdminUiShared>,
    server_id: String,
    hostname: String,
    started: Instant,
    sessions: SessionKeys,
}

impl std::fmt::Debug for AdminUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUi")
            .field("namespace", &self.config.namespace)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// Why the admin UI could not be installed: fix the named setting or the application.
#[derive(Debug, thiserror::Error)]
pub enum AdminUiError {
    /// A setting of `[admin_ui]` is wrong.
    #[error("admin_ui.{0}")]
    Config(String),
    /// The application serves a namespace of that name itself: pick another
    /// `admin_ui.namespace`.
    #[error("admin_ui.namespace {0} is one of the application's namespaces already")]
    Taken(String),
    /// The login checker's thread could not start.
    #[error("admin_ui: cannot start the login checker: {0}")]
    Thread(std::io::Error),
}

impl AdminUi {
    /// Adds the admin UI's namespace to `app` when `[admin_ui]` is enabled, for a server of
    /// `shards` shards; `None` when it is not.
    pub fn install(
        config: &Config,
        shards: usize,
        app: &mut SocketIo,
    ) -> Result<Option<Arc<AdminUi>>, AdminUiError> {
        let settings = &config.admin_ui;
        if !settings.enabled {
            return Ok(None);
        }
        if let Some(problem) = settings.problem() {
            return Err(AdminUiError::Config(problem));
        }
        if app.namespaces.contains_key(&settings.namespace) {
            return Err(AdminUiError::Taken(settings.namespace.clone()));
        }
        let details = settings.mode == AdminUiMode::Development;
        let shared = Arc::new(AdminUiShared::new(
            &settings.namespace,
            shards,
            app.namespaces.keys().cloned(),
            details,
            // Half an admin's outbound queue: the list goes in one message, and the changes
            // that follow it need room too.
            config.outbound_queue_bytes / 2,
            [&config.socketio_path, crate::net::native::NATIVE_PATH],
        ));
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        let ui = Arc::new(AdminUi {
            config: settings.clone(),
            shared: Arc::clone(&shared),
            server_id: match settings.server_id.as_str() {
                "" => hostname.clone(),
                id => id.to_owned(),
            },
            hostname,
            started: Instant::now(),
            sessions: SessionKeys::new(Duration::from_millis(settings.session_ttl_ms)),
        });
        let checker = match settings.auth {
            true => Some(Checker::start(settings).map_err(AdminUiError::Thread)?),
            false => None,
        };
        if details && settings.events {
            app.admin_events = Some(shared);
        }
        let namespace = Arc::clone(&ui).namespace(checker);
        app.namespaces
            .insert(settings.namespace.clone(), Arc::new(namespace));
        Ok(Some(ui))
    }

    /// Turns the admin UI on in `shard`'s relay and makes the shard's endpoint, to be
    /// registered as endpoint `id`.
    pub fn endpoint(self: &Arc<Self>, shard: &Rc<Shard>, id: u16) -> Rc<dyn Endpoint> {
        shard
            .relay
            .borrow_mut()
            .enable_admin_ui(Arc::clone(&self.shared), id);
        Rc::new(AdminUiEndpoint {
            ui: Arc::clone(self),
            id,
            last: RefCell::new(None),
        })
    }

    /// The features the UI may offer (its `config` event).
    fn features(&self) -> Vec<&'static str> {
        let mut features = Vec::new();
        if !self.config.readonly {
            // Every command takes a room as its filter: the `M`ulti ones of socket.io 4.
            features.extend([
                "EMIT",
                "JOIN",
                "LEAVE",
                "DISCONNECT",
                "MJOIN",
                "MLEAVE",
                "MDISCONNECT",
            ]);
        }
        features.push("AGGREGATED_EVENTS");
        if self.shared.details() {
            features.push("ALL_EVENTS");
        }
        features
    }

    /// The namespace the UI connects to.
    fn namespace(self: Arc<Self>, checker: Option<Checker>) -> Namespace {
        let readonly = self.config.readonly;
        let ui = Arc::clone(&self);
        let mut namespace = Namespace::new()
            .authorize_later(move |auth| ui.check(checker.as_ref(), auth))
            .on_connect(move |socket| self.connected(socket));
        namespace.admin = true;
        if readonly {
            // As the package: the commands are not there at all.
            return namespace;
        }
        namespace
            .on("join", |socket, args, _| {
                if let Some((nsp, room, filter)) = room_command(&args) {
                    command(socket, AdminCommand::Join { nsp, room, filter });
                }
            })
            .on("leave", |socket, args, _| {
                if let Some((nsp, room, filter)) = room_command(&args) {
                    command(socket, AdminCommand::Leave { nsp, room, filter });
                }
            })
            .on("_disconnect", |socket, args, _| {
                if let [Arg::Json(Value::String(nsp)), Arg::Json(close), rest @ ..] =
                    args.as_slice()
                {
                    let command_ = AdminCommand::Disconnect {
                        nsp: nsp.clone(),
                        close: close.as_bool().unwrap_or(false),
                        filter: filter_arg(rest.first()),
                    };
                    command(socket, command_);
                }
            })
            .on("emit", |socket, args, _| {
                let mut args = args.into_iter();
                let (
                    Some(Arg::Json(Value::String(nsp))),
                    filter,
                    Some(Arg::Json(Value::String(event))),
                ) = (args.next(), args.next(), args.next())
                else {
                    return;
                };
                let filter = filter_arg(filter.as_ref());
                let args = args.collect();
                command(
                    socket,
                    AdminCommand::Emit {
                        nsp,
                        filter,
                        event,
                        args,
                    },
                );
            })
    }

    /// Whether the CONNECT's `auth` lets the UI in: a session it was given, or the user
    /// name and a password that the bcrypt hash accepts (checked by `checker`, off the
    /// shard). The hash is checked whatever the user name, so that the time a refusal
    /// takes tells nothing about it.
    fn check(&self, checker: Option<&Checker>, auth: &Value) -> Verdict {
        let Some(checker) = checker else {
            // `auth = false`, said explicitly.
            return Verdict::ready(Ok(()));
        };
        let text = |key: &str| auth.get(key).and_then(Value::as_str);
        if text("sessionId").is_some_and(|id| self.sessions.valid(id)) {
            return Verdict::ready(Ok(()));
        }
        let (Some(username), Some(password)) = (text("username"), text("password")) else {
            return Verdict::ready(Err(json!({ "message": INVALID_CREDENTIALS })));
        };
        checker.check(username == self.config.username, password)
    }

    /// An admin is in: it gets its session, the features, the server's stats, the list of
    /// every socket (development mode), and each change from now on.
    fn connected(&self, socket: &Socket) {
        let by_password = socket.auth().get("password").is_some();
        if self.config.auth && by_password {
            if let Some(id) = self.sessions.issue() {
                let _ = socket.emit("session", [Arg::Json(json!(id))]);
            }
        }
        let features = json!({ "supportedFeatures": self.features() });
        let _ = socket.emit("config", [Arg::Json(features)]);
        let shard = &socket.core.shard;
        let arm = {
            let mut relay = shard.relay.borrow_mut();
            let arm = relay.admin_ui_watch(socket.player());
            if self.shared.details() {
                relay.admin_ui_list(socket.player());
            }
            arm
        };
        match arm {
            // The shard's first admin: its stats start now, and every 2 s from then on.
            Some(endpoint) => shard.set_timer(endpoint, STATS_TIMER, Instant::now()),
            // The others' stats come within 2 s; this one gets the counts at once.
            None => {
                let stats = self.stats(&shard.registry, Vec::new());
                let _ = socket.emit("server_stats", [Arg::Json(stats)]);
            }
        }
    }

    /// The `server_stats` of the whole server (one server, whatever its shards), with the
    /// aggregated events `events`.
    fn stats(&self, registry: &StatsRegistry, events: Vec<Value>) -> Value {
        let (mut polling, mut websocket, mut native) = (0, 0, 0);
        for s in registry.shards() {
            polling += s.engineio_polling.load(Relaxed);
            websocket += s.engineio_websocket.load(Relaxed);
            native += s.native_connections.load(Relaxed);
        }
        let namespaces: Vec<Value> = self
            .shared
            .sockets_by_namespace()
            .into_iter()
            .map(|(name, count)| json!({ "name": name, "socketsCount": count }))
            .collect();
        json!({
            "serverId": self.server_id,
            "hostname": self.hostname,
            "pid": std::process::id(),
            "uptime": self.started.elapsed().as_secs_f64(),
            // A native player is a client on a WebSocket, as the UI's transport chart has it.
            "clientsCount": polling + websocket + native,
            "pollingClientsCount": polling,
            "aggregatedEvents": events,
            "namespaces": namespaces,
        })
    }
}

/// The arguments of `join` and `leave`: `(nsp, room, filter?)`.
fn room_command(args: &[Arg]) -> Option<(String, String, Option<String>)> {
    match args {
        [Arg::Json(Value::String(nsp)), Arg::Json(Value::String(room)), rest @ ..] => {
            Some((nsp.clone(), room.clone(), filter_arg(rest.first())))
        }
        _ => None,
    }
}

/// A command's filter: a room (or socket id), or none for every socket of the namespace.
fn filter_arg(arg: Option<&Arg>) -> Option<String> {
    match arg {
        Some(Arg::Json(Value::String(room))) if !room.is_empty() => Some(room.clone()),
        _ => None,
    }
}

/// Applies `command` on every shard; disconnects of this shard's sockets run from the
/// endpoint's timer, once this admin's handler has returned.
fn command(socket: &Socket, command: AdminCommand) {
    let shard = &socket.core.shard;
    let now = Instant::now();
    let wake = shard.relay.borrow_mut().admin_ui_command(command, now);
    if let Some(endpoint) = wake {
        shard.set_timer(endpoint, DISCONNECT_TIMER, now);
    }
}

/// One shard's admin UI endpoint: its timers send `server_stats` to the shard's admins and
/// run the disconnects commanded of the shard's sockets.
struct AdminUiEndpoint {
    ui: Arc<AdminUi>,
    id: u16,
    /// The server's totals at the last `server_stats`, for the rates of the next one.
    last: RefCell<Option<Totals>>,
}

impl Endpoint for AdminUiEndpoint {
    fn on_timer(&self, shard: &Rc<Shard>, key: u64, now: Instant) {
        match key {
            DISCONNECT_TIMER => {
                // Taken first: each disconnect calls back into its session, which releases
                // the player from the relay.
                let disconnects = shard.relay.borrow_mut().admin_ui_disconnects();
                for disconnect in disconnects {
                    disconnect();
                }
            }
            STATS_TIMER => {
                if !shard.relay.borrow_mut().admin_ui_keep_ticking() {
                    *self.last.borrow_mut() = None;
                    return;
                }
                let totals = Totals::of(&shard.registry);
                let last = self.last.borrow_mut().replace(totals.clone());
                let events = last.map_or_else(Vec::new, |last| {
                    totals.events_since(&last, SystemTime::now())
                });
                let stats = self.ui.stats(&shard.registry, events);
                let namespace = &self.ui.config.namespace;
                let packet = Packet::event(namespace, "server_stats", [Arg::Json(stats)]);
                shard
                    .relay
                    .borrow()
                    .admin_ui_send_local(&packet.encode_engineio());
                shard.set_timer(self.id, STATS_TIMER, now + STATS_PERIOD);
            }
            _ => {}
        }
    }
}

/// The server's counters that the UI's charts are made of, summed over the shards.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    accepted: u64,
    closes: Vec<u64>,
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Totals {
    fn of(registry: &StatsRegistry) -> Totals {
        let mut t = Totals {
            closes: vec![0; CloseReason::ALL.len()],
            ..Totals::default()
        };
        for s in registry.shards() {
            t.accepted += s.accepted.load(Relaxed);
            t.messages_in += s.messages_in.load(Relaxed);
            t.messages_out += s.messages_out.load(Relaxed);
            t.bytes_in += s.bytes_in.load(Relaxed);
            t.bytes_out += s.bytes_out.load(Relaxed);
            for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
                t.closes[i] += s.closes(reason);
            }
        }
        t
    }

    /// The admin UI's aggregated events (`{timestamp, type, subType?, count}`) for what
    /// happened since `last`, stamped with the second of `now`: connections accepted
    /// (`rawConnection`), closed by reason (`rawDisconnection`), messages and bytes in and
    /// out (`packetsIn`, ...). Only what happened is listed.
    fn events_since(&self, last: &Totals, now: SystemTime) -> Vec<Value> {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let second = ms - ms % 1000;
        let mut events = Vec::new();
        let mut push = |kind: &str, sub: Option<&str>, count: u64| {
            if count > 0 {
                let mut event = json!({ "timestamp": second, "type": kind, "count": count });
                if let Some(sub) = sub {
                    event["subType"] = json!(sub);
                }
                events.push(event);
            }
        };
        push(
            "rawConnection",
            None,
            self.accepted.saturating_sub(last.accepted),
        );
        for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
            let then = last.closes.get(i).copied().unwrap_or(0);
            push(
                "rawDisconnection",
                Some(reason.name()),
                self.closes[i].saturating_sub(then),
            );
        }
        let pairs = [
            ("packetsIn", self.messages_in, last.messages_in),
            ("packetsOut", self.messages_out, last.messages_out),
            ("bytesIn", self.bytes_in, last.bytes_in),
            ("bytesOut", self.bytes_out, last.bytes_out),
        ];
        for (kind, now, then) in pairs {
            push(kind, None, now.saturating_sub(then));
        }
        events
    }
}

/// A login for the checker: whether the user name was right, the password, and the
/// verdict to decide.
type Login = (bool, String, Verdict);

/// Checks logins off the shards: one thread of low priority ([`LOGIN_NICE`]), fed through
/// a queue of [`CHECKS_QUEUED`]. It ends when the namespace holding its sender is dropped (the
/// server stopped).
struct Checker {
    logins: SyncSender<Login>,
}

impl Checker {
    fn start(config: &AdminUiConfig) -> std::io::Result<Checker> {
        let (logins, queue) = sync_channel::<Login>(CHECKS_QUEUED);
        let hash = config.password_hash.clone();
        std::thread::Builder::new()
            .name("corelay-admin-login".to_owned())
            .spawn(move || {
                // Started from the thread that starts the server, so not pinned to a
                // shard's CPU; at nice 10 (a tenth of a shard's share of a busy core), a
                // login waits for the shards rather than the other way round, and still
                // takes well under a second at the usual cost. Linux applies it to this
                // thread alone.
                // SAFETY: setpriority only reads its integer arguments.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOGIN_NICE) };
                for (user_ok, password, verdict) in queue {
                    let ok = bcrypt::verify(&password, &hash).unwrap_or(false) && user_ok;
                    verdict.decide(match ok {
                        true => Ok(()),
                        false => Err(json!({ "message": INVALID_CREDENTIALS })),
                    });
                }
            })?;
        Ok(Checker { logins })
    }

    /// A verdict on `password` (and on the user name, `user_ok`), decided by the checker's
    /// thread; refused at once when too many logins wait already.
    fn check(&self, user_ok: bool, password: &str) -> Verdict {
        let verdict = Verdict::pending();
        let login = (user_ok, password.to_owned(), verdict.clone());
        match self.logins.try_send(login) {
            Ok(()) => verdict,
            Err(TrySendError::Full(_)) => Verdict::ready(Err(json!({
                "message": "too many logins at once, retry in a moment",
            }))),
            Err(TrySendError::Disconnected(_)) => {
                Verdict::ready(Err(json!({ "message": INVALID_CREDENTIALS })))
            }
        }
    }
}

/// The sessions given to the UI after a login (`session`): a token signed with a key made
/// at start, so that checking one costs no hash and keeps no state; a restart logs every UI
/// out, as the package's in-memory store does.
struct SessionKeys {
    key: [u8; 32],
    ttl: Duration,
}

/// What a session token says.
#[derive(Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    exp: u64,
}

/// The subject of session tokens, so that no other token made with the key could pass.
const SESSION_SUBJECT: &str = "corelay-admin-ui";

impl SessionKeys {
    fn new(ttl: Duration) -> SessionKeys {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        SessionKeys { key, ttl }
    }

    /// A new session, unless sessions are off.
    fn issue(&self) -> Option<String> {
        if self.ttl.is_zero() {
            return None;
        }
        let exp = SystemTime::now() + self.ttl;
        let claims = SessionClaims {
            sub: SESSION_SUBJECT.to_owned(),
            exp: exp.duration_since(UNIX_EPOCH).ok()?.as_secs(),
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let key = jsonwebtoken::EncodingKey::from_secret(&self.key);
        jsonwebtoken::encode(&header, &claims, &key).ok()
    }

    /// Whether `token` is a session this server gave and it has not expired.
    fn valid(&self, token: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.sub = Some(SESSION_SUBJECT.to_owned());
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(&self.key);
        jsonwebtoken::decode::<SessionClaims>(token, &key, &validation).is_ok()
    }
}

/// A Socket.IO socket connected (its session's CONNECT answered): listed for the admin UI.
pub(crate) fn socket_connected(session: &Rc<Session>, core: &Rc<SocketCore>, now: Instant) {
    let shard = &session.shard;
    let mut relay = shard.relay.borrow_mut();
    if !relay.admin_ui_enabled() {
        return;
    }
    let weak = Rc::downgrade(core);
    let socket = ListedSocket {
        id: Arc::clone(&core.id),
        nsp: Arc::from(core.nsp.as_str()),
        // The session's place on its shard: unique among live sessions, and unlike its id
        // no key to its long-polling transport.
        client: Arc::from(format!("{}-{}", shard.id, session.key)),
        peer: session.peer(),
        issued_ms: crate::stats::unix_ms(SystemTime::now()),
        native: false,
        owner: Rc::as_ptr(session) as usize,
        disconnect: Rc::new(move || {
            if let Some(core) = weak.upgrade() {
                Socket { core }.disconnect();
            }
        }),
    };
    relay.admin_ui_register(core.player, socket, now);
}

/// A Socket.IO socket of `session` is gone for `reason` (socket.io's reasons).
pub(crate) fn socket_gone(session: &Rc<Session>, player: PlayerId, reason: &str) {
    let owner = Rc::as_ptr(session) as usize;
    let mut relay = session.shard.relay.borrow_mut();
    relay.admin_ui_unregister(player, owner, reason, Instant::now());
}

/// A native player was welcomed (by `Hello` or `Resume`) on the connection of `cx`: listed
/// as a socket of the main namespace, whose rooms it shares.
pub(crate) fn native_connected(relay: &mut Relay, cx: &Cx<'_>, player: PlayerId) {
    if !relay.admin_ui_enabled() {
        return;
    }
    let id: Arc<str> = Arc::from(player.to_string());
    let out = Rc::downgrade(cx.out);
    let socket = ListedSocket {
        id: Arc::clone(&id),
        nsp: Arc::from(crate::proto::socketio::MAIN_NAMESPACE),
        client: id,
        peer: cx.peer,
        issued_ms: crate::stats::unix_ms(SystemTime::now()),
        native: true,
        owner: Rc::as_ptr(cx.out) as usize,
        disconnect: Rc::new(move || {
            if let Some(out) = out.upgrade() {
                out.close(close::POLICY, "disconnected by an operator");
            }
        }),
    };
    relay.admin_ui_register(player, socket, cx.now);
}

/// A native player's connection (of `cx`) closed (`why`), before the relay releases it.
pub(crate) fn native_gone(relay: &mut Relay, cx: &Cx<'_>, player: PlayerId, why: CloseReason) {
    // In socket.io's words where it has some, else the close's own name.
    let reason = match why {
        CloseReason::Peer => "transport close",
        CloseReason::Io => "transport error",
        CloseReason::Idle => "ping timeout",
        CloseReason::Shutdown => "server shutting down",
        other => other.name(),
    };
    relay.admin_ui_unregister(player, Rc::as_ptr(cx.out) as usize, reason, cx.now);
}

/// A Socket.IO socket sent an event: shown to admins (`event_received`) while one watches
/// (`[admin_ui]` `events`). The admin namespace's own events are not shown, as the
/// package does not.
pub(crate) fn event_received(ui: &AdminUiShared, socket: &Socket, packet: &Packet) {
    if !ui.watching() || socket.namespace() == ui.namespace() {
        return;
    }
    let Some(name) = packet.event_name() else {
        return;
    };
    let mut shown = vec![json!(name)];
    shown.extend(packet.owned_args().iter().map(Arg::to_plain_json));
    let mut shown = Value::Array(shown);
    let size = shown.to_string().len();
    if size > EVENT_SHOWN_BYTES {
        shown = json!([name, { "bytes": size, "shown": false }]);
    }
    let args = vec![
        json!(socket.namespace()),
        json!(socket.id()),
        shown,
        json!(iso8601(SystemTime::now())),
    ];
    socket
        .core
        .shard
        .relay
        .borrow_mut()
        .admin_ui_emit("event_received", args);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcryptjs.hashSync("changeit", 4): a hash as the package's README makes them (cost 4
    /// keeps the test fast; the cost is read from the hash).
    const CHANGEIT: &str = "$2b$04$ODKpPaP09MonOJyId/gQyu10cC54.TCiG2ngiptTZhMJwPG5kYH02";

    fn enabled() -> AdminUiConfig {
        AdminUiConfig {
            enabled: true,
            username: "admin".to_owned(),
            password_hash: CHANGEIT.to_owned(),
            ..AdminUiConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_nothing_to_check_then() {
        let config = AdminUiConfig::default();
        assert!(!config.enabled);
        assert!(
            config.auth,
            "a login is required unless turned off explicitly"
        );
        assert_eq!(config.problem(), None);
    }

    #[test]
    fn a_login_needs_a_user_and_a_bcrypt_hash() {
        assert_eq!(enabled().problem(), None);
        let no_user = AdminUiConfig {
            username: String::new(),
            ..enabled()
        };
        assert!(no_user.problem().unwrap().contains("username"));
        let plain = AdminUiConfig {
            password_hash: "changeit".to_owned(),
            ..enabled()
        };
        assert!(plain.problem().unwrap().contains("bcrypt hash"));
        // Turned off, explicitly: nothing to check.
        let open = AdminUiConfig {
            auth: false,
            username: String::new(),
            password_hash: String::new(),
            ..enabled()
        };
        assert_eq!(open.problem(), None);
        let main = AdminUiConfig {
            namespace: "/".to_owned(),
            ..enabled()
        };
        assert!(main.problem().unwrap().contains("namespace"));
    }

    #[test]
    fn the_table_is_read_from_the_environment_and_flags_and_checked() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let on = [
            ("CORELAY_ADMIN_UI_ENABLED", "true"),
            ("CORELAY_ADMIN_UI_USERNAME", "ops"),
            ("CORELAY_ADMIN_UI_PASSWORD_HASH", CHANGEIT),
            ("CORELAY_ADMIN_UI_MODE", "production"),
        ];
        let flags = [("admin_ui.readonly", "true".to_owned())];
        let config = Config::load(None, env(&on), &flags).unwrap();
        assert_eq!(
            config.admin_ui,
            AdminUiConfig {
                username: "ops".to_owned(),
                mode: AdminUiMode::Production,
                readonly: true,
                ..enabled()
            }
        );
        let refused =
            |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &[]).unwrap_err().to_string();
        let no_user = refused(&[("CORELAY_ADMIN_UI_ENABLED", "true")]);
        assert!(
            no_user.contains("admin_ui.username is required"),
            "{no_user}"
        );
        let plain = refused(&[
            ("CORELAY_ADMIN_UI_ENABLED", "true"),
            ("CORELAY_ADMIN_UI_USERNAME", "ops"),
            ("CORELAY_ADMIN_UI_PASSWORD_HASH", "changeit"),
        ]);
        assert!(
            plain.contains("admin_ui.password_hash must be a bcrypt hash"),
            "{plain}"
        );
        let unknown = refused(&[("CORELAY_ADMIN_UI_PASSWORD", "changeit")]);
        assert!(unknown.contains("password"), "{unknown}");
    }

    #[test]
    fn the_hashes_of_other_tools_are_read() {
        // bcryptjs writes $2b$ (older versions $2a$), htpasswd -B writes $2y$.
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let hash = CHANGEIT.replacen("$2b$", prefix, 1);
            assert!(bcrypt::verify("changeit", &hash).unwrap(), "{prefix}");
            assert!(!bcrypt::verify("changeme", &hash).unwrap(), "{prefix}");
        }
    }

    /// The verdict on `v` once decided, or `None` after 10 s.
    fn decided(v: &Verdict) -> Option<Result<(), Value>> {
        let until = Instant::now() + Duration::from_secs(10);
        while v.outcome().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        v.outcome().cloned()
    }

    #[test]
    fn the_checker_decides_off_the_calling_thread() {
        let checker = Checker::start(&enabled()).unwrap();
        assert_eq!(decided(&checker.check(true, "changeit")), Some(Ok(())));
        let refused = Some(Err(json!({ "message": INVALID_CREDENTIALS })));
        assert_eq!(decided(&checker.check(true, "changeme")), refused);
        // A wrong user name with the right password: refused, after the same hash.
        assert_eq!(decided(&checker.check(false, "changeit")), refused);
    }

    #[test]
    fn a_flood_of_logins_is_refused_past_the_queue() {
        // Cost 12: each check takes long enough that the queue is full before the first
        // is done.
        let slow = bcrypt::hash("changeit", 12).unwrap();
        let checker = Checker::start(&AdminUiConfig {
            password_hash: slow,
            ..enabled()
        })
        .unwrap();
        let verdicts: Vec<Verdict> = (0..CHECKS_QUEUED + 3)
            .map(|_| checker.check(true, "guess"))
            .collect();
        let at_once = verdicts.iter().filter(|v| v.outcome().is_some()).count();
        assert!(at_once >= 1, "some are refused without a hash");
        let busy = verdicts.last().and_then(Verdict::outcome).cloned();
        assert_eq!(
            busy.and_then(|r| r.err())
                .and_then(|e| e["message"].as_str().map(str::to_owned)),
            Some("too many logins at once, retry in a moment".to_owned())
        );
    }

    #[test]
    fn sessions_are_the_servers_own_and_expire() {
        let keys = SessionKeys::new(Duration::from_secs(60));
        let id = keys.issue().unwrap();
        assert!(keys.valid(&id));
        assert!(!keys.valid(&format!("{id}x")));
        // Another server's (another key) is no session here.
        assert!(!SessionKeys::new(Duration::from_secs(60)).valid(&id));
        let off = SessionKeys::new(Duration::ZERO);
        assert_eq!(off.issue(), None);
        assert!(!off.valid(&id));
        // An expired one.
        let claims = SessionClaims {
            sub: SESSION_SUBJECT.to_owned(),
            exp: 1,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let key = jsonwebtoken::EncodingKey::from_secret(&keys.key);
        let old = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(!keys.valid(&old));
    }

    #[test]
    fn rates_are_what_happened_since_the_last_stats() {
        let last = Totals {
            accepted: 10,
            closes: vec![0; CloseReason::ALL.len()],
            messages_in: 100,
            ..Totals::default()
        };
        let mut now = last.clone();
        now.accepted = 13;
        now.closes[CloseReason::Idle as usize] = 2;
        now.bytes_out = 640;
        let at = UNIX_EPOCH + Duration::from_millis(1_796_158_326_123);
        let second = 1_796_158_326_000u64;
        assert_eq!(
            now.events_since(&last, at),
            vec![
                json!({"timestamp": second, "type": "rawConnection", "count": 3}),
                json!({"timestamp": second, "type": "rawDisconnection", "subType": "idle",
                       "count": 2}),
                json!({"timestamp": second, "type": "bytesOut", "count": 640}),
            ]
        );
    }
}
