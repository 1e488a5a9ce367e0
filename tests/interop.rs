//! Interoperability with the official Socket.IO and SocketCluster clients.
//!
//! Runs the Node (`socket.io-client`, `socketcluster-client`) and Python (`python-socketio`)
//! test suites of `tests/interop/` against the `corelay` binary and the `socketio_reference`
//! and `socketcluster_app` examples, one `#[test]` per suite, and checks that a native
//! client and a socket.io or SocketCluster client in one room see each other's messages
//! (`mixed_room_*`, `socketcluster_meets_native_clients`).
//!
//! Prerequisites (the README's interop test command):
//!
//! ```text
//! npm ci --prefix tests/interop
//! python3 -m venv tests/interop/.venv
//! tests/interop/.venv/bin/pip install -r tests/interop/requirements.txt
//! cargo build --examples && cargo test --test interop
//! ```
//!
//! A missing prerequisite fails the tests (it does not skip them).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use corelay::client::{PayloadKind, ServerEvent};
use corelay::proto::native::ErrorCode;
use serde_json::{json, Value};

use common::node::{run_suite, MixedPeer};

const SETUP: &str =
    "run the README's interop test command first: `npm ci --prefix tests/interop`, \
     `python3 -m venv tests/interop/.venv && tests/interop/.venv/bin/pip install -r \
     tests/interop/requirements.txt`, then `cargo build --examples && cargo test --test interop`";

/// Longest a whole suite may run before it is killed and fails.
const SUITE_BUDGET: Duration = Duration::from_secs(120);

fn corelay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corelay"))
}

/// target/<profile>/examples/socketio_reference, next to the corelay binary.
fn reference_bin() -> PathBuf {
    let bin = corelay_bin()
        .parent()
        .expect("corelay binary has a directory")
        .join("examples")
        .join("socketio_reference");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --examples` ({SETUP})",
        bin.display()
    );
    bin
}

/// target/<profile>/examples/socketcluster_app, next to the corelay binary.
fn socketcluster_app_bin() -> PathBuf {
    let bin = reference_bin().with_file_name("socketcluster_app");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --examples` ({SETUP})",
        bin.display()
    );
    bin
}

fn node() -> Command {
    let mut cmd = common::node::command(SETUP);
    cmd.env("CORELAY_BIN", corelay_bin())
        .env("SOCKETIO_REFERENCE_BIN", reference_bin())
        .env("SOCKETCLUSTER_APP_BIN", socketcluster_app_bin());
    cmd
}

