//! End-to-end: the load generator against an in-process corelay on 127.0.0.1:0.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{run_bounded, BUDGET};
use corelay::{Config, Server};
use corelay_loadgen::{Options, Protocol, Scenario, Spread};
use tungstenite::Message;

fn server() -> Server {
    Server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..Config::default()
    })
    .expect("server starts")
}

fn options(scenario: Scenario, server: &Server) -> Options {
    let mut o = Options::new(
        scenario,
        Protocol::Native,
        format!("ws://{}/ws", server.local_addr()),
    );
    // The server runs in this process, so its /proc figures are ours; that is enough to
    // check that they are read and reported.
    o.server_pid = Some(std::process::id());
    // The drain ends as soon as every owed delivery has arrived; the long limit only keeps
    // a loaded CI machine from turning slowness into loss.
    o.drain = Duration::from_secs(10);
    o
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn relay_run_delivers_everything_and_reports_every_figure() {
    let server = server();
    let mut o = options(Scenario::Relay, &server);
    o.clients = 20;
    o.room_size = 5;
    o.rate = 20.0;
    o.payload = 64;
    o.warmup = Duration::from_millis(500);
    o.duration = Duration::from_secs(2);
    o.slo = Some("p99=500ms,loss=0".parse().unwrap());
    let outcome = run_bounded(o);
    let r = &outcome.report;

    // 20 senders x 20 msg/s x 2 s, each owed to the 4 other members of its room.
    assert_eq!(r.connections.established, 20);
    assert_eq!(r.connections.failed, 0);
    assert_eq!(r.messages.sent, 800);
    assert_eq!(r.messages.expected, 800 * 4);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.messages.duplicated, 0);
    assert_eq!(r.latency.count, r.messages.delivered);
    assert_eq!(r.latency_uncorrected.count, r.messages.delivered);
    assert_eq!(r.pacing_lag.count, 800);
    assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
    assert!(r.latency_uncorrected.p50_us <= r.latency.p50_us);
    assert!(r.slo.as_ref().is_some_and(|s| s.passed), "{:?}", r.slo);
    assert!(!r.distribution.is_empty());
    let server_report = r.server.as_ref().expect("server figures with --server-pid");
    assert!(server_report.rss_end_kib > 0);
    assert!(r.table().contains("intended -> arrival"));

    // Every figure is in the JSON, and the JSON reads back.
    let dir = std::env::temp_dir().join(format!("corelay-loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("relay.json");
    corelay_loadgen::write_json(r, &json_path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    for key in [
        "loadgen_version",
        "label",
        "scenario",
        "protocol",
        "url",
        "started_unix_s",
        "settings",
        "connections",
        "messages",
        "latency",
        "latency_same_node",
        "latency_cross_node",
        "latency_uncorrected",
        "last_member",
        "pacing_lag",
        "handshake",
        "handshake_uncorrected",
        "distribution_of",
        "distribution",
        "server",
        "generator",
        "intervals",
        "slo",
        "warnings",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
    for key in [
        "sent",
        "expected",
        "delivered",
        "lost",
        "duplicated",
        "out_of_order",
        "stale",
        "received_total",
        "sent_per_s",
        "delivered_per_s",
        "drain_s",
        "fanout_complete",
        "fanout_incomplete",
    ] {
        assert!(
            keys(&json["messages"]).contains(&key.to_string()),
            "messages lacks {key}"
        );
    }
    for key in [
        "count",
        "min_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "mean_us",
        "stddev_us",
    ] {
        assert!(
            keys(&json["latency"]).contains(&key.to_string()),
            "latency lacks {key}"
        );
    }
    for key in [
        "pid",
        "cpu_s",
        "cpu_cores",
        "deliveries_per_cpu_s",
        "rss_start_kib",
        "rss_end_kib",
        "rss_peak_kib",
        "hwm_kib",
        "rss_growth_kib",
        "rss_per_connection_bytes",
        "samples",
    ] {
        assert!(
            keys(&json["server"]).contains(&key.to_string()),
            "server lacks {key}"
        );
    }
    for key in [
        "attempted",
        "established",
        "failed",
        "failures",
        "dropped",
        "drops",
    ] {
        assert!(
            keys(&json["connections"]).contains(&key.to_string()),
            "connections lacks {key}"
        );
    }
    for key in ["cpu_s", "cores", "utilization"] {
        assert!(
            keys(&json["generator"]).contains(&key.to_string()),
            "generator lacks {key}"
        );
    }
    let back = corelay_loadgen::read_json(&json_path).unwrap();
    assert_eq!(back.messages.delivered, r.messages.delivered);

    // The other outputs.
    let hgrm_path = dir.join("relay.hgrm");
    corelay_loadgen::write_hgrm(&outcome, &hgrm_path).unwrap();
    let hgrm = std::fs::read_to_string(&hgrm_path).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains(&format!("Total count    = {:>12}]", r.messages.delivered)));
    let svg_path = dir.join("relay.svg");
    corelay_loadgen::write_plot(&[back.clone(), back], &svg_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();

    server.shutdown();
    server.join().unwrap();
}

#[test]
fn socketio_relay_delivers_everything() {
    let server = server();
    let mut o = options(Scenario::Relay, &server);
    o.protocol = Protocol::SocketIo;
    o.url = format!("ws://{}/socket.io/", server.local_addr());
    o.server_pid = None;
    o.clients = 10;
    o.room_size = 5;
    o.rate = 20.0;
    o.payload = 64;
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run_bounded(o).report;
    // 10 senders x 20 msg/s x 1 s, each owed to the 4 other members of its room.
    assert_eq!(r.connections.established, 10);
    assert_eq!(r.messages.sent, 200);
    assert_eq!(r.messages.expected, 200 * 4);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.messages.duplicated, 0);
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn several_urls_split_the_latency_into_same_node_and_cross_node() {
    // One server named twice: two "nodes" that share every room, so everything arrives,
    // and which deliveries count as crossing depends on the URLs' order alone.
    let server = server();
    let mut o = options(Scenario::Relay, &server);
    o.server_pid = None;
    let url = format!("ws://{}/ws", server.local_addr());
    o.url = format!("{url},{url}");
    o.clients = 20;
    o.room_size = 5;
    o.rate = 20.0;
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run_bounded(o).report;
    // Members alternate between the nodes: room 0 is 0,1,0,1,0. A sender with two others
    // on its node owes 2 same-node and 2 cross-node deliveries, one with one other 1 and 3:
    // per round of a room's 5 messages, 8 same-node and 12 cross-node.
    assert_eq!(r.settings.nodes, 2);
    assert_eq!(r.connections.established_per_node, [10, 10]);
    assert_eq!(r.messages.sent, 400);
    assert_eq!(r.messages.delivered, 1600);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.latency_same_node.count, 640);
    assert_eq!(r.latency_cross_node.count, 960);
    assert_eq!(r.latency.count, 1600);
    let table = r.table();
    assert!(table.contains("2 nodes, spread members"), "{table}");
    assert!(table.contains("  same node") && table.contains("  cross node"));
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn the_rooms_spread_keeps_each_room_on_one_of_two_servers() {
    // Two servers that know nothing of each other: a room is whole only if all its
    // members are on one of them.
    let (a, b) = (server(), server());
    let mut o = options(Scenario::Relay, &a);
    o.server_pid = None;
    o.url = format!("ws://{}/ws,ws://{}/ws", a.local_addr(), b.local_addr());
    o.spread = Spread::Rooms;
    o.clients = 20;
    o.room_size = 5;
    o.rate = 20.0;
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run_bounded(o.clone()).report;
    assert_eq!(r.connections.established_per_node, [10, 10]);
    assert_eq!(r.messages.delivered, 1600);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.latency_same_node.count, 1600);
    assert_eq!(r.latency_cross_node.count, 0);
    // Spread by members, every room is split between the two servers, which do not relay
    // to each other: only the same-node deliveries arrive.
    o.spread = Spread::Members;
    o.drain = Duration::from_millis(500);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.established_per_node, [10, 10]);
    assert_eq!(r.messages.expected, 1600);
    assert_eq!(r.messages.delivered, 640);
    assert_eq!(r.latency_cross_node.count, 0);
    for s in [a, b] {
        s.shutdown();
        s.join().unwrap();
    }
}

#[test]
fn fanout_reports_latency_to_the_last_member() {
    let server = server();
    let mut o = options(Scenario::Fanout, &server);
    o.server_pid = None;
    o.clients = 20;
    o.room_size = 10;
    o.rate = 20.0;
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run_bounded(o).report;
    // Two rooms, one sender each, 20 messages each in the window, 9 receivers each.
    assert_eq!(r.settings.senders, 2);
    assert_eq!(r.messages.sent, 40);
    assert_eq!(r.messages.expected, 40 * 9);
    assert_eq!(r.messages.lost, 0);
    assert_eq!(r.messages.fanout_complete, 40);
    assert_eq!(r.messages.fanout_incomplete, 0);
    assert_eq!(r.last_member.count, 40);
    assert!(r.last_member.max_us >= r.latency.p50_us);
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn a_spinning_thread_with_no_sender_still_receives() {
    let server = server();
    let mut o = options(Scenario::Fanout, &server);
    o.server_pid = None;
    // Rooms of 10 and 2 threads: both senders (clients 0 and 10) live on thread 0, so
    // thread 1 only receives; spinning, it must still submit its receives.
    o.clients = 20;
    o.room_size = 10;
    o.threads = 2;
    o.spin = Duration::from_millis(100);
    o.rate = 20.0;
    o.warmup = Duration::from_millis(200);
    o.duration = Duration::from_secs(1);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.dropped, 0);
    assert_eq!(r.messages.sent, 40);
    assert_eq!(r.messages.expected, 40 * 9);
    assert_eq!(r.messages.delivered, r.messages.expected);
    assert_eq!(r.messages.lost, 0);
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn connect_storm_and_idle_hold() {
    let server = server();
    let mut o = options(Scenario::Connect, &server);
    o.clients = 50;
    o.connect_rate = 500.0;
    let r = run_bounded(o).report;
    assert_eq!(r.connections.attempted, 50);
    assert_eq!(r.connections.established, 50);
    assert_eq!(r.handshake.count, 50);
    assert_eq!(r.distribution_of, "handshake");
    assert!(r.handshake.p50_us <= r.handshake.max_us);

    let mut o = options(Scenario::Idle, &server);
    o.clients = 30;
    o.room_size = 5;
    o.duration = Duration::from_millis(500);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.established, 30);
    let s = r.server.expect("server figures");
    assert!(s.rss_per_connection_bytes.is_some());
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn connect_reports_each_interval_once() {
    let server = server();
    let mut o = options(Scenario::Connect, &server);
    o.server_pid = None;
    // A storm of 0.5 s over intervals of 0.1 s: the setup's ticker reports the first
    // intervals, the load loop the rest.
    o.clients = 50;
    o.connect_rate = 100.0;
    o.interval = Duration::from_millis(100);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.established, 50);
    let ticks: Vec<f64> = r.intervals.iter().map(|row| row.t_s).collect();
    assert!(!ticks.is_empty());
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn a_refused_connection_is_counted_with_its_reason() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = Options::new(
        Scenario::Connect,
        Protocol::Native,
        format!("ws://127.0.0.1:{port}/ws"),
    );
    o.clients = 5;
    o.connect_rate = 1000.0;
    let r = run_bounded(o).report;
    assert_eq!(r.connections.attempted, 5);
    assert_eq!(r.connections.failed, 5);
    assert_eq!(
        r.connections.failures.get("connection refused"),
        Some(&5),
        "{:?}",
        r.connections.failures
    );
}

/// A socket.io server for one client that writes an Engine.IO ping in the same write as
/// the join ack, so that the client's codec still holds the ping when the load phase
/// starts. Returns whether the pong came back before the client closed.
fn ping_with_the_join_ack(listener: TcpListener) -> bool {
    fn read_until(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, prefix: &str) {
        while !matches!(ws.read().unwrap(), Message::Text(t) if t.as_str().starts_with(prefix)) {}
    }
    const OPEN: &str = r#"0{"sid":"e","upgrades":[],"pingInterval":600000,"pingTimeout":600000}"#;
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(BUDGET)).unwrap();
    let mut ws = tungstenite::accept(tcp).unwrap();
    ws.send(Message::text(OPEN)).unwrap();
    read_until(&mut ws, "40");
    ws.send(Message::text(r#"40{"sid":"s"}"#)).unwrap();
    read_until(&mut ws, "421[\"join\"");
    ws.write(Message::text(r#"431[{"room":"r","members":1}]"#))
        .unwrap();
    ws.write(Message::text("2")).unwrap();
    ws.flush().unwrap();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "3" => return true,
            Ok(Message::Close(_)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

#[test]
fn a_reply_read_during_the_setup_is_sent_in_the_load_phase() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/socket.io/", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || ping_with_the_join_ack(listener));
    // Idle: the connection never sends, so only the pong can make it write.
    let mut o = Options::new(Scenario::Idle, Protocol::SocketIo, url);
    o.clients = 1;
    o.room_size = 1;
    o.duration = Duration::from_millis(300);
    let r = run_bounded(o).report;
    assert_eq!(r.connections.established, 1);
    assert!(server.join().unwrap(), "the pong was never sent");
}
