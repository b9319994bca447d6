//! The primary's cache of what it last sent per page (XBZRLE-style), so that a dirty page it
//! finds there goes out as a delta against that copy: the backup holds exactly that copy, since
//! every checkpoint sent is applied in order or the stream ends. Direct-mapped by page number
//! and capped in bytes: a page whose slot another page took is sent whole again.

use crate::frame::{encode_delta, is_zero_page, PageBatch, PAGE_SIZE};

/// A delta entry's cost beyond its delta bytes, against a whole page entry's (tag, pfn, page):
/// a delta is only worth sending when it is shorter than this.
const DELTA_LIMIT: usize = (1 + 8 + PAGE_SIZE) - (1 + 8 + 4 + 2);

/// How the pages went out, counted over the stream.
pub(crate) type SentCounts = super::stats::PageEncodings;

/// Last sent content of up to `slots` pages.
pub(crate) struct SentPages {
    /// `pfn + 1` of the page each slot holds; 0 for an empty slot.
    tags: Vec<u64>,
    /// `PAGE_SIZE` bytes per slot; allocated zeroed, so untouched slots cost no memory.
    data: Vec<u8>,
    scratch: Vec<u8>,
    pub(crate) counts: SentCounts,
}

impl SentPages {
    /// A cache of at most `cap_bytes` (rounded down to pages), never more slots than the guest
    /// has pages; 0 turns deltas off.
    pub(crate) fn new(cap_bytes: u64, guest_pages: u64) -> SentPages {
        let slots = (cap_bytes / PAGE_SIZE as u64).min(guest_pages);
        let slots = usize::try_from(slots).unwrap_or(0);
        SentPages {
            tags: vec![0; slots],
            data: vec![0; slots * PAGE_SIZE],
            scratch: Vec::with_capacity(PAGE_SIZE),
            counts: SentCounts::default(),
        }
    }

    /// Adds dirty page `pfn` to `batch` as a zero marker, a delta against the copy last sent, or
    /// whole, and remembers it as sent.
    pub(crate) fn push(&mut self, batch: &mut PageBatch, pfn: u64, page: &[u8; PAGE_SIZE]) {
        let cached = self.index(pfn).and_then(|i| {
            let d = self.data.get(i * PAGE_SIZE..(i + 1) * PAGE_SIZE)?;
            (self.tags[i] == pfn + 1).then_some(d)
        });
        if is_zero_page(page) {
            batch.push_zero(pfn);
            self.counts.zero += 1;
        } else if let Some(old) = cached.and_then(|d| <&[u8; PAGE_SIZE]>::try_from(d).ok()) {
            if encode_delta(old, page, DELTA_LIMIT, &mut self.scratch) {
                batch.push_delta(pfn, crc32fast::hash(page), &self.scratch);
                self.counts.delta += 1;
            } else {
                batch.push_data(pfn, page);
                self.counts.whole += 1;
            }
        } else {
            batch.push_data(pfn, page);
            self.counts.whole += 1;
        }
        self.remember(pfn, page);
    }

    fn remember(&mut self, pfn: u64, page: &[u8; PAGE_SIZE]) {
        let Some(i) = self.index(pfn) else { return };
        if let Some(d) = self.data.get_mut(i * PAGE_SIZE..(i + 1) * PAGE_SIZE) {
            d.copy_from_slice(page);
            self.tags[i] = pfn + 1;
        }
    }

    fn index(&self, pfn: u64) -> Option<usize> {
        let n = self.tags.len() as u64;
        (n > 0).then(|| (pfn % n) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{apply_delta, PageRef};

    /// What a receiver holding `pages` makes of `batch`.
    fn apply(pages: &mut [[u8; PAGE_SIZE]], batch: &PageBatch) {
        for e in batch.iter() {
            match e {
                PageRef::Data { pfn, data } => pages[pfn as usize] = *data,
                PageRef::Zero { pfn, count } => {
                    for p in pfn..pfn + u64::from(count) {
                        pages[p as usize] = [0; PAGE_SIZE];
                    }
                }
                PageRef::Delta { pfn, crc, delta } => {
                    let page = &mut pages[pfn as usize];
                    apply_delta(page, delta).unwrap();
                    assert_eq!(crc32fast::hash(page), crc);
                }
            }
        }
    }

    #[test]
    fn receiver_follows_through_deltas_and_evictions() {
        // 6 slots for 8 pages: pages 6 and 7 keep evicting 0 and 1.
        for cap in [0, 6 * PAGE_SIZE as u64, 64 << 20] {
            let mut cache = SentPages::new(cap, 8);
            let mut src = vec![[0u8; PAGE_SIZE]; 8];
            let mut dst = src.clone();
            for round in 0..20u8 {
                let mut batch = PageBatch::new();
                for pfn in 0..8u64 {
                    let p = &mut src[pfn as usize];
                    p[(round as usize * 8 + pfn as usize) % PAGE_SIZE] ^= round | 1;
                    if round % 7 == 6 && pfn == 2 {
                        *p = [0; PAGE_SIZE];
                    }
                    cache.push(&mut batch, pfn, p);
                }
                apply(&mut dst, &batch);
                assert_eq!(dst, src, "cap {cap} round {round}");
            }
            let c = cache.counts;
            match cap {
                0 => assert_eq!(c.delta, 0),
                // Pages 2..6 go as deltas after round 0, the four others always whole.
                n if n < 64 << 20 => assert!(c.delta > 60 && c.whole >= 80, "{c:?}"),
                _ => assert!(c.delta > 140, "{c:?}"),
            }
        }
    }
}
