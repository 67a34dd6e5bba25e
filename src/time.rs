//! Wall-clock time in the one unit the protocol speaks: whole seconds since the Unix epoch.
//!
//! REST credentials carry their expiry as Unix seconds, nonces carry their mint time, and the
//! hub stamps `iceServers`; every one of them reads the clock here, so pure code (the hub, the
//! TURN gate) is handed `now` instead of reading it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since 1970-01-01 UTC; 0 on a clock set before 1970 (credentials then look expired,
/// which fails closed).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
