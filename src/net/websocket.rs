//! The one WebSocket connection driver: every upgraded connection (`/ws`, the Engine.IO
//! WebSocket transport, the echo server) is a [`WebSocket`] around an application
//! ([`WsApp`]) that sees whole messages.
//!
//! The driver feeds the bytes the runtime read into the codec, hands each complete message
//! to the application, queues the codec's own replies (pongs, the close echo), keeps the
//! connection alive with pings when the application wants it, and closes: with a close
//! frame and a lingering read when the server ends it, at once when the peer did.

use std::time::{Duration, Instant};

use tungstenite::protocol::Role;
use tungstenite::Message;

use crate::proto::ws::{close, CodecError, Incoming, WsCodec};
use crate::shard::{Connection, Cx, Ended, Step};
use crate::stats::CloseReason;

/// A WebSocket ping with an empty payload, sent on quiet connections.
const PING: &[u8] = &[0x89, 0x00];

/// What the application wants after a message.
#[derive(Debug)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Close with a close frame (`code`, `reason`), counting the close as `stat`.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: &'static str,
        /// Why, for the stats.
        stat: CloseReason,
    },
}

/// Pings on silence and the idle limit.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// A ping goes out after this much silence.
    pub interval: Duration,
    /// The connection closes (1008) after this much silence.
    pub limit: Duration,
}

