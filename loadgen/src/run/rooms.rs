//! Who is in which room: fixed blocks of `--room-size` consecutive clients, or the rooms
//! the server's matchmaker made (`matchmake`), entered as each match arrives.
//!
//! The table is written during the setup only (joins, matches) and read by the load phase:
//! a thread finishes its setup (`setup_done`, release) before the main thread publishes
//! the load start, which every thread reads (acquire) before it looks here, so relaxed
//! loads see every entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::options::{Options, Scenario};

/// A client in no room.
const NONE: u32 = u32::MAX;

/// The rooms of a run.
pub(super) struct Rooms {
    /// Room of each client, or [`NONE`].
    of: Vec<AtomicU32>,
    /// Connected members of each room.
    live: Vec<AtomicU32>,
    /// `matchmake`: the rooms' names, by number, and back. Blocks are named by
    /// [`block_name`] instead.
    matched: Option<Mutex<Matched>>,
}

#[derive(Default)]
struct Matched {
    names: Vec<String>,
    numbers: HashMap<String, u32>,
    /// When each room's first player heard of its match, ns since the run's epoch.
    formed_ns: Vec<u64>,
}

impl Rooms {
    /// The rooms `opts` plans: blocks, or (for `matchmake`) none yet, with room for as many
    /// matches as clients.
    pub(super) fn new(opts: &Options) -> Self {
        let matchmake = opts.scenario == Scenario::Matchmake;
        let of = (0..opts.clients)
            .map(|i| {
                let room = if matchmake { None } else { opts.room_of(i) };
                AtomicU32::new(room.map_or(NONE, |r| r as u32))
            })
            .collect();
        let slots = if matchmake {
            opts.clients
        } else {
            opts.rooms()
        };
        Self {
            of,
            live: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            matched: matchmake.then(|| Mutex::new(Matched::default())),
        }
    }

    /// The room of client `index`, if it is in one (`None` too for an index that is no
    /// client of this run).
    pub(super) fn of(&self, index: usize) -> Option<usize> {
        match self.of.get(index)?.load(Ordering::Relaxed) {
            NONE => None,
            room => Some(room as usize),
        }
    }

    /// Rooms of the run so far.
    pub(super) fn count(&self) -> usize {
        match &self.matched {
            Some(m) => lock(m).names.len(),
            None => self.live.len(),
        }
    }

    /// When each match was first heard of (ns since the run's epoch); empty for blocks.
    pub(super) fn formed_ns(&self) -> Vec<u64> {
        self.matched
            .as_ref()
            .map_or_else(Vec::new, |m| lock(m).formed_ns.clone())
    }

    /// The name the clients use for `room`.
    pub(super) fn name(&self, room: usize) -> String {
        match &self.matched {
            Some(m) => lock(m).names.get(room).cloned().unwrap_or_default(),
            None => block_name(room),
        }
    }

    /// Client `index` is a member of the match's room `name` since `now_ns` (numbered on
    /// first sight).
    pub(super) fn enter_match(&self, index: usize, name: &str, now_ns: u64) -> usize {
        let room = match &self.matched {
            Some(m) => {
                let mut m = lock(m);
                match m.numbers.get(name) {
                    Some(&n) => n,
                    None => {
                        let n = m.names.len() as u32;
                        m.names.push(name.to_owned());
                        m.numbers.insert(name.to_owned(), n);
                        m.formed_ns.push(now_ns);
                        n
                    }
                }
            }
            // Only `matchmake` has matches; a block run never calls this.
            None => return self.of(index).unwrap_or(0),
        };
        if let Some(of) = self.of.get(index) {
            of.store(room, Ordering::Relaxed);
        }
        self.joined(room as usize);
        room as usize
    }

    /// A member of `room` is connected.
    pub(super) fn joined(&self, room: usize) {
        if let Some(n) = self.live.get(room) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A member of `room` is gone.
    pub(super) fn left(&self, room: usize) {
        if let Some(n) = self.live.get(room) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Connected members of `room`.
    pub(super) fn live(&self, room: usize) -> u32 {
        self.live.get(room).map_or(0, |n| n.load(Ordering::Acquire))
    }
}

/// The table stays consistent through a panic elsewhere (every update is one push and one
/// insert), so a poisoned lock is still read.
fn lock(m: &Mutex<Matched>) -> std::sync::MutexGuard<'_, Matched> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Block room names carry the process id so that runs against a long-lived server never
/// meet the rooms of an earlier run.
pub(super) fn block_name(room: usize) -> String {
    format!("lg{}-{room}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Protocol;

    #[test]
    fn blocks_are_consecutive_clients() {
        let mut o = Options::new(Scenario::Relay, Protocol::Native, "ws://127.0.0.1:1/ws");
        o.clients = 7;
        o.room_size = 3;
        let rooms = Rooms::new(&o);
        assert_eq!(rooms.count(), 3);
        assert_eq!(
            (0..8).map(|i| rooms.of(i)).collect::<Vec<_>>(),
            [0, 0, 0, 1, 1, 1, 2]
                .map(Some)
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(rooms.name(2), block_name(2));
        rooms.joined(2);
        rooms.joined(2);
        rooms.left(2);
        assert_eq!(rooms.live(2), 1);
    }

    #[test]
    fn matches_are_numbered_as_they_arrive() {
        let mut o = Options::new(Scenario::Matchmake, Protocol::Native, "ws://127.0.0.1:1/ws");
        o.clients = 4;
        let rooms = Rooms::new(&o);
        assert_eq!(rooms.count(), 0);
        assert_eq!(rooms.of(0), None);
        assert_eq!(rooms.enter_match(3, "#b", 10), 0);
        assert_eq!(rooms.enter_match(0, "#a", 20), 1);
        assert_eq!(rooms.enter_match(1, "#b", 30), 0);
        assert_eq!(rooms.formed_ns(), [10, 20]);
        assert_eq!(rooms.count(), 2);
        assert_eq!(
            (rooms.of(1), rooms.of(2), rooms.of(3)),
            (Some(0), None, Some(0))
        );
        assert_eq!((rooms.live(0), rooms.live(1)), (2, 1));
        assert_eq!(rooms.name(0), "#b");
    }
}
