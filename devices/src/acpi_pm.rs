//! Hardware-reduced ACPI power management block: sleep control (+0), sleep status (+1) and reset
//! (+2) registers, as the FADT advertises them. Writing S5 to sleep control powers off.

use crate::bus::PioDevice;
use crate::{GuestEvent, GuestEventHandler};

/// SLP_EN bit of the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// The ACPI PM block.
pub struct AcpiPm {
    handler: GuestEventHandler,
    s5_slp_typ: u8,
    reset_value: u8,
}

impl AcpiPm {
    /// `s5_slp_typ` and `reset_value` must match what the ACPI tables advertise.
    pub fn new(handler: GuestEventHandler, s5_slp_typ: u8, reset_value: u8) -> Self {
        AcpiPm {
            handler,
            s5_slp_typ,
            reset_value,
        }
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Sleep status reads "not waking"; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 if v & SLP_EN != 0 && (v >> 2) & 7 == self.s5_slp_typ => {
                (self.handler)(GuestEvent::PowerOff)
            }
            2 if v == self.reset_value => (self.handler)(GuestEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let mut pm = AcpiPm::new(Arc::new(move |e| s.lock().unwrap().push(e)), 5, 1);
        pm.write(0, &[5 << 2]); // no SLP_EN
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        pm.write(2, &[2]);
        pm.write(1, &[]);
        assert!(seen.lock().unwrap().is_empty());
        pm.write(0, &[(5 << 2) | SLP_EN]);
        pm.write(2, &[1]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![GuestEvent::PowerOff, GuestEvent::Reset]
        );
    }
}
