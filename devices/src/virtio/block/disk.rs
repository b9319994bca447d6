//! The raw image file behind a virtio-blk device. Every disk read, write and flush goes through
//! here, so that FT can later hold writes per epoch in one place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;

/// A raw disk image.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    readonly: bool,
    sectors: u64,
}

impl RawDisk {
    /// Opens `path`, read-only when `readonly`; a trailing partial sector is not exposed.
    pub fn open(path: &Path, readonly: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(RawDisk {
            file,
            readonly,
            sectors: meta.len() / SECTOR_SIZE,
        })
    }

    /// A second handle on the same image, for a worker thread.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(RawDisk {
            file: self.file.try_clone()?,
            readonly: self.readonly,
            sectors: self.sectors,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Fills `buf` from byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.write_all_at(buf, offset)
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }
}
