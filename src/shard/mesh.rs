//! The cross-shard mesh: one bounded lock-free queue per ordered pair of shards, and one
//! doorbell per shard.
//!
//! A shard pushes during its turn and rings the receiver's doorbell once at the end of the
//! turn, and only if the receiver is asleep (an eventfd write that the receiver's ring is
//! waiting on); a busy receiver finds the messages at its next turn with no syscall on
//! either side. When a queue is full the sender keeps the overflow in a local backlog,
//! drained in order at each turn, so a burst never drops nor reorders messages. The backlog
//! is bounded: past `mesh_backlog` messages the sending shard stops reading from its own
//! clients until the receiver catches up (backpressure instead of unbounded memory), and its
//! depth is in the stats. The bound is checked once per turn, so a turn's own output can
//! pass it.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::relay::{MeshMsg, ShardId};

/// What travels on the mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// Rooms and fan-out, for the relay.
    Relay(MeshMsg),
    /// A client connection for the receiving shard's front (the Engine.IO session it names
    /// lives there), with the bytes already read from it.
    Handoff {
        /// The socket.
        fd: OwnedFd,
        /// Its peer's address, as admission counts it.
        peer: crate::admission::PeerKey,
        /// Bytes read so far, to be parsed again by the new owner.
        read: Vec<u8>,
    },
}

