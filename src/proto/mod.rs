//! Wire formats, sans-IO: bytes in, frames and events out. Nothing here touches a socket,
//! a clock or an executor, so every decoder is unit-tested and fuzzed on plain bytes.

pub mod engineio;
pub mod http;
pub mod native;
pub mod socketcluster;
pub mod socketio;
pub mod ws;
