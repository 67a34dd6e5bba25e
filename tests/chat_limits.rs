//! Limits against the real binary (PROTOCOL.md section 7): the chat rate limit, connection
//! limits per IP, in total and per window, the churn guard, `X-Forwarded-For` only from trusted
//! proxies, and a slow reader that is cut off without slowing anyone else.

mod common;

use common::{Client, Server};
use serde_json::json;

#[tokio::test]
async fn rate_limit_refuses_the_fourth_message_in_a_second() {
    let server = Server::start("");
    let mut alice = server.join("Alice").await;
    for i in 0..6 {
        alice.chat(&format!("spam{i}")).await;
    }
    let mut chats = 0;
    let mut refusals = 0;
    for _ in 0..6 {
        let m = alice.recv().await;
        if m["type"] == "chat" {
            chats += 1;
        } else {
            assert_eq!(m["text"], "You are sending messages too fast. Limit is 3 per second.");
            refusals += 1;
        }
    }
    assert_eq!((chats, refusals), (3, 3));
}

#[tokio::test]
async fn connection_limits() {
    let server = Server::start("[limits]\ntotal_max_connections = 3\nmax_connections_per_ip = 2\n");
    let _a = server.join("UserA").await;
    let _b = server.join("UserB").await;
    let mut c = Client::connect(&server.url(Some("UserC"))).await;
    assert!(
        c.token.contains("Too many concurrent connections from this IP. Maximum allowed is 2."),
        "{}",
        c.token
    );
    c.expect_close().await;

    let server = Server::start("[limits]\ntotal_max_connections = 1\n");
    let _a = server.join("UserA").await;
    let b = Client::connect(&server.url(Some("UserB"))).await;
    assert!(b.token.contains("Server is full. Please try again later."), "{}", b.token);

    let server = Server::start("[limits]\nmax_connections_per_window = 2\nconnection_window_ms = 60000\n");
    for name in ["UserA", "UserB"] {
        drop(server.join(name).await);
    }
    let c = Client::connect(&server.url(Some("UserC"))).await;
    assert!(c.token.contains("Too many connections from this IP. Limit is 2 per 60 seconds."), "{}", c.token);
}

#[tokio::test]
async fn churn_guard_blocks_reconnect_loops() {
    let server = Server::start(
        "[limits.churn_guard]\nenabled = true\nwindow_ms = 10000\nmax_cycles = 3\nblock_duration_ms = 30000\n",
    );
    // Stays connected, so it is no cycle; it sees each loop connection leave, which the hub
    // announces in the same step as it counts the connection's end.
    let mut watcher = server.join("Watcher").await;
    // Like the original, the max_cycles-th quick cycle starts the block.
    for i in 0..3 {
        let mut c = server.join(&format!("Loop{i}")).await;
        c.ws.close(None).await.unwrap();
        let _ = c.expect_close().await;
        watcher.expect_system(&format!("Loop{i} has left.")).await;
    }
    let mut blocked = Client::connect(&server.url(Some("Again"))).await;
    assert!(
        blocked
            .token
            .contains("Your IP is temporarily blocked due to repeated reconnections. Try again in 30s."),
        "{}",
        blocked.token
    );
    let frame = blocked.expect_close().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1008);
}

