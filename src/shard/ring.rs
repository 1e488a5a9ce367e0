//! The shard's io_uring: every socket operation of the shard goes through it, so that one
//! `io_uring_enter` per turn submits all of the turn's sends and collects everything that
//! arrived meanwhile.
//!
//! - Receives are multishot and read into a ring of provided buffers: a connection arms its
//!   receive once, and each message that arrives becomes a completion with no syscall and no
//!   poll re-armed per message. What a buffer holds is copied out (the driver lends it to
//!   the connection's handler from a scratch buffer) and the buffer given back within the
//!   turn, so the ring is small and shared by every connection of the shard.
//! - The ring is single-issuer with deferred task work: completions are produced only when
//!   the shard enters the kernel to collect them, never by interrupting it mid-turn (no
//!   inter-processor interrupt per arriving packet).
//! - Waiting takes a timeout (the next timer) and a minimum wait: a lightly loaded shard
//!   sleeps through the first arrivals of a batch for at most that long, then handles the
//!   batch in one turn (see `batch_wait_us` in tuning/README.md).
//!
//! The load generator drives its connections through the same ring.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// The provided-buffer group of the shard's receives (one group per ring).
const BUFFER_GROUP: u16 = 0;

/// `IOU_PBUF_RING_INC` (include/uapi/linux/io_uring.h, Linux 6.12): buffers of the ring are
/// consumed incrementally.
const PBUF_RING_INC: u16 = 2;

/// `IORING_CQE_F_BUF_MORE`: the kernel goes on filling this completion's buffer.
const CQE_F_BUF_MORE: u32 = 1 << 4;

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// What the operation was for (see `Op` in the runtime).
    pub user_data: u64,
    /// The operation's result: bytes, a file descriptor, or `-errno`.
    pub result: i32,
    /// Completion flags: provided buffer, more to come.
    pub flags: u32,
}

impl Completion {
    /// The provided buffer this completion filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// Whether the kernel goes on filling this completion's buffer (incremental buffers).
    fn buffer_more(&self) -> bool {
        self.flags & CQE_F_BUF_MORE != 0
    }
}

/// How the next enter waits.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Submit and collect what is ready; never sleep.
    No,
    /// Sleep until a completion arrives or `timeout` passes. With `batch` set, keep sleeping
    /// for up to that long after the sleep began while fewer than `batch_count` completions
    /// are in, so that arrivals close together are handled in one turn.
    Sleep {
        /// Longest sleep (the next timer), or none.
        timeout: Option<Duration>,
        /// Minimum wait once the first completion is in.
        batch: Duration,
        /// Completions that end the minimum wait early.
        batch_count: u32,
    },
}

/// Sizes of a shard's ring.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// Submission queue entries.
    pub submissions: u32,
    /// Completion queue entries.
    pub completions: u32,
    /// Provided receive buffers (a power of two).
    pub buffers: u16,
    /// Bytes per receive buffer.
    pub buffer_size: u32,
}

