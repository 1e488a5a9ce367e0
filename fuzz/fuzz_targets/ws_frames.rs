//! WebSocket framing as the server reads it, fed in arbitrary chunks.
#![no_main]

use corelay::net::ws::WsCodec;
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::Role;

fuzz_target!(|data: &[u8]| {
    let mut codec = WsCodec::new(Role::Server, 64 * 1024);
    for chunk in data.chunks(61) {
        codec.feed(chunk);
        loop {
            match codec.poll_message() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let _ = codec.take_output();
    }
});