#[tokio::test]
async fn forwarded_for_is_trusted_only_from_configured_proxies() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server =
        Server::start("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 1\n");
    let request = |ip: &str| {
        let mut request = server.url(Some("Proxied")).into_client_request().unwrap();
        request.headers_mut().insert("X-Forwarded-For", ip.parse().unwrap());
        request
    };
    let _first = Client::connect_with_request(request("198.51.100.1")).await;
    // A different forwarded client is not limited by the first one's connection...
    let mut second = Client::connect_with_request(request("198.51.100.2")).await;
    assert_eq!(second.token.len(), 64, "{}", second.token);
    second.recv_type("heartbeat-config").await;
    // ...but the same forwarded client is.
    let third = Client::connect_with_request(request("198.51.100.1")).await;
    assert!(third.token.contains("Too many concurrent connections"), "{}", third.token);

    let untrusted = Server::start("[limits]\nmax_connections_per_ip = 1\n");
    let with_header = |ip: &str| {
        let mut request = untrusted.url(None).into_client_request().unwrap();
        request.headers_mut().insert("X-Forwarded-For", ip.parse().unwrap());
        request
    };
    let _one = Client::connect_with_request(with_header("198.51.100.1")).await;
    let two = Client::connect_with_request(with_header("198.51.100.2")).await;
    assert!(two.token.contains("Too many concurrent connections"), "header must be ignored: {}", two.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_without_slowing_others() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const TOTAL: usize = 6000;
    const BATCH: usize = 100;
    // The sender floods on purpose (as fast as the fast reader reads): no limit may stop it.
    let server = Server::start(
        "[chat]\nmax_messages_per_second = 100000\n\
         [message_budgets]\ningress = { per_second = 1000000.0, burst = 1000000.0 }\n",
    );
    let mut fast = server.join("Fast").await;
    let slow = server.join("Slow").await; // never reads again
    fast.expect_system("Slow has joined.").await;
    let sender = server.join("Sender").await;
    fast.expect_system("Sender has joined.").await;
    let token = sender.token.clone();
    let (mut sink, mut stream) = sender.ws.split();
    let drain = tokio::spawn(async move { while stream.next().await.is_some() {} });
    // The reader reports progress; the sender never runs more than one batch ahead of it, so
    // a client that keeps reading is never the one that falls behind.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let payload = "€".repeat(1700); // 5100 bytes, just under the 5 KB limit
    let sending = tokio::spawn(async move {
        for batch in 0..TOTAL / BATCH {
            for _ in 0..BATCH {
                let message = json!({"type": "chat", "token": token, "content": payload}).to_string();
                sink.send(Message::Text(message.into())).await.unwrap();
            }
            progress.wait_for(|&n| n >= batch * BATCH).await.unwrap();
        }
        sink
    });
    let mut received = 0;
    let mut slow_left = false;
    while received < TOTAL || !slow_left {
        let m = fast.recv().await;
        if m["type"] == "chat" {
            received += 1;
            progress_tx.send_replace(received);
        } else if m["text"] == "Slow has left." {
            slow_left = true;
        }
    }
    assert_eq!(received, TOTAL);
    let _sink = sending.await.unwrap();
    drop(slow);
    drain.abort();
}

/// A flood is cut off where it arrives, before the hub: of 20,000 frames sent without pause,
/// the hub sees at most the ingress burst plus its rate for the time the flood lasted, and the
/// flooder is closed; meanwhile another user's messages are still answered. (Pings, with their
/// own class budget lifted, so that only the ingress budget can stop them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_off_where_it_arrives() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(
        "[message_budgets]\ningress = { per_second = 200.0, burst = 1200.0 }\n\
         ping = { per_second = 1000000.0, burst = 1000000.0 }\n",
    );
    let mut bystander = server.join("Bystander").await;
    let mut flooder = server.join("Flooder").await;
    bystander.expect_system("Flooder has joined.").await;
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (_, before) = common::http_get(server.http, "/metrics").await;
    let started = std::time::Instant::now();
    let ping = json!({"type": "ping", "token": flooder.token}).to_string();
    for _ in 0..20_000 {
        if flooder.ws.send(Message::Text(ping.clone().into())).await.is_err() {
            break; // closed under us: the point of the test
        }
    }
    let flood_s = started.elapsed().as_secs_f64();
    // Closed with 1008 "Too many messages"; the close frame itself may be lost, because the
    // server closes a socket that still holds unread flood frames, and the kernel answers that
    // with a reset.
    if let Some(close) = flooder.expect_close().await {
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "Too many messages"));
    }
    // The bystander is served: a ping is answered.
    bystander.send("ping", json!({})).await;
    bystander.recv_type("pong").await;
    let (_, after) = common::http_get(server.http, "/metrics").await;
    let reached_hub =
        metric(&after, "relaychat_messages_in_total") - metric(&before, "relaychat_messages_in_total");
    let dropped = metric(&after, "relaychat_ingress_drops_total");
    assert!(dropped > 200.0, "ingress drops: {dropped}");
    let allowed = 1200.0 + 200.0 * (flood_s + 1.0) + 10.0;
    assert!(
        reached_hub <= allowed,
        "{reached_hub} frames reached the hub (allowed {allowed:.0}) in {flood_s:.2} s"
    );
}
