//! Rate and connection limits: pure bookkeeping over `Instant`s, so every rule is unit-testable.
//!
//! - `ConnectionLimiter`: server-wide and per-IP connection caps, new connections per IP per
//!   window, and the churn guard that blocks reconnect loops.
//! - `SlidingWindow`: the per-user "N messages in any one second" chat limit.
//! - `LoginLimiter`: 5 failed logins per (IP, name) block that pair for an hour.
//! - `RegisterLimiter`: registration attempts per IP per window (default 10 per 10 minutes).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::LimitSettings;

/// Why a new connection is refused; `Display` is the text the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ServerFull,
    TooManyInWindow { limit: usize, window_ms: u64 },
    TooManyConcurrent { limit: usize },
    ChurnBlocked { retry_after_s: u64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServerFull => write!(f, "Server is full. Please try again later."),
            Self::TooManyInWindow { limit, window_ms } => {
                let seconds = js_seconds(*window_ms);
                write!(f, "Too many connections from this IP. Limit is {limit} per {seconds} seconds.")
            }
            Self::TooManyConcurrent { limit } => {
                write!(f, "Too many concurrent connections from this IP. Maximum allowed is {limit}.")
            }
            Self::ChurnBlocked { retry_after_s } => write!(
                f,
                "Your IP is temporarily blocked due to repeated reconnections. Try again in {retry_after_s}s."
            ),
        }
    }
}

#[derive(Debug, Default)]
struct IpRecord {
    open: usize,
    recent_connects: VecDeque<Instant>,
    recent_disconnects: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// Tracks connections per IP. Records of idle IPs are pruned by `prune`, so memory follows the
/// number of recently active IPs, not every IP ever seen.
#[derive(Debug)]
pub struct ConnectionLimiter {
    settings: LimitSettings,
    total_open: usize,
    by_ip: HashMap<IpAddr, IpRecord>,
}

impl ConnectionLimiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self { settings, total_open: 0, by_ip: HashMap::new() }
    }

    /// Admits a connection (and counts it) or says why not.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let ip = ip_key(ip, self.settings.ipv6_prefix_len);
        let window = Duration::from_millis(self.settings.connection_window_ms);
        let record = self.by_ip.entry(ip).or_default();
        if let Some(until) = record.blocked_until {
            if now < until {
                let remaining = until - now;
                let retry_after_s = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
                return Err(Refusal::ChurnBlocked { retry_after_s });
            }
            record.blocked_until = None;
        }
        if self.total_open >= self.settings.total_max_connections {
            return Err(Refusal::ServerFull);
        }
        drop_older_than(&mut record.recent_connects, now, window);
        if record.recent_connects.len() >= self.settings.max_connections_per_window {
            return Err(Refusal::TooManyInWindow {
                limit: self.settings.max_connections_per_window,
                window_ms: self.settings.connection_window_ms,
            });
        }
        if record.open >= self.settings.max_connections_per_ip {
            return Err(Refusal::TooManyConcurrent { limit: self.settings.max_connections_per_ip });
        }
        record.recent_connects.push_back(now);
        record.open += 1;
        self.total_open += 1;
        Ok(())
    }

    /// Counts an admitted connection's end; a burst of them trips the churn guard.
    pub fn release(&mut self, ip: IpAddr, now: Instant) {
        self.total_open = self.total_open.saturating_sub(1);
        let ip = ip_key(ip, self.settings.ipv6_prefix_len);
        let guard = &self.settings.churn_guard;
        let Some(record) = self.by_ip.get_mut(&ip) else { return };
        record.open = record.open.saturating_sub(1);
        if !guard.enabled {
            return;
        }
        let window = Duration::from_millis(guard.window_ms);
        drop_older_than(&mut record.recent_disconnects, now, window);
        record.recent_disconnects.push_back(now);
        // Like the original: the max_cycles-th rapid cycle starts the block.
        if record.recent_disconnects.len() >= guard.max_cycles {
            record.blocked_until = Some(now + Duration::from_millis(guard.block_duration_ms));
            record.recent_disconnects.clear();
        }
    }

    pub fn open_connections(&self) -> usize {
        self.total_open
    }

    /// Forgets IPs with nothing open, nothing recent and no block.
    pub fn prune(&mut self, now: Instant) {
        let window = Duration::from_millis(self.settings.connection_window_ms)
            .max(Duration::from_millis(self.settings.churn_guard.window_ms));
        self.by_ip.retain(|_, r| {
            drop_older_than(&mut r.recent_connects, now, window);
            drop_older_than(&mut r.recent_disconnects, now, window);
            r.open > 0
                || !r.recent_connects.is_empty()
                || !r.recent_disconnects.is_empty()
                || r.blocked_until.is_some_and(|until| until > now)
        });
    }
}

/// `ms / 1000` as JavaScript prints it (`1500 / 1000` is "1.5", `30000 / 1000` is "30"): the
/// original builds its texts that way and clients may match them byte for byte.
pub fn js_seconds(ms: u64) -> String {
    let (whole, fraction) = (ms / 1000, ms % 1000);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:03}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The address per-IP limits count by (see `crate::addr`).
