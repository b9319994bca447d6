//! Virtio device workers (`tandem_net_*`, `tandem_blk_*`): epoll on their queue eventfds and the
//! tap, tap reads and writes (read/readv/writev), disk IO (pread/pwrite and their vector forms,
//! fdatasync/fsync), and TUN ioctls. No file opens, no sockets, no KVM.

use super::{allow, allow_ioctl_types, vmm, Rules};

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
    allow_ioctl_types(r, &[vmm::TTY_TUN]);
}
