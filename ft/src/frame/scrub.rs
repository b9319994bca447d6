//! The replica scrub's two frames (`crate::scrub`): the primary's `ScrubDigest` (type 17) names
//! regions of checkpoint N's state with their hashes, and carries whole copies of regions an
//! earlier digest found different (repairs); the backup's `ScrubResult` (type 18) says which
//! regions of its copy differ after it applied N and the repairs.
//!
//! Wire form (little-endian):
//!
//! ```text
//! region  := kind u8 | a u32 | b u64 | c u32                        (17 bytes)
//!            1 memory:  a = 0,          b = first page, c = pages (≥ 1)
//!            2 disk:    a = disk index, b = byte offset, c = bytes (≥ 1)
//!            3 devices: a = b = c = 0
//!            4 vCPU:    a = vCPU index, b = c = 0
//! digest  := pass u64 | n u32 | n × (region | hash u64)
//!            | m u32 | m × (region | len u32 | len bytes)     memory: pages × 4096, disk: c
//! result  := pass u64 | outcome u8 (0 compared, 1 stale) | backup epoch u64 | checked u32
//!            | bytes u64 | repaired u32 | k u32 | k × region
//! ```
//!
//! Every count is checked against the bytes present before anything is allocated for it, and
//! fields a kind does not use must be zero, so that a decoded frame re-encodes to its own bytes.

use super::pages::PAGE_SIZE;
use super::wire::{WireError, WireReader};

/// Encoded length of a region.
pub const REGION_LEN: usize = 17;
/// Most entries (or repairs, or mismatches) one scrub frame may carry.
pub const MAX_SCRUB_ENTRIES: usize = 1 << 16;
/// Most pages one memory region may span (16 MiB).
pub const MAX_REGION_PAGES: u32 = 4096;
/// Most bytes one disk region may span (16 MiB).
pub const MAX_REGION_BYTES: u32 = 16 << 20;

const KIND_MEMORY: u8 = 1;
const KIND_DISK: u8 = 2;
const KIND_DEVICES: u8 = 3;
const KIND_VCPU: u8 = 4;

const OUTCOME_COMPARED: u8 = 0;
const OUTCOME_STALE: u8 = 1;

/// A part of the replicated state the scrub compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScrubRegion {
    /// Guest pages `first_pfn..first_pfn + pages` (linear page numbers, as on the stream).
    Memory {
        /// First page.
        first_pfn: u64,
        /// Pages, at least 1.
        pages: u32,
    },
    /// Bytes `offset..offset + len` of replicated disk `index` (its virtio device position).
    Disk {
        /// Disk index.
        index: u32,
        /// First byte.
        offset: u64,
        /// Bytes, at least 1.
        len: u32,
    },
    /// The device and platform state blob of the checkpoint.
    Devices,
    /// The state blob of vCPU `index`.
    Vcpu {
        /// vCPU index.
        index: u32,
    },
}

impl ScrubRegion {
    /// Bytes of replicated state the region covers (a state blob counts as 0 here: its size is
    /// the VMM's business).
    pub fn bytes(&self) -> u64 {
        match *self {
            ScrubRegion::Memory { pages, .. } => u64::from(pages) * PAGE_SIZE as u64,
            ScrubRegion::Disk { len, .. } => u64::from(len),
            ScrubRegion::Devices | ScrubRegion::Vcpu { .. } => 0,
        }
    }

    /// The region's kind as metrics and `ft.status` name it: `memory`, `disk` or `device`.
    pub fn kind(&self) -> &'static str {
        match self {
            ScrubRegion::Memory { .. } => "memory",
            ScrubRegion::Disk { .. } => "disk",
            ScrubRegion::Devices | ScrubRegion::Vcpu { .. } => "device",
        }
    }

    /// Bytes a repair of this region carries, `None` for the state blobs (every checkpoint
    /// sends them whole, so they heal without one).
    pub fn repair_len(&self) -> Option<usize> {
        match *self {
            ScrubRegion::Memory { pages, .. } => Some(pages as usize * PAGE_SIZE),
            ScrubRegion::Disk { len, .. } => Some(len as usize),
            ScrubRegion::Devices | ScrubRegion::Vcpu { .. } => None,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let (kind, a, b, c) = match *self {
            ScrubRegion::Memory { first_pfn, pages } => (KIND_MEMORY, 0, first_pfn, pages),
            ScrubRegion::Disk { index, offset, len } => (KIND_DISK, index, offset, len),
            ScrubRegion::Devices => (KIND_DEVICES, 0, 0, 0),
            ScrubRegion::Vcpu { index } => (KIND_VCPU, index, 0, 0),
        };
        out.push(kind);
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&c.to_le_bytes());
    }

    pub(crate) fn decode(r: &mut WireReader<'_>) -> Result<ScrubRegion, &'static str> {
        let kind = r.u8().map_err(short)?;
        let a = r.u32().map_err(short)?;
        let b = r.u64().map_err(short)?;
        let c = r.u32().map_err(short)?;
        Ok(match kind {
            KIND_MEMORY => {
                if a != 0 {
                    return Err("memory region with a disk index");
                }
                if c == 0 || c > MAX_REGION_PAGES {
                    return Err("memory region of 0 or too many pages");
                }
                if b.checked_add(u64::from(c)).is_none() {
                    return Err("memory region wraps around the page number space");
                }
                ScrubRegion::Memory {
                    first_pfn: b,
                    pages: c,
                }
            }
            KIND_DISK => {
                if c == 0 || c > MAX_REGION_BYTES {
                    return Err("disk region of 0 or too many bytes");
                }
                if b.checked_add(u64::from(c)).is_none() {
                    return Err("disk region wraps around");
                }
                ScrubRegion::Disk {
                    index: a,
                    offset: b,
                    len: c,
                }
            }
            KIND_DEVICES if a == 0 && b == 0 && c == 0 => ScrubRegion::Devices,
            KIND_VCPU if b == 0 && c == 0 => ScrubRegion::Vcpu { index: a },
            KIND_DEVICES | KIND_VCPU => return Err("state region with unused fields set"),
            _ => return Err("unknown scrub region kind"),
        })
    }
}

