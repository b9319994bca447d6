//! Idle: HLT until the next interrupt, forever.

use crate::sys;

pub fn run() -> ! {
    loop {
        sys::idle_wait();
    }
}
