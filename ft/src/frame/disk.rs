//! A batch of disk blocks for one DiskBlocks frame (protocol version 5, the FT initial sync of
//! replicated disks): blocks of one disk with their data, and runs of blocks that read as zeros
//! (holes and zero blocks), which cost 13 bytes however long they are.
//!
//! Wire form: u32 disk index, u32 entry count, then per entry a tag byte and the first block
//! number (u64, in [`BLOCK_SIZE`] units), followed by (tag 1) a u16 length, a whole number of
//! 512-byte sectors from 512 to [`BLOCK_SIZE`] (only a disk's last block is short), and the data,
//! or (tag 2) a u32 block count, at least 1. The decoder checks the form; the receiver checks
//! the ranges against the disk it holds.

use super::wire::{WireError, WireReader};
use crate::disk::{BLOCK_SIZE, SECTOR_SIZE};

const TAG_DATA: u8 = 1;
const TAG_ZERO_RUN: u8 = 2;
/// A zero run's encoded length, the smallest entry's.
const ZERO_ENTRY_LEN: usize = 1 + 8 + 4;
/// A data entry's encoded length before its data.
const DATA_ENTRY_HEADER: usize = 1 + 8 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Data { block: u64, len: u16 },
    Zero { block: u64, count: u32 },
}

/// One entry of a batch as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef<'a> {
    /// Block `block` holds `data` (shorter than a block only at the disk's end).
    Data {
        /// Block number.
        block: u64,
        /// Its bytes.
        data: &'a [u8],
    },
    /// Blocks `block..block + count` read as zeros.
    Zero {
        /// First block number.
        block: u64,
        /// Number of blocks.
        count: u32,
    },
}

/// Blocks of one disk for one frame, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskBatch {
    disk: u32,
    entries: Vec<Entry>,
    /// Data of the `Data` entries, back to back in entry order.
    data: Vec<u8>,
}

impl DiskBatch {
    /// An empty batch for disk `disk`.
    pub fn new(disk: u32) -> Self {
        DiskBatch {
            disk,
            ..Self::default()
        }
    }

    /// The disk the blocks belong to.
    pub fn disk(&self) -> u32 {
        self.disk
    }

    /// Adds block `block` with its contents: a whole number of sectors, at most a block (a
    /// longer `data` is cut, a ragged end dropped; the receiver then refuses the entry).
    pub fn push_data(&mut self, block: u64, data: &[u8]) {
        let len = data.len().min(BLOCK_SIZE) / SECTOR_SIZE as usize * SECTOR_SIZE as usize;
        self.entries.push(Entry::Data {
            block,
            len: len as u16,
        });
        self.data.extend_from_slice(&data[..len]);
    }

    /// Adds `count` zero blocks from `block`, extending the previous zero run when contiguous.
    pub fn push_zero(&mut self, block: u64, count: u64) {
        let mut left = count;
        let mut at = block;
        if let Some(Entry::Zero { block: b, count: n }) = self.entries.last_mut() {
            if b.checked_add(u64::from(*n)) == Some(at) {
                let more = left.min(u64::from(u32::MAX - *n));
                *n += more as u32;
                left -= more;
                at += more;
            }
        }
        while left > 0 {
            let n = left.min(u64::from(u32::MAX));
            self.entries.push(Entry::Zero {
                block: at,
                count: n as u32,
            });
            left -= n;
            at += n;
        }
    }

