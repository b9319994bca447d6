//! The backup's staging area: one checkpoint's frames, kept apart from the VM until the Commit
//! proves the checkpoint complete. Nothing here touches the VM except `apply`.

use super::{vm_err, CheckpointError};
use crate::bitmap::DirtyBitmap;
use crate::frame::{apply_delta, Frame, PageBatch, PageRef, PAGE_SIZE};
use crate::vm::{MigratableVm, VmState};

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Checkpoint `epoch` as far as it has arrived.
pub(crate) struct Staging {
    epoch: u64,
    guest_pages: u64,
    batches: Vec<PageBatch>,
    pages: u64,
    vcpus: Vec<Option<Vec<u8>>>,
    devices: Option<Vec<u8>>,
    extras: Vec<u8>,
    /// The blob's total length, from the first Extras frame.
    extras_total: Option<u64>,
}

/// A checkpoint that verified at its Commit.
pub(crate) struct Verified {
    pub(crate) epoch: u64,
    batches: Vec<PageBatch>,
    pub(crate) state: VmState,
    pub(crate) extras: Vec<u8>,
}

impl Staging {
    pub(crate) fn new(epoch: u64, guest_pages: u64, vcpus: u32) -> Staging {
        Staging {
            epoch,
            guest_pages,
            batches: Vec::new(),
            pages: 0,
            vcpus: vec![None; vcpus as usize],
            devices: None,
            extras: Vec::new(),
            extras_total: None,
        }
    }

    fn bad(&self, reason: String) -> CheckpointError {
        CheckpointError::Incomplete {
            epoch: self.epoch,
            reason,
        }
    }

    /// Takes one body frame (pages, state or extras); anything else is the caller's business.
    /// Deltas are resolved now against `vm`, whose memory holds the previous checkpoint, for
    /// pages `sent` says an earlier checkpoint carried.
    pub(crate) fn add<V: MigratableVm + ?Sized>(
        &mut self,
        frame: Frame,
        vm: &V,
        sent: &DirtyBitmap,
    ) -> Result<(), CheckpointError> {
        match frame {
            Frame::MemoryPages(batch) => {
                // Checked here, not at apply, so that a verified checkpoint cannot fail halfway.
                let mut deltas = false;
                for entry in batch.iter() {
                    let end = match entry {
                        PageRef::Data { pfn, .. } => pfn.saturating_add(1),
                        PageRef::Zero { pfn, count } => pfn.saturating_add(u64::from(count)),
                        PageRef::Delta { pfn, .. } => {
                            deltas = true;
                            pfn.saturating_add(1)
                        }
                    };
                    if end > self.guest_pages {
                        return Err(self.bad(format!(
                            "page {} beyond guest memory of {} pages",
                            end - 1,
                            self.guest_pages
                        )));
                    }
                }
                let batch = if deltas {
                    self.resolve(&batch, vm, sent)?
                } else {
                    batch
                };
                self.pages += batch.page_count();
                self.batches.push(batch);
            }
            Frame::VcpuState { index, data } => {
                let n = self.vcpus.len();
                let slot = self.vcpus.get_mut(index as usize).ok_or_else(|| {
                    CheckpointError::Incomplete {
                        epoch: self.epoch,
                        reason: format!("state of vCPU {index}, VM has {n}"),
                    }
                })?;
                if slot.replace(data).is_some() {
                    return Err(self.bad(format!("vCPU {index} state sent twice")));
                }
            }
            Frame::DeviceState(data) => {
                if self.devices.replace(data).is_some() {
                    return Err(self.bad("device state sent twice".into()));
                }
            }
            Frame::Extras {
                offset,
                total,
                data,
            } => {
                if *self.extras_total.get_or_insert(total) != total {
                    return Err(self.bad("extras chunks disagree on the total".into()));
                }
                if offset != self.extras.len() as u64 {
                    return Err(self.bad(format!(
                        "extras chunk at {offset}, expected {}",
                        self.extras.len()
                    )));
                }
                self.extras.extend_from_slice(&data);
            }
            other => {
                return Err(CheckpointError::Protocol(format!(
                    "{:?} frame inside checkpoint {}",
                    other.frame_type(),
                    self.epoch
                )))
            }
        }
        Ok(())
    }

