//! Socket plumbing shared by every endpoint: a stream that a reader task and a writer task
//! use at once, reading a request head, and the writer task that drains an [`Outbox`].

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::http::{self, HttpError, Request};
use crate::relay::{Drained, Outbox};
use crate::stats::{add, ShardStats};

/// Writes are coalesced up to this size: one send per batch of small frames instead of one
/// per frame, while a single large frame is written from its shared buffer directly.
const COALESCE: usize = 64 * 1024;

/// Time a closing connection waits for the peer's FIN before the socket is dropped, so the
/// close frame is read by the peer rather than cut by a reset.
const LINGER: Duration = Duration::from_millis(500);

/// A TCP stream shared by one connection's reader and writer tasks.
///
/// glommio's socket IO is readiness-based (a non-blocking syscall first, an io_uring poll
/// when it would block), so a read and a write may be in flight at once. The `RefCell` is
/// borrowed only inside one `poll_*` call, never across an await.
#[derive(Clone)]
pub struct Stream(Rc<RefCell<TcpStream>>);

impl Stream {
    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream) -> Stream {
        Stream(Rc::new(RefCell::new(stream)))
    }

    /// Reads some bytes; 0 means end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)).await
    }

    /// Reads some bytes, giving up after `timeout` (then `Ok(None)`). Cancelling a read is
    /// safe: no byte is taken from the socket until the read completes.
    pub async fn read_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<usize>> {
        let read = async { Some(self.read(buf).await) };
        let timer = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        futures_lite::future::or(read, timer).await.transpose()
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Shuts one or both directions down. A pending read or write on the other task then
    /// completes (with end-of-stream or an error).
    pub fn shutdown(&self, how: Shutdown) {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // glommio emulates shutdown synchronously too. A socket in any state either shuts
        // or reports ENOTCONN; both are fine here.
        // SAFETY: the fd is owned by the TcpStream, alive for the borrow.
        unsafe {
            libc::shutdown(self.0.borrow().as_raw_fd(), how);
        }
    }

    /// A duplicate of the socket's descriptor, to hand the connection to another shard
    /// (this `Stream` then closes only its own copy).
    pub fn dup_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        let fd = self.0.borrow().as_raw_fd();
        // SAFETY: borrowing a descriptor that the TcpStream keeps open for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed.try_clone_to_owned()
    }

    /// Sends FIN, then reads and discards until the peer closes too (or the linger time passes).
    pub async fn close_lingering(&self) {
        self.shutdown(Shutdown::Write);
        let mut sink = [0u8; 64];
        let deadline = std::time::Instant::now() + LINGER;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.read_timeout(&mut sink, left).await {
                Ok(Some(n)) if n > 0 && !left.is_zero() => continue,
                _ => break,
            }
        }
    }
}

/// A socket read buffer sized by use: it starts small, grows while reads fill it, and is
/// shrunk back when the connection goes quiet. An idle connection then holds
/// [`ReadBuf::MIN`] bytes, while a busy one reads up to [`ReadBuf::MAX`] per syscall.
pub struct ReadBuf {
    buf: Vec<u8>,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf {
            buf: vec![0; Self::MIN],
        }
    }
}

impl ReadBuf {
    /// Smallest size: a few typical game messages.
    pub const MIN: usize = 512;
    /// Largest size: a burst of messages per read.
    pub const MAX: usize = 64 * 1024;

