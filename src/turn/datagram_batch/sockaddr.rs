//! Socket addresses as the batched system calls read and write them: `sockaddr_storage` the
//! kernel filled decoded into a [`SocketAddr`] (anything but IPv4/IPv6 is `None`, never a
//! panic). Encoding goes through `socket2::SockAddr`.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The address in `name`, of which the kernel filled `len` bytes.
pub fn decode(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let family = name.ss_family as libc::c_int;
    let len = len as usize;
    let name: *const libc::sockaddr_storage = name;
    if family == libc::AF_INET && len >= mem::size_of::<libc::sockaddr_in>() {
        // SAFETY: the family says the storage holds a `sockaddr_in`, and `sockaddr_storage` is
        // large enough and aligned for every address type.
        let a = unsafe { &*(name as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
    } else if family == libc::AF_INET6 && len >= mem::size_of::<libc::sockaddr_in6>() {
        // SAFETY: as above, for `sockaddr_in6`.
        let a = unsafe { &*(name as *const libc::sockaddr_in6) };
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
        decode(&storage, len)
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
        assert_eq!(decode(&storage, mem::size_of::<libc::sockaddr_storage>() as _), None, "AF_UNSPEC");
        storage.ss_family = libc::AF_INET as _;
        assert_eq!(decode(&storage, 4), None, "shorter than a sockaddr_in");
        storage.ss_family = libc::AF_UNIX as _;
        assert_eq!(decode(&storage, mem::size_of::<libc::sockaddr_storage>() as _), None);
    }
}
