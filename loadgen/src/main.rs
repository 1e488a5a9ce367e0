//! `corelay-loadgen`: the command line of the load generator. See loadgen/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use corelay_loadgen::options::ProgressMode;
use corelay_loadgen::tickets::{SkillSpread, TicketPlan};
use corelay_loadgen::{Options, Protocol, Scenario, Slo, Spread};

#[derive(Parser)]
#[command(
    name = "corelay-loadgen",
    version,
    about = "Open-loop latency load generator for corelay, socket.io and SocketCluster servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rooms of --room-size clients, every client sends --rate msg/s to its room.
    Relay(Common),
    /// One sender per room (big rooms); also latency to the last member.
    Fanout(Common),
    /// A connection storm at --connect-rate: handshake latency, failures by reason.
    Connect(Common),
    /// Hold --clients connections for --duration; server memory per connection.
    Idle(Common),
    /// Relay for a long --duration, a progress line every --interval, memory drift.
    Soak(Common),
    /// Queue --clients for matchmaking (time to match), then play the matched rooms at
    /// --rate for --duration.
    Matchmake(Matchmake),
    /// Overlay the latency distributions of runs saved with --json in one SVG.
    Plot {
        /// SVG file to write.
        #[arg(long)]
        out: PathBuf,
        /// JSON reports (from --json).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

/// Flags shared by every scenario. Unset flags take the scenario's defaults (README).
#[derive(Args)]
struct Common {
    /// Server URL: ws://127.0.0.1:7700/ws (native), ws://127.0.0.1:3000/socket.io/ (socketio),
    /// ws://127.0.0.1:7700/socketcluster/ (socketcluster); several, comma-separated, for the
    /// nodes of a cluster (see --spread).
    #[arg(long)]
    url: Option<String>,
    /// With several --url: `members` puts consecutive members of a room on different nodes
    /// (rooms span the nodes), `rooms` puts a whole room on one node (rooms round-robin).
    #[arg(long, value_enum, default_value_t = Spread::Members)]
    spread: Spread,
    /// Client protocol. socketcluster: every client subscribes to its room's channel and
    /// publishes to it; every subscriber gets each publish, the publisher too.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// Number of clients (connections).
    #[arg(long)]
    clients: Option<usize>,
    /// Members per room (0 in connect/idle: join no room).
    #[arg(long)]
    room_size: Option<usize>,
    /// Messages per second per sending client.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes (at least 24 native, 48 socketio and socketcluster).
    #[arg(long)]
    payload: Option<usize>,
    /// Measured seconds (connect: default until every connection was attempted).
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds before the measured window, excluded from the results.
    #[arg(long)]
    warmup: Option<f64>,
    /// Load threads (glommio executors).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin the threads to these CPUs, round-robin (e.g. 1 or 2,3).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Spin this many microseconds after a load thread's last work (a send, an arrival)
    /// before it sleeps: keeps its core awake so that a delivery does not cost the server
    /// an inter-processor wake-up (100000: never sleeps while there is load).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Connections per second (connect; idle when given).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// Seconds between progress lines (soak default 10, else 1).
    #[arg(long)]
    interval: Option<f64>,
    /// Longest wait for in-flight messages after the last send, seconds.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Server process to watch: CPU seconds, RSS, deliveries per CPU-second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write every figure as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's .hgrm text format.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile SVG plot of this run.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Service-level objectives, e.g. p99=2ms,p99.9=5ms,loss=0: exit 1 when missed.
    #[arg(long)]
    slo: Option<Slo>,
    /// Name of the run in plots and reports.
    #[arg(long)]
    label: Option<String>,
    /// Do not spread client source addresses over 127.0.0.1-250.
    #[arg(long)]
    no_source_spread: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// JWT every client presents (socketcluster: as the handshake's authToken), for a server
    /// with `[auth]` (docs/AUTH.md): measures authenticated load.
    #[arg(long)]
    token: Option<String>,
}

/// The `matchmake` flags, beside the common ones.
#[derive(Args)]
struct Matchmake {
    #[command(flatten)]
    common: Common,
    /// Matchmaking queue every ticket goes to.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Tickets per second: ticket i is due at i / rate (default, or 0: all at once).
    #[arg(long)]
    queue_rate: Option<f64>,
    /// Skills are drawn uniformly from LO..HI.
    #[arg(long, default_value_t = SkillSpread::default())]
    skill_spread: SkillSpread,
    /// Regions, one picked at random per ticket (e.g. eu,us; default: none).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Seed of the skills and regions: the same seed queues the same tickets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest wait for a ticket's outcome, from its due time, seconds; a ticket still
    /// waiting then counts as unanswered.
    #[arg(long, default_value_t = 65.0)]
    match_timeout: f64,
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{flag} {s}: not a duration in seconds"))
}

impl Common {
    fn into_options(self, scenario: Scenario) -> anyhow::Result<(Options, Outputs)> {
        let url = self.url.unwrap_or_else(|| match self.protocol {
            Protocol::Native => "ws://127.0.0.1:7700/ws".into(),
            Protocol::SocketIo => "ws://127.0.0.1:3000/socket.io/".into(),
            Protocol::SocketCluster => "ws://127.0.0.1:7700/socketcluster/".into(),
        });
        let mut o = Options::new(scenario, self.protocol, url);
        o.spread = self.spread;
        if let Some(v) = self.clients {
            o.clients = v;
        }
        if let Some(v) = self.room_size {
            o.room_size = v;
        }
        if let Some(v) = self.rate {
            o.rate = v;
        }
        if let Some(v) = self.payload {
            o.payload = v;
        } else {
            o.payload = o.payload.max(self.protocol.min_payload());
        }
        if let Some(v) = self.duration {
            o.duration = secs(v, "duration")?;
        }
        if let Some(v) = self.warmup {
            o.warmup = secs(v, "warmup")?;
        }
        if let Some(v) = self.connect_rate {
            o.connect_rate = v;
        }
        if let Some(v) = self.interval {
            o.interval = secs(v, "interval")?;
        }
        o.drain = secs(self.drain, "drain")?;
        o.threads = self.threads;
        o.cpus = self.cpus;
        o.spin = std::time::Duration::from_micros(self.spin_us);
        o.server_pid = self.server_pid;
        o.label = self.label;
        o.slo = self.slo;
        o.spread_source_addresses = !self.no_source_spread;
        o.token = self.token;
        o.progress = if self.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::Overwrite
        };
        Ok((
            o,
            Outputs {
                json: self.json,
                hgrm: self.hgrm,
                plot: self.plot,
            },
        ))
    }
}

