//! Per-checkpoint figures, for the FT status view (which maps them) and the tests' record.

use std::time::Duration;

/// What ended an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The checkpoint interval passed.
    Timer,
    /// Output was waiting and the previous checkpoint was acked.
    Output,
    /// `pause_guest`: the last checkpoint before the guest stays paused.
    Pause,
}

/// Where one checkpoint's guest pause went, step by step, in the order they run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PauseSteps {
    /// Stopping every vCPU (kick, wait until parked) and device worker.
    pub stop: Duration,
    /// Reading and clearing the dirty log (KVM's and the device bitmap).
    pub dirty_log: Duration,
    /// Waiting, paused, for acks to make room for a checkpoint larger than flow control planned
    /// (keeps the backlog bound; zero unless the guest outran flow control).
    pub backlog_wait: Duration,
    /// Copying the dirty pages into the staging buffer.
    pub copy: Duration,
    /// Reading every vCPU's state (what is left of it: a VM may have the vCPUs read most of
    /// theirs as they parked).
    pub vcpu_state: Duration,
    /// Irqchip, clock and device state.
    pub devices: Duration,
    /// The output gates: closing the epoch, taking its disk write log.
    pub gates: Duration,
    /// Letting the vCPUs and device workers run again.
    pub resume: Duration,
}

impl PauseSteps {
    /// The steps by name, in order (the names `ft.status` and the metrics use).
    pub fn named(&self) -> [(&'static str, Duration); 8] {
        [
            ("stop", self.stop),
            ("dirty_log", self.dirty_log),
            ("backlog_wait", self.backlog_wait),
            ("copy", self.copy),
            ("vcpu_state", self.vcpu_state),
            ("devices", self.devices),
            ("gates", self.gates),
            ("resume", self.resume),
        ]
    }
}

/// One committed checkpoint, as the primary saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckpointStats {
    /// How its pages went out (whole, as deltas against the last sent copy, as zero markers).
    pub encodings: PageEncodings,
    /// Checkpoint number.
    pub epoch: u64,
    /// Why the epoch ended.
    pub trigger: Trigger,
    /// Guest pause: from pause to resume (dirty log, page copy, state save).
    pub pause: Duration,
    /// The pause, step by step.
    pub steps: PauseSteps,
    /// How hard flow control throttled the guest's vCPUs during the epoch, per mille.
    pub throttle_permille: u16,
    /// How long the epoch ran (resume to the next pause).
    pub epoch_run: Duration,
    /// How long the epoch waited for the in-flight window before it could end (backpressure).
    pub stall: Duration,
    /// Pages in the checkpoint.
    pub pages: u64,
    /// Stream bytes of the checkpoint.
    pub bytes: u64,
    /// From resume until its Commit frame was written: the sender's queue and the encoding.
    pub send: Duration,
    /// From resume to the backup's ack (`send`, then the link and the backup there and back).
    pub ack_latency: Duration,
    /// Checkpoints in flight when this one was captured (itself excluded).
    pub in_flight_before: usize,
}

/// How the pages of a checkpoint went out on the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PageEncodings {
    /// Sent whole.
    pub whole: u64,
    /// Sent as a delta against the copy last sent.
    pub delta: u64,
    /// Sent as a zero marker.
    pub zero: u64,
}

impl PageEncodings {
    /// What was counted since `earlier` (both cumulative).
    pub fn since(&self, earlier: &PageEncodings) -> PageEncodings {
        PageEncodings {
            whole: self.whole.saturating_sub(earlier.whole),
            delta: self.delta.saturating_sub(earlier.delta),
            zero: self.zero.saturating_sub(earlier.zero),
        }
    }
}

/// One checkpoint as the backup received it (committed, acked, applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReceivedCheckpoint {
    /// Checkpoint number.
    pub epoch: u64,
    /// Stream bytes of its frames (heartbeats between checkpoints not counted).
    pub bytes: u64,
    /// Pages it carried.
    pub pages: u64,
    /// The primary's guest pause for it, when the primary reported one (protocol version 3).
    pub pause: Option<Duration>,
    /// The guest was left paused at it.
    pub guest_paused: bool,
}

