//! Accounts as the operator manages them: who exists, who is an admin.
//!
//! Admin is a flag on the account row, set only by the operator (`relaychat user add --admin`,
//! `relaychat user set-admin`), never by whoever registers first. The `[chat] admins` list
//! reserves names: `/register` cannot take them, and an account the operator creates under
//! such a name is flagged admin. These functions work on a plain SQLite connection, so the
//! CLI runs them against the live server's database file (WAL + busy timeout make that safe)
//! and the store thread runs the same queries.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::StoreError;

/// One account as `relaychat user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub name: String,
    pub admin: bool,
    pub created_at: String,
}

/// Adds the admin flag to databases made before it existed; nobody is admin after the upgrade
/// until the operator says so (the old rule, "first registrant of a listed name", proved
/// nothing about who that was).
pub fn migrate(db: &Connection) -> Result<(), StoreError> {
    let has_flag: bool =
        db.prepare("SELECT 1 FROM pragma_table_info('accounts') WHERE name = 'is_admin'")?.exists([])?;
    if !has_flag {
        db.execute_batch("ALTER TABLE accounts ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

/// Names of the accounts flagged admin.
pub fn admin_names(db: &Connection) -> Result<HashSet<String>, StoreError> {
    let names = db
        .prepare("SELECT username FROM accounts WHERE is_admin = 1")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(names)
}

/// Creates an account; false when the name is taken (nothing changes then).
pub fn add(db: &Connection, name: &str, password_hash: &str, admin: bool) -> Result<bool, StoreError> {
    let inserted = db.execute(
        "INSERT INTO accounts (username, password_hash, is_admin) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![name, password_hash, admin],
    )?;
    Ok(inserted == 1)
}

/// Sets or clears the admin flag; false when there is no such account.
pub fn set_admin(db: &Connection, name: &str, admin: bool) -> Result<bool, StoreError> {
    let changed =
        db.execute("UPDATE accounts SET is_admin = ?2 WHERE username = ?1", params![name, admin])?;
    Ok(changed == 1)
}

/// Does an account with this name exist?
pub fn exists(db: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(db.query_row("SELECT 1 FROM accounts WHERE username = ?1", [name], |_| Ok(())).optional()?.is_some())
}

/// Every account, by name.
pub fn list(db: &Connection) -> Result<Vec<AccountSummary>, StoreError> {
    let accounts = db
        .prepare("SELECT username, is_admin, created_at FROM accounts ORDER BY username")?
        .query_map([], |row| {
            Ok(AccountSummary { name: row.get(0)?, admin: row.get(1)?, created_at: row.get(2)? })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flagged_accounts_are_admins_and_the_flag_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_database(dir.path()).unwrap();
        assert!(add(&db, "alice", "h1", true).unwrap());
        assert!(add(&db, "bob", "h2", false).unwrap());
        assert!(!add(&db, "alice", "h3", false).unwrap(), "a taken name is not overwritten");
        assert_eq!(admin_names(&db).unwrap(), HashSet::from(["alice".to_string()]));
        assert!(set_admin(&db, "bob", true).unwrap());
        assert!(set_admin(&db, "alice", false).unwrap());
        assert!(!set_admin(&db, "nobody", true).unwrap());
        drop(db);
        let db = crate::store::open_database(dir.path()).unwrap();
        assert_eq!(admin_names(&db).unwrap(), HashSet::from(["bob".to_string()]));
        let listed: Vec<(String, bool)> = list(&db).unwrap().into_iter().map(|a| (a.name, a.admin)).collect();
        assert_eq!(listed, [("alice".to_string(), false), ("bob".to_string(), true)]);
        assert!(exists(&db, "alice").unwrap() && !exists(&db, "carol").unwrap());
    }

    #[test]
    fn a_database_from_before_the_flag_gets_it_with_nobody_admin() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("relaychat.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE accounts (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL,
               created_at TEXT NOT NULL DEFAULT 'then');
             INSERT INTO accounts (username, password_hash) VALUES ('alice', 'h');",
        )
        .unwrap();
        drop(old);
        let db = crate::store::open_database(dir.path()).unwrap();
        assert!(admin_names(&db).unwrap().is_empty());
        assert!(set_admin(&db, "alice", true).unwrap());
        assert_eq!(admin_names(&db).unwrap().len(), 1);
    }
}
