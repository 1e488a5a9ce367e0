//! A plain WebSocket echo server on corelay's own runtime, front and WebSocket driver (the
//! code the relay runs), so that RFC 6455 conformance suites test that code.
//! `cargo run --release --example ws_echo`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::Message;

use super::front::{upgrade, Front, Head, PathMatch, Route, Routes};
use super::websocket::{Flow, WebSocket, WsApp};
use crate::proto::http::Request;
use crate::proto::ws;
use crate::shard::{Cx, Endpoint, Shard, Step};
use crate::stats::CloseReason;
use crate::{Config, Server, ServerError};

/// Settings of the echo server.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest message echoed (Autobahn's largest case is 16 MiB).
    pub max_message_size: usize,
    /// Time allowed for the upgrade.
    pub handshake_timeout: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            max_message_size: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Starts an echo server on one shard: every path upgrades, every message comes back.
pub fn start(echo: EchoConfig) -> Result<Server, ServerError> {
    let config = Config {
        listen: echo.listen,
        shards: 1,
        max_message_size: echo.max_message_size,
        handshake_timeout_ms: echo.handshake_timeout.as_millis() as u64,
        // The echo peer is trusted to read what it sends, so its queue is generous; a peer
        // that stops reading is cut after a minute.
        outbound_queue_frames: 1 << 16,
        outbound_queue_bytes: 256 << 20,
        slow_consumer_grace_ms: 60_000,
        ..Config::default()
    };
    Server::start_endpoints(
        config,
        Arc::new(move |_shard: &Rc<Shard>| {
            let routes = Routes::new().route(PathMatch::Any, Rc::new(EchoRoute));
            vec![Rc::new(Front::new(routes)) as Rc<dyn Endpoint>]
        }),
    )
}

struct EchoRoute;

impl Route for EchoRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        upgrade(cx, &request, head, |cx, _| {
            Box::new(WebSocket::new(Echo, cx.shard.config.max_message_size))
        })
    }
}

/// Sends every message back as it came.
struct Echo;

impl WsApp for Echo {
    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow {
        let frame = match msg {
            Message::Text(text) => ws::text_frame(|mut v| {
                v.extend_from_slice(text.as_bytes());
                v
            }),
            Message::Binary(data) => ws::binary_frame(|mut v| {
                v.extend_from_slice(&data);
                v
            }),
            _ => return Flow::Continue,
        };
        let _ = cx.out.push(frame);
        Flow::Continue
    }

    fn on_close(&mut self, _cx: &mut Cx<'_>, _why: CloseReason) {}
}
