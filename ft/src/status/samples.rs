//! Bounded windows of per-checkpoint samples: percentiles without unbounded memory.

/// How many recent checkpoints the percentiles cover.
pub(crate) const WINDOW: usize = 1024;

/// Pause-time figures over the recent window (max is over the whole session), microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PauseStats {
    /// Median pause of the last `WINDOW` checkpoints.
    pub p50_us: u64,
    /// 99th percentile pause of the last `WINDOW` checkpoints.
    pub p99_us: u64,
    /// Longest pause since FT was enabled.
    pub max_us: u64,
}

/// A fixed-size ring of u64 samples; pushing never allocates once full.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    buf: Vec<u64>,
    next: usize,
}

impl Ring {
    pub(crate) fn new() -> Self {
        Ring {
            buf: Vec::with_capacity(WINDOW),
            next: 0,
        }
    }

    pub(crate) fn push(&mut self, v: u64) {
        if self.buf.len() < WINDOW {
            self.buf.push(v);
        } else {
            self.buf[self.next] = v;
        }
        self.next = (self.next + 1) % WINDOW;
    }

    /// Nearest-rank percentile (`pct` in 0..=100); 0 when empty. Sorting a copy of at most
    /// `WINDOW` values happens on the API thread, never on the engine's.
    pub(crate) fn percentile(&self, pct: u64) -> u64 {
        if self.buf.is_empty() {
            return 0;
        }
        let mut v = self.buf.clone();
        v.sort_unstable();
        let rank = (pct.min(100) as usize * v.len()).div_ceil(100).max(1);
        v[rank - 1]
    }

    pub(crate) fn mean(&self) -> u64 {
        if self.buf.is_empty() {
            return 0;
        }
        self.buf.iter().sum::<u64>() / self.buf.len() as u64
    }
}
