//! The self-test: a real allocation through the relay's advertised address, and a packet sent
//! through it.
//!
//! With the TURN port free, doctor starts the integrated relay in-process with the configured
//! settings (same listen address, relay address, port range, peer policy) and its own presence,
//! in which one user, `relaychat-doctor`, counts as in voice. So the live-session rule stays on
//! exactly as configured and is exercised, not switched off. Two clients allocate with REST
//! credentials made from the secret, and one sends to the other's relayed address: the path of
//! a relayed call, including the "own relays" peer policy.
//!
//! With the port held by a running relaychat, doctor cannot vouch for anyone's presence there:
//! it asks that relay for an allocation anyway; the answer (success, or the live-session rule's
//! 401 "Not in voice chat", given only after the credential's HMAC checked out) still proves the relay answers and the secret matches.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use webrtc_util::Conn;

use super::addresses::{is_local, RelayAddresses};
use super::ports::{connect_addr, Occupancy};
use super::report::Finding;
use crate::config::Settings;
use crate::presence::VoicePresence;
use crate::turn::credentials::issue;

/// The user doctor's credentials name.
pub const DOCTOR_USER: &str = "relaychat-doctor";
/// How long one TURN exchange may take before the self-test gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const CHECK: &str = "turn self-test";

pub async fn run(settings: &Settings, relay: Option<&RelayAddresses>, occupied: &Occupancy) -> Vec<Finding> {
    let turn = &settings.turn;
    if !turn.enabled {
        if turn.external_servers.is_empty() {
            return vec![];
        }
        return vec![Finding::warn(
            CHECK,
            "external TURN servers are not tested by doctor: try them with turnutils_uclient and their secret",
        )];
    }
    let Some(relay) = relay else {
        return vec![Finding::fail(CHECK, "skipped: the relay address is unknown (see above)")];
    };
    let (secret, secret_note) = match secret(settings) {
        Ok(found) => found,
        Err(e) => return vec![Finding::fail(CHECK, format!("cannot read the TURN secret: {e}"))],
    };
    if occupied.turn_in_use {
        if !occupied.running_relaychat {
            return vec![Finding::fail(
                CHECK,
                "skipped: the TURN port is held by another program (see above)",
            )];
        }
        return vec![probe_running(relay, &secret, &turn.realm).await];
    }
    in_process(settings, relay, secret, &secret_note).await
}

/// `[turn] secret`, else the generated `data_dir/turn_secret`, else (first start still to come)
/// a throwaway one: doctor never writes into the data directory.
fn secret(settings: &Settings) -> std::io::Result<(Vec<u8>, String)> {
    let configured = settings.turn.secret.trim();
    if !configured.is_empty() {
        return Ok((configured.as_bytes().to_vec(), "the configured secret".into()));
    }
    let path = settings.server.data_dir.join(crate::turn::SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().as_bytes().to_vec(), format!("the secret in {}", path.display())))
        }
        Ok(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is empty", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            hex::encode(rand::random::<[u8; 32]>()).into_bytes(),
            "a temporary secret (the server generates its own at first start)".into(),
        )),
        Err(e) => Err(e),
    }
}

/// The address to send TURN requests to: the advertised one when it is on this machine (the
/// real path), else the listener's own address (a NATed address is not tried from inside).
fn target(relay: &RelayAddresses, port: u16) -> (SocketAddr, Option<String>) {
    if is_local(relay.advertised_ip) {
        return (SocketAddr::new(relay.advertised_ip, port), None);
    }
    let fallback = connect_addr(SocketAddr::new(relay.listen.ip(), port));
    let fallback =
        if relay.listen.ip().is_unspecified() { SocketAddr::new(relay.relay_ip, port) } else { fallback };
    (
        fallback,
        Some(format!(
            "; the advertised {} is not on this machine, so it was reached via {} instead: test the public path from another network",
            relay.advertised_ip,
            fallback.ip()
        )),
    )
}

async fn client(server: SocketAddr, secret: &[u8], realm: &str) -> anyhow::Result<turn::client::Client> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let conn = Arc::new(UdpSocket::bind(bind).await?);
    let credential = issue(secret, DOCTOR_USER, crate::time::unix_now() + 600);
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: credential.username,
        password: credential.credential,
        realm: realm.to_string(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await?;
    client.listen().await?;
    Ok(client)
}

async fn allocate(client: &turn::client::Client) -> anyhow::Result<impl Conn> {
    match tokio::time::timeout(STEP_TIMEOUT, client.allocate()).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer within {} s", STEP_TIMEOUT.as_secs()),
    }
}

async fn in_process(
    settings: &Settings,
    relay: &RelayAddresses,
    secret: Vec<u8>,
    secret_note: &str,
) -> Vec<Finding> {
    let presence = Arc::new(VoicePresence::new());
    presence.joined(DOCTOR_USER);
    let mut handle = match crate::turn::start_relay(settings, secret.clone(), presence).await {
        Ok(handle) => handle,
        Err(e) => return vec![Finding::fail(CHECK, format!("the relay does not start: {e}"))],
    };
    let (server, note) = target(relay, handle.udp_addr.port());
    let started = Instant::now();
    let outcome =
        two_allocations_and_a_packet(server, &secret, &settings.turn.realm, relay.advertised_ip).await;
    let finding = match outcome {
        Ok(Exchange { first, second, delivered }) => {
            let how = format!(
                "in-process relay (doctor's own user counted as in voice, live-session rule as configured), {secret_note}: allocated {first} and {second} through {server}",
            );
            let note = note.unwrap_or_default();
            let took = started.elapsed().as_millis();
            if delivered {
                Finding::ok(CHECK, format!("{how}, and a packet went from one to the other through the relay ({took} ms in all){note}"))
            } else {
                Finding::ok(CHECK, format!("{how} ({took} ms){note}"))
            }
        }
        Err(e) => Finding::fail(
            CHECK,
            format!("through {server}: {e:#}; check [turn] listen, relay_ip, external_ip and the firewall (UDP {} and the relay range)", server.port()),
        ),
    };
    let mut findings = vec![finding];
    if settings.server.tls.is_enabled() {
        findings.push(tls_self_test(settings, relay, &mut handle).await);
    }
    handle.close().await;
    findings
}

