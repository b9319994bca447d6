//! What the checkpoint engine tells the rest of FT (output gates, disk log, failure detector).

use super::stats::ReceivedCheckpoint;
use crate::frame::FrameType;
use crate::scrub::ScrubDisks;

/// The primary's callbacks; the output gates implement it. Called from engine threads, so they
/// must be quick and must not block on the engine.
pub trait EpochHooks: Send + Sync {
    /// Epoch `n` was captured (called while the VM is paused): outputs from now on belong to
    /// epoch `n + 1`.
    fn epoch_captured(&self, n: u64);
    /// The opaque blob (e.g. epoch `n`'s disk write log) that must travel with checkpoint `n`;
    /// called while paused, right after `epoch_captured(n)`.
    fn take_epoch_extras(&self, n: u64) -> Vec<u8>;
    /// The backup acked checkpoint `n`: outputs of epochs ≤ `n` may leave. Called in order.
    fn epoch_committed(&self, n: u64);
    /// The backup acked a checkpoint whose Commit was sent at `sent` (this host's monotonic
    /// clock), so it heard this primary at or after `sent`: the shared-disk lease
    /// (`gate::Lease`) runs from there. Called just before that checkpoint's `epoch_committed`;
    /// default: ignored.
    fn lease_renewed(&self, _sent: std::time::Instant) {}
    /// The backup is being promoted (`ft.promote`, about to claim `generation`) and asks this
    /// primary to stop writing the shared disk: give the lease up and return once no write is
    /// in flight; the engine then confirms it to the backup, which need not wait for the lease
    /// to run out. Default: nothing to fence.
    fn fence(&self, _generation: u64) {}
    /// Whether outputs are being held; with the last checkpoint acked, this ends the epoch early.
    fn output_waiting(&self) -> bool;
    /// Waits up to `timeout` for an output to be held, returning early when one is; returns
    /// [`EpochHooks::output_waiting`]. Default: sleeps `timeout` (the epoch thread then finds
    /// held output on its next look).
    fn wait_output(&self, timeout: std::time::Duration) -> bool {
        std::thread::sleep(timeout);
        self.output_waiting()
    }
    /// Any frame arrived from the peer (for the failure detector); default: ignored.
    fn on_peer_frame(&self, _kind: FrameType) {}
    /// A heartbeat frame went to the backup (for the metrics); default: ignored.
    fn heartbeat_sent(&self) {}
    /// Runs first on the epoch thread, which stops and resumes the vCPUs: the place for a
    /// scheduling hint (the VMM asks for a short time slice); default: nothing.
    fn epoch_thread_started(&self) {}
    /// The replicated disks the scrub reads while the guest is paused (none in shared-disk
    /// mode); default: none.
    fn scrub_disks(&self) -> Option<&dyn ScrubDisks> {
        None
    }
}

/// Why a backup cannot keep a checkpoint in its own copy (a replicated disk it cannot write:
/// ENOSPC, EIO, a write past its end); the VMM's error, with its causes.
pub type ReplicaError = Box<dyn std::error::Error + Send + Sync>;

/// The backup's callbacks; the disk gate and the failure detector implement it.
pub trait BackupHooks: Send + Sync {
    /// Checkpoint `n` is complete and verified, not acked yet: write what this backup's own
    /// copy needs from `extras` (a replicated disk's writes). An error withdraws the backup from
    /// the pair before it acks `n` ([`super::WITHDRAW_PREFIX`]). Default: nothing to write.
    fn before_ack(&self, _n: u64, _extras: &[u8]) -> Result<(), ReplicaError> {
        Ok(())
    }
    /// Checkpoint `n` was acked and applied: make what `before_ack` wrote durable. An error
    /// withdraws the backup likewise (the primary has the ack already; it learns from the
    /// Abort). Default: nothing to do.
    fn after_ack(&self, _n: u64) -> Result<(), ReplicaError> {
        Ok(())
    }
    /// Checkpoint `n` is complete, verified, acked and applied; `extras` is its blob.
    fn backup_committed(&self, n: u64, extras: &[u8]);
    /// Checkpoint `r.epoch`'s figures, right after `backup_committed`; default: ignored.
    fn checkpoint_received(&self, _r: &ReceivedCheckpoint) {}
    /// Any frame arrived from the primary (for the failure detector); default: ignored.
    fn on_peer_frame(&self, _kind: FrameType) {}
    /// A heartbeat frame went to the primary (for the metrics); default: ignored.
    fn heartbeat_sent(&self) {}
    /// Polled while receiving: `Some(generation)` once `ft.promote` asks this backup to take
    /// over (it will claim `generation`): the engine stops acking, asks the primary to fence
    /// itself, and ends with [`super::CheckpointError::Promoted`]. Default: never.
    fn promote_requested(&self) -> Option<u64> {
        None
    }
    /// This backup's replicated disks, which the scrub reads and repairs (none in shared-disk
    /// mode); default: none.
    fn scrub_disks(&self) -> Option<&dyn ScrubDisks> {
        None
    }
    /// The backup answered a scrub digest (`r.mismatches` differed here); default: ignored.
    fn scrub_answered(&self, _r: &crate::frame::ScrubResult) {}
}

/// Hooks that hold nothing and ask for nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl EpochHooks for NoHooks {
    fn epoch_captured(&self, _n: u64) {}
    fn take_epoch_extras(&self, _n: u64) -> Vec<u8> {
        Vec::new()
    }
    fn epoch_committed(&self, _n: u64) {}
    fn output_waiting(&self) -> bool {
        false
    }
}

impl BackupHooks for NoHooks {
    fn backup_committed(&self, _n: u64, _extras: &[u8]) {}
}
