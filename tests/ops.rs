//! The operator's endpoints (issue 11) over real sockets: `/metrics` read by Prometheus's
//! own Python parser with values checked against traffic the test made, and `/healthz`
//! failing while a shard is stuck.
//!
//! The parser is `prometheus_client` from `tests/interop/.venv` (the README's test command
//! installs it); a missing one fails the test.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corelay::client::PayloadKind;
use corelay::socketio::{Namespace, SocketIo};
use corelay::{Config, Server};
use serde_json::Value;

use common::eio::request;
use common::{connect_on_shard, run, server, wait_for_stats, within};

/// The samples of a `/metrics` answer as Prometheus's Python parser reads them:
/// `name{label="v",...}` (labels sorted) to value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/.venv/bin/python"
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tests/interop/.venv/bin/python: run the README's test command first");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition:\n{text}"
    );
    let parsed: HashMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect()
}

/// Sum of a metric's samples over its shards.
fn total(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Traffic on both shards shows in the exposition as Prometheus reads it: messages in,
/// deliveries, connections and rooms per shard, a refusal by reason, the relay latency as
/// a histogram, and the process figures.
#[test]
fn metrics_count_the_traffic_the_test_made() {
    let srv = server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut a = connect_on_shard(addr, 0).await;
        let mut b = connect_on_shard(addr, 1).await;
        a.join("arena").await.unwrap();
        b.join("arena").await.unwrap();
        for i in 0..10u8 {
            a.send("arena", "move", &[i], PayloadKind::Binary)
                .await
                .unwrap();
        }
        for _ in 0..10 {
            within("a message", b.next_event()).await.unwrap();
        }
        // A Socket.IO session, and an error answered (a room name that is none).
        let (_sio, _codec, _) = common::eio::sio_connect(addr, "/").await;
        assert!(a.join("").await.is_err());
        let response = request(addr, "GET", "/metrics", "", "").await;
        assert_eq!(response.status, 200);
        assert!(
            response.head.contains("text/plain; version=0.0.4"),
            "{}",
            response.head
        );
        let m = parse_metrics(&response.body);
        assert_eq!(total(&m, "corelay_messages_in_total"), 10.0, "{m:?}");
        // Ten messages to b, and a's notice of b's join.
        assert_eq!(total(&m, "corelay_deliveries_total"), 11.0);
        assert_eq!(m[r#"corelay_shards"#], 2.0);
        // Both clients and the scrape itself.
        assert!(m[r#"corelay_connections{shard="0"}"#] >= 1.0);
        assert!(m[r#"corelay_connections{shard="1"}"#] >= 1.0);
        assert_eq!(total(&m, "corelay_rooms"), 1.0);
        assert_eq!(total(&m, "corelay_room_members"), 2.0);
        let sessions = |protocol: &str, transport: &str| {
            (0..2)
                .map(|shard| m[&format!(r#"corelay_sessions{{protocol="{protocol}",shard="{shard}",transport="{transport}"}}"#)])
                .sum::<f64>()
        };
        assert_eq!(sessions("native", "websocket"), 2.0);
        assert_eq!(sessions("socketio", "websocket"), 1.0);
        assert_eq!(sessions("socketio", "polling"), 0.0);
        assert!(m["corelay_process_resident_memory_bytes"] > 1e6);
        assert!(m["corelay_process_open_fds"] > 0.0);
        assert!(m
            .keys()
            .any(|k| k.starts_with("corelay_build_info{version=")));
        let _ = (&mut a, &mut b);
    });
    // The latency histogram is published on each shard's stats tick.
    wait_for_stats(&srv, |s| s.latency.count >= 10);
    run(move || async move {
        let m = parse_metrics(&request(addr, "GET", "/metrics", "", "").await.body);
        assert_eq!(m["corelay_relay_latency_seconds_count"], 10.0, "{m:?}");
        assert_eq!(
            m[r#"corelay_relay_latency_seconds_bucket{le="+Inf"}"#],
            10.0
        );
        assert!(m["corelay_relay_latency_seconds_sum"] > 0.0);
        // Closes and refusals by reason, every reason present (zeros too).
        assert!(m.contains_key(r#"corelay_closes_total{reason="slow_consumer",shard="1"}"#));
        assert!(m.contains_key(r#"corelay_refused_total{reason="room_full",shard="0"}"#));
        assert_eq!(total(&m, "corelay_errors_total"), 1.0);
        let errors = |shard: u32| {
            m[&format!(r#"corelay_errors_total{{code="invalid_name",shard="{shard}"}}"#)]
        };
        assert_eq!(errors(0) + errors(1), 1.0);
    });
}

/// `/healthz` answers 503 naming the shard while one is stuck (here: application code
/// that blocks its thread), and 200 again once it turns; `/readyz` answers 200 when the
/// server serves.
#[test]
fn health_fails_while_a_shard_is_stuck() {
    let app = SocketIo::empty().namespace(
        "/",
        Namespace::relay().on("block", |_, _, _| {
            std::thread::sleep(Duration::from_secs(4))
        }),
    );
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        ..Config::default()
    };
    let srv = Server::start_with(config, app).expect("server starts");
    let addr = srv.local_addr();
    run(move || async move {
        let ok = request(addr, "GET", "/healthz", "", "").await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let body: Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["shards"].as_array().unwrap().len(), 2);
        let ready = request(addr, "GET", "/readyz", "", "").await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        // Block one shard with a socket.io event handled on it.
        let (s, _codec, _) = common::eio::sio_connect(addr, "/").await;
        common::eio::ws_send(&s, r#"42["block"]"#).await;
        // Some health checks land on the stuck shard and wait; those on the other one
        // answer, and once the stall passes the limit (2 s) they say so.
        let start = Instant::now();
        let stalled = loop {
            assert!(
                start.elapsed() < Duration::from_secs(4),
                "never reported stuck"
            );
            let answer = glommio::timer::timeout(Duration::from_millis(300), async {
                Ok(request(addr, "GET", "/healthz", "", "").await)
            })
            .await;
            if let Ok(r) = answer {
                if r.status == 503 {
                    break r;
                }
            }
        };
        let body: Value = serde_json::from_str(&stalled.body).unwrap();
        assert_eq!(body["status"], "stalled");
        let stuck: Vec<&Value> = body["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["alive"] == false)
            .collect();
        assert_eq!(stuck.len(), 1, "{body}");
        // The shard turns again: healthy.
        let healthy = loop {
            let r = request(addr, "GET", "/healthz", "", "").await;
            if r.status == 200 {
                break r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never healthy again"
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        };
        assert!(healthy.body.contains("\"ok\""));
        drop(s);
    });
    srv.stop().unwrap();
}

/// The Grafana dashboard in `tuning/` queries only metrics the server exposes, with the
/// labels it gives them: a renamed metric fails here, not on an operator's empty panel.
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("tuning/grafana-dashboard.json is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("an expr").to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let text = request(addr, "GET", "/metrics", "", "").await.body;
        let samples = parse_metrics(&text);
        for expr in &exprs {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("corelay_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    samples
                        .keys()
                        .any(|k| k.split('{').next() == Some(name.as_str())),
                    "{expr}: no {name} in /metrics"
                );
                rest = &rest[at + name.len()..];
            }
            for label in ["protocol", "transport", "reason", "code", "shard"] {
                if expr.contains(&format!("by ({label}")) || expr.contains(&format!(", {label})")) {
                    assert!(
                        samples.keys().any(|k| k.contains(&format!("{label}=\""))),
                        "{expr}: no metric has the label {label}"
                    );
                }
            }
        }
    });
}

/// Scrapers keep their connection: two requests on one keep-alive connection are both
/// answered, and a method other than GET is 405.
#[test]
fn the_endpoints_keep_a_scrapers_connection_and_answer_only_get() {
    use std::io::{Read, Write};
    let srv = server(1, |_| {});
    let mut s = std::net::TcpStream::connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |s: &mut std::net::TcpStream, request: &str| {
        s.write_all(request.as_bytes()).unwrap();
        // Read one whole answer: its head, then Content-Length bytes.
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        head
    };
    let first = ask(&mut s, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("keep-alive"), "{first}");
    let second = ask(&mut s, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let post = ask(
        &mut s,
        "POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}