    /// The space to read into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The first `n` bytes read.
    pub fn filled(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// After a read of `n` bytes: a full buffer means more was waiting, so grow.
    pub fn adapt(&mut self, n: usize) {
        if n == self.buf.len() && self.buf.len() < Self::MAX {
            self.buf = vec![0; (self.buf.len() * 4).min(Self::MAX)];
        }
    }

    /// Back to the smallest size (the connection is idle).
    pub fn shrink(&mut self) {
        if self.buf.len() > Self::MIN {
            self.buf = vec![0; Self::MIN];
        }
    }
}

/// Why no request head was read.
#[derive(Debug)]
pub enum HeadError {
    /// Bad or unroutable request: answer it and close.
    Http(HttpError),
    /// The handshake timeout passed.
    Timeout,
    /// The peer closed or the socket failed.
    Closed,
}

/// Reads a request head within `timeout`, starting with bytes already read (`buf`).
/// Returns the request, the bytes read past it, and everything read (for a handoff).
pub async fn read_head(
    stream: &Stream,
    mut buf: Vec<u8>,
    max: usize,
    timeout: Duration,
) -> Result<(Request, Vec<u8>, Vec<u8>), HeadError> {
    let deadline = std::time::Instant::now() + timeout;
    if !buf.is_empty() {
        match http::parse_request(&buf, max) {
            Ok(Some((req, len))) => return Ok((req, buf[len..].to_vec(), buf)),
            Ok(None) => {}
            Err(e) => return Err(HeadError::Http(e)),
        }
    }
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        // Read straight into the head buffer: no scratch array lives in this future (it
        // would weigh on every connection's task).
        let filled = buf.len();
        buf.resize(filled + 1024, 0);
        let read = stream.read_timeout(&mut buf[filled..], left).await;
        match read {
            Ok(Some(0)) | Err(_) => return Err(HeadError::Closed),
            Ok(None) => return Err(HeadError::Timeout),
            Ok(Some(n)) => buf.truncate(filled + n),
        }
        match http::parse_request(&buf, max) {
            Ok(Some((req, len))) => return Ok((req, buf[len..].to_vec(), buf)),
            Ok(None) => continue,
            Err(e) => return Err(HeadError::Http(e)),
        }
    }
}

/// Drains `outbox` into the socket until a close is requested, then writes the close frame
/// (if any) and half-closes. Returns when the writer is done.
///
/// A write that is still stuck `slow_grace` after the outbox overflowed belongs to a slow
/// consumer that is not reading at all: the socket is shut, which also ends the reader.
/// (This replaces a watchdog task per connection: one task fewer for every idle client.)
pub async fn write_loop(
    stream: Stream,
    outbox: Rc<Outbox>,
    stats: Option<std::sync::Arc<ShardStats>>,
    slow_grace: Duration,
) {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let stalled = || async {
        poll_fn(|cx| outbox.poll_overflow(cx)).await;
        glommio::timer::sleep(slow_grace).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    };
    loop {
        let drained = poll_fn(|cx| outbox.poll_drain(cx, &mut frames)).await;
        let written = match drained {
            Drained::Frames => {
                futures_lite::future::or(write_frames(&stream, &frames, &mut buf), stalled()).await
            }
            Drained::Close(close) => {
                if let Some((code, reason)) = close {
                    let frame = super::ws::close_frame(code, &reason);
                    let _ = futures_lite::future::or(
                        async { stream.write_all(&frame).await.map(|_| 0) },
                        stalled(),
                    )
                    .await;
                }
                stream.shutdown(if outbox.overflowed() {
                    Shutdown::Both
                } else {
                    Shutdown::Write
                });
                return;
            }
        };
        match written {
            Ok(n) => {
                if let Some(stats) = &stats {
                    add(&stats.bytes_out, n as u64);
                }
            }
            Err(_) => {
                // The socket is gone (or was cut as a slow consumer); the reader notices
                // too. Refuse further frames.
                stream.shutdown(Shutdown::Both);
                outbox.finish();
                return;
            }
        }
        frames.clear();
        // A burst may have grown the coalescing buffer; do not let every connection keep
        // up to COALESCE bytes it no longer needs.
        if buf.capacity() > COALESCE / 8 {
            buf = Vec::new();
        }
        if frames.capacity() > 64 {
            frames = Vec::new();
        }
    }
}

async fn write_frames(stream: &Stream, frames: &[Bytes], buf: &mut Vec<u8>) -> io::Result<usize> {
    if let [only] = frames {
        stream.write_all(only).await?;
        return Ok(only.len());
    }
    let mut total = 0;
    buf.clear();
    for f in frames {
        if !buf.is_empty() && buf.len() + f.len() > COALESCE {
            stream.write_all(buf).await?;
            total += buf.len();
            buf.clear();
        }
        buf.extend_from_slice(f);
    }
    if !buf.is_empty() {
        stream.write_all(buf).await?;
        total += buf.len();
    }
    Ok(total)
}
