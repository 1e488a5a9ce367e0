//! The Engine.IO endpoint: HTTP long-polling (a GET that waits for packets, a POST that
//! brings them) and the WebSocket transport, over the sans-IO sessions of
//! `crate::engineio`.
//!
//! A request naming a session that lives on another shard is handed, socket and bytes, to
//! that shard's HTTP front, which routes it back to this endpoint there (and later requests
//! on the same connection by their own paths). Session timers (heartbeat, connect timeout) are entries on
//! the shard's timer wheel, re-armed after every input to the session.
//!
//! Every new session (a polling GET or a WebSocket without `sid`) passes admission first:
//! the handshake rate of its source address on this shard, then the server-wide and
//! per-address session caps, shared by all shards. A refusal is a 503 with the reference's
//! error body, counted in `refused`.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::Message;

use super::front::{self, Head, Next, Route};
use super::websocket::{Flow, WebSocket, WsApp};
use crate::admission::{Full, Occupancy, RateLimiter};
use crate::engineio::{owner_of, Admitted, Handler, Phase, Session, Sessions};
use crate::proto::engineio::{self, EngineError, Handshake, Packet, Query, Transport};
use crate::proto::http::{self, Request};
use crate::proto::ws::close;
use crate::relay::{sio_ws_frames, Drained, Outbox, PlayerId};
use crate::shard::{Connection, Cx, Ended, Endpoint, EndpointId, Shard, Step};
use crate::socketio::{SioSession, SocketIo};
use crate::stats::{add, CloseReason, Refusal};

/// Most packets one poll answer carries. Engine.IO sets no limit, but python-engineio's
/// client refuses payloads of more than 16 packets; the rest goes in the next poll.
const MAX_PACKETS_PER_POLL: usize = 16;

/// A WebSocket close frame with no status, as the reference's `websocket.close()` sends
/// to a WebSocket it will not use.
static BARE_CLOSE: Bytes = Bytes::from_static(&[0x88, 0x00]);

/// The Engine.IO endpoint of one shard.
pub struct EngineEndpoint {
    id: EndpointId,
    me: Weak<EngineEndpoint>,
    app: Arc<SocketIo>,
    sessions: Rc<Sessions>,
    /// Sessions alive on the whole server, in total and per source address (shared by
    /// every shard's endpoint).
    occupancy: Arc<Occupancy>,
    /// New sessions per source address on this shard.
    handshakes: RefCell<RateLimiter>,
}

impl EngineEndpoint {
    /// The endpoint with id `id` in its shard's table, serving `app`, counting its sessions
    /// in `occupancy` (one for the whole server) and letting each source address open
    /// `handshake_rate` sessions per second on this shard, in bursts of as many.
    pub fn new(
        app: Arc<SocketIo>,
        id: EndpointId,
        occupancy: Arc<Occupancy>,
        handshake_rate: u32,
    ) -> Rc<EngineEndpoint> {
        let rate = f64::from(handshake_rate);
        Rc::new_cyclic(|me| EngineEndpoint {
            id,
            me: me.clone(),
            app,
            sessions: Rc::new(Sessions::of_endpoint(id)),
            occupancy,
            handshakes: RefCell::new(RateLimiter::new(rate, rate)),
        })
    }

    /// Admission of a new session from the peer of `cx`: its handshake rate, then the
    /// session caps. A refusal is counted.
    fn admit(&self, cx: &Cx<'_>) -> Result<Admitted, EngineError> {
        let refused = |why: Refusal, err: EngineError| {
            cx.shard.stats.count_refusal(why);
            err
        };
        if !self.handshakes.borrow_mut().allow(cx.peer, cx.now) {
            return Err(refused(Refusal::HandshakeRate, EngineError::HandshakeRate));
        }
        Admitted::enter(&self.occupancy, cx.peer).map_err(|full| match full {
            Full::Total => refused(Refusal::Sessions, EngineError::TooManySessions),
            Full::Peer => refused(
                Refusal::SessionsPerIp,
                EngineError::TooManySessionsFromAddress,
            ),
        })
    }

