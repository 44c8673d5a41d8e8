//! A fixed-bucket histogram updated with relaxed atomics: one bucket increment and one sum
//! addition per observation, no lock, so the request path can afford one per request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds, in seconds, of the duration buckets: 25 µs to 10 s, roughly ×2.5 a step.
pub const SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch-size buckets, in rows.
pub const ROWS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Counts of observations at or under each bound, plus the overflow, and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then one for everything above the last.
    buckets: Vec<AtomicU64>,
    /// The sum, in millionths of the unit (microseconds for durations), so it stays an integer.
    sum_micros: AtomicU64,
}

/// A histogram's counts at one moment, cumulative as Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or under it)`, ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Their sum, in the unit of the bounds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` (in the unit of the bounds).
    pub fn observe(&self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Records `n` observations of `value`.
    pub fn observe_n(&self, value: f64, n: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(n, Relaxed);
        }
        // Saturating float-to-int: a negative or NaN value adds nothing.
        self.sum_micros
            .fetch_add(((value * 1e6) as u64).saturating_mul(n), Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            count: total,
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram of durations, in seconds.
#[derive(Debug)]
pub struct Durations(pub Histogram);

impl Default for Durations {
    fn default() -> Self {
        Durations(Histogram::new(SECONDS))
    }
}

impl Durations {
    /// Records one duration.
    pub fn record(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// A histogram of batch sizes, in rows.
#[derive(Debug)]
pub struct Rows(pub Histogram);

impl Default for Rows {
    fn default() -> Self {
        Rows(Histogram::new(ROWS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(value);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 3), (4.0, 4), (f64::INFINITY, 5)]
        );
        assert_eq!(s.count, 5);
        assert!((s.sum - 16.0).abs() < 1e-9, "{}", s.sum);
    }
}
