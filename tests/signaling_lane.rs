//! The priority lane against the real binary: an offer and its answer overtake chat frames that
//! were queued for their recipients before them, while a third client's flood fills those
//! queues.
//!
//! Alice and Bob are in a call; Bob stops reading and Carol floods the chat. Bob's socket fills
//! (a small receive buffer and a small MSS keep the kernel's share of the backlog small), the
//! rest of the flood waits in his session's chat queue. Once Carol has her own echo of the last
//! flood message, every flood frame is queued for Bob; only then does Alice send her offer.
//! Without the lane the offer would come after the whole flood; with it, it comes before the
//! frames still waiting in the queue. The assertions are about order, not time.

mod common;

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::MaybeTlsStream;

use common::voice::{expect_peer_joined, join_voice};
use common::{Client, Server};

/// Chat frames in the flood: well past what the sockets hold, within the 512-frame chat queue.
const FLOOD: usize = 400;

const CONFIG: &str = r#"
[chat]
max_messages_per_second = 1000

[timeouts]
write_ms = 60000

[message_budgets]
ingress = { per_second = 100000.0, burst = 100000.0 }
"#;

/// A client whose socket holds little: 4 KiB receive buffer, 536-byte segments (the server
/// sizes its send buffer from the segment size).
async fn small_socket_client(server: &Server, name: &str) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_tcp_mss(536).expect("TCP_MAXSEG");
    socket.connect(&server.http.into()).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let stream = tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream");
    let (ws, _) = tokio_tungstenite::client_async(server.url(Some(name)), MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket handshake");
    let mut client = Client { ws, token: String::new() };
    let first = client.recv().await;
    client.token = first["token"].as_str().expect("session token first").to_string();
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

/// The flood message number `index` (4000 bytes of text: few frames fill a socket).
fn flood_text(index: usize) -> String {
    format!("flood {index} {}", "é".repeat(1980))
}

/// The flood index of a chat frame from Carol, if it is one.
fn flood_index(frame: &Value) -> Option<usize> {
    if frame["type"] != "chat" || frame["username"] != "Carol" {
        return None;
    }
    frame["text"].as_str()?.strip_prefix("flood ")?.split(' ').next()?.parse().ok()
}

/// Reads until a frame of `kind`; returns it and the flood indexes read before it.
async fn read_until(client: &mut Client, kind: &str) -> (Value, Vec<usize>) {
    let mut flood = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame["type"] == kind {
            return (frame, flood);
        }
        flood.extend(flood_index(&frame));
    }
}

/// Reads the rest of the flood (through the last message); returns the indexes read.
async fn read_rest_of_flood(client: &mut Client, seen: &[usize]) -> Vec<usize> {
    let mut flood = Vec::new();
    if seen.last() == Some(&(FLOOD - 1)) {
        return flood;
    }
    loop {
        let frame = client.recv().await;
        if let Some(index) = flood_index(&frame) {
            flood.push(index);
            if index == FLOOD - 1 {
                return flood;
            }
        }
    }
}

#[tokio::test]
async fn an_offer_overtakes_a_queued_chat_flood_and_the_answer_comes_back() {
    let server = Server::start(CONFIG);
    let mut carol = server.join("Carol").await;
    let mut alice = server.join("Alice").await;
    let mut bob = small_socket_client(&server, "Bob").await;
    alice.expect_system("Bob has joined.").await;
    join_voice(&mut alice, "Alice", Some(json!(["audio"]))).await;
    bob.expect_system("Alice joined voice chat").await;
    join_voice(&mut bob, "Bob", Some(json!(["audio"]))).await;
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;

    // Alice keeps reading (a session whose socket is full does not read its own socket until
    // its write goes through, so the sender of an offer must be a reader); Bob does not read.
    let (send_offer, mut offer_now) = oneshot::channel::<Value>();
    let alice_reads = tokio::spawn(async move {
        let mut offer_sent = false;
        let mut before = Vec::new();
        let answer = loop {
            tokio::select! {
                offer = &mut offer_now, if !offer_sent => {
                    offer_sent = true;
                    alice.send("webrtc-offer", offer.expect("the offer")).await;
                }
                frame = alice.recv() => {
                    if frame["type"] == "webrtc-answer" {
                        break frame;
                    }
                    before.extend(flood_index(&frame));
                }
            }
        };
        let after = read_rest_of_flood(&mut alice, &before).await;
        (answer, [before, after].concat())
    });

    for index in 0..FLOOD {
        carol.chat(&flood_text(index)).await;
    }
    // Carol's echo of the last message: the hub has queued every flood frame for everyone.
    while flood_index(&carol.recv().await) != Some(FLOOD - 1) {}

    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"});
    send_offer.send(json!({"targetUsername": "Bob", "offer": offer})).expect("Alice's task");
    let (relayed, bob_before) = read_until(&mut bob, "webrtc-offer").await;
    assert_eq!(relayed, json!({"type": "webrtc-offer", "fromUsername": "Alice", "offer": offer}));
    let answer = json!({"type": "answer", "sdp": "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\n"});
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer})).await;
    let bob_after = read_rest_of_flood(&mut bob, &bob_before).await;

    eprintln!("flood frames Bob read before the offer: {} of {FLOOD}", bob_before.len());
    // Every flood frame was queued for Bob before the offer reached the hub, yet some were
    // written after it: the offer went past them.
    assert!(!bob_after.is_empty(), "the offer came after the whole flood");
    let all: Vec<usize> = (0..FLOOD).collect();
    // The chat itself lost nothing and stayed in order.
    assert_eq!([bob_before, bob_after].concat(), all);

    let (relayed, alice_flood) = alice_reads.await.expect("Alice's reader");
    assert_eq!(relayed, json!({"type": "webrtc-answer", "fromUsername": "Bob", "answer": answer}));
    assert_eq!(alice_flood, all);
}
