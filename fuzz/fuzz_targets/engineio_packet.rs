//! Engine.IO: packets, long-polling payloads and query strings from arbitrary bytes.
#![no_main]

use corelay::proto::engineio::{decode_payload, Packet, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_payload(data);
    let _ = Packet::decode_binary(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Packet::decode_text(text) {
            let _ = p.encode_ws();
        }
        let _ = Query::parse(text);
    }
});
