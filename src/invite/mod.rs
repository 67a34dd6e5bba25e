//! Invite-only mode: who may open a session at all.
//!
//! With `[chat] invite_only = true` (or `registration = "invite"` and a token presented), the
//! WebSocket upgrade must carry `?invite=TOKEN` (a link from `relaychat invite`) or
//! `?pass=TOKEN` (the member pass a browser received on an earlier visit). The gate decides
//! before the session reaches the hub, so a refused client joins nothing and sees nothing.
//! An admitted client receives a fresh member pass (`{"type":"member-pass"}`), so one invite
//! use is one new person: reconnects and later visits use the pass, not the invite.
//!
//! - `token`: signing and checking (pure).
//! - `ledger`: use counts and revocations in SQLite.
//! - here: the secret file, the refusal texts, and the gate that ties them together.

pub mod ledger;
pub mod token;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use ledger::InviteUse;
use token::{MemberPass, TokenProblem};

/// The signing key's file in `data_dir` (0600), made on first use.
pub const SECRET_FILE: &str = "invite_secret";
/// How long a member pass lasts; every admitted visit gets a fresh one, so only a browser
/// that stays away this long needs a new invite.
pub const MEMBER_PASS_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read or create the invite secret {path}: {source} (check the data_dir's owner and permissions)"
)]
pub struct SecretError {
    path: PathBuf,
    source: std::io::Error,
}

/// Why the gate refused a client; `text()` is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Forged,
    Expired,
    UsedUp,
    Revoked,
    PassExpired,
    /// The ledger could not be read or written.
    Unavailable,
}

impl Refusal {
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Missing => "This server is invite-only: open the invite link you were given.",
            Refusal::Forged => {
                "This invite link is not valid (damaged, or not from this server). Ask for a new one."
            }
            Refusal::Expired => "This invite link has expired. Ask for a new one.",
            Refusal::UsedUp => "This invite link has already been used. Ask for a new one.",
            Refusal::Revoked => "This invite has been revoked by the server's operator.",
            Refusal::PassExpired => "Your access to this server has expired. Open a new invite link.",
            Refusal::Unavailable => "The server cannot check invites right now. Try again later.",
        }
    }
}

/// What the client presented on the upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    pub invite: Option<String>,
    pub pass: Option<String>,
}

impl Presented {
    /// `invite` and `pass` from a request's query string (empty values count as absent).
    pub fn from_query(query: Option<&str>) -> Self {
        let mut presented = Presented::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = Some(value.into_owned()).filter(|v| !v.is_empty());
            match key.as_ref() {
                "invite" => presented.invite = value,
                "pass" => presented.pass = value,
                _ => {}
            }
        }
        presented
    }

    pub fn is_empty(&self) -> bool {
        self.invite.is_none() && self.pass.is_none()
    }
}

/// Checks invites and passes, counts uses, and issues passes.
#[derive(Clone)]
pub struct InviteGate {
    key: Arc<[u8]>,
    store: Store,
}

impl InviteGate {
    pub fn new(key: Vec<u8>, store: Store) -> Self {
        Self { key: key.into(), store }
    }

    /// Admits a client (returning its new member pass) or says why not. A valid pass wins
    /// over an invite, so a browser that still has its invite never spends a second use.
    pub async fn admit(&self, presented: &Presented, now_unix: u64) -> Result<String, Refusal> {
        let mut refusal = Refusal::Missing;
        if let Some(pass) = &presented.pass {
            match token::verify_member_pass(&self.key, pass, now_unix) {
                Ok(pass) => match self.store.invite_revoked(pass.invite_id.clone()).await {
                    Ok(false) => return Ok(self.pass_for(&pass.invite_id, now_unix)),
                    Ok(true) => refusal = Refusal::Revoked,
                    Err(e) => {
                        tracing::error!("invite ledger: {e}");
                        return Err(Refusal::Unavailable);
                    }
                },
                Err(TokenProblem::Expired) => refusal = Refusal::PassExpired,
                Err(TokenProblem::Forged) => refusal = Refusal::Forged,
            }
        }
        let Some(invite) = &presented.invite else { return Err(refusal) };
        let invite = token::verify_invite(&self.key, invite, now_unix).map_err(|problem| match problem {
            TokenProblem::Expired => Refusal::Expired,
            TokenProblem::Forged => Refusal::Forged,
        })?;
        let id = invite.id.clone();
        match self.store.use_invite(invite).await {
            Ok(InviteUse::Used) => {
                tracing::info!(invite = %id, "invite used");
                Ok(self.pass_for(&id, now_unix))
            }
            Ok(InviteUse::UsedUp) => Err(Refusal::UsedUp),
            Ok(InviteUse::Revoked) => Err(Refusal::Revoked),
            Err(e) => {
                tracing::error!("invite ledger: {e}");
                Err(Refusal::Unavailable)
            }
        }
    }

