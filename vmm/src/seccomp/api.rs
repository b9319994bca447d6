//! `tandem_api`, `tandem_metrics` and the tiny_http threads they start (accept loop, connection
//! pool; they inherit this filter). They talk HTTP on sockets that the VMM thread already bound,
//! and hand every request to the VMM thread over a channel, so they need no file opens, no KVM and
//! no ioctl but FIONBIO/FIOCLEX: accept, read, write, socket options, creating tiny_http's
//! threads, and at the end waking the accept thread (an AF_UNIX socket connected to the API
//! socket: the only `socket(2)` allowed) and unlinking the API socket.

use super::{allow, allow_arg, allow_ioctls, common, ioctls, Rules};

/// Adds the API threads' syscalls, as this module's doc lists them, to `r`.
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
            // Validating a VM config: is the kernel/disk file readable (no open).
            libc::SYS_access,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
        ],
    );
    allow_ioctls(r, &ioctls::fd_flags());
    // Dropping tiny_http's server connects to its own socket to wake the accept thread.
    allow_arg(r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    allow(r, &[libc::SYS_connect]);
}
