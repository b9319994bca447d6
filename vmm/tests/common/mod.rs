//! What the VM-level tests share: a real VM running the built-in guest.

use std::sync::Arc;
use vmm::config::VmConfig;
use vmm::vm::handlers::VmHandlers;
use vmm::vm::Vm;

/// Starts a 1-vCPU VM running the built-in guest with `cmdline` (`workload=...`); a vCPU that
/// stops on an error fails the test.
pub fn running_builtin(cmdline: &str) -> Vm {
    vmm::vm::vcpu::install_kick_handler().unwrap();
    let mut cfg = VmConfig::default();
    cfg.payload.cmdline = Some(cmdline.into());
    cfg.validate(u64::MAX).unwrap();
    cfg.fill_defaults();
    let handlers = VmHandlers {
        guest_events: Arc::new(|_| {}),
        on_failure: Arc::new(|id, e| panic!("vCPU {id}: {e}")),
        activate: Arc::new(|a| a.run()),
    };
    let mut vm = Vm::new(&cfg, handlers).unwrap();
    vm.start().unwrap();
    vm
}
