//! SocketCluster: message text (pings, packets, batches) and the binary objects inside.
#![no_main]

use corelay::proto::socketcluster::{decode, sc_value, split_binary, Inbound, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Inbound::Packets(packets)) = decode(text) {
        for packet in packets.into_iter().flatten() {
            if let Packet::Publish { data, .. } | Packet::Event { data, .. } = packet {
                let _ = sc_value(&split_binary(data));
            }
        }
    }
});
