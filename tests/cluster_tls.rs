//! Cluster mode over TLS to Redis (`rediss://`): a private `redis-server` with only a TLS port
//! (`--port 0 --tls-port`), certificates made here by a test CA, and relaychat nodes as real
//! processes. Chat crosses nodes over TLS; the operator CLI writes invites over it; a node told
//! to trust another CA refuses to start and says why; with `--tls-auth-clients yes` a node with
//! the CA's client certificate works and one without is refused.

mod cluster_support;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{alice_and_bob, cluster_config, readyz, start_node, Redis, RedisTls};
use common::{merged_config, run_cli};

/// A test CA and what it signed: Redis's server certificate (for 127.0.0.1) and a client
/// certificate for the nodes; PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_ca(dir.path(), "ca");
        let issuer = rcgen::Issuer::new(ca.0, ca.1);
        write_leaf(dir.path(), "redis", &["127.0.0.1", "localhost"], &issuer);
        write_leaf(dir.path(), "client", &["relaychat-node"], &issuer);
        // A CA that signed nothing here: what a node trusts by mistake.
        write_ca(dir.path(), "other-ca");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn redis(&self, auth_clients: bool) -> RedisTls {
        RedisTls {
            cert_file: self.path("redis.pem"),
            key_file: self.path("redis.key"),
            ca_file: self.path("ca.pem"),
            auth_clients,
        }
    }

    /// `[cluster]` lines trusting `ca` (a file name here), with the client certificate or not.
    fn node_tls(&self, ca: &str, client_cert: bool) -> String {
        let mut lines = format!("redis_ca_file = {:?}\n", self.path(ca).display().to_string());
        if client_cert {
            lines += &format!(
                "redis_cert_file = {:?}\nredis_key_file = {:?}\n",
                self.path("client.pem").display().to_string(),
                self.path("client.key").display().to_string()
            );
        }
        lines
    }
}

fn write_ca(dir: &Path, name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("relaychat test {name}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    (params, key)
}

fn write_leaf(dir: &Path, name: &str, names: &[&str], issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// Runs a node that is expected to stop at start; returns its exit success and its log.
fn run_until_exit(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relaychat.toml");
    std::fs::write(&path, merged_config(config, &dir.path().join("data"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaychat");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            let output = child.wait_with_output().expect("output");
            return (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("relaychat kept running; log:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_crosses_nodes_over_tls_and_the_cli_uses_it_too() {
    let pki = Pki::new();
    let redis = Redis::start_tls(pki.redis(false));
    assert!(redis.url().starts_with("rediss://"));
    let (nodes, mut alice, mut bob) = alice_and_bob(&redis, &pki.node_tls("ca.pem", false)).await;

    alice.chat("sent over TLS to Redis").await;
    let message = bob.recv_type("chat").await;
    assert_eq!(message["username"], "alice");
    assert_eq!(message["text"], "sent over TLS to Redis");
    // The sender gets it back from the shared log too (read over TLS on node A).
    assert_eq!(alice.recv_type("chat").await["text"], "sent over TLS to Redis");

    // The operator CLI builds its own client from the same settings: an invite it creates over
    // TLS shows in the cluster's list, also read over TLS.
    let created = run_cli(&nodes[0], &["invite", "--base-url", "https://chat.example.org/"], "");
    assert!(created.status.success(), "invite: {}", String::from_utf8_lossy(&created.stderr));
    let link = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let token =
        link.strip_prefix("https://chat.example.org/?invite=").unwrap_or_else(|| panic!("link: {link}"));
    let id = token.split('.').nth(1).expect("invite id in the token").to_string();
    let listed = run_cli(&nodes[1], &["invite", "--list"], "");
    assert!(listed.status.success(), "invite --list: {}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id), "{link} not in the list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_trusting_the_wrong_ca_refuses_to_start_and_says_why() {
    let pki = Pki::new();
    let redis = Redis::start_tls(pki.redis(false));

    // With TURN on and no configured secret, start-up reads the shared TURN secret from Redis:
    // the handshake fails and the node stops with the certificate problem in its message.
    let (started, log) =
        run_until_exit(&cluster_config(&redis, "node-wrong-ca", &pki.node_tls("other-ca.pem", false)));
    assert!(!started, "exited successfully; log:\n{log}");
    assert!(log.contains("cannot read the shared TURN secret"), "log:\n{log}");
    let trusted = pki.path("other-ca.pem").display().to_string();
    assert!(log.contains(&format!("its certificate checked against {trusted}")), "log:\n{log}");
    assert!(log.contains("invalid peer certificate: UnknownIssuer"), "log:\n{log}");

    // With a TURN secret configured the node does not need Redis to start, and stays not ready
    // (as with Redis away), logging the same certificate problem.
    let config = cluster_config(&redis, "node-wrong-ca-2", &pki.node_tls("other-ca.pem", false))
        + "[turn]\nsecret = \"a-configured-turn-secret-for-this-test\"\n";
    let node = common::Server::start(&config);
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = |log: String| {
        log.lines().any(|line| {
            line.contains("WARN")
                && line.contains("cannot connect to Redis")
                && line.contains("UnknownIssuer")
        })
    };
    while !warned(node.log_text()) {
        assert!(Instant::now() < deadline, "no certificate error logged:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readyz(node.http).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_requiring_client_certificates_admits_only_nodes_with_one() {
    let pki = Pki::new();
    let redis = Redis::start_tls(pki.redis(true));

    let node = start_node(&redis, "node-with-cert", &pki.node_tls("ca.pem", true)).await;
    let mut carol = node.join("carol").await;
    carol.chat("mutual TLS").await;
    assert_eq!(carol.recv_type("chat").await["text"], "mutual TLS");

    let (started, log) =
        run_until_exit(&cluster_config(&redis, "node-without-cert", &pki.node_tls("ca.pem", false)));
    assert!(!started, "exited successfully; log:\n{log}");
    assert!(log.contains("cannot read the shared TURN secret"), "log:\n{log}");
    assert!(log.to_lowercase().contains("certificate"), "log:\n{log}");
}
