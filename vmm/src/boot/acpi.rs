//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) so that a stock kernel finds CPUs, the power-off
//! path and virtio-mmio devices. (Being written.)
// Placeholder until the ACPI branch lands: the same signature, no tables yet.
use crate::vm::memory::GuestMemoryMmap;
use vm_memory::GuestAddress;
/// One virtio-mmio device.
pub struct MmioDeviceInfo { pub addr: u64, pub len: u64, pub irq: u32 }
/// ACPI config.
pub struct AcpiConfig<'a> { pub num_cpus: u8, pub mmio_devices: &'a [MmioDeviceInfo], pub serial: bool }
/// ACPI errors.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError { #[error("none")] None }
/// Placeholder.
pub fn create_acpi_tables(_mem: &GuestMemoryMmap, _cfg: &AcpiConfig) -> Result<GuestAddress, AcpiError> { Ok(GuestAddress(0)) }
