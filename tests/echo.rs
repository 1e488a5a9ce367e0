//! The `ws_echo` transport (corelay's own accept, HTTP head, framing and writer): text and
//! binary echo, fragmented messages, control frames, and the RFC 6455 closes.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use corelay::client::Stream;
use corelay::net::echo::{self, EchoConfig};
use corelay::proto::ws::{Incoming, WsCodec};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::Role;
use tungstenite::Message;

/// Starts an echo server; returns its address. The server stops with the test process.
fn echo_server() -> SocketAddr {
    let server = echo::start(EchoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_message_size: 1 << 16,
        ..EchoConfig::default()
    })
    .expect("echo server starts");
    let addr = server.local_addr();
    // Left running: each test binary's process ends when its tests do.
    std::mem::forget(server);
    addr
}

async fn connect(addr: SocketAddr) -> (Stream, WsCodec) {
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let leftover = corelay::client::upgrade(&s, "echo", "/any/path")
        .await
        .unwrap();
    let mut codec = WsCodec::new(Role::Client, 1 << 20);
    codec.feed(&leftover);
    (s, codec)
}

async fn flush(s: &Stream, codec: &mut WsCodec) {
    if let Some(out) = codec.take_output() {
        s.write_all(&out).await.unwrap();
    }
}

async fn next(s: &Stream, codec: &mut WsCodec) -> Incoming {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = codec.poll_message().unwrap() {
            return m;
        }
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return Incoming::Closed(None);
        }
        codec.feed(&buf[..n]);
    }
}

fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Frame::message(Bytes::copy_from_slice(payload), opcode, fin);
    *frame.header_mut() = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    frame.format(&mut out).unwrap();
    out
}

#[test]
fn text_binary_and_fragmented_messages_are_echoed() {
    let addr = echo_server();
    common::run(move || async move {
        let (s, mut codec) = connect(addr).await;
        codec.write(Message::text("héllo")).unwrap();
        codec.write(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        flush(&s, &mut codec).await;
        assert!(
            matches!(next(&s, &mut codec).await, Incoming::Message(Message::Text(t)) if t.as_str() == "héllo")
        );
        assert!(
            matches!(next(&s, &mut codec).await, Incoming::Message(Message::Binary(b)) if b[..] == [0, 1, 2, 255])
        );
        // A message in three fragments comes back whole.
        let mut wire = masked(OpCode::Data(Data::Text), false, b"frag");
        wire.extend(masked(OpCode::Data(Data::Continue), false, b"men"));
        wire.extend(masked(OpCode::Data(Data::Continue), true, b"ted"));
        s.write_all(&wire).await.unwrap();
        assert!(
            matches!(next(&s, &mut codec).await, Incoming::Message(Message::Text(t)) if t.as_str() == "fragmented")
        );
        codec.close(1000, "bye");
        flush(&s, &mut codec).await;
        assert!(matches!(
            next(&s, &mut codec).await,
            Incoming::Closed(Some((1000, _)))
        ));
    });
}

#[test]
fn invalid_utf8_closes_with_1007_and_oversized_with_1009() {
    let addr = echo_server();
    common::run(move || async move {
        let (s, mut codec) = connect(addr).await;
        s.write_all(&masked(OpCode::Data(Data::Text), true, &[0xff, 0xfe]))
            .await
            .unwrap();
        assert!(matches!(
            next(&s, &mut codec).await,
            Incoming::Closed(Some((1007, reason))) if reason == "invalid utf-8"
        ));
        let (s, mut codec) = connect(addr).await;
        codec.write(Message::binary(vec![0u8; 70_000])).unwrap();
        flush(&s, &mut codec).await;
        assert!(matches!(
            next(&s, &mut codec).await,
            Incoming::Closed(Some((1009, reason))) if reason == "message too big"
        ));
        // Unmasked client frames are a protocol error (1002).
        let (s, mut codec) = connect(addr).await;
        s.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
        assert!(matches!(
            next(&s, &mut codec).await,
            Incoming::Closed(Some((1002, reason)))
                if reason == "protocol error: unmasked frame from a client"
        ));
    });
}