    /// A new session, admitted, on `websocket` or (`None`) polling; `Err` is the answer to
    /// refuse the handshake with.
    fn new_session(
        &self,
        cx: &mut Cx<'_>,
        websocket: Option<&Rc<Outbox>>,
    ) -> Result<Rc<Session>, EngineError> {
        let admitted = self.admit(cx)?;
        let shard = Rc::clone(cx.shard);
        let session = Session::open(
            &shard,
            &self.sessions,
            websocket,
            self.new_handler(),
            Some(admitted),
            cx.now,
        )
        .map_err(|e| {
            tracing::warn!(shard = shard.id, error = %e, "Engine.IO handshake refused");
            // As the reference answers a failed id generation.
            EngineError::BadRequest
        })?;
        self.schedule(&shard, &session);
        Ok(session)
    }

    /// Ends the sessions that hold one of `players`, kicked by an operator (a scan of
    /// this shard's sessions: kicks are rare, and an index would cost every session).
    /// How many were found.
    pub fn kick(&self, players: &[PlayerId]) -> usize {
        let mut found = 0;
        for session in self.sessions.all() {
            if players.iter().any(|&p| session.holds(p)) {
                session.kick();
                found += 1;
            }
        }
        found
    }

    fn me(&self) -> Rc<EngineEndpoint> {
        // The endpoint is only reached through an Rc (the shard's table), so it is alive.
        self.me
            .upgrade()
            .expect("the endpoint is alive while it serves")
    }

    fn new_handler(&self) -> Handler {
        if self.app.engine_echo {
            Handler::Echo
        } else {
            Handler::SocketIo(SioSession::new(Arc::clone(&self.app)))
        }
    }

    /// Keeps the session's next deadline on the wheel (after any input to it).
    fn schedule(&self, shard: &Shard, session: &Session) {
        let Some(due) = session.poll_timeout() else {
            return;
        };
        if session.scheduled.get().is_some_and(|at| at <= due) {
            return;
        }
        session.scheduled.set(Some(due));
        shard.set_timer(self.id, session.key, due);
    }

    fn handshake(&self, shard: &Shard, sid: &str, upgrades: &[&str]) -> String {
        Handshake {
            sid,
            upgrades,
            ping_interval_ms: shard.config.engineio_ping_interval_ms,
            ping_timeout_ms: shard.config.engineio_ping_timeout_ms,
            max_payload: shard.config.engineio_max_payload as u64,
        }
        .open_packet()
    }
}

impl Endpoint for EngineEndpoint {
    fn on_timer(&self, shard: &Rc<Shard>, key: u64, now: Instant) {
        let Some(session) = self.sessions.by_key(key) else {
            return;
        };
        session.scheduled.set(None);
        if session.poll_timeout().is_some_and(|d| d <= now) {
            session.handle_timeout(now);
        }
        self.schedule(shard, &session);
    }

    fn on_shutdown(&self, _shard: &Rc<Shard>) {
        for session in self.sessions.all() {
            session.shut_down();
        }
    }
}

