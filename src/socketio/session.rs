//! One Engine.IO session's Socket.IO state: its namespace sockets, binary reassembly, and
//! the dispatch of packets to handlers or to the relay convention.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::ack::{AckCallback, AckError, PendingAcks};
use super::{Ack, Namespace, Socket, SocketCore, SocketIo, Verdict, AUTHORIZE_WAIT};
use crate::auth::Identity;
use crate::config::{Config, Protocol};
use crate::engineio::Session;
use crate::hooks::{Forbidden, Hooks};
use crate::matchmaking::DEFAULT_QUEUE;
use crate::proto::native::{ErrorCode, HostAction, PayloadKind};
use crate::proto::socketio::{
    is_reserved_for_relay, Arg, ArgRef, BinaryAssembler, DecodeError, Packet, PacketType,
    MAIN_NAMESPACE,
};
use crate::rate_limit::{Buckets, Exceeded};
use crate::relay::{
    new_code, normalize_code, parse_sio_offset, parse_sio_pid, sio_pid, valid_name, Body,
    ListFilter, Outbox, PlayerId, RecoverRequest, Recovery, RecoveryTicket, RoomOptions,
    TicketRequest, CODE_PREFIX,
};
use crate::stats::{add, CloseReason, Refusal};

/// Most binary attachments one packet may announce: official clients send one per binary
/// argument, and their bytes together are bounded as well (see [`SioSession::start`]).
const MAX_ATTACHMENTS: usize = 16;

/// A session's sockets by namespace: a short list (clients connect one namespace or a
/// few), kept small for the many sessions of a shard.
#[derive(Default)]
struct Sockets(Vec<(Rc<SocketCore>, Arc<Namespace>)>);

impl Sockets {
    fn get(&self, nsp: &str) -> Option<&(Rc<SocketCore>, Arc<Namespace>)> {
        self.0.iter().find(|(core, _)| core.nsp == nsp)
    }

    fn contains_key(&self, nsp: &str) -> bool {
        self.get(nsp).is_some()
    }

    fn remove(&mut self, nsp: &str) -> Option<(Rc<SocketCore>, Arc<Namespace>)> {
        let i = self.0.iter().position(|(core, _)| core.nsp == nsp)?;
        Some(self.0.swap_remove(i))
    }

    fn insert(&mut self, socket: (Rc<SocketCore>, Arc<Namespace>)) {
        self.0.push(socket);
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(core, _)| &core.nsp)
    }

    fn values(&self) -> impl Iterator<Item = &(Rc<SocketCore>, Arc<Namespace>)> {
        self.0.iter()
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &(Rc<SocketCore>, Arc<Namespace>))> {
        self.0.iter().map(|s| (&s.0.nsp, s))
    }
}

/// Where a session is: before its first namespace, with the connect timeout, or after,
/// with its rate limits. One field for both, since the two never coexist: the session
/// stays as small as it was before it had rate limits.
enum Stage {
    /// Not started: no deadline yet.
    New,
    /// A session that connects no namespace by then is closed (`connectTimeout`).
    Connecting(Instant),
    /// A namespace connected: no connect timeout any more, and the session's rate limits
    /// from then on (`None` when its profile limits nothing).
    Connected(Option<Box<Buckets>>),
}

pub(crate) struct SioSession {
    app: Arc<SocketIo>,
    sockets: Sockets,
    assembler: BinaryAssembler,
    stage: Stage,
    /// Namespaces whose CONNECT waits: for other shards to decide a recovery, or for a
    /// [`Namespace::authorize_later`] verdict (boxed: a session rarely has any, and every
    /// session pays for the field).
    waiting: Option<Box<Waiting>>,
}

/// How often a CONNECT waiting for a [`Verdict`] looks whether it came: the verdict is
/// decided on another thread, which cannot reach the shard's timers. 10 ms adds that much
/// at most to a check that takes tens (a password hash), in a handful of timer turns.
const AUTHORIZE_POLL: Duration = Duration::from_millis(10);

/// A CONNECT waiting for its namespace's [`Verdict`].
struct Authorizing {
    nsp: String,
    namespace: Arc<Namespace>,
    auth: Value,
    verdict: Verdict,
    /// When to look again.
    next: Instant,
    /// When to stop waiting ([`AUTHORIZE_WAIT`] after the CONNECT).
    until: Instant,
}

/// The CONNECTs of a session that wait.
#[derive(Default)]
struct Waiting {
    /// For recoveries.
    recoveries: Vec<Recovering>,
    /// For verdicts.
    verdicts: Vec<Authorizing>,
}

/// How long a CONNECT waits for the other shards to answer a recovery before the socket
/// gets a fresh session (they answer within a mesh round trip unless one is stuck).
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// A namespace CONNECT, checked, that gets its socket once the recovery is decided.
struct Admission {
    nsp: String,
    namespace: Arc<Namespace>,
    auth: Value,
    /// The player its token names, if it presented one.
    verified: Option<Identity>,
}

/// A CONNECT waiting for a recovery that other shards decide.
struct Recovering {
    admission: Admission,
    player: PlayerId,
    secret: Box<str>,
    ticket: RecoveryTicket,
    asked: Instant,
}

impl Recovering {
    /// When the session must look at it: now if decided, else when it stops waiting.
    fn due(&self) -> Instant {
        if self.ticket.outcome().is_some() {
            self.asked
        } else {
            self.asked + RECOVERY_WAIT
        }
    }
}

impl SioSession {
    pub fn new(app: Arc<SocketIo>) -> SioSession {
        SioSession {
            app,
            sockets: Sockets::default(),
            // Replaced with the configured limits by `start`.
            assembler: BinaryAssembler::new(MAX_ATTACHMENTS, 0),
            stage: Stage::New,
            waiting: None,
        }
    }

    /// Arms the connect timeout (a session that connects no namespace in time is closed)
    /// and takes the limits on binary attachments from `config`.
    ///
    /// The attachments of one packet may add up to `engineio_max_payload` bytes: what one
    /// Engine.IO message may carry, so a packet held while it waits costs no more than one
    /// message does, instead of `MAX_ATTACHMENTS` times as much. Official clients meet it:
    /// by long-polling a whole packet must fit in one payload of that size anyway.
    pub fn start(&mut self, now: Instant, config: &Config) {
        let timeout = Duration::from_millis(config.socketio_connect_timeout_ms);
        self.stage = Stage::Connecting(now + timeout);
        self.assembler = BinaryAssembler::new(MAX_ATTACHMENTS, config.engineio_max_payload);
    }

