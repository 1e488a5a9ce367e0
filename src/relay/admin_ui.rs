//! What the official Socket.IO Admin UI (`@socket.io/admin-ui`, `[admin_ui]`,
//! docs/ADMIN_UI.md) is shown of the relay, sans-IO: every shard's sockets with their rooms,
//! the changes to them as they happen, and the operator's commands (join, leave, disconnect,
//! emit).
//!
//! Nothing here runs unless `[admin_ui]` is enabled: the relay's hooks are one branch on an
//! `Option` then. Enabled, each shard keeps a short description of each socket it serves
//! ([`ListedSocket`], written at connect, never per message), so that a list can be made
//! when an admin connects and a command can find its sockets. The changes (a socket
//! connected, moved to WebSocket, joined or left a room, disconnected) are described only
//! while an admin watches somewhere ([`AdminUiShared::watching`], one relaxed load per
//! shard), encoded once as the admin namespace's Engine.IO text, pushed to the admin
//! sockets of this shard and carried over the mesh to each other shard that has one
//! ([`AdminUiMsg::Event`]); the mesh's FIFO paths keep each shard's changes in order.
//!
//! The list an admin gets when it connects (`all_sockets`) is a scatter-gather like
//! `room:list`: its shard asks every other shard ([`AdminUiMsg::List`]), each answers with its
//! sockets up to a byte budget, and once all have answered the list goes to the admin. A
//! change made on a shard after it answered reaches the admin after the list, on the same
//! path, so the admin's picture is never older than what it was sent last.
//!
//! A command reaches every shard ([`AdminUiMsg::Command`]); each applies it to its own
//! sockets. Joins and leaves are the relay's own (the room's home decides them, as any
//! join). A disconnect ends a session that the relay cannot reach (a Socket.IO socket
//! belongs to its Engine.IO session, a native one to its connection): the socket's own
//! closure ([`ListedSocket::disconnect`]) is queued and the shard's admin UI endpoint is
//! woken to run it once the relay is no longer borrowed ([`Relay::admin_ui_disconnects`]).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{
    room_key, sio_polling_text, sio_ws_frames, split_room_key, valid_name, Body, Broadcast,
    MeshMsg, PlayerId, Relay, ShardId, Wire,
};
use crate::admission::PeerKey;
use crate::proto::socketio::{Arg, Packet, RESERVED_EVENTS};

/// The admin UI endpoint's timer that runs the disconnects commanded of this shard.
pub const DISCONNECT_TIMER: u64 = 0;

/// The admin UI endpoint's timer that sends `server_stats` to this shard's admins.
pub const STATS_TIMER: u64 = 1;

/// Listings one shard waits on at once. Every shard answers within a mesh round trip
/// unless one is stuck; past this the oldest is given up (its admin reconnects for another),
/// so that a stuck shard cannot make listings pile up.
const MAX_LISTINGS: usize = 16;

/// What the shards of one server share for the admin UI: who watches where, and how many
/// sockets each namespace has on each shard. Written with relaxed atomics by the shard each
/// slot belongs to; read by the shards that describe the server to an admin.
#[derive(Debug)]
pub struct AdminUiShared {
    namespace: String,
    details: bool,
    listing_bytes: usize,
    /// The request paths of Socket.IO and native handshakes, for a socket's `handshake.url`.
    paths: [String; 2],
    /// Admin sockets connected, by shard.
    watchers: Box<[AtomicU32]>,
    /// Sockets by namespace, by shard.
    namespaces: Vec<(String, Box<[AtomicU64]>)>,
}

impl AdminUiShared {
    /// The shared state of a server of `shards` shards whose admin UI namespace is
    /// `namespace`, serving the Socket.IO `namespaces` (native players count in `/`).
    ///
    /// With `details` (the admin UI's development mode) admins get every socket and each
    /// change to them; without, only counts. A list of sockets carries at most
    /// `listing_bytes` of their JSON: it must fit an admin's outbound queue with room to
    /// spare, or the admin would be closed as a slow consumer the moment it connects.
    /// `paths` are the Socket.IO and native endpoints' paths, shown as where each socket
    /// connected.
    pub fn new(
        namespace: &str,
        shards: usize,
        namespaces: impl IntoIterator<Item = String>,
        details: bool,
        listing_bytes: usize,
        paths: [&str; 2],
    ) -> AdminUiShared {
        let per_shard = || (0..shards).map(|_| AtomicU64::new(0)).collect();
        let mut names: Vec<String> = namespaces.into_iter().collect();
        names.push(crate::proto::socketio::MAIN_NAMESPACE.to_owned());
        names.push(namespace.to_owned());
        names.sort();
        names.dedup();
        AdminUiShared {
            namespace: namespace.to_owned(),
            details,
            listing_bytes,
            paths: paths.map(str::to_owned),
            watchers: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            namespaces: names.into_iter().map(|n| (n, per_shard())).collect(),
        }
    }