/// The venv's python when there is one, else `python3`; it must have the test packages.
fn python() -> Command {
    let venv = common::node::interop_dir()
        .join(".venv")
        .join("bin")
        .join("python");
    let python = if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let ok = Command::new(&python)
        .args([
            "-c",
            "import socketio, engineio, websocket, requests, pytest",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} lacks python-socketio[client]/pytest ({SETUP})",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.current_dir(common::node::interop_dir())
        .env("CORELAY_BIN", corelay_bin());
    cmd
}

fn node_suite(file: &str) {
    let mut cmd = node();
    cmd.args(["--test", "--test-reporter=spec", file]);
    run_suite(file, cmd, SUITE_BUDGET);
}

#[test]
fn node_transports() {
    node_suite("transports.test.js");
}

#[test]
fn node_reference_app() {
    node_suite("reference.test.js");
}

#[test]
fn node_relay() {
    node_suite("relay.test.js");
}

#[test]
fn node_reconnect() {
    node_suite("reconnect.test.js");
}

/// Rate limits as the official client sees them: the `{error: "rate_limited"}` ack, the
/// `error` event, and the server-side disconnect of a persistent abuser.
#[test]
fn node_rate_limits() {
    node_suite("rate_limits.test.js");
}

/// Connection state recovery as the official client does it by itself: `socket.recovered`,
/// the same id, and every missed room event once, in order, on either shard.
#[test]
fn node_recovery() {
    node_suite("recovery.test.js");
}

/// The rooms guide's game flow with the official client: `room:create`, a join by code,
/// the state kept by the host and handed to the next one.
#[test]
fn node_rooms() {
    node_suite("rooms.test.js");
}

/// The official Socket.IO Admin UI's protocol with the official client: a bcrypt login
/// refused and accepted, `server_stats` and `all_sockets` describing players of both shards,
/// the changes as they happen and the `join`, `leave` and `_disconnect` commands.
#[test]
fn node_admin_ui() {
    node_suite("admin_ui.test.js");
}

/// Matchmaking with the official client: `mm:queue` into a room the players are members
/// of already, a party never split, `mm:cancel`, `mm:timeout`, a disconnect that withdraws
/// a party, refusals that touch nobody else, and the guide's matched game up to the host's
/// migration.
#[test]
fn node_matchmaking() {
    node_suite("matchmaking.test.js");
}

#[test]
fn node_auth() {
    node_suite("auth.test.js");
}

/// `[[auth.rooms]]` rules as the official client sees them: `{error: "forbidden", message}`
/// on the join and send acks, and the `error` event without an ack.
#[test]
fn node_room_rules() {
    node_suite("room_rules.test.js");
}

/// Rooms across nodes with the official client: two `corelay serve` processes on one
/// `redis-server` (Debian's, which the README's test command installs), clients of one room
/// on both. Every message crosses once and in its sender's order, Buffers intact, and
/// `member_joined` / `member_left` carry the room's count across nodes, over WebSocket and
/// long-polling alike.
#[test]
fn node_cluster() {
    node_suite("cluster.test.js");
}

/// Socket.IO recovery across nodes: the official client's node is killed, a proxy sends
/// its reconnect to another node, and it comes back `recovered` with what it missed.
#[test]
fn node_cluster_recovery() {
    node_suite("cluster_recovery.test.js");
}

/// The official SocketCluster client (issue 13): invoke with a result and an error,
/// channels shared with socket.io clients both ways (binary too), JWT `#authenticate` and
/// a refusal, a token the server issues, middleware refusals as errors, a reconnection
/// after a restart that resubscribes by itself, and 500 clients in 50 channels with every
/// message delivered once.
#[test]
fn node_socketcluster() {
    node_suite("socketcluster.test.js");
}

#[test]
fn node_500_clients() {
    node_suite("load.test.js");
}

#[test]
fn python_client() {
    let mut cmd = python();
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_python_client.py",
    ]);
    run_suite("test_python_client.py", cmd, SUITE_BUDGET);
}

