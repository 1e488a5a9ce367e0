//! Native protocol: any bytes given to the validators must be refused or read, never crash.
#![no_main]

use corelay::proto::native::{access_client, access_server, ArchivedClientFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = access_client(data) {
        // Reading every field of a validated frame must be safe too.
        if let ArchivedClientFrame::Send { room, event, payload, .. } = frame {
            let _ = (room.len(), event.len(), payload.as_slice().len());
        }
    }
    let _ = access_server(data);
});
