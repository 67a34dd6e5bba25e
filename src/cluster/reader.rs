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

use super::event::{ClusterEvent, Owner, RoutedSignal, SeatRecord, Snapshot};
use super::scripts::Scripts;
use super::{parse_stream_id, ClusterContext, CONNECT_TIMEOUT};
use crate::hub::runner::{HubEvent, HubHandle};
use crate::protocol::HistoryEntry;

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
    let scripts = Scripts::new();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + super::COMMAND_TIMEOUT));
    let mut last_id: Option<String> = None;
    let mut inbox_id: Option<String> = None;
    let mut seq: Option<u64> = None;
    let mut delay = RECONNECT_FIRST;
    loop {
        let stop = match ctx.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(mut conn) => {
                delay = RECONNECT_FIRST;
                let mut cursor = Cursor { log: &mut last_id, seq: &mut seq, inbox: &mut inbox_id };
                read(&ctx, &hub, &scripts, &mut conn, &mut cursor, history_limit).await
            }
            Err(e) => Stop::Redis(e),
        };
        let was_up = ctx.status.reader_up.swap(false, Ordering::Relaxed);
        // The writer's connection went down with ours: it checks it before its next change.
        ctx.status.writer_up.store(false, Ordering::Relaxed);
        match stop {
            Stop::HubGone => return,
            Stop::Redis(e) if was_up => {
                tracing::warn!(node = %ctx.node_id, "cluster log reader lost Redis: {e}");
            }
            Stop::Redis(e) => tracing::debug!("cluster log reader cannot connect: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// Where the reader is: the last log entry applied (ID and sequence number), the last inbox
/// entry delivered.
struct Cursor<'a> {
    log: &'a mut Option<String>,
    seq: &'a mut Option<u64>,
    inbox: &'a mut Option<String>,
}

async fn read(
    ctx: &ClusterContext,
    hub: &HubHandle,
    scripts: &Scripts,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor<'_>,
    history_limit: usize,
) -> Stop {
    match read_inner(ctx, hub, scripts, conn, cursor, history_limit).await {
        Ok(never) => match never {},
        Err(stop) => stop,
    }
}

async fn read_inner(
    ctx: &ClusterContext,
    hub: &HubHandle,
    scripts: &Scripts,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor<'_>,
    history_limit: usize,
) -> Result<std::convert::Infallible, Stop> {
    let inbox_key = ctx.keys.inbox(&ctx.node_id);
    if cursor.inbox.is_none() {
        let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(&inbox_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        *cursor.inbox = Some(newest.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
    }
    let resync = match cursor.log.as_deref() {
        None => true,
        Some(last) => has_gap(ctx, conn, last).await?,
    };
    if resync {
        resynchronize(ctx, hub, scripts, conn, cursor, history_limit).await?;
    }
    ctx.status.reader_up.store(true, Ordering::Relaxed);
    type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
    loop {
        let from = cursor.log.clone().unwrap_or_else(|| "0-0".into());
        let inbox_from = cursor.inbox.clone().unwrap_or_else(|| "0-0".into());
        let reply: Reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(ctx.keys.log())
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
            if let (Some(last), Some(n)) = (*cursor.seq, n) {
                if n > last + 1 {
                    // Entries last+1 .. n-1 were trimmed before this node read them: the log
                    // cannot fill the gap, a snapshot (newer than this whole batch) does. What
                    // came before the gap goes first.
                    apply(hub, std::mem::take(&mut events)).await?;
                    resynchronize(ctx, hub, scripts, conn, cursor, history_limit).await?;
                    break;
                }
            }
            if n.is_some() {
                *cursor.seq = n;
            }
            if let Some((ms, _)) = parse_stream_id(&id) {
                ctx.status.last_applied_ms.store(ms, Ordering::Relaxed);
            }
            *cursor.log = Some(id.clone());
            let event = field(&fields, "e").and_then(ClusterEvent::from_json);
            let Some(event) = event else {
                tracing::warn!(id, "skipping a cluster log entry this version cannot read");
                continue;
            };
            events.push(event);
            if events.len() == APPLY_BATCH {
                apply(hub, std::mem::take(&mut events)).await?;
            }
        }
        apply(hub, events).await?;
        for (id, fields) in inbox_entries {
            read_any = true;
            *cursor.inbox = Some(id.clone());
            let signal = field(&fields, "s").and_then(|s| serde_json::from_str::<RoutedSignal>(s).ok());
            let Some(signal) = signal else {
                tracing::warn!(id, "skipping an inbox entry this version cannot read");
                continue;
            };
            if !hub.send(HubEvent::RemoteSignal(signal)).await {
                return Err(Stop::HubGone);
            }
        }
        if !read_any {
            let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
            ctx.status.caught_up_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// Hands log events to the hub as one step (nothing for none).
async fn apply(hub: &HubHandle, events: Vec<ClusterEvent>) -> Result<(), Stop> {
    if events.is_empty() || hub.send(HubEvent::ClusterApply { events }).await {
        Ok(())
    } else {
        Err(Stop::HubGone)
    }
}

/// Replaces the hub's replica with a snapshot and continues from the log position it is
/// current at. After a gap (not at start) it says so in the log.
async fn resynchronize(
    ctx: &ClusterContext,
    hub: &HubHandle,
    scripts: &Scripts,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor<'_>,
    history_limit: usize,
) -> Result<(), Stop> {
    let after_gap = cursor.log.is_some();
    if after_gap {
        tracing::warn!(
            node = %ctx.node_id,
            "the cluster log was trimmed past this node's last entry: resynchronizing from a snapshot"
        );
    }
    let (id, seq, snapshot) = snapshot(ctx, scripts, conn, history_limit, after_gap).await?;
    ctx.status.resyncs.fetch_add(1, Ordering::Relaxed);
    if !hub.send(HubEvent::ClusterSnapshot(snapshot)).await {
        return Err(Stop::HubGone);
    }
    *cursor.log = Some(id);
    *cursor.seq = Some(seq);
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

/// Does the log still hold what follows `last`? Not if its oldest entry is newer than `last`
/// (trimmed) or it is empty although we had read something (Redis lost its data).
async fn has_gap(ctx: &ClusterContext, conn: &mut MultiplexedConnection, last: &str) -> Result<bool, Stop> {
    let oldest: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(ctx.keys.log())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(match oldest.first() {
        Some((first, _)) => parse_stream_id(first) > parse_stream_id(last),
        None => last != "0-0",
    })
}

async fn snapshot(
    ctx: &ClusterContext,
    scripts: &Scripts,
    conn: &mut MultiplexedConnection,
    history_limit: usize,
    resync: bool,
) -> Result<(String, u64, Snapshot), Stop> {
    type Reply =
        (String, u64, Vec<(String, Vec<String>)>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);
    let (last_id, seq, newest_first, online, bans, mutes, voice): Reply = scripts
        .snapshot
        .key(ctx.keys.log())
        .key(ctx.keys.history())
        .key(ctx.keys.online())
        .key(ctx.keys.bans())
        .key(ctx.keys.mutes())
        .key(ctx.keys.voice())
        .arg(history_limit)
        .invoke_async(conn)
        .await?;
    let history: Vec<HistoryEntry> = newest_first
        .iter()
        .rev()
        .filter_map(|(_, fields)| field(fields, "h").and_then(|h| serde_json::from_str(h).ok()))
        .collect();
    let pairs = |flat: &[String]| -> Vec<(String, String)> {
        flat.chunks(2).filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone()))).collect()
    };
    let until = |value: &str| value.parse::<u64>().ok().filter(|&ms| ms > 0);
    let snapshot = Snapshot {
        history,
        online: pairs(&online)
            .into_iter()
            .filter_map(|(name, owner)| Some((name, Owner::parse(&owner)?)))
            .collect(),
        bans: pairs(&bans).into_iter().map(|(name, value)| (name, until(&value))).collect(),
        mutes: pairs(&mutes).into_iter().map(|(name, value)| (name, until(&value))).collect(),
        seats: pairs(&voice)
            .into_iter()
            .filter_map(|(name, seat)| Some((name, serde_json::from_str::<SeatRecord>(&seat).ok()?)))
            .collect(),
        resync,
    };
    Ok((last_id, seq, snapshot))
}
