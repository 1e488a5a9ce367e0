//! Who gets in: the connection caps checked at accept (`max_connections`,
//! `max_connections_per_ip`), and the `Origin` check of WebSocket upgrades and CORS
//! answers (`cors_origins`). Each refusal is followed by a check that the clients already
//! in, or from elsewhere, are still served.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{connect, run, server, url, wait_for_stats};
use corelay::client::{Client, ClientConfig, ClientError};
use corelay::stats::Refusal;
use socket2::{Domain, Socket, Type};

/// Loopback addresses: Linux answers the whole of 127.0.0.0/8, so each is a distinct source
/// address for the per-address caps.
fn local(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Opens a raw connection from `from`, sends `request` and returns everything read until
/// the server closes, or up to the end of a `101` head (an upgraded connection stays
/// open). Bounded by a read timeout, so a server that never answers fails the test
/// instead of hanging it.
fn exchange(addr: SocketAddr, from: IpAddr, request: &str) -> String {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A refused connection may be closed before the request is written: what was answered
    // is what counts.
    let _ = s.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // A reset after the answer ends the read with an error, as the end of stream does.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A native client connecting from `from`.
async fn connect_from(addr: SocketAddr, from: IpAddr) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(url(addr));
    config.bind = Some(from);
    Client::connect(&config).await
}

/// Connects from `from` until admitted. A place is given back when the server closes the
/// socket, a moment after the client has seen the close, and nothing tells the client
/// when: so it tries again (bounded) while it is refused.
async fn connect_admitted(addr: SocketAddr, from: IpAddr) -> Client {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match connect_from(addr, from).await {
            Ok(c) => return c,
            Err(e) if Instant::now() >= until => panic!("never admitted again: {e}"),
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn assert_503(answer: &str) {
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer:?}");
}

#[test]
fn a_fourth_connection_from_one_address_reads_503_while_the_three_are_served() {
    let srv = server(1, |c| c.max_connections_per_ip = 3);
    let addr = srv.local_addr();
    run(move || async move {
        let mut three = Vec::new();
        for _ in 0..3 {
            three.push(connect_from(addr, local(1)).await.expect("admitted"));
        }
        assert_503(&exchange(addr, local(1), &format!("{UPGRADE}\r\n")));
        // The three are still served, and so is another address.
        for c in &mut three {
            c.ping().await.expect("served while the fourth is refused");
        }
        let mut other = connect_from(addr, local(2)).await.expect("another address");
        other.ping().await.unwrap();
        // One leaves: its place is given back, and only one.
        three.pop().unwrap().close().await.unwrap();
        let mut again = connect_admitted(addr, local(1)).await;
        again.ping().await.unwrap();
        assert_503(&exchange(addr, local(1), &format!("{UPGRADE}\r\n")));
    });
    let stats = wait_for_stats(&srv, |s| s.refused_for(Refusal::ConnectionsPerIp) >= 2);
    assert!(stats.refused_for(Refusal::ConnectionsPerIp) >= 2, "{stats}");
    assert_eq!(stats.refused_for(Refusal::Connections), 0, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_connection_past_the_server_cap_reads_503_while_the_others_are_served() {
    let srv = server(2, |c| c.max_connections = 3);
    let addr = srv.local_addr();
    run(move || async move {
        // From three addresses, over both shards: the cap is the server's.
        let mut three = Vec::new();
        for n in 1..=3 {
            three.push(connect_from(addr, local(n)).await.expect("admitted"));
        }
        assert_503(&exchange(addr, local(4), &format!("{UPGRADE}\r\n")));
        for c in &mut three {
            c.ping().await.expect("served while the fourth is refused");
        }
        three.remove(0).close().await.unwrap();
        let mut again = connect_admitted(addr, local(4)).await;
        again.ping().await.unwrap();
        assert_503(&exchange(addr, local(5), &format!("{UPGRADE}\r\n")));
    });
    let stats = wait_for_stats(&srv, |s| s.refused_for(Refusal::Connections) >= 2);
    assert!(stats.refused_for(Refusal::Connections) >= 2, "{stats}");
    srv.stop().unwrap();
}

#[test]
fn a_connection_handed_to_another_shard_is_counted_once() {
    let srv = server(2, |c| c.max_connections_per_ip = 3);
    let addr = srv.local_addr();
    run(move || async move {
        // Requests naming a session of shard 0 or 1: those the kernel gives to the other
        // shard are handed, socket and count, to the owner, which answers and closes.
        for i in 0..24 {
            let target = format!("/socket.io/?EIO=4&transport=polling&sid=0{}gone", i % 2);
            let answer = exchange(
                addr,
                local(1),
                &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            );
            // Past the cap the request would read 503: the sockets before it must have
            // given their places back (the client may see the close first, so wait).
            if answer.starts_with("HTTP/1.1 503") {
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        }
        // Every place came back exactly once: three get in, the fourth does not.
        let mut three = Vec::new();
        for _ in 0..3 {
            three.push(connect_admitted(addr, local(1)).await);
        }
        assert_503(&exchange(addr, local(1), &format!("{UPGRADE}\r\n")));
        for c in &mut three {
            c.ping().await.unwrap();
        }
    });
    let stats = srv.stats();
    assert!(stats.handoffs > 0, "no request was handed off: {stats}");
    srv.stop().unwrap();
}

// ----- Origin and CORS -----

const EIO: &str = "/socket.io/?EIO=4&transport=polling";
const EIO_WS: &str = "/socket.io/?EIO=4&transport=websocket";

fn get(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
}

fn ws_upgrade(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// The head of an answer (status line and headers).
fn head(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or(answer, |(h, _)| h)
}

#[test]
fn by_default_no_cors_headers_are_sent() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    let answer = exchange(
        addr,
        local(1),
        &get(EIO, "Origin: https://evil.example\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(!head(&answer).contains("Access-Control-"), "{answer:?}");
    srv.stop().unwrap();
}

#[test]
fn a_wildcard_origin_is_never_paired_with_credentials() {
    let srv = server(1, |c| c.cors_origins = vec!["*".into()]);
    let addr = srv.local_addr();
    for extra in ["Origin: https://any.example\r\n", ""] {
        let answer = exchange(addr, local(1), &get(EIO, extra));
        let head = head(&answer);
        assert!(head.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(
            head.contains("\r\nAccess-Control-Allow-Origin: *"),
            "{answer:?}"
        );
        assert!(
            !head.contains("Access-Control-Allow-Credentials"),
            "{answer:?}"
        );
    }
    // A wildcard restricts no upgrade.
    let upgraded = exchange(
        addr,
        local(1),
        &ws_upgrade(EIO_WS, "Origin: https://any.example\r\n"),
    );
    assert!(upgraded.starts_with("HTTP/1.1 101"), "{upgraded:?}");
    srv.stop().unwrap();
}

#[test]
fn websocket_upgrades_from_unlisted_origins_get_403_on_every_path() {
    let srv = server(1, |c| {
        c.cors_origins = vec!["https://game.example".into()];
        c.handshake_timeout_ms = 300;
    });
    let addr = srv.local_addr();
    let evil = "Origin: https://evil.example\r\n";
    // The native endpoint: 403, closed.
    let native = exchange(addr, local(1), &ws_upgrade("/ws", evil));
    assert!(
        native.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{native:?}"
    );
    // Engine.IO's WebSocket: 403 with the spec's Forbidden body.
    let engine = exchange(addr, local(1), &ws_upgrade(EIO_WS, evil));
    assert!(
        engine.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{engine:?}"
    );
    assert!(
        engine.ends_with(r#"{"code":4,"message":"Forbidden"}"#),
        "{engine:?}"
    );
    // A listed origin, and a client with no Origin at all (no browser), get in.
    let listed = exchange(
        addr,
        local(1),
        &ws_upgrade(EIO_WS, "Origin: https://game.example\r\n"),
    );
    assert!(listed.starts_with("HTTP/1.1 101"), "{listed:?}");
    let stats = wait_for_stats(&srv, |s| s.refused_for(Refusal::Origin) >= 2);
    assert_eq!(stats.refused_for(Refusal::Origin), 2, "{stats}");
    run(move || async move {
        let mut native = connect(addr).await;
        native
            .ping()
            .await
            .expect("a client without Origin is served");
    });
    srv.stop().unwrap();
}
