//! Running a scenario: load threads, phases, the main thread's watch, the report.
//!
//! Threads: `--threads` glommio executors, clients dealt round-robin (client `i` lives on
//! thread `i % threads`). Each thread owns its clients, histograms and counts outright;
//! the only things shared are atomics (the load start time, the stop flag, progress
//! counters), the room table (`run/rooms.rs`: each client's room, each room's live member
//! count) and, once per interval, a copy of the thread's interval histogram sent to the
//! main thread.
//!
//! Phases of a run, driven by the main thread:
//!
//! 1. setup: every thread connects (and joins) its clients; receivers start at once.
//!    `matchmake` then has a matching phase (`run/matching.rs`): when every thread has
//!    connected, the main thread publishes the queue origin, every client queues its
//!    ticket at its due time and enters the room it was matched into, and the setup is
//!    done when every ticket has an outcome.
//! 2. load: when every thread is set up, the main thread publishes the load start time;
//!    senders follow their [`Schedule`] from there (warm-up, then the measured window).
//!    `connect` has no setup: its connections *are* the load.
//! 3. drain: after the last send, wait for in-flight messages until every owed delivery
//!    has arrived or `drain` has passed.
//! 4. stop: threads cancel their tasks, close their connections and hand back their
//!    histograms and counts, which the main thread merges into the [`Report`].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver as ChannelReceiver, Sender as ChannelSender, TryRecvError};
use crossbeam::utils::CachePadded;
use futures_lite::future;
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::accounting::Tally;
use crate::metrics::{self, distribution, record_ns, Histograms, LatencySummary};
use crate::options::{Options, ProgressMode, Scenario};
use crate::procfs::{self, ProcSample};
use crate::report::{
    format_us, Connections, GeneratorReport, IntervalRow, MatchmakingReport, Messages, Report,
    RssSample, ServerReport, Settings,
};
use crate::schedule::Schedule;
use crate::tickets::{busiest_rate, TicketTally};
use crate::transport::{reason, Connection, Endpoint, TransportError};
use crate::Error;

mod load;
mod matching;
mod rooms;

use matching::Matching;
use rooms::Rooms;

/// Connections a thread opens at once when not paced: enough to keep the server's accept
/// loop busy, few enough not to overflow a default listen backlog (4096) with 8 threads.
const SETUP_CONCURRENCY: u64 = 256;
/// How often the main thread looks at the run (phase changes, memory peak sampling).
const WATCH_TICK: Duration = Duration::from_millis(20);
/// How often a thread checks the stop flag while it waits.
const THREAD_POLL: Duration = Duration::from_millis(5);
/// Lead time between publishing the load start and the first send, so that every thread
/// sees the start time before it is due.
const START_LEAD: Duration = Duration::from_millis(50);
/// Extra time past the drain before the main thread stops a run whose senders are stuck
/// (a server that stopped reading): every run ends by itself.
const STUCK_GRACE: Duration = Duration::from_secs(5);
/// p99 pacing lag above which the generator is suspected of being late.
const LAG_WARNING_US: u64 = 1_000;
/// Generator CPU use (fraction of its cores) above which it may be the bottleneck (when it
/// does not busy-poll).
const CPU_WARNING: f64 = 0.9;

/// A finished run: the report and the merged histograms (for `--hgrm`).
#[derive(Debug)]
pub struct Outcome {
    /// Every figure of the run.
    pub report: Report,
    /// The merged histograms.
    pub histograms: Histograms,
}

impl Outcome {
    /// The histogram the report's distribution, `--hgrm` and `--slo` use.
    pub fn primary(&self) -> &Histogram<u64> {
        primary(&self.report.scenario, &self.histograms)
    }
}

fn primary<'a>(scenario: &str, h: &'a Histograms) -> &'a Histogram<u64> {
    match scenario {
        "connect" | "idle" => &h.handshake,
        _ => &h.latency,
    }
}

/// Per-thread progress counters, read by the main thread.
#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    setup_done: AtomicBool,
    sending_done: AtomicBool,
    /// `matchmake`: every connection of the thread was attempted.
    connected: AtomicBool,
    /// `matchmake`: tickets queued, matched, and ended otherwise.
    queued: AtomicU64,
    matched: AtomicU64,
    unmatched: AtomicU64,
}

