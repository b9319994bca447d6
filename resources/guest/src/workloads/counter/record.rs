//! The counter's durable home: sector 0 of every disk.
//!
//! Every writable disk gets the value, and all are flushed, before an INC is
//! answered; at start the value comes from the first disk (in command-line
//! order) that holds a valid record, a written one if any has a record.  A
//! read-only disk is read but never written; when all disks are read-only,
//! INC is refused.
//!
//! Layout: "TNDMCNT1", the value (u64 LE), FNV-1a-64 of those 16 bytes
//! (u64 LE), zeros.  Anything else (a fresh zeroed disk, garbage, a torn
//! write) reads as 0, so a new disk needs no formatting.

use virtio_drivers::Error;

use crate::virtio::{Disk, MAX_DISKS};

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

/// A disk and what it held at start.
struct Slot {
    disk: &'static mut Disk,
    writable: bool,
    record: Option<u64>,
}

/// Where the value is kept: the disks (borrowed from the static device list:
/// a driver must never be dropped, see `virtio::Devices`), or — without
/// any — nowhere.
pub struct Store {
    slots: [Option<Slot>; MAX_DISKS],
    count: usize,
}

/// What `Store::load` found.
pub struct Loaded {
    pub value: u64,
    /// The disk the value came from (None: no disk holds a record, so 0).
    pub from: Option<usize>,
}

impl Store {
    /// Open the store on `disks` (in command-line order) and read the value:
    /// the first written disk's record, else the first read-only disk's,
    /// else 0.  Err: the disk that could not be read.
    pub fn load(
        disks: impl Iterator<Item = &'static mut Disk>,
    ) -> Result<(Store, Loaded), (usize, Error)> {
        let mut store = Store {
            slots: [const { None }; MAX_DISKS],
            count: 0,
        };
        for (i, disk) in disks.take(MAX_DISKS).enumerate() {
            let mut sector = [0; SECTOR];
            disk.read_blocks(0, &mut sector).map_err(|e| (i, e))?;
            store.slots[i] = Some(Slot {
                record: decode(&sector),
                writable: !disk.readonly(),
                disk,
            });
            store.count = i + 1;
        }
        // A read-only disk never sees an INC, so its record is as old as the
        // disk: it counts only when no written disk has one (else a restart
        // would hand out values again).
        let first = |written: bool| {
            store.slots.iter().enumerate().find_map(|(i, s)| {
                let s = s.as_ref().filter(|s| s.writable || !written)?;
                Some(Loaded {
                    value: s.record?,
                    from: Some(i),
                })
            })
        };
        let loaded = first(true).or_else(|| first(false)).unwrap_or(Loaded {
            value: 0,
            from: None,
        });
        Ok((store, loaded))
    }

    /// How many disks there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The disks the value is written to.
    pub fn written(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.writable).count()
    }

    /// The read-only disks (never written).
    pub fn read_only(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| !s.writable).map(|_| i))
    }

    /// The disks whose record at start was not `value` (stale, or none):
    /// (index, record, writable).
    pub fn stale(&self, value: u64) -> impl Iterator<Item = (usize, Option<u64>, bool)> + '_ {
        self.slots.iter().enumerate().filter_map(move |(i, s)| {
            s.as_ref()
                .filter(|s| s.record != Some(value))
                .map(|s| (i, s.record, s.writable))
        })
    }

    /// Whether INC may change the value (it must be able to persist it):
    /// there is no disk, or at least one writable disk.
    pub fn writable(&self) -> bool {
        self.count == 0 || self.written() > 0
    }

    /// Write the value to every writable disk and then flush them all to
    /// stable storage.  The driver busy-waits for each (a write is one host
    /// pwrite, a flush one fdatasync): an INC is answered only after its
    /// value is durable anyway.  Err: the disk that failed.
    pub fn save(&mut self, value: u64) -> Result<(), (usize, Error)> {
        if !self.writable() {
            return Err((0, Error::Unsupported));
        }
        let sector = encode(value);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(s) = slot.as_mut().filter(|s| s.writable) {
                s.disk.write_blocks(0, &sector).map_err(|e| (i, e))?;
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(s) = slot.as_mut().filter(|s| s.writable) {
                s.disk.flush().map_err(|e| (i, e))?;
            }
        }
        Ok(())
    }
}

/// Bytes of one block a `WRITE` fills (the unit FT replicates disks in).
pub const FILL_BLOCK: usize = 4096;
const FILL_SECTORS: u64 = (FILL_BLOCK / SECTOR) as u64;

impl Store {
    /// `WRITE`: fill 4 KiB blocks `first..first + count` of every writable
    /// disk with a pattern made of `seed` and the block number, then flush
    /// them all.  Block 0 holds the counter's record and is refused, as is a
    /// range past the end of any written disk.  Err: the disk that failed
    /// (`Error::InvalidParam` for a range it does not have).
    pub fn fill(&mut self, first: u64, count: u64, seed: u64) -> Result<(), (usize, Error)> {
        let end = first.checked_add(count).ok_or((0, Error::InvalidParam))?;
        if first == 0 || count == 0 || self.written() == 0 {
            return Err((0, Error::InvalidParam));
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot.as_ref().filter(|s| s.writable) {
                if end * FILL_SECTORS > s.disk.capacity() {
                    return Err((i, Error::InvalidParam));
                }
            }
        }
        let mut block = [0u8; FILL_BLOCK];
        for b in first..end {
            for (w, word) in block.chunks_exact_mut(8).enumerate() {
                let v = seed ^ (b << 20) ^ w as u64;
                word.copy_from_slice(&v.to_le_bytes());
            }
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if let Some(s) = slot.as_mut().filter(|s| s.writable) {
                    s.disk
                        .write_blocks((b * FILL_SECTORS) as usize, &block)
                        .map_err(|e| (i, e))?;
                }
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(s) = slot.as_mut().filter(|s| s.writable) {
                s.disk.flush().map_err(|e| (i, e))?;
            }
        }
        Ok(())
    }
}
