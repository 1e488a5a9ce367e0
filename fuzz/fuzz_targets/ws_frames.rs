//! WebSocket framing as the server reads it, fed in arbitrary chunks.
#![no_main]

use corelay::proto::ws::{Incoming, WsCodec};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::Role;

fuzz_target!(|data: &[u8]| {
    let mut codec = WsCodec::new(Role::Server, 64 * 1024);
    for chunk in data.chunks(61) {
        codec.feed(chunk);
        loop {
            match codec.poll_message() {
                Ok(Some(Incoming::Message(_))) => continue,
                Ok(None) => break,
                // The session ends here, as it does in the server.
                Ok(Some(Incoming::Closed(_))) | Err(_) => return,
            }
        }
        let _ = codec.take_output();
    }
});
