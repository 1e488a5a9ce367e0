//! An Engine.IO v4 session as a state machine, with no socket and no clock of its own: it
//! is fed packets and `now`, and answers with packets queued on its transport's outbound
//! queue, with events for the layer above (Socket.IO or echo), and with its next deadline
//! ([`Session::poll_timeout`]), which the endpoint keeps on the shard's timer wheel.
//!
//! A session belongs to the shard that created it; its id starts with that shard's number
//! (`net::engineio` hands requests that land elsewhere to the owner). Outgoing packets go
//! to the session's current transport: long-polling keeps them in a queue of payload text
//! fragments until a GET collects them; WebSocket sends frames.
//!
//! Heartbeat, as the reference server does it: a ping `pingInterval` after the session
//! opened or after the last pong; the session ends when no pong follows within
//! `pingTimeout`.
//!
//! In the `connections` gauge an Engine.IO client counts once per transport that holds
//! resources: a polling session until it ends or upgrades, and every WebSocket (the
//! session's, or one probing an upgrade) until its connection ends.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::admission::{Occupancy, PeerKey};
use crate::proto::engineio::{self, Data, Packet, PacketType};
use crate::proto::ws::{self, close};
use crate::relay::{sio_ws_frames, Drained, Outbox, PlayerId, Wire};
use crate::shard::Shard;
use crate::socketio::SioSession;
use crate::stats::{add, CloseReason};

/// The close packet as a long-polling fragment: what the pending (or next) poll reads when
/// the server ends the session, as the reference server answers it. It also ends the
/// polling queue of a client that polls slower than its packets arrive.
static CLOSE_PACKET: Bytes = Bytes::from_static(b"1");

/// The noop as a long-polling fragment: ends a pending poll with nothing to say.
static NOOP_PACKET: Bytes = Bytes::from_static(b"6");

/// What runs on top of a session.
pub(crate) enum Handler {
    /// Socket.IO (namespaces, events, acks, the relay convention).
    SocketIo(SioSession),
    /// Engine.IO echo: every message sent back (the engine.io reference server).
    Echo,
}

impl Handler {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Handler::SocketIo(sio) => sio.deadline(),
            Handler::Echo => None,
        }
    }

    /// Runs the layer's own timers (Socket.IO: connect timeout, attachments, acks); `Err`
    /// with the reason and stat when the session must end.
    fn handle_timeout(
        &mut self,
        session: &Rc<Session>,
        now: Instant,
    ) -> Result<(), (&'static str, CloseReason)> {
        match self {
            Handler::SocketIo(sio) => sio.handle_timeout(session, now),
            Handler::Echo => Ok(()),
        }
    }
}

/// The data of a `message` packet, for the layer above.
enum Message<'a> {
    /// A text message, with the time it arrived (Socket.IO times binary attachments from
    /// the text that announces them, and counts its events against rate limits then).
    Text(&'a str, Instant),
    /// A binary message, with the time it arrived.
    Binary(Bytes, Instant),
}

/// Which transport a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// HTTP long-polling.
    Polling,
    /// A WebSocket answered the probe; packets still go to polling until `5`.
    Upgrading,
    /// WebSocket only.
    WebSocket,
    /// Ended.
    Closed,
}

/// The sessions of one shard in a slab: a session's key is its slot (reused once the
/// session ends), and the key is part of the session id, so a request finds its session
/// without hashing; the id's random part tells a reused slot's new session from the old.
///
/// A new session takes a free slot only, so its id can never name a live session and no
/// collision of the random part can replace one: uniqueness among live sessions is
/// structural (the key), unguessability is the random part's.
#[derive(Default)]
pub(crate) struct Sessions {
    slots: RefCell<Vec<Option<Rc<Session>>>>,
    free: RefCell<Vec<u64>>,
    /// The endpoint whose timers the sessions' keys are.
    pub(crate) endpoint: Cell<u16>,
}

impl Sessions {
    /// No sessions yet, for the endpoint `endpoint` (whose timers their keys are).
    pub fn of_endpoint(endpoint: u16) -> Sessions {
        let sessions = Sessions::default();
        sessions.endpoint.set(endpoint);
        sessions
    }

    /// The session named `sid`, if it lives here.
    pub fn get(&self, sid: &str) -> Option<Rc<Session>> {
        let id = SessionId::parse(sid)?;
        let session = self.by_key(id.key)?;
        (session.id == id).then_some(session)
    }

    /// The session with timer key `key`.
    pub fn by_key(&self, key: u64) -> Option<Rc<Session>> {
        let slots = self.slots.borrow();
        slots.get(usize::try_from(key).ok()?)?.clone()
    }

    /// Every live session (for shutdown).
    pub fn all(&self) -> Vec<Rc<Session>> {
        self.slots.borrow().iter().flatten().cloned().collect()
    }

    fn next_key(&self) -> u64 {
        if let Some(key) = self.free.borrow_mut().pop() {
            return key;
        }
        let mut slots = self.slots.borrow_mut();
        slots.push(None);
        (slots.len() - 1) as u64
    }

