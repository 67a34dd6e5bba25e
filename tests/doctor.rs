//! `relaychat doctor` against the real binary: a good loopback configuration passes with every
//! line ok; each broken one (an external_ip not on this machine, ports in use, an expired or
//! mismatched certificate, relay-only without any relay) gets its FAIL line and exit status 1;
//! a running relaychat on the ports is recognised as such. Also `relaychat healthcheck`.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;

use common::{merged_config, Server};

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn line(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(&format!("{check}: "))))
            .unwrap_or_else(|| panic!("no {check:?} line in:\n{}\n{}", self.stdout, self.stderr))
    }
    fn assert_line(&self, level: &str, check: &str, words: &str) {
        let line = self.line(check);
        assert!(
            line.starts_with(level) && line.contains(words),
            "want {level} {check} with {words:?}, got:\n{}",
            self.stdout
        );
    }
}

/// Runs `relaychat [--config] <command>` with `extra` merged over the test base config.
fn run_in(dir: &Path, extra: &str, command: &str) -> Outcome {
    let config = dir.join("relaychat.toml");
    std::fs::write(&config, merged_config(extra, &dir.join("data"))).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["--config", config.to_str().unwrap(), command])
        .env("RELAYCHAT_LOG", "warn")
        .output()
        .expect("run relaychat");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn doctor(extra: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    run_in(dir.path(), extra, "doctor")
}

/// A certificate for `names`, valid from `from` to `until` (years), in `dir`; the TOML that uses it.
fn certificate(dir: &Path, names: &[&str], from: i32, until: i32) -> String {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    )
}

/// A sound [turn] section. `base`: a relay port range of 100 below the kernel's ephemeral range
/// (so other tests' sockets stay out of it), its own per test (the tests run in parallel, and
/// doctor binds every port of the range).
fn good_turn(base: u16) -> String {
    turn_section(base, base + 99)
}

fn turn_section(min_port: u16, max_port: u16) -> String {
    format!(
        "[turn]\npublic_host = \"localhost\"\nsecret = \"doctor-test-secret\"\nmin_port = {min_port}\nmax_port = {max_port}\nmax_allocations_total = 50\n"
    )
}

#[test]
fn a_good_loopback_configuration_passes_with_every_line_ok() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), &["localhost"], 2020, 2090);
    let out = run_in(dir.path(), &format!("{tls}{}", good_turn(23100)), "doctor");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for line in out.stdout.lines() {
        assert!(line.starts_with("ok   "), "not ok: {line}\n{}", out.stdout);
    }
    out.assert_line("ok", "relay address", "advertised as 127.0.0.1");
    out.assert_line("ok", "http port", "a free port is picked");
    out.assert_line("ok", "turn port", "");
    out.assert_line("ok", "turn tls port", "");
    out.assert_line("ok", "relay ports", "23100-23199 on 127.0.0.1: 100 of 100 ports free");
    out.assert_line("ok", "tls files", "fit together");
    out.assert_line("ok", "tls dates", "valid until 2090-01-01");
    out.assert_line("ok", "tls name", "names localhost");
    out.assert_line("ok", "clock", "");
    out.assert_line("ok", "force_relay", "integrated TURN relay");
    out.assert_line("ok", "ipv6", "TURN listens on IPv4 only ([turn] listen6 not set)");
    // The self-test really went through the relay: two allocations and a packet between them.
    out.assert_line("ok", "turn self-test", "and a packet went from one to the other through the relay");
    out.assert_line("ok", "turn tls self-test", "completed a TLS handshake and answered a STUN Binding");
    assert!(out.stderr.contains("no check failed"), "{}", out.stderr);
}

#[test]
fn the_ipv6_listener_is_reported_and_one_on_a_foreign_address_fails() {
    let out = doctor(&format!("{}listen6 = \"[::1]:0\"\n", good_turn(24000)));
    out.assert_line("ok", "ipv6", "IPv6 listener [::1]:0 (UDP and TCP) is free; clients handed an IPv4 address also get turn:[::1]:0 URLs");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let out = doctor(&format!("{}listen6 = \"[2001:db8::1]:3478\"\n", good_turn(24100)));
    out.assert_line("FAIL", "ipv6", "2001:db8::1 is not an address of this machine");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
}

#[test]
fn an_external_ip_not_on_this_machine_fails() {
    // TEST-NET-2: never an address of this machine, and not one a NAT could forward; nothing is
    // sent to it (the self-test reaches the relay on its local address instead).
    let out = doctor(&format!("{}external_ip = \"198.51.100.77\"\n", good_turn(23200)));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line(
        "FAIL",
        "relay address",
        "198.51.100.77 ([turn] external_ip) is not an address of this machine",
    );
    out.assert_line("ok", "turn self-test", "the advertised 198.51.100.77 is not on this machine");
    assert!(out.stderr.contains("1 check(s) failed"), "{}", out.stderr);
}

