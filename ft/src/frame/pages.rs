//! A batch of guest pages for one MemoryPages frame: full 4 KiB pages, and runs of zero pages
//! that cost 13 bytes however long they are (a freed or never-touched guest page is common).
//!
//! Wire form: u32 entry count, then per entry a tag byte and the first page frame number (u64),
//! followed by 4096 data bytes (tag 1), a u32 page count (tag 2, at least 1), or (tag 3,
//! protocol version 4, FT checkpoints only) a delta against the page the receiver holds: the
//! CRC-32 of the resulting page, a u16 length below 4096 and the [`super::delta`] encoding.

use super::delta::{check_delta, DeltaError};
use super::wire::{WireError, WireReader};

/// Guest page size the stream moves; the only one x86-64 KVM dirty logging reports.
pub const PAGE_SIZE: usize = 4096;

const TAG_DATA: u8 = 1;
const TAG_ZERO_RUN: u8 = 2;
const TAG_DELTA: u8 = 3;
/// A zero run's encoded length.
const ZERO_ENTRY_LEN: usize = 1 + 8 + 4;
/// A delta entry's encoded length before the delta bytes.
const DELTA_ENTRY_HEADER: usize = 1 + 8 + 4 + 2;
/// Smallest encoded entry (a zero run), used to bound the entry count by the bytes present.
const MIN_ENTRY_LEN: usize = ZERO_ENTRY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Data { pfn: u64 },
    Zero { pfn: u64, count: u32 },
    Delta { pfn: u64, crc: u32, len: u16 },
}

/// One entry of a batch as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRef<'a> {
    /// Page `pfn` holds `data`.
    Data {
        /// Page frame number.
        pfn: u64,
        /// The page's bytes.
        data: &'a [u8; PAGE_SIZE],
    },
    /// Pages `pfn..pfn + count` are all zero.
    Zero {
        /// First page frame number.
        pfn: u64,
        /// Number of pages.
        count: u32,
    },
    /// Page `pfn` is the receiver's copy with `delta` applied, and then has CRC-32 `crc`.
    Delta {
        /// Page frame number.
        pfn: u64,
        /// CRC-32 of the page after the delta is applied: catches a base that differs.
        crc: u32,
        /// The encoded delta (structure already checked).
        delta: &'a [u8],
    },
}

/// Whether a page is all zero bytes.
pub fn is_zero_page(page: &[u8; PAGE_SIZE]) -> bool {
    // Word-wise so that debug builds (the tests) are not needlessly slow.
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
}

/// Pages for one frame, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageBatch {
    entries: Vec<Entry>,
    /// Data of the `Data` entries, back to back in entry order.
    data: Vec<u8>,
    /// Encoded deltas of the `Delta` entries, back to back in entry order.
    deltas: Vec<u8>,
    pages: u64,
}

