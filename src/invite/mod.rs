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
//! - `ledger`: use counts and revocations in SQLite (single-node mode).
//! - `crate::cluster::invites`: the same in Redis, shared by every node (cluster mode).
//! - here: the signing key (a file, or in cluster mode the cluster's), the refusal texts, and
//!   the gate that ties them together.
//!
//! In cluster mode the gate needs Redis for invites (a use is counted there, atomically across
//! nodes), so without it an invite gets `Refusal::Unavailable` and nothing is spent. A member
//! pass is signed, but whether its invite was revoked is in Redis too: without an answer it is
//! refused the same way (as in single-node mode when SQLite fails), never let in unchecked. A
//! revocation means what it says even during an outage, and nobody loses anything by it: while
//! Redis is away the hub turns every newcomer away anyway (1013), and the refusal here closes
//! with 1013 too, so clients know to come back.

pub mod ledger;
pub mod token;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::invites::ClusterInvites;
use crate::cluster::ClusterContext;
use crate::store::Store;
use ledger::InviteUse;
use token::{MemberPass, TokenProblem};

/// The signing key's file in `data_dir` (0600), made on first use.
pub const SECRET_FILE: &str = "invite_secret";
/// How long a member pass lasts; every admitted visit gets a fresh one, so only a browser
/// that stays away this long needs a new invite.
pub const MEMBER_PASS_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Cluster mode: how long an invite's record outlives the last member pass it led to, for
/// clocks of nodes and Redis that disagree (a revocation must outlive every pass it refuses).
pub const KEEP_MARGIN: Duration = Duration::from_secs(24 * 3600);

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

    /// The WebSocket close code the refusal is sent with: 1013 (try again later) when the
    /// ledger did not answer, so clients retry; 1008 (policy) otherwise.
    pub fn close_code(self) -> u16 {
        match self {
            Refusal::Unavailable => 1013,
            _ => 1008,
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
    ledger: Ledger,
}

/// Where uses and revocations are kept.
#[derive(Clone)]
enum Ledger {
    /// Single-node mode: this node's SQLite file, through the store thread.
    Local(Store),
    /// Cluster mode: Redis, shared by every node.
    Cluster(ClusterInvites),
}

impl InviteGate {
    /// Single-node mode: the key from `load_or_create_secret`, the ledger in SQLite.
    pub fn new(key: Vec<u8>, store: Store) -> Self {
        Self { key: key.into(), ledger: Ledger::Local(store) }
    }

    /// Cluster mode: the cluster's key (`cluster_secret`) and ledger.
    pub fn clustered(key: Vec<u8>, invites: ClusterInvites) -> Self {
        Self { key: key.into(), ledger: Ledger::Cluster(invites) }
    }

    /// Admits a client (returning its new member pass) or says why not. A valid pass wins
    /// over an invite, so a browser that still has its invite never spends a second use.
    pub async fn admit(&self, presented: &Presented, now_unix: u64) -> Result<String, Refusal> {
        let mut refusal = Refusal::Missing;
        if let Some(pass) = &presented.pass {
            match token::verify_member_pass(&self.key, pass, now_unix) {
                Ok(pass) => match self.pass_revoked(&pass.invite_id, now_unix).await? {
                    false => return Ok(self.pass_for(&pass.invite_id, now_unix)),
                    true => refusal = Refusal::Revoked,
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
        let counted = match &self.ledger {
            Ledger::Local(store) => store.use_invite(invite).await.map_err(|e| e.to_string()),
            Ledger::Cluster(invites) => {
                invites.use_invite(&invite, now_unix, keep_until(now_unix)).await.map_err(|e| e.to_string())
            }
        };
        match counted {
            Ok(InviteUse::Used) => {
                tracing::info!(invite = %id, "invite used");
                Ok(self.pass_for(&id, now_unix))
            }
            Ok(InviteUse::UsedUp) => Err(Refusal::UsedUp),
            Ok(InviteUse::Revoked) => Err(Refusal::Revoked),
            Ok(InviteUse::Expired) => Err(Refusal::Expired),
            Err(e) => {
                tracing::error!("invite ledger: {e}");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Has the invite a valid member pass came from been revoked?
    async fn pass_revoked(&self, invite_id: &str, now_unix: u64) -> Result<bool, Refusal> {
        match &self.ledger {
            Ledger::Local(store) => store.invite_revoked(invite_id.to_string()).await.map_err(|e| {
                tracing::error!("invite ledger: {e}");
                Refusal::Unavailable
            }),
            // Fail closed, as the SQLite ledger does: a revoked pass must not get in while
            // the store that knows it was revoked is slow or away.
            Ledger::Cluster(invites) => {
                invites.pass_revoked(invite_id, keep_until(now_unix)).await.map_err(|e| {
                    tracing::error!(invite = %invite_id, "invite ledger (cluster store): {e}");
                    Refusal::Unavailable
                })
            }
        }
    }

    fn pass_for(&self, invite_id: &str, now_unix: u64) -> String {
        let expires = now_unix.saturating_add(MEMBER_PASS_LIFETIME.as_secs());
        token::sign_member_pass(&self.key, &MemberPass { invite_id: invite_id.to_string(), expires })
    }
}

/// Cluster mode: until when an invite's record must be kept once a member pass is handed out
/// at `now_unix` (the pass's end plus `KEEP_MARGIN`).
pub fn keep_until(now_unix: u64) -> u64 {
    now_unix.saturating_add(MEMBER_PASS_LIFETIME.as_secs()).saturating_add(KEEP_MARGIN.as_secs())
}

/// The invite key in cluster mode, and whether this node's file holds the same.
pub struct ClusterKey {
    pub key: Vec<u8>,
    /// `data_dir/invite_secret` exists and is the cluster's key: what this node signed before
    /// it joined the cluster verifies on every node.
    pub file_matches: bool,
}

/// The key every node signs invites and passes with in cluster mode. The cluster store keeps
/// one (`{ns}:invite_secret`); the first to ask offers this node's `data_dir/invite_secret`
/// if it has one (so links made before the cluster keep working), else a fresh random key,
/// and `SET NX` makes exactly one offer win. The file is only read: never created or changed,
/// so a node taken out of the cluster signs with what it had before.
pub async fn cluster_secret(invites: &ClusterInvites, data_dir: &Path) -> anyhow::Result<ClusterKey> {
    let path = data_dir.join(SECRET_FILE);
    let local = read_secret(&path)?;
    let offer = local.clone().unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()).into_bytes());
    let shared = invites.shared_secret(&offer).await?;
    let file_matches = local.as_deref() == Some(shared.key.as_slice());
    match (local.is_some(), shared.stored_ours, file_matches) {
        (true, true, _) => tracing::info!(
            path = %path.display(),
            "this node's invite secret is now the cluster's invite key: links made with it keep working on every node"
        ),
        (false, true, _) => tracing::info!("stored a new invite key in the cluster store"),
        (true, false, true) => {
            tracing::debug!(path = %path.display(), "the invite secret matches the cluster's")
        }
        (true, false, false) => tracing::warn!(
            path = %path.display(),
            "this node's invite secret differs from the cluster's invite key, and the cluster's wins: \
             links and member passes this node signed before it joined the cluster are refused as \
             not from this server (the file is left as it is)"
        ),
        (false, false, _) => tracing::debug!("using the cluster's invite key"),
    }
    Ok(ClusterKey { key: shared.key, file_matches })
}

/// Cluster mode: the gate, on the cluster's key and ledger. If this node's file key is the
/// cluster's, its SQLite ledger is merged in first (`import_local_ledger`).
pub async fn cluster_gate(cluster: &ClusterContext, data_dir: &Path) -> anyhow::Result<InviteGate> {
    let invites = ClusterInvites::new(cluster)?;
    let key = cluster_secret(&invites, data_dir).await?;
    if key.file_matches {
        let imported = import_local_ledger(&invites, data_dir, crate::time::unix_now()).await?;
        if imported > 0 {
            tracing::info!("merged {imported} invite(s) of this node's ledger into the cluster store");
        }
    }
    Ok(InviteGate::clustered(key.key, invites))
}

/// Carries this node's SQLite ledger into the cluster store: the use counts of its invites and,
/// above all, its revocations (without them a revoked invite's member passes, signed with the
/// same key, would verify again). The merge keeps the larger count and any revocation, so it
/// may run at every start; rows with nothing left to guard (an invite expired unused) are
/// skipped. A used or revoked row is kept one pass lifetime from now: its passes were issued
/// before now. Returns how many rows were merged.
pub async fn import_local_ledger(
    invites: &ClusterInvites,
    data_dir: &Path,
    now_unix: u64,
) -> anyhow::Result<usize> {
    let dir = data_dir.to_path_buf();
    let rows = tokio::task::spawn_blocking(move || {
        let db = crate::store::open_database(&dir)?;
        ledger::list(&db)
    })
    .await??;
    let mut imported = 0;
    for row in &rows {
        let keep =
            if row.used > 0 || row.revoked { row.expires.max(keep_until(now_unix)) } else { row.expires };
        if keep > now_unix && invites.import(row, keep, 0).await? {
            imported += 1;
        }
    }
    Ok(imported)
}

/// The key in `path`, if the file exists.
fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    let error = |source| SecretError { path: path.to_path_buf(), source };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().as_bytes().to_vec())),
        Ok(_) => Err(error(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(e)),
    }
}

/// The invite signing key from `data_dir/invite_secret`, created (32 random bytes, hex, 0600)
/// when missing. Its own file, not the TURN secret: rotating one must not void the other.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    let path = data_dir.join(SECRET_FILE);
    let error = |source| SecretError { path: path.clone(), source };
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
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

    #[tokio::test]
    async fn in_cluster_mode_without_redis_invites_and_member_passes_are_refused_until_it_answers() {
        // A port nothing listens on: every Redis command fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = crate::config::ClusterSettings {
            redis_url: format!("redis://127.0.0.1:{port}/0"),
            ..Default::default()
        };
        let context = ClusterContext::new(&settings).unwrap();
        let key = b"k".to_vec();
        let gate = InviteGate::clustered(key.clone(), ClusterInvites::new(&context).unwrap());
        let invite = token::Invite { id: token::new_invite_id(), expires: 1_000, uses: 1 };
        let with_invite = Presented { invite: Some(token::sign_invite(&key, &invite)), pass: None };
        assert_eq!(gate.admit(&with_invite, 10).await, Err(Refusal::Unavailable));
        // A genuine pass: its revocation cannot be checked, so it waits for Redis too.
        let pass = token::sign_member_pass(&key, &MemberPass { invite_id: invite.id.clone(), expires: 500 });
        assert_eq!(
            gate.admit(&Presented { invite: None, pass: Some(pass) }, 10).await,
            Err(Refusal::Unavailable)
        );
        assert_eq!(Refusal::Unavailable.close_code(), 1013);
        assert_eq!(Refusal::Revoked.close_code(), 1008);
        // A forged pass is refused as forged, not as "try again", Redis or not.
        let forged = Presented {
            invite: None,
            pass: Some(token::sign_member_pass(
                b"other",
                &MemberPass { invite_id: invite.id.clone(), expires: 500 },
            )),
        };
        assert_eq!(gate.admit(&forged, 10).await, Err(Refusal::Forged));
    }

    #[test]
    fn a_record_outlives_the_pass_it_hands_out() {
        assert_eq!(keep_until(100), 100 + MEMBER_PASS_LIFETIME.as_secs() + KEEP_MARGIN.as_secs());
        assert_eq!(keep_until(u64::MAX), u64::MAX);
    }
}
