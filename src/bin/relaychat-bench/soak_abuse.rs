//! The soak's background traffic: chatters whose messages fan out to every session, flooders
//! that send far past their message budget until the server closes them (then come back), and
//! slow readers that complete the WebSocket upgrade with a tiny receive buffer and never read,
//! so the server must drop them when their queue fills (then they come back too).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::ws_session::{self, Behaviour, Counters};

/// What the abusive and chatty clients saw.
#[derive(Default)]
pub struct AbuseCounters {
    pub chat_sent: AtomicU64,
    pub flood_frames_sent: AtomicU64,
    /// Flooding sessions the server closed (each flooder then reconnects).
    pub flooders_closed: AtomicU64,
    /// Slow readers whose connection the server ended.
    pub slow_readers_dropped: AtomicU64,
    pub connect_failures: AtomicU64,
}

async fn pause_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Open a session as `name`, retrying each second after a failure; `None` once stopped.
async fn connect(
    url: &str,
    name: &str,
    frames: &Arc<Counters>,
    abuse: &AbuseCounters,
    stop: &mut watch::Receiver<bool>,
) -> Option<ws_session::Session> {
    while !*stop.borrow() {
        match ws_session::open(url, name, Behaviour::default(), frames.clone(), stop.clone()).await {
            Ok(session) => return Some(session),
            Err(_) => {
                abuse.connect_failures.fetch_add(1, Ordering::Relaxed);
                if !pause_or_stop(stop, Duration::from_secs(1)).await {
                    return None;
                }
            }
        }
    }
    None
}

/// One chat message of `size` characters every `every`, broadcast to every other session.
pub async fn chatter(
    url: String,
    name: String,
    size: usize,
    every: Duration,
    frames: Arc<Counters>,
    abuse: Arc<AbuseCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let text: String = "chat soak ".chars().cycle().take(size).collect();
    while let Some(session) = connect(&url, &name, &frames, &abuse, &mut stop).await {
        // Spread the chatters over the interval so the fan-out is steady, not bursty.
        let jitter = rand::rng().random_range(0..every.as_millis().max(1) as u64);
        if !pause_or_stop(&mut stop, Duration::from_millis(jitter)).await {
            return;
        }
        while session.send(&json!({"type": "chat", "token": session.token, "content": text})) {
            abuse.chat_sent.fetch_add(1, Ordering::Relaxed);
            if !pause_or_stop(&mut stop, every).await {
                return;
            }
        }
    }
}

/// Send `typing` frames far past the budget; when the server closes the session, come back.
pub async fn flooder(
    url: String,
    name: String,
    frames: Arc<Counters>,
    abuse: Arc<AbuseCounters>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(session) = connect(&url, &name, &frames, &abuse, &mut stop).await {
        let typing = json!({"type": "typing", "token": session.token});
        'flood: loop {
            // 100 frames every 50 ms: 2000 frames/s, far past any budget a real client needs.
            for _ in 0..100 {
                if !session.send(&typing) {
                    break 'flood;
                }
                abuse.flood_frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            if !pause_or_stop(&mut stop, Duration::from_millis(50)).await {
                return;
            }
        }
        abuse.flooders_closed.fetch_add(1, Ordering::Relaxed);
        // Like a script in a retry loop.
        if !pause_or_stop(&mut stop, Duration::from_secs(1)).await {
            return;
        }
    }
}

/// Upgrade to a WebSocket by hand with a 4 KiB receive buffer and never read a byte. Every 2 s a
/// masked ping frame goes out; once the server has closed the connection that write fails, the
/// drop is counted and a new slow reader connects.
pub async fn slow_reader(
    http: std::net::SocketAddr,
    name: String,
    abuse: Arc<AbuseCounters>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let Ok(mut stream) = connect_small_buffer(http).await else {
            abuse.connect_failures.fetch_add(1, Ordering::Relaxed);
            if !pause_or_stop(&mut stop, Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        let upgrade = format!(
            "GET /?username={name} HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        if stream.write_all(upgrade.as_bytes()).await.is_err() {
            abuse.connect_failures.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // A masked, empty WebSocket ping (FIN + opcode 9, mask bit, zero key).
        let ping = [0x89u8, 0x80, 0, 0, 0, 0];
        loop {
            if !pause_or_stop(&mut stop, Duration::from_secs(2)).await {
                return;
            }
            if stream.write_all(&ping).await.is_err() {
                abuse.slow_readers_dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

async fn connect_small_buffer(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Set before connect, so the window the server sees stays small from the first byte.
    socket.set_recv_buffer_size(4096)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}