/// What all threads share.
struct Shared {
    opts: Options,
    /// One per node (`--url`), in order.
    endpoints: Vec<Endpoint>,
    /// `endpoints.len()`, for [`Shared::node_of`] on every arrival (`Options::nodes` splits
    /// the URLs each time).
    nodes: usize,
    epoch: Instant,
    /// Load start, ns since `epoch`; `u64::MAX` until published.
    load_start_ns: AtomicU64,
    stop: AtomicBool,
    counters: Vec<CachePadded<Counters>>,
    rooms: Rooms,
    /// `matchmake`: when ticket 0 is due, ns since `epoch`; `u64::MAX` until published.
    queue_start_ns: AtomicU64,
    warmup_ns: u64,
    window_ns: u64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn load_start(&self) -> Option<u64> {
        match self.load_start_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    fn queue_start(&self) -> Option<u64> {
        match self.queue_start_ns.load(Ordering::Acquire) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// Is a message (or connection) due at `intended_ns` part of the measured window?
    fn in_window(&self, intended_ns: u64) -> bool {
        self.load_start().is_some_and(|start| {
            let from = start + self.warmup_ns;
            intended_ns >= from && intended_ns < from + self.window_ns
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The node client `index` is on: [`Options::node_of`], without parsing the URLs.
    fn node_of(&self, index: usize) -> usize {
        let opts = &self.opts;
        opts.spread.node_of(self.nodes, index, opts.room_of(index))
    }
}

/// What one thread records; owned by the thread, shared by its tasks.
struct ThreadState {
    hist: Histograms,
    interval: Histogram<u64>,
    /// The next interval to send to the main thread, counted from the load start: the
    /// setup's ticker and then the load loop take turns with one count.
    next_tick: u64,
    tally: Tally,
    failures: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
    /// Connections established on each node.
    established_per_node: Vec<u64>,
    /// Fan-out, per room: per seq (latest arrival ns after intended, arrivals).
    fanout_arrivals: HashMap<usize, Vec<(u64, u32)>>,
    /// Fan-out, per room of a local sender: per seq, deliveries owed (`u32::MAX`: not
    /// measured).
    fanout_expected: HashMap<usize, Vec<u32>>,
    /// `matchmake`: what came of the thread's tickets, and when the last match arrived (ns
    /// since the epoch).
    tickets: TicketTally,
    last_match_ns: u64,
}

/// What a thread hands back.
struct ThreadResult {
    hist: Histograms,
    tally: Tally,
    failures: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
    established_per_node: Vec<u64>,
    fanout_arrivals: HashMap<usize, Vec<(u64, u32)>>,
    fanout_expected: HashMap<usize, Vec<u32>>,
    tickets: TicketTally,
    last_match_ns: u64,
}

/// A thread's interval histogram, sent to the main thread every interval.
struct Snapshot {
    tick: u64,
    hist: Histogram<u64>,
}

/// Runs the scenario described by `opts` and returns its report. Blocks until the run
/// is over; prints progress to stderr as `opts.progress` says.
pub fn run(opts: &Options) -> Result<Outcome, Error> {
    let endpoints = opts.validate()?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Read the server once up front: a wrong pid fails before any load is made.
    let server_before = match opts.server_pid {
        Some(pid) => Some(procfs::sample(Some(pid)).map_err(|e| Error::ServerPid(pid, e))?),
        None => None,
    };

    let threads = opts.threads;
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        nodes: endpoints.len(),
        endpoints,
        epoch: Instant::now(),
        load_start_ns: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        counters: (0..threads)
            .map(|_| CachePadded::new(Counters::default()))
            .collect(),
        rooms: Rooms::new(opts),
        queue_start_ns: AtomicU64::new(u64::MAX),
        warmup_ns: opts.warmup.as_nanos() as u64,
        window_ns: opts.window().as_nanos() as u64,
    });
    let (snap_tx, snap_rx) = crossbeam::channel::unbounded();

    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let placement = match &opts.cpus {
            Some(cpus) => Placement::Fixed(cpus[t % cpus.len()]),
            None => Placement::Unbound,
        };
        let thread_shared = shared.clone();
        let snap_tx = snap_tx.clone();
        let mut builder = LocalExecutorBuilder::new(placement).name(&format!("loadgen-{t}"));
        if !opts.spin.is_zero() {
            builder = builder.spin_before_park(opts.spin);
        }
        let handle = builder
            .spawn(move || thread_main(thread_shared, t, snap_tx))
            .map_err(|e| Error::Executor(e.to_string()));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.stop.store(true, Ordering::Release);
                return Err(e);
            }
        }
    }
    drop(snap_tx);

    let watch = watch(&shared, &snap_rx, server_before);

    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().map_err(|e| Error::Executor(e.to_string()))?);
    }
    Ok(build_report(opts, &shared, started_unix_s, watch, results))
}

