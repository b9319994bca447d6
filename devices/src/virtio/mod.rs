//! Virtio devices over the virtio-mmio transport (virtio 1.x, split virtqueues).
//!
//! Thread model: every activated device runs one worker thread of its own that sleeps in epoll on
//! its queues' ioeventfds (plus the tap for a NIC) and its stop and park eventfds
//! ([`worker::Worker`]). We chose this over rust-vmm's `event-manager` because each device then
//! owns its whole lifecycle: reset, VM stop and drop join exactly the thread the device started,
//! which is what a VM rebuilt on every reboot needs (no shared event loop to deregister from, no
//! leaked threads or fds), and FT's "quiesce every device, capture its state" step parks each
//! worker, which hands over copies of its queues and waits, so a checkpoint costs no thread stop or
//! start. A busy disk also never delays another device's notifications. The cost, one mostly idle
//! thread per device, is small at our device counts.

pub mod block;
pub mod chain;
pub mod device;
pub mod ft;
pub mod mmio;
pub mod net;
pub mod worker;

pub use device::{ActivateError, Interrupt, VirtioDevice};
pub use mmio::MmioTransport;

/// Guest memory as devices see it: the same type as the VMM's, so that every device write goes
/// through vm-memory's dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Size of each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Virtio 1.x: the only mode we offer (no legacy layout).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