    fn connect_deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Connecting(at) => Some(at),
            Stage::New | Stage::Connected(_) => None,
        }
    }

    /// The earliest of the session's Socket.IO deadlines: the connect timeout while no
    /// namespace has connected, the attachments of a waiting binary packet, pending acks.
    pub fn deadline(&self) -> Option<Instant> {
        let acks = self
            .sockets
            .values()
            .filter_map(|(core, _)| core.acks.borrow().deadline());
        let expiries = self
            .sockets
            .values()
            .filter_map(|(core, _)| core.expires.get());
        let recoveries = self
            .waiting
            .iter()
            .flat_map(|w| w.recoveries.iter().map(Recovering::due));
        let authorizations = self
            .waiting
            .iter()
            .flat_map(|w| w.verdicts.iter().map(|a| a.next));
        [self.connect_deadline(), self.assembler.deadline()]
            .into_iter()
            .flatten()
            .chain(acks)
            .chain(expiries)
            .chain(recoveries)
            .chain(authorizations)
            .min()
    }

    /// Time passed: `Err` with the socket.io reason and the stat when the session must end
    /// (no namespace connected in time, attachments that never came); acks past their
    /// deadline are given up.
    pub fn handle_timeout(
        &mut self,
        session: &Rc<Session>,
        now: Instant,
    ) -> Result<(), (&'static str, CloseReason)> {
        if self.connect_deadline().is_some_and(|d| d <= now) {
            return Err(("connect timeout", CloseReason::HandshakeTimeout));
        }
        if self.assembler.deadline().is_some_and(|d| d <= now) {
            // The reference ends a session whose packets do not parse the same way.
            return Err(("parse error", CloseReason::Invalid));
        }
        self.recoveries_decided(session, now);
        self.authorizations_decided(session, now);
        // A socket whose token expired is told why (an `error` event: the DISCONNECT packet
        // carries no reason) and disconnected; its session and other namespaces go on.
        let lapsed: Vec<String> = self
            .sockets
            .iter()
            .filter(|(_, (core, _))| core.expires.get().is_some_and(|at| at <= now))
            .map(|(nsp, _)| nsp.clone())
            .collect();
        for nsp in lapsed {
            if let Some((core, _)) = self.sockets.get(&nsp) {
                let socket = Socket {
                    core: Rc::clone(core),
                };
                socket.send(Packet::event(
                    &nsp,
                    "error",
                    [Arg::Json(json!({
                        "error": ErrorCode::Unauthorized.name(),
                        "message": "token expired",
                    }))],
                ));
                socket.send(Packet::disconnect(&nsp));
            }
            session.shard.stats.count_close(CloseReason::Unauthorized);
            self.remove(session, &nsp, "token expired", false);
        }
        let expired: Vec<AckCallback> = self
            .sockets
            .values()
            .flat_map(|(core, _)| core.acks.borrow_mut().expire(now))
            .collect();
        if !expired.is_empty() {
            add(&session.shard.stats.ack_timeouts, expired.len() as u64);
            for callback in expired {
                callback(Err(AckError::Timeout));
            }
            self.sweep(session);
        }
        Ok(())
    }

    /// Feeds the text of an Engine.IO message that arrived at `now`.
    pub fn on_text(
        &mut self,
        session: &Rc<Session>,
        now: Instant,
        text: &str,
    ) -> Result<(), CloseReason> {
        // A binary packet's attachments are timed from the packet that announces them.
        let timeout = session.shard.config.socketio_attachment_timeout_ms;
        let deadline = now + Duration::from_millis(timeout);
        match self.assembler.push_text(text, deadline) {
            Ok(Some(packet)) => self.dispatch(session, packet, now, text.len()),
            Ok(None) => Ok(()),
            Err(e) => Err(close_reason(&e)),
        }
    }

    /// Feeds a binary Engine.IO message (an attachment) that arrived at `now`.
    pub fn on_binary(
        &mut self,
        session: &Rc<Session>,
        now: Instant,
        data: Bytes,
    ) -> Result<(), CloseReason> {
        let text_len = self.assembler.pending_text_len();
        match self.assembler.push_binary(data) {
            Ok(Some(packet)) => {
                let attachments: usize = packet.attachments.iter().map(Bytes::len).sum();
                self.dispatch(session, packet, now, text_len + attachments)
            }
            Ok(None) => Ok(()),
            Err(e) => Err(close_reason(&e)),
        }
    }

    /// The session ended: every socket disconnects with `reason`. With `lost` (the
    /// connection went, the server did not end it) their sessions wait for recovery.
    pub fn on_close(&mut self, session: &Rc<Session>, reason: &str, lost: bool) {
        // A recovery still undecided: the relay keeps the session away when it comes. A
        // verdict still undecided is decided for nobody.
        self.waiting = None;
        let names: Vec<String> = self.sockets.keys().cloned().collect();
        for nsp in names {
            self.remove(session, &nsp, reason, lost);
        }
    }

    /// The session changed transport: the relay sends to the new one.
    pub fn rewire(&self, session: &Rc<Session>) {
        let (outbox, wire) = session.transport();
        let mut relay = session.shard.relay.borrow_mut();
        for (core, _) in self.sockets.values() {
            relay.rewire(core.player, wire, Rc::clone(&outbox));
        }
    }

    /// Whether `player` is one of the session's namespace sockets.
    pub fn holds(&self, player: PlayerId) -> bool {
        self.sockets.values().any(|(core, _)| core.player == player)
    }

    /// The namespaces the session's sockets are connected to.
    pub fn namespaces(&self) -> Vec<String> {
        self.sockets.keys().cloned().collect()
    }

    /// Disconnects one namespace socket on the server's initiative.
    pub fn disconnect(&mut self, session: &Rc<Session>, nsp: &str) {
        self.remove(session, nsp, "server namespace disconnect", false);
    }

    fn remove(&mut self, session: &Rc<Session>, nsp: &str, reason: &str, lost: bool) {
        let Some((core, namespace)) = self.sockets.remove(nsp) else {
            return;
        };
        core.connected.set(false);
        super::admin_ui::socket_gone(session, core.player, reason);
        // Unless another connection recovered the socket meanwhile.
        let owned = |outbox: &Rc<Outbox>| session.owns(outbox);
        session
            .shard
            .relay
            .borrow_mut()
            .release(core.player, owned, lost, Instant::now());
        // Taken before any is called: a callback may use the socket again.
        let unanswered = core.acks.borrow_mut().take_all();
        for callback in unanswered {
            callback(Err(AckError::Disconnected));
        }
        if let Some(f) = &namespace.on_disconnect {
            f(&Socket { core }, reason);
        }
    }

    /// Handles a complete packet that arrived at `now` and weighed `size` bytes on the
    /// wire (text and attachments).
    fn dispatch(
        &mut self,
        session: &Rc<Session>,
        packet: Packet,
        now: Instant,
        size: usize,
    ) -> Result<(), CloseReason> {
        let result = self.handle_packet(session, packet, now, size);
        // Any handler the packet ran (connect, event, ack, disconnect) may have disconnected
        // sockets of this session.
        self.sweep(session);
        result
    }

    fn handle_packet(
        &mut self,
        session: &Rc<Session>,
        packet: Packet,
        now: Instant,
        size: usize,
    ) -> Result<(), CloseReason> {
        match packet.packet_type {
            PacketType::Connect => self.connect(session, packet, now),
            PacketType::Disconnect => {
                self.remove(session, &packet.nsp, "client namespace disconnect", false);
                Ok(())
            }
            PacketType::Event | PacketType::BinaryEvent => {
                self.event(session, packet, now, size);
                Ok(())
            }
            PacketType::Ack | PacketType::BinaryAck => {
                if let (Some((core, _)), Some(id)) = (self.sockets.get(&packet.nsp), packet.ack_id)
                {
                    // Taken before it is called: the callback may emit with an ack again.
                    let callback = core.acks.borrow_mut().answer(id);
                    if let Some(callback) = callback {
                        callback(Ok(owned_args(&packet)));
                    }
                }
                Ok(())
            }
            // A server never receives CONNECT_ERROR.
            PacketType::ConnectError => Err(CloseReason::Protocol),
        }
    }

    /// Removes the sockets that application code disconnected ([`Socket::disconnect`]) while
    /// the session's state was lent to a handler.
    fn sweep(&mut self, session: &Rc<Session>) {
        let gone: Vec<String> = self
            .sockets
            .iter()
            .filter(|(_, (core, _))| !core.connected.get())
            .map(|(nsp, _)| nsp.clone())
            .collect();
        for nsp in gone {
            self.disconnect(session, &nsp);
        }
    }

    fn connect(
        &mut self,
        session: &Rc<Session>,
        packet: Packet,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let nsp = packet.nsp.clone();
        let Some(namespace) = self.app.lookup(&nsp) else {
            let refusal = Packet::connect_error(&nsp, "Invalid namespace");
            session.send(&refusal.encode_engineio(), &[]);
            return Ok(());
        };
        let waiting = |w: &Waiting| {
            w.recoveries.iter().any(|r| r.admission.nsp == nsp)
                || w.verdicts.iter().any(|a| a.nsp == nsp)
        };
        if self.sockets.contains_key(&nsp) || self.waiting.as_deref().is_some_and(waiting) {
            // Already connected: a broken client; the reference server ignores it too.
            return Ok(());
        }
        let auth = packet.data.clone().unwrap_or_else(|| json!({}));
        if let Some(check) = &namespace.authorize {
            if let Err(data) = check(&auth) {
                refuse(session, &nsp, data);
                return Ok(());
            }
        }
        if let Some(check) = &namespace.authorize_later {
            let verdict = check(&auth);
            match verdict.outcome() {
                Some(Ok(())) => {}
                Some(Err(data)) => {
                    refuse(session, &nsp, data.clone());
                    return Ok(());
                }
                None => {
                    self.waiting
                        .get_or_insert_default()
                        .verdicts
                        .push(Authorizing {
                            nsp,
                            namespace,
                            auth,
                            verdict,
                            next: now + AUTHORIZE_POLL,
                            until: now + AUTHORIZE_WAIT,
                        });
                    return Ok(());
                }
            }
        }
        self.authorized(session, nsp, namespace, auth, now)
    }

    /// Connects the CONNECTs whose verdict came (or refuses them), and refuses those that
    /// waited [`AUTHORIZE_WAIT`] for one.
    fn authorizations_decided(&mut self, session: &Rc<Session>, now: Instant) {
        let Some(all) = self
            .waiting
            .as_mut()
            .map(|w| std::mem::take(&mut w.verdicts))
        else {
            return;
        };
        let mut waiting = Vec::new();
        for mut a in all {
            match a.verdict.outcome() {
                Some(Ok(())) => {
                    // A namespace CONNECT never ends the session.
                    let result = self.authorized(session, a.nsp, a.namespace, a.auth, now);
                    debug_assert!(result.is_ok());
                }
                Some(Err(data)) => refuse(session, &a.nsp, data.clone()),
                None if now >= a.until => refuse(
                    session,
                    &a.nsp,
                    json!({ "message": "authorization timed out" }),
                ),
                None => {
                    if a.next <= now {
                        a.next = now + AUTHORIZE_POLL;
                    }
                    waiting.push(a);
                }
            }
        }
        // One decided meanwhile may have queued more (a connect handler): keep both.
        self.waiting
            .get_or_insert_default()
            .verdicts
            .extend(waiting);
        self.forget_empty_wait();
    }

    /// Frees the waiting CONNECTs' box once none waits.
    fn forget_empty_wait(&mut self) {
        if self
            .waiting
            .as_deref()
            .is_some_and(|w| w.recoveries.is_empty() && w.verdicts.is_empty())
        {
            self.waiting = None;
        }
    }

    /// The rest of a CONNECT, once its namespace let it in: the player's token, a
    /// recovery, the socket.
    fn authorized(
        &mut self,
        session: &Rc<Session>,
        nsp: String,
        namespace: Arc<Namespace>,
        auth: Value,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let shard = Rc::clone(&session.shard);
        let token = auth.get("token").and_then(Value::as_str);
        let verified = match &self.app.verifier {
            // Operators prove themselves to their namespace, never with a player's token.
            Some(_) if namespace.admin => Ok(None),
            Some(verifier) => verifier.check(token),
            None => Ok(None),
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(why) => {
                // What the official client turns into the `connect_error` Error: `message`
                // its message, `data` its `data`.
                shard.stats.count_refusal(Refusal::Token);
                let refusal = Packet {
                    packet_type: PacketType::ConnectError,
                    nsp: nsp.clone(),
                    ack_id: None,
                    data: Some(json!({
                        "message": why.to_string(),
                        "data": { "code": ErrorCode::Unauthorized.name() },
                    })),
                    attachments: Vec::new(),
                };
                session.send(&refusal.encode_engineio(), &[]);
                return Ok(());
            }
        };
        let admission = Admission {
            nsp,
            namespace,
            auth,
            verified,
        };
        let recover = shard.relay.borrow().recovers_sio() && !admission.namespace.admin;
        if let Some(req) = recover.then(|| recover_request(&admission)).flatten() {
            let (outbox, wire) = session.transport();
            let (player, secret) = (req.player, req.secret.clone());
            let outcome = shard
                .relay
                .borrow_mut()
                .recover(req, wire, outbox, session.waker(), now);
            match outcome {
                Recovery::Recovered(identity) => {
                    return self.admit(session, admission, player, &secret, Some(identity), now);
                }
                Recovery::Pending(ticket) => {
                    self.waiting
                        .get_or_insert_default()
                        .recoveries
                        .push(Recovering {
                            admission,
                            player,
                            secret,
                            ticket,
                            asked: now,
                        });
                    return Ok(());
                }
                Recovery::Failed => {}
            }
        }
        let player = shard.next_player_id();
        let secret = shard.relay.borrow().new_session_secret();
        self.admit(session, admission, player, &secret, None, now)
    }

    /// Connects the CONNECTs whose recovery other shards decided, or that waited too long
    /// (those get a fresh session).
    fn recoveries_decided(&mut self, session: &Rc<Session>, now: Instant) {
        let Some(all) = self
            .waiting
            .as_mut()
            .map(|w| std::mem::take(&mut w.recoveries))
        else {
            return;
        };
        let (due, waiting): (Vec<Recovering>, Vec<Recovering>) =
            all.into_iter().partition(|r| r.due() <= now);
        self.waiting
            .get_or_insert_default()
            .recoveries
            .extend(waiting);
        self.forget_empty_wait();
        for r in due {
            let result = match r.ticket.outcome() {
                Some(Some(identity)) => self.admit(
                    session,
                    r.admission,
                    r.player,
                    &r.secret,
                    Some(identity),
                    now,
                ),
                _ => {
                    let player = session.shard.next_player_id();
                    let secret = session.shard.relay.borrow().new_session_secret();
                    self.admit(session, r.admission, player, &secret, None, now)
                }
            };
            // A namespace CONNECT never ends the session.
            debug_assert!(result.is_ok());
        }
    }

    /// Gives the checked CONNECT `a` its socket: the recovered session of `player` (whose
    /// identity was `recovered`), or a fresh one with that id, and answers the client.
    fn admit(
        &mut self,
        session: &Rc<Session>,
        a: Admission,
        player: PlayerId,
        secret: &str,
        recovered: Option<Identity>,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let shard = Rc::clone(&session.shard);
        let was_recovered = recovered.is_some();
        // A token presented again names the player (the relay checked it is the session's).
        let identity = a
            .verified
            .or(recovered)
            .unwrap_or_else(|| Identity::anonymous(player.to_string()));
        // The socket id is the player id's text, which an anonymous player is also known
        // by: one string for both.
        let text = player.to_string();
        let id: Arc<str> = if *identity.player == *text {
            Arc::clone(&identity.player)
        } else {
            Arc::from(text)
        };
        let nsp = a.nsp;
        let checked = match a.namespace.admin {
            false => self.app.hooks.check_handshake(&identity),
            true => Ok(()),
        };
        if let Err(why) = checked {
            // As a refused token: the official client's `connect_error` shows the message.
            shard.stats.count_refusal(Refusal::Forbidden);
            if was_recovered {
                shard.relay.borrow_mut().disconnect(player, now);
            }
            let refusal = Packet {
                packet_type: PacketType::ConnectError,
                nsp: nsp.clone(),
                ack_id: None,
                data: Some(json!({
                    "message": why.message,
                    "data": { "code": ErrorCode::Forbidden.name() },
                })),
                attachments: Vec::new(),
            };
            session.send(&refusal.encode_engineio(), &[]);
            return Ok(());
        }
        let expires = self
            .app
            .verifier
            .as_ref()
            .and_then(|v| v.deadline(&identity, Instant::now()));
        let relayed_as = identity.clone();
        let core = Rc::new(SocketCore {
            id,
            player,
            nsp: nsp.clone(),
            auth: a.auth,
            identity: RefCell::new(identity),
            expires: Cell::new(expires),
            shard: Rc::clone(&shard),
            session: Rc::downgrade(session),
            connected: Cell::new(true),
            acks: RefCell::new(PendingAcks::default()),
            recovered: was_recovered,
        });
        let mut relay = shard.relay.borrow_mut();
        if was_recovered {
            relay.set_identity(player, relayed_as);
        } else {
            let (outbox, wire) = session.transport();
            relay.connect(player, relayed_as, wire, outbox);
            if !a.namespace.admin {
                relay.open_sio_session(player, secret, &nsp);
            }
        }
        let recovers = relay.recovers_sio() && !a.namespace.admin;
        drop(relay);
        if !matches!(self.stage, Stage::Connected(_)) {
            // The limits are the session's, set by its first namespace: they bound what
            // one connection sends, whichever namespace it sends on.
            let limits = &shard.config.rate_limits;
            let profile = limits.profile(Protocol::SocketIo, tier_claim(&core.identity.borrow()));
            let sustained = Duration::from_millis(limits.sustained_ms);
            self.stage = Stage::Connected(Buckets::new(&profile, sustained, now));
        }
        // With recovery on, the private session id that the client sends back, as
        // socket.io 4.6+ answers (`pid`); the official client keeps it and sets
        // `socket.recovered` when a later answer gives the same one.
        let data = if recovers {
            json!({ "sid": &*core.id, "pid": sio_pid(player, secret) })
        } else {
            json!({ "sid": &*core.id })
        };
        let answer = Packet::connect(&nsp, Some(data));
        session.send(&answer.encode_engineio(), &[]);
        self.sockets
            .insert((Rc::clone(&core), Arc::clone(&a.namespace)));
        super::admin_ui::socket_connected(session, &core, now);
        if let Some(f) = &a.namespace.on_connect {
            f(&Socket { core });
        }
        Ok(())
    }

    /// An event packet of `size` bytes on the wire, arrived at `now`.
    ///
    /// Every event packet is one message for the rate limits, whatever it does (an
    /// application handler, the relay convention's `join`, `leave` or `to`): each costs
    /// the server a parse and a dispatch. A `join` takes a join as well.
    fn event(&mut self, session: &Rc<Session>, packet: Packet, now: Instant, size: usize) {
        let Some((core, namespace)) = self.sockets.get(&packet.nsp).cloned() else {
            // Not connected to that namespace: the reference server ignores such packets.
            return;
        };
        let Some(name) = packet.event_name().map(str::to_owned) else {
            return;
        };
        let ack = packet.ack_id.map(|id| Ack {
            session: Rc::downgrade(session),
            nsp: packet.nsp.clone(),
            id,
        });
        let socket = Socket { core };
        let handler = namespace.events.get(&name);
        let relayed = handler.is_none() && namespace.relay_convention;
        let relayed = relayed && packet.nsp == MAIN_NAMESPACE;
        if let Stage::Connected(Some(rate)) = &mut self.stage {
            let mut checked = rate.message(size, now);
            // Joins, creations and tickets each cost the server a room's worth of work.
            let joins = matches!(name.as_str(), "join" | "room:create" | "mm:queue");
            if checked.is_ok() && relayed && joins {
                checked = rate.join(now);
            }
            if let Err(exceeded) = checked {
                return self.rate_limited(session, &socket, ack, &name, exceeded);
            }
        }
        if let Some(ui) = &self.app.admin_events {
            super::admin_ui::event_received(ui, &socket, &packet);
        }
        if name == REFRESH_EVENT {
            if let Some(verifier) = self.app.verifier.as_ref().filter(|v| v.keyed()) {
                refresh(session, verifier, &socket, &packet, ack);
                return;
            }
        }
        if let Some(handler) = handler {
            handler(&socket, owned_args(&packet), ack);
            return;
        }
        if relayed {
            relay_convention(session, &self.app.hooks, &socket, &name, &packet, ack, now);
            return;
        }
        answer_error(&socket, ack, "unknown_event", &name);
    }

    /// Answers an event refused by a rate limit and counts it; ends the session when it
    /// has kept exceeding its limits.
    fn rate_limited(
        &mut self,
        session: &Rc<Session>,
        socket: &Socket,
        ack: Option<Ack>,
        event: &str,
        exceeded: Exceeded,
    ) {
        session.shard.stats.count_refusal(exceeded.limit.refusal());
        answer_error(socket, ack, exceeded.limit.code().name(), event);
        if !exceeded.close {
            return;
        }
        // A DISCONNECT per namespace first, as `socket.disconnect()` on the server sends:
        // the official client reports "io server disconnect" and, unlike after a lost
        // transport, does not reconnect by itself, so an abusive loop ends here.
        let names: Vec<String> = self.sockets.keys().cloned().collect();
        for nsp in names {
            session.send(&Packet::disconnect(&nsp).encode_engineio(), &[]);
            self.remove(session, &nsp, "rate limited", false);
        }
        session.close("rate limited", CloseReason::RateLimited);
    }
}

