//! `[admin]`: the operator API's own listener and its bearer token (docs/ADMIN.md).
//!
//! The API is off, on loopback, or guarded by a token of at least [`MIN_ADMIN_TOKEN_CHARS`]
//! characters: `Settings::validate` refuses anything else, because whoever reaches the listener
//! could kick, ban and revoke.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// `[admin]`: the admin HTTP API's own listener and its bearer token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminSettings {
    /// "127.0.0.1:3001"; empty: the admin API is off.
    pub listen: String,
    /// The bearer token (or `RELAYCHAT__ADMIN__TOKEN`); required unless `listen` is loopback.
    pub token: String,
    /// A file holding the token (systemd `LoadCredential=`: a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY`). Used when `token` is empty.
    pub token_file: String,
    /// How long the previous TURN secret is still accepted after a rotation; 0: the credential
    /// lifetime (`turn.credential_ttl_s`), so every credential handed out before stays usable.
    pub turn_secret_grace_s: u64,
}

/// Admin tokens shorter than this are refused: the token is all that guards the API.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

impl AdminSettings {
    /// The address to listen on, when the API is on.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            invalid(
                "admin.listen",
                format!("{listen:?} is not an address with a port, e.g. \"127.0.0.1:3001\""),
            )
        })
    }

    /// The token: `token`, else the content of `token_file`; `None` when neither is set.
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        let token = if !self.token.trim().is_empty() {
            self.token.trim().to_string()
        } else if !self.token_file.trim().is_empty() {
            let mut path = PathBuf::from(self.token_file.trim());
            if path.is_relative() {
                if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
                    path = PathBuf::from(dir).join(path);
                }
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid("admin.token_file", format!("cannot read {}: {e}", path.display())))?;
            text.trim().to_string()
        } else {
            return Ok(None);
        };
        if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            let key = if self.token.trim().is_empty() { "admin.token_file" } else { "admin.token" };
            return Err(invalid(
                key,
                format!("must be at least {MIN_ADMIN_TOKEN_CHARS} characters (try: openssl rand -hex 32)"),
            ));
        }
        Ok(Some(token))
    }

    /// Off, loopback, or protected by a token: never reachable from outside without one. (The
    /// token file itself is read at start, where `$CREDENTIALS_DIRECTORY` exists: see
    /// [`Self::resolve_token`].)
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let token = self.token.trim();
        if !token.is_empty() && token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(invalid(
                "admin.token",
                format!("must be at least {MIN_ADMIN_TOKEN_CHARS} characters (try: openssl rand -hex 32)"),
            ));
        }
        let has_token = !token.is_empty() || !self.token_file.trim().is_empty();
        if let Some(addr) = self.listen_addr()? {
            if !addr.ip().is_loopback() && !has_token {
                return Err(invalid(
                    "admin.token",
                    format!(
                        "must be set when admin.listen ({addr}) is not a loopback address: anyone who \
                         reaches it could kick, ban and revoke (set [admin] token, token_file or \
                         RELAYCHAT__ADMIN__TOKEN, or listen on 127.0.0.1)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `token_file` can be read from here: a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY`, which only the service has.
    pub fn token_file_readable_here(&self) -> bool {
        let file = self.token_file.trim();
        file.is_empty()
            || std::path::Path::new(file).is_absolute()
            || std::env::var_os("CREDENTIALS_DIRECTORY").is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn the_admin_api_is_loopback_or_token_protected() {
        let mut s = Settings::defaults();
        assert!(s.admin.validate().is_ok(), "off by default");
        s.admin.listen = "0.0.0.0:3001".into();
        let err = s.admin.validate().unwrap_err().to_string();
        assert!(err.contains("admin.token") && err.contains("loopback"), "{err}");
        s.admin.listen = "[::1]:3001".into();
        assert!(s.admin.validate().is_ok());
        s.admin.listen = "0.0.0.0:3001".into();
        s.admin.token = "too-short".into();
        assert!(s.admin.validate().unwrap_err().to_string().contains("at least 16"));
        s.admin.token = "a-long-enough-admin-token".into();
        assert!(s.admin.validate().is_ok());
        assert_eq!(s.admin.resolve_token().unwrap().as_deref(), Some("a-long-enough-admin-token"));
        // From a file (what systemd's LoadCredential hands over), trimmed.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin_token");
        std::fs::write(&file, "file-token-0123456789\n").unwrap();
        s.admin.token.clear();
        s.admin.token_file = file.display().to_string();
        assert!(s.admin.validate().is_ok());
        assert!(s.admin.token_file_readable_here());
        assert_eq!(s.admin.resolve_token().unwrap().as_deref(), Some("file-token-0123456789"));
        s.admin.token_file = dir.path().join("missing").display().to_string();
        assert!(s.admin.resolve_token().unwrap_err().to_string().contains("admin.token_file"));
        s.admin.listen = "nonsense".into();
        assert!(s.admin.validate().unwrap_err().to_string().contains("admin.listen"));
    }
}
