//! FT status: the pair's role and state machine plus the figures `ft.status` reports.
//!
//! The engine thread updates a [`StatusHandle`] cheaply (one uncontended mutex, no allocation on
//! the per-checkpoint path); the API thread takes [`FtStatus`] snapshots. State changes go through
//! [`StatusHandle::transition`], which refuses anything [`transition_allowed`] does not list, so a
//! bug elsewhere cannot, say, take a failing-over backup back to `protected` without a new sync.

mod counters;
mod handle;
mod samples;
mod transitions;

pub use counters::{FtCounters, HeartbeatCounts, Histogram, ScrubCounts, PAUSE_BUCKETS_US};
pub(crate) use handle::unix_ms;
pub use handle::{FlowStatus, FtStatus, PathAges, StatusHandle, UdpCounts};
pub use samples::{CommitLatencyStats, PauseStats, PauseStepStats, StepStats};
pub use transitions::transition_allowed;

/// Which part this VMM plays in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// FT is off: no pair.
    Standalone,
    /// Runs the guest and sends checkpoints.
    Primary,
    /// Holds the replica and acks checkpoints.
    Backup,
}

/// Where a pair member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FtState {
    /// Initial copy (pre-copy migration that never hands over) in progress; not protected yet.
    Syncing,
    /// Checkpoints flow and are acked: a failure of either side is survivable.
    Protected,
    /// Running alone: no backup (FT off, backup lost, or after a failover).
    Unprotected,
    /// Backup won arbitration and is going live from the last complete checkpoint.
    FailingOver,
    /// Stopped for good in this generation (lost arbitration, or a fatal error); see `reason`.
    Halted,
}

/// Errors of the status layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The state machine does not allow this change.
    #[error("refused state change {from:?} -> {to:?} as {role:?}")]
    Refused {
        /// Role at the time.
        role: Role,
        /// Current state.
        from: FtState,
        /// Requested state.
        to: FtState,
    },
    /// FT was enabled on a VMM already in a pair, or with the standalone role.
    #[error("cannot enter FT as {requested:?} while {role:?} ({state:?})")]
    BadEnable {
        /// Role asked for.
        requested: Role,
        /// Current role.
        role: Role,
        /// Current state.
        state: FtState,
    },
    /// Generations only increase.
    #[error("generation {requested} is not above the current generation {current}")]
    GenerationNotIncreasing {
        /// Current generation.
        current: u64,
        /// Requested generation.
        requested: u64,
    },
}

#[cfg(test)]
mod tests;
