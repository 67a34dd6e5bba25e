//! Frame helpers for the voice room and its signaling: join and read `webrtc-joined`, what the
//! others see when someone joins or leaves, a room of N participants, candidates, offers and
//! answers, and the exact `webrtc-error` a refused request gets.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{expect_only_pong, is_iso_timestamp, Client, Server};

/// `/server-info` reports `n` voice participants (the counters follow the hub within moments).
pub async fn expect_voice_participants(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (info, _) = server.get_json("/server-info").await;
        if info["currentStats"]["voiceParticipants"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "expected {n} voice participants: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The very next frame is `webrtc-error` with `text` and a timestamp, and the connection stays up.
pub async fn expect_error(client: &mut Client, text: &str) {
    let message = client.recv().await;
    assert_eq!(message["type"], "webrtc-error", "{message}");
    assert_eq!(message["error"], text, "{message}");
    assert!(is_iso_timestamp(&message["timestamp"]), "{message}");
    assert_eq!(message.as_object().unwrap().len(), 3, "{message}");
    expect_only_pong(client).await;
}

/// Sends `webrtc-join` and returns `webrtc-joined` (the very next frame), then reads the notice.
pub async fn join_voice(client: &mut Client, name: &str, media_types: Option<Value>) -> Value {
    let fields = match media_types {
        Some(types) => json!({"mediaTypes": types}),
        None => json!({}),
    };
    client.send("webrtc-join", fields).await;
    let joined = client.recv().await;
    assert_eq!(joined["type"], "webrtc-joined", "{joined}");
    client.next_system(&format!("{name} joined voice chat")).await;
    joined
}

/// What a participant sees when `name` joins after it: `webrtc-peer-joined`, then the notice.
pub async fn expect_peer_joined(client: &mut Client, name: &str, media_types: Value) {
    assert_eq!(
        client.recv().await,
        json!({"type": "webrtc-peer-joined", "username": name, "mediaTypes": media_types})
    );
    client.next_system(&format!("{name} joined voice chat")).await;
}

/// What a participant sees when `name` leaves the room: `webrtc-peer-left`, then the notice.
pub async fn expect_peer_left(client: &mut Client, name: &str) {
    assert_eq!(client.recv().await, json!({"type": "webrtc-peer-left", "username": name}));
    client.next_system(&format!("{name} left voice chat")).await;
}

/// Connects `names` to the chat, then puts each in the voice room (audio) in order; every
/// client's queue is read up to the last notice.
pub async fn room<const N: usize>(server: &Server, names: [&str; N]) -> [Client; N] {
    let mut clients: Vec<Client> = Vec::new();
    for name in names {
        let client = server.join(name).await;
        for other in clients.iter_mut() {
            other.next_system(&format!("{name} has joined.")).await;
        }
        clients.push(client);
    }
    for (i, name) in names.iter().enumerate() {
        join_voice(&mut clients[i], name, None).await;
        for (j, other) in clients.iter_mut().enumerate() {
            if j < i {
                expect_peer_joined(other, name, json!(["audio"])).await;
            } else if j > i {
                other.next_system(&format!("{name} joined voice chat")).await;
            }
        }
    }
    clients.try_into().ok().expect("N clients")
}

pub fn candidate(line: &str) -> Value {
    json!({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"})
}

/// A relay candidate whose port identifies it.
pub fn relay(port: u32) -> String {
    format!("candidate:{port} 1 udp 41885439 127.0.0.1 {port} typ relay raddr 0.0.0.0 rport 0")
}

pub async fn send_candidate(client: &mut Client, target: &str, candidate: &Value, buffer: bool) {
    let mut fields = json!({"targetUsername": target, "candidate": candidate});
    if buffer {
        fields["buffer"] = json!(true);
    }
    client.send("webrtc-ice-candidate", fields).await;
}

pub async fn expect_candidate(client: &mut Client, from: &str, candidate: &Value) {
    assert_eq!(
        client.recv().await,
        json!({"type": "webrtc-ice-candidate", "fromUsername": from, "candidate": candidate})
    );
}

pub fn offer(sdp: &str) -> Value {
    json!({"type": "offer", "sdp": sdp})
}

pub fn answer(sdp: &str) -> Value {
    json!({"type": "answer", "sdp": sdp})
}