/// A ring of provided receive buffers registered with the kernel.
///
/// Buffers are consumed incrementally (kernel 6.12+): receives append to the buffer at the
/// head of the ring until it is full, so a 16 KiB buffer holds hundreds of small game
/// messages and a few buffers serve a whole turn of a thousand connections. Where the
/// kernel cannot, every receive takes a whole buffer.
struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    memory: Vec<u8>,
    count: u16,
    size: u32,
    /// Bytes of each buffer already handed out (incremental mode).
    consumed: Vec<u32>,
    incremental: bool,
    /// Our copy of the tail; published to the kernel by `publish`.
    tail: u16,
    published: u16,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the number of receive buffers must be a power of two",
            ));
        }
        // The kernel wants the entries page-aligned.
        let layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let entries = unsafe { alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut ring = BufRing {
            entries,
            entries_layout: layout,
            memory: vec![0; usize::from(count) * size as usize],
            count,
            size,
            consumed: vec![0; usize::from(count)],
            incremental: false,
            tail: 0,
            published: 0,
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn recycle(&mut self, bid: u16) {
        self.consumed[usize::from(bid)] = 0;
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: index < count, inside the allocation; the kernel reads an entry only once the
        // tail published past it, which happens after this write (Release in `publish`).
        let entry = unsafe { &mut *self.entries.add(index) };
        let addr = self.memory.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field overlays the first entry's reserved bytes, as the kernel ABI
        // defines; it is a u16 the kernel reads atomically.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// The bytes a completion put in buffer `bid`, and whether the buffer is done (to be
    /// given back).
    fn take(&mut self, bid: u16, len: usize, more: bool) -> (&[u8], bool) {
        let size = self.size as usize;
        let offset = self.consumed[usize::from(bid)] as usize;
        let start = usize::from(bid) * size + offset.min(size);
        let end = (start + len).min((usize::from(bid) + 1) * size);
        let done = !(self.incremental && more);
        if !done {
            self.consumed[usize::from(bid)] = (offset + len) as u32;
        }
        (&self.memory[start..end], done)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone (the
        // IoUring field is dropped before this one, see `Ring`).
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}

/// The shard's ring. Lives on its thread only.
pub struct Ring {
    // Field order matters: the ring is torn down before the buffers it may still write.
    ring: IoUring,
    buffers: BufRing,
    /// The kernel knows minimum waits (6.12+); without, a batch wait is a plain wait.
    min_wait: bool,
    /// Enters made (for the stats).
    pub enters: u64,
}

impl Ring {
    /// A ring for the calling thread, which is the only one that may use it.
    pub fn new(sizes: RingSizes) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // The kernel flags the ring when deferred work (arrived data) is waiting, so a
            // spinning shard can see it without a syscall.
            .setup_taskrun_flag()
            .setup_cqsize(sizes.completions)
            .setup_submit_all()
            .build(sizes.submissions)?;
        let mut buffers = BufRing::new(sizes.buffers, sizes.buffer_size)?;
        // SAFETY: the entries stay allocated and in place for the ring's life (the ring is
        // dropped first).
        let incremental = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                buffers.count,
                BUFFER_GROUP,
                PBUF_RING_INC,
            )
        };
        match incremental {
            Ok(()) => buffers.incremental = true,
            // An older kernel: whole buffers per receive.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => unsafe {
                // SAFETY: as above.
                ring.submitter().register_buf_ring_with_flags(
                    buffers.entries as u64,
                    buffers.count,
                    BUFFER_GROUP,
                    0,
                )?;
            },
            Err(e) => return Err(e),
        }
        let min_wait = ring.params().is_feature_min_timeout();
        Ok(Ring {
            ring,
            buffers,
            min_wait,
            enters: 0,
        })
    }

    /// Queues an operation; when the submission queue is full, what it holds is submitted
    /// first.
    ///
    /// # Safety
    ///
    /// Every buffer and file descriptor the entry refers to must stay valid until its
    /// completion has been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps the entry's resources alive (this function's contract).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Submit only: collecting here could meet a full completion queue (EBUSY) that
            // only the caller's next reap empties.
            self.enters += 1;
            // SAFETY: no extra argument is passed.
            let pending = self.pending_submissions();
            let submitted = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(pending, 0, 0, None)
            };
            match submitted {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A multishot receive into the provided buffers.
    pub fn recv_multishot(fd: RawFd) -> squeue::Entry {
        opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP).build()
    }

    /// A send of `len` bytes at `buf` (no SIGPIPE: a closed peer is an error result).
    pub fn send(fd: RawFd, buf: *const u8, len: usize) -> squeue::Entry {
        opcode::Send::new(types::Fd(fd), buf, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }

    /// Entries in the submission queue that the kernel has not taken yet.
    fn pending_submissions(&mut self) -> u32 {
        self.ring.submission().len() as u32
    }

    /// Submits what is queued and collects completions, waiting as `wait` says.
    pub fn enter(&mut self, wait: Wait) -> io::Result<()> {
        self.buffers.publish();
        let to_submit = self.pending_submissions();
        self.enters += 1;
        let submitter = self.ring.submitter();
        let result = match wait {
            // GETEVENTS runs the deferred task work (arrived data) without waiting.
            // SAFETY: no extra argument is passed.
            Wait::No => unsafe {
                submitter.enter::<libc::sigset_t>(
                    to_submit,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            },
            Wait::Sleep {
                timeout,
                batch,
                batch_count,
            } => {
                let ts;
                let mut args = types::SubmitArgs::new();
                if let Some(t) = timeout {
                    ts = types::Timespec::from(t);
                    args = args.timespec(&ts);
                }
                let want = if batch.is_zero() || !self.min_wait {
                    1
                } else {
                    args = args.min_wait_usec(batch.as_micros().min(u32::MAX as u128) as u32);
                    batch_count.max(1)
                };
                submitter.submit_with_args(want as usize, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // A timeout or a signal ends the wait; what was submitted is in.
                Some(libc::ETIME) | Some(libc::EINTR) => Ok(()),
                // Completions wait in the kernel's overflow list: reap, then enter again.
                Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Moves every completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }

    /// Hands the bytes a receive completion put in its buffer to `f`, then gives the
    /// buffer back to the kernel once it is used up (published at the next enter).
    pub fn received<T>(&mut self, c: &Completion, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let bid = c.buffer()?;
        let len = usize::try_from(c.result).unwrap_or(0);
        let (bytes, done) = self.buffers.take(bid, len, c.buffer_more());
        let out = f(bytes);
        if done {
            self.buffers.recycle(bid);
        }
        Some(out)
    }

    /// Whether receives consume buffers incrementally (for the stats and tests).
    pub fn incremental_buffers(&self) -> bool {
        self.buffers.incremental
    }

    /// Whether an enter has something to do: entries queued but not yet submitted,
    /// completions, or deferred work (arrived data). Read from shared memory with no
    /// syscall (for spinning).
    pub fn has_work(&mut self) -> bool {
        let submission = self.ring.submission();
        let waiting = !submission.is_empty() || submission.taskrun();
        drop(submission);
        waiting || !self.ring.completion().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn sizes() -> RingSizes {
        RingSizes {
            submissions: 64,
            completions: 256,
            buffers: 8,
            buffer_size: 64,
        }
    }

    /// A socket pair whose second end has a multishot receive (user data 1) armed on `ring`.
    fn receiving_pair(ring: &mut Ring) -> (UnixStream, UnixStream) {
        let (peer, ours) = UnixStream::pair().unwrap();
        // SAFETY: the caller keeps the socket open while the ring runs.
        unsafe {
            ring.push(&Ring::recv_multishot(ours.as_raw_fd()).user_data(1))
                .unwrap();
        }
        ring.enter(Wait::No).unwrap();
        (peer, ours)
    }

    #[test]
    fn multishot_receives_fill_provided_buffers_and_sends_complete() {
        let mut ring = Ring::new(sizes()).expect("io_uring is available");
        let (mut peer, ours) = receiving_pair(&mut ring);
        peer.write_all(b"hello").unwrap();
        peer.write_all(b" world").unwrap();
        let mut got = Vec::new();
        let mut completions = Vec::new();
        while got.len() < 11 {
            ring.enter(Wait::Sleep {
                timeout: Some(Duration::from_secs(5)),
                batch: Duration::ZERO,
                batch_count: 1,
            })
            .unwrap();
            completions.clear();
            ring.reap(&mut completions);
            assert!(!completions.is_empty(), "timed out");
            for c in &completions {
                assert_eq!(c.user_data, 1);
                assert!(c.more());
                ring.received(c, |bytes| got.extend_from_slice(bytes))
                    .expect("a provided buffer");
            }
        }
        assert_eq!(got, b"hello world");

        let msg = b"back";
        // SAFETY: `msg` is static.
        unsafe {
            ring.push(
                &opcode::Send::new(types::Fd(ours.as_raw_fd()), msg.as_ptr(), 4)
                    .build()
                    .user_data(2),
            )
            .unwrap();
        }
        ring.enter(Wait::No).unwrap();
        completions.clear();
        ring.reap(&mut completions);
        assert!(completions
            .iter()
            .any(|c| c.user_data == 2 && c.result == 4));
        let mut echo = [0u8; 4];
        peer.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"back");
    }

    #[test]
    fn buffers_run_out_and_the_receive_ends_until_rearmed() {
        let mut ring = Ring::new(sizes()).expect("io_uring is available");
        let (mut peer, _ours) = receiving_pair(&mut ring);
        let mut completions = Vec::new();
        let mut ended = false;
        // Never take the data: after 8 buffers the receive must end with ENOBUFS.
        for _ in 0..64 {
            peer.write_all(&[7u8; 64]).unwrap();
            ring.enter(Wait::No).unwrap();
            completions.clear();
            ring.reap(&mut completions);
            if completions
                .iter()
                .any(|c| c.result == -libc::ENOBUFS && !c.more())
            {
                ended = true;
                break;
            }
        }
        assert!(ended);
    }

    #[test]
    fn a_sleep_ends_at_its_timeout() {
        let mut ring = Ring::new(sizes()).expect("io_uring is available");
        let start = std::time::Instant::now();
        ring.enter(Wait::Sleep {
            timeout: Some(Duration::from_millis(20)),
            batch: Duration::ZERO,
            batch_count: 1,
        })
        .unwrap();
        // A lower bound, which no load can break: the enter waited for its timeout rather
        // than returning at once (it returned at all, with nothing to complete).
        assert!(start.elapsed() >= Duration::from_millis(19));
        let mut completions = Vec::new();
        ring.reap(&mut completions);
        assert!(completions.is_empty());
    }

    #[test]
    fn small_receives_share_one_buffer() {
        let mut ring = Ring::new(RingSizes {
            submissions: 64,
            completions: 256,
            buffers: 2,
            buffer_size: 1024,
        })
        .expect("io_uring is available");
        assert!(
            ring.incremental_buffers(),
            "this kernel (6.12+) consumes provided buffers incrementally"
        );
        let (mut peer, _ours) = receiving_pair(&mut ring);
        let mut got = Vec::new();
        let mut buffers = Vec::new();
        let mut completions = Vec::new();
        // Twenty messages of 50 bytes: with whole buffers per receive, two buffers would run
        // out after two messages.
        for n in 0..20u8 {
            peer.write_all(&[n; 50]).unwrap();
            ring.enter(Wait::No).unwrap();
            completions.clear();
            ring.reap(&mut completions);
            for c in &completions {
                assert!(c.result > 0, "receive failed: {}", c.result);
                buffers.push(c.buffer().unwrap());
                ring.received(c, |b| got.extend_from_slice(b)).unwrap();
            }
        }
        let expected: Vec<u8> = (0..20u8).flat_map(|n| [n; 50]).collect();
        assert_eq!(got, expected);
        assert!(buffers.windows(2).any(|w| w[0] == w[1]));
    }

    #[test]
    fn a_full_submission_queue_is_submitted_and_nothing_is_lost() {
        let mut ring = Ring::new(RingSizes {
            submissions: 4,
            completions: 16,
            buffers: 2,
            buffer_size: 64,
        })
        .expect("io_uring is available");
        let (mut peer, ours) = UnixStream::pair().unwrap();
        let bytes: Vec<u8> = (0..20).collect();
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: `bytes` outlives the sends, which all complete below.
            unsafe {
                ring.push(&Ring::send(ours.as_raw_fd(), b, 1).user_data(i as u64))
                    .unwrap();
            }
        }
        ring.enter(Wait::No).unwrap();
        let mut completions = Vec::new();
        while completions.len() < 20 {
            ring.reap(&mut completions);
            if completions.len() < 20 {
                ring.enter(Wait::Sleep {
                    timeout: Some(Duration::from_secs(5)),
                    batch: Duration::ZERO,
                    batch_count: 1,
                })
                .unwrap();
            }
        }
        assert!(completions.iter().all(|c| c.result == 1));
        let mut got = [0u8; 20];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], &bytes[..]);
    }

    #[test]
    fn queued_entries_are_work_until_submitted() {
        let mut ring = Ring::new(sizes()).expect("io_uring is available");
        assert!(!ring.has_work());
        let (_peer, ours) = UnixStream::pair().unwrap();
        // SAFETY: the socket outlives the ring's use of it below.
        unsafe {
            ring.push(&Ring::recv_multishot(ours.as_raw_fd()).user_data(1))
                .unwrap();
        }
        // Only an enter submits the receive: a loop spinning on has_work must enter.
        assert!(ring.has_work());
        ring.enter(Wait::No).unwrap();
        assert!(!ring.has_work());
    }
}
