//! Cumulative FT counters for the metrics endpoint: they count over the VMM's life (ft.disable
//! and a new ft.enable do not reset them, so Prometheus `rate()` sees no false resets), unlike the
//! `ft.status` figures, which start again with each pair.

use crate::checkpoint::{PageEncodings, PauseSteps};
use crate::heartbeat::Path;

/// Upper bounds of the pause histogram's buckets, microseconds (`+Inf` is implied). From 50 µs (a
/// small idle guest on real hardware) to 2.5 s (a large dirty set under emulation); fine enough
/// below 10 ms that a benchmark can take percentiles from the difference of two scrapes.
pub const PAUSE_BUCKETS_US: [u64; 24] = [
    50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    15_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
];

/// A cumulative histogram over fixed buckets: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Histogram {
    /// Upper bounds, ascending; the last bucket of `counts` is `+Inf`.
    pub bounds: &'static [u64],
    /// Observations per bucket (`bounds.len() + 1` entries, the last one above every bound).
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
            count: 0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum = self.sum.saturating_add(v);
        self.count += 1;
    }

    /// `(upper bound, observations ≤ bound)` per bucket, `None` for `+Inf`, as Prometheus wants.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c;
                (self.bounds.get(i).copied(), total)
            })
            .collect()
    }
}

/// Heartbeats on one liveness path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeartbeatCounts {
    /// Heartbeats sent to the peer.
    pub sent: u64,
    /// Heartbeats received from the peer.
    pub received: u64,
}

/// What the replica scrub compared and found (primary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubCounts {
    /// Regions compared with the backup's copy.
    pub regions: u64,
    /// Bytes of memory and disk compared.
    pub bytes: u64,
    /// Regions found different: guest memory.
    pub mismatches_memory: u64,
    /// Regions found different: replicated disks.
    pub mismatches_disk: u64,
    /// Regions found different: device or vCPU state.
    pub mismatches_device: u64,
}

impl ScrubCounts {
    /// Adds one backup answer's figures.
    pub fn add(&mut self, c: &crate::scrub::ScrubChecked) {
        self.regions = self.regions.saturating_add(c.regions);
        self.bytes = self.bytes.saturating_add(c.bytes);
        for kind in &c.mismatches {
            match *kind {
                "memory" => self.mismatches_memory += 1,
                "disk" => self.mismatches_disk += 1,
                _ => self.mismatches_device += 1,
            }
        }
    }
}

/// Everything counted since the VMM started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FtCounters {
    /// Checkpoints committed: acked by the backup (primary) or verified and applied (backup);
    /// the initial sync is not one.
    pub checkpoints: u64,
    /// Guest pause per checkpoint taken, microseconds.
    pub pause_us: Histogram,
    /// Stream bytes of the checkpoints counted by `record_checkpoint`.
    pub replicated_bytes: u64,
    /// Acks received (primary) or sent (backup).
    pub acks: u64,
    /// Heartbeats on the checkpoint channel.
    pub heartbeats_channel: HeartbeatCounts,
    /// Heartbeats on the UDP path.
    pub heartbeats_udp: HeartbeatCounts,
    /// Failovers completed here (this VMM was a backup and went live).
    pub failovers: u64,
    /// Disk block data the initial syncs sent (primary) or received (backup).
    pub disk_sync_bytes: u64,
    /// Checkpoint pages sent (primary), by how they went out.
    pub pages: PageEncodings,
    /// Guest pause per step, summed over the primary's checkpoints.
    pub pause_steps: PauseSteps,
    /// The replica scrub (primary).
    pub scrub: ScrubCounts,
}

impl Default for FtCounters {
    fn default() -> Self {
        FtCounters {
            checkpoints: 0,
            pause_us: Histogram::new(&PAUSE_BUCKETS_US),
            replicated_bytes: 0,
            acks: 0,
            heartbeats_channel: HeartbeatCounts::default(),
            heartbeats_udp: HeartbeatCounts::default(),
            failovers: 0,
            disk_sync_bytes: 0,
            pages: PageEncodings::default(),
            pause_steps: PauseSteps::default(),
            scrub: ScrubCounts::default(),
        }
    }
}

impl FtCounters {
    /// The heartbeat counts of `path`.
    pub fn heartbeats(&self, path: Path) -> &HeartbeatCounts {
        match path {
            Path::Channel => &self.heartbeats_channel,
            Path::Udp => &self.heartbeats_udp,
        }
    }

    pub(crate) fn heartbeats_mut(&mut self, path: Path) -> &mut HeartbeatCounts {
        match path {
            Path::Channel => &mut self.heartbeats_channel,
            Path::Udp => &mut self.heartbeats_udp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds_and_cumulative() {
        let mut h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 2, 2]);
        assert_eq!(h.count, 6);
        assert_eq!(h.sum, 5222);
        assert_eq!(
            h.cumulative(),
            vec![(Some(10), 2), (Some(100), 4), (None, 6)]
        );
        assert!(PAUSE_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }
}
