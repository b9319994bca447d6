//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) so that a stock kernel finds its CPUs, the
//! power-off and reset registers, COM1 and the virtio-mmio devices.
//!
//! All tables live in `RSDP_START..ACPI_END` (0xE0000..0x100000): the RSDP first, where a legacy
//! scan finds it, then DSDT, FADT, MADT and XSDT, each 16-byte aligned. The e820 map leaves that
//! window out of RAM, so the guest never reuses it.

mod dsdt;
mod fadt;
mod madt;
#[cfg(test)]
mod tests;

use super::layout::{ACPI_END, RSDP_START};
use super::GuestMemoryMmap;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

/// OEM ID in every table header.
pub(crate) const OEM_ID: [u8; 6] = *b"TANDEM";
/// OEM revision in every table header.
pub(crate) const OEM_REVISION: u32 = 1;
/// Alignment of each table in the ACPI area.
const TABLE_ALIGN: u64 = 16;

/// One virtio-mmio device the DSDT announces (`LNRO0005`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest physical base of the device's register window.
    pub addr: u64,
    /// Length of the register window.
    pub len: u64,
    /// GSI (IOAPIC pin) the device interrupts on; edge-triggered, active high.
    pub irq: u32,
}

/// What the ACPI tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; APIC ids are 0..num_cpus.
    pub num_cpus: u8,
    /// virtio-mmio devices, announced in this order (`_UID` = index).
    pub mmio_devices: &'a [MmioDeviceInfo],
    /// Whether COM1 (0x3F8, IRQ 4) is announced.
    pub serial: bool,
}

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The config asks for no vCPU.
    #[error("an ACPI machine needs at least one vCPU")]
    NoCpus,
    /// A virtio-mmio window is empty or reaches above 4 GiB.
    #[error("virtio-mmio device {index} ({addr:#x}, {len:#x} bytes) must be non-empty and lie below 4 GiB")]
    MmioOutOfRange {
        /// The device's index.
        index: usize,
        /// The window's guest physical address.
        addr: u64,
        /// The window's length in bytes.
        len: u64,
    },
    /// More virtio-mmio devices than the DSDT can name.
    #[error("{0} virtio-mmio devices are more than the DSDT can name (at most {max})", max = dsdt::MAX_MMIO_DEVICES)]
    TooManyDevices(usize),
    /// The tables do not fit in the ACPI area.
    #[error("ACPI tables need {needed:#x} bytes from {RSDP_START:#x}, but the ACPI area ends at {ACPI_END:#x}")]
    TooLarge {
        /// Bytes the tables need from `RSDP_START`.
        needed: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write the {table} table at {addr:#x} into guest memory")]
    GuestMemory {
        /// The table's signature (`RSDP`, `DSDT`, `FADT`, `MADT`, `XSDT`).
        table: &'static str,
        /// Guest physical address of the table.
        addr: u64,
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Builds the ACPI tables for `cfg` into `mem` and returns the RSDP's address (for
/// `boot_params.acpi_rsdp_addr`).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }

    // Build everything and decide every address before touching guest memory, so that a table
    // set that does not fit leaves memory as it was.
    let mut area = Area::new();
    let rsdp_addr = area.take(Rsdp::len() as u64)?;

    let dsdt = dsdt::build(cfg)?;
    let dsdt_addr = area.take(dsdt.len() as u64)?;

    let fadt = bytes_of(&fadt::build(dsdt_addr));
    let fadt_addr = area.take(fadt.len() as u64)?;

    let madt = madt::build(cfg.num_cpus);
    let madt_addr = area.take(madt.len() as u64)?;

    let mut xsdt = XSDT::new(OEM_ID, *b"TNDMXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr.0);
    xsdt.add_entry(madt_addr.0);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = area.take(xsdt.len() as u64)?;

    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr.0));

    for (table, bytes, addr) in [
        ("RSDP", rsdp.as_slice(), rsdp_addr),
        ("DSDT", dsdt.as_slice(), dsdt_addr),
        ("FADT", fadt.as_slice(), fadt_addr),
        ("MADT", madt.as_slice(), madt_addr),
        ("XSDT", xsdt.as_slice(), xsdt_addr),
    ] {
        mem.write_slice(bytes, addr)
            .map_err(|source| AcpiError::GuestMemory {
                table,
                addr: addr.0,
                source,
            })?;
    }
    Ok(rsdp_addr)
}

/// Serializes any table of the `acpi_tables` crate.
fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Bump allocator over the ACPI area.
struct Area {
    next: u64,
}

impl Area {
    fn new() -> Self {
        Area { next: RSDP_START }
    }

    /// Reserves `len` bytes at the next aligned address, or fails if they pass `ACPI_END`.
    fn take(&mut self, len: u64) -> Result<GuestAddress, AcpiError> {
        let start = self.next.next_multiple_of(TABLE_ALIGN);
        let end = start.saturating_add(len);
        if end > ACPI_END {
            return Err(AcpiError::TooLarge {
                needed: end - RSDP_START,
            });
        }
        self.next = end;
        Ok(GuestAddress(start))
    }
}
