//! The store against the real binary: the database and its WAL/SHM files are private (0600),
//! and history retention keeps the last N messages and nothing older than D days.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn count(db: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(db).unwrap();
    let total = db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
    let old =
        db.query_row("SELECT count(*) FROM messages WHERE timestamp < '2021'", [], |r| r.get(0)).unwrap();
    (total, old)
}

#[tokio::test]
async fn database_wal_and_shm_are_created_0600() {
    let server = Server::start("");
    let mut alice = server.join("alice").await; // the join notice is written: WAL and SHM exist
    alice.chat("secret").await;
    alice.recv_type("chat").await;
    let data = server.dir.join("data");
    for name in ["relaychat.db", "relaychat.db-wal", "relaychat.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} is readable by others");
    }
}

#[tokio::test]
async fn retention_keeps_the_last_n_messages_and_drops_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db_path = data.join("relaychat.db");
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
             username TEXT, text TEXT NOT NULL, timestamp TEXT NOT NULL);",
        )
        .unwrap();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        for i in 0..3 {
            db.execute(
                "INSERT INTO messages (kind, username, text, timestamp) VALUES ('chat', 'old', ?1, '2020-01-01T00:00:00.000Z')",
                [format!("ancient {i}")],
            )
            .unwrap();
        }
        for i in 0..20 {
            db.execute(
                "INSERT INTO messages (kind, username, text, timestamp) VALUES ('chat', 'new', ?1, ?2)",
                rusqlite::params![format!("recent {i}"), now],
            )
            .unwrap();
        }
        // An older version left it world-readable.
        std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start_in(
        dir.path(),
        "[history]\nretention_max_messages = 10\nretention_max_days = 30\nprune_interval_s = 1\n",
    );
    assert_eq!(mode(&db_path), 0o600, "an existing database is made private at start");
    // Pruned at start: the old ones by age, then down to 10.
    assert_eq!(count(&db_path), (10, 0));
    let mut alice = server.join("alice").await;
    for i in 0..3 {
        alice.chat(&format!("fresh {i}")).await;
        alice.recv_type("chat").await;
    }
    // Live traffic pushed it above 10; the background prune brings it back.
    let started = Instant::now();
    let mut seen = count(&db_path);
    while seen.0 > 10 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = count(&db_path);
    }
    assert_eq!(seen, (10, 0), "retention did not prune live history");
    // The newest survive.
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let newest: String =
        db.query_row("SELECT text FROM messages ORDER BY id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(newest, "fresh 2");
}
