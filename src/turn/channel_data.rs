//! The data path's wire formats (RFC 8656 sections 11.4 and 12.4): ChannelData, and the Data
//! indication a peer's datagram becomes when no channel is bound to it.
//!
//! Both are written *in place*: the relay read loop receives a peer's datagram at
//! [`HEADROOM`] in its buffer and the header goes in front of it, so no datagram is copied.
//! Pure, and without allocation.

use std::net::{IpAddr, SocketAddr};

/// Room kept in front of a received payload: the largest Data indication header (STUN header,
/// XOR-PEER-ADDRESS of an IPv6 peer, DATA attribute header).
pub const HEADROOM: usize = 20 + (4 + 20) + 4;
/// Room kept after it: the padding of the DATA attribute.
pub const TAILROOM: usize = 3;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const DATA_INDICATION: u16 = 0x0017;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;

/// The channel number and payload of a ChannelData message (padding ignored); `None` if the
/// length field claims more than arrived.
pub fn parse_channel_data(packet: &[u8]) -> Option<(u16, &[u8])> {
    let head = packet.get(..4)?;
    let number = u16::from_be_bytes([head[0], head[1]]);
    let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
    Some((number, packet.get(4..4 + length)?))
}

/// Writes a ChannelData header in front of the payload at `buf[HEADROOM..HEADROOM + len]`;
/// returns the whole message's range start (it ends where the payload ends).
pub fn channel_data_in_place(buf: &mut [u8], len: usize, number: u16) -> usize {
    let start = HEADROOM - 4;
    buf[start..start + 2].copy_from_slice(&number.to_be_bytes());
    buf[start + 2..HEADROOM].copy_from_slice(&(len as u16).to_be_bytes());
    start
}

/// Wraps the payload at `buf[HEADROOM..HEADROOM + len]` in a Data indication from `peer`;
/// returns the message's range in `buf` (`buf` must hold `HEADROOM + len + TAILROOM`).
pub fn data_indication_in_place(
    buf: &mut [u8],
    len: usize,
    peer: SocketAddr,
    transaction_id: [u8; 12],
) -> std::ops::Range<usize> {
    let address_len = if peer.is_ipv4() { 8 } else { 20 };
    let padding = (4 - len % 4) % 4;
    let start = HEADROOM - (20 + 4 + address_len + 4);
    let body = 4 + address_len + 4 + len + padding;
    let mut at = start;
    let mut put = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&DATA_INDICATION.to_be_bytes());
    put(&(body as u16).to_be_bytes());
    put(&MAGIC_COOKIE.to_be_bytes());
    put(&transaction_id);
    put(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    put(&(address_len as u16).to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match peer.ip() {
        IpAddr::V4(ip) => {
            put(&[0, 0x01]);
            put(&(peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
            let mut x = ip.octets();
            x.iter_mut().zip(cookie).for_each(|(b, c)| *b ^= c);
            put(&x);
        }
        IpAddr::V6(ip) => {
            put(&[0, 0x02]);
            put(&(peer.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
            let mut x = ip.octets();
            let key = cookie.iter().chain(transaction_id.iter());
            x.iter_mut().zip(key).for_each(|(b, c)| *b ^= c);
            put(&x);
        }
    }
    put(&ATTR_DATA.to_be_bytes());
    put(&(len as u16).to_be_bytes());
    debug_assert_eq!(at, HEADROOM);
    let end = HEADROOM + len + padding;
    buf[HEADROOM + len..end].fill(0);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::{Getter, Message};
    use turn::proto::data::Data;
    use turn::proto::peeraddr::PeerAddress;

    fn with_payload(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xee; HEADROOM + payload.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        buf
    }

    #[test]
    fn channel_data_round_trips_and_short_messages_are_refused() {
        let mut buf = with_payload(b"hello");
        let start = channel_data_in_place(&mut buf, 5, 0x4001);
        let message = &buf[start..HEADROOM + 5];
        assert_eq!(parse_channel_data(message), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&message[..8]), None, "length says 5, 4 arrived");
        assert_eq!(parse_channel_data(&[0x40, 0]), None);
        // Padding after the payload (TCP) is not part of it.
        assert_eq!(parse_channel_data(&[0x40, 0, 0, 1, 7, 0, 0, 0]), Some((0x4000, &[7u8][..])));
    }

    #[test]
    fn data_indications_decode_with_the_stun_crate_for_both_families() {
        for peer in ["198.51.100.7:5004", "[2001:db8::7]:5004"] {
            let peer: SocketAddr = peer.parse().unwrap();
            for payload in [&b"odd"[..], &b"four"[..], &[][..]] {
                let mut buf = with_payload(payload);
                let range = data_indication_in_place(&mut buf, payload.len(), peer, [9; 12]);
                let mut m = Message { raw: buf[range].to_vec(), ..Default::default() };
                m.decode().unwrap();
                assert_eq!(m.typ.value(), DATA_INDICATION);
                assert_eq!(m.transaction_id.0, [9; 12]);
                let mut data = Data::default();
                data.get_from(&m).unwrap();
                assert_eq!(data.0, payload);
                let mut from = PeerAddress::default();
                from.get_from(&m).unwrap();
                assert_eq!(SocketAddr::new(from.ip, from.port), peer);
            }
        }
    }
}
