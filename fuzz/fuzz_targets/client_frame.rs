//! Any text frame a client sends is parsed without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = relaychat::protocol::parse_inbound(text);
    }
});
