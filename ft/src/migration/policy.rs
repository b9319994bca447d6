//! When to stop pre-copy: as soon as the remaining dirty set could be sent within the downtime
//! limit, or when more rounds would not help (the dirty set stopped shrinking, or too many rounds).

use std::time::Duration;

/// Why pre-copy stopped and the guest was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The estimated downtime fits the limit.
    DowntimeFits,
    /// The dirty set has not shrunk for the configured number of rounds.
    NotConverging,
    /// The round limit was reached.
    MaxRounds,
}

/// Limits that end pre-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvergencePolicy {
    /// Longest acceptable guest pause.
    pub max_downtime: Duration,
    /// Most dirty-page rounds after the full pass.
    pub max_rounds: u32,
    /// Rounds without a new smallest dirty set before giving up on converging.
    pub stall_rounds: u32,
}

/// Tracks rounds against a policy.
#[derive(Debug)]
pub(crate) struct Convergence {
    policy: ConvergencePolicy,
    smallest: Option<u64>,
    stalled: u32,
}

impl Convergence {
    pub(crate) fn new(policy: ConvergencePolicy) -> Self {
        Convergence {
            policy,
            smallest: None,
            stalled: 0,
        }
    }

    /// Decides after `rounds_done` dirty rounds, with `dirty` pages left and their estimated
    /// transfer time: `Some` means pause now.
    pub(crate) fn decide(
        &mut self,
        rounds_done: u32,
        dirty: u64,
        estimate: Duration,
    ) -> Option<StopReason> {
        if estimate <= self.policy.max_downtime {
            return Some(StopReason::DowntimeFits);
        }
        match self.smallest {
            Some(s) if dirty >= s => self.stalled += 1,
            _ => {
                self.smallest = Some(dirty);
                self.stalled = 0;
            }
        }
        if self.stalled >= self.policy.stall_rounds {
            return Some(StopReason::NotConverging);
        }
        if rounds_done >= self.policy.max_rounds {
            return Some(StopReason::MaxRounds);
        }
        None
    }
}

/// Time to send `bytes` at `bytes_per_s` (a very long time when nothing was measured yet).
pub(crate) fn transfer_time(bytes: u64, bytes_per_s: u64) -> Duration {
    if bytes == 0 {
        return Duration::ZERO;
    }
    if bytes_per_s == 0 {
        return Duration::MAX;
    }
    Duration::from_secs_f64(bytes as f64 / bytes_per_s as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(max_rounds: u32, stall_rounds: u32) -> Convergence {
        Convergence::new(ConvergencePolicy {
            max_downtime: Duration::from_millis(100),
            max_rounds,
            stall_rounds,
        })
    }
    const LONG: Duration = Duration::from_secs(1);

    #[test]
    fn stops_when_downtime_fits() {
        let mut c = conv(10, 3);
        assert_eq!(c.decide(0, 1000, LONG), None);
        assert_eq!(
            c.decide(1, 10, Duration::from_millis(50)),
            Some(StopReason::DowntimeFits)
        );
    }

    #[test]
    fn stops_when_dirty_set_stops_shrinking() {
        let mut c = conv(100, 2);
        assert_eq!(c.decide(0, 1000, LONG), None);
        assert_eq!(c.decide(1, 900, LONG), None);
        assert_eq!(c.decide(2, 950, LONG), None);
        assert_eq!(c.decide(3, 900, LONG), Some(StopReason::NotConverging));
    }

    #[test]
    fn shrinking_resets_the_stall_count_and_max_rounds_caps() {
        let mut c = conv(4, 2);
        assert_eq!(c.decide(0, 1000, LONG), None);
        assert_eq!(c.decide(1, 1000, LONG), None);
        assert_eq!(c.decide(2, 800, LONG), None);
        assert_eq!(c.decide(3, 700, LONG), None);
        assert_eq!(c.decide(4, 600, LONG), Some(StopReason::MaxRounds));
    }

    #[test]
    fn transfer_time_edges() {
        assert_eq!(transfer_time(0, 0), Duration::ZERO);
        assert_eq!(transfer_time(1, 0), Duration::MAX);
        assert_eq!(transfer_time(1000, 1000), Duration::from_secs(1));
    }
}
