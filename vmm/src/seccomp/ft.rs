//! `tandem_ft_primary` / `tandem_ft_backup` and what the ft crate starts under them (checkpoint
//! sender, ack reader and epoch threads, the migration inbox), plus the output releaser. They
//! need what the migration threads need — the stream sockets, and building a VM, since the backup
//! builds its VM from the stream and goes live on this thread, starting vCPU threads that inherit
//! this filter — plus the arbiter directory: create, fsync, list and remove its generation files.
//! Unlike the VMM thread: no listen(2), no signal handlers, no kill, no chmod/chown/link.

use super::{allow, common, vmm, Rules};

pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    vmm::files(r);
    vmm::sockets(r);
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
        ],
    );
}
