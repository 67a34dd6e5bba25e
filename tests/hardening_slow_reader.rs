//! Slow readers against the real binary: a client that never drains its socket is disconnected
//! by the write timeout and the server lets go of its socket.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;

/// A database with `count` long messages, so that a new client's history is megabytes: more
/// than the kernel buffers of a reader that never reads can absorb.
fn seed_history(dir: &Path, count: usize) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = rusqlite::Connection::open(data.join("relaychat.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
         username TEXT, text TEXT NOT NULL, timestamp TEXT NOT NULL);",
    )
    .unwrap();
    let text = "x".repeat(2000);
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let tx = db.unchecked_transaction().unwrap();
    for _ in 0..count {
        tx.execute(
            "INSERT INTO messages (kind, username, text, timestamp) VALUES ('chat', 'seed', ?1, ?2)",
            rusqlite::params![text, now],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Does the server process still hold the socket of the connection from `client_port`?
/// (Its fd table links to the socket inode that /proc/net/tcp lists for that connection.)
fn server_holds(pid: u32, server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port_of = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && port_of(cols[1]) == Some(server_port) && port_of(cols[2]) == Some(client_port))
            .then(|| cols[9].to_string())
    });
    let Some(inode) = inode.filter(|i| i != "0") else { return false };
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
        })
        .unwrap_or(false)
}

async fn wait_until_released(server: &Server, client_port: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if !server_holds(server.pid(), server.http.port(), client_port) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Opens a WebSocket with a tiny receive buffer and never reads from it again.
async fn stalled_reader(
    server: &Server,
    name: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&server.http.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url(Some(name)), stream).await.expect("handshake");
    ws // held, never polled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_drains_is_disconnected_by_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    seed_history(dir.path(), 4000); // ~8 MB of history
    let server = Server::start_in(dir.path(), "[chat]\nhistory_limit = 4000\n[timeouts]\nwrite_ms = 2000\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = stalled_reader(&server, "sloth").await;
    let port = stalled.get_ref().local_addr().unwrap().port();
    assert!(server_holds(server.pid(), server.http.port(), port), "the server holds the stalled connection");
    let released = wait_until_released(&server, port, Duration::from_secs(20)).await;
    eprintln!("slow reader (write timeout 2 s): socket released after {released:?}");
    assert!(released.is_some(), "server still holds the stalled reader's socket after 20 s");
    // Everyone else is still served.
    let mut other = server.join("other").await;
    other.chat("hello").await;
    assert_eq!(other.recv_type("chat").await["text"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_hub_drops_loses_its_socket_at_once() {
    let dir = tempfile::tempdir().unwrap();
    seed_history(dir.path(), 4000);
    // A long write timeout: only the hub dropping the session can end it within the test.
    let server = Server::start_in(
        dir.path(),
        "[chat]\nhistory_limit = 4000\nmax_messages_per_second = 1000\n[timeouts]\nwrite_ms = 120000\n",
    );
    let mut talker = server.join("talker").await;
    let stalled = stalled_reader(&server, "sloth").await;
    let port = stalled.get_ref().local_addr().unwrap().port();
    talker.expect_system("sloth has joined.").await;
    // Every chat message is a frame for the stalled reader's queue (512 frames).
    let started = Instant::now();
    for i in 0..600 {
        talker.chat(&format!("message {i}")).await;
        talker.recv_type("chat").await;
        if server.log_text().contains("outbound queue full") {
            break;
        }
    }
    let overflowed_after = started.elapsed();
    assert!(server.log_text().contains("outbound queue full"), "the hub did not drop the slow reader");
    let released = wait_until_released(&server, port, Duration::from_secs(10)).await;
    eprintln!("hub drop: queue overflowed after {overflowed_after:?}; socket released {released:?} later");
    assert!(released.is_some(), "the dropped session still holds its socket 10 s later");
}
