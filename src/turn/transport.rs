//! Which listener a client reached us on, and the client key allocations are found by.

use std::net::SocketAddr;

/// The listener a client reached us on (relayed transport is always UDP). Serialized in
/// lower case ("udp", "tcp", "tls") for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's transport address on one of our listeners (the 5-tuple, as far as we need it:
/// our listeners share one port, and the transport tells TCP from UDP).
pub type ClientKey = (Transport, SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_serialize_in_lower_case() {
        let names: Vec<String> = [Transport::Udp, Transport::Tcp, Transport::Tls]
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        assert_eq!(names, ["\"udp\"", "\"tcp\"", "\"tls\""]);
    }
}