    /// Adds block `block`: a zero block (extending a run) when every byte is zero.
    pub fn push_block(&mut self, block: u64, data: &[u8]) {
        if data.iter().all(|&b| b == 0) {
            self.push_zero(block, 1)
        } else {
            self.push_data(block, data)
        }
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of block data the batch carries (zero runs carry none).
    pub fn data_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Bytes of the disk the batch covers, zero runs counted in whole blocks.
    pub fn covered_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match *e {
                Entry::Data { len, .. } => u64::from(len),
                Entry::Zero { count, .. } => u64::from(count) * BLOCK_SIZE as u64,
            })
            .sum()
    }

    /// Bytes the batch takes on the wire (payload only).
    pub fn encoded_len(&self) -> usize {
        8 + self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Data { len, .. } => DATA_ENTRY_HEADER + usize::from(*len),
                Entry::Zero { .. } => ZERO_ENTRY_LEN,
            })
            .sum::<usize>()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = BlockRef<'_>> + '_ {
        let mut data = self.data.as_slice();
        self.entries.iter().filter_map(move |e| match *e {
            Entry::Data { block, len } => {
                let (d, rest) = data.split_at_checked(usize::from(len))?;
                data = rest;
                Some(BlockRef::Data { block, data: d })
            }
            Entry::Zero { block, count } => Some(BlockRef::Zero { block, count }),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in self.iter() {
            match e {
                BlockRef::Data { block, data } => {
                    out.push(TAG_DATA);
                    out.extend_from_slice(&block.to_le_bytes());
                    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
                    out.extend_from_slice(data);
                }
                BlockRef::Zero { block, count } => {
                    out.push(TAG_ZERO_RUN);
                    out.extend_from_slice(&block.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut WireReader<'_>) -> Result<DiskBatch, &'static str> {
        let short = |_: WireError| "entry list ends early";
        let disk = r.u32().map_err(short)?;
        let count = r.u32().map_err(short)? as usize;
        if count > r.remaining() / ZERO_ENTRY_LEN {
            return Err("entry count larger than the payload can hold");
        }
        let mut batch = DiskBatch::new(disk);
        batch.entries.reserve(count);
        for _ in 0..count {
            let tag = r.u8().map_err(short)?;
            let block = r.u64().map_err(short)?;
            match tag {
                TAG_DATA => {
                    let len = r.u16().map_err(short)?;
                    if len == 0 || usize::from(len) > BLOCK_SIZE {
                        return Err("block data empty or longer than a block");
                    }
                    if u64::from(len) % SECTOR_SIZE != 0 {
                        return Err("block data not a whole number of sectors");
                    }
                    if block.checked_mul(BLOCK_SIZE as u64).is_none() {
                        return Err("block number past any disk");
                    }
                    batch
                        .data
                        .extend_from_slice(r.bytes(usize::from(len)).map_err(short)?);
                    batch.entries.push(Entry::Data { block, len });
                }
                TAG_ZERO_RUN => {
                    let n = r.u32().map_err(short)?;
                    if n == 0 {
                        return Err("empty zero run");
                    }
                    let end = block
                        .checked_add(u64::from(n))
                        .and_then(|e| e.checked_mul(BLOCK_SIZE as u64));
                    if end.is_none() {
                        return Err("zero run past any disk");
                    }
                    batch.entries.push(Entry::Zero { block, count: n });
                }
                _ => return Err("unknown disk entry tag"),
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(b: &DiskBatch) {
        let mut out = Vec::new();
        b.encode(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        let mut r = WireReader::new(&out);
        assert_eq!(DiskBatch::decode(&mut r).as_ref(), Ok(b));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn blocks_and_zero_runs_round_trip() {
        let mut b = DiskBatch::new(3);
        let one = [1u8; BLOCK_SIZE];
        b.push_block(0, &[0u8; BLOCK_SIZE]);
        b.push_zero(1, 2);
        b.push_block(3, &one);
        b.push_data(4, &one[..1024]);
        b.push_zero(9, 1);
        let got: Vec<_> = b.iter().collect();
        assert_eq!(
            got,
            vec![
                BlockRef::Zero { block: 0, count: 3 },
                BlockRef::Data {
                    block: 3,
                    data: &one
                },
                BlockRef::Data {
                    block: 4,
                    data: &one[..1024]
                },
                BlockRef::Zero { block: 9, count: 1 },
            ]
        );
        assert_eq!(b.disk(), 3);
        assert_eq!(b.data_bytes(), 4096 + 1024);
        assert_eq!(b.covered_bytes(), 4 * 4096 + 4096 + 1024);
        round_trip(&b);
        round_trip(&DiskBatch::new(0));
    }

    #[test]
    fn a_zero_run_longer_than_an_entry_splits() {
        let mut b = DiskBatch::new(0);
        b.push_zero(0, u64::from(u32::MAX) + 5);
        let got: Vec<_> = b.iter().collect();
        assert_eq!(
            got,
            vec![
                BlockRef::Zero {
                    block: 0,
                    count: u32::MAX
                },
                BlockRef::Zero {
                    block: u64::from(u32::MAX),
                    count: 5
                },
            ]
        );
        round_trip(&b);
    }

    #[test]
    fn hostile_entries_are_rejected() {
        let enc = |tag: u8, block: u64, tail: &[u8]| {
            let mut v = 7u32.to_le_bytes().to_vec();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.push(tag);
            v.extend_from_slice(&block.to_le_bytes());
            v.extend_from_slice(tail);
            v
        };
        let data = |len: u16, n: usize| {
            let mut t = len.to_le_bytes().to_vec();
            t.extend(std::iter::repeat_n(9u8, n));
            t
        };
        let dec = |v: &[u8]| DiskBatch::decode(&mut WireReader::new(v));
        assert_eq!(dec(&enc(2, 0, &0u32.to_le_bytes())), Err("empty zero run"));
        assert_eq!(
            dec(&enc(2, u64::MAX, &2u32.to_le_bytes())),
            Err("zero run past any disk")
        );
        assert_eq!(
            dec(&enc(2, u64::MAX / 4096, &1u32.to_le_bytes())),
            Err("zero run past any disk")
        );
        assert_eq!(
            dec(&enc(9, 0, &0u32.to_le_bytes())),
            Err("unknown disk entry tag")
        );
        assert_eq!(
            dec(&enc(1, 0, &data(0, 2))),
            Err("block data empty or longer than a block")
        );
        assert_eq!(
            dec(&enc(1, 0, &data(4608, 4608))),
            Err("block data empty or longer than a block")
        );
        assert_eq!(
            dec(&enc(1, 0, &data(100, 100))),
            Err("block data not a whole number of sectors")
        );
        assert_eq!(
            dec(&enc(1, u64::MAX, &data(512, 512))),
            Err("block number past any disk")
        );
        assert_eq!(
            dec(&enc(1, 0, &data(512, 10))),
            Err("entry list ends early")
        );
        assert!(dec(&enc(1, 5, &data(512, 512))).is_ok());
        let mut huge = 0u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(
            dec(&huge),
            Err("entry count larger than the payload can hold")
        );
    }
}
