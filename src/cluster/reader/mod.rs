//! The log reader: its own Redis connection (a blocking `XREAD` would hold up everything else
//! on a shared one), reading `{ns}:log` from the last applied ID and handing each event to the
//! hub in order.
//!
//! At start, and whenever the log no longer holds the entry after the last applied one (trimmed
//! while this node was away: a gap the log cannot fill), it first reads a snapshot (history,
//! online list, bans, mutes and the log ID they are current at, in one atomic script) and hands
//! that to the hub (`HubEvent::ClusterSnapshot`). After a plain reconnect it just continues
//! from its last ID: the entries it missed are still there, so nothing is skipped or repeated.
//!
//! The same blocking read also takes the node's inbox (`{ns}:inbox:{id}`: signaling for its
//! voice members from other nodes), log first, so an offer is never applied before the join
//! it follows when both arrive together. The inbox starts at its newest entry: what was sent
//! to an earlier run of this node id is stale.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::event::{ClusterEvent, RoutedSignal};
use super::scripts::Scripts;
use super::{parse_stream_id, ClusterContext, CONNECT_TIMEOUT};
use crate::hub::runner::{HubEvent, HubHandle};

mod snapshot;

/// How long one `XREAD` blocks waiting for new entries.
const BLOCK_MS: u64 = 1000;
/// Entries taken per read.
const READ_COUNT: usize = 512;
/// Log entries handed to the hub in one event (one hub step): a read of many entries reaches
/// each connection as one write instead of one per entry, and a step stays short.
const APPLY_BATCH: usize = 64;
/// Reconnect delays: from the first to the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Why reading stopped.
enum Stop {
    /// Redis failed: reconnect.
    Redis(redis::RedisError),
    /// The hub is gone: the node is shutting down.
    HubGone,
}

impl From<redis::RedisError> for Stop {
    fn from(e: redis::RedisError) -> Self {
        Stop::Redis(e)
    }
}

