//! Starting and stopping a server: [`Server::start`] binds, spawns one pinned shard per core
//! and returns once every shard is serving; [`Server::shutdown`] drains every shard and
//! [`Server::join`] waits for them.
//!
//! A server stops by itself, whole, when one of its shards panics (see
//! [`crate::shard`], "A shard that panics"): [`Server::join`] then returns
//! [`ServerError::ShardFailed`], and [`Control::failure`] tells it before.

use std::any::Any;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use std::rc::Rc;

use futures_lite::FutureExt;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::admission::Occupancy;
use crate::auth::Verifier;
use crate::cluster::bridge::Bridge;
use crate::cluster::Membership;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::net::admin::{AdminEndpoint, AdminRoute, ADMIN_PATHS};
use crate::net::engineio::EngineEndpoint;
use crate::net::front::{Front, PathMatch, Routes};
use crate::net::native::{NativeRoute, NATIVE_PATH};
use crate::net::ops::{OpsRoute, HEALTH_PATH, METRICS_PATH, READY_PATH};
use crate::net::socketcluster::ScRoute;
use crate::shard::driver::{self, ShardSeed};
use crate::shard::mesh::MeshQueues;
use crate::shard::ring::{Ring, RingSizes};
use crate::shard::{Control, Endpoint, EndpointFactory, Shard};
use crate::socketcluster::SocketCluster;
use crate::socketio::admin_ui::AdminUi;
use crate::socketio::{Namespace, SocketIo};
use crate::stats::{Stats, StatsRegistry};

/// Connections waiting in the kernel to be accepted, per shard. Raised further by
/// net.core.somaxconn on the host (tuning/sysctl.conf).
const LISTEN_BACKLOG: i32 = 4096;

/// Memory glommio registers with io_uring for its own buffers, per shard. corelay's socket
/// IO goes through the shard's own ring, so glommio needs only a small area, and several
/// shards fit under a low RLIMIT_MEMLOCK (8 MiB here; see tuning/limits.conf for
/// production).
const IO_MEMORY: usize = 256 * 1024;

/// The Engine.IO endpoint's index in the default endpoint table (after the front).
const ENGINE_ENDPOINT: u16 = 1;

/// The dashboard's endpoint's index in the default endpoint table (after Engine.IO).
const ADMIN_ENDPOINT: u16 = 2;

