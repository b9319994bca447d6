//! How FT reaches the devices: [`VirtioDevice::enable_ft`] puts a device's output behind a gate
//! on the VM's epoch clock and hands the gate back for the releaser and checkpoint engine.

use super::block::gate::{DiskGate, DiskMode, DEFAULT_DISK_CAP_BYTES};
use super::net::gate::{TxGate, DEFAULT_TX_CAP_BYTES};
use ft::gate::{EpochClock, OutputGate};
use std::sync::Arc;

/// What every device of a VM needs to put its output behind a gate.
#[derive(Clone, Debug)]
pub struct FtSetup {
    /// The VM's epoch clock.
    pub clock: Arc<EpochClock>,
    /// How the pair shares the disks.
    pub disk_mode: DiskMode,
    /// Bound on held TX bytes per NIC.
    pub net_cap_bytes: usize,
    /// Bound on logged write bytes per disk.
    pub disk_cap_bytes: usize,
}

impl FtSetup {
    /// Default caps on `clock`.
    pub fn new(clock: Arc<EpochClock>, disk_mode: DiskMode) -> Self {
        FtSetup {
            clock,
            disk_mode,
            net_cap_bytes: DEFAULT_TX_CAP_BYTES,
            disk_cap_bytes: DEFAULT_DISK_CAP_BYTES,
        }
    }
}

/// A device's gate, by kind.
#[derive(Clone)]
pub enum DeviceGate {
    /// A NIC's TX gate.
    Net(Arc<TxGate>),
    /// A disk's write gate; the checkpoint engine takes its epoch writes.
    Disk(Arc<DiskGate>),
}

impl DeviceGate {
    /// The gate as the releaser drives it.
    pub fn output_gate(&self) -> Arc<dyn OutputGate> {
        match self {
            DeviceGate::Net(g) => g.clone(),
            DeviceGate::Disk(g) => g.clone(),
        }
    }
}