#[test]
fn ports_in_use_by_another_program_fail() {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = http.local_addr().unwrap().port();
    let turn = UdpSocket::bind("127.0.0.1:0").unwrap();
    let turn_port = turn.local_addr().unwrap().port();
    let out = doctor(&format!(
        "[server]\nport = {http_port}\n{}listen = \"127.0.0.1:{turn_port}\"\n",
        good_turn(23300)
    ));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line(
        "FAIL",
        "http port",
        &format!("HTTP port 127.0.0.1:{http_port} is in use by another program"),
    );
    out.assert_line(
        "FAIL",
        "turn port",
        &format!("TURN port 127.0.0.1:{turn_port} is in use by another program"),
    );
    out.assert_line("FAIL", "turn self-test", "held by another program");
}

#[test]
fn an_expired_certificate_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), &["localhost"], 2019, 2021);
    let out = run_in(dir.path(), &format!("{tls}{}", good_turn(23400)), "doctor");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "tls dates", "expired on 2021-01-01");
    out.assert_line("ok", "tls name", "names localhost");
}

#[test]
fn a_certificate_for_another_name_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), &["other.example.org"], 2020, 2090);
    let out = run_in(dir.path(), &format!("{tls}{}", good_turn(23500)), "doctor");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "tls name", "does not name localhost");
    out.assert_line("ok", "tls dates", "valid until");
}

#[test]
fn a_key_that_does_not_fit_the_certificate_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), &["localhost"], 2020, 2090);
    std::fs::write(dir.path().join("key.pem"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let out = run_in(dir.path(), &format!("{tls}{}", good_turn(23600)), "doctor");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "tls files", "do not fit together");
}

#[test]
fn force_relay_without_any_relay_fails() {
    let out = doctor("[webrtc]\nforce_relay = true\n[turn]\nenabled = false\n");
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "force_relay", "no call can connect");
    assert!(!out.stdout.contains("turn self-test"), "{}", out.stdout);
}

#[test]
fn a_running_relaychat_on_the_ports_is_recognised_and_probed() {
    let dir = tempfile::tempdir().unwrap();
    // Fixed ports, so doctor (reading the same file) looks at the same listeners.
    let http_port = common::fixed_port();
    let turn_port = common::fixed_port();
    let extra =
        format!("[server]\nport = {http_port}\n{}listen = \"127.0.0.1:{turn_port}\"\n", good_turn(23700));
    let mut server = Server::start_in(dir.path(), &extra);
    let out = run_in(dir.path(), &extra, "doctor");
    out.assert_line("warn", "http port", "in use by a running relaychat");
    out.assert_line("warn", "turn port", "presumably by the running relaychat");
    // The running relay checked doctor's credential (same secret) and refused the allocation
    // only because nobody named relaychat-doctor is in voice there.
    out.assert_line("warn", "turn self-test", "accepted doctor's credential, but refused the allocation");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);

    let health = run_in(dir.path(), &extra, "healthcheck");
    assert_eq!(health.code, Some(0), "{}", health.stderr);
    server.terminate();
    let health = run_in(dir.path(), &extra, "healthcheck");
    assert_eq!(health.code, Some(1), "a stopped server is not healthy");
    assert!(health.stderr.contains("no healthy answer from /healthz"), "{}", health.stderr);
}

#[test]
fn healthcheck_speaks_tls_when_tls_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path(), &["chat.example.org"], 2020, 2090);
    let http_port = common::fixed_port();
    let extra = format!("{tls}[server]\nport = {http_port}\n");
    let mut server = Server::start_in(dir.path(), &extra);
    let health = run_in(dir.path(), &extra, "healthcheck");
    assert_eq!(health.code, Some(0), "{}", health.stderr);
    server.terminate();
}

#[test]
fn a_relay_range_held_by_others_fails_and_a_small_one_warns() {
    let held: Vec<UdpSocket> = (23800..23805).map(|p| UdpSocket::bind(("127.0.0.1", p)).unwrap()).collect();
    let out = doctor(&turn_section(23800, 23804));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "relay ports", "23800-23804 on 127.0.0.1: every port is in use");
    // With the ports held, the self-test's allocations fail too, and say so.
    out.assert_line("FAIL", "turn self-test", "Allocate");
    drop(held);
    let out = doctor(&turn_section(23800, 23809));
    out.assert_line("warn", "relay ports", "10 free ports for up to 50 allocations");
    assert_eq!(out.code, Some(0), "a warning alone does not fail: {}", out.stdout);
}

