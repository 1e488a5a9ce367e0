//! The SocketCluster endpoint (`[socketcluster]` `path`, `/socketcluster/` by default): the
//! protocol of [`crate::proto::socketcluster`] over the WebSocket driver, with channels as
//! relay rooms and the application's [`SocketCluster`] handlers.
//!
//! A connection must send `#handshake` within `handshake_timeout_ms` (else 4005), and
//! nothing else before it (4009). Bad input closes only its own connection: a message that
//! is not JSON or not a packet with 1003, a batch over [`sc::MAX_BATCH`] with 1008, a
//! message over `max_message_size` with 1009 (the driver). A request refused (rate limits,
//! names, authorization, the relay) is answered with an error and the connection goes on;
//! one that keeps exceeding its rate limits is closed with 1008.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tungstenite::Message;

use super::front::{upgrade, Head, Route};
use super::websocket::{Flow, WebSocket, WsApp};
use crate::auth::{Identity, TokenError, Verifier};
use crate::config::Protocol;
use crate::hooks::{Forbidden, Hooks};
use crate::proto::http::Request;
use crate::proto::native::{ErrorCode, PayloadKind};
use crate::proto::socketcluster::{
    self as sc, Beat, Heartbeat, Inbound, MessageError, Packet, PacketError, ScError,
};
use crate::proto::socketio::Arg;
use crate::proto::ws::close;
use crate::rate_limit::{Buckets, Exceeded};
use crate::relay::{sc_error, text_frame, valid_name, Body, PlayerId, Wire, NOBODY};
use crate::shard::{Cx, Shard, Step};
use crate::socketcluster::{Core, Response, Socket, SocketCluster};
use crate::stats::{add, CloseReason, Refusal};

/// SocketCluster's close codes (`sc-errors`' `socketProtocolErrorStatuses`).
pub mod code {
    /// The client said nothing for `ping_timeout_ms` ("Client pong timed out").
    pub const PONG_TIMEOUT: u16 = 4001;
    /// No `#handshake` in time.
    pub const HANDSHAKE_TIMEOUT: u16 = 4005;
    /// The handshake was refused: a missing or bad token where one is required, the
    /// handshake hook, or a malformed `#handshake`.
    pub const HANDSHAKE_REJECTED: u16 = 4008;
    /// A packet came before the handshake.
    pub const BEFORE_HANDSHAKE: u16 = 4009;
}

/// What every SocketCluster connection of the server checks and runs.
pub struct Gate {
    verifier: Arc<Verifier>,
    hooks: Arc<Hooks>,
    app: Arc<SocketCluster>,
}

/// The route of the SocketCluster path: answers the upgrade and starts a connection.
pub struct ScRoute {
    gate: Arc<Gate>,
}

impl ScRoute {
    /// The route, tokens checked by `verifier`, requests by `hooks`, events handled by
    /// `app`.
    pub fn new(verifier: Arc<Verifier>, hooks: Arc<Hooks>, app: Arc<SocketCluster>) -> ScRoute {
        ScRoute {
            gate: Arc::new(Gate {
                verifier,
                hooks,
                app,
            }),
        }
    }
}

impl Route for ScRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        upgrade(cx, &request, head, |cx, started| {
            Box::new(ScConnection::connection(
                cx.shard,
                started,
                Arc::clone(&self.gate),
            ))
        })
    }
}

/// One SocketCluster connection.
pub struct ScConnection {
    player: PlayerId,
    gate: Arc<Gate>,
    heartbeat: Heartbeat,
    /// Set by the handshake.
    core: Option<Rc<Core>>,
    /// The connection's rate limits, from the handshake on; `None` when its profile limits
    /// nothing.
    rate: Option<Box<Buckets>>,
    /// The ping frame of `[socketcluster]` `protocol_version`.
    ping: Bytes,
    allow_publish: bool,
    max_name_len: usize,
}

/// Closes with SocketCluster's or WebSocket's `code`.
fn closing(code: u16, reason: &'static str, stat: CloseReason) -> Flow {
    Flow::Close { code, reason, stat }
}

