//! A SocketCluster application on corelay, the server of the SocketCluster interop tests:
//! `cargo run --example socketcluster_app -- --port 8000`; it prints
//! `socketcluster_app listening on 127.0.0.1:PORT`. Settings come from the environment as
//! for `corelay serve` (`CORELAY_AUTH_JWT_SECRET`, `CORELAY_SHARDS`, ...; two shards unless
//! told).
//!
//! Procedures (`socket.invoke(name, data)` on the client): `echo` answers `data`; `fail`
//! refuses with `MyAppError`; `login` issues a token for `data.username`
//! (`#setAuthToken`); `whoami` answers `{id, player, authenticated}`; `announce` publishes
//! `data.data` to `data.channel` from the server; `kick-me` unsubscribes the client from
//! `data.channel` with a `#kickOut`; `tell-me` transmits `told` with `data` back. Middleware: an invoke of a name starting with `secret` is refused
//! (`ForbiddenError`), a subscription to a `private-` channel is refused, and a publish to
//! a `readonly-` channel is refused; Socket.IO and native players meet the same hooks.

use corelay::hooks::{Forbidden, Hooks, Verdict};
use corelay::proto::socketcluster::ScError;
use corelay::socketcluster::SocketCluster;
use corelay::socketio::SocketIo;
use corelay::{Config, Server};
use serde_json::{json, Value};

fn app() -> SocketCluster {
    SocketCluster::new()
        .on("echo", |_, data, response| {
            if let Some(response) = response {
                response.end(data);
            }
        })
        .on("fail", |_, _, response| {
            if let Some(response) = response {
                response.error(ScError::new("MyAppError", "this procedure always fails"));
            }
        })
        .on("login", |socket, data, response| {
            let Some(response) = response else { return };
            let Some(name) = data.get("username").and_then(Value::as_str) else {
                return response.error(ScError::new("LoginError", "username missing"));
            };
            let claims = json!({ "sub": name, "role": "player" });
            let claims = claims.as_object().cloned().unwrap_or_default();
            match socket.set_auth_token(&claims) {
                Ok(()) => response.end(json!({ "ok": true })),
                Err(e) => response.error(ScError::new("LoginError", e.to_string())),
            }
        })
        .on("whoami", |socket, _, response| {
            if let Some(response) = response {
                let who = socket.identity();
                response.end(json!({
                    "id": socket.id(),
                    "player": &*who.player,
                    "authenticated": who.is_authenticated(),
                }));
            }
        })
        .on("announce", |socket, data, response| {
            let channel = data.get("channel").and_then(Value::as_str).unwrap_or("");
            let published = socket
                .exchange()
                .publish(channel, data.get("data").cloned().unwrap_or(Value::Null));
            if let Some(response) = response {
                match published {
                    Ok(()) => response.end_empty(),
                    Err(e) => response.error(ScError::new("PublishError", e.to_string())),
                }
            }
        })
        .on("kick-me", |socket, data, response| {
            let channel = data.get("channel").and_then(Value::as_str).unwrap_or("");
            let kicked = socket.kick_out(channel, "you asked for it");
            if let Some(response) = response {
                match kicked {
                    Ok(()) => response.end_empty(),
                    Err(code) => response.error(ScError::new("KickError", code.name())),
                }
            }
        })
        .on("tell-me", |socket, data, _| {
            // `told` is no protocol name: it cannot be refused.
            let _ = socket.transmit("told", &data);
        })
        .middleware_invoke(|_, event, _| {
            if event.starts_with("secret") {
                return Err(ScError::new("ForbiddenError", "secrets are for admins"));
            }
            Ok(())
        })
}

fn hooks() -> Hooks {
    Hooks::new()
        .on_join(|_, room| {
            if room.starts_with("private-") {
                return Err(Forbidden::new("private channels need an invitation"));
            }
            Ok(())
        })
        .on_message(|_, message| {
            if message.room.starts_with("readonly-") {
                return Verdict::Refuse(Forbidden::new("read-only channel"));
            }
            Verdict::Pass
        })
}

fn main() {
    let port = parse_port();
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !env.iter().any(|(k, _)| k == "CORELAY_SHARDS") {
        env.push(("CORELAY_SHARDS".into(), "2".into()));
    }
    let listen = [("listen", format!("127.0.0.1:{port}"))];
    let config = Config::load(None, env, &listen).unwrap_or_else(|e| {
        eprintln!("socketcluster_app: {e}");
        std::process::exit(2);
    });
    let server = Server::start_with_socketcluster(config, SocketIo::relay(), app(), hooks())
        .unwrap_or_else(|e| {
            eprintln!("socketcluster_app: {e}");
            std::process::exit(1);
        });
    println!("socketcluster_app listening on {}", server.local_addr());
    let _ = server.join();
}

fn parse_port() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--port") {
        Some(i) => args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| usage()),
        None if args.len() == 1 => 8000,
        None => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: socketcluster_app [--port PORT]");
    std::process::exit(2);
}
