//! Guest physical memory map used at boot. Low addresses follow the Linux x86 boot conventions
//! (and Cloud Hypervisor's choices) so that a stock kernel and the built-in guest both fit.

/// Boot GDT (four entries: null, null, code 0x10, data 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty, limit 0: any early exception is a triple fault rather than a wild jump).
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT, then one page directory per GiB identity-mapped.
pub const PML4_START: u64 = 0x9000;
/// The boot page directory pointer table (one page).
pub const PDPTE_START: u64 = 0xa000;
/// The first boot page directory; one page per identity-mapped GiB follows.
pub const PDE_START: u64 = 0xb000;
/// GiB identity-mapped by the boot page tables (Linux needs the kernel, zero page and cmdline mapped).
pub const BOOT_IDENTITY_GIB: u64 = 4;
/// Free low memory the built-in guest uses for its AP start-up trampoline (SIPI vector 0x10).
pub const AP_TRAMPOLINE_START: u64 = 0x10000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we pass (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of usable low RAM (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP sits here, where a legacy scan of 0xE0000..0xFFFFF finds it; the other
/// tables follow it.
pub const RSDP_START: u64 = 0xe0000;
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x100000;
/// Start of RAM above the legacy hole; kernels load here or above.
pub const HIGH_RAM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole: RAM that would overlap it is moved above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Virtio-mmio device windows are carved from here up (4 KiB each).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;

/// I/O port of the first 16550 UART (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;
/// IRQ line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// I/O ports of the i8042 controller (data, command/status).
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042's command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI power-management block (hardware-reduced): +0 sleep control, +1 sleep status, +2 reset.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value written to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP advertised in the DSDT's `_S5_` package.
pub const ACPI_S5_SLP_TYP: u8 = 5;
