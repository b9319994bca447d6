//! The counter's durable home: sector 0 of the first disk.
//!
//! Layout: "TNDMCNT1", the value (u64 LE), FNV-1a-64 of those 16 bytes
//! (u64 LE), zeros.  Anything else (a fresh zeroed disk, garbage, a torn
//! write) reads as 0, so a new disk needs no formatting.

use virtio_drivers::Error;

use crate::virtio::Disk;

const MAGIC: &[u8; 8] = b"TNDMCNT1";
const SECTOR: usize = 512;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(value: u64) -> [u8; SECTOR] {
    let mut sector = [0; SECTOR];
    sector[..8].copy_from_slice(MAGIC);
    sector[8..16].copy_from_slice(&value.to_le_bytes());
    let sum = fnv1a(&sector[..16]);
    sector[16..24].copy_from_slice(&sum.to_le_bytes());
    sector
}

fn decode(sector: &[u8; SECTOR]) -> Option<u64> {
    let sum = u64::from_le_bytes(sector[16..24].try_into().ok()?);
    (&sector[..8] == MAGIC && fnv1a(&sector[..16]) == sum)
        .then(|| u64::from_le_bytes(sector[8..16].try_into().unwrap_or_default()))
}

/// Where the value is kept: a disk, or (without one) nowhere.  The disk is
/// borrowed from the static device list: a driver must never be dropped
/// (see `virtio::Devices`).
pub enum Store {
    Disk(&'static mut Disk),
    ReadOnly,
    None,
}

impl Store {
    /// Open the store and read the value (0 when there is none yet).
    pub fn load(disk: Option<&'static mut Disk>) -> Result<(Store, u64), Error> {
        let Some(disk) = disk else {
            return Ok((Store::None, 0));
        };
        let mut sector = [0; SECTOR];
        disk.read_blocks(0, &mut sector)?;
        let value = decode(&sector).unwrap_or(0);
        Ok((
            if disk.readonly() {
                Store::ReadOnly
            } else {
                Store::Disk(disk)
            },
            value,
        ))
    }

    /// Whether INC may change the value (it must be able to persist it).
    pub fn writable(&self) -> bool {
        !matches!(self, Store::ReadOnly)
    }

    /// Write the value and flush it to stable storage.  The driver busy-waits
    /// for both (a write is one host pwrite, a flush one fdatasync): an INC
    /// is answered only after its value is durable anyway.
    pub fn save(&mut self, value: u64) -> Result<(), Error> {
        match self {
            Store::Disk(disk) => {
                disk.write_blocks(0, &encode(value))?;
                disk.flush()
            }
            Store::ReadOnly => Err(Error::Unsupported),
            Store::None => Ok(()),
        }
    }
}
