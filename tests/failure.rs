//! Failure of a shard: a panic on one shard stops the whole server, never half of it.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::{connect_on_shard, run};
use corelay::client::Stream;
use corelay::proto::ws::{close, masked_binary_frame, Incoming, WsCodec};
use corelay::socketio::{Namespace, SocketIo};
use corelay::{Config, Server, ServerError};
use tungstenite::protocol::Role;
use tungstenite::Message;

/// A two-shard server whose namespace `/boom` panics on event `explode`: application code
/// is a legitimate way for a shard's task to panic.
fn fragile_server() -> Server {
    let app = SocketIo::relay().namespace(
        "/boom",
        Namespace::new().on("explode", |_, _, _| panic!("the explode handler failed")),
    );
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        ..Config::default()
    };
    Server::start_with(config, app).expect("server starts")
}

async fn ws_send(s: &Stream, text: &str) {
    let mut frame = masked_binary_frame(text.as_bytes(), [1, 2, 3, 4]).to_vec();
    frame[0] = 0x81;
    s.write_all(&frame).await.unwrap();
}

/// The next text message (`Ok`), or the server's close (`Err` with its close code; `None`
/// for an EOF or a reset), failing the test if neither comes within 10 s.
async fn ws_next(s: &Stream, codec: &mut WsCodec) -> Result<String, Option<u16>> {
    let mut buf = [0u8; 4096];
    loop {
        match codec.poll_message() {
            Ok(Some(Incoming::Message(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Incoming::Message(_))) => continue,
            Ok(Some(Incoming::Closed(close))) => return Err(close.map(|(code, _)| code)),
            Err(_) => return Err(None),
            Ok(None) => {}
        }
        let read = glommio::timer::timeout(Duration::from_secs(10), async {
            Ok(s.read(&mut buf).await)
        })
        .await
        .expect("a message or the close in time");
        match read {
            Ok(n) if n > 0 => codec.feed(&buf[..n]),
            _ => return Err(None),
        }
    }
}

/// A Socket.IO client over WebSocket, connected to namespace `/boom`.
async fn socketio_client(addr: SocketAddr) -> (Stream, WsCodec) {
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let target = "/socket.io/?EIO=4&transport=websocket";
    let leftover = corelay::client::upgrade(&s, "test", target).await.unwrap();
    let mut codec = WsCodec::new(Role::Client, 1 << 20);
    codec.feed(&leftover);
    let open = ws_next(&s, &mut codec).await.unwrap();
    assert!(open.starts_with('0'), "{open}");
    ws_send(&s, "40/boom,").await;
    let connected = ws_next(&s, &mut codec).await.unwrap();
    assert!(connected.starts_with("40/boom,"), "{connected}");
    (s, codec)
}

#[test]
fn a_panic_on_one_shard_stops_every_shard_and_join_reports_it() {
    let srv = fragile_server();
    let addr = srv.local_addr();
    // join() blocks until every shard has stopped; it runs beside the clients, bounded.
    let (joined_tx, joined) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = joined_tx.send(srv.join());
    });
    run(move || async move {
        // A native player on each shard, and one Socket.IO client that makes its shard
        // panic.
        let mut players = vec![
            connect_on_shard(addr, 0).await,
            connect_on_shard(addr, 1).await,
        ];
        for p in &mut players {
            p.ping().await.expect("served before the panic");
        }
        let (s, mut codec) = socketio_client(addr).await;
        ws_send(&s, r#"42/boom,["explode"]"#).await;
        assert!(
            ws_next(&s, &mut codec).await.is_err(),
            "its own socket ends"
        );
        // Every connection on every shard ends: the panicking shard's at once, the other
        // shard's through a drain (close 1001).
        let mut codes = Vec::new();
        for p in &mut players {
            let closed =
                glommio::timer::timeout(Duration::from_secs(10), async { Ok(p.closed().await) })
                    .await
                    .expect("the player's connection ends");
            codes.push(closed.map(|(code, _)| code));
        }
        assert!(
            codes.contains(&Some(close::GOING_AWAY)),
            "the healthy shard drained: {codes:?}"
        );
    });
    let result = joined
        .recv_timeout(Duration::from_secs(20))
        .expect("the server stopped by itself");
    match result {
        Err(ServerError::ShardFailed { message, .. }) => {
            assert!(message.contains("the explode handler failed"), "{message}")
        }
        other => panic!("join reported {other:?}"),
    }
    // Nothing listens any more: not half alive.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
