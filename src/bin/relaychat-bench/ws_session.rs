//! One benchmark WebSocket session against the chat server: connects as `/?username=NAME`, waits
//! for the `session-token`, then one task per session reads every frame (counting chat frames
//! cheaply, without a full JSON parse), answers the heartbeat with `ping`, sends what the controller
//! queues, and optionally forwards the frames the controller cares about (its own chat coming back,
//! WebRTC offers/answers/joined) with their arrival time. An `auto_answer` session replies to every
//! `webrtc-offer` with a `webrtc-answer` itself, so the answer leaves without a controller hop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::load::now_ns;

/// Frame counts across every session of a run.
#[derive(Default)]
pub struct Counters {
    pub chat_frames: AtomicU64,
    pub system_frames: AtomicU64,
    pub other_frames: AtomicU64,
    pub rate_limited: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub last_close_reason: Mutex<Option<String>>,
}

/// What a forwarding session tells the controller, stamped with `now_ns()` on arrival.
#[derive(Debug)]
pub enum Event {
    /// A chat frame from `username` (text included so a sender can match its own).
    Chat {
        username: String,
        text: String,
        at: u64,
    },
    /// A `webrtc-offer` or `webrtc-answer` whose SDP carries sequence number `seq`.
    Offer {
        seq: u64,
        at: u64,
    },
    Answer {
        seq: u64,
        at: u64,
    },
    /// `webrtc-joined`, with the `config.iceServers` it handed out (TURN URLs and credentials).
    Joined {
        at: u64,
        ice_servers: Value,
    },
    Error {
        text: String,
    },
}

#[derive(Clone, Copy, Default)]
pub struct Behaviour {
    pub forward_events: bool,
    pub auto_answer: bool,
}

/// The controller's handle on a running session.
pub struct Session {
    pub name: String,
    pub token: String,
    tx: mpsc::UnboundedSender<String>,
    pub events: Option<mpsc::UnboundedReceiver<Event>>,
}

impl Session {
    /// Queue a JSON frame; the session task writes it.
    pub fn send(&self, v: &Value) -> bool {
        self.tx.send(v.to_string()).is_ok()
    }