    /// The admin UI's namespace (`/admin`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether admins get every socket and each change (development mode).
    pub fn details(&self) -> bool {
        self.details
    }

    /// Whether an admin is connected on any shard.
    pub fn watching(&self) -> bool {
        self.watchers.iter().any(|w| w.load(Relaxed) > 0)
    }

    /// Sockets connected to each namespace, on every shard.
    pub fn sockets_by_namespace(&self) -> Vec<(&str, u64)> {
        self.namespaces
            .iter()
            .map(|(name, shards)| (name.as_str(), shards.iter().map(|c| c.load(Relaxed)).sum()))
            .collect()
    }

    fn count(&self, nsp: &str, shard: ShardId, up: bool) {
        let slot = self
            .namespaces
            .iter()
            .find(|(name, _)| name == nsp)
            .and_then(|(_, shards)| shards.get(shard));
        if let Some(slot) = slot {
            if up {
                slot.fetch_add(1, Relaxed);
            } else {
                slot.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// A socket as the admin UI lists it, given by its protocol's session when it connects.
/// About a hundred bytes per socket, kept only while `[admin_ui]` is enabled.
pub struct ListedSocket {
    /// The socket id the UI shows (the player id's text).
    pub id: Arc<str>,
    /// Its namespace (`/` for a native player, which shares the main namespace's rooms).
    pub nsp: Arc<str>,
    /// Its client: the Engine.IO session it belongs to (one per browser tab, shared by its
    /// namespaces), or the native connection.
    pub client: Arc<str>,
    /// Where it connected from.
    pub peer: PeerKey,
    /// When it connected, in ms since the Unix epoch.
    pub issued_ms: u64,
    /// A native player rather than a Socket.IO socket.
    pub native: bool,
    /// Who listed it: the address of its Engine.IO session or native connection, so that
    /// one that ends after another took its player over (a resume, a recovery) leaves the
    /// new one listed ([`Relay::admin_ui_unregister`]).
    pub owner: usize,
    /// Ends it as `socket.disconnect()` on the server does (a native connection is
    /// closed). Run by the admin UI endpoint outside the relay's borrow: it calls back into
    /// the session, which releases the player from the relay.
    pub disconnect: Rc<dyn Fn()>,
}

impl std::fmt::Debug for ListedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListedSocket")
            .field("id", &self.id)
            .field("nsp", &self.nsp)
            .field("client", &self.client)
            .field("native", &self.native)
            .finish_non_exhaustive()
    }
}

/// What an operator asks of the sockets of a namespace: those in room `filter` (a socket
/// id counts as the room of that one socket, as in socket.io), or all of them.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminCommand {
    /// The sockets join `room` (`socketsJoin`).
    Join {
        /// Namespace.
        nsp: String,
        /// Room to join.
        room: String,
        /// Which sockets.
        filter: Option<String>,
    },
    /// The sockets leave `room` (`socketsLeave`).
    Leave {
        /// Namespace.
        nsp: String,
        /// Room to leave.
        room: String,
        /// Which sockets.
        filter: Option<String>,
    },
    /// The sockets are disconnected (`disconnectSockets`); with `close`, every socket of
    /// their clients too, as closing the underlying connection does.
    Disconnect {
        /// Namespace.
        nsp: String,
        /// Close their clients.
        close: bool,
        /// Which sockets.
        filter: Option<String>,
    },
    /// `event` with `args` is emitted to the sockets.
    Emit {
        /// Namespace.
        nsp: String,
        /// Which sockets.
        filter: Option<String>,
        /// Event name.
        event: String,
        /// Arguments.
        args: Vec<Arg>,
    },
}

impl AdminCommand {
    fn target(&self) -> (&str, Option<&str>) {
        match self {
            AdminCommand::Join { nsp, filter, .. }
            | AdminCommand::Leave { nsp, filter, .. }
            | AdminCommand::Disconnect { nsp, filter, .. }
            | AdminCommand::Emit { nsp, filter, .. } => (nsp, filter.as_deref()),
        }
    }
}

/// What crosses between shards for the admin UI ([`MeshMsg::AdminUi`]).
#[derive(Debug)]
pub enum AdminUiMsg {
    /// admin's shard -> every shard: your sockets, for admin `watcher`'s list `req`.
    List {
        /// The admin socket.
        watcher: PlayerId,
        /// Its listing.
        req: u64,
    },
    /// answer to `List`: this shard's sockets, at most the listing budget of them.
    Listed {
        /// The admin socket.
        watcher: PlayerId,
        /// Its listing.
        req: u64,
        /// The sockets, as the UI reads them.
        sockets: Vec<Value>,
        /// Bytes of their JSON.
        bytes: usize,
    },
    /// any shard -> a shard with admins: a change, as the admin namespace's Engine.IO
    /// message text, for its admins.
    Event(Arc<str>),
    /// admin's shard -> every shard: an operator's command for your sockets.
    Command(Arc<AdminCommand>),
}

/// A listing this shard's admin waits for.
#[derive(Debug)]
struct Listing {
    req: u64,
    watcher: PlayerId,
    left: usize,
    sockets: Vec<Value>,
    bytes: usize,
}

/// One shard's admin UI state, in its relay.
pub(super) struct AdminUi {
    shared: Arc<AdminUiShared>,
    /// The shard's admin UI endpoint, whose timers run disconnects and stats.
    endpoint: u16,
    /// Wall-clock time at `anchor`, so that change timestamps come from the `now` the relay
    /// is given rather than from a clock of its own.
    anchor: (Instant, SystemTime),
    sockets: HashMap<PlayerId, ListedSocket>,
    /// Admin sockets on this shard.
    watchers: Vec<PlayerId>,
    listings: VecDeque<Listing>,
    next_listing: u64,
    /// Disconnects to run, and whether the endpoint was woken for them.
    disconnects: Vec<Rc<dyn Fn()>>,
    woken: bool,
    /// The stats timer is armed.
    ticking: bool,
}

impl std::fmt::Debug for AdminUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUi")
            .field("sockets", &self.sockets.len())
            .field("watchers", &self.watchers)
            .field("listings", &self.listings.len())
            .field("disconnects", &self.disconnects.len())
            .finish_non_exhaustive()
    }
}

