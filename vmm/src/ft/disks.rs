//! The replicated disks an FT initial sync copies (`ft::disk`), on each side of a pair: the
//! primary's images behind their disk gates, which track the guest's writes while the copy runs
//! ([`GateDisks`]), and the backup's own images, written as the copy arrives ([`ReplicaDisks`]).

use devices::virtio::block::disk::RawDisk;
use devices::virtio::block::gate::DiskGate;
use ft::bitmap::DirtyBitmap;
use ft::disk::{DiskInfo, VmDisks};
use ft::vm::VmOpError;
use std::sync::Arc;

fn backend(what: &'static str) -> impl FnOnce(std::io::Error) -> VmOpError {
    move |e| VmOpError::Backend {
        what,
        source: Box::new(e),
    }
}

fn unknown(index: u32) -> VmOpError {
    VmOpError::InvalidState {
        what: "use a disk",
        reason: format!("no replicated disk {index}"),
    }
}

/// One of the primary's disks: its gate (tracking) and a handle of its own on the image.
struct Source {
    gate: Arc<DiskGate>,
    image: RawDisk,
}

/// The primary's replicated disks, read for the copy while the guest runs.
pub struct GateDisks {
    disks: Vec<Source>,
}

impl GateDisks {
    /// Over the gates of the VM's replicated disks.
    pub fn new(gates: &[Arc<DiskGate>]) -> std::io::Result<GateDisks> {
        let disks = gates
            .iter()
            .map(|g| {
                Ok(Source {
                    gate: g.clone(),
                    image: g.image()?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(GateDisks { disks })
    }

    fn get(&self, index: u32) -> Result<&Source, VmOpError> {
        self.disks
            .iter()
            .find(|d| d.gate.index() == index)
            .ok_or_else(|| unknown(index))
    }
}

impl VmDisks for GateDisks {
    fn list(&self) -> Vec<DiskInfo> {
        self.disks
            .iter()
            .map(|d| DiskInfo {
                index: d.gate.index(),
                size: d.gate.size_bytes(),
            })
            .collect()
    }

    fn start_tracking(&mut self) -> Result<(), VmOpError> {
        for d in &self.disks {
            d.gate.start_tracking();
        }
        Ok(())
    }

    fn take_dirty(&mut self, index: u32) -> Result<DirtyBitmap, VmOpError> {
        Ok(self.get(index)?.gate.take_dirty())
    }

    fn stop_tracking(&mut self) {
        for d in &self.disks {
            d.gate.stop_tracking();
        }
    }

    fn next_data(&mut self, index: u32, offset: u64) -> Result<Option<(u64, u64)>, VmOpError> {
        let d = self
            .disks
            .iter_mut()
            .find(|d| d.gate.index() == index)
            .ok_or_else(|| unknown(index))?;
        d.image
            .next_data(offset)
            .map_err(backend("find the data in a disk image"))
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        self.get(index)?
            .image
            .read_at(buf, offset)
            .map_err(backend("read a disk image"))
    }
}

/// One of the backup's disks.
pub struct ReplicaDisk {
    /// Index among the VM's virtio devices.
    pub index: u32,
    /// The disk's id in the VM config, for messages.
    pub name: String,
    /// Its image on this host.
    pub image: RawDisk,
}

/// The backup's replicated disks, written as the copy arrives.
pub struct ReplicaDisks {
    disks: Vec<ReplicaDisk>,
}

impl ReplicaDisks {
    /// Over this host's images.
    pub fn new(disks: Vec<ReplicaDisk>) -> Self {
        ReplicaDisks { disks }
    }

    fn get(&self, index: u32) -> Result<&ReplicaDisk, VmOpError> {
        self.disks
            .iter()
            .find(|d| d.index == index)
            .ok_or_else(|| unknown(index))
    }
}

impl VmDisks for ReplicaDisks {
    fn list(&self) -> Vec<DiskInfo> {
        self.disks
            .iter()
            .map(|d| DiskInfo {
                index: d.index,
                size: d.image.sectors() * devices::virtio::block::disk::SECTOR_SIZE,
            })
            .collect()
    }

    fn name(&self, index: u32) -> String {
        self.get(index).map_or_else(
            |_| format!("disk {index}"),
            |d| format!("disk {:?}", d.name),
        )
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        self.get(index)?
            .image
            .write_at(data, offset)
            .map_err(backend("write the replica's disk image"))
    }

    fn zero(&mut self, index: u32, offset: u64, len: u64) -> Result<(), VmOpError> {
        self.disks
            .iter_mut()
            .find(|d| d.index == index)
            .ok_or_else(|| unknown(index))?
            .image
            .zero_range(offset, len)
            .map_err(backend("zero a range of the replica's disk image"))
    }

    fn flush(&mut self) -> Result<(), VmOpError> {
        for d in &self.disks {
            d.image
                .flush()
                .map_err(backend("sync the replica's disk image"))?;
        }
        Ok(())
    }
}
