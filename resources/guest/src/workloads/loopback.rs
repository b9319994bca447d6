//! Loopback: bytes through COM1's loopback mode and back, checked one by one.
//! Each byte is one port write and one port read, so a pause very often
//! finds vCPU 0 between a port access's exit and the KVM_RUN that completes
//! it.  A VMM that saves state there restores a guest that reads the byte
//! again (the FIFO is empty by then) or writes it twice: the check sees both.

use crate::{say, sys};

const COM1: u16 = 0x3f8;
/// Modem control register; bit 4 loops the transmitter into the receiver.
const MCR: u16 = COM1 + 4;
const MCR_LOOP: u8 = 0x10;
/// Bytes per line printed (the console is silent in loopback mode).
const BATCH: u64 = 2000;

pub fn run() -> ! {
    let mut sent = 0u64;
    let mut wrong = 0u64;
    loop {
        // SAFETY: COM1's MCR, THR and RBR; in loopback mode a byte written
        // to THR is what the next read of RBR returns, and nothing leaves.
        unsafe { sys::outb(MCR, MCR_LOOP) };
        for _ in 0..BATCH {
            let byte = sent as u8;
            // SAFETY: as above.
            let back = unsafe {
                sys::outb(COM1, byte);
                sys::inb(COM1)
            };
            if back != byte {
                wrong += 1;
            }
            sent += 1;
        }
        // SAFETY: as above; the console prints again.
        unsafe { sys::outb(MCR, 0) };
        say!("tandem-guest: loopback {} bytes, {} wrong", sent, wrong);
    }
}
