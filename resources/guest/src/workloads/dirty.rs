//! Dirty: keep rewriting a working set of free RAM, one 8-byte word per
//! 4 KiB page, at a paced rate — the load a checkpointing VMM must keep up with.
//! A rate of 0 is unpaced: every CPU rewrites its slice as fast as it can and
//! never halts, so the rate it prints is the guest work a pause or a throttle
//! takes away (a paced rate hides it until the VMM falls 100 ms behind).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{bootparams, entry, say, sys, time};

const PAGE: u64 = 4096;

/// The working set, set by `prepare` (BSP) before the APs are released.
static BASE: AtomicU64 = AtomicU64::new(0);
static PAGES_PER_CPU: AtomicU64 = AtomicU64::new(0);

extern "C" {
    /// End of our image, `.bss` included (linker script).
    static __image_end: u8;
}

/// The largest e820 RAM range above our image and inside the identity map.
fn free_ram() -> (u64, u64) {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let mapped = entry::ring0_info().mapped_bytes;
    bootparams::get()
        .e820()
        .iter()
        .filter(|e| e.is_ram())
        .map(|e| {
            let start = e.addr.max(image_end).next_multiple_of(PAGE);
            let end = (e.addr + e.size).min(mapped) & !(PAGE - 1);
            (start, end.saturating_sub(start))
        })
        .max_by_key(|&(_, len)| len)
        .unwrap_or((0, 0))
}

pub fn prepare(mib: u64, cpus: usize) {
    let (base, len) = free_ram();
    let mut bytes = mib.saturating_mul(1 << 20);
    if bytes > len {
        say!("tandem-guest: dirty: {} MiB asked, clamped to {} MiB of free RAM", mib, len >> 20);
        bytes = len;
    }
    BASE.store(base, Ordering::Relaxed);
    PAGES_PER_CPU.store(bytes / PAGE / cpus as u64, Ordering::Relaxed);
}

pub fn run(cpu: usize, cpus: usize, pages_per_s: u64) -> ! {
    let pages = PAGES_PER_CPU.load(Ordering::Relaxed);
    let slice = BASE.load(Ordering::Relaxed) + cpu as u64 * pages * PAGE;
    if pages_per_s == 0 {
        unpaced(cpu, slice, pages);
    }
    // This CPU's share of the rate; the remainder goes to the first CPUs.
    let rate = pages_per_s / cpus as u64 + u64::from((cpu as u64) < pages_per_s % cpus as u64);
    let hz = time::tsc_hz();
    // Allow at most 100 ms of backlog (e.g. after the VM was paused).
    let max_backlog = rate / 10 + 1;

    let start = time::rdtsc();
    let mut written = 0u64; // pages written since `start`, as the pacing counts them
    let mut next = 0u64; // next page of the slice
    let mut stamp = 0u64; // value written, so every write changes the page
    let mut window_start = start;
    let mut window_pages = 0u64;
    loop {
        let now = time::rdtsc();
        let due = ((now - start) as u128 * rate as u128 / hz as u128) as u64;
        if due > written + max_backlog {
            written = due - max_backlog;
        }
        if pages > 0 {
            while written < due {
                stamp += 1;
                // SAFETY: the page lies in this CPU's slice of free RAM, which
                // nothing else in the guest uses.
                unsafe { ((slice + next * PAGE) as *mut u64).write_volatile(stamp) };
                next = if next + 1 == pages { 0 } else { next + 1 };
                written += 1;
                window_pages += 1;
            }
        }
        if now - window_start >= hz {
            say!("tandem-guest: dirty {} pages/s cpu={}", time::per_second(window_pages, now - window_start), cpu);
            window_start = now;
            window_pages = 0;
        }
        // Bursts ride the 100 Hz tick: write what is due, then sleep.
        sys::idle_wait();
    }
}

/// Pages written between clock checks: RDTSC stays noise in the loop.
const UNPACED_BATCH: u64 = 1024;

/// Rewrites `pages` pages from `slice` as fast as this CPU can, forever.
fn unpaced(cpu: usize, slice: u64, pages: u64) -> ! {
    let hz = time::tsc_hz();
    let mut next = 0u64;
    let mut stamp = 0u64;
    let mut window_start = time::rdtsc();
    let mut window_pages = 0u64;
    loop {
        if pages > 0 {
            for _ in 0..UNPACED_BATCH {
                stamp += 1;
                // SAFETY: the page lies in this CPU's slice of free RAM, which
                // nothing else in the guest uses.
                unsafe { ((slice + next * PAGE) as *mut u64).write_volatile(stamp) };
                next = if next + 1 == pages { 0 } else { next + 1 };
            }
            window_pages += UNPACED_BATCH;
        } else {
            sys::idle_wait();
        }
        let now = time::rdtsc();
        if now - window_start >= hz {
            say!("tandem-guest: dirty {} pages/s cpu={}", time::per_second(window_pages, now - window_start), cpu);
            window_start = now;
            window_pages = 0;
        }
    }
}
