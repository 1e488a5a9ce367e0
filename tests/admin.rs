//! The admin dashboard (issue 11, docs/OPERATIONS.md "Dashboard") over real sockets: the
//! token (404 without one configured, 401 without or with a wrong one, the login cookie),
//! the figures of its API and of its live feed against the server's own stats for traffic
//! the test made, and its actions (kick, close a room, drain) on native and Socket.IO
//! clients. `dashboard_in_a_real_browser` runs tests/browser/admin.test.js: Debian's
//! chromium, headless, driven by puppeteer-core (scripts/test.sh installs both).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corelay::client::{PayloadKind, ServerEvent, Stream};
use corelay::net::admin::cookie_value;
use corelay::proto::ws::WsCodec;
use corelay::Server;
use serde_json::{json, Value};
use tungstenite::protocol::Role;

use common::eio::{request, sio_connect, sio_next, ws_next, ws_send, Response};
use common::node::run_suite;
use common::{
    connect, connect_on_shard, room_homed_on, run, server, wait_for_registry, wait_for_stats,
    within,
};

const TOKEN: &str = "test-admin-token-0123456789";

/// Longest the browser test may run before it is killed and fails (it takes a few seconds;
/// a browser that hangs must not hold up the run).
const BROWSER_BUDGET: Duration = Duration::from_secs(120);

fn admin_server(shards: usize) -> Server {
    server(shards, |c| c.admin.token = Some(TOKEN.to_owned()))
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

/// `GET target` with the token.
async fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &bearer(), "").await
}

/// `POST target` with the token and a JSON body.
async fn post(addr: SocketAddr, target: &str, body: Value) -> Response {
    let headers = format!("{}Content-Type: application/json\r\n", bearer());
    request(addr, "POST", target, &headers, &body.to_string()).await
}

fn json_of(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {} {}", r.status, r.body))
}

/// Opens the live feed with `headers` (the token); `Err` with the refusal's status line.
async fn open_feed(addr: SocketAddr, headers: &str) -> Result<(Stream, WsCodec), String> {
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let req = format!(
        "GET /admin/feed HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during the upgrade");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let status = String::from_utf8_lossy(&head[..end])
        .lines()
        .next()
        .unwrap()
        .to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(status);
    }
    let mut codec = WsCodec::new(Role::Client, 1 << 20);
    codec.feed(&head[end..]);
    Ok((s, codec))
}

/// The status line refusing a feed opened with `headers`.
async fn feed_refused(addr: SocketAddr, headers: &str) -> String {
    match open_feed(addr, headers).await {
        Ok(_) => panic!("the feed opened with {headers:?}"),
        Err(status) => status,
    }
}

/// The feed's next message of `kind`, within a few periods.
async fn next_of(s: &Stream, codec: &mut WsCodec, kind: &str) -> Value {
    loop {
        let text = ws_next(s, codec).await.expect("the feed goes on");
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["kind"] == kind {
            return v;
        }
    }
}

/// With no token configured, the dashboard does not exist: every path answers 404, as an
/// unknown path does.
#[test]
fn without_a_token_every_admin_path_is_404() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        for path in corelay::net::admin::ADMIN_PATHS {
            let r = get(addr, path).await;
            assert_eq!(r.status, 404, "GET {path}");
            let r = post(addr, path, json!({"player": "1"})).await;
            assert_eq!(r.status, 404, "POST {path}");
        }
        let login = request(addr, "POST", "/admin/login", "", "token=anything").await;
        assert_eq!(login.status, 404);
        assert_eq!(
            open_feed(addr, &bearer()).await.err().unwrap(),
            "HTTP/1.1 404 Not Found"
        );
    });
    srv.stop().unwrap();
}

