//! Any bytes a load balancer sends are read as a PROXY protocol header without panicking and
//! without reading past it: a complete header is a prefix of the input within the size bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaychat::proxy_protocol::{client_address, progress, Progress, MAX_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let balancer = "10.0.0.2:40000".parse().unwrap();
    let mut read = 0;
    loop {
        match progress(&data[..read]) {
            Ok(Progress::Need(more)) => {
                assert!(more > 0);
                if read + more > data.len() {
                    return; // the stream ended inside the header
                }
                read += more;
            }
            Ok(Progress::Complete) => {
                assert!(read <= MAX_HEADER_BYTES);
                let _ = client_address(&data[..read], balancer);
                return;
            }
            Err(_) => return,
        }
    }
});
