//! Slowloris and idle accept against the real binary: connections that send half a request
//! head (or nothing) are closed by the header-read timeout, connections beyond the per-IP
//! pending cap are closed at accept, and the server's file descriptors return to baseline.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(usize::MAX)
}

/// True once the server has closed `stream` (EOF or reset); false if it is still open.
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 answer before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_headers_and_silence_are_closed_and_fds_return_to_baseline() {
    let server = Server::start(
        r#"
[timeouts]
header_read_ms = 2000

[network]
max_pending_per_ip = 16
"#,
    );
    // Let the server settle (store thread, relay sockets) before taking the baseline.
    let (head, _) = http_get(server.http, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = open_fds(server.pid());

    let mut streams = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(server.http).await.expect("connect");
        if i % 2 == 0 {
            // Half a request head, never finished.
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        }
        streams.push(stream);
    }
    let started = Instant::now();
    let held_at_peak = open_fds(server.pid()).saturating_sub(baseline);
    // Everything must be closed well within timeout + a generous margin for a loaded machine.
    for (i, stream) in streams.iter_mut().enumerate() {
        let remaining =
            Duration::from_secs(20).saturating_sub(started.elapsed()).max(Duration::from_millis(10));
        assert!(
            closed_by_server(stream, remaining).await,
            "stalled connection {i} is still open after {:?}",
            started.elapsed()
        );
    }
    let mut held_after = usize::MAX;
    for _ in 0..50 {
        held_after = open_fds(server.pid()).saturating_sub(baseline);
        if held_after == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "slowloris: server fds above baseline {baseline}: {held_at_peak} while 300 stalled, {held_after} after; all closed in {:?}",
        started.elapsed()
    );
    assert!(held_at_peak <= 16 + 4, "pending cap not enforced at accept: {held_at_peak} fds held");
    assert_eq!(held_after, 0, "server still holds {held_after} fds");
    drop(streams);
    let (head, body) = http_get(server.http, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200") && body == "ok", "server unhealthy afterwards: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_speaks_is_closed_after_the_first_message_timeout() {
    let server = Server::start("[timeouts]\nfirst_message_ms = 1500\n");
    let mut silent = common::Client::connect(&server.url(Some("quiet"))).await;
    let mut talker = common::Client::connect(&server.url(Some("talker"))).await;
    talker.send("ping", serde_json::json!({})).await;
    let started = Instant::now();
    let frame = silent.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The one that spoke is still served.
    talker.chat("still here").await;
    let echo = talker.recv_type("chat").await;
    assert_eq!(echo["text"], "still here");
}