/// Without the token, or with a wrong one, nothing is shown and nothing done: 401 (the
/// page answers with its login form). The form's cookie is a digest of the token, never
/// the token, and is HttpOnly and SameSite=Strict. Browsers' POSTs from another origin are
/// refused.
#[test]
fn a_missing_or_wrong_token_gets_401_and_the_login_cookie_opens_the_dashboard() {
    let srv = admin_server(1);
    let addr = srv.local_addr();
    run(move || async move {
        let page = request(addr, "GET", "/admin", "", "").await;
        assert_eq!(page.status, 401);
        assert!(page.body.contains("name=\"token\""), "the login form");
        let wrong = [
            String::new(),
            "Authorization: Bearer test-admin-token-012345678\r\n".to_owned(),
            format!("Authorization: Bearer {TOKEN}x\r\n"),
            format!("Authorization: Basic {TOKEN}\r\n"),
            format!("Cookie: corelay_admin={TOKEN}\r\n"),
            "Cookie: corelay_admin=\r\n".to_owned(),
        ];
        for headers in &wrong {
            for path in ["/admin/api/stats", "/admin/app.js", "/admin/api/rooms"] {
                let r = request(addr, "GET", path, headers, "").await;
                assert_eq!(r.status, 401, "GET {path} with {headers:?}");
            }
            let kick = format!("{headers}Content-Type: application/json\r\n");
            let r = request(addr, "POST", "/admin/api/drain", &kick, "{}").await;
            assert_eq!(r.status, 401, "drain with {headers:?}");
            assert!(feed_refused(addr, headers).await.contains("401"));
        }
        assert_eq!(get(addr, "/admin").await.status, 200);
        assert_eq!(get(addr, "/admin/app.js").await.status, 200);

        let refused = request(addr, "POST", "/admin/login", "", "token=nope").await;
        assert_eq!(refused.status, 401);
        assert!(!refused.head.contains("Set-Cookie"));
        let form = format!("token={}", TOKEN.replace('-', "%2D"));
        let login = request(addr, "POST", "/admin/login", "", &form).await;
        assert_eq!(login.status, 303, "{}", login.head);
        let cookie = login
            .head
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: "))
            .expect("a cookie");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains(TOKEN), "the cookie is not the token");
        let value = format!("corelay_admin={}", cookie_value(TOKEN));
        assert!(cookie.starts_with(&value), "{cookie}");
        let with_cookie = format!("Cookie: theme=dark; {value}\r\n");
        assert_eq!(
            request(addr, "GET", "/admin/api/stats", &with_cookie, "")
                .await
                .status,
            200
        );
        assert!(open_feed(addr, &with_cookie).await.is_ok());

        // A page of another origin cannot act with the operator's cookie.
        let foreign = format!(
            "{with_cookie}Origin: http://evil.example\r\nContent-Type: application/json\r\n"
        );
        let r = request(addr, "POST", "/admin/api/drain", &foreign, "{}").await;
        assert_eq!(r.status, 403);
        let foreign_feed = format!("{with_cookie}Origin: http://evil.example\r\n");
        assert!(feed_refused(addr, &foreign_feed).await.contains("403"));
        let own = format!("{with_cookie}Origin: http://{addr}\r\n");
        assert!(open_feed(addr, &own).await.is_ok());
        // Not JSON: no form of another site can send it without a preflight.
        let form_post = request(addr, "POST", "/admin/api/kick", &with_cookie, "player=1").await;
        assert_eq!(form_post.status, 415);
    });
    srv.stop().unwrap();
}

