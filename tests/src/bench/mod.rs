//! `tandem-bench`'s parts, one module each; each prints figures and asserts nothing about speed.

pub mod devices;
pub mod foundation;
pub mod ft;
pub mod migration;

use std::time::Duration;

/// The `p` quantile (0..=1) of an ascending series, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds, for printing.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median of a series (the upper one of an even count); 0 when empty.
pub fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}
