//! `relaychat doctor`: checks a configuration from the server's side and says, one line per
//! check, what is fine (`ok`), doubtful (`warn`) or broken (`FAIL`, with what to do).
//!
//! The checks run in the order an operator fixes things: where the relay says it is, whether the
//! ports can be had, the relay port range, TLS files, the clock, relay-only without a relay, and
//! last a self-test that starts the integrated relay and makes real allocations through the
//! advertised address. Any FAIL makes the exit status nonzero, so the command can gate a deploy.
//!
//! - `report`: the three levels and how a line is printed;
//! - `addresses`: this machine's addresses, and whether the advertised relay address is one;
//! - `ports`: HTTP/TURN ports bindable, or held by a running relaychat; the relay port range;
//! - `certificate`: TLS files readable, fitting together, in date, naming the public host;
//! - `healthz`: asks a running server's /healthz (also `relaychat healthcheck`);
//! - `ipv6`: the IPv6 TURN listener (`[turn] listen6`) and the address clients are told for it;
//! - `clock`: the system clock against this binary's age and the monotonic clock;
//! - `selftest`: the in-process relay, two allocations and a packet between them;
//! - `turn_tls`: TURN over TLS answers a Binding request through a TLS handshake.

pub mod addresses;
pub mod certificate;
pub mod clock;
pub mod healthz;
pub mod ipv6;
pub mod ports;
pub mod report;
pub mod selftest;
pub mod turn_tls;

use crate::config::Settings;
pub use report::{Finding, Level};

/// Runs every check, prints one line per finding on stdout, and returns the findings.
pub fn run(settings: &Settings) -> anyhow::Result<Vec<Finding>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut findings = Vec::new();
    let mut emit = |batch: Vec<Finding>| {
        for finding in batch {
            println!("{finding}");
            findings.push(finding);
        }
    };
    let relay = addresses::RelayAddresses::resolve(settings);
    emit(addresses::check(settings, &relay));
    let occupied = ports::check_listeners(settings);
    emit(occupied.findings.clone());
    emit(ipv6::check(settings, &occupied));
    if let Some(relay) = &relay {
        emit(vec![ports::check_relay_range(settings, relay.relay_ip)]);
    }
    emit(certificate::check(settings));
    emit(vec![clock::check()]);
    emit(vec![check_force_relay(settings)]);
    emit(runtime.block_on(selftest::run(settings, relay.as_ref(), &occupied)));
    Ok(findings)
}

/// Relay-only calls need a relay: with `force_relay` on and no TURN server at all, every
/// candidate is dropped and no call can ever connect.
pub fn check_force_relay(settings: &Settings) -> Finding {
    let turn = &settings.turn;
    let check = "force_relay";
    match (settings.webrtc.force_relay, turn.enabled, turn.external_servers.is_empty()) {
        (false, _, _) => Finding::warn(
            check,
            "off: participants may connect directly and learn each other's IP addresses; set [webrtc] force_relay = true for private calls",
        ),
        (true, true, _) => Finding::ok(check, "on, relayed by the integrated TURN relay"),
        (true, false, false) => Finding::ok(
            check,
            format!("on, relayed by {} external TURN server(s)", turn.external_servers.len()),
        ),
        (true, false, true) => Finding::fail(
            check,
            "on, but [turn] enabled = false and no [[turn.external_servers]]: no call can connect; enable the integrated relay or configure an external TURN server",
        ),
    }
}