/// What the main thread saw while it watched the run.
struct Watch {
    server_start: Option<ProcSample>,
    server_end: Option<ProcSample>,
    server_peak_kib: u64,
    server_samples: Vec<RssSample>,
    server_lost: bool,
    self_start: Option<ProcSample>,
    self_end: Option<ProcSample>,
    intervals: Vec<IntervalRow>,
    drain: Duration,
    /// `matchmake`: the server at the queue origin and at the end of the matching phase.
    matching_server: (Option<ProcSample>, Option<ProcSample>),
    /// `matchmake`: length of the matching phase.
    matching: Duration,
}

fn total(shared: &Shared, f: impl Fn(&Counters) -> u64) -> u64 {
    shared.counters.iter().map(|c| f(c)).sum()
}

fn all(shared: &Shared, f: impl Fn(&Counters) -> bool) -> bool {
    shared.counters.iter().all(|c| f(c))
}

/// The main thread's part: publish the start, take the window's samples, print progress,
/// decide when the drain is over.
fn watch(
    shared: &Shared,
    snaps: &ChannelReceiver<Snapshot>,
    server_before: Option<ProcSample>,
) -> Watch {
    let opts = &shared.opts;
    let pid = opts.server_pid;
    let mut w = Watch {
        server_start: None,
        server_end: None,
        server_peak_kib: 0,
        server_samples: Vec::new(),
        server_lost: false,
        self_start: None,
        self_end: None,
        intervals: Vec::new(),
        drain: Duration::ZERO,
        matching_server: (None, None),
        matching: Duration::ZERO,
    };
    let mut progress = Progress::new(opts.progress, opts.scenario);
    let interval_ns = opts.interval.as_nanos() as u64;
    let mut pending: BTreeMap<u64, (usize, Histogram<u64>)> = BTreeMap::new();
    let mut drain_start: Option<Instant> = None;
    let mut last_setup_line = Instant::now();

    if opts.scenario == Scenario::Connect {
        publish_start(shared);
    }
    loop {
        std::thread::sleep(WATCH_TICK);
        let now = shared.now_ns();
        // Threads drop their snapshot senders when they stop: then the run is over.
        let mut threads_gone = false;
        loop {
            match snaps.try_recv() {
                Ok(snap) => {
                    let entry = pending
                        .entry(snap.tick)
                        .or_insert_with(|| (0, metrics::histogram()));
                    entry.0 += 1;
                    metrics::merge_into(&mut entry.1, &snap.hist);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    threads_gone = true;
                    break;
                }
            }
        }

        let Some(start) = shared.load_start() else {
            let queue_start = shared.queue_start();
            if all(shared, |c| c.setup_done.load(Ordering::Acquire)) {
                if let Some(origin) = queue_start {
                    w.matching = Duration::from_nanos(now.saturating_sub(origin));
                    w.matching_server.1 = sample_server(pid, &mut w.server_lost);
                }
                publish_start(shared);
            } else if opts.scenario == Scenario::Matchmake
                && queue_start.is_none()
                && all(shared, |c| c.connected.load(Ordering::Acquire))
            {
                w.matching_server.0 = sample_server(pid, &mut w.server_lost);
                let origin = shared.now_ns() + START_LEAD.as_nanos() as u64;
                shared.queue_start_ns.store(origin, Ordering::Release);
            } else if last_setup_line.elapsed() >= Duration::from_secs(1) {
                last_setup_line = Instant::now();
                progress.line(&match queue_start {
                    Some(origin) => format!(
                        "t={:>6.1}s matching: queued {}/{}, matched {}, not matched {}",
                        now.saturating_sub(origin) as f64 / 1e9,
                        total(shared, |c| c.queued.load(Ordering::Relaxed)),
                        total(shared, |c| c.established.load(Ordering::Relaxed)),
                        total(shared, |c| c.matched.load(Ordering::Relaxed)),
                        total(shared, |c| c.unmatched.load(Ordering::Relaxed)),
                    ),
                    None => format!(
                        "connecting: {}/{} established, {} failed",
                        total(shared, |c| c.established.load(Ordering::Relaxed)),
                        opts.clients,
                        total(shared, |c| c.failed.load(Ordering::Relaxed)),
                    ),
                });
            }
            continue;
        };
        let window_from = start + shared.warmup_ns;
        let window_to = window_from + shared.window_ns;

        // Window samples: server and self, at the window's edges; server RSS peak inside.
        if w.self_start.is_none() && now >= window_from {
            w.self_start = procfs::sample(None).ok();
            // In idle, memory growth counts from before the first connection.
            w.server_start = if opts.scenario == Scenario::Idle {
                server_before
            } else {
                sample_server(pid, &mut w.server_lost)
            };
            if let Some(s) = w.server_start {
                w.server_peak_kib = s.rss_kib;
            }
        }
        if w.self_start.is_some() && w.self_end.is_none() {
            if let Some(s) = sample_server(pid, &mut w.server_lost) {
                w.server_peak_kib = w.server_peak_kib.max(s.rss_kib);
                if now >= window_to {
                    w.server_end = Some(s);
                }
            }
            if now >= window_to {
                w.self_end = procfs::sample(None).ok();
            }
        }

        // Interval rows, once every thread has sent its histogram for that interval.
        while let Some(entry) = pending.first_entry() {
            if entry.get().0 < opts.threads {
                break;
            }
            let (tick, (_, hist)) = entry.remove_entry();
            let t_s = (tick * interval_ns) as f64 / 1e9;
            let rss = sample_server(pid, &mut w.server_lost).map(|s| s.rss_kib);
            if let Some(rss_kib) = rss {
                w.server_samples.push(RssSample {
                    t_s: t_s - shared.warmup_ns as f64 / 1e9,
                    rss_kib,
                });
            }
            let row = IntervalRow {
                t_s,
                sent: total(shared, |c| c.sent.load(Ordering::Relaxed)),
                expected: total(shared, |c| c.expected.load(Ordering::Relaxed)),
                delivered: total(shared, |c| c.delivered.load(Ordering::Relaxed)),
                p50_us: hist.value_at_quantile(0.5),
                p99_us: hist.value_at_quantile(0.99),
                max_us: hist.max(),
                server_rss_kib: rss,
            };
            progress.line(&row_text(shared, &row));
            w.intervals.push(row);
        }

        if threads_gone {
            break;
        }
        if shared.stopped() {
            continue;
        }

        // When to stop.
        let everyone_done = all(shared, |c| c.sending_done.load(Ordering::Acquire));
        let stop = match opts.scenario {
            Scenario::Idle => now >= window_to,
            Scenario::Connect => everyone_done,
            Scenario::Relay | Scenario::Fanout | Scenario::Soak | Scenario::Matchmake => {
                if everyone_done {
                    let since = *drain_start.get_or_insert_with(Instant::now);
                    let delivered = total(shared, |c| c.delivered.load(Ordering::Relaxed));
                    let expected = total(shared, |c| c.expected.load(Ordering::Relaxed));
                    w.drain = since.elapsed();
                    delivered >= expected || w.drain >= opts.drain
                } else {
                    // Senders stuck on a server that stopped reading.
                    now >= window_to + (opts.drain + STUCK_GRACE).as_nanos() as u64
                }
            }
        };
        if stop {
            if w.self_end.is_none() {
                w.self_end = procfs::sample(None).ok();
                w.server_end = sample_server(pid, &mut w.server_lost);
            }
            shared.stop.store(true, Ordering::Release);
        }
    }
    progress.finish();
    w
}