impl ScConnection {
    /// A connection on `shard` accepted at `accepted_at`, wrapped in the WebSocket driver.
    pub fn connection(
        shard: &Rc<Shard>,
        accepted_at: Instant,
        gate: Arc<Gate>,
    ) -> WebSocket<ScConnection> {
        let config = &shard.config;
        let sc_config = &config.socketcluster;
        let heartbeat = Heartbeat::new(
            accepted_at,
            accepted_at + Duration::from_millis(config.handshake_timeout_ms),
            Duration::from_millis(sc_config.ping_interval_ms),
            Duration::from_millis(sc_config.ping_timeout_ms),
        );
        let connection = ScConnection {
            player: shard.next_player_id(),
            gate,
            heartbeat,
            core: None,
            rate: None,
            ping: text_frame(sc::ping(sc_config.protocol_version)),
            allow_publish: sc_config.allow_client_publish,
            max_name_len: config.max_name_len,
        };
        WebSocket::new(connection, config.max_message_size)
    }

    fn send(cx: &Cx<'_>, text: &str) {
        let _ = cx.out.push(text_frame(text));
    }

    /// Answers call `cid` (if any) with `error`.
    fn refuse(cx: &Cx<'_>, cid: Option<u64>, error: &ScError) {
        if let Some(cid) = cid {
            Self::send(cx, &sc::answer_error(cid, error));
        }
    }

    /// Answers call `cid` (if any) with the relay's error `code`, and counts it.
    fn refuse_code(cx: &Cx<'_>, cid: Option<u64>, code: ErrorCode, message: &str) {
        cx.shard.stats.count_error(code);
        Self::refuse(cx, cid, &sc_error(code, message));
    }

    /// Answers a request an authorization hook or rule refused, and counts it.
    fn forbidden(cx: &Cx<'_>, cid: Option<u64>, why: &Forbidden) {
        cx.shard.stats.count_refusal(Refusal::Forbidden);
        Self::refuse_code(cx, cid, ErrorCode::Forbidden, &why.message);
    }

    /// Answers a request a rate limit refused, counts it, and closes the connection when it
    /// has kept exceeding its limits.
    fn rate_limited(cx: &Cx<'_>, cid: Option<u64>, exceeded: Exceeded) -> Flow {
        cx.shard.stats.count_refusal(exceeded.limit.refusal());
        Self::refuse_code(cx, cid, exceeded.limit.code(), "rate limited: slow down");
        if exceeded.close {
            return closing(close::POLICY, "rate limited", CloseReason::RateLimited);
        }
        Flow::Continue
    }

    /// The rate limits of `identity`'s tier, starting now.
    fn limits(cx: &Cx<'_>, identity: &Identity) -> Option<Box<Buckets>> {
        let limits = &cx.shard.config.rate_limits;
        let tier = identity.claims.get("tier").and_then(Value::as_str);
        let profile = limits.profile(Protocol::SocketCluster, tier);
        Buckets::new(&profile, Duration::from_millis(limits.sustained_ms), cx.now)
    }

