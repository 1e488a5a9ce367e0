//! corelay's relay convention on socketioxide, to measure it beside corelay and Node's
//! socket.io with `corelay-loadgen` (see loadgen/README.md, "Peers").
//!
//! The same convention as `loadgen/reference/socketio-relay.js`:
//!
//! - `emit("join", room, ack)` joins `room`, acks `{"room": room, "members": N}` (N after
//!   the join);
//! - `emit("leave", room, ack)` leaves it, acks `{"room": room}`;
//! - `emit("to", room, event, payload)` emits `event` with `(payload, from)` to every other
//!   member of `room` (`from`: the sender's socket id). A binary payload stays binary. A
//!   sender that is not a member gets `error_reply` `{"error": "not_member"}`.
//!
//! A bad room name (not a string of 1 to 128 bytes) is acked with `{"error": "bad_room"}`.
//!
//! One tokio `current_thread` runtime: the whole server runs on one thread, as corelay does
//! with `--shards 1`, so that both can be pinned to the same single CPU.
//!
//! Environment: `PORT` (default 3001), `HOST` (default 127.0.0.1), `SIO_MAX_BUFFER_SIZE`
//! (packets queued per socket before an emit to it fails; default socketioxide's own, 128).

use std::fmt;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::{SocketIo, TransportType};

/// Longest room name accepted, as in the Node reference.
const MAX_ROOM_LEN: usize = 128;
/// Largest HTTP payload (polling) and message, as in the Node reference (`maxHttpBufferSize`).
const MAX_PAYLOAD: u64 = 1_000_000;

/// A relayed payload, kept as it came: a string, a binary attachment (re-sent as binary),
/// or any other JSON value.
#[derive(Debug)]
enum Payload {
    Text(String),
    Binary(bytes::Bytes),
    Json(serde_json::Value),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(t) => s.serialize_str(t),
            Self::Binary(b) => s.serialize_bytes(b),
            Self::Json(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

/// Strings and bytes are taken as they are (socketioxide's parser hands a binary
/// placeholder to `visit_byte_buf`); everything else becomes a `serde_json::Value`.
struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, binary data or a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload::Text(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload::Binary(bytes::Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload::Binary(v.into()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Payload, E> {
        Ok(Payload::Json(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Payload, E> {
        Ok(Payload::Json(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Payload, E> {
        Ok(Payload::Json(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Payload, E> {
        Ok(Payload::Json(v.into()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Json(serde_json::Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Json(serde_json::Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Payload, A::Error> {
        serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Payload::Json)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Payload, A::Error> {
        serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Payload::Json)
    }
}

#[derive(Serialize)]
struct Joined<'a> {
    room: &'a str,
    members: usize,
}

#[derive(Serialize)]
struct Left<'a> {
    room: &'a str,
}

#[derive(Serialize)]
struct Refused {
    error: &'static str,
}

fn ok_room(room: &str) -> bool {
    !room.is_empty() && room.len() <= MAX_ROOM_LEN
}

async fn on_join(socket: SocketRef, TryData(room): TryData<String>, ack: AckSender) {
    match room {
        Ok(room) if ok_room(&room) => {
            socket.join(room.clone());
            let members = socket.within(room.clone()).sockets().len();
            ack.send(&Joined {
                room: &room,
                members,
            })
            .ok();
        }
        _ => {
            ack.send(&Refused { error: "bad_room" }).ok();
        }
    }
}

async fn on_leave(socket: SocketRef, TryData(room): TryData<String>, ack: AckSender) {
    match room {
        Ok(room) if ok_room(&room) => {
            socket.leave(room.clone());
            ack.send(&Left { room: &room }).ok();
        }
        _ => {
            ack.send(&Refused { error: "bad_room" }).ok();
        }
    }
}

async fn on_to(socket: SocketRef, TryData(args): TryData<(String, String, Payload)>) {
    let member = |room: &str| socket.rooms().iter().any(|r| r == room);
    match args {
        Ok((room, event, payload)) if ok_room(&room) && member(&room) => {
            let from = socket.id.to_string();
            // `to` excludes the sending socket; a full per-socket buffer drops that copy.
            socket.to(room).emit(&event, &(payload, from)).await.ok();
        }
        _ => {
            socket
                .emit(
                    "error_reply",
                    &Refused {
                        error: "not_member",
                    },
                )
                .ok();
        }
    }
}

async fn on_connect(socket: SocketRef) {
    socket.on("join", on_join);
    socket.on("leave", on_leave);
    socket.on("to", on_to);
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let mut builder = SocketIo::builder()
        .max_payload(MAX_PAYLOAD)
        .transports([TransportType::Websocket, TransportType::Polling]);
    if let Some(n) = std::env::var("SIO_MAX_BUFFER_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder = builder.max_buffer_size(n);
    }
    let (layer, io) = builder.build_layer();
    io.ns("/", on_connect);

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(addr)
        .await?
        // Node's http server and corelay both disable Nagle.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    println!(
        "socketioxide relay listening on ws://{addr}/socket.io/ (pid {})",
        std::process::id()
    );
    axum::serve(listener, app).await
}

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| std::io::Error::other(format!("PORT={p}: not a port number")))?,
        Err(_) => 3001,
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| std::io::Error::other(format!("HOST={host}: {e}")))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr))
}
