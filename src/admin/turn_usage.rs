//! TURN allocations in the session listing: each session gains what its user holds on the
//! relay (transport, relayed address, age, bytes and packets each way) and the user's totals.
//!
//! Usage is reported here, per user, rather than as Prometheus labels: a label per user would
//! grow the metrics without bound and publish every name to whoever scrapes `/metrics`.

use serde_json::{json, Value};

use crate::turn::allocation::{AllocationSummary, Usage};

/// Adds `"turn": {"allocations": [...], "to_peers": {...}, "from_peers": {...}}` to every
/// session in a `sessions` reply. The client's own address (the allocation's 5-tuple source)
/// is shown only when the operator asked for addresses, like the session's address.
pub fn attach(reply: &mut Value, allocations: &[AllocationSummary], show_addresses: bool) {
    let Some(sessions) = reply.get_mut("sessions").and_then(Value::as_array_mut) else { return };
    for session in sessions {
        let Some(name) = session.get("name").and_then(Value::as_str).map(str::to_owned) else { continue };
        let held: Vec<&AllocationSummary> = allocations.iter().filter(|a| a.user == name).collect();
        let total = |pick: fn(&AllocationSummary) -> &Usage| Usage {
            bytes: held.iter().map(|a| pick(a).bytes).sum(),
            packets: held.iter().map(|a| pick(a).packets).sum(),
        };
        let listed: Vec<Value> = held
            .iter()
            .map(|a| {
                let mut entry = json!({
                    "transport": a.transport,
                    "relayed": a.relayed.to_string(),
                    "age_s": a.age_secs,
                    "to_peers": a.to_peers,
                    "from_peers": a.from_peers,
                    "permissions": a.permissions,
                    "channels": a.channels,
                });
                if show_addresses {
                    entry["client"] = json!(a.client.to_string());
                }
                entry
            })
            .collect();
        session["turn"] = json!({
            "allocations": listed,
            "to_peers": total(|a| &a.to_peers),
            "from_peers": total(|a| &a.from_peers),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::transport::Transport;

    fn allocation(user: &str, port: u16, to: (u64, u64), from: (u64, u64)) -> AllocationSummary {
        AllocationSummary {
            user: user.into(),
            transport: Transport::Udp,
            client: format!("192.0.2.7:{port}").parse().unwrap(),
            relayed: format!("198.51.100.1:{}", 50_000 + port).parse().unwrap(),
            age_secs: 12,
            to_peers: Usage { bytes: to.0, packets: to.1 },
            from_peers: Usage { bytes: from.0, packets: from.1 },
            permissions: 1,
            channels: 1,
        }
    }

    #[test]
    fn each_session_gets_its_users_allocations_and_totals() {
        let mut reply = json!({"sessions": [{"name": "alice"}, {"name": "bob"}], "not_logged_in": 0});
        let held = [
            allocation("alice", 1, (100, 2), (300, 3)),
            allocation("alice", 2, (10, 1), (0, 0)),
            allocation("carol", 3, (5, 5), (5, 5)),
        ];
        attach(&mut reply, &held, false);
        let alice = &reply["sessions"][0]["turn"];
        assert_eq!(alice["allocations"].as_array().unwrap().len(), 2);
        assert_eq!(alice["to_peers"], json!({"bytes": 110, "packets": 3}));
        assert_eq!(alice["from_peers"], json!({"bytes": 300, "packets": 3}));
        assert_eq!(alice["allocations"][0]["transport"], "udp");
        assert_eq!(alice["allocations"][0]["relayed"], "198.51.100.1:50001");
        assert!(alice["allocations"][0].get("client").is_none(), "no address unless asked: {reply}");
        let bob = &reply["sessions"][1]["turn"];
        assert_eq!(
            bob,
            &json!({"allocations": [], "to_peers": {"bytes": 0, "packets": 0},
            "from_peers": {"bytes": 0, "packets": 0}})
        );
    }

    #[test]
    fn client_addresses_only_when_asked() {
        let mut reply = json!({"sessions": [{"name": "alice"}]});
        attach(&mut reply, &[allocation("alice", 1, (0, 0), (0, 0))], true);
        assert_eq!(reply["sessions"][0]["turn"]["allocations"][0]["client"], "192.0.2.7:1");
    }
}
