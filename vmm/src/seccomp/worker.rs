//! Virtio device workers (`tandem_net_*`, `tandem_blk_*`): epoll on their queue eventfds and the
//! tap, tap reads and writes (read/readv/writev), disk IO (pread/pwrite and their vector forms,
//! fdatasync/fsync), fd cloning (fcntl F_DUPFD_CLOEXEC and fd flags only). No ioctl at all (the tap is set up by whoever builds the VM), no file opens,
//! no sockets. `tandem_announce` (RARP after a resume: writes to the tap) runs under it too.

use super::{allow, allow_arg, Rules};

/// Adds the virtio workers' syscalls, as this module's doc lists them, to `r`.
pub fn add(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_readv,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
        ],
    );
    // Cloning the tap or disk fd (`try_clone`: F_DUPFD_CLOEXEC) and fd flags; no locks, leases
    // or owner changes.
    allow_arg(
        r,
        libc::SYS_fcntl,
        1,
        &[
            libc::F_DUPFD_CLOEXEC as u64,
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
        ],
    );
}