impl Route for EngineEndpoint {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        let shard = Rc::clone(cx.shard);
        let keep_alive = request.keep_alive();
        let next = Next {
            keep_alive,
            routes: head.routes(),
        };
        if request.method == "OPTIONS" {
            let mut cors = cors_headers(&shard, &request);
            // A preflight is only answered in full for an origin CORS lets in: to others
            // the methods and headers are of no use.
            if cors
                .iter()
                .any(|(n, _)| *n == "Access-Control-Allow-Origin")
            {
                cors.push((
                    "Access-Control-Allow-Methods",
                    "GET, POST, OPTIONS".to_owned(),
                ));
                if let Some(h) = request.header("access-control-request-headers") {
                    cors.push(("Access-Control-Allow-Headers", h.to_owned()));
                }
            }
            let extra: Vec<(&str, &str)> = cors.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let answer = http::response(204, "No Content", "text/plain", &extra, b"", keep_alive);
            let _ = cx.out.push(Bytes::from(answer));
            return next.step(head.leftover);
        }
        let query = match Query::parse(&request.query) {
            Ok(q) => q,
            Err(e) => return fail(cx, &request, e),
        };
        let sid = query
            .sid
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(sid) = &sid {
            match owner_of(sid) {
                Some(owner) if owner != shard.id && owner < shard.shards => {
                    // The owner's front reads the request again and routes it back here.
                    return Step::Handoff {
                        shard: owner,
                        read: head.raw,
                    };
                }
                Some(_) => {}
                None => return fail(cx, &request, EngineError::UnknownSid),
            }
        }
        match (query.transport, sid) {
            (Transport::Polling, None) => {
                if request.method != "GET" {
                    return fail(cx, &request, EngineError::BadHandshakeMethod);
                }
                let session = match self.new_session(cx, None) {
                    Ok(s) => s,
                    Err(e) => return fail(cx, &request, e),
                };
                let open = self.handshake(&shard, &session.sid(), &["websocket"]);
                answer(
                    cx,
                    &request,
                    (200, "OK"),
                    "text/plain; charset=UTF-8",
                    open.as_bytes(),
                    keep_alive,
                );
                next.step(head.leftover)
            }
            (Transport::Polling, Some(sid)) => {
                let Some(session) = self.sessions.get(&sid) else {
                    return fail(cx, &request, EngineError::UnknownSid);
                };
                if session.phase() == Phase::WebSocket {
                    return fail(cx, &request, EngineError::BadRequest);
                }
                match request.method.as_str() {
                    "GET" => {
                        let Some(polling) = session.polling().cloned() else {
                            return fail(cx, &request, EngineError::BadRequest);
                        };
                        if session.polling_get.replace(true) {
                            // Two GETs at once break the protocol: close the session (which
                            // ends the first poll with a close packet), refuse the second.
                            session.close("transport error", CloseReason::Protocol);
                            return fail(cx, &request, EngineError::BadRequest);
                        }
                        let poll = PollGet {
                            endpoint: self.me(),
                            session,
                            polling,
                            request,
                            next,
                            pipelined: head.leftover,
                            unwritten: None,
                            peer_done: false,
                        };
                        Step::Upgrade(Box::new(poll), Vec::new())
                    }
                    "POST" => self.post(cx, request, session, next, head.leftover),
                    _ => fail(cx, &request, EngineError::BadHandshakeMethod),
                }
            }
            (Transport::Websocket, sid) => {
                if !front::origin_allowed(cx, &request) {
                    return forbidden(cx, &request);
                }
                let key = match request.websocket_key() {
                    Ok(k) => k.to_owned(),
                    Err(_) => return fail(cx, &request, EngineError::BadRequest),
                };
                let out = cx.out;
                let (session, upgrading) = match sid {
                    None => match self.new_session(cx, Some(out)) {
                        Ok(s) => {
                            let _ = cx.out.push(Bytes::from(http::upgrade_response(&key)));
                            let open = self.handshake(&shard, &s.sid(), &[]);
                            let _ = cx.out.push(sio_ws_frames(&open, &[]));
                            (s, false)
                        }
                        Err(e) => return fail(cx, &request, e),
                    },
                    Some(sid) => match self.sessions.get(&sid) {
                        None => return fail(cx, &request, EngineError::UnknownSid),
                        Some(s) if s.begin_upgrade(cx.out) => {
                            let _ = cx.out.push(Bytes::from(http::upgrade_response(&key)));
                            (s, true)
                        }
                        Some(_) => {
                            // Upgraded already, or another WebSocket is upgrading it: the
                            // reference completes the WebSocket handshake, then closes that
                            // WebSocket; the session goes on untouched.
                            let _ = cx.out.push(Bytes::from(http::upgrade_response(&key)));
                            let _ = cx.out.push(BARE_CLOSE.clone());
                            return Step::Close { linger: true };
                        }
                    },
                };
                let app = EngineWs {
                    endpoint: self.me(),
                    session,
                    upgrading,
                    parse_error: None,
                    upgrade_deadline: None,
                };
                let max = shard.config.engineio_max_payload;
                Step::Upgrade(Box::new(WebSocket::new(app, max)), head.leftover)
            }
        }
    }
}

