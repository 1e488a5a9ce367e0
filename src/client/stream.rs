//! A TCP stream for clients on glommio, shared by a reading and a writing task.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A TCP stream that a reader task and a writer task use at once.
///
/// glommio's socket IO is readiness-based, so a read and a write may be in flight at once.
/// The `RefCell` is borrowed only inside one `poll_*` call, never across an await.
#[derive(Clone)]
pub struct Stream(Rc<RefCell<TcpStream>>);

impl Stream {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> Stream {
        Stream(Rc::new(RefCell::new(stream)))
    }

    /// Connects to `addr`, from `bind` if given, with Nagle off. Never blocks the executor:
    /// a peer that is slow to answer (or never does) only delays this future, which the
    /// caller bounds (see [`super::ws::with_deadline`]).
    pub async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<Stream> {
        let tcp = match bind {
            None => TcpStream::connect(addr).await.map_err(io::Error::from)?,
            Some(ip) => connect_from(ip, addr).await?,
        };
        let _ = tcp.set_nodelay(true);
        Ok(Stream::new(tcp))
    }

    /// Reads some bytes; 0 means end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)).await
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

    /// A duplicate of the socket's descriptor (this `Stream` then closes only its own
    /// copy).
    pub fn dup_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        let fd = self.0.borrow().as_raw_fd();
        // SAFETY: borrowing a descriptor that the TcpStream keeps open for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed.try_clone_to_owned()
    }

    /// Shuts one or both directions down. A pending read or write on the other task then
    /// completes (with end-of-stream or an error).
    pub fn shutdown(&self, how: Shutdown) {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // A socket in any state either shuts or reports ENOTCONN; both are fine here.
        // SAFETY: the fd is owned by the TcpStream, alive for the borrow.
        unsafe {
            libc::shutdown(self.0.borrow().as_raw_fd(), how);
        }
    }
}

/// Connects to `addr` from a socket bound to `ip` (glommio connects only unbound sockets):
/// a non-blocking connect, then a wait in glommio's reactor for the handshake to finish.
async fn connect_from(ip: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: into_raw_fd hands over sole ownership of a TCP socket (connecting or
    // connected); dropping the stream (e.g. on the caller's deadline) closes it.
    let mut tcp = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    // A zero-length send is the wait: while the handshake runs, the kernel refuses it with
    // EAGAIN and glommio parks the task until the socket is writable (connected) or fails;
    // then it returns 0, or the connect's error (ECONNREFUSED, ETIMEDOUT ...).
    poll_fn(|cx| Pin::new(&mut tcp).poll_write(cx, &[])).await?;
    Ok(tcp)
}
