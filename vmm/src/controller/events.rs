//! The VMM thread's inbox: everything it reacts to, one at a time.

use crate::api::{ApiRequest, ApiResponse};
use crate::config::VmConfig;
use crate::ft::pair::PairReport;
use crate::vm::Vm;
use std::sync::mpsc::Sender;

/// Everything the VMM thread reacts to.
#[derive(Debug)]
pub enum VmmEvent {
    /// An API call and where to send its answer.
    Api(ApiRequest, Sender<ApiResponse>),
    /// The guest of boot `boot_id` asked for a reset (i8042, ACPI reset register, triple fault).
    GuestReset {
        /// The VM build it came from; an event of a VM already torn down is ignored.
        boot_id: u64,
    },
    /// The guest of boot `boot_id` powered itself off (ACPI S5).
    GuestPowerOff {
        /// The VM build it came from; an event of a VM already torn down is ignored.
        boot_id: u64,
    },
    /// A vCPU thread of boot `boot_id` stopped on an error it could not handle.
    VcpuFailed {
        /// The VM build it came from; an event of a VM already torn down is ignored.
        boot_id: u64,
        /// The vCPU's index.
        id: u8,
        /// Why it stopped.
        error: String,
    },
    /// An outgoing migration ended; on success the VM now lives on the destination.
    MigrationSent {
        /// The VM the migration thread took, handed back for the VMM thread to keep or stop.
        vm: Vm,
        /// The migration's report, or why it failed.
        result: Result<ft::migration::SendReport, ft::migration::MigrationError>,
    },
    /// An incoming migration ended; on success the VM runs here.
    MigrationReceived {
        /// The arrived config and the built VM, or why the migration failed.
        result: Result<(Box<VmConfig>, Vm), super::migration::ReceiveError>,
    },
    /// A pair member's thread ended on its own.
    Pair(PairReport),
    /// A guest driver set DRIVER_OK: start the device here, not on the vCPU thread.
    ActivateDevice(crate::vm::virtio::DeviceActivation),
}