impl PageBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds page `pfn` with its contents.
    pub fn push_data(&mut self, pfn: u64, page: &[u8; PAGE_SIZE]) {
        self.entries.push(Entry::Data { pfn });
        self.data.extend_from_slice(page);
        self.pages += 1;
    }

    /// Adds page `pfn` as a delta (from [`super::encode_delta`], shorter than a page) that
    /// turns the receiver's copy into a page with CRC-32 `crc`.
    pub fn push_delta(&mut self, pfn: u64, crc: u32, delta: &[u8]) {
        // The encoder never makes a delta as long as a page; a longer one would not fit the
        // wire's u16, so it is cut (and then fails the receiver's CRC) rather than panic.
        let len = delta.len().min(PAGE_SIZE - 1);
        self.entries.push(Entry::Delta {
            pfn,
            crc,
            len: len as u16,
        });
        self.deltas.extend_from_slice(&delta[..len]);
        self.pages += 1;
    }

    /// Adds page `pfn` as zero, extending the previous zero run when it is contiguous.
    pub fn push_zero(&mut self, pfn: u64) {
        if let Some(Entry::Zero { pfn: start, count }) = self.entries.last_mut() {
            if start.checked_add(u64::from(*count)) == Some(pfn) && *count < u32::MAX {
                *count += 1;
                self.pages += 1;
                return;
            }
        }
        self.entries.push(Entry::Zero { pfn, count: 1 });
        self.pages += 1;
    }

    /// Adds page `pfn`, as a zero page when it is all zeros.
    pub fn push_page(&mut self, pfn: u64, page: &[u8; PAGE_SIZE]) {
        if is_zero_page(page) {
            self.push_zero(pfn)
        } else {
            self.push_data(pfn, page)
        }
    }

    /// Pages the batch covers, zero runs counted page by page.
    pub fn page_count(&self) -> u64 {
        self.pages
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the batch takes on the wire (payload only).
    pub fn encoded_len(&self) -> usize {
        4 + self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Data { .. } => 1 + 8 + PAGE_SIZE,
                Entry::Zero { .. } => ZERO_ENTRY_LEN,
                Entry::Delta { len, .. } => DELTA_ENTRY_HEADER + usize::from(*len),
            })
            .sum::<usize>()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = PageRef<'_>> + '_ {
        let mut chunks = self.data.chunks_exact(PAGE_SIZE);
        let mut deltas = self.deltas.as_slice();
        self.entries.iter().filter_map(move |e| match *e {
            Entry::Data { pfn } => chunks
                .next()
                .and_then(|c| <&[u8; PAGE_SIZE]>::try_from(c).ok())
                .map(|data| PageRef::Data { pfn, data }),
            Entry::Zero { pfn, count } => Some(PageRef::Zero { pfn, count }),
            Entry::Delta { pfn, crc, len } => {
                let (delta, rest) = deltas.split_at_checked(usize::from(len))?;
                deltas = rest;
                Some(PageRef::Delta { pfn, crc, delta })
            }
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in self.iter() {
            match e {
                PageRef::Data { pfn, data } => {
                    out.push(TAG_DATA);
                    out.extend_from_slice(&pfn.to_le_bytes());
                    out.extend_from_slice(data);
                }
                PageRef::Zero { pfn, count } => {
                    out.push(TAG_ZERO_RUN);
                    out.extend_from_slice(&pfn.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
                PageRef::Delta { pfn, crc, delta } => {
                    out.push(TAG_DELTA);
                    out.extend_from_slice(&pfn.to_le_bytes());
                    out.extend_from_slice(&crc.to_le_bytes());
                    out.extend_from_slice(&(delta.len() as u16).to_le_bytes());
                    out.extend_from_slice(delta);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut WireReader<'_>) -> Result<PageBatch, &'static str> {
        let short = |_: WireError| "entry list ends early";
        let count = r.u32().map_err(short)? as usize;
        if count > r.remaining() / MIN_ENTRY_LEN {
            return Err("entry count larger than the payload can hold");
        }
        let mut batch = PageBatch::new();
        batch.entries.reserve(count);
        for _ in 0..count {
            let tag = r.u8().map_err(short)?;
            let pfn = r.u64().map_err(short)?;
            match tag {
                TAG_DATA => {
                    batch
                        .data
                        .extend_from_slice(r.bytes(PAGE_SIZE).map_err(short)?);
                    batch.entries.push(Entry::Data { pfn });
                    batch.pages += 1;
                }
                TAG_ZERO_RUN => {
                    let n = r.u32().map_err(short)?;
                    if n == 0 {
                        return Err("empty zero run");
                    }
                    if pfn.checked_add(u64::from(n)).is_none() {
                        return Err("zero run wraps around the page number space");
                    }
                    batch.entries.push(Entry::Zero { pfn, count: n });
                    batch.pages += u64::from(n);
                }
                TAG_DELTA => {
                    let crc = r.u32().map_err(short)?;
                    let len = r.u16().map_err(short)?;
                    if usize::from(len) >= PAGE_SIZE {
                        return Err("delta not shorter than a page");
                    }
                    let delta = r.bytes(usize::from(len)).map_err(short)?;
                    check_delta(delta).map_err(|e| match e {
                        DeltaError::Truncated => "delta record truncated",
                        DeltaError::EmptyLiteral => "delta record with an empty literal",
                        DeltaError::PastPageEnd => "delta runs past the page end",
                    })?;
                    batch.deltas.extend_from_slice(delta);
                    batch.entries.push(Entry::Delta { pfn, crc, len });
                    batch.pages += 1;
                }
                _ => return Err("unknown page entry tag"),
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_coalesce_into_runs() {
        let mut b = PageBatch::new();
        let zero = [0u8; PAGE_SIZE];
        let mut one = [0u8; PAGE_SIZE];
        one[100] = 1;
        b.push_page(5, &zero);
        b.push_page(6, &zero);
        b.push_page(7, &one);
        b.push_page(8, &zero);
        b.push_zero(10);
        let got: Vec<_> = b.iter().collect();
        assert_eq!(
            got,
            vec![
                PageRef::Zero { pfn: 5, count: 2 },
                PageRef::Data { pfn: 7, data: &one },
                PageRef::Zero { pfn: 8, count: 1 },
                PageRef::Zero { pfn: 10, count: 1 },
            ]
        );
        assert_eq!(b.page_count(), 5);
        let mut out = Vec::new();
        b.encode(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        let mut r = WireReader::new(&out);
        assert_eq!(PageBatch::decode(&mut r), Ok(b));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn delta_entries_round_trip() {
        let mut b = PageBatch::new();
        let one = [1u8; PAGE_SIZE];
        b.push_delta(4, 0xdead_beef, &[0, 0, 2, 0, 9, 9]);
        b.push_data(5, &one);
        b.push_delta(6, 7, &[]);
        let got: Vec<_> = b.iter().collect();
        assert_eq!(
            got,
            vec![
                PageRef::Delta {
                    pfn: 4,
                    crc: 0xdead_beef,
                    delta: &[0, 0, 2, 0, 9, 9]
                },
                PageRef::Data { pfn: 5, data: &one },
                PageRef::Delta {
                    pfn: 6,
                    crc: 7,
                    delta: &[]
                },
            ]
        );
        assert_eq!(b.page_count(), 3);
        let mut out = Vec::new();
        b.encode(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        let mut r = WireReader::new(&out);
        assert_eq!(PageBatch::decode(&mut r), Ok(b));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn hostile_delta_entries_are_rejected() {
        let enc = |len: u16, delta: &[u8]| {
            let mut v = 1u32.to_le_bytes().to_vec();
            v.push(3);
            v.extend_from_slice(&9u64.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(delta);
            v
        };
        let dec = |v: &[u8]| PageBatch::decode(&mut WireReader::new(v));
        assert_eq!(
            dec(&enc(4096, &[0; 4096])),
            Err("delta not shorter than a page")
        );
        assert_eq!(dec(&enc(10, &[0; 4])), Err("entry list ends early"));
        assert_eq!(
            dec(&enc(4, &[0, 0, 0, 0])),
            Err("delta record with an empty literal")
        );
        assert_eq!(
            dec(&enc(5, &[0xff, 0x0f, 2, 0, 1])),
            Err("delta record truncated")
        );
        assert_eq!(
            dec(&enc(6, &[0xff, 0x0f, 2, 0, 1, 1])),
            Err("delta runs past the page end")
        );
        assert!(dec(&enc(5, &[0xfe, 0x0f, 1, 0, 1])).is_ok());
    }

    #[test]
    fn hostile_entries_are_rejected() {
        let enc = |tag: u8, pfn: u64, tail: &[u8]| {
            let mut v = 1u32.to_le_bytes().to_vec();
            v.push(tag);
            v.extend_from_slice(&pfn.to_le_bytes());
            v.extend_from_slice(tail);
            v
        };
        let dec = |v: &[u8]| PageBatch::decode(&mut WireReader::new(v));
        assert_eq!(dec(&enc(2, 0, &0u32.to_le_bytes())), Err("empty zero run"));
        assert!(dec(&enc(2, u64::MAX, &2u32.to_le_bytes())).is_err());
        assert_eq!(
            dec(&enc(9, 0, &0u32.to_le_bytes())),
            Err("unknown page entry tag")
        );
        assert_eq!(dec(&enc(1, 0, &[0; 10])), Err("entry list ends early"));
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(
            dec(&huge),
            Err("entry count larger than the payload can hold")
        );
    }
}
