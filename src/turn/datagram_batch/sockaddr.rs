//! Socket addresses as the batched system calls read and write them: `sockaddr_storage` the
//! kernel filled decoded into a [`SocketAddr`] (anything but IPv4/IPv6 is `None`, never a
//! panic). Encoding goes through `socket2::SockAddr`.
//!
//! The kernel fills only as many bytes of a name as the address needs (16 of the 128 for
//! IPv4), and the receive arrays are left uninitialized so a call pays for no clearing: so
//! decoding reads through a pointer, and only the bytes the kernel said it wrote.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The address in `name`, of which the kernel filled `len` bytes.
///
/// # Safety
/// `name` points at a live `sockaddr_storage` whose first `len` bytes are initialized (the rest
/// may not be; nothing past `len` is read).
pub unsafe fn decode(name: *const libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = (len as usize).min(mem::size_of::<libc::sockaddr_storage>());
    if len < mem::offset_of!(libc::sockaddr_storage, ss_family) + mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: `ss_family` lies within the first `len` bytes (checked above).
    let family = unsafe { std::ptr::addr_of!((*name).ss_family).read() } as libc::c_int;
    if family == libc::AF_INET && len >= mem::size_of::<libc::sockaddr_in>() {
        // SAFETY: the family says the storage holds a `sockaddr_in`, all of whose bytes are
        // within the initialized `len`; `sockaddr_storage` is aligned for every address type.
        let a = unsafe { name.cast::<libc::sockaddr_in>().read() };
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
    } else if family == libc::AF_INET6 && len >= mem::size_of::<libc::sockaddr_in6>() {
        // SAFETY: as above, for `sockaddr_in6`.
        let a = unsafe { name.cast::<libc::sockaddr_in6>().read() };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(addr: SocketAddr) -> Option<SocketAddr> {
        let encoded = socket2::SockAddr::from(addr);
        // SAFETY: `sockaddr_storage` is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = encoded.len();
        // SAFETY: `encoded` holds `len` bytes, at most the size of `sockaddr_storage`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                encoded.as_ptr() as *const u8,
                &mut storage as *mut libc::sockaddr_storage as *mut u8,
                len as usize,
            )
        };
        // SAFETY: `storage` is all initialized.
        unsafe { decode(&storage, len) }
    }

    /// Only the bytes the kernel filled are read: a name whose tail past them is uninitialized
    /// decodes the same (under Miri, reading the tail would be reported).
    #[test]
    fn only_the_filled_bytes_are_read() {
        for addr in ["198.51.100.7:5004", "[2001:db8::7]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let encoded = socket2::SockAddr::from(addr);
            let mut name = mem::MaybeUninit::<libc::sockaddr_storage>::uninit();
            // SAFETY: `encoded` holds `len` bytes, at most the size of `sockaddr_storage`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    encoded.as_ptr() as *const u8,
                    name.as_mut_ptr() as *mut u8,
                    encoded.len() as usize,
                )
            };
            // SAFETY: the first `encoded.len()` bytes were written above.
            assert_eq!(unsafe { decode(name.as_ptr(), encoded.len()) }, Some(addr));
            // SAFETY: `len` 0 and 1 read nothing (shorter than the family).
            assert_eq!(unsafe { decode(name.as_ptr(), 1) }, None);
        }
    }

    #[test]
    fn both_families_decode_to_what_was_encoded() {
        for addr in ["198.51.100.7:5004", "[2001:db8::7]:65535", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(round_trip(addr), Some(addr));
        }
    }

    #[test]
    fn a_short_or_foreign_address_is_none() {
        // SAFETY: as above.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let full = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY (each call): `storage` is all initialized.
        assert_eq!(unsafe { decode(&storage, full) }, None, "AF_UNSPEC");
        storage.ss_family = libc::AF_INET as _;
        assert_eq!(unsafe { decode(&storage, 4) }, None, "shorter than a sockaddr_in");
        storage.ss_family = libc::AF_UNIX as _;
        assert_eq!(unsafe { decode(&storage, full) }, None);
    }
}
