//! Cross-shard queue throughput: one producer thread on CPU 0, one consumer thread on CPU 1,
//! a batch of [`BATCH`] `u64`s through
//!
//! - glommio's bounded shared channel, one `LocalExecutor` per thread, `send().await` and
//!   `recv().await` (what corelay's mesh used before it moved to the shard's own ring),
//!   with the same capacity as `mesh_queue`;
//! - crossbeam's `ArrayQueue`, both ends spinning (the queue the mesh uses now; a shard
//!   reads it once per turn and sleeps on an eventfd instead of spinning);
//! - a `Mutex<VecDeque>`, both ends spinning (the baseline).
//!
//! Each sample is timed from the moment both ends are ready to the consumer's last receive,
//! so thread and executor start-up are not counted. Not under taskset (the bench pins its
//! own threads): `cargo bench --bench mesh`. Figures are in docs/BENCHMARKS.md.

use std::collections::VecDeque;
use std::hint::{black_box, spin_loop};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use crossbeam_queue::ArrayQueue;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

/// Messages per timed batch: enough that one batch takes tens of milliseconds, so the
/// start-up handshake is noise.
const BATCH: u64 = 1_000_000;
/// Queue capacity of every variant: the default `mesh_queue` (config.rs).
const CAPACITY: usize = 4096;
const PRODUCER_CPU: usize = 0;
const CONSUMER_CPU: usize = 1;
/// The executors' io_uring buffer: the benches do no I/O, and the default (10 MiB) is more
/// locked memory than a default `ulimit -l` allows; the server uses the same 256 KiB.
const IO_MEMORY: usize = 256 * 1024;

/// Pins the calling thread to `cpu`. The bench exists to measure a queue between two cores,
/// so failing to pin is fatal rather than quietly measuring something else.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, CPU_SET only writes inside it, and
    // sched_setaffinity(0, ..) reads it for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "sched_setaffinity to CPU {cpu} failed");
}

/// Sum of 0..BATCH, checked by every consumer so that no variant can lose a message.
const EXPECTED_SUM: u64 = BATCH * (BATCH - 1) / 2;

/// One batch through glommio's shared channel.
fn glommio_batch() -> Duration {
    let (tx, rx) = shared_channel::new_bounded::<u64>(CAPACITY);
    let ready = Arc::new(Barrier::new(2));
    let start_ready = Arc::clone(&ready);
    let producer = LocalExecutorBuilder::new(Placement::Fixed(PRODUCER_CPU))
        .name("bench-producer")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let tx = tx.connect().await;
            start_ready.wait();
            let start = Instant::now();
            for i in 0..BATCH {
                tx.send(i).await.expect("consumer alive");
            }
            start
        })
        .expect("producer executor");
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(CONSUMER_CPU))
        .name("bench-consumer")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let rx = rx.connect().await;
            ready.wait();
            let mut sum = 0u64;
            for _ in 0..BATCH {
                sum += rx.recv().await.expect("producer alive");
            }
            assert_eq!(black_box(sum), EXPECTED_SUM);
            Instant::now()
        })
        .expect("consumer executor");
    let start = producer.join().expect("producer");
    let end = consumer.join().expect("consumer");
    end - start
}

/// One batch through two spinning threads; `push` returns the value back when full, `pop`
/// returns `None` when empty.
fn spinning_batch<Q: Send + Sync + 'static>(
    queue: Q,
    push: fn(&Q, u64) -> Result<(), u64>,
    pop: fn(&Q) -> Option<u64>,
) -> Duration {
    let queue = Arc::new(queue);
    let ready = Arc::new(Barrier::new(2));
    let producer = {
        let (queue, ready) = (Arc::clone(&queue), Arc::clone(&ready));
        thread::spawn(move || {
            pin(PRODUCER_CPU);
            ready.wait();
            let start = Instant::now();
            for i in 0..BATCH {
                let mut item = i;
                while let Err(back) = push(&queue, item) {
                    item = back;
                    spin_loop();
                }
            }
            start
        })
    };
    let consumer = thread::spawn(move || {
        pin(CONSUMER_CPU);
        ready.wait();
        let mut sum = 0u64;
        let mut got = 0;
        while got < BATCH {
            match pop(&queue) {
                Some(v) => {
                    sum += v;
                    got += 1;
                }
                None => spin_loop(),
            }
        }
        assert_eq!(black_box(sum), EXPECTED_SUM);
        Instant::now()
    });
    let start = producer.join().expect("producer");
    let end = consumer.join().expect("consumer");
    end - start
}

fn array_queue_batch() -> Duration {
    spinning_batch(ArrayQueue::new(CAPACITY), |q, v| q.push(v), |q| q.pop())
}

fn mutex_batch() -> Duration {
    spinning_batch(
        Mutex::new(VecDeque::with_capacity(CAPACITY)),
        |q, v| {
            let mut q = q.lock().expect("not poisoned");
            if q.len() < CAPACITY {
                q.push_back(v);
                Ok(())
            } else {
                Err(v)
            }
        },
        |q| q.lock().expect("not poisoned").pop_front(),
    )
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh/1M u64, CPU 0 -> CPU 1");
    // One iteration is a whole batch (tens of milliseconds): flat sampling runs the same
    // number of batches per sample, the fewest criterion allows.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(BATCH));
    let batches =
        |iters: u64, batch: fn() -> Duration| -> Duration { (0..iters).map(|_| batch()).sum() };
    g.bench_function("glommio shared_channel", |b| {
        b.iter_custom(|iters| batches(iters, glommio_batch))
    });
    g.bench_function("crossbeam ArrayQueue (spin)", |b| {
        b.iter_custom(|iters| batches(iters, array_queue_batch))
    });
    g.bench_function("Mutex<VecDeque> (spin)", |b| {
        b.iter_custom(|iters| batches(iters, mutex_batch))
    });
    g.finish();
}

criterion_group!(benches, cross_thread);
criterion_main!(benches);
