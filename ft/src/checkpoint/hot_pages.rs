//! Pages the guest writes every epoch, kept writable between checkpoints.
//!
//! KVM's dirty log write-protects every page it reports, so the guest's first write to a page
//! in each epoch faults (about 14 µs under PVM, DESIGN.md). A guest that answers requests
//! rewrites the same handful of pages (stack, rings, buffers) every epoch and pays those faults
//! on every reply. A page seen dirty at two checkpoints in a row is kept *hot*: it is not
//! write-protected again, and is copied at every checkpoint whether written or not (a 4 KiB
//! copy costs far less than the fault, and an unchanged page goes out as an empty delta). Every
//! [`COOL_EVERY`] checkpoints all hot pages are protected again, so a page that went quiet
//! stops being copied; at most [`MAX_HOT`] are kept, which bounds the extra copy per pause.
//!
//! Correctness does not depend on the choice: a kept page is always reported dirty, so it is
//! always copied; only its cost changes.

use crate::bitmap::DirtyBitmap;

/// Hot pages kept at most (4 MiB: about a millisecond of copying in the worst case).
pub(crate) const MAX_HOT: u64 = 1024;
/// Checkpoints between two coolings.
pub(crate) const COOL_EVERY: u64 = 64;

/// Which dirty pages to keep writable, from the dirty sets of the last two checkpoints.
#[derive(Default)]
pub(crate) struct HotPages {
    /// The previous checkpoint's dirty pages (kept ones included: they report dirty).
    prev: Option<DirtyBitmap>,
    captures: u64,
    /// Pages kept at the last checkpoint.
    kept: u64,
}

impl HotPages {
    /// Given this checkpoint's dirty pages, the ones to keep writable until the next.
    pub(crate) fn choose(&mut self, dirty: &DirtyBitmap) -> DirtyBitmap {
        self.captures += 1;
        let cool = self.captures.is_multiple_of(COOL_EVERY);
        let mut keep = match (&self.prev, cool) {
            (Some(prev), false) => dirty.and(prev),
            _ => DirtyBitmap::new(dirty.len()),
        };
        if keep.count() > MAX_HOT {
            let mut capped = DirtyBitmap::new(keep.len());
            for pfn in keep.iter().take(MAX_HOT as usize) {
                capped.set(pfn);
            }
            keep = capped;
        }
        self.kept = keep.count();
        self.prev = Some(dirty.clone());
        keep
    }

    /// Pages kept writable at the last checkpoint.
    pub(crate) fn kept(&self) -> u64 {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(pages: &[u64]) -> DirtyBitmap {
        let mut b = DirtyBitmap::new(4096);
        for &p in pages {
            b.set(p);
        }
        b
    }

    #[test]
    fn a_page_dirty_twice_in_a_row_is_kept_a_page_dirty_once_is_not() {
        let mut h = HotPages::default();
        assert_eq!(
            h.choose(&bitmap(&[1, 2, 3])).count(),
            0,
            "nothing seen before"
        );
        let keep = h.choose(&bitmap(&[2, 3, 9]));
        assert_eq!(keep.iter().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(h.kept(), 2);
        // A sweep (new pages every epoch) keeps nothing.
        assert_eq!(h.choose(&bitmap(&[10, 11])).count(), 0);
    }

    #[test]
    fn every_page_is_protected_again_once_every_cooling_period() {
        let mut h = HotPages::default();
        let hot = bitmap(&[7, 8]);
        let mut cooled = Vec::new();
        for i in 1..=3 * COOL_EVERY {
            if h.choose(&hot).count() == 0 {
                cooled.push(i);
            }
        }
        // The first checkpoint (nothing seen yet) and every COOL_EVERY-th keep nothing.
        assert_eq!(cooled, vec![1, COOL_EVERY, 2 * COOL_EVERY, 3 * COOL_EVERY]);
    }

    #[test]
    fn at_most_max_hot_pages_are_kept() {
        let mut h = HotPages::default();
        let many: Vec<u64> = (0..2 * MAX_HOT).collect();
        h.choose(&bitmap(&many));
        assert_eq!(h.choose(&bitmap(&many)).count(), MAX_HOT);
    }
}
