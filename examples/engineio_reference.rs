//! The reference server of the Engine.IO protocol's test suite, on corelay:
//! `cargo run --release --example engineio_reference -- --port 3000`.
//!
//! Path `/engine.io/`, pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000, CORS
//! origin `*` (as the suite's reference server's `cors: { origin: "*" }`:
//! `Access-Control-Allow-Origin: *`, no credentials); every message is echoed back.

use corelay::socketio::SocketIo;
use corelay::{Config, Server};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).and_then(|p| p.parse().ok()),
        None => Some(3000),
    };
    let Some(port) = port else {
        eprintln!("usage: engineio_reference [--port PORT]");
        std::process::exit(2);
    };
    let config = Config {
        listen: ([127, 0, 0, 1], port).into(),
        shards: 1,
        socketio_path: "/engine.io/".into(),
        engineio_ping_interval_ms: 300,
        engineio_ping_timeout_ms: 200,
        engineio_max_payload: 1_000_000,
        cors_origins: vec!["*".into()],
        ..Config::default()
    };
    let server = Server::start_with(config, SocketIo::engine_echo()).unwrap_or_else(|e| {
        eprintln!("engineio_reference: {e}");
        std::process::exit(1);
    });
    println!("engineio_reference listening on {}", server.local_addr());
    let _ = server.join();
}
