//! What a phase cost: CPU seconds of the named processes and of this generator, and the
//! Redis side (commands per message, background rate, memory) from `INFO` around the phase.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::procfs;
use crate::redis_stats::{calls_delta, RedisStats, RedisTarget};

use super::*;

/// CPU seconds of the named processes and of this generator.
pub(super) struct CpuMark {
    named: Vec<(String, Option<f64>)>,
    generator: Option<f64>,
}

impl CpuMark {
    pub(super) fn take(pids: &[(String, u32)]) -> CpuMark {
        CpuMark {
            named: pids.iter().map(|(l, p)| (l.clone(), procfs::cpu_seconds(*p))).collect(),
            generator: procfs::cpu_seconds(std::process::id()),
        }
    }

    pub(super) fn since(&self, before: &CpuMark) -> (BTreeMap<String, f64>, Option<f64>) {
        let named = self
            .named
            .iter()
            .zip(&before.named)
            .filter_map(|((l, a), (_, b))| Some((l.clone(), (*a)? - (*b)?)))
            .collect();
        (named, self.generator.zip(before.generator).map(|(a, b)| a - b))
    }
}

/// The Redis side of a phase: a connection plus the marks taken around it.
pub(super) struct RedisProbe {
    pub(super) conn: RedisStats,
}

impl RedisProbe {
    pub(super) async fn connect(url: &Option<String>) -> anyhow::Result<Option<RedisProbe>> {
        let Some(url) = url else { return Ok(None) };
        let target = RedisTarget::parse(url)?;
        Ok(Some(RedisProbe { conn: RedisStats::connect(&target).await? }))
    }

    /// Background command rate: once nothing is being written to the log any more (the joins
    /// before a phase reach Redis a while after the clients saw their welcome), calls over `secs`,
    /// per second, per command.
    pub(super) async fn idle_rate(&mut self, secs: f64) -> anyhow::Result<BTreeMap<String, f64>> {
        let t0 = Instant::now();
        let mut last = self.conn.command_calls().await?;
        while t0.elapsed() < QUIET_MAX {
            tokio::time::sleep(QUIET_FOR).await;
            let now = self.conn.command_calls().await?;
            let writes = calls_delta(&last, &now).get("xadd").copied().unwrap_or(0);
            last = now;
            if writes == 0 {
                break;
            }
        }
        let a = last;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let b = self.conn.command_calls().await?;
        Ok(calls_delta(&a, &b).into_iter().map(|(k, v)| (k, v as f64 / secs)).collect())
    }

    /// Sizes of the cluster's keys; `user` is a connected user whose name key is measured.
    pub(super) async fn key_memory(&mut self, ns: &str, user: &str) -> anyhow::Result<KeyMemory> {
        let per = |bytes: u64, n: u64| (n > 0).then(|| bytes as f64 / n as f64);
        let c = &mut self.conn;
        let (history, log, online) = (format!("{ns}:history"), format!("{ns}:log"), format!("{ns}:online"));
        let mut k = KeyMemory {
            history_entries: c.length("XLEN", &history).await?,
            history_bytes: c.key_bytes(&history).await?.unwrap_or(0),
            log_entries: c.length("XLEN", &log).await?,
            log_bytes: c.key_bytes(&log).await?.unwrap_or(0),
            online_users: c.length("HLEN", &online).await?,
            online_bytes: c.key_bytes(&online).await?.unwrap_or(0),
            name_key_bytes: c.key_bytes(&format!("{ns}:name:{user}")).await?,
            ..Default::default()
        };
        k.history_bytes_per_entry = per(k.history_bytes, k.history_entries);
        k.log_bytes_per_entry = per(k.log_bytes, k.log_entries);
        k.online_bytes_per_user = per(k.online_bytes, k.online_users);
        Ok(k)
    }

    pub(super) async fn mark(&mut self) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
        Ok((self.conn.command_calls().await?, self.conn.used_memory().await?))
    }
}

pub(super) fn per_message(
    idle: &BTreeMap<String, f64>,
    before: &(BTreeMap<String, u64>, u64),
    after: &(BTreeMap<String, u64>, u64),
    secs: f64,
    messages: u64,
) -> RedisPerMessage {
    let delta = calls_delta(&before.0, &after.0);
    let calls: u64 = delta.values().sum();
    let background_per_s = idle.values().fold(0.0, |a, b| a + b);
    let background = background_per_s * secs;
    let m = messages.max(1) as f64;
    RedisPerMessage {
        messages,
        calls,
        background_calls: background,
        background_calls_per_s: background_per_s,
        calls_per_message: (calls as f64 - background).max(0.0) / m,
        per_command_per_message: delta
            .iter()
            .map(|(k, v)| {
                let bg = idle.get(k).copied().unwrap_or(0.0) * secs;
                (k.clone(), (*v as f64 - bg).max(0.0) / m)
            })
            .collect(),
        background_per_command_per_s: idle.clone(),
        used_memory_delta_bytes: Some(after.1 as i64 - before.1 as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_traffic_is_subtracted_per_message() {
        let idle = BTreeMap::from([("xread".to_string(), 10.0)]);
        let before = (BTreeMap::from([("xread".to_string(), 100), ("evalsha".to_string(), 5)]), 1000);
        let after = (BTreeMap::from([("xread".to_string(), 420), ("evalsha".to_string(), 105)]), 21_000);
        // 2 s: 20 background calls; 320 + 100 calls for 100 messages.
        let r = per_message(&idle, &before, &after, 2.0, 100);
        assert_eq!(r.calls, 420);
        assert!((r.calls_per_message - 4.0).abs() < 1e-9, "{}", r.calls_per_message);
        assert_eq!(r.per_command_per_message.get("evalsha"), Some(&1.0));
        assert_eq!(r.per_command_per_message.get("xread"), Some(&3.0), "background subtracted");
        assert_eq!(r.used_memory_delta_bytes, Some(20_000));
    }
}
