//! A register/login storm against the real binary: password hashing runs behind a global
//! concurrency limit, so server memory stays bounded during the storm, comes back after it,
//! and another user's chat keeps its latency.

mod common;

use std::time::{Duration, Instant};

use common::{rss_kib, Client, Server};

/// Waits (longer than the harness's 5 s: storm clients queue for a hashing slot) for a system
/// message with `text`.
async fn await_system(client: &mut Client, text: &str) {
    use futures_util::StreamExt;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(300), client.ws.next()).await;
        match next {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                if m["type"] == "system" && m["text"] == text {
                    return;
                }
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("waiting for {text:?}: {other:?}"),
        }
    }
}

async fn register_and_login(server: &Server, i: usize) {
    let mut client = Client::connect(&server.url(None)).await;
    let name = format!("storm{i}");
    client.chat(&format!("/register {name} password{i}")).await;
    await_system(&mut client, "Registered. Please /login.").await;
    client.chat(&format!("/login {name} password{i}")).await;
    await_system(&mut client, &format!("{name} has joined.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_login_storm_keeps_memory_bounded_and_chat_responsive() {
    let clients: usize = std::env::var("STORM_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let server = Server::start(
        r#"
[chat]
authentication = true
max_messages_per_second = 100
# Storm clients wait silently for their turn; big storms take minutes.
heartbeat_interval_ms = 300000
heartbeat_timeout_ms = 600000

[timeouts]
first_message_ms = 600000

[limits]
total_max_connections = 1000
max_connections_per_ip = 1000

[network]
max_pending_per_ip = 1000
max_pending_total = 1000
password_hash_concurrency = 2
password_attempts_per_minute_per_ip = 100000
register_attempts_per_ip = 100000
"#,
    );
    let pid = server.pid();
    // A bystander who is logged in before the storm.
    let mut bystander = Client::connect(&server.url(None)).await;
    bystander.chat("/register bystander password0").await;
    await_system(&mut bystander, "Registered. Please /login.").await;
    bystander.chat("/login bystander password0").await;
    await_system(&mut bystander, "bystander has joined.").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);

    let started = Instant::now();
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move { register_and_login(&server, i).await })
        })
        .collect();
    let mut peak = before;
    let mut worst_echo = Duration::ZERO;
    let mut n = 0;
    while !tasks.iter().all(|t| t.is_finished()) && started.elapsed() < Duration::from_secs(600) {
        peak = peak.max(rss_kib(pid));
        let sent = Instant::now();
        bystander.chat(&format!("echo {n}")).await;
        loop {
            use futures_util::StreamExt;
            match tokio::time::timeout(Duration::from_secs(60), bystander.ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) if t.contains("\"chat\"") => {
                    break
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("bystander echo: {other:?}"),
            }
        }
        worst_echo = worst_echo.max(sent.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await.expect("every storm client registered and logged in");
    }
    let storm_took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    eprintln!(
        "argon2 storm ({clients} clients): RSS {} MiB before, peak {} MiB, {} MiB after; worst bystander echo {worst_echo:?}; storm took {storm_took:?}",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    // Two hashes at ~19 MiB each at a time, plus slack for allocator caching and sessions.
    assert!(peak - before < 160 * 1024, "RSS grew by {} MiB during the storm", (peak - before) / 1024);
    assert!(
        after.saturating_sub(before) < 40 * 1024,
        "RSS stayed {} MiB above its start after the storm",
        after.saturating_sub(before) / 1024
    );
    assert!(worst_echo < Duration::from_secs(5), "chat echo took {worst_echo:?} during the storm");
}