    fn handle(
        &mut self,
        cx: &mut Cx<'_>,
        packet: Result<Packet, PacketError>,
        size: usize,
    ) -> Flow {
        let packet = match packet {
            Ok(p) => p,
            Err(PacketError::NotAPacket) => {
                return closing(
                    close::UNSUPPORTED,
                    "not a SocketCluster packet",
                    CloseReason::Invalid,
                )
            }
            Err(PacketError::UnknownReserved { cid: None, .. }) => {
                return closing(
                    close::UNSUPPORTED,
                    "unknown reserved event",
                    CloseReason::Invalid,
                )
            }
            Err(e @ PacketError::UnknownReserved { cid, .. }) => {
                Self::refuse_code(cx, cid, ErrorCode::ReservedName, &e.to_string());
                return Flow::Continue;
            }
            Err(PacketError::BadData { cid: None, .. }) => {
                return closing(close::UNSUPPORTED, "malformed packet", CloseReason::Invalid)
            }
            Err(e @ PacketError::BadData { cid, .. }) => {
                let error = ScError::new("InvalidActionError", e.to_string())
                    .with_code(ErrorCode::InvalidValue.name());
                Self::refuse(cx, cid, &error);
                return Flow::Continue;
            }
        };
        let Some(core) = self.core.clone() else {
            return match packet {
                Packet::Handshake {
                    cid: Some(cid),
                    token,
                } => self.handshake(cx, cid, token),
                Packet::Handshake { cid: None, .. } => closing(
                    code::HANDSHAKE_REJECTED,
                    "handshake request was malformatted",
                    CloseReason::Protocol,
                ),
                _ => closing(
                    code::BEFORE_HANDSHAKE,
                    "message before the handshake",
                    CloseReason::Protocol,
                ),
            };
        };
        let now = cx.now;
        let shard = Rc::clone(cx.shard);
        match packet {
            Packet::Handshake { cid, .. } => {
                let error = ScError::new("InvalidActionError", "the handshake is done")
                    .with_code(ErrorCode::NotWelcomed.name());
                Self::refuse(cx, cid, &error);
            }
            Packet::Answer { .. } => {}
            Packet::Authenticate { cid: None, .. } => {
                return closing(
                    code::HANDSHAKE_REJECTED,
                    "authenticate request was malformatted",
                    CloseReason::Protocol,
                )
            }
            Packet::Authenticate {
                cid: Some(cid),
                token,
            } => {
                let checked = match token.as_deref() {
                    Some(token) => self.gate.verifier.check(Some(token)),
                    None => Err(TokenError::Malformed),
                };
                match checked {
                    Ok(Some(identity)) => {
                        if let Err(why) = self.gate.hooks.check_handshake(&identity) {
                            Self::forbidden(cx, Some(cid), &why);
                            return Flow::Continue;
                        }
                        self.rate = Self::limits(cx, &identity);
                        core.set_identity(identity, now);
                        let status = json!({"isAuthenticated": true, "authError": null});
                        Self::send(cx, &sc::answer(cid, Some(&status)));
                    }
                    Ok(None) => {
                        let error = ScError::new("AuthError", "this server checks no tokens")
                            .with_code(ErrorCode::Unauthorized.name());
                        let status =
                            json!({"isAuthenticated": false, "authError": error.to_json()});
                        Self::send(cx, &sc::answer(cid, Some(&status)));
                    }
                    Err(why) => {
                        // A bad token: the client drops it (as the reference server
                        // answers one) and the socket is anonymous again.
                        shard.stats.count_refusal(Refusal::Token);
                        core.forget_token(now);
                        Self::refuse(cx, Some(cid), &token_error(why));
                    }
                }
            }
            Packet::RemoveAuthToken => core.forget_token(now),
            Packet::Subscribe { cid, channel } => {
                if !valid_name(&channel, self.max_name_len) {
                    Self::refuse_code(cx, cid, ErrorCode::InvalidName, "bad channel name");
                    return Flow::Continue;
                }
                if let Some(Err(exceeded)) = self.rate.as_mut().map(|r| r.join(now)) {
                    return Self::rate_limited(cx, cid, exceeded);
                }
                let identity = core.identity.borrow().clone();
                if let Err(why) = self.gate.hooks.check_join(&identity, &channel) {
                    Self::forbidden(cx, cid, &why);
                    return Flow::Continue;
                }
                // The relay answers the `cid` once the room's home counted the join (or
                // refused it): the client's channel is subscribed from then.
                let joined = shard
                    .relay
                    .borrow_mut()
                    .join(self.player, cid, &channel, now);
                if let Err(code) = joined {
                    Self::refuse_code(cx, cid, code, "subscribe refused");
                }
            }
            Packet::Unsubscribe { cid, channel } => {
                let left = shard
                    .relay
                    .borrow_mut()
                    .leave(self.player, cid, &channel, now);
                if let Err(code) = left {
                    Self::refuse_code(cx, cid, code, "not subscribed");
                }
            }
            Packet::Publish { cid, channel, data } => {
                return self.publish(cx, &core, cid, channel, data, size)
            }
            Packet::Event { cid, event, data } => {
                if let Some(Err(exceeded)) = self.rate.as_mut().map(|r| r.message(size, now)) {
                    return Self::rate_limited(cx, cid, exceeded);
                }
                let socket = Socket {
                    core: Rc::clone(&core),
                };
                let app = Arc::clone(&self.gate.app);
                if let Err(error) = app.check_invoke(&socket, &event, &data) {
                    shard.stats.count_refusal(Refusal::Forbidden);
                    Self::refuse(cx, cid, &error);
                    return Flow::Continue;
                }
                match app.procedure(&event) {
                    Some(handler) => {
                        let response = cid.map(|rid| Response {
                            core: Rc::clone(&core),
                            rid,
                        });
                        handler(&socket, data, response);
                    }
                    None => {
                        let error = ScError::new(
                            "InvalidActionError",
                            format!("no procedure named {event}"),
                        )
                        .with_code("unknown_event");
                        Self::refuse(cx, cid, &error);
                    }
                }
            }
        }
        Flow::Continue
    }

