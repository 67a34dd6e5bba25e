//! Cluster mode: several relaychat nodes on one Redis behave as one server.
//!
//! On with `[cluster] redis_url` (src/config/cluster.rs); without it none of this runs and the
//! node keeps its single-node code paths (SQLite history, bans and accounts).
//!
//! ## The shared log
//! Every change every node must see (a join, a chat message, a ban, a node's death...) is one
//! entry of the Redis Stream `{ns}:log` (`event::ClusterEvent`), appended by a Lua script that
//! checks the invariant and makes the durable write in the same atomic step (`scripts`). Each
//! node reads the log on its own connection (`reader`: `XREAD BLOCK` from its last ID) and hands
//! the entries to its hub in order; the hub applies them (`Hub::cluster_event`). So:
//!
//! - **one order everywhere**: every node applies the same entries in the same order; a node
//!   delivers even its own users' chat only when it reads it back from the log;
//! - **per-room sequence number**: each entry carries `n`, taken with `INCR {ns}:log:seq` in
//!   the same script as its `XADD`, so the numbers are consecutive (the stream ID orders them
//!   too, and is where a reader resumes). A node remembers the last ID and number it applied;
//! - **gap detection and repair**: after a reconnect the node continues with `XREAD` from its
//!   last ID, so it gets exactly what it missed (repair by construction). If entries it had not
//!   read were trimmed meanwhile (the log is capped at `MAXLEN ~ 100000`), the next number it
//!   reads is not last + 1 (or, checked at reconnect, the oldest ID left is newer than its
//!   last): that is a gap the log cannot fill, and the node resynchronizes from a snapshot
//!   (`scripts::SNAPSHOT`: history, online list, bans, mutes, voice seats and the log ID and
//!   number they are current at, read atomically) and logs that it did;
//! - **durability**: the history entry is in `{ns}:history` before the log entry can be read,
//!   and run Redis with `appendonly yes`, `appendfsync always`: Redis then fsyncs the AOF before
//!   it answers anyone, readers included. A sender who saw its echo holds a durably written
//!   message, and a node killed with -9 loses nothing that anyone saw.
//!
//! ## Presence
//! A name is `{ns}:name:{name}` = `node/conn`, claimed with `SET NX PX presence_ttl_ms` in the
//! claim script (exactly one of any number of concurrent claims wins) and renewed by the owning
//! node's heartbeat (`writer`, every `heartbeat_ms`). A node killed with -9 stops renewing: its
//! record in `{ns}:nodes` expires after `presence_ttl_ms` (default 10 s), the next heartbeat of
//! any node sees it and runs the reap script (one reaper wins), which releases the dead node's
//! names and logs `NodeGone`: every node then announces "<name> has left." for its users.
//!
//! ## Faults
//! Redis unreachable: `/readyz` answers 503 naming the cluster store, new connections and
//! logins are refused with a system message and close code 1013 ("try again later", RFC 6455's
//! registry), chat gets "Message not sent: ..." (never a silent loss, never a fake echo; a
//! write Redis did not answer in time gets "may not have been sent", as it may be stored), live
//! sessions stay connected. When Redis is back the reader continues from its last ID, the next
//! heartbeat re-registers the node and re-claims its users' names (a user whose name was taken
//! meanwhile is told and disconnected), and a node only reaps others after it has itself been
//! connected for a whole TTL (so nodes coming back together do not reap each other).

pub mod accounts;
pub mod event;
pub mod invites;
pub mod reader;
pub mod scripts;
pub mod tls;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClusterSettings;

/// Log entries kept (approximately: `MAXLEN ~` trims whole stream nodes). A node away longer
/// than this many changes resynchronizes from a snapshot.
pub const LOG_MAX_ENTRIES: u64 = 100_000;
/// Signaling entries kept in a node's inbox (approximately): a node reads its inbox as fast as
/// its log, so this only matters for a node that is gone.
pub const INBOX_MAX_ENTRIES: u64 = 10_000;
/// History entries kept when `[history] retention_max_messages` is 0 (no count limit asked):
/// Redis holds everything in memory, so there is always a cap.
pub const HISTORY_HARD_CAP: u64 = 1_000_000;
/// Up to this history cap `MAXLEN` is exact; above, `~` (cheaper trimming, a few more kept).
pub const HISTORY_EXACT_TRIM_UP_TO: u64 = 100_000;
/// Changes waiting for the writer; beyond, a change fails at once ("not sent").
pub const WRITE_QUEUE: usize = 4096;
/// How long one Redis command may take before it counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis keys of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    pub namespace: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self { namespace: namespace.to_string() }
    }
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.namespace)
    }
    pub fn log(&self) -> String {
        self.key("log")
    }
    pub fn history(&self) -> String {
        self.key("history")
    }
    pub fn online(&self) -> String {
        self.key("online")
    }
    pub fn bans(&self) -> String {
        self.key("bans")
    }
    pub fn mutes(&self) -> String {
        self.key("mutes")
    }
    pub fn nodes(&self) -> String {
        self.key("nodes")
    }
    pub fn node(&self, id: &str) -> String {
        format!("{}{id}", self.node_prefix())
    }
    pub fn node_prefix(&self) -> String {
        self.key("node:")
    }
    pub fn name_prefix(&self) -> String {
        self.key("name:")
    }
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.name_prefix())
    }
    pub fn voice(&self) -> String {
        self.key("voice")
    }
    pub fn inbox(&self, node: &str) -> String {
        self.key(&format!("inbox:{node}"))
    }
    pub fn accounts(&self) -> String {
        self.key("accounts")
    }
    pub fn admins(&self) -> String {
        self.key("admins")
    }
    pub fn turn_secret(&self) -> String {
        self.key("turn_secret")
    }
    pub fn invite_secret(&self) -> String {
        self.key("invite_secret")
    }
    /// The record of one invite (`invites`: uses, revocation).
    pub fn invite(&self, id: &str) -> String {
        self.key(&format!("invite:{id}"))
    }
    /// The index of the invite records, for `relaychat invite --list`.
    pub fn invites(&self) -> String {
        self.key("invites")
    }
}

