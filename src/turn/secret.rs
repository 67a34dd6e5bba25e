//! The REST shared secret: configured, or generated once and kept in `data_dir/turn_secret`;
//! [`replace_secret`] writes a new one there when the operator rotates it.

use std::io::Write as _;
use std::path::Path;

use crate::turn::error::RelayError;

/// File under `server.data_dir` holding the generated secret.
pub const SECRET_FILE: &str = "turn_secret";

/// The REST shared secret: `[turn] secret`, else `data_dir/turn_secret`, created at first start
/// with 32 random bytes in hex and mode 0600. The secret is the text itself (as coturn's
/// `static-auth-secret`), so `turnutils_uclient -W "$(cat turn_secret)"` works.
pub fn load_or_create_secret(settings: &crate::config::Settings) -> Result<Vec<u8>, RelayError> {
    let configured = settings.turn.secret.trim();
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = settings.server.data_dir.join(SECRET_FILE);
    let secret_error = |source| RelayError::Secret { path: path.clone(), source };
    if let Some(secret) = read_secret(&path).map_err(secret_error)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(&settings.server.data_dir).map_err(secret_error)?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes()).and_then(|_| file.sync_all()).map_err(secret_error)?;
            tracing::info!(path = %path.display(), "generated a new TURN secret");
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret(&path).map_err(secret_error)?.ok_or_else(|| {
                secret_error(std::io::Error::new(std::io::ErrorKind::InvalidData, "the secret file is empty"))
            })
        }
        Err(e) => Err(secret_error(e)),
    }
}

/// Why the secret could not be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(
        "the TURN secret comes from the configuration ([turn] secret or RELAYCHAT__TURN__SECRET): \
         relaychat cannot change it there; set a new value and restart, or remove the setting to let \
         relaychat keep its own secret in data_dir/turn_secret (rotatable at runtime)"
    )]
    Configured,
    #[error("cannot write the new TURN secret to {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
}

/// Generates a new secret and stores it in `data_dir/turn_secret` (a new file, mode 0600,
/// synced, then renamed over the old one, so a crash leaves either secret whole, never half).
/// Refused when the secret is configured: the configuration is the operator's to change.
pub fn replace_secret(settings: &crate::config::Settings) -> Result<Vec<u8>, RotationError> {
    if !settings.turn.secret.trim().is_empty() {
        return Err(RotationError::Configured);
    }
    let path = settings.server.data_dir.join(SECRET_FILE);
    let staging = settings.server.data_dir.join(format!("{SECRET_FILE}.new"));
    let write_error = |source| RotationError::Write { path: path.clone(), source };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let _ = std::fs::remove_file(&staging);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&staging).map_err(write_error)?;
    file.write_all(secret.as_bytes()).and_then(|_| file.sync_all()).map_err(write_error)?;
    std::fs::rename(&staging, &path).map_err(write_error)?;
    tracing::info!(path = %path.display(), "rotated the TURN secret");
    Ok(secret.into_bytes())
}

fn read_secret(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the secret file is empty"));
            }
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the TURN secret file is readable by others; chmod 600 it");
                }
            }
            Ok(Some(text.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::defaults();
        settings.server.data_dir = dir.path().join("data");
        let first = load_or_create_secret(&settings).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(&settings).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(settings.server.data_dir.join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        settings.turn.secret = "configured".into();
        assert_eq!(load_or_create_secret(&settings).unwrap(), b"configured".to_vec());
    }

    #[test]
    fn a_replaced_secret_is_new_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::defaults();
        settings.server.data_dir = dir.path().to_path_buf();
        let first = load_or_create_secret(&settings).unwrap();
        let second = replace_secret(&settings).unwrap();
        assert_ne!(first, second);
        assert_eq!(second.len(), 64);
        assert_eq!(load_or_create_secret(&settings).unwrap(), second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        settings.turn.secret = "configured".into();
        assert!(matches!(replace_secret(&settings), Err(RotationError::Configured)));
    }
}
