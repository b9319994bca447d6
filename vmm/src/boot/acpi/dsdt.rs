//! The DSDT: the `_S5_` sleep type for power-off, COM1 and one `LNRO0005` device per virtio-mmio
//! window (the ACPI form of Linux's `virtio_mmio` driver match table).

use super::{AcpiConfig, AcpiError, MmioDeviceInfo, OEM_ID, OEM_REVISION};
use crate::boot::layout::{ACPI_S5_SLP_TYP, SERIAL_IRQ, SERIAL_PORT};
use acpi_tables::aml;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

/// Device names are `V` plus three hex digits, so this many fit.
pub(super) const MAX_MMIO_DEVICES: usize = 0x1000;
/// DSDT revision 2 and above makes AML integers 64-bit.
const DSDT_REVISION: u8 = 6;
/// Size of a bare ACPI table header.
const HEADER_LEN: u32 = 36;

/// Builds the whole DSDT (header, checksum and AML body).
pub(super) fn build(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    if cfg.mmio_devices.len() > MAX_MMIO_DEVICES {
        return Err(AcpiError::TooManyDevices(cfg.mmio_devices.len()));
    }
    let mut body = Vec::new();
    s5().to_aml_bytes(&mut body);
    if cfg.serial {
        com1(&mut body);
    }
    for (index, dev) in cfg.mmio_devices.iter().enumerate() {
        virtio_mmio(index, dev, &mut body)?;
    }
    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"TNDMDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// `Name (_S5_, Package () { SLP_TYPa, SLP_TYPb, 0, 0 })`: the value Linux writes to the sleep
/// control register (SLP_TYP << 2 | SLP_EN) to power off. Without `_S5_` it does not offer
/// ACPI power-off at all.
fn s5() -> aml::Name {
    const SLP_TYP: u8 = ACPI_S5_SLP_TYP;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&SLP_TYP, &SLP_TYP, &aml::ZERO, &aml::ZERO]),
    )
}

/// `\_SB_.COM1`: a 16550 (PNP0501) with its eight ports and ISA IRQ.
fn com1(sink: &mut Vec<u8>) {
    let ports = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&ports, &irq]);
    aml::Device::new(
        "\\_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB_.Vnnn`: `_HID "LNRO0005"`, `_UID`, and `_CRS` with the register window
/// (Memory32Fixed) and the interrupt (extended IRQ, edge, active high), which is exactly what
/// `virtio_mmio_probe` asks of a platform device: one memory and one IRQ resource.
fn virtio_mmio(index: usize, dev: &MmioDeviceInfo, sink: &mut Vec<u8>) -> Result<(), AcpiError> {
    let out_of_range = || AcpiError::MmioOutOfRange {
        index,
        addr: dev.addr,
        len: dev.len,
    };
    let end = dev.addr.checked_add(dev.len).ok_or_else(out_of_range)?;
    if dev.len == 0 || end > 1 << 32 {
        return Err(out_of_range());
    }
    let base = u32::try_from(dev.addr).map_err(|_| out_of_range())?;
    let len = u32::try_from(dev.len).map_err(|_| out_of_range())?;
    let uid = u32::try_from(index).map_err(|_| AcpiError::TooManyDevices(index))?;

    let name = format!("\\_SB_.V{index:03X}");
    let window = aml::Memory32Fixed::new(true, base, len);
    let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
    let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
    aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
    Ok(())
}
