//! Serial console output (COM1) from ring 3: each line is formatted into a
//! buffer and written with one `rep outsb` (one ring-0 entry, see `sys`),
//! under a spinlock so that lines from different CPUs never interleave.
//!
//! There is no LSR polling: the VMM's 16550 takes every byte at once, and a
//! poll would cost a ring-0 entry per byte.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

const COM1: u16 = 0x3f8;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Collects a line; flushes to COM1 when full and at the end.
struct LineBuffer {
    buf: [u8; 256],
    len: usize,
}

impl LineBuffer {
    fn flush(&mut self) {
        sys::write_bytes(COM1, &self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

fn lock(max_spins: u64) {
    let mut spins = 0u64;
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err()
        && spins < max_spins
    {
        spins += 1;
        core::hint::spin_loop();
    }
}

fn emit(args: fmt::Arguments) {
    let mut line = LineBuffer { buf: [0; 256], len: 0 };
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
    LOCK.store(false, Ordering::Release);
}

/// Print one line (a newline is added).  Used through `say!`.
pub fn print_line(args: fmt::Arguments) {
    lock(u64::MAX);
    emit(args);
}

/// For the panic handler: take the lock if it frees up soon, else print anyway.
pub fn print_line_forced(args: fmt::Arguments) {
    lock(100_000_000);
    emit(args);
}

/// `say!("...", args)`: print one line on the serial console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::serial::print_line(format_args!($($arg)*)) };
}
