//! A connection's bounded outbound queue.
//!
//! Fan-out pushes shared frames here without blocking; the shard runtime drains it into the
//! socket once per turn. A consumer that cannot keep up overflows its own queue and is
//! closed, so it never grows memory nor slows its room (slow consumer).
//!
//! The queue knows nothing of sockets or executors. Whoever drains it registers a
//! [`ReadyQueue`] and a token with [`Outbox::notify_to`]; the first push after a drain (and
//! a close request) appends the token there once, so the runtime learns which queues have
//! something to send without scanning them all.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::proto::ws;

/// Bounds of one outbound queue (config: `outbound_queue_frames`, `outbound_queue_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most frames queued at once.
    pub frames: usize,
    /// Most bytes queued at once.
    pub bytes: usize,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the connection is now being closed as a slow consumer.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// What a drain found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing queued, the queue is open.
    Empty,
    /// Frames were moved into the caller's Vec; come back for more.
    Frames,
    /// The queue is closed and everything in it (its close frame last, if it has one) has
    /// been taken: shut the socket once it is written.
    Closed,
}

/// Opaque tokens of queues that have become ready, appended by [`Outbox`]es and taken by
/// the runtime once per turn.
#[derive(Debug, Default)]
pub struct ReadyQueue {
    tokens: RefCell<Vec<u64>>,
}

impl ReadyQueue {
    /// Appends a token.
    pub fn push(&self, token: u64) {
        self.tokens.borrow_mut().push(token);
    }

    /// Moves every token into `out`, in the order they became ready.
    pub fn take(&self, out: &mut Vec<u64>) {
        out.append(&mut self.tokens.borrow_mut());
    }