/// An application on a WebSocket: whole messages in, frames out through `cx.out`.
pub trait WsApp {
    /// The upgrade is answered; the connection is open.
    fn on_open(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    /// A complete data message arrived.
    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow;

    /// The application's own deadline (see [`WsApp::deadline`]) passed.
    fn on_timeout(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    /// When the application wants `on_timeout` (a handshake deadline, say).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// A queue the application waits on has something (see `Shard::wake_on`).
    fn on_wake(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    /// Pings and idle limit, if the application wants the driver to keep it alive.
    fn keepalive(&self) -> Option<Keepalive> {
        None
    }

    /// The server drains: tell the client to go elsewhere; by default, close as at
    /// shutdown.
    fn on_drain(&mut self, cx: &mut Cx<'_>) -> Flow {
        self.on_shutdown(cx)
    }

    /// The server shuts down: by default, close with 1001.
    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Close {
            code: close::GOING_AWAY,
            reason: "server shutting down",
            stat: CloseReason::Shutdown,
        }
    }

    /// The peer started the close handshake (a close frame): it is leaving on purpose, which
    /// an EOF or a silence does not say. `on_close` follows.
    fn on_peer_close(&mut self) {}

    /// The connection has ended for `why`; called once, last.
    fn on_close(&mut self, cx: &mut Cx<'_>, why: CloseReason);
}

/// An upgraded connection running `A`.
pub struct WebSocket<A: WsApp> {
    codec: WsCodec,
    app: A,
    last_rx: Instant,
    pinged: bool,
    /// Why the connection is closing, once it is (reported to the app at the end).
    ending: Option<CloseReason>,
}

impl<A: WsApp> WebSocket<A> {
    /// A server-side WebSocket with messages up to `max_message` bytes.
    pub fn new(app: A, max_message: usize) -> WebSocket<A> {
        WebSocket {
            codec: WsCodec::new(Role::Server, max_message),
            app,
            last_rx: Instant::now(),
            pinged: false,
            ending: None,
        }
    }

    fn flush_codec(&mut self, cx: &mut Cx<'_>) {
        if let Some(out) = self.codec.take_output() {
            let _ = cx.out.push(out);
        }
    }

    /// Carries out a [`Flow`] and sets the next deadline.
    fn after(&mut self, cx: &mut Cx<'_>, flow: Flow) -> Step {
        match flow {
            Flow::Continue => {
                if !cx.out.is_open() {
                    // The queue was closed under the application: it overflowed (a slow
                    // consumer), the relay ended it (an operator's kick), or the
                    // application closed it itself (a refusal).
                    self.ending.get_or_insert(if cx.out.overflowed() {
                        CloseReason::SlowConsumer
                    } else {
                        kicked_or(cx, CloseReason::Protocol)
                    });
                    return Step::Close { linger: true };
                }
                self.set_deadline(cx);
                Step::Continue
            }
            Flow::Close { code, reason, stat } => self.close(cx, code, reason, stat),
        }
    }

    fn close(&mut self, cx: &mut Cx<'_>, code: u16, reason: &str, stat: CloseReason) -> Step {
        self.ending.get_or_insert(stat);
        self.flush_codec(cx);
        cx.out.close(code, reason);
        Step::Close { linger: true }
    }

    fn set_deadline(&mut self, cx: &mut Cx<'_>) {
        let keepalive = self.app.keepalive().map(|k| {
            self.last_rx
                + if self.pinged {
                    k.limit
                } else {
                    k.interval.min(k.limit)
                }
        });
        let at = match (keepalive, self.app.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        cx.set_deadline(at);
    }

    /// Hands every complete message to the application.
    fn process(&mut self, cx: &mut Cx<'_>) -> Step {
        loop {
            match self.codec.poll_message() {
                Ok(None) => break,
                Ok(Some(Incoming::Message(msg))) => {
                    let flow = self.app.on_message(cx, msg);
                    if let Flow::Close { .. } = flow {
                        return self.after(cx, flow);
                    }
                    if !cx.out.is_open() {
                        break;
                    }
                }
                Ok(Some(Incoming::Closed(_))) => {
                    self.app.on_peer_close();
                    // The close echo is in the codec's output; send it and end.
                    self.flush_codec(cx);
                    // The peer's close may answer a kick's close frame.
                    let why = kicked_or(cx, peer_ended(cx));
                    self.ending.get_or_insert(why);
                    cx.out.finish();
                    return Step::Close { linger: false };
                }
                Err(e) => {
                    let stat = match &e {
                        CodecError::TooBig => CloseReason::TooBig,
                        CodecError::InvalidUtf8 => CloseReason::Invalid,
                        CodecError::Protocol(_) => CloseReason::Protocol,
                    };
                    return self.close(cx, e.close_code(), &e.to_string(), stat);
                }
            }
        }
        self.flush_codec(cx);
        self.after(cx, Flow::Continue)
    }
}

impl<A: WsApp> Connection for WebSocket<A> {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Step {
        self.last_rx = cx.now;
        let flow = self.app.on_open(cx);
        self.after(cx, flow)
    }

    fn on_data(&mut self, cx: &mut Cx<'_>, data: &[u8]) -> Step {
        self.last_rx = cx.now;
        self.pinged = false;
        self.codec.feed(data);
        self.process(cx)
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Step {
        if let Some(k) = self.app.keepalive() {
            let silent = cx.now.saturating_duration_since(self.last_rx);
            if silent >= k.limit {
                return self.close(cx, close::POLICY, "ping timeout", CloseReason::Idle);
            }
            if silent >= k.interval && !self.pinged {
                // Quiet: give back the buffer memory an earlier burst took.
                self.codec.shrink();
                let _ = cx.out.push(bytes::Bytes::from_static(PING));
                self.pinged = true;
            }
        }
        if self.app.deadline().is_some_and(|d| d <= cx.now) {
            let flow = self.app.on_timeout(cx);
            return self.after(cx, flow);
        }
        self.after(cx, Flow::Continue)
    }

    fn on_wake(&mut self, cx: &mut Cx<'_>) -> Step {
        let flow = self.app.on_wake(cx);
        self.after(cx, flow)
    }

    fn on_eof(&mut self, cx: &mut Cx<'_>) -> Step {
        // The peer went away without a close handshake.
        self.ending.get_or_insert(peer_ended(cx));
        Step::Close { linger: false }
    }

    fn on_drain(&mut self, cx: &mut Cx<'_>) -> Step {
        let flow = self.app.on_drain(cx);
        self.after(cx, flow)
    }

    fn on_shutdown(&mut self, cx: &mut Cx<'_>) -> Step {
        let flow = self.app.on_shutdown(cx);
        self.after(cx, flow)
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, why: Ended) {
        let stat = match why {
            Ended::SlowConsumer => CloseReason::SlowConsumer,
            Ended::Io => CloseReason::Io,
            // A queue ended from outside (the relay, on a kick) says why.
            _ => self.ending.unwrap_or_else(|| kicked_or(cx, peer_ended(cx))),
        };
        cx.set_close_reason(stat);
        self.app.on_close(cx, stat);
    }
}

/// `kicked` when an operator's kick ended the connection's queue (from outside it, see
/// [`crate::relay::Outbox::kick`]), else `otherwise`.
fn kicked_or(cx: &Cx<'_>, otherwise: CloseReason) -> CloseReason {
    if cx.out.kicked() {
        CloseReason::Kicked
    } else {
        otherwise
    }
}

/// Why a connection the peer ended counts as ended: its own choice, or the shutdown it
/// answered.
fn peer_ended(cx: &Cx<'_>) -> CloseReason {
    if cx.shard.shutting_down() {
        CloseReason::Shutdown
    } else {
        CloseReason::Peer
    }
}