/// The recovery a CONNECT asks for: its auth payload's `pid` (socket.io 4.6+ sends it
/// back with `offset`, the last it processed). `None` without a pid, or with an offset that
/// is no offset of this server's (the session cannot be placed: a fresh one).
fn recover_request(a: &Admission) -> Option<RecoverRequest> {
    let (player, secret) = parse_sio_pid(a.auth.get("pid")?.as_str()?)?;
    let offset = match a.auth.get("offset") {
        None | Some(Value::Null) => None,
        Some(offset) => Some(parse_sio_offset(offset.as_str()?)?),
    };
    Some(RecoverRequest {
        player,
        nsp: a.nsp.as_str().into(),
        secret: secret.into(),
        offset,
        expect: a.verified.as_ref().map(|i| Arc::clone(&i.player)),
    })
}

/// The `tier` claim of the token a socket connected with, which picks its rate-limit
/// profile (`[rate_limits.tiers.<name>]`): read from the verified claims, never from the
/// CONNECT payload itself, which the client writes.
fn tier_claim(identity: &Identity) -> Option<&str> {
    identity.claims.get("tier").and_then(Value::as_str)
}

/// The event a client emits to replace its token (`socket.emit("refresh", token, ack)`),
/// taken by the server whenever tokens are checked (docs/AUTH.md).
pub const REFRESH_EVENT: &str = "refresh";