/// What the node knows about its link to Redis, read by `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// The last write (or heartbeat) succeeded.
    pub writer_up: AtomicBool,
    /// The log reader is connected and reading.
    pub reader_up: AtomicBool,
    /// Nodes whose record has not expired, as of the last heartbeat.
    pub nodes_alive: AtomicU64,
    /// Unix ms of the last log entry applied (its stream ID's time).
    pub last_applied_ms: AtomicU64,
    /// Unix ms when the reader last confirmed it was caught up (an empty blocking read).
    pub caught_up_ms: AtomicU64,
    /// Changes that could not be written (the sender was told).
    pub publish_failures: AtomicU64,
    /// Snapshot resynchronizations (start-up included).
    pub resyncs: AtomicU64,
}

impl ClusterStatus {
    /// Both connections work: the node may admit users and accept chat.
    pub fn is_up(&self) -> bool {
        self.writer_up.load(Ordering::Relaxed) && self.reader_up.load(Ordering::Relaxed)
    }
}

/// What the rest of the server holds of the cluster.
#[derive(Clone)]
pub struct ClusterContext {
    pub settings: ClusterSettings,
    pub node_id: String,
    pub keys: Keys,
    pub client: redis::Client,
    pub status: Arc<ClusterStatus>,
}

impl ClusterContext {
    /// Opens the client (no connection yet; TLS for `rediss://`) and fixes this node's id.
    pub fn new(settings: &ClusterSettings) -> anyhow::Result<Self> {
        let client = tls::open_client(settings)?;
        let node_id = match settings.node_id.trim() {
            "" => format!("node-{}", hex::encode(rand::random::<[u8; 4]>())),
            id => id.to_string(),
        };
        Ok(Self {
            settings: settings.clone(),
            node_id,
            keys: Keys::new(&settings.namespace),
            client,
            status: Arc::new(ClusterStatus::default()),
        })
    }

    /// A connection that reconnects on its own, with the command and connect timeouts.
    pub fn manager(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(redis::aio::ConnectionManager::new_lazy_with_config(self.client.clone(), config)?)
    }

    /// The TURN secret all nodes share: the first node stores a fresh random one (`SET NX`),
    /// every node then reads whatever is there.
    pub async fn shared_turn_secret(&self) -> anyhow::Result<Vec<u8>> {
        let mut conn = self.manager()?;
        let key = self.keys.turn_secret();
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        // The first command of a node's start: over TLS, its failure is most likely the
        // certificate, so the message says what the node trusted.
        let _: Option<String> =
            redis::cmd("SET").arg(&key).arg(&fresh).arg("NX").query_async(&mut conn).await.map_err(|e| {
                match tls::describe_link(&self.settings) {
                    Some(link) => anyhow::Error::new(e).context(link),
                    None => e.into(),
                }
            })?;
        let secret: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        secret
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .ok_or_else(|| anyhow::anyhow!("{key} is empty in the cluster store"))
    }

    /// Stores a rotated TURN secret for the nodes that start later.
    pub async fn store_turn_secret(&self, secret: &[u8]) -> anyhow::Result<()> {
        let mut conn = self.manager()?;
        let _: () = redis::cmd("SET").arg(self.keys.turn_secret()).arg(secret).query_async(&mut conn).await?;
        Ok(())
    }
}

/// A stream ID (`ms-seq`) as a pair that orders like Redis orders them.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(parse_stream_id("10-0") > parse_stream_id("9-5"));
        assert!(parse_stream_id("10-10") > parse_stream_id("10-9"));
        assert_eq!(parse_stream_id("junk"), None);
        assert_eq!(Keys::new("rc").name("bob"), "rc:name:bob");
    }
}
