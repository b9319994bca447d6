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

    /// The next range `[start, end)` at or after `offset` that may hold data, from the file's
    /// holes (`SEEK_DATA`/`SEEK_HOLE`); `None` when only holes follow. A file system that keeps
    /// no holes reports one range up to the end. Moves the shared file offset, which nothing
    /// here uses (every read and write is positioned).
    pub fn next_data(&mut self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        use vmm_sys_util::seek_hole::SeekHole;
        let Some(start) = self.file.seek_data(offset)? else {
            return Ok(None);
        };
        let end = self
            .file
            .seek_hole(start)?
            .unwrap_or(self.sectors * SECTOR_SIZE);
        Ok(Some((start, end.max(start))))
    }

    /// Makes bytes `offset..offset + len` read as zeros, touching only what holds data: holes
    /// stay holes (nothing allocated), data ranges are zeroed in place by the file system
    /// (`FALLOC_FL_ZERO_RANGE`, no new space), or where it cannot, punched out, or else
    /// overwritten with zeros.
    pub fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            let Some((start, stop)) = self.next_data(at)? else {
                break;
            };
            if start >= end {
                break;
            }
            let (from, to) = (start.max(at), stop.min(end));
            if to > from {
                self.zero_data(from, to - from)?;
            }
            at = stop.max(at + 1);
        }
        Ok(())
    }

    fn zero_data(&self, offset: u64, len: u64) -> io::Result<()> {
        use vmm_sys_util::fallocate::{fallocate, FallocateMode};
        // Punching is slower on some file systems (ext4 waits on its journal) but frees space:
        // only the fallback.
        for mode in [FallocateMode::ZeroRange, FallocateMode::PunchHole] {
            if fallocate(&self.file, mode, true, offset, len).is_ok() {
                return Ok(());
            }
        }
        let zeros = vec![0u8; len.min(1 << 16) as usize];
        let mut at = offset;
        let end = offset.saturating_add(len);
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }
}