    /// `batch` with every delta applied to the page the VM holds, as whole pages; page numbers
    /// are already range-checked.
    fn resolve<V: MigratableVm + ?Sized>(
        &self,
        batch: &PageBatch,
        vm: &V,
        sent: &DirtyBitmap,
    ) -> Result<PageBatch, CheckpointError> {
        let mut out = PageBatch::new();
        let mut page = [0u8; PAGE_SIZE];
        for entry in batch.iter() {
            match entry {
                PageRef::Data { pfn, data } => out.push_data(pfn, data),
                PageRef::Zero { pfn, count } => {
                    for p in pfn..pfn.saturating_add(u64::from(count)) {
                        out.push_zero(p);
                    }
                }
                PageRef::Delta { pfn, crc, delta } => {
                    if !sent.is_set(pfn) {
                        return Err(self.bad(format!(
                            "delta for page {pfn}, which no earlier checkpoint sent"
                        )));
                    }
                    vm.read_page(pfn, &mut page).map_err(vm_err("read_page"))?;
                    apply_delta(&mut page, delta)
                        .map_err(|e| self.bad(format!("delta for page {pfn}: {e}")))?;
                    if crc32fast::hash(&page) != crc {
                        return Err(self.bad(format!(
                            "delta for page {pfn} does not give the page the primary sent"
                        )));
                    }
                    out.push_data(pfn, &page);
                }
            }
        }
        Ok(out)
    }

    /// Checks the staged checkpoint against its Commit: every page announced arrived, every vCPU
    /// and the devices have state, the extras blob is whole.
    pub(crate) fn verify(self, vcpus: u32, pages: u64) -> Result<Verified, CheckpointError> {
        if pages != self.pages {
            return Err(self.bad(format!(
                "Commit announces {pages} pages, {} arrived",
                self.pages
            )));
        }
        if vcpus as usize != self.vcpus.len() {
            return Err(self.bad(format!(
                "Commit announces {vcpus} vCPUs, VM has {}",
                self.vcpus.len()
            )));
        }
        match self.extras_total {
            None => return Err(self.bad("no Extras frame".into())),
            Some(t) if t != self.extras.len() as u64 => {
                return Err(self.bad(format!(
                    "extras: {} of {t} bytes arrived",
                    self.extras.len()
                )))
            }
            Some(_) => {}
        }
        let Some(devices) = self.devices else {
            return Err(CheckpointError::Incomplete {
                epoch: self.epoch,
                reason: "no device state".into(),
            });
        };
        let mut states = Vec::with_capacity(self.vcpus.len());
        for (i, v) in self.vcpus.into_iter().enumerate() {
            states.push(v.ok_or_else(|| CheckpointError::Incomplete {
                epoch: self.epoch,
                reason: format!("no state for vCPU {i}"),
            })?);
        }
        Ok(Verified {
            epoch: self.epoch,
            batches: self.batches,
            state: VmState {
                vcpus: states,
                devices,
            },
            extras: self.extras,
        })
    }
}

impl Verified {
    /// Writes the checkpoint's pages into the (not running) VM; page numbers were checked when
    /// they were staged.
    pub(crate) fn apply_pages<V: MigratableVm + ?Sized>(
        &self,
        vm: &mut V,
    ) -> Result<(), CheckpointError> {
        for batch in &self.batches {
            for entry in batch.iter() {
                match entry {
                    PageRef::Data { pfn, data } => {
                        vm.write_page(pfn, data).map_err(vm_err("write_page"))?
                    }
                    PageRef::Zero { pfn, count } => {
                        for p in pfn..pfn.saturating_add(u64::from(count)) {
                            vm.write_page(p, &ZERO_PAGE).map_err(vm_err("write_page"))?;
                        }
                    }
                    // Resolved into whole pages when staged.
                    PageRef::Delta { pfn, .. } => {
                        return Err(CheckpointError::Protocol(format!(
                            "unresolved delta for page {pfn}"
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the pages this (applied) checkpoint carried: later ones may send deltas of them.
    pub(crate) fn mark_sent(&self, sent: &mut DirtyBitmap) {
        for batch in &self.batches {
            for entry in batch.iter() {
                let (pfn, count) = match entry {
                    PageRef::Data { pfn, .. } | PageRef::Delta { pfn, .. } => (pfn, 1),
                    PageRef::Zero { pfn, count } => (pfn, count),
                };
                for p in pfn..pfn.saturating_add(u64::from(count)) {
                    sent.set(p);
                }
            }
        }
    }
}