    /// False once the session task has ended (the server closed the connection, or it failed).
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// SDP carrying a sequence number in the origin line, so the receiver can match it.
pub fn sdp_with_seq(kind: &str, seq: u64) -> Value {
    json!({
        "type": kind,
        "sdp": format!("v=0\r\no=- {seq} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"),
    })
}

fn seq_of(desc: &Value) -> Option<u64> {
    let sdp = desc.get("sdp")?.as_str()?;
    let line = sdp.lines().find(|l| l.starts_with("o="))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `type` of a server frame without parsing the whole JSON.
fn frame_type(text: &str) -> &str {
    const KEY: &str = "\"type\":\"";
    text.find(KEY)
        .map(|i| &text[i + KEY.len()..])
        .and_then(|rest| rest.find('"').map(|j| &rest[..j]))
        .unwrap_or("")
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: 10,000 idle sessions live in this one process.
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0)
}

/// Connect and start the session task. Returns once the session token has arrived.
pub async fn open(
    url: &str,
    name: &str,
    behaviour: Behaviour,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Session> {
    let base = url.trim_end_matches('/');
    let target = format!("{base}/?username={name}");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(target.as_str(), Some(ws_config()), true)
        .await
        .with_context(|| format!("connecting {target}"))?;
    let mut token = None;
    let mut interval_ms = 30_000u64;
    // The token and heartbeat config are the first two frames (PROTOCOL.md section 1).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while token.is_none() {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("{name}: no session-token within 30 s"))?
            .ok_or_else(|| anyhow!("{name}: closed before session-token"))??;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
            match v.get("type").and_then(Value::as_str) {
                Some("session-token") => token = v.get("token").and_then(Value::as_str).map(str::to_string),
                Some("heartbeat-config") => {
                    interval_ms = v.get("interval").and_then(Value::as_u64).unwrap_or(interval_ms)
                }
                Some("system") => {
                    let text = v.get("text").and_then(Value::as_str).unwrap_or("");
                    if text.contains("Illegal") || text.contains("full") || text.contains("Too many") {
                        bail!("{name}: refused: {text}");
                    }
                }
                _ => {}
            }
        }
    }
    let token = token.unwrap_or_default();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = if behaviour.forward_events {
        let (a, b) = mpsc::unbounded_channel();
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let ctx = SessionTask { name: name.to_string(), token: token.clone(), behaviour, counters, ev_tx };
    // Ping at half the advertised interval: well inside the server's timeout.
    tokio::spawn(ctx.run(ws, rx, stop, (interval_ms / 2).max(1000)));
    Ok(Session { name: name.to_string(), token, tx, events: ev_rx })
}

struct SessionTask {
    name: String,
    token: String,
    behaviour: Behaviour,
    counters: Arc<Counters>,
    ev_tx: Option<mpsc::UnboundedSender<Event>>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl SessionTask {
    async fn run(
        self,
        ws: Ws,
        mut rx: mpsc::UnboundedReceiver<String>,
        mut stop: watch::Receiver<bool>,
        mut ping_ms: u64,
    ) {
        let (mut write, mut read) = ws.split();
        let mut ping = tokio::time::interval(Duration::from_millis(ping_ms));
        ping.tick().await;
        let ping_frame = json!({"type": "ping", "token": self.token}).to_string();
        loop {
            tokio::select! {
                msg = read.next() => {
                    let Some(Ok(msg)) = msg else {
                        self.counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    match msg {
                        Message::Text(t) => {
                            let text = t.as_str();
                            let kind = frame_type(text);
                            match kind {
                                "chat" => { self.counters.chat_frames.fetch_add(1, Ordering::Relaxed); }
                                "system" => {
                                    self.counters.system_frames.fetch_add(1, Ordering::Relaxed);
                                    if text.contains("too fast") {
                                        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                "heartbeat-config" => {
                                    if let Some(ms) = serde_json::from_str::<Value>(text).ok()
                                        .and_then(|v| v.get("interval").and_then(Value::as_u64)) {
                                        // Ping at half the interval: well inside the timeout.
                                        ping_ms = (ms / 2).max(1000);
                                        ping = tokio::time::interval(Duration::from_millis(ping_ms));
                                        ping.tick().await;
                                    }
                                }
                                _ => { self.counters.other_frames.fetch_add(1, Ordering::Relaxed); }
                            }
                            if self.ev_tx.is_some() || self.behaviour.auto_answer {
                                let at = now_ns();
                                if let Some(reply) = self.inspect(kind, text, at) {
                                    if write.send(Message::text(reply)).await.is_err() { return; }
                                }
                            }
                        }
                        Message::Close(f) => {
                            if let Ok(mut g) = self.counters.last_close_reason.lock() {
                                *g = Some(format!("{}: {:?}", self.name, f));
                            }
                            self.counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        _ => {}
                    }
                }
                out = rx.recv() => {
                    let Some(out) = out else { return };
                    if write.send(Message::text(out)).await.is_err() { return; }
                }
                _ = ping.tick() => {
                    if write.send(Message::text(ping_frame.clone())).await.is_err() { return; }
                }
                _ = stop.changed() => {
                    let _ = write.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    }

    /// Forward interesting frames; return an answer to send for an auto-answered offer.
    fn inspect(&self, kind: &str, text: &str, at: u64) -> Option<String> {
        let interesting =
            matches!(kind, "chat" | "webrtc-offer" | "webrtc-answer" | "webrtc-joined" | "webrtc-error");
        if !interesting {
            return None;
        }
        let v: Value = serde_json::from_str(text).ok()?;
        let ev = match kind {
            "chat" => Event::Chat {
                username: v.get("username").and_then(Value::as_str).unwrap_or("").to_string(),
                text: v.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
                at,
            },
            "webrtc-offer" => {
                let seq = v.get("offer").and_then(seq_of).unwrap_or(u64::MAX);
                if self.behaviour.auto_answer {
                    let from = v.get("fromUsername").and_then(Value::as_str).unwrap_or("");
                    let answer = json!({
                        "type": "webrtc-answer", "token": self.token,
                        "targetUsername": from, "answer": sdp_with_seq("answer", seq),
                    });
                    if let Some(tx) = &self.ev_tx {
                        let _ = tx.send(Event::Offer { seq, at });
                    }
                    return Some(answer.to_string());
                }
                Event::Offer { seq, at }
            }
            "webrtc-answer" => {
                Event::Answer { seq: v.get("answer").and_then(seq_of).unwrap_or(u64::MAX), at }
            }
            "webrtc-joined" => Event::Joined {
                at,
                ice_servers: v.pointer("/config/iceServers").cloned().unwrap_or(Value::Null),
            },
            _ => Event::Error { text: v.get("error").and_then(Value::as_str).unwrap_or("").to_string() },
        };
        if let Some(tx) = &self.ev_tx {
            let _ = tx.send(ev);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_type_is_found_without_parsing() {
        assert_eq!(frame_type(r#"{"type":"chat","username":"a"}"#), "chat");
        assert_eq!(frame_type(r#"{"username":"a","type":"system"}"#), "system");
        assert_eq!(frame_type("garbage"), "");
    }

    #[test]
    fn sdp_sequence_round_trips() {
        assert_eq!(seq_of(&sdp_with_seq("offer", 42)), Some(42));
    }
}
