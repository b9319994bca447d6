//! The identity map every CPU uses, built once by ring 0 (`asm/paging.s`).
//!
//! All RAM and the 3..4 GiB MMIO hole are mapped with the U/S bit, so ring 3
//! reaches memory, the LAPIC and the IOAPIC without asking ring 0.

use core::mem::offset_of;

use crate::entry::{Ring0Info, RING0_INFO};
use crate::gdt::Shared;

/// With 2 MiB pages, at most this many GiB are mapped (one PD per GiB).
pub const MAX_PD_TABLES: usize = 64;

#[repr(C, align(4096))]
pub struct PageTable([u64; 512]);

// Page tables are written by ring 0 before ring 3 runs, so they live in
// `.noinit` (ring 3 clears only `.bss`).
#[link_section = ".bss.noinit.pml4"]
#[no_mangle]
pub static PML4: Shared<PageTable> = Shared::new(PageTable([0; 512]));
#[link_section = ".bss.noinit.pdpt"]
#[no_mangle]
pub static PDPT: Shared<PageTable> = Shared::new(PageTable([0; 512]));
#[link_section = ".bss.noinit.pd_tables"]
#[no_mangle]
pub static PD_TABLES: Shared<[PageTable; MAX_PD_TABLES]> =
    Shared::new([const { PageTable([0; 512]) }; MAX_PD_TABLES]);

/// The CR3 value APs load in the trampoline (below 4 GiB: it is in the image).
pub fn cr3() -> u32 {
    PML4.get() as u32
}

core::arch::global_asm!(
    include_str!("asm/paging.s"),
    MAX_PD_TABLES = const MAX_PD_TABLES,
    INFO_BOOT_PARAMS = const offset_of!(Ring0Info, boot_params),
    INFO_HAS_1G = const offset_of!(Ring0Info, has_1g),
    INFO_MAPPED_BYTES = const offset_of!(Ring0Info, mapped_bytes),
    ring0_info = sym RING0_INFO,
    pml4 = sym PML4,
    pdpt = sym PDPT,
    pd_tables = sym PD_TABLES,
    options(att_syntax)
);
