//! Many UDP datagrams per system call, and a clean one-datagram-per-call fallback.
//!
//! - `receive`: [`RecvBatch`] fills up to [`MAX_BATCH`] reusable slots with one `recvmmsg` and
//!   splits what UDP GRO coalesced back into the datagrams the peers sent; a slot can keep room
//!   in front of and after its datagram, so a header can be written there in place;
//! - `send`: [`BatchSender`] sends a batch to one destination, runs of equal-size datagrams as
//!   one UDP GSO `sendmsg` each and the rest with `sendmmsg`, counting (not hiding) the
//!   datagrams the kernel refused; `gso_refusals`: the destinations GSO was refused for;
//! - `linux` (elsewhere `portable`): the system calls themselves, `sockaddr`: the socket
//!   addresses they read and write.
//!
//! Where the kernel lacks a call (not Linux, an old kernel), the same API falls back on its own
//! to one datagram per system call; [`BatchMode::OneAtATime`] forces that fallback, and
//! `RELAYCHAT_TURN_BATCHING=off` forces it for the whole relay ([`BatchMode::configured`]), so
//! the TURN tests can run against both paths.
//!
//! Why not `quinn-udp` (which does the same for QUIC): it drops `MSG_TRUNC`, so a datagram cut
//! short by a small buffer (a relay socket's 1500 bytes) would be handed on as if whole; it turns
//! on `IP_PKTINFO`/`IP_RECVTOS` control messages we would parse and throw away per datagram, and
//! forbids fragmentation (`IP_PMTUDISC_PROBE`) on the socket, a behaviour change for the TURN
//! listener; it has no switch to force the fallback path, which the tests need; and its receive
//! buffers cannot keep headroom for a header written in place. The system calls are short, and
//! `libc` is already in the build.

mod gso_refusals;
mod receive;
mod send;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod sockaddr;
#[cfg(target_os = "linux")]
use linux as sys;

#[cfg(not(target_os = "linux"))]
mod portable;
#[cfg(not(target_os = "linux"))]
use portable as sys;

pub use receive::{Datagram, FramingSlot, RecvBatch, GRO_SLOT_SIZE};
pub use send::{BatchSender, SendOutcome};

/// Most datagrams one `recvmmsg` or `sendmmsg` handles (the kernel's `UIO_MAXIOV` is far above;
/// 64 keeps the per-call arrays on the stack small).
pub const MAX_BATCH: usize = 64;

/// The environment variable that forces one datagram per system call for the whole relay.
pub const BATCHING_ENV: &str = "RELAYCHAT_TURN_BATCHING";

/// Whether to use the batched system calls or read/send one datagram per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// `recvmmsg` / `sendmmsg` / GSO where the kernel has them (falls back on its own where it
    /// does not).
    Batched,
    /// One datagram per system call (still up to N per wake-up on receive).
    OneAtATime,
}

impl BatchMode {
    /// The relay's mode: [`BatchMode::OneAtATime`] if `RELAYCHAT_TURN_BATCHING` is `off`, `0`
    /// or `false` (read once per process), else [`BatchMode::Batched`].
    pub fn configured() -> BatchMode {
        static MODE: std::sync::OnceLock<BatchMode> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| {
            let value = std::env::var(BATCHING_ENV).unwrap_or_default();
            let mode = Self::from_setting(&value);
            if mode == BatchMode::OneAtATime {
                tracing::info!(
                    "{BATCHING_ENV}={value}: the relay reads and sends one datagram per system call"
                );
            }
            mode
        })
    }

    fn from_setting(value: &str) -> BatchMode {
        match value.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" | "no" => BatchMode::OneAtATime,
            _ => BatchMode::Batched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_off_forces_the_fallback() {
        for off in ["off", "0", "false", " OFF ", "no"] {
            assert_eq!(BatchMode::from_setting(off), BatchMode::OneAtATime, "{off:?}");
        }
        for on in ["", "on", "1", "yes", "anything"] {
            assert_eq!(BatchMode::from_setting(on), BatchMode::Batched, "{on:?}");
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Sockets and numbered datagrams for the tests of the batch modules.

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::UdpSocket;

    use super::RecvBatch;

    pub async fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (rx, tx)
    }

    /// Datagram `i` of a test: its index in the first two bytes, then a filler pattern.
    pub fn numbered(i: usize, len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        d[..2].copy_from_slice(&(i as u16).to_be_bytes());
        d
    }

    /// Reads batches until `want` datagrams arrived (or 5 s passed); returns them, the largest
    /// batch seen and how many were dropped as too long.
    pub async fn collect(
        batch: &mut RecvBatch,
        rx: &UdpSocket,
        want: usize,
    ) -> (Vec<(SocketAddr, Vec<u8>)>, usize, usize) {
        let mut got = Vec::new();
        let mut largest = 0;
        let mut truncated = 0;
        while got.len() + truncated < want {
            tokio::time::timeout(Duration::from_secs(5), batch.recv(rx))
                .await
                .expect("datagrams arrive")
                .unwrap();
            let before = got.len();
            got.extend(batch.datagrams().map(|d| (d.from, d.payload.to_vec())));
            truncated += batch.truncated();
            largest = largest.max(got.len() - before);
        }
        (got, largest, truncated)
    }
}