impl EngineEndpoint {
    /// A long-polling POST: checks the declared length, then reads the body.
    fn post(
        &self,
        cx: &mut Cx<'_>,
        request: Request,
        session: Rc<Session>,
        next: Next,
        body: Vec<u8>,
    ) -> Step {
        let max = cx.shard.config.engineio_max_payload;
        let length = match request.content_length() {
            Ok(n) => n,
            Err(_) => return fail(cx, &request, EngineError::BadRequest),
        };
        if length > max {
            session.close("transport error", CloseReason::TooBig);
            let answer = respond(
                cx.shard,
                &request,
                (413, "Payload Too Large"),
                "text/plain",
                b"payload too large\n",
                false,
            );
            let _ = cx.out.push(Bytes::from(answer));
            return Step::Close { linger: true };
        }
        if session.polling_post.replace(true) {
            session.close("transport error", CloseReason::Protocol);
            return fail(cx, &request, EngineError::BadRequest);
        }
        // A POST that never completes still lets the session take the next one.
        let done = Rc::clone(&session);
        let post = front::ReadBody::new(length, posted(self.me(), session, request, next))
            .on_close(move || done.polling_post.set(false));
        Step::Upgrade(Box::new(post), body)
    }
}

/// A long-polling GET waiting for packets, then for its answer to be written.
struct PollGet {
    endpoint: Rc<EngineEndpoint>,
    session: Rc<Session>,
    /// The session's long-polling queue.
    polling: Rc<Outbox>,
    request: Request,
    next: Next,
    /// Bytes of a request pipelined after this one, kept for after the answer.
    pipelined: Vec<u8>,
    /// The packets of the answer being written: put back at the front of the session's
    /// queue if the write fails, so that the next poll carries them. The session's poll
    /// stays taken until then, so no later poll can overtake them.
    unwritten: Option<Vec<Bytes>>,
    /// The peer half-closed while the answer was being written: close once it is.
    peer_done: bool,
}

impl PollGet {
    fn try_answer(&mut self, cx: &mut Cx<'_>) -> Step {
        if self.unwritten.is_some() {
            // Answered already: waiting for the write.
            return Step::Continue;
        }
        let mut frames = Vec::new();
        let drained = self
            .polling
            .drain_within(&mut frames, MAX_PACKETS_PER_POLL, packet_count);
        if drained == Drained::Empty {
            // Nothing yet: the session's queue wakes this connection when it has some.
            cx.shard.wake_on(&self.polling, cx.id);
            return Step::Continue;
        }
        cx.shard.stop_waking(&self.polling);
        if self.polling.overflowed() {
            // The client polls slower than its packets arrive: a slow consumer.
            self.session
                .close("transport error", CloseReason::SlowConsumer);
        }
        self.endpoint.schedule(cx.shard, &self.session);
        if frames.is_empty() {
            // The queue ended with nothing for this poll: an upgrade took what it held.
            self.session.polling_get.set(false);
            return fail(cx, &self.request, EngineError::UnknownSid);
        }
        let mut body = Vec::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
        for (i, f) in frames.iter().enumerate() {
            if i > 0 {
                body.push(engineio::RECORD_SEPARATOR);
            }
            body.extend_from_slice(f);
        }
        answer(
            cx,
            &self.request,
            (200, "OK"),
            "text/plain; charset=UTF-8",
            &body,
            self.next.keep_alive,
        );
        self.unwritten = Some(frames);
        Step::AwaitWrite
    }
}

