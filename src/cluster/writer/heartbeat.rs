//! The heartbeat: renews this node's record and the names its users hold, retries what could
//! not be released while Redis was away, learns every live node's relay addresses, reaps dead
//! nodes and trims the history by age.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{ClusterCommand, Writer, START_RETRY_PAUSE};
use crate::cluster::event::{ClusterEvent, Owner};
use crate::hub::runner::HubEvent;
use crate::protocol::iso_timestamp;

/// Dead nodes reaped per heartbeat.
const MAX_REAPS_PER_HEARTBEAT: usize = 16;
/// How often ended timed bans and mutes are removed from the store.
const RESTRICTION_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

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
                if self.ctx.status.writer_up.load(Ordering::Relaxed) {
                    // Redis answered and refused it (a script error on junk data): it would be
                    // refused again, and block every later heartbeat.
                    tracing::error!(?command, "dropped a parked cluster change Redis refuses");
                    continue;
                }
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
        self.prune_restrictions().await;
    }

    /// Timed bans and mutes that ended leave their hashes (every node lifted them already).
    async fn prune_restrictions(&mut self) {
        if self.last_restriction_prune.is_some_and(|at| at.elapsed() < RESTRICTION_PRUNE_INTERVAL) {
            return;
        }
        self.last_restriction_prune = Some(Instant::now());
        let mut invocation = self.scripts.prune_restrictions.key(self.ctx.keys.bans());
        invocation.key(self.ctx.keys.mutes());
        let result: redis::RedisResult<u64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "removed ended timed bans and mutes from the store"),
            Err(e) => tracing::warn!("pruning ended bans and mutes failed: {e}"),
        }
    }

    /// A node restarted under the same id (after kill -9 systemd restarts it within seconds)
    /// would find its previous run's users still online and seated: nobody reaps them (this run
    /// renews the node's record) and connection numbers start again at 1, so they would stay
    /// forever or pass for this run's. Before anything else is written, they go, as `NodeGone`
    /// so that every node announces the leaves. (A per-start suffix in the owner would need
    /// the reaper of a dead run to find it, with no record naming it; this needs nothing new.)
    pub(super) async fn release_previous_run(&mut self, commands: &mpsc::Receiver<ClusterCommand>) {
        let node = self.ctx.node_id.clone();
        while !commands.is_closed() {
            let keys = [
                self.ctx.keys.nodes(),
                self.ctx.keys.node(&node),
                self.ctx.keys.voice(),
                self.ctx.keys.inbox(&node),
            ];
            let mut invocation = self.invocation(&self.scripts.reap, &keys);
            invocation
                .arg(&node)
                .arg(self.ctx.keys.name_prefix())
                .arg(iso_timestamp(chrono::Utc::now()))
                .arg("own");
            let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
            match result {
                Ok(released) => {
                    if released == 1 {
                        tracing::warn!(node, "released the users and seats a previous run of this node left");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(node, "cannot release what a previous run left yet: {e}");
                    tokio::time::sleep(START_RETRY_PAUSE).await;
                }
            }
        }
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
        let keys = [
            self.ctx.keys.nodes(),
            self.ctx.keys.node(dead),
            self.ctx.keys.voice(),
            self.ctx.keys.inbox(dead),
        ];
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