/// Replaces the socket's token with the one in the event's first argument (same `sub`);
/// the ack gets `{"exp": ...}` or `{"error": "unauthorized", "message": ...}`.
fn refresh(
    session: &Rc<Session>,
    verifier: &crate::auth::Verifier,
    socket: &Socket,
    packet: &Packet,
    ack: Option<Ack>,
) {
    let token = match packet.args().next() {
        Some(ArgRef::Json(Value::String(token))) => token.clone(),
        _ => return answer_error(socket, ack, "bad_arguments", REFRESH_EVENT),
    };
    let current = socket.core.identity.borrow().clone();
    match verifier.refresh(&current, &token) {
        Ok(identity) => {
            socket
                .core
                .expires
                .set(verifier.deadline(&identity, Instant::now()));
            let exp = identity.exp.map_or(0, NonZeroU64::get);
            session
                .shard
                .relay
                .borrow_mut()
                .set_identity(socket.player(), identity.clone());
            *socket.core.identity.borrow_mut() = identity;
            if let Some(ack) = ack {
                ack.send([Arg::Json(json!({ "exp": exp }))]);
            }
        }
        Err(why) => {
            session.shard.stats.count_refusal(Refusal::Token);
            let error = json!({
                "error": ErrorCode::Unauthorized.name(),
                "message": why.to_string(),
            });
            match ack {
                Some(ack) => ack.send([Arg::Json(error)]),
                None => socket.send(Packet::event(
                    &socket.core.nsp,
                    "error",
                    [Arg::Json(json!({
                        "error": ErrorCode::Unauthorized.name(),
                        "message": why.to_string(),
                        "event": REFRESH_EVENT,
                    }))],
                )),
            }
        }
    }
}

