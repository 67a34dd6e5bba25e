//! The heartbeat: renews this node's record and the names its users hold, retries what could
//! not be released while Redis was away, learns every live node's relay addresses, reaps dead
//! nodes and trims the history by age.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ClusterCommand, Writer};
use crate::cluster::event::{ClusterEvent, Owner};
use crate::hub::runner::HubEvent;
use crate::protocol::iso_timestamp;

/// Dead nodes reaped per heartbeat.
const MAX_REAPS_PER_HEARTBEAT: usize = 16;

impl Writer {
    pub(super) async fn heartbeat(&mut self, names: Vec<(String, Owner)>) {
        // Releases that failed while Redis was away go first: the hub has forgotten those.
        while let Some(command) = self.pending_releases.pop_front() {
            let done = match &command {
                ClusterCommand::Release { name, owner, event } => self.release(name, owner, event).await,
                ClusterCommand::Publish { event, .. } => self.leave_voice_seat(event).await.is_ok(),
                _ => true,
            };
            if !done {
                self.pending_releases.push_front(command);
                return;
            }
        }
        let node = self.ctx.node_id.clone();
        let keys = [self.ctx.keys.nodes(), self.ctx.keys.node(&node)];
        let mut invocation = self.invocation(&self.scripts.heartbeat, &keys);
        invocation
            .arg(&node)
            .arg(self.ctx.settings.presence_ttl_ms)
            .arg(&self.node_record)
            .arg(self.ctx.keys.name_prefix())
            .arg(self.ctx.keys.node_prefix());
        for (name, owner) in &names {
            let rejoin = ClusterEvent::UserJoined { name: name.clone(), owner: owner.clone(), entry: None };
            invocation.arg(name).arg(owner.to_string()).arg(rejoin.to_json());
        }
        let result: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> =
            invocation.invoke_async(&mut self.conn.clone()).await;
        let (lost, expired, records) = match result {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!("cluster heartbeat failed: {e}");
                self.set_up(false);
                return;
            }
        };
        self.set_up(true);
        self.ctx.status.nodes_alive.store(records.len() as u64, Ordering::Relaxed);
        self.learn_relays(&records).await;
        if !lost.is_empty() {
            tracing::warn!(?lost, "names taken by another node while this one was cut off");
            self.hub.send(HubEvent::NamesLost { names: lost }).await;
        }
        // Only a node that has itself been connected for a whole TTL reaps: after a Redis
        // outage every node's record has expired, and the live ones need one heartbeat to renew.
        let ttl = Duration::from_millis(self.ctx.settings.presence_ttl_ms);
        if self.up_since.is_some_and(|since| since.elapsed() >= ttl) {
            for dead in expired.iter().filter(|dead| **dead != node).take(MAX_REAPS_PER_HEARTBEAT) {
                self.reap(dead).await;
            }
        }
        self.trim_by_age().await;
    }

    /// The relay addresses of every live node (their records): the relay's peer policy and the
    /// hub's force_relay rebuild accept exactly these, plus this node's own.
    async fn learn_relays(&mut self, records: &[String]) {
        let mut ips: Vec<IpAddr> = records
            .iter()
            .filter_map(|record| serde_json::from_str::<serde_json::Value>(record).ok())
            .flat_map(|record| {
                record["relay_addresses"]
                    .as_array()
                    .map(|list| {
                        list.iter().filter_map(|a| a.as_str()?.parse::<IpAddr>().ok()).collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        ips.sort();
        ips.dedup();
        if ips == self.known_relays {
            return;
        }
        tracing::info!(?ips, "relay addresses of the cluster's nodes");
        self.known_relays = ips.clone();
        if let Some(relays) = &self.relays {
            relays.set(ips.iter().copied());
        }
        self.hub.send(HubEvent::ClusterRelays { ips }).await;
    }

    async fn reap(&mut self, dead: &str) {
        let keys = [self.ctx.keys.nodes(), self.ctx.keys.node(dead), self.ctx.keys.voice()];
        let mut invocation = self.invocation(&self.scripts.reap, &keys);
        invocation.arg(dead).arg(self.ctx.keys.name_prefix()).arg(iso_timestamp(chrono::Utc::now()));
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(1) => tracing::warn!(node = dead, "reaped a node that stopped renewing its record"),
            Ok(_) => {}
            Err(e) => tracing::warn!(node = dead, "reaping failed: {e}"),
        }
    }

    /// `[history] retention_max_days`: drops entries older than that (stream IDs are ms times).
    async fn trim_by_age(&mut self) {
        if self.history.retention_max_days == 0 {
            return;
        }
        let interval = Duration::from_secs(self.history.prune_interval_s.max(1));
        if self.last_age_trim.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        self.last_age_trim = Some(Instant::now());
        let keep_ms = self.history.retention_max_days.min(100_000) * 86_400_000;
        let cutoff = (chrono::Utc::now().timestamp_millis().max(0) as u64).saturating_sub(keep_ms);
        let result: redis::RedisResult<u64> = redis::cmd("XTRIM")
            .arg(self.ctx.keys.history())
            .arg("MINID")
            .arg("~")
            .arg(cutoff)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            tracing::warn!("history trim by age failed: {e}");
        }
    }
}
