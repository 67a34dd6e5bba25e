//! Snapshots: the shared state read in one atomic script, at start and whenever the log no
//! longer holds what follows the last entry this node applied.

use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;

use super::{field, Reader, Stop};
use crate::cluster::event::{Owner, SeatRecord, Snapshot};
use crate::cluster::parse_stream_id;
use crate::hub::runner::HubEvent;
use crate::protocol::HistoryEntry;

impl Reader {
    /// Replaces the hub's replica with a snapshot and continues from the log position it is
    /// current at. After a gap (not at start) it says so in the log.
    pub(super) async fn resynchronize(&mut self, conn: &mut MultiplexedConnection) -> Result<(), Stop> {
        let after_gap = self.log.is_some();
        if after_gap {
            tracing::warn!(
                node = %self.ctx.node_id,
                "the cluster log was trimmed past this node's last entry: resynchronizing from a snapshot"
            );
        }
        let (id, seq, snapshot) = self.snapshot(conn, after_gap).await?;
        self.ctx.status.resyncs.fetch_add(1, Ordering::Relaxed);
        if !self.hub.send(HubEvent::ClusterSnapshot(snapshot)).await {
            return Err(Stop::HubGone);
        }
        self.log = Some(id);
        self.seq = Some(seq);
        Ok(())
    }

    /// Does the log still hold what follows `last`? Not if its oldest entry is newer than `last`
    /// (trimmed) or it is empty although we had read something (Redis lost its data).
    pub(super) async fn has_gap(&self, conn: &mut MultiplexedConnection, last: &str) -> Result<bool, Stop> {
        let oldest: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.ctx.keys.log())
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
        &self,
        conn: &mut MultiplexedConnection,
        resync: bool,
    ) -> Result<(String, u64, Snapshot), Stop> {
        type Reply =
            (String, u64, Vec<(String, Vec<String>)>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);
        let (last_id, seq, newest_first, online, bans, mutes, voice): Reply = self
            .scripts
            .snapshot
            .key(self.ctx.keys.log())
            .key(self.ctx.keys.history())
            .key(self.ctx.keys.online())
            .key(self.ctx.keys.bans())
            .key(self.ctx.keys.mutes())
            .key(self.ctx.keys.voice())
            .arg(self.history_limit)
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
}