fn publish_start(shared: &Shared) {
    let start = shared.now_ns() + START_LEAD.as_nanos() as u64;
    shared.load_start_ns.store(start, Ordering::Release);
}

fn sample_server(pid: Option<u32>, lost: &mut bool) -> Option<ProcSample> {
    let pid = pid?;
    if *lost {
        return None;
    }
    match procfs::sample(Some(pid)) {
        Ok(s) => Some(s),
        Err(_) => {
            *lost = true;
            None
        }
    }
}

fn row_text(shared: &Shared, row: &IntervalRow) -> String {
    let opts = &shared.opts;
    let phase = if row.t_s * 1e9 <= shared.warmup_ns as f64 {
        "warm-up "
    } else {
        ""
    };
    let mut text = match opts.scenario {
        Scenario::Connect | Scenario::Idle => format!(
            "t={:>6.1}s {phase}established {} failed {} handshake p50 {} p99 {} max {}",
            row.t_s,
            total(shared, |c| c.established.load(Ordering::Relaxed)),
            total(shared, |c| c.failed.load(Ordering::Relaxed)),
            format_us(row.p50_us as f64),
            format_us(row.p99_us as f64),
            format_us(row.max_us as f64),
        ),
        _ => format!(
            "t={:>6.1}s {phase}sent {} delivered {}/{} p50 {} p99 {} max {}",
            row.t_s,
            row.sent,
            row.delivered,
            row.expected,
            format_us(row.p50_us as f64),
            format_us(row.p99_us as f64),
            format_us(row.max_us as f64),
        ),
    };
    if let Some(rss) = row.server_rss_kib {
        text.push_str(&format!(" server rss {:.1} MiB", rss as f64 / 1024.0));
    }
    text
}

/// The progress display on stderr.
struct Progress {
    mode: ProgressMode,
    dirty: bool,
}

