//! The cross-shard mesh: one bounded SPSC queue per ordered pair of shards.
//!
//! The queues are glommio's shared channels rather than crossbeam's: both are lock-free
//! rings, but glommio's knows how to wake a parked executor (an eventfd written only when
//! the consumer sleeps), so an idle shard costs nothing and a busy one pays no syscall per
//! message. When a queue is full the sender keeps the overflow in a local FIFO drained by
//! one task, so a burst never drops nor reorders messages and never blocks the sender.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use crate::relay::{MeshMsg, ShardId};

/// What travels on the mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// Rooms and fan-out, for the relay.
    Relay(MeshMsg),
    /// A client connection whose Engine.IO session lives on the receiving shard, with the
    /// bytes already read from it (the request head and whatever followed).
    Handoff {
        /// The socket.
        fd: std::os::fd::OwnedFd,
        /// Bytes read so far, to be parsed again by the owner.
        read: Vec<u8>,
    },
}

struct Link {
    tx: ConnectedSender<ShardMsg>,
    backlog: RefCell<VecDeque<ShardMsg>>,
    pumping: Cell<bool>,
}

/// This shard's sending ends, one per other shard.
pub struct Mesh {
    links: Vec<Option<Rc<Link>>>,
}

impl Mesh {
    /// Connects this shard's ends. All shards connect concurrently (a connect may wait for
    /// the peer), so this is awaited from each shard's run loop at start.
    pub(crate) async fn connect(
        tx: Vec<Option<SharedSender<ShardMsg>>>,
        rx: Vec<Option<SharedReceiver<ShardMsg>>>,
    ) -> (Mesh, Vec<(ShardId, ConnectedReceiver<ShardMsg>)>) {
        let senders: Vec<_> = tx
            .into_iter()
            .map(|s| glommio::spawn_local(async move { Some(s?.connect().await) }))
            .collect();
        let receivers: Vec<_> = rx
            .into_iter()
            .map(|r| glommio::spawn_local(async move { Some(r?.connect().await) }))
            .collect();
        let mut links = Vec::new();
        for s in senders {
            links.push(s.await.map(|tx| {
                Rc::new(Link {
                    tx,
                    backlog: RefCell::new(VecDeque::new()),
                    pumping: Cell::new(false),
                })
            }));
        }
        let mut ends = Vec::new();
        for (from, r) in receivers.into_iter().enumerate() {
            if let Some(r) = r.await {
                ends.push((from, r));
            }
        }
        (Mesh { links }, ends)
    }

    /// Sends `msg` to shard `to`, in order with everything sent before.
    pub fn send(&self, to: ShardId, msg: ShardMsg) {
        let Some(Some(link)) = self.links.get(to) else {
            return;
        };
        if link.pumping.get() {
            link.backlog.borrow_mut().push_back(msg);
            return;
        }
        match link.tx.try_send(msg) {
            Ok(()) => {}
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))) => {
                link.backlog.borrow_mut().push_back(msg);
                link.pumping.set(true);
                let link = Rc::clone(link);
                glommio::spawn_local(async move {
                    loop {
                        let next = link.backlog.borrow_mut().pop_front();
                        let Some(msg) = next else { break };
                        if link.tx.send(msg).await.is_err() {
                            // The peer shard is gone (shutdown): nothing left to deliver to.
                            link.backlog.borrow_mut().clear();
                            break;
                        }
                    }
                    link.pumping.set(false);
                })
                .detach();
            }
            // Closed: the peer shard stopped; shutdown is under way.
            Err(_) => {}
        }
    }
}
