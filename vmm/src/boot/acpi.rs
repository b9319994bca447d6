//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) so that a stock kernel finds CPUs, the power-off
//! path and virtio-mmio devices. (Being written.)
