//! The password-hashing gate: argon2id runs at most `concurrency` at a time server-wide, and
//! each IP (IPv6 by prefix) gets a paced allowance of attempts.
//!
//! One argon2id hash with the default parameters allocates ~19 MiB; unbounded, 200 clients
//! registering at once took the server from 30 MB to 7.6 GB and made chat echo take seconds.
//! With the gate, memory for hashing is bounded by `concurrency` x 19 MiB and other users'
//! traffic keeps its latency. An address over its allowance is not refused (that would tell a
//! legitimate user nothing useful and tempt retries); its attempts wait their turn, and the
//! hub already allows one attempt in flight per connection, so waiting costs a small task each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::hub::limits::ip_key;

/// Per-address records kept before idle ones (full allowance again) are forgotten.
const PRUNE_ABOVE: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Shared by every password check; cheap to clone.
#[derive(Debug, Clone)]
pub struct PasswordGate {
    permits: Arc<Semaphore>,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
    per_minute: f64,
    burst: f64,
    v6_prefix_len: u8,
}

impl PasswordGate {
    /// `concurrency` 0 means one per CPU core.
    pub fn new(concurrency: usize, attempts_per_minute: u32, v6_prefix_len: u8) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let concurrency = if concurrency == 0 { cores } else { concurrency };
        let per_minute = f64::from(attempts_per_minute.max(1));
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            buckets: Arc::default(),
            per_minute,
            // A burst of one and a half minutes' worth: a household or office behind one address can
            // all log in at once after a restart.
            burst: per_minute * 1.5,
            v6_prefix_len,
        }
    }

    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self::new(
            settings.network.password_hash_concurrency,
            settings.network.password_attempts_per_minute_per_ip,
            settings.limits.ipv6_prefix_len,
        )
    }

    /// Runs `work` (a hash or a verification) on the blocking pool once `ip` has an attempt
    /// left and a hashing slot is free. None if the work panicked or the gate is closed.
    pub async fn run<T: Send + 'static>(
        &self,
        ip: IpAddr,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.wait_turn(ip_key(ip, self.v6_prefix_len)).await;
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    async fn wait_turn(&self, key: IpAddr) {
        loop {
            let wait = self.take_token(key, Instant::now());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Takes one attempt from `key`'s allowance, or says how long until one is available.
    fn take_token(&self, key: IpAddr, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_minute / 60.0, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: self.burst, updated: now });
        let rate = self.per_minute / 60.0;
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits_for_the_rate() {
        let gate = PasswordGate::new(1, 10, 64); // one per 6 s, burst 15
        let now = Instant::now();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let key = ip_key(ip, 64);
        for _ in 0..15 {
            assert_eq!(gate.take_token(key, now), None);
        }
        let wait = gate.take_token(key, now).expect("over the allowance");
        assert!(wait > Duration::from_millis(5900) && wait <= Duration::from_secs(6), "{wait:?}");
        assert_eq!(gate.take_token(key, now + Duration::from_secs(6)), None);
        // Another address is not affected.
        assert_eq!(gate.take_token("2001:db8:0:1::1".parse().unwrap(), now), None);
    }

    #[tokio::test]
    async fn at_most_concurrency_hashes_run_at_once() {
        let gate = PasswordGate::new(2, 6000, 64);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let ip = IpAddr::from([10, 0, 0, i]);
                    gate.run(ip, move || {
                        let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Some(()));
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