impl Connection for PollGet {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Step {
        self.try_answer(cx)
    }

    fn on_data(&mut self, _cx: &mut Cx<'_>, data: &[u8]) -> Step {
        // A pipelined request: kept for after this answer.
        self.pipelined.extend_from_slice(data);
        Step::Continue
    }

    fn on_timeout(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Continue
    }

    fn on_wake(&mut self, cx: &mut Cx<'_>) -> Step {
        self.try_answer(cx)
    }

    fn on_written(&mut self, _cx: &mut Cx<'_>) -> Step {
        self.unwritten = None;
        self.session.polling_get.set(false);
        if self.peer_done {
            return Step::Close { linger: false };
        }
        let next = Next {
            keep_alive: self.next.keep_alive,
            routes: Rc::clone(&self.next.routes),
        };
        next.step(std::mem::take(&mut self.pipelined))
    }

    fn on_eof(&mut self, _cx: &mut Cx<'_>) -> Step {
        if self.unwritten.is_some() {
            // The answer is on its way and the client may only have half-closed: the
            // write decides (the runtime keeps the connection until it ends).
            self.peer_done = true;
            return Step::Continue;
        }
        // A client that goes away while its poll is pending has left: its session ends now
        // rather than at the ping timeout.
        if self.session.phase() == Phase::Polling {
            self.session.close("transport close", CloseReason::Peer);
        }
        Step::Close { linger: false }
    }

    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Step {
        // The session's shutdown closes the queue, which wakes and answers this poll.
        Step::Continue
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, why: Ended) {
        cx.shard.stop_waking(&self.polling);
        self.session.polling_get.set(false);
        if let Some(frames) = self.unwritten.take() {
            // Closed before `on_written`: the answer was not all written (the write failed
            // or stalled), so its packets wait for the next poll.
            if why == Ended::SlowConsumer {
                cx.shard.stats.count_close(CloseReason::SlowConsumer);
            }
            self.polling.put_back(frames);
        }
    }
}

/// What a long-polling POST's body is handed to once read: its packets go to the session,
/// and the POST is answered `ok`.
fn posted(
    endpoint: Rc<EngineEndpoint>,
    session: Rc<Session>,
    request: Request,
    next: Next,
) -> front::BodyThen {
    Box::new(move |cx, body, rest| {
        session.polling_post.set(false);
        let packets = match engineio::decode_payload(&body) {
            Ok(p) => p,
            Err(_) => {
                session.close("parse error", CloseReason::Invalid);
                return fail(cx, &request, EngineError::BadRequest);
            }
        };
        for packet in packets {
            if session.is_closed() {
                break;
            }
            if let Err(reason) = session.handle_packet(cx.now, packet, None) {
                session.close("parse error", reason);
                return fail(cx, &request, EngineError::BadRequest);
            }
        }
        endpoint.schedule(cx.shard, &session);
        answer(
            cx,
            &request,
            (200, "OK"),
            "text/html",
            b"ok",
            next.keep_alive,
        );
        next.step(rest)
    })
}

/// An Engine.IO WebSocket: a new session, or the upgrade of a long-polling one. It counts
/// in `connections` from open to close.
struct EngineWs {
    endpoint: Rc<EngineEndpoint>,
    session: Rc<Session>,
    /// It was opened to upgrade a polling session (and has the upgrade timeout).
    upgrading: bool,
    /// A message the session refused, with why (it closed the WebSocket).
    parse_error: Option<CloseReason>,
    /// When an upgrade not completed by then is given up.
    upgrade_deadline: Option<Instant>,
}

