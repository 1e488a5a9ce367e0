//! What session resume costs: a room's replay ring per message (one shard, `Relay::send` to
//! a 2-member room with history against the same without), and a resume that replays 1,000
//! missed messages (`Relay::resume` + `Relay::replay_missed`, the frames queued to the
//! resuming client's outbox).
//!
//! Run pinned to one core: `taskset -c 0 cargo bench --bench resume`. Figures belong in
//! docs/BENCHMARKS.md.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use corelay::auth::Identity;
use corelay::proto::native::PayloadKind;
use corelay::relay::{
    Body, Drained, HistoryLimits, Outbox, OutboxLimits, Relay, RelayLimits, Wire,
};
use corelay::stats::ShardStats;

const ROOM: &str = "arena-42";
const MISSED: usize = 1_000;

/// Limits no bench reaches: an overflow would close the outbox and turn pushes into no-ops.
const OUTBOX: OutboxLimits = OutboxLimits {
    frames: 1 << 20,
    bytes: 1 << 30,
};

fn limits(history: bool) -> RelayLimits {
    RelayLimits {
        max_name_len: 64,
        max_rooms_per_connection: 16,
        max_room_members: 10_000,
        max_message_bytes: 1 << 20,
        // The defaults of `[resume]`, with room for the 1,000 missed messages.
        rooms: corelay::config::RoomsConfig::DEFAULT,
        history: history.then_some(HistoryLimits {
            messages: MISSED,
            bytes: 1 << 20,
            window: Duration::from_secs(120),
            socketio: true,
        }),
    }
}

fn event(i: u32) -> Body {
    Body::Event {
        from: Arc::from("sender"),
        event: "move".into(),
        payload: Bytes::copy_from_slice(&[i as u8; 64]),
        kind: PayloadKind::Binary,
    }
}

/// A relay with a 2-member room: player 0 sends, player 1 (resumable) receives.
fn room(history: bool) -> (Relay, Rc<Outbox>, Rc<Outbox>) {
    let mut relay = Relay::new(0, 1, limits(history), Arc::new(ShardStats::default()));
    let now = Instant::now();
    let (a, b) = (Rc::new(Outbox::new(OUTBOX)), Rc::new(Outbox::new(OUTBOX)));
    relay.connect(
        0,
        Identity::anonymous("0".into()),
        Wire::Native,
        Rc::clone(&a),
    );
    relay.connect(
        1,
        Identity::anonymous("1".into()),
        Wire::Native,
        Rc::clone(&b),
    );
    relay.open_session(1, "secret");
    relay.join(0, None, ROOM, now).unwrap();
    relay.join(1, None, ROOM, now).unwrap();
    (relay, a, b)
}

fn drain(outbox: &Outbox) {
    let mut out = Vec::new();
    while let Drained::Frames = outbox.drain(&mut out) {
        out.clear();
    }
}

fn ring_per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring per message");
    g.throughput(Throughput::Elements(1));
    for history in [false, true] {
        let (mut relay, _a, b) = room(history);
        let name = if history {
            "send with history"
        } else {
            "send without history"
        };
        let mut i = 0u32;
        g.bench_function(name, |bench| {
            bench.iter(|| {
                i = i.wrapping_add(1);
                relay.send(0, ROOM, event(i), Instant::now()).unwrap();
                if i % 256 == 0 {
                    drain(&b);
                }
            })
        });
    }
    g.finish();
}

fn resume_1000(c: &mut Criterion) {
    let mut g = c.benchmark_group("resume");
    g.throughput(Throughput::Elements(MISSED as u64));
    g.bench_function("1,000 missed messages", |bench| {
        bench.iter_batched(
            || {
                let (mut relay, _a, b) = room(true);
                let now = Instant::now();
                relay.release(1, |o| Rc::ptr_eq(o, &b), true, now);
                for i in 0..MISSED as u32 {
                    relay.send(0, ROOM, event(i), now).unwrap();
                }
                relay
            },
            |mut relay| {
                let now = Instant::now();
                let fresh = Rc::new(Outbox::new(OUTBOX));
                relay
                    .resume(1, "secret", Wire::Native, Rc::clone(&fresh), now)
                    .unwrap();
                relay.replay_missed(1, &[(ROOM, 2)], now);
                black_box(fresh.len());
                relay
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ring_per_message, resume_1000);
criterion_main!(benches);
