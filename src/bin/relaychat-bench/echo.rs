//! The load generator's own ceiling: the same paced senders and receivers as the TURN benchmark,
//! against a trivial UDP echo server (`udp-echo`, also here) instead of a relay. Latency here is a
//! round trip (socket -> echo -> same socket); one echoed packet costs the echo server one receive
//! and one send, where one relayed TURN packet costs the relay two of each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::load::{self, Flow};
use super::sockbuf;
use super::step::{self, Search, StepConfig, StepReport};

/// Echo every datagram back to its sender until the process is stopped.
pub async fn serve(listen: SocketAddr, buffer: usize) -> anyhow::Result<()> {
    let sock = sockbuf::bind_udp(listen, buffer)?;
    let (r, s) = sockbuf::granted_buffers(&sock);
    eprintln!("udp-echo listening on {} (rcvbuf {r} sndbuf {s})", sock.local_addr()?);
    let mut buf = vec![0u8; 65536];
    loop {
        sock.readable().await?;
        loop {
            match sock.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    // A full send buffer drops the echo; the client counts it as loss.
                    let _ = sock.try_send_to(&buf[..n], from);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EchoReport {
    pub server: String,
    pub clients: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub generator_threads: usize,
    pub steps: Vec<StepReport>,
    pub max_sustained: Option<StepReport>,
}

pub struct EchoArgs {
    pub cfg: StepConfig,
    pub server: SocketAddr,
    pub clients: usize,
    pub rate: f64,
    pub socket_buffer: usize,
    pub find_max: Option<Search>,
}

pub async fn run(a: EchoArgs) -> anyhow::Result<EchoReport> {
    if a.cfg.size < load::MIN_PAYLOAD {
        anyhow::bail!("--size must be at least {} bytes", load::MIN_PAYLOAD);
    }
    let local = SocketAddr::new(
        if a.server.ip().is_loopback() { a.server.ip() } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
        0,
    );
    let mut flows = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        flows.push(Flow {
            sock: Arc::new(sockbuf::bind_udp(local, a.socket_buffer)?),
            dest: a.server,
            channel: None,
            stale_nonce: None,
        });
    }
    let (steps, best) = match a.find_max {
        None => (vec![step::measure(&a.cfg, &flows, a.rate).await], None),
        Some(s) => {
            let (cfg, flows) = (&a.cfg, &flows);
            step::find_max(s, |rate| step::measure(cfg, flows, rate)).await
        }
    };
    // Let late echoes land in the sockets before they close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(EchoReport {
        server: a.server.to_string(),
        clients: a.clients,
        payload_bytes: a.cfg.size,
        duration_s: a.cfg.duration.as_secs_f64(),
        generator_threads: a.cfg.threads,
        steps,
        max_sustained: best,
    })
}