    fn insert(&self, session: Rc<Session>) {
        let key = session.key as usize;
        let mut slots = self.slots.borrow_mut();
        // `next_key` hands out free slots only, so there is no live session to replace.
        debug_assert!(slots[key].is_none(), "slot {key} is taken");
        slots[key] = Some(session);
    }

    /// Gives a key taken with `next_key` back unused.
    fn release_key(&self, key: u64) {
        self.free.borrow_mut().push(key);
    }

    fn remove(&self, key: u64) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key as usize) {
            if slot.take().is_some() {
                self.free.borrow_mut().push(key);
            }
        }
    }
}

/// The shard that owns session `sid` (its first two hex digits), if well formed.
pub(crate) fn owner_of(sid: &str) -> Option<usize> {
    sid.get(..2).and_then(|h| usize::from_str_radix(h, 16).ok())
}

/// A session id, kept as numbers: the owning shard, the session's key, and 12 random bytes
/// so that ids cannot be guessed. Its text (42 hex digits) is made when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionId {
    shard: u8,
    key: u64,
    random: [u8; 12],
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The OS random source failed, so no unguessable id can be made: refuse the handshake
    /// (the client retries); never fall back to a guessable id.
    #[error("the OS random source failed: {0}")]
    Random(std::io::Error),
}

impl SessionId {
    fn new(shard: usize, key: u64) -> Result<SessionId, SessionError> {
        let mut random = [0u8; 12];
        // SAFETY: getrandom writes at most `len` bytes into the buffer it is given. Twelve
        // bytes are within the 256 that getrandom(2) always returns whole once the pool is
        // initialised; EINTR cannot cut a request that small short.
        let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if n != random.len() as isize {
            return Err(SessionError::Random(std::io::Error::last_os_error()));
        }
        Ok(SessionId {
            shard: (shard & 0xff) as u8,
            key,
            random,
        })
    }

