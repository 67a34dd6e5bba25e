//! The optional per-allocation bandwidth cap (`[turn] allocation_bandwidth_bytes_per_s`): a
//! token bucket holding at most one second of the configured rate, both directions together.

use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// One allocation's bucket; `None` rate means unlimited (and costs nothing per datagram).
pub struct BandwidthCap {
    bucket: Option<Mutex<Bucket>>,
}

impl BandwidthCap {
    /// `bytes_per_s` 0 = unlimited.
    pub fn new(bytes_per_s: u64) -> Self {
        let rate = bytes_per_s as f64;
        let bucket =
            (bytes_per_s > 0).then(|| Mutex::new(Bucket { rate, tokens: rate, last: Instant::now() }));
        BandwidthCap { bucket }
    }

    /// True if `n` more bytes fit now (and takes them).
    pub fn take(&self, n: usize) -> bool {
        let Some(bucket) = &self.bucket else { return true };
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.rate);
        b.last = now;
        if b.tokens >= n as f64 {
            b.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_holds_one_second_and_zero_means_unlimited() {
        let cap = BandwidthCap::new(10_000);
        assert!((0..10).all(|_| cap.take(1000)));
        assert!(!cap.take(1000), "the eleventh kilobyte within the same instant is over the cap");
        let unlimited = BandwidthCap::new(0);
        assert!((0..100_000).all(|_| unlimited.take(65_535)));
    }
}
