//! The shard's run loop: one task per shard drives every connection of the shard through
//! the shard's ring, with no task, timer or poll per connection.
//!
//! The loop blocks in its own ring when there is nothing to do (with the next timer as the
//! timeout and the batch wait as minimum), not in glommio's reactor: glommio's public API
//! can neither wait on a foreign ring nor batch waits, and parking through it costs several
//! syscalls per wake-up (docs/BENCHMARKS.md has the figures). Everything a shard waits for
//! therefore arrives through this ring: socket completions, and the mesh doorbell of other
//! shards (an eventfd read).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use io_uring::{opcode, types};

use super::mesh::{Mesh, ShardMsg};
use super::ring::{Completion, Ring, Wait};
use super::{
    transmit_token, ConnId, Connection, Control, Cx, Ended, Endpoint, EndpointFactory, Shard, Step,
    TimerKey,
};
use crate::admission::{Full, Occupancy, PeerKey};
use crate::config::Config;
use crate::logs::{Throttle, Warning, WARNING_WINDOW};
use crate::relay::{Drained, Outbox, Relay, RelayLimits, ShardId};
use crate::stats::{add, set, unix_ms, CloseReason, Refusal, ShardStats, StatsRegistry};

/// Time a closing connection waits for the peer's FIN after its own, so the last bytes are
/// read by the peer rather than cut by a reset.
const LINGER: Duration = Duration::from_millis(500);

/// Pause before accepting again after running out of file descriptors: they come back only
/// as connections close.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Most frames written by one send: the kernel's limit on an iovec array.
const MAX_IOVECS: usize = 1024;

/// Most messages taken from each other shard per turn, so a flood from one shard cannot
/// keep this one from its own sockets.
const MESH_BATCH: usize = 4096;

/// Most bytes of a refused connection's request read (and dropped) before its socket is
/// closed: a request head (`max_head_size` is 8 KiB by default) that came with the
/// connection is consumed, so the close is a FIN after the `503` rather than a reset that
/// could cut it; more than this is not worth a refusal's time.
const REFUSAL_DRAIN: usize = 16 * 1024;

/// What an operation in the ring is for (the top byte of its user data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Recv = 1,
    Send = 2,
    Accept = 3,
    Doorbell = 4,
    Cancel = 5,
}

fn user_data(op: Op, conn: ConnId) -> u64 {
    (op as u64) << 56 | conn
}

fn split_user_data(data: u64) -> (u8, ConnId) {
    ((data >> 56) as u8, data & ((1 << 56) - 1))
}

/// A connection's id: its slot's generation above the slot's index.
fn conn_id(generation: u32, slot: usize) -> ConnId {
    (u64::from(generation) << 32) | slot as u64
}

fn slot_of(id: ConnId) -> usize {
    (id & 0xffff_ffff) as usize
}

/// Generations use 23 bits: the top byte of user data holds the operation and bit 63 of a
/// ready token marks a wake-up.
const GENERATION_MASK: u32 = (1 << 23) - 1;

/// What a shard thread is handed at start. `Send`: it crosses to the shard's thread once.
pub(crate) struct ShardSeed {
    pub id: ShardId,
    pub shards: usize,
    pub listener: OwnedFd,
    pub config: Arc<Config>,
    pub stats: Arc<ShardStats>,
    /// Every shard's stats, for the operator's endpoints any shard answers.
    pub registry: StatsRegistry,
    pub control: Arc<Control>,
    /// Sockets open on the server, in total and per source address (`max_connections`,
    /// `max_connections_per_ip`), shared by every shard.
    pub connections: Arc<Occupancy>,
    pub mesh: Mesh,
    pub endpoints: Arc<EndpointFactory>,
    /// This node's incarnation in a cluster (`[cluster]`): the relay shares rooms across
    /// nodes through the bridge, the mesh's end after the last shard.
    pub cluster_node: Option<u64>,
}

/// Where a connection is in its life.
enum Phase {
    /// Served by its handler.
    Open,
    /// The handler is done; what is queued goes out, then the socket is shut (after a
    /// lingering read when `linger`). Bounded by `until`.
    Flushing { linger: bool, until: Instant },
    /// Our FIN is sent; reading (and discarding) until the peer's, or `until`.
    Lingering { until: Instant },
    /// Moving to another shard once the receive is cancelled.
    HandingOff(Box<Handoff>),
    /// Shut; the slot is freed when the last operation in flight completes.
    Dead,
}

/// Where a connection being handed off goes (boxed: rare, and kept out of every
/// connection's size).
struct Handoff {
    shard: ShardId,
    read: Vec<u8>,
}

/// Frames handed to the kernel by one send, kept alive until it completes.
struct Sending {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Bytes of `frames` already written (a short write is resumed from here).
    written: usize,
    total: usize,
    /// This is the connection's last write (its close frame, if any).
    last: bool,
    /// When this output last moved: the send began, or a part of it was written.
    progress_at: Instant,
}

