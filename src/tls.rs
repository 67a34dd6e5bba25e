//! TLS: the certificate and key from `[server.tls]`, shared by HTTPS/WSS and TURN over TLS.
//!
//! The current configuration sits behind a lock that every new handshake reads once; SIGHUP
//! re-reads the files and swaps it. Established connections (calls in progress) keep the
//! session they negotiated, so a certificate renewal never drops anyone. A reload that fails
//! keeps the old certificate and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the TLS certificate and key do not fit together: {0}")]
    Config(#[from] rustls::Error),
}

/// The live TLS configuration; cheap to clone.
#[derive(Clone)]
pub struct TlsConfigSource {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    /// The certificate chain in use, to tell on reload whether the files changed.
    chain: Arc<RwLock<Vec<CertificateDer<'static>>>>,
}

impl TlsConfigSource {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let (config, chain) = build_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: Arc::new(RwLock::new(config)),
            chain: Arc::new(RwLock::new(chain)),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the files; on failure the old certificate stays in use. Returns whether the
    /// certificate chain differs from the one it replaced.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (config, chain) = build_config(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        let mut current = self.chain.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != chain;
        *current = chain;
        Ok(changed)
    }

    /// An acceptor for the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

type Loaded = (Arc<ServerConfig>, Vec<CertificateDer<'static>>);

fn build_config(cert_file: &Path, key_file: &Path) -> Result<Loaded, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate { path: cert_file.to_path_buf(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TlsError::Key { path: key_file.to_path_buf(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), certs))
}

/// Reloads `source` on every SIGHUP until the process ends.
pub fn reload_on_sighup(source: TlsConfigSource) {
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; certificate reload disabled");
            return;
        };
        while hangups.recv().await.is_some() {
            match source.reload() {
                Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded: a new certificate is in use"),
                Ok(false) => tracing::info!("SIGHUP: TLS certificate reloaded: unchanged"),
                Err(e) => tracing::error!("TLS certificate reload failed, keeping the old one: {e}"),
            }
        }
    });
}