/// A native client and a socket.io client (over `transport`) in one room of an in-process
/// server: JSON and binary payloads each way keep their kind.
fn mixed_room(transport: &'static str) {
    let server = common::server(2, |_| {});
    let addr = server.local_addr();
    // Check the prerequisites before entering the executor, for a clear failure.
    drop(node());
    common::run(move || async move {
        let room = format!("mixed-{transport}");
        let mut native = common::connect(addr).await;
        assert_eq!(native.join(&room).await.expect("native joins"), 1);
        let native_id = native.player().to_string();

        let mut peer = MixedPeer::spawn(node(), &format!("http://{addr}"), &room, transport);
        let joined = peer.next().await;
        assert_eq!(joined["type"], "joined", "first line: {joined}");
        assert_eq!(joined["members"], 2, "{joined}");
        // An anonymous player's id is its socket id, server-made digits.
        let sio_id: String = joined["id"]
            .as_str()
            .filter(|id| id.parse::<u64>().is_ok())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("socket.io id is a player id: {joined}"));

        // Native side: the socket.io client joins, then its object and its Buffer arrive.
        let mut messages = Vec::new();
        while messages.len() < 2 {
            match native.next_event().await.expect("native event") {
                ServerEvent::MemberJoined {
                    room: r,
                    player,
                    members,
                } => {
                    assert_eq!(
                        (r.as_str(), player.as_str(), members),
                        (room.as_str(), sio_id.as_str(), 2)
                    );
                    assert!(messages.is_empty(), "member_joined comes first");
                }
                ServerEvent::Message {
                    room: r,
                    from,
                    event,
                    payload,
                    kind,
                } => {
                    assert_eq!(
                        (r.as_str(), from.as_str()),
                        (room.as_str(), sio_id.as_str())
                    );
                    messages.push((event, payload, kind));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let (event, payload, kind) = &messages[0];
        assert_eq!(event, "from_sio_json");
        assert_eq!(*kind, PayloadKind::Json);
        let value: Value = serde_json::from_slice(payload).expect("JSON text");
        assert_eq!(value, json!({"b": 2, "list": [1, "x"]}));
        let (event, payload, kind) = &messages[1];
        assert_eq!(event, "from_sio_bin");
        assert_eq!(*kind, PayloadKind::Binary);
        assert_eq!(&payload[..], &[1, 2, 3, 255]);

        // Socket.IO side: binary arrives as a Buffer, JSON as an object, both from us.
        native
            .send(
                &room,
                "from_native_bin",
                &[0, 1, 2, 254, 255],
                PayloadKind::Binary,
            )
            .await
            .expect("native sends binary");
        native
            .send(&room, "from_native_json", br#"{"a":1}"#, PayloadKind::Json)
            .await
            .expect("native sends JSON");
        let bin = peer.next_event("from_native_bin").await;
        assert_eq!(bin["binary"], true, "{bin}");
        assert_eq!(
            bin["payload"],
            json!({"buffer": [0, 1, 2, 254, 255]}),
            "{bin}"
        );
        assert_eq!(bin["from"], native_id.as_str(), "{bin}");
        let obj = peer.next_event("from_native_json").await;
        assert_eq!(obj["binary"], false, "{obj}");
        assert_eq!(obj["payload"], json!({"a": 1}), "{obj}");
        assert_eq!(obj["from"], native_id.as_str(), "{obj}");

        peer.finish();
        // The socket.io client's departure reaches the native member at once.
        match native.next_event().await.expect("native event") {
            ServerEvent::MemberLeft {
                player, members, ..
            } => assert_eq!((player.as_str(), members), (sio_id.as_str(), 1)),
            other => panic!("unexpected {other:?}"),
        }
        let _ = native.close().await;
    });
    server.stop().expect("server stops");
}

/// The official SocketCluster client (`sc_peer.js`) subscribed to the channel of a native
/// member's room: a native `publish` is the channel's message, another event arrives as
/// `{event, data, from}` with binary as the codec's base64 object, and the client's publishes
/// reach the native member as the event `publish`, JSON as JSON and a Buffer as binary.
#[test]
fn socketcluster_meets_native_clients() {
    let server = common::server(2, |_| {});
    let addr = server.local_addr();
    drop(node());
    common::run(move || async move {
        let channel = "mixed-sc";
        let mut native = common::connect(addr).await;
        native.join(channel).await.expect("native joins");
        let native_id = native.player().to_string();
        let port = addr.port().to_string();
        let mut peer = MixedPeer::spawn_script(node(), &["sc_peer.js", &port, channel]);
        let subscribed = peer.next().await;
        assert_eq!(subscribed["type"], "subscribed", "first line: {subscribed}");
        let sc_id = subscribed["id"].as_str().expect("an id").to_owned();
        loop {
            if let ServerEvent::MemberJoined { player, .. } = native.next_event().await.unwrap() {
                assert_eq!(player, sc_id);
                break;
            }
        }

        native
            .send(channel, "publish", br#"{"a":[1,"x"]}"#, PayloadKind::Json)
            .await
            .unwrap();
        native
            .send(channel, "move", &[1, 2, 3, 255], PayloadKind::Binary)
            .await
            .unwrap();
        let message = peer.next().await;
        assert_eq!(message, json!({"type": "message", "data": {"a": [1, "x"]}}));
        let message = peer.next().await;
        assert_eq!(
            message["data"],
            json!({"event": "move", "data": {"base64": true, "data": "AQID/w=="}, "from": native_id})
        );

        peer.command(json!({"publish": {"b": 2}}));
        peer.command(json!({"publish_buffer": [7, 8, 9]}));
        let mut got = Vec::new();
        while got.len() < 2 {
            if let ServerEvent::Message {
                from,
                event,
                payload,
                kind,
                ..
            } = native.next_event().await.unwrap()
            {
                assert_eq!((from.as_str(), event.as_str()), (sc_id.as_str(), "publish"));
                got.push((payload, kind));
            }
        }
        assert_eq!(got[0].1, PayloadKind::Json);
        let value: Value = serde_json::from_slice(&got[0].0).unwrap();
        assert_eq!(value, json!({"b": 2}));
        assert_eq!(
            got[1],
            (bytes::Bytes::from_static(&[7, 8, 9]), PayloadKind::Binary)
        );
        peer.finish();
        let _ = native.close().await;
    });
    server.stop().expect("server stops");
}

#[test]
fn mixed_room_websocket() {
    mixed_room("websocket");
}

#[test]
fn mixed_room_polling() {
    mixed_room("polling");
}

/// Event names that socket.io clients reserve, relayed from either side, are refused to
/// their sender; the official client in the room is not disconnected by them (it would
/// drop its connection with a parse error on `disconnect` or `connect`) and still gets
/// what follows.
fn mixed_room_reserved_names(transport: &'static str) {
    let server = common::server(2, |_| {});
    let addr = server.local_addr();
    drop(node());
    common::run(move || async move {
        let room = format!("reserved-{transport}");
        let mut native = common::connect(addr).await;
        native.join(&room).await.expect("native joins");
        let mut peer = MixedPeer::spawn(node(), &format!("http://{addr}"), &room, transport);
        let joined = peer.next().await;
        assert_eq!(joined["members"], 2, "{joined}");
        let sio_id: String = joined["id"].as_str().unwrap().to_owned();

        // The native client's reserved names come back to it as errors.
        for event in ["disconnect", "connect"] {
            native
                .send(&room, event, b"{}", PayloadKind::Json)
                .await
                .expect("native sends");
            let code = glommio::timer::timeout(Duration::from_secs(10), async {
                Ok(native.next_error().await)
            })
            .await
            .unwrap_or_else(|_| panic!("no error answered to {event:?}"))
            .expect("native connection stays");
            assert_eq!(code, ErrorCode::ReservedName as u16, "{event}");
        }
        // The socket.io client is still connected and gets the next event.
        native
            .send(&room, "after", br#"{"ok":true}"#, PayloadKind::Json)
            .await
            .expect("native sends");
        let after = peer.next_event("after").await;
        assert_eq!(after["payload"], json!({"ok": true}), "{after}");

        // The socket.io client's `to` with a reserved name gets the error as its ack.
        peer.emit_to(&room, "disconnect", json!(1));
        let ack = peer.next_ack().await;
        assert_eq!(ack["event"], "disconnect", "{ack}");
        assert_eq!(ack["answer"], json!({"error": "reserved_name"}), "{ack}");
        peer.emit_to(&room, "still_here", json!(2));
        let ack = peer.next_ack().await;
        assert_eq!(ack["answer"], json!({"room": room}), "{ack}");
        // The native side saw the socket.io client's messages, none under a reserved name.
        loop {
            match native.next_event().await.expect("native event") {
                ServerEvent::Message { event, from, .. } => {
                    assert_eq!(from, sio_id);
                    assert!(
                        ["from_sio_json", "from_sio_bin", "still_here"].contains(&event.as_str()),
                        "{event}"
                    );
                    if event == "still_here" {
                        break;
                    }
                }
                ServerEvent::MemberJoined { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        peer.finish();
        let _ = native.close().await;
    });
    server.stop().expect("server stops");
}

#[test]
fn mixed_room_reserved_names_websocket() {
    mixed_room_reserved_names("websocket");
}

#[test]
fn mixed_room_reserved_names_polling() {
    mixed_room_reserved_names("polling");
}
