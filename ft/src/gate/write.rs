//! The disk write record checkpoints carry: enough to re-issue the write on another host.

/// One guest write, as logged by a disk gate and applied by the backup.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskWrite {
    /// The disk's index in the VM config (the same on both hosts of a pair).
    pub disk: u32,
    /// Byte offset on the disk, a multiple of 512.
    pub offset: u64,
    /// The bytes written, a multiple of 512.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for DiskWrite {
    // The data can be megabytes; logs want its size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWrite")
            .field("disk", &self.disk)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}
