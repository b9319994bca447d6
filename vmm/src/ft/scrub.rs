//! The replica scrub's view of each side's replicated disks (`ft::scrub::ScrubDisks`): the
//! primary reads its images through their disk gates while the guest is paused, the backup reads
//! its own images and writes the repairs the primary sends. Shared disks are not listed: the
//! backup owns no copy of them.
//!
//! A disk's index is its gate's (`DiskGate::index`: its position among the VM's virtio
//! devices, the same on both sides), as in the disk gates' write log and the initial disk copy.

use super::hooks::{BackupDiskHooks, PrimaryHooks};
use devices::virtio::block::disk::SECTOR_SIZE;
use devices::virtio::block::gate::DiskMode;
use devices::virtio::block::io::DiskIo;
use ft::gate::OutputGate;
use ft::scrub::{ScrubDisk, ScrubDisks};
use ft::vm::VmOpError;

fn backend(what: &'static str) -> impl FnOnce(std::io::Error) -> VmOpError {
    move |e| VmOpError::Backend {
        what,
        source: Box::new(e),
    }
}

fn unknown(index: u32) -> VmOpError {
    VmOpError::InvalidState {
        what: "scrub a disk",
        reason: format!("no replicated disk {index}"),
    }
}

impl ScrubDisks for PrimaryHooks {
    fn list(&self) -> Vec<ScrubDisk> {
        self.disks
            .iter()
            .filter(|g| g.mode() == DiskMode::Replicated)
            .map(|g| ScrubDisk {
                index: g.index(),
                size: DiskIo::sectors(&**g) * SECTOR_SIZE,
                name: OutputGate::name(&**g)
                    .trim_end_matches(" disk gate")
                    .to_string(),
            })
            .collect()
    }

    /// A replicated gate reads its image directly: while the guest is paused, that is the
    /// checkpoint's disk.
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        let g = self
            .disks
            .iter()
            .find(|g| g.index() == index && g.mode() == DiskMode::Replicated)
            .ok_or_else(|| unknown(index))?;
        DiskIo::read_at(&**g, buf, offset).map_err(backend("read a disk image for the scrub"))
    }
}

impl BackupDiskHooks {
    fn replica(&self, index: u32) -> Result<&devices::virtio::block::disk::RawDisk, VmOpError> {
        if self.mode != DiskMode::Replicated {
            return Err(unknown(index));
        }
        self.disks
            .iter()
            .find(|d| d.index == index)
            .map(|d| &d.disk)
            .ok_or_else(|| unknown(index))
    }
}

impl ScrubDisks for BackupDiskHooks {
    fn list(&self) -> Vec<ScrubDisk> {
        if self.mode != DiskMode::Replicated {
            return Vec::new();
        }
        self.disks
            .iter()
            .map(|d| ScrubDisk {
                index: d.index,
                size: d.disk.sectors() * SECTOR_SIZE,
                name: String::new(),
            })
            .collect()
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        self.replica(index)?
            .read_at(buf, offset)
            .map_err(backend("read the replica's disk image for the scrub"))
    }

    /// Written and synced at once: a repair is rare, and the copy must hold it at failover.
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        let d = self.replica(index)?;
        d.write_at(data, offset)
            .and_then(|()| d.flush())
            .map_err(backend(
                "write a scrub repair into the replica's disk image",
            ))
    }
}
