//! Time from the TSC (RDTSC works in ring 3).  Its rate comes from CPUID
//! 0x4000_0010 when the VMM provides it, else from the PIT.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{inb, outb};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Where the TSC rate came from, for the log.
pub enum TscSource {
    Cpuid,
    Pit,
}

/// Set the TSC rate: `cpuid_khz` if non-zero, else a 25 ms PIT measurement.
pub fn init(cpuid_khz: u32) -> TscSource {
    let (hz, source) = if cpuid_khz != 0 {
        (cpuid_khz as u64 * 1000, TscSource::Cpuid)
    } else {
        (calibrate_with_pit(25), TscSource::Pit)
    };
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    source
}

/// Count TSC ticks while PIT channel 0 (1.193182 MHz) counts down `ms`.
/// Channel 0 needs no gate (port 0x61, which KVM may not emulate in-kernel);
/// its IRQ 0 goes nowhere, as the PIC and IOAPIC are masked.  Each port
/// access is a trip through ring 0 (~tens of µs), small against 25 ms.
fn calibrate_with_pit(ms: u64) -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    let target = PIT_HZ * ms / 1000;
    // SAFETY: ports 0x40/0x43 program PIT channel 0, which nothing else in
    // the guest uses.
    let read_count = || unsafe {
        outb(0x43, 0x00); // latch channel 0
        let low = inb(0x40);
        let high = inb(0x40);
        u16::from_le_bytes([low, high]) as u64
    };
    // SAFETY: as above.
    unsafe {
        outb(0x43, 0x30); // channel 0, lo/hi byte, mode 0, binary
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let first = read_count();
    let start = rdtsc();
    for _ in 0..100_000 {
        let count = read_count();
        let now = rdtsc();
        if first >= count && first - count >= target {
            return ((now - start) as u128 * PIT_HZ as u128 / (first - count) as u128) as u64;
        }
    }
    1_000_000_000 // the PIT does not count: guess 1 GHz
}

/// Busy-wait `us` microseconds (boot-time IPI gaps only).
pub fn spin_us(us: u64) {
    let end = rdtsc() + tsc_hz() * us / 1_000_000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// The per-second rate of `count` events that took `ticks` TSC ticks.
pub fn per_second(count: u64, ticks: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    ((count as u128 * tsc_hz() as u128) / ticks as u128) as u64
}