/// A shard's wake-up: an eventfd its ring reads while the shard sleeps.
#[derive(Debug)]
pub struct Doorbell {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    /// A new doorbell.
    pub fn new() -> std::io::Result<Doorbell> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: fd was just created and is owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// The eventfd the owner's ring reads.
    pub(crate) fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Wakes the owner if it is asleep (called after pushing to its queues).
    pub fn ring(&self) {
        // Pairs with the fence in `prepare_to_sleep`: either the owner sees our messages
        // before it sleeps, or we see it sleeping.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.write();
        }
    }

    /// Wakes the owner whatever it is doing (shutdown).
    pub fn ring_always(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        self.write();
    }

    fn write(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own. A failure (counter
        // overflow) still leaves the eventfd readable, which is all a wake-up needs.
        unsafe {
            libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Owner side: about to sleep. After this, check the queues once more; sleep only if
    /// they are empty.
    pub(crate) fn prepare_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Owner side: awake again (or decided not to sleep).
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// The queue from one shard to another.
struct Channel {
    queue: ArrayQueue<ShardMsg>,
    /// The sender has a backlog waiting for room in `queue`: whoever frees room rings it.
    blocked: AtomicBool,
}

/// The queues of every ordered pair of shards, built once by the starting thread.
pub(crate) struct MeshQueues {
    /// `queues[from][to]`.
    queues: Vec<Vec<Option<Arc<Channel>>>>,
    doorbells: Vec<Arc<Doorbell>>,
}

impl MeshQueues {
    /// Queues of `capacity` messages between each pair of `shards` shards.
    pub fn new(shards: usize, capacity: usize) -> std::io::Result<MeshQueues> {
        let queues = (0..shards)
            .map(|from| {
                (0..shards)
                    .map(|to| {
                        (from != to).then(|| {
                            Arc::new(Channel {
                                queue: ArrayQueue::new(capacity),
                                blocked: AtomicBool::new(false),
                            })
                        })
                    })
                    .collect()
            })
            .collect();
        let doorbells = (0..shards)
            .map(|_| Doorbell::new().map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        Ok(MeshQueues { queues, doorbells })
    }

    /// Every shard's doorbell.
    pub fn doorbells(&self) -> &[Arc<Doorbell>] {
        &self.doorbells
    }

    /// The ends of shard `id`.
    pub fn mesh_for(&self, id: ShardId, backlog_limit: usize) -> Mesh {
        let shards = self.doorbells.len();
        Mesh {
            id,
            out: (0..shards)
                .map(|to| {
                    self.queues[id][to].as_ref().map(|q| Link {
                        channel: Arc::clone(q),
                        doorbell: Arc::clone(&self.doorbells[to]),
                        backlog: VecDeque::new(),
                        pushed: false,
                    })
                })
                .collect(),
            inbound: (0..shards)
                .filter_map(|from| {
                    self.queues[from][id]
                        .as_ref()
                        .map(|q| (from, Arc::clone(q), Arc::clone(&self.doorbells[from])))
                })
                .collect(),
            doorbell: Arc::clone(&self.doorbells[id]),
            backlogged: 0,
            backlog_limit,
        }
    }
}

struct Link {
    channel: Arc<Channel>,
    doorbell: Arc<Doorbell>,
    backlog: VecDeque<ShardMsg>,
    /// Something was pushed since the last flush.
    pushed: bool,
}

/// One shard's ends of the mesh.
pub struct Mesh {
    id: ShardId,
    out: Vec<Option<Link>>,
    /// From each other shard: its queue to us, and its doorbell (rung when we free room in
    /// a queue it had filled, so its backlog moves on).
    inbound: Vec<(ShardId, Arc<Channel>, Arc<Doorbell>)>,
    doorbell: Arc<Doorbell>,
    /// Messages in all the links' backlogs.
    backlogged: usize,
    backlog_limit: usize,
}

impl Mesh {
    /// This shard's doorbell.
    pub(crate) fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// Queues `msg` for shard `to`, after everything sent to it before.
    pub fn send(&mut self, to: ShardId, msg: ShardMsg) {
        debug_assert_ne!(to, self.id);
        let Some(Some(link)) = self.out.get_mut(to) else {
            return;
        };
        let msg = if link.backlog.is_empty() {
            match link.channel.queue.push(msg) {
                Ok(()) => {
                    link.pushed = true;
                    return;
                }
                Err(msg) => msg,
            }
        } else {
            msg
        };
        link.backlog.push_back(msg);
        self.backlogged += 1;
    }

    /// End of turn: moves backlogs into their queues as far as they fit and rings the
    /// doorbell of every shard that was sent something.
    pub fn flush(&mut self) {
        for link in self.out.iter_mut().flatten() {
            while let Some(msg) = link.backlog.pop_front() {
                if let Err(msg) = link.channel.queue.push(msg) {
                    link.backlog.push_front(msg);
                    break;
                }
                self.backlogged -= 1;
                link.pushed = true;
            }
            if link.backlog.is_empty() {
                if link.backlog.capacity() > 1024 {
                    link.backlog = VecDeque::new();
                }
            } else {
                // Set before this shard's last look at the queue before it sleeps (see
                // `receive`).
                link.channel.blocked.store(true, Ordering::SeqCst);
            }
            if std::mem::take(&mut link.pushed) {
                link.doorbell.ring();
            }
        }
    }

    /// Messages waiting in local backlogs (their queues were full).
    pub fn backlog(&self) -> usize {
        self.backlogged
    }

    /// Whether some backlog could move now (its queue has room): then do not sleep.
    pub fn backlog_can_move(&self) -> bool {
        self.out
            .iter()
            .flatten()
            .any(|l| !l.backlog.is_empty() && !l.channel.queue.is_full())
    }

    /// Whether the backlog is past its bound: stop taking new input until it drains.
    pub fn congested(&self) -> bool {
        self.backlog() > self.backlog_limit
    }

    /// Whether the backlog has drained enough to take input again (half the bound, so that
    /// input does not flap on and off at the bound).
    pub fn relieved(&self) -> bool {
        self.backlog() <= self.backlog_limit / 2
    }

    /// Whether any other shard has sent us something not yet received.
    pub fn has_inbound(&self) -> bool {
        self.inbound.iter().any(|(_, c, _)| !c.queue.is_empty())
    }

    /// Takes up to `max` messages from other shards, in order per sender.
    pub fn receive(&mut self, out: &mut Vec<(ShardId, ShardMsg)>, max: usize) {
        for (from, channel, sender) in &self.inbound {
            let mut n = 0;
            while n < max {
                match channel.queue.pop() {
                    Some(msg) => out.push((*from, msg)),
                    None => break,
                }
                n += 1;
            }
            // The sender may be asleep with a backlog waiting for this room. It sets
            // `blocked` before its last look at the queue: either that look sees the room
            // made here, or this sees the flag (the fences order both).
            if n > 0 {
                fence(Ordering::SeqCst);
                if channel.blocked.swap(false, Ordering::SeqCst) {
                    sender.ring();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_leave(n: u64) -> ShardMsg {
        ShardMsg::Relay(MeshMsg::Leave {
            room: "r".into(),
            player: n,
            name: n.to_string().into(),
            reason: crate::proto::native::LeaveReason::Left,
        })
    }

    fn player(msg: &ShardMsg) -> u64 {
        match msg {
            ShardMsg::Relay(MeshMsg::Leave { player, .. }) => *player,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_full_queue_overflows_into_the_backlog_in_order() {
        let queues = MeshQueues::new(2, 4).unwrap();
        let mut a = queues.mesh_for(0, 100);
        let mut b = queues.mesh_for(1, 100);
        for n in 0..10 {
            a.send(1, relay_leave(n));
        }
        assert_eq!(a.backlog(), 6);
        let mut got = Vec::new();
        b.receive(&mut got, usize::MAX);
        a.flush();
        b.receive(&mut got, usize::MAX);
        a.flush();
        b.receive(&mut got, usize::MAX);
        assert_eq!(
            got.iter().map(|(_, m)| player(m)).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(a.backlog(), 0);
    }

    #[test]
    fn freeing_a_full_queue_wakes_its_sleeping_sender() {
        let queues = MeshQueues::new(2, 1).unwrap();
        let mut a = queues.mesh_for(0, 100);
        let mut b = queues.mesh_for(1, 100);
        a.send(1, relay_leave(0));
        a.send(1, relay_leave(1));
        a.flush();
        assert_eq!(a.backlog(), 1);
        a.doorbell().prepare_to_sleep();
        let mut got = Vec::new();
        b.receive(&mut got, usize::MAX);
        assert!(
            !a.doorbell().sleeping.load(Ordering::SeqCst),
            "the sender was rung"
        );
    }

    #[test]
    fn congestion_has_hysteresis() {
        let queues = MeshQueues::new(2, 1).unwrap();
        let mut a = queues.mesh_for(0, 4);
        let mut b = queues.mesh_for(1, 4);
        for n in 0..7 {
            a.send(1, relay_leave(n));
        }
        // One in the queue, six behind it; each receive makes room for one more.
        let mut seen = Vec::new();
        let mut got = Vec::new();
        for _ in 0..5 {
            seen.push((a.backlog(), a.congested(), a.relieved()));
            b.receive(&mut got, usize::MAX);
            a.flush();
        }
        assert_eq!(
            seen,
            [
                (6, true, false),
                (5, true, false),
                (4, false, false),
                (3, false, false),
                (2, false, true),
            ]
        );
    }

    #[test]
    fn the_doorbell_rings_only_for_a_sleeper() {
        let bell = Doorbell::new().unwrap();
        let readable = |bell: &Doorbell| {
            let mut pfd = libc::pollfd {
                fd: bell.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
        };
        bell.ring();
        assert!(!readable(&bell), "an awake shard is not woken");
        bell.prepare_to_sleep();
        bell.ring();
        assert!(readable(&bell));
        // The flag was taken by the first ring: a second one writes nothing more.
        assert!(!bell.sleeping.load(Ordering::SeqCst));
    }
}
