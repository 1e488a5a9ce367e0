//! HTTP request heads: need-more, a request, or an error; never a crash.
#![no_main]

use corelay::proto::http::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, len))) = parse_request(data, 8192) {
        assert!(len <= data.len());
        let _ = req.websocket_key();
        let _ = req.content_length();
    }
});
