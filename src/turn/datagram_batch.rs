//! Many UDP datagrams per system call: [`RecvBatch`] fills up to N reusable buffers with one
//! `recvmmsg` and splits what UDP GRO coalesced back into the datagrams the peers sent;
//! [`BatchSender`] sends runs of equal-size datagrams to one destination with one `sendmsg`
//! (UDP GSO); [`BatchCursor`] serves a batch one datagram per call, for interfaces that take
//! one at a time (the relay sockets' `Conn::recv_from` can adopt it in place of
//! `recv_whole_datagram`). Where the kernel lacks either (not Linux, an old kernel, or
//! [`BatchMode::OneAtATime`] asks for it), the same calls fall back to one datagram per call.
//!
//! Why not `quinn-udp` (which does the same for QUIC): it drops `MSG_TRUNC`, so a datagram cut
//! short by a small buffer (a relay socket's 1500 bytes) would be handed on as if whole; it turns
//! on `IP_PKTINFO`/`IP_RECVTOS` control messages we would parse and throw away per datagram, and
//! forbids fragmentation (`IP_PMTUDISC_PROBE`) on the socket, a behaviour change for the TURN
//! listener; and it has no switch to force the fallback path, which the tests need. The two
//! system calls below are short, and `libc` is already in the build.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one `recvmmsg` asks for (the kernel's `UIO_MAXIOV` is far above; 64 keeps the
/// per-call arrays on the stack small).
pub const MAX_BATCH: usize = 64;
/// UDP GRO hands up to 64 segments in one buffer, never more than a UDP datagram's 64 KiB; a
/// socket only gets GRO turned on if every buffer can hold that much.
pub const GRO_SLOT_SIZE: usize = 65_536;
/// Most segments one GSO `sendmsg` may carry (`UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload one GSO `sendmsg` may carry (one UDP datagram of the kernel's 64 KiB limit).
const MAX_GSO_BYTES: usize = 65_000;

/// Whether to use the batched system calls or read/send one datagram per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// `recvmmsg` / GSO where the kernel has them (falls back on its own where it does not).
    Batched,
    /// One datagram per system call (still up to N per wake-up on receive).
    OneAtATime,
}

/// One whole datagram of the last batch.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub from: SocketAddr,
    pub payload: &'a [u8],
}

/// Where one datagram of the batch lies in the buffers.
#[derive(Clone, Copy, Debug)]
struct Span {
    from: SocketAddr,
    start: usize,
    len: usize,
}

/// What the kernel said about one filled slot.
#[derive(Clone, Copy, Debug)]
struct Received {
    slot: usize,
    len: usize,
    /// The GRO segment size (0: one datagram).
    stride: usize,
    from: SocketAddr,
    truncated: bool,
}

/// Reusable receive buffers: `slots` buffers of `slot_size` bytes, and what the last
/// [`RecvBatch::recv`] put in them.
pub struct RecvBatch {
    storage: Vec<u8>,
    slot_size: usize,
    slots: usize,
    mode: BatchMode,
    gro: bool,
    datagrams: Vec<Span>,
    /// What the kernel said about each slot of the last call (kept for its capacity).
    slots_received: Vec<Received>,
    truncated: usize,
}

