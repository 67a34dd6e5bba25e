//! A signaling flood from many connections against the real binary: the hub's inbound lanes
//! are bounded (`relaychat::hub::lanes`, 1024 signaling and 1024 presence events), so however
//! much call signaling many connections push, the server stays responsive, its memory stays
//! bounded, and nobody else's connection is dropped.
//!
//! `FLOODERS` connections, each held only to the default ingress budget (200 frames/s, bursts
//! of 1200; over-budget messages never close them here, so the flood lasts), send
//! `webrtc-ice-candidate` frames as fast as their sockets take them for `FLOOD`. Meanwhile: a
//! chat message between two bystanders, a fresh connection, and an offer inside a running call
//! must each go through within `RESPONSIVE`; `/metrics` is sampled for the hub's queue depth
//! (it must reach half the signaling lane, so the flood did outrun the hub, and never exceed
//! the three lanes together) and the heap in use (at most `HEAP_GROWTH` over the baseline:
//! what the lanes do not take stays in the flooders' socket buffers). Afterwards every
//! bystander is still connected and answered.
//!
//! Measured on the shared 2-core machine (debug build, flood on its own thread), five runs:
//! 71,000-122,000 frames reached the hub and 25,000-108,000 were dropped on arrival in 6 s,
//! queue depth up to 1008-1021, heap 6.3 -> at most 8.7 MiB; mid-flood a chat message took
//! 80-210 ms, a fresh connection 38-270 ms to its history, an offer 26-120 ms.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::voice::{expect_peer_joined, join_voice};
use common::{http_get, Client, Server};
use futures_util::{SinkExt, StreamExt};
use relaychat::hub::lanes::{CHAT_LANE_EVENTS, PRESENCE_LANE_EVENTS, SIGNAL_LANE_EVENTS};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Connections that flood.
const FLOODERS: usize = 100;
/// How long they flood.
const FLOOD: Duration = Duration::from_secs(6);
/// How long a bystander's chat message, a fresh connection or an offer may take mid-flood.
const RESPONSIVE: Duration = Duration::from_secs(2);
/// Heap growth allowed over the baseline while the flood runs (what the flooders' sessions,
/// their bounded queues and the lanes hold; an unbounded queue of the flood would pass it).
const HEAP_GROWTH: f64 = 32.0 * 1024.0 * 1024.0;

const CONFIG: &str = r#"
[message_budgets]
disconnect_after_drops = 0
"#;