/// Why the server could not start. The binary prints it as one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The cluster's membership thread could not start (`[cluster]`): the machine is out of
    /// threads or memory.
    #[error("cannot start the cluster membership: {0}")]
    Cluster(String),
    /// Binding the listen address failed (in use, not local, no permission): pick another.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A CPU to pin to does not exist or is not allowed for this process: fix `cpus`.
    #[error("cpu {0} is not available to this process (allowed: {1:?})")]
    Cpu(usize, Vec<usize>),
    /// A shard's executor could not start: io_uring unavailable or the locked-memory limit
    /// too low (raise it, see tuning/limits.conf).
    #[error("shard {shard} could not start: {reason}")]
    Shard {
        /// Which shard.
        shard: usize,
        /// glommio's reason.
        reason: String,
    },
    /// More shards were asked for than player ids can tell apart: lower `shards`.
    #[error("{0} shards asked for; at most {max} are supported", max = crate::shard::MAX_SHARDS)]
    TooManyShards(usize),
    /// The `[auth]` key could not be loaded: fix the named setting.
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::KeyError),
    /// The admin UI could not be installed (`[admin_ui]`): fix what it names.
    #[error("{0}")]
    AdminUi(#[from] crate::socketio::admin_ui::AdminUiError),
    /// A shard thread panicked.
    #[error("shard thread failed: {0}")]
    Panicked(String),
    /// A shard panicked while serving (a bug, in corelay or in application code such as a
    /// Socket.IO handler), and the server stopped every shard because of it. Its clients
    /// were disconnected; restart the server (a supervisor does, see tuning/README.md) and
    /// fix the panic that the message and the panic's own report on stderr point to.
    #[error("shard {shard} panicked ({message}); every shard was stopped")]
    ShardFailed {
        /// Which shard.
        shard: usize,
        /// The panic message.
        message: String,
    },
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`] then
/// [`Server::join`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    cpus: Vec<usize>,
    threads: Vec<JoinHandle<()>>,
    control: Arc<Control>,
    stats: StatsRegistry,
    /// This node's lease in the cluster (`[cluster]`), taken back once the shards stop.
    membership: Option<Membership>,
    /// Rooms across nodes (`[cluster]`), stopped once the shards have.
    bridge: Option<Bridge>,
}

impl Server {
    /// Binds, starts every shard and waits until each is serving, with the default
    /// Socket.IO service (the relay convention on `/`, plus `socketio_namespaces`).
    pub fn start(config: Config) -> Result<Server, ServerError> {
        let mut app = SocketIo::relay();
        for nsp in &config.socketio_namespaces {
            app = app.namespace(nsp, Namespace::new());
        }
        Server::start_with(config, app)
    }

    /// Like [`Server::start`], with application code on the Socket.IO endpoint.
    pub fn start_with(config: Config, app: SocketIo) -> Result<Server, ServerError> {
        Server::start_with_hooks(config, app, Hooks::new())
    }

    /// Like [`Server::start_with`], with authorization hooks for both protocols
    /// (docs/AUTH.md, "Authorization"); the configuration's `[[auth.rooms]]` rules are
    /// added to them.
    pub fn start_with_hooks(
        config: Config,
        app: SocketIo,
        hooks: Hooks,
    ) -> Result<Server, ServerError> {
        Server::start_with_socketcluster(config, app, SocketCluster::new(), hooks)
    }

    /// Like [`Server::start_with_hooks`], with application code on the SocketCluster
    /// endpoint too (docs/SOCKETCLUSTER.md); the hooks are its middleware as well.
    pub fn start_with_socketcluster(
        config: Config,
        mut app: SocketIo,
        socketcluster: SocketCluster,
        hooks: Hooks,
    ) -> Result<Server, ServerError> {
        let verifier = Arc::new(Verifier::new(&config.auth)?);
        let hooks = Arc::new(hooks.with_rules(&config.auth.rooms));
        app.verifier = Some(Arc::clone(&verifier));
        app.hooks = Arc::clone(&hooks);
        let shards = config.shard_count(&allowed_cpus());
        let admin_ui = AdminUi::install(&config, shards, &mut app)?;
        let app = Arc::new(app);
        let socketio_path = config.socketio_path.clone();
        // One count of Engine.IO sessions for the whole server: the caps are server-wide
        // and per address, whichever shard a session lives on.
        let sessions = Arc::new(Occupancy::new(
            config.engineio_max_sessions,
            config.engineio_max_sessions_per_ip,
        ));
        let handshake_rate = config.engineio_handshake_rate;
        let admin = config.admin.clone();
        let socketcluster = config
            .socketcluster
            .enabled
            .then(|| (config.socketcluster.path.clone(), Arc::new(socketcluster)));
        let endpoints = move |shard: &Rc<Shard>| {
            // The relay runs the delivery hook on each recipient's shard, and fires the
            // dashboard's endpoint to end the sessions of Socket.IO players it kicked.
            shard.relay.borrow_mut().set_hooks(Arc::clone(&hooks));
            shard
                .relay
                .borrow_mut()
                .set_admin_waker((ADMIN_ENDPOINT, 0));
            let engine = EngineEndpoint::new(
                Arc::clone(&app),
                ENGINE_ENDPOINT,
                Arc::clone(&sessions),
                handshake_rate,
            );
            let admin_endpoint = AdminEndpoint::new(Rc::clone(&engine));
            let dashboard = Rc::new(AdminRoute::new(&admin, Rc::clone(&admin_endpoint)));
            let mut routes = Routes::new()
                .route(
                    PathMatch::Exact(NATIVE_PATH.to_owned()),
                    Rc::new(NativeRoute::new(Arc::clone(&verifier), Arc::clone(&hooks))),
                )
                .route(PathMatch::Exact(socketio_path.clone()), engine.clone())
                .route(PathMatch::Exact(METRICS_PATH.to_owned()), Rc::new(OpsRoute))
                .route(PathMatch::Exact(HEALTH_PATH.to_owned()), Rc::new(OpsRoute))
                .route(PathMatch::Exact(READY_PATH.to_owned()), Rc::new(OpsRoute));
            for path in ADMIN_PATHS {
                routes = routes.route(PathMatch::Exact(path.to_owned()), dashboard.clone());
            }
            if let Some((path, app)) = &socketcluster {
                let route =
                    ScRoute::new(Arc::clone(&verifier), Arc::clone(&hooks), Arc::clone(app));
                routes = routes.route(PathMatch::Exact(path.clone()), Rc::new(route));
            }
            let mut endpoints = vec![
                Rc::new(Front::new(routes)) as Rc<dyn Endpoint>,
                engine as Rc<dyn Endpoint>,
                admin_endpoint as Rc<dyn Endpoint>,
            ];
            if let Some(ui) = &admin_ui {
                let id = endpoints.len() as u16;
                endpoints.push(ui.endpoint(shard, id));
            }
            endpoints
        };
        Server::start_endpoints(config, Arc::new(endpoints))
    }

    /// Starts shards serving the endpoints `endpoints` builds on each shard; the first one
    /// gets every accepted connection (an HTTP front, normally).
    pub fn start_endpoints(
        config: Config,
        endpoints: Arc<EndpointFactory>,
    ) -> Result<Server, ServerError> {
        let allowed = allowed_cpus();
        let shards = config.shard_count(&allowed);
        if shards > crate::shard::MAX_SHARDS {
            return Err(ServerError::TooManyShards(shards));
        }
        let pin_to: Vec<usize> = if config.cpus.is_empty() {
            allowed.clone()
        } else {
            for &cpu in &config.cpus {
                if !allowed.contains(&cpu) {
                    return Err(ServerError::Cpu(cpu, allowed));
                }
            }
            config.cpus.clone()
        };
        let cpus: Vec<usize> = (0..shards).map(|i| pin_to[i % pin_to.len()]).collect();

        // Bind every shard's socket here, so that "address in use" is reported before any
        // thread starts; with port 0 the first bind picks the port the others share.
        let mut listeners = Vec::with_capacity(shards);
        let mut addr = config.listen;
        for _ in 0..shards {
            let socket = bind_reuseport(addr).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
            if addr.port() == 0 {
                // The socket was just bound to an IP address, so it has one.
                addr = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(addr);
            }
            // SAFETY: into_raw_fd hands over sole ownership of an open socket.
            listeners.push(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) });
        }

        // One queue per ordered pair of shards, and one doorbell per shard; in a cluster
        // the bridge is one more end of the mesh, after the last shard.
        let incarnation = config.cluster.redis.is_some().then(|| {
            use rand::Rng;
            // Never 0: envelopes of nodes that predate incarnations would claim it.
            rand::rng().next_u64() | 1
        });
        let ends = shards + usize::from(incarnation.is_some());
        let mesh = MeshQueues::new(ends, config.mesh_queue).map_err(|e| ServerError::Shard {
            shard: 0,
            reason: format!("cannot create the cross-shard doorbells: {e}"),
        })?;
        // One count for every shard: a connection is admitted against the whole server and
        // its address, whichever shard's listener the kernel gave it to.
        let connections = Arc::new(Occupancy::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
        let control = Arc::new(Control::new(mesh.doorbells()[..shards].to_vec()));
        let sizes = RingSizes {
            submissions: config.ring_entries,
            completions: config.ring_entries.saturating_mul(4),
            buffers: config.recv_buffers,
            buffer_size: config.recv_buffer_size,
        };
        let config = Arc::new(config);
        let stats = StatsRegistry::new(shards);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut threads = Vec::with_capacity(shards);
        for (id, listener) in listeners.into_iter().enumerate() {
            let seed = ShardSeed {
                id,
                shards,
                listener,
                config: Arc::clone(&config),
                stats: stats.shard(id),
                registry: stats.clone(),
                control: Arc::clone(&control),
                connections: Arc::clone(&connections),
                mesh: mesh.mesh_for(id, config.mesh_backlog),
                endpoints: Arc::clone(&endpoints),
                cluster_node: incarnation,
            };
            let cpu = cpus[id];
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("corelay-shard-{id}"))
                .spawn(move || {
                    let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                        .name(&format!("shard-{id}"))
                        .io_memory(IO_MEMORY)
                        .make();
                    let ex = match executor {
                        Ok(ex) => ex,
                        Err(e) => {
                            let _ = ready.send((id, Err(explain_executor_error(&e.to_string()))));
                            return;
                        }
                    };
                    // The ring is made on the thread that will use it (single issuer).
                    let ring = match Ring::new(sizes) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready.send((id, Err(explain_ring_error(&e))));
                            return;
                        }
                    };
                    // Alive from here: `/healthz` reads a shard not stamped yet as stuck.
                    seed.stats
                        .set_alive(crate::stats::unix_ms(std::time::SystemTime::now()));
                    let _ = ready.send((id, Ok(())));
                    // A panic on a shard (a bug, or a panicking application handler) leaves
                    // its state broken and its clients unserved: the shard ends (its
                    // driver, dropped while unwinding, cuts its sockets) and every other
                    // shard drains, so that the server stops whole, reports the failure from
                    // `join`, and a supervisor restarts it. Caught around the driver's
                    // future, inside glommio's poll, so that glommio itself never unwinds.
                    let control = Arc::clone(&seed.control);
                    let served = ex.run(AssertUnwindSafe(driver::run(seed, ring)).catch_unwind());
                    if let Err(panic) = served {
                        control.fail(id, panic_message(panic.as_ref()));
                    }
                })
                .map_err(|e| ServerError::Shard {
                    shard: id,
                    reason: e.to_string(),
                })?;
            threads.push(thread);
        }
        drop(ready_tx);

        let mut failure = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(reason))) => {
                    failure.get_or_insert(ServerError::Shard { shard, reason });
                }
                Err(_) => {
                    failure.get_or_insert(ServerError::Panicked(
                        "a shard thread died at start".into(),
                    ));
                    break;
                }
            }
        }
        let mut server = Server {
            addr,
            cpus,
            threads,
            control,
            stats,
            membership: None,
            bridge: None,
        };
        if let Some(err) = failure {
            server.shutdown();
            let _ = server.join();
            return Err(err);
        }
        let membership = Membership::start(
            &config.cluster,
            addr,
            shards,
            incarnation.unwrap_or(0),
            server.stats.clone(),
            Arc::clone(&server.control),
        );
        let bridge = match (&config.cluster.redis, incarnation) {
            (Some(url), Some(node)) => Bridge::start(
                url,
                config.cluster.redis_cluster,
                node,
                shards,
                std::time::Duration::from_millis(config.cluster.lease_ms),
                // A stream outlives its room's last message by two resume windows: every
                // session that may still ask for it has ended by then.
                (config.resume.enabled() && config.cluster.shared_history).then(|| {
                    crate::cluster::bridge::StreamLimits {
                        messages: config.resume.window_messages,
                        ttl: std::time::Duration::from_millis(config.resume.window_ms * 2),
                    }
                }),
                mesh.mesh_for(shards, config.mesh_backlog),
                server.stats.cluster_status(),
                config
                    .cluster
                    .matchmaking
                    .then(|| config.matchmaking.clone()),
            )
            .map(Some),
            _ => Ok(None),
        };
        let membership = bridge.and_then(|b| {
            server.bridge = b;
            membership
        });
        match membership {
            Ok(m) => server.membership = m,
            Err(e) => {
                server.shutdown();
                let _ = server.join();
                return Err(ServerError::Cluster(e.to_string()));
            }
        }
        Ok(server)
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CPU each shard is pinned to, by shard.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// Merged statistics of every shard.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// A handle to read stats from another thread.
    pub fn stats_registry(&self) -> StatsRegistry {
        self.stats.clone()
    }

    /// Starts a graceful shutdown: stop accepting, close every client with 1001, stop.
    pub fn shutdown(&self) {
        self.control.request_shutdown();
    }

    /// A handle that can request shutdown from anywhere (e.g. a signal thread).
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Waits for every shard to stop: after [`Server::shutdown`], or by itself when a shard
    /// panicked ([`ServerError::ShardFailed`]; every other shard drains as in a shutdown).
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for t in self.threads {
            if let Err(panic) = t.join() {
                result = Err(ServerError::Panicked(panic_message(panic.as_ref())));
            }
        }
        // Every shard is done: what they left for the other nodes goes out, and the
        // other nodes stop listing this one.
        if let Some(b) = self.bridge {
            b.stop();
        }
        if let Some(m) = self.membership {
            m.leave();
        }
        if let Some((shard, message)) = self.control.failure() {
            result = Err(ServerError::ShardFailed {
                shard,
                message: message.to_owned(),
            });
        }
        result
    }

    /// Shuts down and waits for every shard (within `shutdown_grace_ms` and a tick).
    pub fn stop(self) -> Result<(), ServerError> {
        self.shutdown();
        self.join()
    }
}

/// The message a panic was raised with (`panic!` with a literal or a format).
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Turns the shard ring's start-up errors into what an operator should do about them.
fn explain_ring_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) => format!(
            "io_uring is unavailable on this host ({e}); check kernel.io_uring_disabled and seccomp, see tuning/README.md"
        ),
        Some(libc::EINVAL) => format!(
            "the kernel refused the shard's io_uring setup ({e}); corelay needs Linux 6.1 or later (single-issuer rings with deferred task work), see tuning/README.md"
        ),
        Some(libc::ENOMEM) => format!(
            "not enough memory for the shard's io_uring ({e}); lower ring_entries or recv_buffers, or raise RLIMIT_MEMLOCK (tuning/limits.conf)"
        ),
        _ => format!("cannot create the shard's io_uring: {e}"),
    }
}

/// Turns glommio's start-up errors into what an operator should do about them.
fn explain_executor_error(raw: &str) -> String {
    if raw.contains("MemLock") {
        format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is too low for io_uring ({raw}); raise it to at least 512 KiB, see tuning/limits.conf"
        )
    } else if raw.contains("Operation not permitted") || raw.contains("Function not implemented") {
        format!("io_uring is unavailable on this host ({raw}); check kernel.io_uring_disabled and seccomp, see tuning/README.md")
    } else {
        raw.to_owned()
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Blocking: accepts go through io_uring, which waits by itself.
    socket.set_nonblocking(false)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}
