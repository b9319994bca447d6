//! Boot vCPU registers for the Linux x86-64 64-bit boot protocol: flat GDT, identity-mapped page
//! tables, long mode on, RSI pointing at `boot_params`.

use super::layout::*;
use crate::vm::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Boot register setup errors.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing a boot page table, GDT or IDT into guest memory failed.
    #[error("cannot write boot {what} into guest memory")]
    WriteMemory {
        /// What was being written (`GDT`, `IDT`, `PML4`, `PDPT`, `page directory`).
        what: &'static str,
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Reading or setting the boot vCPU's registers failed.
    #[error("cannot {what}")]
    Kvm {
        /// What the VMM was doing (`get sregs`, `set regs`, `set fpu`, ...).
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// A GDT descriptor from flags, base and limit (the packed x86 layout).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The segment register KVM wants for a GDT entry at `index`.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// The boot GDT: null, null, 64-bit code (0x10), data (0x18), TSS (0x20).
const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::WriteMemory { what, source })
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping the first
/// [`BOOT_IDENTITY_GIB`] GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        write(mem, *e, BOOT_GDT_START + i as u64 * 8, "GDT")?;
    }
    write(mem, 0u64, BOOT_IDT_START, "IDT")?;
    write(mem, PDPTE_START | 0x3, PML4_START, "PML4")?;
    for gib in 0..BOOT_IDENTITY_GIB {
        let pd = PDE_START + gib * 0x1000;
        write(mem, pd | 0x3, PDPTE_START + gib * 8, "PDPT")?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            let entry = ((gib << 30) + (i << 21)) | 0x83;
            write(mem, entry, pd + i * 8, "page directory")?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `entry` with `boot_params` in RSI.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
    let code = segment_from_gdt(BOOT_GDT[2], 2);
    let data = segment_from_gdt(BOOT_GDT[3], 3);
    let tss = segment_from_gdt(BOOT_GDT[4], 4);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
    Ok(())
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory::create_guest_memory;

    #[test]
    fn gdt_segments_decode_as_flat_long_mode() {
        let cs = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (0x10, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x18, 0, 1, 3));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pdpt1: u64 = mem.read_obj(GuestAddress(PDPTE_START + 8)).unwrap();
        assert_eq!(pdpt1 & !0xfff, PDE_START + 0x1000);
        // 1 GiB + 2 MiB maps to itself.
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 0x1000 + 8)).unwrap();
        assert_eq!(pde & !0xfff, (1 << 30) + (2 << 20));
        assert_eq!(pde & 0x83, 0x83);
    }
}
