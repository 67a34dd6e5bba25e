//! The integrated TURN relay and the pieces the signaling side shares with it.
//!
//! - `credentials`: REST credentials (issue and verify), `iceServers` for `webrtc-joined`.
//! - `presence`: who is in voice right now; the relay's auth asks it, teardown listens to it.

pub mod credentials;
pub mod presence;
