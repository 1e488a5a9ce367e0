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
    /// Within `max_bytes`, plus the one frame that ends the queue.
    queued_bytes: u32,
    notify: Option<(Rc<ReadyQueue>, u64)>,
    state: State,
    overflowed: bool,
    /// An operator's kick ended the queue ([`Outbox::kick`]): the connection counts its
    /// close as `kicked`.
    kicked: bool,
    /// The token is in the ready queue and not drained since.
    notified: bool,
}

/// One connection's outbound queue. Shard-local (`Rc`), never shared across threads.
/// Kept small: every connection has one, most of them idle.
#[derive(Debug)]
pub struct Outbox {
    /// Most frames and bytes queued (from [`OutboxLimits`]; 2 Gi of either is beyond any
    /// sane setting).
    max_frames: u32,
    max_bytes: u32,
    /// What replaces the queue when it overflows, as its last frame: a WebSocket close
    /// 1008 for a connection, a protocol's own goodbye for a queue in another format.
    overflow_frame: Option<&'static Bytes>,
    inner: RefCell<Inner>,
}

impl Outbox {
    /// An empty queue of WebSocket frames with the given bounds: on overflow it ends with
    /// a close 1008 "slow consumer".
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox::with_overflow_frame(limits, Some(&ws::SLOW_CONSUMER_CLOSE))
    }

    /// An empty queue with the given bounds that ends with `overflow_frame` (or just ends)
    /// when it overflows.
    pub fn with_overflow_frame(
        limits: OutboxLimits,
        overflow_frame: Option<&'static Bytes>,
    ) -> Outbox {
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).min(u32::MAX / 2);
        Outbox {
            max_frames: bound(limits.frames),
            max_bytes: bound(limits.bytes),
            overflow_frame,
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                queued_bytes: 0,
                notify: None,
                state: State::Open,
                overflowed: false,
                kicked: false,
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

    /// Queues a frame. On overflow what is queued is dropped and the queue ends with its
    /// overflow frame.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut inner = self.inner.borrow_mut();
        if inner.state != State::Open {
            return Err(PushError::Closed);
        }
        if inner.queue.len() >= self.max_frames as usize
            || inner.queued_bytes as usize + frame.len() > self.max_bytes as usize
        {
            // What is queued would reach the peer too late to matter; free it now.
            inner.queue = VecDeque::new();
            inner.queued_bytes = 0;
            inner.overflowed = true;
            Self::end(&mut inner, self.overflow_frame.cloned());
            return Err(PushError::Overflow);
        }
        inner.queued_bytes += frame.len() as u32;
        inner.queue.push_back(frame);
        Self::signal(&mut inner);
        Ok(())
    }

    /// Asks for a WebSocket close frame with `code` and `reason` after what is already
    /// queued, then the end of the connection.
    pub fn close(&self, code: u16, reason: &str) {
        self.end_with(ws::close_frame(code, reason));
    }

    /// Ends a WebSocket connection's queue on an operator's kick, from outside the
    /// connection (the relay): a close 1008 `kicked` after what is queued. The connection
    /// counts its close as `kicked` ([`Outbox::kicked`]).
    pub fn kick(&self) {
        let mut inner = self.inner.borrow_mut();
        if inner.state == State::Open {
            inner.kicked = true;
        }
        Self::end(
            &mut inner,
            Some(ws::close_frame(ws::close::POLICY, "kicked")),
        );
    }

    /// Whether an operator's kick ended the queue ([`Outbox::kick`]).
    pub fn kicked(&self) -> bool {
        self.inner.borrow().kicked
    }

    /// Asks for `frame` after what is already queued, then the end of the queue; `frame`
    /// goes past the limits (it is small: a close frame, a protocol's goodbye).
    pub fn end_with(&self, frame: Bytes) {
        Self::end(&mut self.inner.borrow_mut(), Some(frame));
    }

    /// Asks for the end of the connection after what is already queued, with no frame of
    /// its own (an HTTP answer, or a close reply already queued by the codec).
    pub fn finish(&self) {
        Self::end(&mut self.inner.borrow_mut(), None);
    }

    fn end(inner: &mut Inner, last: Option<Bytes>) {
        if inner.state == State::Open {
            if let Some(frame) = last {
                inner.queued_bytes = inner.queued_bytes.saturating_add(frame.len() as u32);
                inner.queue.push_back(frame);
            }
            inner.state = State::Closing;
            Self::signal(inner);
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

    /// Puts `frames`, taken by a drain but not delivered, back at the front of the queue in
    /// their order, so that the next drain takes them first. They were within the limits
    /// when queued and are taken back past them. Does nothing once the queue's end was
    /// taken: nobody drains it again.
    pub fn put_back(&self, frames: Vec<Bytes>) {
        let mut inner = self.inner.borrow_mut();
        if inner.state == State::Done || frames.is_empty() {
            return;
        }
        for frame in frames.into_iter().rev() {
            inner.queued_bytes = inner.queued_bytes.saturating_add(frame.len() as u32);
            inner.queue.push_front(frame);
        }
        Self::signal(&mut inner);
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
                inner.queued_bytes = inner.queued_bytes.saturating_sub(frame.len() as u32);
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
    fn frames_put_back_drain_first_in_their_order() {
        let outbox = outbox(10, 1000);
        for f in [&b"a"[..], b"b", b"c"] {
            outbox.push(Bytes::copy_from_slice(f)).unwrap();
        }
        let mut taken = Vec::new();
        outbox.drain_within(&mut taken, 2, |_| 1);
        outbox.push(Bytes::from_static(b"d")).unwrap();
        outbox.put_back(taken);
        let mut all = Vec::new();
        outbox.drain(&mut all);
        assert_eq!(all, [&b"a"[..], b"b", b"c", b"d"]);
        // Once the end was taken, nothing comes back.
        outbox.finish();
        assert_eq!(outbox.drain(&mut Vec::new()), Drained::Closed);
        outbox.put_back(vec![Bytes::from_static(b"x")]);
        assert!(outbox.is_empty());
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
    fn a_queue_in_another_format_ends_with_its_own_overflow_frame() {
        static GOODBYE: Bytes = Bytes::from_static(b"bye");
        let limits = OutboxLimits {
            frames: 1,
            bytes: 1000,
        };
        let outbox = Outbox::with_overflow_frame(limits, Some(&GOODBYE));
        outbox.push(Bytes::from_static(b"a")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"b")),
            Err(PushError::Overflow)
        );
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Drained::Frames);
        assert_eq!(out, vec![GOODBYE.clone()]);
        assert_eq!(outbox.drain(&mut out), Drained::Closed);
        // With none, the queue just ends.
        let outbox = Outbox::with_overflow_frame(limits, None);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        assert!(outbox.push(Bytes::from_static(b"b")).is_err());
        out.clear();
        assert_eq!(outbox.drain(&mut out), Drained::Closed);
        assert!(out.is_empty());
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
