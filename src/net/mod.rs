//! Sockets: the accept loop, the HTTP head, the WebSocket upgrade and the per-connection
//! reader and writer tasks. With `shard/`, the only code that touches io_uring.

pub mod echo;
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

pub use io::Stream;

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
                glommio::spawn_local(serve(shard, stream)).detach();
            }
            Err(_) => {
                add(&shard.stats.accept_errors, 1);
                // EMFILE and friends clear only when connections close; don't spin.
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    // Game traffic is small messages that must leave now, not be batched by Nagle.
    let _ = stream.set_nodelay(true);
    let accepted_at = Instant::now();
    let stream = Stream::new(stream);
    let handshake = Duration::from_millis(shard.config.handshake_timeout_ms);
    let head = io::read_head(&stream, shard.config.max_head_size, handshake).await;
    let (request, leftover) = match head {
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
        Err(io::HeadError::Closed) => {
            shard.stats.count_close(CloseReason::Peer);
            return;
        }
    };
    add(&shard.stats.bytes_in, (leftover.len()) as u64);
    if request.path == NATIVE_PATH {
        match request.websocket_key() {
            Ok(key) => {
                if stream
                    .write_all(&http::upgrade_response(key))
                    .await
                    .is_err()
                {
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
}
