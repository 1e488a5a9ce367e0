//! Engine.IO v4 over HTTP long-polling and WebSocket, with the upgrade between them.
//!
//! A session belongs to the shard that created it; its id starts with that shard's number,
//! so a request that the kernel hands to another shard is passed, socket and all, to the
//! owner over the mesh ([`crate::shard::mesh::ShardMsg::Handoff`]). Outgoing packets go
//! to the session's current transport: a long-polling session keeps them in an outbox as
//! payload text until a GET collects them; a WebSocket session writes frames.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::Role;
use tungstenite::Message;

use super::http::{self, Request};
use super::io::{write_loop, Stream};
use super::ws::{self, close, Incoming, WsCodec};
use crate::proto::engineio::{
    self, Data, EngineError, Handshake, Packet, PacketType, Query, Transport,
};
use crate::relay::{sio_ws_frames, Drained, Outbox, Wire};
use crate::shard::Shard;
use crate::socketio::SioSession;
use crate::stats::{add, CloseReason};

/// What runs on top of a session.
pub(crate) enum Handler {
    /// Socket.IO (namespaces, events, acks, the relay convention).
    SocketIo(Box<SioSession>),
    /// Engine.IO echo: every message sent back (the engine.io reference server).
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Polling,
    /// A WebSocket answered the probe; packets still go to polling until `5`.
    Upgrading,
    WebSocket,
    Closed,
}

/// One Engine.IO session.
pub(crate) struct Session {
    pub sid: String,
    pub shard: Rc<Shard>,
    phase: Cell<Phase>,
    /// Long-polling packets (payload text fragments) waiting for a GET.
    polling: Rc<Outbox>,
    /// The WebSocket connection's outbox, once there is one.
    ws: RefCell<Option<Rc<Outbox>>>,
    polling_get: Cell<bool>,
    polling_post: Cell<bool>,
    pong: Cell<bool>,
    handler: RefCell<Option<Handler>>,
}

/// The shard's Engine.IO sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    map: RefCell<HashMap<String, Rc<Session>>>,
}

impl Sessions {
    fn get(&self, sid: &str) -> Option<Rc<Session>> {
        self.map.borrow().get(sid).cloned()
    }

    /// Every live session (for shutdown).
    pub fn all(&self) -> Vec<Rc<Session>> {
        self.map.borrow().values().cloned().collect()
    }
}

/// The shard that owns session `sid` (its first two hex digits), if well formed.
pub(crate) fn owner_of(sid: &str) -> Option<usize> {
    sid.get(..2).and_then(|h| usize::from_str_radix(h, 16).ok())
}

fn new_sid(shard: usize) -> String {
    let mut random = [0u8; 15];
    // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if n != random.len() as isize {
        // Practically unreachable (no entropy at boot); fall back to time and address.
        let t = Instant::now().elapsed().as_nanos() ^ (&random as *const _ as u128);
        random[..15].copy_from_slice(&t.to_le_bytes()[..15]);
    }
    let mut sid = format!("{:02x}", shard & 0xff);
    for b in random {
        sid.push_str(&format!("{b:02x}"));
    }
    sid
}

impl Session {
    fn create(shard: &Rc<Shard>, phase: Phase, handler: Handler) -> Rc<Session> {
        let session = Rc::new(Session {
            sid: new_sid(shard.id),
            shard: Rc::clone(shard),
            phase: Cell::new(phase),
            polling: Rc::new(Outbox::new(shard.outbox_limits())),
            ws: RefCell::new(None),
            polling_get: Cell::new(false),
            polling_post: Cell::new(false),
            pong: Cell::new(true),
            handler: RefCell::new(Some(handler)),
        });
        shard
            .engine
            .map
            .borrow_mut()
            .insert(session.sid.clone(), Rc::clone(&session));
        add(&shard.stats.connections, 1);
        glommio::spawn_local(heartbeat(Rc::clone(&session))).detach();
        if let Some(Handler::SocketIo(sio)) = session.handler.borrow().as_ref() {
            sio.start(&session);
        }
        session
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

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase.get() == Phase::Closed
    }

