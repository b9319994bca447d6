//! The IDT shared by all CPUs, and the ring-0 handlers (`asm/interrupts.s`).
//!
//! Ring 0 loads the IDT register early (it points at this zeroed table); the
//! BSP fills the table from ring 3 before any interrupt source is armed.

use core::mem::offset_of;
use core::sync::atomic::AtomicU64;

use crate::gdt::{CpuBlock, Shared, CPU_BLOCK_SIZE};

/// #GP: also how ring 3 reaches ring 0 (HLT and port I/O are emulated).
const VEC_GP: usize = 13;
pub const VEC_TIMER: u8 = 0x20;
/// Every virtio device's IOAPIC pin is routed to this vector.
pub const VEC_DEVICE: u8 = 0x30;
pub const VEC_SPURIOUS: u8 = 0xff;

/// Device interrupts taken (by the BSP, the only CPU they are routed to).
/// Incremented by the ring-0 handler; ring 3 only reads it.
#[no_mangle]
pub static DEVICE_IRQS: AtomicU64 = AtomicU64::new(0);

const KERNEL_CS: u16 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const GATE_INTERRUPT: u8 = 0x8e;
/// IST slot for faults that must not trust the current stack.
const IST_FAULT: u8 = 1;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

#[repr(C, align(16))]
struct Idt([Gate; 256]);

/// The IDT.  Written only by `init` on the BSP, before interrupts can occur.
static IDT: Shared<Idt> = Shared::new(Idt([EMPTY; 256]));

#[repr(C, packed)]
pub struct IdtDescriptor {
    limit: u16,
    base: &'static Shared<Idt>,
}

/// Operand of `lidt` in `cpu_enter_ring3` (static data, read by ring 0).
#[no_mangle]
pub static IDT_DESCRIPTOR: IdtDescriptor = IdtDescriptor {
    limit: (core::mem::size_of::<Idt>() - 1) as u16,
    base: &IDT,
};

extern "C" {
    fn timer_handler();
    fn device_irq_handler();
    fn spurious_handler();
    fn gp_handler();
    /// 32 exception entry stubs of 16 bytes each.
    static exception_stubs: [u8; 32 * 16];
}

fn gate(handler: u64, ist: u8) -> Gate {
    Gate {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist,
        type_attr: GATE_INTERRUPT,
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    }
}

/// Fill the IDT.  Call once, on the BSP, first thing in ring 3.  Vectors
/// left empty raise #NP (reported with the vector in the error code).
pub fn init() {
    // SAFETY: only the BSP runs, in ring 3, before any interrupt source is
    // armed and before the APs start; nothing else reads or writes the table.
    let idt = unsafe { &mut (*IDT.get()).0 };
    let stubs = core::ptr::addr_of!(exception_stubs) as u64;
    for (vector, entry) in idt.iter_mut().enumerate().take(32) {
        let ist = match vector {
            2 | 8 | 18 => IST_FAULT, // NMI, #DF, #MC
            _ => 0,
        };
        *entry = gate(stubs + 16 * vector as u64, ist);
    }
    idt[VEC_GP] = gate(gp_handler as *const () as u64, 0);
    idt[VEC_TIMER as usize] = gate(timer_handler as *const () as u64, 0);
    idt[VEC_DEVICE as usize] = gate(device_irq_handler as *const () as u64, 0);
    idt[VEC_SPURIOUS as usize] = gate(spurious_handler as *const () as u64, 0);
}

core::arch::global_asm!(
    include_str!("asm/interrupts.s"),
    CPU_BLOCK_SIZE = const CPU_BLOCK_SIZE,
    CPU_INDEX = const offset_of!(CpuBlock, index),
    CPU_TICKS = const offset_of!(CpuBlock, ticks),
    device_irqs = sym DEVICE_IRQS,
    options(att_syntax)
);