impl Progress {
    fn new(mode: ProgressMode, scenario: Scenario) -> Self {
        let mode = match mode {
            // A soak's lines are its record: keep them all.
            ProgressMode::Overwrite if scenario == Scenario::Soak => ProgressMode::Lines,
            ProgressMode::Overwrite if !std::io::stderr().is_terminal() => ProgressMode::Lines,
            m => m,
        };
        Self { mode, dirty: false }
    }

    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = match self.mode {
            ProgressMode::Off => return,
            ProgressMode::Lines => writeln!(err, "{text}"),
            ProgressMode::Overwrite => {
                self.dirty = true;
                write!(err, "\r\x1b[2K{text}")
            }
        };
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }
}

/// Runs for `d`, or returns `Err(timeout)` first.
async fn within<T>(
    d: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    future::or(fut, async {
        sleep(d).await;
        Err(TransportError(format!("{what} timed out")))
    })
    .await
}

async fn wait_until(shared: &Shared, mut ready: impl FnMut() -> bool) {
    while !ready() && !shared.stopped() {
        sleep(THREAD_POLL).await;
    }
}

async fn sleep_until_ns(shared: &Shared, at_ns: u64) {
    let now = shared.now_ns();
    if at_ns > now {
        sleep(Duration::from_nanos(at_ns - now)).await;
    }
}

/// One load thread.
async fn thread_main(
    shared: Arc<Shared>,
    t: usize,
    snaps: ChannelSender<Snapshot>,
) -> ThreadResult {
    let opts = &shared.opts;
    let state = Rc::new(RefCell::new(ThreadState {
        hist: Histograms::new(),
        interval: metrics::histogram(),
        next_tick: 1,
        tally: Tally::default(),
        failures: BTreeMap::new(),
        drops: BTreeMap::new(),
        established_per_node: vec![0; opts.nodes()],
        fanout_arrivals: HashMap::new(),
        fanout_expected: HashMap::new(),
        tickets: TicketTally::default(),
        last_match_ns: 0,
    }));
    let local: Vec<usize> = (t..opts.clients).step_by(opts.threads).collect();
    let opened: Rc<RefCell<Vec<(usize, Connection)>>> = Rc::new(RefCell::new(Vec::new()));
    let paced = opts.connect_rate > 0.0;
    let ticker = glommio::spawn_local(ticker(shared.clone(), state.clone(), snaps.clone()));

    // Setup (connect: the storm itself).
    let mut connecting = Vec::with_capacity(local.len());
    // Paced connections are due from the load start in `connect` (and stop at the end of
    // its window), from the thread's start in `idle`.
    let (pace_origin, pace_end) = if opts.scenario == Scenario::Connect {
        wait_until(&shared, || shared.load_start().is_some()).await;
        let start = shared.load_start().unwrap_or(0);
        (start, start + shared.warmup_ns + shared.window_ns)
    } else {
        (shared.now_ns(), u64::MAX)
    };
    let limit = Rc::new(Semaphore::new(SETUP_CONCURRENCY));
    for &index in &local {
        let (shared, state, opened, limit) =
            (shared.clone(), state.clone(), opened.clone(), limit.clone());
        connecting.push(glommio::spawn_local(async move {
            let intended = if paced {
                let due = pace_origin + (index as f64 * 1e9 / shared.opts.connect_rate) as u64;
                if due >= pace_end {
                    return;
                }
                sleep_until_ns(&shared, due).await;
                Some(due)
            } else {
                None
            };
            let _permit = if paced {
                None
            } else {
                match limit.acquire_permit(1).await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                }
            };
            if shared.stopped() {
                return;
            }
            if let Some(conn) = open_client(&shared, t, index, intended, &state).await {
                opened.borrow_mut().push((index, conn));
            }
        }));
    }
    for task in connecting {
        task.await;
    }
    let matching = if opts.scenario == Scenario::Matchmake {
        shared.counters[t].connected.store(true, Ordering::Release);
        wait_until(&shared, || shared.queue_start().is_some()).await;
        let origin = shared.queue_start().unwrap_or_else(|| shared.now_ns());
        let conns = std::mem::take(&mut *opened.borrow_mut());
        let matching = Matching::start(&shared, t, origin, conns, &state);
        matching.resolved(&shared).await;
        Some(matching)
    } else {
        None
    };
    shared.counters[t].setup_done.store(true, Ordering::Release);

    // The load phase runs on the thread's own ring: take every connection apart.
    wait_until(&shared, || shared.load_start().is_some()).await;
    if let Some(matching) = matching {
        *opened.borrow_mut() = matching.finish().await;
    }
    let opened = std::mem::take(&mut *opened.borrow_mut());
    let mut parts = Vec::with_capacity(opened.len());
    for (index, conn) in opened {
        match conn.into_parts().await {
            Ok(p) => parts.push((index, p)),
            Err(e) => {
                if let Some(room) = shared.rooms.of(index) {
                    shared.rooms.left(room);
                }
                *state.borrow_mut().drops.entry(reason(&e.0)).or_default() += 1;
            }
        }
    }
    let schedule = if opts.sends() {
        shared.load_start().map(|start| {
            Schedule::new(
                opts.rate,
                opts.senders() as u64,
                start,
                start + shared.warmup_ns + shared.window_ns,
            )
        })
    } else {
        None
    };
    // From here the loop takes the interval snapshots.
    ticker.cancel().await;
    {
        let mut st = state.borrow_mut();
        if let Err(e) = load::run(&shared, t, parts, schedule, &mut st, &snaps) {
            eprintln!("corelay-loadgen: thread {t}: {e}");
            shared.counters[t]
                .sending_done
                .store(true, Ordering::Release);
        }
    }

    let state = Rc::try_unwrap(state)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| {
            // Every task holding the state has ended above; copy it if one lingers.
            let s = rc.borrow();
            ThreadState {
                hist: s.hist.clone(),
                interval: s.interval.clone(),
                next_tick: s.next_tick,
                tally: s.tally,
                failures: s.failures.clone(),
                drops: s.drops.clone(),
                established_per_node: s.established_per_node.clone(),
                fanout_arrivals: s.fanout_arrivals.clone(),
                fanout_expected: s.fanout_expected.clone(),
                tickets: s.tickets.clone(),
                last_match_ns: s.last_match_ns,
            }
        });
    ThreadResult {
        hist: state.hist,
        tally: state.tally,
        failures: state.failures,
        drops: state.drops,
        established_per_node: state.established_per_node,
        fanout_arrivals: state.fanout_arrivals,
        fanout_expected: state.fanout_expected,
        tickets: state.tickets,
        last_match_ns: state.last_match_ns,
    }
}

