//! The local APIC (xAPIC MMIO at 0xFEE0_0000), driven from ring 3: the page
//! tables map it user-accessible, so only EOI in the timer handler is ring 0.

use crate::idt::{VEC_SPURIOUS, VEC_TIMER};

const BASE: u64 = 0xfee0_0000;
const ID: u64 = 0x20;
const TPR: u64 = 0x80;
const SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const LVT_LINT0: u64 = 0x350;
const LVT_ERROR: u64 = 0x370;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0x3;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x4500; // INIT, level assert
const ICR_STARTUP: u32 = 0x4600; // STARTUP, level assert

/// KVM's LAPIC bus runs at 1 GHz unless CPUID 0x4000_0010 says otherwise.
pub const DEFAULT_BUS_KHZ: u32 = 1_000_000;

fn read(reg: u64) -> u32 {
    // SAFETY: a LAPIC register, identity-mapped uncached and user-accessible.
    unsafe { ((BASE + reg) as *const u32).read_volatile() }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`; each caller writes a value the register defines.
    unsafe { ((BASE + reg) as *mut u32).write_volatile(value) }
}

pub fn id() -> u8 {
    (read(ID) >> 24) as u8
}

/// Software-enable this CPU's LAPIC with everything but the timer masked.
pub fn enable() {
    write(TPR, 0);
    write(LVT_LINT0, LVT_MASKED); // the 8259 is masked too; no ExtINT
    write(LVT_ERROR, LVT_MASKED);
    write(SVR, SVR_ENABLE | VEC_SPURIOUS as u32);
}

/// Periodic timer at `hz`: the tick wakes idle CPUs and nothing else.
pub fn start_timer(bus_khz: u32, hz: u32) {
    let count = (bus_khz as u64 * 1000 / 16 / hz as u64).clamp(1, u32::MAX as u64) as u32;
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, VEC_TIMER as u32 | LVT_TIMER_PERIODIC);
    write(TIMER_INITIAL, count);
}

fn send_ipi(apic_id: u8, command: u32) {
    write(ICR_HIGH, (apic_id as u32) << 24);
    write(ICR_LOW, command);
    // Delivery is immediate under KVM; the bounded wait is for real xAPICs.
    for _ in 0..1000 {
        if read(ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

pub fn send_init(apic_id: u8) {
    send_ipi(apic_id, ICR_INIT);
}

/// STARTUP IPI: the AP starts in real mode at `vector` * 4096.
pub fn send_startup(apic_id: u8, vector: u8) {
    send_ipi(apic_id, ICR_STARTUP | vector as u32);
}
