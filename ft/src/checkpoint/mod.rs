//! FT checkpoint replication (DESIGN.md, "The epoch"): the primary runs epoch N, pauses, copies
//! the dirty pages and the VM state into a staging buffer, resumes (N+1 runs speculatively) and
//! sends checkpoint N from another thread; the backup receives N completely into a staging area,
//! verifies it, acks it, then applies it; the primary releases outputs ≤ N on that ack.
//!
//! Stream after the FT initial sync (a pre-copy migration announced as `FaultTolerance` that never
//! hands over; it is committed epoch 0), primary → backup, header epoch = checkpoint number n ≥ 1:
//! `MemoryPages`* `VcpuState`×vcpus `DeviceState` `Extras`+ `Commit{vcpus, pages}` (ack requested),
//! with `Heartbeat` between checkpoints when idle. Backup → primary: `Ack{seq of Commit}` with
//! header epoch n, `Heartbeat` when idle, `Abort` when it gives up.
//!
//! FT streams speak protocol version 5 and up: each checkpoint's Commit carries `CommitInfo`
//! (the guest pause it cost, and whether the guest was left paused, so that a backup going live
//! from it comes up paused as the primary was), and a dirty page the primary sent in an earlier
//! checkpoint may go out as a delta against that copy (XOR, zero-run-length encoded, with the
//! CRC-32 of the result). The backup resolves deltas against its memory, which holds the
//! previous checkpoint, while staging, so a bad one ends the stream before the Ack and nothing
//! is half applied.
//!
//! Backup apply rule: pages go into the backup VM's memory once their checkpoint is verified and
//! acked, but the vCPU/device state blob is only *kept*; it is restored once, by `go_live`,
//! because restoring rebuilds vCPUs and devices in the real VMM. So the backup only ever goes
//! live from a complete, verified checkpoint (invariant 2): a half-received one never touched its
//! memory or its kept state.

mod backup;
mod capture;
mod epoch;
mod flow;
mod hooks;
mod hot_pages;
mod link;
mod pool;
mod primary;
mod scrub;
mod sent_pages;
mod settings;
mod staging;
mod stats;
mod window;

pub use backup::{BackupExit, BackupOptions, FtBackup};
pub use flow::{FlowLimit, FlowOptions, FlowReport};
pub use hooks::{BackupHooks, EpochHooks, NoHooks, ReplicaError};
pub use primary::{
    FtPrimary, PrimaryExit, PrimaryOptions, PrimaryReport, DEFAULT_MAX_BACKLOG_BYTES,
};
pub use settings::{agree, Agreed, BackupWants, PairDiskMode, PairSettings, SettingsError};
pub use stats::{
    CheckpointStats, NoStats, PageEncodings, PauseSteps, ReceivedCheckpoint, StatsSink, Summary,
    Trigger,
};

/// Start of an Abort reason by which a primary asks its backup to discard its copy and wait, on
/// the same listener, for a fresh initial sync (the guest rebooted: its old state is worthless,
/// and the backup must not go live from it or from a half-done reboot). A backup that does not
/// know the prefix discards and ends, which is also safe.
pub const RESYNC_PREFIX: &str = "resync: ";

/// Whether an Abort reason asks for a re-sync ([`RESYNC_PREFIX`]).
pub fn is_resync(reason: &str) -> bool {
    reason.starts_with(RESYNC_PREFIX)
}

/// Start of an Abort reason by which a backup tells its primary that it has left the pair for
/// good: it cannot keep its own copy (a replicated disk it cannot write), has discarded it, and
/// will never go live from this stream, whatever happens next. The primary may take it as the
/// end of the pair and run on unprotected without arbitration: the backup's word is its
/// confirmation (issue 11, "ending a pair"). A backup sends it only from a path that never
/// arbitrates afterwards ([`CheckpointError::Withdrawn`]); every other Abort of a backup's is
/// just a broken stream.
pub const WITHDRAW_PREFIX: &str = "withdrawn: ";

/// Whether an Abort reason is a backup's withdrawal ([`WITHDRAW_PREFIX`]).
pub fn is_withdrawal(reason: &str) -> bool {
    reason.starts_with(WITHDRAW_PREFIX)
}

