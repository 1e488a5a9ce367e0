//! The client side of a WebSocket on glommio, shared by the native client and the load
//! generator's Socket.IO client: the HTTP upgrade, masked frames out through a writer task
//! that coalesces what is queued into one write, and whole messages in through the same
//! [`WsCodec`] the server uses.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::Role;
use tungstenite::Message;

use super::stream::Stream;
use super::ClientError;
use crate::proto::ws::{
    masked_binary_frame, masked_close_frame, write_masked_frame, Incoming, MaskKeys, WsCodec,
};

/// Largest upgrade response head accepted; real ones are ~200 bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Writes are coalesced up to this size: one write per burst of small frames.
const COALESCE: usize = 64 * 1024;

/// Reads take up to this much at once.
const READ_CHUNK: usize = 64 * 1024;

/// Performs the client side of the WebSocket upgrade on `stream` for `host` and `path`;
/// returns bytes read past the response head.
pub async fn upgrade(stream: &Stream, host: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    let key = tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Handshake(
                "connection closed during upgrade".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(ClientError::Handshake("response head too large".into()));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(ClientError::Handshake(status));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ok = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    });
    if !ok {
        return Err(ClientError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(head.split_off(end))
}

/// Runs `fut` until `deadline`, then fails with [`ClientError::Timeout`].
pub async fn with_deadline<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err(ClientError::Timeout)
    };
    futures_lite::future::or(fut, timer).await
}

/// Connects a WebSocket to `path` on `addr` (with `host` in the `Host` header) and splits
/// it into its halves; the whole handshake must finish within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    bind: Option<IpAddr>,
    max_message: usize,
    timeout: Duration,
) -> Result<(WsSender, WsReceiver), ClientError> {
    let deadline = Instant::now() + timeout;
    let stream = with_deadline(deadline, async { Ok(Stream::connect(addr, bind).await?) }).await?;
    let leftover = with_deadline(deadline, upgrade(&stream, host, path)).await?;
    Ok(open(stream, &leftover, max_message))
}

