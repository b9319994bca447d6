//! `tandem_vcpu<N>`: KVM_RUN and the other vCPU ioctls by full number, no VM or system ioctl (state
//! capture and restore run on the vCPU thread), port and MMIO exits (serial output to a tty or a file, irqfd/ioeventfd eventfds),
//! the kick signal, and — because a guest's write to a virtio status register activates the
//! device on this thread — starting and stopping device workers, which inherit this filter on top
//! of their own: so everything in [`super::worker`] is here too. No file opens, no sockets.

use super::{allow, allow_ioctls, common, ioctls, worker, Rules};

pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    worker::add(r);
    allow(
        r,
        &[
            libc::SYS_eventfd2,
            libc::SYS_epoll_create1,
            libc::SYS_fcntl,
            libc::SYS_dup,
        ],
    );
    allow_ioctls(r, &ioctls::kvm_vcpu());
}
