//! The native protocol on `/ws`: rkyv frames in, relay calls, frames out, as an
//! application of the WebSocket driver.

use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::Message;

use super::front::{upgrade, Head, Route};
use super::websocket::{Flow, Keepalive, WebSocket, WsApp};
use crate::auth::{Identity, Verifier};
use crate::config::Protocol;
use crate::hooks::{Forbidden, Hooks};
use crate::proto::http::Request;
use crate::proto::native::{
    access_client, ArchivedClientFrame, ArchivedHostAction, ErrorCode, HostAction, PayloadKind,
    ServerFrame, PROTOCOL_VERSION,
};
use crate::proto::socketio::is_reserved_for_relay;
use crate::proto::ws::close;
use crate::rate_limit::{Buckets, Exceeded};
use crate::relay::{
    native_frame, valid_name, Body, ListFilter, Outbox, OutboxLimits, PlayerId, Reply, RoomOptions,
    TicketRequest, Wire,
};
use crate::shard::{Cx, Shard, Step};
use crate::socketio::admin_ui;
use crate::stats::{add, CloseReason, Refusal};

/// Path of the native protocol endpoint.
pub const NATIVE_PATH: &str = "/ws";

/// One native-protocol session.
pub struct NativeSession {
    player: PlayerId,
    /// A `Resume` of a session another node made waits for the cluster's answer
    /// (`relay/failover.rs`): `player` is that session (the relay keeps the request).
    resuming: bool,
    /// Boxed: one pointer in the session, which every idle connection pays for
    /// (`per_connection_structures_stay_small`).
    auth: Box<SessionAuth>,
    welcomed: bool,
    /// The client sent a close frame: it left on purpose, and its session is not kept.
    said_goodbye: bool,
    /// `Hello` must come by then.
    handshake_deadline: Instant,
    keepalive: Keepalive,
    max_name_len: usize,
}

/// Who a session's player is, how its token is checked, and what it may send.
struct SessionAuth {
    /// Anonymous until `Hello` brings a token.
    identity: Identity,
    /// How tokens and requests are checked: one pointer for both, so that this state
    /// stays in its allocator size class (`the_auth_state_of_a_session_stays_small`).
    gate: Arc<Gate>,
    /// When the token expires, if sessions end then (`auth.expiry`).
    expires: Option<Instant>,
    /// The connection's rate limits, from `Hello` on (picked by the token's `tier`);
    /// `None` when its profile limits nothing.
    rate: Option<Box<Buckets>>,
}

impl NativeSession {
    /// A session on `shard` for a connection accepted at `accepted_at`, its tokens checked
    /// and its requests by `gate`, wrapped in the WebSocket driver.
    pub fn connection(
        shard: &Rc<Shard>,
        accepted_at: Instant,
        gate: Arc<Gate>,
    ) -> WebSocket<NativeSession> {
        let config = &shard.config;
        let interval = Duration::from_millis(config.ping_interval_ms);
        let player = shard.next_player_id();
        let session = NativeSession {
            player,
            resuming: false,
            auth: Box::new(SessionAuth {
                identity: Identity::anonymous(player.to_string()),
                gate,
                expires: None,
                rate: None,
            }),
            welcomed: false,
            said_goodbye: false,
            handshake_deadline: accepted_at + Duration::from_millis(config.handshake_timeout_ms),
            keepalive: Keepalive {
                interval,
                limit: interval + Duration::from_millis(config.ping_timeout_ms),
            },
            max_name_len: config.max_name_len,
        };
        WebSocket::new(session, config.max_message_size)
    }

    fn error(&self, cx: &Cx<'_>, req: u32, code: ErrorCode, message: &str) {
        cx.shard.stats.count_error(code);
        let reply = Reply::Error {
            req: u64::from(req),
            code,
            message: message.to_owned(),
        };
        let _ = cx.out.push(reply.frame(Wire::Native));
    }

    /// The `tier` claim of the connection's token, which picks its rate-limit profile
    /// (`[rate_limits.tiers.<name>]`), from what `Hello` authenticated.
    fn tier_claim(&self) -> Option<&str> {
        self.auth
            .identity
            .claims
            .get("tier")
            .and_then(serde_json::Value::as_str)
    }

