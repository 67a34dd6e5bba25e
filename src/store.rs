//! The store: chat history, accounts and bans in one SQLite file under `data_dir`.
//!
//! All disk work happens on one dedicated thread; the async side sends it jobs and awaits the
//! replies, so no tokio worker ever blocks on disk. Durability: WAL journal with
//! `synchronous=NORMAL`. A committed message survives a crash of the process (the WAL is written
//! before the commit returns); on a power loss the last transactions before the loss may roll
//! back. The hub runner awaits the commit of a history entry before sending it to anyone, so
//! nothing a user saw acknowledged is lost when relaychat itself dies.
//!
//! The database holds private conversations: it and its `-wal`/`-shm` files are created 0600
//! (SQLite gives the journal files the database file's mode), and files left with wider modes
//! by an older version are narrowed at start. History retention (`[history]`) deletes the
//! oldest messages beyond a count and an age, at start and then periodically on the store
//! thread, in small batches with queued jobs served between them, so nobody waits on it.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::protocol::{HistoryEntry, HistoryKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Stopped,
}

/// What the server needs from disk at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The most recent history entries, oldest first.
    pub history: Vec<HistoryEntry>,
    pub bans: HashSet<String>,
    /// Accounts the operator flagged as admins (`relaychat user`).
    pub admins: HashSet<String>,
}

/// How much history the database keeps (`[history]`); zero disables a bound.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_messages: u64,
    pub max_days: u64,
    pub interval: Duration,
}

impl Retention {
    /// Keep everything (tests, tools).
    pub const NONE: Retention =
        Retention { max_messages: 0, max_days: 0, interval: Duration::from_secs(3600) };

    pub fn from_settings(history: &crate::config::HistorySettings) -> Self {
        Retention {
            max_messages: history.retention_max_messages,
            max_days: history.retention_max_days,
            interval: Duration::from_secs(history.prune_interval_s.max(1)),
        }
    }
}

/// Rows deleted per statement while pruning; queued jobs run between batches.
const PRUNE_BATCH: i64 = 500;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Append(Vec<HistoryEntry>, Reply<()>),
    CreateAccount { name: String, password_hash: String, reply: Reply<bool> },
    PasswordHash { name: String, reply: Reply<Option<String>> },
    SetBan { name: String, banned: bool, reply: Reply<()> },
    AdminNames(Reply<HashSet<String>>),
    UseInvite { invite: crate::invite::token::Invite, reply: Reply<crate::invite::ledger::InviteUse> },
    InviteRevoked { id: String, reply: Reply<bool> },
    Ping(Reply<()>),
}

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
}

/// Owns the thread; `close` waits for every queued job to finish.
pub struct StoreThread {
    handle: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (creating if needed) `data_dir/relaychat.db` and loads what the hub needs;
    /// keeps all history.
    pub fn open(data_dir: &Path, history_limit: usize) -> Result<(Store, StoreThread, Loaded), StoreError> {
        Self::open_with_retention(data_dir, history_limit, Retention::NONE)
    }

    /// Like `open`, pruning history to `retention` at start and every `retention.interval`.
    pub fn open_with_retention(
        data_dir: &Path,
        history_limit: usize,
        retention: Retention,
    ) -> Result<(Store, StoreThread, Loaded), StoreError> {
        let db = open_database(data_dir)?;
        prune(&db, retention, || {})?;
        let loaded = load(&db, history_limit)?;
        let (jobs, receiver) = std_mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("relaychat-store".into())
            .spawn(move || run(db, receiver, retention))
            .map_err(|source| StoreError::DataDir { path: data_dir.to_path_buf(), source })?;
        Ok((Store { jobs }, StoreThread { handle: Some(handle) }, loaded))
    }

    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Appends history entries in one transaction; returns once committed.
    pub async fn append(&self, entries: Vec<HistoryEntry>) -> Result<(), StoreError> {
        self.append_queued(entries).await
    }

    /// Queues history entries for one transaction now, before the returned future is polled;
    /// it resolves once they are committed. Jobs run in the order they were queued, so entries
    /// queued later are committed after these.
    pub fn append_queued(
        &self,
        entries: Vec<HistoryEntry>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.send(Job::Append(entries, reply)).map_err(|_| StoreError::Stopped);
        async move {
            queued?;
            answer.await.map_err(|_| StoreError::Stopped)?
        }
    }

    /// Creates an account; false when the name is taken.
    pub async fn create_account(&self, name: String, password_hash: String) -> Result<bool, StoreError> {
        self.ask(|reply| Job::CreateAccount { name, password_hash, reply }).await
    }

