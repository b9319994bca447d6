//! Everything that prepares guest memory and vCPU registers for the first instruction.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod linux;
pub mod msrs;
pub mod payload;
pub mod regs;

pub use crate::vm::memory::GuestMemoryMmap;