/// Frames waiting for the writer task.
#[derive(Default)]
struct Queue {
    frames: RefCell<VecDeque<Bytes>>,
    writer: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    /// The writer task, until someone waits for it to finish.
    task: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl Queue {
    fn wake(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake();
    }
}

/// Starts the halves of an upgraded connection (`leftover`: bytes read past the upgrade).
pub fn open(stream: Stream, leftover: &[u8], max_message: usize) -> (WsSender, WsReceiver) {
    let queue = Rc::new(Queue::default());
    let writer_stream = stream.clone();
    let writer_queue = Rc::clone(&queue);
    let task = glommio::spawn_local(async move {
        let mut buf = Vec::new();
        loop {
            let more = poll_fn(|cx| {
                if !writer_queue.frames.borrow().is_empty() {
                    return Poll::Ready(true);
                }
                if writer_queue.closed.get() {
                    return Poll::Ready(false);
                }
                *writer_queue.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if !more {
                break;
            }
            buf.clear();
            {
                // Whatever is queued goes in one write.
                let mut frames = writer_queue.frames.borrow_mut();
                while buf.len() < COALESCE {
                    match frames.pop_front() {
                        Some(f) => buf.extend_from_slice(&f),
                        None => break,
                    }
                }
            }
            if writer_stream.write_all(&buf).await.is_err() {
                writer_stream.shutdown(Shutdown::Both);
                writer_queue.closed.set(true);
                break;
            }
            if buf.capacity() > COALESCE * 2 {
                buf = Vec::new();
            }
        }
    })
    .detach();
    *queue.task.borrow_mut() = Some(task);
    let sender = WsSender {
        queue,
        mask: MaskKeys::new(),
    };
    let mut codec = WsCodec::new(Role::Client, max_message);
    codec.feed(leftover);
    let receiver = WsReceiver {
        stream,
        codec: Some(codec),
        sender: sender.clone(),
        buf: vec![0; READ_CHUNK],
        closed: None,
        detached: false,
    };
    (sender, receiver)
}

/// The sending half: frames are queued at once and written by the writer task.
#[derive(Clone)]
pub struct WsSender {
    queue: Rc<Queue>,
    mask: MaskKeys,
}

impl WsSender {
    /// A fresh masking key.
    pub fn next_mask(&self) -> [u8; 4] {
        self.mask.next_key()
    }

    /// Queues an already encoded frame.
    pub fn push(&self, frame: Bytes) -> Result<(), ClientError> {
        if self.queue.closed.get() {
            return Err(ClientError::Closed(None));
        }
        self.queue.frames.borrow_mut().push_back(frame);
        self.queue.wake();
        Ok(())
    }

    /// Queues a binary message.
    pub fn send_binary(&self, body: &[u8]) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.push(masked_binary_frame(body, mask))
    }

    /// Queues a text message.
    pub fn send_text(&self, text: &str) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        write_masked_frame(true, text.as_bytes(), self.next_mask(), &mut frame);
        self.push(Bytes::from(frame))
    }

    /// Starts the close handshake.
    pub fn send_close(&self, code: u16) -> Result<(), ClientError> {
        let mask = self.next_mask();
        self.push(masked_close_frame(code, "", mask))
    }

    /// Frames queued but not yet handed to the socket.
    pub fn queued(&self) -> usize {
        self.queue.frames.borrow().len()
    }
}

/// The receiving half: whole messages, with pings answered and the close echoed.
pub struct WsReceiver {
    stream: Stream,
    /// Always present until [`WsReceiver::into_parts`] takes it.
    codec: Option<WsCodec>,
    sender: WsSender,
    buf: Vec<u8>,
    closed: Option<Option<(u16, String)>>,
    detached: bool,
}

impl WsReceiver {
    /// The next data message; `Err(Closed)` once the server closed.
    pub async fn next_message(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(closed) = &self.closed {
                return Err(ClientError::Closed(closed.clone()));
            }
            let Some(codec) = self.codec.as_mut() else {
                return Err(ClientError::Closed(None));
            };
            match codec.poll_message() {
                Ok(Some(Incoming::Message(msg))) => {
                    self.send_replies();
                    return Ok(msg);
                }
                Ok(Some(Incoming::Closed(close))) => {
                    self.send_replies();
                    self.closed = Some(close);
                    continue;
                }
                Ok(None) => self.send_replies(),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                self.closed = Some(None);
                continue;
            }
            if let Some(codec) = self.codec.as_mut() {
                codec.feed(&self.buf[..n]);
            }
        }
    }

    /// Pongs and the close echo the codec wrote while reading.
    fn send_replies(&mut self) {
        if let Some(out) = self.codec.as_mut().and_then(WsCodec::take_output) {
            let _ = self.sender.push(out);
        }
    }

    /// Cuts the connection at once, with no close handshake (as a lost network would);
    /// reading then reports it closed.
    pub fn abort(&mut self) {
        self.sender.queue.close();
        self.stream.shutdown(Shutdown::Both);
    }

    /// Takes the connection apart, to drive it from another event loop: waits until the
    /// writer task has written everything queued and ended, then returns the socket (a
    /// duplicate of the descriptor, in blocking mode) and the codec with whatever it has
    /// buffered. The glommio stream is closed; the duplicate keeps the connection.
    pub async fn into_parts(mut self) -> Result<(OwnedFd, WsCodec), ClientError> {
        self.send_replies();
        self.sender.queue.close();
        let task = self.sender.queue.task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        let fd = self.stream.dup_fd()?;
        // SAFETY: fcntl on a descriptor we own; only the file status flags change.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        self.detached = true;
        let codec = self.codec.take().ok_or(ClientError::Closed(None))?;
        Ok((fd, codec))
    }
}

impl Drop for WsReceiver {
    /// Dropping the receiver drops the connection: the socket is shut at once (the server
    /// sees a disconnect, not a close handshake) and the writer task ends.
    fn drop(&mut self) {
        self.sender.queue.close();
        if !self.detached {
            self.stream.shutdown(Shutdown::Both);
        }
    }
}
