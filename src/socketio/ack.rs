//! Acks the server asked a client for ([`Socket::emit_with_ack`](super::Socket::emit_with_ack)),
//! each with a deadline, sans clock: `now` in, callbacks out.
//!
//! A client owes an answer it may never send; without a deadline its callback, and whatever
//! the callback holds, would live as long as the socket. Every pending ack therefore ends in
//! exactly one call of its callback: the client's answer, [`AckError::Timeout`] past its
//! deadline, or [`AckError::Disconnected`] when the socket goes first.

use std::time::Instant;

use crate::proto::socketio::Arg;

/// Why a server-to-client ack has no answer. The callback is called once with it and then
/// freed; the client's answer, should it still come, is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The client did not answer within the ack's timeout (`socketio_ack_timeout_ms`, or
    /// the one given to [`Socket::emit_with_ack_timeout`](super::Socket::emit_with_ack_timeout)).
    /// Retry, or treat the client as gone.
    #[error("the client did not acknowledge in time")]
    Timeout,
    /// The socket disconnected before the client answered. There is nobody to retry with.
    #[error("the socket disconnected before the client acknowledged")]
    Disconnected,
}

/// What the client's answer (or its absence) is handed to.
pub(crate) type AckCallback = Box<dyn FnOnce(Result<Vec<Arg>, AckError>)>;

/// One socket's pending acks, by id: a short list (server-side acks are rare), scanned.
#[derive(Default)]
pub(crate) struct PendingAcks {
    next_id: u64,
    pending: Vec<PendingAck>,
}

struct PendingAck {
    id: u64,
    deadline: Instant,
    callback: AckCallback,
}

impl PendingAcks {
    /// Registers `callback`, to be called by `deadline` at the latest; returns the ack id to
    /// send with the event.
    pub fn register(&mut self, deadline: Instant, callback: AckCallback) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.push(PendingAck {
            id,
            deadline,
            callback,
        });
        id
    }

    /// The callback waiting for the client's answer `id`, taken; `None` for an id that was
    /// never asked, already answered or given up.
    pub fn answer(&mut self, id: u64) -> Option<AckCallback> {
        let at = self.pending.iter().position(|a| a.id == id)?;
        Some(self.pending.swap_remove(at).callback)
    }

    /// The earliest deadline of a pending ack.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|a| a.deadline).min()
    }

    /// Takes the callbacks whose deadline has passed at `now`, for the caller to call with
    /// [`AckError::Timeout`] (after releasing any borrow: a callback may emit again).
    pub fn expire(&mut self, now: Instant) -> Vec<AckCallback> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline <= now {
                expired.push(self.pending.swap_remove(i).callback);
            } else {
                i += 1;
            }
        }
        expired
    }

    /// Takes every pending callback (the socket is gone), for the caller to call with
    /// [`AckError::Disconnected`].
    pub fn take_all(&mut self) -> Vec<AckCallback> {
        self.pending.drain(..).map(|a| a.callback).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    type Log = Rc<RefCell<Vec<(u32, Result<Vec<Arg>, AckError>)>>>;

    fn recorder(log: &Log, tag: u32) -> AckCallback {
        let log = Rc::clone(log);
        Box::new(move |result| log.borrow_mut().push((tag, result)))
    }

    #[test]
    fn every_ack_ends_in_exactly_one_call() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let log: Log = Rc::default();
        let mut acks = PendingAcks::default();
        assert_eq!(acks.deadline(), None);
        let a = acks.register(t0 + ms(100), recorder(&log, 1));
        let b = acks.register(t0 + ms(50), recorder(&log, 2));
        let _c = acks.register(t0 + ms(300), recorder(&log, 3));
        assert_ne!(a, b);
        assert_eq!(acks.deadline(), Some(t0 + ms(50)));

        // The client answers `a`; a second answer, or an unknown id, finds nothing.
        (acks.answer(a).expect("pending"))(Ok(vec![Arg::Json(1.into())]));
        assert!(acks.answer(a).is_none());
        assert!(acks.answer(999).is_none());

        // Nothing is due before its deadline; `b` is at its own.
        assert!(acks.expire(t0 + ms(49)).is_empty());
        for callback in acks.expire(t0 + ms(50)) {
            callback(Err(AckError::Timeout));
        }
        assert!(acks.answer(b).is_none(), "a late answer is ignored");
        assert_eq!(acks.deadline(), Some(t0 + ms(300)));

        // The socket goes: what is left is resolved and freed.
        for callback in acks.take_all() {
            callback(Err(AckError::Disconnected));
        }
        assert_eq!(acks.deadline(), None);
        assert_eq!(
            *log.borrow(),
            vec![
                (1, Ok(vec![Arg::Json(1.into())])),
                (2, Err(AckError::Timeout)),
                (3, Err(AckError::Disconnected)),
            ]
        );
    }

    #[test]
    fn callbacks_are_freed_once_resolved() {
        let t0 = Instant::now();
        let held = Rc::new(());
        let mut acks = PendingAcks::default();
        let keep = Rc::clone(&held);
        acks.register(t0, Box::new(move |_| drop(keep)));
        assert_eq!(Rc::strong_count(&held), 2);
        let expired = acks.expire(t0);
        drop(expired);
        // Dropped uncalled (the caller calls them; dropping is what frees them).
        assert_eq!(Rc::strong_count(&held), 1);
    }
}