struct Conn {
    fd: OwnedFd,
    /// The peer's source address, as admission counts it.
    peer: PeerKey,
    handler: Option<Box<dyn Connection>>,
    out: Rc<Outbox>,
    phase: Phase,
    /// The handler's deadline.
    deadline: Option<Instant>,
    /// Earliest wheel entry pending for this connection; its sequence number is
    /// `timer_seq` (an entry with another number is stale).
    scheduled: Option<Instant>,
    timer_seq: u32,
    sending: Option<Box<Sending>>,
    recv_armed: bool,
    /// Its output waits in the delayed-flush list (`flush_delay_us`).
    delayed: bool,
    /// The handler asked for `on_written` ([`Step::AwaitWrite`]).
    await_write: bool,
    /// A write-progress check is on the wheel (`TimerKey::Write`).
    write_watched: bool,
    /// Operations in flight (their completions are still to come).
    ops: u16,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The run loop's state.
struct Driver {
    shard: Rc<Shard>,
    ring: Ring,
    mesh: Mesh,
    endpoints: Vec<Rc<dyn Endpoint>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    listener: OwnedFd,
    accepting: bool,
    bell: Box<u64>,
    bell_armed: bool,
    completions: Vec<Completion>,
    /// Input held back while the mesh is congested, in arrival order.
    stalled: VecDeque<Completion>,
    fired: Vec<TimerKey>,
    tokens: Vec<u64>,
    inbound: Vec<(ShardId, ShardMsg)>,
    /// Boxed because the kernel holds pointers into a `Sending` while it is in flight; the
    /// spares keep those allocations for reuse.
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<Sending>>,
    draining: Option<Drain>,
    /// Recent time asleep per park (moving average), to decide whether spinning pays.
    idle_gap: Duration,
    /// Where received bytes are copied before their handler sees them.
    rx_scratch: Vec<u8>,
    /// Connections whose output is held until the given time (`flush_delay_us`), in that
    /// order (one delay for all, so the list stays sorted).
    delayed: VecDeque<(Instant, ConnId)>,
    flush_delay: Duration,
    /// What a connection refused at accept reads (the front's `503`), made once.
    refusal: Option<Bytes>,
    /// The server's connection count: entered at accept; left when the socket's descriptor
    /// closes, on whichever shard holds it then (a handed-off socket's place travels with
    /// it).
    connections: Arc<Occupancy>,
    /// How long pending output may make no progress before its connection is closed
    /// (`write_timeout_ms`): a peer that stops reading must not pin a connection, its
    /// buffers and (for a poll) the packets it was answered with.
    write_timeout: Duration,
    /// When the matchmaking timer is armed for (`TimerKey::Matchmaking`).
    matchmaking_at: Option<Instant>,
    /// Why the connection being called ends, as its handler named it
    /// ([`Cx::set_close_reason`]); taken when the handler ends.
    close_reason: Option<CloseReason>,
    /// The warnings a peer can cause, a few a second (crate::logs).
    warnings: Throttle,
}

/// Runs a shard to completion on the current thread (already pinned by the caller), with
/// the ring made on this thread.
pub(crate) async fn run(seed: ShardSeed, ring: Ring) {
    let config = seed.config;
    let mut relay = Relay::new(
        seed.id,
        seed.shards,
        RelayLimits::of(&config),
        Arc::clone(&seed.stats),
    );
    relay.set_matchmaking(&config.matchmaking);
    if let Some(node) = seed.cluster_node {
        relay.set_cluster(node);
        relay.set_shared_history(config.cluster.shared_history);
        if config.cluster.matchmaking {
            relay.share_queues();
        }
    }
    let shard = Rc::new(
        Shard::new(
            seed.id,
            seed.shards,
            Arc::clone(&config),
            seed.stats,
            relay,
            seed.control,
        )
        .with_registry(seed.registry),
    );
    let endpoints = (seed.endpoints)(&shard);
    let refusal = endpoints.first().and_then(|ep| ep.refusal());
    let mut driver = Driver {
        shard,
        ring,
        mesh: seed.mesh,
        endpoints,
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        listener: seed.listener,
        accepting: false,
        bell: Box::new(0),
        bell_armed: false,
        completions: Vec::new(),
        stalled: VecDeque::new(),
        fired: Vec::new(),
        tokens: Vec::new(),
        inbound: Vec::new(),
        spare_sends: Vec::new(),
        draining: None,
        idle_gap: Duration::from_secs(1),
        rx_scratch: Vec::new(),
        delayed: VecDeque::new(),
        flush_delay: Duration::from_micros(config.flush_delay_us),
        refusal,
        connections: seed.connections,
        write_timeout: Duration::from_millis(config.write_timeout_ms),
        matchmaking_at: None,
        close_reason: None,
        warnings: Throttle::default(),
    };
    driver.run();
}

impl Driver {
    fn run(&mut self) {
        let now = Instant::now();
        self.shard.stats.set_alive(unix_ms(SystemTime::now()));
        self.arm_accept();
        self.arm_doorbell();
        self.shard
            .timers
            .borrow_mut()
            .insert(now + self.tick_period(), TimerKey::Tick);
        loop {
            let now = Instant::now();
            if self.shard.shutting_down() && self.draining.is_none() {
                self.begin_drain(now);
            }
            if self.draining.is_some() && self.advance_drain(now) {
                break;
            }
            self.turn(now);
            let wait = self.next_wait();
            let slept_from = matches!(wait, Wait::Sleep { .. }).then(Instant::now);
            if let Err(e) = self.ring.enter(wait) {
                // The ring itself failing is not recoverable for this shard.
                tracing::error!(shard = self.shard.id, error = %e, "io_uring_enter failed");
                break;
            }
            if let Some(from) = slept_from {
                self.mesh.doorbell().woke();
                // How long sleeps last decides whether spinning before the next one pays.
                self.idle_gap = (self.idle_gap * 7 + from.elapsed()) / 8;
            }
        }
        self.shard
            .stats
            .publish_latency(self.shard.relay.borrow().latency().clone());
        // The last window's count is written too, however recent.
        self.log_suppressed(Instant::now() + WARNING_WINDOW);
    }

    fn tick_period(&self) -> Duration {
        Duration::from_millis(self.shard.config.stats_publish_ms.max(10))
    }

    /// One turn: input, mesh, timers, then output.
    fn turn(&mut self, now: Instant) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        self.ring.reap(&mut completions);
        // Held-back input goes first, in order, once the mesh has room again. The backlog
        // grows only when the turn's output is carried, so it is judged once per turn.
        if !self.stalled.is_empty() && self.mesh.relieved() {
            while let Some(c) = self.stalled.pop_front() {
                self.complete(c, now);
            }
        }
        let congested = self.mesh.congested();
        for &c in &completions {
            let (op, _) = split_user_data(c.user_data);
            let input = op == Op::Recv as u8;
            if input && (!self.stalled.is_empty() || (congested && c.result > 0)) {
                // Backpressure: the bytes wait (in their buffer) until the mesh drains;
                // later input queues behind, in order.
                add(&self.shard.stats.mesh_stalls, 1);
                self.stalled.push_back(c);
                continue;
            }
            self.complete(c, now);
        }
        self.completions = completions;

        self.receive_mesh(now);
        self.run_timers(now);
        self.run_ready(now);
        self.run_delayed(now);
        self.arm_matchmaking();
        self.carry_mesh();
    }

    /// Puts the matchmaking's next deadline on the wheel when it moved earlier: a ticket
    /// came, or a pass or a timeout is due sooner than the armed one.
    fn arm_matchmaking(&mut self) {
        let Some(at) = self.shard.relay.borrow_mut().matchmaking_wakeup() else {
            return;
        };
        if self.matchmaking_at.is_none_or(|armed| at < armed) {
            self.matchmaking_at = Some(at);
            self.shard
                .timers
                .borrow_mut()
                .insert(at, TimerKey::Matchmaking);
        }
    }

