//! The official Socket.IO Admin UI's namespace (`[admin_ui]`, docs/ADMIN_UI.md) over real
//! sockets, for what the Node suite (tests/interop/admin_ui.test.js) cannot reach: native
//! players shown and disconnected as sockets of the main namespace, a login that never
//! stalls its shard, and the settings that turn parts of it off.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corelay::client::Stream;
use corelay::config::AdminUiMode;
use corelay::proto::ws::WsCodec;
use corelay::Config;
use serde_json::{json, Value};

use common::eio::{data, next_starting, sio_next, ws_connect, ws_send, EIO_WS};
use common::{connect_on_shard, run, within};

/// bcryptjs.hashSync("changeit", 4): the package's way to make one, at a cost that keeps a
/// debug build's check short.
const CHANGEIT: &str = "$2b$04$ODKpPaP09MonOJyId/gQyu10cC54.TCiG2ngiptTZhMJwPG5kYH02";

const PREFIX: &str = "42/admin,";

/// A server of `shards` shards with the admin UI on (user `admin`, password `changeit`).
fn server(shards: usize, tweak: impl FnOnce(&mut Config)) -> corelay::Server {
    common::server(shards, |c| {
        c.admin_ui.enabled = true;
        c.admin_ui.username = "admin".to_owned();
        c.admin_ui.password_hash = CHANGEIT.to_owned();
        tweak(c);
    })
}

/// An admin-ui client on a WebSocket; returns the CONNECT answer as sent.
async fn admin(addr: SocketAddr, auth: Value) -> (Stream, WsCodec, String) {
    let (s, mut codec) = ws_connect(addr, EIO_WS).await;
    let open = sio_next(&s, &mut codec).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    ws_send(&s, &format!("40/admin,{auth}")).await;
    let answer = sio_next(&s, &mut codec).await.expect("CONNECT answer");
    (s, codec, answer)
}

/// An admin logged in with the right password.
async fn logged_in(addr: SocketAddr) -> (Stream, WsCodec) {
    let (s, codec, answer) =
        admin(addr, json!({"username": "admin", "password": "changeit"})).await;
    assert!(answer.starts_with("40/admin,{"), "{answer}");
    (s, codec)
}

/// The arguments of the next admin event named `name` (others are skipped).
async fn event(s: &Stream, codec: &mut WsCodec, name: &str) -> Vec<Value> {
    loop {
        let message = next_starting(s, codec, PREFIX).await;
        let v = data(&message, PREFIX);
        if v[0] == name {
            return v.as_array().expect("an event array")[1..].to_vec();
        }
    }
}

/// The arguments of the next admin event named `name` whose arguments `pred` accepts.
async fn event_where(
    s: &Stream,
    codec: &mut WsCodec,
    name: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    loop {
        let args = event(s, codec, name).await;
        if pred(&args) {
            return args;
        }
    }
}

#[test]
fn native_players_are_sockets_of_the_main_namespace_on_every_shard() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut natives = Vec::new();
        for shard in 0..2 {
            let mut c = connect_on_shard(addr, shard).await;
            c.join("arena").await.unwrap();
            natives.push(c);
        }
        let (s, mut codec) = logged_in(addr).await;
        let sockets = within("all_sockets", event(&s, &mut codec, "all_sockets")).await;
        for (shard, c) in natives.iter().enumerate() {
            let listed = sockets[0]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == c.player())
                .unwrap_or_else(|| panic!("{} listed in {sockets:?}", c.player()));
            assert_eq!(listed["nsp"], "/");
            assert_eq!(listed["transport"], "native");
            assert_eq!(listed["rooms"], json!([c.player(), "arena"]));
            assert_eq!(listed["data"]["protocol"], "native");
            assert_eq!(listed["data"]["shard"], shard);
            assert_eq!(listed["handshake"]["url"], "/ws");
            assert_eq!(listed["handshake"]["address"], "127.0.0.1");
        }
        // Their changes, whichever shard they are on.
        for c in &mut natives {
            let id = c.player().to_owned();
            c.leave("arena").await.unwrap();
            let left = |a: &[Value]| a[1] == "arena" && a[2] == id;
            within("room_left", event_where(&s, &mut codec, "room_left", left)).await;
        }
        let newcomer = connect_on_shard(addr, 1).await;
        let id = newcomer.player().to_owned();
        let connected = |a: &[Value]| a[0]["id"] == id;
        let args = within(
            "socket_connected",
            event_where(&s, &mut codec, "socket_connected", connected),
        )
        .await;
        assert_eq!(args[0]["transport"], "native");
        let stats = within("server_stats", event(&s, &mut codec, "server_stats")).await;
        let main = stats[0]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "/")
            .cloned();
        assert_eq!(main, Some(json!({"name": "/", "socketsCount": 3})));
        assert_eq!(stats[0]["clientsCount"], 4, "three natives and the admin");
    });
    srv.stop().unwrap();
}

