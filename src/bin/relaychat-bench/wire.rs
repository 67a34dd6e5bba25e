//! TURN wire format for the load generator: STUN requests built and parsed with the `stun`
//! crate (TURN-only attributes are tiny `Setter`s here, so the client shares no code with the
//! `turn` crate it measures), and ChannelData framed by hand (RFC 8656 section 12.4).

use std::net::SocketAddr;

use stun::agent::TransactionId;
use stun::attributes::{
    AttrType, ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageClass, MessageType, Method, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_DATA,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

/// Long-term credential state of one client: what every authenticated request carries.
#[derive(Clone)]
pub struct Auth {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    key: MessageIntegrity,
}

impl Auth {
    pub fn new(username: &str, password: &str, realm: &str, nonce: &str) -> Self {
        Auth {
            username: username.to_string(),
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            key: MessageIntegrity::new_long_term_integrity(
                username.to_string(),
                realm.to_string(),
                password.to_string(),
            ),
        }
    }
}

/// One attribute to put in a request.
#[derive(Clone, Copy, Debug)]
pub enum Attr {
    /// REQUESTED-TRANSPORT = UDP.
    RequestedTransportUdp,
    /// LIFETIME in seconds (0 frees the allocation).
    Lifetime(u32),
    /// CHANNEL-NUMBER (0x4000..=0x7FFF).
    ChannelNumber(u16),
    /// XOR-PEER-ADDRESS.
    XorPeer(SocketAddr),
}

impl Setter for Attr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        match self {
            Attr::RequestedTransportUdp => m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            Attr::Lifetime(secs) => m.add(ATTR_LIFETIME, &secs.to_be_bytes()),
            Attr::ChannelNumber(ch) => {
                let [a, b] = ch.to_be_bytes();
                m.add(ATTR_CHANNEL_NUMBER, &[a, b, 0, 0])
            }
            Attr::XorPeer(addr) => {
                return XorMappedAddress { ip: addr.ip(), port: addr.port() }
                    .add_to_as(m, ATTR_XOR_PEER_ADDRESS)
            }
        }
        Ok(())
    }
}

/// Build a request of `method` with `attrs`, signed with `auth` when given.
/// Returns the transaction id (to match the response) and the encoded bytes.
pub fn build_request(
    method: Method,
    attrs: Vec<Attr>,
    auth: Option<&Auth>,
) -> anyhow::Result<(TransactionId, Vec<u8>)> {
    let mut setters: Vec<Box<dyn Setter>> =
        vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
    for a in attrs {
        setters.push(Box::new(a));
    }
    if let Some(auth) = auth {
        setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, auth.username.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, auth.realm.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, auth.nonce.clone())));
        setters.push(Box::new(auth.key.clone()));
    }
    let mut m = Message::new();
    m.build(&setters).map_err(|e| anyhow::anyhow!("building STUN request: {e}"))?;
    Ok((m.transaction_id, m.raw))
}

/// What a STUN response said, reduced to what the bench needs.
pub struct Response {
    pub transaction_id: TransactionId,
    pub method: Method,
    pub class: MessageClass,
    msg: Message,
}

impl Response {
    pub fn is_success(&self) -> bool {
        self.class == CLASS_SUCCESS_RESPONSE
    }

    pub fn is_error(&self) -> bool {
        self.class == CLASS_ERROR_RESPONSE
    }

    /// ERROR-CODE number (e.g. 401, 438), if present.
    pub fn error_code(&self) -> Option<u16> {
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&self.msg).ok().map(|_| e.code.0)
    }

    /// ERROR-CODE reason phrase, if present.
    pub fn error_reason(&self) -> Option<String> {
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&self.msg).ok()?;
        Some(String::from_utf8_lossy(&e.reason).into_owned())
    }

    pub fn text(&self, attr: AttrType) -> Option<String> {
        TextAttribute::get_from_as(&self.msg, attr).ok().map(|t| t.text)
    }

    pub fn realm(&self) -> Option<String> {
        self.text(ATTR_REALM)
    }

    pub fn nonce(&self) -> Option<String> {
        self.text(ATTR_NONCE)
    }

    pub fn relayed_address(&self) -> Option<SocketAddr> {
        let mut a = XorMappedAddress::default();
        a.get_from_as(&self.msg, ATTR_XOR_RELAYED_ADDRESS).ok()?;
        Some(SocketAddr::new(a.ip, a.port))
    }

    pub fn lifetime(&self) -> Option<u32> {
        let v = self.msg.get(ATTR_LIFETIME).ok()?;
        let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }
}

/// Parse a datagram as a STUN message (None if it is not one).
pub fn parse_stun(buf: &[u8]) -> Option<Response> {
    if !stun::message::is_message(buf) {
        return None;
    }
    let mut msg = Message::new();
    msg.unmarshal_binary(buf).ok()?;
    Some(Response { transaction_id: msg.transaction_id, method: msg.typ.method, class: msg.typ.class, msg })
}

/// The DATA of a Data indication (what a server sends when no channel is bound).
pub fn data_indication_payload(buf: &[u8]) -> Option<Vec<u8>> {
    let r = parse_stun(buf)?;
    if r.method != METHOD_DATA || r.class != CLASS_INDICATION {
        return None;
    }
    r.msg.get(ATTR_DATA).ok()
}

/// ChannelData header: channel number, then payload length (both big-endian).
pub fn channel_data_header(channel: u16, payload_len: usize) -> [u8; 4] {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = (payload_len as u16).to_be_bytes();
    [c0, c1, l0, l1]
}

/// Split a ChannelData message into channel number and payload.
/// Over UDP the datagram may carry padding past the declared length; it is ignored.
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 || !(0x40..=0x7F).contains(&buf[0]) {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    buf.get(4..4 + len).map(|p| (channel, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::METHOD_ALLOCATE;

    #[test]
    fn channel_data_round_trips() {
        let mut pkt = channel_data_header(0x4001, 3).to_vec();
        pkt.extend_from_slice(b"abc");
        pkt.push(0); // UDP padding is tolerated
        assert_eq!(parse_channel_data(&pkt), Some((0x4001, &b"abc"[..])));
        assert_eq!(parse_channel_data(&[0x00, 0x01, 0, 0]), None);
    }

    #[test]
    fn signed_request_parses_back() {
        let auth = Auth::new("1:alice", "pw", "realm", "nonce");
        let (tid, bytes) = build_request(
            METHOD_ALLOCATE,
            vec![Attr::RequestedTransportUdp, Attr::Lifetime(600)],
            Some(&auth),
        )
        .unwrap();
        let r = parse_stun(&bytes).unwrap();
        assert_eq!(r.transaction_id, tid);
        assert_eq!(r.method, METHOD_ALLOCATE);
        assert_eq!(r.realm().as_deref(), Some("realm"));
        assert_eq!(r.lifetime(), Some(600));
    }
}
