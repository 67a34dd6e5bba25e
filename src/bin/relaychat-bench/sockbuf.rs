//! Socket creation with deliberately sized kernel buffers.
//!
//! Neither std nor tokio can set `SO_RCVBUF`/`SO_SNDBUF`, and `socket2`/`libc` are not direct
//! dependencies, so this file declares the two libc functions it needs (they are linked into every
//! Rust program on Linux anyway). As root it uses the `*FORCE` variants so the size is not silently
//! capped by `net.core.rmem_max`/`wmem_max`; it reads the granted size back so reports show the
//! truth. On other platforms the buffers are left at their defaults.

use std::net::SocketAddr;

/// Bind a nonblocking UDP socket on `addr` with `bytes` of receive and send buffer, returned as a
/// tokio socket (must be called inside a runtime).
pub fn bind_udp(addr: SocketAddr, bytes: usize) -> std::io::Result<tokio::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    if bytes > 0 {
        set_buffers(&sock, bytes);
    }
    tokio::net::UdpSocket::from_std(sock)
}

/// Granted (rcvbuf, sndbuf) in bytes as the kernel reports them (Linux doubles the request).
pub fn granted_buffers<S: AsFdNum>(sock: &S) -> (usize, usize) {
    sys::get(sock.fd_num())
}

/// Anything with a raw file descriptor.
pub trait AsFdNum {
    fn fd_num(&self) -> i32;
}

impl<T: std::os::fd::AsRawFd> AsFdNum for T {
    fn fd_num(&self) -> i32 {
        self.as_raw_fd()
    }
}

fn set_buffers<S: AsFdNum>(sock: &S, bytes: usize) {
    sys::set(sock.fd_num(), bytes);
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
))]
mod sys {
    use std::os::raw::{c_int, c_void};

    const SOL_SOCKET: c_int = 1;
    const SO_SNDBUF: c_int = 7;
    const SO_RCVBUF: c_int = 8;
    const SO_SNDBUFFORCE: c_int = 32;
    const SO_RCVBUFFORCE: c_int = 33;

    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
        fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut u32) -> c_int;
    }

    fn set_one(fd: c_int, force: c_int, plain: c_int, bytes: usize) {
        let v: c_int = bytes.min(c_int::MAX as usize) as c_int;
        let p = &v as *const c_int as *const c_void;
        let len = std::mem::size_of::<c_int>() as u32;
        // SAFETY: `fd` is an open socket owned by the caller; `p` points to a live c_int of `len`
        // bytes. The FORCE variant needs CAP_NET_ADMIN; without it we fall back to the capped one.
        unsafe {
            if setsockopt(fd, SOL_SOCKET, force, p, len) != 0 {
                setsockopt(fd, SOL_SOCKET, plain, p, len);
            }
        }
    }

    fn get_one(fd: c_int, name: c_int) -> usize {
        let mut v: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as u32;
        // SAFETY: `v` and `len` are live locals of the sizes the kernel expects.
        let rc = unsafe { getsockopt(fd, SOL_SOCKET, name, &mut v as *mut c_int as *mut c_void, &mut len) };
        if rc == 0 {
            v.max(0) as usize
        } else {
            0
        }
    }

    pub fn set(fd: c_int, bytes: usize) {
        set_one(fd, SO_RCVBUFFORCE, SO_RCVBUF, bytes);
        set_one(fd, SO_SNDBUFFORCE, SO_SNDBUF, bytes);
    }

    pub fn get(fd: c_int) -> (usize, usize) {
        (get_one(fd, SO_RCVBUF), get_one(fd, SO_SNDBUF))
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
mod sys {
    pub fn set(_fd: i32, _bytes: usize) {}
    pub fn get(_fd: i32) -> (usize, usize) {
        (0, 0)
    }
}
