//! `tandem_migrate_out`, `tandem_migrate_in` and the ft stream threads they start (which inherit
//! this filter): TCP/Unix stream sockets and UDP heartbeats (AF_UNIX/AF_INET/AF_INET6 only), and
//! what building a VM needs, because the receiving side builds the VM on this thread (KVM ioctls,
//! guest memory, opening disks and taps). Unlike the VMM thread: no signal handlers, no
//! listen(2) (the listener is bound on the VMM thread), no rename/mkdir/chmod; unlink only for
//! the `unix:` listener's socket file.

use super::{allow, common, vmm, Rules};

pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    vmm::files(r);
    vmm::sockets(r);
    // Dropping a `unix:` listener removes its socket file.
    allow(r, &[libc::SYS_unlink, libc::SYS_unlinkat]);
}
