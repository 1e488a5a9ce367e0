//! The Rust client on real sockets: connecting from a bound address, masking keys.

mod common;

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use common::{run, server};
use corelay::client::{ws, Client, ClientConfig, ClientError};

/// A listener on 127.0.0.1 whose accept queue is full, so the kernel drops further SYNs
/// and a connect to it hangs (the SYN is retried for about two minutes). It is closed when
/// `done` says so, or after 20 s, so that even a client that blocks its thread in connect
/// gets an answer (a reset) and the test ends.
fn unanswering_address(done: mpsc::Receiver<()>) -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&local.into()).unwrap();
    // A backlog of 0 queues one connection; the second fills the queue in any case.
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fill = vec![std::net::TcpStream::connect(addr).unwrap()];
    let second = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None).unwrap();
    let _ = second.connect(&addr.into());
    std::thread::spawn(move || {
        let _ = done.recv_timeout(Duration::from_secs(20));
        fill.clear();
        drop((second, listener));
    });
    addr
}

#[test]
fn a_bound_connect_to_a_peer_that_does_not_answer_leaves_the_executor_running() {
    let (done, closer) = mpsc::channel();
    let addr = unanswering_address(closer);
    run(move || async move {
        let pending = Rc::new(Cell::new(true));
        let seen = Rc::clone(&pending);
        // Another task on the same executor: its timer fires only if the executor runs.
        let other = glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            seen.get()
        });
        let result = ws::connect(
            addr,
            "test",
            "/ws",
            Some(IpAddr::from([127, 0, 0, 1])),
            1 << 20,
            Duration::from_millis(500),
        )
        .await;
        pending.set(false);
        assert!(
            other.await,
            "another task ran while the connect was in progress"
        );
        assert!(
            matches!(result, Err(ClientError::Timeout)),
            "the connect times out: {:?}",
            result.err()
        );
    });
    let _ = done.send(());
}

#[test]
fn a_client_bound_to_a_local_address_is_served() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut config = ClientConfig::new(common::url(addr));
        config.bind = Some(IpAddr::from([127, 0, 0, 2]));
        let mut client = Client::connect(&config)
            .await
            .expect("bound client connects");
        client.ping().await.expect("pong");
        // A bound connect to a closed port fails with the kernel's refusal, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        config.url = format!("ws://127.0.0.1:{port}/ws");
        match Client::connect(&config).await {
            Err(ClientError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    });
    srv.stop().unwrap();
}

#[test]
fn two_clients_of_one_server_port_mask_with_different_keys() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let mut firsts = Vec::new();
        for _ in 0..2 {
            let (tx, _rx) =
                ws::connect(addr, "test", "/ws", None, 1 << 20, Duration::from_secs(10))
                    .await
                    .expect("upgrade");
            firsts.push((0..4).map(|_| tx.next_mask()).collect::<Vec<_>>());
        }
        assert_ne!(firsts[0], firsts[1]);
    });
    srv.stop().unwrap();
}
