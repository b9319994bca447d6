//! `tandem_ft_primary` / `tandem_ft_backup` and what the ft crate starts under them (checkpoint
//! sender, ack reader and epoch threads, the migration inbox), plus the output releaser. They
//! need what the migration threads need — the stream sockets, and building a VM, since the backup
//! builds its VM from the stream and goes live on this thread, starting vCPU threads that inherit
//! this filter — plus the arbiter. A directory arbiter creates, fsyncs, lists and removes its
//! generation files and links its identity record into place (`linkat`). The etcd arbiter needs
//! nothing more than the sockets rules already give: HTTP(S) on a TCP socket (`socket`,
//! `connect` after `FIONBIO`, `setsockopt` for its timeouts, `poll`, read/write; rustls needs
//! only `getrandom`), and resolving the endpoint's host on a short-lived thread per request (so
//! that a stuck lookup is bounded by the request timeout): glibc opens `/etc/hosts`,
//! `resolv.conf` and `nsswitch.conf`, tries nscd's AF_UNIX socket, and asks DNS over UDP.
//! Unlike the VMM thread: no listen(2), no signal handlers, no kill, no chmod/chown, and `link`
//! only for the arbiter's identity.

use super::{allow, common, vmm, Rules};

/// Adds the FT pair threads' syscalls, as this module's doc lists them, to `r`.
pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    vmm::files(r);
    vmm::sockets(r);
    arbiter(r);
    vmm::own_scheduling(r);
}

/// A directory arbiter's calls (the etcd arbiter's are the sockets'): also a migration's, which
/// claims the hand-over's generation on its own thread.
pub fn arbiter(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            // The directory arbiter's identity record (std's hard_link is linkat).
            libc::SYS_linkat,
        ],
    );
}
