//! `corelay`: the server binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corelay::{Config, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "corelay",
    version,
    about = "Thread-per-core real-time relay server for multiplayer games"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: one shard per core, native protocol on /ws.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 0.0.0.0:7700.
        #[arg(long)]
        listen: Option<String>,
        /// Number of shards (default: one per available CPU).
        #[arg(long)]
        shards: Option<usize>,
        /// CPUs to pin shards to, e.g. 0-3,6.
        #[arg(long)]
        cpus: Option<String>,
        /// Log merged stats every S seconds.
        #[arg(long, value_name = "S")]
        stats_interval: Option<u64>,
    },
    /// Inspect this host's settings against tuning/ recommendations.
    Tune {
        /// Exit non-zero when any recommendation is not met.
        #[arg(long)]
        strict: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            shards,
            cpus,
            stats_interval,
        } => serve(config, listen, shards, cpus, stats_interval),
        Command::Tune { strict } => match corelay::tune::run(strict) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        eprintln!("corelay: {e:#}");
        std::process::exit(1);
    }
}

fn serve(
    file: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<usize>,
    cpus: Option<String>,
    stats_interval: Option<u64>,
) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(l) = listen {
        overrides.push(("listen", format!("\"{l}\"")));
    }
    if let Some(s) = shards {
        overrides.push(("shards", s.to_string()));
    }
    if let Some(c) = cpus {
        overrides.push(("cpus", format!("\"{c}\"")));
    }
    let config = Config::load(file.as_deref(), std::env::vars(), &overrides)?;
    if !config.huge_pages {
        // Before the shards start and allocate: every thread inherits it.
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            eprintln!(
                "corelay: cannot turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let server = Server::start(config).context("cannot start")?;
    // The handlers are in place before the start line: a supervisor (or a test) that
    // signals as soon as it reads the line gets a drain, not a kill by the default action.
    let control = server.control();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    // The first signal drains; a second one closes what is left at once.
    std::thread::spawn(move || {
        for _ in signals.forever() {
            control.request_shutdown();
        }
    });
    println!(
        "corelay listening on {} with {} shards on cpus {:?}",
        server.local_addr(),
        server.shards(),
        server.cpus()
    );
    if let Some(secs) = stats_interval.filter(|s| *s > 0) {
        let registry = server.stats_registry();
        let control = server.control();
        std::thread::spawn(move || {
            while !control.shutting_down() {
                std::thread::sleep(Duration::from_secs(secs));
                println!("stats {}", registry.snapshot());
            }
        });
    }
    server.join()?;
    println!("corelay stopped");
    Ok(())
}