#[test]
fn a_relay_ip_not_on_this_machine_fails() {
    let out = doctor(&format!("{}relay_ip = \"198.51.100.78\"\n", good_turn(23900)));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.assert_line("FAIL", "relay address", "relay_ip 198.51.100.78 is not an address of this machine");
}

/// The container's HEALTHCHECK, exactly as deploy/Containerfile writes it (exec form, no shell:
/// the old one used bash's /dev/tcp under dash and was always unhealthy), run against a real
/// server with the binary and config paths mapped to this test's.
#[test]
fn the_containerfile_healthcheck_command_works() {
    let containerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Containerfile")).unwrap();
    let at = containerfile.find("HEALTHCHECK").expect("a HEALTHCHECK");
    let cmd = &containerfile[at..];
    let json = &cmd[cmd.find("CMD [").expect("exec-form CMD") + 4..];
    let json = &json[..=json.find(']').unwrap()];
    let argv: Vec<String> = serde_json::from_str(json).expect("a JSON array");
    assert_eq!(argv[0], "/usr/local/bin/relaychat", "{argv:?}");
    assert_eq!(argv.last().unwrap(), "healthcheck", "{argv:?}");
    let config_at = argv.iter().position(|a| a == "--config").expect("the config the server reads") + 1;
    assert_eq!(argv[config_at], "/etc/relaychat/relaychat.toml");
    assert!(containerfile
        .contains(r#"ENTRYPOINT ["/usr/local/bin/relaychat", "--config", "/etc/relaychat/relaychat.toml"]"#));

    let dir = tempfile::tempdir().unwrap();
    let http_port = common::fixed_port();
    let mut server = Server::start_in(dir.path(), &format!("[server]\nport = {http_port}\n"));
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_relaychat"))
            .args(argv[1..].iter().map(|a| {
                if a == "/etc/relaychat/relaychat.toml" {
                    dir.path().join("relaychat.toml").display().to_string()
                } else {
                    a.clone()
                }
            }))
            .output()
            .unwrap()
            .status
    };
    assert!(run().success(), "healthy while the server runs");
    server.terminate();
    assert!(!run().success(), "unhealthy once it stopped");
}

/// A network namespace of this test's own: a veth pair with a private address and a default
/// route, like a cloud VM behind 1:1 NAT. Deleted on drop.
struct Netns(String);

impl Netns {
    fn create(private: &str) -> Option<Netns> {
        let name = format!("rc-doctor-{}", std::process::id());
        let ip = |args: &str| Command::new("ip").args(args.split(' ')).status().is_ok_and(|s| s.success());
        if !ip(&format!("netns add {name}")) {
            return None;
        }
        let ns = Netns(name.clone());
        let exec = |args: &str| ip(&format!("netns exec {name} ip {args}"));
        let gateway = private.rsplit_once('.').map(|(net, _)| format!("{net}.1")).unwrap();
        let ok = exec("link add v0 type veth peer name v1")
            && exec(&format!("addr add {private}/24 dev v0"))
            && exec("link set v0 up")
            && exec("link set v1 up")
            && exec("link set lo up")
            && exec(&format!("route add default via {gateway}"));
        assert!(ok, "cannot set up the namespace {name}");
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn behind_nat_a_public_external_ip_is_a_warning_and_the_self_test_uses_the_private_address() {
    let Some(ns) = Netns::create("10.200.7.2") else {
        eprintln!("skipped: creating a network namespace needs root (./scripts/test runs as root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaychat.toml");
    // relay_ip empty: detected from the default route, as on a real VM.
    let extra = "[server]\nhost = \"0.0.0.0\"\n[turn]\nlisten = \"0.0.0.0:0\"\nrelay_ip = \"\"\nexternal_ip = \"203.0.114.10\"\nsecret = \"s\"\nmin_port = 24100\nmax_port = 24199\nmax_allocations_total = 50\n";
    std::fs::write(&config, merged_config(extra, &dir.path().join("data"))).unwrap();
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_relaychat"),
            "--config",
            config.to_str().unwrap(),
            "doctor",
        ])
        .env("RELAYCHAT_LOG", "warn")
        .output()
        .unwrap();
    let out = Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    out.assert_line("warn", "relay address", "advertised 203.0.114.10 (external_ip) is not on this machine, relay sockets on 10.200.7.2: right only if a NAT forwards");
    out.assert_line("ok", "relay ports", "24100-24199 on 10.200.7.2");
    out.assert_line(
        "ok",
        "turn self-test",
        "the advertised 203.0.114.10 is not on this machine, so it was reached via 10.200.7.2",
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
}