    fn handshake(&mut self, cx: &mut Cx<'_>, cid: u64, token: Option<String>) -> Flow {
        let now = cx.now;
        let shard = Rc::clone(cx.shard);
        let id: Arc<str> = Arc::from(self.player.to_string());
        let verifier = &self.gate.verifier;
        // A bad token the client brings back from storage does not lock it out, as with
        // the reference server: the handshake answers `authError` and the socket is
        // anonymous. Where tokens are required, it is refused.
        let (identity, auth_error) = match verifier.check(token.as_deref()) {
            Ok(identity) => (identity, None),
            Err(why) if token.is_some() && !verifier.required() => {
                shard.stats.count_refusal(Refusal::Token);
                (None, Some(token_error(why)))
            }
            Err(why) => {
                shard.stats.count_refusal(Refusal::Token);
                Self::send(cx, &sc::answer_error(cid, &token_error(why)));
                return closing(
                    code::HANDSHAKE_REJECTED,
                    "unauthorized",
                    CloseReason::Unauthorized,
                );
            }
        };
        let authenticated = identity.is_some();
        let identity = identity.unwrap_or_else(|| Identity::anonymous(id.to_string()));
        if let Err(why) = self.gate.hooks.check_handshake(&identity) {
            Self::forbidden(cx, Some(cid), &why);
            return closing(
                code::HANDSHAKE_REJECTED,
                "forbidden",
                CloseReason::Forbidden,
            );
        }
        self.rate = Self::limits(cx, &identity);
        self.heartbeat.handshaken();
        let core = Rc::new(Core {
            id: Arc::clone(&id),
            player: self.player,
            shard: Rc::clone(&shard),
            out: Rc::clone(cx.out),
            verifier: Arc::clone(verifier),
            expires: Cell::new(verifier.deadline(&identity, now)),
            identity: RefCell::new(identity.clone()),
            connected: Cell::new(true),
        });
        shard.relay.borrow_mut().connect(
            self.player,
            identity,
            Wire::SocketCluster,
            Rc::clone(cx.out),
        );
        let ping_timeout = shard.config.socketcluster.ping_timeout_ms;
        Self::send(
            cx,
            &sc::handshake_answer(cid, &id, ping_timeout, authenticated, auth_error.as_ref()),
        );
        self.core = Some(Rc::clone(&core));
        self.gate.app.connected(&Socket { core });
        Flow::Continue
    }

    fn publish(
        &mut self,
        cx: &mut Cx<'_>,
        core: &Rc<Core>,
        cid: Option<u64>,
        channel: String,
        data: Value,
        size: usize,
    ) -> Flow {
        let now = cx.now;
        let shard = Rc::clone(cx.shard);
        if !self.allow_publish {
            let error = ScError::new("InvalidActionError", "client publish feature is disabled")
                .with_code(ErrorCode::Forbidden.name());
            Self::refuse(cx, cid, &error);
            return Flow::Continue;
        }
        if !valid_name(&channel, self.max_name_len) {
            Self::refuse_code(cx, cid, ErrorCode::InvalidName, "bad channel name");
            return Flow::Continue;
        }
        if let Some(Err(exceeded)) = self.rate.as_mut().map(|r| r.message(size, now)) {
            return Self::rate_limited(cx, cid, exceeded);
        }
        let identity = core.identity.borrow().clone();
        // SocketCluster lets a client publish to a channel it has not subscribed to: the
        // room's admission rules and join hook then apply to the publish, so that nobody
        // reaches a room it could not join.
        if !shard.relay.borrow().is_member(self.player, &channel) {
            if let Err(why) = self.gate.hooks.check_join(&identity, &channel) {
                Self::forbidden(cx, cid, &why);
                return Flow::Continue;
            }
        }
        let from = Arc::clone(&identity.player);
        let event = "publish".to_owned();
        let body = match sc::split_binary(data) {
            Arg::Json(value) => Body::Event {
                from,
                event,
                payload: Bytes::from(value.to_string()),
                kind: PayloadKind::Json,
            },
            Arg::Binary(payload) => Body::Event {
                from,
                event,
                payload,
                kind: PayloadKind::Binary,
            },
            tree => Body::Nested {
                from,
                event,
                payload: tree,
            },
        };
        let body = match self.gate.hooks.check_message(&identity, &channel, body) {
            Ok(Some(body)) => body,
            // Dropped by the message hook: answered as published, so the sender cannot tell.
            Ok(None) => {
                if let Some(cid) = cid {
                    Self::send(cx, &sc::answer(cid, None));
                }
                return Flow::Continue;
            }
            Err(why) => {
                Self::forbidden(cx, cid, &why);
                return Flow::Continue;
            }
        };
        // To every subscriber, the publisher too when it is one (as SocketCluster
        // delivers), in one broadcast encoded once per wire.
        let sent = shard
            .relay
            .borrow_mut()
            .broadcast(NOBODY, &channel, body, now);
        match sent {
            Ok(()) => {
                if let Some(cid) = cid {
                    Self::send(cx, &sc::answer(cid, None));
                }
            }
            Err(code) => Self::refuse_code(cx, cid, code, "publish refused"),
        }
        Flow::Continue
    }
}

