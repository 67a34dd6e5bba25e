//! The invite ledger in SQLite: how often each invite was used, and which were revoked.
//!
//! The token itself carries its allowance and expiry (signed); the ledger only counts. A use is
//! one atomic `UPDATE ... WHERE used < max_uses`, so two browsers racing for an invite's last
//! use cannot both get it, and the CLI (another process) may revoke while the server runs.

use rusqlite::{params, Connection, OptionalExtension};

use super::token::Invite;
use crate::store::StoreError;

/// The outcome of counting one use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteUse {
    Used,
    UsedUp,
    Revoked,
    /// Cluster mode only: Redis's clock says the invite has expired, though the node's clock
    /// did not yet (SQLite counts by the node's clock alone, which the token check used).
    Expired,
}

/// An invite as `relaychat invite --list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    pub id: String,
    pub max_uses: u32,
    pub used: u32,
    pub expires: u64,
    pub revoked: bool,
}

pub fn migrate(db: &Connection) -> Result<(), StoreError> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS invites (
             id TEXT PRIMARY KEY,
             max_uses INTEGER NOT NULL,
             used INTEGER NOT NULL DEFAULT 0,
             expires_at INTEGER NOT NULL,
             revoked INTEGER NOT NULL DEFAULT 0,
             created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
    )?;
    Ok(())
}

/// Notes a newly issued invite (so that it can be listed and revoked before first use).
pub fn record(db: &Connection, invite: &Invite) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO invites (id, max_uses, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![invite.id, invite.uses, invite.expires as i64],
    )?;
    Ok(())
}

/// Counts one use of a verified invite. An invite the ledger never saw (a database restored
/// from before it was issued) is signed, so it is recorded now and counted.
pub fn use_invite(db: &Connection, invite: &Invite) -> Result<InviteUse, StoreError> {
    record(db, invite)?;
    let counted = db.execute(
        "UPDATE invites SET used = used + 1 WHERE id = ?1 AND used < max_uses AND revoked = 0",
        [&invite.id],
    )?;
    if counted == 1 {
        Ok(InviteUse::Used)
    } else if is_revoked(db, &invite.id)? {
        Ok(InviteUse::Revoked)
    } else {
        Ok(InviteUse::UsedUp)
    }
}

pub fn is_revoked(db: &Connection, id: &str) -> Result<bool, StoreError> {
    let revoked: Option<bool> =
        db.query_row("SELECT revoked FROM invites WHERE id = ?1", [id], |row| row.get(0)).optional()?;
    Ok(revoked.unwrap_or(false))
}

/// Revokes an invite and every member pass it led to; false when no invite has that id.
pub fn revoke(db: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(db.execute("UPDATE invites SET revoked = 1 WHERE id = ?1", [id])? == 1)
}

/// Every invite, newest first.
pub fn list(db: &Connection) -> Result<Vec<InviteRecord>, StoreError> {
    let records = db
        .prepare("SELECT id, max_uses, used, expires_at, revoked FROM invites ORDER BY created_at DESC, id")?
        .query_map([], |row| {
            Ok(InviteRecord {
                id: row.get(0)?,
                max_uses: row.get(1)?,
                used: row.get(2)?,
                expires: row.get::<_, i64>(3)?.max(0) as u64,
                revoked: row.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_are_counted_up_to_the_allowance_and_revocation_wins() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_database(dir.path()).unwrap();
        let invite = Invite { id: "0011223344556677".into(), expires: u64::MAX / 2, uses: 2 };
        record(&db, &invite).unwrap();
        assert_eq!(use_invite(&db, &invite).unwrap(), InviteUse::Used);
        assert_eq!(use_invite(&db, &invite).unwrap(), InviteUse::Used);
        assert_eq!(use_invite(&db, &invite).unwrap(), InviteUse::UsedUp);
        let other = Invite { id: "8899aabbccddeeff".into(), expires: 10, uses: 5 };
        // Never recorded (restored database): recorded and counted on first use.
        assert_eq!(use_invite(&db, &other).unwrap(), InviteUse::Used);
        assert!(revoke(&db, &other.id).unwrap());
        assert!(!revoke(&db, "ffffffffffffffff").unwrap());
        assert!(is_revoked(&db, &other.id).unwrap() && !is_revoked(&db, &invite.id).unwrap());
        assert_eq!(use_invite(&db, &other).unwrap(), InviteUse::Revoked);
        let listed = list(&db).unwrap();
        assert_eq!(listed.len(), 2);
        let first = listed.iter().find(|r| r.id == invite.id).unwrap();
        assert_eq!((first.used, first.max_uses, first.revoked), (2, 2, false));
    }
}
