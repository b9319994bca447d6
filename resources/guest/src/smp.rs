//! Starting the application processors (from ring 3 on the BSP).
//!
//! The BSP copies the trampoline (`asm/trampoline.s`) to 0x10000 with our
//! CR3 in it, publishes each AP's per-CPU block under its APIC ID, and sends
//! INIT, STARTUP, STARTUP.  The AP goes real → protected → long mode, finds
//! its block by its LAPIC ID (`ap_long_mode_entry`), gets its GDT/TSS and
//! irets to `ring3_ap_entry`, which calls `crate::ap_main(cpu)`.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::acpi::Cpus;
use crate::gdt::{cpu_block, user_stack_top};
use crate::{lapic, paging, sys, time};

pub const TRAMPOLINE_ADDR: u64 = 0x10000;
const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;

/// APIC ID → the AP's per-CPU block (0: not ours).  Read by ring 0 on the AP.
#[no_mangle]
pub static AP_BLOCK_BY_APIC_ID: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// CPUs that reached ring 3 (the BSP counts itself).
pub static ONLINE: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
    fn ring3_ap_entry();
}

fn install_trampoline() {
    // SAFETY: the three symbols delimit the trampoline bytes in our image;
    // 0x10000..0x1ffff is low memory the boot contract gives us for it.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
        assert!(len <= 0x1000);
        let dst = TRAMPOLINE_ADDR as *mut u8;
        core::ptr::copy_nonoverlapping(start, dst, len);
        let cr3_at = core::ptr::addr_of!(ap_trampoline_cr3) as usize - start as usize;
        dst.add(cr3_at).cast::<u32>().write_unaligned(paging::cr3());
    }
}

/// Start every AP in `cpus` (index i > 0 becomes CPU i); wait up to
/// `timeout_ms` for all of them to come online.  Returns how many are online.
pub fn start_aps(cpus: &Cpus, timeout_ms: u64) -> usize {
    if cpus.count == 1 {
        return ONLINE.load(Ordering::Acquire);
    }
    install_trampoline();
    for (cpu, &apic_id) in cpus.ids().iter().enumerate().skip(1) {
        let block = cpu_block(cpu);
        // SAFETY: the AP's block is unused until its SIPI; only we write it now.
        unsafe {
            core::ptr::write_bytes(block.cast::<u8>(), 0, 64);
            (*block).index = cpu as u64;
            (*block).user_entry = ring3_ap_entry as *const () as u64;
            (*block).user_stack = user_stack_top(cpu);
        }
        AP_BLOCK_BY_APIC_ID[apic_id as usize].store(block as u64, Ordering::Release);
    }
    // INIT all, then two STARTUPs each (the second is ignored by an AP that
    // already started, as the MP spec intends).
    for &apic_id in cpus.ids().iter().skip(1) {
        lapic::send_init(apic_id);
    }
    time::spin_us(10_000);
    for _ in 0..2 {
        for &apic_id in cpus.ids().iter().skip(1) {
            lapic::send_startup(apic_id, SIPI_VECTOR);
        }
        time::spin_us(200);
    }
    let deadline = time::rdtsc() + time::tsc_hz() * timeout_ms / 1000;
    while ONLINE.load(Ordering::Acquire) < cpus.count && time::rdtsc() < deadline {
        sys::idle_wait();
    }
    ONLINE.load(Ordering::Acquire)
}

core::arch::global_asm!(
    include_str!("asm/trampoline.s"),
    TRAMPOLINE_ADDR = const TRAMPOLINE_ADDR,
    options(att_syntax)
);
