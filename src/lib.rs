//! relaychat: a chat server, a WebRTC signaling server and a TURN relay in one binary.
//!
//! How the pieces fit:
//! - `config`: typed settings, merged from defaults, file, environment and flags.
//! - `protocol`: the wire types; raw JSON becomes a typed `ClientMessage` at the edge.
//! - `hub`: the sans-IO state machine of chat and voice (events in, effects out).
//! - `store`: SQLite history, accounts and bans, written from one dedicated thread.
//! - `accounts`: operator-managed accounts and admin flags (`relaychat user`).
//! - `invite`: invite-only mode (signed invite links, member passes, the gate).
//! - `http`: warp routes (WebSocket sessions, /server-info, the built-in client).
//! - `turn`: the TURN relay (listeners, the pure admission gate, relay sockets) and REST credentials.
//! - `presence`: who is in voice right now (the hub writes it, the relay's auth reads it);
//!   `ice_servers`: the `iceServers` handed out in `webrtc-joined`.
//! - `addr`, `time`: address canonicalization and the Unix clock, shared by everyone.
//! - `memory`: freed memory handed back to the OS (glibc tuning, periodic trim), heap in use.
//! - `metrics`: Prometheus text from the live counters; `tls`: certificates, reloaded on SIGHUP.
//! - `server`: wires everything together and runs until shutdown.
//! - `doctor`: `relaychat doctor`, a configuration checked from the server's side.
//! - `admin`: the operator's HTTP API on its own listener, and the `relaychat admin` client.

pub mod accounts;
pub mod addr;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod http;
pub mod hub;
pub mod ice_servers;
pub mod invite;
pub mod memory;
pub mod metrics;
pub mod password_gate;
pub mod presence;
pub mod protocol;
pub mod proxy_protocol;
pub mod server;
pub mod store;
pub mod time;
pub mod tls;
pub mod turn;
