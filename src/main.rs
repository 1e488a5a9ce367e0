//! `corelay`: the server binary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corelay::config::{LogConfig, LogFormat};
use corelay::{Config, Server};
use tracing_subscriber::EnvFilter;

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
        /// Log level or filter, e.g. debug or info,corelay::shard=debug (`log.level`;
        /// RUST_LOG wins over it).
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
        /// Log lines as `text` or `json` (`log.format`).
        #[arg(long, value_name = "FORMAT")]
        log_format: Option<String>,
    },
    /// Drain a running server (docs/OPERATIONS.md, "Drain"), as SIGTERM would: through its
    /// admin API, with the admin token (`admin.token`).
    Drain {
        /// The server's address, e.g. 127.0.0.1:7700.
        #[arg(long, default_value = "127.0.0.1:7700")]
        addr: String,
        /// The admin token; by default `CORELAY_ADMIN_TOKEN`.
        #[arg(long, env = "CORELAY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// The nodes of a cluster (`[cluster]`, docs/SCALING.md).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Inspect this host's settings against tuning/ recommendations.
    Tune {
        /// Exit non-zero when any recommendation is not met.
        #[arg(long)]
        strict: bool,
    },
}

/// `corelay drain`: `POST /admin/api/drain` with the token; prints the server's answer.
fn drain(addr: &str, token: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = "{}";
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        corelay::net::admin::DRAIN_PATH,
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    let text = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match status {
        "202" => {
            println!("{}", text.trim());
            Ok(())
        }
        "401" => anyhow::bail!("{addr} refused the admin token"),
        "404" => anyhow::bail!("{addr} has no admin API (set admin.token on the server)"),
        _ => anyhow::bail!("{addr} answered {status}: {}", text.trim()),
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the live nodes: id, address, shards, load, lease, draining.
    Status {
        /// The cluster's Redis; by default `CORELAY_CLUSTER_REDIS`.
        #[arg(long, env = "CORELAY_CLUSTER_REDIS")]
        redis: String,
        /// `--redis` is a Redis Cluster's seed list; by default
        /// `CORELAY_CLUSTER_REDIS_CLUSTER`.
        #[arg(long, env = "CORELAY_CLUSTER_REDIS_CLUSTER")]
        redis_cluster: bool,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `corelay cluster status`: the nodes whose lease is live.
fn cluster_status(redis: &str, redis_cluster: bool, json: bool) -> anyhow::Result<()> {
    let target = corelay::cluster::Target::open(redis, redis_cluster)
        .with_context(|| format!("bad redis url {redis}"))?;
    let mut con = target
        .blocking(Duration::from_secs(2))
        .with_context(|| format!("cannot reach {redis}"))?;
    let now = corelay::stats::unix_ms(std::time::SystemTime::now());
    let nodes = corelay::cluster::live_nodes(&mut *con, now)?;
    if json {
        println!("{}", serde_json::to_string(&nodes)?);
        return Ok(());
    }
    println!(
        "{:<32} {:<22} {:>6} {:>11} {:>7} {:>9} draining",
        "node", "address", "shards", "connections", "rooms", "renewed"
    );
    for n in &nodes {
        println!(
            "{:<32} {:<22} {:>6} {:>11} {:>7} {:>7}ms {}",
            n.id,
            n.addr,
            n.shards,
            n.connections,
            n.rooms,
            now.saturating_sub(n.renewed_ms),
            n.draining
        );
    }
    println!("{} live nodes", nodes.len());
    Ok(())
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
            log_level,
            log_format,
        } => serve(
            config,
            listen,
            shards,
            cpus,
            stats_interval,
            log_level,
            log_format,
        ),
        Command::Drain { addr, token } => drain(&addr, &token),
        Command::Cluster {
            command:
                ClusterCommand::Status {
                    redis,
                    redis_cluster,
                    json,
                },
        } => cluster_status(&redis, redis_cluster, json),
        Command::Tune { strict } => match corelay::tune::run(strict) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        // Once the log is set up, the failure is its last line (JSON when it is JSON),
        // unless its filter would drop it: a failure is always said.
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!("{e:#}");
        } else {
            eprintln!("corelay: {e:#}");
        }
        std::process::exit(1);
    }
}

fn serve(
    file: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<usize>,
    cpus: Option<String>,
    stats_interval: Option<u64>,
    log_level: Option<String>,
    log_format: Option<String>,
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
    if let Some(l) = log_level {
        overrides.push(("log.level", format!("\"{l}\"")));
    }
    if let Some(f) = log_format {
        overrides.push(("log.format", format!("\"{f}\"")));
    }
    let config = Config::load(file.as_deref(), std::env::vars(), &overrides)?;
    init_logs(&config.log)?;
    if !config.huge_pages {
        // Before the shards start and allocate: every thread inherits it.
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot turn transparent huge pages off"
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
    tracing::info!(
        listen = %server.local_addr(),
        shards = server.shards(),
        cpus = ?server.cpus(),
        "corelay started"
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
    tracing::info!("corelay stopped");
    Ok(())
}

/// Installs the process's logger: `log.format` on stderr, filtered by `RUST_LOG` when it is
/// set and by `log.level` otherwise. Colours only on a terminal: escape codes in a file or
/// the journal are noise.
fn init_logs(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        // The parse error repeats its cause in its text: `{e}` alone, not `context`.
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| anyhow::anyhow!("RUST_LOG `{directives}`: {e}"))?,
        _ => EnvFilter::try_new(&log.level).map_err(|e| anyhow::anyhow!("log.level: {e}"))?,
    };
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match log.format {
        LogFormat::Text => logger.try_init(),
        // Fields at the top level, beside `timestamp`, `level`, `target` and `message`:
        // what log pipelines index without a nested path.
        LogFormat::Json => logger
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
