//! Port I/O bus: routes a vCPU's IN/OUT exit to the device that owns the port.

use crate::range_map::{RangeError, RangeMap};
use std::sync::{Arc, Mutex};

/// A device reached through x86 I/O ports.
pub trait PioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Registration errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new device's ports overlap a registered device's.
    #[error("ports {base:#x}+{len} overlap an existing device")]
    Overlap {
        /// The first port asked for.
        base: u16,
        /// How many ports were asked for.
        len: u16,
    },
    /// The port range is empty or runs past port 0xffff.
    #[error("ports {base:#x}+{len} is an empty or wrapping range")]
    BadRange {
        /// The first port asked for.
        base: u16,
        /// How many ports were asked for.
        len: u16,
    },
}

/// Immutable once the VM runs; shared by every vCPU thread.
#[derive(Default)]
pub struct PioBus {
    ranges: RangeMap<Arc<Mutex<dyn PioDevice>>>,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `device` the ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        if u32::from(base) + u32::from(len) > 0x1_0000 {
            return Err(BusError::BadRange { base, len });
        }
        self.ranges
            .insert(u64::from(base), u64::from(len), device)
            .map_err(|e| match e {
                RangeError::BadRange => BusError::BadRange { base, len },
                RangeError::Overlap => BusError::Overlap { base, len },
            })
    }

    fn find(&self, port: u16) -> Option<(&Arc<Mutex<dyn PioDevice>>, u16)> {
        let (d, off) = self.ranges.find(u64::from(port))?;
        // Offsets within a port range always fit in 16 bits.
        Some((d, off as u16))
    }

    /// Dispatches an IN; returns false (and fills `data` with 0xff, as an empty ISA bus reads) if
    /// no device owns `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
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

    /// Dispatches an OUT; returns false if no device owns `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
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

    struct Rec(Vec<(u16, u8)>);
    impl PioDevice for Rec {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routes_by_port_and_rejects_overlap() {
        let mut bus = PioBus::new();
        let a = Arc::new(Mutex::new(Rec(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Rec(vec![]))))
            .unwrap();
        assert_eq!(
            bus.insert(0x3fc, 8, Arc::new(Mutex::new(Rec(vec![])))),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(0xfff0, 0x20, Arc::new(Mutex::new(Rec(vec![])))),
            Err(BusError::BadRange {
                base: 0xfff0,
                len: 0x20
            })
        );
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3ff, &[9]));
        assert!(!bus.write(0x61, &[9]));
        assert_eq!(a.lock().unwrap().0, vec![(7, 9)]);
    }
}
