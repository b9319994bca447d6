//! The running VM as the source of a migration or the primary of an FT pair (ft's
//! `MigratableVm`). `SourceVm` either borrows the VM (`SourceVm<&mut Vm>`, a migration thread that
//! keeps the VM on its stack) or owns it (`SourceVm<Vm>`, [`PrimaryVm`]: Send + 'static, for
//! `ft::checkpoint::FtPrimary`, which keeps the VM on its own threads and hands it back through
//! [`SourceVm::into_inner`]).

use super::pages::PageMap;
use super::{backend, encode_state};
use crate::vm::Vm;
use ft::bitmap::DirtyBitmap;
use ft::disk::VmDisks;
use ft::frame::PAGE_SIZE;
use ft::vm::{MigratableVm, SaveTimes, VmOpError, VmState};
use std::borrow::BorrowMut;
use vm_memory::Bytes;

/// A VM being migrated away or protected; `V` is `&mut Vm` (borrowed) or `Vm` (owned). Whoever
/// holds the `Vm` in the end decides what becomes of it.
pub struct SourceVm<V: BorrowMut<Vm>> {
    vm: V,
    vcpus: u32,
    config_json: String,
    map: PageMap,
    /// Replicated disks the FT initial sync copies with memory (none for a migration).
    disks: Option<Box<dyn VmDisks + Send>>,
    /// When the last `resume` let the vCPUs go (`Vm::resume_vcpus`).
    resumed_at: Option<std::time::Instant>,
}

/// The primary of an FT pair: owns its VM, so it can live on ft's threads.
pub type PrimaryVm = SourceVm<Vm>;

/// What a Hello announces of `vm` (its memory as the stream counts it, vCPUs, config).
pub fn identity(vm: &Vm, vcpus: u8, config_json: String) -> ft::vm::VmIdentity {
    ft::vm::VmIdentity {
        memory_size: PageMap::new(vm.memory()).pages() * PAGE_SIZE as u64,
        vcpu_count: u32::from(vcpus),
        config: config_json,
        disks: Vec::new(),
    }
}

impl<V: BorrowMut<Vm>> SourceVm<V> {
    /// Wraps `vm`, whose config (sent to the destination) is `config_json`.
    pub fn new(vm: V, vcpus: u8, config_json: String) -> Self {
        let map = PageMap::new(vm.borrow().memory());
        SourceVm {
            vm,
            vcpus: u32::from(vcpus),
            config_json,
            map,
            disks: None,
            resumed_at: None,
        }
    }

    /// The same, with replicated disks the FT initial sync copies along with memory.
    pub fn with_disks(mut self, disks: Box<dyn VmDisks + Send>) -> Self {
        self.disks = Some(disks);
        self
    }

    /// The VM, for the owner's own use (e.g. MAC announcements, device gates).
    pub fn vm(&mut self) -> &mut Vm {
        self.vm.borrow_mut()
    }

    /// Gives the VM (or the borrow) back.
    pub fn into_inner(self) -> V {
        self.vm
    }
}

impl<V: BorrowMut<Vm>> MigratableVm for SourceVm<V> {
    fn memory_size(&self) -> u64 {
        self.map.pages() * PAGE_SIZE as u64
    }

    fn vcpu_count(&self) -> u32 {
        self.vcpus
    }

    fn config_json(&self) -> String {
        self.config_json.clone()
    }

    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.map.ranges()
    }

    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let gpa = self.map.gpa(pfn).ok_or(VmOpError::PageOutOfRange {
            pfn,
            pages: self.map.pages(),
        })?;
        self.vm
            .borrow()
            .memory()
            .read_slice(buf, gpa)
            .map_err(backend("read a guest page"))
    }

    fn write_page(&mut self, _pfn: u64, _data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        Err(VmOpError::InvalidState {
            what: "write a page",
            reason: "this is the source".into(),
        })
    }

    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.vm
            .borrow_mut()
            .start_dirty_log()
            .map_err(backend("start the dirty log"))
    }

    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        let d = self
            .vm
            .borrow_mut()
            .dirty_pages()
            .map_err(backend("read the dirty log"))?;
        Ok(self.map.linear(&d))
    }

    fn take_dirty_pages_keeping(
        &mut self,
        keep: &mut dyn FnMut(&DirtyBitmap) -> DirtyBitmap,
    ) -> Result<DirtyBitmap, VmOpError> {
        let map = &self.map;
        // The linear bitmap `keep` is shown is the answer too; made here only if it was not.
        let mut shown = None;
        let d = self
            .vm
            .borrow_mut()
            .dirty_pages_keeping(|d| {
                let linear = map.linear(d);
                let kept = map.regional(&keep(&linear), d);
                shown = Some(linear);
                Some(kept)
            })
            .map_err(backend("read the dirty log"))?;
        Ok(shown.unwrap_or_else(|| map.linear(&d)))
    }

    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.vm
            .borrow_mut()
            .stop_dirty_log()
            .map_err(backend("stop the dirty log"))
    }

    fn pause(&mut self) -> Result<(), VmOpError> {
        self.vm.borrow_mut().pause().map_err(backend("pause"))
    }

    fn resume(&mut self) -> Result<(), VmOpError> {
        self.resumed_at = Some(self.vm.borrow_mut().resume());
        Ok(())
    }

    fn resumed_at(&self) -> Option<std::time::Instant> {
        self.resumed_at
    }

    fn pause_for_capture(&mut self) -> Result<(), VmOpError> {
        self.vm
            .borrow_mut()
            .pause_for_capture()
            .map_err(backend("pause"))
    }

    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        self.save_state_timed().map(|(state, _)| state)
    }

    fn save_state_timed(&mut self) -> Result<(VmState, SaveTimes), VmOpError> {
        let (snapshot, times) = self
            .vm
            .borrow_mut()
            .capture()
            .map_err(backend("capture the state"))?;
        let t = std::time::Instant::now();
        let state = encode_state(snapshot)?;
        Ok((
            state,
            SaveTimes {
                vcpus: times.vcpus,
                devices: times.kvm + times.devices + t.elapsed(),
            },
        ))
    }

    fn set_vcpus_running(&mut self, running: bool) -> Result<bool, VmOpError> {
        let vm = self.vm.borrow_mut();
        if running {
            vm.resume_vcpus();
        } else {
            vm.pause_vcpus().map_err(backend("stop the vCPUs"))?;
        }
        Ok(true)
    }

    fn restore_state(&mut self, _state: &VmState) -> Result<(), VmOpError> {
        Err(VmOpError::InvalidState {
            what: "restore state",
            reason: "this is the source".into(),
        })
    }

    fn disks(&mut self) -> Option<&mut dyn VmDisks> {
        match self.disks.as_mut() {
            Some(d) => Some(&mut **d),
            None => None,
        }
    }
}

// The owned form must be able to move onto ft's threads (checked at compile time).
const _: fn() = || {
    fn send<T: Send + 'static>() {}
    send::<PrimaryVm>();
};
