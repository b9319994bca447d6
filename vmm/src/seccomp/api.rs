//! `tandem_api`, `tandem_metrics` and the tiny_http threads they start (accept loop, connection
//! pool; they inherit this filter). They talk HTTP on sockets that the VMM thread already bound,
//! and hand every request to the VMM thread over a channel, so they need no `socket(2)`, no file
//! opens and no KVM: accept, read, write, socket options, creating tiny_http's threads, and at
//! the end unlinking the API socket.

use super::{allow, allow_arg, common, Rules};

pub fn add(r: &mut Rules) {
    common::spawn_threads(r);
    allow(
        r,
        &[
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_readv,
            libc::SYS_shutdown,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_fcntl,
            libc::SYS_flock,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
        ],
    );
    allow_arg(r, libc::SYS_ioctl, 1, &[libc::FIONBIO, libc::FIOCLEX]);
}
