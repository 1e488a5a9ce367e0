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
        let mut sink = [0u8; 1024];
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
    let mut chunk = [0u8; 2048];
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
        match stream.read_timeout(&mut chunk, left).await {
            Ok(Some(0)) | Err(_) => return Err(HeadError::Closed),
            Ok(None) => return Err(HeadError::Timeout),
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
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
pub async fn write_loop(
    stream: Stream,
    outbox: Rc<Outbox>,
    stats: Option<std::sync::Arc<ShardStats>>,
) {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let drained = poll_fn(|cx| outbox.poll_drain(cx, &mut frames)).await;
        let written = match drained {
            Drained::Frames => write_frames(&stream, &frames, &mut buf).await,
            Drained::Close(close) => {
                if let Some((code, reason)) = close {
                    let _ = stream
                        .write_all(&super::ws::close_frame(code, &reason))
                        .await;
                }
                stream.shutdown(Shutdown::Write);
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
                // The socket is gone; the reader notices too. Refuse further frames.
                outbox.finish();
                return;
            }
        }
        frames.clear();
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