/// Connects client `index` (and joins its room). `None` on failure.
async fn open_client(
    shared: &Arc<Shared>,
    t: usize,
    index: usize,
    intended: Option<u64>,
    state: &Rc<RefCell<ThreadState>>,
) -> Option<Connection> {
    let opts = &shared.opts;
    let counters = &shared.counters[t];
    counters.attempted.fetch_add(1, Ordering::Relaxed);
    let node = shared.node_of(index);
    let endpoint = &shared.endpoints[node];
    let bind = opts.source_address(endpoint, index);
    let started = shared.now_ns();
    let intended = intended.unwrap_or(started);
    let fail = |e: TransportError| {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        *state.borrow_mut().failures.entry(reason(&e.0)).or_default() += 1;
    };
    let mut conn = match within(
        opts.connect_timeout,
        "connect",
        Connection::connect(endpoint, bind),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return None;
        }
    };
    let ready = shared.now_ns();
    {
        // Connect records only its window; the other scenarios record all their setup.
        let measured = opts.scenario != Scenario::Connect || shared.in_window(intended);
        if measured {
            let mut st = state.borrow_mut();
            record_ns(&mut st.hist.handshake, ready.saturating_sub(intended));
            record_ns(&mut st.hist.handshake_uncorrected, ready - started);
            if !opts.sends() {
                // The interval histogram shows what the scenario measures.
                record_ns(&mut st.interval, ready.saturating_sub(intended));
            }
        }
    }
    if let Some(room) = shared.rooms.of(index) {
        let name = shared.rooms.name(room);
        if let Err(e) = within(opts.connect_timeout, "join", conn.join(&name)).await {
            fail(e);
            return None;
        }
        shared.rooms.joined(room);
    }
    counters.established.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = state.borrow_mut().established_per_node.get_mut(node) {
        *n += 1;
    }
    Some(conn)
}

/// Sends the thread's interval histogram to the main thread at every interval boundary
/// (counted from the load start).
async fn ticker(
    shared: Arc<Shared>,
    state: Rc<RefCell<ThreadState>>,
    snaps: ChannelSender<Snapshot>,
) {
    wait_until(&shared, || shared.load_start().is_some()).await;
    let Some(start) = shared.load_start() else {
        return;
    };
    let interval = shared.opts.interval.as_nanos() as u64;
    loop {
        let tick = state.borrow().next_tick;
        sleep_until_ns(&shared, start + tick * interval).await;
        let hist = {
            let mut st = state.borrow_mut();
            st.next_tick += 1;
            let h = st.interval.clone();
            st.interval.reset();
            h
        };
        if snaps.send(Snapshot { tick, hist }).is_err() {
            return;
        }
    }
}

