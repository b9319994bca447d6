//! Power off and reboot through the VMM's devices.

use crate::sys::outb;
use crate::{say, time, workloads::idle};

/// ACPI hardware-reduced sleep control register: SLP_TYP=5, SLP_EN.
const SLEEP_CONTROL: u16 = 0x600;
const SLEEP_S5: u8 = (5 << 2) | (1 << 5);
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// ACPI reset register, the fallback if the i8042 does not reset us.
const ACPI_RESET: u16 = 0x602;

pub fn power_off() -> ! {
    say!("tandem-guest: poweroff");
    // SAFETY: port 0x600 is the VMM's sleep control register; this ends the VM.
    unsafe { outb(SLEEP_CONTROL, SLEEP_S5) };
    time::spin_us(1_000_000);
    say!("tandem-guest: error: poweroff did not stop the VM");
    idle::run()
}

pub fn reboot() -> ! {
    say!("tandem-guest: reboot");
    // SAFETY: the i8042 reset command resets the VM.
    unsafe { outb(I8042_COMMAND, I8042_RESET) };
    time::spin_us(1_000_000);
    // SAFETY: the ACPI reset register resets the VM.
    unsafe { outb(ACPI_RESET, 1) };
    time::spin_us(1_000_000);
    say!("tandem-guest: error: reboot did not reset the VM");
    idle::run()
}