    /// Whether no token is waiting.
    pub fn is_empty(&self) -> bool {
        self.tokens.borrow().is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close was requested; what is queued (its close frame last) still goes out.
    Closing,
    /// Everything was taken after the close; nothing more is accepted.
    Done,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    notify: Option<(Rc<ReadyQueue>, u64)>,
    state: State,
    overflowed: bool,
    /// The token is in the ready queue and not drained since.
    notified: bool,
}

/// One connection's outbound queue. Shard-local (`Rc`), never shared across threads.
/// Kept small: every connection has one, most of them idle.
#[derive(Debug)]
pub struct Outbox {
    /// Most frames and bytes queued (from [`OutboxLimits`]; 4 Gi of either is beyond any
    /// sane setting).
    max_frames: u32,
    max_bytes: u32,
    inner: RefCell<Inner>,
}

impl Outbox {
    /// An empty queue with the given bounds.
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            max_frames: u32::try_from(limits.frames).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(limits.bytes).unwrap_or(u32::MAX),
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                queued_bytes: 0,
                notify: None,
                state: State::Open,
                overflowed: false,
                notified: false,
            }),
        }
    }

    /// Appends `token` to `ready` whenever this queue becomes ready (now too, if it is).
    /// `None` stops notifications.
    pub fn notify_to(&self, target: Option<(Rc<ReadyQueue>, u64)>) {
        let mut inner = self.inner.borrow_mut();
        inner.notify = target;
        inner.notified = false;
        if !inner.queue.is_empty() || inner.state == State::Closing {
            Self::signal(&mut inner);
        }
    }

    fn signal(inner: &mut Inner) {
        if !inner.notified {
            if let Some((ready, token)) = &inner.notify {
                ready.push(*token);
                inner.notified = true;
            }
        }
    }

    /// Queues a frame. On overflow the queue is dropped and a close 1008 is queued instead.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut inner = self.inner.borrow_mut();
        if inner.state != State::Open {
            return Err(PushError::Closed);
        }
        if inner.queue.len() >= self.max_frames as usize
            || inner.queued_bytes + frame.len() > self.max_bytes as usize
        {
            // What is queued would reach the peer too late to matter; free it now.
            let close = ws::close_frame(ws::close::POLICY, "slow consumer");
            inner.queued_bytes = close.len();
            inner.queue = VecDeque::from([close]);
            inner.overflowed = true;
            inner.state = State::Closing;
            Self::signal(&mut inner);
            return Err(PushError::Overflow);
        }
        inner.queued_bytes += frame.len();
        inner.queue.push_back(frame);
        Self::signal(&mut inner);
        Ok(())
    }

    /// Asks for a WebSocket close frame with `code` and `reason` after what is already
    /// queued, then the end of the connection.
    pub fn close(&self, code: u16, reason: &str) {
        self.finish_with(Some(ws::close_frame(code, reason)));
    }

    /// Asks for the end of the connection after what is already queued, with no frame of
    /// its own (an HTTP answer, or a close reply already queued by the codec).
    pub fn finish(&self) {
        self.finish_with(None);
    }

    fn finish_with(&self, last: Option<Bytes>) {
        let mut inner = self.inner.borrow_mut();
        if inner.state == State::Open {
            if let Some(frame) = last {
                // The close frame goes last, past the limits: it is what ends the queue.
                inner.queued_bytes += frame.len();
                inner.queue.push_back(frame);
            }
            inner.state = State::Closing;
            Self::signal(&mut inner);
        }
    }

    /// Whether the queue overflowed (the connection is a slow consumer).
    pub fn overflowed(&self) -> bool {
        self.inner.borrow().overflowed
    }

    /// Whether pushes are still accepted.
    pub fn is_open(&self) -> bool {
        self.inner.borrow().state == State::Open
    }

    /// Whether the close has been taken by the drainer.
    pub fn is_done(&self) -> bool {
        self.inner.borrow().state == State::Done
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.inner.borrow().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every queued frame into `out`, or reports the close once everything before it
    /// has been taken. Re-arms the notification.
    pub fn drain(&self, out: &mut Vec<Bytes>) -> Drained {
        self.drain_within(out, usize::MAX, |_| 0)
    }

    /// Like [`Outbox::drain`], but takes frames only while their summed `cost` stays within
    /// `budget` (always at least one frame); the rest waits for the next drain.
    pub fn drain_within(
        &self,
        out: &mut Vec<Bytes>,
        budget: usize,
        cost: impl Fn(&Bytes) -> usize,
    ) -> Drained {
        let mut inner = self.inner.borrow_mut();
        inner.notified = false;
        if !inner.queue.is_empty() {
            let mut spent: usize = 0;
            let before = out.len();
            while let Some(front) = inner.queue.front() {
                let c = cost(front);
                if out.len() > before && spent.saturating_add(c) > budget {
                    break;
                }
                spent = spent.saturating_add(c);
                let Some(frame) = inner.queue.pop_front() else {
                    break;
                };
                inner.queued_bytes -= frame.len();
                out.push(frame);
            }
            if !inner.queue.is_empty() {
                // More is left for the next drain: stay in the ready queue.
                Self::signal(&mut inner);
            } else if inner.queue.capacity() > 64 {
                // A burst may have grown the ring; idle connections keep only a small one.
                inner.queue = VecDeque::new();
            }
            return Drained::Frames;
        }
        match inner.state {
            State::Open => Drained::Empty,
            State::Closing | State::Done => {
                inner.state = State::Done;
                Drained::Closed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize, bytes: usize) -> Outbox {
        Outbox::new(OutboxLimits { frames, bytes })
    }

    #[test]
    fn frames_drain_in_order_then_close_follows() {
        let outbox = outbox(10, 1000);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        outbox.close(1001, "bye");
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Closed)
        );
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Drained::Frames);
        assert_eq!(out.len(), 3);
        assert_eq!(
            &out[..2],
            &[Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        // The close frame last: FIN + close opcode, then the code 1001.
        assert_eq!(out[2][0], 0x88);
        assert_eq!(&out[2][2..4], &1001u16.to_be_bytes());
        assert!(!outbox.is_done());
        assert_eq!(outbox.drain(&mut out), Drained::Closed);
        assert!(outbox.is_done());
    }

    #[test]
    fn overflow_drops_the_queue_and_closes_with_1008() {
        let outbox = outbox(2, 1000);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Overflow)
        );
        assert!(outbox.overflowed());
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Drained::Frames);
        // Only the close 1008 is left of what was queued.
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][2..4], &1008u16.to_be_bytes());
        assert_eq!(outbox.drain(&mut out), Drained::Closed);
    }

    #[test]
    fn byte_bound_counts_too() {
        let outbox = outbox(100, 3);
        outbox.push(Bytes::from_static(b"ab")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"cd")),
            Err(PushError::Overflow)
        );
    }

    #[test]
    fn the_token_is_queued_once_until_drained() {
        let ready = Rc::new(ReadyQueue::default());
        let outbox = outbox(10, 1000);
        outbox.notify_to(Some((Rc::clone(&ready), 7)));
        assert!(ready.is_empty());
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        let mut tokens = Vec::new();
        ready.take(&mut tokens);
        assert_eq!(tokens, vec![7]);
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Drained::Frames);
        assert_eq!(outbox.drain(&mut out), Drained::Empty);
        outbox.push(Bytes::from_static(b"c")).unwrap();
        outbox.close(1000, "");
        tokens.clear();
        ready.take(&mut tokens);
        assert_eq!(tokens, vec![7]);
    }

    #[test]
    fn a_partial_drain_stays_ready() {
        let ready = Rc::new(ReadyQueue::default());
        let outbox = outbox(10, 1000);
        outbox.notify_to(Some((Rc::clone(&ready), 1)));
        for _ in 0..5 {
            outbox.push(Bytes::from_static(b"x")).unwrap();
        }
        let mut tokens = Vec::new();
        ready.take(&mut tokens);
        let mut out = Vec::new();
        assert_eq!(outbox.drain_within(&mut out, 2, |_| 1), Drained::Frames);
        assert_eq!(out.len(), 2);
        tokens.clear();
        ready.take(&mut tokens);
        assert_eq!(tokens, vec![1], "the rest still waits to be drained");
    }
}
