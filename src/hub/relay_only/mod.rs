//! The privacy boundary: under `force_relay`, everything one peer sends another is parsed and
//! rebuilt, never passed through.
//!
//! A participant's addresses can reach another participant in four places of the signaling it
//! relays, and each is rebuilt from validated fields:
//! - the candidate line (`candidate`): only `typ relay` through one of *our* relays survives, with
//!   `raddr 0.0.0.0 rport 0` and allow-listed extensions;
//! - the candidate object: exactly `candidate`, `sdpMid`, `sdpMLineIndex`, `usernameFragment`,
//!   typed and length-checked (done at the parsing edge, `protocol::IceCandidate`, and turned
//!   back into JSON by [`candidate_object`]);
//! - the description object: exactly `type` and `sdp` ([`description_object`]);
//! - the SDP, line by line (`sdp`).
//!
//! Pure functions: the hub calls them with the relay addresses it was given at start-up and a
//! tally it publishes as metrics. See `docs/PROTOCOL.md` ("What force_relay guarantees") for the
//! guarantee and its limits.

pub mod audit;
mod candidate;
mod ip_literal;
mod sdp;
mod tally;

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::protocol::{IceCandidate, SessionDescription};

pub use ip_literal::contains_ip_literal;
pub use sdp::UnusableSdp;
pub use tally::{DropReason, PrivacyTally, SanitizedField};

/// The addresses a relay candidate may carry: the relays this server hands out (the integrated
/// relay's relay and advertised addresses, the addresses of configured external TURN servers).
/// A `typ relay` candidate with any other address is a host address in disguise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayAddresses(Vec<IpAddr>);

impl RelayAddresses {
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut list: Vec<IpAddr> = Vec::new();
        for ip in addresses {
            let ip = ip.to_canonical();
            if !ip.is_unspecified() && !list.contains(&ip) {
                list.push(ip);
            }
        }
        Self(list)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpAddr> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rebuilds a candidate line for relaying under force_relay; `""` (end of candidates) passes.
/// `Err` carries the reason the candidate must be dropped (already counted).
pub fn candidate_line(
    line: &str,
    relays: &RelayAddresses,
    tally: &mut PrivacyTally,
) -> Result<String, DropReason> {
    if line.is_empty() {
        return Ok(String::new());
    }
    candidate::rebuild(line, relays, tally).inspect_err(|reason| tally.drop(*reason))
}

/// The candidate object a peer receives under force_relay: exactly the four keys of
/// `RTCIceCandidateInit` (checked at parsing), the candidate line rebuilt.
pub fn candidate_object(
    candidate: &IceCandidate,
    relays: &RelayAddresses,
    tally: &mut PrivacyTally,
) -> Result<Value, DropReason> {
    let line = candidate_line(&candidate.candidate, relays, tally)?;
    for _ in 0..candidate.discarded_keys {
        tally.sanitize(SanitizedField::ObjectKey);
    }
    let mut object = Map::new();
    object.insert("candidate".into(), Value::String(line));
    if let Some(mid) = &candidate.sdp_mid {
        // A token may be made of digits and dots: "10.0.0.1" is a valid-looking mid.
        if contains_ip_literal(mid) {
            tally.sanitize(SanitizedField::ObjectKey);
        } else {
            object.insert("sdpMid".into(), Value::String(mid.clone()));
        }
    }
    if let Some(index) = candidate.sdp_m_line_index {
        object.insert("sdpMLineIndex".into(), Value::from(index));
    }
    if let Some(ufrag) = &candidate.username_fragment {
        object.insert("usernameFragment".into(), Value::String(ufrag.clone()));
    }
    Ok(Value::Object(object))
}

/// The description object a peer receives under force_relay: exactly `type` and the rebuilt
/// `sdp` (see `sdp` for the rules).
pub fn description_object(
    description: &SessionDescription,
    relays: &RelayAddresses,
    tally: &mut PrivacyTally,
) -> Result<Value, UnusableSdp> {
    let sdp = sdp::rebuild(&description.sdp, relays, tally)?;
    for _ in 0..description.discarded_keys {
        tally.sanitize(SanitizedField::ObjectKey);
    }
    let mut object = Map::new();
    object.insert("type".into(), Value::String(description.kind.as_str().into()));
    object.insert("sdp".into(), Value::String(sdp));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod property_tests;
