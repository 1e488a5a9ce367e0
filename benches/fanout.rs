//! Fan-out of one message to a 100-member room: the frame encoded once and shared by every
//! outbox (what the relay does), against one encoding per recipient; then the whole
//! `Relay::send` path on one shard.
//!
//! Run pinned to one core: `taskset -c 0 cargo bench --bench fanout`. Figures and their
//! interpretation are in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use corelay::proto::native::{PayloadKind, ServerFrame};
use corelay::relay::{
    native_frame, Body, Broadcast, Drained, Outbox, OutboxLimits, PlayerId, Relay, RelayLimits,
    Wire,
};
use corelay::stats::ShardStats;

/// Members of the room, sender included.
const MEMBERS: usize = 100;
const PAYLOAD_LEN: usize = 64;
/// Messages fanned out between two drains. The drain runs outside the timed section, so the
/// figures are the push side only; 256 keeps each outbox far below its limits.
const CHUNK: u64 = 256;
const ROOM: &str = "arena-42";

/// Limits no bench reaches: an overflow would close the outbox and turn pushes into no-ops.
const LIMITS: OutboxLimits = OutboxLimits {
    frames: 1 << 20,
    bytes: 1 << 30,
};

fn payload() -> Bytes {
    Bytes::from((0..PAYLOAD_LEN as u8).collect::<Vec<u8>>())
}

/// The name others see for bench player `p`, as for an anonymous player.
fn name(p: PlayerId) -> std::sync::Arc<str> {
    std::sync::Arc::from(p.to_string())
}

fn event_body(from: PlayerId, payload: &Bytes) -> Body {
    Body::Event {
        from: name(from),
        event: "move".into(),
        payload: payload.clone(),
        kind: PayloadKind::Binary,
    }
}

/// Empties every outbox, as the connections' writers would, and checks none overflowed.
fn drain(outboxes: &[Rc<Outbox>], scratch: &mut Vec<Bytes>) {
    for outbox in outboxes {
        assert!(!outbox.overflowed(), "a bench outbox overflowed");
        match outbox.drain(scratch) {
            Drained::Frames | Drained::Empty => {}
            Drained::Closed => panic!("a bench outbox closed"),
        }
        scratch.clear();
    }
}

/// Runs `fan_out` `iters` times, timing only the fan-outs: the outboxes are drained every
/// [`CHUNK`] messages with the clock stopped.
fn timed(iters: u64, outboxes: &[Rc<Outbox>], mut fan_out: impl FnMut()) -> Duration {
    let mut scratch = Vec::new();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let start = Instant::now();
        for _ in 0..n {
            fan_out();
        }
        total += start.elapsed();
        drain(outboxes, &mut scratch);
        left -= n;
    }
    total
}

fn encode_once_vs_per_recipient(c: &mut Criterion) {
    let outboxes: Vec<Rc<Outbox>> = (0..MEMBERS).map(|_| Rc::new(Outbox::new(LIMITS))).collect();
    let payload = payload();
    let sender: PlayerId = 0;
    let mut g = c.benchmark_group("fanout/100 members");
    // Throughput in recipients: the sender is excluded, as in the relay.
    g.throughput(Throughput::Elements(MEMBERS as u64 - 1));

    g.bench_function("encode once (Broadcast::frame)", |b| {
        b.iter_custom(|iters| {
            timed(iters, &outboxes, || {
                let bcast = Arc::new(Broadcast::new(
                    ROOM.to_owned(),
                    sender,
                    event_body(sender, &payload),
                    Instant::now(),
                ));
                for outbox in &outboxes[1..] {
                    // Cached in the Broadcast's OnceLock after the first recipient: each
                    // push is a refcount increment.
                    let _ = outbox.push(bcast.frame(Wire::Native));
                }
                black_box(&bcast);
            })
        })
    });

    g.bench_function("encode per recipient (native_frame)", |b| {
        b.iter_custom(|iters| {
            timed(iters, &outboxes, || {
                for outbox in &outboxes[1..] {
                    let frame = native_frame(&ServerFrame::Event {
                        room: ROOM.to_owned(),
                        from: sender.to_string(),
                        event: "move".into(),
                        payload: payload.clone(),
                        kind: PayloadKind::Binary,
                        seq: 0,
                    });
                    let _ = outbox.push(frame);
                }
            })
        })
    });
    g.finish();
}

fn relay_send(c: &mut Criterion) {
    let limits = RelayLimits {
        max_name_len: 64,
        max_rooms_per_connection: 16,
        max_room_members: 10_000,
        max_message_bytes: 1 << 20,
        history: None,
        rooms: corelay::config::RoomsConfig::DEFAULT,
    };
    let mut relay = Relay::new(0, 1, limits, Arc::new(ShardStats::default()));
    let outboxes: Vec<Rc<Outbox>> = (0..MEMBERS).map(|_| Rc::new(Outbox::new(LIMITS))).collect();
    let now = Instant::now();
    for (player, outbox) in outboxes.iter().enumerate() {
        relay.connect(
            player as PlayerId,
            corelay::auth::Identity::anonymous(player.to_string()),
            Wire::Native,
            Rc::clone(outbox),
        );
        relay
            .join(player as PlayerId, Some(1), ROOM, now)
            .expect("join");
    }
    // The Joined replies and MemberJoined notices (about 5,000 frames) go out once.
    drain(&outboxes, &mut Vec::new());
    assert_eq!(relay.drain_mesh().count(), 0, "one shard has no mesh");

    let payload = payload();
    let sender: PlayerId = 0;
    let mut g = c.benchmark_group("fanout/100 members");
    g.throughput(Throughput::Elements(MEMBERS as u64 - 1));
    g.bench_function("Relay::send", |b| {
        b.iter_custom(|iters| {
            timed(iters, &outboxes, || {
                // The event name is allocated per message, as the connection task does when
                // it turns the archived Send into a Body.
                relay
                    .send(sender, ROOM, event_body(sender, &payload), Instant::now())
                    .expect("send");
            })
        })
    });
    g.finish();
    assert!(outboxes[1..].iter().all(|o| o.is_open()));
}

fn config() -> Criterion {
    // A fan-out takes microseconds; 3 s of samples per function keep the file under 15 s.
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode_once_vs_per_recipient, relay_send
}
criterion_main!(benches);