use crate::migration::MigrationError;
use crate::vm::VmOpError;

/// Why checkpointing stopped, on either side.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The initial sync (FT-enable pre-copy) failed; nothing is protected yet.
    #[error("FT initial sync failed")]
    InitialSync(#[source] MigrationError),
    /// The replication stream failed: I/O, a corrupt or truncated frame, a timeout, the peer's
    /// Abort, or a frame the protocol does not allow here.
    #[error("replication stream failed")]
    Stream(#[source] MigrationError),
    /// A valid frame sequence that breaks the checkpoint protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Checkpoint `epoch` arrived, but does not verify at its Commit; it was discarded.
    #[error("checkpoint {epoch} is incomplete: {reason}")]
    Incomplete {
        /// The checkpoint.
        epoch: u64,
        /// What is missing or wrong.
        reason: String,
    },
    /// The backup did not ack checkpoint `epoch` in time.
    #[error("no ack for checkpoint {epoch} within {waited:?}")]
    AckTimeout {
        /// The oldest unacked checkpoint.
        epoch: u64,
        /// How long it has waited.
        waited: std::time::Duration,
    },
    /// An operation on the local VM failed.
    #[error("VM {op} failed")]
    Vm {
        /// The trait method.
        op: &'static str,
        /// The VM's error.
        #[source]
        source: VmOpError,
    },
    /// A thread of the engine could not be started, or died.
    #[error("engine thread {0}")]
    Thread(String),
    /// The backup stopped receiving; `last_committed` is what it can go live from (`None`: the
    /// initial sync never completed, so it cannot).
    #[error("backup stopped; last committed checkpoint: {last_committed:?}")]
    BackupStopped {
        /// The last complete, verified, applied checkpoint.
        last_committed: Option<u64>,
        /// Why it stopped.
        #[source]
        cause: Box<CheckpointError>,
    },
    /// `go_live` without a committed checkpoint.
    #[error("no committed checkpoint to go live from")]
    NothingCommitted,
    /// The backup could not take the replica scrub's repair: its copy is not what was
    /// committed.
    #[error("replica scrub")]
    Scrub(#[source] crate::scrub::ScrubError),
    /// This backup cannot keep checkpoint `epoch` in its own copy: it withdraws from the pair
    /// (the primary is told, [`WITHDRAW_PREFIX`]) and must never go live from this stream.
    #[error("this backup cannot keep checkpoint {epoch} in its copy")]
    Withdrawn {
        /// The checkpoint it could not keep.
        epoch: u64,
        /// Why (the replica's error).
        #[source]
        source: ReplicaError,
    },
    /// Primary: the backup is being promoted (`ft.promote`); this primary gave its shared-disk
    /// lease up and told it so.
    #[error("the backup is taking over (ft.promote, generation {generation}): this primary stopped writing the shared disk")]
    Fenced {
        /// The generation the backup is about to claim.
        generation: u64,
    },
    /// Backup: `ft.promote` stopped receiving; `confirmed` when the primary answered that it
    /// stopped writing the shared disk (else its lease must run out first).
    #[error("promoted (ft.promote); the primary {}", if *confirmed { "confirmed it stopped writing the shared disk" } else { "did not confirm it stopped writing" })]
    Promoted {
        /// The primary's Fence answer arrived.
        confirmed: bool,
    },
}

impl CheckpointError {
    /// Whether a backup stopped because it withdrew from the pair (see
    /// [`CheckpointError::Withdrawn`]): it must discard its copy, never arbitrate.
    pub fn is_withdrawal(&self) -> bool {
        match self {
            CheckpointError::Withdrawn { .. } => true,
            CheckpointError::BackupStopped { cause, .. } => cause.is_withdrawal(),
            _ => false,
        }
    }
}

impl From<MigrationError> for CheckpointError {
    fn from(e: MigrationError) -> Self {
        CheckpointError::Stream(e)
    }
}

/// Wraps a VM error with the trait method that produced it.
fn vm_err(op: &'static str) -> impl FnOnce(VmOpError) -> CheckpointError {
    move |source| CheckpointError::Vm { op, source }
}

/// Milliseconds since the Unix epoch, for Heartbeat frames.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}
