//! GSI routing as on a PC with an IOAPIC: ISA IRQs reach the 8259s and the IOAPIC, except that the
//! PIT's IRQ0 is wired to IOAPIC pin 2 (the MADT's interrupt source override says so). KVM's
//! default table maps IRQ0 to pin 0, which would leave a guest that trusts the MADT without timer.

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::VmFd;

/// IOAPIC pins (KVM's in-kernel IOAPIC has 24).
const IOAPIC_PINS: u32 = 24;

fn entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

/// The routing entries: GSI 0..15 to the PICs (but GSI 2, the cascade), every GSI to its IOAPIC pin,
/// except GSI 0 which goes to pin 2.
pub fn pc_routing_entries() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..16 {
        if gsi == 2 {
            continue;
        }
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        v.push(entry(gsi, chip, pin));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => v.push(entry(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => v.push(entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    v
}

/// Installs [`pc_routing_entries`] into the VM's in-kernel irqchip.
pub fn setup_pc_routing(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let entries = pc_routing_entries();
    let routing =
        KvmIrqRouting::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    vm.set_gsi_routing(&routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pit_goes_to_ioapic_pin_2_and_nothing_else_does() {
        let e = pc_routing_entries();
        // SAFETY: every entry was built as an irqchip route, so the irqchip union member is live.
        let routes: Vec<(u32, u32, u32)> = e
            .iter()
            .map(|r| unsafe { (r.gsi, r.u.irqchip.irqchip, r.u.irqchip.pin) })
            .collect();
        assert!(routes.contains(&(0, KVM_IRQCHIP_IOAPIC, 2)));
        assert!(routes.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(!routes.iter().any(|&(g, _, _)| g == 2));
        assert!(routes.contains(&(4, KVM_IRQCHIP_IOAPIC, 4)));
        assert!(routes.contains(&(12, KVM_IRQCHIP_PIC_SLAVE, 4)));
        assert!(routes.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
    }
}
