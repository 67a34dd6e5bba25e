//! SIGHUP against the real binary without TLS: the server keeps serving (the systemd unit's
//! `reload` sends it), and it says which configuration keys changed and need a restart.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, Server};

async fn wait_for_log(server: &Server, text: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if server.log_text().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sighup_without_tls_is_not_fatal_and_reports_changed_keys() {
    let mut server = Server::start("[server]\nmotd = \"before\"\n");
    let mut alice = server.join("alice").await;
    let hup = || Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("kill");

    assert!(hup().success());
    assert!(
        wait_for_log(&server, "SIGHUP: configuration re-read, no changes").await,
        "{}",
        server.log_text()
    );

    // Edit the file the server was started with; the change is reported, not applied.
    let config = server.dir.join("relaychat.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("motd = \"before\"", "motd = \"after\"");
    std::fs::write(&config, text).unwrap();
    assert!(hup().success());
    assert!(wait_for_log(&server, "restart: server.motd").await, "{}", server.log_text());

    // A broken file is reported and ignored.
    std::fs::write(&config, "[server\nport = ").unwrap();
    assert!(hup().success());
    assert!(wait_for_log(&server, "SIGHUP: the configuration does not load").await, "{}", server.log_text());

    let (head, body) = http_get(server.http, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200") && body == "ok", "{head}");
    alice.chat("still connected").await;
    assert_eq!(alice.recv_type("chat").await["text"], "still connected");
    let (status, _) = server.terminate();
    assert!(status.success(), "exit status after SIGHUPs and SIGTERM: {status}");
}
