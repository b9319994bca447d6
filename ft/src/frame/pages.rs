//! A batch of guest pages for one MemoryPages frame: full 4 KiB pages, and runs of zero pages
//! that cost 13 bytes however long they are (a freed or never-touched guest page is common).
//!
//! Wire form: u32 entry count, then per entry a tag byte and the first page frame number (u64),
//! followed by 4096 data bytes (tag 1) or a u32 page count (tag 2, at least 1).

use super::wire::{WireError, WireReader};

/// Guest page size the stream moves; the only one x86-64 KVM dirty logging reports.
pub const PAGE_SIZE: usize = 4096;

const TAG_DATA: u8 = 1;
const TAG_ZERO_RUN: u8 = 2;
/// Smallest encoded entry (a zero run), used to bound the entry count by the bytes present.
const MIN_ENTRY_LEN: usize = 1 + 8 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Data { pfn: u64 },
    Zero { pfn: u64, count: u32 },
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
                Entry::Zero { .. } => MIN_ENTRY_LEN,
            })
            .sum::<usize>()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = PageRef<'_>> + '_ {
        let mut chunks = self.data.chunks_exact(PAGE_SIZE);
        self.entries.iter().filter_map(move |e| match *e {
            Entry::Data { pfn } => chunks
                .next()
                .and_then(|c| <&[u8; PAGE_SIZE]>::try_from(c).ok())
                .map(|data| PageRef::Data { pfn, data }),
            Entry::Zero { pfn, count } => Some(PageRef::Zero { pfn, count }),
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