    /// Answers a request refused by a rate limit, counts it, and closes the connection
    /// when it has kept exceeding its limits.
    fn rate_limited(&self, cx: &Cx<'_>, req: u32, exceeded: Exceeded) -> Flow {
        cx.shard.stats.count_refusal(exceeded.limit.refusal());
        self.error(cx, req, exceeded.limit.code(), "rate limited: slow down");
        if exceeded.close {
            return Flow::Close {
                code: close::POLICY,
                reason: "rate limited",
                stat: CloseReason::RateLimited,
            };
        }
        Flow::Continue
    }

    /// Answers a request an authorization hook or rule refused, and counts it.
    fn forbidden(&self, cx: &Cx<'_>, req: u32, why: &Forbidden) {
        cx.shard.stats.count_refusal(Refusal::Forbidden);
        self.error(cx, req, ErrorCode::Forbidden, &why.message);
    }

    /// The session is welcomed (by `Hello` or `Resume`): its rate limits start.
    fn welcome(&mut self, cx: &Cx<'_>) {
        self.welcomed = true;
        let limits = &cx.shard.config.rate_limits;
        let profile = limits.profile(Protocol::Native, self.tier_claim());
        let sustained = Duration::from_millis(limits.sustained_ms);
        self.auth.rate = Buckets::new(&profile, sustained, cx.now);
    }

