//! A connection's bounded outbound queue.
//!
//! Fan-out pushes shared frames here without blocking; the connection's writer drains it.
//! A consumer that cannot keep up overflows its own queue and is closed, so it never grows
//! memory nor slows its room (DESIGN.md, "slow consumer").

use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

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

/// What the writer should do next.
#[derive(Debug)]
pub enum Drained {
    /// Write these frames (moved into the caller's Vec), then come back.
    Frames,
    /// Write a close frame with this code and reason (none when the close was already
    /// answered through the codec), then shut the socket.
    Close(Option<(u16, String)>),
}

#[derive(Debug)]
enum State {
    Open,
    /// A close was requested; frames queued before it still go out first.
    Closing(Option<(u16, String)>),
    /// The writer took the close; nothing more is accepted.
    Done,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    state: State,
    overflowed: bool,
    writer: Option<Waker>,
    stalled_writer: Option<Waker>,
}

/// One connection's outbound queue. Shard-local (`Rc`), never shared across threads.
#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    inner: RefCell<Inner>,
}

impl Outbox {
    /// An empty queue with the given bounds.
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            limits,
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                queued_bytes: 0,
                state: State::Open,
                overflowed: false,
                writer: None,
                stalled_writer: None,
            }),
        }
    }

    /// Queues a frame. On overflow the queue is dropped and a close 1008 is queued instead.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut inner = self.inner.borrow_mut();
        if !matches!(inner.state, State::Open) {
            return Err(PushError::Closed);
        }
        if inner.queue.len() >= self.limits.frames
            || inner.queued_bytes + frame.len() > self.limits.bytes
        {
            // What is queued would reach the peer too late to matter; free it now.
            inner.queue.clear();
            inner.queued_bytes = 0;
            inner.overflowed = true;
            inner.state = State::Closing(Some((
                crate::net::ws::close::POLICY,
                "slow consumer".into(),
            )));
            wake(&mut inner.writer);
            wake(&mut inner.stalled_writer);
            return Err(PushError::Overflow);
        }
        inner.queued_bytes += frame.len();
        inner.queue.push_back(frame);
        wake(&mut inner.writer);
        Ok(())
    }

    /// Asks the writer to send a close frame after what is already queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.finish_with(Some((code, reason.to_owned())));
    }

    /// Asks the writer to shut the socket after what is already queued, with no close
    /// frame of its own (the close reply is already queued).
    pub fn finish(&self) {
        self.finish_with(None);
    }

    fn finish_with(&self, close: Option<(u16, String)>) {
        let mut inner = self.inner.borrow_mut();
        if matches!(inner.state, State::Open) {
            inner.state = State::Closing(close);
            wake(&mut inner.writer);
        }
    }

    /// Whether the queue overflowed (the connection is a slow consumer).
    pub fn overflowed(&self) -> bool {
        self.inner.borrow().overflowed
    }

    /// Whether pushes are still accepted.
    pub fn is_open(&self) -> bool {
        matches!(self.inner.borrow().state, State::Open)
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.inner.borrow().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writer side: moves queued frames into `out`, or reports the close to send.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Drained> {
        let mut inner = self.inner.borrow_mut();
        if !inner.queue.is_empty() {
            out.extend(inner.queue.drain(..));
            inner.queued_bytes = 0;
            // A burst may have grown the ring; idle connections keep only a small one.
            if inner.queue.capacity() > 64 {
                inner.queue.shrink_to(16);
            }
            return Poll::Ready(Drained::Frames);
        }
        match std::mem::replace(&mut inner.state, State::Done) {
            State::Closing(close) => Poll::Ready(Drained::Close(close)),
            State::Done => Poll::Ready(Drained::Close(None)),
            State::Open => {
                inner.state = State::Open;
                inner.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Like [`Outbox::poll_drain`], but takes frames only while their summed `cost` stays
    /// within `budget` (always at least one frame); the rest waits for the next drain.
    pub fn poll_drain_within(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        budget: usize,
        cost: impl Fn(&Bytes) -> usize,
    ) -> Poll<Drained> {
        let mut inner = self.inner.borrow_mut();
        if !inner.queue.is_empty() {
            let mut spent = 0;
            while let Some(front) = inner.queue.front() {
                let c = cost(front);
                if !out.is_empty() && spent + c > budget {
                    break;
                }
                spent += c;
                let frame = inner.queue.pop_front().expect("front exists");
                inner.queued_bytes -= frame.len();
                out.push(frame);
            }
            return Poll::Ready(Drained::Frames);
        }
        drop(inner);
        self.poll_drain(cx, out)
    }

    /// Ready once the queue has overflowed (the writer races its writes against this).
    pub fn poll_overflow(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.borrow_mut();
        if inner.overflowed {
            Poll::Ready(())
        } else {
            inner.stalled_writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn frames_drain_in_order_then_close_follows() {
        let outbox = Outbox::new(OutboxLimits {
            frames: 10,
            bytes: 1000,
        });
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        outbox.close(1001, "bye");
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Closed)
        );
        let mut out = Vec::new();
        assert!(matches!(
            outbox.poll_drain(&mut cx(), &mut out),
            Poll::Ready(Drained::Frames)
        ));
        assert_eq!(
            out,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(matches!(
            outbox.poll_drain(&mut cx(), &mut out),
            Poll::Ready(Drained::Close(Some((1001, _))))
        ));
    }

    #[test]
    fn overflow_drops_the_queue_and_closes_with_1008() {
        let outbox = Outbox::new(OutboxLimits {
            frames: 2,
            bytes: 1000,
        });
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Overflow)
        );
        assert!(outbox.overflowed());
        assert!(outbox.poll_overflow(&mut cx()).is_ready());
        let mut out = Vec::new();
        assert!(matches!(
            outbox.poll_drain(&mut cx(), &mut out),
            Poll::Ready(Drained::Close(Some((1008, _))))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn byte_bound_counts_too() {
        let outbox = Outbox::new(OutboxLimits {
            frames: 100,
            bytes: 3,
        });
        outbox.push(Bytes::from_static(b"ab")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"cd")),
            Err(PushError::Overflow)
        );
    }
}
