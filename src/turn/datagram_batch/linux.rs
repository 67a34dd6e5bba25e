//! The Linux system calls: `recvmmsg` (with `UDP_GRO`, Linux 5.0+), `sendmsg` with
//! `UDP_SEGMENT` (GSO, Linux 4.18+) and `sendmmsg`. All non-blocking (`MSG_DONTWAIT`); the
//! per-call arrays live on the stack, so a call allocates nothing.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::net::UdpSocket;

use super::receive::{Received, SlotLayout};
use super::send::MAX_GSO_SEGMENTS;
use super::{sockaddr, MAX_BATCH};

pub const GSO_BUILT_IN: bool = true;

/// Room for one `int` control message (the GRO segment size), aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 32]);

/// The kernel has no such call or option (`ENOSYS`: no `sendmmsg`/`recvmmsg`; `EOPNOTSUPP`,
/// `ENOPROTOOPT`: no such socket option or control message). Nothing a datagram or its
/// destination holds causes these, so only they may turn a feature off for a whole socket.
pub fn feature_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOPROTOOPT))
}

/// `recvmmsg` cannot be used on this socket: the feature is missing, or refused as a whole
/// (`EINVAL`, `EIO`, as some emulated kernels answer). A receive names no destination, so no
/// client or peer picks this.
pub fn recv_unsupported(e: &io::Error) -> bool {
    feature_missing(e) || matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO))
}

/// A GSO send of `segment`-byte segments refused for where it went: the smallest segment size
/// the refusal covers for that destination. `EINVAL`: this size and up (larger than the route's
/// MTU allows; also an address no send can go to, such as port 0); `EIO`: every size (the
/// route's device cannot checksum the segments). `None`: not a refusal of GSO.
pub fn gso_refused_from(e: &io::Error, segment: usize) -> Option<usize> {
    match e.raw_os_error() {
        Some(libc::EINVAL) => Some(segment),
        Some(libc::EIO) => Some(0),
        _ => None,
    }
}

pub fn enable_gro(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a live `c_int` of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One non-blocking `recvmmsg` into the receive areas of the first `slots` slots of `storage`;
/// replaces `out` with what the kernel said about each slot it filled and returns how many it
/// filled (`WouldBlock` if none).
/// Only the headers of the slots asked for are written: the arrays stay uninitialized past
/// them, so a call that finds one datagram does not pay for clearing 64 headers.
pub fn recv_many(
    socket: &UdpSocket,
    storage: &mut [u8],
    layout: SlotLayout,
    slots: usize,
    want_gro: bool,
    out: &mut Vec<Received>,
) -> io::Result<usize> {
    out.clear();
    let slots = slots.min(MAX_BATCH).min(storage.len() / layout.stride.max(1));
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; MAX_BATCH];
    let mut controls = [const { MaybeUninit::<Control>::uninit() }; MAX_BATCH];
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let base = storage.as_mut_ptr();
    for slot in 0..slots {
        let area = layout.area(slot);
        // SAFETY: `area` lies within `storage` (`slots` was capped to what the storage holds).
        let start = unsafe { base.add(area.start) };
        let iov = iovecs[slot].write(libc::iovec { iov_base: start.cast(), iov_len: area.len() });
        // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_name = names[slot].as_mut_ptr().cast();
        hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        if want_gro {
            hdr.msg_control = controls[slot].as_mut_ptr().cast();
            hdr.msg_controllen = mem::size_of::<Control>() as _;
        }
        headers[slot].write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: the first `slots` headers are initialized and point at live buffers of the
    // lengths given, which outlive the call; the kernel writes at most those lengths.
    let count = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr().cast::<libc::mmsghdr>(),
            slots as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    for slot in 0..count as usize {
        // SAFETY: headers up to `slots` were initialized above, and `count <= slots`.
        let mmsg = unsafe { headers[slot].assume_init_ref() };
        let hdr = &mmsg.msg_hdr;
        // SAFETY: the kernel filled `msg_namelen` bytes of this slot's name (the rest may be
        // uninitialized); `decode` reads through the pointer no more than those bytes.
        let Some(from) = (unsafe { sockaddr::decode(names[slot].as_ptr(), hdr.msg_namelen) }) else {
            // Not an IP source (cannot happen on an IP socket): skipped, not an error that
            // would drop the rest of the batch.
            continue;
        };
        out.push(Received {
            slot,
            len: mmsg.msg_len as usize,
            // SAFETY: the header's control buffer is the one set up above, filled by the kernel.
            stride: if want_gro { unsafe { gro_segment_size(hdr) } } else { 0 },
            from,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
        });
    }
    Ok(count as usize)
}

/// The `UDP_GRO` control message's segment size, 0 if none.
///
/// # Safety
/// `hdr` must be a header `recvmmsg` filled, its control buffer still alive.
unsafe fn gro_segment_size(hdr: &libc::msghdr) -> usize {
    let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
    while !cmsg.is_null() {
        let c = &*cmsg;
        if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == libc::UDP_GRO {
            let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
            return usize::try_from(size).unwrap_or(0);
        }
        cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
    }
    0
}

/// One `sendmsg` of `segments` (equal sizes, the last maybe shorter, at most
/// [`MAX_GSO_SEGMENTS`]) with `UDP_SEGMENT`, so the kernel cuts it into one datagram per segment.
pub fn send_segments(socket: &UdpSocket, to: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
    let segments = &segments[..segments.len().min(MAX_GSO_SEGMENTS)];
    let segment_size = segments.first().map_or(0, |s| s.len());
    let total: usize = segments.iter().map(|s| s.len()).sum();
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_GSO_SEGMENTS];
    for (iov, s) in iovecs.iter_mut().zip(segments) {
        iov.write(libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() });
    }
    let addr = socket2::SockAddr::from(to);
    let mut control = Control([0; 32]);
    // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
    hdr.msg_namelen = addr.len();
    hdr.msg_iov = iovecs.as_mut_ptr().cast();
    hdr.msg_iovlen = segments.len() as _;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer is 32 bytes, more than CMSG_SPACE(2), and aligned; the
    // pointers stay within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment_size as u16);
    }
    // SAFETY: the header points at live buffers (the first `segments.len()` iovecs, initialized
    // above, the address, the control message) for the duration of the call; the kernel only
    // reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != total {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "GSO send cut short"));
    }
    Ok(())
}

/// One `sendmmsg` of up to [`MAX_BATCH`] datagrams to `to`: how many left (the kernel stops at
/// the first it refuses, and fails the call only if that is the first).
pub fn send_many(socket: &UdpSocket, to: SocketAddr, datagrams: &[&[u8]]) -> io::Result<usize> {
    let datagrams = &datagrams[..datagrams.len().min(MAX_BATCH)];
    let addr = socket2::SockAddr::from(to);
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    for (i, d) in datagrams.iter().enumerate() {
        let iov =
            iovecs[i].write(libc::iovec { iov_base: d.as_ptr() as *mut libc::c_void, iov_len: d.len() });
        // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr.len();
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        headers[i].write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: the first `datagrams.len()` headers are initialized and point at live buffers and
    // the address, which outlive the call; the kernel only reads them (and writes `msg_len`).
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr().cast::<libc::mmsghdr>(),
            datagrams.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
