//! Everything that prepares guest memory and vCPU registers for the first instruction.

pub mod acpi;
pub mod layout;
pub mod linux;

/// Guest memory as the whole VMM types it. Local alias until `crate::vm` lands on this branch;
/// on merge this becomes `pub use crate::vm::memory::GuestMemoryMmap;` (same type).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
