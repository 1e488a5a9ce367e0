//! corelay: a thread-per-core real-time relay server for multiplayer games.
//!
//! Players connect over WebSocket, join rooms, and what one player sends reaches the other
//! members in microseconds. One shard runs per core: a glommio executor pinned to its CPU,
//! accepting on the shared listen address (SO_REUSEPORT) and owning its connections, its
//! rooms and its buffers. Nothing on the hot path is shared behind a lock; shards talk only
//! through single-producer single-consumer queues (the mesh). Thread-per-core keeps every
//! connection's state in one core's cache and removes locks instead of contending on them.
//!
//! # Layout
//!
//! From the wire up; each layer uses only the ones above it in this list, and [`config`] and
//! [`stats`] (below) are used throughout.
//!
//! - [`auth`]: JWT authentication, sans-IO: the `[auth]` settings and the verifier that
//!   turns a token (native `Hello`, Socket.IO CONNECT) into a player's [`auth::Identity`].
//! - [`admission`]: the connection, session and rate caps per source address and per
//!   server, shared by the shards without locks.
//! - [`proto`]: wire formats, sans-IO: HTTP/1.1 heads ([`proto::http`]), WebSocket framing
//!   ([`proto::ws`]), the native rkyv protocol ([`proto::native`]), Engine.IO and
//!   Socket.IO packets, SocketCluster packets and heartbeat ([`proto::socketcluster`]).
//! - [`rate_limit`]: the token buckets of one connection (messages, bytes and joins per
//!   second) and when persistent refusals close it, sans-IO.
//! - [`relay`]: rooms, membership, fan-out and the per-connection [`relay::Outbox`], sans-IO;
//!   each room's sequence numbers and replay ring at its home shard, the sessions that
//!   wait to be resumed (`[resume]`, docs/SESSIONS.md), host actions and created rooms
//!   (`relay/rooms.rs`), and matchmaking on the shards (`relay/matching.rs`: a ticket
//!   crosses to its queue's shard, which runs the [`matchmaking`] state machine, and a
//!   match becomes a room at that room's home).
//! - [`hooks`]: authorization: the application's [`hooks::Hooks`] (handshake, join,
//!   message, delivery) and the `[[auth.rooms]]` rules, over the relay's message bodies;
//!   the sessions of both protocols call them, and the relay's delivery loop holds the
//!   delivery hook (the one place the two know each other).
//! - [`matchmaking`]: matchmaking queues, sans-IO: tickets (players or parties with a
//!   skill, a region and properties) and `now` in, matches and timeouts out, with widening
//!   skill windows and the `[matchmaking]` settings (docs/ROOMS.md).
//! - [`timer`]: the timer wheel every shard keeps its deadlines in.
//! - [`shard`]: the runtime, which knows no protocol. Per core: a glommio executor running
//!   one driver that owns the shard's io_uring (multishot receives into provided buffers,
//!   every send of a turn submitted in one batch, sleeps with a timeout and a batch wait),
//!   the shard's connections and their [`shard::Connection`] handlers, the timer wheel, and
//!   the mesh to other shards ([`shard::mesh`]). Endpoints are registered with it
//!   ([`shard::Endpoint`]); a connection handed to another shard starts over at that
//!   shard's front.
//! - `engineio` (crate-private) and [`socketio`]: the Engine.IO session machine (packets
//!   and `now` in, packets, events and its next deadline out) and Socket.IO on top of it:
//!   namespaces, acks, the relay convention and the application API
//!   ([`socketio::SocketIo`], [`socketio::Namespace`]); the official Socket.IO Admin UI's
//!   namespace ([`socketio::admin_ui`], docs/ADMIN_UI.md), whose view of every shard's
//!   sockets and rooms the relays keep and gather over the mesh (`relay/admin_ui.rs`).
//! - [`socketcluster`]: SocketCluster's settings and application API (procedures with
//!   responses, the exchange, invoke middleware; the [`hooks`] are its other middleware),
//!   docs/SOCKETCLUSTER.md.
//! - [`net`]: the endpoints, which give bytes their meaning: the HTTP front
//!   ([`net::front`]) that routes every accepted connection by path, the one WebSocket
//!   driver ([`net::websocket`]) and its applications (native on `/ws`, the Engine.IO
//!   transport, SocketCluster on `/socketcluster/` ([`net::socketcluster`]), echo), Engine.IO long-polling ([`net::engineio`]), and the operator's
//!   endpoints: `/metrics` and health ([`net::ops`]), the dashboard at `/admin`
//!   ([`net::admin`]: its live feed, and the relay's admin requests, `relay/admin.rs`,
//!   which gather rooms and carry kicks over the mesh only when asked).
//! - [`server`]: [`Server::start`] binds, registers the endpoints and spawns the shards
//!   ([`Server::start_with_hooks`] with application code and authorization hooks);
//!   [`config`] builds the one [`Config`]; [`stats`] merges per-shard counters.
//! - [`client`]: an async Rust client of the native protocol (tests, loadgen, games),
//!   sharing the framing with the server and its WebSocket client side with the load
//!   generator.
//! - [`cluster`]: several nodes through Redis (`[cluster]`): each node's lease, kept by a
//!   thread of its own outside the shards, and what it learns for `/readyz` and
//!   `/metrics` (docs/SCALING.md); the bridge between the shards' mesh and Redis pub/sub
//!   (`cluster/bridge.rs`), and on its runtime the cluster's matchmaking queues
//!   (`cluster/queues.rs`: tickets in Redis, a pass per queue on one node under a lease).
//! - [`tune`]: `corelay tune`, the host inspection.
//! - [`logs`]: what the server logs through `tracing` (the binary installs the subscriber,
//!   the library never does) and the per-shard [`logs::Throttle`] that keeps warnings a
//!   peer can cause from flooding the log.
#![warn(missing_docs)]

pub mod admission;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
mod engineio;
pub mod hooks;
pub mod logs;
pub mod matchmaking;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod rate_limit;
pub mod relay;
pub mod server;
pub mod shard;
pub mod socketcluster;
pub mod socketio;
pub mod stats;
pub mod timer;
pub mod tune;

pub use config::Config;
pub use server::{Server, ServerError};
pub use stats::Stats;
