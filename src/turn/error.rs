//! Why the relay could not start.

use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen for TURN on {addr} ({transport}): {source}; is another TURN server (coturn?) running, or is the port below 1024 without privileges?")]
    Bind { addr: SocketAddr, transport: &'static str, source: io::Error },
    #[error("invalid TURN setting `{key}`: {problem}")]
    Config { key: &'static str, problem: String },
    #[error("cannot read or create the TURN secret file {path}: {source}")]
    Secret { path: std::path::PathBuf, source: io::Error },
}

impl From<ConfigError> for RelayError {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Invalid { key, problem } => RelayError::Config { key, problem },
            other => RelayError::Config { key: "turn", problem: other.to_string() },
        }
    }
}
