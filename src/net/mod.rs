//! Endpoints: the IO drivers that give bytes their meaning, registered with the shard
//! runtime. Every accepted connection starts in the HTTP [`front`], which routes it by path
//! to the native protocol ([`native`], `/ws`), to Engine.IO ([`engineio`], `/socket.io/`),
//! to the operator's endpoints ([`ops`]: `/metrics`, `/healthz`, `/readyz`; [`admin`]: the
//! dashboard at `/admin`), or to the echo server ([`echo`]). Upgraded connections all run
//! on the one WebSocket driver ([`websocket`]).

pub mod admin;
pub mod echo;
pub mod engineio;
pub mod front;
pub mod native;
pub mod ops;
pub mod socketcluster;
pub mod websocket;

pub use native::NATIVE_PATH;