impl AdminUi {
    fn timestamp(&self, now: Instant) -> String {
        let (at, wall) = self.anchor;
        let wall = match now.checked_duration_since(at) {
            Some(d) => wall + d,
            None => wall - at.duration_since(now),
        };
        iso8601(wall)
    }
}

impl Relay {
    /// Turns the admin UI on for this shard (once, before it serves), with its endpoint's id.
    pub fn enable_admin_ui(&mut self, shared: Arc<AdminUiShared>, endpoint: u16) {
        self.admin_ui = Some(Box::new(AdminUi {
            shared,
            endpoint,
            anchor: (Instant::now(), SystemTime::now()),
            sockets: HashMap::new(),
            watchers: Vec::new(),
            listings: VecDeque::new(),
            next_listing: 1,
            disconnects: Vec::new(),
            woken: false,
            ticking: false,
        }));
    }

    /// Whether the admin UI is on.
    pub fn admin_ui_enabled(&self) -> bool {
        self.admin_ui.is_some()
    }

    /// A socket connected (`player`, registered with the relay or about to be): listed, and
    /// admins are told (`socket_connected`).
    pub fn admin_ui_register(&mut self, player: PlayerId, socket: ListedSocket, now: Instant) {
        let Some(ui) = self.admin_ui.as_mut() else {
            return;
        };
        ui.shared.count(&socket.nsp, self.shard, true);
        // A session that took the player over (a resume, a recovery) lists it anew.
        if let Some(old) = ui.sockets.insert(player, socket) {
            ui.shared.count(&old.nsp, self.shard, false);
        }
        if !self.admin_ui_told() {
            return;
        }
        let Some((described, ts)) = self.admin_ui.as_ref().and_then(|ui| {
            let socket = ui.sockets.get(&player)?;
            Some((self.describe(player, socket), ui.timestamp(now)))
        }) else {
            return;
        };
        self.admin_ui_emit("socket_connected", vec![described, Value::String(ts)]);
    }

