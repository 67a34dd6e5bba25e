//! What a packet on a TURN listener is, from its first bytes (RFC 8656 section 12, RFC 7983).
//!
//! STUN messages start with the bits `00`, ChannelData with `01` (channel numbers
//! 0x4000..=0x4FFF); everything else is neither. The read loops, the TCP framing and the TCP send
//! queue all ask this one question, so it is answered here only.

/// A STUN Data indication (method Data, class indication): relayed media, like ChannelData.
const DATA_INDICATION: u16 = 0x0017;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    ChannelData,
    /// Not TURN at all (or empty).
    Other,
}

/// Classifies a packet by its first byte.
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first().map(|b| b >> 6) {
        Some(0b00) => PacketKind::Stun,
        Some(0b01) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// True for ChannelData and Data indications (relayed media), false for answers to requests.
pub fn is_relayed_data(packet: &[u8]) -> bool {
    match classify(packet) {
        PacketKind::ChannelData => true,
        PacketKind::Stun => {
            packet.len() >= 2 && u16::from_be_bytes([packet[0], packet[1]]) == DATA_INDICATION
        }
        PacketKind::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_two_bits_tell_stun_from_channel_data() {
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[0x40, 0x00]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x4f, 0xff]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80]), PacketKind::Other);
        assert_eq!(classify(&[0xff]), PacketKind::Other);
        assert_eq!(classify(&[]), PacketKind::Other);
    }

    #[test]
    fn relayed_data_is_told_from_answers() {
        assert!(is_relayed_data(&[0x40, 0x00, 0x00, 0x01, 9]));
        assert!(is_relayed_data(&[0x00, 0x17, 0x00, 0x00]));
        assert!(!is_relayed_data(&[0x01, 0x03, 0x00, 0x00]), "Allocate success");
        assert!(!is_relayed_data(&[0x01, 0x13, 0x00, 0x00]), "Allocate error");
        assert!(!is_relayed_data(&[0x00]));
        assert!(!is_relayed_data(&[]));
    }
}