fn owned_args(packet: &Packet) -> Vec<Arg> {
    packet.owned_args()
}

/// Refuses a namespace CONNECT with a CONNECT_ERROR carrying `data` (the official client's
/// `connect_error` Error takes its `message`).
fn refuse(session: &Session, nsp: &str, data: Value) {
    let refusal = Packet {
        packet_type: PacketType::ConnectError,
        nsp: nsp.to_owned(),
        ack_id: None,
        data: Some(data),
        attachments: Vec::new(),
    };
    session.send(&refusal.encode_engineio(), &[]);
}

/// The stat of a session that sent what does not decode.
fn close_reason(error: &DecodeError) -> CloseReason {
    match error {
        DecodeError::AttachmentsTooLarge { .. } => CloseReason::TooBig,
        _ => CloseReason::Invalid,
    }
}

/// Errors go back as an ack `{"error": code}` when the client asked for one, else as an
/// `error` event `{"error": code, "event": name}`: never a silent drop.
fn answer_error(socket: &Socket, ack: Option<Ack>, code: &str, event: &str) {
    if let Some(code) = ErrorCode::from_name(code) {
        socket.core.shard.stats.count_error(code);
    }
    match ack {
        Some(ack) => ack.send([Arg::Json(json!({ "error": code }))]),
        None => socket.send(Packet::event(
            &socket.core.nsp,
            "error",
            [Arg::Json(json!({ "error": code, "event": event }))],
        )),
    }
}

