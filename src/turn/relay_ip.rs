//! Which address relay sockets bind to: configured, the listen IP, or detected.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// `relay_ip`, else the listen IP, else the address of the interface holding the default route.
pub fn resolve_relay_ip(configured: Option<IpAddr>, listen_ip: IpAddr) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !listen_ip.is_unspecified() {
        return listen_ip;
    }
    match detect_primary_ip(listen_ip.is_ipv6()) {
        Ok(ip) => ip,
        // No route at all (an offline machine): still start, so `cargo run` works anywhere, but
        // say loudly that only local clients can use such a relay.
        Err(e) => {
            tracing::warn!(
                "cannot find this machine's primary address ({e}); relaying on 127.0.0.1, which only \
                 local clients can reach: set [turn] relay_ip (and external_ip behind NAT)"
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

/// The source address the kernel would use towards the Internet (IPv6 first when asked, then
/// IPv4). Connecting a UDP socket sends nothing; it only asks the kernel which source address a
/// packet to that (documentation-only, TEST-NET / 2001:db8::) destination would use. The doctor
/// uses the same probe to predict what the relay will pick.
pub fn detect_primary_ip(prefer_ipv6: bool) -> io::Result<IpAddr> {
    let probe = |bind: SocketAddr, to: SocketAddr| -> io::Result<IpAddr> {
        let socket = UdpSocket::bind(bind)?;
        socket.connect(to)?;
        Ok(socket.local_addr()?.ip())
    };
    let v4 = || probe((Ipv4Addr::UNSPECIFIED, 0).into(), (Ipv4Addr::new(192, 0, 2, 1), 9).into());
    let v6 = || {
        probe((Ipv6Addr::UNSPECIFIED, 0).into(), (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into())
    };
    if prefer_ipv6 {
        v6().or_else(|_| v4())
    } else {
        v4()
    }
}

/// The IPv6 address clients are told for the IPv6 listener (`turn:[v6]` URLs): the listener's
/// own when it names one, else the machine's IPv6 source address towards the Internet; `None`
/// on a host without an IPv6 route.
pub fn public_ipv6(listen6_ip: IpAddr) -> Option<Ipv6Addr> {
    match listen6_ip {
        IpAddr::V6(named) if !named.is_unspecified() => Some(named),
        _ => match detect_primary_ip(true).ok()? {
            IpAddr::V6(detected) if !detected.is_loopback() => Some(detected),
            _ => None, // the probe fell back to IPv4: no IPv6 route
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ip_is_configured_or_the_listen_ip_or_detected() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(resolve_relay_ip(Some(ip("192.0.2.7")), ip("0.0.0.0")), ip("192.0.2.7"));
        assert_eq!(resolve_relay_ip(None, ip("127.0.0.1")), ip("127.0.0.1"));
        // Detection names one concrete address (or loopback on a machine without a route).
        assert!(!resolve_relay_ip(None, ip("0.0.0.0")).is_unspecified());
    }

    #[test]
    fn the_ipv6_listeners_address_is_named_or_detected() {
        assert_eq!(public_ipv6("::1".parse().unwrap()), Some(Ipv6Addr::LOCALHOST));
        assert_eq!(public_ipv6("2001:db8::5".parse().unwrap()), Some("2001:db8::5".parse().unwrap()));
        // Detected: an IPv6 address that is not loopback, or none (this machine may have no route).
        let detected = public_ipv6(Ipv6Addr::UNSPECIFIED.into());
        assert!(detected.is_none_or(|ip| !ip.is_loopback() && !ip.is_unspecified()), "{detected:?}");
    }
}
