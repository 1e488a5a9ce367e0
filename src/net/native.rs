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
use crate::proto::http::Request;
use crate::proto::native::{
    access_client, ArchivedClientFrame, ErrorCode, PayloadKind, ServerFrame, PROTOCOL_VERSION,
};
use crate::proto::socketio::is_reserved_for_relay;
use crate::proto::ws::close;
use crate::rate_limit::{Buckets, Exceeded};
use crate::relay::{native_frame, valid_name, Body, PlayerId, Reply, Wire};
use crate::shard::{Cx, Shard, Step};
use crate::stats::{add, CloseReason, Refusal};

/// Path of the native protocol endpoint.
pub const NATIVE_PATH: &str = "/ws";

/// One native-protocol session.
pub struct NativeSession {
    player: PlayerId,
    /// Boxed: one pointer in the session, which every idle connection pays for
    /// (`per_connection_structures_stay_small`).
    auth: Box<SessionAuth>,
    welcomed: bool,
    /// `Hello` must come by then.
    handshake_deadline: Instant,
    keepalive: Keepalive,
    max_name_len: usize,
}

/// Who a session's player is, how its token is checked, and what it may send.
struct SessionAuth {
    /// Anonymous until `Hello` brings a token.
    identity: Identity,
    verifier: Arc<Verifier>,
    /// When the token expires, if sessions end then (`auth.expiry`).
    expires: Option<Instant>,
    /// The connection's rate limits, from `Hello` on (picked by the token's `tier`);
    /// `None` when its profile limits nothing.
    rate: Option<Box<Buckets>>,
}

impl NativeSession {
    /// A session on `shard` for a connection accepted at `accepted_at`, its tokens checked
    /// by `verifier`, wrapped in the WebSocket driver.
    pub fn connection(
        shard: &Rc<Shard>,
        accepted_at: Instant,
        verifier: Arc<Verifier>,
    ) -> WebSocket<NativeSession> {
        let config = &shard.config;
        let interval = Duration::from_millis(config.ping_interval_ms);
        let player = shard.next_player_id();
        let session = NativeSession {
            player,
            auth: Box::new(SessionAuth {
                identity: Identity::anonymous(player.to_string()),
                verifier,
                expires: None,
                rate: None,
            }),
            welcomed: false,
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
                    match self.auth.verifier.check(token.as_ref().map(|t| t.as_str())) {
                        Ok(identity) => {
                            if let Some(identity) = identity {
                                self.auth.expires = self.auth.verifier.deadline(&identity, now);
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
                    self.welcomed = true;
                    let limits = &shard.config.rate_limits;
                    let profile = limits.profile(Protocol::Native, self.tier_claim());
                    let sustained = Duration::from_millis(limits.sustained_ms);
                    self.auth.rate = Buckets::new(&profile, sustained, now);
                    shard.relay.borrow_mut().connect(
                        self.player,
                        Arc::clone(&self.auth.identity.player),
                        Wire::Native,
                        Rc::clone(cx.out),
                    );
                    let _ = cx.out.push(native_frame(&ServerFrame::Welcome {
                        req,
                        player: self.auth.identity.player.to_string(),
                        shard: shard.id as u32,
                    }));
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
                    .verifier
                    .refresh(&self.auth.identity, token.as_str())
                {
                    Ok(identity) => {
                        self.auth.expires = self.auth.verifier.deadline(&identity, now);
                        let exp = identity.exp.map_or(0, NonZeroU64::get);
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

    fn on_close(&mut self, cx: &mut Cx<'_>, why: CloseReason) {
        cx.shard.stats.count_close(why);
        if self.welcomed {
            cx.shard.relay.borrow_mut().disconnect(self.player, cx.now);
        }
        cx.shard
            .stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn request_id(frame: &ArchivedClientFrame) -> u32 {
    match frame {
        ArchivedClientFrame::Hello { req, .. }
        | ArchivedClientFrame::Join { req, .. }
        | ArchivedClientFrame::Leave { req, .. }
        | ArchivedClientFrame::Send { req, .. }
        | ArchivedClientFrame::Ping { req, .. }
        | ArchivedClientFrame::Refresh { req, .. } => req.to_native(),
    }
}

/// The route of `/ws`: answers the upgrade and starts a native session.
pub struct NativeRoute {
    verifier: Arc<Verifier>,
}

impl NativeRoute {
    /// The route, its sessions' tokens checked by `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> NativeRoute {
        NativeRoute { verifier }
    }
}

impl Route for NativeRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        upgrade(cx, &request, head, |cx, started| {
            Box::new(NativeSession::connection(
                cx.shard,
                started,
                Arc::clone(&self.verifier),
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