/// The sum of a metric's samples in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `frame` over `client` as fast as the socket takes it until `stop`, reading (and
/// counting) whatever comes back; frames sent.
async fn flood(client: Client, frame: String, stop: Arc<AtomicBool>, answers: Arc<AtomicU64>) -> u64 {
    let (mut sink, mut stream) = client.ws.split();
    let drain = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {
            answers.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut sent = 0;
    'flood: while !stop.load(Ordering::Relaxed) {
        for _ in 0..32 {
            if sink.feed(Message::Text(frame.clone().into())).await.is_err() {
                break 'flood;
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    drain.abort();
    sent
}

/// Samples `/metrics` every 100 ms until `stop`: (highest hub queue depth, highest heap in use).
async fn sample(server: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (f64, f64) {
    let (mut depth, mut heap) = (0.0f64, 0.0f64);
    while !stop.load(Ordering::Relaxed) {
        let (_, text) = http_get(server, "/metrics").await;
        depth = depth.max(metric(&text, "relaychat_hub_queue_depth"));
        heap = heap.max(metric(&text, "relaychat_heap_in_use_bytes"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (depth, heap)
}

/// The users who do not flood.
const BYSTANDERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// Reads frames until one satisfies `wanted`; panics if a frame says a bystander left.
async fn until(client: &mut Client, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = client.recv().await;
        if wanted(&frame) {
            return frame;
        }
        let text = frame["text"].as_str().unwrap_or("");
        let left = BYSTANDERS.iter().any(|name| text == format!("{name} has left."));
        assert!(!left, "a bystander was dropped: {frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_flood_from_many_connections_leaves_everyone_else_served() {
    let server = Server::start(CONFIG);
    // The flood runs on its own runtime and thread, so that the bystanders' clients measure
    // the server and not a test process busy flooding.
    let flood_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // The flooders first, so the bystanders are not sent a hundred join notices.
    let urls: Vec<String> = (0..FLOODERS).map(|i| server.url(Some(&format!("flood{i:03}")))).collect();
    let flooders = flood_runtime
        .spawn(async move {
            let mut flooders = Vec::new();
            for url in urls {
                let flooder = Client::connect(&url).await;
                assert!(!flooder.token.starts_with("refused:"), "{}", flooder.token);
                flooders.push(flooder);
            }
            flooders
        })
        .await
        .expect("the flooders connect");
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect_system("bob has joined.").await;
    let mut dave = server.join("dave").await;
    let mut erin = server.join("erin").await;
    dave.expect_system("erin has joined.").await;
    join_voice(&mut dave, "dave", Some(json!(["audio"]))).await;
    erin.expect_system("dave joined voice chat").await;
    join_voice(&mut erin, "erin", Some(json!(["audio"]))).await;
    expect_peer_joined(&mut dave, "erin", json!(["audio"])).await;
    let (_, before) = http_get(server.http, "/metrics").await;
    let heap_before = metric(&before, "relaychat_heap_in_use_bytes");

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let sampling = tokio::spawn(sample(server.http, stop.clone()));
    let flood_started = Instant::now();
    let tasks: Vec<_> = flooders
        .into_iter()
        .map(|flooder| {
            let candidate = json!({"candidate": "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host",
                "sdpMid": "0", "sdpMLineIndex": 0});
            let frame = json!({"type": "webrtc-ice-candidate", "token": flooder.token,
                "targetUsername": "erin", "candidate": candidate})
            .to_string();
            flood_runtime.spawn(flood(flooder, frame, stop.clone(), answers.clone()))
        })
        .collect();
    // Let the flood fill the lanes before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    alice.chat("still there?").await;
    until(&mut bob, |f| f["type"] == "chat" && f["text"] == "still there?").await;
    let chat_took = started.elapsed();
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(server.http).await.expect("tcp connect");
    let tcp_took = started.elapsed();
    drop(tcp);
    let started = Instant::now();
    let mut carol = Client::connect(&server.url(Some("carol"))).await;
    let token_took = started.elapsed();
    assert!(!carol.token.starts_with("refused:"), "{}", carol.token);
    until(&mut carol, |f| f["type"] == "history").await;
    let connect_took = started.elapsed();
    let started = Instant::now();
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"});
    dave.send("webrtc-offer", json!({"targetUsername": "erin", "offer": offer})).await;
    until(&mut erin, |f| f["type"] == "webrtc-offer").await;
    let offer_took = started.elapsed();
    let measured_within_flood = flood_started.elapsed() < FLOOD;

    tokio::time::sleep(FLOOD.saturating_sub(flood_started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for task in tasks {
        sent += task.await.expect("a flooder");
    }
    flood_runtime.shutdown_background();
    let (max_depth, max_heap) = sampling.await.expect("the sampler");
    let (_, after) = http_get(server.http, "/metrics").await;
    let reached_hub =
        metric(&after, "relaychat_messages_in_total") - metric(&before, "relaychat_messages_in_total");
    let ingress_drops = metric(&after, "relaychat_ingress_drops_total");
    eprintln!(
        "{FLOODERS} flooders sent {sent} frames in {FLOOD:?}: {reached_hub} reached the hub, {ingress_drops} \
         dropped on arrival, {} answers; mid-flood: chat {chat_took:?}, connect {connect_took:?} (tcp {tcp_took:?}, token {token_took:?}), offer \
         {offer_took:?}; hub queue depth max {max_depth}, heap {:.1} -> max {:.1} MiB",
        answers.load(Ordering::Relaxed),
        heap_before / 1048576.0,
        max_heap / 1048576.0
    );

    assert!(measured_within_flood, "the measurements outlasted the flood: make FLOOD longer");
    // The flood outran the hub: the signaling lane filled (else this measured nothing).
    assert!(reached_hub > (FLOODERS * 200) as f64, "the flood did not reach the hub: {reached_hub}");
    assert!(
        max_depth >= (SIGNAL_LANE_EVENTS / 2) as f64,
        "the hub kept up with the flood (queue depth at most {max_depth}): no lane ever filled"
    );
    for (what, took) in
        [("chat message", chat_took), ("fresh connection", connect_took), ("offer", offer_took)]
    {
        assert!(took <= RESPONSIVE, "a {what} took {took:?} mid-flood (allowed {RESPONSIVE:?})");
    }
    let lanes = (SIGNAL_LANE_EVENTS + PRESENCE_LANE_EVENTS + CHAT_LANE_EVENTS) as f64;
    assert!(max_depth <= lanes, "the hub queue held {max_depth} events, more than its lanes ({lanes})");
    assert!(
        max_heap - heap_before <= HEAP_GROWTH,
        "the heap grew by {:.1} MiB under the flood",
        (max_heap - heap_before) / 1048576.0
    );
    // Nobody else was dropped: every bystander is still connected and answered.
    for client in [&mut alice, &mut bob, &mut carol, &mut dave, &mut erin] {
        client.send("ping", json!({})).await;
        until(client, |f| f["type"] == "pong").await;
    }
    let (info, _) = server.get_json("/server-info").await;
    assert_eq!(info["currentStats"]["voiceParticipants"], 2, "{info}");
}
