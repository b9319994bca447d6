//! Where a VM's threads hand what they cannot act on themselves to the VMM thread: guest power
//! and reset requests, a vCPU that died, and virtio devices waiting to be activated. vCPU threads
//! only call these (a channel send); the VMM thread does the work, under its wider seccomp filter.

use super::vcpu::VcpuFailureHandler;
use super::virtio::ActivationHandler;
use devices::GuestEventHandler;

/// The handlers one VM build reports through (made by the VMM thread per boot).
#[derive(Clone)]
pub struct VmHandlers {
    /// Power-off and reset requests from the guest.
    pub guest_events: GuestEventHandler,
    /// A vCPU thread that stopped on an error.
    pub on_failure: VcpuFailureHandler,
    /// A virtio device whose driver set DRIVER_OK: run [`super::virtio::DeviceActivation::run`]
    /// on a thread that may start device workers.
    pub activate: ActivationHandler,
}
