//! Socket.IO: packet text and binary reassembly from arbitrary input.
#![no_main]

use bytes::Bytes;
use corelay::proto::socketio::{BinaryAssembler, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a text packet and binary attachments.
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (split as usize).min(rest.len());
    let (text, binary) = rest.split_at(at);
    if let Ok(text) = std::str::from_utf8(text) {
        if let Ok(decoded) = Packet::decode(text) {
            let _ = format!("{decoded:?}");
        }
        // A small byte bound, so that the fuzzer reaches it.
        let mut assembler = BinaryAssembler::new(4, 64);
        if assembler.push_text(text, std::time::Instant::now()).is_ok() {
            for chunk in binary.chunks(7) {
                if let Ok(Some(packet)) = assembler.push_binary(Bytes::copy_from_slice(chunk)) {
                    let _ = packet.encode();
                    break;
                }
            }
        }
    }
});