/// The API and the live feed show the traffic the test made, as the server counts it:
/// connections, rooms, messages in and deliveries on both shards, a room's members and
/// messages, each member's protocol.
#[test]
fn the_api_and_the_feed_report_the_traffic_the_test_made() {
    let srv = admin_server(2);
    let addr = srv.local_addr();
    let room = room_homed_on(1, 2);
    let registry = srv.stats_registry();
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        let (sio, mut codec, sio_name) = sio_connect(addr, "/").await;
        a.join(&room).await.unwrap();
        b.join(&room).await.unwrap();
        ws_send(&sio, &format!("420[\"join\",\"{room}\"]")).await;
        assert!(sio_next(&sio, &mut codec).await.unwrap().starts_with("430"));
        for i in 0..5u8 {
            a.send(&room, "move", &[i], PayloadKind::Binary)
                .await
                .unwrap();
        }
        let mut seen = 0;
        while seen < 5 {
            if let ServerEvent::Message { .. } =
                within("b's message", b.next_event()).await.unwrap()
            {
                seen += 1;
            }
        }

        // The Socket.IO member has its five too: every delivery is counted.
        let mut events = 0;
        while events < 5 {
            let m = sio_next(&sio, &mut codec)
                .await
                .expect("the Socket.IO member's messages");
            events += usize::from(m.contains("[\"move\""));
        }
        // The clients that landed on other shards than asked have gone (their closes are
        // counted as their shards see them).
        let settled = |s: &corelay::Stats| s.connections == 3;
        let stats = wait_for_registry(&registry, settled);
        assert_eq!(stats.messages_in, 5);
        let api = json_of(&get(addr, "/admin/api/stats").await);
        let totals = &api["totals"];
        assert_eq!(totals["connections"], stats.connections);
        assert_eq!(totals["connections"], 3);
        assert_eq!(totals["rooms"], stats.rooms);
        assert_eq!(totals["messages_in"], stats.messages_in);
        assert_eq!(totals["messages_out"], stats.messages_out);
        let per_shard: u64 = api["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["connections"].as_u64().unwrap())
            .sum();
        assert_eq!(per_shard, 3);

        let rooms = json_of(&get(addr, "/admin/api/rooms").await);
        assert_eq!(rooms["matching"], 1);
        assert_eq!(rooms["rooms"][0]["key"], room.as_str());
        assert_eq!(rooms["rooms"][0]["members"], 3);
        assert_eq!(rooms["rooms"][0]["messages"], 5);
        assert_eq!(rooms["rooms"][0]["home"], 1);
        let none = json_of(&get(addr, "/admin/api/rooms?search=zzz").await);
        assert_eq!(none["matching"], 0);

        let detail = json_of(&get(addr, &format!("/admin/api/room?key={room}")).await);
        let mut members: Vec<(String, String, String)> = detail["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let s = |k: &str| m[k].as_str().unwrap().to_owned();
                (s("name"), s("protocol"), s("transport"))
            })
            .collect();
        members.sort();
        let mut expected = vec![
            (
                a.player().to_owned(),
                "native".to_owned(),
                "websocket".to_owned(),
            ),
            (
                b.player().to_owned(),
                "native".to_owned(),
                "websocket".to_owned(),
            ),
            (
                sio_name.clone(),
                "socket.io".to_owned(),
                "websocket".to_owned(),
            ),
        ];
        expected.sort();
        assert_eq!(members, expected);
        assert_eq!(get(addr, "/admin/api/room?key=nowhere").await.status, 404);

        // The feed: the same figures, then the room the page asks for.
        let (feed, mut fc) = open_feed(addr, &bearer()).await.expect("the feed opens");
        let first = next_of(&feed, &mut fc, "stats").await;
        let stats = registry.snapshot();
        assert_eq!(first["totals"]["messages_in"], stats.messages_in);
        assert_eq!(first["totals"]["messages_out"], stats.messages_out);
        assert_eq!(first["totals"]["connections"], stats.connections);
        let listed = next_of(&feed, &mut fc, "rooms").await;
        assert_eq!(listed["rooms"][0]["members"], 3);
        ws_send(&feed, &json!({ "inspect": room }).to_string()).await;
        let inspected = next_of(&feed, &mut fc, "room").await;
        assert_eq!(inspected["home"]["members"], 3);
        assert_eq!(inspected["members"].as_array().unwrap().len(), 3);

        // Traffic between two ticks shows as a rate.
        for i in 0..10u8 {
            a.send(&room, "move", &[i], PayloadKind::Binary)
                .await
                .unwrap();
        }
        let mut peak: f64 = 0.0;
        loop {
            let s = next_of(&feed, &mut fc, "stats").await;
            peak = peak.max(s["totals"]["in_per_s"].as_f64().unwrap_or(0.0));
            if s["totals"]["messages_in"] == 15 && peak > 0.0 {
                assert!(s["latency"]["lifetime"]["count"].as_u64().unwrap() > 0);
                break;
            }
        }
    });
    srv.stop().unwrap();
}

