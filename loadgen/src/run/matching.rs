//! The matching phase of `matchmake`, on one thread: every connected client queues its
//! ticket at its due time ([`TicketPlan`](crate::tickets::TicketPlan)) and waits for what
//! comes of it; a matched client enters its room in [`Rooms`](super::rooms::Rooms).
//!
//! One glommio task per client, like the setup's connects and joins: each ticket is a
//! request and one answer, so the load loop's io_uring machinery buys nothing here. Once
//! its ticket has an outcome a task keeps reading (answering the server's pings) until the
//! load phase takes the connection: a client that matched early may wait for the last
//! match longer than the server waits for a pong.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_lite::future;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;

use super::{sleep_until_ns, wait_until, Shared, ThreadState};
use crate::metrics::record_ns;
use crate::tickets::TicketOutcome;
use crate::transport::{reason, Connection};

/// A thread's clients in the matching phase.
pub(super) struct Matching {
    tasks: Vec<JoinHandle<Option<(usize, Connection)>>>,
    /// Clients whose ticket has an outcome (or was given up on).
    resolved: Rc<Cell<usize>>,
    /// Closed when the load phase takes the connections: the tasks stop reading.
    release: Rc<Semaphore>,
}

impl Matching {
    /// Queues every client's ticket at its due time, counted from `origin_ns`.
    pub(super) fn start(
        shared: &Arc<Shared>,
        t: usize,
        origin_ns: u64,
        conns: Vec<(usize, Connection)>,
        state: &Rc<RefCell<ThreadState>>,
    ) -> Self {
        let resolved = Rc::new(Cell::new(0));
        let release = Rc::new(Semaphore::new(0));
        let tasks = conns
            .into_iter()
            .map(|(index, conn)| {
                let player = Player {
                    shared: shared.clone(),
                    t,
                    index,
                    state: state.clone(),
                    resolved: resolved.clone(),
                    release: release.clone(),
                };
                glommio::spawn_local(player.run(origin_ns, conn)).detach()
            })
            .collect();
        Self {
            tasks,
            resolved,
            release,
        }
    }

    /// Waits until every ticket has an outcome (or the run is stopped).
    pub(super) async fn resolved(&self, shared: &Shared) {
        let all = self.tasks.len();
        wait_until(shared, || self.resolved.get() >= all).await;
    }

    /// Stops the tasks reading and hands back the connections that are still up.
    pub(super) async fn finish(self) -> Vec<(usize, Connection)> {
        self.release.close();
        let mut kept = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Some(Some(conn)) = task.await {
                kept.push(conn);
            }
        }
        kept
    }
}

/// One client's part of the phase: a player in the queue.
struct Player {
    shared: Arc<Shared>,
    t: usize,
    index: usize,
    state: Rc<RefCell<ThreadState>>,
    resolved: Rc<Cell<usize>>,
    release: Rc<Semaphore>,
}

impl Player {
    async fn run(self, origin_ns: u64, mut conn: Connection) -> Option<(usize, Connection)> {
        let shared = &self.shared;
        let counters = &shared.counters[self.t];
        let plan = &shared.opts.tickets;
        let due = plan.due_ns(origin_ns, self.index);
        sleep_until_ns(shared, due).await;
        let ticket = plan.ticket(self.index);
        self.state.borrow_mut().tickets.queued += 1;
        counters.queued.fetch_add(1, Ordering::Relaxed);
        let bound = due.saturating_add(shared.opts.match_timeout.as_nanos() as u64);
        let outcome = future::or(async { Some(conn.matchmake(&ticket).await) }, async {
            sleep_until_ns(shared, bound).await;
            None
        })
        .await;
        let now = shared.now_ns();
        let mut room = None;
        {
            let mut st = self.state.borrow_mut();
            match &outcome {
                Some(Ok(outcome)) => {
                    st.tickets.record(outcome);
                    if let TicketOutcome::Matched { room: name, .. } = outcome {
                        record_ns(&mut st.hist.time_to_match, now.saturating_sub(due));
                        st.last_match_ns = st.last_match_ns.max(now);
                        room = Some(shared.rooms.enter_match(self.index, name, now));
                        counters.matched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.unmatched.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => {
                    st.tickets.unanswered += 1;
                    *st.drops.entry(reason(&e.0)).or_default() += 1;
                    counters.unmatched.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    st.tickets.unanswered += 1;
                    counters.unmatched.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.resolved.set(self.resolved.get() + 1);
        if matches!(outcome, Some(Err(_))) {
            return None;
        }

        // Until the load phase takes the connection.
        let broken = future::or(async { Some(conn.keep_alive().await) }, async {
            // Closed by `finish`: the acquire fails then, which is the signal.
            let _ = self.release.acquire(1).await;
            None
        })
        .await;
        match broken {
            Some(e) => {
                if let Some(room) = room {
                    shared.rooms.left(room);
                }
                *self
                    .state
                    .borrow_mut()
                    .drops
                    .entry(reason(&e.0))
                    .or_default() += 1;
                None
            }
            None => Some((self.index, conn)),
        }
    }
}
