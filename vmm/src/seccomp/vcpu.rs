//! `tandem_vcpu<N>`: KVM_RUN and the other vCPU ioctls by full number, no VM or system ioctl
//! (state capture runs on the vCPU thread); port and MMIO exits (serial output to a tty or a file,
//! writes to irqfd/ioeventfd eventfds, joining a device's worker when the guest resets it); the
//! kick signal; fcntl(F_GETFD) alone (closing an fd). Nothing else: no thread creation and none
//! of a worker's syscalls, since virtio devices are activated on the VMM thread (see
//! `vm::virtio`), no file opens, no sockets.

use super::{allow_arg, allow_ioctls, ioctls, Rules};

/// Adds the vCPU threads' syscalls, as this module's doc lists them, to `r`.
pub fn add(r: &mut Rules) {
    allow_ioctls(r, &ioctls::kvm_vcpu());
    // Closing an fd (a vCPU thread that ends drops the last handle on its vCPU fd and, at times,
    // a device's eventfds) runs std's check that the fd is open, fcntl(F_GETFD), in debug
    // builds. Nothing else of fcntl: no fd cloning, locks or flag changes.
    allow_arg(r, libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
}
