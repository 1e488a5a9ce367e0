//! The load phase of one thread: an event loop on the thread's own io_uring (corelay's
//! [`Ring`]) that sends every load message at its due time and records every arrival.
//!
//! Why not glommio tasks: a generator must not be the limit, nor make the server look
//! expensive. Per-connection tasks cost a timer per send and a readiness poll per arrival,
//! and a poll that completes while the generator's thread runs makes the *server's* send
//! interrupt it (an inter-processor interrupt per delivery, paid on the server's CPU).
//! Here the ring is single-issuer with deferred task work: arrivals wait in the ring until
//! this loop collects them (between sends, a spinning loop checks a flag in shared memory,
//! no syscall), every arrival is a multishot receive completion into a provided buffer,
//! and the sends of one pass go to the kernel in one batch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corelay::proto::ws::{Incoming, MaskKeys};
use corelay::shard::ring::{Completion, Ring, RingSizes, Wait};
use crossbeam::channel::Sender as ChannelSender;

use super::{Shared, Snapshot, ThreadState};
use crate::accounting::{Arrival, SeqWindow};
use crate::header::TimingHeader;
use crate::metrics::record_ns;
use crate::options::Scenario;
use crate::schedule::Schedule;
use crate::transport::{reason, LoadMessage, Parts, TransportError};

/// Receive buffers of a load thread (filled incrementally): a pass's worth of arrivals
/// from thousands of connections.
const BUFFERS: u16 = 256;
const BUFFER_SIZE: u32 = 16 * 1024;

/// Longest sleep of the loop, so that it sees the stop flag.
const MAX_SLEEP: Duration = Duration::from_millis(5);

const RECV: u64 = 1 << 62;
const SEND: u64 = 2 << 62;

/// One connection in the load phase.
struct LoadConn {
    index: usize,
    parts: Parts,
    alive: bool,
    mask: MaskKeys,
    room: Option<usize>,
    /// The node (index of its URL) the connection is on.
    node: usize,
    /// Frames written since the last send.
    pending: Vec<u8>,
    /// The bytes of the send in flight (the kernel holds a pointer into them).
    inflight: Vec<u8>,
    written: usize,
    /// In `dirty`: written to, no send in flight, its send starts in this pass.
    queued: bool,
    recv_armed: bool,
    windows: HashMap<u32, SeqWindow>,
    /// The timing headers of the message being processed (kept to reuse its allocation).
    arrivals: Vec<TimingHeader>,
    /// A sender's slot in the schedule, its message and its next message's number.
    slot: u64,
    message: LoadMessage,
    next_seq: u64,
    messages: u64,
}