/// Where the primary reports each checkpoint once it is acked.
pub trait StatsSink: Send + Sync {
    /// Checkpoint `s.epoch` was acked.
    fn checkpoint_committed(&self, s: &CheckpointStats);
    /// The in-flight window changed (a checkpoint was captured or acked): `epochs` checkpoints
    /// of `staged_bytes` are captured but not acked. Default: ignored.
    fn in_flight(&self, _epochs: usize, _staged_bytes: u64) {}
    /// Flow control changed its settings. Default: ignored.
    fn flow(&self, _f: &super::flow::FlowReport) {}
    /// The replica scrub compared regions (a backup's answer); `reason` says what it found
    /// when that is worth `ft.status`'s reason (a difference, a region it could not heal).
    /// Default: ignored.
    fn scrub_checked(&self, _c: &crate::scrub::ScrubChecked, _reason: Option<&str>) {}
    /// The replica scrub's figures for `ft.status` changed. Default: ignored.
    fn scrub_status(&self, _s: &crate::scrub::ScrubStatus) {}
}

/// A sink that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStats;

impl StatsSink for NoStats {
    fn checkpoint_committed(&self, _s: &CheckpointStats) {}
}

/// p50/p99/max of a series of checkpoints.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Checkpoints summarised.
    pub count: usize,
    /// Median pause.
    pub pause_p50: Duration,
    /// 99th-percentile pause.
    pub pause_p99: Duration,
    /// Longest pause.
    pub pause_max: Duration,
    /// Median bytes per checkpoint.
    pub bytes_p50: u64,
    /// Mean bytes per checkpoint.
    pub bytes_mean: u64,
    /// Median ack latency.
    pub ack_p50: Duration,
    /// 99th-percentile ack latency.
    pub ack_p99: Duration,
    /// Total backpressure stall.
    pub stall_total: Duration,
}

fn pct<T: Copy + Ord + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

impl Summary {
    /// Summarises `all`.
    pub fn of(all: &[CheckpointStats]) -> Summary {
        let mut pause: Vec<_> = all.iter().map(|s| s.pause).collect();
        let mut bytes: Vec<_> = all.iter().map(|s| s.bytes).collect();
        let mut ack: Vec<_> = all.iter().map(|s| s.ack_latency).collect();
        pause.sort();
        bytes.sort();
        ack.sort();
        Summary {
            count: all.len(),
            pause_p50: pct(&pause, 50),
            pause_p99: pct(&pause, 99),
            pause_max: pause.last().copied().unwrap_or_default(),
            bytes_p50: pct(&bytes, 50),
            bytes_mean: bytes.iter().sum::<u64>() / (all.len().max(1) as u64),
            ack_p50: pct(&ack, 50),
            ack_p99: pct(&ack, 99),
            stall_total: all.iter().map(|s| s.stall).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_small_series() {
        let s = |ms: u64, bytes: u64| CheckpointStats {
            encodings: PageEncodings::default(),
            epoch: ms,
            trigger: Trigger::Timer,
            pause: Duration::from_millis(ms),
            steps: PauseSteps::default(),
            throttle_permille: 0,
            epoch_run: Duration::ZERO,
            stall: Duration::ZERO,
            pages: 0,
            bytes,
            send: Duration::ZERO,
            ack_latency: Duration::from_millis(ms),
            in_flight_before: 0,
        };
        let all: Vec<_> = (1..=100).map(|i| s(i, i * 10)).collect();
        let sum = Summary::of(&all);
        assert_eq!(sum.pause_p50, Duration::from_millis(50));
        assert_eq!(sum.pause_p99, Duration::from_millis(99));
        assert_eq!(sum.pause_max, Duration::from_millis(100));
        assert_eq!(sum.bytes_mean, 505);
        assert_eq!(Summary::of(&[]).count, 0);
    }
}
