//! The integrated TURN relay (RFC 8656 over UDP, TCP and TLS; relayed transport UDP), with
//! its own allocation engine and data path (the `turn` crate is used for attribute codecs only).
//!
//! Module map (each file says what it owns; no module here imports one that imports it back,
//! see the test at the bottom):
//! - start and stop: `handle` (`start_relay`, `RelayHandle`), `error`, `secret`;
//! - listeners and their read loops: `sockets` (binding), `relay_ip` (which address to relay
//!   on), `shard` (a thread and runtime per UDP listener socket), `udp`, `datagram_batch` (many datagrams per system call: recvmmsg, GRO, GSO), `tcp`
//!   (streams, idle rules), `framing` (RFC 8656 TCP framing), `per_ip` (TCP
//!   connections per client IP), `packet` (STUN vs ChannelData), `transport` (which listener);
//! - one packet from a client: `link` (where a client's answers and relayed data go),
//!   `dispatch` (asks the gate, carries the decision out, relays ChannelData and Send),
//!   `table_view` (a UDP read loop's lock-free view of the allocations it relays between),
//!   `gate` (every admission rule, pure), `requests` (what an Allocate or Refresh asks for,
//!   pure), `reply` (the wire encoding of our answers);
//! - what clients hold: `allocations` (the table by 5-tuple, quotas), `allocation` (one
//!   allocation: relay sockets, grants, lifetime, usage), `quota` (per-user and total limits),
//!   `grants` (permissions and channels, capped, expiring; kept in an `inline_list`),
//!   `teardown` (expiry sweep, users leaving voice, shutdown);
//! - one datagram from a peer: `relay_loop` (a relay socket's read loop), `handoff` (a peer
//!   that is another of our relays, served in-process), `channel_data`
//!   (ChannelData and Data indications framed in place), `bandwidth` (the per-allocation cap);
//! - who may do what: `auth` (REST credential + live session), `credentials` (the REST
//!   convention), `nonce` (stateless nonces), `policy` (which peers), `relay_socket` (relayed
//!   addresses, bound in the port range, enforcing the policy on every datagram);
//! - `counters`: atomics for the metrics endpoint.
//!
//! docs/TURN.md, "Relay internals", follows one relayed packet and one Allocate through these.

pub mod allocation;
pub mod allocations;
pub mod auth;
pub mod bandwidth;
pub mod channel_data;
pub mod counters;
pub mod credentials;
pub mod datagram_batch;
pub mod dispatch;
pub mod error;
pub mod framing;
pub mod gate;
pub mod grants;
pub mod handle;
pub mod handoff;
pub mod inline_list;
pub mod link;
pub mod nonce;
pub mod packet;
pub mod per_ip;
pub mod policy;
pub mod quota;
pub mod relay_ip;
pub mod relay_loop;
pub mod relay_socket;
pub mod reply;
pub mod requests;
pub mod secret;
pub mod shard;
pub mod sockets;
pub mod table_view;
pub mod tcp;
pub mod teardown;
pub mod transport;
pub mod udp;

/// Who is in voice: kept beside the hub (which writes it), re-exported for the relay's users.
pub use crate::presence;

pub use counters::RelayCounters;
pub use error::RelayError;
pub use handle::{start_relay, RelayControl, RelayHandle};
pub use secret::{load_or_create_secret, SECRET_FILE};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// `turn::X` -> the `turn::Y` it imports, read from the sources.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/turn");
        let mut graph = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Only the module's own code (its tests may use anything), without comments.
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut uses = BTreeSet::new();
            for part in code.split("crate::turn::").skip(1) {
                let module: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !module.is_empty() && module != name {
                    uses.insert(module);
                }
            }
            // `use crate::turn::{a, b}` names several at once.
            for part in code.split("crate::turn::{").skip(1) {
                let list = part.split('}').next().unwrap_or("");
                for item in list.split(',') {
                    let module: String =
                        item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !module.is_empty() && module != name {
                        uses.insert(module);
                    }
                }
            }
            uses.retain(|m| m != "{");
            graph.insert(name, uses);
        }
        graph
    }

    #[test]
    fn no_module_of_the_relay_imports_one_that_imports_it_back() {
        let graph = imports();
        assert!(
            graph.contains_key("gate") && graph["dispatch"].contains("gate"),
            "the scan reads imports: {graph:?}"
        );
        // Depth-first search for a cycle, reporting its path.
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if done.contains(node) {
                return;
            }
            if let Some(at) = path.iter().position(|n| n == node) {
                panic!("module cycle in src/turn: {} -> {node}", path[at..].join(" -> "));
            }
            path.push(node.to_string());
            for next in graph.get(node).into_iter().flatten() {
                visit(next, graph, path, done);
            }
            path.pop();
            done.insert(node.to_string());
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            visit(node, &graph, &mut Vec::new(), &mut done);
        }
    }

    #[test]
    fn the_gate_does_no_io_and_reads_no_clock() {
        let gate = include_str!("gate.rs");
        let code = gate.split("#[cfg(test)]").next().unwrap_or("");
        for forbidden in
            ["tokio", "async", "SystemTime", "Instant", "unix_now", "std::net::UdpSocket", "Mutex"]
        {
            assert!(!code.contains(forbidden), "gate.rs mentions {forbidden}");
        }
    }
}