    fn pass_for(&self, invite_id: &str, now_unix: u64) -> String {
        let expires = now_unix.saturating_add(MEMBER_PASS_LIFETIME.as_secs());
        token::sign_member_pass(&self.key, &MemberPass { invite_id: invite_id.to_string(), expires })
    }
}

/// The invite signing key from `data_dir/invite_secret`, created (32 random bytes, hex, 0600)
/// when missing. Its own file, not the TURN secret: rotating one must not void the other.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    let path = data_dir.join(SECRET_FILE);
    let error = |source| SecretError { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(error(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty")));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(error)?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes()).and_then(|_| file.sync_all()).map_err(error)?;
            tracing::info!(path = %path.display(), "generated a new invite secret");
            Ok(secret.into_bytes())
        }
        // Another process (the server, or a second CLI) made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(&path).map(|t| t.trim().as_bytes().to_vec()).map_err(error)
        }
        Err(e) => Err(error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_secret_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create_secret(&data).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(&data).unwrap(), first);
        let mode = std::fs::metadata(data.join(SECRET_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn query_parameters() {
        let p = Presented::from_query(Some("username=x&invite=i.abc&pass="));
        assert_eq!(p, Presented { invite: Some("i.abc".into()), pass: None });
        assert!(Presented::from_query(None).is_empty());
    }

    #[tokio::test]
    async fn the_gate_spends_an_invite_once_per_person_and_passes_bring_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread, _) = Store::open(dir.path(), 10).unwrap();
        let key = b"k".to_vec();
        let gate = InviteGate::new(key.clone(), store.clone());
        let invite = token::Invite { id: token::new_invite_id(), expires: 1_000, uses: 1 };
        let link = token::sign_invite(&key, &invite);
        let with_invite = Presented { invite: Some(link.clone()), pass: None };
        let pass = gate.admit(&with_invite, 10).await.expect("first use");
        // The pass (even alongside the spent invite) brings the same browser back.
        let back = Presented { invite: Some(link.clone()), pass: Some(pass.clone()) };
        assert!(gate.admit(&back, 20).await.is_ok());
        assert_eq!(gate.admit(&with_invite, 30).await, Err(Refusal::UsedUp));
        assert_eq!(gate.admit(&Presented::default(), 30).await, Err(Refusal::Missing));
        assert_eq!(gate.admit(&with_invite, 1_000).await, Err(Refusal::Expired));
        let forged = Presented { invite: Some(link.replace(".1.", ".9.")), pass: None };
        assert_eq!(gate.admit(&forged, 30).await, Err(Refusal::Forged));
        let late = Presented { invite: None, pass: Some(pass.clone()) };
        assert_eq!(gate.admit(&late, 10 + MEMBER_PASS_LIFETIME.as_secs()).await, Err(Refusal::PassExpired));
        drop((gate, store));
        thread.close();
        let db = crate::store::open_database(dir.path()).unwrap();
        assert!(ledger::revoke(&db, &invite.id).unwrap());
        let (store, thread, _) = Store::open(dir.path(), 10).unwrap();
        let gate = InviteGate::new(key, store.clone());
        assert_eq!(gate.admit(&late, 40).await, Err(Refusal::Revoked));
        drop((gate, store));
        thread.close();
    }
}
