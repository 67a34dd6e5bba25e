//! The relay's IPv6 side: whether `[turn] listen6` is set, its ports can be had, and which IPv6
//! address clients will be told (`turn:[v6]` URLs), or which name leads them there.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::addresses::{is_local, machine_addresses};
use super::ports::{bind_problem, Occupancy};
use super::report::Finding;
use crate::config::Settings;
use crate::turn::relay_ip::public_ipv6;

const CHECK: &str = "ipv6";

/// One finding for the IPv6 listener, or two when the public host name does not lead to it.
pub fn check(settings: &Settings, occupied: &Occupancy) -> Vec<Finding> {
    if !settings.turn.enabled {
        return Vec::new();
    }
    let Ok(config) = settings.turn_config() else { return Vec::new() }; // reported by "turn port"
    let Some(listen6) = config.listen6 else {
        let global = machine_addresses().into_iter().find(|ip| is_global_ipv6(*ip));
        let hint = match global {
            Some(ip) => format!(
                " although this machine has the IPv6 address {ip}: set [turn] listen6 = \"[::]:{}\" to serve IPv6-only clients",
                config.listen.port()
            ),
            None => String::new(),
        };
        return vec![Finding::ok(CHECK, format!("TURN listens on IPv4 only ([turn] listen6 not set){hint}"))];
    };
    if !listen6.ip().is_unspecified() && !is_local(listen6.ip()) {
        return vec![Finding::fail(
            CHECK,
            format!("[turn] listen6 {listen6}: {} is not an address of this machine; use [::] or one of its addresses", listen6.ip()),
        )];
    }
    if let Err(e) = bind_both(listen6) {
        return vec![if e.kind() == ErrorKind::AddrInUse && occupied.running_relaychat {
            Finding::warn(CHECK, format!("{listen6} is in use, presumably by the running relaychat"))
        } else {
            Finding::fail(CHECK, bind_problem("IPv6 TURN port", listen6, "[turn] listen6", &e))
        }];
    }
    let public_host = settings.turn.public_host.trim();
    let mut findings = vec![match public_ipv6(listen6.ip()) {
        Some(ip) => Finding::ok(
            CHECK,
            format!("IPv6 listener {listen6} (UDP and TCP) is free; clients handed an IPv4 address also get turn:[{ip}]:{} URLs", listen6.port()),
        ),
        None => Finding::warn(
            CHECK,
            format!("IPv6 listener {listen6} is free, but this machine has no IPv6 route: clients only find it through a public_host name with an AAAA record"),
        ),
    }];
    let is_name = !public_host.is_empty() && public_host.parse::<IpAddr>().is_err();
    if is_name {
        let has_aaaa = (public_host, 0).to_socket_addrs().is_ok_and(|mut found| found.any(|a| a.is_ipv6()));
        if !has_aaaa {
            findings.push(Finding::warn(
                CHECK,
                format!("{public_host} has no AAAA record: IPv6-only clients cannot reach the IPv6 listener by that name"),
            ));
        }
    }
    findings
}

/// Binds UDP and TCP on `addr` with the relay's options (IPv6 only, so an IPv4 listener on
/// the same port is no conflict) and lets them go.
fn bind_both(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    for kind in [Type::DGRAM, Type::STREAM] {
        let socket = Socket::new(Domain::IPV6, kind, None)?;
        socket.set_only_v6(true)?;
        socket.set_reuse_address(kind == Type::STREAM)?;
        socket.bind(&addr.into())?;
    }
    Ok(())
}

/// An IPv6 address the Internet can reach (global unicast, 2000::/3, not documentation).
fn is_global_ipv6(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0xdb8)
        }
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ipv6_is_2000_slash_3_without_documentation() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_global_ipv6(ip("2a01:4f8::1")));
        assert!(!is_global_ipv6(ip("2001:db8::1")));
        assert!(
            !is_global_ipv6(ip("fd00::1")) && !is_global_ipv6(ip("fe80::1")) && !is_global_ipv6(ip("::1"))
        );
        assert!(!is_global_ipv6(ip("203.0.113.1")));
    }
}