    /// Flushes the connections whose output delay is over.
    fn run_delayed(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.delayed.front() {
            if at > now {
                break;
            }
            self.delayed.pop_front();
            if let Some(conn) = self.conn(id) {
                conn.delayed = false;
            }
            self.flush(id, now);
        }
    }

    /// What the next enter should wait for.
    fn next_wait(&mut self) -> Wait {
        if !self.shard.ready.is_empty()
            || (!self.stalled.is_empty() && self.mesh.relieved())
            || self.mesh.has_inbound()
            || self.mesh.backlog_can_move()
        {
            return Wait::No;
        }
        let now = Instant::now();
        let next_timer = self.shard.timers.borrow().next_deadline();
        let next_flush = self.delayed.front().map(|&(at, _)| at);
        let mut timeout = match (next_timer, next_flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|d| d.saturating_duration_since(now));
        if let Some(deadline) = self.draining.as_ref().map(Drain::next_deadline) {
            let left = deadline.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            return Wait::No;
        }
        let config = &self.shard.config;
        // Spin first when recent sleeps were short: then a wake-up costs more than the
        // spin. A shard that mostly sleeps long does not burn its core.
        let spin = Duration::from_micros(config.spin_before_park_us);
        if !spin.is_zero() && self.idle_gap <= spin * 2 {
            let until = now + spin;
            while Instant::now() < until {
                if self.ring.has_work() {
                    self.idle_gap /= 2;
                    return Wait::No;
                }
                std::hint::spin_loop();
            }
        }
        let batch = Duration::from_micros(config.batch_wait_us);
        let batch_count = config.batch_wait_count;
        self.mesh.doorbell().prepare_to_sleep();
        // Whatever another shard did before it could see us asleep is visible now.
        if self.mesh.has_inbound() || self.mesh.backlog_can_move() {
            self.mesh.doorbell().woke();
            return Wait::No;
        }
        Wait::Sleep {
            timeout,
            batch,
            batch_count,
        }
    }

    // ----- connections -----