/// Starts TURN over TLS on the in-process relay (as the server does, with the same files) and
/// asks it for a Binding through a TLS handshake.
async fn tls_self_test(
    settings: &Settings,
    relay: &RelayAddresses,
    handle: &mut crate::turn::RelayHandle,
) -> Finding {
    const TLS_CHECK: &str = "turn tls self-test";
    let tls = &settings.server.tls;
    let Ok(source) = crate::tls::TlsConfigSource::load(tls.cert_file.as_ref(), tls.key_file.as_ref()) else {
        return Finding::fail(TLS_CHECK, "skipped: the TLS files do not load (see above)");
    };
    let listen = match settings.turn_config() {
        Ok(config) => config.tls_listen,
        Err(e) => return Finding::fail(TLS_CHECK, e.to_string()),
    };
    let port = match handle.start_tls(listen, move || source.current()).await {
        Ok(addr) => addr.port(),
        Err(e) => return Finding::fail(TLS_CHECK, format!("TURN over TLS does not start: {e}")),
    };
    let (server, note) = target(relay, port);
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || super::turn_tls::binding_over_tls(server)).await {
        Ok(Ok(mapped)) => Finding::ok(
            TLS_CHECK,
            format!(
                "{server} completed a TLS handshake and answered a STUN Binding (mapped {mapped}) in {} ms{}",
                started.elapsed().as_millis(),
                note.unwrap_or_default()
            ),
        ),
        Ok(Err(e)) => Finding::fail(TLS_CHECK, format!("through {server}: {e:#}")),
        Err(e) => Finding::fail(TLS_CHECK, format!("the check did not finish: {e}")),
    }
}

struct Exchange {
    first: SocketAddr,
    second: SocketAddr,
    /// Whether data was sent through (only when the advertised address is local: sending to a
    /// NATed address would leave the machine).
    delivered: bool,
}

async fn two_allocations_and_a_packet(
    server: SocketAddr,
    secret: &[u8],
    realm: &str,
    advertised: IpAddr,
) -> anyhow::Result<Exchange> {
    use anyhow::Context;
    let alice = client(server, secret, realm).await.context("client")?;
    let bob = client(server, secret, realm).await.context("client")?;
    let result = async {
        let a = allocate(&alice).await.context("Allocate")?;
        let b = allocate(&bob).await.context("second Allocate")?;
        let (first, second) = (a.local_addr()?, b.local_addr()?);
        for relayed in [first, second] {
            anyhow::ensure!(
                relayed.ip() == advertised,
                "the relay answered with relayed address {relayed}, not the advertised {advertised}"
            );
        }
        if !is_local(advertised) {
            return Ok(Exchange { first, second, delivered: false });
        }
        // A relay forwards only from peers its allocation has a permission for, and the crate's
        // client installs one on first send: so the receiver sends first (as in a call, where
        // both sides do), and early packets may race the permissions.
        b.send_to(b"relaychat doctor", first).await.context("send through the relay")?;
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            a.send_to(b"relaychat doctor", second).await.context("send through the relay")?;
            match tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if &buf[..n] == b"relaychat doctor" && from == first => break,
                Ok(Ok(_)) | Err(_) if Instant::now() < deadline => continue,
                Ok(Err(e)) => anyhow::bail!("receiving through the relay: {e}"),
                _ => anyhow::bail!(
                    "allocations work, but a packet sent from {first} to {second} never arrived: is UDP to the relay ports firewalled on this machine?"
                ),
            }
        }
        Ok(Exchange { first, second, delivered: true })
    }
    .await;
    let _ = alice.close().await;
    let _ = bob.close().await;
    result
}

/// Against a running relaychat: the answer to a signed Allocate shows the relay is there and
/// our credential checked out.
async fn probe_running(relay: &RelayAddresses, secret: &[u8], realm: &str) -> Finding {
    let (server, note) = target(relay, relay.listen.port());
    let note = note.unwrap_or_default();
    let client = match client(server, secret, realm).await {
        Ok(client) => client,
        Err(e) => return Finding::fail(CHECK, format!("cannot set up a TURN client: {e}")),
    };
    let finding = match allocate(&client).await {
        Ok(conn) => Finding::ok(
            CHECK,
            format!("the running relay allocated {} for doctor through {server}{note}", conn.local_addr().map_or("?".into(), |a| a.to_string())),
        ),
        // Our relay checks the credential's HMAC before the live-session rule, and answers the
        // latter with its own reason phrase: so this 401 proves the secret matches.
        Err(e) if e.to_string().contains("Not in voice chat") => Finding::warn(
            CHECK,
            format!("the running relay at {server} answers and accepted doctor's credential, but refused the allocation: doctor is not in voice there (require_live_session). Stop the server and run doctor again for the full self-test{note}"),
        ),
        Err(e) if e.to_string().contains("401") => Finding::fail(
            CHECK,
            format!("the running relay at {server} refused doctor's credential ({e}): it uses another secret or realm than this configuration"),
        ),
        Err(e) => Finding::fail(CHECK, format!("the running relay at {server}: {e:#}")),
    };
    let _ = client.close().await;
    finding
}
