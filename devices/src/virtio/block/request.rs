//! One virtio-blk request: parse the header from the chain's readable stream, do the I/O against
//! the disk through a bounce buffer, and report a status byte at the end of the writable stream.

use super::disk::SECTOR_SIZE;
use super::io::DiskIo;
use crate::virtio::chain::{ChainBuffers, ChainError};
use crate::virtio::GuestMemoryMmap;
use errors::chain;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

/// Size of `struct virtio_blk_outhdr` (type, reserved, sector).
pub const HEADER_SIZE: u64 = 16;
/// Largest piece copied between the disk and guest memory at once; bounds the VMM's memory use
/// whatever length the guest asks for.
const CHUNK: usize = 128 << 10;
/// The disk ID GET_ID returns: up to 20 bytes, zero-padded.
pub type DiskId = [u8; VIRTIO_BLK_ID_BYTES as usize];

/// Why a request failed; each maps to the status the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain's readable bytes are fewer than the 16-byte request header.
    #[error("the request has no room for a {HEADER_SIZE}-byte header")]
    ShortHeader,
    /// The header's request type is not IN, OUT, FLUSH or GET_ID.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// A read or write length is not a whole number of 512-byte sectors.
    #[error("{len} bytes is not a whole number of sectors")]
    Unaligned {
        /// The data length in bytes.
        len: u64,
    },
    /// A read or write reaches past the last sector of the disk.
    #[error("sectors {sector}+{len} bytes lie past the end of the disk")]
    OutOfRange {
        /// The first sector of the request.
        sector: u64,
        /// The data length in bytes.
        len: u64,
    },
    /// The guest asked to write a disk opened read-only.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The request's buffers cannot be read or written in guest memory.
    #[error("guest buffers")]
    Chain(#[from] ChainError),
    /// Reading, writing or flushing the disk image failed.
    #[error("disk I/O")]
    Io(#[source] std::io::Error),
}

impl RequestError {
    /// The virtio-blk status byte for this failure.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What the device does with the chain afterwards.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Status byte written at the end of the writable stream.
    pub status: u8,
    /// Bytes written into the chain, status included (the used ring's length).
    pub used_len: u32,
}

/// Runs the request in `bufs`. `None` means there is no device-writable byte to report a status
/// in: the request is dropped (returned to the guest with length 0).
pub fn execute(
    disk: &dyn DiskIo,
    id: &DiskId,
    mem: &GuestMemoryMmap,
    bufs: &ChainBuffers,
    bounce: &mut Vec<u8>,
) -> Option<Completion> {
    let status_at = bufs.writable_len().checked_sub(1)?;
    let (status, written) = match run(disk, id, mem, bufs, status_at, bounce) {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(e) => {
            match &e {
                RequestError::Io(_) => crate::guest_warn!("virtio-blk: {}", chain(&e)),
                _ => crate::guest_debug!("virtio-blk: {}", chain(&e)),
            }
            (e.status(), 0)
        }
    };
    match bufs.write_at(mem, status_at, &[status]) {
        Ok(()) => Some(Completion {
            status,
            used_len: u32::try_from(written + 1).unwrap_or(u32::MAX),
        }),
        Err(e) => {
            crate::guest_debug!("virtio-blk: cannot write the status byte: {e}");
            None
        }
    }
}

/// Does the work; returns the data bytes written into the chain (status excluded).
fn run(
    disk: &dyn DiskIo,
    id: &DiskId,
    mem: &GuestMemoryMmap,
    bufs: &ChainBuffers,
    data_in_len: u64,
    bounce: &mut Vec<u8>,
) -> Result<u64, RequestError> {
    let data_out_len = bufs
        .readable_len()
        .checked_sub(HEADER_SIZE)
        .ok_or(RequestError::ShortHeader)?;
    let mut hdr = [0u8; HEADER_SIZE as usize];
    bufs.read_at(mem, 0, &mut hdr)?;
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    match kind {
        VIRTIO_BLK_T_IN => {
            let start = check_range(disk, sector, data_in_len)?;
            copy_chunks(data_in_len, bounce, |off, buf| {
                disk.read_at(buf, start + off).map_err(RequestError::Io)?;
                Ok(bufs.write_at(mem, off, buf)?)
            })?;
            Ok(data_in_len)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return Err(RequestError::ReadOnly);
            }
            let start = check_range(disk, sector, data_out_len)?;
            copy_chunks(data_out_len, bounce, |off, buf| {
                bufs.read_at(mem, HEADER_SIZE + off, buf)?;
                disk.write_at(buf, start + off).map_err(RequestError::Io)
            })?;
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.flush().map_err(RequestError::Io)?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data_in_len.min(id.len() as u64) as usize;
            bufs.write_at(mem, 0, &id[..n])?;
            Ok(n as u64)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Checks that `len` bytes from `sector` are whole sectors on the disk; returns the byte offset.
fn check_range(disk: &dyn DiskIo, sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned { len });
    }
    let end_sector = sector.checked_add(len / SECTOR_SIZE);
    match end_sector {
        Some(end) if end <= disk.sectors() => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange { sector, len }),
    }
}

/// Calls `f(offset, chunk)` over `0..len` in pieces of at most [`CHUNK`] bytes.
fn copy_chunks(
    len: u64,
    bounce: &mut Vec<u8>,
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        bounce.resize(n, 0);
        f(off, &mut bounce[..n])?;
        off += n as u64;
    }
    Ok(())
}
