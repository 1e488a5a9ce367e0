//! The reference server of the Socket.IO protocol's test suite, on corelay:
//! `cargo run --release --example socketio_reference -- --port 3000`.
//!
//! pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000, connectTimeout 1000 ms, CORS
//! origin `*` (`Access-Control-Allow-Origin: *`, no credentials); on `/` and `/custom`: emits `auth` with the handshake's auth payload on
//! connection, echoes `message` as `message-back`, and acks `message-with-ack` with its
//! arguments. It also asks the client for an ack (`server-ack`) when told `ask-ack`, so that
//! acks can be tested both ways.

use corelay::proto::socketio::Arg;
use corelay::socketio::{Namespace, SocketIo};
use corelay::{Config, Server};

fn reference_namespace() -> Namespace {
    Namespace::new()
        // The names emitted here are not reserved: the emits cannot be refused.
        .on_connect(|socket| {
            let _ = socket.emit("auth", [Arg::Json(socket.auth().clone())]);
        })
        .on("message", |socket, args, _| {
            let _ = socket.emit("message-back", args);
        })
        .on("message-with-ack", |_, args, ack| {
            if let Some(ack) = ack {
                ack.send(args);
            }
        })
        .on("ask-ack", |socket, args, _| {
            let echo = socket.clone();
            let _ = socket.emit_with_ack("server-ack", args, move |answer| {
                // No answer (timeout, disconnect): nothing to echo.
                if let Ok(answer) = answer {
                    let _ = echo.emit("server-ack-answer", answer);
                }
            });
        })
}

fn main() {
    let port = parse_port();
    let config = Config {
        listen: ([127, 0, 0, 1], port).into(),
        shards: 1,
        engineio_ping_interval_ms: 300,
        engineio_ping_timeout_ms: 200,
        engineio_max_payload: 1_000_000,
        socketio_connect_timeout_ms: 1_000,
        cors_origins: vec!["*".into()],
        ..Config::default()
    };
    let app = SocketIo::empty()
        .namespace("/", reference_namespace())
        .namespace("/custom", reference_namespace());
    let server = Server::start_with(config, app).unwrap_or_else(|e| {
        eprintln!("socketio_reference: {e}");
        std::process::exit(1);
    });
    println!("socketio_reference listening on {}", server.local_addr());
    let _ = server.join();
}

fn parse_port() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--port") {
        Some(i) => args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| usage()),
        None if args.len() == 1 => 3000,
        None => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: socketio_reference [--port PORT]");
    std::process::exit(2);
}