    pub async fn password_hash(&self, name: String) -> Result<Option<String>, StoreError> {
        self.ask(|reply| Job::PasswordHash { name, reply }).await
    }

    pub async fn set_ban(&self, name: String, banned: bool) -> Result<(), StoreError> {
        self.ask(|reply| Job::SetBan { name, banned, reply }).await
    }

    /// The accounts flagged admin now (the operator may change them while the server runs).
    pub async fn admin_names(&self) -> Result<HashSet<String>, StoreError> {
        self.ask(Job::AdminNames).await
    }

    /// Counts one use of a verified invite, unless it is used up or revoked.
    pub async fn use_invite(
        &self,
        invite: crate::invite::token::Invite,
    ) -> Result<crate::invite::ledger::InviteUse, StoreError> {
        self.ask(|reply| Job::UseInvite { invite, reply }).await
    }

    /// Has the operator revoked the invite `id` (and with it the member passes it led to)?
    pub async fn invite_revoked(&self, id: String) -> Result<bool, StoreError> {
        self.ask(|reply| Job::InviteRevoked { id, reply }).await
    }

    /// Round trip through the store thread (readiness check: the thread runs and answers).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.ask(Job::Ping).await
    }
}

impl StoreThread {
    /// Waits until every job sent before (by any handle) is done. Call after the last handle
    /// is dropped, or the thread keeps waiting for more jobs.
    pub fn close(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Opens (creating if needed) `data_dir/relaychat.db` with the current schema, private (0600)
/// and in WAL mode with a busy timeout, so that the operator's commands (`relaychat user`,
/// `relaychat invite`) can write to it while the server runs.
pub fn open_database(data_dir: &Path) -> Result<Connection, StoreError> {
    let dir_error = |source| StoreError::DataDir { path: data_dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(dir_error)?;
    let path = data_dir.join("relaychat.db");
    create_private(&path).map_err(dir_error)?;
    let db = Connection::open(&path)?;
    db.execute_batch(
        // The busy timeout first: with a server running, the CLI's own statements may have to
        // wait for the store thread's transaction.
        "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS messages (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             kind TEXT NOT NULL,
             username TEXT,
             text TEXT NOT NULL,
             timestamp TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS accounts (
             username TEXT PRIMARY KEY,
             password_hash TEXT NOT NULL,
             created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
         CREATE TABLE IF NOT EXISTS bans (
             username TEXT PRIMARY KEY,
             created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
    )?;
    crate::accounts::migrate(&db)?;
    crate::invite::ledger::migrate(&db)?;
    for suffix in ["", "-wal", "-shm"] {
        narrow_mode(&data_dir.join(format!("relaychat.db{suffix}")));
    }
    Ok(db)
}

fn load(db: &Connection, history_limit: usize) -> Result<Loaded, StoreError> {
    let mut statement = db.prepare(
        "SELECT kind, username, text, timestamp FROM
           (SELECT id, kind, username, text, timestamp FROM messages ORDER BY id DESC LIMIT ?1)
         ORDER BY id ASC",
    )?;
    let history = statement
        .query_map([history_limit as i64], |row| {
            let kind: String = row.get(0)?;
            Ok(HistoryEntry {
                kind: if kind == "chat" { HistoryKind::Chat } else { HistoryKind::System },
                username: row.get(1)?,
                text: row.get(2)?,
                timestamp: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let bans = db
        .prepare("SELECT username FROM bans")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    let admins = crate::accounts::admin_names(db)?;
    Ok(Loaded { history, bans, admins })
}

/// Creates `path` empty with mode 0600 if it does not exist (SQLite would use 0644).
fn create_private(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes group and other permissions away from a file an older version created.
fn narrow_mode(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => tracing::info!("{} was mode {mode:o}; now 0600", path.display()),
            Err(e) => tracing::warn!("cannot make {} private (mode {mode:o}): {e}", path.display()),
        }
    }
}

/// Deletes history beyond `retention`, oldest first, `PRUNE_BATCH` rows at a time, calling
/// `between` after each batch (the store thread serves queued jobs there). Ids grow with time,
/// so both bounds become "every id up to a cutoff".
fn prune(db: &Connection, retention: Retention, mut between: impl FnMut()) -> Result<u64, StoreError> {
    let mut cutoff: Option<i64> = None;
    if retention.max_messages > 0 {
        let by_count: Option<i64> = db
            .query_row(
                "SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?1",
                [i64::try_from(retention.max_messages).unwrap_or(i64::MAX)],
                |row| row.get(0),
            )
            .optional()?;
        cutoff = cutoff.max(by_count);
    }
    if retention.max_days > 0 {
        let oldest_kept = chrono::Utc::now() - chrono::Duration::days(retention.max_days.min(100_000) as i64);
        let oldest_kept = oldest_kept.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let by_age: Option<i64> =
            db.query_row("SELECT max(id) FROM messages WHERE timestamp < ?1", [oldest_kept], |row| {
                row.get(0)
            })?;
        cutoff = cutoff.max(by_age);
    }
    let Some(cutoff) = cutoff else { return Ok(0) };
    let mut deleted = 0u64;
    loop {
        let n = db.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id <= ?1 ORDER BY id LIMIT ?2)",
            params![cutoff, PRUNE_BATCH],
        )?;
        deleted += n as u64;
        if (n as i64) < PRUNE_BATCH {
            break;
        }
        between();
    }
    if deleted > 0 {
        tracing::debug!(deleted, "history pruned");
    }
    Ok(deleted)
}

fn run(db: Connection, jobs: std_mpsc::Receiver<Job>, retention: Retention) {
    let mut next_prune = Instant::now() + retention.interval;
    loop {
        let wait = next_prune.saturating_duration_since(Instant::now());
        match jobs.recv_timeout(wait) {
            Ok(job) => handle(&db, job),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                let pruned = prune(&db, retention, || {
                    // Between batches: answer what queued up (appends must not wait).
                    while let Ok(job) = jobs.try_recv() {
                        handle(&db, job);
                    }
                });
                if let Err(e) = pruned {
                    tracing::warn!("history pruning failed: {e}");
                }
                next_prune = Instant::now() + retention.interval;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Leave a tidy database behind: fold the WAL into the main file.
    if let Err(e) = db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!("final WAL checkpoint failed: {e}");
    }
}

fn handle(db: &Connection, job: Job) {
    {
        match job {
            Job::Append(entries, reply) => {
                let _ = reply.send(append(db, &entries));
            }
            Job::CreateAccount { name, password_hash, reply } => {
                let result = db
                    .execute(
                        "INSERT INTO accounts (username, password_hash) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        params![name, password_hash],
                    )
                    .map(|inserted| inserted == 1)
                    .map_err(StoreError::from);
                let _ = reply.send(result);
            }
            Job::PasswordHash { name, reply } => {
                let result = db
                    .query_row("SELECT password_hash FROM accounts WHERE username = ?1", [name], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(StoreError::from);
                let _ = reply.send(result);
            }
            Job::SetBan { name, banned, reply } => {
                let sql = if banned {
                    "INSERT INTO bans (username) VALUES (?1) ON CONFLICT DO NOTHING"
                } else {
                    "DELETE FROM bans WHERE username = ?1"
                };
                let _ = reply.send(db.execute(sql, [name]).map(|_| ()).map_err(StoreError::from));
            }
            Job::AdminNames(reply) => {
                let _ = reply.send(crate::accounts::admin_names(db));
            }
            Job::UseInvite { invite, reply } => {
                let _ = reply.send(crate::invite::ledger::use_invite(db, &invite));
            }
            Job::InviteRevoked { id, reply } => {
                let _ = reply.send(crate::invite::ledger::is_revoked(db, &id));
            }
            Job::Ping(reply) => {
                let _ = reply.send(db.query_row("SELECT 1", [], |_| Ok(())).map_err(StoreError::from));
            }
        }
    }
}

fn append(db: &Connection, entries: &[HistoryEntry]) -> Result<(), StoreError> {
    // Unchecked: the store thread is the only user of this connection and never nests these.
    let tx = db.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (kind, username, text, timestamp) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for e in entries {
            insert.execute(params![e.kind.as_str(), e.username, e.text, e.timestamp])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> HistoryEntry {
        HistoryEntry {
            kind: HistoryKind::Chat,
            username: Some("alice".into()),
            text: text.into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[tokio::test]
    async fn history_accounts_and_bans_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread, loaded) = Store::open(dir.path(), 2).unwrap();
        assert!(loaded.history.is_empty());
        store.append(vec![entry("one"), entry("two"), entry("three")]).await.unwrap();
        assert!(store.create_account("alice".into(), "hash".into()).await.unwrap());
        assert!(!store.create_account("alice".into(), "other".into()).await.unwrap());
        store.set_ban("mallory".into(), true).await.unwrap();
        drop(store);
        thread.close();

        let (store, thread, loaded) = Store::open(dir.path(), 2).unwrap();
        let texts: Vec<_> = loaded.history.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["two", "three"]);
        assert!(loaded.bans.contains("mallory"));
        assert_eq!(store.password_hash("alice".into()).await.unwrap().as_deref(), Some("hash"));
        assert_eq!(store.password_hash("bob".into()).await.unwrap(), None);
        drop(store);
        thread.close();
    }
}
