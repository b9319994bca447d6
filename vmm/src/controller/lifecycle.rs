//! A standalone VM's life: create, boot, pause, resume, shut down, reboot. Each handler is only
//! called in a state that allows it (`Vmm::apply`), takes what that state holds, and returns
//! who holds the VM afterwards.

use super::owner::{Local, Owner, Stopped};
use super::{Step, Vmm, VmmError};
use crate::config::{host_memory_limit, VmConfig};
use crate::vm::Vm;

/// Stops a VM's vCPUs and devices and frees it; a failure is only logged (it is going away).
pub(super) fn stop_vm(mut vm: Vm) {
    if let Err(e) = vm.stop() {
        devices::guest_error!("stopping the VM: {}", errors::chain(&e));
    }
}

impl Vmm {
    /// `vm.create`: stores a config.
    pub(super) fn create(&mut self, cfg: VmConfig) -> Step {
        if let Err(e) = cfg.validate(host_memory_limit()) {
            return (Owner::Empty, Err(e.into()));
        }
        let mut config = cfg;
        config.fill_defaults();
        (
            Owner::Stopped(Stopped {
                config,
                booted: false,
            }),
            Ok(None),
        )
    }

    /// `vm.boot`: builds and starts the VM.
    pub(super) fn boot(&mut self, s: Stopped) -> Step {
        match self.build(&s.config) {
            Ok(vm) => (
                Owner::Local(Local {
                    config: s.config,
                    vm,
                    paused: false,
                    announce_on_resume: false,
                }),
                Ok(None),
            ),
            Err(e) => (Owner::Stopped(s), Err(e)),
        }
    }

    /// A new VM from `config`, running.
    pub(super) fn build(&mut self, config: &VmConfig) -> Result<Vm, VmmError> {
        let handlers = self.new_boot_handlers();
        let mut vm = Vm::new(config, handlers).map_err(VmmError::Boot)?;
        vm.start().map_err(VmmError::Boot)?;
        Ok(vm)
    }

    /// `vm.pause` on a running standalone VM.
    pub(super) fn pause(&mut self, mut l: Local) -> Step {
        if let Err(source) = l.vm.pause() {
            return (
                Owner::Local(l),
                Err(VmmError::Vm {
                    action: "pause",
                    source,
                }),
            );
        }
        l.paused = true;
        self.ft_status.set_guest_paused(true);
        (Owner::Local(l), Ok(None))
    }

    /// `vm.resume` on a paused standalone VM.
    pub(super) fn resume(&mut self, mut l: Local) -> Step {
        l.vm.resume();
        // Went live paused after a failover: the LAN still looks for it on the old host.
        if std::mem::take(&mut l.announce_on_resume) {
            l.vm.announce();
        }
        l.paused = false;
        self.ft_status.set_guest_paused(false);
        (Owner::Local(l), Ok(None))
    }

    /// `vm.shutdown` (or the guest's power-off): the VM goes, the config stays.
    pub(super) fn shut_down(&mut self, l: Local) -> Stopped {
        stop_vm(l.vm);
        self.forget_boot();
        Stopped {
            config: l.config,
            booted: true,
        }
    }

    /// `vm.reboot` (or the guest's reset): a fresh VM from the same config.
    pub(super) fn reboot(&mut self, l: Local) -> Step {
        let s = self.shut_down(l);
        self.boot(s)
    }

    /// Before the process exits: a pair member ends its pair on purpose, any VM here stops.
    pub(super) fn leave(&mut self, owner: Owner) -> Owner {
        match owner {
            Owner::Local(l) => Owner::Stopped(self.shut_down(l)),
            Owner::Primary(p) => self.ft_leave_primary(p),
            Owner::Backup(b) => self.ft_leave_backup(b),
            other => other,
        }
    }
}