    /// The outbox and wire encoding that outgoing packets use right now.
    pub fn transport(&self) -> (Rc<Outbox>, Wire) {
        match self.phase.get() {
            Phase::WebSocket => match &*self.ws.borrow() {
                Some(ws) => (Rc::clone(ws), Wire::SioWs),
                None => (Rc::clone(&self.polling), Wire::SioPolling),
            },
            _ => (Rc::clone(&self.polling), Wire::SioPolling),
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

    /// Ends the session: the handler is told, transports are closed, the id is forgotten.
    pub fn close(self: &Rc<Self>, reason: &str, stat: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.phase.set(Phase::Closed);
        self.shard.engine.map.borrow_mut().remove(&self.sid);
        let handler = self.handler.borrow_mut().take();
        if let Some(Handler::SocketIo(mut sio)) = handler {
            sio.on_close(self, reason);
        }
        self.polling.finish();
        if let Some(ws) = self.ws.borrow().as_ref() {
            ws.close(close::NORMAL, "");
        }
        self.shard
            .stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.shard.stats.count_close(stat);
    }

    /// Server shutdown: close with a going-away code on WebSocket.
    pub fn shut_down(self: &Rc<Self>) {
        if let Some(ws) = self.ws.borrow().as_ref() {
            ws.close(close::GOING_AWAY, "server shutting down");
        }
        self.close("server shutting down", CloseReason::Shutdown);
    }

    /// Handles one decoded Engine.IO packet from the client. `Err` closes the session.
    fn handle_packet(
        self: &Rc<Self>,
        packet: Packet<'_>,
        ws: Option<&Rc<Outbox>>,
    ) -> Result<(), CloseReason> {
        match (packet.packet_type, packet.data) {
            (PacketType::Pong, _) => self.pong.set(true),
            (PacketType::Ping, Data::Text(data)) => {
                // Only the probe is a client ping in v4; answer on the transport it came on.
                let reply = format!("3{data}");
                match (ws, data) {
                    (Some(ws), "probe") => {
                        let _ = ws.push(sio_ws_frames(&reply, &[]));
                        if self.phase.get() == Phase::Polling {
                            self.phase.set(Phase::Upgrading);
                            // End the pending poll so the client pauses polling.
                            let _ = self.polling.push(Bytes::from_static(b"6"));
                        }
                    }
                    _ => self.send(&reply, &[]),
                }
            }
            (PacketType::Upgrade, _) => match ws {
                Some(ws) if self.phase.get() == Phase::Upgrading => self.switch_to(ws),
                _ => return Err(CloseReason::Protocol),
            },
            (PacketType::Close, _) => {
                if self.phase.get() != Phase::WebSocket {
                    let _ = self.polling.push(Bytes::from_static(b"6"));
                }
                self.close("client namespace disconnect", CloseReason::Peer);
            }
            (PacketType::Noop, _) => {}
            (PacketType::Message, data) => {
                let mut handler = self.handler.borrow_mut().take();
                let result = match (&mut handler, data) {
                    (Some(Handler::SocketIo(sio)), Data::Text(text)) => sio.on_text(self, text),
                    (Some(Handler::SocketIo(sio)), Data::Binary(bin)) => {
                        sio.on_binary(self, Bytes::from(bin.into_owned()))
                    }
                    (Some(Handler::Echo), Data::Text(text)) => {
                        self.send(&format!("4{text}"), &[]);
                        Ok(())
                    }
                    (Some(Handler::Echo), Data::Binary(bin)) => {
                        self.send_binary(&bin);
                        Ok(())
                    }
                    (None, _) => Ok(()),
                };
                // Put the handler back unless the session closed meanwhile.
                if !self.is_closed() {
                    *self.handler.borrow_mut() = handler;
                } else if let Some(Handler::SocketIo(mut sio)) = handler {
                    sio.on_close(self, "server namespace disconnect");
                }
                result?;
            }
            // Open is server-to-client only.
            (PacketType::Open, _) | (PacketType::Ping, Data::Binary(_)) => {
                return Err(CloseReason::Protocol)
            }
        }
        Ok(())
    }

    /// Completes an upgrade: what waited for a poll moves to the WebSocket, in order, and
    /// every later packet and broadcast goes there.
    fn switch_to(self: &Rc<Self>, ws: &Rc<Outbox>) {
        let mut pending = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        while let std::task::Poll::Ready(Drained::Frames) =
            self.polling.poll_drain(&mut cx, &mut pending)
        {}
        *self.ws.borrow_mut() = Some(Rc::clone(ws));
        self.phase.set(Phase::WebSocket);
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
        self.polling.finish();
        if let Some(Handler::SocketIo(sio)) = self.handler.borrow().as_ref() {
            sio.rewire(self);
        }
    }
}

/// Pings every interval; closes the session when a pong does not come back in time.
async fn heartbeat(session: Rc<Session>) {
    let config = &session.shard.config;
    let interval = Duration::from_millis(config.engineio_ping_interval_ms);
    let timeout = Duration::from_millis(config.engineio_ping_timeout_ms);
    loop {
        glommio::timer::sleep(interval).await;
        if session.is_closed() {
            return;
        }
        if session.polling.overflowed() {
            session.close("transport error", CloseReason::SlowConsumer);
            return;
        }
        session.pong.set(false);
        session.send("2", &[]);
        glommio::timer::sleep(timeout).await;
        if session.is_closed() {
            return;
        }
        if !session.pong.get() {
            session.close("ping timeout", CloseReason::Idle);
            return;
        }
    }
}

/// CORS headers for a request, per the configured origins.
fn cors_headers(shard: &Shard, request: &Request) -> Vec<(&'static str, String)> {
    let origins = &shard.config.cors_origins;
    let origin = request.header("origin");
    let allowed = match origin {
        Some(o) => origins.iter().any(|a| a == "*" || a == o),
        None => false,
    };
    let mut headers = Vec::new();
    if let (true, Some(o)) = (allowed, origin) {
        headers.push(("Access-Control-Allow-Origin", o.to_owned()));
        headers.push(("Access-Control-Allow-Credentials", "true".to_owned()));
        headers.push(("Vary", "Origin".to_owned()));
    } else if origin.is_none() && origins.iter().any(|a| a == "*") {
        headers.push(("Access-Control-Allow-Origin", "*".to_owned()));
    }
    headers
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

fn error_answer(shard: &Shard, request: &Request, err: EngineError) -> Vec<u8> {
    respond(
        shard,
        request,
        (400, "Bad Request"),
        "application/json",
        err.json_body().as_bytes(),
        false,
    )
}

/// What to do with the connection after one request.
pub(crate) enum Next {
    /// Read the next request on this keep-alive connection (with these bytes already read).
    KeepAlive(Vec<u8>),
    /// The connection is done (answered and closing, or upgraded and finished).
    Done,
    /// The session lives on another shard: hand the connection over with these bytes
    /// (the whole request as read so far).
    Handoff(usize),
}

/// Serves one Engine.IO request (the head is read; `leftover` follows it).
pub(crate) async fn serve(
    shard: &Rc<Shard>,
    stream: &Stream,
    request: Request,
    leftover: Vec<u8>,
) -> Next {
    let keep_alive = !request
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"));
    if request.method == "OPTIONS" {
        let mut cors = cors_headers(shard, &request);
        cors.push((
            "Access-Control-Allow-Methods",
            "GET, POST, OPTIONS".to_owned(),
        ));
        if let Some(h) = request.header("access-control-request-headers") {
            cors.push(("Access-Control-Allow-Headers", h.to_owned()));
        }
        let extra: Vec<(&str, &str)> = cors.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = http::response(204, "No Content", "text/plain", &extra, b"", keep_alive);
        return written(stream, &answer, keep_alive, leftover).await;
    }
    let query = match Query::parse(&request.query) {
        Ok(q) => q,
        Err(e) => return fail(shard, stream, &request, e).await,
    };
    let sid = query
        .sid
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if let Some(sid) = &sid {
        match owner_of(sid) {
            Some(owner) if owner != shard.id && owner < shard.shards => {
                return Next::Handoff(owner)
            }
            Some(_) => {}
            None => return fail(shard, stream, &request, EngineError::UnknownSid).await,
        }
    }
    match (query.transport, sid) {
        (Transport::Polling, None) => {
            if request.method != "GET" {
                return fail(shard, stream, &request, EngineError::BadHandshakeMethod).await;
            }
            let Some(handler) = shard.new_engine_handler() else {
                return fail(shard, stream, &request, EngineError::Forbidden).await;
            };
            let session = Session::create(shard, Phase::Polling, handler);
            let open = handshake(shard, &session.sid, &["websocket"]);
            let answer = respond(
                shard,
                &request,
                (200, "OK"),
                "text/plain; charset=UTF-8",
                open.as_bytes(),
                keep_alive,
            );
            written(stream, &answer, keep_alive, leftover).await
        }
        (Transport::Polling, Some(sid)) => {
            let Some(session) = shard.engine.get(&sid) else {
                return fail(shard, stream, &request, EngineError::UnknownSid).await;
            };
            if session.phase.get() == Phase::WebSocket {
                return fail(shard, stream, &request, EngineError::BadRequest).await;
            }
            match request.method.as_str() {
                "GET" => poll(shard, stream, &request, &session, keep_alive, leftover).await,
                "POST" => post(shard, stream, &request, &session, keep_alive, leftover).await,
                _ => fail(shard, stream, &request, EngineError::BadHandshakeMethod).await,
            }
        }
        (Transport::Websocket, sid) => {
            let key = match request.websocket_key() {
                Ok(k) => k.to_owned(),
                Err(_) => return fail(shard, stream, &request, EngineError::BadRequest).await,
            };
            let session = match sid {
                None => None,
                Some(sid) => match shard.engine.get(&sid) {
                    Some(s) if s.phase.get() == Phase::Polling => Some(s),
                    _ => return fail(shard, stream, &request, EngineError::BadRequest).await,
                },
            };
            if stream
                .write_all(&http::upgrade_response(&key))
                .await
                .is_err()
            {
                return Next::Done;
            }
            websocket(shard, stream, session, leftover).await;
            Next::Done
        }
    }
}

fn handshake(shard: &Shard, sid: &str, upgrades: &[&str]) -> String {
    Handshake {
        sid,
        upgrades,
        ping_interval_ms: shard.config.engineio_ping_interval_ms,
        ping_timeout_ms: shard.config.engineio_ping_timeout_ms,
        max_payload: shard.config.engineio_max_payload as u64,
    }
    .open_packet()
}

async fn written(stream: &Stream, answer: &[u8], keep_alive: bool, leftover: Vec<u8>) -> Next {
    if stream.write_all(answer).await.is_err() {
        return Next::Done;
    }
    if keep_alive {
        Next::KeepAlive(leftover)
    } else {
        stream.close_lingering().await;
        Next::Done
    }
}

async fn fail(shard: &Shard, stream: &Stream, request: &Request, err: EngineError) -> Next {
    shard.stats.count_close(CloseReason::BadRequest);
    let _ = stream.write_all(&error_answer(shard, request, err)).await;
    stream.close_lingering().await;
    Next::Done
}

/// Most packets one poll answer carries. Engine.IO sets no limit, but python-engineio's
/// client refuses payloads of more than 16 packets; the rest goes in the next poll.
const MAX_PACKETS_PER_POLL: usize = 16;

/// Packets in one queued polling fragment (a binary event carries its attachments).
fn packet_count(fragment: &Bytes) -> usize {
    1 + fragment
        .iter()
        .filter(|&&b| b == engineio::RECORD_SEPARATOR)
        .count()
}

/// A long-polling GET: answer with what is queued, or wait until something is.
async fn poll(
    shard: &Rc<Shard>,
    stream: &Stream,
    request: &Request,
    session: &Rc<Session>,
    keep_alive: bool,
    leftover: Vec<u8>,
) -> Next {
    if session.polling_get.replace(true) {
        // Two GETs at once break the protocol: close the session, end the first poll with
        // a close packet, refuse the second.
        let _ = session.polling.push(Bytes::from_static(b"1"));
        session.close("transport error", CloseReason::Protocol);
        return fail(shard, stream, request, EngineError::BadRequest).await;
    }
    let mut frames = Vec::new();
    let mut leftover = leftover;
    // Wait for packets, watching the connection: a client that goes away while its poll
    // is pending has left, and its session ends now rather than at the ping timeout.
    let mut drain = std::pin::pin!(poll_fn(|cx| {
        session
            .polling
            .poll_drain_within(cx, &mut frames, MAX_PACKETS_PER_POLL, packet_count)
    }));
    let mut probe = [0u8; 64];
    let watch = async {
        match stream.read(&mut probe).await {
            Ok(n) if n > 0 => Err(n),
            _ => Ok(None),
        }
    };
    let drained =
        match futures_lite::future::or(async { Ok(Some((&mut drain).await)) }, watch).await {
            Ok(Some(drained)) => drained,
            Ok(None) => {
                session.polling_get.set(false);
                if session.phase.get() == Phase::Polling {
                    session.close("transport close", CloseReason::Peer);
                }
                return Next::Done;
            }
            // Bytes of a pipelined request: keep them for after this answer, and go on waiting.
            Err(n) => {
                leftover.extend_from_slice(&probe[..n]);
                drain.await
            }
        };
    session.polling_get.set(false);
    if session.polling.overflowed() {
        // The client polls slower than its packets arrive: a slow consumer.
        session.close("transport error", CloseReason::SlowConsumer);
    }
    if frames.is_empty() {
        debug_assert!(matches!(drained, Drained::Close(_)));
        return fail(shard, stream, request, EngineError::UnknownSid).await;
    }
    let mut body = Vec::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(engineio::RECORD_SEPARATOR);
        }
        body.extend_from_slice(f);
    }
    add(&shard.stats.bytes_out, body.len() as u64);
    let answer = respond(
        shard,
        request,
        (200, "OK"),
        "text/plain; charset=UTF-8",
        &body,
        keep_alive,
    );
    written(stream, &answer, keep_alive, leftover).await
}

/// A long-polling POST: read the payload, handle its packets, answer `ok`.
async fn post(
    shard: &Rc<Shard>,
    stream: &Stream,
    request: &Request,
    session: &Rc<Session>,
    keep_alive: bool,
    mut body: Vec<u8>,
) -> Next {
    let max = shard.config.engineio_max_payload;
    let length = match request.content_length() {
        Ok(n) => n,
        Err(_) => return fail(shard, stream, request, EngineError::BadRequest).await,
    };
    if length > max {
        session.close("transport error", CloseReason::TooBig);
        shard.stats.count_close(CloseReason::TooBig);
        let answer = respond(
            shard,
            request,
            (413, "Payload Too Large"),
            "text/plain",
            b"payload too large\n",
            false,
        );
        let _ = stream.write_all(&answer).await;
        stream.close_lingering().await;
        return Next::Done;
    }
    if session.polling_post.replace(true) {
        session.close("transport error", CloseReason::Protocol);
        return fail(shard, stream, request, EngineError::BadRequest).await;
    }
    let deadline = Instant::now() + Duration::from_millis(shard.config.handshake_timeout_ms);
    let mut chunk = vec![0u8; 16 * 1024];
    while body.len() < length {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.read_timeout(&mut chunk, left).await {
            Ok(Some(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => {
                session.polling_post.set(false);
                return Next::Done;
            }
        }
    }
    let rest = body.split_off(length);
    session.polling_post.set(false);
    add(&shard.stats.bytes_in, length as u64);
    let packets = match engineio::decode_payload(&body) {
        Ok(p) => p,
        Err(_) => {
            session.close("parse error", CloseReason::Invalid);
            return fail(shard, stream, request, EngineError::BadRequest).await;
        }
    };
    for packet in packets {
        if session.is_closed() {
            break;
        }
        if let Err(reason) = session.handle_packet(packet, None) {
            session.close("parse error", reason);
            return fail(shard, stream, request, EngineError::BadRequest).await;
        }
    }
    shard.flush_mesh();
    let answer = respond(shard, request, (200, "OK"), "text/html", b"ok", keep_alive);
    written(stream, &answer, keep_alive, rest).await
}

/// An Engine.IO WebSocket: a new session, or the upgrade of a long-polling one.
async fn websocket(
    shard: &Rc<Shard>,
    stream: &Stream,
    upgrading: Option<Rc<Session>>,
    leftover: Vec<u8>,
) {
    let outbox = Rc::new(Outbox::new(shard.outbox_limits()));
    let writer = glommio::spawn_local(write_loop(
        stream.clone(),
        Rc::clone(&outbox),
        Some(std::sync::Arc::clone(&shard.stats)),
        Duration::from_millis(shard.config.slow_consumer_grace_ms),
    ));
    let session = match upgrading {
        Some(s) => s,
        None => {
            let Some(handler) = shard.new_engine_handler() else {
                outbox.close(close::POLICY, "no engine.io service");
                writer.await;
                return;
            };
            let s = Session::create(shard, Phase::WebSocket, handler);
            *s.ws.borrow_mut() = Some(Rc::clone(&outbox));
            let _ = outbox.push(sio_ws_frames(&handshake(shard, &s.sid, &[]), &[]));
            s
        }
    };
    let mut codec = WsCodec::new(Role::Server, shard.config.engineio_max_payload.max(1024));
    codec.feed(&leftover);
    let mut buf = super::io::ReadBuf::default();
    let mut reason = ("transport close", CloseReason::Peer);
    'read: loop {
        loop {
            match codec.poll_message() {
                Ok(None) => break,
                Ok(Some(Incoming::Message(msg))) => {
                    let result = match &msg {
                        Message::Text(text) => match Packet::decode_text(text.as_str()) {
                            Ok(p) => session.handle_packet(p, Some(&outbox)),
                            Err(_) => Err(CloseReason::Invalid),
                        },
                        Message::Binary(bin) => {
                            session.handle_packet(Packet::binary(&bin[..]), Some(&outbox))
                        }
                        _ => Ok(()),
                    };
                    if let Err(stat) = result {
                        reason = ("parse error", stat);
                        outbox.close(close::NORMAL, "");
                        break 'read;
                    }
                }
                Ok(Some(Incoming::Closed(_))) => {
                    if let Some(out) = codec.take_output() {
                        let _ = outbox.push(out);
                    }
                    outbox.finish();
                    break 'read;
                }
                Err(e) => {
                    reason = (
                        "transport error",
                        if e.close_code() == close::TOO_BIG {
                            CloseReason::TooBig
                        } else {
                            CloseReason::Protocol
                        },
                    );
                    outbox.close(e.close_code(), "");
                    break 'read;
                }
            }
        }
        if let Some(out) = codec.take_output() {
            let _ = outbox.push(out);
        }
        shard.flush_mesh();
        if session.is_closed() || !outbox.is_open() {
            break;
        }
        match stream.read(buf.space()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                add(&shard.stats.bytes_in, n as u64);
                codec.feed(buf.filled(n));
                buf.adapt(n);
            }
        }
    }
    shard.flush_mesh();
    if outbox.overflowed() {
        reason = ("transport error", CloseReason::SlowConsumer);
    }
    // A WebSocket that never completed an upgrade leaves the polling session alive.
    let owns_session = session
        .ws
        .borrow()
        .as_ref()
        .is_some_and(|w| Rc::ptr_eq(w, &outbox));
    if owns_session {
        session.close(reason.0, reason.1);
    } else if session.phase.get() == Phase::Upgrading {
        session.phase.set(Phase::Polling);
    }
    shard.flush_mesh();
    outbox.finish();
    let linger = Duration::from_millis(shard.config.shutdown_grace_ms.max(100));
    futures_lite::future::or(writer, glommio::timer::sleep(linger)).await;
    stream.shutdown(Shutdown::Both);
}