/// A request refused by an authorization hook or rule, counted: the ack gets
/// `{"error": "forbidden", "message": ...}`, or an `error` event carries it with the event.
fn answer_forbidden(
    shard: &crate::shard::Shard,
    socket: &Socket,
    ack: Option<Ack>,
    event: &str,
    why: &Forbidden,
) {
    shard.stats.count_refusal(Refusal::Forbidden);
    let code = ErrorCode::Forbidden.name();
    match ack {
        Some(ack) => ack.send([Arg::Json(json!({ "error": code, "message": why.message }))]),
        None => socket.send(Packet::event(
            &socket.core.nsp,
            "error",
            [Arg::Json(
                json!({ "error": code, "message": why.message, "event": event }),
            )],
        )),
    }
}

/// `join`, `leave` and `to` on the main namespace (docs/SOCKETIO.md, "The relay convention"),
/// each asked of `hooks` first.
/// An options argument (`room:create`, `room:list`): an object, or `empty` when left out
/// or null; `None` for anything else.
fn options_arg<'a>(
    arg: Option<&'a ArgRef<'_>>,
    empty: &'a serde_json::Map<String, Value>,
) -> Option<&'a serde_json::Map<String, Value>> {
    match arg {
        Some(ArgRef::Json(Value::Object(o))) => Some(o),
        None | Some(ArgRef::Json(Value::Null)) => Some(empty),
        _ => None,
    }
}

/// The ticket of `mm:queue`: `{queue?, skill?, region?, properties?, party?}` (queue
/// `default` and skill 0 when left out); `None` for a field of the wrong type. A property's
/// value may be text, a number or a boolean (kept as its JSON text).
fn ticket_arg(o: &serde_json::Map<String, Value>) -> Option<TicketRequest> {
    let text = |key: &str| match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        _ => None,
    };
    let skill = match o.get("skill") {
        None | Some(Value::Null) => 0.0,
        Some(v) => v.as_f64()?,
    };
    let properties = match o.get("properties") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Some((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Some((k.clone(), v.to_string())),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Some(_) => return None,
    };
    let party = match o.get("party") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()?,
        Some(_) => return None,
    };
    Some(TicketRequest {
        queue: text("queue")?.unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
        skill,
        region: text("region")?,
        properties,
        party,
    })
}

