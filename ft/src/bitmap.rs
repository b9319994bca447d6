//! A set of guest page frame numbers, one bit per page: the dirty set of a round or epoch.

/// One bit per guest page; bit `pfn` set means the page changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// An empty bitmap for `pages` pages.
    pub fn new(pages: u64) -> Self {
        DirtyBitmap {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// A bitmap from 64-bit words in KVM's layout (bit `pfn % 64` of word `pfn / 64`); missing
    /// words read as clean and bits past `pages` are dropped.
    pub fn from_words(pages: u64, mut words: Vec<u64>) -> Self {
        let n = pages.div_ceil(64) as usize;
        words.resize(n, 0);
        let tail = pages % 64;
        if tail != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
        DirtyBitmap { words, pages }
    }

    /// Pages the bitmap covers.
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// Whether it covers no pages at all.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Marks `pfn` dirty; returns false (and changes nothing) when it is out of range.
    pub fn set(&mut self, pfn: u64) -> bool {
        if pfn >= self.pages {
            return false;
        }
        self.words[(pfn / 64) as usize] |= 1 << (pfn % 64);
        true
    }

    /// Whether `pfn` is dirty (false when out of range).
    pub fn is_set(&self, pfn: u64) -> bool {
        pfn < self.pages && self.words[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds every page dirty in `other` (the KVM log OR'd with the VMM's device-write log);
    /// pages of `other` beyond this bitmap's range are ignored.
    pub fn merge(&mut self, other: &DirtyBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        // `other` may be longer: re-mask our last word.
        let tail = self.pages % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// The pages dirty in both, over this bitmap's range.
    pub fn and(&self, other: &DirtyBitmap) -> DirtyBitmap {
        let mut words = self.words.clone();
        for (i, w) in words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
        DirtyBitmap {
            words,
            pages: self.pages,
        }
    }

    /// Dirty page frame numbers in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = u64::from(w.trailing_zeros());
                w &= w - 1;
                Some(i as u64 * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_count_iter_and_range() {
        let mut b = DirtyBitmap::new(130);
        assert!(b.set(0) && b.set(64) && b.set(129));
        assert!(!b.set(130));
        assert_eq!(b.count(), 3);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert!(b.is_set(64) && !b.is_set(65) && !b.is_set(1000));
    }

    #[test]
    fn and_keeps_what_both_have_within_the_first_range() {
        let mut a = DirtyBitmap::new(70);
        let mut b = DirtyBitmap::new(200);
        for p in [1, 5, 64, 69] {
            a.set(p);
        }
        for p in [5, 64, 150] {
            b.set(p);
        }
        let both = a.and(&b);
        assert_eq!(both.len(), 70);
        assert_eq!(both.iter().collect::<Vec<_>>(), vec![5, 64]);
        assert_eq!(DirtyBitmap::new(10).and(&a).count(), 0);
    }

    #[test]
    fn from_words_masks_and_merge_ors() {
        let a = DirtyBitmap::from_words(66, vec![1, u64::MAX, 7]);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 64, 65]);
        let mut b = DirtyBitmap::new(66);
        b.set(3);
        b.merge(&a);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 3, 64, 65]);
        let mut short = DirtyBitmap::new(10);
        short.merge(&DirtyBitmap::from_words(64, vec![u64::MAX]));
        assert_eq!(short.count(), 10);
    }
}