    /// The socket that `owner` listed is gone for `reason` (socket.io's disconnect
    /// reasons): admins are told (`socket_disconnected`, then `room_left` for each of its
    /// rooms, as socket.io's adapter does when a socket leaves them all), and it is no
    /// longer listed. Nothing happens when another session or connection listed the player
    /// since. Call it before the relay releases the player, while its rooms are known.
    pub fn admin_ui_unregister(
        &mut self,
        player: PlayerId,
        owner: usize,
        reason: &str,
        now: Instant,
    ) {
        let Some(ui) = self.admin_ui.as_mut() else {
            return;
        };
        if ui.sockets.get(&player).is_none_or(|s| s.owner != owner) {
            return;
        }
        let Some(socket) = ui.sockets.remove(&player) else {
            return;
        };
        ui.shared.count(&socket.nsp, self.shard, false);
        if let Some(i) = ui.watchers.iter().position(|&w| w == player) {
            ui.watchers.swap_remove(i);
            ui.shared.watchers[self.shard].store(ui.watchers.len() as u32, Relaxed);
        }
        if !self.admin_ui_told() {
            return;
        }
        let ts = self
            .admin_ui
            .as_ref()
            .map(|ui| ui.timestamp(now))
            .unwrap_or_default();
        let (nsp, id) = (socket.nsp.to_string(), socket.id.to_string());
        self.admin_ui_emit(
            "socket_disconnected",
            vec![json!(nsp), json!(id), json!(reason), json!(ts)],
        );
        for room in self.member_rooms(player, &nsp) {
            self.admin_ui_emit(
                "room_left",
                vec![json!(nsp), json!(room), json!(id), json!(ts)],
            );
        }
    }

    /// Admin socket `watcher` (registered, on the admin namespace) starts watching: changes
    /// reach it from now on. `Some(endpoint)` when the caller must arm the endpoint's
    /// [`STATS_TIMER`] (none is armed on this shard yet).
    pub fn admin_ui_watch(&mut self, watcher: PlayerId) -> Option<u16> {
        let shard = self.shard;
        let ui = self.admin_ui.as_mut()?;
        if !ui.watchers.contains(&watcher) {
            ui.watchers.push(watcher);
            ui.shared.watchers[shard].store(ui.watchers.len() as u32, Relaxed);
        }
        (!std::mem::replace(&mut ui.ticking, true)).then_some(ui.endpoint)
    }

    /// The stats timer fired: `true` when it must be armed again (admins watch here still).
    pub fn admin_ui_keep_ticking(&mut self) -> bool {
        let Some(ui) = self.admin_ui.as_mut() else {
            return false;
        };
        ui.ticking = !ui.watchers.is_empty();
        ui.ticking
    }

    /// Sends the admin namespace's Engine.IO message `text` to this shard's admins.
    pub fn admin_ui_send_local(&self, text: &str) {
        let Some(ui) = &self.admin_ui else {
            return;
        };
        for watcher in &ui.watchers {
            self.send_text(*watcher, text);
        }
    }

    /// Starts the list of every socket (`all_sockets`) for admin `watcher`: sent to it
    /// once every shard has answered.
    pub fn admin_ui_list(&mut self, watcher: PlayerId) {
        let Some(ui) = self.admin_ui.as_mut() else {
            return;
        };
        let req = ui.next_listing;
        ui.next_listing += 1;
        if ui.listings.len() >= MAX_LISTINGS {
            ui.listings.pop_front();
        }
        ui.listings.push_back(Listing {
            req,
            watcher,
            left: self.shards,
            sockets: Vec::new(),
            bytes: 0,
        });
        let me = self.shard;
        for shard in (0..self.shards).filter(|&s| s != me) {
            self.send_mesh(
                shard,
                MeshMsg::AdminUi(Box::new(AdminUiMsg::List { watcher, req })),
            );
        }
        let (sockets, bytes) = self.list_local();
        self.listed(watcher, req, sockets, bytes);
    }

    /// Applies an operator's command to the sockets of every shard. `Some(endpoint)` when
    /// disconnects wait for that endpoint's [`DISCONNECT_TIMER`], which the caller must then
    /// arm (the relay's own wake-ups are taken only after the mesh is read).
    pub fn admin_ui_command(&mut self, command: AdminCommand, now: Instant) -> Option<u16> {
        let endpoint = self.admin_ui.as_ref()?.endpoint;
        let command = Arc::new(command);
        let me = self.shard;
        for shard in (0..self.shards).filter(|&s| s != me) {
            self.send_mesh(
                shard,
                MeshMsg::AdminUi(Box::new(AdminUiMsg::Command(Arc::clone(&command)))),
            );
        }
        self.apply(&command, now).then_some(endpoint)
    }

    /// The disconnects commanded of this shard, to run now, outside the relay's borrow.
    pub fn admin_ui_disconnects(&mut self) -> Vec<Rc<dyn Fn()>> {
        let Some(ui) = self.admin_ui.as_mut() else {
            return Vec::new();
        };
        ui.woken = false;
        std::mem::take(&mut ui.disconnects)
    }

