//! Asks a server on this machine whether it is healthy: `GET /healthz` must answer 200 "ok".
//! Used by doctor (is the process holding our port a relaychat?) and by `relaychat healthcheck`
//! (container HEALTHCHECKs, where neither curl nor bash's /dev/tcp can be relied on).
//!
//! Over TLS the certificate is not verified: the peer is our own listener on loopback, and its
//! certificate names the public host, not 127.0.0.1. Liveness is the question, not identity.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

fn is_healthy(answer: &str) -> bool {
    answer.starts_with("HTTP/1.")
        && answer.split_whitespace().nth(1) == Some("200")
        && answer.trim_end().ends_with("ok")
}

fn exchange(mut stream: impl Read + Write) -> std::io::Result<String> {
    stream.write_all(REQUEST)?;
    stream.flush()?;
    let mut answer = Vec::new();
    // A TLS peer closing without close_notify is an error at the end; what was read counts.
    let _ = stream.take(8192).read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Plain HTTP.
pub fn answers_healthz(addr: SocketAddr) -> bool {
    connect(addr).and_then(exchange).is_ok_and(|answer| is_healthy(&answer))
}

/// HTTPS, certificate not verified (see the module comment).
pub fn answers_healthz_tls(addr: SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let Ok(connection) = rustls::ClientConnection::new(Arc::new(config), ServerName::from(addr.ip())) else {
        return false;
    };
    connect(addr)
        .and_then(|tcp| exchange(rustls::StreamOwned::new(connection, tcp)))
        .is_ok_and(|answer| is_healthy(&answer))
}

/// Accepts any certificate but still checks the handshake signatures are well-formed.
#[derive(Debug)]
pub(crate) struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    pub(crate) fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
