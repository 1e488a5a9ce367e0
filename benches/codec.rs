//! The native codec: encoding a frame, validating one in place, reading its fields, and what
//! a full deserialize into owned values would cost instead (the relay never does it).
//!
//! Run pinned to one core: `taskset -c 0 cargo bench --bench codec`. Figures and their
//! interpretation are in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rkyv::rancor;

use corelay::proto::native::{
    access_client, access_server, encode_client, encode_server, ArchivedClientFrame,
    ArchivedServerFrame, ClientFrame, PayloadKind, ServerFrame,
};
use corelay::relay::native_frame;

/// A game-state update is typically a few dozen bytes (position, velocity, a sequence
/// number); 64 bytes is the size the targets are stated for.
const PAYLOAD_LEN: usize = 64;

fn payload() -> Bytes {
    Bytes::from((0..PAYLOAD_LEN as u8).collect::<Vec<u8>>())
}

fn client_send() -> ClientFrame {
    ClientFrame::Send {
        req: 0,
        room: "arena-42".into(),
        event: "move".into(),
        payload: payload(),
        kind: PayloadKind::Binary,
    }
}

fn server_event() -> ServerFrame {
    ServerFrame::Event {
        room: "arena-42".into(),
        // An anonymous player's id: the 20 digits of a u64 at most.
        from: 0x0001_0000_0000_002a_u64.to_string(),
        event: "move".into(),
        payload: payload(),
        kind: PayloadKind::Binary,
        seq: 1_234,
    }
}

/// Reads every field of a `Send` in place, the way the connection task does before handing
/// the message to the relay: names as `&str`, the payload as a slice.
fn read_send(frame: &ArchivedClientFrame) -> (usize, usize, usize, u8) {
    match frame {
        ArchivedClientFrame::Send {
            room,
            event,
            payload,
            kind,
            ..
        } => {
            let payload = payload.as_slice();
            (
                black_box(room.as_str()).len(),
                black_box(event.as_str()).len(),
                black_box(payload).len(),
                PayloadKind::from(kind) as u8,
            )
        }
        _ => unreachable!("the bench encodes a Send"),
    }
}

fn read_event(frame: &ArchivedServerFrame) -> (usize, usize, usize, usize) {
    match frame {
        ArchivedServerFrame::Event {
            room,
            from,
            event,
            payload,
            ..
        } => (
            black_box(room.as_str()).len(),
            black_box(from.as_str()).len(),
            black_box(event.as_str()).len(),
            black_box(payload.as_slice()).len(),
        ),
        _ => unreachable!("the bench encodes an Event"),
    }
}

fn encode(c: &mut Criterion) {
    let send = client_send();
    let event = server_event();
    let mut g = c.benchmark_group("codec/encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_client(Send)", |b| {
        b.iter(|| encode_client(black_box(&send)))
    });
    g.bench_function("encode_server(Event)", |b| {
        b.iter(|| encode_server(black_box(&event)))
    });
    // What the relay puts in outboxes: the WebSocket header and the frame in one buffer.
    g.bench_function("native_frame(Event)", |b| {
        b.iter(|| native_frame(black_box(&event)))
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let send_bytes = encode_client(&client_send());
    let event_bytes = encode_server(&server_event());
    let mut g = c.benchmark_group("codec/decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("access_client(Send)", |b| {
        b.iter(|| access_client(black_box(&send_bytes)).is_ok())
    });
    g.bench_function("access_server(Event)", |b| {
        b.iter(|| access_server(black_box(&event_bytes)).is_ok())
    });
    // Field reads alone, on a frame validated once outside the loop.
    let archived = access_client(&send_bytes).expect("a valid frame");
    g.bench_function("fields(Send), validated", |b| {
        b.iter(|| read_send(black_box(archived)))
    });
    // The hot path: validate, then read in place.
    g.bench_function("access_client+fields(Send)", |b| {
        b.iter(|| {
            let frame = access_client(black_box(&send_bytes)).expect("a valid frame");
            read_send(frame)
        })
    });
    g.bench_function("access_server+fields(Event)", |b| {
        b.iter(|| {
            let frame = access_server(black_box(&event_bytes)).expect("a valid frame");
            read_event(frame)
        })
    });
    // The comparison: validate, then copy everything out into owned Strings and Bytes.
    g.bench_function("access_client+deserialize(Send)", |b| {
        b.iter(|| {
            let frame = access_client(black_box(&send_bytes)).expect("a valid frame");
            rkyv::deserialize::<ClientFrame, rancor::Error>(frame).expect("deserialize")
        })
    });
    g.bench_function("access_server+deserialize(Event)", |b| {
        b.iter(|| {
            let frame = access_server(black_box(&event_bytes)).expect("a valid frame");
            rkyv::deserialize::<ServerFrame, rancor::Error>(frame).expect("deserialize")
        })
    });
    g.finish();
}

fn config() -> Criterion {
    // Each function runs in nanoseconds: 2 s of samples give tight intervals and keep the
    // whole file near 30 s.
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode
}
criterion_main!(benches);
