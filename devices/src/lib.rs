//! Guest-visible devices: the port I/O bus, 16550 serial, i8042 and the ACPI power-management block.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod serial;

use std::sync::Arc;

/// Something the guest asked of the machine as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// Reset (reboot) the machine.
    Reset,
    /// Power the machine off.
    PowerOff,
}

/// Where devices report [`GuestEvent`]s; the VMM turns them into lifecycle actions.
pub type GuestEventHandler = Arc<dyn Fn(GuestEvent) + Send + Sync>;