#[test]
fn an_operator_disconnects_a_native_player() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut victim = connect_on_shard(addr, 1).await;
        let mut bystander = connect_on_shard(addr, 0).await;
        let id = victim.player().to_owned();
        let (s, mut codec) = logged_in(addr).await;
        within("all_sockets", event(&s, &mut codec, "all_sockets")).await;
        ws_send(
            &s,
            &format!("{PREFIX}{}", json!(["_disconnect", "/", false, id])),
        )
        .await;
        let closed = within("the victim's close", victim.closed()).await;
        assert_eq!(
            closed,
            Some((1008, "disconnected by an operator".to_owned()))
        );
        let gone = |a: &[Value]| a[1] == id.as_str();
        let args = within(
            "socket_disconnected",
            event_where(&s, &mut codec, "socket_disconnected", gone),
        )
        .await;
        assert_eq!(args[0], "/");
        bystander.ping().await.expect("the others stay");
    });
    srv.stop().unwrap();
}

#[test]
fn a_login_is_checked_off_the_shard_that_serves_its_players() {
    // A hash far costlier than any a player could wait for (about half a second in a
    // debug build), on the only shard.
    let slow = bcrypt::hash("changeit", 11).unwrap();
    let srv = server(1, |c| c.admin_ui.password_hash = slow);
    let addr = srv.local_addr();
    run(move || async move {
        let mut player = connect_on_shard(addr, 0).await;
        let done = Rc::new(Cell::new(false));
        let finished = Rc::clone(&done);
        let login = glommio::spawn_local(async move {
            let started = Instant::now();
            let answer = admin(addr, json!({"username": "admin", "password": "changeit"})).await;
            finished.set(true);
            (started.elapsed(), answer.2)
        });
        // While the hash is checked, the shard answers its player at once.
        let mut slowest = Duration::ZERO;
        let mut pings = 0;
        let until = Instant::now() + Duration::from_secs(30);
        while !done.get() && Instant::now() < until {
            slowest = slowest.max(player.ping().await.unwrap());
            pings += 1;
        }
        let (took, answer) = within("the login", login).await;
        assert!(answer.starts_with("40/admin,{"), "{answer}");
        assert!(
            pings > 1,
            "pings answered while the login was checked ({took:?})"
        );
        assert!(
            slowest < took / 4,
            "a ping waited {slowest:?} while a login took {took:?}"
        );
    });
    srv.stop().unwrap();
}

#[test]
fn without_admin_ui_there_is_no_admin_namespace() {
    let srv = common::server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (_s, _codec, answer) = admin(addr, json!({"username": "admin"})).await;
        assert_eq!(answer, r#"44/admin,{"message":"Invalid namespace"}"#);
    });
    srv.stop().unwrap();
}

#[test]
fn readonly_and_production_take_commands_and_sockets_away() {
    let srv = server(1, |c| {
        c.admin_ui.readonly = true;
        c.admin_ui.mode = AdminUiMode::Production;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let mut player = connect_on_shard(addr, 0).await;
        let id = player.player().to_owned();
        let (s, mut codec) = logged_in(addr).await;
        let config = within("config", event(&s, &mut codec, "config")).await;
        assert_eq!(
            config[0],
            json!({"supportedFeatures": ["AGGREGATED_EVENTS"]})
        );
        ws_send(
            &s,
            &format!("{PREFIX}{}", json!(["_disconnect", "/", false, id])),
        )
        .await;
        // The command is not there: the server answers it as any unknown event. Counts
        // only: stats come, and no list with them.
        let (mut refused, mut stats) = (None, false);
        while refused.is_none() || !stats {
            let message = within(
                "the refusal and stats",
                next_starting(&s, &mut codec, PREFIX),
            )
            .await;
            let v = data(&message, PREFIX);
            match v[0].as_str() {
                Some("error") => refused = Some(v[1].clone()),
                Some("server_stats") => stats = true,
                other => panic!("production mode sent {other:?}: {message}"),
            }
        }
        assert_eq!(
            refused,
            Some(json!({"error": "unknown_event", "event": "_disconnect"}))
        );
        player.ping().await.expect("the player stays");
    });
    srv.stop().unwrap();
}

#[test]
fn the_admin_namespace_is_no_application_namespace() {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        socketio_namespaces: vec!["/admin".to_owned()],
        ..Config::default()
    };
    config.admin_ui.enabled = true;
    config.admin_ui.auth = false;
    let err = corelay::Server::start(config).unwrap_err();
    assert!(
        err.to_string().contains("admin_ui.namespace /admin"),
        "{err}"
    );
}
