//! Replicated disks in the FT initial sync (DESIGN.md, "Disk, replicated mode"). Each host has
//! its own image, so turning FT on copies the primary's image to the backup along with memory, as
//! vSphere FT does when FT is turned on: a full pass while the guest runs (holes and zero blocks
//! go as zero runs: nothing is read from a hole, nothing zero is sent), the blocks the guest
//! writes meanwhile tracked and sent again round after round, and the last dirty blocks while the
//! guest is paused for the sync's final round. From the first checkpoint on, each epoch's writes
//! travel in its extras (the disk gate's log), so the copy never falls behind.
//!
//! The primary announces its replicated disks (index and size) in its Hello. The backup's images
//! must be exactly as large as the primary's: a smaller one cannot hold the data, and a larger one
//! would show the guest a disk that changes size at failover (virtio-blk's capacity comes from
//! the image). Either side refuses a mismatch at the Hello, naming both sizes, before anything is
//! written; so does a backup that replicates its disks behind a primary that does not announce
//! any (a shared-mode primary), and the other way round.
//!
//! Files: `copy.rs` (the primary's passes), `apply.rs` (the backup's checks and writes),
//! `progress.rs` (what `ft.status` and the metrics show). The wire form is `frame::DiskBatch`.

mod apply;
mod copy;
mod progress;

pub(crate) use apply::apply_batch;
pub use apply::check_disks;
pub(crate) use copy::DiskCopy;
pub use progress::{DiskProgress, DiskSync};

use crate::bitmap::DirtyBitmap;
use crate::vm::VmOpError;

/// The unit disks are tracked, compared and copied in.
pub const BLOCK_SIZE: usize = 4096;

/// Smallest unit of a disk write (virtio-blk sectors); images are a whole number of them.
pub const SECTOR_SIZE: u64 = 512;

/// A disk the initial sync copies: its index among the VM's virtio devices (the same on both
/// hosts, as in the disk gates' write log) and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskInfo {
    /// Index among the VM's virtio devices.
    pub index: u32,
    /// Bytes, a multiple of [`SECTOR_SIZE`].
    pub size: u64,
}

impl DiskInfo {
    /// Blocks of [`BLOCK_SIZE`] bytes, the last one possibly short.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE as u64)
    }

    /// Bytes of block `block` (the last one may be short; past the end: 0).
    pub fn block_len(&self, block: u64) -> usize {
        let start = block.saturating_mul(BLOCK_SIZE as u64);
        self.size.saturating_sub(start).min(BLOCK_SIZE as u64) as usize
    }
}

/// A VM's replicated disks as the initial sync sees them: the source reads its images and
/// tracks the guest's writes, the destination writes its own images. A side calls only its own
/// methods; the other side's default to an error.
pub trait VmDisks {
    /// The disks to copy, in index order.
    fn list(&self) -> Vec<DiskInfo>;

    /// A name for disk `index` in messages (the VMM's disk id).
    fn name(&self, index: u32) -> String {
        format!("disk {index}")
    }

    /// Source: starts recording which blocks the guest writes (a block is marked once its
    /// write has reached the image, so that a copy read before the write is always sent again).
    fn start_tracking(&mut self) -> Result<(), VmOpError> {
        Err(not_here("track disk writes", "this is the destination"))
    }

    /// Source: the blocks of disk `index` written since tracking started or the previous call,
    /// cleared; covers [`DiskInfo::blocks`] blocks.
    fn take_dirty(&mut self, _index: u32) -> Result<DirtyBitmap, VmOpError> {
        Err(not_here("read the dirty blocks", "this is the destination"))
    }

    /// Source: stops tracking; best effort, on success and failure alike.
    fn stop_tracking(&mut self) {}

    /// Source: the next range `[start, end)` at or after `offset` that may hold data; `None`
    /// when only holes follow (they read as zeros). The default knows no holes.
    fn next_data(&mut self, index: u32, offset: u64) -> Result<Option<(u64, u64)>, VmOpError> {
        let size = self
            .list()
            .iter()
            .find(|d| d.index == index)
            .map_or(0, |d| d.size);
        Ok((offset < size).then_some((offset, size)))
    }

    /// Source: fills `buf` from byte `offset` of disk `index`'s image; safe while the guest runs
    /// (a torn copy is sent again: the block is dirty).
    fn read(&self, _index: u32, _offset: u64, _buf: &mut [u8]) -> Result<(), VmOpError> {
        Err(not_here("read a disk", "this is the destination"))
    }

    /// Destination: writes `data` at byte `offset` of disk `index`'s image.
    fn write(&mut self, _index: u32, _offset: u64, _data: &[u8]) -> Result<(), VmOpError> {
        Err(not_here("write a disk", "this is the source"))
    }

    /// Destination: makes bytes `offset..offset + len` of disk `index`'s image read as zeros.
    fn zero(&mut self, _index: u32, _offset: u64, _len: u64) -> Result<(), VmOpError> {
        Err(not_here("zero a disk range", "this is the source"))
    }

    /// Destination: makes every write so far durable (before the sync's Commit is acked).
    fn flush(&mut self) -> Result<(), VmOpError> {
        Err(not_here("flush the disks", "this is the source"))
    }
}

fn not_here(what: &'static str, reason: &str) -> VmOpError {
    VmOpError::InvalidState {
        what,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
