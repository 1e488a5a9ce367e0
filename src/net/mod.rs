//! Sockets: the accept loop, the HTTP head, the WebSocket upgrade and the per-connection
//! reader and writer tasks. With `shard/`, the only code that touches io_uring.

pub mod echo;
pub(crate) mod engineio;
pub mod http;
mod io;
pub use io::write_loop;
mod native;
pub mod ws;

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};

use crate::shard::Shard;
use crate::stats::{add, CloseReason};

pub use io::{ReadBuf, Stream};

/// Path of the native protocol endpoint.
pub const NATIVE_PATH: &str = "/ws";

/// Accepts connections until cancelled. Errors such as running out of file descriptors are
/// counted and retried after a pause: the connections already open keep being served.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                add(&shard.stats.accepted, 1);
                let shard = Rc::clone(&shard);
                glommio::spawn_local(serve(shard, stream, Vec::new())).detach();
            }
            Err(_) => {
                add(&shard.stats.accept_errors, 1);
                // EMFILE and friends clear only when connections close; don't spin.
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one accepted (or handed-over) connection; `initial` holds bytes already read.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, initial: Vec<u8>) {
    // Game traffic is small messages that must leave now, not be batched by Nagle.
    let _ = stream.set_nodelay(true);
    let stream = Stream::new(stream);
    let mut pending = initial;
    loop {
        let accepted_at = Instant::now();
        let handshake = Duration::from_millis(shard.config.handshake_timeout_ms);
        let head = io::read_head(&stream, pending, shard.config.max_head_size, handshake).await;
        let (request, leftover, raw) = match head {
            Ok(v) => v,
            Err(io::HeadError::Http(err)) => {
                shard.stats.count_close(CloseReason::BadRequest);
                let _ = stream.write_all(&http::error_response(&err)).await;
                stream.close_lingering().await;
                return;
            }
            Err(io::HeadError::Timeout) => {
                shard.stats.count_close(CloseReason::HandshakeTimeout);
                stream.close_lingering().await;
                return;
            }
            Err(io::HeadError::Closed) => return,
        };
        if is_engine_path(&request.path, &shard.config.socketio_path) {
            match engineio::serve(&shard, &stream, request, leftover).await {
                engineio::Next::KeepAlive(rest) => {
                    pending = rest;
                    continue;
                }
                engineio::Next::Done => return,
                engineio::Next::Handoff(owner) => {
                    match stream.dup_fd() {
                        Ok(fd) => shard.hand_off(owner, fd, raw),
                        Err(_) => shard.stats.count_close(CloseReason::Io),
                    }
                    shard.flush_mesh();
                    return;
                }
            }
        }
        add(&shard.stats.bytes_in, leftover.len() as u64);
        drop(raw);
        if request.path == NATIVE_PATH {
            match request.websocket_key() {
                Ok(key) => {
                    let answer = http::upgrade_response(key);
                    // The request is not needed past the upgrade; free it before the
                    // connection's long life.
                    drop(request);
                    if stream.write_all(&answer).await.is_err() {
                        shard.stats.count_close(CloseReason::Io);
                        return;
                    }
                    native::serve(shard, stream, leftover, accepted_at).await;
                }
                Err(err) => {
                    shard.stats.count_close(CloseReason::BadRequest);
                    let _ = stream.write_all(&http::error_response(&err)).await;
                    stream.close_lingering().await;
                }
            }
        } else {
            shard.stats.count_close(CloseReason::BadRequest);
            let _ = stream
                .write_all(&http::error_response(&http::HttpError::NotFound))
                .await;
            stream.close_lingering().await;
        }
        return;
    }
}

/// Whether `path` is the Engine.IO endpoint (with or without its trailing slash).
fn is_engine_path(path: &str, endpoint: &str) -> bool {
    path == endpoint || path == endpoint.trim_end_matches('/')
}
