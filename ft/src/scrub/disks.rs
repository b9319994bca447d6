//! How the scrub reaches the VMM's replicated disks: the primary reads its images while the guest
//! is paused, the backup reads its own and writes repairs. Kept apart from the initial sync's disk
//! copy so that either can change alone; the VMM's hooks hand it out (`EpochHooks::scrub_disks`,
//! `BackupHooks::scrub_disks`), and shared disks are not listed (the backup owns no copy).

use crate::vm::VmOpError;

/// One replicated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubDisk {
    /// Its index among the VM's virtio devices, the same on both hosts.
    pub index: u32,
    /// Bytes (a whole number of 512-byte sectors).
    pub size: u64,
    /// The VMM's id for it, for messages.
    pub name: String,
}

/// The replicated disks of one side of a pair.
pub trait ScrubDisks: Send + Sync {
    /// The disks, in index order.
    fn list(&self) -> Vec<ScrubDisk>;
    /// Fills `buf` from byte `offset` of disk `index`.
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError>;
    /// Backup: writes a repair at byte `offset` of disk `index` and makes it durable. The
    /// default refuses (a primary never writes through the scrub).
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        let _ = (index, offset, data);
        Err(VmOpError::InvalidState {
            what: "write a scrub repair",
            reason: "these disks take no repairs".into(),
        })
    }
}
