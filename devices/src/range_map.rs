//! Non-overlapping address ranges and what owns each: the lookup both buses (port I/O and MMIO)
//! do on every exit.

/// Why a range cannot be added.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Empty, or wraps past the end of the address space.
    BadRange,
    /// Shares an address with a range already present.
    Overlap,
}

/// Ranges `base..base+len`, sorted by base.
pub struct RangeMap<T> {
    entries: Vec<(u64, u64, T)>,
}

impl<T> Default for RangeMap<T> {
    fn default() -> Self {
        RangeMap {
            entries: Vec::new(),
        }
    }
}

impl<T> RangeMap<T> {
    /// Adds `base..base+len` owned by `value`.
    pub fn insert(&mut self, base: u64, len: u64, value: T) -> Result<(), RangeError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(RangeError::BadRange),
        };
        if self
            .entries
            .iter()
            .any(|&(b, l, _)| base < b + l && b < end)
        {
            return Err(RangeError::Overlap);
        }
        self.entries.push((base, len, value));
        self.entries.sort_by_key(|e| e.0);
        Ok(())
    }

    /// The owner of `addr` and the offset of `addr` in its range.
    pub fn find(&self, addr: u64) -> Option<(&T, u64)> {
        let idx = self.entries.partition_point(|e| e.0 <= addr);
        let (base, len, value) = self.entries.get(idx.checked_sub(1)?)?;
        let off = addr - base;
        (off < *len).then_some((value, off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_owners_and_refuses_bad_ranges() {
        let mut m = RangeMap::default();
        m.insert(0x100, 0x10, 'a').unwrap();
        m.insert(0x0, 0x100, 'b').unwrap();
        assert_eq!(m.insert(0x10f, 1, 'c'), Err(RangeError::Overlap));
        assert_eq!(m.insert(0x200, 0, 'c'), Err(RangeError::BadRange));
        assert_eq!(m.insert(u64::MAX, 2, 'c'), Err(RangeError::BadRange));
        assert_eq!(m.find(0x105), Some((&'a', 5)));
        assert_eq!(m.find(0xff), Some((&'b', 0xff)));
        assert_eq!(m.find(0x110), None);
    }
}
