//! Accounts for the runner: /register and /login answered off the hub task (argon2 on the
//! blocking pool behind the `PasswordGate`, the store or the cluster's Redis for the rows),
//! and the admin flags read back from wherever accounts live.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::{HubEvent, Runner};
use crate::hub::ConnId;

impl Runner {
    /// Reads the admin flags off the store thread and hands them to the hub.
    pub(super) fn refresh_admins(&self) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events) = (cluster.accounts.clone(), self.events.clone());
            tokio::spawn(async move {
                match accounts.admin_names().await {
                    Ok(admins) => {
                        events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                    }
                    Err(e) => tracing::debug!("could not read the admin flags from the cluster store: {e}"),
                }
            });
            return;
        }
        let (store, events) = (self.store.clone(), self.events.clone());
        tokio::spawn(async move {
            match store.admin_names().await {
                Ok(admins) => {
                    events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                }
                Err(e) => tracing::warn!("could not read the admin flags: {e}"),
            }
        });
    }

    /// Hashes first, whatever the name: a taken or reserved name costs the same time as a new
    /// one, so the answer's timing does not tell which names exist.
    pub(super) fn create_account(&self, conn: ConnId, name: String, password: String, reserved: bool) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events, gate, ip) =
                (cluster.accounts.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
            tokio::spawn(async move {
                let hashed = gate.run(ip, move || hash_password(&password)).await;
                let result = match hashed {
                    Some(Ok(_)) if reserved => Ok(false),
                    Some(Ok(hash)) => accounts.create(&name, &hash).await.map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e),
                    None => Err("password hashing failed".to_string()),
                };
                events.send(HubEvent::AccountCreated { conn, result }).await.ok();
            });
            return;
        }
        let (store, events, gate, ip) =
            (self.store.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
        tokio::spawn(async move {
            let hashed = gate.run(ip, move || hash_password(&password)).await;
            let result = match hashed {
                Some(Ok(_)) if reserved => Ok(false),
                Some(Ok(hash)) => store.create_account(name, hash).await.map_err(|e| e.to_string()),
                Some(Err(e)) => Err(e),
                None => Err("password hashing failed".to_string()),
            };
            events.send(HubEvent::AccountCreated { conn, result }).await.ok();
        });
    }

    pub(super) fn check_login(&self, conn: ConnId, name: String, password: String) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events, gate, ip) =
                (cluster.accounts.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
            tokio::spawn(async move {
                let stored = match accounts.password_hash(&name).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        // A Redis blip is no wrong password: "try again", not counted.
                        tracing::error!("account lookup in the cluster store failed: {e}");
                        events.send(HubEvent::LoginUnavailable { conn }).await.ok();
                        return;
                    }
                };
                let ok = gate
                    .run(ip, move || verify_password(&password, stored.as_deref()))
                    .await
                    .unwrap_or(false);
                if ok {
                    if let Ok(admins) = accounts.admin_names().await {
                        events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                    }
                }
                events.send(HubEvent::LoginChecked { conn, name, ok }).await.ok();
            });
            return;
        }
        let (store, events, gate, ip) =
            (self.store.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
        tokio::spawn(async move {
            let stored = match store.password_hash(name.clone()).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!("account lookup failed: {e}");
                    None
                }
            };
            let ok =
                gate.run(ip, move || verify_password(&password, stored.as_deref())).await.unwrap_or(false);
            if ok {
                // An account the operator just created or flagged is admin from its first login,
                // not only after the next periodic refresh.
                if let Ok(admins) = store.admin_names().await {
                    events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                }
            }
            events.send(HubEvent::LoginChecked { conn, name, ok }).await.ok();
        });
    }
}

/// argon2id with the crate's default (OWASP-recommended) parameters and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies against the stored hash. Without an account it still does the same work, so the
/// reply time does not tell an attacker which names exist.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default());
    let hash_text = stored.unwrap_or(dummy);
    let Ok(hash) = PasswordHash::new(hash_text) else { return false };
    Argon2::default().verify_password(password.as_bytes(), &hash).is_ok() && stored.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("password123").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("password123", Some(&hash)));
        assert!(!verify_password("password124", Some(&hash)));
        assert!(!verify_password("password123", None));
        assert!(!verify_password("password123", Some("garbage")));
    }
}