    fn parse(sid: &str) -> Option<SessionId> {
        if sid.len() != 42 || !sid.is_ascii() {
            return None;
        }
        let hex = |range: std::ops::Range<usize>| u64::from_str_radix(&sid[range], 16).ok();
        let mut random = [0u8; 12];
        for (i, b) in random.iter_mut().enumerate() {
            *b = hex(18 + 2 * i..20 + 2 * i)? as u8;
        }
        Some(SessionId {
            shard: hex(0..2)? as u8,
            key: hex(2..18)?,
            random,
        })
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}{:016x}", self.shard, self.key)?;
        for b in self.random {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One Engine.IO session.
pub(crate) struct Session {
    id: SessionId,
    /// The session's key in [`Sessions`], also its timer key.
    pub key: u64,
    pub shard: Rc<Shard>,
    registry: Weak<Sessions>,
    phase: Cell<Phase>,
    /// Long-polling packets (payload text fragments) waiting for a GET; none for a
    /// session opened on a WebSocket (it never polls).
    polling: Option<Rc<Outbox>>,
    /// The WebSocket connection's outbox, once there is one.
    ws: RefCell<Option<Rc<Outbox>>>,
    /// A GET is waiting for packets.
    pub(crate) polling_get: Cell<bool>,
    /// A POST is being read.
    pub(crate) polling_post: Cell<bool>,
    /// The WebSocket probing an upgrade, if one is: the reference lets one upgrade be in
    /// flight per session, and closes it with the session.
    probe: RefCell<Option<Rc<Outbox>>>,
    /// The session counts in `connections` as a polling client (until it ends or upgrades;
    /// its WebSockets count themselves).
    counted: Cell<bool>,
    /// Its place in the server-wide and per-address session counts, left when it ends.
    admitted: RefCell<Option<Admitted>>,
    next_ping: Cell<Option<Instant>>,
    pong_deadline: Cell<Option<Instant>>,
    /// The earliest deadline on the timer wheel (kept by the endpoint).
    pub(crate) scheduled: Cell<Option<Instant>>,
    handler: RefCell<Option<Handler>>,
}

/// A session's entry in an [`Occupancy`] (the session caps), left when dropped.
pub(crate) struct Admitted {
    occupancy: std::sync::Arc<Occupancy>,
    peer: PeerKey,
}

impl Admitted {
    /// Enters `occupancy` for `peer`, if its caps allow.
    pub fn enter(
        occupancy: &std::sync::Arc<Occupancy>,
        peer: PeerKey,
    ) -> Result<Admitted, crate::admission::Full> {
        occupancy.enter(peer)?;
        Ok(Admitted {
            occupancy: std::sync::Arc::clone(occupancy),
            peer,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.occupancy.leave(self.peer);
    }
}

impl Session {
    /// The timer (endpoint, key) that reaches this session's `handle_timeout`.
    pub fn waker(&self) -> (u16, u64) {
        let endpoint = self.registry.upgrade().map_or(0, |r| r.endpoint.get());
        (endpoint, self.key)
    }

    /// A new session, registered in `sessions`: on the WebSocket whose outbox is
    /// `websocket`, or (`None`) on long-polling. `admitted` is its place in the session
    /// caps, held until it ends.
    pub fn open(
        shard: &Rc<Shard>,
        sessions: &Rc<Sessions>,
        websocket: Option<&Rc<Outbox>>,
        handler: Handler,
        admitted: Option<Admitted>,
        now: Instant,
    ) -> Result<Rc<Session>, SessionError> {
        let key = sessions.next_key();
        let id = match SessionId::new(shard.id, key) {
            Ok(id) => id,
            Err(e) => {
                sessions.release_key(key);
                return Err(e);
            }
        };
        let config = &shard.config;
        let ping_interval = Duration::from_millis(config.engineio_ping_interval_ms);
        let session = Rc::new(Session {
            id,
            key,
            shard: Rc::clone(shard),
            registry: Rc::downgrade(sessions),
            phase: Cell::new(match websocket {
                Some(_) => Phase::WebSocket,
                None => Phase::Polling,
            }),
            polling: websocket.is_none().then(|| {
                Rc::new(Outbox::with_overflow_frame(
                    shard.outbox_limits(),
                    Some(&CLOSE_PACKET),
                ))
            }),
            ws: RefCell::new(websocket.cloned()),
            polling_get: Cell::new(false),
            polling_post: Cell::new(false),
            probe: RefCell::new(None),
            counted: Cell::new(websocket.is_none()),
            admitted: RefCell::new(admitted),
            next_ping: Cell::new(Some(now + ping_interval)),
            pong_deadline: Cell::new(None),
            scheduled: Cell::new(None),
            handler: RefCell::new(Some(handler)),
        });
        sessions.insert(Rc::clone(&session));
        let transport = if websocket.is_some() {
            &shard.stats.engineio_websocket
        } else {
            &shard.stats.engineio_polling
        };
        add(transport, 1);
        if session.counted.get() {
            add(&shard.stats.connections, 1);
        }
        if let Some(Handler::SocketIo(sio)) = session.handler.borrow_mut().as_mut() {
            sio.start(now, &shard.config);
        }
        Ok(session)
    }

    /// [`Session::open`] outside the session caps, for tests.
    #[cfg(test)]
    pub fn create(
        shard: &Rc<Shard>,
        sessions: &Rc<Sessions>,
        websocket: Option<&Rc<Outbox>>,
        handler: Handler,
        now: Instant,
    ) -> Rc<Session> {
        Session::open(shard, sessions, websocket, handler, None, now)
            .expect("the OS random source works in tests")
    }

    /// Stops counting the session as a polling client in `connections`.
    fn uncount(&self) {
        if self.counted.replace(false) {
            self.shard
                .stats
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Where the session's handshake came from.
    pub fn peer(&self) -> PeerKey {
        self.admitted
            .borrow()
            .as_ref()
            .map_or(PeerKey::unknown(), |a| a.peer)
    }

    /// The session id, as the client sees it.
    pub fn sid(&self) -> String {
        self.id.to_string()
    }

    /// The next time [`Session::handle_timeout`] must run, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let handler = self.handler.borrow().as_ref().and_then(Handler::deadline);
        [self.next_ping.get(), self.pong_deadline.get(), handler]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: ping, or end the session for a missing pong or connect.
    pub fn handle_timeout(self: &Rc<Self>, now: Instant) {
        if self.is_closed() {
            return;
        }
        if self.pong_deadline.get().is_some_and(|d| d <= now) {
            self.close("ping timeout", CloseReason::Idle);
            return;
        }
        let handler_due = self
            .handler
            .borrow()
            .as_ref()
            .and_then(Handler::deadline)
            .is_some_and(|d| d <= now);
        if handler_due {
            let end = self.with_handler(|handler, session| match handler {
                Some(handler) => handler.handle_timeout(session, now),
                None => Ok(()),
            });
            if let Err((reason, stat)) = end {
                self.close(reason, stat);
                return;
            }
        }
        if self.next_ping.get().is_some_and(|d| d <= now) {
            if self.polling.as_ref().is_some_and(|p| p.overflowed()) {
                // The client polls slower than its packets arrive: a slow consumer.
                self.close("transport error", CloseReason::SlowConsumer);
                return;
            }
            self.next_ping.set(None);
            let timeout = Duration::from_millis(self.shard.config.engineio_ping_timeout_ms);
            self.pong_deadline.set(Some(now + timeout));
            self.send("2", &[]);
        }
    }

    /// Disconnects one namespace socket (from application code). Inside a handler call the
    /// socket is already marked and is swept when the handler returns.
    pub fn disconnect_socket(self: &Rc<Self>, nsp: &str) {
        let handler = self.handler.borrow_mut().take();
        if let Some(Handler::SocketIo(mut sio)) = handler {
            sio.disconnect(self, nsp);
            *self.handler.borrow_mut() = Some(Handler::SocketIo(sio));
        } else {
            *self.handler.borrow_mut() = handler;
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase.get() == Phase::Closed
    }

    /// The long-polling queue, for a session that polls.
    pub fn polling(&self) -> Option<&Rc<Outbox>> {
        self.polling.as_ref()
    }

    /// The outbox and wire encoding that outgoing packets use right now.
    pub fn transport(&self) -> (Rc<Outbox>, Wire) {
        match &self.polling {
            Some(polling) if self.phase.get() != Phase::WebSocket => {
                (Rc::clone(polling), Wire::SioPolling)
            }
            // A session without polling was created on its WebSocket; the upgrade sets the
            // WebSocket before the phase.
            _ => {
                let ws = self.ws.borrow();
                let ws = ws.as_ref().expect("a session on WebSocket has its outbox");
                (Rc::clone(ws), Wire::SioWs)
            }
        }
    }

    /// Sends an Engine.IO packet given as text (`4...`), with binary attachments after it.
    pub fn send(&self, text: &str, attachments: &[Bytes]) {
        let (outbox, wire) = self.transport();
        let frame = match wire {
            Wire::SioWs => sio_ws_frames(text, attachments),
            _ => crate::relay::sio_polling_text(text, attachments),
        };
        // A full outbox closes the session's transport (slow consumer).
        let _ = outbox.push(frame);
    }

    /// Sends a binary Engine.IO message.
    pub fn send_binary(&self, data: &[u8]) {
        let (outbox, wire) = self.transport();
        let frame = match wire {
            Wire::SioWs => ws::binary_frame(|mut v| {
                v.extend_from_slice(data);
                v
            }),
            _ => {
                let mut text = String::from("b");
                engineio::encode_base64_into(data, &mut text);
                Bytes::from(text)
            }
        };
        let _ = outbox.push(frame);
    }

    /// Whether `ws` is the session's WebSocket (the upgrade completed on it).
    pub fn is_websocket(&self, ws: &Rc<Outbox>) -> bool {
        self.ws.borrow().as_ref().is_some_and(|w| Rc::ptr_eq(w, ws))
    }

    /// Whether `outbox` is one of the session's (its polling queue or its WebSocket's).
    pub fn owns(&self, outbox: &Rc<Outbox>) -> bool {
        self.polling.as_ref().is_some_and(|p| Rc::ptr_eq(p, outbox)) || self.is_websocket(outbox)
    }

    /// Takes `ws` as the session's one upgrade in flight; `false` when the session is not
    /// polling or another WebSocket is upgrading it already (the reference closes such a
    /// WebSocket and leaves the session alone).
    pub fn begin_upgrade(&self, ws: &Rc<Outbox>) -> bool {
        let mut probe = self.probe.borrow_mut();
        if self.phase.get() != Phase::Polling || probe.is_some() {
            return false;
        }
        *probe = Some(Rc::clone(ws));
        true
    }

    /// The WebSocket `ws` ended without completing its upgrade: the session goes on
    /// polling, and may try again.
    pub fn upgrade_abandoned(&self, ws: &Rc<Outbox>) {
        let mut probe = self.probe.borrow_mut();
        if probe.as_ref().is_some_and(|p| Rc::ptr_eq(p, ws)) {
            *probe = None;
            if self.phase.get() == Phase::Upgrading {
                self.phase.set(Phase::Polling);
            }
        }
    }

    /// Ends the session: the handler is told, transports are closed, the id is forgotten.
    pub fn close(self: &Rc<Self>, reason: &str, stat: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.phase.set(Phase::Closed);
        if let Some(sessions) = self.registry.upgrade() {
            sessions.remove(self.key);
        }
        let stats = &self.shard.stats;
        let transport = if self.ws.borrow().is_some() {
            &stats.engineio_websocket
        } else {
            &stats.engineio_polling
        };
        crate::stats::sub(transport, 1);
        let handler = self.handler.borrow_mut().take();
        if let Some(Handler::SocketIo(mut sio)) = handler {
            // A connection lost (the peer went, its socket failed, it fell silent) keeps its
            // sockets' sessions for recovery; one the server ended for cause does not.
            let lost = matches!(
                stat,
                CloseReason::Peer | CloseReason::Io | CloseReason::Idle
            );
            sio.on_close(self, reason, lost);
        }
        if let Some(polling) = &self.polling {
            // The poll that is pending (or comes next) ends: with a noop when the client
            // ended the session, with the close packet when the server did. After an
            // upgrade the queue is closed already and this does nothing.
            //
            // A session the server ends for cause has queued its DISCONNECTs: they go alone.
            // The official client hands a payload's packets to Socket.IO a tick late, so a
            // close packet beside them would end its transport first, read as `transport
            // close`, and it would reconnect (the reference sends its close in a later
            // poll); the session ends here all the same, and a later poll finds it gone.
            let for_cause = !matches!(
                stat,
                CloseReason::Peer | CloseReason::Io | CloseReason::Idle | CloseReason::Shutdown
            );
            match stat {
                CloseReason::Peer => polling.end_with(NOOP_PACKET.clone()),
                _ if for_cause && !polling.is_empty() => polling.finish(),
                _ => polling.end_with(CLOSE_PACKET.clone()),
            }
        }
        if let Some(ws) = self.ws.borrow().as_ref() {
            ws.close(close::NORMAL, "");
        }
        // A probing WebSocket ends with its session (as the reference's `onClose` closes
        // the upgrading transport), rather than living on to its upgrade timeout.
        if let Some(probe) = self.probe.borrow_mut().take() {
            probe.close(close::NORMAL, "");
        }
        self.uncount();
        drop(self.admitted.borrow_mut().take());
        self.shard.stats.count_close(stat);
    }

    /// Whether one of the session's namespace sockets is `player` (a kick's target).
    pub fn holds(&self, player: PlayerId) -> bool {
        matches!(self.handler.borrow().as_ref(), Some(Handler::SocketIo(sio)) if sio.holds(player))
    }

    /// An operator kicked the session's player: every namespace socket is sent a
    /// DISCONNECT (an official client then does not reconnect: `io server disconnect`),
    /// and the session ends as the reference's `socket.disconnect(true)` ends it.
    pub fn kick(self: &Rc<Self>) {
        let namespaces = match self.handler.borrow().as_ref() {
            Some(Handler::SocketIo(sio)) => sio.namespaces(),
            _ => Vec::new(),
        };
        for nsp in namespaces {
            let packet = crate::proto::socketio::Packet::disconnect(&nsp);
            self.send(&packet.encode_engineio(), &[]);
        }
        self.close("forced server close", CloseReason::Kicked);
    }

    /// Server shutdown: close with a going-away code on WebSocket.
    pub fn shut_down(self: &Rc<Self>) {
        if let Some(ws) = self.ws.borrow().as_ref() {
            ws.close(close::GOING_AWAY, "server shutting down");
        }
        self.close("server shutting down", CloseReason::Shutdown);
    }

    /// Handles one decoded Engine.IO packet from the client, which came on the WebSocket
    /// `ws` or (`None`) by polling. `Err` closes the transport it came on: the session, or
    /// only a WebSocket that is probing for an upgrade.
    pub fn handle_packet(
        self: &Rc<Self>,
        now: Instant,
        packet: Packet<'_>,
        ws: Option<&Rc<Outbox>>,
    ) -> Result<(), CloseReason> {
        if let Some(ws) = ws.filter(|ws| !self.is_websocket(ws)) {
            return self.handle_probe(packet, ws);
        }
        match (packet.packet_type, packet.data) {
            (PacketType::Pong, _) => {
                // The next ping comes a full interval after this pong.
                self.pong_deadline.set(None);
                let interval = Duration::from_millis(self.shard.config.engineio_ping_interval_ms);
                self.next_ping.set(Some(now + interval));
            }
            // In v4 only the server pings: the reference ends the session ("invalid
            // heartbeat direction").
            (PacketType::Ping, _) => self.close("transport error", CloseReason::Protocol),
            (PacketType::Close, _) => self.close("transport close", CloseReason::Peer),
            (PacketType::Noop, _) => {}
            (PacketType::Message, Data::Text(text)) => self.deliver(Message::Text(text, now))?,
            // Decoded from base64 in a payload, the bytes are owned already: no copy.
            (PacketType::Message, Data::Binary(bin)) => {
                self.deliver(Message::Binary(Bytes::from(bin.into_owned()), now))?
            }
            // Open is server-to-client only; an upgrade comes on the probing WebSocket.
            (PacketType::Open | PacketType::Upgrade, _) => return Err(CloseReason::Protocol),
        }
        Ok(())
    }

    /// A packet on a WebSocket that is not the session's yet: the probe and then the
    /// upgrade. Anything else ends that WebSocket, as the reference closes such a transport;
    /// the session goes on polling.
    fn handle_probe(
        self: &Rc<Self>,
        packet: Packet<'_>,
        ws: &Rc<Outbox>,
    ) -> Result<(), CloseReason> {
        match (packet.packet_type, packet.data) {
            (PacketType::Ping, Data::Text("probe")) => {
                let _ = ws.push(sio_ws_frames("3probe", &[]));
                if let (Phase::Polling, Some(polling)) = (self.phase.get(), &self.polling) {
                    self.phase.set(Phase::Upgrading);
                    // End the pending poll so the client pauses polling.
                    let _ = polling.push(NOOP_PACKET.clone());
                }
                Ok(())
            }
            (PacketType::Upgrade, _) if self.phase.get() == Phase::Upgrading => {
                self.switch_to(ws);
                Ok(())
            }
            _ => Err(CloseReason::Protocol),
        }
    }

    /// Handles a binary message from the WebSocket `ws` (v4 gives it no packet type: the
    /// frame is a `message`), passing its bytes on as they are. `Err` closes the WebSocket
    /// (and the session, if `ws` is its transport).
    pub fn handle_binary(
        self: &Rc<Self>,
        now: Instant,
        data: Bytes,
        ws: &Rc<Outbox>,
    ) -> Result<(), CloseReason> {
        if !self.is_websocket(ws) {
            // Only the probe and the upgrade come on a probing WebSocket.
            return Err(CloseReason::Protocol);
        }
        self.deliver(Message::Binary(data, now))
    }

    /// Hands a message to the layer above.
    fn deliver(self: &Rc<Self>, message: Message<'_>) -> Result<(), CloseReason> {
        self.with_handler(|handler, session| match (handler, message) {
            (Some(Handler::SocketIo(sio)), Message::Text(text, now)) => {
                sio.on_text(session, now, text)
            }
            (Some(Handler::SocketIo(sio)), Message::Binary(bin, now)) => {
                sio.on_binary(session, now, bin)
            }
            (Some(Handler::Echo), Message::Text(text, _)) => {
                session.send(&format!("4{text}"), &[]);
                Ok(())
            }
            (Some(Handler::Echo), Message::Binary(bin, _)) => {
                session.send_binary(&bin);
                Ok(())
            }
            (None, _) => Ok(()),
        })
    }

    /// Runs `f` with the handler lent out of the session: application code that `f` calls
    /// may reach the session again (to send, or to disconnect a socket) without finding
    /// the handler borrowed.
    fn with_handler<R>(self: &Rc<Self>, f: impl FnOnce(&mut Option<Handler>, &Rc<Self>) -> R) -> R {
        let mut handler = self.handler.borrow_mut().take();
        let result = f(&mut handler, self);
        // Put the handler back unless the session closed meanwhile.
        if !self.is_closed() {
            *self.handler.borrow_mut() = handler;
        } else if let Some(Handler::SocketIo(mut sio)) = handler {
            sio.on_close(self, "server namespace disconnect", false);
        }
        result
    }

    /// Completes an upgrade: what waited for a poll moves to the WebSocket, in order, and
    /// every later packet and broadcast goes there.
    fn switch_to(self: &Rc<Self>, ws: &Rc<Outbox>) {
        let mut pending = Vec::new();
        if let Some(polling) = &self.polling {
            while let Drained::Frames = polling.drain(&mut pending) {}
        }
        *self.ws.borrow_mut() = Some(Rc::clone(ws));
        *self.probe.borrow_mut() = None;
        self.phase.set(Phase::WebSocket);
        let stats = &self.shard.stats;
        crate::stats::sub(&stats.engineio_polling, 1);
        add(&stats.engineio_websocket, 1);
        add(&stats.upgrades, 1);
        // The WebSocket counts itself from here on.
        self.uncount();
        let joined = pending
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\u{1e}");
        if let Ok(packets) = engineio::decode_payload(joined.as_bytes()) {
            for p in packets {
                match p.data {
                    Data::Text(t) => {
                        let _ = ws.push(sio_ws_frames(
                            &format!("{}{t}", p.packet_type.as_char()),
                            &[],
                        ));
                    }
                    Data::Binary(b) => {
                        let _ = ws.push(ws::binary_frame(|mut v| {
                            v.extend_from_slice(&b);
                            v
                        }));
                    }
                }
            }
        }
        if let Some(polling) = &self.polling {
            polling.finish();
            if polling.overflowed() {
                // Its close packet went to the WebSocket last; the session ends with it.
                self.close("transport error", CloseReason::SlowConsumer);
                return;
            }
        }
        if let Some(Handler::SocketIo(sio)) = self.handler.borrow().as_ref() {
            sio.rewire(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::relay::{Relay, RelayLimits};
    use crate::shard::Control;
    use crate::stats::ShardStats;
    use std::sync::Arc;

    fn shard(ping_interval_ms: u64, ping_timeout_ms: u64) -> Rc<Shard> {
        shard_with(|c| {
            c.engineio_ping_interval_ms = ping_interval_ms;
            c.engineio_ping_timeout_ms = ping_timeout_ms;
        })
    }

    fn shard_with(tweak: impl FnOnce(&mut Config)) -> Rc<Shard> {
        let mut config = Config {
            socketio_connect_timeout_ms: 1_000,
            ..Config::default()
        };
        tweak(&mut config);
        let config = Arc::new(config);
        let stats = Arc::new(ShardStats::default());
        let relay = Relay::new(
            0,
            1,
            RelayLimits {
                max_name_len: 128,
                max_rooms_per_connection: 8,
                max_room_members: 10_000,
                max_message_bytes: 1 << 20,
                history: None,
                rooms: crate::config::RoomsConfig::DEFAULT,
            },
            Arc::clone(&stats),
        );
        Rc::new(Shard::new(
            0,
            1,
            config,
            stats,
            relay,
            Arc::new(Control::new(Vec::new())),
        ))
    }

    fn polled(session: &Session) -> Vec<String> {
        let mut frames = Vec::new();
        let polling = session.polling().unwrap();
        while let Drained::Frames = polling.drain(&mut frames) {}
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn pings_come_an_interval_after_the_last_pong() {
        let shard = shard(300, 200);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(300)));
        s.handle_timeout(t0 + ms(300));
        assert_eq!(polled(&s), vec!["2"]);
        // Waiting for the pong, at most pingTimeout.
        assert_eq!(s.poll_timeout(), Some(t0 + ms(500)));
        s.handle_packet(t0 + ms(350), Packet::text(PacketType::Pong, ""), None)
            .unwrap();
        // The next ping is pingInterval after the pong, not after the previous ping's
        // timeout.
        assert_eq!(s.poll_timeout(), Some(t0 + ms(650)));
        s.handle_timeout(t0 + ms(650));
        assert_eq!(polled(&s), vec!["2"]);
        assert!(!s.is_closed());
    }

    #[test]
    fn a_missing_pong_ends_the_session() {
        let shard = shard(300, 200);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        assert!(sessions.get(&s.sid()).is_some());
        s.handle_timeout(t0 + ms(300));
        s.handle_timeout(t0 + ms(499));
        assert!(!s.is_closed());
        s.handle_timeout(t0 + ms(500));
        assert!(s.is_closed());
        assert!(sessions.get(&s.sid()).is_none());
        assert_eq!(shard.stats.closes(CloseReason::Idle), 1);
        assert_eq!(s.poll_timeout(), None);
        // The poll reads the ping, then the close packet.
        assert_eq!(polled(&s), vec!["2", "1"]);
    }

    #[test]
    fn a_client_close_ends_the_poll_with_a_noop() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        s.handle_packet(t0, Packet::text(PacketType::Close, ""), None)
            .unwrap();
        assert!(s.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::Peer), 1);
        assert_eq!(polled(&s), vec!["6"]);
    }

    #[test]
    fn the_probe_and_upgrade_move_queued_packets_to_the_websocket() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        s.handle_packet(t0, Packet::text(PacketType::Message, "hello"), None)
            .unwrap();
        let ws = Rc::new(Outbox::new(shard.outbox_limits()));
        s.handle_packet(t0, Packet::text(PacketType::Ping, "probe"), Some(&ws))
            .unwrap();
        assert_eq!(s.phase(), Phase::Upgrading);
        s.handle_packet(t0, Packet::text(PacketType::Upgrade, ""), Some(&ws))
            .unwrap();
        assert_eq!(s.phase(), Phase::WebSocket);
        let texts = ws_texts(&ws);
        // The probe answer, then the echo that was waiting for a poll, then the noop that
        // ended the poll.
        assert_eq!(texts, vec!["3probe", "4hello", "6"]);
    }

    fn ws_texts(ws: &Outbox) -> Vec<String> {
        let mut frames = Vec::new();
        while let Drained::Frames = ws.drain(&mut frames) {}
        let mut client =
            crate::proto::ws::WsCodec::new(tungstenite::protocol::Role::Client, 1 << 16);
        for f in &frames {
            client.feed(f);
        }
        let mut texts = Vec::new();
        while let Ok(Some(crate::proto::ws::Incoming::Message(m))) = client.poll_message() {
            texts.push(m.into_text().unwrap().to_string());
        }
        texts
    }

    #[test]
    fn a_client_that_polls_too_slowly_reads_a_close_packet() {
        let shard = shard_with(|c| c.outbound_queue_frames = 4);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        for _ in 0..5 {
            s.handle_packet(t0, Packet::text(PacketType::Message, "x"), None)
                .unwrap();
        }
        // What overflowed is dropped: the poll reads the session's end, in Engine.IO.
        assert_eq!(polled(&s), vec!["1"]);
        let ping = t0 + Duration::from_millis(shard.config.engineio_ping_interval_ms);
        s.handle_timeout(ping);
        assert!(s.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::SlowConsumer), 1);
    }

    #[test]
    fn an_upgrade_after_an_overflow_ends_the_session_on_the_websocket() {
        let shard = shard_with(|c| c.outbound_queue_frames = 4);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let s = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        for _ in 0..5 {
            s.handle_packet(t0, Packet::text(PacketType::Message, "x"), None)
                .unwrap();
        }
        let ws = Rc::new(Outbox::new(shard.outbox_limits()));
        s.handle_packet(t0, Packet::text(PacketType::Ping, "probe"), Some(&ws))
            .unwrap();
        s.handle_packet(t0, Packet::text(PacketType::Upgrade, ""), Some(&ws))
            .unwrap();
        assert_eq!(ws_texts(&ws), vec!["3probe", "1"]);
        assert!(s.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::SlowConsumer), 1);
    }

    #[test]
    fn a_client_ping_ends_the_session_unless_it_probes_an_upgrade() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        // By polling, a ping is the wrong heartbeat direction; the poll reads the close.
        let polling = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        polling
            .handle_packet(t0, Packet::text(PacketType::Ping, ""), None)
            .unwrap();
        assert!(polling.is_closed());
        assert_eq!(polled(&polling), vec!["1"]);
        // On the session's own WebSocket, even a probe is.
        let ws = Rc::new(Outbox::new(shard.outbox_limits()));
        let on_ws = Session::create(&shard, &sessions, Some(&ws), Handler::Echo, t0);
        on_ws
            .handle_packet(t0, Packet::text(PacketType::Ping, "probe"), Some(&ws))
            .unwrap();
        assert!(on_ws.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::Protocol), 2);
        // A probing WebSocket that sends anything but the probe and the upgrade is refused;
        // the session goes on polling.
        let upgrading = Session::create(&shard, &sessions, None, Handler::Echo, t0);
        let probe = Rc::new(Outbox::new(shard.outbox_limits()));
        upgrading
            .handle_packet(t0, Packet::text(PacketType::Ping, "probe"), Some(&probe))
            .unwrap();
        let message = Packet::text(PacketType::Message, "hi");
        assert!(upgrading.handle_packet(t0, message, Some(&probe)).is_err());
        assert!(upgrading
            .handle_binary(Instant::now(), Bytes::from_static(b"hi"), &probe)
            .is_err());
        assert!(!upgrading.is_closed());
        assert_eq!(ws_texts(&probe), vec!["3probe"]);
    }

    #[test]
    fn ids_name_their_shard_and_are_found_only_whole() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let s = Session::create(&shard, &sessions, None, Handler::Echo, Instant::now());
        assert_eq!(owner_of(&s.sid()), Some(0));
        assert!(sessions.get(&s.sid()).is_some());
        let sid = s.sid();
        let mut forged = sid.clone();
        forged.pop();
        forged.push(if sid.ends_with('0') { '1' } else { '0' });
        assert!(sessions.get(&forged).is_none());
    }

    #[test]
    fn a_new_session_never_takes_a_live_sessions_slot() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let live: Vec<_> = (0..3)
            .map(|_| Session::create(&shard, &sessions, None, Handler::Echo, t0))
            .collect();
        let gone = live[1].sid();
        live[1].close("transport close", CloseReason::Peer);
        // New sessions fill the freed slot and fresh ones; no live session is replaced,
        // whatever their random parts.
        let new: Vec<_> = (0..3)
            .map(|_| Session::create(&shard, &sessions, None, Handler::Echo, t0))
            .collect();
        assert!(new.iter().any(|s| s.key == live[1].key));
        for s in [&live[0], &live[2]].into_iter().chain(&new) {
            let found = sessions.get(&s.sid()).expect("live session found");
            assert!(Rc::ptr_eq(&found, s));
        }
        // The ended session's id names nothing, though its slot lives again.
        assert!(sessions.get(&gone).is_none());
        let keys: std::collections::HashSet<u64> = [&live[0], &live[2]]
            .into_iter()
            .chain(&new)
            .map(|s| s.key)
            .collect();
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn a_session_leaves_the_session_caps_when_it_ends() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let caps = std::sync::Arc::new(Occupancy::new(10, 1));
        let peer = PeerKey::unknown();
        let admitted = Admitted::enter(&caps, peer).unwrap();
        let s = Session::open(
            &shard,
            &sessions,
            None,
            Handler::Echo,
            Some(admitted),
            Instant::now(),
        )
        .unwrap();
        assert!(Admitted::enter(&caps, peer).is_err());
        s.close("transport close", CloseReason::Peer);
        assert_eq!(caps.total(), 0);
        assert!(Admitted::enter(&caps, peer).is_ok());
    }

