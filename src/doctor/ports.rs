//! Can the server have its ports? The HTTP and TURN listeners are bound and released at once;
//! a port in use is asked over HTTP whether it is a running relaychat (which then is what the
//! operator wants to check, not a conflict). The relay port range is bound port by port.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

pub use super::healthz::{answers_healthz, answers_healthz_tls};

use super::report::Finding;
use crate::config::Settings;

/// What the port checks found, for the self-test.
#[derive(Debug, Clone, Default)]
pub struct Occupancy {
    pub findings: Vec<Finding>,
    /// The HTTP port is held by something answering `/healthz` like relaychat.
    pub running_relaychat: bool,
    /// The TURN port could not be bound (by that relaychat, or by something else).
    pub turn_in_use: bool,
}

/// Where a client on this machine reaches a listener bound to `bind`.
pub fn connect_addr(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port()),
        _ => bind,
    }
}

pub fn bind_problem(what: &str, addr: SocketAddr, key: &str, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::AddrInUse => format!(
            "{what} {addr} is in use by another program: stop it or change {key} (`ss -lnp 'sport = :{}'` shows which)",
            addr.port()
        ),
        ErrorKind::PermissionDenied => format!(
            "{what} {addr} needs privileges (ports below 1024): grant CAP_NET_BIND_SERVICE (the systemd unit in deploy/ does) or use a port of 1024 or more"
        ),
        ErrorKind::AddrNotAvailable => {
            format!("{what} {addr}: {} is not an address of this machine; fix {key}", addr.ip())
        }
        _ => format!("{what} {addr} cannot be bound: {e}"),
    }
}

/// The HTTP listener, TURN over UDP and TCP, and TURN over TLS when TLS is on.
pub fn check_listeners(settings: &Settings) -> Occupancy {
    let mut out = Occupancy::default();
    let Ok(host) = settings.server.host.parse::<IpAddr>() else {
        out.findings.push(Finding::fail("http port", "[server] host is not an IP address"));
        return out;
    };
    let http = SocketAddr::new(host, settings.server.port);
    match TcpListener::bind(http) {
        Ok(_) if http.port() == 0 => {
            out.findings.push(Finding::ok("http port", "port 0: a free port is picked at start (and logged)"))
        }
        Ok(_) => out.findings.push(Finding::ok("http port", format!("{http} (TCP) is free"))),
        Err(e) if e.kind() == ErrorKind::AddrInUse && answers_healthz(connect_addr(http)) => {
            out.running_relaychat = true;
            out.findings.push(Finding::warn(
                "http port",
                format!("{http} is in use by a running relaychat (it answers /healthz); the checks below look at it where they can"),
            ));
        }
        Err(e) => out
            .findings
            .push(Finding::fail("http port", bind_problem("HTTP port", http, "[server] port", &e))),
    }
    let turn = &settings.turn;
    if !turn.enabled {
        return out;
    }
    let config = match settings.turn_config() {
        Ok(config) => config,
        Err(e) => {
            out.findings.push(Finding::fail("turn port", e.to_string()));
            return out;
        }
    };
    let mut listeners = vec![("turn port", "TURN port", config.listen, "[turn] listen")];
    if settings.server.tls.is_enabled() {
        listeners.push(("turn tls port", "TURN-over-TLS port", config.tls_listen, "[turn] tls_listen"));
    }
    for (index, (check, what, addr, key)) in listeners.into_iter().enumerate() {
        let udp = if index == 0 { UdpSocket::bind(addr).map(drop) } else { Ok(()) };
        let result = udp.and_then(|_| TcpListener::bind(addr).map(drop));
        let transports = if index == 0 { "UDP and TCP" } else { "TCP" };
        match result {
            Ok(()) if addr.port() == 0 => {
                out.findings.push(Finding::ok(check, "port 0: a free port is picked at start"))
            }
            Ok(()) => out.findings.push(Finding::ok(check, format!("{addr} ({transports}) is free"))),
            Err(e) => {
                out.turn_in_use |= index == 0;
                if e.kind() == ErrorKind::AddrInUse && out.running_relaychat {
                    out.findings.push(Finding::warn(
                        check,
                        format!("{addr} is in use, presumably by the running relaychat"),
                    ));
                } else {
                    out.findings.push(Finding::fail(check, bind_problem(what, addr, key, &e)));
                }
            }
        }
    }
    out
}

/// `min_port..=max_port` on the relay address: how many ports can be bound, and whether that
/// is enough for `max_allocations_total` (one port per allocation).
pub fn check_relay_range(settings: &Settings, relay_ip: IpAddr) -> Finding {
    let check = "relay ports";
    let turn = &settings.turn;
    let size = usize::from(turn.max_port - turn.min_port) + 1;
    if relay_ip.is_unspecified() {
        return Finding::fail(check, "relay_ip is unspecified");
    }
    let mut taken = 0usize;
    let mut other_error = None;
    for port in turn.min_port..=turn.max_port {
        match UdpSocket::bind(SocketAddr::new(relay_ip, port)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => taken += 1,
            Err(e) => {
                other_error = Some(e);
                break;
            }
        }
    }
    let range = format!("{}-{} on {relay_ip}", turn.min_port, turn.max_port);
    if let Some(e) = other_error {
        return Finding::fail(
            check,
            format!("{range} cannot be bound: {e}; fix [turn] relay_ip / min_port / max_port"),
        );
    }
    let free = size - taken;
    let wanted = turn.max_allocations_total;
    if free == 0 {
        Finding::fail(
            check,
            format!("{range}: every port is in use, no allocation can be made; choose another range"),
        )
    } else if free < wanted {
        Finding::warn(
            check,
            format!("{range}: {free} free ports for up to {wanted} allocations ([turn] max_allocations_total); widen the range or lower the limit"),
        )
    } else if taken * 10 > size {
        Finding::warn(check, format!("{range}: {taken} of {size} ports are held by other programs; a range of its own avoids clashes"))
    } else {
        Finding::ok(check, format!("{range}: {free} of {size} ports free, enough for {wanted} allocations (open this UDP range in the firewall)"))
    }
}
