//! TURN over TCP framing (RFC 8656 section 11): where one message ends in a byte stream.
//!
//! STUN messages are delimited by their length field (20-byte header + length); ChannelData by
//! its length field, padded to a multiple of 4 bytes over TCP (and only over TCP).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::turn::packet::{classify, PacketKind};

/// Largest frame [`read_frame`] returns: a STUN header plus the largest length field.
pub const MAX_FRAME: usize = 20 + 65_535;

/// Reads one STUN message or ChannelData frame (padding stripped). `Ok(None)` at a clean EOF.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    match reader.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    reader.read_exact(&mut head[1..]).await?;
    let length = u16::from_be_bytes([head[2], head[3]]) as usize;
    let (total, keep) = match classify(&head) {
        PacketKind::Stun => (20 + length, 20 + length),
        PacketKind::ChannelData => (4 + length.div_ceil(4) * 4, 4 + length),
        PacketKind::Other => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "neither STUN nor ChannelData"))
        }
    };
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&head);
    reader.read_exact(&mut frame[4..]).await?;
    frame.truncate(keep);
    Ok(Some(frame))
}

/// Pads a ChannelData frame to a multiple of 4 bytes (STUN messages always are).
pub fn frame_for_tcp(packet: &[u8]) -> Vec<u8> {
    let mut frame = packet.to_vec();
    if classify(packet) == PacketKind::ChannelData {
        frame.resize(packet.len().div_ceil(4) * 4, 0);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_split_by_their_length_fields() {
        // A STUN header with 4 bytes of attributes, then ChannelData of 5 bytes padded to 8.
        let mut bytes = vec![0x00, 0x01, 0x00, 0x04];
        bytes.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        bytes.extend_from_slice(&[7u8; 12]);
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 9, 9, 9, 9, 9, 0, 0, 0]);
        let mut reader = &bytes[..];
        let stun = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(stun.len(), 24);
        let data = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(data, vec![0x40, 0x00, 0x00, 0x05, 9, 9, 9, 9, 9]);
        assert!(read_frame(&mut reader).await.unwrap().is_none());
        let mut garbage: &[u8] = &[0xff, 0, 0, 0];
        assert!(read_frame(&mut garbage).await.is_err());
        assert_eq!(frame_for_tcp(&[0x40, 0, 0, 1, 5]).len(), 8);
        assert_eq!(frame_for_tcp(&[0x00, 1, 0, 0]).len(), 4);
    }
}
