//! i8042 keyboard controller: only what guests use to reset the machine (command 0xFE).

use crate::bus::PioDevice;
use crate::{GuestEvent, GuestEventHandler};
use vm_superio::{I8042Device, Trigger};

/// Reports a reset request to the VMM.
pub struct ResetTrigger(GuestEventHandler);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)(GuestEvent::Reset);
        Ok(())
    }
}

/// The i8042 at ports 0x60 (data) and 0x64 (command/status); registered as two one-port devices
/// whose offsets are mapped to vm-superio's (0 and 4).
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
    offset: u8,
}

impl I8042 {
    /// The data port (0x60) half when `command_port` is false, else the command port (0x64) half.
    pub fn new(handler: GuestEventHandler, command_port: bool) -> Self {
        I8042 {
            inner: I8042Device::new(ResetTrigger(handler)),
            offset: if command_port { 4 } else { 0 },
        }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(self.offset);
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        if let Some(&b) = data.first() {
            let Ok(()) = self.inner.write(self.offset, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn command_fe_resets_and_nothing_else_does() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let h: GuestEventHandler = Arc::new(move |e| s.lock().unwrap().push(e));
        let mut data = I8042::new(h.clone(), false);
        let mut cmd = I8042::new(h, true);
        data.write(0, &[0xfe]);
        cmd.write(0, &[0xaa]);
        assert!(seen.lock().unwrap().is_empty());
        cmd.write(0, &[0xfe]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::Reset]);
    }
}
