//! The IOAPIC at 0xFEC0_0000: nothing routes through it yet, so mask it all.

const BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;
const MASKED: u32 = 1 << 16;

fn write_reg(reg: u32, value: u32) {
    // SAFETY: IOAPIC index/data registers, identity-mapped uncached and
    // user-accessible; only the BSP touches them, once, during boot.
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
    let max_entry = ((read_reg(REG_VERSION) >> 16) & 0xff).min(239);
    for pin in 0..=max_entry {
        write_reg(REG_REDIRECTION + 2 * pin, MASKED);
        write_reg(REG_REDIRECTION + 2 * pin + 1, 0);
    }
}
