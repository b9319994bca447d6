//! The FADT of a hardware-reduced ACPI machine: no PM1/GPE blocks or SCI, just the sleep
//! control/status and reset registers of our ACPI PM block, and the pointer to the DSDT.

use super::{OEM_ID, OEM_REVISION};
use crate::boot::layout::{ACPI_PM_PORT, ACPI_RESET_VALUE};
use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use vm_memory::GuestAddress;

/// Offsets of the registers in the ACPI PM block (see layout.rs).
const SLEEP_CONTROL_OFFSET: u16 = 0;
const SLEEP_STATUS_OFFSET: u16 = 1;
const RESET_OFFSET: u16 = 2;

/// IA-PC boot architecture flags (ACPI 6.5 table 5.11).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;

/// FADT minor version: 6.5, the revision whose layout the builder writes (276 bytes, with the
/// sleep registers that hardware-reduced mode needs, which came in 5.0).
const FADT_MINOR_VERSION: u8 = 5;

/// An 8-bit I/O register of the ACPI PM block, in the form Linux accepts for the sleep and reset
/// registers (it refuses a reset register that is not 8 bits wide at bit offset 0).
fn pm_register(offset: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT + offset),
    )
}

/// Builds the FADT pointing at the DSDT at `dsdt`.
pub(super) fn build(dsdt: GuestAddress) -> FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"TNDMFACP", OEM_REVISION)
        .dsdt_64(dsdt.0)
        // No fixed PM1 hardware: Linux then uses the sleep control register for S5.
        .flag(Flags::HwReducedAcpi)
        // Set means "no fixed-feature button": there is no PM1 block to hold one.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.fadt_minor_version = FADT_MINOR_VERSION;
    fadt.reset_reg = pm_register(RESET_OFFSET);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = pm_register(SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = pm_register(SLEEP_STATUS_OFFSET);
    // An i8042 exists (Linux skips probing it otherwise); there is no VGA and no MSI.
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED)
            .into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"TANDEMVM").into();
    fadt.finalize()
}