pub use crate::addr::ip_key;

fn drop_older_than(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times.front().is_some_and(|&t| now.duration_since(t) >= window) {
        times.pop_front();
    }
}

/// At most `limit` events in any sliding window of `window`.
#[derive(Debug, Default)]
pub struct SlidingWindow {
    times: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Records the event if under the limit; false when it must be refused (not recorded, so a
    /// client that slows down recovers at once).
    pub fn try_record(&mut self, now: Instant, limit: usize, window: Duration) -> bool {
        drop_older_than(&mut self.times, now, window);
        if self.times.len() >= limit {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

/// Registration attempts per IP (IPv6: per prefix). "Username exists." is part of the protocol,
/// so /register tells whether a name is taken; this bounds how fast one address can ask (ten
/// names per ten minutes by default), whatever the answers were.
#[derive(Debug)]
pub struct RegisterLimiter {
    attempts: HashMap<IpAddr, SlidingWindow>,
    limit: usize,
    window: Duration,
    v6_prefix_len: u8,
}

impl RegisterLimiter {
    pub fn new(limit: usize, window: Duration, v6_prefix_len: u8) -> Self {
        Self { attempts: HashMap::new(), limit, window, v6_prefix_len }
    }

    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self::new(
            settings.network.register_attempts_per_ip,
            Duration::from_secs(settings.network.register_window_s),
            settings.limits.ipv6_prefix_len,
        )
    }

    /// Counts an attempt; false (not counted) when this address has used its allowance.
    pub fn try_attempt(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = ip_key(ip, self.v6_prefix_len);
        self.attempts.entry(key).or_default().try_record(now, self.limit, self.window)
    }

    /// "Too many registration attempts from this IP. Limit is 10 per 600 seconds." (the
    /// original's style for connection limits).
    pub fn refusal(&self) -> String {
        format!(
            "Too many registration attempts from this IP. Limit is {} per {} seconds.",
            self.limit,
            self.window.as_secs()
        )
    }

    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.attempts.retain(|_, attempts| {
            drop_older_than(&mut attempts.times, now, window);
            !attempts.times.is_empty()
        });
    }
}

pub const LOGIN_MAX_FAILURES: u32 = 5;
pub const LOGIN_BLOCK: Duration = Duration::from_secs(3600);

/// Failed logins per (IP, name): brute-forcing one account from one address is blocked, without
/// letting an attacker lock a user out from everywhere. Failures count within a window of the
/// block's length, so a few typos spread over days never add up to a block.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<(IpAddr, String), LoginFailures>,
}

#[derive(Debug)]
struct LoginFailures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

impl LoginLimiter {
    pub fn is_blocked(&mut self, ip: IpAddr, name: &str, now: Instant) -> bool {
        self.prune_one(ip, name, now);
        self.failures.get(&(ip, name.to_string())).is_some_and(|f| f.blocked_until.is_some())
    }

    /// Records a failure; true when this one started a block.
    pub fn record_failure(&mut self, ip: IpAddr, name: &str, now: Instant) -> bool {
        self.prune_one(ip, name, now);
        let entry = self.failures.entry((ip, name.to_string())).or_insert(LoginFailures {
            count: 0,
            first: now,
            blocked_until: None,
        });
        entry.count += 1;
        if entry.count >= LOGIN_MAX_FAILURES {
            entry.blocked_until = Some(now + LOGIN_BLOCK);
            return true;
        }
        false
    }

    pub fn record_success(&mut self, ip: IpAddr, name: &str) {
        self.failures.remove(&(ip, name.to_string()));
    }

    fn prune_one(&mut self, ip: IpAddr, name: &str, now: Instant) {
        let key = (ip, name.to_string());
        if self.failures.get(&key).is_some_and(|f| !f.is_live(now)) {
            self.failures.remove(&key);
        }
    }

    pub fn prune(&mut self, now: Instant) {
        self.failures.retain(|_, f| f.is_live(now));
    }
}

impl LoginFailures {
    fn is_live(&self, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) => until > now,
            None => now.duration_since(self.first) < LOGIN_BLOCK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_attempts_are_bounded_per_address_and_window() {
        let mut limiter = RegisterLimiter::new(3, Duration::from_secs(600), 64);
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8:0:1::1".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.try_attempt(a, t0));
        }
        assert!(!limiter.try_attempt(a, t0 + Duration::from_secs(599)));
        // Same /64: same allowance. Another /64: its own.
        assert!(!limiter.try_attempt("2001:db8::2".parse().unwrap(), t0));
        assert!(limiter.try_attempt(b, t0));
        assert!(limiter.try_attempt(a, t0 + Duration::from_secs(600)), "the window slides");
        assert_eq!(
            limiter.refusal(),
            "Too many registration attempts from this IP. Limit is 3 per 600 seconds."
        );
        limiter.prune(t0 + Duration::from_secs(2000));
        assert!(limiter.attempts.is_empty());
    }
    use crate::config::Settings;

