//! The boot processor's first instructions (`asm/entry.s`) and what ring 0
//! hands to ring 3.

use core::mem::offset_of;

use crate::gdt::{Shared, CPU_BLOCKS, CPU_BLOCK_SIZE, USER_STACKS, USER_STACK_SIZE};

/// Facts only ring 0 can learn, written by `_start` before ring 3 runs.  In
/// `.data` (not `.bss`), so ring 3's clearing of `.bss` keeps them.
#[repr(C)]
pub struct Ring0Info {
    /// Physical address of the Linux zero page.
    pub boot_params: u64,
    /// CPUID 0x4000_0000 EAX.
    pub hv_max_leaf: u32,
    /// CPUID 0x4000_0010 EAX/EBX, 0 when absent.
    pub tsc_khz: u32,
    pub bus_khz: u32,
    /// 1 when the page tables use 1 GiB pages.
    pub has_1g: u32,
    /// Bytes identity-mapped from 0.
    pub mapped_bytes: u64,
}

#[link_section = ".data.ring0_info"]
#[no_mangle]
pub static RING0_INFO: Shared<Ring0Info> = Shared::new(Ring0Info {
    boot_params: 0,
    hv_max_leaf: 0,
    tsc_khz: 0,
    bus_khz: 0,
    has_1g: 0,
    mapped_bytes: 0,
});

/// A copy of what ring 0 found (written once, before ring 3 starts).
pub fn ring0_info() -> Ring0Info {
    // SAFETY: written only by ring 0 on the BSP before ring 3 ran.
    unsafe { RING0_INFO.get().read_volatile() }
}

core::arch::global_asm!(
    include_str!("asm/entry.s"),
    CPU_BLOCK_SIZE = const CPU_BLOCK_SIZE,
    USER_STACK_SIZE = const USER_STACK_SIZE,
    CPU_INDEX = const offset_of!(crate::gdt::CpuBlock, index),
    CPU_USER_ENTRY = const offset_of!(crate::gdt::CpuBlock, user_entry),
    CPU_USER_STACK = const offset_of!(crate::gdt::CpuBlock, user_stack),
    INFO_BOOT_PARAMS = const offset_of!(Ring0Info, boot_params),
    INFO_HV_MAX_LEAF = const offset_of!(Ring0Info, hv_max_leaf),
    INFO_TSC_KHZ = const offset_of!(Ring0Info, tsc_khz),
    INFO_BUS_KHZ = const offset_of!(Ring0Info, bus_khz),
    INFO_HAS_1G = const offset_of!(Ring0Info, has_1g),
    cpu_blocks = sym CPU_BLOCKS,
    user_stacks = sym USER_STACKS,
    ring0_info = sym RING0_INFO,
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::ap_main,
    options(att_syntax)
);
