//! TURN over TCP framing (RFC 8656 section 11): any byte stream splits into STUN messages and
//! ChannelData frames within their length bounds, or ends in a clean error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut reader = data;
        let mut consumed = 0;
        while let Ok(Some(frame)) = relaychat::turn::tcp::read_frame(&mut reader).await {
            assert!(frame.len() >= 4 && frame.len() <= 20 + 65_535);
            consumed += frame.len();
            assert!(consumed <= data.len());
        }
    });
});
