//! What a virtio-blk request runs against: the raw image, or the image behind an FT gate.

use super::disk::RawDisk;
use std::io;
use std::os::fd::RawFd;

/// The disk operations a request needs.
pub trait DiskIo: Send + Sync {
    /// Capacity in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Whether writes are refused.
    fn readonly(&self) -> bool;
    /// Fills `buf` from byte `offset`, as the guest sees the disk.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Completes a guest FLUSH.
    fn flush(&self) -> io::Result<()>;
    /// Whether the disk takes another request now (an FT gate may be full: backpressure).
    fn has_room(&self) -> bool {
        true
    }
    /// An eventfd that becomes readable when a full disk has room again.
    fn room_fd(&self) -> Option<RawFd> {
        None
    }
}

impl DiskIo for RawDisk {
    fn sectors(&self) -> u64 {
        RawDisk::sectors(self)
    }
    fn readonly(&self) -> bool {
        RawDisk::readonly(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        RawDisk::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        RawDisk::write_at(self, buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        RawDisk::flush(self)
    }
}
