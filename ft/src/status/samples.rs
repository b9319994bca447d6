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

/// p50/p99 of one pause step over the recent window, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepStats {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

/// The pause's steps (see `checkpoint::PauseSteps`) over the recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PauseStepStats {
    /// Stopping the vCPUs and device workers.
    pub stop: StepStats,
    /// Reading and clearing the dirty log.
    pub dirty_log: StepStats,
    /// Waiting for room in the backlog.
    pub backlog_wait: StepStats,
    /// Copying dirty pages into the staging buffer.
    pub copy: StepStats,
    /// Reading the vCPUs' state.
    pub vcpu_state: StepStats,
    /// Irqchip, clock and device state.
    pub devices: StepStats,
    /// The output gates.
    pub gates: StepStats,
    /// Resuming.
    pub resume: StepStats,
}

/// How long a checkpoint took to commit once the guest ran again, over the recent window: what
/// output held behind it waits beyond the pause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitLatencyStats {
    /// From resume until its Commit frame was written (the sender's queue and the encoding).
    pub send: StepStats,
    /// From the Commit frame written until its ack was handled: the link both ways and the
    /// backup's receive, check and ack.
    pub ack: StepStats,
}

/// The rings behind [`CommitLatencyStats`].
#[derive(Debug, Clone)]
pub(crate) struct CommitRings {
    send: Ring,
    ack: Ring,
}

impl CommitRings {
    pub(crate) fn new() -> Self {
        CommitRings {
            send: Ring::new(),
            ack: Ring::new(),
        }
    }

    pub(crate) fn push(&mut self, send: std::time::Duration, ack: std::time::Duration) {
        let us = |d: std::time::Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.send.push(us(send));
        self.ack.push(us(ack));
    }

    pub(crate) fn stats(&self) -> CommitLatencyStats {
        let of = |r: &Ring| StepStats {
            p50_us: r.percentile(50),
            p99_us: r.percentile(99),
        };
        CommitLatencyStats {
            send: of(&self.send),
            ack: of(&self.ack),
        }
    }
}

/// One ring per pause step, in `PauseSteps::named` order.
#[derive(Debug, Clone)]
pub(crate) struct StepRings([Ring; 8]);

impl StepRings {
    pub(crate) fn new() -> Self {
        StepRings(std::array::from_fn(|_| Ring::new()))
    }

    pub(crate) fn push(&mut self, steps: &crate::checkpoint::PauseSteps) {
        for (ring, (_, d)) in self.0.iter_mut().zip(steps.named()) {
            ring.push(d.as_micros().min(u128::from(u64::MAX)) as u64);
        }
    }

    pub(crate) fn stats(&self) -> PauseStepStats {
        let s: [StepStats; 8] = std::array::from_fn(|i| StepStats {
            p50_us: self.0[i].percentile(50),
            p99_us: self.0[i].percentile(99),
        });
        PauseStepStats {
            stop: s[0],
            dirty_log: s[1],
            backlog_wait: s[2],
            copy: s[3],
            vcpu_state: s[4],
            devices: s[5],
            gates: s[6],
            resume: s[7],
        }
    }
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