/// Runs the load phase until the main thread says stop; records into `state`.
pub(super) fn run(
    shared: &Shared,
    t: usize,
    conns: Vec<(usize, Parts)>,
    schedule: Option<Schedule>,
    state: &mut ThreadState,
    snaps: &ChannelSender<Snapshot>,
) -> Result<(), std::io::Error> {
    let mut ring = Ring::new(RingSizes {
        submissions: 4096,
        completions: 16384,
        buffers: BUFFERS,
        buffer_size: BUFFER_SIZE,
    })?;
    let opts = &shared.opts;
    let mut conns: Vec<LoadConn> = conns
        .into_iter()
        .map(|(index, parts)| LoadConn {
            index,
            parts,
            alive: true,
            mask: MaskKeys::new(),
            room: shared.rooms.of(index),
            node: shared.node_of(index),
            pending: Vec::new(),
            inflight: Vec::new(),
            written: 0,
            queued: false,
            recv_armed: false,
            windows: HashMap::new(),
            arrivals: Vec::new(),
            slot: 0,
            message: LoadMessage::default(),
            next_seq: 0,
            messages: 0,
        })
        .collect();

    // Due sends, earliest first: (due ns, connection).
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    if let Some(schedule) = schedule {
        for (i, c) in conns.iter_mut().enumerate() {
            if !opts.is_sender(c.index) {
                continue;
            }
            // A `matchmake` client whose ticket did not match is in no room: it sends nothing.
            let Some(room) = c.room else { continue };
            c.slot = opts.sender_slot(c.index) as u64;
            c.message = c
                .parts
                .wire
                .load_message(&shared.rooms.name(room), opts.payload);
            c.messages = schedule.messages_for(c.slot);
            if c.messages > 0 {
                due.push(Reverse((schedule.intended_ns(c.slot, 0), i)));
            }
        }
    }
    let counters = &shared.counters[t];
    if due.is_empty() {
        counters.sending_done.store(true, Ordering::Release);
    }

    // Connections with something written and no send in flight (see `queue_send`).
    let mut dirty: Vec<usize> = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        arm_recv(&mut ring, shared, state, c, i);
        // Bytes the codec already holds (read during the setup) are processed first.
        process(shared, t, c, state);
        queue_send(&mut dirty, c, i);
    }

    let interval = shared.opts.interval.as_nanos() as u64;
    let start = shared.load_start().unwrap_or(0);
    let fanout = opts.scenario == Scenario::Fanout;
    // Members other than the sender are owed each message, or every member where the
    // protocol delivers to the sender too.
    let not_owed = u32::from(!opts.protocol.delivers_to_sender());
    let spin = opts.spin.as_nanos() as u64;
    // When the loop last submitted or collected something; it spins for `spin` after that.
    let mut last_work = shared.now_ns();
    let mut completions: Vec<Completion> = Vec::new();

    loop {
        if shared.stopped() {
            break;
        }
        let now = shared.now_ns();

        // Sends that are due (senders, and only with a schedule).
        while let (Some(schedule), Some(&Reverse((at, i)))) = (schedule, due.peek()) {
            if at > now {
                break;
            }
            due.pop();
            let c = &mut conns[i];
            let seq = c.next_seq;
            c.next_seq += 1;
            if seq + 1 < c.messages {
                due.push(Reverse((schedule.intended_ns(c.slot, seq + 1), i)));
            }
            if !c.alive {
                continue;
            }
            let room = c.room.unwrap_or(0);
            let owed = shared.rooms.live(room).saturating_sub(not_owed);
            let sent_ns = shared.now_ns();
            let header = TimingHeader {
                intended_ns: at,
                sent_ns,
                sender: c.index as u32,
                seq: seq as u32,
            };
            let mask = c.mask.next_key();
            c.message.write(&header, mask, &mut c.pending);
            queue_send(&mut dirty, c, i);
            let measured = shared.in_window(at);
            if measured {
                state.tally.sent += 1;
                state.tally.expected += u64::from(owed);
                record_ns(&mut state.hist.pacing_lag, sent_ns.saturating_sub(at));
                counters.sent.fetch_add(1, Ordering::Relaxed);
                counters
                    .expected
                    .fetch_add(u64::from(owed), Ordering::Relaxed);
            }
            if fanout {
                let owed_list = state.fanout_expected.entry(room).or_default();
                let seq = seq as usize;
                if owed_list.len() <= seq {
                    owed_list.resize(seq + 1, u32::MAX);
                }
                owed_list[seq] = if measured { owed } else { u32::MAX };
            }
        }
        if due.is_empty() && !counters.sending_done.load(Ordering::Relaxed) {
            counters.sending_done.store(true, Ordering::Release);
        }

        // The interval histogram, for the main thread's progress lines.
        if now >= start + state.next_tick * interval {
            let hist = state.interval.clone();
            state.interval.reset();
            let _ = snaps.send(Snapshot {
                tick: state.next_tick,
                hist,
            });
            state.next_tick += 1;
        }

        // One send per connection with something written and nothing in flight.
        for i in dirty.drain(..) {
            conns[i].queued = false;
            start_send(&mut ring, shared, state, &mut conns[i], i);
        }

        // Queued sends and receives count as work: they go to the kernel now.
        if ring.has_work() {
            ring.enter(Wait::No)?;
            last_work = now;
        } else if now < last_work.saturating_add(spin) {
            std::hint::spin_loop();
            continue;
        } else {
            let next_due = due.peek().map(|Reverse((at, _))| *at);
            let until = next_due
                .map(|at| Duration::from_nanos(at.saturating_sub(shared.now_ns())))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            ring.enter(Wait::Sleep {
                timeout: Some(until),
                batch: Duration::ZERO,
                batch_count: 1,
            })?;
        }

        completions.clear();
        ring.reap(&mut completions);
        if !completions.is_empty() {
            last_work = shared.now_ns();
        }
        for comp in &completions {
            let i = (comp.user_data & !(3 << 62)) as usize;
            let Some(c) = conns.get_mut(i) else { continue };
            if comp.user_data & (3 << 62) == RECV {
                let more = comp.more();
                let codec = &mut c.parts.codec;
                ring.received(comp, |bytes| {
                    if !bytes.is_empty() {
                        codec.feed(bytes)
                    }
                });
                if !more {
                    c.recv_armed = false;
                }
                if comp.result > 0 || comp.result == -libc::ENOBUFS {
                    if c.alive {
                        process(shared, t, c, state);
                        queue_send(&mut dirty, c, i);
                    }
                    if !more && c.alive {
                        arm_recv(&mut ring, shared, state, c, i);
                    }
                } else if !more {
                    let why = if comp.result == 0 {
                        "connection closed by the server".to_owned()
                    } else {
                        std::io::Error::from_raw_os_error(-comp.result).to_string()
                    };
                    drop_conn(shared, c, state, &TransportError(why));
                }
            } else if comp.user_data & (3 << 62) == SEND {
                if comp.result < 0 {
                    let why = std::io::Error::from_raw_os_error(-comp.result).to_string();
                    drop_conn(shared, c, state, &TransportError(why));
                    c.inflight.clear();
                    continue;
                }
                c.written += comp.result as usize;
                if c.written < c.inflight.len() {
                    // A short write: resume where it stopped.
                    push_send(&mut ring, shared, state, c, i);
                } else {
                    c.inflight.clear();
                    c.written = 0;
                    queue_send(&mut dirty, c, i);
                }
            }
        }
    }

    // Goodbye: a close frame each, then the sockets close (dropped with `conns`).
    for c in &mut conns {
        if c.alive {
            let mask = c.mask.next_key();
            let close = corelay::proto::ws::masked_close_frame(1000, "", mask);
            // SAFETY: a blocking send of a live buffer on a socket we own.
            unsafe {
                libc::send(
                    c.parts.fd.as_raw_fd(),
                    close.as_ptr().cast(),
                    close.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                );
            }
        }
    }
    // The ring is dropped before the connections, whose buffers it may still point to.
    drop(ring);
    drop(conns);
    Ok(())
}

