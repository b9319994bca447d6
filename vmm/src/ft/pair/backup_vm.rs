//! The replica VM: an `IncomingVm` that takes the copy of replicated disks in the initial sync
//! and, when it goes live, re-issues the committed shared-disk writes before the guest runs.

// Host-side: one line per failover.
#![allow(clippy::disallowed_macros)]

use super::super::disks::ReplicaDisks;
use super::super::hooks::BackupDiskHooks;
use crate::migration::incoming::IncomingVm;
use ft::bitmap::DirtyBitmap;
use ft::disk::VmDisks;
use ft::frame::PAGE_SIZE;
use ft::vm::{MigratableVm, VmOpError, VmState};
use std::sync::Arc;

/// A backup's VM: an `IncomingVm` that takes the initial copy of replicated disks and, when it
/// goes live, re-issues the committed shared-disk writes before the guest runs.
pub struct BackupVm {
    pub(super) inner: IncomingVm,
    pub(super) disks: Arc<BackupDiskHooks>,
    /// Replicated mode: this host's images, which the initial sync copies the primary's into.
    pub(super) replica: Option<ReplicaDisks>,
}

impl MigratableVm for BackupVm {
    fn memory_size(&self) -> u64 {
        self.inner.memory_size()
    }
    fn vcpu_count(&self) -> u32 {
        self.inner.vcpu_count()
    }
    fn config_json(&self) -> String {
        self.inner.config_json()
    }
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.inner.ram_ranges()
    }
    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.inner.read_page(pfn, buf)
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        self.inner.write_page(pfn, data)
    }
    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.inner.start_dirty_log()
    }
    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        self.inner.take_dirty_pages()
    }
    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.inner.stop_dirty_log()
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        // Resumes and announces the MACs (IncomingVm).
        self.inner.resume()
    }
    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.inner.save_state()
    }
    fn disks(&mut self) -> Option<&mut dyn VmDisks> {
        match self.replica.as_mut() {
            Some(r) => Some(r),
            None => None,
        }
    }
    /// Only `go_live` restores, once: the committed writes are re-issued right after, before
    /// the guest runs, also when it goes live paused.
    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        self.inner.restore_state(state)?;
        let n = self.disks.reissue().map_err(|e| VmOpError::Backend {
            what: "re-issue committed disk writes",
            source: Box::new(e),
        })?;
        if n > 0 {
            log::info!("ft backup: re-issued {n} committed disk writes");
        }
        Ok(())
    }
}