    /// Admins are told `event` with `args` about a socket of this shard: encoded once, sent
    /// to this shard's admins, and carried to each shard that has admins of its own.
    pub fn admin_ui_emit(&mut self, event: &str, args: Vec<Value>) {
        let Some(ui) = &self.admin_ui else {
            return;
        };
        let packet = Packet::event(&ui.shared.namespace, event, args.into_iter().map(Arg::Json));
        let text: Arc<str> = packet.encode_engineio().into();
        self.admin_ui_send_local(&text);
        let others: Vec<ShardId> = (0..self.shards)
            .filter(|&s| s != self.shard && ui.shared.watchers[s].load(Relaxed) > 0)
            .collect();
        for shard in others {
            self.send_mesh(
                shard,
                MeshMsg::AdminUi(Box::new(AdminUiMsg::Event(Arc::clone(&text)))),
            );
        }
    }

    /// Whether changes are described now: the admin UI is on, in development mode, and an
    /// admin watches somewhere.
    pub fn admin_ui_told(&self) -> bool {
        self.admin_ui
            .as_ref()
            .is_some_and(|ui| ui.shared.details && ui.shared.watching())
    }

    /// `player` became a member of `room` on this shard.
    pub(super) fn admin_ui_joined(&mut self, player: PlayerId, room: &str, now: Instant) {
        self.admin_ui_room("room_joined", player, room, now);
    }

    /// `player` stopped being a member of `room` on this shard.
    pub(super) fn admin_ui_left(&mut self, player: PlayerId, room: &str, now: Instant) {
        self.admin_ui_room("room_left", player, room, now);
    }

    fn admin_ui_room(&mut self, event: &str, player: PlayerId, room: &str, now: Instant) {
        if !self.admin_ui_told() {
            return;
        }
        let Some((id, ts)) = self.admin_ui.as_ref().and_then(|ui| {
            let socket = ui.sockets.get(&player)?;
            Some((socket.id.to_string(), ui.timestamp(now)))
        }) else {
            return;
        };
        let (nsp, name) = split_room_key(room);
        let args = vec![json!(nsp), json!(name), json!(id), json!(ts)];
        self.admin_ui_emit(event, args);
    }

    /// `player` moved to another transport (a Socket.IO upgrade to WebSocket).
    pub(super) fn admin_ui_rewired(&mut self, player: PlayerId, wire: Wire) {
        if !self.admin_ui_told() {
            return;
        }
        let Some((id, nsp)) = self.admin_ui.as_ref().and_then(|ui| {
            let socket = ui.sockets.get(&player)?;
            Some((socket.id.to_string(), socket.nsp.to_string()))
        }) else {
            return;
        };
        let update = json!({ "id": id, "nsp": nsp, "transport": transport_name(wire) });
        self.admin_ui_emit("socket_updated", vec![update]);
    }

    /// Handles an admin UI message from shard `from`.
    pub(super) fn handle_admin_ui_mesh(&mut self, from: ShardId, msg: AdminUiMsg, now: Instant) {
        match msg {
            AdminUiMsg::List { watcher, req } => {
                let (sockets, bytes) = self.list_local();
                let answer = AdminUiMsg::Listed {
                    watcher,
                    req,
                    sockets,
                    bytes,
                };
                self.send_mesh(from, MeshMsg::AdminUi(Box::new(answer)));
            }
            AdminUiMsg::Listed {
                watcher,
                req,
                sockets,
                bytes,
            } => self.listed(watcher, req, sockets, bytes),
            AdminUiMsg::Event(text) => self.admin_ui_send_local(&text),
            AdminUiMsg::Command(command) => {
                if self.apply(&command, now) {
                    if let Some(ui) = &self.admin_ui {
                        // The driver takes the relay's wake-ups after the mesh, this turn.
                        self.wakeups.push((ui.endpoint, DISCONNECT_TIMER));
                    }
                }
            }
        }
    }

