//! A VM being received: bare guest memory while pages stream in, a whole VM once the state has
//! arrived (ft's `MigratableVm`, destination side).

use super::pages::PageMap;
use super::{backend, decode_state};
use crate::config::VmConfig;
use crate::vm::handlers::VmHandlers;
use crate::vm::memory::{create_guest_memory, GuestMemoryMmap};
use crate::vm::Vm;
use ft::bitmap::DirtyBitmap;
use ft::frame::PAGE_SIZE;
use ft::vm::{MigratableVm, VmOpError, VmState};
use vm_memory::Bytes;

/// The destination's VM under construction.
pub struct IncomingVm {
    config: VmConfig,
    /// Guest RAM until the state arrives; then it belongs to `vm`.
    memory: Option<GuestMemoryMmap>,
    map: PageMap,
    vm: Option<Vm>,
    handlers: VmHandlers,
}

fn not_now(what: &'static str, reason: &str) -> VmOpError {
    VmOpError::InvalidState {
        what,
        reason: reason.into(),
    }
}

impl IncomingVm {
    /// Zeroed guest memory for `config`; the VM itself is built when the state arrives.
    pub fn new(
        config: VmConfig,
        handlers: VmHandlers,
    ) -> Result<Self, crate::vm::memory::MemoryError> {
        let memory = create_guest_memory(config.memory.size)?;
        let map = PageMap::new(&memory);
        Ok(IncomingVm {
            config,
            memory: Some(memory),
            map,
            vm: None,
            handlers,
        })
    }

    /// A handle on guest RAM while it is received (the same mapping), until the VM is built.
    pub fn guest_memory(&self) -> Option<GuestMemoryMmap> {
        self.memory.clone()
    }

    /// The VM once received and resumed.
    pub fn into_vm(self) -> Option<Vm> {
        self.vm
    }
}

impl MigratableVm for IncomingVm {
    fn memory_size(&self) -> u64 {
        self.map.pages() * PAGE_SIZE as u64
    }

    fn vcpu_count(&self) -> u32 {
        u32::from(self.config.cpus.boot_vcpus)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_default()
    }

    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.map.ranges()
    }

    fn read_page(&self, pfn: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let gpa = self.map.gpa(pfn).ok_or(VmOpError::PageOutOfRange {
            pfn,
            pages: self.map.pages(),
        })?;
        let mem = match (&self.memory, &self.vm) {
            (Some(m), _) => m,
            (None, Some(vm)) => vm.memory(),
            (None, None) => return Err(not_now("read a page", "no memory")),
        };
        mem.read_slice(buf, gpa)
            .map_err(backend("read a guest page"))
    }

    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), VmOpError> {
        let gpa = self.map.gpa(pfn).ok_or(VmOpError::PageOutOfRange {
            pfn,
            pages: self.map.pages(),
        })?;
        let mem = self
            .memory
            .as_ref()
            .ok_or_else(|| not_now("write a page", "the state has already been restored"))?;
        mem.write_slice(data, gpa)
            .map_err(backend("write a guest page"))
    }

    fn start_dirty_log(&mut self) -> Result<(), VmOpError> {
        Err(not_now("log dirty pages", "this is the destination"))
    }

    fn take_dirty_pages(&mut self) -> Result<DirtyBitmap, VmOpError> {
        Err(not_now("log dirty pages", "this is the destination"))
    }

    fn stop_dirty_log(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }

    fn pause(&mut self) -> Result<(), VmOpError> {
        match &self.vm {
            Some(vm) => vm.pause().map_err(backend("pause")),
            None => Ok(()),
        }
    }

    fn resume(&mut self) -> Result<(), VmOpError> {
        let vm = self
            .vm
            .as_mut()
            .ok_or_else(|| not_now("resume", "no state has been restored"))?;
        vm.resume();
        // Tell the LAN where the guest now lives.
        vm.announce();
        Ok(())
    }

    fn save_state(&mut self) -> Result<VmState, VmOpError> {
        Err(not_now("save state", "this is the destination"))
    }

    fn restore_state(&mut self, state: &VmState) -> Result<(), VmOpError> {
        let snapshot = decode_state(state)?;
        let memory = self
            .memory
            .take()
            .ok_or_else(|| not_now("restore state", "the state has already been restored"))?;
        let vm = Vm::restore_with_memory(&self.config, &snapshot, memory, self.handlers.clone())
            .map_err(|e| VmOpError::StateRejected {
                reason: errors::chain(&e),
            })?;
        self.vm = Some(vm);
        Ok(())
    }
}
