//! What one side scrubs — guest memory (with its guest-physical layout, for names), the
//! replicated disks and the vCPU count — and the names log lines and reports give regions.

use super::disks::{ScrubDisk, ScrubDisks};
use crate::frame::{ScrubRegion, PAGE_SIZE};
use crate::vm::MigratableVm;

/// Sector size disk regions are named in.
const SECTOR: u64 = 512;

/// The replicated state of one side, as the scrub walks and names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Guest pages (linear numbering, as on the stream).
    pub pages: u64,
    /// Guest RAM as (first guest-physical address, pages), in linear page order.
    pub ram: Vec<(u64, u64)>,
    /// Replicated disks (none in shared-disk mode).
    pub disks: Vec<ScrubDisk>,
    /// vCPUs (one state blob each).
    pub vcpus: u32,
}

impl Layout {
    /// The layout of `vm` and `disks`.
    pub fn of<V: MigratableVm + ?Sized>(vm: &V, disks: Option<&dyn ScrubDisks>) -> Layout {
        Layout {
            pages: vm.page_count(),
            ram: vm.ram_ranges(),
            disks: disks.map(|d| d.list()).unwrap_or_default(),
            vcpus: vm.vcpu_count(),
        }
    }

    /// Bytes of memory and disk one full pass hashes.
    pub fn total_bytes(&self) -> u64 {
        self.pages
            .saturating_mul(PAGE_SIZE as u64)
            .saturating_add(self.disks.iter().map(|d| d.size).sum::<u64>())
    }

    /// The guest-physical address of linear page `pfn`.
    pub fn gpa(&self, pfn: u64) -> Option<u64> {
        let mut first = 0u64;
        for &(start, pages) in &self.ram {
            if pfn < first.saturating_add(pages) {
                return Some(start + (pfn - first) * PAGE_SIZE as u64);
            }
            first = first.saturating_add(pages);
        }
        None
    }

    /// The disk with index `index`.
    pub fn disk(&self, index: u32) -> Option<&ScrubDisk> {
        self.disks.iter().find(|d| d.index == index)
    }

    /// A region's name for log lines and reports: the guest-physical range of memory, a disk's
    /// bytes and sectors, or the state blob.
    pub fn name(&self, r: &ScrubRegion) -> String {
        match *r {
            ScrubRegion::Memory { first_pfn, pages } => {
                let last = first_pfn.saturating_add(u64::from(pages)).saturating_sub(1);
                match (self.gpa(first_pfn), self.gpa(last)) {
                    (Some(a), Some(b)) => format!(
                        "memory gpa {a:#x}-{:#x} (pages {first_pfn}..{})",
                        b + PAGE_SIZE as u64,
                        last + 1
                    ),
                    _ => format!("memory pages {first_pfn}..{} (beyond guest RAM)", last + 1),
                }
            }
            ScrubRegion::Disk { index, offset, len } => {
                let end = offset.saturating_add(u64::from(len));
                let name = match self.disk(index) {
                    Some(d) if !d.name.is_empty() => format!(" ({:?})", d.name),
                    _ => String::new(),
                };
                format!(
                    "disk {index}{name} bytes {offset}..{end} (sectors {}..{})",
                    offset / SECTOR,
                    end.div_ceil(SECTOR)
                )
            }
            ScrubRegion::Devices => "device state".into(),
            ScrubRegion::Vcpu { index } => format!("vCPU {index} state"),
        }
    }
}