    fn sio_handler() -> Handler {
        Handler::SocketIo(SioSession::new(
            Arc::new(crate::socketio::SocketIo::relay()),
        ))
    }

    #[test]
    fn a_socketio_session_without_a_namespace_ends_at_the_connect_timeout() {
        let shard = shard(25_000, 20_000);
        let sessions = Rc::new(Sessions::default());
        let t0 = Instant::now();
        let connect = Duration::from_millis(shard.config.socketio_connect_timeout_ms);
        let idle = Session::create(&shard, &sessions, None, sio_handler(), t0);
        let joined = Session::create(&shard, &sessions, None, sio_handler(), t0);
        joined
            .handle_packet(t0, Packet::text(PacketType::Message, "0"), None)
            .unwrap();
        // The connect deadline is the earliest of the idle session's timers.
        assert_eq!(idle.poll_timeout(), Some(t0 + connect));
        assert!(joined.poll_timeout().unwrap() > t0 + connect);
        idle.handle_timeout(t0 + connect);
        joined.handle_timeout(t0 + connect);
        assert!(idle.is_closed());
        assert!(!joined.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::HandshakeTimeout), 1);
        // The namespace answer went to the joined session's poll.
        assert!(polled(&joined).iter().any(|p| p.starts_with("40{\"sid\":")));
    }
}
