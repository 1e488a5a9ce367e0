//! A plain WebSocket echo server (text and binary, any path) on corelay's own runtime,
//! front and WebSocket driver, for RFC 6455 conformance suites: `cargo run --release --example ws_echo -- --port 9001`.

use std::net::SocketAddr;

use corelay::net::echo::{self, EchoConfig};

fn main() {
    let mut port = 9001u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            _ => usage(),
        }
    }
    let config = EchoConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..EchoConfig::default()
    };
    match echo::start(config) {
        Ok(server) => {
            eprintln!("ws_echo listening on {}", server.local_addr());
            // Runs until the process is killed.
            let _ = server.join();
        }
        Err(e) => {
            eprintln!("ws_echo: {e}");
            std::process::exit(1);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: ws_echo [--port PORT]");
    std::process::exit(2);
}