impl WsApp for EngineWs {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Flow {
        add(&cx.shard.stats.connections, 1);
        if self.upgrading {
            let timeout = Duration::from_millis(cx.shard.config.engineio_upgrade_timeout_ms);
            self.upgrade_deadline = Some(cx.now + timeout);
        }
        Flow::Continue
    }

    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow {
        let session = Rc::clone(&self.session);
        let result = match msg {
            Message::Text(text) => match Packet::decode_text(text.as_str()) {
                Ok(p) => session.handle_packet(cx.now, p, Some(cx.out)),
                Err(_) => Err(CloseReason::Invalid),
            },
            Message::Binary(bin) => session.handle_binary(cx.now, bin, cx.out),
            _ => Ok(()),
        };
        self.endpoint.schedule(cx.shard, &session);
        if self.upgrade_deadline.is_some() && session.is_websocket(cx.out) {
            self.upgrade_deadline = None;
        }
        match result {
            Ok(()) => Flow::Continue,
            Err(stat) => {
                self.parse_error = Some(stat);
                Flow::Close {
                    code: close::NORMAL,
                    reason: "",
                    stat,
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.upgrade_deadline
    }

    fn on_timeout(&mut self, _cx: &mut Cx<'_>) -> Flow {
        // The upgrade did not complete in time: the session stays on polling.
        Flow::Close {
            code: close::NORMAL,
            reason: "upgrade timeout",
            stat: CloseReason::HandshakeTimeout,
        }
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, why: CloseReason) {
        cx.shard
            .stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let session = &self.session;
        // Socket.IO's disconnect reasons, as the reference server gives them.
        let (reason, stat) = match (self.parse_error, why) {
            (Some(stat), _) => ("parse error", stat),
            (None, CloseReason::Peer) => ("transport close", why),
            (None, CloseReason::Shutdown) => ("server shutting down", why),
            (None, other) => ("transport error", other),
        };
        // A WebSocket that never completed an upgrade leaves the polling session alive.
        if session.is_websocket(cx.out) {
            session.close(reason, stat);
        } else {
            session.upgrade_abandoned(cx.out);
        }
    }
}

/// Packets in one queued polling fragment (a binary event carries its attachments).
fn packet_count(fragment: &Bytes) -> usize {
    1 + fragment
        .iter()
        .filter(|&&b| b == engineio::RECORD_SEPARATOR)
        .count()
}

/// CORS headers for a request, per `cors_origins` (see [`http::cors_headers`]).
fn cors_headers(shard: &Shard, request: &Request) -> Vec<(&'static str, String)> {
    http::cors_headers(&shard.config.cors_origins, request.header("origin"))
}

/// Refuses a WebSocket from an origin outside `cors_origins` as the reference server
/// refuses by policy: 403 with the spec's `Forbidden` body (code 4), then closes.
fn forbidden(cx: &mut Cx<'_>, request: &Request) -> Step {
    let bytes = respond(
        cx.shard,
        request,
        (403, "Forbidden"),
        "application/json",
        EngineError::Forbidden.json_body().as_bytes(),
        false,
    );
    let _ = cx.out.push(Bytes::from(bytes));
    Step::Close { linger: true }
}

fn respond(
    shard: &Shard,
    request: &Request,
    status: (u16, &str),
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let cors = cors_headers(shard, request);
    let extra: Vec<(&str, &str)> = cors.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http::response(status.0, status.1, content_type, &extra, body, keep_alive)
}

fn answer(
    cx: &mut Cx<'_>,
    request: &Request,
    status: (u16, &str),
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    let bytes = respond(cx.shard, request, status, content_type, body, keep_alive);
    let _ = cx.out.push(Bytes::from(bytes));
}

/// Answers with an Engine.IO error (its status and JSON body) and closes. A bad request
/// counts as a close; a refusal for a limit was counted as such by admission.
fn fail(cx: &mut Cx<'_>, request: &Request, err: EngineError) -> Step {
    if err.status().0 == 400 {
        cx.shard.stats.count_close(CloseReason::BadRequest);
        cx.set_close_reason(CloseReason::BadRequest);
    }
    let body = err.json_body();
    let bytes = respond(
        cx.shard,
        request,
        err.status(),
        "application/json",
        body.as_bytes(),
        false,
    );
    let _ = cx.out.push(Bytes::from(bytes));
    Step::Close { linger: true }
}
