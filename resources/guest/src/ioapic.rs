//! The IOAPIC at 0xFEC0_0000: everything is masked at boot; the network
//! workloads then route their virtio devices' pins (GSI n = pin n).

const BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;
const MASKED: u32 = 1 << 16;

fn write_reg(reg: u32, value: u32) {
    // SAFETY: IOAPIC index/data registers, identity-mapped uncached and
    // user-accessible; only the BSP touches them (at boot and when a
    // workload sets up its devices), so the index/data pair is not raced.
    unsafe {
        ((BASE + IOREGSEL) as *mut u32).write_volatile(reg);
        ((BASE + IOWIN) as *mut u32).write_volatile(value);
    }
}

fn read_reg(reg: u32) -> u32 {
    // SAFETY: as in `write_reg`.
    unsafe {
        ((BASE + IOREGSEL) as *mut u32).write_volatile(reg);
        ((BASE + IOWIN) as *const u32).read_volatile()
    }
}

pub fn mask_all() {
    for pin in 0..=max_pin() {
        write_reg(REG_REDIRECTION + 2 * pin, MASKED);
        write_reg(REG_REDIRECTION + 2 * pin + 1, 0);
    }
}

fn max_pin() -> u32 {
    ((read_reg(REG_VERSION) >> 16) & 0xff).min(239)
}

/// Deliver `pin` to `vector` on the CPU with LAPIC ID `apic_id`: fixed
/// delivery, physical destination, edge-triggered, active high (how the VMM
/// wires its virtio devices).  Returns false when the IOAPIC has no such pin.
pub fn route(pin: u32, vector: u8, apic_id: u8) -> bool {
    if pin > max_pin() {
        return false;
    }
    // High half (destination) first, so the entry is complete when unmasked.
    write_reg(REG_REDIRECTION + 2 * pin + 1, (apic_id as u32) << 24);
    write_reg(REG_REDIRECTION + 2 * pin, vector as u32);
    true
}
