//! Guest-visible devices: the port I/O and MMIO buses, 16550 serial, i8042, the ACPI
//! power-management block, and virtio-mmio block and network devices.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod mmio_bus;
pub mod range_map;
pub mod ratelimit;
pub mod serial;
pub mod virtio;

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