/// Runs until the hub stops.
pub async fn run(ctx: ClusterContext, hub: HubHandle, history_limit: usize) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + super::COMMAND_TIMEOUT));
    let mut reader =
        Reader { ctx, hub, scripts: Scripts::new(), history_limit, log: None, seq: None, inbox: None };
    let mut delay = RECONNECT_FIRST;
    // Whether this outage was logged at warn level: once per outage, so a node that cannot
    // reach Redis from its start (a wrong address, a certificate the CA does not sign) says why
    // without an info-level log full of retries.
    let mut reported = false;
    loop {
        let stop = match reader.ctx.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(mut conn) => {
                delay = RECONNECT_FIRST;
                reported = false;
                match reader.read(&mut conn).await {
                    Ok(never) => match never {},
                    Err(stop) => stop,
                }
            }
            Err(e) => Stop::Redis(e),
        };
        let status = &reader.ctx.status;
        let was_up = status.reader_up.swap(false, Ordering::Relaxed);
        // The writer's connection went down with ours: it checks it before its next change.
        status.writer_up.store(false, Ordering::Relaxed);
        match stop {
            Stop::HubGone => return,
            Stop::Redis(e) if was_up => {
                reported = true;
                tracing::warn!(node = %reader.ctx.node_id, "cluster log reader lost Redis: {e}");
            }
            Stop::Redis(e) if !reported => {
                reported = true;
                let link = super::tls::describe_link(&reader.ctx.settings).map(|l| format!(" ({l})"));
                tracing::warn!(
                    node = %reader.ctx.node_id,
                    "cluster log reader cannot connect to Redis{}: {e}; retrying, /readyz answers 503 meanwhile",
                    link.unwrap_or_default()
                );
            }
            Stop::Redis(e) => tracing::debug!("cluster log reader cannot connect: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// The reader's state across reconnects: where it is in the log and in its inbox.
struct Reader {
    ctx: ClusterContext,
    hub: HubHandle,
    scripts: Scripts,
    /// History entries a snapshot brings (the hub's ring size).
    history_limit: usize,
    /// The last log entry applied: its stream ID and sequence number.
    log: Option<String>,
    seq: Option<u64>,
    /// The last inbox entry delivered.
    inbox: Option<String>,
}

impl Reader {
    /// Reads until Redis fails or the hub is gone.
    async fn read(&mut self, conn: &mut MultiplexedConnection) -> Result<std::convert::Infallible, Stop> {
        let inbox_key = self.ctx.keys.inbox(&self.ctx.node_id);
        if self.inbox.is_none() {
            let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(&inbox_key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            self.inbox = Some(newest.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
        }
        let resync = match self.log.clone() {
            None => true,
            Some(last) => self.has_gap(conn, &last).await?,
        };
        if resync {
            self.resynchronize(conn).await?;
        }
        self.ctx.status.reader_up.store(true, Ordering::Relaxed);
        type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
        loop {
            let from = self.log.clone().unwrap_or_else(|| "0-0".into());
            let inbox_from = self.inbox.clone().unwrap_or_else(|| "0-0".into());
            let reply: Reply = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(self.ctx.keys.log())
                .arg(&inbox_key)
                .arg(&from)
                .arg(&inbox_from)
                .query_async(conn)
                .await?;
            let mut read_any = false;
            let mut log_entries = Vec::new();
            let mut inbox_entries = Vec::new();
            for (stream, entries) in reply.into_iter().flatten() {
                if stream == inbox_key {
                    inbox_entries = entries;
                } else {
                    log_entries = entries;
                }
            }
            let mut events = Vec::with_capacity(log_entries.len().min(APPLY_BATCH));
            for (id, fields) in log_entries {
                read_any = true;
                let n = field(&fields, "n").and_then(|n| n.parse::<u64>().ok());
                if let (Some(last), Some(n)) = (self.seq, n) {
                    if n > last + 1 {
                        // Entries last+1 .. n-1 were trimmed before this node read them: the log
                        // cannot fill the gap, a snapshot (newer than this whole batch) does. What
                        // came before the gap goes first.
                        apply(&self.hub, std::mem::take(&mut events)).await?;
                        self.resynchronize(conn).await?;
                        break;
                    }
                }
                if n.is_some() {
                    self.seq = n;
                }
                if let Some((ms, _)) = parse_stream_id(&id) {
                    self.ctx.status.last_applied_ms.store(ms, Ordering::Relaxed);
                }
                self.log = Some(id.clone());
                let event = field(&fields, "e").and_then(ClusterEvent::from_json);
                let Some(event) = event else {
                    tracing::warn!(id, "skipping a cluster log entry this version cannot read");
                    continue;
                };
                events.push(event);
                if events.len() == APPLY_BATCH {
                    apply(&self.hub, std::mem::take(&mut events)).await?;
                }
            }
            apply(&self.hub, events).await?;
            for (id, fields) in inbox_entries {
                read_any = true;
                self.inbox = Some(id.clone());
                let signal = field(&fields, "s").and_then(|s| serde_json::from_str::<RoutedSignal>(s).ok());
                let Some(signal) = signal else {
                    tracing::warn!(id, "skipping an inbox entry this version cannot read");
                    continue;
                };
                if !self.hub.send(HubEvent::RemoteSignal(signal)).await {
                    return Err(Stop::HubGone);
                }
            }
            if !read_any {
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                self.ctx.status.caught_up_ms.store(now, Ordering::Relaxed);
            }
        }
    }
}

/// Hands a read's log events to the hub: one step per run of voice or of other entries
/// (`cluster_steps`), so voice entries can take the signal lane and chat stays batched.
async fn apply(hub: &HubHandle, events: Vec<ClusterEvent>) -> Result<(), Stop> {
    for events in crate::hub::lanes::cluster_steps(events) {
        if !hub.send(HubEvent::ClusterApply { events }).await {
            return Err(Stop::HubGone);
        }
    }
    Ok(())
}

/// The value of `name` in a stream entry's flat field list.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|pair| pair.first().map(String::as_str) == Some(name))
        .and_then(|p| p.get(1))
        .map(String::as_str)
}
