//! The control plane of one TURN client: Allocate with the long-term credential dance (401 with
//! REALM+NONCE, then a signed retry), CreatePermission, ChannelBind, Refresh. Each request is a
//! transaction with RFC-style retransmission; a stale nonce (438) is adopted and retried once.
//! The data plane (ChannelData) is in `load.rs`; this file is only used while no load runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use stun::message::{Method, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::credentials::RestCredential;
use super::wire::{build_request, parse_stun, Attr, Auth, Response};

/// `RELAYCHAT_BENCH_TRACE=1` prints every control-plane response (how a 401 loop was found:
/// another TURN server sharing the port through SO_REUSEPORT).
fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RELAYCHAT_BENCH_TRACE").is_some())
}

/// Retransmission schedule: first wait, doubled each time, this many sends in all.
const RTO: Duration = Duration::from_millis(250);
const MAX_SENDS: u32 = 5;

/// One allocated TURN client.
pub struct TurnClient {
    pub sock: Arc<UdpSocket>,
    pub server: SocketAddr,
    pub auth: Option<Auth>,
    pub relayed: SocketAddr,
    /// Allocation lifetime the server granted, seconds.
    pub lifetime: u32,
}

/// Send `method` with `attrs` (signed with `auth` if given) and wait for its response.
/// Packets that are not the response are ignored (nothing else flows during setup).
async fn transact(
    sock: &UdpSocket,
    server: SocketAddr,
    method: Method,
    attrs: &[Attr],
    auth: Option<&Auth>,
) -> anyhow::Result<Response> {
    let (tid, bytes) = build_request(method, attrs.to_vec(), auth)?;
    let mut wait = RTO;
    let mut buf = vec![0u8; 2048];
    for _ in 0..MAX_SENDS {
        sock.send_to(&bytes, server).await.with_context(|| format!("sending {method} to {server}"))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, sock.recv_from(&mut buf)).await {
                Err(_) => break, // retransmit
                Ok(Err(e)) => {
                    // ICMP port unreachable shows up as ECONNREFUSED on Linux: server not there.
                    return Err(anyhow!(e)).with_context(|| format!("{method} to {server}"));
                }
                Ok(Ok((n, _))) => {
                    if let Some(r) = parse_stun(&buf[..n]) {
                        if trace_enabled() {
                            eprintln!(
                                "trace {} <- {} {:?} {:?} {:?} nonce={:?} match={}",
                                sock.local_addr()?,
                                r.method,
                                r.class,
                                r.error_code(),
                                r.error_reason(),
                                r.nonce(),
                                r.transaction_id == tid
                            );
                        }
                        if r.transaction_id == tid {
                            return Ok(r);
                        }
                    }
                }
            }
        }
        wait *= 2;
    }
    bail!("{method} to {server}: no response after {MAX_SENDS} tries")
}

fn describe(r: &Response) -> String {
    format!("{} error {}", r.method, r.error_code().map_or("?".to_string(), |c| c.to_string()))
}

impl TurnClient {
    /// Allocate a UDP relay on `server` for a fresh client socket bound to `local`.
    pub async fn allocate(
        sock: Arc<UdpSocket>,
        server: SocketAddr,
        cred: &RestCredential,
    ) -> anyhow::Result<TurnClient> {
        let attrs = [Attr::RequestedTransportUdp];
        let first = transact(&sock, server, METHOD_ALLOCATE, &attrs, None).await?;
        let (auth, resp) = if first.is_success() {
            (None, first)
        } else if first.error_code() == Some(401) {
            let realm = first.realm().ok_or_else(|| anyhow!("401 without REALM from {server}"))?;
            let nonce = first.nonce().ok_or_else(|| anyhow!("401 without NONCE from {server}"))?;
            let mut auth = Auth::new(&cred.username, &cred.password, &realm, &nonce);
            let mut r = transact(&sock, server, METHOD_ALLOCATE, &attrs, Some(&auth)).await?;
            // 438 (stale nonce) and, under concurrency, a second 401 with a fresh nonce (coturn
            // with several relay threads does this now and then) are answered by signing again.
            for _ in 0..3 {
                if !matches!(r.error_code(), Some(401 | 438)) {
                    break;
                }
                match r.nonce() {
                    Some(n) => {
                        auth =
                            Auth::new(&cred.username, &cred.password, &r.realm().unwrap_or(realm.clone()), &n)
                    }
                    None => break,
                }
                r = transact(&sock, server, METHOD_ALLOCATE, &attrs, Some(&auth)).await?;
            }
            (Some(auth), r)
        } else {
            bail!("unauthenticated Allocate: {}", describe(&first));
        };
        if !resp.is_success() {
            let hint = if resp.error_code() == Some(401) { " (wrong secret or realm?)" } else { "" };
            bail!("Allocate as {}: {}{hint}", cred.username, describe(&resp));
        }
        let relayed =
            resp.relayed_address().ok_or_else(|| anyhow!("Allocate success without XOR-RELAYED-ADDRESS"))?;
        Ok(TurnClient { sock, server, auth, relayed, lifetime: resp.lifetime().unwrap_or(600) })
    }

    /// An authenticated request that must succeed; adopts a new nonce on 438 and retries once.
    async fn request(&mut self, method: Method, attrs: &[Attr]) -> anyhow::Result<Response> {
        let mut r = transact(&self.sock, self.server, method, attrs, self.auth.as_ref()).await?;
        if r.error_code() == Some(438) {
            if let (Some(a), Some(n)) = (self.auth.as_mut(), r.nonce()) {
                a.nonce = n;
            }
            r = transact(&self.sock, self.server, method, attrs, self.auth.as_ref()).await?;
        }
        if !r.is_success() {
            bail!("{}", describe(&r));
        }
        Ok(r)
    }

    pub async fn create_permission(&mut self, peer: SocketAddr) -> anyhow::Result<()> {
        self.request(METHOD_CREATE_PERMISSION, &[Attr::XorPeer(peer)]).await.map(|_| ())
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> anyhow::Result<()> {
        self.request(METHOD_CHANNEL_BIND, &[Attr::ChannelNumber(channel), Attr::XorPeer(peer)])
            .await
            .map(|_| ())
    }

    /// Refresh the allocation; `lifetime_secs = 0` frees it.
    pub async fn refresh(&mut self, lifetime_secs: u32) -> anyhow::Result<()> {
        let r = self.request(METHOD_REFRESH, &[Attr::Lifetime(lifetime_secs)]).await?;
        if lifetime_secs > 0 {
            self.lifetime = r.lifetime().unwrap_or(lifetime_secs);
        }
        Ok(())
    }
}

/// Encoded fire-and-forget keepalive requests (Refresh, CreatePermission, ChannelBind) for use
/// while the load runs and the socket's reader is the load receiver, which counts the answers.
pub fn keepalive_requests(
    auth: Option<&Auth>,
    lifetime: u32,
    channel: u16,
    peer: SocketAddr,
) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok(vec![
        build_request(METHOD_REFRESH, vec![Attr::Lifetime(lifetime)], auth)?.1,
        build_request(METHOD_CREATE_PERMISSION, vec![Attr::XorPeer(peer)], auth)?.1,
        build_request(METHOD_CHANNEL_BIND, vec![Attr::ChannelNumber(channel), Attr::XorPeer(peer)], auth)?.1,
    ])
}
