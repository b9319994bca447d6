//! Everything that prepares guest memory and vCPU registers for the first instruction.

pub mod acpi;
pub mod layout;
