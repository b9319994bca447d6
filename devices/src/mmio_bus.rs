//! MMIO bus: routes a vCPU's MMIO exit to the device whose register window holds the address.

use crate::range_map::{RangeError, RangeMap};
use std::sync::{Arc, Mutex};

/// A device reached through guest-physical memory-mapped registers.
pub trait MmioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the start of the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the start of the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Registration errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioBusError {
    /// The new window overlaps a registered device's.
    #[error("MMIO window {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// The guest physical address asked for.
        base: u64,
        /// The window's length in bytes.
        len: u64,
    },
    /// The window is empty or runs past the end of the address space.
    #[error("MMIO window {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// The guest physical address asked for.
        base: u64,
        /// The window's length in bytes.
        len: u64,
    },
}

/// Immutable once the VM runs; shared by every vCPU thread.
#[derive(Default)]
pub struct MmioBus {
    ranges: RangeMap<Arc<Mutex<dyn MmioDevice>>>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `device` the addresses `base..base+len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), MmioBusError> {
        self.ranges.insert(base, len, device).map_err(|e| match e {
            RangeError::BadRange => MmioBusError::BadRange { base, len },
            RangeError::Overlap => MmioBusError::Overlap { base, len },
        })
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff, as unclaimed bus cycles
    /// float high) if no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.ranges.find(addr) {
            Some((dev, off)) => {
                // A poisoned lock means another vCPU thread panicked in the device; keep serving.
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.ranges.find(addr) {
            Some((dev, off)) => {
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(Vec<(u64, u8)>);
    impl MmioDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    fn rec() -> Arc<Mutex<Rec>> {
        Arc::new(Mutex::new(Rec(vec![])))
    }

    #[test]
    fn routes_by_address_and_rejects_overlap() {
        let mut bus = MmioBus::new();
        let a = rec();
        bus.insert(0xd000_0000, 0x1000, a.clone()).unwrap();
        bus.insert(0xd000_1000, 0x1000, rec()).unwrap();
        assert_eq!(
            bus.insert(0xd000_0800, 0x1000, rec()),
            Err(MmioBusError::Overlap {
                base: 0xd000_0800,
                len: 0x1000
            })
        );
        assert_eq!(
            bus.insert(u64::MAX - 4, 0x10, rec()),
            Err(MmioBusError::BadRange {
                base: u64::MAX - 4,
                len: 0x10
            })
        );
        assert!(matches!(
            bus.insert(0x1000, 0, rec()),
            Err(MmioBusError::BadRange { .. })
        ));
        let mut b = [0u8; 4];
        assert!(bus.read(0xd000_0070, &mut b));
        assert_eq!(b, [0x70; 4]);
        assert!(!bus.read(0xd000_2000, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.read(0xcfff_ffff, &mut b));
        assert!(bus.write(0xd000_0fff, &[9]));
        assert!(!bus.write(0xd000_2000, &[9]));
        assert_eq!(a.lock().unwrap().0, vec![(0xfff, 9)]);
    }
}
