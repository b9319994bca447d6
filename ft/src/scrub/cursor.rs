//! A walk over a [`Layout`] in regions: memory, then each disk, then the device state and each
//! vCPU's state; a pass is one walk from start to end.

use super::region::Layout;
use crate::frame::{ScrubRegion, PAGE_SIZE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Memory(u64),
    Disk { at: usize, offset: u64 },
    Devices,
    Vcpu(u32),
    End,
}

/// Where a pass is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pos: Pos,
}

impl Cursor {
    /// At the start of a pass.
    pub(crate) fn new() -> Cursor {
        Cursor {
            pos: Pos::Memory(0),
        }
    }

    /// Whether the pass is over: no region left.
    pub(crate) fn at_end(&self, l: &Layout, region_bytes: u32) -> bool {
        self.peek(l, region_bytes).is_none()
    }

    /// The region at the cursor, without moving it; `None` at the end.
    pub(crate) fn peek(&self, l: &Layout, region_bytes: u32) -> Option<ScrubRegion> {
        let mut c = self.clone();
        c.next(l, region_bytes)
    }

    /// The region at the cursor, moving past it; `None` at the end.
    pub(crate) fn next(&mut self, l: &Layout, region_bytes: u32) -> Option<ScrubRegion> {
        let region_pages = (u64::from(region_bytes) / PAGE_SIZE as u64).max(1);
        loop {
            match self.pos {
                Pos::Memory(pfn) if pfn < l.pages => {
                    let pages = region_pages.min(l.pages - pfn);
                    self.pos = Pos::Memory(pfn + pages);
                    return Some(ScrubRegion::Memory {
                        first_pfn: pfn,
                        pages: pages as u32,
                    });
                }
                Pos::Memory(_) => self.pos = Pos::Disk { at: 0, offset: 0 },
                Pos::Disk { at, offset } => match l.disks.get(at) {
                    Some(d) if offset < d.size => {
                        let len = u64::from(region_bytes.max(1)).min(d.size - offset);
                        self.pos = Pos::Disk {
                            at,
                            offset: offset + len,
                        };
                        return Some(ScrubRegion::Disk {
                            index: d.index,
                            offset,
                            len: len as u32,
                        });
                    }
                    Some(_) => {
                        self.pos = Pos::Disk {
                            at: at + 1,
                            offset: 0,
                        }
                    }
                    None => self.pos = Pos::Devices,
                },
                Pos::Devices => {
                    self.pos = Pos::Vcpu(0);
                    return Some(ScrubRegion::Devices);
                }
                Pos::Vcpu(i) if i < l.vcpus => {
                    self.pos = Pos::Vcpu(i + 1);
                    return Some(ScrubRegion::Vcpu { index: i });
                }
                Pos::Vcpu(_) => self.pos = Pos::End,
                Pos::End => return None,
            }
        }
    }
}