impl RecvBatch {
    /// `slots` is capped at [`MAX_BATCH`]; a datagram longer than `slot_size` is dropped and
    /// counted in [`RecvBatch::truncated`].
    pub fn new(slots: usize, slot_size: usize, mode: BatchMode) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        let slot_size = slot_size.max(1);
        RecvBatch {
            storage: vec![0u8; slots * slot_size],
            slot_size,
            slots,
            mode,
            gro: false,
            datagrams: Vec::with_capacity(slots),
            slots_received: Vec::with_capacity(slots),
            truncated: 0,
        }
    }

    /// Asks the kernel to coalesce back-to-back datagrams of one flow (UDP GRO) on `socket`,
    /// which this batch then splits. Only when batched and every slot holds [`GRO_SLOT_SIZE`]
    /// bytes (else a coalesced buffer could be cut). Returns whether GRO is on. The socket must
    /// be read only through GRO-aware batches afterwards.
    pub fn enable_gro(&mut self, socket: &UdpSocket) -> bool {
        if self.mode != BatchMode::Batched || self.slot_size < GRO_SLOT_SIZE {
            return false;
        }
        self.gro = sys::enable_gro(socket).is_ok();
        self.gro
    }

    pub fn mode(&self) -> BatchMode {
        self.mode
    }

    /// Waits until at least one datagram arrives, then takes as many as are queued (up to the
    /// slot count) in one system call. Afterwards [`RecvBatch::datagrams`] yields the whole
    /// ones in arrival order; datagrams that did not fit a slot are only counted.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<()> {
        self.datagrams.clear();
        self.truncated = 0;
        loop {
            socket.readable().await?;
            let received = socket.try_io(Interest::READABLE, || match self.mode {
                BatchMode::Batched => self.recv_batched(socket),
                BatchMode::OneAtATime => self.recv_one_at_a_time(socket),
            });
            match received {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if self.mode == BatchMode::Batched && sys::is_unsupported(&e) => {
                    tracing::debug!(err = %e, "recvmmsg unavailable; one datagram per system call");
                    self.mode = BatchMode::OneAtATime;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole datagrams of the last [`RecvBatch::recv`], in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        self.datagrams
            .iter()
            .map(|s| Datagram { from: s.from, payload: &self.storage[s.start..s.start + s.len] })
    }

    /// How many datagrams of the last batch were longer than a slot (dropped).
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Datagram `index` of the last batch (whole ones only, in arrival order).
    pub fn get(&self, index: usize) -> Option<Datagram<'_>> {
        let s = self.datagrams.get(index)?;
        Some(Datagram { from: s.from, payload: &self.storage[s.start..s.start + s.len] })
    }

    fn recv_batched(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let mut received = std::mem::take(&mut self.slots_received);
        let result =
            sys::recv_many(socket, &mut self.storage, self.slot_size, self.slots, self.gro, &mut received);
        for r in &received {
            self.take_slot(r);
        }
        self.slots_received = received;
        result
    }

    /// Splits one slot: a GRO buffer holds `len / stride` datagrams of `stride` bytes and maybe
    /// a shorter last one.
    fn take_slot(&mut self, r: &Received) {
        if r.truncated {
            self.truncated += 1;
            return;
        }
        let base = r.slot * self.slot_size;
        let stride = if r.stride == 0 { r.len.max(1) } else { r.stride };
        if r.len == 0 {
            self.datagrams.push(Span { from: r.from, start: base, len: 0 });
            return;
        }
        let mut offset = 0;
        while offset < r.len {
            let len = stride.min(r.len - offset);
            self.datagrams.push(Span { from: r.from, start: base + offset, len });
            offset += len;
        }
    }

    /// One `recvmsg` per datagram until the queue is empty or the slots are full (an empty
    /// queue before the first one is `WouldBlock`, which makes tokio wait for readiness).
    fn recv_one_at_a_time(&mut self, socket: &UdpSocket) -> io::Result<()> {
        for slot in 0..self.slots {
            let buf = &mut self.storage[slot * self.slot_size..(slot + 1) * self.slot_size];
            match recv_one(socket, buf) {
                Ok((len, from, truncated)) => {
                    self.take_slot(&Received { slot, len, stride: 0, from, truncated });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && slot > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One datagram at a time out of a [`RecvBatch`], for callers whose interface takes one per
/// call (the crate's `Conn::recv_from` on a relay socket): a call served from what the last
/// system call brought costs a copy, and only an exhausted batch makes another system call.
pub struct BatchCursor {
    batch: RecvBatch,
    next: usize,
    truncated_left: usize,
}

impl BatchCursor {
    pub fn new(batch: RecvBatch) -> Self {
        BatchCursor { batch, next: 0, truncated_left: 0 }
    }

    /// The next datagram copied into `buf`: `Some((length, source))`, or `None` for one that
    /// did not fit (a slot or `buf`), which the caller counts and drops, as with
    /// `recv_whole_datagram`.
    pub async fn recv_into(
        &mut self,
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<Option<(usize, SocketAddr)>> {
        loop {
            if self.truncated_left > 0 {
                self.truncated_left -= 1;
                return Ok(None);
            }
            if let Some(d) = self.batch.get(self.next) {
                self.next += 1;
                let Some(dest) = buf.get_mut(..d.payload.len()) else { return Ok(None) };
                dest.copy_from_slice(d.payload);
                return Ok(Some((d.payload.len(), d.from)));
            }
            self.batch.recv(socket).await?;
            self.next = 0;
            self.truncated_left = self.batch.truncated();
        }
    }
}

/// One `recvmsg` into `buf`: length, source, and whether the kernel cut it (`MSG_TRUNC`).
fn recv_one(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, bool)> {
    // SAFETY: `buf` is initialized memory; viewing it as `MaybeUninit<u8>` only lets `recvmsg`
    // write bytes into it, which keeps it initialized.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let mut slices = [socket2::MaybeUninitSlice::new(uninit)];
    let (n, flags, from) = socket2::SockRef::from(socket).recv_from_vectored(&mut slices)?;
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))?;
    Ok((n, from, flags.is_truncated()))
}

/// Sends datagrams, batching runs of equal-size ones to one destination into one GSO `sendmsg`
/// where the kernel supports it (it stops trying after the first refusal).
pub struct BatchSender {
    gso: AtomicBool,
}

impl BatchSender {
    pub fn new(mode: BatchMode) -> Self {
        BatchSender { gso: AtomicBool::new(mode == BatchMode::Batched && sys::GSO_BUILT_IN) }
    }

    /// Whether the next run will be tried with GSO.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// One datagram.
    pub async fn send_to(&self, socket: &UdpSocket, payload: &[u8], to: SocketAddr) -> io::Result<usize> {
        socket.send_to(payload, to).await
    }

    /// Sends `datagrams` to `to`, in order. Consecutive datagrams of one size (the last of a run
    /// may be shorter, as GSO allows) go out in one system call each run.
    pub async fn send_many(&self, socket: &UdpSocket, to: SocketAddr, datagrams: &[&[u8]]) -> io::Result<()> {
        let mut rest = datagrams;
        while !rest.is_empty() {
            let run = gso_run(rest);
            let (now, later) = rest.split_at(run);
            rest = later;
            if run > 1 && self.gso_enabled() {
                match self.send_segments(socket, to, now).await {
                    Ok(()) => continue,
                    Err(e) if sys::is_unsupported(&e) => {
                        tracing::debug!(err = %e, "UDP GSO unavailable; one datagram per system call");
                        self.gso.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            for payload in now {
                socket.send_to(payload, to).await?;
            }
        }
        Ok(())
    }

    async fn send_segments(&self, socket: &UdpSocket, to: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        loop {
            socket.writable().await?;
            match socket.try_io(Interest::WRITABLE, || sys::send_segments(socket, to, segments)) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// How many of the leading datagrams one GSO send can carry: equal sizes, the last maybe
/// shorter, within the kernel's segment and byte limits.
fn gso_run(datagrams: &[&[u8]]) -> usize {
    let Some(first) = datagrams.first() else { return 0 };
    let size = first.len();
    if size == 0 {
        return 1;
    }
    let mut bytes = 0;
    let mut run = 0;
    for d in datagrams.iter().take(MAX_GSO_SEGMENTS) {
        if d.len() > size || bytes + d.len() > MAX_GSO_BYTES {
            break;
        }
        bytes += d.len();
        run += 1;
        if d.len() < size {
            break;
        }
    }
    run.max(1)
}

#[cfg(target_os = "linux")]
mod sys {
    //! `recvmmsg`, `UDP_GRO` and `UDP_SEGMENT` (Linux 4.18+ for GSO, 5.0+ for GRO).

    use std::io;
    use std::mem::{self, MaybeUninit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use tokio::net::UdpSocket;

    use super::{Received, MAX_BATCH};

    pub const GSO_BUILT_IN: bool = true;

    /// Room for one `int` control message (the GRO segment size), aligned for `cmsghdr`.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Control([u8; 32]);

    /// Errors meaning "this kernel (or socket) cannot do that", as opposed to a network error.
    pub fn is_unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EINVAL | libc::EIO)
        )
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

    /// One non-blocking `recvmmsg` into `slots` slices of `storage`; replaces `out` with what
    /// the kernel said about each slot it filled (`WouldBlock` if none). Only the headers of the
    /// slots asked for are written: the arrays stay uninitialized past them, so a call that
    /// finds one datagram does not pay for clearing 64 headers.
    pub fn recv_many(
        socket: &UdpSocket,
        storage: &mut [u8],
        slot_size: usize,
        slots: usize,
        want_gro: bool,
        out: &mut Vec<Received>,
    ) -> io::Result<()> {
        out.clear();
        let slots = slots.min(MAX_BATCH).min(storage.len() / slot_size);
        let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; MAX_BATCH];
        let mut controls = [const { MaybeUninit::<Control>::uninit() }; MAX_BATCH];
        let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
        let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
        for (slot, chunk) in storage.chunks_exact_mut(slot_size).take(slots).enumerate() {
            let iov =
                iovecs[slot].write(libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: slot_size });
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
            // SAFETY: the kernel filled `msg_namelen` bytes of this slot's name.
            let Some(from) = (unsafe { decode_addr(names[slot].as_ptr(), hdr.msg_namelen) }) else {
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
        Ok(())
    }

    /// The `UDP_GRO` control message's segment size, 0 if none.
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

    unsafe fn decode_addr(name: *const libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let family = (*name).ss_family as libc::c_int;
        let len = len as usize;
        if family == libc::AF_INET && len >= mem::size_of::<libc::sockaddr_in>() {
            let a = &*(name as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        } else if family == libc::AF_INET6 && len >= mem::size_of::<libc::sockaddr_in6>() {
            let a = &*(name as *const libc::sockaddr_in6);
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        } else {
            None
        }
    }

    /// One `sendmsg` of `segments` (equal sizes, the last maybe shorter) with `UDP_SEGMENT`, so
    /// the kernel cuts it into one datagram per segment.
    pub fn send_segments(socket: &UdpSocket, to: SocketAddr, segments: &[&[u8]]) -> io::Result<()> {
        let segment_size = segments.first().map_or(0, |s| s.len());
        let total: usize = segments.iter().map(|s| s.len()).sum();
        let mut iovecs: Vec<libc::iovec> = segments
            .iter()
            .map(|s| libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() })
            .collect();
        let addr = socket2::SockAddr::from(to);
        let mut control = Control([0; 32]);
        // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr.len();
        hdr.msg_iov = iovecs.as_mut_ptr();
        hdr.msg_iovlen = iovecs.len() as _;
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
        // SAFETY: the header points at live buffers (the segments, the address, the control
        // message) for the duration of the call; the kernel only reads them.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &hdr, libc::MSG_DONTWAIT) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != total {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "GSO send cut short"));
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Elsewhere: no batched calls; every `recv_many` / `send_segments` says so and the callers
    //! go one datagram at a time.

    use std::io;
    use std::net::SocketAddr;

    use tokio::net::UdpSocket;

    use super::Received;

    pub const GSO_BUILT_IN: bool = false;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "batched UDP system calls are Linux-only")
    }

    pub fn is_unsupported(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::Unsupported
    }

    pub fn enable_gro(_socket: &UdpSocket) -> io::Result<()> {
        Err(unsupported())
    }

    pub fn recv_many(
        _socket: &UdpSocket,
        _storage: &mut [u8],
        _slot_size: usize,
        _slots: usize,
        _want_gro: bool,
        _out: &mut Vec<Received>,
    ) -> io::Result<()> {
        Err(unsupported())
    }

    pub fn send_segments(_socket: &UdpSocket, _to: SocketAddr, _segments: &[&[u8]]) -> io::Result<()> {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (rx, tx)
    }

    /// Datagram `i` of a test: its index in the first two bytes, then a filler pattern.
    fn numbered(i: usize, len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        d[..2].copy_from_slice(&(i as u16).to_be_bytes());
        d
    }

    /// Reads batches until `want` datagrams arrived (or 5 s passed); returns them and the
    /// largest batch seen.
    async fn collect(
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

    async fn many_datagrams_in_order(mode: BatchMode) -> usize {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        for i in 0..100 {
            tx.send_to(&numbered(i, 100 + i), to).await.unwrap();
        }
        let mut batch = RecvBatch::new(32, 2048, mode);
        let (got, largest, truncated) = collect(&mut batch, &rx, 100).await;
        assert_eq!(truncated, 0);
        assert_eq!(got.len(), 100);
        for (i, (from, payload)) in got.iter().enumerate() {
            assert_eq!(*from, tx.local_addr().unwrap());
            assert_eq!(payload, &numbered(i, 100 + i), "datagram {i} whole and in order");
        }
        largest
    }

    #[tokio::test]
    async fn a_batch_holds_many_datagrams_whole_and_in_order() {
        let largest = many_datagrams_in_order(BatchMode::Batched).await;
        // All 100 were queued before the first read: one call takes a full batch.
        assert_eq!(largest, 32);
    }

    #[tokio::test]
    async fn the_forced_fallback_reads_the_same_datagrams() {
        let largest = many_datagrams_in_order(BatchMode::OneAtATime).await;
        assert_eq!(largest, 32, "the fallback still fills a batch per wake-up");
    }

    async fn oversize_dropped(mode: BatchMode) {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        tx.send_to(&numbered(0, 500), to).await.unwrap();
        tx.send_to(&numbered(1, 1501), to).await.unwrap();
        tx.send_to(&numbered(2, 1500), to).await.unwrap();
        let mut batch = RecvBatch::new(8, 1500, mode);
        let (got, _, truncated) = collect(&mut batch, &rx, 3).await;
        assert_eq!(truncated, 1, "the 1501-byte datagram is counted, not handed on");
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, vec![numbered(0, 500), numbered(2, 1500)]);
    }

    #[tokio::test]
    async fn a_datagram_longer_than_its_slot_is_dropped_batched() {
        oversize_dropped(BatchMode::Batched).await;
    }

    #[tokio::test]
    async fn a_datagram_longer_than_its_slot_is_dropped_one_at_a_time() {
        oversize_dropped(BatchMode::OneAtATime).await;
    }

    #[tokio::test]
    async fn gro_buffers_are_split_into_the_datagrams_sent() {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let mut batch = RecvBatch::new(8, GRO_SLOT_SIZE, BatchMode::Batched);
        let gro = batch.enable_gro(&rx);
        let sender = BatchSender::new(BatchMode::Batched);
        // 10 of 1200 bytes and a shorter last one: on loopback a GSO send reaches a GRO socket
        // as one buffer (the kernel keeps it whole), which the batch must cut back into 11.
        let datagrams: Vec<Vec<u8>> =
            (0..11).map(|i| numbered(i, if i == 10 { 300 } else { 1200 })).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        sender.send_many(&tx, to, &refs).await.unwrap();
        let (got, largest, _) = collect(&mut batch, &rx, 11).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
        if cfg!(target_os = "linux") && gro && sender.gso_enabled() {
            assert_eq!(largest, 11, "one GSO send arrived as one coalesced buffer, split here");
        }
    }

    #[tokio::test]
    async fn without_gro_each_gso_segment_arrives_alone() {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let sender = BatchSender::new(BatchMode::Batched);
        let datagrams: Vec<Vec<u8>> = (0..64).map(|i| numbered(i, 1000)).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        sender.send_many(&tx, to, &refs).await.unwrap();
        let mut batch = RecvBatch::new(64, 1500, BatchMode::Batched);
        let (got, _, truncated) = collect(&mut batch, &rx, 64).await;
        assert_eq!(truncated, 0, "segments are 1000 bytes, not the 64000 sent in one call");
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
    }

    #[tokio::test]
    async fn the_sender_without_gso_sends_mixed_sizes_in_order() {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let sender = BatchSender::new(BatchMode::OneAtATime);
        assert!(!sender.gso_enabled());
        let sizes = [100, 100, 50, 1200, 1200, 1200, 20, 20];
        let datagrams: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| numbered(i, n)).collect();
        let refs: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
        sender.send_many(&tx, to, &refs).await.unwrap();
        let mut batch = RecvBatch::new(16, 2048, BatchMode::Batched);
        let (got, _, _) = collect(&mut batch, &rx, sizes.len()).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, datagrams);
    }

    #[tokio::test]
    async fn the_cursor_hands_datagrams_one_at_a_time_and_flags_oversize_ones() {
        let (rx, tx) = pair().await;
        let to = rx.local_addr().unwrap();
        let sizes = [200, 1600, 1500, 10, 1400];
        for (i, &n) in sizes.iter().enumerate() {
            tx.send_to(&numbered(i, n), to).await.unwrap();
        }
        let mut cursor = BatchCursor::new(RecvBatch::new(8, 1500, BatchMode::Batched));
        let mut buf = [0u8; 1450];
        let mut seen = Vec::new();
        for _ in 0..sizes.len() {
            let got = tokio::time::timeout(Duration::from_secs(5), cursor.recv_into(&rx, &mut buf))
                .await
                .expect("datagrams arrive")
                .unwrap();
            seen.push(got.map(|(n, from)| {
                assert_eq!(from, tx.local_addr().unwrap());
                buf[..n].to_vec()
            }));
        }
        // 1600 exceeds the slot and 1500 the caller's buffer: both reported as `None`. The
        // slot's are counted first (the kernel already dropped them), the rest in order.
        assert_eq!(seen.iter().filter(|d| d.is_none()).count(), 2);
        let whole: Vec<Vec<u8>> = seen.into_iter().flatten().collect();
        assert_eq!(whole, vec![numbered(0, 200), numbered(3, 10), numbered(4, 1400)]);
    }

    #[test]
    fn gso_runs_are_equal_sizes_with_a_shorter_last() {
        let d = |n: usize| vec![0u8; n];
        let (a, b, c) = (d(100), d(100), d(40));
        let (e, f) = (d(100), d(200));
        assert_eq!(gso_run(&[&a, &b, &c, &e]), 3, "a shorter one ends the run, included");
        assert_eq!(gso_run(&[&a, &f]), 1, "a longer one starts a new run");
        assert_eq!(gso_run(&[]), 0);
        let big = d(30_000);
        assert_eq!(gso_run(&[&big, &big, &big]), 2, "within the 64 KiB datagram limit");
        let many: Vec<&[u8]> = (0..100).map(|_| a.as_slice()).collect();
        assert_eq!(gso_run(&many), MAX_GSO_SEGMENTS);
    }
}