    fn limiter(edit: impl FnOnce(&mut LimitSettings)) -> ConnectionLimiter {
        let mut settings = Settings::defaults().limits;
        edit(&mut settings);
        ConnectionLimiter::new(settings)
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn total_and_per_ip_caps() {
        let now = Instant::now();
        let mut l = limiter(|s| {
            s.total_max_connections = 3;
            s.max_connections_per_ip = 2;
        });
        assert_eq!(l.admit(IP, now), Ok(()));
        assert_eq!(l.admit(IP, now), Ok(()));
        assert_eq!(l.admit(IP, now), Err(Refusal::TooManyConcurrent { limit: 2 }));
        assert_eq!(l.admit(OTHER, now), Ok(()));
        assert_eq!(l.admit(OTHER, now), Err(Refusal::ServerFull));
        l.release(IP, now);
        assert_eq!(l.admit(IP, now), Ok(()));
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_a_limit() {
        let now = Instant::now();
        let mut l = limiter(|s| {
            s.max_connections_per_ip = 1;
            s.ipv6_prefix_len = 64;
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.admit(a, now), Ok(()));
        assert_eq!(l.admit(b, now), Err(Refusal::TooManyConcurrent { limit: 1 }));
        assert_eq!(l.admit(c, now), Ok(()));
        l.release(b, now); // any address of the prefix frees its slot
        assert_eq!(l.admit(b, now), Ok(()));
        assert_eq!(ip_key(a, 128), a);
        assert_eq!(ip_key(a, 0), "::".parse::<IpAddr>().unwrap());
        assert_eq!(ip_key("::ffff:10.0.0.1".parse().unwrap(), 64), IP);
    }

    #[test]
    fn window_limit_expires() {
        let now = Instant::now();
        let mut l = limiter(|s| {
            s.max_connections_per_window = 2;
            s.connection_window_ms = 1000;
            s.churn_guard.enabled = false;
        });
        for _ in 0..2 {
            l.admit(IP, now).unwrap();
            l.release(IP, now);
        }
        let refusal = l.admit(IP, now).unwrap_err();
        assert_eq!(refusal.to_string(), "Too many connections from this IP. Limit is 2 per 1 seconds.");
        assert_eq!(l.admit(IP, now + Duration::from_millis(1001)), Ok(()));
    }

    #[test]
    fn churn_guard_blocks_then_forgives() {
        let now = Instant::now();
        let mut l = limiter(|s| {
            s.churn_guard.max_cycles = 2;
            s.churn_guard.window_ms = 1000;
            s.churn_guard.block_duration_ms = 5000;
        });
        l.admit(IP, now).unwrap();
        l.release(IP, now);
        assert_eq!(l.admit(IP, now), Ok(()), "one cycle of two is not a block yet");
        l.release(IP, now);
        let refusal = l.admit(IP, now).unwrap_err();
        assert_eq!(refusal, Refusal::ChurnBlocked { retry_after_s: 5 });
        assert!(refusal.to_string().ends_with("Try again in 5s."));
        assert_eq!(l.admit(OTHER, now), Ok(()));
        assert_eq!(l.admit(IP, now + Duration::from_secs(5)), Ok(()));
    }

    #[test]
    fn seconds_are_printed_like_javascript_numbers() {
        assert_eq!(js_seconds(30000), "30");
        assert_eq!(js_seconds(2500), "2.5");
        assert_eq!(js_seconds(1), "0.001");
        assert_eq!(js_seconds(1230), "1.23");
        assert_eq!(js_seconds(0), "0");
        let refusal = Refusal::TooManyInWindow { limit: 4, window_ms: 2500 };
        assert_eq!(refusal.to_string(), "Too many connections from this IP. Limit is 4 per 2.5 seconds.");
    }

    #[test]
    fn sliding_window_refuses_the_fourth_message_in_a_second() {
        let now = Instant::now();
        let mut w = SlidingWindow::default();
        let second = Duration::from_secs(1);
        assert!((0..3).all(|_| w.try_record(now, 3, second)));
        assert!(!w.try_record(now + Duration::from_millis(999), 3, second));
        assert!(w.try_record(now + second, 3, second));
    }

    #[test]
    fn five_failed_logins_block_that_ip_and_name_only() {
        let now = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 1..=5 {
            assert!(!l.is_blocked(IP, "alice", now));
            assert_eq!(l.record_failure(IP, "alice", now), i == 5);
        }
        assert!(l.is_blocked(IP, "alice", now));
        assert!(!l.is_blocked(OTHER, "alice", now));
        assert!(!l.is_blocked(IP, "bob", now));
        assert!(!l.is_blocked(IP, "alice", now + LOGIN_BLOCK));
    }

    #[test]
    fn failures_spread_over_more_than_an_hour_do_not_block() {
        let now = Instant::now();
        let mut l = LoginLimiter::default();
        for _ in 0..4 {
            l.record_failure(IP, "alice", now);
        }
        assert!(!l.record_failure(IP, "alice", now + LOGIN_BLOCK));
        assert!(!l.is_blocked(IP, "alice", now + LOGIN_BLOCK));
    }
}
