//! Compute: an integer loop on every CPU, reporting iterations per second.

use crate::{say, time};

/// Iterations between clock checks: enough that RDTSC is noise in the rate.
const BATCH: u64 = 65_536;

pub fn run(cpu: usize) -> ! {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ cpu as u64;
    let mut iterations = 0u64;
    let mut since = time::rdtsc();
    loop {
        for _ in 0..BATCH {
            // One LCG step (Knuth's MMIX constants).
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // An empty asm makes `x` opaque, so LLVM cannot fold 64 steps
            // into one (it composes affine maps); it emits no instruction.
            // SAFETY: the asm is empty.
            unsafe { core::arch::asm!("/* {x} */", x = inout(reg) x, options(nomem, nostack, preserves_flags)) };
        }
        x = core::hint::black_box(x);
        iterations += BATCH;
        let now = time::rdtsc();
        if now - since >= time::tsc_hz() {
            say!("tandem-guest: compute {} iter/s cpu={}", time::per_second(iterations, now - since), cpu);
            iterations = 0;
            since = now;
        }
    }
}
