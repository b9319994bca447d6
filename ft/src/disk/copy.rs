//! The primary's half of the disk copy: a full pass, dirty rounds, and the last dirty blocks
//! while the guest is paused. Memory stays bounded: one batch of blocks at a time and one dirty
//! bitmap per disk (a bit per 4 KiB block: 32 KiB per GiB of disk).

use super::{DiskInfo, DiskProgress, VmDisks, BLOCK_SIZE};
use crate::bitmap::DirtyBitmap;
use crate::frame::{DiskBatch, Frame};
use crate::migration::MigrationError;
use crate::vm::VmOpError;

/// Where the copy's frames go (the sync's sender, which also notices the peer's Abort).
pub(crate) type FrameOut<'a> = dyn FnMut(Frame) -> Result<(), MigrationError> + 'a;

fn vm_err(op: &'static str) -> impl FnOnce(VmOpError) -> MigrationError {
    move |source| MigrationError::Vm { op, source }
}

/// One initial sync's disk copy on the primary.
pub(crate) struct DiskCopy {
    disks: Vec<DiskInfo>,
    /// Dirty blocks taken from the disks but not sent yet, one bitmap per entry of `disks`.
    pending: Vec<DirtyBitmap>,
    progress: DiskProgress,
    /// Most data blocks per frame.
    batch_blocks: usize,
    tracking: bool,
}

impl DiskCopy {
    /// Starts tracking the guest's writes to `disks` (before anything is read, so that a block
    /// written during the full pass is sent again).
    pub(crate) fn start(
        disks: &mut dyn VmDisks,
        progress: DiskProgress,
        batch_blocks: usize,
    ) -> Result<DiskCopy, MigrationError> {
        let list = disks.list();
        disks
            .start_tracking()
            .map_err(vm_err("start_disk_tracking"))?;
        progress.start(list.iter().map(|d| d.size).sum());
        Ok(DiskCopy {
            pending: list.iter().map(|d| DirtyBitmap::new(d.blocks())).collect(),
            disks: list,
            progress,
            batch_blocks: batch_blocks.max(1),
            tracking: true,
        })
    }

    /// Every block of every disk, holes (never read) and zero blocks as zero runs.
    pub(crate) fn full_pass(
        &mut self,
        disks: &mut dyn VmDisks,
        out: &mut FrameOut<'_>,
    ) -> Result<(), MigrationError> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        for d in self.disks.clone() {
            let mut batch = DiskBatch::new(d.index);
            let blocks = d.blocks();
            let mut b = 0;
            while b < blocks {
                let at = b * BLOCK_SIZE as u64;
                let (start, end) = match disks
                    .next_data(d.index, at)
                    .map_err(vm_err("find_disk_data"))?
                {
                    None => (d.size, d.size),
                    Some((s, _)) if s >= d.size => (d.size, d.size),
                    Some((s, e)) if e.min(d.size) > s.max(at) => (s.max(at), e.min(d.size)),
                    // An answer that makes no sense: read everything from here.
                    Some(_) => (at, d.size),
                };
                // A hole up to the data (or the end): zeros, nothing read.
                let first = (start / BLOCK_SIZE as u64).min(blocks);
                if first > b {
                    batch.push_zero(b, first - b);
                    b = first;
                }
                let last = end.div_ceil(BLOCK_SIZE as u64).min(blocks);
                while b < last {
                    let len = d.block_len(b);
                    disks
                        .read(d.index, b * BLOCK_SIZE as u64, &mut buf[..len])
                        .map_err(vm_err("read_disk"))?;
                    batch.push_block(b, &buf[..len]);
                    b += 1;
                    if batch.len() >= self.batch_blocks {
                        self.flush(&mut batch, true, out)?;
                    }
                }
            }
            self.flush(&mut batch, true, out)?;
        }
        Ok(())
    }

    /// The copy's figures so far.
    pub(crate) fn progress(&self) -> super::DiskSync {
        self.progress.snapshot()
    }

    /// Takes the blocks written since the last call into the pending sets; returns how many
    /// blocks are pending in all.
    pub(crate) fn take_dirty(&mut self, disks: &mut dyn VmDisks) -> Result<u64, MigrationError> {
        for (d, pending) in self.disks.iter().zip(self.pending.iter_mut()) {
            let dirty = disks
                .take_dirty(d.index)
                .map_err(vm_err("take_dirty_blocks"))?;
            pending.merge(&dirty);
        }
        let n = self.pending.iter().map(DirtyBitmap::count).sum();
        self.progress.set_dirty(n);
        Ok(n)
    }

    /// Sends every pending block (zero ones as runs) and clears the pending sets.
    pub(crate) fn dirty_pass(
        &mut self,
        disks: &mut dyn VmDisks,
        out: &mut FrameOut<'_>,
    ) -> Result<(), MigrationError> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        for i in 0..self.disks.len() {
            let d = self.disks[i];
            let pending = std::mem::replace(&mut self.pending[i], DirtyBitmap::new(d.blocks()));
            let mut batch = DiskBatch::new(d.index);
            for b in pending.iter() {
                let len = d.block_len(b);
                if len == 0 {
                    continue;
                }
                disks
                    .read(d.index, b * BLOCK_SIZE as u64, &mut buf[..len])
                    .map_err(vm_err("read_disk"))?;
                batch.push_block(b, &buf[..len]);
                if batch.len() >= self.batch_blocks {
                    self.flush(&mut batch, false, out)?;
                }
            }
            self.flush(&mut batch, false, out)?;
        }
        self.progress.set_dirty(0);
        Ok(())
    }

    /// Stops tracking (once; best effort).
    pub(crate) fn stop(&mut self, disks: &mut dyn VmDisks) {
        if std::mem::take(&mut self.tracking) {
            disks.stop_tracking();
        }
    }

    fn flush(
        &self,
        batch: &mut DiskBatch,
        full_pass: bool,
        out: &mut FrameOut<'_>,
    ) -> Result<(), MigrationError> {
        if batch.is_empty() {
            return Ok(());
        }
        let disk = batch.disk();
        let b = std::mem::replace(batch, DiskBatch::new(disk));
        let (data, covered) = (b.data_bytes(), b.covered_bytes());
        out(Frame::DiskBlocks(b))?;
        self.progress.sent(data);
        if full_pass {
            self.progress.copied(covered);
        }
        Ok(())
    }
}
