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
//! - [`config`]: one [`Config`] from defaults, a TOML file, `CORELAY_*` variables and flags.
//! - [`server`]: [`Server::start`] spawns the shards and hands back a handle.
//! - `shard/`: executors, CPU placement, the cross-shard mesh and the shard's run loop.
//! - `net/`: accept loop, HTTP/1.1 heads ([`net::http`]), WebSocket framing ([`net::ws`]),
//!   the per-connection tasks.
//! - [`proto`]: wire formats, sans-IO; [`proto::native`] is the rkyv protocol on `/ws`.
//! - [`relay`]: rooms, membership, fan-out and the per-connection [`relay::Outbox`], sans-IO.
//! - [`stats`]: per-shard counters and latency, merged on demand.
//! - [`socketio`]: Socket.IO v5 on Engine.IO v4 (`net::engineio`): the relay convention
//!   and the application API ([`socketio::SocketIo`], [`socketio::Namespace`]).
//! - [`client`]: an async Rust client of the native protocol (tests, loadgen, games).
//! - [`tune`]: `corelay tune`, the host inspection.
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod net;
pub mod proto;
pub mod relay;
pub mod server;
pub mod shard;
pub mod socketio;
pub mod stats;
pub mod tune;

pub use config::Config;
pub use server::{Server, ServerError};
pub use stats::Stats;
