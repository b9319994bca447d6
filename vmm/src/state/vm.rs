//! VM-wide KVM state: the in-kernel PIC pair and IOAPIC, the PIT, and the KVM clock.

use super::raw;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// VM-wide KVM state errors.
#[derive(Debug, thiserror::Error)]
pub enum KvmVmStateError {
    /// A KVM ioctl on the VM fd failed while capturing or restoring its state.
    #[error("cannot {what}")]
    Kvm {
        /// What the VMM was doing (`read the PIT`, `write the master PIC`, ...).
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmVmStateError {
    move |source| KvmVmStateError::Kvm { what, source }
}

/// Interrupt controllers, PIT and clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    /// The master 8259 PIC's state (`KVM_GET_IRQCHIP`, chip 0).
    #[serde(with = "raw")]
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC's state (`KVM_GET_IRQCHIP`, chip 1).
    #[serde(with = "raw")]
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC's state (`KVM_GET_IRQCHIP`, chip 2).
    #[serde(with = "raw")]
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT's channels (`KVM_GET_PIT2`).
    #[serde(with = "raw")]
    pub pit: kvm_pit_state2,
    /// The kvmclock value (`KVM_GET_CLOCK`).
    #[serde(with = "raw")]
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for KvmVmState {
    // kvm_irqchip is a union; its bytes say nothing readable.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("KvmVmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

fn chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, KvmVmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm_err(what))?;
    Ok(c)
}

/// Reads the VM-wide state; the vCPUs must be stopped so the clock and timers are consistent.
pub fn capture(vm: &VmFd) -> Result<KvmVmState, KvmVmStateError> {
    Ok(KvmVmState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER, "read the master PIC")?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE, "read the slave PIC")?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC, "read the IOAPIC")?,
        pit: vm.get_pit2().map_err(kvm_err("read the PIT"))?,
        clock: vm.get_clock().map_err(kvm_err("read the KVM clock"))?,
    })
}

/// Writes the interrupt controllers and the PIT (before the vCPUs are restored).
pub fn restore_irqchip(vm: &VmFd, s: &KvmVmState) -> Result<(), KvmVmStateError> {
    // The chip ids are ours to choose, not the file's.
    let mut master = s.pic_master;
    master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    let mut slave = s.pic_slave;
    slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    let mut ioapic = s.ioapic;
    ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    vm.set_irqchip(&master)
        .map_err(kvm_err("write the master PIC"))?;
    vm.set_irqchip(&slave)
        .map_err(kvm_err("write the slave PIC"))?;
    vm.set_irqchip(&ioapic)
        .map_err(kvm_err("write the IOAPIC"))?;
    vm.set_pit2(&s.pit).map_err(kvm_err("write the PIT"))
}

/// Sets the KVM clock (after the vCPUs, whose TSCs it is computed from). The guest's clock
/// continues from the capture: time paused is not seen, as in Cloud Hypervisor.
pub fn restore_clock(vm: &VmFd, s: &KvmVmState) -> Result<(), KvmVmStateError> {
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        // TSC_STABLE and friends are KVM's to report, not ours to set.
        flags: 0,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm_err("write the KVM clock"))
}
