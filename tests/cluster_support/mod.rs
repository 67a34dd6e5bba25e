//! Cluster test support: a private `redis-server` (Debian's package) on a free loopback port in
//! a temporary directory, with the durability the docs ask for (`appendonly yes`,
//! `appendfsync always`, no RDB snapshots), and relaychat nodes pointed at it as real processes.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{http_get, Client, Server};

/// Test presence TTL and heartbeat: short, so a killed node is reaped within seconds.
pub const PRESENCE_TTL_MS: u64 = 2000;
pub const HEARTBEAT_MS: u64 = 400;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<RedisTls>,
}

/// Redis's own TLS (`--port 0 --tls-port`): its certificate and key, the CA it checks client
/// certificates against, and whether it requires one (`--tls-auth-clients yes`).
#[derive(Clone)]
pub struct RedisTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub auth_clients: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis { child: None, port: free_port(), dir, tls: None };
        redis.spawn();
        redis
    }

    /// A Redis that speaks TLS only (no plain port).
    pub fn start_tls(tls: RedisTls) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis { child: None, port: free_port(), dir, tls: Some(tls) };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args(["--tls-auth-clients", if tls.auth_clients { "yes" } else { "no" }]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            return self.tls_cli_ping();
        }
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// `redis-cli --tls` PING, with Redis's own certificate as the client one (same CA), so it
    /// works with `--tls-auth-clients yes` too.
    fn tls_cli_ping(&self) -> bool {
        let Some(tls) = &self.tls else { return false };
        Command::new("redis-cli")
            .args(["--tls", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--cacert")
            .arg(&tls.ca_file)
            .arg("--cert")
            .arg(&tls.cert_file)
            .arg("--key")
            .arg(&tls.key_file)
            .arg("PING")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
    }

    /// SIGKILL: no shutdown save, no goodbye; the AOF is all that survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command with `redis-cli` and returns its output (panics if it cannot run).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (apt-get install redis-server)");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[cluster]` section for a node of this test's cluster.
pub fn cluster_config(redis: &Redis, node: &str, extra: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nnode_id = \"{node}\"\npresence_ttl_ms = {PRESENCE_TTL_MS}\nheartbeat_ms = {HEARTBEAT_MS}\n{extra}",
        redis.url()
    )
}

/// Starts a node and waits until it is ready (it has read the shared state).
pub async fn start_node(redis: &Redis, node: &str, extra: &str) -> Server {
    let server = Server::start(&cluster_config(redis, node, extra));
    wait_ready(server.http, true).await;
    server
}

/// Starts `n` nodes named node-1 .. node-n.
pub async fn start_nodes(redis: &Redis, n: usize, extra: &str) -> Vec<Server> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(start_node(redis, &format!("node-{i}"), extra).await);
    }
    nodes
}

/// Two nodes, alice on the first and bob on the second, each having seen the other arrive.
pub async fn alice_and_bob(redis: &Redis, extra: &str) -> (Vec<Server>, Client, Client) {
    let nodes = start_nodes(redis, 2, extra).await;
    let mut alice = nodes[0].join("alice").await;
    let bob = nodes[1].join("bob").await;
    alice.expect_system("bob has joined.").await;
    (nodes, alice, bob)
}

/// The texts of a `history` frame's messages, oldest first.
pub fn history_texts(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// The status code of `/readyz`.
pub async fn readyz(addr: SocketAddr) -> u16 {
    let (head, _) = http_get(addr, "/readyz").await;
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Waits (up to 15 s) until `/readyz` says ready (`true`) or not (`false`); panics otherwise.
pub async fn wait_ready(addr: SocketAddr, ready: bool) -> Duration {
    let started = Instant::now();
    loop {
        let code = readyz(addr).await;
        if (code == 200) == ready {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "/readyz stayed {code} on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
