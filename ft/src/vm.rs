//! What `ft` needs from a VM, and all it may do to one: the `vmm` implements `MigratableVm` for its
//! real VM, the tests for a fake, so that the protocol and its policies run without KVM.

use crate::bitmap::DirtyBitmap;
use crate::frame::PAGE_SIZE;
use std::time::{Duration, Instant};

/// What a VM is, as announced in Hello and checked by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmIdentity {
    /// Guest memory in bytes (a whole number of pages).
    pub memory_size: u64,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// The VM's config as JSON, so that a destination can be built to match.
    pub config: String,
    /// The disks the stream copies (FT, replicated mode), in index order; empty otherwise.
    pub disks: Vec<crate::disk::DiskInfo>,
}

/// Everything but memory that makes up a paused VM, as opaque blobs the VMM alone understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmState {
    /// One blob per vCPU, in vCPU index order (registers, MSRs, LAPIC, events...).
    pub vcpus: Vec<Vec<u8>>,
    /// Platform and device state (irqchip, PIT, clock, every device).
    pub devices: Vec<u8>,
}

/// Where a `save_state` spent its time, for the pause's per-step timing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveTimes {
    /// Reading every vCPU's state.
    pub vcpus: Duration,
    /// Irqchip, clock and device state, and encoding the blobs.
    pub devices: Duration,
}

/// Errors a VM reports to `ft`.
#[derive(Debug, thiserror::Error)]
pub enum VmOpError {
    /// A page frame number beyond guest memory.
    #[error("page frame {pfn} is outside guest memory of {pages} pages")]
    PageOutOfRange {
        /// The offending page.
        pfn: u64,
        /// Pages the VM has.
        pages: u64,
    },
    /// The VM refused a state blob (bad version, wrong vCPU count, corrupt).
    #[error("VM state rejected: {reason}")]
    StateRejected {
        /// Why.
        reason: String,
    },
    /// The call is not valid in the VM's current state (e.g. save_state while running).
    #[error("cannot {what} now: {reason}")]
    InvalidState {
        /// The operation.
        what: &'static str,
        /// Why not.
        reason: String,
    },
    /// The VMM or KVM failed underneath.
    #[error("{what} failed")]
    Backend {
        /// The operation.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A VM that can be migrated, or replicated epoch by epoch.
///
/// Source side: `start_dirty_log`, then `read_page` while the guest runs, `take_dirty_pages` per
/// round, `pause`, a last `take_dirty_pages` + `read_page` + `save_state`, then either nothing more
/// (migrated) or `resume` (failed, or an FT epoch). Destination/backup side: `write_page` and
/// `restore_state` on a VM that is not running, then `resume` to go live.
pub trait MigratableVm {
    /// Guest memory size in bytes, a multiple of `PAGE_SIZE`.
    fn memory_size(&self) -> u64;
    /// Number of vCPUs.
    fn vcpu_count(&self) -> u32;
    /// The VM's config as JSON (sent in Hello; not interpreted by `ft`).
    fn config_json(&self) -> String;
    /// Copies guest page `pfn` into `buf`; safe to call while vCPUs run (the copy may be torn,
    /// which the dirty log makes harmless: a page written during the copy is dirty again).
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError>;
    /// Overwrites guest page `pfn`; only called while the VM is not running.
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError>;
    /// Starts tracking written pages (KVM dirty log and the VMM's device-write bitmap).
    fn start_dirty_log(&mut self) -> Result<(), VmOpError>;
    /// Pages written since `start_dirty_log` or the previous call, by vCPUs or devices, and
    /// clears them; the bitmap covers `page_count()` pages.
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError>;
    /// [`MigratableVm::take_dirty_pages`], except that of the pages reported, those `keep`
    /// returns stay writable: the guest's next writes to them cost no dirty-log fault, and they
    /// are reported dirty again next time whether written or not (FT keeps the pages an idle
    /// or chatty guest rewrites every epoch this way: `crate::checkpoint::hot_pages`). Only
    /// while paused. By default `keep` is not asked and every page is protected again, which is
    /// always correct, only slower.
    fn take_dirty_pages_keeping(
        &mut self,
        keep: &mut dyn FnMut(&DirtyBitmap) -> DirtyBitmap,
    ) -> Result<DirtyBitmap, VmOpError> {
        let _ = keep;
        self.take_dirty_pages()
    }
    /// Stops tracking; best effort, called on success and failure alike.
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError>;
    /// Stops every vCPU and device queue so that memory and state stop changing; returns once
    /// they have stopped.
    fn pause(&mut self) -> Result<(), VmOpError>;
    /// Runs the VM again after `pause`, or for the first time after `restore_state`.
    fn resume(&mut self) -> Result<(), VmOpError>;
    /// When the last `resume` let the guest run, where the VM knows it; the caller's own clock
    /// after `resume` returns can be later (the woken vCPU threads may hold its CPU a while),
    /// and that wait is not the guest's pause. Default: unknown.
    fn resumed_at(&self) -> Option<std::time::Instant> {
        None
    }
    /// `pause` for a `save_state` that follows it: the VM may start reading state as it stops,
    /// overlapping what the caller does meanwhile (the dirty log, the page copy). The default
    /// is `pause`.
    fn pause_for_capture(&mut self) -> Result<(), VmOpError> {
        self.pause()
    }
    /// Captures vCPU and device state; only while paused.
    fn save_state(&mut self) -> Result<VmState, VmOpError>;
    /// Loads state captured by `save_state` into a VM that is not running; on error the VM must
    /// not be resumed.
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError>;

    /// Guest RAM as (first guest-physical address, pages) per region, in linear page order, so
    /// that messages can name a page by its address; default: one region at address 0.
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        vec![(0, self.page_count())]
    }

    /// The replicated disks an FT initial sync copies with memory (`crate::disk`); none by
    /// default (a migration, shared disks).
    fn disks(&mut self) -> Option<&mut dyn crate::disk::VmDisks> {
        None
    }

    /// `save_state`, and where it spent its time; by default all of it counts as vCPU state.
    fn save_state_timed(&mut self) -> Result<(VmState, SaveTimes), VmOpError> {
        let t = Instant::now();
        let state = self.save_state()?;
        let times = SaveTimes {
            vcpus: t.elapsed(),
            devices: Duration::ZERO,
        };
        Ok((state, times))
    }

    /// Stops (`false`) or restarts (`true`) only the vCPUs of a running VM, leaving devices
    /// running: flow control's throttle takes the guest's CPU this way, a share of each epoch.
    /// `pause` and `resume` work as usual from either state (`resume` restarts the vCPUs too).
    /// Returns whether the VM can do this at all (the default cannot, and ignores the call).
    fn set_vcpus_running(&mut self, _running: bool) -> Result<bool, VmOpError> {
        Ok(false)
    }

    /// Guest memory size in pages.
    fn page_count(&self) -> u64 {
        self.memory_size() / PAGE_SIZE as u64
    }

    /// The identity announced in Hello.
    fn identity(&self) -> VmIdentity {
        VmIdentity {
            memory_size: self.memory_size(),
            vcpu_count: self.vcpu_count(),
            config: self.config_json(),
            disks: Vec::new(),
        }
    }
}