/// A token refusal as the SocketCluster error the client's auth engine knows.
fn token_error(why: TokenError) -> ScError {
    let name = match why {
        TokenError::Expired => "AuthTokenExpiredError",
        TokenError::NotYetValid => "AuthTokenNotBeforeError",
        TokenError::Missing => "AuthError",
        _ => "AuthTokenInvalidError",
    };
    ScError::new(name, why.to_string()).with_code(ErrorCode::Unauthorized.name())
}

impl WsApp for ScConnection {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Flow {
        add(&cx.shard.stats.connections, 1);
        self.heartbeat.heard(cx.now);
        Flow::Continue
    }

    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow {
        self.heartbeat.heard(cx.now);
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            // The client's codec decodes a binary message as its text.
            Message::Binary(b) => match std::str::from_utf8(b) {
                Ok(t) => t,
                Err(_) => return closing(close::INVALID, "invalid UTF-8", CloseReason::Invalid),
            },
            _ => return Flow::Continue,
        };
        let packets = match sc::decode(text) {
            Ok(Inbound::Pong) => return Flow::Continue,
            Ok(Inbound::Ping) => {
                Self::send(cx, "#2");
                return Flow::Continue;
            }
            Ok(Inbound::Packets(packets)) => packets,
            Err(MessageError::NotJson) => {
                return closing(
                    close::UNSUPPORTED,
                    "message is not JSON",
                    CloseReason::Invalid,
                )
            }
            Err(MessageError::BatchTooLarge) => {
                return closing(close::POLICY, "batch too large", CloseReason::Protocol)
            }
        };
        // A batch's bytes are shared by its packets for the byte limit.
        let size = text.len() / packets.len().max(1);
        for packet in packets {
            let flow = self.handle(cx, packet, size);
            if matches!(flow, Flow::Close { .. }) || !cx.out.is_open() {
                return flow;
            }
        }
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        let beat = self.heartbeat.deadline();
        let expires = self.core.as_ref().and_then(|c| c.expires.get());
        Some(expires.map_or(beat, |e| e.min(beat)))
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Flow {
        while let Some(beat) = self.heartbeat.poll(cx.now) {
            match beat {
                Beat::Ping => {
                    let _ = cx.out.push(self.ping.clone());
                }
                Beat::HandshakeTimeout => {
                    return closing(
                        code::HANDSHAKE_TIMEOUT,
                        "no #handshake in time",
                        CloseReason::HandshakeTimeout,
                    )
                }
                Beat::PongTimeout => {
                    return closing(
                        code::PONG_TIMEOUT,
                        "client pong timed out",
                        CloseReason::Idle,
                    )
                }
            }
        }
        if let Some(core) = &self.core {
            if core.expires.get().is_some_and(|at| cx.now >= at) {
                if self.gate.verifier.required() {
                    Self::send(cx, &sc::transmit("#removeAuthToken", &Value::Null));
                    return closing(close::POLICY, "token expired", CloseReason::Unauthorized);
                }
                // The reference server's answer to an expired token: the socket goes on,
                // anonymous, and the client drops the token.
                core.forget_token(cx.now);
                core.send(&sc::transmit("#removeAuthToken", &Value::Null));
            }
        }
        Flow::Continue
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, why: CloseReason) {
        cx.shard.stats.count_close(why);
        if let Some(core) = self.core.take() {
            cx.shard.relay.borrow_mut().disconnect(self.player, cx.now);
            core.connected.set(false);
            self.gate.app.disconnected(&Socket { core });
        }
        cx.shard
            .stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_refusals_carry_the_clients_error_names() {
        assert_eq!(
            token_error(TokenError::Expired).name,
            "AuthTokenExpiredError"
        );
        assert_eq!(
            token_error(TokenError::BadSignature).name,
            "AuthTokenInvalidError"
        );
        assert_eq!(
            token_error(TokenError::Malformed).code,
            Some(ErrorCode::Unauthorized.name())
        );
    }
}
