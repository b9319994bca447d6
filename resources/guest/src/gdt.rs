//! Per-CPU blocks, user stacks, and the ring-0 code that gives each CPU its
//! GDT and TSS and drops it to ring 3 (`asm/cpu_init.s`).
//!
//! A per-CPU block is 16 KiB, aligned to its size, and holds everything ring 0
//! needs for one CPU: a small header, the GDT, the TSS, the IST stack (for
//! #DF/#NMI/#MC) and the kernel stack (TSS.rsp0).  Because both stacks lie in
//! the block, a handler finds its CPU with one AND on RSP.

use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::sync::atomic::AtomicU64;

use crate::MAX_CPUS;

pub const CPU_BLOCK_SIZE: usize = 0x4000;
pub const USER_STACK_SIZE: usize = 0x8000;
/// The IST stack occupies 0x1000..0x2000 of the block, the kernel stack
/// 0x2000..0x4000.
const CPU_IST_TOP: usize = 0x2000;

#[repr(C, align(16384))]
pub struct CpuBlock {
    /// CPU index (0 = BSP), for diagnostics from ring 0.
    pub index: u64,
    /// LAPIC timer ticks, incremented by the ring-0 timer handler.
    pub ticks: AtomicU64,
    /// Where and on which stack this CPU enters ring 3.
    pub user_entry: u64,
    pub user_stack: u64,
    _pad0: [u64; 4],
    gdt: [u64; 7],
    _pad1: [u8; 6],
    gdtr_limit: u16,
    gdtr_base: u64,
    _pad2: [u64; 15],
    tss: [u8; 104],
    /// IST stack and kernel stack (see `CPU_IST_TOP`).
    _stacks: [u8; CPU_BLOCK_SIZE - 0x168],
}

const _: () = assert!(core::mem::size_of::<CpuBlock>() == CPU_BLOCK_SIZE);
const _: () = assert!(offset_of!(CpuBlock, tss) + 104 <= 0x1000);

/// Memory shared between ring 0 and ring 3 whose synchronisation is by
/// protocol (who writes it when), not by the type system.
#[repr(transparent)]
pub struct Shared<T>(UnsafeCell<T>);

// SAFETY: every user of a `Shared` static documents who may write it and when.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Per-CPU blocks.  Ring 0 writes a block while its CPU starts; ring 3 (the
/// BSP) fills an AP's header before sending its SIPI.  Lives in `.noinit`:
/// CPU 0's block is in use before ring 3 clears `.bss`.
#[link_section = ".bss.noinit.cpu_blocks"]
#[no_mangle]
pub static CPU_BLOCKS: Shared<[CpuBlock; MAX_CPUS]> =
    // SAFETY: CpuBlock is plain integers and byte arrays: all-zero is valid.
    Shared::new(unsafe { core::mem::zeroed() });

#[repr(C, align(16))]
pub struct UserStack([u8; USER_STACK_SIZE]);

/// Ring-3 stacks, one per CPU (`.noinit`: CPU 0 runs on one while it clears `.bss`).
#[link_section = ".bss.noinit.user_stacks"]
#[no_mangle]
pub static USER_STACKS: Shared<[UserStack; MAX_CPUS]> =
    Shared::new([const { UserStack([0; USER_STACK_SIZE]) }; MAX_CPUS]);

pub fn cpu_block(cpu: usize) -> *mut CpuBlock {
    assert!(cpu < MAX_CPUS);
    // SAFETY: in bounds (checked above); only a pointer is formed.
    unsafe { CPU_BLOCKS.get().cast::<CpuBlock>().add(cpu) }
}

pub fn user_stack_top(cpu: usize) -> u64 {
    assert!(cpu < MAX_CPUS);
    // SAFETY: in bounds (checked above); only a pointer is formed.
    unsafe { USER_STACKS.get().cast::<UserStack>().add(cpu + 1) as u64 }
}

/// Ticks the ring-0 timer handler has counted on `cpu`.
pub fn ticks(cpu: usize) -> u64 {
    // SAFETY: `ticks` is an atomic inside a static block; the handler only increments it.
    unsafe { (*cpu_block(cpu)).ticks.load(core::sync::atomic::Ordering::Relaxed) }
}

core::arch::global_asm!(
    include_str!("asm/cpu_init.s"),
    CPU_BLOCK_SIZE = const CPU_BLOCK_SIZE,
    CPU_IST_TOP = const CPU_IST_TOP,
    CPU_INDEX = const offset_of!(CpuBlock, index),
    CPU_USER_ENTRY = const offset_of!(CpuBlock, user_entry),
    CPU_USER_STACK = const offset_of!(CpuBlock, user_stack),
    CPU_GDT = const offset_of!(CpuBlock, gdt),
    CPU_GDTR = const offset_of!(CpuBlock, gdtr_limit),
    CPU_TSS = const offset_of!(CpuBlock, tss),
    idt_descriptor = sym crate::idt::IDT_DESCRIPTOR,
    ap_block_by_apic_id = sym crate::smp::AP_BLOCK_BY_APIC_ID,
    options(att_syntax)
);
