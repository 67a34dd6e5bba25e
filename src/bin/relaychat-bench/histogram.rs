//! A fixed-size log-linear latency histogram (HDR-style, about 1.5% precision), so the receive path
//! records a sample with two integer ops and no allocation, and per-task histograms merge at the end.

/// Values below this are recorded exactly (nanoseconds).
const LINEAR_LIMIT_NS: u64 = 1 << 12;
/// Sub-buckets per power of two above the linear range.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear range (up to ~2^(12+40) ns: far beyond any run).
const OCTAVES: u64 = 40;
const LINEAR_BUCKETS: usize = (LINEAR_LIMIT_NS / (1 << (12 - SUB_BITS))) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
    sum_ns: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; LINEAR_BUCKETS + (OCTAVES * SUB) as usize],
            total: 0,
            max_ns: 0,
            sum_ns: 0,
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < LINEAR_LIMIT_NS {
        return (ns >> (12 - SUB_BITS)) as usize;
    }
    let octave = 63 - ns.leading_zeros() as u64; // >= 12
    let sub = (ns >> (octave - SUB_BITS as u64)) & (SUB - 1);
    let idx = LINEAR_BUCKETS as u64 + (octave - 12) * SUB + sub;
    idx.min(LINEAR_BUCKETS as u64 + OCTAVES * SUB - 1) as usize
}

/// Upper bound (ns) of a bucket: percentiles are reported conservatively.
fn bucket_top(idx: usize) -> u64 {
    if idx < LINEAR_BUCKETS {
        return ((idx as u64) + 1) << (12 - SUB_BITS);
    }
    let rel = idx as u64 - LINEAR_BUCKETS as u64;
    let octave = 12 + rel / SUB;
    let sub = rel % SUB;
    (1u64 << octave) + ((sub + 1) << (octave - SUB_BITS as u64))
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns += ns as u128;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value (ns) at quantile `q` in 0..=1; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_top(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    pub fn mean_ns(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum_ns / self.total as u128) as u64
        }
    }

    /// Summary in microseconds for reports.
    pub fn summary_us(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            samples: self.total,
            mean_us: us(self.mean_ns()),
            p50_us: us(self.quantile_ns(0.50)),
            p90_us: us(self.quantile_ns(0.90)),
            p99_us: us(self.quantile_ns(0.99)),
            p999_us: us(self.quantile_ns(0.999)),
            max_us: us(self.max_ns()),
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile_ns(0.5) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        let p99 = h.quantile_ns(0.99) as f64;
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.max_ns(), 100_000_000);
    }

    #[test]
    fn small_values_are_exact_enough() {
        let mut h = Histogram::default();
        h.record(100);
        assert!(h.quantile_ns(0.5) <= 128);
    }
}
