//! What the end-to-end tests share.

use std::sync::mpsc;
use std::time::Duration;

use corelay_loadgen::{Options, Outcome};

/// Every run in these tests ends by itself within a few seconds; this is the point at
/// which a hang is declared a failure.
pub const BUDGET: Duration = Duration::from_secs(60);

/// Runs the load generator on its own thread and fails if it outlives [`BUDGET`].
pub fn run_bounded(opts: Options) -> Outcome {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(corelay_loadgen::run(&opts));
    });
    rx.recv_timeout(BUDGET)
        .expect("the run ended within its budget")
        .expect("the run succeeded")
}
