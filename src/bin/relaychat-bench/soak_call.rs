//! A soak call: a group of members who join voice over signaling, allocate on the relay with the
//! credentials the server handed them in `webrtc-joined`, tell each other their relay candidate
//! (through the server's relay-only rebuild), bind a channel to every other member's relayed
//! address and send audio-sized ChannelData to each at a steady rate, then leave voice and start
//! over. Every leave makes the server tear the allocations down; every rejoin makes new ones,
//! so a soak of minutes exercises the whole call lifecycle many times, not one long call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::credentials::RestCredential;
use super::turn_client::TurnClient;
use super::wire::{channel_data_header, parse_channel_data};
use super::ws_session::{self, Behaviour, Counters, Event, Session};

/// Call traffic and lifecycle counts across every group.
#[derive(Default)]
pub struct CallCounters {
    pub cycles: AtomicU64,
    pub failed_cycles: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    /// webrtc-join → webrtc-joined, microseconds, every join of the run.
    pub join_latency_us: std::sync::Mutex<Vec<u64>>,
    /// Failed cycles by cause (the error text with its digits and names blurred).
    pub errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl CallCounters {
    fn failed(&self, error: &anyhow::Error) {
        self.failed_cycles.fetch_add(1, Ordering::Relaxed);
        let text = format!("{error:#}");
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(error_kind(&text)).or_insert(0) += 1;
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text);
        }
    }
}

/// "call03m1 allocating on 127.0.0.1:3478: Allocate ..." -> "callNNmN allocating on N.N.N.N:N: ...":
/// the same cause in different groups counts once.
fn error_kind(text: &str) -> String {
    let mut kind = String::new();
    for c in text.chars().take(160) {
        if c.is_ascii_digit() {
            if !kind.ends_with('N') {
                kind.push('N');
            }
        } else {
            kind.push(c);
        }
    }
    kind
}

#[derive(Clone, Debug)]
pub struct CallShape {
    pub url: String,
    pub members: usize,
    pub packets_per_s: f64,
    pub payload: usize,
    /// How long the members stay in voice before they leave and join again.
    pub hold: Duration,
}

/// Run group `group` until `stop` turns true: join, talk for `hold`, leave, repeat.
pub async fn run_group(
    group: usize,
    shape: CallShape,
    frames: Arc<Counters>,
    calls: Arc<CallCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let behaviour = Behaviour { forward_events: true, auto_answer: true };
    let mut members = Vec::new();
    for m in 0..shape.members {
        let name = format!("call{group:02}m{m}");
        match ws_session::open(&shape.url, &name, behaviour, frames.clone(), stop.clone()).await {
            Ok(session) => members.push(session),
            Err(e) => {
                calls.failed(&e);
                return;
            }
        }
    }
    while !*stop.borrow() {
        // A member the server dropped (e.g. as a slow reader) comes back, like a reloaded page.
        for (m, member) in members.iter_mut().enumerate() {
            if !member.is_open() {
                let name = format!("call{group:02}m{m}");
                if let Ok(session) =
                    ws_session::open(&shape.url, &name, behaviour, frames.clone(), stop.clone()).await
                {
                    *member = session;
                }
            }
        }
        let pause = match one_cycle(&mut members, &shape, &calls, &mut stop).await {
            Ok(()) => {
                calls.cycles.fetch_add(1, Ordering::Relaxed);
                Duration::from_secs(2)
            }
            Err(e) => {
                calls.failed(&e);
                // Back off, as a person would before trying again.
                Duration::from_secs(5)
            }
        };
        for m in &members {
            m.send(&json!({"type": "webrtc-leave", "token": m.token}));
        }
        // A moment outside voice, as people between calls; also lets the teardown happen.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One stay in voice: join, allocate, exchange candidates, bind channels, send until `hold`.
async fn one_cycle(
    members: &mut [Session],
    shape: &CallShape,
    calls: &Arc<CallCounters>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for m in members.iter_mut() {
        // Whatever arrived since the last join (answers, "not in voice chat" errors for offers
        // that crossed a leave) belongs to the last stay in voice, not to this one.
        if let Some(events) = m.events.as_mut() {
            while events.try_recv().is_ok() {}
        }
        let asked = std::time::Instant::now();
        m.send(&json!({"type": "webrtc-join", "token": m.token, "mediaTypes": ["audio"]}));
        let (server, credential) = wait_for_credentials(m).await?;
        if let Ok(mut latencies) = calls.join_latency_us.lock() {
            latencies.push(asked.elapsed().as_micros() as u64);
        }
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let client = TurnClient::allocate(sock, server, &credential)
            .await
            .with_context(|| format!("{} allocating on {server}", m.name))?;
        clients.push(client);
    }
    // Candidates go through the server like a browser's (rebuilt there under force_relay).
    for (i, m) in members.iter().enumerate() {
        let relayed = clients[i].relayed;
        for (j, other) in members.iter().enumerate().filter(|(j, _)| *j != i) {
            let line = format!(
                "candidate:{j} 1 udp 16777215 {} {} typ relay raddr 0.0.0.0 rport 0",
                relayed.ip(),
                relayed.port()
            );
            m.send(&json!({"type": "webrtc-offer", "token": m.token, "targetUsername": other.name,
                "offer": ws_session::sdp_with_seq("offer", j as u64)}));
            m.send(&json!({"type": "webrtc-ice-candidate", "token": m.token, "targetUsername": other.name,
                "candidate": {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}}));
        }
    }
    let relayed: Vec<SocketAddr> = clients.iter().map(|c| c.relayed).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        for (j, peer) in relayed.iter().enumerate().filter(|(j, _)| *j != i) {
            client.create_permission(*peer).await?;
            client.channel_bind(0x4000 + j as u16, *peer).await?;
        }
    }
    let mut talkers = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let channels: Vec<u16> = (0..relayed.len()).filter(|j| *j != i).map(|j| 0x4000 + j as u16).collect();
        talkers.spawn(talk(client, channels, shape.clone(), calls.clone(), stop.clone()));
    }
    while talkers.join_next().await.is_some() {}
    Ok(())
}