struct Outputs {
    json: Option<PathBuf>,
    hgrm: Option<PathBuf>,
    plot: Option<PathBuf>,
}

fn scenario(scenario: Scenario, common: Common) -> anyhow::Result<ExitCode> {
    let (opts, out) = common.into_options(scenario)?;
    execute(opts, out)
}

fn matchmake(args: Matchmake) -> anyhow::Result<ExitCode> {
    let (mut opts, out) = args.common.into_options(Scenario::Matchmake)?;
    opts.tickets = TicketPlan {
        queue: args.queue,
        rate: args.queue_rate.unwrap_or(0.0),
        skill: args.skill_spread,
        regions: args.regions,
        seed: args.seed,
    };
    opts.match_timeout = secs(args.match_timeout, "match-timeout")?;
    execute(opts, out)
}

fn execute(opts: Options, out: Outputs) -> anyhow::Result<ExitCode> {
    let outcome = corelay_loadgen::run(&opts)?;
    print!("{}", outcome.report.table());
    if let Some(path) = &out.json {
        corelay_loadgen::write_json(&outcome.report, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &out.hgrm {
        corelay_loadgen::write_hgrm(&outcome, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &out.plot {
        corelay_loadgen::write_plot(std::slice::from_ref(&outcome.report), path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(slo) = &outcome.report.slo {
        if !slo.passed {
            eprintln!("SLO missed ({}): {}", slo.spec, slo.failures.join("; "));
            return Ok(ExitCode::FAILURE);
        }
    }
    if outcome.report.connections.established == 0 {
        bail!("no connection could be established to {}", opts.url);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Relay(c) => scenario(Scenario::Relay, c),
        Command::Fanout(c) => scenario(Scenario::Fanout, c),
        Command::Connect(c) => scenario(Scenario::Connect, c),
        Command::Idle(c) => scenario(Scenario::Idle, c),
        Command::Soak(c) => scenario(Scenario::Soak, c),
        Command::Matchmake(m) => matchmake(m),
        Command::Plot { out, runs } => {
            let reports = runs
                .iter()
                .map(|p| corelay_loadgen::read_json(p))
                .collect::<Result<Vec<_>, _>>()?;
            corelay_loadgen::write_plot(&reports, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
