//! Page numbers on the migration stream are linear over guest RAM (region after region, the MMIO
//! hole skipped), so that both ends agree without knowing each other's layout rules.

use crate::state::memory::{DirtyBitmap as RegionBitmap, RegionDirty};
use crate::vm::memory::GuestMemoryMmap;
use ft::bitmap::DirtyBitmap;
use ft::frame::PAGE_SIZE;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Where each linear page lives in guest-physical memory.
#[derive(Clone, Debug)]
pub struct PageMap {
    /// (first guest-physical address, pages) per RAM region, in address order.
    regions: Vec<(u64, u64)>,
}

impl PageMap {
    /// The map of `mem`.
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        PageMap {
            regions: mem
                .iter()
                .map(|r| (r.start_addr().0, r.len() / PAGE_SIZE as u64))
                .collect(),
        }
    }

    /// Guest RAM as (first guest-physical address, pages), in linear page order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.regions.clone()
    }

    /// Pages in guest RAM.
    pub fn pages(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }

    /// The guest-physical address of linear page `pfn`, if there is one.
    pub fn gpa(&self, pfn: u64) -> Option<GuestAddress> {
        let mut first = 0;
        for &(start, pages) in &self.regions {
            if pfn < first + pages {
                return Some(GuestAddress(start + (pfn - first) * PAGE_SIZE as u64));
            }
            first += pages;
        }
        None
    }

    /// Turns a linear bitmap into one per region shaped like `like` (the inverse of
    /// [`PageMap::linear`]).
    pub fn regional(&self, linear: &DirtyBitmap, like: &RegionBitmap) -> RegionBitmap {
        let mut out = RegionBitmap {
            regions: like
                .regions
                .iter()
                .map(|r| RegionDirty {
                    bits: vec![0; r.bits.len()],
                    ..*r
                })
                .collect(),
        };
        // (first linear page, pages) per region.
        let mut spans = Vec::with_capacity(self.regions.len());
        let mut first = 0;
        for &(_, pages) in &self.regions {
            spans.push((first, pages));
            first += pages;
        }
        for pfn in linear.iter() {
            let Some(i) = spans.iter().position(|&(f, n)| pfn >= f && pfn < f + n) else {
                continue;
            };
            let page = pfn - spans[i].0;
            if let Some(w) = out
                .regions
                .get_mut(i)
                .and_then(|r| r.bits.get_mut((page / 64) as usize))
            {
                *w |= 1 << (page % 64);
            }
        }
        out
    }

    /// Turns a per-region dirty bitmap into a linear one.
    pub fn linear(&self, dirty: &RegionBitmap) -> DirtyBitmap {
        let mut out = DirtyBitmap::new(self.pages());
        let mut first = 0;
        for (&(start, pages), r) in self.regions.iter().zip(&dirty.regions) {
            debug_assert_eq!(start, r.start.0);
            for (w, &word) in r.bits.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    let page = w as u64 * 64 + b;
                    if page < pages {
                        out.set(first + page);
                    }
                }
            }
            first += pages;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
    use crate::state::memory::RegionDirty;

    #[test]
    fn regional_is_the_inverse_of_linear() {
        let mem = crate::vm::memory::create_guest_memory(MMIO_HOLE_START + (8 << 20)).unwrap();
        let map = PageMap::new(&mem);
        let low = MMIO_HOLE_START / 4096;
        let shape = RegionBitmap {
            regions: vec![
                RegionDirty {
                    start: GuestAddress(0),
                    len: MMIO_HOLE_START,
                    bits: vec![u64::MAX; low.div_ceil(64) as usize],
                },
                RegionDirty {
                    start: GuestAddress(MMIO_HOLE_END),
                    len: 8 << 20,
                    bits: vec![u64::MAX; 32],
                },
            ],
        };
        let mut linear = DirtyBitmap::new(map.pages());
        for pfn in [0, 3, low - 1, low, low + 2047] {
            linear.set(pfn);
        }
        let regional = map.regional(&linear, &shape);
        assert_eq!(regional.count(), 5);
        assert_eq!(map.linear(&regional), linear);
    }

    #[test]
    fn linear_pages_skip_the_hole() {
        let mem = crate::vm::memory::create_guest_memory(MMIO_HOLE_START + (8 << 20)).unwrap();
        let map = PageMap::new(&mem);
        let low = MMIO_HOLE_START / 4096;
        assert_eq!(map.pages(), low + 2048);
        assert_eq!(map.gpa(0), Some(GuestAddress(0)));
        assert_eq!(map.gpa(low - 1), Some(GuestAddress(MMIO_HOLE_START - 4096)));
        assert_eq!(map.gpa(low), Some(GuestAddress(MMIO_HOLE_END)));
        assert_eq!(map.gpa(low + 2048), None);

        let mut low_bits = vec![0u64; low.div_ceil(64) as usize];
        low_bits[0] = 0b101;
        let dirty = RegionBitmap {
            regions: vec![
                RegionDirty {
                    start: GuestAddress(0),
                    len: MMIO_HOLE_START,
                    bits: low_bits,
                },
                RegionDirty {
                    start: GuestAddress(MMIO_HOLE_END),
                    len: 8 << 20,
                    bits: vec![1 << 3; 32],
                },
            ],
        };
        let lin = map.linear(&dirty);
        let pages: Vec<u64> = lin.iter().collect();
        assert_eq!(pages[..3], [0, 2, low + 3]);
        assert_eq!(lin.count(), 2 + 32);
    }
}
