//! Ring 3's privileged instructions: HLT (plain, or conditional on the device
//! interrupt count) and port I/O.
//!
//! Ring 3 simply executes them.  With IOPL=3 port I/O would run natively,
//! but under PVM guest ring 3 cannot do port I/O, and HLT is privileged
//! anyway, so they raise #GP and the ring-0 #GP handler emulates them
//! (`gp_handler` in `asm/interrupts.s`).  Each costs a ring transition plus a
//! few emulated instructions (tens of µs): keep them rare — serial output goes
//! a line at a time with one `rep outsb`.

use core::arch::asm;

/// Sleep until the next interrupt (the 100 Hz LAPIC tick at the latest), so
/// an idle CPU costs its vCPU thread nothing.
#[inline]
pub fn idle_wait() {
    // SAFETY: HLT (emulated as `sti; hlt` by ring 0) only waits.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// The device interrupts taken so far; pass it to `wait_for_device_irq`.
pub fn device_irqs() -> u64 {
    crate::idt::DEVICE_IRQS.load(core::sync::atomic::Ordering::Acquire)
}

/// Sleep until the next interrupt, unless a device interrupt arrived since
/// `device_irqs()` returned `seen`.  An interrupt that lands between ring 3's
/// last look at its devices and a plain HLT would leave the CPU asleep until
/// the next tick (10 ms); here ring 0 compares the count with interrupts off
/// and sleeps only if it is unchanged (`ds hlt` in `asm/interrupts.s`).
#[inline]
pub fn wait_for_device_irq(seen: u64) {
    // SAFETY: `ds hlt` (HLT with a no-op prefix) traps to ring 0, which reads
    // RAX and at most waits; it changes no register or memory of ours.
    unsafe { asm!(".byte 0x3e, 0xf4", in("rax") seen, options(nostack, preserves_flags)) };
}

/// Stop this CPU's work for good (it still wakes briefly on each tick).
pub fn halt_cpu() -> ! {
    loop {
        idle_wait();
    }
}

/// Write `bytes` to the port `port` byte by byte (one ring-0 entry in all).
pub fn write_bytes(port: u16, bytes: &[u8]) {
    // SAFETY: `rep outsb` reads `bytes` and writes them to `port`; callers
    // pass a port that takes data bytes (COM1).  DF is clear (ABI).
    unsafe {
        asm!("rep outsb", in("dx") port, inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _, options(nostack, readonly, preserves_flags));
    }
}

/// # Safety
/// Port writes reach devices: the caller must know what the port does.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: per the function contract.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// # Safety
/// Port reads can have device side effects: the caller must know the port.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: per the function contract.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}