    /// Applies `command` to this shard's sockets; `true` when disconnects wait to be run.
    fn apply(&mut self, command: &AdminCommand, now: Instant) -> bool {
        let Some(ui) = &self.admin_ui else {
            return false;
        };
        let (nsp, filter) = command.target();
        let filter_key = filter.map(|f| room_key(nsp, f));
        let mut chosen: Vec<PlayerId> = ui
            .sockets
            .iter()
            .filter(|(&player, s)| {
                *s.nsp == *nsp
                    && match (filter, &filter_key) {
                        (Some(f), Some(key)) => *s.id == *f || self.is_member(player, key),
                        _ => true,
                    }
            })
            .map(|(&player, _)| player)
            .collect();
        match command {
            AdminCommand::Join { room, .. } | AdminCommand::Leave { room, .. } => {
                // Checked here as the relay convention checks a client's names: a key of
                // another namespace's room can never be made from one.
                if !valid_name(room, self.limits.max_name_len) {
                    return false;
                }
                let key = room_key(nsp, room);
                let joining = matches!(command, AdminCommand::Join { .. });
                for player in chosen {
                    // Refusals (a full room, too many rooms, not a member) are the relay's
                    // answer; the admin UI has no way to hear them, and sees the change
                    // that happened, or none.
                    let _ = if joining {
                        self.join(player, None, &key, now)
                    } else {
                        self.leave(player, None, &key, now)
                    };
                }
                false
            }
            AdminCommand::Disconnect { close, .. } => {
                if *close {
                    let clients: Vec<Arc<str>> = chosen
                        .iter()
                        .filter_map(|p| ui.sockets.get(p).map(|s| Arc::clone(&s.client)))
                        .collect();
                    chosen = ui
                        .sockets
                        .iter()
                        .filter(|(_, s)| clients.contains(&s.client))
                        .map(|(&player, _)| player)
                        .collect();
                }
                let Some(ui) = self.admin_ui.as_mut() else {
                    return false;
                };
                let before = ui.disconnects.len();
                for player in chosen {
                    if let Some(s) = ui.sockets.get(&player) {
                        ui.disconnects.push(Rc::clone(&s.disconnect));
                    }
                }
                let wake = ui.disconnects.len() > before && !ui.woken;
                ui.woken |= wake;
                wake
            }
            AdminCommand::Emit { event, args, .. } => {
                // As the emitting methods of the application API: a reserved name would make
                // every official client that receives it drop its connection.
                if RESERVED_EVENTS.contains(&event.as_str()) {
                    return false;
                }
                let room = room_key(nsp, filter.unwrap_or_default());
                let body = Body::Emit {
                    event: event.clone(),
                    args: args.clone(),
                };
                let bcast = Broadcast::new(room, 0, body, now);
                for player in chosen {
                    if let Some(p) = self.players.get(&player) {
                        // A full outbox closes its own connection; the others go on.
                        let _ = p.outbox.push(bcast.frame(p.wire));
                    }
                }
                false
            }
        }
    }

    /// This shard's sockets as the UI reads them, up to the listing budget.
    fn list_local(&self) -> (Vec<Value>, usize) {
        let Some(ui) = &self.admin_ui else {
            return (Vec::new(), 0);
        };
        let mut sockets = Vec::new();
        let mut bytes = 0;
        for (&player, socket) in &ui.sockets {
            let described = self.describe(player, socket);
            let len = json_len(&described);
            if bytes + len > ui.shared.listing_bytes {
                break;
            }
            bytes += len;
            sockets.push(described);
        }
        (sockets, bytes)
    }

    /// A shard's part of listing `req` came: once every shard's has, the list goes to its
    /// admin.
    fn listed(&mut self, watcher: PlayerId, req: u64, sockets: Vec<Value>, bytes: usize) {
        let Some(ui) = self.admin_ui.as_mut() else {
            return;
        };
        let Some(i) = ui
            .listings
            .iter()
            .position(|l| l.req == req && l.watcher == watcher)
        else {
            return;
        };
        let listing = &mut ui.listings[i];
        if listing.bytes + bytes <= ui.shared.listing_bytes {
            listing.sockets.extend(sockets);
            listing.bytes += bytes;
        } else {
            // Past the budget: as many of this shard's as still fit.
            for socket in sockets {
                let len = json_len(&socket);
                if listing.bytes + len > ui.shared.listing_bytes {
                    break;
                }
                listing.bytes += len;
                listing.sockets.push(socket);
            }
        }
        listing.left -= 1;
        if listing.left > 0 {
            return;
        }
        let Some(listing) = ui.listings.remove(i) else {
            return;
        };
        if !ui.watchers.contains(&listing.watcher) {
            return;
        }
        let packet = Packet::event(
            &ui.shared.namespace,
            "all_sockets",
            [Arg::Json(Value::Array(listing.sockets))],
        );
        self.send_text(listing.watcher, &packet.encode_engineio());
    }

