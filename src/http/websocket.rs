//! One WebSocket session: parses frames into `Inbound` messages for the hub and writes what the
//! hub queues for it. Bad input never ends up anywhere but this connection.

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use warp::ws::{Message, WebSocket};

use crate::hub::runner::{ConnLink, HubEvent, HubHandle, OUTBOUND_QUEUE_FRAMES};
use crate::hub::{ConnId, ConnectInfo};
use crate::protocol::{parse_inbound, Inbound};

/// Largest WebSocket message accepted; bigger ones close the connection with 1009. Above the
/// 64 KiB SDP limit so that an oversized offer gets its protocol error instead.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The client's address: the socket peer, or the first X-Forwarded-For entry when the peer is
/// a trusted proxy (anyone else could write any address into that header).
pub fn client_ip(peer: Option<SocketAddr>, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.map(|p| canonical(p.ip())).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !trusted.iter().any(|net| net.contains(&peer_ip)) {
        return peer_ip;
    }
    forwarded_for
        .and_then(|header| header.split(',').next())
        .and_then(|first| first.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .unwrap_or(peer_ip)
}

/// `::ffff:1.2.3.4` is the IPv4 client 1.2.3.4 (dual-stack sockets report it that way).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// 32 random bytes from a CSPRNG, hex-encoded.
pub fn new_session_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Runs until either side closes. Always reports `Disconnected` to the hub at the end.
pub async fn run_session(ws: WebSocket, conn: ConnId, info: ConnectInfo, hub: HubHandle) {
    let (frames, mut queued) = mpsc::channel(OUTBOUND_QUEUE_FRAMES);
    let (close, mut close_requested) = oneshot::channel();
    if !hub.send(HubEvent::Connected { conn, info, link: ConnLink { frames, close } }).await {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let close_with: Option<(u16, String)> = loop {
        tokio::select! {
            biased;
            frame = queued.recv() => match frame {
                Some(frame) => {
                    if sink.send(Message::text(&*frame)).await.is_err() {
                        break None;
                    }
                }
                // The hub let go of us; a close request may be waiting.
                None => break (&mut close_requested).await.ok(),
            },
            request = &mut close_requested => {
                // Frames queued before the close request go out first ("You are banned.").
                while let Ok(frame) = queued.try_recv() {
                    if sink.send(Message::text(&*frame)).await.is_err() {
                        break;
                    }
                }
                break request.ok();
            },
            incoming = stream.next() => match incoming {
                Some(Ok(message)) => {
                    let inbound = if let Ok(text) = message.to_str() {
                        parse_inbound(text)
                    } else if message.is_binary() {
                        Inbound::Malformed
                    } else if message.is_close() {
                        break None;
                    } else {
                        continue; // ping/pong: answered by the WebSocket layer
                    };
                    if !hub.send(HubEvent::Message { conn, inbound }).await {
                        break Some((1001, "Server shutdown".into()));
                    }
                }
                Some(Err(error)) => break close_for_error(&error),
                None => break None,
            },
        }
    };
    if let Some((code, reason)) = close_with {
        let _ = sink.send(Message::close_with(code, reason)).await;
    }
    let _ = sink.close().await;
    hub.send(HubEvent::Disconnected { conn }).await;
}

/// A clear close reason for input errors the WebSocket layer detects.
fn close_for_error(error: &warp::Error) -> Option<(u16, String)> {
    let text = error.to_string();
    tracing::debug!("websocket read error: {text}");
    if text.contains("too long") || text.contains("Space limit") || text.contains("too big") {
        Some((1009, format!("Message too big (limit {MAX_MESSAGE_BYTES} bytes)")))
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        Some((1007, "Invalid UTF-8 in text frame".into()))
    } else {
        Some((1002, "WebSocket protocol error".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let header = Some("198.51.100.7, 10.1.2.3");
        assert_eq!(client_ip(Some(proxy), header, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(Some(stranger), header, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(Some(proxy), Some("garbage"), &trusted), "10.1.2.3".parse::<IpAddr>().unwrap());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();
        assert_eq!(client_ip(Some(mapped), header, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn tokens_are_64_hex_chars_and_differ() {
        let (a, b) = (new_session_token(), new_session_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
