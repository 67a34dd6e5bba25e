//! The allocation engine's pure parts on arbitrary input: what an Allocate/Refresh asks for
//! (lifetimes always within 600..=3600 s or 0 for a Refresh), ChannelData parsing (the payload
//! lies within the packet), in-place Data indications (decode back to the same peer and
//! payload), and a random sequence of permission/channel operations on one allocation's
//! grants (never beyond the caps, the channel maps agree both ways). Never a panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use relaychat::turn::channel_data::{data_indication_in_place, parse_channel_data, HEADROOM, TAILROOM};
use relaychat::turn::grants::{GrantCaps, Grants};
use relaychat::turn::relay_loop::MAX_RELAYED_DATAGRAM;
use relaychat::turn::requests::{allocate_request, refresh_request, DEFAULT_LIFETIME, MAX_LIFETIME};
use stun::message::{Getter, Message};
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;

const CAPS: GrantCaps = GrantCaps { permissions: 4, channels: 3 };

fn peer(byte: u8) -> SocketAddr {
    let ip = if byte & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, byte & 0x07))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(byte & 0x07)))
    };
    SocketAddr::new(ip, 5000 + u16::from((byte >> 3) & 0x03))
}

fuzz_target!(|data: &[u8]| {
    if let Some((number, payload)) = parse_channel_data(data) {
        assert_eq!(number, u16::from_be_bytes([data[0], data[1]]));
        assert!(4 + payload.len() <= data.len());
    }

    let mut m = Message { raw: data.to_vec(), ..Default::default() };
    if m.decode().is_ok() {
        let allowed = DEFAULT_LIFETIME..=MAX_LIFETIME;
        if let Ok(request) = allocate_request(&m, data.len() % 2 == 0) {
            assert!(allowed.contains(&request.lifetime));
        }
        if let Ok(request) = refresh_request(&m) {
            assert!(request.lifetime == Duration::ZERO || allowed.contains(&request.lifetime));
        }
    }

    if let Some((&first, rest)) = data.split_first() {
        let payload = &rest[..rest.len().min(MAX_RELAYED_DATAGRAM)];
        let from = peer(first);
        let mut buf = vec![0u8; HEADROOM + MAX_RELAYED_DATAGRAM + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let range = data_indication_in_place(&mut buf, payload.len(), from, [first; 12]);
        let mut indication = Message { raw: buf[range].to_vec(), ..Default::default() };
        indication.decode().expect("our Data indication decodes");
        let (mut got_peer, mut got_data) = (PeerAddress::default(), Data::default());
        got_peer.get_from(&indication).unwrap();
        got_data.get_from(&indication).unwrap();
        assert_eq!((SocketAddr::new(got_peer.ip, got_peer.port), got_data.0.as_slice()), (from, payload));
    }

    let mut grants = Grants::default();
    let mut now = 1_800_000_000u64;
    for op in data.chunks_exact(3) {
        match op[0] % 3 {
            0 => {
                let _ = grants.grant_permissions(&[peer(op[1]), peer(op[2])], now, CAPS);
            }
            1 => {
                let _ = grants.bind_channel(0x4000 + u16::from(op[2] % 6), peer(op[1]), now, CAPS);
            }
            _ => now += u64::from(op[1]) * 8,
        }
        let (permissions, channels) = grants.counts(now);
        assert!(permissions <= CAPS.permissions && channels <= CAPS.channels);
        for number in 0x4000..0x4006 {
            if let Some(bound) = grants.channel_peer(number, now) {
                assert_eq!(grants.channel_to(bound, now), Some(number));
            }
        }
    }
});
