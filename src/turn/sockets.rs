//! Listener sockets: UDP (sharded with SO_REUSEPORT) and TCP on one port number, with the
//! buffer sizes a busy relay needs.

use std::io;
use std::net::SocketAddr;

use std::net::UdpSocket;

use crate::turn::error::RelayError;

/// Receive buffer of the listening UDP socket. Measured (tests/turn_flood.rs, 25 clients with
/// 100 requests each in flight, debug build): with the kernel default of 208 KiB only 1680 of
/// 5000 requests were answered, the rest overflowed the buffer while the read loop was busy;
/// with 4 MiB, 5000 of 5000 and then 100000 of 100000. Capped by net.core.rmem_max unless the
/// process may force it (root / CAP_NET_ADMIN), else warned. Not larger: with 16 and 32 MiB
/// (forced) the overloaded steps of the rate search dropped about as much (drops there come
/// from offering more than the relay can forward, which no queue absorbs), and the queue grew
/// to 0.8-1.3 s of media at p50, useless to a call (bench/profiles.md).
pub const LISTENER_RECV_BUFFER: usize = 4 * 1024 * 1024;
pub const LISTENER_SEND_BUFFER: usize = 4 * 1024 * 1024;
/// How many times to look for a port free on both UDP and TCP when `listen` has port 0.
const SHARED_PORT_ATTEMPTS: usize = 10;

/// Binds UDP then TCP on the same port number (a fresh pair if `listen` has port 0 and the
/// kernel's UDP choice is taken on TCP). UDP is bound `shards` times with SO_REUSEPORT, so the
/// kernel spreads clients (by their address hash, so each client always lands on the same
/// socket) over one read loop per core.
///
/// `v6_only` (for `[turn] listen6`) keeps an IPv6 wildcard from also taking IPv4, so it can
/// share its port number with the IPv4 listener; `listen` itself keeps the system's default.
/// The UDP sockets are plain (non-blocking) std sockets: each is registered with the runtime of
/// the shard that reads it (see `shard`).
pub async fn bind_listeners(
    listen: SocketAddr,
    shards: usize,
    v6_only: bool,
) -> Result<(Vec<UdpSocket>, tokio::net::TcpListener), RelayError> {
    let attempts = if listen.port() == 0 { SHARED_PORT_ATTEMPTS } else { 1 };
    let udp_error = |source| RelayError::Bind { addr: listen, transport: "udp", source };
    let mut last_err = None;
    for _ in 0..attempts {
        let first = bind_udp(listen, shards > 1, v6_only).map_err(udp_error)?;
        let bound = first.local_addr().map_err(udp_error)?;
        let tcp_addr = SocketAddr::new(listen.ip(), bound.port());
        let tcp = match bind_tcp_with(tcp_addr, v6_only) {
            Ok(tcp) => tcp,
            Err(source) => {
                last_err = Some(RelayError::Bind { addr: tcp_addr, transport: "tcp", source });
                continue;
            }
        };
        let mut udp = vec![first];
        for _ in 1..shards {
            match bind_udp(bound, true, v6_only) {
                Ok(socket) => udp.push(socket),
                Err(err) => {
                    tracing::debug!(%err, "SO_REUSEPORT sharding unavailable; one UDP read loop");
                    break;
                }
            }
        }
        return Ok((udp, tcp));
    }
    Err(last_err.expect("at least one attempt"))
}

fn bind_udp(addr: SocketAddr, reuse_port: bool, v6_only: bool) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if v6_only && addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Elsewhere the second bind fails and one read loop serves all.
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    set_buffers(&socket, LISTENER_RECV_BUFFER, LISTENER_SEND_BUFFER);
    Ok(socket.into())
}

/// Sets socket buffers and warns if the kernel granted less (Linux doubles the value it
/// reports, and caps a request at net.core.rmem_max / wmem_max). When the cap is lower than the
/// request, `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` go past it if the process may (root or
/// CAP_NET_ADMIN); otherwise the warning tells the operator which sysctl to raise.
fn set_buffers(socket: &socket2::Socket, recv: usize, send: usize) {
    let _ = socket.set_recv_buffer_size(recv);
    let _ = socket.set_send_buffer_size(send);
    if socket.recv_buffer_size().unwrap_or(0) < recv {
        force_buffer(socket, BufferKind::Recv, recv);
    }
    if socket.send_buffer_size().unwrap_or(0) < send {
        force_buffer(socket, BufferKind::Send, send);
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < recv {
        tracing::warn!(
            requested = recv,
            granted,
            "the TURN listener got a smaller UDP receive buffer than requested; raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={recv}) or packets will be lost under load"
        );
    }
}

#[derive(Clone, Copy)]
enum BufferKind {
    Recv,
    Send,
}

/// Past net.core.rmem_max / wmem_max, where the process is allowed to (EPERM otherwise, which
/// leaves the capped size and the warning).
#[cfg(target_os = "linux")]
fn force_buffer(socket: &socket2::Socket, kind: BufferKind, bytes: usize) {
    use std::os::fd::AsRawFd;
    let option = match kind {
        BufferKind::Recv => libc::SO_RCVBUFFORCE,
        BufferKind::Send => libc::SO_SNDBUFFORCE,
    };
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor and a pointer to a live `c_int` of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(err = %io::Error::last_os_error(), "SO_RCVBUFFORCE/SO_SNDBUFFORCE refused");
    }
}

#[cfg(not(target_os = "linux"))]
fn force_buffer(_socket: &socket2::Socket, _kind: BufferKind, _bytes: usize) {}

pub fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    bind_tcp_with(addr, false)
}

/// `bind_tcp`, IPv6-only when asked (see `bind_listeners`).
pub fn bind_tcp_with(addr: SocketAddr, v6_only: bool) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if v6_only && addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn buffers_past_rmem_max_are_forced_where_allowed_else_capped() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("net.core.rmem_max readable");
        let want = rmem_max * 2;
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        set_buffers(&socket, want, 64 * 1024);
        let granted = socket.recv_buffer_size().unwrap();
        // CAP_NET_ADMIN is bit 12 of the effective capabilities (root has it unless a container
        // took it away).
        let cap_net_admin = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
            .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
            .is_some_and(|caps| caps & (1 << 12) != 0);
        if cap_net_admin {
            assert!(granted >= want, "CAP_NET_ADMIN forces past rmem_max: granted {granted}, wanted {want}");
        } else {
            // Without the privilege the kernel's cap stands (it reports twice the value).
            assert_eq!(granted, rmem_max * 2);
        }
    }
}