/// Drops a connection whose operation the ring could not take (`pushed`), with the reason,
/// rather than leave it waiting for a completion that will never come.
fn unless_pushed(
    shared: &Shared,
    state: &mut ThreadState,
    c: &mut LoadConn,
    pushed: std::io::Result<()>,
) {
    if let Err(e) = pushed {
        let why = TransportError(format!("io_uring submit: {e}"));
        drop_conn(shared, c, state, &why);
    }
}

fn arm_recv(ring: &mut Ring, shared: &Shared, state: &mut ThreadState, c: &mut LoadConn, i: usize) {
    if c.recv_armed || !c.alive {
        return;
    }
    c.recv_armed = true;
    let entry = Ring::recv_multishot(c.parts.fd.as_raw_fd()).user_data(RECV | i as u64);
    // SAFETY: the socket lives in `conns`, which outlives the ring's operations (the ring is
    // dropped first).
    let pushed = unsafe { ring.push(&entry) };
    unless_pushed(shared, state, c, pushed);
}

/// Queues a connection for this pass's sends (once) when it has something written and no
/// send in flight; a send in flight queues it again when it completes.
fn queue_send(dirty: &mut Vec<usize>, c: &mut LoadConn, i: usize) {
    if !c.queued && !c.pending.is_empty() && c.inflight.is_empty() {
        c.queued = true;
        dirty.push(i);
    }
}

/// Moves what was written into a send, unless one is in flight.
fn start_send(
    ring: &mut Ring,
    shared: &Shared,
    state: &mut ThreadState,
    c: &mut LoadConn,
    i: usize,
) {
    if !c.inflight.is_empty() || c.pending.is_empty() || !c.alive {
        return;
    }
    std::mem::swap(&mut c.inflight, &mut c.pending);
    c.written = 0;
    push_send(ring, shared, state, c, i);
}

fn push_send(
    ring: &mut Ring,
    shared: &Shared,
    state: &mut ThreadState,
    c: &mut LoadConn,
    i: usize,
) {
    let rest = &c.inflight[c.written..];
    let entry =
        Ring::send(c.parts.fd.as_raw_fd(), rest.as_ptr(), rest.len()).user_data(SEND | i as u64);
    // SAFETY: `inflight` is not touched until this send completes, and outlives the ring.
    let pushed = unsafe { ring.push(&entry) };
    unless_pushed(shared, state, c, pushed);
}

