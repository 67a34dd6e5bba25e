//! TURN over TLS (`turns:`, `[turn] tls_listen`): a TLS handshake with the relay's listener and a
//! STUN Binding request through it (RFC 8656 over TLS: STUN messages back to back on the stream).
//! The certificate's dates and name are judged by `certificate`; here the question is whether
//! the listener answers TURN through TLS at all (a wrong ALPN or a broken certificate chain in
//! the relay's configuration would show here, not on the HTTPS side).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use stun::agent::TransactionId;
use stun::fingerprint::FINGERPRINT;
use stun::message::{Getter, Message, BINDING_REQUEST, BINDING_SUCCESS};
use stun::xoraddr::XorMappedAddress;

use super::healthz::AnyCertificate;

const TIMEOUT: Duration = Duration::from_secs(5);
/// The ALPN of TURN over TLS (RFC 7443), as browsers offer it.
const STUN_TURN_ALPN: &[u8] = b"stun.turn";

/// Handshakes with `server` and asks for a Binding; the mapped address it answered.
pub fn binding_over_tls(server: SocketAddr) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![STUN_TURN_ALPN.to_vec()];
    let connection = rustls::ClientConnection::new(Arc::new(config), server.ip().into())?;
    let tcp =
        TcpStream::connect_timeout(&server, TIMEOUT).with_context(|| format!("connecting to {server}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);

    let mut request = Message::new();
    request.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST), Box::new(FINGERPRINT)])?;
    stream.write_all(&request.raw).context("TLS handshake or sending the Binding request")?;
    stream.flush()?;
    let mut raw = vec![0u8; 20];
    stream.read_exact(&mut raw).context("no STUN answer through TLS")?;
    let body = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    raw.resize(20 + body, 0);
    stream.read_exact(&mut raw[20..]).context("a truncated STUN answer")?;
    let mut answer = Message::new();
    answer.raw = raw;
    answer.decode().context("the answer is not STUN")?;
    anyhow::ensure!(answer.transaction_id == request.transaction_id, "the answer is for another request");
    anyhow::ensure!(answer.typ == BINDING_SUCCESS, "the relay answered {} to a Binding request", answer.typ);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&answer).context("a Binding answer without XOR-MAPPED-ADDRESS")?;
    Ok(SocketAddr::new(mapped.ip, mapped.port))
}