/// One region's hash in a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubEntry {
    /// The region.
    pub region: ScrubRegion,
    /// Its xxh3-64 hash at the digest's checkpoint.
    pub hash: u64,
}

/// A whole copy of a region that an earlier digest found different on the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubRepair {
    /// Memory or disk (state blobs need no repair).
    pub region: ScrubRegion,
    /// The region's bytes at the digest's checkpoint ([`ScrubRegion::repair_len`] of them).
    pub data: Vec<u8>,
}

/// The primary's hashes of checkpoint N (the frame's epoch), and repairs to write first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScrubDigest {
    /// The scrub pass this digest belongs to (0: the background scrub).
    pub pass: u64,
    /// Regions and their hashes.
    pub entries: Vec<ScrubEntry>,
    /// Regions to overwrite before hashing.
    pub repairs: Vec<ScrubRepair>,
}

/// Whether the backup compared a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubOutcome {
    /// Its copy held exactly the digest's checkpoint: the mismatches are real.
    Compared,
    /// Its copy held another checkpoint, so nothing was compared or repaired.
    Stale,
}

/// The backup's answer to one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubResult {
    /// The digest's pass.
    pub pass: u64,
    /// Compared or stale.
    pub outcome: ScrubOutcome,
    /// The backup's last committed checkpoint when it read the digest.
    pub backup_epoch: u64,
    /// Regions compared.
    pub checked: u32,
    /// Bytes of memory and disk compared.
    pub bytes: u64,
    /// Repairs written.
    pub repaired: u32,
    /// Regions whose hash differs from the primary's.
    pub mismatches: Vec<ScrubRegion>,
}

fn short(e: WireError) -> &'static str {
    match e {
        WireError::Short => "payload ends early",
        WireError::Trailing => "trailing bytes after payload",
    }
}

/// Reads a u32 count and checks that `count × min_len` bytes are present, so that a hostile
/// count cannot make the receiver allocate.
fn count(r: &mut WireReader<'_>, min_len: usize) -> Result<usize, &'static str> {
    let n = r.u32().map_err(short)? as usize;
    if n > MAX_SCRUB_ENTRIES {
        return Err("too many scrub entries");
    }
    if n.saturating_mul(min_len) > r.remaining() {
        return Err("payload ends early");
    }
    Ok(n)
}

impl ScrubDigest {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pass.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.region.encode(out);
            out.extend_from_slice(&e.hash.to_le_bytes());
        }
        out.extend_from_slice(&(self.repairs.len() as u32).to_le_bytes());
        for rep in &self.repairs {
            rep.region.encode(out);
            super::wire::put_len_prefixed(out, &rep.data);
        }
    }

    pub(crate) fn decode(r: &mut WireReader<'_>) -> Result<ScrubDigest, &'static str> {
        let pass = r.u64().map_err(short)?;
        let n = count(r, REGION_LEN + 8)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let region = ScrubRegion::decode(r)?;
            let hash = r.u64().map_err(short)?;
            entries.push(ScrubEntry { region, hash });
        }
        let m = count(r, REGION_LEN + 4)?;
        let mut repairs = Vec::with_capacity(m);
        for _ in 0..m {
            let region = ScrubRegion::decode(r)?;
            let want = region.repair_len().ok_or("repair of a state region")?;
            let data = r.len_prefixed().map_err(short)?;
            if data.len() != want {
                return Err("repair length differs from its region's");
            }
            repairs.push(ScrubRepair {
                region,
                data: data.to_vec(),
            });
        }
        Ok(ScrubDigest {
            pass,
            entries,
            repairs,
        })
    }
}

impl ScrubResult {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pass.to_le_bytes());
        out.push(match self.outcome {
            ScrubOutcome::Compared => OUTCOME_COMPARED,
            ScrubOutcome::Stale => OUTCOME_STALE,
        });
        out.extend_from_slice(&self.backup_epoch.to_le_bytes());
        out.extend_from_slice(&self.checked.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.repaired.to_le_bytes());
        out.extend_from_slice(&(self.mismatches.len() as u32).to_le_bytes());
        for m in &self.mismatches {
            m.encode(out);
        }
    }

    pub(crate) fn decode(r: &mut WireReader<'_>) -> Result<ScrubResult, &'static str> {
        let pass = r.u64().map_err(short)?;
        let outcome = match r.u8().map_err(short)? {
            OUTCOME_COMPARED => ScrubOutcome::Compared,
            OUTCOME_STALE => ScrubOutcome::Stale,
            _ => return Err("unknown scrub outcome"),
        };
        let backup_epoch = r.u64().map_err(short)?;
        let checked = r.u32().map_err(short)?;
        let bytes = r.u64().map_err(short)?;
        let repaired = r.u32().map_err(short)?;
        let k = count(r, REGION_LEN)?;
        let mut mismatches = Vec::with_capacity(k);
        for _ in 0..k {
            mismatches.push(ScrubRegion::decode(r)?);
        }
        if outcome == ScrubOutcome::Stale && (checked, bytes, repaired, k) != (0, 0, 0, 0) {
            return Err("a stale scrub result that compared something");
        }
        if mismatches.len() > checked as usize {
            return Err("more mismatches than regions checked");
        }
        Ok(ScrubResult {
            pass,
            outcome,
            backup_epoch,
            checked,
            bytes,
            repaired,
            mismatches,
        })
    }
}