fn build_report(
    opts: &Options,
    shared: &Shared,
    started_unix_s: u64,
    w: Watch,
    results: Vec<ThreadResult>,
) -> Outcome {
    let mut hist = Histograms::new();
    let mut tally = Tally::default();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    let mut established_per_node = vec![0u64; opts.nodes()];
    let mut fanout_arrivals: HashMap<usize, Vec<(u64, u32)>> = HashMap::new();
    let mut fanout_expected: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut tickets = TicketTally::default();
    let mut last_match_ns = 0;
    for r in results {
        hist.merge(&r.hist);
        tally.merge(&r.tally);
        tickets.merge(&r.tickets);
        last_match_ns = last_match_ns.max(r.last_match_ns);
        for (k, v) in r.failures {
            *failures.entry(k).or_default() += v;
        }
        for (k, v) in r.drops {
            *drops.entry(k).or_default() += v;
        }
        for (into, n) in established_per_node.iter_mut().zip(r.established_per_node) {
            *into += n;
        }
        for (room, per_seq) in r.fanout_arrivals {
            let into = fanout_arrivals.entry(room).or_default();
            if into.len() < per_seq.len() {
                into.resize(per_seq.len(), (0, 0));
            }
            for (i, (max, n)) in per_seq.into_iter().enumerate() {
                into[i].0 = into[i].0.max(max);
                into[i].1 += n;
            }
        }
        // A room has one sender, on one thread.
        fanout_expected.extend(r.fanout_expected);
    }

    // Fan-out: a message's last-member latency counts once every owed member got it.
    let (mut complete, mut incomplete) = (0u64, 0u64);
    for (room, owed) in &fanout_expected {
        let got = fanout_arrivals.get(room);
        for (seq, &n) in owed.iter().enumerate() {
            if n == u32::MAX || n == 0 {
                continue;
            }
            match got.and_then(|g| g.get(seq)) {
                Some(&(max, arrived)) if arrived >= n => {
                    complete += 1;
                    record_ns(&mut hist.last_member, max);
                }
                _ => incomplete += 1,
            }
        }
    }

    let window_s = opts.window().as_secs_f64();
    let per_s = |n: u64| {
        if window_s > 0.0 {
            n as f64 / window_s
        } else {
            0.0
        }
    };
    let attempted = total(shared, |c| c.attempted.load(Ordering::Relaxed));
    let established = total(shared, |c| c.established.load(Ordering::Relaxed));
    let failed = total(shared, |c| c.failed.load(Ordering::Relaxed));

    let server = match (opts.server_pid, w.server_start, w.server_end) {
        (Some(pid), Some(a), Some(b)) => {
            let cpu_s = (b.cpu_s - a.cpu_s).max(0.0);
            Some(ServerReport {
                pid,
                cpu_s,
                cpu_cores: if window_s > 0.0 {
                    cpu_s / window_s
                } else {
                    0.0
                },
                deliveries_per_cpu_s: if cpu_s > 0.0 {
                    tally.delivered as f64 / cpu_s
                } else {
                    0.0
                },
                rss_start_kib: a.rss_kib,
                rss_end_kib: b.rss_kib,
                rss_peak_kib: w.server_peak_kib.max(b.rss_kib),
                hwm_kib: b.hwm_kib,
                rss_growth_kib: b.rss_kib as i64 - a.rss_kib as i64,
                rss_per_connection_bytes: (opts.scenario == Scenario::Idle && established > 0)
                    .then(|| (b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / established as f64),
                samples: w.server_samples.clone(),
            })
        }
        _ => None,
    };

    let cores = opts
        .cpus
        .as_ref()
        .map_or(procfs::usable_cpus(), |c| c.len())
        .min(opts.threads)
        .max(1);
    let generator = match (w.self_start, w.self_end) {
        (Some(a), Some(b)) => {
            let cpu_s = (b.cpu_s - a.cpu_s).max(0.0);
            GeneratorReport {
                cpu_s,
                cores,
                utilization: if window_s > 0.0 {
                    cpu_s / (window_s * cores as f64)
                } else {
                    0.0
                },
            }
        }
        _ => GeneratorReport {
            cores,
            ..GeneratorReport::default()
        },
    };

    let mut warnings = Vec::new();
    let lag = LatencySummary::of(&hist.pacing_lag);
    if lag.p99_us > LAG_WARNING_US {
        warnings.push(format!(
            "the generator sent late: pacing lag p99 {} (> {}); latencies include its own delay",
            format_us(lag.p99_us as f64),
            format_us(LAG_WARNING_US as f64)
        ));
    }
    // A generator that busy-polls (`--spin-us`) uses its cores whatever the load: then its
    // pacing lag, above, is the sign that it could not keep up.
    if generator.utilization > CPU_WARNING && opts.spin.is_zero() {
        warnings.push(format!(
            "the generator used {:.0}% of its {} core(s): it may be the bottleneck (add --threads or CPUs)",
            generator.utilization * 100.0,
            generator.cores
        ));
    }
    if failed > 0 {
        warnings.push(format!("{failed} connection(s) failed"));
    }
    if tally.stale > 0 {
        warnings.push(format!(
            "{} arrivals were too far out of order to check for duplicates",
            tally.stale
        ));
    }
    if opts.server_pid.is_some() && w.server_lost {
        warnings.push("the server process could not be read until the end".into());
    }
    if opts.server_pid.is_some() && server.is_none() {
        warnings.push("no server figures: the measured window was never reached".into());
    }

    let matchmaking = (opts.scenario == Scenario::Matchmake).then(|| {
        let matches = shared.rooms.count() as u64;
        let origin = shared.queue_start().unwrap_or(0);
        let span_s = last_match_ns.saturating_sub(origin) as f64 / 1e9;
        let server_cpu_s = match w.matching_server {
            (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s).max(0.0)),
            _ => None,
        };
        MatchmakingReport {
            plan: opts.tickets.clone(),
            match_timeout_s: opts.match_timeout.as_secs_f64(),
            time_to_match: LatencySummary::of(&hist.time_to_match),
            matches,
            players_per_match: if matches > 0 {
                tickets.matched as f64 / matches as f64
            } else {
                0.0
            },
            span_s,
            matches_per_s: if span_s > 0.0 {
                matches as f64 / span_s
            } else {
                0.0
            },
            peak_matches_per_s: busiest_rate(&shared.rooms.formed_ns(), origin, opts.interval),
            server_cpu_s,
            phase_s: w.matching.as_secs_f64(),
            tickets,
        }
    });
    if let Some(m) = &matchmaking {
        let unmatched = m.tickets.queued.saturating_sub(m.tickets.matched);
        if unmatched > 0 {
            warnings.push(format!("{unmatched} ticket(s) were not matched"));
        }
    }

    let distribution_of = match opts.scenario {
        Scenario::Connect | Scenario::Idle => "handshake",
        _ => "latency",
    };
    let scenario = opts.scenario.to_string();
    let main_hist = primary(&scenario, &hist);
    let (loss, loss_base) = match opts.scenario {
        Scenario::Connect | Scenario::Idle => (failed, attempted),
        _ => (tally.lost(), tally.expected),
    };
    let slo = opts
        .slo
        .as_ref()
        .map(|s| s.evaluate(main_hist, loss, loss_base));

    let report = Report {
        loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
        label: opts.label(),
        scenario,
        protocol: opts.protocol.to_string(),
        url: opts.url.clone(),
        started_unix_s,
        settings: Settings {
            clients: opts.clients,
            room_size: opts.room_size,
            rooms: shared.rooms.count(),
            senders: match &matchmaking {
                Some(m) => m.tickets.matched as usize,
                None => opts.senders(),
            },
            rate: if opts.sends() { opts.rate } else { 0.0 },
            payload: if opts.sends() { opts.payload } else { 0 },
            duration_s: window_s,
            warmup_s: opts.warmup.as_secs_f64(),
            threads: opts.threads,
            cpus: opts.cpus.clone(),
            connect_rate: opts.connect_rate,
            interval_s: opts.interval.as_secs_f64(),
            drain_limit_s: opts.drain.as_secs_f64(),
            nodes: opts.nodes(),
            spread: opts.spread,
        },
        connections: Connections {
            attempted,
            established,
            established_per_node,
            failed,
            failures,
            dropped: drops.values().sum(),
            drops,
        },
        messages: Messages {
            sent: tally.sent,
            expected: tally.expected,
            delivered: tally.delivered,
            lost: tally.lost(),
            duplicated: tally.duplicated,
            out_of_order: tally.out_of_order,
            stale: tally.stale,
            received_total: tally.received_total,
            sent_per_s: per_s(tally.sent),
            delivered_per_s: per_s(tally.delivered),
            drain_s: w.drain.as_secs_f64(),
            fanout_complete: complete,
            fanout_incomplete: incomplete,
        },
        latency: LatencySummary::of(&hist.latency),
        latency_same_node: LatencySummary::of(&hist.latency_same_node),
        latency_cross_node: LatencySummary::of(&hist.latency_cross_node),
        latency_uncorrected: LatencySummary::of(&hist.latency_uncorrected),
        last_member: LatencySummary::of(&hist.last_member),
        pacing_lag: lag,
        handshake: LatencySummary::of(&hist.handshake),
        handshake_uncorrected: LatencySummary::of(&hist.handshake_uncorrected),
        distribution_of: distribution_of.to_string(),
        distribution: distribution(main_hist),
        server,
        matchmaking,
        generator,
        intervals: w.intervals,
        slo,
        warnings,
    };
    Outcome {
        report,
        histograms: hist,
    }
}