    fn alloc(&mut self, fd: OwnedFd, peer: PeerKey, handler: Box<dyn Connection>) -> ConnId {
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.slots.len() - 1
            }
        };
        let id = conn_id(self.slots[slot].generation, slot);
        let out = Rc::new(Outbox::new(self.shard.outbox_limits()));
        out.notify_to(Some((Rc::clone(&self.shard.ready), transmit_token(id))));
        self.slots[slot].conn = Some(Conn {
            fd,
            peer,
            handler: Some(handler),
            out,
            phase: Phase::Open,
            deadline: None,
            scheduled: None,
            timer_seq: 0,
            sending: None,
            recv_armed: false,
            delayed: false,
            await_write: false,
            write_watched: false,
            ops: 0,
        });
        self.live += 1;
        id
    }

    fn slot(&mut self, id: ConnId) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(slot_of(id))?;
        (u64::from(slot.generation) == id >> 32 && slot.conn.is_some()).then_some(slot)
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slot(id)?.conn.as_mut()
    }

    /// Takes a connection out of its slot and frees the slot.
    fn free_slot(&mut self, id: ConnId) -> Option<Conn> {
        let slot = self.slot(id)?;
        let conn = slot.conn.take();
        slot.generation = (slot.generation + 1) & GENERATION_MASK;
        self.free.push(slot_of(id) as u32);
        self.live -= 1;
        conn
    }

    /// Frees a dead connection's slot once nothing is in flight; closes its socket.
    fn release_if_done(&mut self, id: ConnId) {
        let done = self
            .conn(id)
            .is_some_and(|c| c.ops == 0 && matches!(c.phase, Phase::Dead));
        if done {
            if let Some(mut conn) = self.free_slot(id) {
                if let Some(s) = conn.sending.take() {
                    self.recycle_sending(s);
                }
                // The descriptor closes as `conn` drops, here: its place is given back.
                self.connections.leave(conn.peer);
            }
        }
    }

    /// Starts a socket (accepted, or handed over) at the front, with the bytes already read.
    /// The socket holds a place in the connection count (`connections`), which is
    /// left when its descriptor closes.
    fn open(&mut self, fd: OwnedFd, peer: PeerKey, read: Vec<u8>, now: Instant) {
        let Some(handler) = self.endpoints.first().and_then(|ep| ep.open(&self.shard)) else {
            drop(fd);
            self.connections.leave(peer);
            return;
        };
        let id = self.alloc(fd, peer, handler);
        self.arm_recv(id);
        self.start(id, read, now);
    }

    /// Runs a fresh handler's `on_open`, then feeds it what was already read.
    fn start(&mut self, id: ConnId, read: Vec<u8>, now: Instant) {
        self.call(id, now, |h, cx| h.on_open(cx));
        if !read.is_empty() {
            self.call(id, now, |h, cx| h.on_data(cx, &read));
        }
    }

    fn arm_recv(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        if conn.recv_armed {
            return;
        }
        conn.recv_armed = true;
        conn.ops += 1;
        let entry = Ring::recv_multishot(conn.fd.as_raw_fd()).user_data(user_data(Op::Recv, id));
        // SAFETY: the socket stays open until the slot is released, which waits for this
        // operation's last completion (`ops`).
        self.push(&entry);
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        // SAFETY: callers keep every resource of the entry alive until its completion
        // (documented at each call).
        if let Err(e) = unsafe { self.ring.push(entry) } {
            tracing::error!(shard = self.shard.id, error = %e, "cannot submit to io_uring");
        }
    }

    /// Calls the handler of connection `id` (if it is still open) and carries out its step.
    fn call(
        &mut self,
        id: ConnId,
        now: Instant,
        f: impl FnOnce(&mut dyn Connection, &mut Cx<'_>) -> Step,
    ) {
        if !self
            .conn(id)
            .is_some_and(|c| matches!(c.phase, Phase::Open))
        {
            return;
        }
        let Some((handler, step, deadline)) = self.invoke(id, now, f) else {
            return;
        };
        let Some(conn) = self.conn(id) else { return };
        conn.deadline = deadline;
        conn.handler = Some(handler);
        self.step(id, step, now);
        self.schedule(id);
    }

    /// Takes connection `id`'s handler out and calls `f` with it and its context; hands
    /// back the handler (to put back or drop), `f`'s result and the deadline it asked for.
    fn invoke<R>(
        &mut self,
        id: ConnId,
        now: Instant,
        f: impl FnOnce(&mut dyn Connection, &mut Cx<'_>) -> R,
    ) -> Option<(Box<dyn Connection>, R, Option<Instant>)> {
        let conn = self.conn(id)?;
        let mut handler = conn.handler.take()?;
        let out = Rc::clone(&conn.out);
        let mut deadline = conn.deadline;
        let peer = conn.peer;
        let result = {
            let mut cx = Cx {
                now,
                id,
                peer,
                out: &out,
                shard: &self.shard,
                deadline: &mut deadline,
                close_reason: &mut self.close_reason,
            };
            f(&mut *handler, &mut cx)
        };
        Some((handler, result, deadline))
    }

    fn step(&mut self, id: ConnId, step: Step, now: Instant) {
        match step {
            Step::Continue => {}
            Step::AwaitWrite => {
                let Some(conn) = self.conn(id) else { return };
                conn.await_write = true;
                if conn.sending.is_none() && conn.out.is_empty() {
                    // Nothing left to write: the next flush finds the queue empty and
                    // tells the handler.
                    self.shard.ready.push(transmit_token(id));
                }
            }
            Step::Upgrade(handler, read) => {
                if let Some(conn) = self.conn(id) {
                    conn.handler = Some(handler);
                    conn.deadline = None;
                }
                self.start(id, read, now);
            }
            Step::Close { linger } => self.close(id, Ended::Handler, linger, now),
            Step::Handoff { shard, read } => self.hand_off(id, shard, read, now),
        }
    }

    /// Ends the handler's part and starts flushing, then shutting, the socket.
    fn close(&mut self, id: ConnId, why: Ended, linger: bool, now: Instant) {
        self.end_handler(id, why, now);
        let grace = Duration::from_millis(self.shard.config.slow_consumer_grace_ms);
        let Some(conn) = self.conn(id) else { return };
        if !matches!(conn.phase, Phase::Open) {
            return;
        }
        conn.out.finish();
        conn.phase = Phase::Flushing {
            linger,
            until: now + grace,
        };
        self.flush(id, now);
        self.schedule(id);
    }

    /// Tells the handler the connection has ended, and drops it.
    fn end_handler(&mut self, id: ConnId, why: Ended, now: Instant) {
        // The handler, and any deadline it still asks for, go with it.
        let ended = self.invoke(id, now, |h, cx| h.on_close(cx, why)).is_some();
        let named = self.close_reason.take();
        if ended && why != Ended::HandedOff {
            self.log_close(id, why, named, now);
        }
        if let Some(conn) = self.conn(id) {
            conn.deadline = None;
        }
    }

    /// Shuts the socket both ways: whatever is in flight completes (with an error), then
    /// the slot is freed.
    fn kill(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        if matches!(conn.phase, Phase::Dead) {
            return;
        }
        conn.phase = Phase::Dead;
        conn.deadline = None;
        // SAFETY: the fd is open (owned by the connection); shutdown never blocks.
        unsafe {
            libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
        self.release_if_done(id);
    }

    fn hand_off(&mut self, id: ConnId, shard: ShardId, read: Vec<u8>, now: Instant) {
        self.end_handler(id, Ended::HandedOff, now);
        add(&self.shard.stats.handoffs, 1);
        let Some(conn) = self.conn(id) else { return };
        conn.phase = Phase::HandingOff(Box::new(Handoff { shard, read }));
        if conn.recv_armed {
            // The receive must end before the socket moves, or it would take bytes meant
            // for the new owner; its last completion may still carry some.
            conn.ops += 1;
            let cancel = opcode::AsyncCancel::new(user_data(Op::Recv, id))
                .build()
                .user_data(user_data(Op::Cancel, id));
            // SAFETY: a cancel refers to no memory.
            self.push(&cancel);
        } else {
            self.finish_handoff(id);
        }
    }

    fn finish_handoff(&mut self, id: ConnId) {
        let ready = self
            .conn(id)
            .is_some_and(|c| c.ops == 0 && matches!(c.phase, Phase::HandingOff(_)));
        if !ready {
            return;
        }
        let Some(conn) = self.free_slot(id) else {
            return;
        };
        if let Phase::HandingOff(to) = conn.phase {
            self.mesh.send(
                to.shard,
                ShardMsg::Handoff {
                    fd: conn.fd,
                    peer: conn.peer,
                    read: to.read,
                },
            );
        }
    }

    /// Keeps a wheel entry for the connection no later than its deadline.
    fn schedule(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        let due = match conn.phase {
            Phase::Open => conn.deadline,
            Phase::Flushing { until, .. } | Phase::Lingering { until } => Some(until),
            Phase::HandingOff(_) | Phase::Dead => None,
        };
        let Some(due) = due else { return };
        if conn.scheduled.is_some_and(|at| at <= due) {
            return;
        }
        conn.timer_seq = conn.timer_seq.wrapping_add(1);
        let seq = conn.timer_seq;
        conn.scheduled = Some(due);
        self.shard
            .timers
            .borrow_mut()
            .insert(due, TimerKey::Conn(id, seq));
    }

    // ----- completions -----

    fn complete(&mut self, c: Completion, now: Instant) {
        let (op, id) = split_user_data(c.user_data);
        match op {
            x if x == Op::Recv as u8 => self.received(id, c, now),
            x if x == Op::Send as u8 => self.sent(id, c.result, now),
            x if x == Op::Accept as u8 => self.accepted(c, now),
            x if x == Op::Doorbell as u8 => {
                self.bell_armed = false;
                self.arm_doorbell();
            }
            x if x == Op::Cancel as u8 => {
                if let Some(conn) = self.conn(id) {
                    conn.ops -= 1;
                }
                self.finish_handoff(id);
                self.release_if_done(id);
            }
            _ => {}
        }
    }

    fn received(&mut self, id: ConnId, c: Completion, now: Instant) {
        let more = c.more();
        // Copied out at once so the buffer goes back to the kernel this turn.
        let mut scratch = std::mem::take(&mut self.rx_scratch);
        scratch.clear();
        let data = self
            .ring
            .received(&c, |bytes| scratch.extend_from_slice(bytes))
            .filter(|()| c.result > 0)
            .map(|()| scratch);
        if let Some(bytes) = &data {
            add(&self.shard.stats.bytes_in, bytes.len() as u64);
        }
        let out_of_buffers = !more && c.result == -libc::ENOBUFS;
        let ended = !more && !out_of_buffers;
        let Some(conn) = self.conn(id) else { return };
        if !more {
            conn.recv_armed = false;
            conn.ops -= 1;
        }
        match &mut conn.phase {
            Phase::Open => {
                if let Some(bytes) = data {
                    self.call(id, now, |h, cx| h.on_data(cx, &bytes));
                    self.rx_scratch = bytes;
                }
                if ended && c.result <= 0 {
                    self.call(id, now, |h, cx| h.on_eof(cx));
                    // A handler that ignores the EOF still cannot receive anything more;
                    // one that awaits its write learns how the write ends first (written,
                    // failed or stalled: each comes, bounded by the write timeout).
                    if self
                        .conn(id)
                        .is_some_and(|c| matches!(c.phase, Phase::Open) && !c.await_write)
                    {
                        self.close(id, Ended::Peer, false, now);
                    }
                } else if !more {
                    // Out of buffers for a moment, or a receive that ended with data.
                    self.arm_recv(id);
                }
            }
            Phase::HandingOff(to) => {
                if let Some(bytes) = data {
                    to.read.extend_from_slice(&bytes);
                }
                self.finish_handoff(id);
            }
            Phase::Flushing { .. } => {
                // Input after our close is discarded.
                if out_of_buffers {
                    self.arm_recv(id);
                }
            }
            Phase::Lingering { .. } => {
                if out_of_buffers {
                    self.arm_recv(id);
                } else if ended {
                    // The peer's FIN (or an error): done.
                    self.kill(id);
                }
            }
            Phase::Dead => self.release_if_done(id),
        }
    }

    fn accepted(&mut self, c: Completion, now: Instant) {
        if !c.more() {
            self.accepting = false;
        }
        if c.result >= 0 {
            add(&self.shard.stats.accepted, 1);
            // SAFETY: the completion hands us a new connected socket.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            let peer = peer_of(fd.as_raw_fd());
            // Admission comes before anything is read or allocated for the socket: a
            // refusal costs a few syscalls and no slot.
            match self.connections.enter(peer) {
                Ok(()) => {
                    set_nodelay(fd.as_raw_fd());
                    tracing::debug!(
                        shard = self.shard.id,
                        peer = %PeerAddr(fd.as_raw_fd(), peer),
                        "connection opened"
                    );
                    self.open(fd, peer, Vec::new(), now);
                }
                Err(full) => self.refuse(fd, peer, full, now),
            }
        } else if c.result != -libc::ECANCELED {
            add(&self.shard.stats.accept_errors, 1);
        }
        if !self.accepting && !self.draining.as_ref().is_some_and(|d| d.told) {
            if c.result >= 0 {
                self.arm_accept();
            } else {
                // EMFILE and friends clear only when connections close; don't spin.
                self.shard
                    .timers
                    .borrow_mut()
                    .insert(now + ACCEPT_RETRY, TimerKey::Accept);
            }
        }
    }

    /// Closes a socket refused at accept, after the front's answer (`503`). The answer is
    /// written at once, without the ring: a new socket's send buffer is empty, so it fits,
    /// and nothing is kept for the socket after this call.
    fn refuse(&mut self, fd: OwnedFd, peer: PeerKey, full: Full, now: Instant) {
        let why = match full {
            Full::Total => Refusal::Connections,
            Full::Peer => Refusal::ConnectionsPerIp,
        };
        self.shard.stats.count_refusal(why);
        let raw = fd.as_raw_fd();
        if tracing::enabled!(tracing::Level::WARN) && self.admit_warning(Warning::Refused, now) {
            tracing::warn!(
                shard = self.shard.id,
                peer = %PeerAddr(raw, peer),
                reason = why.name(),
                "connection refused"
            );
        }
        if let Some(answer) = &self.refusal {
            // SAFETY: `raw` is open until `fd` drops at the end; `answer` outlives the call.
            // Nonblocking, so a full buffer (which a new socket cannot have) would not
            // block the shard. What is not written is lost: the peer sees the close.
            unsafe {
                libc::send(
                    raw,
                    answer.as_ptr().cast(),
                    answer.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
                libc::shutdown(raw, libc::SHUT_WR);
            }
        }
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            // SAFETY: reads at most `sink.len()` bytes into `sink`; nonblocking.
            let n = unsafe {
                libc::recv(
                    raw,
                    sink.as_mut_ptr().cast(),
                    sink.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            drained += n as usize;
        }
        // Closed here, never having held a place in the count.
        drop(fd);
    }

    fn arm_accept(&mut self) {
        if self.accepting || self.draining.as_ref().is_some_and(|d| d.told) {
            return;
        }
        self.accepting = true;
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0));
        // SAFETY: the listener lives as long as the driver.
        self.push(&entry);
    }

    fn arm_doorbell(&mut self) {
        if self.bell_armed {
            return;
        }
        self.bell_armed = true;
        let fd = self.mesh.doorbell().fd();
        let entry = opcode::Read::new(types::Fd(fd), (&mut *self.bell as *mut u64).cast(), 8)
            .build()
            .user_data(user_data(Op::Doorbell, 0));
        // SAFETY: `bell` is boxed (stable address) and lives as long as the driver; the
        // eventfd lives in the mesh, which the driver owns.
        self.push(&entry);
    }

    // ----- output -----

    fn run_ready(&mut self, now: Instant) {
        loop {
            let mut tokens = std::mem::take(&mut self.tokens);
            tokens.clear();
            self.shard.ready.take(&mut tokens);
            if tokens.is_empty() {
                self.tokens = tokens;
                return;
            }
            for &token in &tokens {
                let id = token & !(1 << 63);
                if token >> 63 == 1 {
                    self.call(id, now, |h, cx| h.on_wake(cx));
                } else if self.flush_delay.is_zero() {
                    self.flush(id, now);
                } else {
                    self.delay_flush(id, now);
                }
            }
            self.tokens = tokens;
        }
    }

    /// Holds a connection's output for `flush_delay`, unless it is closing (a close goes
    /// out at once) or already held.
    fn delay_flush(&mut self, id: ConnId, now: Instant) {
        let delay = self.flush_delay;
        let Some(conn) = self.conn(id) else { return };
        if conn.delayed {
            return;
        }
        if !matches!(conn.phase, Phase::Open) || !conn.out.is_open() {
            self.flush(id, now);
            return;
        }
        conn.delayed = true;
        self.delayed.push_back((now + delay, id));
    }

    fn new_sending(&mut self) -> Box<Sending> {
        self.spare_sends.pop().unwrap_or_else(|| {
            Box::new(Sending {
                frames: Vec::new(),
                iovecs: Vec::new(),
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                msg: unsafe { std::mem::zeroed() },
                written: 0,
                total: 0,
                last: false,
                progress_at: Instant::now(),
            })
        })
    }

    /// Sends what a connection has queued, unless a send is already in flight (it comes
    /// back here when that one completes).
    fn flush(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn(id) else { return };
        if conn.sending.is_some() || matches!(conn.phase, Phase::Dead | Phase::HandingOff(_)) {
            return;
        }
        let out = Rc::clone(&conn.out);
        let fd = conn.fd.as_raw_fd();
        let open = matches!(conn.phase, Phase::Open);
        if open && out.overflowed() {
            // A slow consumer: its queue was dropped and a close 1008 queued in its place.
            self.close(id, Ended::SlowConsumer, false, now);
            return;
        }
        let mut s = self.new_sending();
        s.frames.clear();
        s.written = 0;
        s.last = false;
        match out.drain_within(&mut s.frames, MAX_IOVECS, |_| 1) {
            Drained::Empty => {
                self.spare_sends.push(s);
                self.written(id, now);
                return;
            }
            Drained::Frames => {}
            Drained::Closed => s.last = true,
        }
        if s.frames.is_empty() {
            // Nothing more to write, and the queue is closed.
            self.spare_sends.push(s);
            self.written_all(id, now);
            return;
        }
        s.total = s.frames.iter().map(Bytes::len).sum();
        s.progress_at = now;
        add(&self.shard.stats.writes, 1);
        let entry = build_send(fd, &mut s).user_data(user_data(Op::Send, id));
        if let Some(conn) = self.conn(id) {
            conn.ops += 1;
            conn.sending = Some(s);
        }
        // SAFETY: the frames, iovecs and header live in the boxed `Sending`, kept in the
        // connection until this send completes.
        self.push(&entry);
        self.watch_write(id, now + self.write_timeout);
    }

    /// Everything queued is written: tells a handler that asked for it.
    fn written(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn(id) else { return };
        if conn.await_write && matches!(conn.phase, Phase::Open) {
            conn.await_write = false;
            self.call(id, now, |h, cx| h.on_written(cx));
        }
    }

    /// Puts a write-progress check for the connection on the wheel at `at`, unless one is
    /// there: a busy connection costs one wheel entry per `write_timeout`, not one per send.
    fn watch_write(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conn(id) else { return };
        if conn.write_watched {
            return;
        }
        conn.write_watched = true;
        self.shard
            .timers
            .borrow_mut()
            .insert(at, TimerKey::Write(id));
    }

    /// A write-progress check: output pending with no progress for `write_timeout` means
    /// the peer stopped reading; its connection ends (counted by its handler as a slow
    /// consumer) and the socket is shut, which fails the stalled send.
    fn write_timer(&mut self, id: ConnId, now: Instant) {
        let timeout = self.write_timeout;
        let Some(conn) = self.conn(id) else { return };
        conn.write_watched = false;
        if matches!(conn.phase, Phase::Dead | Phase::HandingOff(_)) {
            return;
        }
        // Nothing in flight: the output moved; the next send watches again.
        let Some(since) = conn.sending.as_ref().map(|s| s.progress_at) else {
            return;
        };
        if since + timeout > now {
            self.watch_write(id, since + timeout);
            return;
        }
        if matches!(conn.phase, Phase::Open) {
            self.end_handler(id, Ended::SlowConsumer, now);
        }
        self.kill(id);
    }

    fn sent(&mut self, id: ConnId, result: i32, now: Instant) {
        let Some(conn) = self.conn(id) else { return };
        conn.ops -= 1;
        let Some(mut s) = conn.sending.take() else {
            return;
        };
        let fd = conn.fd.as_raw_fd();
        let dead = matches!(conn.phase, Phase::Dead);
        let open = matches!(conn.phase, Phase::Open);
        if dead {
            self.recycle_sending(s);
            self.release_if_done(id);
            return;
        }
        if result < 0 {
            // The peer is gone (reset, broken pipe).
            self.recycle_sending(s);
            if open {
                self.end_handler(id, Ended::Io, now);
            }
            self.kill(id);
            return;
        }
        add(&self.shard.stats.bytes_out, result as u64);
        s.written += result as usize;
        if result > 0 {
            s.progress_at = now;
        }
        if s.written < s.total {
            // A short write: the socket buffer filled; resume where it stopped.
            let entry = build_send(fd, &mut s).user_data(user_data(Op::Send, id));
            if let Some(conn) = self.conn(id) {
                conn.ops += 1;
                conn.sending = Some(s);
            }
            // SAFETY: as in `flush`.
            self.push(&entry);
            return;
        }
        let last = s.last;
        self.recycle_sending(s);
        if last {
            self.written_all(id, now);
        } else {
            self.flush(id, now);
        }
    }

    fn recycle_sending(&mut self, mut s: Box<Sending>) {
        s.frames.clear();
        s.iovecs.clear();
        // Keep a few for reuse; a burst's big ones are let go.
        if self.spare_sends.len() < 64 && s.frames.capacity() <= 64 {
            self.spare_sends.push(s);
        }
    }

    /// The connection's queue is closed and everything in it is written.
    fn written_all(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn(id) else { return };
        match conn.phase {
            Phase::Flushing { linger: true, .. } => {
                // SAFETY: the fd is open; shutdown never blocks.
                unsafe {
                    libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_WR);
                }
                conn.phase = Phase::Lingering {
                    until: now + LINGER,
                };
                if !conn.recv_armed {
                    // The peer's FIN already came: nothing to wait for.
                    self.kill(id);
                    return;
                }
                self.schedule(id);
            }
            Phase::Flushing { linger: false, .. } => self.kill(id),
            // The handler closed its queue without a close step (say, a close frame after
            // a protocol error): close the connection the same way.
            Phase::Open => self.close(id, Ended::Handler, true, now),
            _ => {}
        }
    }

    // ----- timers -----

    fn run_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.shard.timers.borrow_mut().advance(now, &mut fired);
        for &key in &fired {
            match key {
                TimerKey::Conn(id, seq) => self.conn_timer(id, seq, now),
                TimerKey::Endpoint(endpoint, key) => {
                    if let Some(ep) = self.endpoints.get(usize::from(endpoint)).cloned() {
                        ep.on_timer(&self.shard, key, now);
                    }
                }
                TimerKey::Tick => {
                    // `/healthz` reads it: a shard that stops turning stops stamping.
                    self.shard.stats.set_alive(unix_ms(SystemTime::now()));
                    // Detached sessions end within a tick (`stats_publish_ms`) of their
                    // window: their rooms hear "left" that late at most.
                    self.shard.relay.borrow_mut().expire(now);
                    self.shard
                        .stats
                        .publish_latency(self.shard.relay.borrow().latency().clone());
                    let stats = &self.shard.stats;
                    set(&stats.mesh_backlog, self.mesh.backlog() as u64);
                    set(&stats.ring_enters, self.ring.enters);
                    self.log_suppressed(now);
                    let next = now + self.tick_period();
                    self.shard.timers.borrow_mut().insert(next, TimerKey::Tick);
                }
                TimerKey::Matchmaking => {
                    // An entry armed before an earlier one fires too; a poll with nothing
                    // due does nothing.
                    self.matchmaking_at = None;
                    self.shard.relay.borrow_mut().poll_matchmaking(now);
                }
                TimerKey::Accept => self.arm_accept(),
                TimerKey::Write(id) => self.write_timer(id, now),
            }
        }
        self.fired = fired;
    }

    fn conn_timer(&mut self, id: ConnId, seq: u32, now: Instant) {
        let Some(conn) = self.conn(id) else { return };
        if conn.scheduled.is_none() || conn.timer_seq != seq {
            return;
        }
        conn.scheduled = None;
        match conn.phase {
            Phase::Open => match conn.deadline {
                Some(d) if d <= now => {
                    conn.deadline = None;
                    self.call(id, now, |h, cx| h.on_timeout(cx));
                }
                _ => self.schedule(id),
            },
            Phase::Flushing { until, .. } | Phase::Lingering { until } => {
                if until <= now {
                    self.kill(id);
                } else {
                    self.schedule(id);
                }
            }
            Phase::HandingOff(_) | Phase::Dead => {}
        }
    }

    // ----- logs -----

    /// Logs the end of a connection's handler: one `debug` line with why, named by the
    /// handler or else from what the runtime saw, and a throttled warning when the peer
    /// made the server close it (a slow consumer, a flooder).
    fn log_close(&mut self, id: ConnId, why: Ended, named: Option<CloseReason>, now: Instant) {
        let shutting_down = self.shard.shutting_down();
        let reason = named.or(match why {
            Ended::Peer if shutting_down => Some(CloseReason::Shutdown),
            Ended::Peer => Some(CloseReason::Peer),
            Ended::Io => Some(CloseReason::Io),
            Ended::SlowConsumer => Some(CloseReason::SlowConsumer),
            Ended::Handler | Ended::HandedOff => shutting_down.then_some(CloseReason::Shutdown),
        });
        let Some(conn) = self.conn(id) else { return };
        let peer = PeerAddr(conn.fd.as_raw_fd(), conn.peer);
        // `done`: the handler ended it with nothing wrong (an HTTP request answered).
        let name = reason.map_or("done", CloseReason::name);
        tracing::debug!(shard = self.shard.id, %peer, reason = name, "connection closed");
        let warning = match reason {
            Some(CloseReason::SlowConsumer) => Warning::SlowConsumer,
            Some(CloseReason::RateLimited) => Warning::RateLimited,
            _ => return,
        };
        if !tracing::enabled!(tracing::Level::WARN) || !self.admit_warning(warning, now) {
            return;
        }
        let shard = self.shard.id;
        match warning {
            Warning::SlowConsumer => tracing::warn!(
                shard,
                %peer,
                reason = name,
                "slow consumer closed: it did not read what it was sent"
            ),
            _ => tracing::warn!(
                shard,
                %peer,
                reason = name,
                "connection closed for exceeding its rate limits"
            ),
        }
    }

    /// Whether a warning of `kind` may be written at `now`; writes the count of the
    /// warnings left out in the window it ends, if any, first.
    fn admit_warning(&mut self, kind: Warning, now: Instant) -> bool {
        let verdict = self.warnings.admit(kind, now);
        if verdict.suppressed > 0 {
            self.log_suppressed_kind(kind, verdict.suppressed);
        }
        verdict.write
    }

    /// Writes one line for each kind of warning whose window has ended (by `now`) with
    /// warnings left out.
    fn log_suppressed(&mut self, now: Instant) {
        while let Some((kind, n)) = self.warnings.poll_suppressed(now) {
            self.log_suppressed_kind(kind, n);
        }
    }

    fn log_suppressed_kind(&self, kind: Warning, n: u64) {
        tracing::warn!(
            shard = self.shard.id,
            warning = kind.name(),
            suppressed = n,
            "suppressed {n} similar warnings"
        );
    }

    // ----- mesh -----

    fn receive_mesh(&mut self, now: Instant) {
        let mut inbound = std::mem::take(&mut self.inbound);
        inbound.clear();
        self.mesh.receive(&mut inbound, MESH_BATCH);
        for (from, msg) in inbound.drain(..) {
            match msg {
                ShardMsg::Relay(msg) => self.shard.relay.borrow_mut().handle_mesh(from, msg, now),
                ShardMsg::Handoff { fd, peer, read } => {
                    if !self.draining.as_ref().is_some_and(|d| d.told) {
                        // The socket's place in the count came with it.
                        self.open(fd, peer, read, now);
                    } else {
                        drop(fd);
                        self.connections.leave(peer);
                    }
                }
            }
        }
        self.inbound = inbound;
        // Socket.IO sessions whose recovery the mesh decided learn it by their timer, this
        // turn (timers run after the mesh).
        let wakeups = self.shard.relay.borrow_mut().take_wakeups();
        for (endpoint, key) in wakeups {
            self.shard.set_timer(endpoint, key, now);
        }
    }

    /// Carries what the relay queued for other shards, then rings their doorbells.
    fn carry_mesh(&mut self) {
        {
            let mut relay = self.shard.relay.borrow_mut();
            for (to, msg) in relay.drain_mesh() {
                add(&self.shard.stats.mesh_out, 1);
                self.mesh.send(to, ShardMsg::Relay(msg));
            }
        }
        self.mesh.flush();
    }

    // ----- shutdown -----

    /// The server was asked to stop: the drain starts (docs/OPERATIONS.md, "Drain").
    /// `/readyz` answers 503 from now on.
    fn begin_drain(&mut self, now: Instant) {
        let config = &self.shard.config;
        self.draining = Some(Drain {
            tell_at: now + Duration::from_millis(config.drain_accept_ms),
            told: false,
            close_at: now + Duration::from_millis(config.drain_accept_ms + config.drain_timeout_ms),
            stop_at: None,
        });
    }

    /// Moves the drain on at `now`; `true` when the shard is done.
    ///
    /// At `tell_at` accepting stops and every client is told to go elsewhere (native:
    /// `Draining`; Socket.IO: its transport closes, and the official clients reconnect).
    /// Connections may stay until `close_at` (or a second signal), when the rest are closed
    /// with their output flushed; the shard stops once every connection is gone, or
    /// `shutdown_grace_ms` after that.
    fn advance_drain(&mut self, now: Instant) -> bool {
        let Some(d) = &self.draining else {
            return false;
        };
        if !d.told && now >= d.tell_at {
            if let Some(d) = &mut self.draining {
                d.told = true;
            }
            if self.accepting {
                let cancel = opcode::AsyncCancel::new(user_data(Op::Accept, 0))
                    .build()
                    .user_data(user_data(Op::Cancel, SLOT_NONE));
                // SAFETY: a cancel refers to no memory.
                self.push(&cancel);
            }
            for id in self.open_connections() {
                self.call(id, now, |h, cx| h.on_drain(cx));
            }
            for ep in self.endpoints.clone() {
                ep.on_shutdown(&self.shard);
            }
            self.run_ready(now);
            self.carry_mesh();
        }
        let Some(d) = &self.draining else {
            return false;
        };
        let forced = self.shard.control().forced();
        if d.told && d.stop_at.is_none() && (now >= d.close_at || forced) {
            if let Some(d) = &mut self.draining {
                d.stop_at = Some(now + Duration::from_millis(self.shard.config.shutdown_grace_ms));
            }
            for id in self.open_connections() {
                self.call(id, now, |h, cx| h.on_shutdown(cx));
            }
            self.run_ready(now);
            self.carry_mesh();
        }
        let Some(d) = &self.draining else {
            return false;
        };
        (d.told && self.live == 0) || d.stop_at.is_some_and(|at| now >= at)
    }

    /// Every connection its handler still serves.
    fn open_connections(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.conn
                    .as_ref()
                    .is_some_and(|c| matches!(c.phase, Phase::Open))
            })
            .map(|(i, s)| conn_id(s.generation, i))
            .collect()
    }
}