fn relay_convention(
    session: &Rc<Session>,
    hooks: &Hooks,
    socket: &Socket,
    name: &str,
    packet: &Packet,
    ack: Option<Ack>,
    now: Instant,
) {
    let args: Vec<ArgRef<'_>> = packet.args().collect();
    let text = |i: usize| match args.get(i) {
        Some(ArgRef::Json(Value::String(s))) => Some(s.as_str()),
        _ => None,
    };
    let shard = Rc::clone(&session.shard);
    let player = socket.player();
    let empty = serde_json::Map::new();
    let outcome: Result<(), ErrorCode> = match name {
        "join" | "leave" => {
            // A room created with `room:create` is joined by its code too: `join({code})`.
            let by_code = match args.first() {
                Some(ArgRef::Json(Value::Object(o))) => match o.get("code").and_then(Value::as_str)
                {
                    Some(code) => match normalize_code(code) {
                        Some(code) => Some(format!("{CODE_PREFIX}{code}")),
                        None => {
                            return answer_error(socket, ack, ErrorCode::InvalidName.name(), name)
                        }
                    },
                    None => None,
                },
                _ => None,
            };
            let Some(room) = text(0).or(by_code.as_deref()) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            // Checked before it reaches the relay, which also takes the keys of other
            // namespaces' rooms (`<nsp>\0<room>`): a client's name may not be one.
            if !valid_name(room, shard.config.max_name_len) {
                return answer_error(socket, ack, ErrorCode::InvalidName.name(), name);
            }
            if name == "join" {
                let checked = hooks.check_join(&socket.core.identity.borrow(), room);
                if let Err(why) = checked {
                    return answer_forbidden(&shard, socket, ack, name, &why);
                }
            }
            let req = ack.as_ref().map(|a| a.id);
            let result = if name == "join" {
                shard.relay.borrow_mut().join(player, req, room, now)
            } else {
                shard.relay.borrow_mut().leave(player, req, room, now)
            };
            // On success the relay answers the ack itself (once the home shard counted).
            result
        }
        "to" => {
            let (Some(room), Some(event)) = (text(0), text(1)) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            if !valid_name(event, shard.config.max_name_len) {
                return answer_error(socket, ack, ErrorCode::InvalidName.name(), name);
            }
            if is_reserved_for_relay(event) {
                shard.stats.count_refusal(Refusal::ReservedName);
                return answer_error(socket, ack, ErrorCode::ReservedName.name(), name);
            }
            let from = Arc::clone(&socket.core.identity.borrow().player);
            let body = match packet.owned_args().into_iter().nth(2) {
                Some(Arg::Binary(payload)) => Body::Event {
                    from: Arc::clone(&from),
                    event: event.to_owned(),
                    payload,
                    kind: PayloadKind::Binary,
                },
                Some(Arg::Json(v)) => Body::Event {
                    from: Arc::clone(&from),
                    event: event.to_owned(),
                    payload: Bytes::from(v.to_string()),
                    kind: PayloadKind::Json,
                },
                Some(tree @ Arg::Tree { .. }) => Body::Nested {
                    from: Arc::clone(&from),
                    event: event.to_owned(),
                    payload: tree,
                },
                None => Body::Event {
                    from: Arc::clone(&from),
                    event: event.to_owned(),
                    payload: Bytes::from_static(b"null"),
                    kind: PayloadKind::Json,
                },
            };
            let checked = hooks.check_message(&socket.core.identity.borrow(), room, body);
            let body = match checked {
                Ok(Some(body)) => body,
                // Dropped by the message hook: answered as sent, so the sender cannot tell.
                Ok(None) => {
                    if let Some(ack) = ack {
                        ack.send([Arg::Json(json!({ "room": room }))]);
                    }
                    return;
                }
                Err(why) => return answer_forbidden(&shard, socket, ack, name, &why),
            };
            let result = shard.relay.borrow_mut().send(player, room, body, now);
            if result.is_ok() {
                if let Some(ack) = ack {
                    ack.send([Arg::Json(json!({ "room": room }))]);
                }
                return;
            }
            result
        }
        "room:list" => {
            let Some(filter) = options_arg(args.first(), &empty) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let metadata = match filter.get("metadata") {
                None | Some(Value::Null) => serde_json::Map::new(),
                Some(Value::Object(m)) => m.clone(),
                Some(_) => return answer_error(socket, ack, "bad_arguments", name),
            };
            let free_seats = filter.get("free_seats").and_then(Value::as_bool);
            let page = filter.get("page").map(Value::as_u64);
            let (Some(ack_id), Some(page)) = (ack.as_ref().map(|a| a.id), page.unwrap_or(Some(0)))
            else {
                // A listing is only worth its answer: without an ack there is none.
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let filter = ListFilter {
                metadata,
                free_seats: free_seats.unwrap_or(false),
                page: u32::try_from(page).unwrap_or(u32::MAX),
            };
            // On success the relay answers the ack once every shard has.
            shard.relay.borrow_mut().list_rooms(player, ack_id, filter)
        }
        "room:create" => {
            let Some(options) = options_arg(args.first(), &empty) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let number = |key: &str| options.get(key).map(Value::as_u64);
            let (Some(max_members), Some(empty_ttl_ms)) = (
                number("max_members").unwrap_or(Some(shard.config.max_room_members as u64)),
                number("empty_ttl_ms").unwrap_or(Some(0)),
            ) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let private = match options.get("private") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return answer_error(socket, ack, "bad_arguments", name),
            };
            let code = match options.get("code") {
                None => new_code(),
                Some(Value::String(code)) => match normalize_code(code) {
                    Some(code) => code,
                    None => return answer_error(socket, ack, ErrorCode::InvalidName.name(), name),
                },
                Some(_) => return answer_error(socket, ack, "bad_arguments", name),
            };
            let room = format!("{CODE_PREFIX}{code}");
            let checked = hooks.check_join(&socket.core.identity.borrow(), &room);
            if let Err(why) = checked {
                return answer_forbidden(&shard, socket, ack, name, &why);
            }
            let options = RoomOptions {
                max_members: u32::try_from(max_members).unwrap_or(u32::MAX),
                private,
                metadata: options.get("metadata").map(|m| Arc::from(m.to_string())),
                empty_ttl_ms,
            };
            let req = ack.as_ref().map(|a| a.id);
            let result =
                shard
                    .relay
                    .borrow_mut()
                    .create_room(player, req, Some(&code), options, now);
            // On success the relay answers the ack itself (once the home made the room).
            result.map(|_| ())
        }
        "room:lock" | "room:kick" | "room:set_metadata" | "room:set_state" => {
            let action = match (name, text(0), args.get(1)) {
                ("room:lock", Some(_), Some(ArgRef::Json(Value::Bool(locked)))) => {
                    HostAction::Lock { locked: *locked }
                }
                ("room:kick", Some(_), Some(ArgRef::Json(Value::String(target)))) => {
                    HostAction::Kick {
                        player: target.clone(),
                    }
                }
                ("room:set_metadata", Some(_), Some(ArgRef::Json(metadata))) => {
                    HostAction::SetMetadata {
                        metadata: metadata.to_string(),
                    }
                }
                ("room:set_state", Some(_), Some(ArgRef::Json(state))) => HostAction::SetState {
                    state: state.to_string(),
                },
                _ => return answer_error(socket, ack, "bad_arguments", name),
            };
            let room = text(0).unwrap_or_default();
            let req = ack.as_ref().map(|a| a.id);
            let result = shard
                .relay
                .borrow_mut()
                .host_action(player, req, room, action, now);
            // On success the relay answers the ack itself (once the home decided).
            result
        }
        "mm:queue" => {
            let Some(ticket) = options_arg(args.first(), &empty).and_then(ticket_arg) else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let req = ack.as_ref().map(|a| a.id);
            // On success the relay answers the ack once the queue's shard has the ticket.
            shard
                .relay
                .borrow_mut()
                .queue_ticket(player, req, ticket, now)
        }
        "mm:cancel" => {
            let ticket = match args.first() {
                None | Some(ArgRef::Json(Value::Null)) => Some(0),
                Some(ArgRef::Json(v)) => v.as_u64(),
                _ => None,
            };
            let Some(ticket) = ticket else {
                return answer_error(socket, ack, "bad_arguments", name);
            };
            let req = ack.as_ref().map(|a| a.id);
            shard
                .relay
                .borrow_mut()
                .cancel_ticket(player, req, ticket, now)
        }
        _ => return answer_error(socket, ack, "unknown_event", name),
    };
    if let Err(code) = outcome {
        answer_error(socket, ack, code.name(), name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engineio::{Handler, Sessions};
    use crate::proto::engineio::{Packet as EnginePacket, PacketType as EngineType};
    use crate::relay::{Drained, Relay, RelayLimits};
    use crate::shard::{Control, Shard};
    use crate::stats::ShardStats;

    fn shard(tweak: impl FnOnce(&mut Config)) -> Rc<Shard> {
        let mut config = Config::default();
        tweak(&mut config);
        let stats = Arc::new(ShardStats::default());
        let limits = RelayLimits::of(&config);
        let relay = Relay::new(0, 1, limits, Arc::clone(&stats));
        Rc::new(Shard::new(
            0,
            1,
            Arc::new(config),
            stats,
            relay,
            Arc::new(Control::new(Vec::new())),
        ))
    }

    /// A long-polling session running `app`, created at `t0`, with its registry (which
    /// must live as long as the session).
    fn session(shard: &Rc<Shard>, app: SocketIo, t0: Instant) -> (Rc<Sessions>, Rc<Session>) {
        let sessions = Rc::new(Sessions::default());
        let handler = Handler::SocketIo(SioSession::new(Arc::new(app)));
        let session = Session::create(shard, &sessions, None, handler, t0);
        (sessions, session)
    }

    fn message(s: &Rc<Session>, now: Instant, text: &str) {
        let packet = EnginePacket::text(EngineType::Message, text);
        s.handle_packet(now, packet, None).expect("accepted");
    }

    fn polled(s: &Session) -> Vec<String> {
        let mut frames = Vec::new();
        let polling = s.polling().expect("a polling session");
        while let Drained::Frames = polling.drain(&mut frames) {}
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn the_servers_own_notices_are_reserved_names() {
        use crate::proto::native::LeaveReason;
        use crate::relay::{Broadcast, Wire};
        let bodies = [
            Body::MemberJoined {
                player: "1".into(),
                members: 2,
            },
            Body::MemberLeft {
                player: "1".into(),
                members: 1,
                reason: LeaveReason::Left,
            },
        ];
        for body in bodies {
            let notice = Broadcast::new("r".into(), 0, body, Instant::now());
            let text = String::from_utf8(notice.frame(Wire::SioPolling).to_vec()).unwrap();
            let packet = Packet::decode(&text[1..]).unwrap();
            let crate::proto::socketio::Decoded::Complete(packet) = packet else {
                panic!("{text}");
            };
            let name = packet.event_name().unwrap();
            assert!(
                is_reserved_for_relay(name),
                "{name} is emitted by the relay"
            );
        }
    }

    #[test]
    fn attachments_that_do_not_come_in_time_end_the_session() {
        let shard = shard(|c| c.socketio_attachment_timeout_ms = 100);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (_sessions, s) = session(&shard, SocketIo::relay(), t0);
        message(&s, t0, "0");
        message(
            &s,
            t0 + ms(10),
            r#"51-["to","r",{"_placeholder":true,"num":0}]"#,
        );
        // The attachments are due 100 ms after the packet that announced them.
        assert_eq!(s.poll_timeout(), Some(t0 + ms(110)));
        s.handle_timeout(t0 + ms(109));
        assert!(!s.is_closed());
        s.handle_timeout(t0 + ms(110));
        assert!(s.is_closed());
        assert_eq!(shard.stats.closes(CloseReason::Invalid), 1);
    }

    #[test]
    fn an_attachment_that_completes_the_packet_clears_its_deadline() {
        let shard = shard(|c| c.socketio_attachment_timeout_ms = 100);
        let t0 = Instant::now();
        let (_sessions, s) = session(&shard, SocketIo::relay(), t0);
        message(&s, t0, "0");
        message(&s, t0, r#"51-["to","r",{"_placeholder":true,"num":0}]"#);
        let waiting = s.poll_timeout();
        s.handle_packet(t0, EnginePacket::binary(&b"x"[..]), None)
            .expect("accepted");
        assert!(s.poll_timeout() > waiting, "only the heartbeat is left");
    }

    #[test]
    fn acks_time_out_through_the_session_timer() {
        let shard = shard(|_| {});
        let t0 = Instant::now();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&outcomes);
        let app = SocketIo::empty().namespace(
            "/",
            Namespace::new().on_connect(move |socket| {
                let seen = Arc::clone(&seen);
                let timeout = Duration::from_millis(50);
                let sent = socket.emit_with_ack_timeout("ask", [], timeout, move |r| {
                    seen.lock().unwrap().push(r)
                });
                assert!(sent.is_ok());
            }),
        );
        let (_sessions, s) = session(&shard, app, t0);
        message(&s, t0, "0");
        // The ack's deadline (taken from the clock when emitted) is the session's next.
        let due = s.poll_timeout().expect("a deadline");
        assert!(due <= Instant::now() + Duration::from_millis(50));
        s.handle_timeout(due);
        assert_eq!(*outcomes.lock().unwrap(), vec![Err(AckError::Timeout)]);
        assert_eq!(
            shard
                .stats
                .ack_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A late answer finds nothing; the session goes on with its heartbeat only.
        message(&s, due, "30[]");
        assert_eq!(outcomes.lock().unwrap().len(), 1);
        assert!(!s.is_closed());
        assert!(s.poll_timeout() > Some(due));
    }

    #[test]
    fn a_connect_waits_for_a_verdict_decided_elsewhere() {
        let shard = shard(|_| {});
        let t0 = Instant::now();
        let verdicts: Arc<Mutex<Vec<Verdict>>> = Arc::default();
        let handed = Arc::clone(&verdicts);
        let app = SocketIo::empty().namespace(
            "/ops",
            Namespace::new().authorize_later(move |auth| {
                let verdict = Verdict::pending();
                if auth["ok"] == true {
                    handed.lock().unwrap().push(verdict.clone());
                }
                verdict
            }),
        );
        let (_sessions, s) = session(&shard, app, t0);
        message(&s, t0, r#"0/ops,{"ok":true}"#);
        assert!(polled(&s).is_empty(), "no answer before the verdict");
        // A second CONNECT meanwhile is a broken client's: ignored, as when connected.
        message(&s, t0, r#"0/ops,{"ok":true}"#);
        assert_eq!(verdicts.lock().unwrap().len(), 1);
        let poll = s.poll_timeout().expect("the session looks again");
        assert!(poll <= t0 + AUTHORIZE_POLL, "{:?}", poll - t0);
        s.handle_timeout(poll);
        assert!(polled(&s).is_empty(), "still undecided");
        verdicts.lock().unwrap()[0].decide(Ok(()));
        let poll = s.poll_timeout().expect("the session looks again");
        s.handle_timeout(poll);
        let answers = polled(&s);
        assert!(answers[0].starts_with("40/ops,{"), "{answers:?}");
        assert!(answers[0].contains("\"sid\":"), "{answers:?}");

        // One that is never decided is refused once it has waited long enough.
        let (_sessions, s) = session(
            &shard,
            SocketIo::empty().namespace(
                "/ops",
                Namespace::new().authorize_later(|_| Verdict::pending()),
            ),
            t0,
        );
        message(&s, t0, "0/ops,");
        s.handle_timeout(t0 + AUTHORIZE_WAIT);
        assert_eq!(
            polled(&s),
            vec![r#"44/ops,{"message":"authorization timed out"}"#]
        );
        assert!(!s.is_closed(), "a namespace refused, the session goes on");

        // One decided at once is answered at once, a refusal with its data.
        let (_sessions, s) = session(
            &shard,
            SocketIo::empty().namespace(
                "/ops",
                Namespace::new().authorize_later(|_| Verdict::ready(Err(json!({"message": "no"})))),
            ),
            t0,
        );
        message(&s, t0, "0/ops,");
        assert_eq!(polled(&s), vec![r#"44/ops,{"message":"no"}"#]);
    }

    #[test]
    fn disconnect_inside_a_handler_removes_the_socket_when_it_returns() {
        let shard = shard(|_| {});
        let t0 = Instant::now();
        let reasons = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&reasons);
        let kicked = Arc::clone(&reasons);
        let app = SocketIo::empty()
            .namespace(
                "/",
                Namespace::new()
                    .on("quit", |socket, _, _| {
                        socket.disconnect();
                        assert!(!socket.connected());
                    })
                    .on_disconnect(move |_, why| seen.lock().unwrap().push(why.to_owned())),
            )
            .namespace(
                "/kick",
                Namespace::new()
                    .on_connect(|socket| socket.disconnect())
                    .on_disconnect(move |_, why| {
                        kicked.lock().unwrap().push(format!("kick {why}"))
                    }),
            );
        let (_sessions, s) = session(&shard, app, t0);
        message(&s, t0, "0");
        message(&s, t0, r#"2["quit"]"#);
        assert_eq!(
            *reasons.lock().unwrap(),
            vec!["server namespace disconnect"]
        );
        let answers = polled(&s);
        assert_eq!(
            answers.last().map(String::as_str),
            Some("41"),
            "{answers:?}"
        );
        // Gone from the session: a new CONNECT makes a new socket.
        message(&s, t0, "0");
        assert!(polled(&s)[0].starts_with("40{"));
        // From the connection handler too.
        message(&s, t0, "0/kick,");
        let answers = polled(&s);
        assert!(answers[0].starts_with("40/kick,{"), "{answers:?}");
        assert_eq!(answers[1], "41/kick,");
        assert_eq!(
            reasons.lock().unwrap().last().unwrap(),
            "kick server namespace disconnect"
        );
    }
}