    fn handle_frame(&mut self, cx: &mut Cx<'_>, bytes: Bytes) -> Flow {
        let frame = match access_client(&bytes) {
            Ok(f) => f,
            Err(e) => {
                self.error(cx, 0, ErrorCode::InvalidFrame, &e.to_string());
                return Flow::Close {
                    code: close::INVALID,
                    reason: "invalid frame",
                    stat: CloseReason::Invalid,
                };
            }
        };
        let now = cx.now;
        let shard = Rc::clone(cx.shard);
        match frame {
            ArchivedClientFrame::Hello {
                req,
                version,
                token,
            } => {
                let req = req.to_native();
                if self.welcomed {
                    self.error(
                        cx,
                        req,
                        ErrorCode::NotWelcomed,
                        "Hello was already received",
                    );
                } else if version.to_native() != PROTOCOL_VERSION {
                    self.error(
                        cx,
                        req,
                        ErrorCode::UnsupportedVersion,
                        &format!("this server speaks version {PROTOCOL_VERSION}"),
                    );
                    return Flow::Close {
                        code: close::POLICY,
                        reason: "unsupported version",
                        stat: CloseReason::Protocol,
                    };
                } else {
                    match self
                        .auth
                        .gate
                        .verifier
                        .check(token.as_ref().map(|t| t.as_str()))
                    {
                        Ok(identity) => {
                            if let Some(identity) = identity {
                                self.auth.expires =
                                    self.auth.gate.verifier.deadline(&identity, now);
                                self.auth.identity = identity;
                            }
                        }
                        Err(why) => {
                            shard.stats.count_refusal(Refusal::Token);
                            self.error(cx, req, ErrorCode::Unauthorized, &why.to_string());
                            return Flow::Close {
                                code: close::POLICY,
                                reason: "unauthorized",
                                stat: CloseReason::Unauthorized,
                            };
                        }
                    }
                    if let Err(why) = self.auth.gate.hooks.check_handshake(&self.auth.identity) {
                        self.forbidden(cx, req, &why);
                        return Flow::Close {
                            code: close::POLICY,
                            reason: "forbidden",
                            stat: CloseReason::Forbidden,
                        };
                    }
                    self.welcome(cx);
                    let mut relay = shard.relay.borrow_mut();
                    relay.connect(
                        self.player,
                        self.auth.identity.clone(),
                        Wire::Native,
                        Rc::clone(cx.out),
                    );
                    admin_ui::native_connected(&mut relay, cx, self.player);
                    let (session, secret) = if relay.keeps_sessions() {
                        let secret = relay.new_session_secret();
                        relay.open_session(self.player, &secret);
                        (self.player, secret)
                    } else {
                        (0, String::new())
                    };
                    let _ = cx.out.push(native_frame(&ServerFrame::Welcome {
                        req,
                        player: self.auth.identity.player.to_string(),
                        shard: shard.id as u32,
                        session,
                        secret,
                        resumed: false,
                    }));
                }
            }
            ArchivedClientFrame::Resume {
                req,
                session,
                secret,
                rooms,
            } => {
                let req = req.to_native();
                if self.welcomed {
                    self.error(cx, req, ErrorCode::NotWelcomed, "already welcomed");
                    return Flow::Continue;
                }
                let last_seen: Vec<(&str, u64)> = rooms
                    .iter()
                    .map(|r| (r.room.as_str(), r.seq.to_native()))
                    .collect();
                let session = session.to_native();
                let resumed = shard.relay.borrow_mut().resume(
                    session,
                    secret.as_str(),
                    Wire::Native,
                    Rc::clone(cx.out),
                    now,
                );
                match resumed {
                    Ok(resumed) => {
                        self.player = session;
                        self.auth.expires =
                            self.auth.gate.verifier.deadline(&resumed.identity, now);
                        self.auth.identity = resumed.identity;
                        self.welcome(cx);
                        // The Welcome goes first: the rooms' `Resumed` frames and replays
                        // follow it.
                        let _ = cx.out.push(native_frame(&ServerFrame::Welcome {
                            req,
                            player: self.auth.identity.player.to_string(),
                            shard: shard.id as u32,
                            session,
                            secret: secret.as_str().to_owned(),
                            resumed: true,
                        }));
                        admin_ui::native_connected(&mut shard.relay.borrow_mut(), cx, session);
                        shard
                            .relay
                            .borrow_mut()
                            .replay_missed(session, &last_seen, now);
                    }
                    Err(code) => {
                        // Not a session of this node's: in a cluster, maybe another's.
                        let inbox = Rc::new(Outbox::new(OutboxLimits {
                            frames: 1,
                            bytes: 1,
                        }));
                        let seen = last_seen
                            .iter()
                            .map(|&(room, seq)| (room.to_owned(), seq))
                            .collect();
                        let asked = shard.relay.borrow_mut().claim_session(
                            req,
                            session,
                            secret.as_str(),
                            (Wire::Native, Rc::clone(cx.out)),
                            Rc::clone(&inbox),
                            seen,
                        );
                        if asked {
                            cx.shard.wake_on(&inbox, cx.id);
                            self.player = session;
                            self.resuming = true;
                        } else {
                            // The same answer whether the session never existed, ended, or
                            // the secret is wrong. The connection may go on with a `Hello`.
                            self.error(
                                cx,
                                req,
                                code,
                                "session cannot be resumed; send Hello for a new one",
                            );
                        }
                    }
                }
            }
            _ if !self.welcomed => {
                self.error(
                    cx,
                    request_id(frame),
                    ErrorCode::NotWelcomed,
                    "send Hello first",
                );
            }
            ArchivedClientFrame::Join { req, room } => {
                let req = req.to_native();
                // Checked before it reaches the relay, which also takes the keys of socket.io
                // namespaces' rooms (`<nsp>\0<room>`): a client's name may not be one.
                if !valid_name(room.as_str(), self.max_name_len) {
                    self.error(cx, req, ErrorCode::InvalidName, "bad room name");
                    return Flow::Continue;
                }
                if let Some(Err(exceeded)) = self.auth.rate.as_mut().map(|r| r.join(now)) {
                    return self.rate_limited(cx, req, exceeded);
                }
                if let Err(why) = self
                    .auth
                    .gate
                    .hooks
                    .check_join(&self.auth.identity, room.as_str())
                {
                    self.forbidden(cx, req, &why);
                    return Flow::Continue;
                }
                let result = shard.relay.borrow_mut().join(
                    self.player,
                    Some(u64::from(req)),
                    room.as_str(),
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "join refused");
                }
            }
            ArchivedClientFrame::Leave { req, room } => {
                let req = req.to_native();
                let result = shard.relay.borrow_mut().leave(
                    self.player,
                    Some(u64::from(req)),
                    room.as_str(),
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "leave refused");
                }
            }
            ArchivedClientFrame::Create {
                req,
                max_members,
                private,
                metadata,
                empty_ttl_ms,
                code,
            } => {
                let req = req.to_native();
                // A creation costs what a join does (Socket.IO's `room:create` too).
                if let Some(Err(exceeded)) = self.auth.rate.as_mut().map(|r| r.join(now)) {
                    return self.rate_limited(cx, req, exceeded);
                }
                let max = shard.config.max_room_members as u32;
                let options = RoomOptions {
                    max_members: match max_members.to_native() {
                        0 => max,
                        n => n,
                    },
                    private: *private,
                    metadata: (!metadata.is_empty()).then(|| Arc::from(metadata.as_str())),
                    empty_ttl_ms: u64::from(empty_ttl_ms.to_native()),
                };
                let code = (!code.is_empty()).then_some(code.as_str());
                let result = shard.relay.borrow_mut().create_room(
                    self.player,
                    Some(u64::from(req)),
                    code,
                    options,
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "create refused");
                }
            }
            ArchivedClientFrame::List {
                req,
                metadata,
                free_seats,
                page,
            } => {
                let req = req.to_native();
                let metadata = match metadata.as_str() {
                    "" => Some(serde_json::Map::new()),
                    text => serde_json::from_str(text).ok(),
                };
                let result = match metadata {
                    Some(metadata) => shard.relay.borrow_mut().list_rooms(
                        self.player,
                        u64::from(req),
                        ListFilter {
                            metadata,
                            free_seats: *free_seats,
                            page: page.to_native(),
                        },
                    ),
                    None => Err(ErrorCode::InvalidValue),
                };
                if let Err(code) = result {
                    self.error(cx, req, code, "list refused");
                }
            }
            ArchivedClientFrame::Queue { req, ticket } => {
                let req = req.to_native();
                if let Some(Err(exceeded)) = self.auth.rate.as_mut().map(|r| r.join(now)) {
                    return self.rate_limited(cx, req, exceeded);
                }
                let ticket = TicketRequest {
                    queue: ticket.queue.as_str().to_owned(),
                    skill: ticket.skill.to_native(),
                    region: (!ticket.region.is_empty()).then(|| ticket.region.as_str().to_owned()),
                    properties: ticket
                        .properties
                        .iter()
                        .map(|p| (p.name.as_str().to_owned(), p.value.as_str().to_owned()))
                        .collect(),
                    party: ticket.party.iter().map(|n| n.as_str().to_owned()).collect(),
                };
                let result = shard.relay.borrow_mut().queue_ticket(
                    self.player,
                    Some(u64::from(req)),
                    ticket,
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "ticket refused");
                }
            }
            ArchivedClientFrame::Cancel { req, ticket } => {
                let req = req.to_native();
                let result = shard.relay.borrow_mut().cancel_ticket(
                    self.player,
                    Some(u64::from(req)),
                    ticket.to_native(),
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "no such ticket waiting");
                }
            }
            ArchivedClientFrame::Host { req, room, action } => {
                let req = req.to_native();
                let action = match action {
                    ArchivedHostAction::Lock { locked } => HostAction::Lock { locked: *locked },
                    ArchivedHostAction::Kick { player } => HostAction::Kick {
                        player: player.as_str().to_owned(),
                    },
                    ArchivedHostAction::SetMetadata { metadata } => HostAction::SetMetadata {
                        metadata: metadata.as_str().to_owned(),
                    },
                    ArchivedHostAction::SetState { state } => HostAction::SetState {
                        state: state.as_str().to_owned(),
                    },
                };
                let result = shard.relay.borrow_mut().host_action(
                    self.player,
                    Some(u64::from(req)),
                    room.as_str(),
                    action,
                    now,
                );
                if let Err(code) = result {
                    self.error(cx, req, code, "host action refused");
                }
            }
            ArchivedClientFrame::Send {
                req,
                room,
                event,
                payload,
                kind,
            } => {
                let req = req.to_native();
                if !valid_name(event.as_str(), self.max_name_len) {
                    self.error(cx, req, ErrorCode::InvalidName, "bad event name");
                    return Flow::Continue;
                }
                // Socket.IO members of the room would drop their connection on a name their
                // client reserves, or take the event for one of the server's own notices.
                if is_reserved_for_relay(event.as_str()) {
                    shard.stats.count_refusal(Refusal::ReservedName);
                    self.error(
                        cx,
                        req,
                        ErrorCode::ReservedName,
                        "event name reserved by socket.io clients or the server",
                    );
                    return Flow::Continue;
                }
                // Counted once the request is valid: a refusal for a bad name spends
                // nothing, and what passes here is what the room receives.
                let size = payload.len();
                if let Some(Err(exceeded)) = self.auth.rate.as_mut().map(|r| r.message(size, now)) {
                    return self.rate_limited(cx, req, exceeded);
                }
                let body = Body::Event {
                    from: Arc::clone(&self.auth.identity.player),
                    event: event.as_str().to_owned(),
                    // The payload stays in the received buffer: no copy.
                    payload: bytes.slice_ref(payload.as_slice()),
                    kind: PayloadKind::from(kind),
                };
                let body = match self.auth.gate.hooks.check_message(
                    &self.auth.identity,
                    room.as_str(),
                    body,
                ) {
                    Ok(Some(body)) => body,
                    // Dropped by the message hook: the sender is told nothing.
                    Ok(None) => return Flow::Continue,
                    Err(why) => {
                        self.forbidden(cx, req, &why);
                        return Flow::Continue;
                    }
                };
                let result = shard
                    .relay
                    .borrow_mut()
                    .send(self.player, room.as_str(), body, now);
                if let Err(code) = result {
                    self.error(cx, req, code, "send refused");
                }
            }
            ArchivedClientFrame::Ping { req, t } => {
                let _ = cx.out.push(native_frame(&ServerFrame::Pong {
                    req: req.to_native(),
                    t: t.to_native(),
                }));
            }
            ArchivedClientFrame::Refresh { req, token } => {
                let req = req.to_native();
                match self
                    .auth
                    .gate
                    .verifier
                    .refresh(&self.auth.identity, token.as_str())
                {
                    Ok(identity) => {
                        self.auth.expires = self.auth.gate.verifier.deadline(&identity, now);
                        let exp = identity.exp.map_or(0, NonZeroU64::get);
                        shard
                            .relay
                            .borrow_mut()
                            .set_identity(self.player, identity.clone());
                        self.auth.identity = identity;
                        let _ = cx
                            .out
                            .push(native_frame(&ServerFrame::Refreshed { req, exp }));
                    }
                    // The session goes on with its old token, which may still be good.
                    Err(why) => {
                        shard.stats.count_refusal(Refusal::Token);
                        self.error(cx, req, ErrorCode::Unauthorized, &why.to_string());
                    }
                }
            }
        }
        Flow::Continue
    }
}

