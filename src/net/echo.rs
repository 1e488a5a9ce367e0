//! A plain WebSocket echo server on corelay's own transport and framing (the same accept,
//! HTTP head, [`WsCodec`] and writer task that the relay uses), so that RFC 6455 conformance
//! suites test the code the relay runs. `cargo run --release --example ws_echo`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use tungstenite::protocol::Role;

use super::http;
use super::io::{read_head, write_loop, HeadError, Stream};
use super::ws::{Incoming, WsCodec};
use crate::relay::{Outbox, OutboxLimits};

/// Settings of the echo server.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Largest message echoed (Autobahn's largest case is 16 MiB).
    pub max_message_size: usize,
    /// Time allowed for the upgrade.
    pub handshake_timeout: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            max_message_size: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves echo on `listener` forever (run inside a glommio executor).
pub async fn serve(listener: TcpListener, config: EchoConfig) {
    let config = Rc::new(config);
    while let Ok(stream) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(connection(Stream::new(stream), Rc::clone(&config))).detach();
    }
}

/// Binds `addr` and serves echo on the current thread until the process ends.
pub fn run(addr: SocketAddr, config: EchoConfig) -> std::io::Result<()> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(std::io::Error::from)?;
    ex.run(async move {
        let listener = TcpListener::bind(addr).map_err(std::io::Error::from)?;
        eprintln!(
            "ws_echo listening on {}",
            listener.local_addr().map_err(std::io::Error::from)?
        );
        serve(listener, config).await;
        Ok(())
    })
}

async fn connection(stream: Stream, config: Rc<EchoConfig>) {
    let (request, leftover, _) =
        match read_head(&stream, Vec::new(), 16 * 1024, config.handshake_timeout).await {
            Ok(v) => v,
            Err(HeadError::Http(e)) => {
                let _ = stream.write_all(&http::error_response(&e)).await;
                stream.close_lingering().await;
                return;
            }
            Err(_) => return,
        };
    let key = match request.websocket_key() {
        Ok(k) => k.to_owned(),
        Err(e) => {
            let _ = stream.write_all(&http::error_response(&e)).await;
            stream.close_lingering().await;
            return;
        }
    };
    if stream
        .write_all(&http::upgrade_response(&key))
        .await
        .is_err()
    {
        return;
    }
    // The echo peer is trusted to read what it sends, so the outbox is generous.
    let outbox = Rc::new(Outbox::new(OutboxLimits {
        frames: 1 << 16,
        bytes: 256 << 20,
    }));
    // An echo peer that stops reading is cut after a minute.
    let writer = glommio::spawn_local(write_loop(
        stream.clone(),
        Rc::clone(&outbox),
        None,
        Duration::from_secs(60),
    ));
    let mut codec = WsCodec::new(Role::Server, config.max_message_size);
    codec.feed(&leftover);
    let mut buf = vec![0u8; 64 * 1024];
    'session: loop {
        loop {
            match codec.poll_message() {
                Ok(None) => break,
                Ok(Some(Incoming::Message(msg))) => {
                    if codec.write(msg).is_err() {
                        break 'session;
                    }
                }
                Ok(Some(Incoming::Closed(_))) => {
                    if let Some(out) = codec.take_output() {
                        let _ = outbox.push(out);
                    }
                    outbox.finish();
                    break 'session;
                }
                Err(e) => {
                    if let Some(out) = codec.take_output() {
                        let _ = outbox.push(out);
                    }
                    outbox.close(e.close_code(), "");
                    break 'session;
                }
            }
        }
        if let Some(out) = codec.take_output() {
            let _ = outbox.push(out);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => codec.feed(&buf[..n]),
        }
    }
    outbox.finish();
    let _ = writer.await;
    stream.close_lingering().await;
}
