//! COM1: vm-superio's 16550 with its interrupt on an eventfd (wired to an irqfd by the VMM) and its
//! output to any writer. Guest input is not wired yet.

use crate::bus::PioDevice;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial IRQ by writing the eventfd KVM watches as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Bytes the guest wrote and bytes lost to a failing output.
#[derive(Default, Debug)]
pub struct SerialCounters {
    /// Bytes the guest wrote to the transmit register.
    pub tx_bytes: AtomicU64,
    /// Bytes the guest wrote that the output failed to take (dropped).
    pub tx_lost_bytes: AtomicU64,
}

impl SerialEvents for SerialCounters {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.tx_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.tx_lost_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

/// The serial port as a [`PioDevice`].
pub struct SerialDevice {
    inner: Serial<IrqTrigger, Arc<SerialCounters>, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A serial port raising `irq` and writing the guest's bytes to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>, counters: Arc<SerialCounters>) -> Self {
        SerialDevice {
            inner: Serial::with_events(IrqTrigger(irq), counters, out),
        }
    }
}

/// The 16550's registers and receive FIFO, as saved in a VM snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte (DLL; offset 0 with DLAB set).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM; offset 1 with DLAB set).
    pub baud_divisor_high: u8,
    /// Interrupt enable register (IER).
    pub interrupt_enable: u8,
    /// Interrupt identification register (IIR).
    pub interrupt_identification: u8,
    /// Line control register (LCR; bit 7 is DLAB).
    pub line_control: u8,
    /// Line status register (LSR).
    pub line_status: u8,
    /// Modem control register (MCR; bit 4 is loopback).
    pub modem_control: u8,
    /// Modem status register (MSR).
    pub modem_status: u8,
    /// Scratch register (SCR).
    pub scratch: u8,
    /// Bytes received but not yet read by the guest, oldest first (at most 64).
    pub in_buffer: Vec<u8>,
}

/// A saved serial state the 16550 cannot take (its FIFO holds at most 64 bytes).
#[derive(Debug, thiserror::Error)]
#[error("saved serial receive FIFO holds {0} bytes, more than the 16550's 64")]
pub struct SerialRestoreError(usize);

impl SerialDevice {
    /// The device's registers, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A serial port that continues from `state`, raising `irq` and writing to `out`.
    pub fn from_state(
        state: &SerialSnapshot,
        irq: EventFd,
        out: Box<dyn Write + Send>,
        counters: Arc<SerialCounters>,
    ) -> Result<Self, SerialRestoreError> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let inner = Serial::from_state(&s, IrqTrigger(irq), counters, out)
            .map_err(|_| SerialRestoreError(state.in_buffer.len()))?;
        Ok(SerialDevice { inner })
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.inner.write(off, b) {
                crate::guest_warn!("serial write at offset {off}: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_the_writer_and_are_counted() {
        let out = Shared::default();
        let counters = Arc::new(SerialCounters::default());
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Box::new(out.clone()), counters.clone());
        for &b in b"hi\n" {
            s.write(0, &[b]);
        }
        // LSR says the transmitter is empty, so drivers that poll it go on writing.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert_eq!(counters.tx_bytes.load(Ordering::Relaxed), 3);
        // Out-of-range offsets and empty accesses are ignored, not a panic.
        s.write(0x100, &[1]);
        s.write(0, &[]);
        s.read(0, &mut []);
    }
}
