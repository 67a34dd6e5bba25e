//! Elsewhere than Linux: no batched system calls. Every call here says so, and the callers
//! go one datagram per system call.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::receive::{Received, SlotLayout};

pub const GSO_BUILT_IN: bool = false;

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "batched UDP system calls are Linux-only")
}

pub fn feature_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
}

pub fn recv_unsupported(e: &io::Error) -> bool {
    feature_missing(e)
}

pub fn gso_refused_from(_e: &io::Error, _segment: usize) -> Option<usize> {
    None
}

pub fn enable_gro(_socket: &UdpSocket) -> io::Result<()> {
    Err(unsupported())
}

pub fn recv_many(
    _socket: &UdpSocket,
    _storage: &mut [u8],
    _layout: SlotLayout,
    _slots: usize,
    _want_gro: bool,
    _out: &mut Vec<Received>,
) -> io::Result<usize> {
    Err(unsupported())
}

pub fn send_segments(_socket: &UdpSocket, _to: SocketAddr, _segments: &[&[u8]]) -> io::Result<()> {
    Err(unsupported())
}

pub fn send_many(_socket: &UdpSocket, _to: SocketAddr, _datagrams: &[&[u8]]) -> io::Result<usize> {
    Err(unsupported())
}