/// The first `webrtc-joined` on `member`: the relay's UDP address and the credential for it.
async fn wait_for_credentials(member: &mut Session) -> anyhow::Result<(SocketAddr, RestCredential)> {
    let events = member.events.as_mut().ok_or_else(|| anyhow!("{}: session without events", member.name))?;
    let wait = async {
        while let Some(event) = events.recv().await {
            match event {
                Event::Joined { ice_servers, .. } => return turn_credential(&ice_servers),
                // Only an error about this join ends the wait (full room, budget, already in).
                Event::Error { text }
                    if ["Too many voice", "Already in voice", "Voice chat is full"]
                        .iter()
                        .any(|t| text.starts_with(t)) =>
                {
                    bail!("webrtc-error: {text}")
                }
                _ => {}
            }
        }
        bail!("session closed before webrtc-joined")
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| anyhow!("{}: no webrtc-joined within 10 s", member.name))?
}

/// The `turn:` URL over UDP in `iceServers` and its username/credential.
fn turn_credential(ice_servers: &Value) -> anyhow::Result<(SocketAddr, RestCredential)> {
    for server in ice_servers.as_array().into_iter().flatten() {
        let urls: Vec<&str> = match server.get("urls") {
            Some(Value::String(u)) => vec![u.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let (Some(username), Some(password)) = (
            server.get("username").and_then(Value::as_str),
            server.get("credential").and_then(Value::as_str),
        ) else {
            continue;
        };
        for url in urls {
            let Some(rest) = url.strip_prefix("turn:") else { continue };
            let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
            if query.contains("transport=tcp") {
                continue;
            }
            if let Ok(addr) = hostport.parse::<SocketAddr>() {
                let credential =
                    RestCredential { username: username.to_string(), password: password.to_string() };
                return Ok((addr, credential));
            }
        }
    }
    bail!("no turn: UDP URL with an IP address in iceServers {ice_servers}")
}

/// Send a packet to every channel at the call's rate, count what arrives, until `hold` ends.
async fn talk(
    client: TurnClient,
    channels: Vec<u16>,
    shape: CallShape,
    calls: Arc<CallCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut packet = Vec::with_capacity(4 + shape.payload);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / shape.packets_per_s.max(0.1)));
    let end = tokio::time::sleep(shape.hold);
    tokio::pin!(end);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = &mut end => return,
            _ = stop.changed() => return,
            _ = tick.tick() => {
                for channel in &channels {
                    packet.clear();
                    packet.extend_from_slice(&channel_data_header(*channel, shape.payload));
                    packet.resize(4 + shape.payload, 0xA5);
                    if client.sock.send_to(&packet, client.server).await.is_ok() {
                        calls.packets_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            received = client.sock.recv_from(&mut buf) => {
                if let Ok((n, _)) = received {
                    if parse_channel_data(&buf[..n]).is_some() {
                        calls.packets_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_udp_turn_url_and_its_credential_are_found() {
        let servers = json!([
            {"urls": ["turns:relay.example:5349?transport=tcp"], "username": "u1", "credential": "p1"},
            {"urls": ["turn:127.0.0.1:3478?transport=tcp", "turn:127.0.0.1:3478?transport=udp"],
             "username": "1700000000:alice:0badcafe", "credential": "secret"},
        ]);
        let (addr, credential) = turn_credential(&servers).unwrap();
        assert_eq!(addr, "127.0.0.1:3478".parse::<SocketAddr>().unwrap());
        assert_eq!(credential.username, "1700000000:alice:0badcafe");
        assert!(turn_credential(&json!([{"urls": "stun:127.0.0.1:3478"}])).is_err());
    }
}
