//! A captured checkpoint on the primary: the staging buffer filled while the VM is paused, and
//! how it goes on the wire afterwards (zero detection and framing happen there, not in the pause).

use super::hot_pages::HotPages;
use super::pool::BufferPool;
use super::sent_pages::SentPages;
use super::stats::PauseSteps;
use super::{vm_err, CheckpointError};
use crate::frame::{CommitInfo, Frame, PageBatch, FLAG_ACK_REQUESTED, PAGE_SIZE};
use crate::migration::channel::FrameWriter;
use crate::migration::MigrationError;
use crate::vm::{MigratableVm, VmState};
use std::sync::Arc;
use std::time::Instant;

/// Largest Extras chunk; well under `MAX_PAYLOAD` so that one frame never hogs the link.
const EXTRAS_CHUNK: usize = 1 << 20;

/// Checkpoint `epoch`, copied out of the paused VM.
pub(crate) struct Captured {
    pub(crate) epoch: u64,
    pfns: Vec<u64>,
    /// Page data, `PAGE_SIZE` bytes per entry of `pfns` (the buffer may be longer).
    data: Vec<u8>,
    /// Where `data` goes back once sent.
    pool: Arc<BufferPool>,
    state: VmState,
    extras: Vec<u8>,
    /// How long the guest was paused for the capture (set once it resumed).
    pub(crate) pause: std::time::Duration,
    /// The capture left the guest paused (`vm.pause` on the primary).
    pub(crate) guest_paused: bool,
}

impl Captured {
    /// The pages dirtied since the last capture (clears the log, but leaves the pages `hot`
    /// picks writable); the VM must be paused.
    pub(crate) fn dirty_pages<V: MigratableVm + ?Sized>(
        vm: &mut V,
        hot: &mut HotPages,
    ) -> Result<Vec<u64>, CheckpointError> {
        let dirty = vm
            .take_dirty_pages_keeping(&mut |d| hot.choose(d))
            .map_err(vm_err("take_dirty_pages"))?;
        Ok(dirty.iter().collect())
    }

    /// Copies pages `pfns` into a staging buffer from `pool` and saves the state; the VM must
    /// be paused. Fills in the steps it timed (copy, vCPU state, devices).
    pub(crate) fn take<V: MigratableVm + ?Sized>(
        vm: &mut V,
        epoch: u64,
        pfns: Vec<u64>,
        pool: &Arc<BufferPool>,
        steps: &mut PauseSteps,
    ) -> Result<Captured, CheckpointError> {
        let t = Instant::now();
        let mut data = pool.take(pfns.len() * PAGE_SIZE);
        for (pfn, page) in pfns.iter().zip(data.chunks_exact_mut(PAGE_SIZE)) {
            let page: &mut [u8; PAGE_SIZE] = page
                .try_into()
                .map_err(|_| CheckpointError::Protocol("staging buffer misaligned".into()))?;
            vm.read_page(*pfn, page).map_err(vm_err("read_page"))?;
        }
        steps.copy = t.elapsed();
        let (state, times) = vm.save_state_timed().map_err(vm_err("save_state"))?;
        steps.vcpu_state = times.vcpus;
        steps.devices = times.devices;
        Ok(Captured {
            epoch,
            pfns,
            data,
            pool: pool.clone(),
            state,
            extras: Vec::new(),
            pause: std::time::Duration::ZERO,
            guest_paused: false,
        })
    }

    /// Attaches the hooks' blob for this epoch.
    pub(crate) fn set_extras(&mut self, extras: Vec<u8>) {
        self.extras = extras;
    }

    /// The vCPU and device state captured (the replica scrub hashes it).
    pub(crate) fn state(&self) -> &VmState {
        &self.state
    }

    /// Pages in the checkpoint.
    pub(crate) fn pages(&self) -> u64 {
        self.pfns.len() as u64
    }

    /// Bytes the staging buffer holds (what the in-flight byte bound counts).
    pub(crate) fn staged_bytes(&self) -> u64 {
        (self.pfns.len() * PAGE_SIZE
            + self.extras.len()
            + self.state.devices.len()
            + self.state.vcpus.iter().map(Vec::len).sum::<usize>()) as u64
    }

    /// Queues everything but the Commit on `w` (large checkpoints go out as they are encoded,
    /// the rest with the caller's flush), pages as deltas against `sent` where that is shorter;
    /// returns the page count the Commit must announce.
    pub(crate) fn send_body(
        &self,
        w: &mut FrameWriter,
        batch_pages: usize,
        sent_pages: &mut SentPages,
    ) -> Result<u64, MigrationError> {
        let mut sent = 0;
        let mut batch = PageBatch::new();
        for (pfn, page) in self
            .pfns
            .iter()
            .zip(self.pages_data().chunks_exact(PAGE_SIZE))
        {
            if let Ok(page) = <&[u8; PAGE_SIZE]>::try_from(page) {
                sent_pages.push(&mut batch, *pfn, page);
            }
            if batch.page_count() as usize >= batch_pages.max(1) {
                sent += batch.page_count();
                w.queue(
                    &Frame::MemoryPages(std::mem::take(&mut batch)),
                    self.epoch,
                    0,
                )?;
            }
        }
        if !batch.is_empty() {
            sent += batch.page_count();
            w.queue(&Frame::MemoryPages(batch), self.epoch, 0)?;
        }
        for (index, data) in self.state.vcpus.iter().enumerate() {
            let index = u32::try_from(index)
                .map_err(|_| MigrationError::Protocol("too many vCPUs".into()))?;
            let data = data.clone();
            w.queue(&Frame::VcpuState { index, data }, self.epoch, 0)?;
        }
        w.queue(
            &Frame::DeviceState(self.state.devices.clone()),
            self.epoch,
            0,
        )?;
        // At least one Extras frame, even for an empty blob, so that the backup can insist on it.
        let total = self.extras.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + EXTRAS_CHUNK).min(self.extras.len());
            let data = self.extras[offset..end].to_vec();
            let frame = Frame::Extras {
                offset: offset as u64,
                total,
                data,
            };
            w.queue(&frame, self.epoch, 0)?;
            offset = end;
            if offset >= self.extras.len() {
                break;
            }
        }
        Ok(sent)
    }

    /// The staged page data.
    fn pages_data(&self) -> &[u8] {
        &self.data[..self.pfns.len() * PAGE_SIZE]
    }

    /// The Commit that closes this checkpoint, with its pause and the guest's run state.
    pub(crate) fn commit_frame(&self, pages: u64) -> (Frame, u8) {
        let vcpus = self.state.vcpus.len() as u32;
        let info = CommitInfo {
            pause_us: self.pause.as_micros().min(u128::from(u64::MAX)) as u64,
            guest_paused: self.guest_paused,
        };
        let commit = Frame::Commit {
            vcpus,
            pages,
            info: Some(info),
        };
        (commit, FLAG_ACK_REQUESTED)
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}