/// Handles every complete message a connection's codec holds.
fn process(shared: &Shared, t: usize, c: &mut LoadConn, state: &mut ThreadState) {
    let opts = &shared.opts;
    let fanout = opts.scenario == Scenario::Fanout;
    loop {
        let msg = match c.parts.codec.poll_message() {
            Ok(Some(Incoming::Message(m))) => m,
            Ok(Some(Incoming::Closed(_))) => {
                drop_conn(
                    shared,
                    c,
                    state,
                    &TransportError("connection closed by the server".into()),
                );
                return;
            }
            Ok(None) => break,
            Err(e) => {
                drop_conn(shared, c, state, &TransportError(e.to_string()));
                return;
            }
        };
        let mut reply = None;
        c.arrivals.clear();
        if let Err(e) = c.parts.wire.decode(msg, &mut reply, &mut c.arrivals) {
            drop_conn(shared, c, state, &e);
            return;
        }
        if let Some(text) = reply {
            let mask = c.mask.next_key();
            corelay::proto::ws::write_masked_frame(true, text.as_bytes(), mask, &mut c.pending);
        }
        if c.arrivals.is_empty() {
            continue;
        }
        let now = shared.now_ns();
        let arrivals = std::mem::take(&mut c.arrivals);
        for &header in &arrivals {
            record_arrival(shared, t, c, state, header, now, fanout);
        }
        c.arrivals = arrivals;
    }
    flush_codec(c);
}

/// Times and accounts one load message that arrived at `now`.
fn record_arrival(
    shared: &Shared,
    t: usize,
    c: &mut LoadConn,
    state: &mut ThreadState,
    header: TimingHeader,
    now: u64,
    fanout: bool,
) {
    state.tally.received_total += 1;
    let sender = header.sender as usize;
    // Only messages of this run's room members count (a shared server may carry other
    // traffic with the same event name), and a client's own only where the protocol
    // delivers them.
    let own = sender == c.index && !shared.opts.protocol.delivers_to_sender();
    if c.room.is_none() || shared.rooms.of(sender) != c.room || own {
        return;
    }
    if !shared.in_window(header.intended_ns) {
        return;
    }
    let arrival = c
        .windows
        .entry(header.sender)
        .or_default()
        .observe(header.seq);
    state.tally.record(arrival);
    if arrival == Arrival::Duplicate {
        return;
    }
    shared.counters[t].delivered.fetch_add(1, Ordering::Relaxed);
    let corrected = now.saturating_sub(header.intended_ns);
    record_ns(&mut state.hist.latency, corrected);
    // The sender's node is a function of its index, as the receiver's is.
    let by_node = if shared.node_of(sender) == c.node {
        &mut state.hist.latency_same_node
    } else {
        &mut state.hist.latency_cross_node
    };
    record_ns(by_node, corrected);
    record_ns(
        &mut state.hist.latency_uncorrected,
        now.saturating_sub(header.sent_ns),
    );
    record_ns(&mut state.interval, corrected);
    if fanout {
        if let Some(room) = c.room {
            let per_seq = state.fanout_arrivals.entry(room).or_default();
            let seq = header.seq as usize;
            if per_seq.len() <= seq {
                per_seq.resize(seq + 1, (0, 0));
            }
            let slot = &mut per_seq[seq];
            slot.0 = slot.0.max(corrected);
            slot.1 += 1;
        }
    }
}

/// The codec's own replies (pongs) go out with the next send.
fn flush_codec(c: &mut LoadConn) {
    if let Some(out) = c.parts.codec.take_output() {
        c.pending.extend_from_slice(&out);
    }
}

/// Marks a connection broken (once) and counts why.
fn drop_conn(shared: &Shared, c: &mut LoadConn, state: &mut ThreadState, error: &TransportError) {
    if !std::mem::replace(&mut c.alive, false) || shared.stopped() {
        return;
    }
    if let Some(room) = c.room {
        shared.rooms.left(room);
    }
    *state.drops.entry(reason(&error.0)).or_default() += 1;
}
