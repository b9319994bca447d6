//! The running VM as the source of a migration (ft's `MigratableVm`).

use super::pages::PageMap;
use super::{backend, encode_state};
use crate::vm::Vm;
use ft::bitmap::DirtyBitmap;
use ft::frame::PAGE_SIZE;
use ft::vm::{MigratableVm, VmOpError, VmState};
use vm_memory::Bytes;

/// A VM being migrated away; the caller owns the VM and decides what becomes of it.
pub struct SourceVm<'a> {
    vm: &'a mut Vm,
    vcpus: u32,
    config_json: String,
    map: PageMap,
}

impl<'a> SourceVm<'a> {
    /// Wraps `vm`, whose config (sent to the destination) is `config_json`.
    pub fn new(vm: &'a mut Vm, vcpus: u8, config_json: String) -> Self {
        let map = PageMap::new(vm.memory());
        SourceVm {
            vm,
            vcpus: u32::from(vcpus),
            config_json,
            map,
        }
    }
}

impl MigratableVm for SourceVm<'_> {
    fn memory_size(&self) -> u64 {
        self.map.pages() * PAGE_SIZE as u64
    }

    fn vcpu_count(&self) -> u32 {
        self.vcpus
    }

    fn config_json(&self) -> String {
        self.config_json.clone()
    }

    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let gpa = self.map.gpa(pfn).ok_or(VmOpError::PageOutOfRange {
            pfn,
            pages: self.map.pages(),
        })?;
        self.vm
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
            .start_dirty_log()
            .map_err(backend("start the dirty log"))
    }

    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        let d = self
            .vm
            .dirty_pages()
            .map_err(backend("read the dirty log"))?;
        Ok(self.map.linear(&d))
    }

    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        self.vm
            .stop_dirty_log()
            .map_err(backend("stop the dirty log"))
    }

    fn pause(&mut self) -> Result<(), VmOpError> {
        self.vm.pause().map_err(backend("pause"))
    }

    fn resume(&mut self) -> Result<(), VmOpError> {
        self.vm.resume();
        Ok(())
    }

    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        let (snapshot, times) = self.vm.capture().map_err(backend("capture the state"))?;
        log::info!(
            "migration: state captured (vCPUs {:?}, KVM {:?}, devices {:?})",
            times.vcpus,
            times.kvm,
            times.devices
        );
        encode_state(snapshot)
    }

    fn restore_state(&mut self, _state: &VmState) -> Result<(), VmOpError> {
        Err(VmOpError::InvalidState {
            what: "restore state",
            reason: "this is the source".into(),
        })
    }
}
