//! A native-protocol session on `/ws`: rkyv frames in, relay calls, frames out.

use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::Role;
use tungstenite::Message;

use super::io::{write_loop, ReadBuf, Stream};
use super::ws::{close, Incoming, WsCodec};
use crate::proto::native::{
    access_client, ArchivedClientFrame, ErrorCode, PayloadKind, ServerFrame, PROTOCOL_VERSION,
};
use crate::relay::{native_frame, Body, Outbox, PlayerId, Reply, Wire};
use crate::shard::Shard;
use crate::stats::{add, CloseReason};

/// A WebSocket ping with an empty payload; sent on idle connections.
const PING: &[u8] = &[0x89, 0x00];

struct Session {
    shard: Rc<Shard>,
    player: PlayerId,
    outbox: Rc<Outbox>,
    codec: WsCodec,
    welcomed: bool,
}

/// Serves one upgraded connection until it closes.
pub(super) async fn serve(
    shard: Rc<Shard>,
    stream: Stream,
    leftover: Vec<u8>,
    accepted_at: Instant,
) {
    let player = shard.next_player_id();
    let outbox = Rc::new(Outbox::new(shard.outbox_limits()));
    shard.register(player, Rc::clone(&outbox));
    add(&shard.stats.connections, 1);

    let grace = Duration::from_millis(shard.config.slow_consumer_grace_ms);
    let writer = glommio::spawn_local(write_loop(
        stream.clone(),
        Rc::clone(&outbox),
        Some(Arc::clone(&shard.stats)),
        grace,
    ));

    let mut session = Session {
        codec: WsCodec::new(Role::Server, shard.config.max_message_size),
        shard: Rc::clone(&shard),
        player,
        outbox: Rc::clone(&outbox),
        welcomed: false,
    };
    let (mut reason, server_closed) = session.run(&stream, &leftover, accepted_at).await;
    if outbox.overflowed() {
        reason = CloseReason::SlowConsumer;
    } else if shard.shutting_down() && reason == CloseReason::Peer {
        reason = CloseReason::Shutdown;
    }
    shard.stats.count_close(reason);

    if session.welcomed {
        shard.relay.borrow_mut().disconnect(player, Instant::now());
        shard.flush_mesh();
    }
    outbox.finish();
    let linger = Duration::from_millis(shard.config.shutdown_grace_ms.max(100));
    let wrote = futures_lite::future::or(
        async {
            writer.await;
            true
        },
        async {
            glommio::timer::sleep(linger).await;
            false
        },
    )
    .await;
    if wrote && server_closed {
        // We sent a close frame: read until the peer's FIN so it is not cut by a reset.
        let mut sink = [0u8; 64];
        let deadline = Instant::now() + linger;
        while let Ok(Some(n)) = stream
            .read_timeout(
                &mut sink,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await
        {
            if n == 0 || Instant::now() >= deadline {
                break;
            }
        }
    }
    stream.shutdown(Shutdown::Both);
    shard.unregister(player);
    shard
        .stats
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

impl Session {
    /// Reads until the connection ends. Returns why, and whether the server started the close.
    async fn run(
        &mut self,
        stream: &Stream,
        leftover: &[u8],
        accepted_at: Instant,
    ) -> (CloseReason, bool) {
        let config = Rc::clone(&self.shard).config.clone();
        let handshake_deadline = accepted_at + Duration::from_millis(config.handshake_timeout_ms);
        let interval = Duration::from_millis(config.ping_interval_ms);
        let idle_limit = interval + Duration::from_millis(config.ping_timeout_ms);
        let mut last_rx = Instant::now();
        let mut buf = ReadBuf::default();

        self.codec.feed(leftover);
        if let Some(reason) = self.process() {
            return (reason, true);
        }
        loop {
            if !self.outbox.is_open() {
                // Overflow or shutdown closed us from the writer's side.
                return (CloseReason::Peer, true);
            }
            let wait = if self.welcomed {
                // Wake for the next ping (every `interval` of silence) or the idle limit,
                // whichever comes first, so the close lands at the configured time.
                let silent = last_rx.elapsed();
                let to_ping = interval.saturating_sub(silent);
                let to_ping = if to_ping.is_zero() { interval } else { to_ping };
                to_ping.min(idle_limit.saturating_sub(silent))
            } else {
                handshake_deadline.saturating_duration_since(Instant::now())
            };
            match stream.read_timeout(buf.space(), wait).await {
                Ok(Some(0)) => return (CloseReason::Peer, false),
                Err(_) => return (CloseReason::Io, false),
                Ok(None) if !self.welcomed => {
                    self.outbox.close(close::POLICY, "handshake timeout");
                    return (CloseReason::HandshakeTimeout, true);
                }
                Ok(None) => {
                    // Quiet: give back buffer memory an earlier burst took.
                    buf.shrink();
                    self.codec.shrink();
                    let silent = last_rx.elapsed();
                    if silent >= idle_limit {
                        self.outbox.close(close::POLICY, "ping timeout");
                        return (CloseReason::Idle, true);
                    }
                    if silent >= interval {
                        let _ = self.outbox.push(Bytes::from_static(PING));
                    }
                }
                Ok(Some(n)) => {
                    last_rx = Instant::now();
                    add(&self.shard.stats.bytes_in, n as u64);
                    self.codec.feed(buf.filled(n));
                    buf.adapt(n);
                    if let Some(reason) = self.process() {
                        let server_closed = reason != CloseReason::Peer;
                        return (reason, server_closed);
                    }
                }
            }
        }
    }

    /// Handles every complete message buffered. `Some(reason)` ends the session.
    fn process(&mut self) -> Option<CloseReason> {
        let result = loop {
            match self.codec.poll_message() {
                Ok(None) => break None,
                Ok(Some(Incoming::Closed(_))) => {
                    self.flush_codec();
                    self.outbox.finish();
                    break Some(CloseReason::Peer);
                }
                Ok(Some(Incoming::Message(Message::Binary(bytes)))) => {
                    if let Err(reason) = self.handle_frame(bytes) {
                        break Some(reason);
                    }
                }
                Ok(Some(Incoming::Message(_))) => {
                    self.error(
                        0,
                        ErrorCode::TextFrame,
                        "text messages are not accepted on /ws; send binary frames",
                    );
                    self.outbox.close(close::UNSUPPORTED, "text frame");
                    break Some(CloseReason::Unsupported);
                }
                Err(e) => {
                    self.outbox.close(e.close_code(), &e.to_string());
                    break Some(match e.close_code() {
                        close::TOO_BIG => CloseReason::TooBig,
                        close::INVALID => CloseReason::Invalid,
                        _ => CloseReason::Protocol,
                    });
                }
            }
        };
        self.flush_codec();
        self.shard.flush_mesh();
        result
    }

    fn flush_codec(&mut self) {
        if let Some(out) = self.codec.take_output() {
            let _ = self.outbox.push(out);
        }
    }

    fn handle_frame(&mut self, bytes: Bytes) -> Result<(), CloseReason> {
        let frame = match access_client(&bytes) {
            Ok(f) => f,
            Err(e) => {
                self.error(0, ErrorCode::InvalidFrame, &e.to_string());
                self.outbox.close(close::INVALID, "invalid frame");
                return Err(CloseReason::Invalid);
            }
        };
        let now = Instant::now();
        let shard = Rc::clone(&self.shard);
        match frame {
            ArchivedClientFrame::Hello { req, version, .. } => {
                let req = req.to_native();
                if self.welcomed {
                    self.error(req, ErrorCode::NotWelcomed, "Hello was already received");
                } else if version.to_native() != PROTOCOL_VERSION {
                    self.error(
                        req,
                        ErrorCode::UnsupportedVersion,
                        &format!("this server speaks version {PROTOCOL_VERSION}"),
                    );
                    self.outbox.close(close::POLICY, "unsupported version");
                    return Err(CloseReason::Protocol);
                } else {
                    self.welcomed = true;
                    shard.relay.borrow_mut().connect(
                        self.player,
                        Wire::Native,
                        Rc::clone(&self.outbox),
                    );
                    let _ = self.outbox.push(native_frame(&ServerFrame::Welcome {
                        req,
                        player: self.player,
                        shard: shard.id as u32,
                    }));
                }
            }
            _ if !self.welcomed => {
                self.error(
                    request_id(frame),
                    ErrorCode::NotWelcomed,
                    "send Hello first",
                );
            }
            ArchivedClientFrame::Join { req, room } => {
                let req = req.to_native();
                let result = shard.relay.borrow_mut().join(
                    self.player,
                    Some(u64::from(req)),
                    room.as_str(),
                    now,
                );
                if let Err(code) = result {
                    self.error(req, code, "join refused");
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
                    self.error(req, code, "leave refused");
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
                if !crate::relay::valid_name(event.as_str(), shard.config.max_name_len) {
                    self.error(req, ErrorCode::InvalidName, "bad event name");
                    return Ok(());
                }
                let body = Body::Event {
                    from: self.player,
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
                    self.error(req, code, "send refused");
                }
            }
            ArchivedClientFrame::Ping { req, t } => {
                let _ = self.outbox.push(native_frame(&ServerFrame::Pong {
                    req: req.to_native(),
                    t: t.to_native(),
                }));
            }
        }
        Ok(())
    }

    fn error(&self, req: u32, code: ErrorCode, message: &str) {
        let reply = Reply::Error {
            req: u64::from(req),
            code,
            message: message.to_owned(),
        };
        let _ = self.outbox.push(reply.frame(Wire::Native));
    }
}

fn request_id(frame: &ArchivedClientFrame) -> u32 {
    match frame {
        ArchivedClientFrame::Hello { req, .. }
        | ArchivedClientFrame::Join { req, .. }
        | ArchivedClientFrame::Leave { req, .. }
        | ArchivedClientFrame::Send { req, .. }
        | ArchivedClientFrame::Ping { req, .. } => req.to_native(),
    }
}
