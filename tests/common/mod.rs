//! Black-box test harness: starts the real `relaychat` binary on ephemeral ports with a config
//! written to a temporary directory, and talks to it with real WebSocket clients.
//!
//! Submodules, for the voice tests: `ice` (TURN credentials checked independently), `voice`
//! (frame helpers for the room and its signaling), `sdp` (SDP and candidate fixtures).
#![allow(dead_code)]

pub mod ice;
pub mod sdp;
pub mod voice;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A loopback port free for both TCP and UDP right now, below the kernel's ephemeral range
/// (32768 and up by default): for a test that must name its ports in a config file. A port
/// from `bind(0)` is an ephemeral one, which any test's outgoing connection may take between
/// our check and the server's bind (seen: the TURN listener's TCP side on a "free" UDP port).
pub fn fixed_port() -> u16 {
    use std::net::{TcpListener, UdpSocket};
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut candidate = seed ^ std::process::id().rotate_left(16);
    for _ in 0..1000 {
        // A small xorshift step: spread over 10000-19999 (the tests' relay port ranges are
        // 23000 and up), no extra dependency.
        candidate ^= candidate << 13;
        candidate ^= candidate >> 17;
        candidate ^= candidate << 5;
        let port = 10_000 + (candidate % 10_000) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no port free for TCP and UDP between 10000 and 19999");
}

/// Test defaults: loopback only, ephemeral ports, limits loose enough for many local clients.
pub const BASE_CONFIG: &str = r#"
[server]
host = "127.0.0.1"
port = 0
motd = "Welcome"

[limits]
total_max_connections = 500
max_connections_per_ip = 200
max_connections_per_window = 1000

[limits.churn_guard]
enabled = false

[turn]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
relay_ip = "127.0.0.1"
"#;

pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Server {
    child: Option<Child>,
    pub http: SocketAddr,
    pub turn_udp: Option<SocketAddr>,
    pub turn_tcp: Option<SocketAddr>,
    pub dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Merges `extra` TOML over `BASE_CONFIG` (tables by name; later keys win).
pub fn merged_config(extra: &str, data_dir: &Path) -> String {
    let mut base: toml::Table = BASE_CONFIG.parse().expect("base config");
    let extra: toml::Table = extra.parse().expect("test config is valid TOML");
    merge(&mut base, extra);
    let server = base.entry("server").or_insert_with(|| toml::Value::Table(Default::default()));
    if let toml::Value::Table(server) = server {
        server.entry("data_dir").or_insert_with(|| toml::Value::String(data_dir.display().to_string()));
    }
    toml::to_string(&base).expect("serializable config")
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Server {
    /// Starts a server with `extra` config in a fresh temporary directory.
    pub fn start(extra: &str) -> Server {
        let tempdir = tempfile::tempdir().expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let mut server = Server::start_in(&dir, extra);
        server._tempdir = Some(tempdir);
        server
    }

    /// Starts a server whose data lives in `dir` (reuse it to test restarts).
    pub fn start_in(dir: &Path, extra: &str) -> Server {
        let config_path = dir.join("relaychat.toml");
        std::fs::write(&config_path, merged_config(extra, &dir.join("data"))).expect("write config");
        Server::start_with_args(dir, &["--config", config_path.to_str().expect("utf-8 path")])
    }

    pub fn start_with_args(dir: &Path, args: &[&str]) -> Server {
        Server::start_with_args_and_env(dir, args, &[])
    }

    /// Like `start_with_args`, with extra environment variables (e.g. `RELAYCHAT__SERVER__HOST`
    /// for a settings.json that has no such key).
    pub fn start_with_args_and_env(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relaychat"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RELAYCHAT_LOG", "info,relaychat=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relaychat");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = ready_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut http, mut turn_udp, mut turn_tcp) = (None, None, None);
        while http.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = ready_rx.recv_timeout(remaining) else {
                let _ = child.kill();
                panic!("relaychat did not start; log:\n{}", log.lock().unwrap().join("\n"));
            };
            if let Some(addr) = after(&line, "turn listening on udp ") {
                turn_udp = addr.parse().ok();
                turn_tcp = line.split(" and tcp ").nth(1).and_then(|a| a.trim().parse().ok());
            }
            if let Some(addr) = after(&line, "http listening on ") {
                http = addr.parse().ok();
            }
        }
        Server {
            child: Some(child),
            http: http.expect("parsed http address"),
            turn_udp,
            turn_tcp,
            dir: dir.to_path_buf(),
            _tempdir: None,
            log,
        }
    }

    pub fn url(&self, username: Option<&str>) -> String {
        match username {
            Some(name) => format!("ws://{}/?username={}", self.http, name),
            None => format!("ws://{}/", self.http),
        }
    }

    /// Connects as `name` and reads the whole welcome (token .. "<name> has joined.").
    pub async fn join(&self, name: &str) -> Client {
        let mut client = Client::connect(&self.url(Some(name))).await;
        client.expect_system(&format!("{name} has joined.")).await;
        client
    }

    pub async fn get_json(&self, path: &str) -> (Value, String) {
        let (status_and_headers, body) = http_get(self.http, path).await;
        (serde_json::from_str(&body).unwrap_or(Value::Null), status_and_headers)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("relaychat did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].split_whitespace().next().unwrap_or(""))
}

/// Resident memory of process `pid` in KiB (0 when /proc cannot tell).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 GET; returns (status line + headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("timely")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub token: String,
}

impl Client {
    /// Connects and reads the session token (the first frame).
    pub async fn connect(url: &str) -> Client {
        Client::connect_with_request(url.to_string()).await
    }

    pub async fn connect_with_request<R>(request: R) -> Client
    where
        R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    {
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
        let mut client = Client { ws, token: String::new() };
        let first = client.recv().await;
        if first["type"] == "session-token" {
            client.token = first["token"].as_str().expect("token").to_string();
        } else {
            // Refused before a token (limits): keep the frame visible to the test.
            client.token = format!("refused:{first}");
        }
        client
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn next_event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await;
            match next {
                Err(_) => return Event::Timeout,
                Ok(None) => return Event::Closed(None),
                Ok(Some(Err(_))) => return Event::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Event::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => return Event::Closed(frame),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Skips frames until one of `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Skips frames until a `system` frame with exactly `text`.
    pub async fn expect_system(&mut self, text: &str) {
        loop {
            let message = self.recv().await;
            if message["type"] == "system" && message["text"] == text {
                return;
            }
        }
    }

    /// The very next frame must be `system` with `text`.
    pub async fn next_system(&mut self, text: &str) {
        let message = self.recv().await;
        assert_eq!(message, json!({"type": "system", "text": text}));
    }

    /// Waits for the server to close the socket; returns the close frame.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_event().await {
                Event::Closed(frame) => return frame,
                Event::Timeout => panic!("server did not close the connection"),
                Event::Json(_) => continue,
            }
        }
    }

    /// Asserts nothing (but maybe pings) arrives for `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await
        {
            panic!("expected silence, got {text}");
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends `{"type": kind, "token": <ours>, ...fields}`.
    pub async fn send(&mut self, kind: &str, fields: Value) {
        let mut message = json!({"type": kind, "token": self.token});
        if let (Value::Object(m), Value::Object(f)) = (&mut message, fields) {
            m.extend(f);
        }
        self.send_json(message).await;
    }

    pub async fn chat(&mut self, content: &str) {
        self.send("chat", json!({"content": content})).await;
    }
}

#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<CloseFrame>),
    Timeout,
}

/// ISO-8601 with milliseconds and Z, like `Date.toISOString()`.
pub fn is_iso_timestamp(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// Sends a ping; the very next frame must be the pong. Proves the connection is up and that the
/// server had nothing else queued for this client: a barrier instead of a sleep, since the hub
/// handles messages one at a time and each connection's frames go out in order, so everything
/// the server was going to send this client before the pong is already in front of it.
pub async fn expect_only_pong(client: &mut Client) {
    client.send("ping", json!({})).await;
    let message = client.recv().await;
    assert_eq!(message["type"], "pong", "expected nothing before the pong, got {message}");
}

/// Registers and logs in `name` (auth mode); returns the welcomed client.
pub async fn login(server: &Server, name: &str) -> Client {
    let mut client = Client::connect(&server.url(None)).await;
    client
        .expect_system(
            "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
        )
        .await;
    client.chat(&format!("/register {name} password123")).await;
    client.next_system("Registered. Please /login.").await;
    client.chat(&format!("/login {name} password123")).await;
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

/// Creates `name` as an admin the way an operator does (`relaychat user add NAME --admin`, the
/// password on stdin), logs in with `password123` and returns the welcomed client. Registering
/// a name, even one listed in `[chat] admins`, never makes an admin.
pub async fn login_admin(server: &Server, name: &str) -> Client {
    let added = run_cli(server, &["user", "add", name, "--admin"], "password123\n");
    assert!(added.status.success(), "relaychat user add: {}", String::from_utf8_lossy(&added.stderr));
    let mut client = Client::connect(&server.url(None)).await;
    client.recv_type("heartbeat-config").await;
    client.chat(&format!("/login {name} password123")).await;
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

/// Runs an operator subcommand (`relaychat --config <the server's config> ARGS`) with `stdin`
/// piped in, as the operator would beside the running server.
pub fn run_cli(server: &Server, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let config = server.dir.join("relaychat.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaychat");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("relaychat exits")
}
