//! `tandem_migrate_out`, `tandem_migrate_in` and the ft stream threads they start (which inherit
//! this filter): TCP/Unix stream sockets and UDP heartbeats (AF_UNIX/AF_INET/AF_INET6 only), and
//! what building a VM needs, because the receiving side builds the VM on this thread (KVM ioctls,
//! guest memory, opening disks and taps), and the arbiter's calls, because a migration given an
//! arbiter claims the hand-over's generation on these threads (`ft::migration::handover`; the
//! same calls as the ft kind's, [`super::ft::arbiter`]). Unlike the VMM thread: no signal
//! handlers, no listen(2) (the listener is bound on the VMM thread), no chmod; unlink also
//! removes a `unix:` listener's socket file.

use super::{common, ft, vmm, Rules};

/// Adds the migration threads' syscalls, as this module's doc lists them, to `r`.
pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    vmm::files(r);
    vmm::sockets(r);
    ft::arbiter(r);
}
