//! What a matching pass costs at 10,000 waiting tickets on one shard
//! (`corelay::matchmaking::Matchmaker::poll`):
//!
//! - `1v1 pass`: 10,000 solo tickets of the built-in `default` queue (two players, window
//!   100), skills bell-shaped around 1,500, arrived together; one pass matches nearly all.
//!   Throughput is tickets matched per second.
//! - `4-player pass`: the same number in a queue of four with parties of one to three,
//!   four regions and two game modes (eight buckets), so the walk skips tickets that do
//!   not fit. Tickets matched per second.
//! - `pass, nothing matches`: 10,000 tickets no window reaches (1,000 apart), the cost of a
//!   pass a queue pays every `pass_interval_ms` while it waits. Throughput is tickets
//!   passed over per second.
//!
//! Run pinned to one core: `taskset -c 1 cargo bench --bench matchmaking`. Figures belong
//! in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use corelay::matchmaking::{Event, Matchmaker, MatchmakingConfig, Member, Ticket};

const WAITING: usize = 10_000;

/// Builds a matchmaker whose tickets wait since the given instant.
type Build = fn(Instant) -> Matchmaker;

fn config() -> MatchmakingConfig {
    toml::from_str(
        "[queues.squad]\nmatch_size = 4\ncross_region_after_s = 10\nproperties = [\"mode\"]\n",
    )
    .expect("the bench's queue is valid")
}

/// A skill near 1,500 (the sum of three uniforms: most players are average).
fn skill(rng: &mut StdRng) -> f64 {
    (0..3).map(|_| rng.random_range(0.0..1_000.0)).sum()
}

/// A matchmaker with the 1v1 tickets waiting since `t0`.
fn solos(t0: Instant) -> Matchmaker {
    let mut rng = StdRng::seed_from_u64(1);
    let mut mm = Matchmaker::new(&config());
    for player in 0..WAITING as u64 {
        let ticket = Ticket::solo("default", player, skill(&mut rng));
        mm.enqueue(ticket, t0).expect("the queue takes 10,000");
    }
    mm
}

/// A matchmaker with the 4-player tickets (parties included) waiting since `t0`.
fn squads(t0: Instant) -> Matchmaker {
    let mut rng = StdRng::seed_from_u64(2);
    let mut mm = Matchmaker::new(&config());
    let mut player = 0;
    for _ in 0..WAITING {
        let size = [1, 1, 1, 2, 3][rng.random_range(0..5)];
        let members = (0..size)
            .map(|i| Member {
                player: player + i,
                skill: skill(&mut rng),
            })
            .collect();
        player += size;
        let ticket = Ticket::party("squad", members)
            .in_region(["eu", "us", "asia", "sa"][rng.random_range(0..4)])
            .with_property("mode", ["ctf", "dm"][rng.random_range(0..2)]);
        mm.enqueue(ticket, t0).expect("the queue takes 10,000");
    }
    mm
}

/// A matchmaker whose tickets no window reaches.
fn apart(t0: Instant) -> Matchmaker {
    let mut mm = Matchmaker::new(&config());
    for player in 0..WAITING as u64 {
        let ticket = Ticket::solo("default", player, player as f64 * 1_000.0);
        mm.enqueue(ticket, t0).expect("the queue takes 10,000");
    }
    mm
}

/// Tickets one pass of `mm` at `now` matches.
fn matched_tickets(mut mm: Matchmaker, now: Instant) -> u64 {
    mm.poll(now)
        .iter()
        .map(|e| match e {
            Event::Matched { tickets, .. } => tickets.len() as u64,
            Event::TimedOut { .. } => 0,
        })
        .sum()
}

fn pass_10k(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("matchmaking, 10,000 waiting");
    let cases: [(&str, Build); 2] = [("1v1 pass", solos), ("4-player pass", squads)];
    for (name, build) in cases {
        // The throughput is the tickets this very pass matches (the same every run: the
        // tickets come from a fixed seed).
        g.throughput(Throughput::Elements(matched_tickets(build(t0), t0)));
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || build(t0),
                |mut mm| black_box(mm.poll(t0)),
                BatchSize::LargeInput,
            );
        });
    }
    g.throughput(Throughput::Elements(WAITING as u64));
    g.bench_function("pass, nothing matches", |bench| {
        bench.iter_batched(
            || apart(t0),
            |mut mm| {
                let events = mm.poll(t0);
                assert!(events.is_empty());
                black_box(mm)
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, pass_10k);
criterion_main!(benches);