    /// `socket` (of `player`) as the UI reads it (socket.io's `SerializedSocket`): its own
    /// id first among its rooms, as a socket.io socket is in the room of its id.
    fn describe(&self, player: PlayerId, socket: &ListedSocket) -> Value {
        let p = self.players.get(&player);
        let transport = match p.map(|p| p.wire) {
            Some(wire) => transport_name(wire),
            None if socket.native => transport_name(Wire::Native),
            None => "polling",
        };
        let mut rooms = vec![socket.id.to_string()];
        rooms.extend(self.member_rooms(player, &socket.nsp));
        let name = p.map_or_else(|| socket.id.to_string(), |p| p.identity.player.to_string());
        let url = self.admin_ui.as_ref().map_or("", |ui| {
            ui.shared.paths[usize::from(socket.native)].as_str()
        });
        let issued = UNIX_EPOCH + Duration::from_millis(socket.issued_ms);
        json!({
            "id": &*socket.id,
            "clientId": &*socket.client,
            "transport": transport,
            "nsp": &*socket.nsp,
            "data": {
                "player": name,
                "protocol": if socket.native { "native" } else { "socket.io" },
                "shard": self.shard,
            },
            "handshake": {
                "address": socket.peer.to_string(),
                "headers": {},
                "query": {},
                "issued": socket.issued_ms,
                "time": iso8601(issued),
                "url": url,
                "secure": false,
                "xdomain": false,
            },
            "rooms": rooms,
        })
    }

    /// The rooms of namespace `nsp` that `player` is a member of on this shard, by name.
    fn member_rooms(&self, player: PlayerId, nsp: &str) -> Vec<String> {
        let Some(p) = self.players.get(&player) else {
            return Vec::new();
        };
        p.rooms
            .iter()
            .filter(|key| self.is_member(player, key))
            .filter_map(|key| {
                let (room_nsp, name) = split_room_key(key);
                (room_nsp == nsp).then(|| name.to_owned())
            })
            .collect()
    }

    /// Pushes the admin namespace's Engine.IO message `text` to `player`'s outbox, framed
    /// for its transport.
    fn send_text(&self, player: PlayerId, text: &str) {
        let Some(p) = self.players.get(&player) else {
            return;
        };
        let frame = match p.wire {
            Wire::SioWs => sio_ws_frames(text, &[]),
            Wire::SioPolling => sio_polling_text(text, &[]),
            // An admin is a Socket.IO socket.
            Wire::Native | Wire::SocketCluster => return,
        };
        // A full outbox closes its own connection: an admin that cannot keep up with the
        // changes is closed as any slow consumer, and its UI reconnects for a fresh list.
        let _ = p.outbox.push(frame);
    }
}

/// The admin UI's name of a transport (its `Transport` chip): `websocket` and `polling` as
/// socket.io names them, `native` for a native player (a WebSocket too).
fn transport_name(wire: Wire) -> &'static str {
    match wire {
        Wire::SioWs => "websocket",
        Wire::SioPolling => "polling",
        Wire::Native => "native",
        Wire::SocketCluster => "socketcluster",
    }
}