impl WsApp for NativeSession {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Flow {
        add(&cx.shard.stats.connections, 1);
        add(&cx.shard.stats.native_connections, 1);
        Flow::Continue
    }

    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow {
        match msg {
            Message::Binary(bytes) => self.handle_frame(cx, bytes),
            _ => {
                self.error(
                    cx,
                    0,
                    ErrorCode::TextFrame,
                    "text messages are not accepted on /ws; send binary frames",
                );
                Flow::Close {
                    code: close::UNSUPPORTED,
                    reason: "text frame",
                    stat: CloseReason::Unsupported,
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.welcomed {
            self.auth.expires
        } else {
            Some(self.handshake_deadline)
        }
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Flow {
        if !self.welcomed && cx.now >= self.handshake_deadline {
            return Flow::Close {
                code: close::POLICY,
                reason: "handshake timeout",
                stat: CloseReason::HandshakeTimeout,
            };
        }
        if self.welcomed && self.auth.expires.is_some_and(|at| cx.now >= at) {
            self.error(
                cx,
                0,
                ErrorCode::Unauthorized,
                "token expired; refresh it before exp",
            );
            return Flow::Close {
                code: close::POLICY,
                reason: "token expired",
                stat: CloseReason::Unauthorized,
            };
        }
        Flow::Continue
    }

    fn keepalive(&self) -> Option<Keepalive> {
        Some(self.keepalive)
    }

    /// A welcomed client is told to go, with a random delay below `drain_reconnect_ms`,
    /// and may finish what it was doing; one still in its handshake is closed.
    fn on_drain(&mut self, cx: &mut Cx<'_>) -> Flow {
        if !self.welcomed {
            return self.on_shutdown(cx);
        }
        use rand::RngExt;
        let spread = cx.shard.config.drain_reconnect_ms.max(1);
        let reconnect_after_ms = rand::rng().random_range(0..spread);
        let _ = cx
            .out
            .push(native_frame(&ServerFrame::Draining { reconnect_after_ms }));
        Flow::Continue
    }

    fn on_peer_close(&mut self) {
        self.said_goodbye = true;
    }

    fn on_wake(&mut self, cx: &mut Cx<'_>) -> Flow {
        if !self.resuming {
            return Flow::Continue;
        }
        let Some(claimed) = cx.shard.relay.borrow_mut().take_claim(self.player) else {
            return Flow::Continue;
        };
        self.resuming = false;
        let req = claimed.req;
        cx.shard.stop_waking(&claimed.inbox);
        let Some(identity) = claimed.identity else {
            // A new player id for a `Hello` that may follow.
            self.player = cx.shard.next_player_id();
            self.error(
                cx,
                req,
                ErrorCode::CannotResume,
                "session cannot be resumed; send Hello for a new one",
            );
            return Flow::Continue;
        };
        // Restored from the node that made it; its rooms' `Resumed` frames and replays
        // follow this Welcome, as their homes read the rooms' streams.
        self.auth.expires = self.auth.gate.verifier.deadline(&identity, cx.now);
        self.auth.identity = identity;
        self.welcome(cx);
        let _ = cx.out.push(native_frame(&ServerFrame::Welcome {
            req,
            player: self.auth.identity.player.to_string(),
            shard: cx.shard.id as u32,
            session: self.player,
            secret: claimed.secret.into(),
            resumed: true,
        }));
        admin_ui::native_connected(&mut cx.shard.relay.borrow_mut(), cx, self.player);
        Flow::Continue
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, why: CloseReason) {
        cx.shard.stats.count_close(why);
        crate::stats::sub(&cx.shard.stats.native_connections, 1);
        if std::mem::take(&mut self.resuming) {
            // A session restored after all waits away for its window.
            let inbox = cx
                .shard
                .relay
                .borrow_mut()
                .abandon_claim(self.player, cx.now);
            if let Some(inbox) = inbox {
                cx.shard.stop_waking(&inbox);
            }
        }
        if self.welcomed {
            let mut relay = cx.shard.relay.borrow_mut();
            admin_ui::native_gone(&mut relay, cx, self.player, why);
            // A connection lost (EOF without a close frame, a socket error, silence) keeps
            // its session for the resume window, as socket.io's recovery does for transport
            // errors and ping timeouts; a client that said goodbye, or one the server
            // closed for cause, leaves (docs/SESSIONS.md).
            let lost = !self.said_goodbye
                && matches!(why, CloseReason::Peer | CloseReason::Io | CloseReason::Idle);
            let out = cx.out;
            relay.release(self.player, |o| Rc::ptr_eq(o, out), lost, cx.now);
        }
        cx.shard
            .stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The session a `/ws?resume=<session>` request wants back, from its query string.
fn resume_query(query: &str) -> Option<PlayerId> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("resume="))
        .and_then(|v| v.parse().ok())
}

fn request_id(frame: &ArchivedClientFrame) -> u32 {
    match frame {
        ArchivedClientFrame::Hello { req, .. }
        | ArchivedClientFrame::Join { req, .. }
        | ArchivedClientFrame::Leave { req, .. }
        | ArchivedClientFrame::Send { req, .. }
        | ArchivedClientFrame::Ping { req, .. }
        | ArchivedClientFrame::Refresh { req, .. }
        | ArchivedClientFrame::Resume { req, .. }
        | ArchivedClientFrame::Host { req, .. }
        | ArchivedClientFrame::Create { req, .. }
        | ArchivedClientFrame::List { req, .. }
        | ArchivedClientFrame::Queue { req, .. }
        | ArchivedClientFrame::Cancel { req, .. } => req.to_native(),
    }
}

/// What every native session checks its player against: the token verifier and the
/// authorization hooks, shared by the route's sessions.
pub struct Gate {
    verifier: Arc<Verifier>,
    hooks: Arc<Hooks>,
}

/// The route of `/ws`: answers the upgrade and starts a native session.
pub struct NativeRoute {
    gate: Arc<Gate>,
}

impl NativeRoute {
    /// The route, its sessions' tokens checked by `verifier` and their requests by `hooks`.
    pub fn new(verifier: Arc<Verifier>, hooks: Arc<Hooks>) -> NativeRoute {
        NativeRoute {
            gate: Arc::new(Gate { verifier, hooks }),
        }
    }
}

impl Route for NativeRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        // A session lives on the shard that made it (its id says which): a reconnect that
        // the kernel gave to another shard goes there before the upgrade is answered.
        if let Some(session) = resume_query(&request.query) {
            let owner = crate::shard::PlayerIds::shard_of(session);
            if owner != cx.shard.id && owner < cx.shard.shards {
                return Step::Handoff {
                    shard: owner,
                    read: head.raw,
                };
            }
        }
        upgrade(cx, &request, head, |cx, started| {
            Box::new(NativeSession::connection(
                cx.shard,
                started,
                Arc::clone(&self.gate),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    /// Every native connection holds one `SessionAuth`, idle or not: 64 bytes is the
    /// allocator's size class it fits (one more field, or an `Identity` over 32 bytes,
    /// moves it to 80).
    #[test]
    fn the_auth_state_of_a_session_stays_small() {
        assert!(
            size_of::<super::SessionAuth>() <= 64,
            "{}",
            size_of::<super::SessionAuth>()
        );
        assert!(size_of::<crate::auth::Identity>() <= 32);
    }
}
