//! Whole-VM state capture and restore, shared by snapshot/restore, live migration and FT
//! checkpoints: vCPUs ([`vcpu`]), VM-wide KVM state ([`vm`]), devices, guest memory and its dirty
//! pages ([`memory`]), and the versioned, checksummed encoding ([`format`]).
//!
//! Capture needs a paused VM ([`crate::vm::Vm::pause`] parks the vCPUs and quiesces the device
//! workers), so nothing writes guest memory or device state meanwhile.

pub mod format;
mod legacy;
pub mod memory;
pub mod raw;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
pub mod words;

use devices::serial::SerialSnapshot;
use devices::virtio::mmio::state::MmioSnapshot;
use serde::{Deserialize, Serialize};

/// Every device's state, in bus order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1, when the VM has one (serial mode not `Off`). The i8042 and ACPI PM are stateless.
    pub serial: Option<SerialSnapshot>,
    /// virtio-mmio transports: disks, then NICs, as in the config.
    pub virtio: Vec<MmioSnapshot>,
}

/// The VM's whole state except guest memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// Guest RAM size in bytes, checked against the memory file and the config at restore.
    pub memory_size: u64,
    /// Each vCPU's state, sorted by vCPU index.
    pub vcpus: Vec<vcpu::VcpuState>,
    /// The VM-wide KVM state: PICs, IOAPIC, PIT, clock.
    pub kvm: vm::KvmVmState,
    /// The devices' state: the serial port and the virtio transports.
    pub devices: DevicesState,
}

/// How long each part of a capture took, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureTimes {
    /// Time to collect every vCPU's state from its thread.
    pub vcpus: std::time::Duration,
    /// Time to read the VM-wide KVM state.
    pub kvm: std::time::Duration,
    /// Time to capture the devices' state.
    pub devices: std::time::Duration,
}