/// Bytes of `value` as JSON text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `t` as JavaScript's `Date.prototype.toISOString` writes it (`2026-11-30T20:52:06.123Z`):
/// what a `Date` argument of socket.io's admin events becomes in JSON.
pub fn iso8601(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days to a civil date: Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::auth::Identity;
    use crate::relay::tests::{outbox, settle};
    use crate::relay::{Drained, Outbox, RelayLimits};
    use crate::stats::ShardStats;

    /// Two shards' relays with the admin UI on, sharing one view.
    fn relays() -> (Vec<Relay>, Arc<AdminUiShared>) {
        let config = crate::config::Config::default();
        let shared = Arc::new(AdminUiShared::new(
            "/admin",
            2,
            [],
            true,
            1 << 19,
            ["/socket.io/", "/ws"],
        ));
        let relays = (0..2)
            .map(|i| {
                let stats = Arc::new(ShardStats::default());
                let mut r = Relay::new(i, 2, RelayLimits::of(&config), stats);
                r.enable_admin_ui(Arc::clone(&shared), 2);
                r
            })
            .collect();
        (relays, shared)
    }

    /// A player `p` of namespace `nsp` connected to `relay` on long-polling (whose frames
    /// are the packets' text), listed by `owner`; its disconnect counts in `kicked`.
    fn connect(
        relay: &mut Relay,
        p: PlayerId,
        nsp: &str,
        owner: usize,
        kicked: &Rc<Cell<u32>>,
    ) -> Rc<Outbox> {
        let out = outbox();
        let id = p.to_string();
        relay.connect(
            p,
            Identity::anonymous(id.clone()),
            Wire::SioPolling,
            Rc::clone(&out),
        );
        let kicked = Rc::clone(kicked);
        let socket = ListedSocket {
            id: Arc::from(id.as_str()),
            nsp: Arc::from(nsp),
            client: Arc::from(id.as_str()),
            peer: PeerKey::unknown(),
            issued_ms: 0,
            native: false,
            owner,
            disconnect: Rc::new(move || kicked.set(kicked.get() + 1)),
        };
        relay.admin_ui_register(p, socket, Instant::now());
        out
    }

    /// The admin events `out` holds, as `[name, ...args]`.
    fn events(out: &Outbox) -> Vec<Value> {
        let mut raw = Vec::new();
        while let Drained::Frames = out.drain(&mut raw) {}
        raw.iter()
            .filter_map(|f| std::str::from_utf8(f).ok()?.strip_prefix("42/admin,"))
            .map(|json| serde_json::from_str(json).unwrap())
            .collect()
    }

    #[test]
    fn an_admin_sees_and_commands_the_sockets_of_every_shard() {
        let (mut r, shared) = relays();
        let kicked = Rc::new(Cell::new(0));
        let watcher = connect(&mut r[0], 10, "/admin", 1, &kicked);
        connect(&mut r[0], 11, "/", 1, &kicked);
        connect(&mut r[1], 21, "/", 2, &kicked);
        assert_eq!(
            r[0].admin_ui_watch(10),
            Some(2),
            "the first admin arms the stats"
        );
        assert_eq!(r[0].admin_ui_watch(10), None);
        assert!(shared.watching());
        r[0].admin_ui_list(10);
        settle(&mut r);
        let listed = events(&watcher);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0][0], "all_sockets");
        let mut ids: Vec<&str> = listed[0][1]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["10", "11", "21"]);

        // A change on the other shard reaches the admin.
        r[1].join(21, None, "arena", Instant::now()).unwrap();
        settle(&mut r);
        let seen = events(&watcher);
        assert!(
            seen.iter()
                .any(|e| e[0] == "room_joined" && e[1] == "/" && e[2] == "arena" && e[3] == "21"),
            "{seen:?}"
        );

        // A disconnect by room reaches the shard of its socket, and waits for its endpoint.
        let command = AdminCommand::Disconnect {
            nsp: "/".into(),
            close: false,
            filter: Some("arena".into()),
        };
        assert_eq!(r[0].admin_ui_command(command, Instant::now()), None);
        settle(&mut r);
        assert_eq!(r[1].take_wakeups(), vec![(2, DISCONNECT_TIMER)]);
        for disconnect in r[1].admin_ui_disconnects() {
            disconnect();
        }
        assert_eq!(kicked.get(), 1);

        // Unlisted only by who listed it; then the admin hears it left its rooms too.
        r[1].admin_ui_unregister(21, 99, "transport close", Instant::now());
        settle(&mut r);
        assert!(
            events(&watcher).is_empty(),
            "another owner's end changes nothing"
        );
        r[1].admin_ui_unregister(21, 2, "transport close", Instant::now());
        settle(&mut r);
        let seen: Vec<Value> = events(&watcher).into_iter().map(|e| e[0].clone()).collect();
        assert_eq!(seen, ["socket_disconnected", "room_left"]);
        assert_eq!(shared.sockets_by_namespace(), [("/", 1), ("/admin", 1)]);

        // The admin gone, nobody watches and nothing is described.
        r[0].admin_ui_unregister(10, 1, "transport close", Instant::now());
        assert!(!shared.watching());
        assert!(!r[0].admin_ui_told());
    }

    #[test]
    fn timestamps_read_as_javascript_writes_them() {
        let at = |ms: u64| iso8601(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // new Date(1796158326123).toISOString()
        assert_eq!(at(1_796_158_326_123), "2026-12-01T20:52:06.123Z");
        // A leap day: new Date(951782400000).toISOString()
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn namespaces_count_per_shard_and_sum() {
        let shared = AdminUiShared::new(
            "/admin",
            2,
            ["/chat".to_owned()],
            true,
            1000,
            ["/s/", "/ws"],
        );
        shared.count("/", 0, true);
        shared.count("/", 1, true);
        shared.count("/chat", 1, true);
        shared.count("/nowhere", 1, true);
        shared.count("/", 0, false);
        let counts = shared.sockets_by_namespace();
        assert_eq!(counts, vec![("/", 1), ("/admin", 0), ("/chat", 1)]);
        assert!(!shared.watching());
        shared.watchers[1].store(1, Relaxed);
        assert!(shared.watching());
    }
}
