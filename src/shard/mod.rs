//! The thread-per-core runtime: one [`Shard`] per core, each a glommio executor pinned to
//! its CPU, owning its listener, connections, rooms and buffers.
//!
//! Shards talk only through the [`mesh`]: one bounded single-producer single-consumer
//! queue per ordered pair of shards. A `Shard` is `!Send` (`Rc`, `RefCell`): the types say
//! that everything in it belongs to one thread.

pub mod mesh;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpListener;

use crate::config::Config;
use crate::relay::{Outbox, OutboxLimits, PlayerId, Relay, RelayLimits, ShardId};
use crate::stats::ShardStats;

use self::mesh::{Mesh, ShardMsg};
use crate::net::engineio::{Handler, Sessions};
use crate::socketio::{SioSession, SocketIo};

/// State shared by all shards and the thread that started them.
#[derive(Debug, Default)]
pub struct Control {
    shutdown: AtomicBool,
}

impl Control {
    /// Asks every shard to drain and stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Whether shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// What a shard thread is handed at start. `Send`: it crosses to the shard's thread once.
pub(crate) struct ShardSeed {
    pub id: ShardId,
    pub shards: usize,
    pub listener: OwnedFd,
    pub config: Arc<Config>,
    pub stats: Arc<ShardStats>,
    pub control: Arc<Control>,
    pub mesh_tx: Vec<Option<SharedSender<ShardMsg>>>,
    pub mesh_rx: Vec<Option<SharedReceiver<ShardMsg>>>,
    pub app: Arc<SocketIo>,
}

/// One core's share of the server. Lives on its thread only.
pub struct Shard {
    /// This shard's index.
    pub id: ShardId,
    /// Number of shards.
    pub shards: usize,
    /// The server configuration.
    pub config: Arc<Config>,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Rooms and fan-out.
    pub relay: RefCell<Relay>,
    control: Arc<Control>,
    mesh: Mesh,
    next_player: Cell<u64>,
    conns: RefCell<HashMap<PlayerId, Rc<Outbox>>>,
    /// Engine.IO sessions owned by this shard.
    pub(crate) engine: Sessions,
    app: Arc<SocketIo>,
}

impl Shard {
    /// A fresh player id: shard number in the top 16 bits, so ids never collide across
    /// shards and need no coordination.
    pub fn next_player_id(&self) -> PlayerId {
        let n = self.next_player.get() + 1;
        self.next_player.set(n);
        ((self.id as u64) << 48) | n
    }

    /// Limits of a new connection's outbound queue.
    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            frames: self.config.outbound_queue_frames,
            bytes: self.config.outbound_queue_bytes,
        }
    }

    /// Tracks a live connection so that shutdown can close it.
    pub fn register(&self, id: PlayerId, outbox: Rc<Outbox>) {
        self.conns.borrow_mut().insert(id, outbox);
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: PlayerId) {
        self.conns.borrow_mut().remove(&id);
    }

    /// Whether the server is draining.
    pub fn shutting_down(&self) -> bool {
        self.control.shutting_down()
    }

    /// The handler for a new Engine.IO session.
    pub(crate) fn new_engine_handler(&self) -> Option<Handler> {
        if self.app.engine_echo {
            Some(Handler::Echo)
        } else {
            Some(Handler::SocketIo(Box::new(SioSession::new(Arc::clone(
                &self.app,
            )))))
        }
    }

    /// Passes a client connection to the shard that owns its Engine.IO session.
    pub(crate) fn hand_off(&self, to: ShardId, fd: OwnedFd, read: Vec<u8>) {
        crate::stats::add(&self.stats.handoffs, 1);
        self.mesh.send(to, ShardMsg::Handoff { fd, read });
    }

    /// Carries whatever the relay queued for other shards. Call after each batch of relay
    /// calls.
    pub fn flush_mesh(&self) {
        let mut relay = self.relay.borrow_mut();
        for (to, msg) in relay.drain_mesh() {
            crate::stats::add(&self.stats.mesh_out, 1);
            self.mesh.send(to, ShardMsg::Relay(msg));
        }
    }
}

/// Runs a shard to completion on the current thread (already pinned by the caller).
pub(crate) async fn run(seed: ShardSeed) {
    let relay = Relay::new(
        seed.id,
        seed.shards,
        RelayLimits {
            max_name_len: seed.config.max_name_len,
            max_rooms_per_connection: seed.config.max_rooms_per_connection,
        },
        Arc::clone(&seed.stats),
    );
    let (mesh, receivers) = Mesh::connect(seed.mesh_tx, seed.mesh_rx).await;
    let shard = Rc::new(Shard {
        id: seed.id,
        shards: seed.shards,
        config: seed.config,
        stats: seed.stats,
        relay: RefCell::new(relay),
        control: seed.control,
        mesh,
        next_player: Cell::new(0),
        conns: RefCell::new(HashMap::new()),
        engine: Sessions::default(),
        app: seed.app,
    });

    for (from, rx) in receivers {
        let shard = Rc::clone(&shard);
        glommio::spawn_local(async move {
            // recv() returns at once while the queue holds messages, so a backlog is drained
            // in one go; the executor parks this task only when the queue is empty.
            while let Some(msg) = rx.recv().await {
                match msg {
                    ShardMsg::Relay(msg) => {
                        let now = Instant::now();
                        shard.relay.borrow_mut().handle_mesh(from, msg, now);
                        shard.flush_mesh();
                    }
                    ShardMsg::Handoff { fd, read } => {
                        // SAFETY: the fd is a connected TCP socket handed over whole.
                        let stream =
                            unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
                        glommio::spawn_local(crate::net::serve(Rc::clone(&shard), stream, read))
                            .detach();
                    }
                }
            }
        })
        .detach();
    }

    // The listener was bound (SO_REUSEPORT) by the starting thread so that errors such as
    // "address in use" are reported before any shard runs.
    // SAFETY: the fd is an open, listening TCP socket that this shard now owns alone.
    let listener = unsafe { TcpListener::from_raw_fd(seed.listener.into_raw_fd()) };
    let accept = glommio::spawn_local(crate::net::accept_loop(Rc::clone(&shard), listener));

    let tick = Duration::from_millis(shard.config.stats_publish_ms.clamp(10, 50));
    let publish_every = Duration::from_millis(shard.config.stats_publish_ms);
    let mut last_publish = Instant::now();
    loop {
        glommio::timer::sleep(tick).await;
        if last_publish.elapsed() >= publish_every {
            shard
                .stats
                .publish_latency(shard.relay.borrow().latency().clone());
            last_publish = Instant::now();
        }
        if shard.shutting_down() {
            break;
        }
    }

    // Drain: stop accepting, tell every client we are going away, give the close frames a
    // moment to leave, then stop.
    accept.cancel().await;
    let outboxes: Vec<Rc<Outbox>> = shard.conns.borrow().values().cloned().collect();
    for outbox in outboxes {
        outbox.close(crate::net::ws::close::GOING_AWAY, "server shutting down");
    }
    for session in shard.engine.all() {
        session.shut_down();
    }
    shard.flush_mesh();
    let deadline = Instant::now() + Duration::from_millis(shard.config.shutdown_grace_ms);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard
        .stats
        .publish_latency(shard.relay.borrow().latency().clone());
}