/// Where a shard's drain is.
struct Drain {
    /// When accepting stops and the clients are told to go (`drain_accept_ms` after the
    /// request).
    tell_at: Instant,
    told: bool,
    /// When the connections still open are closed (`drain_timeout_ms` after `tell_at`).
    close_at: Instant,
    /// Once they were: when the shard stops whatever is left (`shutdown_grace_ms` later).
    stop_at: Option<Instant>,
}

impl Drain {
    /// The next instant the drain has something to do.
    fn next_deadline(&self) -> Instant {
        match (self.told, self.stop_at) {
            (false, _) => self.tell_at,
            (true, None) => self.close_at,
            (true, Some(at)) => at,
        }
    }
}

/// A connection id that names no slot (for operations that belong to no connection).
const SLOT_NONE: ConnId = 0xffff_ffff;

impl Drop for Driver {
    fn drop(&mut self) {
        // Sockets still open at the end are shut so their peers see it at once, and their
        // places given back (other shards may still be draining).
        for slot in &self.slots {
            if let Some(conn) = &slot.conn {
                // SAFETY: the fd is open until the slot drops right after.
                unsafe {
                    libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR);
                }
                self.connections.leave(conn.peer);
            }
        }
    }
}

/// A send of `s`'s frames from `s.written` on: one buffer as a plain send, several as one
/// `sendmsg` over an iovec array (the kernel gathers them; no copy here).
fn build_send(fd: RawFd, s: &mut Sending) -> io_uring::squeue::Entry {
    let mut skip = s.written;
    s.iovecs.clear();
    for f in &s.frames {
        if skip >= f.len() {
            skip -= f.len();
            continue;
        }
        s.iovecs.push(libc::iovec {
            iov_base: f[skip..].as_ptr() as *mut libc::c_void,
            iov_len: f.len() - skip,
        });
        skip = 0;
    }
    if let [one] = s.iovecs.as_slice() {
        return Ring::send(fd, one.iov_base.cast(), one.iov_len);
    }
    s.msg.msg_iov = s.iovecs.as_mut_ptr();
    s.msg.msg_iovlen = s.iovecs.len();
    opcode::SendMsg::new(types::Fd(fd), &s.msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
}

/// The admission key of a socket's peer address.
fn peer_of(fd: RawFd) -> PeerKey {
    peer_addr(fd).map_or(PeerKey::unknown(), |a| PeerKey::of(a.ip()))
}

/// A socket's peer address: `None` when it is not TCP/IP, or no longer connected (a
/// connection the peer reset has no peer any more).
fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid, and getpeername writes at most `len`
    // bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ok = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } == 0;
    if !ok {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes());
            Some(SocketAddr::new(ip, u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A socket's peer in a log line: its address, read only when the line is written (one
/// `getpeername`, never on a line the level leaves out), or the admission key's address
/// when the socket no longer has a peer.
struct PeerAddr(RawFd, PeerKey);

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match peer_addr(self.0) {
            Some(addr) => addr.fmt(f),
            None => self.1.fmt(f),
        }
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value. Game traffic is small messages that
    // must leave now, not be batched by Nagle.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// What an idle connection costs is mostly these structs (docs/BENCHMARKS.md, idle
    /// memory): a field added to one of them is paid 15,000 times on a loaded shard, so a
    /// change that grows them should be a decision, not an accident.
    #[test]
    fn per_connection_structures_stay_small() {
        assert!(
            // 120 since the peer's address key (8 bytes) is kept for the per-address caps.
            size_of::<super::Slot>() <= 120,
            "{}",
            size_of::<super::Slot>()
        );
        assert!(size_of::<crate::relay::Outbox>() <= 80);
        assert!(size_of::<crate::proto::ws::WsCodec>() <= 88);
        assert!(
            size_of::<crate::net::websocket::WebSocket<crate::net::native::NativeSession>>() <= 192
        );
        // 80 since a session may wait for a recovery (8 bytes: the Engine.IO session it is
        // part of stays in the allocator's 320-byte class with its `Rc` counts).
        assert!(size_of::<crate::socketio::SioSession>() <= 80);
    }
}
