//! The MADT: one enabled local APIC per vCPU, the IOAPIC, the ISA IRQ0 → GSI2 override and the
//! local APIC NMI line. Written through the crate's generic `Sdt` because its MADT type has no
//! way to set the PCAT_COMPAT flag or add override/NMI entries.

use super::{OEM_ID, OEM_REVISION};
use crate::boot::layout::{IOAPIC_START, LAPIC_START};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

/// MADT revision of ACPI 6.5.
const MADT_REVISION: u8 = 5;
/// Header (36) + local APIC address (4) + flags (4).
const MADT_HEADER_LEN: u32 = 44;
/// Offsets in the MADT header.
const LOCAL_APIC_ADDR_OFFSET: usize = 36;
const FLAGS_OFFSET: usize = 40;
/// Flag: the machine also has dual 8259 PICs (Linux must mask them).
const PCAT_COMPAT: u32 = 1;
/// Interrupt controller structure types.
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: conforms to the bus (ISA: edge, active high).
const INTI_CONFORMS: u16 = 0;
/// ACPI processor UID meaning "all processors".
const ALL_PROCESSORS: u8 = 0xff;
/// The PIT's ISA IRQ and the IOAPIC pin it is wired to, as on every PC since the IOAPIC.
const PIT_ISA_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;
/// LINT pin that carries NMI (LINT0 is ExtINT from the 8259).
const NMI_LINT: u8 = 1;

/// Builds the MADT for `num_cpus` vCPUs (APIC id = ACPI processor UID = index).
pub(super) fn build(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        *b"TNDMMADT",
        OEM_REVISION,
    );
    // Both addresses are below 4 GiB by construction of the layout.
    madt.write_u32(LOCAL_APIC_ADDR_OFFSET, LAPIC_START as u32);
    madt.write_u32(FLAGS_OFFSET, PCAT_COMPAT);

    let mut entries = Vec::new();
    for id in 0..num_cpus {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(0, IOAPIC_START as u32, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&interrupt_source_override(
        PIT_ISA_IRQ,
        PIT_GSI,
        INTI_CONFORMS,
    ));
    entries.extend_from_slice(&local_apic_nmi(ALL_PROCESSORS, INTI_CONFORMS, NMI_LINT));
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

/// Interrupt Source Override (type 2, 10 bytes): ISA `source` is delivered on `gsi`.
fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut e = [0u8; 10];
    e[0] = TYPE_INTERRUPT_SOURCE_OVERRIDE;
    e[1] = e.len() as u8;
    e[2] = 0; // bus: ISA
    e[3] = source;
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    e[8..10].copy_from_slice(&flags.to_le_bytes());
    e
}

/// Local APIC NMI (type 4, 6 bytes): NMI arrives on `lint` of processor `uid`.
fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let mut e = [0u8; 6];
    e[0] = TYPE_LOCAL_APIC_NMI;
    e[1] = e.len() as u8;
    e[2] = uid;
    e[3..5].copy_from_slice(&flags.to_le_bytes());
    e[5] = lint;
    e
}
