//! corelay-loadgen: an open-loop load generator for corelay, socket.io and SocketCluster
//! servers.
//!
//! Clients send on a fixed schedule whatever the server does, and latency is measured
//! from each message's *intended* send time to its arrival, so that a server stall shows
//! up in full (coordinated omission corrected) — the actual-send latency is kept beside it.
//! Every delivery is accounted for exactly: expected, delivered, lost, duplicated, out of
//! order. Load runs on `--threads` glommio executors; each owns its clients and its
//! histograms, merged once at the end.
//!
//! # Layout
//!
//! - [`options`]: a run's validated settings ([`Options`]), scenarios, protocols, how clients
//!   are spread over several nodes ([`Spread`]), the SLO spec.
//! - [`schedule`]: the open-loop send schedule (even start offsets, intended times).
//! - [`tickets`]: `matchmake`'s tickets: when each is due, its seeded skill and region,
//!   what came of it.
//! - [`header`]: the timing header at the start of every payload.
//! - [`accounting`]: per (receiver, sender) sequence windows; loss, duplicates, reordering.
//! - [`metrics`]: HdrHistograms (µs, 3 digits), summaries, the `.hgrm` text format.
//! - [`mod@run`]: threads, phases, the main thread's watch, building the [`Report`]; the
//!   rooms of a run (blocks or matches) and `matchmake`'s matching phase.
//! - [`transport`]: one interface over the native client (`corelay::client`), [`socketio`]
//!   and [`socketcluster`].
//! - [`socketio`]: a minimal Socket.IO v4 client over corelay's WebSocket client on glommio,
//!   and the sans-IO decoder the load phase uses.
//! - [`socketcluster`]: a minimal SocketCluster client (handshake, subscribe, publish) the
//!   same way, and its sans-IO decoder.
//! - [`procfs`]: CPU and memory of the server and of the generator, the fd limit.
//! - [`report`]: the [`Report`] (JSON) and the final table.
//! - [`plot`]: latency-by-percentile SVG plots.
//!
//! The binary (`src/main.rs`) only parses the command line into [`Options`] and writes
//! the outputs.

#![warn(missing_docs)]

pub mod accounting;
pub mod header;
pub mod metrics;
pub mod options;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod run;
pub mod schedule;
pub mod socketcluster;
pub mod socketio;
pub mod tickets;
pub mod transport;

use std::io;
use std::path::Path;

pub use options::{Options, Protocol, Scenario, Slo, Spread};
pub use report::Report;
pub use run::{run, Outcome};

/// Errors of the load generator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or inconsistent; fix the command line.
    #[error("{0}")]
    InvalidOptions(String),
    /// The run needs more file descriptors than `RLIMIT_NOFILE` allows: raise the limit
    /// (`ulimit -n`, see tuning/) or use fewer clients.
    #[error(
        "{needed} file descriptors needed (clients + margin) but the soft RLIMIT_NOFILE is {limit}: \
         raise it with `ulimit -n {needed}` (or more) or run fewer clients"
    )]
    FdLimit {
        /// Descriptors the run would need.
        needed: u64,
        /// The soft limit.
        limit: u64,
    },
    /// `--server-pid` names no readable process.
    #[error("cannot read /proc/{0}: {1}")]
    ServerPid(u32, io::Error),
    /// A glommio executor could not be started or panicked.
    #[error("load thread: {0}")]
    Executor(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A report file could not be read as JSON.
    #[error("{path}: not a loadgen JSON report: {error}")]
    BadReport {
        /// The file.
        path: String,
        /// Why.
        error: serde_json::Error,
    },
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(report: &Report, path: &Path) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// Reads a report written by [`write_json`].
pub fn read_json(path: &Path) -> Result<Report, Error> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|error| Error::BadReport {
        path: path.display().to_string(),
        error,
    })
}

/// Writes the run's main histogram to `path` in HdrHistogram's `.hgrm` format.
pub fn write_hgrm(outcome: &Outcome, path: &Path) -> Result<(), Error> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    metrics::write_hgrm(outcome.primary(), &mut out)?;
    io::Write::flush(&mut out)?;
    Ok(())
}

/// Writes an SVG plot overlaying the distributions of `reports` to `path`.
pub fn write_plot(reports: &[Report], path: &Path) -> Result<(), Error> {
    let title = match reports {
        [one] => format!("{} ({})", one.label, one.distribution_of),
        _ => {
            let what: Vec<&str> = reports.iter().map(|r| r.distribution_of.as_str()).collect();
            let what = if what.windows(2).all(|w| w[0] == w[1]) {
                what.first().copied().unwrap_or("latency")
            } else {
                "latency / handshake"
            };
            format!("{what} by percentile")
        }
    };
    let series: Vec<plot::Series> = reports
        .iter()
        .map(|r| plot::Series {
            label: r.label.clone(),
            points: r.distribution.clone(),
        })
        .collect();
    std::fs::write(path, plot::render(&title, &series))?;
    Ok(())
}