/// A kick ends a native connection (1008 kicked) and a Socket.IO session (DISCONNECT, so
/// the official client does not come back) wherever they are connected, and their rooms
/// hear they were kicked; closing a room takes every member out of it on every shard,
/// each told so, all still connected.
#[test]
fn kick_and_close_room_act_on_native_and_socketio_clients() {
    let srv = admin_server(2);
    let addr = srv.local_addr();
    let room = room_homed_on(0, 2);
    let doomed = room_homed_on(1, 2);
    run(move || async move {
        let mut native = connect_on_shard(addr, 1).await;
        let mut watcher = connect_on_shard(addr, 0).await;
        let (sio, mut codec, sio_name) = sio_connect(addr, "/").await;
        native.join(&room).await.unwrap();
        watcher.join(&room).await.unwrap();
        ws_send(&sio, &format!("420[\"join\",\"{room}\"]")).await;
        assert!(sio_next(&sio, &mut codec).await.unwrap().starts_with("430"));

        // Native: kicked from shard 0's API, connected to shard 1.
        let r = post(
            addr,
            "/admin/api/kick",
            json!({ "player": native.player() }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json_of(&r)["protocol"], "native");
        let closed = within("the kicked client's close", native.closed()).await;
        assert_eq!(closed, Some((1008, "kicked".to_owned())));

        // Socket.IO: its id from the inspector, as the dashboard finds it.
        let detail = json_of(&get(addr, &format!("/admin/api/room?key={room}")).await);
        let id = detail["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == sio_name.as_str())
            .expect("the socket.io member")["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = post(addr, "/admin/api/kick", json!({ "player": id })).await;
        assert_eq!(json_of(&r)["protocol"], "socket.io");
        let mut told = false;
        while let Some(message) = sio_next(&sio, &mut codec).await {
            told |= message == "41";
        }
        assert!(told, "a DISCONNECT before the end");

        // The room heard both go, kicked.
        let mut gone = Vec::new();
        while gone.len() < 2 {
            if let ServerEvent::MemberLeft { player, reason, .. } =
                within("the leave notices", watcher.next_event())
                    .await
                    .unwrap()
            {
                assert_eq!(reason, corelay::proto::native::LeaveReason::Kicked);
                gone.push(player);
            }
        }
        assert!(gone.contains(&sio_name));
        let r = post(addr, "/admin/api/kick", json!({ "player": id })).await;
        assert_eq!(r.status, 404, "gone already");

        // Close a room with members on both shards and both protocols.
        let mut left_in = connect_on_shard(addr, 0).await;
        let mut right_in = connect_on_shard(addr, 1).await;
        let (sio2, mut codec2, _) = sio_connect(addr, "/").await;
        left_in.join(&doomed).await.unwrap();
        right_in.join(&doomed).await.unwrap();
        ws_send(&sio2, &format!("420[\"join\",\"{doomed}\"]")).await;
        assert!(sio_next(&sio2, &mut codec2)
            .await
            .unwrap()
            .starts_with("430"));
        let r = post(addr, "/admin/api/close-room", json!({ "room": doomed })).await;
        assert_eq!(
            (r.status, json_of(&r)["members"].as_u64()),
            (200, Some(3)),
            "{}",
            r.body
        );
        for c in [&mut left_in, &mut right_in] {
            loop {
                match within("the room's end", c.next_event()).await.unwrap() {
                    ServerEvent::Kicked { room } => {
                        assert_eq!(room, doomed);
                        break;
                    }
                    ServerEvent::MemberJoined { .. } => continue,
                    other => panic!("{other:?}"),
                }
            }
            c.ping().await.expect("still connected");
        }
        let kicked = loop {
            let m = sio_next(&sio2, &mut codec2).await.expect("still connected");
            if m.starts_with("42[\"room:kicked\"") {
                break m;
            }
        };
        assert_eq!(
            kicked,
            format!("42[\"room:kicked\",{{\"room\":\"{doomed}\"}}]")
        );
        let rooms = json_of(&get(addr, "/admin/api/rooms").await);
        assert!(rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["key"] != doomed.as_str()));
        let again = post(addr, "/admin/api/close-room", json!({ "room": doomed })).await;
        assert_eq!(again.status, 404);
    });
    let stats = wait_for_stats(&srv, |s| {
        s.closes_for(corelay::stats::CloseReason::Kicked) == 2
    });
    assert_eq!(stats.closes_for(corelay::stats::CloseReason::Kicked), 2);
    srv.stop().unwrap();
}

/// The dashboard's drain asks the whole server to stop, as a signal does; once the
/// clients have gone, it ends.
#[test]
fn the_dashboard_starts_a_drain() {
    let srv = admin_server(2);
    let addr = srv.local_addr();
    let control = srv.control();
    run(move || async move {
        let c = connect(addr).await;
        let r = post(addr, "/admin/api/drain", json!({})).await;
        assert_eq!(r.status, 202);
        assert_eq!(json_of(&r)["draining"], true);
        assert!(control.shutting_down());
        let _ = c.close().await;
    });
    srv.join().unwrap();
}

/// tests/browser/admin.test.js: the page in Debian's chromium (headless) with players of
/// the official socket.io client; the numbers it shows against /metrics, a click on Kick,
/// a click on Close room.
#[test]
fn dashboard_in_a_real_browser() {
    let setup =
        "run scripts/test.sh (it installs Debian's chromium and `npm ci --prefix tests/interop`, \
                 which brings puppeteer-core)";
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.is_file(),
        "Debian's chromium is missing ({}): the dashboard's browser test needs it; {setup}",
        chromium.display()
    );
    let interop = common::node::interop_dir();
    assert!(
        interop.join("node_modules").join("puppeteer-core").is_dir(),
        "{} has no node_modules/puppeteer-core: {setup}",
        interop.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin.test.js");
    let mut cmd = common::node::command(setup);
    cmd.env("CORELAY_BIN", env!("CARGO_BIN_EXE_corelay"))
        .env("NODE_PATH", interop.join("node_modules"))
        .env("CHROMIUM", &chromium)
        .args(["--test", "--test-reporter=spec"])
        .arg(&script);
    // Its own process group: the browser and the server it starts end with it.
    run_suite("tests/browser/admin.test.js", cmd, BROWSER_BUDGET);
}
