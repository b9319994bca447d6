//! Where the checkpoint engine meets the replica scrub (`crate::scrub`), kept in one file so that
//! the engine's threads each make one call:
//!
//! * epoch thread, guest paused for checkpoint N's capture: [`at_capture`] hashes what is due
//!   (the captured state, memory and disks as they are at N); while the guest stays paused
//!   (`vm.pause`), [`while_guest_paused`] goes on with an `ft.verify` pass or repairs;
//! * sender thread, after N's Commit (or when idle): [`send_digests`] sends the digests of
//!   checkpoints ≤ N, so the backup reads each after applying its checkpoint;
//! * ack thread: the backup's `ScrubResult` goes to [`PrimaryScrub::on_result`] through
//!   [`on_result`].
//!
//! Backup: the receiver answers a digest where it reads it (`backup.rs`), via `scrub::check`.

use super::capture::Captured;
use super::hooks::EpochHooks;
use super::CheckpointError;
use crate::frame::{Frame, ScrubResult};
use crate::migration::channel::FrameWriter;
use crate::migration::MigrationError;
use crate::scrub::PrimaryScrub;
use crate::vm::MigratableVm;

/// Epoch thread, the guest paused for the capture of `cap`.
pub(crate) fn at_capture<V: MigratableVm + ?Sized>(
    scrub: &PrimaryScrub,
    vm: &V,
    cap: &Captured,
    hooks: &dyn EpochHooks,
) {
    scrub.while_paused(vm, cap.epoch, Some(cap.state()), hooks.scrub_disks(), true);
}

/// Epoch thread, the guest left paused at checkpoint `epoch` (nothing changes): an `ft.verify`
/// pass or repairs go on without waiting for the guest to run again.
pub(crate) fn while_guest_paused<V: MigratableVm + ?Sized>(
    scrub: &PrimaryScrub,
    vm: &V,
    epoch: u64,
    hooks: &dyn EpochHooks,
) {
    if scrub.has_urgent_work() {
        scrub.while_paused(vm, epoch, None, hooks.scrub_disks(), false);
    }
}

/// Sender thread: the digests of checkpoints ≤ `through`, whose Commits went out.
pub(crate) fn send_digests(
    scrub: &PrimaryScrub,
    w: &mut FrameWriter,
    through: u64,
) -> Result<(), MigrationError> {
    for (epoch, digest) in scrub.take_ready(through) {
        w.send(&Frame::ScrubDigest(digest), epoch, 0)?;
    }
    Ok(())
}

/// Ack thread: the backup's answer to the digest of checkpoint `epoch`.
pub(crate) fn on_result(
    scrub: &PrimaryScrub,
    epoch: u64,
    r: &ScrubResult,
) -> Result<(), CheckpointError> {
    scrub.on_result(epoch, r).map_err(CheckpointError::Protocol)
}
